"""The Model Context Protocol at ``/mcp``: coderag's retrieval as MCP tools, for agents.

Served over streamable HTTP by the official SDK (``mcp``'s :class:`MCPServer`) in the API's own
process, so it reads the same runtime, registry and index as ``/v1`` and answers under the same
auth:

* **One guard, the API's auth.** Every request to ``/mcp`` is authenticated by
  :func:`coderag.auth.authenticate_request` before the SDK sees it: the same bearer tokens
  (a person's OIDC token, a delegation token with ``X-Coderag-User``, a service token), the
  same ``auth_refused`` audit line, and the same ``{"error_code", "detail"}`` answer (401 with
  ``WWW-Authenticate: Bearer``; 403, 503). The SDK's own OAuth machinery is not used: coderag
  is not an authorization server, and two auth paths would drift apart.
* **The principal reaches the tools through the HTTP request.** The guard leaves it on the
  ASGI scope's state (``request.state.principal``); a tool reads it from
  ``ctx.request_context.request``, the Starlette request the SDK hands every message. (A
  contextvar would not do: in stateless mode the SDK runs the server in its own task group,
  outside the request's context.)
* **Stateless, JSON answers.** Every POST is a complete exchange (``stateless_http=True``,
  ``json_response=True``): no session to pin to one worker, nothing kept between requests, and
  each request re-authenticated, so a session id can never carry one person's access to another.
* **Reads go through the routes' code.** ``search_code`` and ``find_symbol`` search with
  :func:`retriever.api.scoped_search` (token scope, ``repo_moved``) inside
  :func:`retriever.api.audited` (the same audit line, ``endpoint="mcp"``); ``list_repos`` reads
  :func:`coderag.status.repo_status` like ``GET /v1/repos/{id}/status``. A repo outside the
  caller's scope is a tool error with the API's 403 reason, never an empty answer.
* **DNS rebinding.** With auth enabled every request needs a bearer token, so the Host header is
  not checked (the service runs behind proxies and on compose networks). With auth disabled
  (the single-user laptop install, bound to 127.0.0.1) the SDK's localhost protection stays on:
  only ``Host: 127.0.0.1|localhost|[::1]`` is served, so a web page cannot rebind a name to it.

``/mcp`` is a plain Starlette route outside the OpenAPI schema (its contract is MCP's, listed by
``tools/list``). :func:`install_mcp` adds it in the app factory; :func:`serving` runs the SDK's
session manager inside the app's lifespan (a fresh one per lifespan, since one can run once).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field
from starlette.requests import Request

from coderag.api.errors import coderag_error_response, public_detail
from coderag.auth import Principal, authenticate_request
from coderag.errors import CoderagError, InputError, NotFoundError, TransientError
from coderag.index import SearchFilter
from coderag.index.payload import ChunkPayload
from coderag.models import Hit
from coderag.status import repo_status
from retriever.api import (
    MAX_QUERY_CHARS,
    Glob,
    K,
    Lang,
    RepoName,
    audited,
    runtime_of,
    scoped_search,
)
from retriever.search import payload_to_hit

__all__ = [
    "MCP_PATH",
    "CodeChunk",
    "FileSegment",
    "FileView",
    "RepoBranch",
    "RepoEntry",
    "RepoList",
    "SearchResults",
    "SymbolMatch",
    "SymbolResults",
    "build_server",
    "install_mcp",
    "serving",
]

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
ENDPOINT = "mcp"
"""The audit line's ``endpoint`` for every MCP read."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[MutableMapping[str, Any]], Any]

# --- structured output ----------------------------------------------------------------------


class CodeChunk(BaseModel):
    """One indexed chunk: where it is, what it defines, its text."""

    repo: str
    path: str = Field(description="Repo-relative path.")
    start_line: int = Field(description="1-based, inclusive.")
    end_line: int = Field(description="1-based, inclusive.")
    symbol: str = Field(description="Definition(s) in the chunk (``Class.method``), or empty.")
    kind: str
    language: str
    score: float
    text: str
    branches: list[str]


class SearchResults(BaseModel):
    results: list[CodeChunk] = Field(description="Best first.")


class SymbolMatch(CodeChunk):
    match: Literal["exact", "qualified", "prefix"] = Field(
        description="exact: the symbol is the name; qualified: it ends with ``.name`` (a "
        "method, a nested definition); prefix: it starts with the name."
    )


class SymbolResults(BaseModel):
    results: list[SymbolMatch] = Field(description="Exact matches first, then qualified, prefix.")


