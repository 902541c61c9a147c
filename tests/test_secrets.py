"""Secret redaction before embedding: each rule, ordinary code left alone, linear time, and a
planted-secret corpus indexed through the real IndexService and served over real HTTP with
no secret in any response or stored payload.

Planted values are built at test time from a seeded generator (right shapes, fake values):
no literal key is committed, so secret scanners and push protection have nothing to flag.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chunkers import FileChunker
from chunkers.secrets import Finding, marker, redact
from coderag.index import SearchFilter
from tests.conftest import git

# --- planted values ---------------------------------------------------------------------

_rng = random.Random(0x5EC12E7)
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"


def _rand(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _mixed(n: int) -> str:
    """Random alphanumerics that surely hold upper, lower and a digit."""
    return "Aa7" + _rand(ALNUM, n - 3)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


AWS_ID = "AK" + "IA" + _rand(string.ascii_uppercase + string.digits, 16)
AWS_SECRET = _rand(B64, 40)
GITHUB = "gh" + "p_" + _mixed(36)
GITLAB = "gl" + "pat-" + _mixed(20)
SLACK = "xo" + "xb-" + _rand(string.digits, 12) + "-" + _rand(string.digits, 12) + "-" + _mixed(24)
SLACK_HOOK = f"T{_rand(ALNUM, 8)}/B{_rand(ALNUM, 8)}/{_mixed(24)}"
STRIPE = "sk" + "_live_" + _mixed(24)
OPENAI = "sk" + "-proj-" + _mixed(48)
GOOGLE = "AI" + "za" + _mixed(35)
NPM = "np" + "m_" + _mixed(36)
JWT = ".".join(
    (
        _b64url(b'{"alg":"HS256","typ":"JWT"}'),
        _b64url(json.dumps({"sub": _rand(ALNUM, 12), "role": "admin"}).encode()),
        _b64url(_rng.randbytes(32)),
    )
)
DB_PASSWORD = _mixed(18)
DJANGO_SECRET = _rand(ALNUM + "!@%^&*(-_=+)", 50)
YAML_PASSWORD = _mixed(16)
URL_PASSWORD = _mixed(20)
PROPS_PASSWORD = _mixed(16)
AZURE_KEY = _rand(B64, 86) + "=="
XML_PASSWORD = _mixed(16)
JAVA_API_KEY = _mixed(32)
BEARER = _mixed(40)
BASIC_PASSWORD = _mixed(16)
BASIC = base64.b64encode(f"svc-deploy:{BASIC_PASSWORD}".encode()).decode()
TF_PASSWORD = _mixed(20)
PEM_LINES = [_rand(B64, 64) for _ in range(12)] + [_rand(B64, 20) + "=="]
GCP_LINES = [_rand(B64, 64) for _ in range(8)]


def _pem(kind: str, lines: list[str]) -> str:
    return "\n".join(
        [f"-----BEGIN {kind}PRIVATE KEY-----", *lines, f"-----END {kind}PRIVATE KEY-----"]
    )


@dataclass(frozen=True)
class Planted:
    kind: str  # the kind of marker expected in its place
    value: str


PLANTED: list[Planted] = [
    Planted("aws-access-key", AWS_ID),
    Planted("aws-secret-key", AWS_SECRET),
    Planted("github-token", GITHUB),
    Planted("gitlab-token", GITLAB),
    Planted("slack-token", SLACK),
    Planted("slack-webhook", SLACK_HOOK),
    Planted("stripe-key", STRIPE),
    Planted("openai-key", OPENAI),
    Planted("google-api-key", GOOGLE),
    Planted("npm-token", NPM),
    Planted("jwt", JWT),
    Planted("password", DB_PASSWORD),
    Planted("secret", DJANGO_SECRET),
    Planted("password", YAML_PASSWORD),
    Planted("url-password", URL_PASSWORD),
    Planted("password", PROPS_PASSWORD),
    Planted("azure-storage-key", AZURE_KEY),
    Planted("password", XML_PASSWORD),
    Planted("api-key", JAVA_API_KEY),
    Planted("bearer-token", BEARER),
    Planted("basic-auth", BASIC),
    Planted("basic-auth", BASIC_PASSWORD),  # what the base64 decodes to
    Planted("password", TF_PASSWORD),
    *(Planted("private-key", line) for line in PEM_LINES[:-1]),
    *(Planted("private-key", line) for line in GCP_LINES),
]


def corpus() -> dict[str, str]:
    """The planted repository: path -> text. Ordinary code around every secret."""
    gcp = {
        "type": "service_account",
        "project_id": "payments-prod",
        "private_key_id": _rand("0123456789abcdef", 40),
        "private_key": "\n".join(
            ["-----BEGIN PRIVATE KEY-----", *GCP_LINES, "-----END PRIVATE KEY-----", ""]
        ),
        "client_email": "ledger@payments-prod.iam.gserviceaccount.com",
    }
    return {
        ".env": (
            "# local development settings\n"
            f"AWS_ACCESS_KEY_ID={AWS_ID}\n"
            f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n"
            f"DATABASE_PASSWORD={DB_PASSWORD}\n"
            f"STRIPE_SECRET_KEY={STRIPE}\n"
            f"SLACK_BOT_TOKEN={SLACK}\n"
            f"OPENAI_API_KEY={OPENAI}\n"
            "DEBUG=true\n"
        ),
        "config/config.yaml": (
            "database:\n"
            "  host: db.internal\n"
            "  user: ledger\n"
            f"  password: {YAML_PASSWORD}\n"
            f"  url: postgres://ledger:{URL_PASSWORD}@db.internal:5432/ledger\n"
            "notifications:\n"
            f"  slack_webhook: https://hooks.slack.com/services/{SLACK_HOOK}\n"
            f"gitlab_token: {GITLAB}\n"
        ),
        "app/settings.py": (
            '"""Django settings of the ledger service."""\n\n'
            f'SECRET_KEY = "{DJANGO_SECRET}"\n'
            "DEBUG = False\n\n"
            "DATABASES = {\n"
            '    "default": {\n'
            '        "ENGINE": "django.db.backends.postgresql",\n'
            '        "NAME": "ledger",\n'
            '        "USER": "ledger",\n'
            f'        "PASSWORD": "{DB_PASSWORD}",\n'
            "    }\n"
            "}\n\n\n"
            "def api_headers():\n"
            '    """Headers of calls to the payments API."""\n'
            f'    return {{"Authorization": "Bearer {BEARER}"}}\n\n\n'
            "def legacy_headers():\n"
            '    """Basic auth of the legacy settlement endpoint."""\n'
            f'    return {{"Authorization": "Basic {BASIC}"}}\n'
        ),
        "deploy/id_rsa": _pem("RSA ", PEM_LINES) + "\n",
        "web/src/github.js": (
            "// Calls the GitHub API to list the ledger's releases.\n"
            f'const GITHUB_TOKEN = "{GITHUB}";\n'
            f'const SESSION_JWT = "{JWT}";\n'
            f'const MAPS_KEY = "{GOOGLE}";\n\n'
            "export async function listReleases(repo) {\n"
            "  const resp = await fetch(`https://api.github.com/repos/${repo}/releases`, {\n"
            "    headers: { Authorization: `token ${GITHUB_TOKEN}` },\n"
            "  });\n"
            "  return resp.json();\n"
            "}\n"
        ),
        "infra/main.tf": (
            'provider "aws" {\n'
            '  region     = "eu-west-1"\n'
            f'  access_key = "{AWS_ID}"\n'
            f'  secret_key = "{AWS_SECRET}"\n'
            "}\n\n"
            'resource "aws_db_instance" "ledger" {\n'
            '  engine   = "postgres"\n'
            '  username = "ledger"\n'
            f'  password = "{TF_PASSWORD}"\n'
            "}\n"
        ),
        "keys/service-account.json": json.dumps(gcp, indent=2) + "\n",
        "src/main/resources/application.properties": (
            "spring.datasource.url=jdbc:postgresql://db.internal:5432/ledger\n"
            "spring.datasource.username=ledger\n"
            f"spring.datasource.password={PROPS_PASSWORD}\n"
            "storage.connection=DefaultEndpointsProtocol=https;AccountName=ledgerstore;"
            f"AccountKey={AZURE_KEY};EndpointSuffix=core.windows.net\n"
        ),
        "maven/settings.xml": (
            "<settings>\n  <servers>\n    <server>\n      <id>internal</id>\n"
            "      <username>deployer</username>\n"
            f"      <password>{XML_PASSWORD}</password>\n"
            "    </server>\n  </servers>\n</settings>\n"
        ),
        "src/main/java/ledger/Config.java": (
            "package ledger;\n\n"
            "/** Static configuration of the ledger client. */\n"
            "public final class Config {\n"
            f'    private static final String API_KEY = "{JAVA_API_KEY}";\n\n'
            "    public static String apiKey() {\n"
            "        return API_KEY;\n"
            "    }\n"
            "}\n"
        ),
        ".npmrc": f"//registry.npmjs.org/:_authToken={NPM}\n",
        "src/ledger/close.py": (
            '"""Closing the ledger."""\n\n\n'
            "def close_ledger(ledger, day):\n"
            '    """Close the ledger for a day once every payment is settled."""\n'
            "    for entry in ledger.entries(day):\n"
            "        if not entry.settled:\n"
            '            raise RuntimeError("unsettled payment")\n'
            "    ledger.closed.add(day)\n"
        ),
    }


def fragments(value: str, width: int = 12) -> set[str]:
    """The value and every ``width``-char window of it: a leak of part of a secret counts."""
    if len(value) <= width:
        return {value}
    return {value[i : i + width] for i in range(len(value) - width + 1)}


ALL_FRAGMENTS: dict[str, Planted] = {f: p for p in PLANTED for f in fragments(p.value)}


def leaks(text: str) -> list[str]:
    """Planted secrets (kind: fragment) that appear in ``text``."""
    return sorted({f"{p.kind}: {f}" for f, p in ALL_FRAGMENTS.items() if f in text})


# --- rules, one by one --------------------------------------------------------------------

POSITIVES: list[tuple[str, str | None, str, str, str]] = [
    # (id, language, text, secret, kind)
    ("aws-id", "python", f'KEY_ID = "{AWS_ID}"\n', AWS_ID, "aws-access-key"),
    ("aws-secret-env", None, f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n", AWS_SECRET, "aws-secret-key"),
    ("aws-secret-code", "python", f'aws_secret = "{AWS_SECRET}"\n', AWS_SECRET, "aws-secret-key"),
    ("github", "javascript", f"const t = '{GITHUB}';\n", GITHUB, "github-token"),
    (
        "github-pat",
        "text",
        "GH_PAT=github_pat_" + "11AB" + _mixed(60) + "\n",
        "11AB",
        "github-token",
    ),
    ("gitlab", "yaml", f"ci:\n  token: {GITLAB}\n", GITLAB, "gitlab-token"),
    (
        "gitlab-deploy",
        "bash",
        f"git clone https://x:{'gl' + 'dt-' + _mixed(20)}@h/r\n",
        "gldt-",
        "gitlab-token",
    ),
    ("slack", "python", f'client = WebClient("{SLACK}")\n', SLACK, "slack-token"),
    (
        "slack-hook",
        "yaml",
        f"hook: https://hooks.slack.com/services/{SLACK_HOOK}\n",
        SLACK_HOOK,
        "slack-webhook",
    ),
    ("stripe", "ruby", f"Stripe.api_key = '{STRIPE}'\n", STRIPE, "stripe-key"),
    ("openai", "python", f'openai.Client(api_key="{OPENAI}")\n', OPENAI, "openai-key"),
    ("google", "javascript", f'load("{GOOGLE}");\n', GOOGLE, "google-api-key"),
    ("npm", None, f"//registry.npmjs.org/:_authToken={NPM}\n", NPM, "npm-token"),
    ("jwt", "go", f'var tok = "{JWT}"\n', JWT, "jwt"),
    ("password-py", "python", f'DB_PASSWORD = "{DB_PASSWORD}"\n', DB_PASSWORD, "password"),
    (
        "password-kwarg",
        "python",
        f'connect(host="db", password="{DB_PASSWORD}")\n',
        DB_PASSWORD,
        "password",
    ),
    ("password-annotated", "python", f'password: str = "{DB_PASSWORD}"\n', DB_PASSWORD, "password"),
    ("password-go", "go", f'pwd := "{DB_PASSWORD}"\n', DB_PASSWORD, "password"),
    (
        "password-php",
        "php",
        f"<?php $cfg = ['db_password' => '{DB_PASSWORD}'];\n",
        DB_PASSWORD,
        "password",
    ),
    ("password-json", "json", f'{{"password": "{DB_PASSWORD}"}}\n', DB_PASSWORD, "password"),
    ("password-yaml", "yaml", f"db:\n  password: {YAML_PASSWORD}\n", YAML_PASSWORD, "password"),
    (
        "password-ini",
        "ini",
        f"[db]\npassword = {PROPS_PASSWORD} and more\n",
        PROPS_PASSWORD,
        "password",
    ),
    ("password-toml", "toml", f'[db]\npassword = "{PROPS_PASSWORD}"\n', PROPS_PASSWORD, "password"),
    (
        "password-props",
        "ini",
        f"spring.datasource.password={PROPS_PASSWORD}\n",
        PROPS_PASSWORD,
        "password",
    ),
    ("password-shell", "bash", f"export PGPASSWORD={PROPS_PASSWORD}\n", PROPS_PASSWORD, "password"),
    (
        "password-escaped",
        "python",
        f'db_password = "{DB_PASSWORD}\\"{XML_PASSWORD}"\n',
        XML_PASSWORD,
        "password",
    ),
    (
        "client-secret",
        "javascript",
        f'const cfg = {{ clientSecret: "{JAVA_API_KEY}" }};\n',
        JAVA_API_KEY,
        "secret",
    ),
    ("api-key-java", "java", f'String apiKey = "{JAVA_API_KEY}";\n', JAVA_API_KEY, "api-key"),
    ("secret-key", "python", f"SECRET_KEY = '{DJANGO_SECRET}'\n", DJANGO_SECRET, "secret"),
    ("auth-token", "typescript", f'const authToken = "{BEARER}";\n', BEARER, "token"),
    (
        "url",
        "python",
        f'DSN = "postgres://ledger:{URL_PASSWORD}@db:5432/x"\n',
        URL_PASSWORD,
        "url-password",
    ),
    (
        "conn-string",
        "csharp",
        f'var c = "Server=db;Password={URL_PASSWORD};";\n',
        URL_PASSWORD,
        "password",
    ),
    (
        "jdbc",
        "java",
        f'String u = "jdbc:mysql://db/x?user=a&password={URL_PASSWORD}";\n',
        URL_PASSWORD,
        "password",
    ),
    (
        "azure",
        "text",
        f"AccountName=x;AccountKey={AZURE_KEY};EndpointSuffix=core\n",
        AZURE_KEY,
        "azure-storage-key",
    ),
    ("bearer", "python", f'h = {{"Authorization": "Bearer {BEARER}"}}\n', BEARER, "bearer-token"),
    ("basic", "bash", f'curl -H "Authorization: Basic {BASIC}" https://x\n', BASIC, "basic-auth"),
    (
        "xml",
        "xml",
        f"<server><password>{XML_PASSWORD}</password></server>\n",
        XML_PASSWORD,
        "password",
    ),
    ("yaml-block", "yaml", f"stringData:\n  token: |\n    {BEARER}\n  user: x\n", BEARER, "token"),
    ("hf", "python", f'HF = "hf_{_mixed(34)}"\n', "hf_Aa7", "huggingface-token"),
]


@pytest.mark.parametrize(
    ("language", "text", "secret", "kind"),
    [p[1:] for p in POSITIVES],
    ids=[p[0] for p in POSITIVES],
)
def test_rule_redacts_the_value_and_keeps_the_line(
    language: str | None, text: str, secret: str, kind: str
) -> None:
    assert secret in text
    out = redact(text, language)
    assert secret not in out.text
    assert marker(kind) in out.text
    assert kind in out.counts()
    assert out.text.count("\n") == text.count("\n")
    # Only the value goes: what precedes it on its line (the variable name) is still there.
    line = next(i for i, t in enumerate(text.split("\n")) if secret in t)
    assert out.findings[0].line == line + 1
    before = text.split("\n")[line].split(secret)[0]
    assert out.text.split("\n")[line].startswith(before[: before.rfind(":") + 1] or before[:3])


NEGATIVES: list[tuple[str, str, str]] = [
    ("call", "python", "password = get_password(user)\ntoken = request.headers['X-Token']\n"),
    ("env-lookup", "python", 'password = os.environ["DB_PASSWORD"]\n'),
    ("compare", "python", 'if password == "":\n    raise ValueError("empty password")\n'),
    ("author", "python", 'author = "Jane Doe"\n__author__ = "Jane Doe"\n'),
    ("tokenizer", "python", 'max_tokens = 256\ntokenizer = load("bert")\n'),
    ("token-type", "python", 'token_type = "bearer"\npassword_field = "password"\n'),
    ("name-as-value", "typescript", 'const apiKey = "apiKey";\nconst PASSWORD = "password";\n'),
    ("reference", "yaml", "db:\n  password: ${DB_PASSWORD}\n  token: '{{ .Values.token }}'\n"),
    ("masked", "ini", "[db]\npassword = ********\n"),
    ("placeholder", "yaml", "password: <your-password>\npad_token: '[PAD]'\n"),
    ("null", "json", '{"password": null, "token": ""}\n'),
    ("fstring", "python", 'auth = f"{user}:{password}"\n'),
    ("prose", "markdown", "Pass :func:`x` the token.\nBasic authentication and Bearer tokens.\n"),
    ("public-key", "yaml", "public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\n"),
    ("pem-check", "python", 'if text.startswith("-----BEGIN RSA PRIVATE KEY-----"):\n    x = 1\n'),
    ("url-no-password", "python", 'URL = "https://user@example.com/path"\nU = "http://h:8080/x"\n'),
    ("css-class", "css", ".sk-button-primary-large-variant { color: red; }\n"),
    ("monkey", "json", '{"monkey": "business", "keys": "values"}\n'),
]


@pytest.mark.parametrize(
    ("language", "text"), [n[1:] for n in NEGATIVES], ids=[n[0] for n in NEGATIVES]
)
def test_ordinary_code_is_left_alone(language: str, text: str) -> None:
    out = redact(text, language)
    assert out.text == text
    assert out.findings == ()


def test_bare_values_count_in_config_files_but_not_in_code() -> None:
    line = f"password = {DB_PASSWORD}\n"
    assert DB_PASSWORD not in redact(line, "ini").text
    assert DB_PASSWORD not in redact(line, None).text  # unknown files: redact
    assert redact(line, "python").text == line  # an expression in code


def test_multiline_private_key_keeps_its_line_count_and_markers() -> None:
    text = "before\n" + _pem("RSA ", PEM_LINES) + "\nafter = 1\n"
    out = redact(text, "text")
    lines, kept = text.split("\n"), out.text.split("\n")
    assert len(kept) == len(lines)
    assert kept[1] == "-----BEGIN RSA PRIVATE KEY-----"
    assert kept[len(PEM_LINES) + 2] == "-----END RSA PRIVATE KEY-----"
    assert kept[0] == "before" and kept[-2] == "after = 1"
    assert all(k == marker("private-key") for k in kept[2 : len(PEM_LINES) + 2])
    assert out.findings == (Finding("private-key", 3),)  # the first line it hid


@pytest.mark.parametrize("kind", ["", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", "PGP "])
def test_private_key_flavours(kind: str) -> None:
    block = _pem(kind, PEM_LINES)
    if kind == "PGP ":
        block = block.replace("KEY-----", "KEY BLOCK-----")
    if kind == "ENCRYPTED ":  # legacy encrypted PEM: headers, a blank line, then the body
        head, *body = block.split("\n")
        block = "\n".join([head, "Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,AB12", "", *body])
    out = redact(block + "\n", "text")
    assert not leaks(out.text)
    assert out.text.count("\n") == block.count("\n") + 1
    assert len(out.findings) == 1


def test_private_key_embedded_in_code() -> None:
    """Concatenated string pieces (JS), an escaped one-liner (JSON), an unterminated block."""
    js = 'const key = "-----BEGIN PRIVATE KEY-----\\n" +\n'
    js += "".join(f'  "{line}\\n" +\n' for line in GCP_LINES)
    js += '  "-----END PRIVATE KEY-----\\n";\nconsole.log(key);\n'
    one = '{"private_key": "-----BEGIN PRIVATE KEY-----\\n' + "\\n".join(GCP_LINES)
    one += '\\n-----END PRIVATE KEY-----\\n", "client_email": "a@b.c"}\n'
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(GCP_LINES[:3]) + "\n"
    for language, text in (("javascript", js), ("json", one), ("text", cut)):
        out = redact(text, language)
        assert not leaks(out.text), language
        assert out.text.count("\n") == text.count("\n")
        assert marker("private-key") in out.text
    assert "console.log(key);" in redact(js, "javascript").text
    assert '"client_email": "a@b.c"' in redact(one, "json").text


def test_redaction_is_idempotent_and_reports_lines() -> None:
    files = corpus()
    for path, text in files.items():
        once = redact(text)
        twice = redact(once.text)
        assert twice.text == once.text and twice.findings == (), path
        for f in once.findings:
            assert marker(f.kind) in once.text.split("\n")[f.line - 1], (path, f)


PATHOLOGICAL = [
    "a",
    'password="',
    "password: " + " " * 9,
    "token = '",
    'token="\\"',
    "-----BEGIN RSA PRIVATE KEY-----\n",
    "eyJ",
    "eyJa.",
    "a://b:",
    "<password",
    "?password=",
    "sk-",
    "Basic ",
    "AKIA",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unit", PATHOLOGICAL)
def test_one_megabyte_of_pathological_input_completes(unit: str) -> None:
    """Linear time: every rule is anchored and bounded, so a 1 MB line of repeated rule
    prefixes finishes (a quadratic backtrack would run for hours); time is not asserted."""
    text = unit * (1_000_000 // len(unit))
    out = redact(text, "python")
    assert out.text.count("\n") == text.count("\n")
    assert len(out.text) > 0


# --- the chunker --------------------------------------------------------------------------


def test_chunker_redacts_before_chunking_and_keeps_line_numbers() -> None:
    data = corpus()["app/settings.py"].encode()
    raw = FileChunker(redact_secrets=False).chunk("app/settings.py", data)
    red = FileChunker().chunk("app/settings.py", data)
    assert leaks("\n".join(c.text for c in raw.chunks))  # the control: secrets were there
    assert not leaks("\n".join(c.text + c.header + c.symbol for c in red.chunks))
    assert {f.kind for f in red.redactions} == {"password", "secret", "bearer-token", "basic-auth"}
    assert raw.redactions == ()
    lines = data.decode().split("\n")
    for c in red.chunks:  # every chunk still spans exactly its lines
        assert c.text.count("\n") == c.end_line - c.start_line
        assert len(c.text.split("\n")) == len(lines[c.start_line - 1 : c.end_line])
    assert [(c.start_line, c.end_line) for c in red.chunks] == [
        (c.start_line, c.end_line) for c in raw.chunks
    ]


def test_setting_turns_redaction_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from coderag.runtime import build_runtime
    from coderag.settings import Settings

    monkeypatch.setenv("CODERAG_REDACT_SECRETS", "false")
    off = Settings(data_dir=tmp_path / "off", index_backend="edge")
    monkeypatch.delenv("CODERAG_REDACT_SECRETS")
    on = Settings(data_dir=tmp_path / "on", index_backend="edge")
    assert off.redact_secrets is False and on.redact_secrets is True
    with build_runtime(off) as rt_off, build_runtime(on) as rt_on:
        assert rt_off.chunker.redact_secrets is False and rt_on.chunker.redact_secrets is True
        assert rt_off.indexer.fingerprint() != rt_on.indexer.fingerprint()


# --- end to end: index, then serve --------------------------------------------------------

REPO = "ledger/service"


def _make_repo(root: Path) -> Path:
    repo = root / "planted"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for rel, text in corpus().items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "planted secrets")
    return repo


def _stored_text(index: Any, repo: str) -> str:
    """Every payload of ``repo`` in the index, as one JSON text."""
    return json.dumps([p for _, p in index.scroll(SearchFilter(repos=[repo]))], ensure_ascii=False)


@pytest.mark.integration
def test_turning_redaction_on_rewrites_an_index_that_holds_raw_secrets(
    tmp_path: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An index written without redaction (or before it existed) holds the secrets: the
    changed fingerprint makes the next run a full re-write that removes every one of them."""
    from prometheus_client import REGISTRY

    from coderag.runtime import build_runtime
    from coderag.settings import Settings

    repo = _make_repo(tmp_path)
    data = tmp_path / "data"
    raw = build_runtime(Settings(data_dir=data, index_backend="edge", redact_secrets=False))
    raw.embedder = raw.indexer.embedder = raw.retriever.embedder = embedder
    with raw:
        assert type(raw.indexer).index(raw.indexer, repo, REPO, "main").mode == "full"
        assert leaks(_stored_text(raw.index, REPO))  # the control
    rt = build_runtime(Settings(data_dir=data, index_backend="edge"))
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    before = REGISTRY.get_sample_value("coderag_secrets_redacted_total", {"kind": "password"})
    with rt, caplog.at_level(logging.INFO, logger="indexer.service"):
        report = type(rt.indexer).index(rt.indexer, repo, REPO, "main")
        assert report.mode == "full"
        stored = _stored_text(rt.index, REPO)
        assert leaks(stored) == []
        assert report.as_dict()["secrets_redacted"] == report.secrets_redacted
        after = REGISTRY.get_sample_value("coderag_secrets_redacted_total", {"kind": "password"})
        assert (after or 0) - (before or 0) == report.secrets_redacted["password"]
    logged = [r for r in caplog.records if r.getMessage() == "secrets redacted"]
    assert {r.path for r in logged} >= {".env", "deploy/id_rsa", "app/settings.py"}  # type: ignore[attr-defined]
    for r in logged:
        assert leaks(json.dumps(r.__dict__, default=str)) == []
    # what operators read: the JSON log line names the kinds (not masked by the log redactor)
    from coderag.logging import JsonFormatter

    lines = [json.loads(JsonFormatter().format(r)) for r in logged]
    kinds = [k for line in lines for k in line["kinds"]]
    assert any(k["kind"] == "password" and isinstance(k["count"], int) for k in kinds)
    assert "[REDACTED]" not in json.dumps(kinds)
    assert all(leaks(json.dumps(line)) == [] for line in lines)


