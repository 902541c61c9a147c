"""Every ``/v1/repos`` route: repository status, and turning indexing on and off.

``GET /v1/repos/{id}/status``           indexed commit, chunks, lag and last run per branch
``POST /v1/repos``                      register a GitLab project (hook + first full index)
``GET /v1/repos``                       the registered repositories the token may read
``DELETE /v1/repos/{id}``               delete the hook and every point of the repository
``POST /v1/repos/{id}/reindex``         re-scan every selected branch (whole tree, not a diff)

Every route is behind :func:`coderag.auth.require_principal`. Status is a read: any token
whose scope covers the repository may ask. Changing what is indexed (POST, DELETE, reindex)
needs an unrestricted token (``["*"]``), because a hook and a full index are costs the whole
installation pays. With auth disabled (no tokens, the embedded single-user default) every
caller may, and only then may a local path or ``file://`` URL be registered: on a shared
server that would let an API caller index (and so read) any git repository on the server's
disk.

Handlers are plain ``def``: GitLab's API and the index are blocking calls, run by FastAPI's
thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from coderag.api.errors import ERROR_RESPONSES, ErrorResponse, error_responses
from coderag.auth import ANONYMOUS, Principal, require_principal
from coderag.errors import ConfigError, ForbiddenError, InputError, NotFoundError
from coderag.repos import REPO_ID_PATTERN, RepoIdPath, RepoRegistry, parse_repo_id
from coderag.status import repo_status as compute_status
from retriever.api import runtime_of
from webhooks.gitlab_hooks import register_repo, remove_repo

__all__ = ["BranchStatus", "HookStatus", "RegisterRepo", "RepoStatus", "router"]

# No router-wide tags or responses: the status route is documented as a read (with the
# retrieval routes' errors), the administration routes with theirs.
router = APIRouter(prefix="/v1/repos")

PrincipalDep = Annotated[Principal, Depends(require_principal)]
_ADMIN: dict[str, Any] = {
    "tags": ["repos"],
    "dependencies": [Depends(require_principal)],
    "responses": error_responses(400, 401, 403, 404, 409, 410, 422, 500, 502, 503),
}
"""What every administration route shares: its tag, the bearer token, its documented errors."""


# --- repo status ----------------------------------------------------------------------------


class BranchStatus(BaseModel):
    branch: str
    commit: str | None = Field(description="Indexed commit (None: never indexed yet).")
    indexed_at: float | None = Field(description="Unix time the commit became searchable.")
    chunks: int
    pending_commit: str | None = Field(description="Newest pushed commit not yet indexed.")
    pending_pushes: int
    lag_seconds: float = Field(
        description="Since the oldest push still waiting (0: none); a push no webhook "
        "announced counts from the reconciliation pass that found it."
    )
    last_run_at: float | None
    last_run_seconds: float | None
    last_push_to_indexed_seconds: float | None
    last_error: str | None
    gitlab_head: str | None = Field(
        default=None,
        description="The branch's head on GitLab at the last reconciliation pass (None: not "
        "listed yet, or not a tracked branch).",
    )
    lag_commits: int | None = Field(
        default=None,
        description="Commits gitlab_head is ahead of the indexed commit (0: up to date; "
        "None: unknown, e.g. the mirror does not hold the new commits yet).",
    )
    last_reconciled_at: float | None = Field(
        default=None, description="Unix time of the last pass that listed GitLab's heads."
    )


class HookStatus(BaseModel):
    """The project hook as GitLab reported it at the last reconciliation pass."""

    repo: str
    hook_id: int | None
    managed: bool = Field(description="coderag created the hook and holds a GitLab token.")
    alert_status: str | None = Field(
        description="GitLab's alert_status: executable, temporarily_disabled or disabled "
        "(permanently); None: unknown."
    )
    disabled_until: str | None = Field(description="End of a temporary disabling (ISO 8601).")
    reenabled: bool = Field(description="The pass re-enabled it with a test delivery.")
    checked_at: float
    error: str | None = None


class RepoStatus(BaseModel):
    repo: str
    registered: bool = Field(description="Indexing enabled through the repo registry.")
    branch_patterns: list[str]
    chunks: int
    branches: list[BranchStatus]
    last_run: dict[str, Any] | None
    last_error: str | None
    lag_seconds: float
    last_reconciled_at: float | None = Field(
        default=None, description="Unix time of the last pass that listed GitLab's heads."
    )
    reconcile_error: str | None = Field(
        default=None, description="Why the last reconciliation pass failed (None: it worked)."
    )
    hook: HookStatus | None = Field(
        default=None, description="Project hook health (None: no pass yet, or no hook)."
    )


@router.get(
    "/{repo:path}/status",
    response_model=RepoStatus,
    summary="Indexing status of a repository",
    tags=["retrieval", "repos"],
    responses={
        **ERROR_RESPONSES,
        404: {
            "model": ErrorResponse,
            "description": "Neither the index nor the registry knows this repository.",
        },
        410: {
            "model": ErrorResponse,
            "description": "The project was renamed or transferred on GitLab "
            "(``repo_moved``): the detail names its new path.",
        },
    },
)
def repo_status(
    request: Request,
    principal: PrincipalDep,
    repo: RepoIdPath,
) -> RepoStatus:
    """Per branch: indexed commit, chunks, pending push and lag, last run and its error."""
    if not principal.can_read(repo):
        raise ForbiddenError(f"{principal.label} may not read: {repo}")
    rt = runtime_of(request)
    registry = getattr(request.app.state, "registry", None)
    if registry is not None:  # a path the project left: say where it went (410)
        registry.check_moved(repo)
    st = compute_status(
        rt.index,
        getattr(request.app.state, "registry", None),
        getattr(request.app.state, "dispatcher", None),
        repo,
    )
    if st is None:
        raise NotFoundError(f"repository {repo!r} is neither indexed nor registered")
    return RepoStatus.model_validate(st)


# --- administration -------------------------------------------------------------------------


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
    signed: bool = Field(
        default=False,
        description="Also give the hook a signing token (``whsec_...``, needs "
        "CODERAG_SECRET_KEY): GitLab then signs each delivery and an unsigned or badly "
        "signed one is refused. Manual mode returns the token once, to paste into GitLab.",
    )


def _principal(request: Request) -> Principal:
    return getattr(request.state, "principal", None) or ANONYMOUS


def _require_admin(request: Request) -> None:
    p = _principal(request)
    if not p.unrestricted:
        raise ForbiddenError(f"{p.label} may not administer repositories (needs '*')")


def _is_local(url: str) -> bool:
    """Not a network URL: a path on the server's disk (or ``file://``)."""
    u = url.strip()
    return ("://" not in u and not u.startswith("git@")) or u.startswith("file://")