class FileSegment(BaseModel):
    start_line: int
    end_line: int
    text: str = Field(description="The file's lines start_line..end_line, as indexed.")


class FileView(BaseModel):
    repo: str
    path: str
    branch: str = Field(description="The branch these lines are from.")
    language: str
    commit: str = Field(description="Commit the chunks were indexed from (may be empty).")
    segments: list[FileSegment] = Field(
        description="The indexed lines in line order, merged where contiguous. Lines between "
        "segments (blank lines, skipped content) are not in the index."
    )
    indexed_lines: str = Field(description="The line ranges the index holds: ``1-40, 44-80``.")


class RepoBranch(BaseModel):
    branch: str
    commit: str | None = Field(description="Indexed commit (None: not indexed yet).")
    indexed_at: float | None = Field(description="Unix time the commit became searchable.")
    lag_seconds: float = Field(description="Since the oldest push still waiting (0: none).")
    lag_commits: int | None = Field(
        description="Commits GitLab's head is ahead of the indexed commit (None: unknown)."
    )
    gitlab_head: str | None
    pending_commit: str | None


class RepoEntry(BaseModel):
    repo: str
    branch_patterns: list[str] = Field(description="The branches indexing follows (fnmatch).")
    branches: list[RepoBranch]


class RepoList(BaseModel):
    repos: list[RepoEntry]


# --- helpers --------------------------------------------------------------------------------


def _caller(ctx: Context) -> tuple[Request, Principal]:
    """The HTTP request of this message and the principal the guard left on it."""
    request = ctx.request_context.request
    principal = getattr(getattr(request, "state", None), "principal", None)
    if not isinstance(request, Request) or not isinstance(principal, Principal):
        # Only reachable if the server is served without the guard: refuse, never read.
        raise ToolError("unauthenticated: no principal on this request")
    return request, principal


def _tool_error(exc: CoderagError) -> ToolError:
    """A coderag error as an MCP tool error with the API's reason (a 5xx: its public
    sentence, the real message logged)."""
    if int(exc.http_status) >= 500:
        log.error("mcp tool failed", extra={"error_code": exc.error_code, "error": exc.detail})
    return ToolError(f"{exc.error_code}: {public_detail(exc)}")


def _query(text: str, what: str = "query") -> str:
    if not text.strip():
        raise InputError(f"{what} must not be empty")
    return text


def _chunk(h: Hit) -> dict[str, Any]:
    return {
        "repo": h.repo,
        "path": h.path,
        "start_line": h.start_line,
        "end_line": h.end_line,
        "symbol": h.symbol,
        "kind": h.kind,
        "language": h.language,
        "score": round(h.score, 6),
        "text": h.text,
        "branches": list(h.branches),
    }


def _symbol_match(symbol: str, name: str) -> Literal["exact", "qualified", "prefix"] | None:
    """How ``symbol`` (one chunk's label: ``a``, ``A.b``, ``a, b`` for several small
    definitions) matches ``name``; the best of its parts."""
    best: Literal["exact", "qualified", "prefix"] | None = None
    for part in (p.strip() for p in symbol.split(",")):
        if part == name:
            return "exact"
        if any(part.endswith(sep + name) for sep in (".", "::", "#", "/")):
            best = "qualified"
        elif best is None and part.startswith(name):
            best = "prefix"
    return best


def _merge(chunks: Iterable[ChunkPayload]) -> list[FileSegment]:
    """Chunks of one file version as segments in line order, contiguous ones merged (a chunk
    holds exactly its lines ``start_line..end_line``; an overlap is taken once)."""
    segments: list[FileSegment] = []
    for c in sorted(chunks, key=lambda c: (c.start_line, c.end_line)):
        last = segments[-1] if segments else None
        if last is None or c.start_line > last.end_line + 1:
            segments.append(FileSegment(start_line=c.start_line, end_line=c.end_line, text=c.text))
        elif c.end_line > last.end_line:
            tail = c.text.split("\n")[last.end_line - c.start_line + 1 :]
            last.text = "\n".join([last.text, *tail])
            last.end_line = c.end_line
        elif c.start_line == c.end_line == last.end_line and c.text not in last.text:
            last.text += c.text  # one very long line, indexed in pieces
    return segments


def _clip(seg: FileSegment, start: int | None, end: int | None) -> FileSegment | None:
    lo, hi = max(seg.start_line, start or 1), min(seg.end_line, end or seg.end_line)
    if lo > hi:
        return None
    lines = seg.text.split("\n")[lo - seg.start_line : hi - seg.start_line + 1]
    return FileSegment(start_line=lo, end_line=hi, text="\n".join(lines))


