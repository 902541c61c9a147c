"""coderag.oidc against a real issuer on loopback (tests/oidc_issuer.py): real keys, real
signatures, real HTTP for discovery and the JWKS. Time is a controllable clock shared by the
issuer (token times) and the verifier (token checks and key-cache ages)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from coderag.errors import AuthError, ConfigError, TransientError
from coderag.oidc import UNAVAILABLE, IdentityProviderUnavailable, OIDCVerifier
from tests.oidc_issuer import TestIssuer, unreachable_issuer


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def idp(clock: Clock) -> Iterator[TestIssuer]:
    with TestIssuer(clock=clock) as issuer:
        yield issuer


def verifier(idp: TestIssuer, clock: Clock, **kwargs: Any) -> OIDCVerifier:
    kwargs.setdefault("leeway_seconds", 30)
    return OIDCVerifier(idp.issuer, [idp.audience], clock=clock, **kwargs)


def refused(v: OIDCVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        v.verify(token)
    assert info.value.http_status == 401
    return info.value.detail


# -- valid tokens ---------------------------------------------------------------------------
def test_a_valid_access_token_names_its_user(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock)
    identity = v.verify(idp.mint(sub="u-42", username="alice", extra={"groups": ["/payments"]}))
    assert identity.username == "alice"
    assert identity.subject == "u-42"
    assert identity.issuer == idp.issuer
    assert identity.token_type == "access"
    assert identity.expires_at == pytest.approx(clock.now + 300, abs=1)
    assert identity.claims["groups"] == ["/payments"]
    with pytest.raises(TypeError):
        identity.claims["sub"] = "someone-else"  # type: ignore[index]
    # discovery once, JWKS once, the URI taken from the discovery document
    assert (idp.discovery_requests, idp.requests) == (1, 1)
    assert v.status()["jwks_uri"] == idp.jwks_uri
    assert v.status()["kids"] == sorted([idp.rsa_kid, idp.ec_kid])


def test_ec_key_and_multi_audience_and_id_token(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock)
    # Keycloak's access tokens often carry several audiences (an audience mapper adds ours)
    assert v.verify(idp.mint(alg="ES256", aud=["account", "coderag"])).username == "alice"
    assert v.verify(idp.mint(typ="ID")).token_type == "id"
    assert v.verify(idp.mint(typ=None)).token_type == "access"  # providers without `typ`


def test_user_claim_is_configurable(idp: TestIssuer, clock: Clock) -> None:
    by_email = verifier(idp, clock, user_claim="email")
    token = idp.mint(
        username="alice", extra={"email": "alice@bank.example", "email_verified": True}
    )
    assert by_email.verify(token).username == "alice@bank.example"
    # An address never proved names nobody (OIDC Core 5.1, ``email_verified``).
    unproved = idp.mint(extra={"email": "ceo@bank.example", "email_verified": False})
    assert refused(by_email, unproved) == "email not verified (claim 'email_verified' is not true)"
    assert verifier(idp, clock, user_claim="sub").verify(idp.mint(sub="u-7")).username == "u-7"
    assert refused(by_email, idp.mint()) == "missing claim 'email'"


# -- refusals, each with its reason ---------------------------------------------------------
def test_each_bad_token_gets_its_own_reason(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock)
    other_issuer = idp.issuer.replace("/realms/test", "/realms/other")
    cases = {
        "token expired": idp.mint(exp_in=-60),
        "token not yet valid": idp.mint(nbf_in=120),
        "wrong audience": idp.mint(aud="another-client"),
        "wrong issuer": idp.mint(iss=other_issuer),
        "algorithm 'none' not allowed": idp.none_token(),
        "algorithm 'HS256' not allowed": idp.hs256_with_public_key_token(),
        "invalid signature": idp.tampered_token(),
        "unknown signing key (kid 'no-such-key')": idp.mint(kid="no-such-key"),
        "token type 'Refresh' not accepted": idp.mint(typ="Refresh"),
        "token type 'Offline' not accepted": idp.mint(typ="Offline"),
        "missing claim 'preferred_username'": idp.mint(username=None),
        "missing claim 'sub'": idp.mint(sub=""),
        "malformed token": "not-a-jwt",
    }
    got = {reason: refused(v, token) for reason, token in cases.items()}
    assert got == {reason: reason for reason in cases}


def test_hs256_forgery_is_a_real_hmac_over_the_public_key(idp: TestIssuer) -> None:
    """The helper builds the actual attack: a verifier that let the token pick HS256 and
    used the published key as the secret would accept it."""
    token = idp.hs256_with_public_key_token()
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(idp.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected


def test_token_supplied_values_are_not_echoed_raw(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock)
    reason = refused(v, idp.mint(kid='x"\n<script>' + "k" * 200))
    assert reason.startswith("unknown signing key (kid 'x??")
    assert "\n" not in reason and "<" not in reason and len(reason) < 120


def test_missing_exp_is_refused(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock)
    payload = idp.claims()
    del payload["exp"]
    token = jwt.encode(payload, idp._private[idp.rsa_kid], "RS256", headers={"kid": idp.rsa_kid})
    assert refused(v, token) == "missing claim 'exp'"


def test_disallowed_alg_is_refused_before_any_key_fetch(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock, algorithms=["ES256"])
    assert refused(v, idp.none_token()) == "algorithm 'none' not allowed"
    assert refused(v, idp.hs256_with_public_key_token()) == "algorithm 'HS256' not allowed"
    assert refused(v, idp.mint(alg="RS256")) == "algorithm 'RS256' not allowed"
    assert (idp.discovery_requests, idp.requests) == (0, 0)


def test_key_must_fit_the_header_algorithm(clock: Clock) -> None:
    # Keycloak's JWKs name their `alg`: it must equal the token's
    with TestIssuer(clock=clock) as idp:
        v = verifier(idp, clock)
        token = idp.mint(alg="ES256", kid=idp.rsa_kid, sign_with=idp.ec_kid)
        assert refused(v, token) == f"signing key (kid '{idp.rsa_kid}') is for 'RS256', not 'ES256'"
    # a provider whose JWKs name no `alg`: the key is built for the token's algorithm, and an
    # RSA key is no EC key
    with TestIssuer(clock=clock, publish_alg=False) as idp:
        v = verifier(idp, clock)
        token = idp.mint(alg="ES256", kid=idp.rsa_kid, sign_with=idp.ec_kid)
        assert refused(v, token) == (
            f"signing key (kid '{idp.rsa_kid}') does not fit algorithm 'ES256'"
        )
        # and the same RSA key checks PS256 (same key type, other padding): a real signature
        assert v.verify(idp.mint(alg="PS256")).username == "alice"


def test_leeway_is_honoured(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock, leeway_seconds=30)
    assert v.verify(idp.mint(exp_in=-10)).username == "alice"  # expired 10 s ago: clock skew
    assert v.verify(idp.mint(nbf_in=10)).username == "alice"  # valid in 10 s: clock skew
    assert refused(v, idp.mint(exp_in=-31)) == "token expired"
    strict = verifier(idp, clock, leeway_seconds=0)
    assert refused(strict, idp.mint(exp_in=-10)) == "token expired"
    # the verifier's clock decides: the same token expires as time passes
    token = idp.mint(exp_in=60)
    assert v.verify(token).username == "alice"
    clock.advance(91)
    assert refused(v, token) == "token expired"


def test_looks_like_jwt() -> None:
    with TestIssuer() as idp:
        assert OIDCVerifier.looks_like_jwt(idp.mint())
        assert OIDCVerifier.looks_like_jwt(idp.none_token())  # routed here, refused by reason
    for token in ["", "abc", "a.b", "a.b.c", "glpat-xxxxxxxxxxxxxxxxxxxx", "tok.en.with.dots"]:
        assert not OIDCVerifier.looks_like_jwt(token), token
    no_alg = "eyJ0eXAiOiJKV1QifQ.e30.sig"  # {"typ":"JWT"}
    assert not OIDCVerifier.looks_like_jwt(no_alg)


# -- key cache: rotation, rate limit, outage ------------------------------------------------
def test_rotation_unknown_kid_refetches_and_old_key_is_dropped(
    idp: TestIssuer, clock: Clock
) -> None:
    v = verifier(idp, clock, jwks_refresh_seconds=300, jwks_min_refetch_seconds=30)
    old_kid = idp.rsa_kid
    old_token = idp.mint()
    assert v.verify(old_token).username == "alice"
    new_kid = idp.rotate()
    clock.advance(31)  # past the min-refetch interval since the first fetch
    new_token = idp.mint(username="bob")
    assert v.verify(new_token).username == "bob"  # unknown kid -> one refetch -> known
    assert idp.requests == 2
    assert new_kid in v.status()["kids"] and old_kid not in v.status()["kids"]
    # the rotated-out key's tokens (still unexpired, genuinely signed) are refused now
    assert refused(v, old_token) == f"unknown signing key (kid '{old_kid}')"
    assert refused(v, idp.mint(kid=old_kid)) == f"unknown signing key (kid '{old_kid}')"


def test_stale_key_set_is_refreshed(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock, jwks_refresh_seconds=300)
    v.verify(idp.mint())
    clock.advance(100)
    v.verify(idp.mint())
    assert idp.requests == 1  # fresh enough
    clock.advance(201)
    v.verify(idp.mint())
    assert idp.requests == 2
    assert v.status()["keys_age_seconds"] == 0


def test_random_kids_cannot_flood_the_provider(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock, jwks_min_refetch_seconds=30)
    assert v.verify(idp.mint()).username == "alice"
    for _ in range(50):
        kid = uuid.uuid4().hex
        assert refused(v, idp.mint(kid=kid)) == f"unknown signing key (kid '{kid}')"
        clock.advance(0.5)  # 25 s in all: inside one min-refetch window
    assert idp.requests == 1  # the first fetch opened the window: no refetch inside it
    assert v.status()["fetches"] == 1
    clock.advance(10)  # window over: one refetch is allowed for the next unknown kid
    for _ in range(5):
        refused(v, idp.mint(kid="still-unknown"))
    assert idp.requests == 2


def test_cold_start_under_load_fetches_once(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock)
    token = idp.mint()
    names: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            names.append(v.verify(token).username)
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert names == ["alice"] * 32
    assert (idp.discovery_requests, idp.requests) == (1, 1)


def test_provider_down_cached_keys_keep_working(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock, jwks_refresh_seconds=300, jwks_min_refetch_seconds=30)
    assert v.verify(idp.mint()).username == "alice"
    idp.down()
    clock.advance(301)  # stale: a refresh is due, and fails
    assert v.verify(idp.mint(username="bob")).username == "bob"
    status = v.status()
    assert "HTTP 503" in status["last_error"]
    assert status["failed_fetches"] == 1
    assert status["kids"] == sorted([idp.rsa_kid, idp.ec_kid])  # the old set, kept
    assert idp.requests == 2  # the first fetch, and the refresh that got a 503
    for _ in range(20):  # while down: at most one attempt per min-refetch interval
        assert v.verify(idp.mint()).username == "alice"
        clock.advance(1)
    assert idp.requests == 2  # 20 s < 30 s: no retry yet
    idp.up()
    clock.advance(11)
    assert v.verify(idp.mint()).username == "alice"
    assert v.status()["last_error"] is None
    assert v.status()["keys_age_seconds"] == 0


def test_provider_never_reachable_is_a_503(clock: Clock) -> None:
    v = OIDCVerifier(unreachable_issuer(), ["coderag"], clock=clock, timeout_seconds=2)
    with TestIssuer(clock=clock) as idp:
        token = idp.mint()
    with pytest.raises(IdentityProviderUnavailable) as info:
        v.verify(token)
    assert isinstance(info.value, TransientError)
    assert not isinstance(info.value, AuthError)
    assert info.value.http_status == 503
    assert info.value.detail == UNAVAILABLE
    assert "ConnectError" in v.status()["last_error"]
    started = time.monotonic()
    with pytest.raises(IdentityProviderUnavailable):  # inside the window: no new attempt
        v.verify(token)
    assert time.monotonic() - started < 0.5
    assert v.status()["fetches"] == 1


def test_discovery_naming_another_issuer_is_refused(clock: Clock) -> None:
    with TestIssuer(clock=clock, discovery_issuer="https://evil.example/realms/test") as idp:
        v = verifier(idp, clock)
        with pytest.raises(IdentityProviderUnavailable):
            v.verify(idp.mint())
        assert "discovery document names issuer" in v.status()["last_error"]
        assert idp.discovery_requests == 1
        assert idp.requests == 0  # the JWKS it points to is never fetched


def test_configured_jwks_url_skips_discovery(idp: TestIssuer, clock: Clock) -> None:
    v = verifier(idp, clock, jwks_url=idp.jwks_uri)
    assert v.verify(idp.mint()).username == "alice"
    assert (idp.discovery_requests, idp.requests) == (0, 1)
    assert v.status()["source"] == "jwks_url"


def test_jwks_file_verifies_offline(idp: TestIssuer, clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    v = verifier(idp, clock, jwks_file=path)
    assert v.verify(idp.mint()).username == "alice"
    assert v.verify(idp.mint(alg="ES256")).username == "alice"
    assert refused(v, idp.mint(kid="other")) == "unknown signing key (kid 'other')"
    clock.advance(10_000)  # far past any refresh interval
    assert v.verify(idp.mint()).username == "alice"
    assert (idp.discovery_requests, idp.requests) == (0, 0)
    assert v.status()["source"] == "jwks_file"
    assert v.status()["fetches"] == 0


def test_jwks_ignores_symmetric_and_encryption_keys(clock: Clock, tmp_path: Path) -> None:
    with TestIssuer(clock=clock) as idp:
        jwks = idp.jwks()
        enc = dict(idp.public_jwk(idp.ec_kid), use="enc", kid="enc-key")
        oct_key = {"kty": "oct", "kid": "shared", "k": "c2VjcmV0", "alg": "HS256"}
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [*jwks["keys"], enc, oct_key]}))
        v = verifier(idp, clock, jwks_file=path)
        assert v.status()["kids"] == sorted([idp.rsa_kid, idp.ec_kid])
        token = idp.mint(alg="ES256", kid="enc-key", sign_with=idp.ec_kid)
        assert refused(v, token) == "unknown signing key (kid 'enc-key')"


# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("algorithms", [["none"], ["HS256"], ["RS256", "hs512"], []])
def test_unsafe_algorithms_are_refused_at_construction(algorithms: list[str]) -> None:
    with pytest.raises(ConfigError):
        OIDCVerifier("https://idp.example/realms/bank", ["coderag"], algorithms=algorithms)


def test_other_bad_configuration_is_refused(tmp_path: Path) -> None:
    issuer = "https://idp.example/realms/bank"
    with pytest.raises(ConfigError, match="audience"):
        OIDCVerifier(issuer, [])
    with pytest.raises(ConfigError, match="not both"):
        OIDCVerifier(issuer, ["coderag"], jwks_url=f"{issuer}/certs", jwks_file=tmp_path / "k")
    with pytest.raises(ConfigError, match="jwks_file"):
        OIDCVerifier(issuer, ["coderag"], jwks_file=tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text('{"keys": []}')
    with pytest.raises(ConfigError, match="no usable signing key"):
        OIDCVerifier(issuer, ["coderag"], jwks_file=tmp_path / "empty.json")
    with pytest.raises(ConfigError, match="http"):
        OIDCVerifier("idp.example/realms/bank", ["coderag"])
    # a single audience string is one audience, not a list of characters
    assert OIDCVerifier(issuer, "coderag").audience == ("coderag",)
