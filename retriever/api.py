"""The retrieval API: search, assembled context, the Continue contract.

Routes (all under ``/v1``, all behind :func:`coderag.auth.require_principal`):

``POST /v1/search``
    Ranked chunks as JSON, for tools and evaluators.
``POST /v1/context``
    The same search, merged into code regions within a token budget
    (:func:`retriever.context.assemble`): what the LiteLLM hook injects.
``POST /v1/continue/context``
    Continue's ``http`` context provider: the body Continue POSTs, answered with the list of
    context items it reads (``name``, ``description``, ``content``, ``uri``).

Every read goes through the token's scope (:meth:`coderag.auth.Principal.scope`): a repo
outside it is a 403, no repo means "the token's repos", never "everything".

Every retrieval writes one audit line (logger ``coderag.audit``, ``event="search"``): who
(the token kind, the user's subject and username for people, the token id for service
tokens, never a token), which repos, how many results, endpoint, latency, outcome. The code
returned is never logged, nor the query text (a bank's code is the secret; a query often
quotes it) unless ``CODERAG_AUDIT_QUERY_TEXT`` says so: only the query's length.

Handlers are plain ``def``: embedding and the index call are CPU-bound and release the GIL in
native code, so FastAPI's thread pool runs them in parallel without blocking the event loop.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from coderag.api.errors import ERROR_RESPONSES
from coderag.auth import Principal, require_principal
from coderag.errors import CoderagError, TransientError
from coderag.metrics import QUERY_LATENCY, SEARCH_RESULTS
from coderag.models import Hit
from retriever.context import ContextBlock, approx_tokens, assemble
from retriever.continue_items import ContinueItem, continue_items

__all__ = [
    "ContextRequest",
    "ContextResponse",
    "ContinueItem",
    "ContinueOptions",
    "ContinueRequest",
    "SearchRequest",
    "SearchResponse",
    "SearchResult",
    "audited",
    "file_uri",
    "router",
    "runtime_of",
    "scoped_search",
]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("coderag.audit")

Mode = Literal["hybrid", "dense", "lexical"]
MAX_QUERY_CHARS = 20_000
MAX_FULL_INPUT_CHARS = 2_000_000


# --- shared validation ----------------------------------------------------------------------


def _check_text(v: Any) -> Any:
    """Refuse strings that are not valid Unicode text (lone surrogates from JSON ``\\ud800``)
    with a 422, instead of letting them reach the tokenizer and turn into a 500."""
    items = v if isinstance(v, list) else [v]
    for s in items:
        if isinstance(s, str):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError("text must be valid Unicode (no lone surrogates)") from exc
    return v


def _json_int(v: Any) -> Any:
    """JSON Schema's ``integer``: ``3`` and ``3.0`` yes; ``true`` and ``"3"`` no (pydantic's lax
    mode would take both, strict mode would refuse ``3.0``)."""
    if isinstance(v, bool | str):
        raise ValueError("must be an integer")
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# Constraints before the validator: after it, pydantic emits invalid JSON Schema ("ge").
K = Annotated[int, Field(ge=1, le=100), BeforeValidator(_json_int)]
Budget = Annotated[int, Field(ge=100, le=200_000), BeforeValidator(_json_int)]
RepoName = Annotated[str, Field(min_length=1, max_length=512)]
Glob = Annotated[str, Field(min_length=1, max_length=512)]
Lang = Annotated[str, Field(min_length=1, max_length=64)]


class _Filters(BaseModel):
    repos: list[RepoName] | None = Field(
        default=None,
        max_length=100,
        description="Repos to search (``group/project``). Omitted or empty: every repo the "
        "token may read. Any repo outside the token's scope is refused (403).",
    )
    branch: str | None = Field(
        default=None, max_length=255, description="Only chunks present on this branch."
    )
    path_globs: list[Glob] | None = Field(
        default=None,
        max_length=32,
        description="Repo-relative globs (``src/**/*.py``); ``*`` never crosses ``/``.",
    )
    languages: list[Lang] | None = Field(default=None, max_length=32)
    k: K = Field(default=10, description="Number of results.")
    mode: Mode | None = Field(
        default=None, description="hybrid | dense | lexical (default: the server's setting)."
    )
    workspace_path: str | None = Field(
        default=None,
        max_length=4096,
        description="Absolute path of the caller's checkout: result URIs are made absolute "
        "under it (``file:///home/me/proj/src/x.py``). Omitted: ``file://src/x.py``, the "
        "repo-relative path, which the client resolves against its own checkout.",
    )

    @field_validator("*")
    @classmethod
    def valid_text(cls, v: Any) -> Any:
        return _check_text(v)


class SearchRequest(_Filters):
    """``POST /v1/search``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="Prose, identifiers, paths or pasted code.",
    )