def _pick_branch(chunks: list[ChunkPayload]) -> str:
    """The branch to show a file from when none was named: ``main``, ``master``, else the first
    by name (each branch may hold another version of the file)."""
    names = {b for c in chunks for b in c.branches}
    for preferred in ("main", "master"):
        if preferred in names:
            return preferred
    return min(names) if names else ""


# --- the tools ------------------------------------------------------------------------------

Branch = Annotated[str, Field(min_length=1, max_length=255)]
Line = Annotated[int, Field(ge=1)]


def search_code(
    ctx: Context,
    query: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_QUERY_CHARS,
            description="Prose, identifiers, paths or pasted code.",
        ),
    ],
    repo: Annotated[RepoName | None, Field(description="One repo (``group/project``).")] = None,
    repos: Annotated[
        list[RepoName] | None,
        Field(max_length=100, description="Several repos. Neither: every repo you may read."),
    ] = None,
    branch: Annotated[Branch | None, Field(description="Only code on this branch.")] = None,
    path_glob: Annotated[
        Glob | None, Field(description="Repo-relative glob (``src/**/*.py``).")
    ] = None,
    language: Annotated[Lang | None, Field(description="e.g. ``python``.")] = None,
    k: Annotated[K, Field(description="Number of results (1..100).")] = 10,
) -> SearchResults:
    """Search the indexed code (hybrid dense + lexical) and return the best chunks.

    Only repositories you may read are searched; naming one you may not is an error.
    """
    request, principal = _caller(ctx)
    wanted = [*(repos or []), *([repo] if repo else [])]
    try:
        with audited(request, ENDPOINT, principal, query) as audit:
            hits = scoped_search(
                request,
                audit,
                _query(query),
                repos=wanted or None,
                branch=branch,
                path_globs=[path_glob] if path_glob else None,
                languages=[language] if language else None,
                k=k,
            )
    except CoderagError as exc:
        raise _tool_error(exc) from exc
    return SearchResults.model_validate({"results": [_chunk(h) for h in hits]})


def get_file(
    ctx: Context,
    repo: RepoName,
    path: Annotated[str, Field(min_length=1, max_length=4096, description="Repo-relative.")],
    branch: Annotated[
        Branch | None, Field(description="Default: main, master, else the first indexed.")
    ] = None,
    start_line: Annotated[Line | None, Field(description="First line wanted (1-based).")] = None,
    end_line: Annotated[Line | None, Field(description="Last line wanted (inclusive).")] = None,
) -> FileView:
    """A file as the index holds it: its chunks merged in line order.

    The index holds code, not every byte: blank runs and skipped content (secrets, generated
    files) may be missing, so ``indexed_lines`` says which lines are there.
    """
    request, principal = _caller(ctx)
    rel = path.strip().lstrip("/")
    try:
        with audited(request, ENDPOINT, principal, rel) as audit:
            audit.repos = [repo]
            principal.scope([repo])  # the API's 403, with its reason
            if start_line and end_line and end_line < start_line:
                raise InputError("end_line must not be before start_line")
            rt = runtime_of(request)
            flt = SearchFilter(repos=[repo], branch=branch or None, paths=[rel])
            chunks = [ChunkPayload.from_dict(p) for _, p in rt.index.scroll(flt)]
            chosen = branch or _pick_branch(chunks)
            chunks = [c for c in chunks if chosen in c.branches and c.repo == repo]
            if not chunks:
                registry = getattr(request.app.state, "registry", None)
                if registry is not None:
                    registry.check_moved(repo)  # a renamed project: say where it went (410)
                on = f" on branch {branch}" if branch else ""
                raise NotFoundError(f"{repo}: {rel} is not indexed{on}")
            segments = _merge(chunks)
            if start_line or end_line:
                segments = [s for s in (_clip(s, start_line, end_line) for s in segments) if s]
            audit.results = len(segments)
    except CoderagError as exc:
        raise _tool_error(exc) from exc
    return FileView(
        repo=repo,
        path=rel,
        branch=chosen,
        language=chunks[0].language,
        commit=max((c.commit for c in chunks), key=len, default=""),
        segments=segments,
        indexed_lines=", ".join(f"{s.start_line}-{s.end_line}" for s in segments) or "none",
    )


