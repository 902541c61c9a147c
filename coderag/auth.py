"""Bearer-token auth and the tenant boundary of every read.

Three kinds of bearer token, tried in this order (:class:`Authenticator`):

* **Service tokens** (``settings.api_tokens``: token -> repos it may read, ``["*"]`` for all):
  service accounts with explicit scopes (an evaluation job, an admin's CLI).
* **Delegation tokens** (``settings.delegation_tokens``): a gateway (the LiteLLM hook) that acts
  for one of its authenticated users, named in the :data:`ACTING_FOR_HEADER` header. Such a
  token reads nothing of its own: without a user it is refused, with one it reads exactly what
  that user may read in GitLab. So the gateway never reads "as everyone".
* **OIDC tokens** (JWTs of the site's identity provider, :mod:`coderag.oidc`): a person, whose
  readable repos are the GitLab projects GitLab lets them read (:mod:`coderag.permissions`).

No token of any kind configured disables auth: the embedded single-user default on a laptop.
GitLab webhooks do not use these tokens (they carry ``X-Gitlab-Token``, checked by
``webhooks/``).

A person's scope is resolved when the request is authenticated, from GitLab's answer cached per
user (TTL), so a member removed in GitLab loses access within the TTL. GitLab unreachable with
nothing cached is a 503 (fail closed): never an empty scope that looks like "no results", never
the full index.

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
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coderag.errors import AuthError, ConfigError, ForbiddenError

__all__ = [
    "ACTING_FOR_HEADER",
    "ALL_REPOS",
    "ANONYMOUS",
    "Authenticator",
    "PermissionSource",
    "Principal",
    "PrincipalKind",
    "TokenAuth",
    "TokenVerifier",
    "authenticate_request",
    "authenticator_from_settings",
    "bearer_scheme",
    "require_principal",
    "token_id",
]

T = TypeVar("T")
ALL_REPOS = "*"
audit_log = logging.getLogger("coderag.audit")
ACTING_FOR_HEADER = "x-coderag-user"
"""Header naming the user a delegation token acts for (the gateway's authenticated user)."""

PrincipalKind = Literal["anonymous", "service", "delegated", "oidc"]


def token_id(token: str) -> str:
    """The loggable name of a token: the first 12 hex digits of its sha256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, and which repos they may read (``repos=None``: every repo).

    ``kind`` says how the caller authenticated; ``username`` and ``subject`` name the person
    for OIDC and delegated callers (``subject`` is the IdP's ``sub``, known for OIDC only), so
    the audit line says who read, not only which token.
    """

    token_id: str
    repos: frozenset[str] | None
    kind: PrincipalKind = "service"
    subject: str | None = None
    username: str | None = None

    @property
    def unrestricted(self) -> bool:
        return self.repos is None

    @property
    def label(self) -> str:
        """How errors name the caller: ``user alice`` or ``token 3f2a...``."""
        return f"user {self.username}" if self.username else f"token {self.token_id}"

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
                raise ForbiddenError(f"{self.label} may not read: {', '.join(denied[:10])}")
            return list(dict.fromkeys(wanted))
        if self.repos is None:
            return None
        if not self.repos:
            raise ForbiddenError(f"{self.label} has no repositories in scope")
        return sorted(self.repos)


ANONYMOUS = Principal(token_id="anonymous", repos=None, kind="anonymous")
"""The principal of every request while auth is disabled (no tokens configured)."""


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing bearer token (Authorization: Bearer <token>)")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("expected an Authorization header of the form 'Bearer <token>'")
    return value.strip()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _lookup(entries: Iterable[tuple[bytes, T]], token: str) -> T | None:
    """The value of ``token``'s entry, compared in constant time against every entry (no
    early exit, sha256 digests: neither timing nor length tells which token is close)."""
    digest = _digest(token)
    found: T | None = None
    for known, value in entries:
        if hmac.compare_digest(known, digest):
            found = value
    return found


def _refuse_acting_for(principal: Principal, acting_for: str | None) -> Principal:
    """A service token reads as itself: naming a user (:data:`ACTING_FOR_HEADER`) is refused."""
    if acting_for:
        raise ForbiddenError(
            f"token {principal.token_id} may not act for a user ({ACTING_FOR_HEADER}): only a "
            "delegation token may"
        )
    return principal


class TokenAuth:
    """Resolves an ``Authorization`` header to the :class:`Principal` of a service token.

    The static part of :class:`Authenticator`, usable alone where only service tokens exist.
    """

    def __init__(self, tokens: Mapping[str, Iterable[str]]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for token, repos in tokens.items():
            repo_list = [str(r) for r in repos]
            scope = None if ALL_REPOS in repo_list else frozenset(repo_list)
            self._entries.append((_digest(token), Principal(token_id(token), scope)))

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def match(self, token: str) -> Principal | None:
        """The principal of ``token``, compared in constant time against every entry."""
        return _lookup(self._entries, token)

    def authenticate(self, authorization: str | None, acting_for: str | None = None) -> Principal:
        """The principal for an ``Authorization: Bearer <token>`` header value."""
        if not self.enabled:
            return ANONYMOUS
        found = self.match(_bearer(authorization))
        if found is None:
            raise AuthError("invalid token")
        return _refuse_acting_for(found, acting_for)


class TokenVerifier(Protocol):
    """What :class:`Authenticator` needs of an OIDC verifier (``coderag.oidc.OIDCVerifier``)."""

    def verify(self, token: str) -> Any: ...  # an Identity: .subject, .username

    @staticmethod
    def looks_like_jwt(token: str) -> bool: ...


class PermissionSource(Protocol):
    """What :class:`Authenticator` needs of GitLab (``coderag.permissions.GitLabPermissions``)."""

    def readable(self, username: str, projects: Mapping[str, int]) -> frozenset[str]: ...


class Authenticator:
    """Service tokens, then delegation tokens, then OIDC JWTs (see the module docstring).

    ``projects`` returns the registered repositories that belong to a GitLab project
    (repo id -> project id): the only repos a person can be granted, since GitLab is the source
    of what they may read. It is read at most every ``projects_cache_seconds``.
    """

    def __init__(
        self,
        tokens: Mapping[str, Iterable[str]],
        *,
        delegation_tokens: Iterable[str] = (),
        oidc: TokenVerifier | None = None,
        permissions: PermissionSource | None = None,
        projects: Callable[[], Mapping[str, int]] | None = None,
        projects_cache_seconds: float = 5.0,
    ) -> None:
        self.static = TokenAuth(tokens)
        self._delegation = [(_digest(t), token_id(t)) for t in delegation_tokens]
        self.oidc = oidc
        self.permissions = permissions
        if (self._delegation or oidc is not None) and (permissions is None or projects is None):
            raise ConfigError(
                "OIDC and delegation tokens need GitLab permissions (CODERAG_GITLAB_URL and a "
                "token that may read memberships)"
            )
        self._projects = projects
        self._projects_ttl = projects_cache_seconds
        self._projects_cache: tuple[float, Mapping[str, int]] | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.static.enabled or bool(self._delegation) or self.oidc is not None

    def gitlab_projects(self) -> Mapping[str, int]:
        """Registered repo id -> GitLab project id, cached for a few seconds."""
        assert self._projects is not None
        now = time.monotonic()
        with self._lock:
            cached = self._projects_cache
            if cached is not None and now - cached[0] < self._projects_ttl:
                return cached[1]
        projects = dict(self._projects())
        with self._lock:
            self._projects_cache = (now, projects)
        return projects

    def _user_scope(self, username: str) -> frozenset[str]:
        assert self.permissions is not None
        return self.permissions.readable(username, self.gitlab_projects())

    def authenticate(self, authorization: str | None, acting_for: str | None = None) -> Principal:
        """The principal for an ``Authorization`` header (and the acting-for header)."""
        if not self.enabled:
            return ANONYMOUS
        token = _bearer(authorization)
        acting_for = (acting_for or "").strip() or None
        service = self.static.match(token)
        delegated = _lookup(self._delegation, token)
        if service is not None:
            return _refuse_acting_for(service, acting_for)
        if delegated is not None:
            if not acting_for:
                raise AuthError(
                    f"token {delegated} is a delegation token: it reads only for a user named "
                    f"in the {ACTING_FOR_HEADER} header"
                )
            if len(acting_for) > 255 or any(c.isspace() or ord(c) < 32 for c in acting_for):
                raise AuthError(f"malformed {ACTING_FOR_HEADER} header")
            repos = self._user_scope(acting_for)
            return Principal(delegated, repos, kind="delegated", username=acting_for)
        if self.oidc is not None and self.oidc.looks_like_jwt(token):
            identity = self.oidc.verify(token)
            if acting_for:
                raise ForbiddenError(
                    f"user {identity.username} may not act for another user ({ACTING_FOR_HEADER})"
                )
            repos = self._user_scope(identity.username)
            return Principal(
                token_id=token_id(identity.subject),
                repos=repos,
                kind="oidc",
                subject=identity.subject,
                username=identity.username,
            )
        raise AuthError("invalid token")


def authenticator_from_settings(
    settings: Any, projects: Callable[[], Mapping[str, int]] | None = None
) -> Authenticator:
    """The :class:`Authenticator` the settings describe (OIDC and GitLab clients built here,
    so the API's app factory stays free of identity details)."""
    oidc: TokenVerifier | None = None
    permissions: PermissionSource | None = None
    if settings.oidc_issuer:
        from coderag.oidc import OIDCVerifier

        oidc = OIDCVerifier(
            settings.oidc_issuer,
            settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            jwks_file=settings.oidc_jwks_file,
            algorithms=settings.oidc_algorithms,
            user_claim=settings.oidc_user_claim,
            leeway_seconds=settings.oidc_leeway_seconds,
        )
    token = settings.permissions_gitlab_token or settings.gitlab_token
    # Settings refuse per-user access without GitLab; should they be bypassed, Authenticator
    # refuses OIDC or delegation tokens without permissions.
    if (settings.oidc_issuer or settings.delegation_tokens) and settings.gitlab_url and token:
        from coderag.permissions import GitLabPermissions

        permissions = GitLabPermissions(
            settings.gitlab_url,
            token.get_secret_value(),
            ttl_seconds=settings.permissions_ttl_seconds,
            min_access_level=settings.permissions_min_access_level,
            user_lookup=settings.permissions_user_lookup,
        )
    return Authenticator(
        settings.api_tokens,
        delegation_tokens=[t.get_secret_value() for t in settings.delegation_tokens],
        oidc=oidc,
        permissions=permissions,
        projects=projects,
    )


# --- FastAPI glue ---------------------------------------------------------------------------

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A service token (CODERAG_API_TOKENS), a delegation token with the "
    "X-Coderag-User header, or the user's OIDC access token (not needed while auth is disabled).",
)


def require_principal(
    request: Request,
    _creds: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
) -> Principal:
    """FastAPI dependency: the caller's :class:`Principal`, also left on ``request.state``
    so other routers (repo administration) can scope what they show."""
    return authenticate_request(request)


def authenticate_request(request: Request) -> Principal:
    """The caller's :class:`Principal` from the request's headers (``Authorization`` and
    :data:`ACTING_FOR_HEADER`), left on ``request.state.principal``; a refused credential is
    audited and raised. :func:`require_principal` for the routers, and the guard of ``/mcp``,
    so every entry point authenticates the same way. Blocking (GitLab may be asked)."""
    auth: Authenticator | TokenAuth | None = getattr(request.app.state, "auth", None)
    try:
        principal = (auth or TokenAuth({})).authenticate(
            request.headers.get("authorization"), request.headers.get(ACTING_FOR_HEADER)
        )
    except AuthError as exc:  # a refused credential is an audit event too (never the token)
        audit_log.info(
            "auth_refused",
            extra={
                "path": request.url.path,
                "error_code": exc.error_code,
                "reason": exc.detail,
                "client": request.client.host if request.client else None,
            },
        )
        raise
    request.state.principal = principal
    return principal