class SearchResult(BaseModel):
    repo: str
    path: str = Field(description="Repo-relative path.")
    start_line: int = Field(description="1-based, inclusive.")
    end_line: int = Field(description="1-based, inclusive.")
    symbol: str
    kind: str
    language: str
    score: float
    text: str
    uri: str = Field(
        description="``file://`` URI of the file: absolute under ``workspace_path`` when one "
        "was given, else ``file://<repo-relative path>`` (resolve it against your checkout)."
    )
    branches: list[str]


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float


class ContextRequest(SearchRequest):
    """``POST /v1/context``: search, then merge and fit the results into a token budget."""

    token_budget: Budget | None = Field(
        default=None,
        description="Tokens of context wanted (estimated); default: the server's "
        "``context_token_budget``.",
    )


class ContextBlockOut(BaseModel):
    repo: str
    path: str
    language: str
    start_line: int
    end_line: int
    symbols: list[str]
    score: float
    truncated: bool
    tokens: int
    uri: str
    content: str = Field(description="Fenced code block headed by path and lines.")


class ContextResponse(BaseModel):
    blocks: list[ContextBlockOut]
    text: str = Field(description="All blocks, ready to paste into a prompt.")
    tokens: int
    took_ms: float


# --- the Continue contract ------------------------------------------------------------------


class ContinueOptions(BaseModel):
    """``params.options`` of the provider in the user's Continue config (all optional)."""

    model_config = ConfigDict(extra="ignore")

    repo: str | None = Field(default=None, max_length=512)
    repos: list[RepoName] | str | None = Field(
        default=None, description="A list, or one comma-separated string."
    )
    branch: str | None = Field(default=None, max_length=255)
    k: K | None = None
    path_globs: list[Glob] | str | None = None
    languages: list[Lang] | str | None = None
    mode: Mode | None = None
    token_budget: Budget | None = None

    @field_validator("*")
    @classmethod
    def valid_text(cls, v: Any) -> Any:
        return _check_text(v)


class ContinueRequest(BaseModel):
    """What Continue's ``http`` context provider POSTs: ``query``, ``fullInput``, the
    provider's ``options`` and the editor's ``workspacePath``."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(default="", max_length=MAX_FULL_INPUT_CHARS)
    fullInput: str = Field(default="", max_length=MAX_FULL_INPUT_CHARS)
    options: ContinueOptions | None = None
    workspacePath: str | None = Field(default=None, max_length=4096)

    @field_validator("query", "fullInput", "workspacePath")
    @classmethod
    def valid_text(cls, v: Any) -> Any:
        return _check_text(v)


# --- helpers --------------------------------------------------------------------------------


def runtime_of(request: Request) -> Any:
    """The app's runtime; a 503 while the service is still starting."""
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:
        raise TransientError("the service is starting: the index is not open yet")
    return rt


def file_uri(path: str, workspace: str | None) -> str:
    """``file://`` URI of a repo-relative ``path`` (see :attr:`SearchResult.uri`)."""
    rel = path.lstrip("/")
    if not workspace:
        return f"file://{rel}"
    if workspace.startswith("file://"):
        return f"{workspace.rstrip('/')}/{rel}"
    ws = workspace.replace("\\", "/").rstrip("/")
    return f"file://{ws if ws.startswith('/') else '/' + ws}/{rel}"


