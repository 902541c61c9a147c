"""OIDC bearer tokens: check a JWT of the site's identity provider and name its user.

A person's IDE (or the gateway acting for them) sends an access token the identity provider
(Keycloak in the stack, any OpenID Connect provider elsewhere) signed. :class:`OIDCVerifier`
checks it against the provider's published keys and returns an :class:`Identity`; anything
wrong is an :class:`~coderag.errors.AuthError` whose message names the one thing that is wrong,
so a 401 can be diagnosed from the client side without server logs.

Why each rule exists:

* **Asymmetric algorithms only, from a configured allow-list, checked before any key lookup.**
  A token's ``alg`` is chosen by whoever made the token. ``none`` means "no signature", and an
  ``HS*`` token checked against a published RSA key would be an HMAC whose secret is that
  *public* key (the classic algorithm-confusion forgery). So both are refused at construction
  (:class:`~coderag.errors.ConfigError`) and at verification ("algorithm 'none' not allowed"),
  and an unlisted ``alg`` is refused before its ``kid`` can trigger a key fetch.
* **The key is built for the header's algorithm.** A JWK that names its own ``alg`` must name
  the token's, and PyJWT builds the key object for the token's algorithm, so an RSA key cannot
  check an ``ES256`` signature (key type mismatch: refused, never "tried anyway"). Keys meant
  for encryption (``use: enc``, RFC 7517 §4.2) and symmetric (``oct``) keys are never loaded:
  a published key set has no business holding a shared secret.
* **Issuer, audience, expiry and subject are required.** ``iss`` must equal the configured
  issuer exactly (OpenID Connect Core 1.0 §3.1.3.7), ``aud`` must contain one of the configured
  audiences (so a token the same realm issued to another client is not accepted here), ``exp``
  must exist (a token without one would be valid forever), ``sub`` names the person. ``exp``,
  ``nbf`` and ``iat`` are checked against the verifier's clock with a leeway for clock skew
  between the provider and this host.
* **Refresh tokens never authenticate.** Keycloak puts the token's kind in a ``typ`` claim:
  ``Bearer`` (access token), ``ID`` (ID token), ``Refresh``, ``Offline``, ``Logout``
  (Keycloak source, core/src/main/java/org/keycloak/util/TokenUtil.java ``TOKEN_TYPE_*``;
  TokenManager sets ``Bearer`` on access and ``ID`` on ID tokens). A refresh token is a
  long-lived credential for the token endpoint only: any ``typ`` other than ``Bearer``/``ID``
  is refused. Providers that send no ``typ`` issue access tokens there, so absent = access.
* **The user is named by one configured claim** (``preferred_username`` by default, as Keycloak
  sets it; ``email`` or ``sub`` for other providers). A token without it is refused, never
  mapped to some default user.

Keys (the provider's JWKS):

* found by discovery, ``GET {issuer}/.well-known/openid-configuration`` (OpenID Connect
  Discovery 1.0 §4), whose ``issuer`` must be identical to the configured one (§4.3: a
  document naming another issuer is refused, it could be a mix-up or a spoofed provider).
  Keycloak's issuer is ``https://<host>/realms/<realm>``, with the discovery document at
  ``/realms/{realm-name}/.well-known/openid-configuration`` and the keys at
  ``/realms/{realm-name}/protocol/openid-connect/certs`` (Keycloak docs, "Securing
  applications and services with OpenID Connect", Available endpoints); or
  at a configured ``jwks_url``; or read once from a ``jwks_file`` on sites where this service
  cannot reach the provider (never fetched: rotating keys there means replacing the file and
  restarting);
* cached: the last good set is kept and used while the provider is down (a provider outage
  must not log everybody out), refreshed when older than ``jwks_refresh_seconds``, and a failed
  refresh keeps the old set (the failure shows in :meth:`OIDCVerifier.status`);
* a token naming an unknown ``kid`` (the provider rotated its key) triggers a refetch, but at
  most one fetch attempt per ``jwks_min_refetch_seconds``: tokens with random ``kid`` values
  cannot turn this service into a flood against the provider;
* one fetch at a time (a lock): a cold start under load makes one request, not one per thread.
  Requests that already hold a usable key set never wait for a background refresh.

No key set ever obtained (provider unreachable since start) is
:class:`IdentityProviderUnavailable`, a :class:`~coderag.errors.TransientError` (503): the
token may be fine, so the client should retry, not re-authenticate.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import jwt
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidSubjectError

from coderag.errors import AuthError, ConfigError, TransientError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "UNAVAILABLE",
    "Identity",
    "IdentityProviderUnavailable",
    "OIDCVerifier",
]

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS: tuple[str, ...] = (
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
"""The asymmetric JWS algorithms PyJWT implements (RFC 7518 RS*/PS*/ES*, RFC 8037 EdDSA)."""

REQUIRED_CLAIMS: tuple[str, ...] = ("exp", "iss", "sub")

UNAVAILABLE = "the identity provider's keys are unavailable"

_TOKEN_TYPES: Mapping[str, str] = MappingProxyType({"Bearer": "access", "ID": "id"})
"""Keycloak's ``typ`` claim -> :attr:`Identity.token_type` (TokenUtil.TOKEN_TYPE_BEARER/_ID)."""

