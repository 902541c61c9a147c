"""Test-only: an OpenID Connect issuer on 127.0.0.1 shaped like a Keycloak realm.

Keycloak serves a realm at ``{base}/realms/{realm}``: that URL is the ``iss`` of its tokens, its
discovery document is ``/realms/{realm}/.well-known/openid-configuration`` and its key set (JWKS)
``/realms/{realm}/protocol/openid-connect/certs`` (Keycloak docs, "Securing applications and
services with OpenID Connect", Available endpoints: well-known and certificate endpoints). Its
tokens carry a ``typ`` claim, ``Bearer`` for access tokens, ``ID``, ``Refresh`` (Keycloak
source, org/keycloak/util/TokenUtil.java), and ``preferred_username``.

The keys are made here with ``cryptography`` (RSA 2048 for RS256/PS256, the primary one; and
an EC P-256 key for ES256), tokens are signed with PyJWT, so the verifier under test
checks real signatures fetched over real HTTP. :meth:`TestIssuer.rotate`, :meth:`down` and
:meth:`up` reproduce a key rotation and an outage; the ``*_token`` helpers craft the forgeries
the verifier must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["TestIssuer", "b64url", "unreachable_issuer"]

DEFAULT_AUDIENCE = "coderag"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unreachable_issuer(realm: str = "test") -> str:
    """An issuer URL on a loopback port nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/realms/{realm}"


