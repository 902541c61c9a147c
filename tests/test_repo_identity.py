"""The registry's identity rules: records found by GitLab project id, moved on a rename with
an alias left at the old path, and the removal of an old path that never touches the record
that moved (the rules :func:`indexer.jobs.remove_repo` relies on)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coderag.errors import ConflictError, NotFoundError
from coderag.index.edge import EdgeIndex
from coderag.repos import RepoMovedError, RepoRecord, RepoRegistry, hash_secret


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RepoRegistry]:
    index = EdgeIndex(tmp_path / "index")
    yield RepoRegistry(index)
    index.close()


def rec(rid: str, pid: int | None = 7) -> RepoRecord:
    return RepoRecord(
        id=rid, url=f"https://gl.example.com/{rid}.git", gitlab_project_id=pid,
        secret_hash=hash_secret("s" * 20), hook_id=3,
    )  # fmt: skip


def test_found_by_project_id_and_moved_with_an_alias(registry: RepoRegistry):
    registry.put(rec("g/a"))
    assert registry.get_by_project(7).id == "g/a"
    moved = registry.move(registry.require("g/a"), "h/b", url="https://gl.example.com/h/b.git")
    assert (moved.id, moved.hook_id, moved.secret_hash) == ("h/b", 3, hash_secret("s" * 20))
    assert moved.previous_ids == ["g/a"] and registry.get("g/a") is None
    assert registry.get_by_project(7).id == "h/b"
    with pytest.raises(RepoMovedError) as info:
        registry.require("g/a")
    assert info.value.moved_to == "h/b" and info.value.http_status == 410
    assert info.value.error_code == "repo_moved" and "h/b" in info.value.detail
    assert [r.id for r in registry.list()] == ["h/b"]


def test_a_second_rename_points_every_old_path_at_the_newest(registry: RepoRegistry):
    registry.put(rec("g/a"))
    registry.move(registry.require("g/a"), "g/b")
    registry.move(registry.require("g/b"), "g/c")
    for old in ("g/a", "g/b"):
        with pytest.raises(RepoMovedError, match="g/c"):
            registry.check_moved(old)
    registry.move(registry.require("g/c"), "g/a")  # and back: a record again, no alias
    assert registry.require("g/a").previous_ids == ["g/b", "g/c"]
    registry.check_moved("g/a")
    with pytest.raises(RepoMovedError, match="'g/a'"):
        registry.check_moved("g/c")


def test_removing_the_old_path_keeps_the_new_record_and_the_pointer(registry: RepoRegistry):
    """What the removal task of the old name does (``registry.delete(old)``)."""
    registry.put(rec("g/a"))
    registry.move(registry.require("g/a"), "g/b")
    assert registry.delete("g/a") is False
    assert registry.get_by_project(7).id == "g/b"
    with pytest.raises(RepoMovedError):
        registry.require("g/a")
    # Deleting the repository itself forgets its project id and its old paths.
    assert registry.delete("g/b") is True
    assert registry.get_by_project(7) is None
    with pytest.raises(NotFoundError) as info:
        registry.require("g/a")
    assert not isinstance(info.value, RepoMovedError)


def test_a_new_registration_at_an_old_path_supersedes_the_alias(registry: RepoRegistry):
    registry.put(rec("g/a"))
    registry.move(registry.require("g/a"), "g/b")
    registry.put(rec("g/a", pid=8))  # another project took the name
    assert registry.require("g/a").gitlab_project_id == 8
    registry.check_moved("g/a")
    assert registry.get_by_project(7).id == "g/b" and registry.get_by_project(8).id == "g/a"


def test_moving_onto_another_projects_record_is_a_conflict(registry: RepoRegistry):
    registry.put(rec("g/a"))
    registry.put(rec("g/b", pid=8))
    with pytest.raises(ConflictError):
        registry.move(registry.require("g/a"), "g/b")


def test_records_without_a_project_id_and_the_startup_index(registry: RepoRegistry):
    registry.put(rec("g/plain", pid=None))
    assert registry.get_by_project(0) is None
    # A record stored before the project index existed: index_projects writes its entry.
    registry.index.set_state("repo/g/old", rec("g/old", pid=9).model_dump(mode="json"))
    assert registry.get_by_project(9) is None
    assert registry.index_projects() == 1 and registry.get_by_project(9).id == "g/old"
