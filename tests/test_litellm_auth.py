"""The gateway's custom auth (retriever/litellm_auth.py) in this venv's LiteLLM, against a real
OIDC issuer on loopback (tests/oidc_issuer.py: RSA and EC keys served as a JWKS over HTTP).

The module is loaded the way the gateway loads it: LiteLLM's own ``get_instance_fn``
(litellm/proxy/types_utils/utils.py) on ``<config dir>/retriever/litellm_auth.py``, which
executes the file with ``spec_from_file_location`` without putting it in ``sys.modules``.
tests/test_litellm_proxy.py runs the same file in the real proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.oidc_issuer import TestIssuer, unreachable_issuer

pytestmark = pytest.mark.integration

types_utils = pytest.importorskip("litellm.proxy.types_utils.utils")
proxy_types = pytest.importorskip("litellm.proxy._types")

REPO = Path(__file__).resolve().parents[1]
AUTH = REPO / "retriever" / "litellm_auth.py"
MASTER = "sk-master-" + "5" * 24
PASS_THROUGH = ["/autocomplete"]


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """``general_settings.custom_auth: retriever.litellm_auth.user_api_key_auth`` as LiteLLM
    resolves it next to ``<tmp_path>/config.yaml``, under ``env``."""
    for name in ("ISSUER", "AUDIENCE", "JWKS_URL", "USER_CLAIM"):
        monkeypatch.delenv(f"CODERAG_GATEWAY_OIDC_{name}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "retriever").mkdir(exist_ok=True)
    shutil.copyfile(AUTH, tmp_path / "retriever" / "litellm_auth.py")
    return types_utils.get_instance_fn(
        "retriever.litellm_auth.user_api_key_auth", config_file_path=str(tmp_path / "config.yaml")
    )


@pytest.fixture
def idp() -> Any:
    with TestIssuer(realm="coderag") as issuer:
        yield issuer


@pytest.fixture
def module_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idp: TestIssuer) -> Any:
    return load(
        tmp_path,
        monkeypatch,
        CODERAG_GATEWAY_OIDC_ISSUER=idp.issuer,
        CODERAG_GATEWAY_OIDC_JWKS_URL=idp.jwks_uri,
        CODERAG_GATEWAY_OIDC_AUDIENCE='["coderag"]',  # as the compose writes it
    )


def auth_for(module_auth: Any, idp: TestIssuer, **options: Any) -> Any:
    """A GatewayAuth of the loaded module with this test's master key and pass-through
    routes (the module's default reads them from the running proxy, absent here)."""
    cls = type(module_auth)
    return cls(
        options.pop("issuer", idp.issuer),
        options.pop("audience", "coderag"),
        jwks_url=options.pop("jwks_url", idp.jwks_uri),
        master_key=lambda: MASTER,
        pass_through_routes=lambda: PASS_THROUGH,
        **options,
    )


def call(auth: Any, key: str | None) -> Any:
    return asyncio.run(auth(None, key))


def refusal(auth: Any, key: str | None) -> Any:
    with pytest.raises(proxy_types.ProxyException) as caught:
        call(auth, key)
    return caught.value


# --- loading --------------------------------------------------------------------------------


def test_litellm_loads_it_from_the_config_directory(module_auth: Any, idp: TestIssuer):
    assert type(module_auth).__name__ == "GatewayAuth"
    assert module_auth.issuer == idp.issuer
    assert module_auth.audience == ("coderag",)
    assert module_auth.user_claim == "preferred_username"


def test_without_an_issuer_the_gateway_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with pytest.raises(ValueError, match="CODERAG_GATEWAY_OIDC_ISSUER"):
        load(tmp_path, monkeypatch)


def test_audience_is_a_json_list_or_comma_separated(module_auth: Any, idp: TestIssuer):
    assert auth_for(module_auth, idp, audience="coderag, api://coderag").audience == (
        "coderag",
        "api://coderag",
    )
    two = auth_for(module_auth, idp, audience='["other", "coderag"]')
    assert call(two, idp.mint()).user_id == "alice"


# --- who is let in --------------------------------------------------------------------------


def test_a_developer_token_names_the_user_and_never_carries_the_token(
    module_auth: Any, idp: TestIssuer
):
    auth = auth_for(module_auth, idp)
    token = idp.mint(username="alice", extra={"email": "alice@bank.example"})
    user = call(auth, token)
    assert isinstance(user, proxy_types.UserAPIKeyAuth)
    assert user.user_id == "alice"
    assert user.user_email is None  # an email the provider did not mark verified names nobody
    assert user.user_role == proxy_types.LitellmUserRoles.INTERNAL_USER
    assert user.allowed_routes == ["llm_api_routes", *PASS_THROUGH]
    assert user.api_key == hashlib.sha256(token.encode()).hexdigest()
    assert token not in user.model_dump_json()
    verified = call(
        auth, idp.mint(username="bob", extra={"email": "b@bank.example", "email_verified": True})
    )
    assert (verified.user_id, verified.user_email) == ("bob", "b@bank.example")
    # an EC key of the same set, and an ID token (Keycloak typ ID), and no typ at all
    assert call(auth, idp.mint(alg="ES256")).user_id == "alice"
    assert call(auth, idp.mint(typ="ID")).user_id == "alice"
    assert call(auth, idp.mint(typ=None)).user_id == "alice"


def test_the_master_key_is_answered_as_litellm_answers_it(module_auth: Any, idp: TestIssuer):
    """``user_api_key_auth.py``: role proxy_admin, user_id ``LITELLM_PROXY_ADMIN_NAME``, the
    key replaced by ``LITELLM_PROXY_MASTER_KEY_ALIAS`` (litellm/constants.py)."""
    from litellm.constants import LITELLM_PROXY_ADMIN_NAME, LITELLM_PROXY_MASTER_KEY_ALIAS

    admin = call(auth_for(module_auth, idp), MASTER)
    assert admin.user_role == proxy_types.LitellmUserRoles.PROXY_ADMIN
    assert admin.user_id == LITELLM_PROXY_ADMIN_NAME == "default_user_id"
    assert admin.api_key == LITELLM_PROXY_MASTER_KEY_ALIAS
    assert MASTER not in admin.model_dump_json()
    assert idp.requests == 0  # no key fetch for it


def test_the_user_claim_can_be_the_verified_email(module_auth: Any, idp: TestIssuer):
    auth = auth_for(module_auth, idp, user_claim="email")
    ok = idp.mint(extra={"email": "alice@bank.example", "email_verified": True})
    assert call(auth, ok).user_id == "alice@bank.example"
    unverified = idp.mint(extra={"email": "alice@bank.example"})
    assert "email not verified" in refusal(auth, unverified).message


REFUSED: dict[str, tuple[Any, str]] = {
    "no key": (lambda idp: None, "no bearer token"),
    "blank key": (lambda idp: "   ", "no bearer token"),
    "a LiteLLM-style key": (lambda idp: "sk-nobody-0123456789", "not an OIDC access token"),
    "three parts, not a JWT": (lambda idp: "a.b.c", "not an OIDC access token"),
    "expired": (lambda idp: idp.mint(exp_in=-120), "token expired"),
    "not yet valid": (lambda idp: idp.mint(nbf_in=600), "token not yet valid"),
    "wrong audience": (lambda idp: idp.mint(aud="another-client"), "wrong audience"),
    "no audience": (lambda idp: idp.mint(aud=[]), "missing claim 'aud'"),
    "wrong issuer": (lambda idp: idp.mint(iss="https://evil.example/realms/coderag"), "issuer"),
    "alg none": (lambda idp: idp.none_token(), "algorithm 'none' not allowed"),
    "HS256 with the public key": (
        lambda idp: idp.hs256_with_public_key_token(),
        "algorithm 'HS256' not allowed",
    ),
    "tampered": (lambda idp: idp.tampered_token(), "invalid signature"),
    "RS key, PS256 token": (lambda idp: idp.mint(alg="PS256"), "does not fit the signing key"),
    "unknown kid": (lambda idp: idp.mint(kid="not-published"), "unknown signing key"),
    "no kid": (lambda idp: idp.mint(header_kid=False), "names no signing key"),
    "refresh token": (lambda idp: idp.mint(typ="Refresh"), "token type 'Refresh' not accepted"),
    "typ not a string": (lambda idp: idp.mint(typ=["Bearer"]), "token type"),
    "no username": (lambda idp: idp.mint(username=None), "missing claim 'preferred_username'"),
    "the admin's name": (lambda idp: idp.mint(username="default_user_id"), "reserved"),
    "no exp": (lambda idp: idp.mint(extra={"exp": None}), "missing claim 'exp'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_anything_else_is_a_401_naming_the_reason(module_auth: Any, idp: TestIssuer, case: str):
    make, reason = REFUSED[case]
    exc = refusal(auth_for(module_auth, idp), make(idp))
    assert exc.code == "401" and exc.type == "auth_error"
    assert reason in exc.message, exc.message
    assert exc.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_unlisted_algorithms_and_foreign_tokens_fetch_no_keys(module_auth: Any, idp: TestIssuer):
    auth = auth_for(module_auth, idp)
    for token in (idp.none_token(), idp.hs256_with_public_key_token(), "sk-x", None):
        refusal(auth, token)
    assert idp.requests == 0


# --- keys -------------------------------------------------------------------------------------


def test_the_key_set_is_fetched_once_for_many_tokens(module_auth: Any, idp: TestIssuer):
    auth = auth_for(module_auth, idp)
    for name in ("alice", "bob", "carol"):
        assert call(auth, idp.mint(username=name)).user_id == name
    assert idp.requests == 1


def test_a_rotated_key_is_fetched_but_random_kids_do_not_flood_the_provider(
    module_auth: Any, idp: TestIssuer
):
    auth = auth_for(module_auth, idp, min_refetch_seconds=0)
    assert call(auth, idp.mint()).user_id == "alice"
    idp.rotate()
    assert call(auth, idp.mint()).user_id == "alice"  # the new kid: fetched again
    assert idp.requests == 2
    limited = auth_for(module_auth, idp)  # the default: one re-fetch per 30 s at most
    assert call(limited, idp.mint()).user_id == "alice"
    before = idp.requests
    for n in range(5):
        assert "unknown signing key" in refusal(limited, idp.mint(kid=f"random-{n}")).message
    assert idp.requests - before <= 1


def test_the_last_keys_serve_while_the_provider_is_down(module_auth: Any, idp: TestIssuer):
    auth = auth_for(module_auth, idp, keys_lifespan_seconds=0.01)
    assert call(auth, idp.mint()).user_id == "alice"
    idp.down()
    time.sleep(0.05)  # the cached set is stale: the next token re-fetches
    assert call(auth, idp.mint(username="bob")).user_id == "bob"  # failed fetch, kept keys
    failed = idp.requests
    assert call(auth, idp.mint(username="carol")).user_id == "carol"
    assert idp.requests == failed  # a failed fetch is not retried at once


def test_with_no_keys_ever_fetched_a_token_gets_a_503_not_access(module_auth: Any, idp: TestIssuer):
    auth = auth_for(module_auth, idp, jwks_url=unreachable_issuer() + "/certs")
    exc = refusal(auth, idp.mint())
    assert exc.code == "503" and "keys are unavailable" in exc.message
    assert exc.headers["Retry-After"] == "30"
    idp.down()
    down = auth_for(module_auth, idp)
    assert refusal(down, idp.mint()).code == "503"
    assert refusal(down, idp.mint()).code == "503"
    assert idp.requests == 1  # not retried within the interval


def test_without_a_jwks_url_the_keys_are_discovered(module_auth: Any, idp: TestIssuer):
    auth = auth_for(module_auth, idp, jwks_url=None)
    assert call(auth, idp.mint()).user_id == "alice"
    assert call(auth, idp.mint()).user_id == "alice"
    assert (idp.discovery_requests, idp.requests) == (1, 1)


def test_a_discovery_document_naming_another_issuer_is_not_trusted(module_auth: Any):
    with TestIssuer(realm="coderag", discovery_issuer="https://evil.example/realms/x") as idp:
        auth = auth_for(module_auth, idp, jwks_url=None)
        assert refusal(auth, idp.mint()).code == "503"
        assert idp.requests == 0  # its jwks_uri was never fetched