class _Audit:
    """Collects one audit line per retrieval; written however the request ends."""

    def __init__(
        self, endpoint: str, principal: Principal, query: str, *, keep_query: bool = False
    ) -> None:
        self.endpoint = endpoint
        self.principal = principal
        self.query_chars = len(query)
        self.query = query if keep_query else None
        self.repos: list[str] | None = None
        self.results = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> _Audit:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        seconds = time.perf_counter() - self.t0
        outcome = "ok"
        if exc is not None:
            outcome = exc.error_code if isinstance(exc, CoderagError) else "internal_error"
        else:
            QUERY_LATENCY.labels(endpoint=self.endpoint).observe(seconds)
            SEARCH_RESULTS.labels(endpoint=self.endpoint).inc(self.results)
        fields: dict[str, Any] = {"query": self.query} if self.query is not None else {}
        audit_log.info(
            "search",
            extra={
                **fields,
                "endpoint": self.endpoint,
                "token_kind": self.principal.kind,
                "subject": self.principal.subject,
                "username": self.principal.username,
                "token_id": self.principal.token_id,
                "repos": self.repos if self.repos is not None else (["*"] if exc is None else []),
                "results": self.results,
                "latency_ms": round(seconds * 1000, 2),
                "query_chars": self.query_chars,
                "outcome": outcome,
            },
        )


def audited(request: Request, endpoint: str, principal: Principal, query: str) -> _Audit:
    """The audit context of one read: the ``search`` audit line, under ``endpoint`` (the
    routes, and the MCP tools with ``endpoint="mcp"``)."""
    settings = getattr(request.app.state, "settings", None)
    return _Audit(
        endpoint, principal, query, keep_query=bool(getattr(settings, "audit_query_text", False))
    )


def scoped_search(
    request: Request,
    audit: _Audit,
    query: str,
    *,
    repos: Sequence[str] | None = None,
    branch: str | None = None,
    path_globs: Sequence[str] | None = None,
    languages: Sequence[str] | None = None,
    k: int = 10,
    mode: Mode | None = None,
) -> list[Hit]:
    """Search within the caller's scope: the token scope (403 for a repo outside it), the
    defence-in-depth filter, ``repo_moved``, and the audit's repos and result count. The one
    such path, for the routes and the MCP tools."""
    rt = runtime_of(request)
    audit.repos = [r for r in repos or () if r] or None  # what was asked, if refused
    scope = audit.principal.scope(repos)
    audit.repos = scope
    hits: list[Hit] = rt.retriever.search(
        query,
        repos=scope,
        branch=branch or None,
        path_globs=path_globs or None,
        languages=languages or None,
        k=k,
        mode=mode or rt.settings.search_mode,
    )
    if scope is not None:  # defence in depth: the index filter already did this
        allowed = set(scope)
        hits = [h for h in hits if h.repo in allowed]
    _refuse_moved(request, repos, hits)
    audit.results = len(hits)
    return hits