_ASYMMETRIC_KTY = frozenset({"RSA", "EC", "OKP"})
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/+=@-]")


class IdentityProviderUnavailable(TransientError):
    """No key set could ever be obtained from the identity provider: retry later (503)."""

    error_code = "identity_provider_unavailable"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    subject: str
    """``sub``: the provider's stable id of the person."""
    username: str
    """The configured user claim's value (``preferred_username`` | ``email`` | ``sub``)."""
    issuer: str
    token_type: str
    """``"access"`` or ``"id"`` (Keycloak's ``typ`` ``Bearer`` / ``ID``; absent = access)."""
    expires_at: float
    """``exp``, seconds since the epoch."""
    claims: Mapping[str, Any]
    """Every claim of the token, read-only (groups, email, ... for the caller to use)."""


@dataclass(frozen=True, slots=True)
class _KeySet:
    """One fetched JWKS: the usable signing keys, by ``kid``."""

    by_kid: Mapping[str, Mapping[str, Any]]
    keys: tuple[Mapping[str, Any], ...]
    fetched_at: float
    built: dict[tuple[str, str], jwt.PyJWK] = field(default_factory=dict)
    """PyJWK objects already built for (kid, algorithm): a verification builds each once."""


class _FetchError(Exception):
    """A key fetch failed; the message goes to status() and the log, never to clients."""


def _show(value: object) -> str:
    """A token-supplied value made safe to echo in an error message (short, plain ASCII)."""
    return _UNSAFE.sub("?", str(value))[:64]


