"""Project hook registration with python-gitlab, against a local HTTP server that answers as
GitLab's REST API does (``tests/gitlab_mock.py``): what is sent, what is stored, what is
never stored or logged, and how GitLab's failures come back."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from coderag.api.repos import router as repo_router
from coderag.auth import TokenAuth, require_principal
from coderag.errors import (
    CoderagError,
    ConfigError,
    ConflictError,
    GitLabError,
    InputError,
    NotFoundError,
    TransientError,
)
from coderag.index.edge import EdgeIndex
from coderag.repos import RepoRegistry
from coderag.settings import Settings
from tests.gitlab_mock import FakeGitLab
from webhooks.gitlab_hooks import register_repo, remove_repo, split_project_url

TOKEN = "glpat-Zx81kQ2vN7tR4pL0sW9y"
REPO = "banking/payments-core"
CLONE = "https://gitlab.example.com/banking/payments-core.git"
PUBLIC = "https://coderag.bank.internal"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def submit_reindex(self, repo_id: str, *, full: bool = True) -> str:
        self.calls.append(("reindex", (repo_id, full)))
        return f"task-{len(self.calls)}"

    def submit_remove(self, repo_id: str, requested_at: float | None = None) -> str:
        self.calls.append(("remove", repo_id))
        return f"task-{len(self.calls)}"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(TOKEN) as gl:
        gl.add_project(REPO, 15, CLONE)
        yield gl


@pytest.fixture
def settings(tmp_path: Path, gitlab: FakeGitLab) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", gitlab_url=gitlab.url, gitlab_token=TOKEN, public_url=PUBLIC
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RepoRegistry]:
    index = EdgeIndex(tmp_path / "index")
    yield RepoRegistry(index)
    index.close()


def test_register_creates_the_hook_and_stores_only_the_secret_hash(
    settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab, tmp_path: Path
):
    disp = Recorder()
    reg = register_repo(settings, registry, disp, f"{gitlab.url}/{REPO}", ["main", "release/*"])

    get, post = gitlab.requests
    assert (get.method, get.path) == ("GET", "/api/v4/projects/banking%2Fpayments-core")
    assert (post.method, post.path) == ("POST", "/api/v4/projects/15/hooks")
    assert post.body == {
        "url": f"{PUBLIC}/v1/webhooks/gitlab",
        "token": reg.secret,
        "push_events": True,
        "merge_requests_events": False,  # MR indexing is off by default: not even sent
        "tag_push_events": False,
        "enable_ssl_verification": True,
    }
    assert all(r.headers.get("PRIVATE-TOKEN") == TOKEN for r in gitlab.requests)
    assert all(TOKEN not in r.path for r in gitlab.requests)  # header only, never in a URL
    assert len(reg.secret) >= 40

    rec = registry.require(REPO)
    assert rec.url == CLONE and rec.gitlab_project_id == 15
    assert rec.hook_id is not None and gitlab.hooks[rec.hook_id]["url"] == post.body["url"]
    assert rec.branches == ["main", "release/*"]
    assert rec.secret_hash == hashlib.sha256(reg.secret.encode()).hexdigest()
    assert registry.verify_secret(REPO, reg.secret) and not registry.verify_secret(REPO, "x")
    state = (tmp_path / "index" / "coderag.state.json").read_text()
    assert reg.secret not in state and TOKEN not in state
    assert "secret" not in json.dumps(reg.as_dict()["repo"])  # the API shows no hash either
    assert disp.calls == [("reindex", (REPO, True))] and reg.task_id == "task-1"


def test_the_gitlab_token_is_never_logged(
    settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    reg = register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}")
    remove_repo(settings, registry, Recorder(), REPO)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records  # urllib3/python-gitlab did log at DEBUG
    assert TOKEN not in text and reg.secret not in text


def test_remove_deletes_the_hook_then_the_record(
    settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab
):
    register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}")
    hook_id = registry.require(REPO).hook_id
    disp = Recorder()
    task_id = remove_repo(settings, registry, disp, REPO)
    last = gitlab.requests[-1]
    assert (last.method, last.path) == ("DELETE", f"/api/v4/projects/15/hooks/{hook_id}")
    assert gitlab.hooks == {}
    assert registry.get(REPO) is None
    assert disp.calls == [("remove", REPO)] and task_id == "task-1"
    with pytest.raises(NotFoundError):
        remove_repo(settings, registry, disp, REPO)


def test_a_hook_already_deleted_on_gitlab_does_not_block_removal(
    settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab
):
    register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}")
    gitlab.hooks.clear()  # someone deleted it in GitLab's UI
    remove_repo(settings, registry, Recorder(), REPO)
    assert registry.get(REPO) is None


def test_gitlab_failures_are_translated_and_leave_nothing_behind(
    settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab, tmp_path: Path
):
    with pytest.raises(NotFoundError, match="not found on GitLab"):
        register_repo(settings, registry, Recorder(), f"{gitlab.url}/banking/nope")

    gitlab.fail_hooks_with = 403  # a Developer token: may read, may not create hooks
    with pytest.raises(GitLabError, match="Maintainer"):
        register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}")
    assert registry.list() == []

    bad_token = settings.model_copy(update={"gitlab_token": settings.gitlab_token})
    gitlab.token = "another-token"  # the configured one was revoked
    with pytest.raises(GitLabError) as info:
        register_repo(bad_token, registry, Recorder(), f"{gitlab.url}/{REPO}")
    assert TOKEN not in str(info.value)

    from tests.standin import free_port

    down = f"http://127.0.0.1:{free_port()}"
    s_down = settings.model_copy(update={"gitlab_url": down})
    with pytest.raises(TransientError, match="unreachable"):
        register_repo(s_down, registry, Recorder(), f"{down}/{REPO}")
    assert registry.list() == []


def test_the_token_goes_to_the_configured_gitlab_only(
    settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab
):
    with pytest.raises(InputError, match="not on the configured GitLab"):
        register_repo(settings, registry, Recorder(), "https://evil.example.net/banking/x")
    with pytest.raises(InputError, match="credentials"):
        register_repo(settings, registry, Recorder(), f"http://u:p@127.0.0.1/{REPO}")
    assert gitlab.requests == []
    no_public = settings.model_copy(update={"public_url": None})
    with pytest.raises(ConfigError, match="CODERAG_PUBLIC_URL"):
        register_repo(no_public, registry, Recorder(), f"{gitlab.url}/{REPO}")


def test_manual_registration_without_a_gitlab_token(tmp_path: Path, registry: RepoRegistry):
    settings = Settings(data_dir=tmp_path / "d")
    reg = register_repo(
        settings, registry, Recorder(), str(tmp_path / "repo.git"), repo_id="local/repo"
    )
    assert reg.record.id == "local/repo" and reg.record.hook_id is None
    assert "by hand" in (reg.warning or "")
    assert registry.verify_secret("local/repo", reg.secret)


@pytest.mark.parametrize(
    "url,gitlab_url,expected",
    [
        (
            "https://gitlab.example.com/group/project",
            None,
            ("https://gitlab.example.com", "group/project"),
        ),
        (
            "https://gitlab.example.com/group/sub/project.git",
            None,
            ("https://gitlab.example.com", "group/sub/project"),
        ),
        (
            "https://gitlab.example.com/group/project/-/tree/main",
            None,
            ("https://gitlab.example.com", "group/project"),
        ),
        (
            "https://host/gitlab/group/project",
            "https://host/gitlab",
            ("https://host/gitlab", "group/project"),
        ),
        ("git@gitlab.example.com:group/project.git", None, (None, "group/project")),
        ("/srv/git/group/project.git", None, (None, "group/project")),
    ],
)
def test_split_project_url(url: str, gitlab_url: str | None, expected: tuple[str | None, str]):
    assert split_project_url(url, gitlab_url) == expected


# --- the HTTP routes ------------------------------------------------------------------------
def _app(settings: Settings, registry: RepoRegistry, disp: Any, tokens: dict) -> FastAPI:
    app = FastAPI()

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CoderagError)
        body = {"error_code": exc.error_code, "detail": exc.detail}
        return JSONResponse(body, status_code=exc.http_status)

    app.add_exception_handler(CoderagError, on_error)
    app.include_router(repo_router, dependencies=[Depends(require_principal)])
    app.state.settings = settings
    app.state.registry = registry
    app.state.dispatcher = disp
    app.state.auth = TokenAuth(tokens)
    return app


def test_repo_routes(settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab):
    admin, reader = "admin-token-0123456789abcdef", "reader-token-0123456789abcdef"
    disp = Recorder()
    app = _app(settings, registry, disp, {admin: ["*"], reader: ["other/repo"]})
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_reader = {"Authorization": f"Bearer {reader}"}
    body = {"url": f"{gitlab.url}/{REPO}", "branches": ["main", "release/*"]}
    with TestClient(app) as c:
        assert c.post("/v1/repos", json=body).status_code == 401
        assert c.post("/v1/repos", json=body, headers=as_reader).status_code == 403
        created = c.post("/v1/repos", json=body, headers=as_admin)
        assert created.status_code == 201, created.text
        out = created.json()
        assert out["repo"]["id"] == REPO and out["secret"] and out["task_id"] == "task-1"
        assert "secret_hash" not in out["repo"]
        again = c.post("/v1/repos", json=body, headers=as_admin)
        assert again.status_code == 409 and "already registered" in again.json()["detail"]
        assert again.json()["error_code"] == "conflict"

        assert [r["id"] for r in c.get("/v1/repos", headers=as_admin).json()["repos"]] == [REPO]
        assert c.get("/v1/repos", headers=as_reader).json()["repos"] == []  # out of scope

        re = c.post(f"/v1/repos/{REPO}/reindex", headers=as_admin)
        assert re.status_code == 202 and re.json()["task_id"] == "task-2"
        assert c.post("/v1/repos/banking/nope/reindex", headers=as_admin).status_code == 404

        for local in ("/srv/git/other/secret.git", "file:///srv/git/other/secret.git"):
            refused = c.post(
                "/v1/repos", json={"url": local, "id": "other/secret"}, headers=as_admin
            )
            assert refused.status_code == 400 and "local path" in refused.json()["detail"]

        gone = c.delete(f"/v1/repos/{REPO}", headers=as_admin)
        assert gone.status_code == 202 and gone.json()["repo"] == REPO
        assert c.get("/v1/repos", headers=as_admin).json()["repos"] == []
    assert [k for k, _ in disp.calls] == ["reindex", "reindex", "remove"]


def test_a_project_registered_under_its_old_path_is_a_conflict(
    settings: Settings, registry: RepoRegistry, gitlab: FakeGitLab
):
    """Renamed on GitLab before any delivery told us: registering the new path would make a
    second hook for one project, so it is refused, naming the record that has it."""
    register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}")
    project = gitlab.projects.pop(REPO)
    project["path_with_namespace"] = "banking/payments"
    gitlab.projects["banking/payments"] = project
    hooks = len(gitlab.hooks)
    with pytest.raises(ConflictError, match=REPO):
        register_repo(settings, registry, Recorder(), f"{gitlab.url}/banking/payments")
    assert len(gitlab.hooks) == hooks
