"""Repository administration: turn indexing on and off, list, re-index.

``POST /v1/repos``                      register a GitLab project (hook + first full index)
``GET /v1/repos``                       the registered repositories the token may read
``DELETE /v1/repos/{id}``               delete the hook and every point of the repository
``POST /v1/repos/{id}/reindex``         re-scan every selected branch (whole tree, not a diff)

The app mounts this router behind :func:`coderag.auth.require_principal`; changing what is
indexed (POST, DELETE, reindex) needs an unrestricted token (``["*"]``), because a hook and a
full index are costs the whole installation pays. With auth disabled (no tokens, the
embedded single-user default) every caller may, and only then may a local path or
``file://`` URL be registered: on a shared server that would let an API caller index (and
so read) any git repository on the server's disk.

Handlers are plain ``def``: GitLab's API and the index are blocking calls, run by FastAPI's
thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from coderag.auth import ANONYMOUS, Principal
from coderag.errors import ConfigError, ForbiddenError, InputError
from coderag.repos import REPO_ID_PATTERN, RepoIdPath, RepoRegistry, parse_repo_id
from webhooks.gitlab_hooks import register_repo, remove_repo

__all__ = ["RegisterRepo", "repo_router"]

repo_router = APIRouter(prefix="/v1/repos", tags=["repos"])

RepoId = RepoIdPath


BranchPattern = Annotated[str, Field(min_length=1, max_length=255, pattern=r"\S")]
"""An fnmatch pattern: not blank (a blank one would match no branch)."""


class RegisterRepo(BaseModel):
    """Body of ``POST /v1/repos``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2048,
        examples=["https://gitlab.example.com/group/project"],
        description="Project URL on the configured GitLab (web or clone URL, no credentials).",
    )
    branches: list[BranchPattern] = Field(
        default_factory=lambda: ["main"],
        min_length=1,
        max_length=100,
        examples=[["main", "release/*"]],
        description="fnmatch patterns of the branches to index.",
    )
    id: str | None = Field(
        default=None,
        max_length=512,
        pattern=REPO_ID_PATTERN,
        description="Repository id, only for manual registration (no GitLab token "
        "configured); GitLab's path_with_namespace otherwise.",
    )


def _principal(request: Request) -> Principal:
    return getattr(request.state, "principal", None) or ANONYMOUS


def _require_admin(request: Request) -> None:
    p = _principal(request)
    if not p.unrestricted:
        raise ForbiddenError(f"token {p.token_id} may not administer repositories (needs '*')")


def _is_local(url: str) -> bool:
    """Not a network URL: a path on the server's disk (or ``file://``)."""
    u = url.strip()
    return ("://" not in u and not u.startswith("git@")) or u.startswith("file://")


def _parts(request: Request) -> tuple[Any, RepoRegistry, Any]:
    st = request.app.state
    if st.registry is None or st.dispatcher is None:
        raise ConfigError("the service is not started (no registry or dispatcher)")
    return st.settings, st.registry, st.dispatcher


@repo_router.post("", status_code=201, summary="Register a GitLab project")
def create_repo(body: RegisterRepo, request: Request) -> JSONResponse:
    """Creates the project hook with a fresh secret, stores the repository and schedules its
    first full index. The secret is in this answer only: it is stored hashed."""
    _require_admin(request)
    settings, registry, dispatcher = _parts(request)
    if _principal(request) is not ANONYMOUS and _is_local(body.url):  # a shared server
        raise InputError(
            "a local path or file:// URL makes the server read its own disk: register it "
            "with `coderag repo add` on the server, or through GitLab"
        )
    reg = register_repo(settings, registry, dispatcher, body.url, body.branches, repo_id=body.id)
    return JSONResponse(reg.as_dict(), status_code=201)


@repo_router.get("", summary="Registered repositories")
def list_repos(request: Request) -> dict[str, Any]:
    p = _principal(request)
    _, registry, _ = _parts(request)
    return {"repos": [r.public() for r in registry.list() if p.can_read(r.id)]}


@repo_router.post("/{repo_id:path}/reindex", status_code=202, summary="Re-index a repository")
def reindex_repo(
    repo_id: RepoId,
    request: Request,
    full: Annotated[bool, Query(description="Scan whole trees (else: catch up to heads)")] = True,
) -> JSONResponse:
    _require_admin(request)
    _, registry, dispatcher = _parts(request)
    rec = registry.require(parse_repo_id(repo_id))
    task_id = dispatcher.submit_reindex(rec.id, full=full)
    return JSONResponse({"status": "accepted", "task_id": task_id, "repo": rec.id}, status_code=202)


@repo_router.delete("/{repo_id:path}", status_code=202, summary="Remove a repository")
def delete_repo(repo_id: RepoId, request: Request) -> JSONResponse:
    """Deletes the project hook now; every point of the repository is deleted by a task."""
    _require_admin(request)
    settings, registry, dispatcher = _parts(request)
    task_id = remove_repo(settings, registry, dispatcher, repo_id)
    return JSONResponse(
        {"status": "accepted", "task_id": task_id, "repo": parse_repo_id(repo_id)},
        status_code=202,
    )