def _b64url_json(segment: str) -> Any:
    if not _B64URL.match(segment):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(segment.rstrip("=") + "=" * (-len(segment.rstrip("=")) % 4))
    return json.loads(raw)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _usable_keys(doc: object) -> tuple[dict[str, Mapping[str, Any]], tuple[Mapping[str, Any], ...]]:
    """The signature keys of a JWKS document that PyJWT can build, by kid.

    Not :class:`jwt.PyJWKSet`: it would also load ``oct`` (shared secret) and ``enc`` keys, and
    bind each key to its own default algorithm; here a key is only bound to an algorithm when a
    token asks for it (see :meth:`OIDCVerifier._key`).
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise _FetchError("not a JWK set (no 'keys' list)")
    by_kid: dict[str, Mapping[str, Any]] = {}
    keys: list[Mapping[str, Any]] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in _ASYMMETRIC_KTY:
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            jwt.PyJWK(jwk)  # can PyJWT read it at all (curve, parameters)?
        except jwt.PyJWTError:
            continue
        kid = jwk.get("kid")
        if isinstance(kid, str) and kid not in by_kid:
            by_kid[kid] = MappingProxyType(dict(jwk))
            keys.append(by_kid[kid])
        elif kid is None:
            keys.append(MappingProxyType(dict(jwk)))
    if not keys:
        raise _FetchError("the JWK set holds no usable signing key")
    return by_kid, tuple(keys)


class OIDCVerifier:
    """Verifies the identity provider's JWTs; thread-safe, one instance per process."""

    def __init__(
        self,
        issuer: str,
        audience: Sequence[str],
        *,
        jwks_url: str | None = None,
        jwks_file: Path | str | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        user_claim: str = "preferred_username",
        leeway_seconds: float = 30.0,
        jwks_refresh_seconds: float = 300.0,
        jwks_min_refetch_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(issuer, str) or not issuer.startswith(("https://", "http://")):
            raise ConfigError(f"OIDC issuer must be an http(s) URL, got {issuer!r}")
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            # Without an audience check any token of the realm (for any client) would pass.
            raise ConfigError("OIDC audience must name at least one client id")
        algs = (algorithms,) if isinstance(algorithms, str) else tuple(algorithms)
        known = get_default_algorithms()
        if not algs:
            raise ConfigError("OIDC algorithms must not be empty")
        for alg in algs:
            if alg.lower() == "none":
                raise ConfigError("OIDC algorithm 'none' is refused: it means no signature")
            if alg.upper().startswith("HS"):
                raise ConfigError(
                    f"OIDC algorithm {alg!r} is refused: an HMAC token would be checked with "
                    "the provider's public key as its secret"
                )
            if alg not in known:
                raise ConfigError(f"OIDC algorithm {alg!r} is not supported")
        if jwks_url is not None and jwks_file is not None:
            raise ConfigError("set the OIDC jwks_url or the jwks_file, not both")
        if not user_claim:
            raise ConfigError("OIDC user claim must not be empty")
        if leeway_seconds < 0 or jwks_min_refetch_seconds < 0:
            raise ConfigError("OIDC leeway and refetch interval must not be negative")
        if jwks_refresh_seconds <= 0 or timeout_seconds <= 0:
            raise ConfigError("OIDC key refresh interval and timeout must be positive")

        self.issuer = issuer
        self.audience = audiences
        self.algorithms = algs
        self.user_claim = user_claim
        self.leeway_seconds = float(leeway_seconds)
        self._refresh_s = float(jwks_refresh_seconds)
        self._min_refetch_s = float(jwks_min_refetch_seconds)
        self._timeout = float(timeout_seconds)
        self._clock = clock
        self._discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._jwks_url = jwks_url
        self._discovered_jwks_uri: str | None = None
        self._file = Path(jwks_file) if jwks_file is not None else None

        self._state = threading.Lock()  # guards the fields below (short, never held for I/O)
        self._fetching = threading.Lock()  # one fetch at a time
        self._keys: _KeySet | None = None
        self._last_attempt: float | None = None
        self._last_error: str | None = None
        self._fetches = 0
        self._failed_fetches = 0

        if self._file is not None:
            try:
                doc = json.loads(self._file.read_text(encoding="utf-8"))
                by_kid, keys = _usable_keys(doc)
            except (OSError, ValueError, _FetchError) as exc:
                raise ConfigError(f"OIDC jwks_file {str(self._file)!r}: {exc}") from exc
            self._keys = _KeySet(by_kid, keys, self._clock())

    # -- verification -----------------------------------------------------------------------
    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Whether ``token`` has a JWS compact shape: three dot-separated base64url parts whose
        first is a JSON object with an ``alg``. Cheap, no crypto: lets the caller route a
        bearer token to this verifier (a refusal names the reason) or to other token kinds.
        An empty signature part counts (an ``alg: none`` token must get its specific refusal).
        """
        if not isinstance(token, str) or len(token) > 16384:
            return False
        parts = token.split(".")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            return False
        try:
            header = _b64url_json(parts[0])
        except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
            return False
        return isinstance(header, dict) and isinstance(header.get("alg"), str)

    def verify(self, token: str) -> Identity:
        """The identity ``token`` speaks for, or :class:`AuthError` naming what is wrong.

        Raises :class:`IdentityProviderUnavailable` (503) only while no key set was ever
        obtained.
        """
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, TypeError, ValueError):
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("malformed token")
        if alg not in self.algorithms:  # before any key lookup: an unlisted alg fetches nothing
            raise AuthError(f"algorithm '{_show(alg)}' not allowed")
        kid = header.get("kid")
        key = self._key(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=list(self.audience),
                issuer=self.issuer,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    # time claims are checked below with self._clock (one clock for keys and
                    # tokens; tests drive it), after the signature has been verified
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthError(_reason(exc, alg)) from None
        self._check_times(claims)
        return self._identity(claims)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        leeway = self.leeway_seconds
        exp = claims["exp"]
        if not _is_number(exp):
            raise AuthError("malformed claim 'exp'")
        if exp <= now - leeway:
            raise AuthError("token expired")
        for name in ("nbf", "iat"):  # a token from the future (beyond the skew) is not valid yet
            value = claims.get(name)
            if value is None:
                continue
            if not _is_number(value):
                raise AuthError(f"malformed claim '{name}'")
            if value > now + leeway:
                raise AuthError("token not yet valid")

    def _identity(self, claims: dict[str, Any]) -> Identity:
        typ = claims.get("typ")
        if typ is None:
            token_type: str | None = "access"
        else:
            token_type = _TOKEN_TYPES.get(typ) if isinstance(typ, str) else None
        if token_type is None:
            raise AuthError(f"token type '{_show(typ)}' not accepted")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("missing claim 'sub'")
        username = claims.get(self.user_claim)
        if username is None or username == "":
            raise AuthError(f"missing claim '{self.user_claim}'")
        if not isinstance(username, str):
            raise AuthError(f"malformed claim '{self.user_claim}'")
        # An address the user typed but never proved is not an identity: GitLab would be asked
        # for whoever owns that address (OIDC Core 5.1: ``email_verified``).
        if self.user_claim == "email" and claims.get("email_verified") is not True:
            raise AuthError("email not verified (claim 'email_verified' is not true)")
        return Identity(
            subject=subject,
            username=username,
            issuer=self.issuer,
            token_type=token_type,
            expires_at=float(claims["exp"]),
            claims=MappingProxyType(claims),
        )

    # -- keys -------------------------------------------------------------------------------
    def _key(self, kid: object, alg: str) -> jwt.PyJWK:
        """The key that must have signed a token with this ``kid`` and ``alg``."""
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token")
        keys = self._keys
        if self._file is None:
            if keys is None:
                keys = self._refresh(wait=True)
            elif self._clock() - keys.fetched_at >= self._refresh_s:
                keys = self._refresh(wait=False)  # stale: refresh, but never queue behind one
            if keys is not None and kid is not None and kid not in keys.by_kid:
                keys = self._refresh(wait=True)  # rotated? rate-limited inside
        if keys is None:
            raise IdentityProviderUnavailable(UNAVAILABLE)
        if kid is None:
            # Keycloak always sets a kid; a provider with a single key may not.
            if len(keys.keys) != 1:
                raise AuthError("unknown signing key (token names no kid)")
            jwk = keys.keys[0]
        elif (found := keys.by_kid.get(kid)) is not None:
            jwk = found
        else:
            raise AuthError(f"unknown signing key (kid '{_show(kid)}')")
        built = keys.built.get((kid or "", alg))
        if built is not None:
            return built
        if jwk.get("alg") is not None and jwk.get("alg") != alg:
            raise AuthError(
                f"signing key (kid '{_show(kid)}') is for '{_show(jwk.get('alg'))}', "
                f"not '{_show(alg)}'"
            )
        try:
            built = jwt.PyJWK(dict(jwk), alg)  # the header's algorithm: kty must fit it
        except jwt.PyJWTError:
            raise AuthError(
                f"signing key (kid '{_show(kid)}') does not fit algorithm '{_show(alg)}'"
            ) from None
        keys.built[(kid or "", alg)] = built
        return built

    def _refresh(self, *, wait: bool) -> _KeySet | None:
        """Fetch the key set unless a fetch was attempted within the min-refetch interval;
        return the current set either way (the old one when the fetch fails)."""
        if wait:  # discovery + JWKS, each bounded by the timeout
            acquired = self._fetching.acquire(timeout=2 * self._timeout + 1)
        else:
            acquired = self._fetching.acquire(blocking=False)
        if not acquired:
            return self._keys  # another thread is fetching; use what we have
        try:
            now = self._clock()
            last = self._last_attempt
            if last is not None and now - last < self._min_refetch_s:
                return self._keys  # just tried (maybe the thread we waited for)
            with self._state:
                self._last_attempt = now
                self._fetches += 1
            try:
                by_kid, keys = _usable_keys(self._fetch())
            except _FetchError as exc:
                with self._state:
                    self._failed_fetches += 1
                    self._last_error = str(exc)
                log.warning(
                    "oidc key fetch failed",
                    extra={"issuer": self.issuer, "error": str(exc), "have_keys": bool(self._keys)},
                )
                return self._keys
            new = _KeySet(by_kid, keys, now)
            old = self._keys
            with self._state:
                self._keys = new
                self._last_error = None
            if old is None or set(old.by_kid) != set(new.by_kid):
                log.info("oidc keys loaded", extra={"issuer": self.issuer, "kids": sorted(by_kid)})
            return new
        finally:
            self._fetching.release()

    def _fetch(self) -> Any:
        """GET the JWKS document (after discovery, unless a jwks_url is configured)."""
        url = self._jwks_url or self._discovered_jwks_uri
        if url is None:
            doc = self._get_json(self._discovery_url)
            if not isinstance(doc, dict):
                raise _FetchError(f"{self._discovery_url}: not a discovery document")
            if doc.get("issuer") != self.issuer:
                raise _FetchError(
                    f"discovery document names issuer {_show(doc.get('issuer'))!r}, "
                    f"expected {self.issuer!r}"
                )
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise _FetchError(f"{self._discovery_url}: no http(s) jwks_uri")
            url = self._discovered_jwks_uri = uri
        try:
            return self._get_json(url)
        except _FetchError:
            if self._jwks_url is None:
                self._discovered_jwks_uri = None  # the provider may have moved: rediscover
            raise

    def _get_json(self, url: str) -> Any:
        try:
            response = httpx.get(url, timeout=self._timeout, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise _FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise _FetchError(f"{url}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise _FetchError(f"{url}: not JSON") from exc

    def status(self) -> dict[str, Any]:
        """Where the key cache stands, for /healthz and logs (no secrets in it)."""
        with self._state:
            keys = self._keys
            now = self._clock()
            return {
                "issuer": self.issuer,
                "source": (
                    "jwks_file"
                    if self._file is not None
                    else "jwks_url"
                    if self._jwks_url
                    else "discovery"
                ),
                "jwks_uri": self._jwks_url or self._discovered_jwks_uri,
                "kids": sorted(keys.by_kid) if keys else [],
                "keys_fetched_at": keys.fetched_at if keys else None,
                "keys_age_seconds": (now - keys.fetched_at) if keys else None,
                "last_attempt_at": self._last_attempt,
                "last_error": self._last_error,
                "fetches": self._fetches,
                "failed_fetches": self._failed_fetches,
            }


def _reason(exc: jwt.PyJWTError, alg: str) -> str:
    """PyJWT's exception -> the client-facing reason (subclasses before their bases)."""
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
        return f"algorithm '{_show(alg)}' not allowed"
    if isinstance(exc, jwt.InvalidKeyError):
        return "signing key too weak"
    if isinstance(exc, InvalidSubjectError):
        return "malformed claim 'sub'"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return "invalid token"