class TestIssuer:
    """``with TestIssuer() as idp:`` serves a realm at ``idp.issuer`` until the block ends."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        *,
        realm: str = "test",
        audience: str = DEFAULT_AUDIENCE,
        clock: Callable[[], float] = time.time,
        discovery_issuer: str | None = None,
        publish_alg: bool = True,
    ) -> None:
        self.realm = realm
        self.audience = audience
        self.clock = clock
        self.discovery_issuer = discovery_issuer
        """The ``issuer`` the discovery document names (None: the real one)."""
        self.publish_alg = publish_alg
        """Whether published JWKs carry ``alg`` (Keycloak's do; some providers' do not)."""
        self.requests = 0
        """JWKS requests received (including those answered 503 while down)."""
        self.discovery_requests = 0
        self.is_down = False
        self._private: dict[str, Any] = {}  # kid -> private key, rotated-out ones included
        self._published: list[str] = []  # kids in the JWKS
        self._lock = threading.Lock()
        self.rsa_kid = self._add_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.ec_kid = self._add_key(ec.generate_private_key(ec.SECP256R1()))

    # -- keys -------------------------------------------------------------------------------
    def _add_key(self, key: Any) -> str:
        kid = uuid.uuid4().hex[:16]
        self._private[kid] = key
        self._published.append(kid)
        return kid

    def public_jwk(self, kid: str) -> dict[str, Any]:
        key = self._private[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))
            alg = "RS256"
        else:
            jwk = dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
            alg = "ES256"
        jwk.pop("key_ops", None)
        jwk.update({"kid": kid, "use": "sig"})
        if self.publish_alg:
            jwk["alg"] = alg
        return jwk

    def jwks(self) -> dict[str, Any]:
        """The published key set, as the certs endpoint serves it."""
        with self._lock:
            return {"keys": [self.public_jwk(kid) for kid in self._published]}

    def rotate(self) -> str:
        """A new RSA key replaces the current one in the JWKS (the old private key is kept,
        so tests can still sign with a rotated-out kid); returns the new kid."""
        new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            old = self.rsa_kid
            self._published.remove(old)
            self.rsa_kid = self._add_key(new)
        return self.rsa_kid

    def public_pem(self, kid: str | None = None) -> bytes:
        key = self._private[kid or self.rsa_kid]
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # -- tokens -----------------------------------------------------------------------------
    def claims(
        self,
        *,
        sub: str = "f3b0c2e4-7a1d-4c55-9e0b-2d6a1f9c8e71",
        username: str | None = "alice",
        aud: str | list[str] | None = None,
        exp_in: float = 300,
        nbf_in: float | None = None,
        typ: str | None = "Bearer",
        iss: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The payload of a Keycloak-like access token (times relative to ``clock``)."""
        now = int(self.clock())
        payload: dict[str, Any] = {
            "exp": now + int(exp_in),
            "iat": now + min(0, int(exp_in) - 300),  # issued before it expired
            "jti": uuid.uuid4().hex,
            "iss": iss or self.issuer,
            "aud": self.audience if aud is None else aud,
            "sub": sub,
            "azp": "coderag-ide",
            "scope": "openid profile email",
        }
        if typ is not None:
            payload["typ"] = typ
        if nbf_in is not None:
            payload["nbf"] = now + int(nbf_in)
        if username is not None:
            payload["preferred_username"] = username
        payload.update(extra or {})
        return payload

    def mint(
        self,
        *,
        kid: str | None = None,
        alg: str = "RS256",
        sign_with: str | None = None,
        header_kid: bool = True,
        **claims: Any,
    ) -> str:
        """A signed token. ``kid`` goes in the header (default: the current key of the
        algorithm's family); ``sign_with`` names the private key used (default: ``kid``'s, or
        the current key when ``kid`` names no key of this issuer)."""
        family_kid = self.ec_kid if alg.startswith("ES") else self.rsa_kid
        kid = kid or family_kid
        signer = self._private.get(sign_with or kid) or self._private[family_kid]
        headers = {"kid": kid} if header_kid else {}
        return jwt.encode(self.claims(**claims), signer, algorithm=alg, headers=headers)

    def none_token(self, **claims: Any) -> str:
        """``alg: none`` and an empty signature (RFC 7519 §6 "unsecured JWT")."""
        header = {"alg": "none", "typ": "JWT", "kid": self.rsa_kid}
        return f"{_segment(header)}.{_segment(self.claims(**claims))}."

    def hs256_with_public_key_token(self, **claims: Any) -> str:
        """HS256 whose HMAC secret is the RSA *public* key PEM: the algorithm-confusion
        forgery anybody can make from the published key. Built by hand: PyJWT refuses PEM
        keys as HMAC secrets."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.rsa_kid}
        signing_input = f"{_segment(header)}.{_segment(self.claims(**claims))}"
        mac = hmac.new(self.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    def tampered_token(self, **claims: Any) -> str:
        """A genuine token for alice whose payload was swapped for another (``claims``,
        default: user ``admin``), the signature left as it was."""
        genuine = self.mint()
        header, _, signature = genuine.split(".")
        other = self.claims(**({"username": "admin", "sub": "admin-id"} | claims))
        return f"{header}.{_segment(other)}.{signature}"

    # -- outage -----------------------------------------------------------------------------
    def down(self) -> None:
        """Both endpoints answer 503 until :meth:`up`."""
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    # -- server -----------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def discovery(self) -> dict[str, Any]:
        """The fields of Keycloak's discovery document a resource server reads."""
        issuer = self.issuer
        return {
            "issuer": self.discovery_issuer or issuer,
            "authorization_endpoint": f"{issuer}/protocol/openid-connect/auth",
            "token_endpoint": f"{issuer}/protocol/openid-connect/token",
            "device_authorization_endpoint": f"{issuer}/protocol/openid-connect/auth/device",
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["code"],
        }

    def __enter__(self) -> TestIssuer:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                prefix = f"/realms/{idp.realm}"
                if path == f"{prefix}/.well-known/openid-configuration":
                    with idp._lock:
                        idp.discovery_requests += 1
                    body: Any = idp.discovery()
                elif path == f"{prefix}/protocol/openid-connect/certs":
                    with idp._lock:
                        idp.requests += 1
                    body = idp.jwks()
                else:
                    self._reply(404, {"error": "Not Found"})
                    return
                if idp.is_down:
                    self._reply(503, {"error": "Service Unavailable"})
                    return
                self._reply(200, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )  # a short poll: shutdown() at the end of each test returns at once
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