def _parts(request: Request) -> tuple[Any, RepoRegistry, Any]:
    st = request.app.state
    if st.registry is None or st.dispatcher is None:
        raise ConfigError("the service is not started (no registry or dispatcher)")
    return st.settings, st.registry, st.dispatcher


@router.post("", status_code=201, summary="Register a GitLab project", **_ADMIN)
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
    reg = register_repo(
        settings,
        registry,
        dispatcher,
        body.url,
        body.branches,
        repo_id=body.id,
        signed=body.signed,
    )
    return JSONResponse(reg.as_dict(), status_code=201)


@router.get("", summary="Registered repositories", **_ADMIN)
def list_repos(request: Request) -> dict[str, Any]:
    p = _principal(request)
    _, registry, _ = _parts(request)
    return {"repos": [r.public() for r in registry.list() if p.can_read(r.id)]}


@router.post("/{repo_id:path}/reindex", status_code=202, summary="Re-index a repository", **_ADMIN)
def reindex_repo(
    repo_id: RepoIdPath,
    request: Request,
    full: Annotated[bool, Query(description="Scan whole trees (else: catch up to heads)")] = True,
) -> JSONResponse:
    _require_admin(request)
    _, registry, dispatcher = _parts(request)
    rec = registry.require(parse_repo_id(repo_id))
    task_id = dispatcher.submit_reindex(rec.id, full=full)
    return JSONResponse({"status": "accepted", "task_id": task_id, "repo": rec.id}, status_code=202)


@router.delete("/{repo_id:path}", status_code=202, summary="Remove a repository", **_ADMIN)
def delete_repo(repo_id: RepoIdPath, request: Request) -> JSONResponse:
    """Deletes the project hook now; every point of the repository is deleted by a task."""
    _require_admin(request)
    settings, registry, dispatcher = _parts(request)
    task_id = remove_repo(settings, registry, dispatcher, repo_id)
    return JSONResponse(
        {"status": "accepted", "task_id": task_id, "repo": parse_repo_id(repo_id)},
        status_code=202,
    )
