"""Mirrors repair themselves: a damaged local store is cloned again, a remote failure is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from coderag.errors import GitError
from coderag.settings import Settings
from indexer.git import GitRepo
from indexer.mirrors import mirror_for_url
from tests.fault_support import corrupt
from tests.ingest_support import Remote


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    r = Remote(tmp_path / "git")
    for i in range(4):
        r.commit({f"src/m{i}.py": f"def f{i}():\n    return {i}\n"}, f"c{i}")
    r.push("main")
    return r


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", index_backend="edge")


def test_corrupt_objects_with_the_refs_gone_are_cloned_again(tmp_path: Path, remote: Remote):
    """No ref reaches the corrupt objects any more, so a connectivity check passes; git's
    complaint while fetching them must still lead to the full check and a fresh clone."""
    settings = _settings(tmp_path)
    mirror = mirror_for_url(str(remote.bare), settings)
    assert corrupt(mirror) > 0
    for ref in (mirror / "refs" / "heads").glob("*"):
        ref.unlink()
    (mirror / "packed-refs").unlink(missing_ok=True)
    assert GitRepo(mirror).is_sound(full=False) and not GitRepo(mirror).is_sound()
    head = remote.commit({"src/new.py": "NEW = 1\n"}, "new")
    remote.push("main")

    assert mirror_for_url(str(remote.bare), settings) == mirror
    repo = GitRepo(mirror)
    assert repo.is_sound()
    assert repo.run("rev-parse", "refs/heads/main").decode().strip() == head


def test_a_failing_remote_is_an_error_and_leaves_a_sound_mirror_alone(
    tmp_path: Path, remote: Remote
):
    settings = _settings(tmp_path)
    mirror = mirror_for_url(str(remote.bare), settings)
    inode = (mirror / "HEAD").stat().st_ino
    gone = tmp_path / "gone.git"
    remote.bare.rename(gone)
    with pytest.raises(GitError):
        mirror_for_url(str(remote.bare), settings)
    assert (mirror / "HEAD").stat().st_ino == inode  # not re-cloned
    assert GitRepo(mirror).is_sound()