def _refuse_moved(request: Request, repos: Sequence[str] | None, hits: list[Hit]) -> None:
    """A repo asked for by name that the project left (renamed or transferred on GitLab)
    is a 410 ``repo_moved`` naming the new path, rather than a silently empty answer. Only
    names that found nothing are looked up: no extra state read on an ordinary search."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None or not repos:
        return
    found = {h.repo for h in hits}
    for repo in repos:
        if repo and repo not in found:
            registry.check_moved(repo)


_LEADING_MENTIONS = re.compile(r"^\s*@[\w.-]+\s+")
"""``@coderag how do we ...``: the provider's own mention says nothing about the code (a file
mention such as ``@src/x.py`` has a ``/`` and stays: its path is a useful signal)."""


def _budget(request: Request, wanted: int | None) -> int:
    settings = request.app.state.settings
    return int(wanted or settings.context_token_budget)


def _as_list(v: list[str] | str | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return [p for p in v if p]


def _block_out(b: ContextBlock, workspace: str | None) -> ContextBlockOut:
    return ContextBlockOut(
        repo=b.repo,
        path=b.path,
        language=b.language,
        start_line=b.start_line,
        end_line=b.end_line,
        symbols=list(b.symbols),
        score=round(b.score, 6),
        truncated=b.truncated,
        tokens=b.tokens,
        uri=file_uri(b.path, workspace),
        content=b.render(),
    )


def _search_request(request: Request, audit: _Audit, body: SearchRequest) -> list[Hit]:
    """``scoped_search`` with the query and filters of a /v1/search or /v1/context body."""
    return scoped_search(
        request,
        audit,
        body.query,
        repos=body.repos,
        branch=body.branch,
        path_globs=body.path_globs,
        languages=body.languages,
        k=body.k,
        mode=body.mode,
    )


# --- routes ---------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["retrieval"], responses=ERROR_RESPONSES)

PrincipalDep = Annotated[Principal, Depends(require_principal)]


@router.post("/search", response_model=SearchResponse, summary="Search code")
def search(body: SearchRequest, request: Request, principal: PrincipalDep) -> SearchResponse:
    """Ranked chunks for a query, within the token's repos and the given filters."""
    with audited(request, "search", principal, body.query) as audit:
        hits = _search_request(request, audit, body)
        results = [
            SearchResult(
                repo=h.repo,
                path=h.path,
                start_line=h.start_line,
                end_line=h.end_line,
                symbol=h.symbol,
                kind=h.kind,
                language=h.language,
                score=round(h.score, 6),
                text=h.text,
                uri=file_uri(h.path, body.workspace_path),
                branches=list(h.branches),
            )
            for h in hits
        ]
    took = (time.perf_counter() - audit.t0) * 1000
    return SearchResponse(results=results, took_ms=round(took, 3))


@router.post("/context", response_model=ContextResponse, summary="Assembled context")
def context(body: ContextRequest, request: Request, principal: PrincipalDep) -> ContextResponse:
    """Search, merge adjacent chunks of a file, and keep the best regions within a budget."""
    with audited(request, "context", principal, body.query) as audit:
        hits = _search_request(request, audit, body)
        blocks = assemble(hits, _budget(request, body.token_budget), approx_tokens)
        out = [_block_out(b, body.workspace_path) for b in blocks]
    took = (time.perf_counter() - audit.t0) * 1000
    return ContextResponse(
        blocks=out,
        text="\n\n".join(f"{b.repo}: {b.path}\n{b.content}" for b in out),
        tokens=sum(b.tokens for b in out),
        took_ms=round(took, 3),
    )


@router.post(
    "/continue/context",
    response_model=list[ContinueItem],
    summary="Continue http context provider",
    tags=["continue"],
)
def continue_context(
    body: ContinueRequest, request: Request, principal: PrincipalDep
) -> list[ContinueItem]:
    """Context items for Continue's ``http`` context provider.

    Searches ``query``, or ``fullInput`` when ``query`` is empty (Continue usually sends an
    empty ``query``). ``options`` (from the provider's ``params.options``) selects repo(s),
    branch and optionally ``k``, ``path_globs``, ``languages``, ``mode``, ``token_budget``.
    """
    opts = body.options or ContinueOptions()
    text = body.query if body.query.strip() else _LEADING_MENTIONS.sub("", body.fullInput)
    repos = _as_list(opts.repos) + ([opts.repo] if opts.repo else [])
    with audited(request, "continue", principal, text) as audit:
        if not text.strip():
            audit.repos = repos or None
            audit.repos = principal.scope(repos)  # still refuse an out-of-scope repo
            return []
        hits = scoped_search(
            request,
            audit,
            text,
            repos=repos or None,
            branch=opts.branch,
            path_globs=_as_list(opts.path_globs) or None,
            languages=_as_list(opts.languages) or None,
            k=opts.k or 10,
            mode=opts.mode,
        )
        blocks = assemble(hits, _budget(request, opts.token_budget), approx_tokens)
    registry = getattr(request.app.state, "registry", None)

    def clone_url(repo: str) -> str | None:
        rec = registry.get(repo) if registry is not None else None
        return rec.url if rec is not None else None

    return continue_items(
        blocks,
        workspace=body.workspacePath,
        workspace_repo=repos[0] if len(repos) == 1 else None,
        clone_url=clone_url,
        ref=opts.branch,
    )