@dataclass
class Served:
    url: str
    token: str
    report: dict[str, Any]
    stored: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[Served]:
    """The planted repo indexed by the real IndexService into an on-disk Edge index, and the
    app serving it over loopback HTTP with auth on."""
    import secrets

    from coderag.api import create_app
    from coderag.runtime import build_runtime
    from coderag.settings import Settings
    from tests.api_support import running_server

    root = tmp_path_factory.mktemp("secrets")
    token = f"reader-{secrets.token_hex(16)}"
    settings = Settings(
        data_dir=root / "data", index_backend="edge", api_tokens={token: [REPO]}, log_json=True
    )
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    repo = _make_repo(root)
    rt.warm_up()
    report = type(rt.indexer).index(rt.indexer, repo, REPO, "main")
    stored = _stored_text(rt.index, REPO)
    with running_server(create_app(settings, runtime=rt)) as url:
        yield Served(url, token, report.as_dict(), stored)
    rt.close()


QUERIES = [
    "aws secret key", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "access_key secret_key",
    "password", "DATABASE_PASSWORD", "database password", "spring.datasource.password",
    "private key", "BEGIN RSA PRIVATE KEY", "private_key service account", "SECRET_KEY",
    "GITHUB_TOKEN", "github token", "gitlab_token", "slack webhook", "SLACK_BOT_TOKEN",
    "stripe secret key", "OPENAI_API_KEY", "AccountKey storage connection", "_authToken npm",
    "Authorization Bearer", "Basic auth legacy headers", "API_KEY Config", "postgres url",
    "SESSION_JWT", "MAPS_KEY", "<password>", "provider aws", "close the ledger",
    AWS_ID, GITHUB, DB_PASSWORD, PEM_LINES[3],  # the secrets themselves, pasted as queries
]  # fmt: skip


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _requests() -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    for q in QUERIES:
        for mode in ("hybrid", "dense", "lexical"):
            yield "POST", "/v1/search", {"query": q, "k": 20, "mode": mode}
        yield "POST", "/v1/context", {"query": q, "k": 20, "token_budget": 8000}
        yield "POST", "/v1/continue/context", {"query": q, "options": {"repo": REPO, "k": 20}}
    yield "POST", "/v1/continue/context", {"fullInput": "@coderag what is the db password?"}
    yield "GET", f"/v1/repos/{REPO}/status", None
    yield "GET", "/v1/repos", None
    yield "GET", "/metrics", None


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_no_planted_secret_in_any_response_or_stored_payload(served: Served) -> None:
    # What was indexed: every planted file, every kind counted, markers stored.
    report = served.report
    assert report["files_indexed"] == len(corpus())
    kinds = {p.kind for p in PLANTED}
    assert kinds <= set(report["secrets_redacted"])
    assert leaks(served.stored) == []
    for kind in kinds:
        assert marker(kind) in served.stored, kind

    checked, with_marker, leaked = 0, 0, []
    headers = {"Authorization": f"Bearer {served.token}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=60, trust_env=False) as c:
        for method, url, body in _requests():
            resp = c.request(method, url, json=body)
            if url != "/v1/repos":  # the registry needs the distributed side
                assert resp.status_code == 200, (url, resp.text)
            text = resp.text
            if resp.headers.get("content-type", "").startswith("application/json"):
                text += "\n".join(_strings(resp.json()))  # decoded, escapes undone
            checked += 1
            with_marker += "[REDACTED:" in text
            leaked += [f"{method} {url} {body}: {leak}" for leak in leaks(text)]
    print(
        json.dumps(
            {
                "secrets_planted": len({p.value for p in PLANTED}),
                "kinds": len(kinds),
                "responses_checked": checked,
                "responses_with_markers": with_marker,
                "secrets_leaked": len(leaked),
            }
        )
    )
    assert leaked == []
    assert with_marker > len(QUERIES)  # results were served, with the markers in them
