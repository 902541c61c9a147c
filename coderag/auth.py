"""Bearer-token auth and the tenant boundary of every read.

Tokens come from ``settings.api_tokens`` (token -> repos it may read, ``["*"]`` for all). An
empty mapping disables auth: the embedded single-user default on a laptop. GitLab webhooks do
not use these tokens (they carry ``X-Gitlab-Token``, checked by ``webhooks/``).

Two rules make the boundary hold whatever the request says:

* a request naming a repo outside its token's scope is refused (403), it is never silently
  narrowed (a silent narrowing would look like "no results" and hide a misconfiguration);
* a request naming no repo reads exactly the token's scope, so a scoped token can never reach
  an unrestricted index query. An empty scope is refused rather than turned into an empty
  filter, because an empty repo list means "no restriction" to the index.

Tokens are compared in constant time against every configured token (sha256 digests, so
lengths never leak either), and only a short sha256 prefix (:attr:`Principal.token_id`) ever
reaches logs or metrics.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coderag.errors import AuthError, ForbiddenError

__all__ = [
    "ALL_REPOS",
    "ANONYMOUS",
    "Principal",
    "TokenAuth",
    "bearer_scheme",
    "require_principal",
    "token_id",
]

ALL_REPOS = "*"


def token_id(token: str) -> str:
    """The loggable name of a token: the first 12 hex digits of its sha256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, and which repos they may read (``repos=None``: every repo)."""

    token_id: str
    repos: frozenset[str] | None

    @property
    def unrestricted(self) -> bool:
        return self.repos is None

    def can_read(self, repo: str) -> bool:
        return self.repos is None or repo in self.repos

    def scope(self, requested: Sequence[str] | None) -> list[str] | None:
        """The repo filter for a read that asked for ``requested``.

        Returns ``None`` only for an unrestricted principal that named no repo (search
        everything). Raises :class:`ForbiddenError` for any requested repo out of scope, and
        when a scoped principal has no repo at all.
        """
        wanted = [r for r in (requested or ()) if r]
        if wanted:
            denied = sorted({r for r in wanted if not self.can_read(r)})
            if denied:
                raise ForbiddenError(
                    f"token {self.token_id} may not read: {', '.join(denied[:10])}"
                )
            return list(dict.fromkeys(wanted))
        if self.repos is None:
            return None
        if not self.repos:
            raise ForbiddenError(f"token {self.token_id} has no repositories in scope")
        return sorted(self.repos)


ANONYMOUS = Principal(token_id="anonymous", repos=None)
"""The principal of every request while auth is disabled (no tokens configured)."""


class TokenAuth:
    """Resolves an ``Authorization`` header to a :class:`Principal`."""

    def __init__(self, tokens: Mapping[str, Iterable[str]]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for token, repos in tokens.items():
            repo_list = [str(r) for r in repos]
            scope = None if ALL_REPOS in repo_list else frozenset(repo_list)
            digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
            self._entries.append((digest, Principal(token_id(token), scope)))

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization: Bearer <token>`` header value."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise AuthError("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("expected an Authorization header of the form 'Bearer <token>'")
        digest = hashlib.sha256(value.strip().encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for known, principal in self._entries:  # no early exit: same time for every token
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise AuthError("invalid token")
        return found


# --- FastAPI glue ---------------------------------------------------------------------------

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API token from CODERAG_API_TOKENS (not needed while auth is disabled).",
)


def require_principal(
    request: Request,
    _creds: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
) -> Principal:
    """FastAPI dependency: the caller's :class:`Principal`, also left on ``request.state``
    so other routers (repo administration) can scope what they show."""
    auth: TokenAuth | None = getattr(request.app.state, "auth", None)
    principal = (auth or TokenAuth({})).authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    return principal