def find_symbol(
    ctx: Context,
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=512,
            description="A definition's name (``refund_payment``), qualified (``Ledger.close``) "
            "or its beginning.",
        ),
    ],
    repo: Annotated[RepoName | None, Field(description="Default: every repo you may read.")] = None,
    k: Annotated[K, Field(description="Number of results (1..100).")] = 10,
) -> SymbolResults:
    """Find where a function, class or method is defined.

    Exact names first (the index's ``symbol`` field), then definitions whose qualified name
    ends with it (``Class.name``) or starts with it, found by lexical search.
    """
    request, principal = _caller(ctx)
    try:
        with audited(request, ENDPOINT, principal, name) as audit:
            name = _query(name, "name").strip()
            scope = principal.scope([repo] if repo else None)
            audit.repos = scope
            rt = runtime_of(request)
            found: dict[str, SymbolMatch] = {}
            for pid, payload in rt.index.scroll(SearchFilter(repos=scope, symbols=[name])):
                if len(found) >= k:
                    break
                p = ChunkPayload.from_dict(payload)
                if scope is None or p.repo in scope:
                    found[pid] = SymbolMatch(**_chunk(payload_to_hit(pid, p)), match="exact")
            if len(found) < k:  # labels such as "a, b" or "A.name": lexical, then filtered
                hits = scoped_search(
                    request, audit, name, repos=scope, k=min(100, max(5 * k, 50)), mode="lexical"
                )
                for h in hits:
                    how = _symbol_match(h.symbol, name)
                    if how is not None and h.id not in found:
                        found[h.id] = SymbolMatch(**_chunk(h), match=how)
            order = {"exact": 0, "qualified": 1, "prefix": 2}
            results = sorted(found.values(), key=lambda m: order[m.match])[:k]
            audit.results = len(results)
    except CoderagError as exc:
        raise _tool_error(exc) from exc
    return SymbolResults(results=results)


def list_repos(ctx: Context) -> RepoList:
    """The registered repositories you may read, with each branch's indexed commit and lag."""
    request, principal = _caller(ctx)
    try:
        rt = runtime_of(request)
        state = request.app.state
        registry = getattr(state, "registry", None)
        if registry is None:
            raise TransientError("the service is starting: the registry is not open yet")
        out = []
        for rec in registry.list():
            if not principal.can_read(rec.id):
                continue
            st = repo_status(rt.index, registry, getattr(state, "dispatcher", None), rec.id) or {}
            out.append(
                RepoEntry(
                    repo=rec.id,
                    branch_patterns=list(rec.branches),
                    branches=[RepoBranch.model_validate(b) for b in st.get("branches") or []],
                )
            )
    except CoderagError as exc:
        raise _tool_error(exc) from exc
    return RepoList(repos=out)


def build_server(version: str = "") -> MCPServer:
    """The MCP server and its four tools (cheap: the SDK only records them)."""
    server: MCPServer = MCPServer(
        "coderag",
        version=version,
        instructions="Code retrieval over the indexed GitLab repositories you may read: "
        "search_code for questions, find_symbol for definitions, get_file to read a file's "
        "indexed lines, list_repos for what is indexed and how fresh it is.",
    )
    for fn in (search_code, get_file, find_symbol, list_repos):
        server.add_tool(fn, structured_output=True)
    return server


# --- serving --------------------------------------------------------------------------------


class _Guard:
    """ASGI app of ``/mcp``: the API's authentication, then the SDK's session manager."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            await anyio.to_thread.run_sync(authenticate_request, request)
            manager = getattr(self.app.state, "mcp_sessions", None)
            if manager is None:
                raise TransientError("the service is starting: MCP is not serving yet")
        except CoderagError as exc:
            await coderag_error_response(request, exc)(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)


def install_mcp(app: FastAPI, version: str = "") -> None:
    """Add ``/mcp`` to ``app`` (outside the OpenAPI schema); :func:`serving` starts it."""
    app.state.mcp = build_server(version)
    app.state.mcp_sessions = None
    app.router.add_route(MCP_PATH, _Guard(app), include_in_schema=False)  # type: ignore[arg-type]


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[None]:
    """Run the SDK's session manager for the app's lifespan (the SDK's documented
    ``session_manager.run()``), a fresh one each time since a manager runs once."""
    server: MCPServer = app.state.mcp
    auth_on = bool(getattr(app.state.auth, "enabled", False))
    server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        # None: the SDK's localhost-only Host/Origin check (see the module docstring).
        transport_security=(
            TransportSecuritySettings(enable_dns_rebinding_protection=False) if auth_on else None
        ),
    )
    manager = server.session_manager
    async with manager.run():
        app.state.mcp_sessions = manager
        try:
            yield
        finally:
            app.state.mcp_sessions = None
