"""LiteLLM gateway auth: the developer's own OIDC access token names the gateway's user.

Reference it from the gateway's ``config.yaml`` (see ``docs/INTEGRATIONS.md``)::

    general_settings:
      master_key: os.environ/LITELLM_MASTER_KEY
      custom_auth: retriever.litellm_auth.user_api_key_auth

Why: coderag's hook (``retriever/litellm_hook.py``) reads as the user LiteLLM authenticated,
and open-source LiteLLM without its Postgres database knows no user but the master key's
(virtual keys live in that database; JWT auth is an enterprise feature, refused without a
licence in ``litellm/proxy/auth/user_api_key_auth.py``). ``general_settings.custom_auth`` is
open source: LiteLLM loads ``<module>.<attribute>`` from the config's directory first
(``get_instance_fn`` in ``litellm/proxy/types_utils/utils.py``, as for the hook) and, for every
authenticated route, awaits ``user_api_key_auth(request=request, api_key=api_key)`` with the
bearer token stripped of ``Bearer `` (``user_api_key_auth_builder`` in
``litellm/proxy/auth/user_api_key_auth.py``). The ``UserAPIKeyAuth`` it returns is what the
hook receives as ``user_api_key_dict``; an exception is turned into the client's answer by
``_as_proxy_exception`` (``litellm/proxy/auth/auth_exception_handler.py``): a
``ProxyException`` keeps its status code, message and headers.

What it accepts, and nothing else (every refusal is a 401 whose message names the reason):

* **The developer's OIDC access token** (Keycloak's, as ``docker/keycloak/coderag-login.sh``
  writes it for Continue), checked by the rules coderag itself applies to such a token
  (``coderag/oidc.py``, ``docs/IDENTITY.md``): an asymmetric algorithm only (never ``none`` or
  ``HS*``, refused before any key lookup), the signature against the issuer's published keys
  (JWKS), ``iss`` equal to the configured issuer, ``aud`` naming a configured audience,
  ``exp`` in the future, ``nbf``/``iat`` not beyond the clock skew, a ``sub``, a ``typ`` of an
  access or ID token (Keycloak's ``Bearer``/``ID``; refresh tokens never authenticate), and the
  user in the configured claim (``preferred_username`` by default; with ``email``, only a
  verified one). The result is ``UserAPIKeyAuth(user_id=<username>)``, role
  ``internal_user``, limited to LiteLLM's model routes (``allowed_routes: llm_api_routes``)
  and the config's authenticated pass-through routes (Tabby's ``/autocomplete``); its
  ``api_key`` is the SHA-256 of the token, never the token, as that field ends up in LiteLLM's
  logs and metrics.
* **The master key**, as LiteLLM itself answers it (``user_api_key_auth.py``: role
  ``proxy_admin``, ``user_id`` ``default_user_id``, the key replaced by the alias
  ``litellm_proxy_master_key``): a custom auth replaces LiteLLM's own key check, so without
  this the master key would stop working. Its requests get no coderag context (the hook
  reads as nobody for ``default_user_id``). LiteLLM's ``custom_auth_settings.mode: auto``
  (custom auth, then LiteLLM's own) is not used: LiteLLM documents it as an enterprise
  feature (docs.litellm.ai/docs/proxy/custom_auth, "Custom Auth + LiteLLM Virtual Keys").

Keys: PyJWT's ``PyJWKClient`` on the issuer's JWKS (``CODERAG_GATEWAY_OIDC_JWKS_URL``, or the
``jwks_uri`` of ``<issuer>/.well-known/openid-configuration``, whose ``issuer`` must be the
configured one), the set cached for 5 minutes; a token naming an unknown ``kid`` (a rotated
key) re-fetches it at most every 30 s. While the provider is down the last key set fetched
stays in use, and a failed fetch is not retried for 30 s; with no key set ever fetched a token
gets a 503 (retry later, it may be valid), never access.

This module imports nothing of coderag (only PyJWT, httpx and litellm, all in the gateway's
image: ``pyjwt`` and ``cryptography`` are requirements of ``litellm[proxy]``, whose own JWT
auth uses them), so the gateway mounts this one file next to the hook.

Configuration (environment of the gateway process), read when LiteLLM loads the module: a
missing issuer stops the gateway at start-up rather than refusing everyone later.

``CODERAG_GATEWAY_OIDC_ISSUER``
    exactly the tokens' ``iss`` (the stack: ``https://<KEYCLOAK_HOSTNAME>/realms/coderag``).
``CODERAG_GATEWAY_OIDC_AUDIENCE``
    accepted ``aud`` values, a JSON list or comma-separated (default ``coderag``).
``CODERAG_GATEWAY_OIDC_JWKS_URL``
    the key set's URL (the stack: Keycloak's internal ``/protocol/openid-connect/certs``);
    unset: discovery.
``CODERAG_GATEWAY_OIDC_USER_CLAIM``
    the claim naming the GitLab user (default ``preferred_username``; ``email``, ``sub``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import httpx
import jwt
from jwt import PyJWKClient, PyJWKSet
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKSetError

# Air-gapped: importing litellm would otherwise try to download its model cost map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.constants import LITELLM_PROXY_ADMIN_NAME, LITELLM_PROXY_MASTER_KEY_ALIAS
from litellm.proxy._types import LitellmUserRoles, ProxyErrorTypes, ProxyException, UserAPIKeyAuth

__all__ = [
    "ALGORITHMS",
    "GatewayAuth",
    "Refused",
    "Unavailable",
    "user_api_key_auth",
]

log = logging.getLogger("coderag.litellm_auth")

ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""The asymmetric JWS algorithms PyJWT implements: coderag's ``DEFAULT_ALGORITHMS``."""
REQUIRED_CLAIMS = ("exp", "iss", "sub")
TOKEN_TYPES = frozenset({"Bearer", "ID"})
"""Keycloak's ``typ`` of access and ID tokens (``TokenUtil.TOKEN_TYPE_BEARER`` / ``_ID``);
absent is an access token of another provider. ``Refresh``, ``Offline``... are refused."""
LEEWAY_SECONDS = 30.0
"""Clock skew allowed between the provider and the gateway (coderag's default)."""
KEYS_LIFESPAN_SECONDS = 300.0
MIN_REFETCH_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 5.0
MODEL_ROUTES = "llm_api_routes"
"""LiteLLM's route group of the model APIs (``LiteLLMRoutes.llm_api_routes``): what
``RouteChecks.is_virtual_key_allowed_to_call_route`` lets a token with these
``allowed_routes`` call; management and admin routes are refused with a 403."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/+=@-]")


class Refused(Exception):
    """The token is not acceptable; the message is the reason the client is told."""


class Unavailable(Exception):
    """No key set could be obtained from the identity provider yet: retry later (503)."""


class Person(NamedTuple):
    """Who a verified token speaks for. (Not a dataclass: LiteLLM executes this file without
    putting it in ``sys.modules``, where ``dataclass`` looks its module up.)"""

    username: str
    email: str | None


def _show(value: object) -> str:
    """A token-supplied value made safe to echo in a reason (short, plain ASCII)."""
    return _UNSAFE.sub("?", str(value))[:64]


def _audiences(raw: str | Sequence[str] | None) -> tuple[str, ...]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return ("coderag",)
    if isinstance(raw, str):
        text = raw.strip()
        values = json.loads(text) if text.startswith("[") else text.split(",")
    else:
        values = list(raw)
    audiences = tuple(str(v).strip() for v in values if str(v).strip())
    if not audiences:
        raise ValueError("CODERAG_GATEWAY_OIDC_AUDIENCE names no audience")
    return audiences


def _looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts whose header decodes: a token to verify, not some key."""
    if len(token) > 16384 or token.count(".") != 2:
        return False
    try:
        return isinstance(jwt.get_unverified_header(token).get("alg"), str)
    except jwt.PyJWTError:
        return False


