"""Static checks of the stack's Keycloak realm (docker/keycloak/coderag-realm.json) and of the
developer's login script (docker/keycloak/coderag-login.sh), run against a stub device flow.

The realm is what `kc.sh start --import-realm` creates on Keycloak's first start. Each
attribute name below is Keycloak's own; the source that defines it is named where it is
checked. The realm must carry no credential of any kind: secrets come from the environment
at deploy time, users from the site's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYCLOAK = REPO / "docker" / "keycloak"
REALM_FILE = KEYCLOAK / "coderag-realm.json"
LOGIN = KEYCLOAK / "coderag-login.sh"
API_CLIENT = "coderag"
IDE_CLIENT = "coderag-ide"
# Keys that would hold a credential in a realm representation (users' `credentials`, a
# client's `secret`, an identity provider's or LDAP federation's `clientSecret` /
# `bindCredential`, ...).
CREDENTIAL_KEYS = {
    "secret", "clientsecret", "credentials", "password", "hashedpassword", "salt", "users",
    "bindcredential", "federatedusers", "privatekey", "certificate",
}  # fmt: skip


@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    return json.loads(REALM_FILE.read_text(encoding="utf-8"))


def client(realm: dict[str, Any], client_id: str) -> dict[str, Any]:
    found = [c for c in realm["clients"] if c["clientId"] == client_id]
    assert len(found) == 1, f"client {client_id}: {len(found)} found"
    return found[0]


# --- the realm -----------------------------------------------------------------------------------


def test_the_file_is_named_as_keycloak_imports_it(realm: dict[str, Any]) -> None:
    # Keycloak, "Importing and exporting realms" (docs/guides/server/importExport.adoc): the
    # realm file must be named <realm name>-realm.json; --import-realm reads the .json files
    # of data/import and skips a realm that already exists.
    assert realm["realm"] == "coderag"
    assert f"{realm['realm']}-realm.json" == REALM_FILE.name
    assert realm["enabled"] is True


def test_no_credential_of_any_kind_is_in_the_realm(realm: dict[str, Any]) -> None:
    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield f"{where}/{key}", key
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}/{i}")

    keys = list(walk(realm, ""))
    assert keys, "nothing walked"
    found = [path for path, key in keys if key.lower() in CREDENTIAL_KEYS]
    assert found == []
    attributes = [k for c in realm["clients"] for k in c.get("attributes", {})]
    assert not [k for k in attributes if "secret" in k.lower()]
    text = REALM_FILE.read_text(encoding="utf-8").lower()
    assert "changeme" not in text
    # Keycloak resolves ${VAR} placeholders from its environment at import ("Using
    # Environment Variables within the Realm Configuration Files", with no restriction on
    # which variable): none is used, so no secret of the container can end up in the realm.
    assert "${" not in text


def test_people_cannot_register_or_rename_themselves(realm: dict[str, Any]) -> None:
    """coderag finds a person in GitLab by the token's preferred_username (or email): a user
    who could choose or change their username would read as another GitLab user."""
    assert realm["registrationAllowed"] is False
    assert realm["editUsernameAllowed"] is False
    assert realm["duplicateEmailsAllowed"] is False
    assert realm["bruteForceProtected"] is True
    # "external": HTTPS required for every request from outside private networks
    assert realm["sslRequired"] in ("external", "all")


def test_groups_are_examples_without_members(realm: dict[str, Any]) -> None:
    paths = {g["path"] for g in realm["groups"]}
    assert {"/payments", "/platform"} <= paths
    for group in realm["groups"]:
        assert group["path"] == "/" + group["name"]
        assert "members" not in group and "users" not in group


# --- the clients ---------------------------------------------------------------------------------


def test_the_api_client_is_an_audience_that_obtains_no_token(realm: dict[str, Any]) -> None:
    # Bearer-only is deprecated (keycloak/keycloak#49763); its equivalent is a client with
    # every grant off (keycloak/keycloak#13448). Grant attribute: OAuth2DeviceConfig.
    api = client(realm, API_CLIENT)
    assert api["enabled"] is True and api["publicClient"] is False
    assert api.get("bearerOnly") is not True
    for flow in (
        "standardFlowEnabled", "implicitFlowEnabled", "directAccessGrantsEnabled",
        "serviceAccountsEnabled",
    ):  # fmt: skip
        assert api[flow] is False, flow
    assert api["attributes"]["oauth2.device.authorization.grant.enabled"] == "false"
    assert api["attributes"]["oidc.ciba.grant.enabled"] == "false"
    assert api["redirectUris"] == []


def test_the_ide_client_is_public_with_the_device_grant(realm: dict[str, Any]) -> None:
    # org.keycloak.models.OAuth2DeviceConfig: OAUTH2_DEVICE_AUTHORIZATION_GRANT_ENABLED =
    # "oauth2.device.authorization.grant.enabled"; OIDCConfigAttributes:
    # PKCE_CODE_CHALLENGE_METHOD = "pkce.code.challenge.method".
    ide = client(realm, IDE_CLIENT)
    assert ide["enabled"] is True and ide["publicClient"] is True
    assert ide["attributes"]["oauth2.device.authorization.grant.enabled"] == "true"
    assert ide["standardFlowEnabled"] is True
    assert ide["attributes"]["pkce.code.challenge.method"] == "S256"
    assert ide["implicitFlowEnabled"] is False
    assert ide["directAccessGrantsEnabled"] is False, "no passwords through the IDE"
    assert ide["serviceAccountsEnabled"] is False
    # Loopback redirects only (RFC 8252 7.3): Keycloak ignores the port of http://localhost
    # and http://127.0.0.1 redirect URIs (Constants.INSTALLED_APP_URL / INSTALLED_APP_LOOPBACK
    # in RedirectUtils), so a local tool may listen on any port; nothing else may receive codes.
    assert ide["redirectUris"], "standard flow without a redirect URI"
    for uri in ide["redirectUris"]:
        parts = urlsplit(uri)
        assert (parts.scheme, parts.hostname, parts.port) in (
            ("http", "127.0.0.1", None),
            ("http", "localhost", None),
        ), uri
    assert ide["webOrigins"] == []


def test_ide_access_tokens_carry_the_api_audience(realm: dict[str, Any]) -> None:
    # AudienceProtocolMapper: PROVIDER_ID "oidc-audience-mapper", INCLUDED_CLIENT_AUDIENCE =
    # "included.client.audience"; OIDCAttributeMapperHelper: INCLUDE_IN_ACCESS_TOKEN =
    # "access.token.claim", INCLUDE_IN_ID_TOKEN = "id.token.claim".
    ide = client(realm, IDE_CLIENT)
    mappers = [m for m in ide["protocolMappers"] if m["protocolMapper"] == "oidc-audience-mapper"]
    assert len(mappers) == 1
    mapper = mappers[0]
    assert mapper["protocol"] == "openid-connect"
    assert mapper["config"]["included.client.audience"] == client(realm, API_CLIENT)["clientId"]
    assert mapper["config"]["access.token.claim"] == "true"
    assert mapper["config"]["id.token.claim"] == "false"


def test_ide_tokens_name_the_user_and_last_a_working_day(realm: dict[str, Any]) -> None:
    ide = client(realm, IDE_CLIENT)
    # `sub` comes from the `basic` client scope (Keycloak 25+), preferred_username from
    # `profile`; the realm has no `clientScopes`, so Keycloak creates its defaults at import
    # (RealmManager.importRealm: createDefaultClientScopes when getClientScopes() == null).
    assert "clientScopes" not in realm
    assert {"basic", "profile"} <= set(ide["defaultClientScopes"])
    assert "offline_access" not in ide["optionalClientScopes"], "no long-lived offline tokens"
    assert ide["attributes"]["use.refresh.tokens"] == "false"
    # OIDCConfigAttributes.ACCESS_TOKEN_LIFESPAN = "access.token.lifespan" (seconds);
    # TokenManager.getTokenExpiration caps exp at the session's max lifespan, so the realm's
    # ssoSessionMaxLifespan must not be shorter.
    lifespan = int(ide["attributes"]["access.token.lifespan"])
    assert 3600 <= lifespan <= 12 * 3600
    assert realm["ssoSessionMaxLifespan"] >= lifespan
    # the realm default stays short for any other client
    assert realm["accessTokenLifespan"] <= 900
    # realm attributes of the device grant (OAuth2DeviceConfig: oauth2DeviceCodeLifespan,
    # oauth2DevicePollingInterval)
    assert 60 <= realm["oauth2DeviceCodeLifespan"] <= 1800
    assert realm["oauth2DevicePollingInterval"] >= 1


# --- the login script ----------------------------------------------------------------------------


class DeviceFlowStub:
    """Keycloak's device authorization and token endpoints for one realm, on loopback.

    The token endpoint answers `authorization_pending` `pending` times, then `outcome`: a
    token, or an error (`access_denied`). Records every form it was posted."""

    def __init__(self, *, pending: int = 1, outcome: str = "token") -> None:
        self.pending = pending
        self.outcome = outcome
        self.token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln-_x"
        self.posts: list[tuple[str, dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                stub.posts.append((self.path, form))
                status, body = stub.answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm_url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/coderag"

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        base = "/realms/coderag/protocol/openid-connect"
        if path == f"{base}/auth/device":
            return 200, {
                "device_code": "dev-code-123", "user_code": "WXYZ-ABCD",
                "verification_uri": "https://login.example.invalid/realms/coderag/device",
                "verification_uri_complete":
                    "https://login.example.invalid/realms/coderag/device?user_code=WXYZ-ABCD",
                "expires_in": 600, "interval": 0,
            }  # fmt: skip
        if path == f"{base}/token":
            if self.pending > 0:
                self.pending -= 1
                return 400, {"error": "authorization_pending", "error_description": "wait"}
            if self.outcome == "token":
                return 200, {
                    "access_token": self.token, "expires_in": 28800, "token_type": "Bearer",
                    "refresh_expires_in": 0, "scope": "openid profile email",
                }  # fmt: skip
            return 400, {"error": self.outcome}
        return 404, {"error": "not found"}

    def __enter__(self) -> DeviceFlowStub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_login(stub: DeviceFlowStub, env_file: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(env_file.parent),
        "KEYCLOAK_REALM_URL": stub.realm_url,
        "CONTINUE_ENV_FILE": str(env_file),
        "NO_PROXY": "*",
    }
    return subprocess.run(["bash", str(LOGIN)], capture_output=True, text=True, timeout=60, env=env)


def test_login_writes_the_token_for_continue_and_keeps_the_other_secrets(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".continue" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("LITELLM_API_KEY=k3y\nCODERAG_TOKEN=stale\n", encoding="utf-8")
    with DeviceFlowStub(pending=2) as stub:
        result = run_login(stub, env_file)
    assert result.returncode == 0, result.stderr
    lines = env_file.read_text(encoding="utf-8").splitlines()
    assert lines == ["LITELLM_API_KEY=k3y", f"CODERAG_TOKEN={stub.token}"]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "WXYZ-ABCD" in result.stdout and "/realms/coderag/device" in result.stdout
    assert stub.token not in result.stdout + result.stderr, "the token is never printed"
    # Keycloak's endpoints (device_authorization_endpoint and token_endpoint of its discovery
    # document), the public client's id, the RFC 8628 grant type
    paths = [p for p, _ in stub.posts]
    base = "/realms/coderag/protocol/openid-connect"
    assert paths == [f"{base}/auth/device"] + [f"{base}/token"] * 3
    assert all(form["client_id"] == IDE_CLIENT for _, form in stub.posts)
    polls = [form for path, form in stub.posts if path.endswith("/token")]
    assert {f["grant_type"] for f in polls} == {"urn:ietf:params:oauth:grant-type:device_code"}
    assert {f["device_code"] for f in polls} == {"dev-code-123"}


def test_login_creates_the_env_file_when_there_is_none(tmp_path: Path) -> None:
    env_file = tmp_path / ".continue" / ".env"
    with DeviceFlowStub(pending=0) as stub:
        result = run_login(stub, env_file)
    assert result.returncode == 0, result.stderr
    assert env_file.read_text(encoding="utf-8") == f"CODERAG_TOKEN={stub.token}\n"


def test_a_denied_login_fails_and_leaves_the_env_file_alone(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CODERAG_TOKEN=previous\n", encoding="utf-8")
    with DeviceFlowStub(pending=1, outcome="access_denied") as stub:
        result = run_login(stub, env_file)
    assert result.returncode == 1
    assert "denied" in result.stderr
    assert env_file.read_text(encoding="utf-8") == "CODERAG_TOKEN=previous\n"
    assert list(tmp_path.iterdir()) == [env_file], "no temporary file left behind"


def test_login_fails_on_an_unreachable_keycloak(tmp_path: Path) -> None:
    stub = DeviceFlowStub()
    stub.server.server_close()  # never served: the port refuses
    result = run_login(stub, tmp_path / ".env")
    assert result.returncode != 0
    assert not (tmp_path / ".env").exists()