class _KeptKeysClient(PyJWKClient):
    """``PyJWKClient`` that keeps the last key set it fetched while the provider is down,
    and does not retry a failed fetch for ``cooldown_duration`` seconds (a hanging provider
    would otherwise hold every request for the fetch timeout, one after the other: the
    client fetches under a lock)."""

    def __init__(self, uri: str, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self._kept: PyJWKSet | None = None
        self._failed_at: float | None = None

    def get_jwk_set(self, refresh: bool = False) -> PyJWKSet:
        now = time.monotonic()
        if self._failed_at is not None and now - self._failed_at < self.cooldown_duration:
            if self._kept is None:
                raise PyJWKClientConnectionError("the last key fetch failed; not retried yet")
            return self._kept
        try:
            keys = super().get_jwk_set(refresh)
        except (PyJWKClientError, PyJWKSetError, ValueError) as exc:
            # unreachable, an HTTP error, not JSON, or no usable key in it: a failed fetch
            self._failed_at = now
            log.warning(
                "oidc key fetch failed",
                extra={"jwks_uri": self.uri, "error": str(exc), "have_keys": bool(self._kept)},
            )
            if self._kept is None:
                raise PyJWKClientConnectionError(str(exc)) from exc
            return self._kept
        self._kept, self._failed_at = keys, None
        return keys


def _proxy_master_key() -> str | None:
    """The master key the running proxy resolved from ``general_settings.master_key``."""
    from litellm.proxy import proxy_server

    key = getattr(proxy_server, "master_key", None)
    return key if isinstance(key, str) and key else None


def _proxy_pass_through_routes() -> list[str]:
    """The paths of the proxy's pass-through endpoints that require auth (``auth: true``):
    a pass-through route with auth is only callable by tokens whose ``allowed_routes`` name it
    (``RouteChecks.is_auth_enforced_pass_through_route``)."""
    from litellm.proxy import proxy_server

    endpoints = (getattr(proxy_server, "general_settings", None) or {}).get(
        "pass_through_endpoints"
    )
    return [
        str(e["path"])
        for e in endpoints or []
        if isinstance(e, Mapping) and e.get("auth") is True and e.get("path")
    ]


class GatewayAuth:
    """``general_settings.custom_auth`` of the gateway: OIDC access tokens and the master key.

    Thread-safe; one instance per gateway worker. ``master_key`` and ``pass_through_routes``
    default to what the running proxy loaded from its config."""

    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str] | None = None,
        *,
        jwks_url: str | None = None,
        user_claim: str | None = None,
        master_key: Callable[[], str | None] = _proxy_master_key,
        pass_through_routes: Callable[[], list[str]] = _proxy_pass_through_routes,
        min_refetch_seconds: float = MIN_REFETCH_SECONDS,
        keys_lifespan_seconds: float = KEYS_LIFESPAN_SECONDS,
    ) -> None:
        if not issuer or not issuer.startswith(("https://", "http://")):
            raise ValueError(
                f"CODERAG_GATEWAY_OIDC_ISSUER must be the tokens' http(s) iss, got {issuer!r}"
            )
        self.issuer = issuer
        self.audience = _audiences(audience)
        self.user_claim = user_claim or "preferred_username"
        self._jwks_url = jwks_url or None
        self._master_key = master_key
        self._pass_through_routes = pass_through_routes
        self._min_refetch = float(min_refetch_seconds)
        self._lifespan = float(keys_lifespan_seconds)
        self._client: _KeptKeysClient | None = None
        self._discovery_failed_at: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GatewayAuth:
        return cls(
            env.get("CODERAG_GATEWAY_OIDC_ISSUER", ""),
            env.get("CODERAG_GATEWAY_OIDC_AUDIENCE"),
            jwks_url=env.get("CODERAG_GATEWAY_OIDC_JWKS_URL"),
            user_claim=env.get("CODERAG_GATEWAY_OIDC_USER_CLAIM"),
        )

    async def __call__(self, request: Any, api_key: str | None) -> UserAPIKeyAuth:
        """LiteLLM's custom-auth call: the caller's ``UserAPIKeyAuth``, or a
        ``ProxyException`` (401 with the reason, 503 while the provider's keys are out of
        reach) that LiteLLM sends back as is."""
        token = (api_key or "").strip()
        if not token:
            raise _refusal("no bearer token")
        master = self._master_key()
        if master is not None and secrets.compare_digest(token.encode(), master.encode()):
            return UserAPIKeyAuth(
                api_key=LITELLM_PROXY_MASTER_KEY_ALIAS,
                user_role=LitellmUserRoles.PROXY_ADMIN,
                user_id=LITELLM_PROXY_ADMIN_NAME,
            )
        if not _looks_like_jwt(token):
            raise _refusal("not an OIDC access token (a JWT), nor the master key")
        try:
            person = await asyncio.to_thread(self.verify, token)
        except Refused as exc:
            raise _refusal(str(exc)) from None
        except Unavailable as exc:
            raise ProxyException(
                message=f"Authentication unavailable: {exc}",
                type=ProxyErrorTypes.auth_error,
                param="None",
                code=503,
                headers={"Retry-After": str(int(self._min_refetch) or 1)},
            ) from None
        except Exception as exc:  # a token shaped as nobody foresaw: refused, never let in
            log.warning("token check failed", extra={"error": type(exc).__name__})
            raise _refusal("invalid token") from None
        return UserAPIKeyAuth(
            api_key=hashlib.sha256(token.encode()).hexdigest(),
            user_id=person.username,
            user_email=person.email,
            user_role=LitellmUserRoles.INTERNAL_USER,
            allowed_routes=[MODEL_ROUTES, *self._pass_through_routes()],
        )

    # -- verification -----------------------------------------------------------------------
    def verify(self, token: str) -> Person:
        """The person ``token`` speaks for; :class:`Refused` naming what is wrong, or
        :class:`Unavailable` while no key set was ever fetched."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Refused("malformed token")
        if alg not in ALGORITHMS:  # before any key lookup: an unlisted alg fetches nothing
            raise Refused(f"algorithm '{_show(alg)}' not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Refused("the token names no signing key (kid)")
        try:
            key = self._keys().get_signing_key(kid)
        except PyJWKClientConnectionError:
            raise Unavailable("the identity provider's keys are unavailable") from None
        except PyJWKClientError:
            raise Refused(f"unknown signing key (kid '{_show(kid)}')") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=list(self.audience),
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS), "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise Refused(_reason(exc, alg)) from None
        return self._person(claims)

    def _person(self, claims: Mapping[str, Any]) -> Person:
        typ = claims.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ not in TOKEN_TYPES):
            raise Refused(f"token type '{_show(typ)}' not accepted")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Refused("missing claim 'sub'")
        username = claims.get(self.user_claim)
        if username is None or username == "":
            raise Refused(f"missing claim '{self.user_claim}'")
        if not isinstance(username, str):
            raise Refused(f"malformed claim '{self.user_claim}'")
        if self.user_claim == "email" and claims.get("email_verified") is not True:
            raise Refused("email not verified (claim 'email_verified' is not true)")
        if username == LITELLM_PROXY_ADMIN_NAME:  # the master key's user_id: never a person
            raise Refused(f"user '{LITELLM_PROXY_ADMIN_NAME}' is reserved")
        email = claims.get("email")
        if not isinstance(email, str) or not email or claims.get("email_verified") is not True:
            email = None
        return Person(username=username, email=email)

    # -- keys -------------------------------------------------------------------------------
    def _keys(self) -> _KeptKeysClient:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = _KeptKeysClient(
                    self._jwks_url or self._discover(),
                    lifespan=self._lifespan,
                    timeout=FETCH_TIMEOUT_SECONDS,
                    cooldown_duration=self._min_refetch,
                    headers={"Accept": "application/json"},
                )
            return self._client

    def _discover(self) -> str:
        """``jwks_uri`` of the issuer's discovery document (OpenID Connect Discovery 1.0 §4;
        §4.3: its ``issuer`` must be the configured one). Rate-limited like key fetches."""
        failed = self._discovery_failed_at
        if failed is not None and time.monotonic() - failed < self._min_refetch:
            raise PyJWKClientConnectionError("the last discovery failed; not retried yet")
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            resp = httpx.get(url, timeout=FETCH_TIMEOUT_SECONDS)
            resp.raise_for_status()
            doc = resp.json()
            if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
                raise ValueError(f"the discovery document does not name issuer {self.issuer}")
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise ValueError("the discovery document has no http(s) jwks_uri")
        except (httpx.HTTPError, ValueError) as exc:
            self._discovery_failed_at = time.monotonic()
            log.warning("oidc discovery failed", extra={"url": url, "error": str(exc)})
            raise PyJWKClientConnectionError(str(exc)) from None
        return uri


def _refusal(reason: str) -> ProxyException:
    """A 401 naming ``reason`` (RFC 6750 §3: ``WWW-Authenticate: Bearer error=...``)."""
    return ProxyException(
        message=f"Authentication Error: {reason}",
        type=ProxyErrorTypes.auth_error,
        param="None",
        code=401,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
    )


def _reason(exc: jwt.PyJWTError, alg: str) -> str:
    """PyJWT's exception -> the reason the client is told (subclasses before their bases)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim '{_show(exc.claim)}'"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "invalid signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return f"algorithm '{_show(alg)}' does not fit the signing key"
    if isinstance(exc, jwt.InvalidKeyError):
        return "signing key too weak"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return "invalid token"


user_api_key_auth = GatewayAuth.from_env()
"""What ``general_settings.custom_auth: retriever.litellm_auth.user_api_key_auth`` names."""
