# ruff: noqa: E501  (data: snippets are kept on one line each, as they appear in files)
"""The labelled redaction corpus: planted secrets that must disappear, and look-alikes that
must come back unchanged.

Each :class:`Case` is one small file as it appears in real repositories (its ``path`` gives
the language, and the extension detect-secrets sees). A *planted* case holds one or more
secret values, each of which must be gone from the redacted text (any 12-character piece of
it left counts as a leak). A *look-alike* case holds no secret: code and configuration that
refer to secrets (variables, attributes, templates, ``$VAR``, ``%(name)s``, environment
variable names), placeholders, hashes in lock files, UUIDs, base64 test data, CLI flags
whose value is a reference, unquoted config values that are settings, prose. Its text must
come back byte for byte and with no finding.

What counts as a look-alike (decided here, documented in docs/RELIABILITY.md):

- obvious placeholders (``<token>``, ``changeme``, ``xxx``, ``your-api-key``, ``...``,
  ``REPLACE_ME``, AWS's documented ``...EXAMPLE`` keys) are not secrets, as the issue says;
- a value that names a secret (``"GITLAB_TOKEN"``, ``"X-Api-Key"``, ``"db-credentials"``)
  is not one;
- a template whose only literal parts are a scheme or punctuation (``f"Bearer {token}"``,
  ``"$USER:$PASSWORD"``) is not one; a template with a literal credential in it
  (``f"postgres://app:{literal}@{host}"``) is planted.
- a UUID under an *id* name is a look-alike; a UUID under a key name (Heroku API keys are
  UUIDs) is planted.

Secret values are drawn at import time from a seeded generator (right shapes, fake values):
no literal key is committed, so push protection and secret scanners have nothing to flag in
this file, and every run sees the same corpus.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from dataclasses import dataclass

__all__ = ["Case", "Planted", "cases"]


@dataclass(frozen=True, slots=True)
class Planted:
    """A secret value that must not survive redaction, and the kind of marker expected."""

    kind: str
    value: str


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled file: planted (``planted`` non-empty) or a look-alike of ``category``."""

    id: str
    path: str
    text: str
    category: str
    planted: tuple[Planted, ...] = ()
    split: str = "dev"
    """``dev``: the cases the scanner was tuned on; ``holdout`` and then ``fresh``: each
    written after the previous round of fixes, before the scanner ever ran on it
    (docs/RELIABILITY.md gives each one's first-run figures and the current ones)."""

    @property
    def is_planted(self) -> bool:
        return bool(self.planted)


_rng = random.Random(0x14_5EC12E7)
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"
_WORDS = (
    "Falcon", "Orchid", "Copper", "Harbor", "Maple", "Quartz", "Velvet", "Cinder", "Juniper",
    "Marble", "Thistle", "Saffron", "Granite", "Lantern", "Meadow", "Pebble",
)  # fmt: skip


def _rand(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _mixed(n: int) -> str:
    """Random alphanumerics that surely hold upper, lower and a digit (in random places)."""
    chars = [_rng.choice(string.ascii_uppercase), _rng.choice(string.ascii_lowercase)]
    chars += [_rng.choice(string.digits)] + [_rng.choice(ALNUM) for _ in range(n - 3)]
    _rng.shuffle(chars)
    return "".join(chars)


def _pw() -> str:
    """A password as people pick them: two words, digits, a symbol (``Copper!Harbor47``).

    The symbols are those a shell command line takes unquoted (``&``, ``*``, ``;`` would
    end or glob the command, so nobody commits them bare in a script)."""
    a, b = _rng.sample(_WORDS, 2)
    return f"{a}{_rng.choice('!@#%+=.-_')}{b}{_rng.randint(10, 9999)}"


def _hex(n: int) -> str:
    return _rand(HEX, n)


def _b64(n: int) -> str:
    return _rand(B64, n)


def _uuid() -> str:
    return str(uuid.UUID(int=_rng.getrandbits(128), version=4))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _jwt() -> str:
    claims = {
        "sub": _rand(ALNUM, 12),
        "role": "admin",
        "iat": _rng.randint(1_600_000_000, 1_800_000_000),
    }
    return ".".join(
        (
            _b64url(b'{"alg":"HS256","typ":"JWT"}'),
            _b64url(json.dumps(claims).encode()),
            _b64url(_rng.randbytes(32)),
        )
    )


def _aws_id() -> str:
    return "AK" + "IA" + _rand(string.ascii_uppercase + "234567", 16)


def _aws_secret() -> str:
    return _b64(40)


def _pem_lines(n: int = 10) -> list[str]:
    return [_b64(64) for _ in range(n)] + [_b64(28) + "=="]


def _pem(kind: str, lines: list[str]) -> str:
    return "\n".join(
        [f"-----BEGIN {kind}PRIVATE KEY-----", *lines, f"-----END {kind}PRIVATE KEY-----"]
    )


def _sha256() -> str:
    return hashlib.sha256(_rng.randbytes(16)).hexdigest()


def _sha512_b64() -> str:
    return base64.b64encode(hashlib.sha512(_rng.randbytes(16)).digest()).decode()


_CASES: list[Case] = []


_SPLIT = "dev"


def P(id: str, path: str, text: str, *planted: tuple[str, str]) -> None:
    """Add a planted case: ``planted`` are (kind, value) pairs, each value in ``text``."""
    for _, value in planted:
        assert value in text, (id, value)
    pl = tuple(Planted(k, v) for k, v in planted)
    _CASES.append(Case(id, path, text, "planted", pl, _SPLIT))


def L(id: str, category: str, path: str, text: str) -> None:
    """Add a look-alike case of ``category``: ``text`` must come back unchanged."""
    _CASES.append(Case(id, path, text, category, (), _SPLIT))


# =============================================================================================
# Planted secrets: every kind the scanner knows, in every file type, written as they leak.
# =============================================================================================

# --- Python -----------------------------------------------------------------------------------
v = _rand(ALNUM + "!@%^&*(-_=+)", 50)
P(
    "py-django-secret-key",
    "app/settings.py",
    f'SECRET_KEY = "{v}"\nDEBUG = False\nALLOWED_HOSTS = ["ledger.internal"]\n',
    ("secret", v),
)
v = _pw()
P(
    "py-django-db-password",
    "app/settings.py",
    'DATABASES = {\n    "default": {\n        "ENGINE": "django.db.backends.postgresql",\n'
    f'        "NAME": "ledger",\n        "USER": "ledger",\n        "PASSWORD": "{v}",\n'
    "    }\n}\n",
    ("password", v),
)
a, s = _aws_id(), _aws_secret()
P(
    "py-boto3-keys",
    "jobs/upload.py",
    'import boto3\n\ns3 = boto3.client(\n    "s3",\n'
    f'    aws_access_key_id="{a}",\n    aws_secret_access_key="{s}",\n)\n',
    ("aws-access-key", a),
    ("aws-secret-key", s),
)
v = "sk" + "-proj-" + _mixed(48)
P("py-openai-key", "bot/llm.py", f'import openai\n\nopenai.api_key = "{v}"\n', ("openai-key", v))
v = _mixed(40)
P(
    "py-bearer-literal",
    "client/api.py",
    f'HEADERS = {{"Authorization": "Bearer {v}", "Accept": "application/json"}}\n',
    ("bearer-token", v),
)
v = "gh" + "p_" + _mixed(36)
P("py-github-token", "scripts/release.py", f'GITHUB_TOKEN = "{v}"\n', ("github-token", v))
v = "xo" + "xb-" + _rand(string.digits, 12) + "-" + _rand(string.digits, 13) + "-" + _mixed(24)
P(
    "py-slack-client",
    "bot/slack.py",
    f'from slack_sdk import WebClient\n\nclient = WebClient(token="{v}")\n',
    ("slack-token", v),
)
v = "sk" + "_live_" + _mixed(24)
P(
    "py-stripe",
    "billing/stripe_client.py",
    f'import stripe\n\nstripe.api_key = "{v}"\n',
    ("stripe-key", v),
)
v = "hf" + "_" + _mixed(34)
P(
    "py-hf-token",
    "train/hub.py",
    f'HF_TOKEN = "{v}"\nlogin(token=HF_TOKEN)\n',
    ("huggingface-token", v),
)
v = _pw()
P(
    "py-sqlalchemy-url",
    "db/engine.py",
    f'engine = create_engine("postgresql+psycopg2://ledger:{v}@db.internal:5432/ledger")\n',
    ("url-password", v),
)
v = _pw()
P(
    "py-pydantic-default",
    "app/config.py",
    f'class Settings(BaseSettings):\n    db_user: str = "ledger"\n    db_password: str = "{v}"\n',
    ("password", v),
)
v = _pw()
P(
    "py-psycopg-kwarg",
    "db/connect.py",
    f'conn = psycopg2.connect(host="db", user="app", password="{v}", dbname="app")\n',
    ("password", v),
)
v = _jwt()
P("py-jwt-literal", "tests/e2e/session.py", f'SESSION = "{v}"\n', ("jwt", v))
v = f"T{_rand(ALNUM, 8)}/B{_rand(ALNUM, 10)}/{_mixed(24)}"
P(
    "py-slack-webhook",
    "alerts/notify.py",
    f'WEBHOOK_URL = "https://hooks.slack.com/services/{v}"\n',
    ("slack-webhook", v),
)
lines = _pem_lines()
P(
    "py-pem-triple-quoted",
    "deploy/keys.py",
    'DEPLOY_KEY = """' + _pem("RSA ", lines) + '"""\n',
    *(("private-key", x) for x in lines[:-1]),
)
v = _hex(64)
P(
    "py-flask-secret",
    "web/app.py",
    f'app = Flask(__name__)\napp.secret_key = "{v}"\n',
    ("secret", v),
)
v = _uuid()
P("py-uuid-api-key", "integrations/heroku.py", f'HEROKU_API_KEY = "{v}"\n', ("api-key", v))
v = _mixed(32)
P(
    "py-getenv-default",
    "app/config.py",
    f'API_TOKEN = os.environ.get("API_TOKEN", "{v}")\n',
    ("token", v),
)
v = _pw()
P(
    "py-getenv-default-password",
    "app/db.py",
    f'password = os.getenv("DB_PASSWORD", "{v}")\n',
    ("password", v),
)
v = _pw()
P(
    "py-requests-auth-tuple",
    "client/legacy.py",
    f'resp = requests.get(url, auth=("svc-deploy", "{v}"), timeout=10)\n',
    ("password", v),
)
v = _pw()
P(
    "py-fstring-literal-password",
    "db/url.py",
    f'DSN = f"postgresql://ledger:{v}@{{host}}:5432/ledger"\n',
    ("url-password", v),
)
v = _pw()
P(
    "py-dict-literal",
    "tests/conftest.py",
    f'ADMIN = {{"username": "admin", "password": "{v}"}}\n',
    ("password", v),
)
v = _mixed(24)
P("py-secret-word-password", "app/config.py", f'SMTP_PASSWORD = "{v}"\n', ("password", v))
v = "Summer" + str(_rng.randint(2019, 2029)) + "!"
P(
    "py-weak-human-password",
    "scripts/seed.py",
    f'create_user("ops", password="{v}")\n',
    ("password", v),
)

# --- JavaScript / TypeScript ----------------------------------------------------------------
v = "sk" + "_live_" + _mixed(24)
P(
    "js-stripe-require",
    "server/pay.js",
    f"const stripe = require('stripe')('{v}');\n",
    ("stripe-key", v),
)
v = "AI" + "za" + _rand(ALNUM + "_-", 35)
P(
    "js-firebase-config",
    "web/src/firebase.js",
    "const firebaseConfig = {\n"
    f'  apiKey: "{v}",\n  authDomain: "ledger-prod.firebaseapp.com",\n'
    '  projectId: "ledger-prod",\n};\n',
    ("google-api-key", v),
)
v = _pw()
P("js-password-const", "server/db.js", f"const password = '{v}';\n", ("password", v))
v = "gl" + "pat-" + _rand(ALNUM + "_-", 20)
P("ts-gitlab-token", "src/gitlab.ts", f'export const GITLAB_TOKEN = "{v}";\n', ("gitlab-token", v))
v = _mixed(40)
P(
    "js-axios-bearer",
    "web/src/http.js",
    f"axios.defaults.headers.common['Authorization'] = 'Bearer {v}';\n",
    ("bearer-token", v),
)
v = _pw()
P(
    "js-mongo-url",
    "server/mongo.js",
    f'mongoose.connect("mongodb+srv://admin:{v}@cluster0.ab12c.mongodb.net/ledger");\n',
    ("url-password", v),
)
v = "np" + "m_" + _mixed(36)
P(
    "npmrc-auth-token",
    ".npmrc",
    f"//registry.npmjs.org/:_authToken={v}\nalways-auth=true\n",
    ("npm-token", v),
)
v = _mixed(32)
P(
    "ts-client-secret-field",
    "src/oauth.ts",
    f'export class OAuthClient {{\n  private readonly clientSecret = "{v}";\n}}\n',
    ("secret", v),
)
v = _mixed(32)
P("js-jwt-secret", "server/auth.js", f'const jwtSecret = "{v}";\n', ("secret", v))
v = _jwt()
P("ts-jwt-fixture", "src/session.ts", f"const token: string = '{v}';\n", ("jwt", v))
v = _mixed(32)
P(
    "ts-env-fallback",
    "src/config.ts",
    f'export const API_KEY = process.env.API_KEY || "{v}";\n',
    ("api-key", v),
)

# --- Go ------------------------------------------------------------------------------------
v = _mixed(32)
P(
    "go-api-key-const",
    "internal/client/client.go",
    f'package client\n\nconst apiKey = "{v}"\n',
    ("api-key", v),
)
v = _pw()
P(
    "go-mysql-dsn",
    "cmd/server/main.go",
    f'db, err := sql.Open("mysql", "root:{v}@tcp(127.0.0.1:3306)/ledger?parseTime=true")\n',
    ("password", v),
)
v = _pw()
P(
    "go-struct-literal",
    "internal/db/config.go",
    f'var cfg = Config{{\n\tUser:     "ledger",\n\tPassword: "{v}",\n}}\n',
    ("password", v),
)
v = _mixed(40)
P(
    "go-header-bearer",
    "internal/api/call.go",
    f'req.Header.Set("Authorization", "Bearer {v}")\n',
    ("bearer-token", v),
)
v = "gh" + "p_" + _mixed(36)
P("go-github-short-decl", "tools/release/main.go", f'token := "{v}"\n', ("github-token", v))

# --- Java / Kotlin / C# / Scala --------------------------------------------------------------
v = _pw()
P(
    "java-static-final",
    "src/main/java/ledger/Db.java",
    f'public final class Db {{\n    private static final String DB_PASSWORD = "{v}";\n}}\n',
    ("password", v),
)
v = _pw()
P(
    "java-kafka-jaas",
    "src/main/java/ledger/Kafka.java",
    'props.put("sasl.jaas.config", "org.apache.kafka.common.security.plain.PlainLoginModule '
    f'required username=\\"svc-ledger\\" password=\\"{v}\\";");\n',
    ("password", v),
)
v = _pw()
P(
    "cs-connection-string",
    "src/Ledger/Db.cs",
    f'var conn = "Server=db;Database=ledger;User Id=sa;Password={v};";\n',
    ("password", v),
)
v = _pw()
P(
    "cs-appsettings",
    "src/Ledger/appsettings.json",
    '{\n  "ConnectionStrings": {\n'
    f'    "Default": "Server=db;Database=ledger;User Id=ledger;Password={v};"\n  }}\n}}\n',
    ("password", v),
)
v = _mixed(32)
P("kotlin-val", "app/src/main/kotlin/Api.kt", f'val apiKey = "{v}"\n', ("api-key", v))
v = _b64(86) + "=="
P(
    "cs-azure-storage",
    "src/Ledger/Storage.cs",
    'var cs = "DefaultEndpointsProtocol=https;AccountName=ledgerstore;'
    f'AccountKey={v};EndpointSuffix=core.windows.net";\n',
    ("azure-storage-key", v),
)
v = _b64(43) + "="
P(
    "cs-azure-sas",
    "src/Ledger/Blob.cs",
    'var url = "https://ledgerstore.blob.core.windows.net/in?sv=2022-11-02&ss=b&srt=o'
    f'&sp=rl&se=2030-01-01&sig={v.replace("+", "%2B").replace("/", "%2F")}";\n',
    ("azure-sas", v.replace("+", "%2B").replace("/", "%2F")),
)

# --- shell ---------------------------------------------------------------------------------
v = _aws_secret()
P("sh-export-aws", "scripts/env.sh", f"export AWS_SECRET_ACCESS_KEY={v}\n", ("aws-secret-key", v))
v = _pw()
P(
    "sh-mysql-p-attached",
    "scripts/restore.sh",
    f"mysql -u root -p{v} ledger < dump.sql\n",
    ("password", v),
)
v = _pw()
P(
    "sh-docker-login-password",
    "scripts/push.sh",
    f"docker login -u deploy --password {v} registry.ledger.internal\n",
    ("password", v),
)
v = _pw()
P(
    "sh-curl-user",
    "scripts/health.sh",
    f"curl -fsS -u admin:{v} https://grafana.ledger.internal/api/health\n",
    ("password", v),
)
v = _pw()
P(
    "sh-psql-url",
    "scripts/migrate.sh",
    f"psql \"postgresql://ledger:{v}@db.internal/ledger\" -c 'select 1'\n",
    ("url-password", v),
)
v = "gl" + "pat-" + _rand(ALNUM + "_-", 20)
P(
    "sh-curl-private-token",
    "scripts/gitlab.sh",
    f'curl --header "PRIVATE-TOKEN: {v}" "https://gitlab.example.com/api/v4/projects"\n',
    ("gitlab-token", v),
)
v = _mixed(40)
P(
    "sh-curl-bearer",
    "scripts/api.sh",
    f'curl -H "Authorization: Bearer {v}" https://api.ledger.internal/v1/close\n',
    ("bearer-token", v),
)
v = _pw()
P(
    "sh-sshpass",
    "scripts/deploy.sh",
    f"sshpass -p '{v}' ssh deploy@app01 'sudo systemctl restart app'\n",
    ("password", v),
)
v = _pw()
P(
    "sh-mysqldump-long-flags",
    "scripts/backup.sh",
    f"mysqldump --user=root --password={v} --single-transaction ledger > ledger.sql\n",
    ("password", v),
)
v = "hvs." + _rand(ALNUM, 24)
P(
    "sh-vault-token",
    "scripts/vault.sh",
    f"export VAULT_TOKEN={v}\nvault kv get secret/ledger\n",
    ("token", v),
)
v = _pw()
P(
    "sh-az-login",
    "scripts/azure.sh",
    "az login --service-principal --username 7f1c2d3e-app --password "
    f"{v} --tenant contoso.onmicrosoft.com\n",
    ("password", v),
)
v = _pw()
P(
    "sh-inline-pgpassword",
    "scripts/dump.sh",
    f"PGPASSWORD={v} pg_dump -h db -U ledger ledger\n",
    ("password", v),
)
v = _pw()
P(
    "sh-docker-run-env",
    "scripts/dev-db.sh",
    f"docker run -d -e POSTGRES_PASSWORD={v} -p 5432:5432 postgres:16\n",
    ("password", v),
)
v = _pw()
P(
    "sh-helm-set",
    "scripts/install.sh",
    f"helm upgrade --install ledger ./chart --set db.password={v} --namespace ledger\n",
    ("password", v),
)
v = "gl" + "pat-" + _rand(ALNUM + "_-", 20)
P(
    "sh-git-clone-token",
    "scripts/clone.sh",
    f"git clone https://oauth2:{v}@gitlab.example.com/ledger/core.git\n",
    ("gitlab-token", v),
)
v = "pypi-AgEIcHlwaS5vcmc" + _rand(ALNUM + "_-", 60)
P("sh-twine", "scripts/publish.sh", f"twine upload -u __token__ -p {v} dist/*\n", ("pypi-token", v))
v = _mixed(32)
P(
    "sh-token-flag",
    "scripts/runner.sh",
    f"gitlab-runner register --url https://gitlab.example.com --token {v} --executor docker\n",
    ("token", v),
)
v = _mixed(32)
P(
    "sh-api-key-flag",
    "scripts/upload.sh",
    f"datadog-ci sourcemaps upload --api-key={v} ./dist\n",
    ("api-key", v),
)

# --- Dockerfile ----------------------------------------------------------------------------
v = _pw()
P(
    "docker-env-equals",
    "Dockerfile",
    f"FROM python:3.12-slim\nENV DB_PASSWORD={v}\n",
    ("password", v),
)
v = _mixed(32)
P("docker-env-space", "Dockerfile", f"FROM node:20\nENV API_TOKEN {v}\n", ("token", v))
v = _pw()
P(
    "docker-run-mysql",
    "docker/db.Dockerfile",
    f'FROM mysql:8\nRUN mysql -uroot -p{v} -e "CREATE DATABASE ledger"\n',
    ("password", v),
)
v = "np" + "m_" + _mixed(36)
P(
    "docker-npmrc-echo",
    "web/Dockerfile",
    f'RUN echo "//registry.npmjs.org/:_authToken={v}" > ~/.npmrc && npm ci\n',
    ("npm-token", v),
)
v = _pw()
P(
    "docker-pip-index-url",
    "Dockerfile",
    "RUN pip install --extra-index-url "
    f"https://__token__:{v}@pypi.ledger.internal/simple ledger-core\n",
    ("url-password", v),
)
v = "gh" + "p_" + _mixed(36)
P(
    "docker-arg-default",
    "Dockerfile",
    f"ARG GITHUB_TOKEN={v}\nRUN go mod download\n",
    ("github-token", v),
)
v = _pw()
P(
    "docker-run-password-flag",
    "Dockerfile",
    f"RUN ./configure-app --admin-user ops --admin-password {v}\n",
    ("password", v),
)

# --- GitLab CI / GitHub Actions / compose YAML --------------------------------------------------
v = _pw()
P(
    "ci-variables",
    ".gitlab-ci.yml",
    f"variables:\n  DB_PASSWORD: {v}\n  DB_USER: ledger\n",
    ("password", v),
)
v = _pw()
P(
    "ci-docker-login",
    ".gitlab-ci.yml",
    "build:\n  script:\n"
    f"    - docker login -u gitlab-ci-token --password {v} $CI_REGISTRY\n"
    "    - docker build -t $CI_REGISTRY_IMAGE .\n",
    ("password", v),
)
v = "gl" + "pat-" + _rand(ALNUM + "_-", 20)
P(
    "ci-curl-private-token",
    ".gitlab-ci.yml",
    "release:\n  script:\n"
    f'    - curl --header "PRIVATE-TOKEN: {v}" "$CI_API_V4_URL/projects/1/releases"\n',
    ("gitlab-token", v),
)
v = _pw()
P(
    "ci-mysql-long-flag",
    ".gitlab-ci.yml",
    f"test:\n  script:\n    - mysql --user=root --password={v} < db/init.sql\n",
    ("password", v),
)
v = _hex(40)
P(
    "ci-export-sonar",
    ".gitlab-ci.yml",
    f"sonar:\n  script:\n    - export SONAR_TOKEN={v}\n    - sonar-scanner\n",
    ("token", v),
)
v = _pw()
P(
    "ci-helm-set",
    ".gitlab-ci.yml",
    f"deploy:\n  script:\n    - helm upgrade --install app ./chart --set db.password={v}\n",
    ("password", v),
)
v = "np" + "m_" + _mixed(36)
P(
    "ci-npm-config",
    ".gitlab-ci.yml",
    f"publish:\n  script:\n    - npm config set //registry.npmjs.org/:_authToken {v}\n",
    ("npm-token", v),
)
v = _pw()
P(
    "gha-env",
    ".github/workflows/ci.yml",
    f"jobs:\n  test:\n    env:\n      POSTGRES_PASSWORD: {v}\n",
    ("password", v),
)
v = _pw()
P(
    "compose-environment",
    "docker-compose.yml",
    f"services:\n  db:\n    image: postgres:16\n    environment:\n      - POSTGRES_PASSWORD={v}\n",
    ("password", v),
)
v = _pw()
P(
    "compose-redis-url-empty-user",
    "docker-compose.yml",
    f"services:\n  api:\n    environment:\n      REDIS_URL: redis://:{v}@redis:6379/0\n",
    ("url-password", v),
)

# --- .env ----------------------------------------------------------------------------------
v = _pw()
P(
    "env-database-url",
    ".env",
    f"DATABASE_URL=postgres://ledger:{v}@db:5432/ledger\n",
    ("url-password", v),
)
v = "sk" + "_live_" + _mixed(24)
P("env-stripe", ".env", f"STRIPE_SECRET_KEY={v}\n", ("stripe-key", v))
v = _mixed(48)
P("env-jwt-secret", ".env", f"JWT_SECRET={v}\n", ("secret", v))
v = "SG." + _rand(ALNUM + "_-", 22) + "." + _rand(ALNUM + "_-", 43)
P("env-sendgrid", ".env", f"SENDGRID_API_KEY={v}\n", ("api-key", v))
v = _pw()
P(
    "env-redis-password",
    ".env.production",
    f"REDIS_PASSWORD={v}\nREDIS_HOST=cache\n",
    ("password", v),
)
v = _pw()
P("env-quoted", ".env", f'MAIL_PASSWORD="{v}"\n', ("password", v))
v = _rand(ALNUM + "!@%^&*(-_=+)", 50)
P("env-single-quoted-secret", ".env", f"SECRET_KEY='{v}'\n", ("secret", v))
a, s = _aws_id(), _aws_secret()
P(
    "env-aws-pair",
    ".env",
    f"AWS_ACCESS_KEY_ID={a}\nAWS_SECRET_ACCESS_KEY={s}\n",
    ("aws-access-key", a),
    ("aws-secret-key", s),
)
v = "sk" + "-" + _mixed(48)
P("env-openai", ".env", f"OPENAI_API_KEY={v}\n", ("openai-key", v))

# --- INI / cfg / conf / properties / TOML ----------------------------------------------------------
v = _pw()
P("ini-database", "config/app.ini", f"[database]\nhost = db\npassword = {v}\n", ("password", v))
v = "pypi-AgEIcHlwaS5vcmc" + _rand(ALNUM + "_-", 60)
P("pypirc", ".pypirc", f"[pypi]\nusername = __token__\npassword = {v}\n", ("pypi-token", v))
v = _pw()
P(
    "alembic-url",
    "alembic.ini",
    f"[alembic]\nsqlalchemy.url = postgresql://ledger:{v}@db/ledger\n",
    ("url-password", v),
)
v = _pw()
P("my-cnf", "deploy/my.cnf", f"[client]\nuser=root\npassword={v}\n", ("password", v))
v = _hex(40)
P("cfg-auth-token", "setup.cfg", f"[tool:uploader]\nauth_token = {v}\n", ("token", v))
v = _pw()
P(
    "pip-conf-url",
    "pip.conf",
    f"[global]\nindex-url = https://ci:{v}@pypi.ledger.internal/simple\n",
    ("url-password", v),
)
v = _pw()
P(
    "properties-spring",
    "src/main/resources/application.properties",
    f"spring.datasource.username=ledger\nspring.datasource.password={v}\n",
    ("password", v),
)
v = _b64(64)
P(
    "properties-jwt",
    "src/main/resources/application.properties",
    f"app.jwt.secret={v}\n",
    ("secret", v),
)
v = _pw()
P("properties-colon", "config/mail.properties", f"mail.smtp.password: {v}\n", ("password", v))
v = _pw()
P("toml-quoted", "config.toml", f'[database]\nuser = "ledger"\npassword = "{v}"\n', ("password", v))
v = _mixed(32)
P(
    "toml-poetry-http-basic",
    "poetry.toml",
    f'[http-basic.internal]\nusername = "ci"\npassword = "{v}"\n',
    ("password", v),
)

# --- JSON ----------------------------------------------------------------------------------
v = _pw()
P(
    "json-config",
    "config/config.json",
    f'{{\n  "user": "ledger",\n  "password": "{v}"\n}}\n',
    ("password", v),
)
gcp = _pem_lines(8)
P(
    "json-gcp-service-account",
    "keys/service-account.json",
    json.dumps(
        {
            "type": "service_account",
            "project_id": "ledger-prod",
            "private_key": "\n".join(
                ["-----BEGIN PRIVATE KEY-----", *gcp, "-----END PRIVATE KEY-----", ""]
            ),
            "client_email": "ledger@ledger-prod.iam.gserviceaccount.com",
        },
        indent=2,
    )
    + "\n",
    *(("private-key", x) for x in gcp[:-1]),
)
v = _hex(32)
P(
    "json-api-key-hex",
    "config/weather.json",
    f'{{"api_key": "{v}", "region": "eu"}}\n',
    ("api-key", v),
)
v = base64.b64encode(f"ci-bot:{_mixed(20)}".encode()).decode()
P(
    "json-docker-config-auth",
    ".docker/config.json",
    f'{{\n  "auths": {{\n    "registry.ledger.internal": {{\n      "auth": "{v}"\n    }}\n  }}\n}}\n',
    ("token", v),
)
v = "xo" + "xp-" + _rand(string.digits, 12) + "-" + _rand(string.digits, 12) + "-" + _mixed(32)
P("json-slack-user-token", "config/slack.json", f'{{"token": "{v}"}}\n', ("slack-token", v))
v = "gh" + "p_" + _mixed(36)
P(
    "json-composer-auth",
    "auth.json",
    f'{{"github-oauth": {{"github.com": "{v}"}}}}\n',
    ("github-token", v),
)

# --- Terraform -------------------------------------------------------------------------------
v = _pw()
P(
    "tf-db-password",
    "infra/db.tf",
    'resource "aws_db_instance" "ledger" {\n  engine   = "postgres"\n  username = "ledger"\n'
    f'  password = "{v}"\n}}\n',
    ("password", v),
)
a, s = _aws_id(), _aws_secret()
P(
    "tf-provider-keys",
    "infra/main.tf",
    f'provider "aws" {{\n  region     = "eu-west-1"\n  access_key = "{a}"\n  secret_key = "{s}"\n}}\n',
    ("aws-access-key", a),
    ("aws-secret-key", s),
)
v = _pw()
P(
    "tf-variable-default",
    "infra/variables.tf",
    f'variable "db_password" {{\n  type      = string\n  default   = "{v}"\n}}\n',
    ("password", v),
)
v = _pw()
P("tfvars", "infra/prod.tfvars", f'db_password = "{v}"\nregion = "eu-west-1"\n', ("password", v))
v = "gl" + "pat-" + _rand(ALNUM + "_-", 20)
P(
    "tf-gitlab-provider",
    "infra/gitlab.tf",
    f'provider "gitlab" {{\n  token = "{v}"\n}}\n',
    ("gitlab-token", v),
)

# --- Markdown ------------------------------------------------------------------------------
v = "sk" + "-proj-" + _mixed(48)
P(
    "md-export-key",
    "README.md",
    f"## Setup\n\n```bash\nexport OPENAI_API_KEY={v}\npython -m bot\n```\n",
    ("openai-key", v),
)
v = "gh" + "p_" + _mixed(36)
P(
    "md-curl-token",
    "docs/api.md",
    f'```\ncurl -H "Authorization: token {v}" https://api.github.com/user\n```\n',
    ("github-token", v),
)
v = _pw()
P(
    "md-inline-password",
    "docs/dev.md",
    f"The staging database is `db.staging` (user `ledger`, password: `{v}`).\n",
    ("password", v),
)

# --- XML -----------------------------------------------------------------------------------
v = _pw()
P(
    "xml-maven-settings",
    "maven/settings.xml",
    "<settings>\n  <servers>\n    <server>\n      <id>internal</id>\n"
    f"      <username>deployer</username>\n      <password>{v}</password>\n"
    "    </server>\n  </servers>\n</settings>\n",
    ("password", v),
)
v = _mixed(32)
P(
    "xml-appsettings-add",
    "src/Ledger/web.config",
    f'<appSettings>\n  <add key="ApiKey" value="{v}" />\n</appSettings>\n',
    ("api-key", v),
)
v = _pw()
P(
    "xml-spring-property",
    "src/main/resources/beans.xml",
    '<bean id="ds" class="org.apache.commons.dbcp2.BasicDataSource">\n'
    f'  <property name="password" value="{v}"/>\n</bean>\n',
    ("password", v),
)
v = _pw()
P(
    "xml-connection-strings",
    "src/Ledger/web.config",
    '<connectionStrings>\n  <add name="Ledger" connectionString="Server=db;Database=ledger;'
    f'User Id=ledger;Password={v};" />\n</connectionStrings>\n',
    ("password", v),
)

# --- Ruby / PHP --------------------------------------------------------------------------
v = _hex(128)
P(
    "rb-secret-key-base",
    "config/initializers/secret.rb",
    f'Rails.application.config.secret_key_base = "{v}"\n',
    ("secret", v),
)
v = _pw()
P(
    "php-array",
    "config/database.php",
    f"<?php\nreturn [\n    'username' => 'ledger',\n    'password' => '{v}',\n];\n",
    ("password", v),
)
v = _pw()
P(
    "php-wp-define",
    "wp-config.php",
    f"<?php\ndefine( 'DB_USER', 'wp' );\ndefine( 'DB_PASSWORD', '{v}' );\n",
    ("password", v),
)
v = _rand(ALNUM + "!@#%^&*()-_[]{}<>~+=,.;:/?|", 64).replace("'", "")
P("php-wp-auth-key", "wp-config.php", f"<?php\ndefine('AUTH_KEY', '{v}');\n", ("token", v))
v = "sk" + "_live_" + _mixed(24)
P("rb-stripe", "config/initializers/stripe.rb", f"Stripe.api_key = '{v}'\n", ("stripe-key", v))

# --- Kubernetes / Helm -----------------------------------------------------------------------
v = _pw()
P(
    "k8s-secret-stringdata",
    "deploy/secret.yaml",
    f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: ledger-db\nstringData:\n  password: {v}\n",
    ("password", v),
)
v = base64.b64encode(_pw().encode()).decode()
P(
    "k8s-secret-data-b64",
    "deploy/secret.yaml",
    f"apiVersion: v1\nkind: Secret\ndata:\n  password: {v}\n",
    ("password", v),
)
v = _mixed(40)
P("helm-values-block", "chart/values.yaml", f"gitlab:\n  token: |\n    {v}\n", ("token", v))
lines = _pem_lines()
P(
    "k8s-tls-key-block",
    "deploy/tls.yaml",
    "stringData:\n  tls.key: |\n"
    + "\n".join("    " + x for x in _pem("EC ", lines).split("\n"))
    + "\n",
    *(("private-key", x) for x in lines[:-1]),
)

# --- private keys as files ---------------------------------------------------------------------
for flavour in ("RSA ", "OPENSSH ", "EC ", "", "DSA "):
    lines = _pem_lines()
    P(
        f"pem-{flavour.strip().lower() or 'pkcs8'}",
        f"deploy/id_{flavour.strip().lower() or 'key'}",
        _pem(flavour, lines) + "\n",
        *(("private-key", x) for x in lines[:-1]),
    )
lines = _pem_lines()
P(
    "pem-pgp",
    "keys/release.asc",
    _pem("PGP ", lines).replace("KEY-----", "KEY BLOCK-----") + "\n",
    *(("private-key", x) for x in lines[:-1]),
)
lines = _pem_lines()
P(
    "pem-js-concat",
    "server/sign.js",
    'const key = "-----BEGIN PRIVATE KEY-----\\n" +\n'
    + "".join(f'  "{x}\\n" +\n' for x in lines)
    + '  "-----END PRIVATE KEY-----\\n";\n',
    *(("private-key", x) for x in lines[:-1]),
)

# --- basic auth, misc --------------------------------------------------------------------------
secret_part = _mixed(16)
v = base64.b64encode(f"svc-deploy:{secret_part}".encode()).decode()
P(
    "basic-header",
    "scripts/legacy.sh",
    f'curl -H "Authorization: Basic {v}" https://legacy.internal\n',
    ("basic-auth", v),
)
v = _mixed(32)
P(
    "yaml-nested-api-key",
    "config/services.yaml",
    f"services:\n  weather:\n    api_key: {v}\n    timeout: 5\n",
    ("api-key", v),
)
v = _mixed(32)
P(
    "yaml-client-secret",
    "config/oauth.yml",
    f"oauth:\n  client_id: ledger-web\n  client_secret: {v}\n",
    ("secret", v),
)
v = _pw()
P("yaml-quoted-password", "config/db.yaml", f'db:\n  password: "{v}"\n', ("password", v))
v = _hex(32)
P("yaml-webhook-secret", "config/hooks.yaml", f"gitlab:\n  webhook_secret: {v}\n", ("secret", v))
v = _pw()
P(
    "gradle-properties",
    "gradle.properties",
    f"nexusUsername=ci\nnexusPassword={v}\n",
    ("password", v),
)
v = _mixed(32)
P("rust-const", "src/config.rs", f'pub const API_TOKEN: &str = "{v}";\n', ("token", v))
v = _pw()
P(
    "makefile-var",
    "Makefile",
    f"DB_PASSWORD := {v}\n\nmigrate:\n\tpsql -c 'select 1'\n",
    ("password", v),
)
v = _pw()
P(
    "jenkinsfile-password",
    "Jenkinsfile",
    f"sh 'docker login -u jenkins --password {v} registry.internal'\n",
    ("password", v),
)
v = _pw()
P(
    "ps1-plain-password",
    "scripts/deploy.ps1",
    f'$password = "{v}"\n$cred = New-Object PSCredential("ops", $password)\n',
    ("password", v),
)


# =============================================================================================
# Look-alikes: code that refers to secrets, and values that are not secrets.
# =============================================================================================

# --- the issue's own lines -----------------------------------------------------------------------
L(
    "issue-fstring-bearer",
    "template",
    "retriever/hook.py",
    'headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}\n',
)
L(
    "issue-shell-bearer-var",
    "shell-var",
    "scripts/gitlab.sh",
    'curl -fsS -H "Authorization: Bearer $GITLAB_TOKEN" "$GITLAB_URL/api/v4/projects"\n',
)
L(
    "issue-env-var-name",
    "env-var-name",
    "coderag/settings.py",
    'SECRET_KEY_SETTING = "CODERAG_SECRET_KEY"\n',
)

# --- variable and attribute references ----------------------------------------------------------
refs = [
    ("py-self-attr", "app/db.py", "password = self.password\n"),
    ("py-settings-attr", "app/gitlab.py", "token = settings.GITLAB_TOKEN\n"),
    ("py-kwarg-var", "app/db.py", "conn = connect(host=host, password=password)\n"),
    ("py-kwarg-attr", "app/db.py", "engine = make_engine(user=cfg.user, password=cfg.password)\n"),
    ("py-init-assign", "app/client.py", "        self.secret_key = secret_key\n"),
    ("py-client-token", "app/client.py", "client = gitlab.Gitlab(url, private_token=token)\n"),
    ("py-dict-var", "app/api.py", 'payload = {"username": user, "password": password}\n'),
    ("py-auth-tuple-vars", "app/api.py", "resp = session.get(url, auth=(user, password))\n"),
    ("py-return-dict", "app/auth.py", 'return {"access_token": token, "token_type": "bearer"}\n'),
    ("py-kwargs-item", "app/db.py", 'kwargs["password"] = cfg.db.password\n'),
    ("py-environ-subscript", "app/aws.py", 'secret = os.environ["AWS_SECRET_ACCESS_KEY"]\n'),
    ("py-getenv", "app/config.py", 'token = os.getenv("GITLAB_TOKEN")\n'),
    ("py-getenv-empty-default", "app/config.py", 'secret = os.environ.get("SECRET_KEY", "")\n'),
    ("py-getenv-none-default", "app/config.py", 'api_key = os.environ.get("API_KEY", None)\n'),
    ("py-secretstr", "app/config.py", "    gitlab_token: SecretStr | None = None\n"),
    ("py-annot-only", "app/models.py", "    password: str\n    api_key: str | None\n"),
    ("py-field", "app/config.py", '    api_key: str = Field(default="", repr=False)\n'),
    (
        "py-get-secret-value",
        "app/gitlab.py",
        'headers = {"PRIVATE-TOKEN": settings.gitlab_token.get_secret_value()}\n',
    ),
    ("py-keyring", "app/creds.py", 'password = keyring.get_password("ledger", user)\n'),
    (
        "py-vault-read",
        "app/creds.py",
        'token = client.secrets.kv.read_secret_version(path="ledger")["data"]["data"]["token"]\n',
    ),
    ("py-compare-empty", "app/auth.py", 'if password == "":\n    raise ValueError("empty")\n'),
    (
        "py-compare-var",
        "app/auth.py",
        "if not hmac.compare_digest(token, expected_token):\n    raise Unauthorized()\n",
    ),
    (
        "py-def-params",
        "app/auth.py",
        "def login(self, user: str, password: str, token: str | None = None) -> Session:\n",
    ),
    ("py-lambda", "app/auth.py", "get_token = lambda: cache.get('token')\n"),
    (
        "py-argparse-dest",
        "app/cli.py",
        'parser.add_argument("--password", dest="password", help="database password")\n',
    ),
    (
        "py-click-option",
        "app/cli.py",
        '@click.option("--token", envvar="GITLAB_TOKEN", help="GitLab token")\n',
    ),
    ("js-process-env", "web/src/gitlab.js", "const token = process.env.GITLAB_TOKEN;\n"),
    ("js-header-var", "web/src/http.js", "headers: { Authorization: token },\n"),
    ("js-this-prop", "web/src/db.js", "return { user: this.user, password: this.password };\n"),
    ("js-config-prop", "web/src/firebase.js", "  apiKey: config.apiKey,\n"),
    ("js-destructure", "server/routes.js", "const { username, password } = req.body;\n"),
    (
        "ts-interface",
        "src/types.ts",
        "export interface Credentials {\n  username: string;\n  password: string;\n  token?: string;\n}\n",
    ),
    ("ts-optional-chain", "src/auth.ts", "const token = session?.user?.accessToken ?? null;\n"),
    ("go-cfg-field", "internal/db/db.go", "\tPassword: cfg.Password,\n"),
    ("go-getenv", "internal/config/config.go", 'token := os.Getenv("GITLAB_TOKEN")\n'),
    (
        "go-struct-tag",
        "internal/config/config.go",
        'type Config struct {\n\tPassword string `json:"password" yaml:"password"`\n'
        '\tToken    string `json:"token,omitempty"`\n}\n',
    ),
    (
        "java-getenv",
        "src/main/java/ledger/Db.java",
        'String password = System.getenv("DB_PASSWORD");\n',
    ),
    ("java-this-assign", "src/main/java/ledger/Client.java", "        this.apiKey = apiKey;\n"),
    (
        "java-value-annotation",
        "src/main/java/ledger/Jwt.java",
        '@Value("${app.jwt.secret}")\nprivate String jwtSecret;\n',
    ),
    ("rust-env-var", "src/main.rs", 'let token = std::env::var("GITLAB_TOKEN")?;\n'),
    ("rust-struct-field", "src/config.rs", "pub struct Db {\n    pub password: String,\n}\n"),
    ("tf-var-ref", "infra/db.tf", "  password = var.db_password\n"),
    ("tf-random-password", "infra/db.tf", "  password = random_password.db.result\n"),
    (
        "tf-vault-data",
        "infra/gitlab.tf",
        '  token = data.vault_generic_secret.gitlab.data["token"]\n',
    ),
    ("tf-local", "infra/main.tf", "  secret_key = local.aws_secret_key\n"),
    (
        "tf-variable-no-default",
        "infra/variables.tf",
        'variable "db_password" {\n  type      = string\n  sensitive = true\n}\n',
    ),
    ("cfn-ref", "infra/stack.yaml", "      MasterUserPassword: !Ref DbPassword\n"),
    (
        "cfn-resolve",
        "infra/stack.yaml",
        "      MasterUserPassword: '{{resolve:secretsmanager:ledger-db:SecretString:password}}'\n",
    ),
    (
        "ansible-jinja",
        "ansible/roles/db/tasks/main.yml",
        '    login_password: "{{ mysql_root_password }}"\n',
    ),
    (
        "ansible-lookup",
        "ansible/group_vars/all.yml",
        "db_password: \"{{ lookup('env', 'DB_PASSWORD') }}\"\n",
    ),
    ("ansible-vault-var", "ansible/group_vars/all.yml", 'db_password: "{{ vault_db_password }}"\n'),
    (
        "gha-secrets",
        ".github/workflows/ci.yml",
        "      - run: ./publish.sh\n        env:\n          NPM_TOKEN: ${{ secrets.NPM_TOKEN }}\n",
    ),
    (
        "helm-values-ref",
        "chart/templates/secret.yaml",
        "stringData:\n  password: {{ .Values.db.password | quote }}\n",
    ),
    (
        "helm-required",
        "chart/templates/secret.yaml",
        '  token: {{ required "gitlab.token is required" .Values.gitlab.token | b64enc }}\n',
    ),
    (
        "k8s-secret-key-ref",
        "deploy/api.yaml",
        "        - name: DB_PASSWORD\n          valueFrom:\n            secretKeyRef:\n"
        "              name: ledger-db\n              key: password\n",
    ),
    (
        "k8s-env-from",
        "deploy/api.yaml",
        "          envFrom:\n            - secretRef:\n                name: ledger-secrets\n",
    ),
    (
        "litellm-env-ref",
        "litellm/config.yaml",
        "model_list:\n  - litellm_params:\n      api_key: os.environ/VLLM_API_KEY\n",
    ),
    (
        "litellm-module-ref",
        "litellm/config.yaml",
        "general_settings:\n  custom_auth: retriever.litellm_auth.user_api_key_auth\n",
    ),
    (
        "spring-placeholder",
        "src/main/resources/application.yml",
        "spring:\n  datasource:\n    password: ${DB_PASSWORD}\n",
    ),
    (
        "spring-placeholder-props",
        "src/main/resources/application.properties",
        "spring.security.oauth2.client.registration.gitlab.client-secret=${GITLAB_CLIENT_SECRET}\n",
    ),
    ("ps1-env", "scripts/deploy.ps1", "$token = $env:GITLAB_TOKEN\n"),
    ("bat-env", "scripts/deploy.bat", "set TOKEN=%GITLAB_TOKEN%\n"),
    ("makefile-ref", "Makefile", "DB_PASSWORD ?= $(shell cat .db-password)\n"),
    ("makefile-var-use", "Makefile", '\tpsql "postgresql://app:$(DB_PASSWORD)@db/app"\n'),
    (
        "docker-secret-mount",
        "Dockerfile",
        "RUN --mount=type=secret,id=npm_token NPM_TOKEN=$(cat /run/secrets/npm_token) npm ci\n",
    ),
    ("docker-env-ref", "Dockerfile", "ARG NPM_TOKEN\nENV NPM_TOKEN=${NPM_TOKEN}\n"),
    (
        "compose-env-ref",
        "docker-compose.yml",
        "    environment:\n      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in .env}\n",
    ),
    (
        "compose-redis-url-ref",
        "docker-compose.yml",
        "      CELERY_BROKER_URL: redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0\n",
    ),
    (
        "compose-secrets-file",
        "docker-compose.yml",
        "secrets:\n  db_password:\n    file: ./secrets/db_password.txt\n",
    ),
    (
        "compose-volume-path",
        "docker-compose.yml",
        "    volumes:\n      - ../retriever/litellm_auth.py:/app/config/retriever/litellm_auth.py:ro\n",
    ),
    ("php-env", "config/database.php", "    'password' => env('DB_PASSWORD'),\n"),
    ("php-getenv", "wp-config.php", "define( 'DB_PASSWORD', getenv('WORDPRESS_DB_PASSWORD') );\n"),
    ("rb-env", "config/database.yml", "  password: <%= ENV['DB_PASSWORD'] %>\n"),
    (
        "rb-credentials",
        "config/initializers/stripe.rb",
        "Stripe.api_key = Rails.application.credentials.stripe[:secret_key]\n",
    ),
    (
        "xml-property-ref",
        "src/main/resources/beans.xml",
        '  <property name="password" value="${db.password}"/>\n',
    ),
    ("xml-maven-env", "maven/settings.xml", "      <password>${env.MAVEN_PASSWORD}</password>\n"),
]
for id_, path, text in refs:
    L(id_, "reference", path, text)

# --- f-strings, .format, template literals and other templates -----------------------------------
templates = [
    ("py-fstring-token", "app/api.py", 'headers["Authorization"] = f"token {token}"\n'),
    ("py-format-bearer", "app/api.py", 'headers = {"Authorization": "Bearer {}".format(token)}\n'),
    ("py-format-named", "app/api.py", 'auth = "Bearer {token}".format(token=self._token)\n'),
    ("py-format-userpass", "app/api.py", 'basic = "{}:{}".format(user, password)\n'),
    ("py-fstring-userpass", "app/api.py", 'auth = f"{user}:{password}"\n'),
    (
        "py-fstring-url",
        "app/db.py",
        'url = f"postgresql://{user}:{password}@{host}:{port}/{name}"\n',
    ),
    (
        "py-fstring-url-attrs",
        "app/db.py",
        'dsn = f"mysql://{self.user}:{self.password}@{self.host}/ledger"\n',
    ),
    (
        "py-fstring-dict-item",
        "app/api.py",
        'headers = {"Authorization": f"Bearer {creds[\'access_token\']}"}\n',
    ),
    ("py-concat-bearer", "app/api.py", 'headers = {"Authorization": "Bearer " + token}\n'),
    ("py-bearer-only", "app/api.py", 'AUTH_SCHEME = "Bearer"\nprefix = "Bearer "\n'),
    ("py-percent-bearer", "app/api.py", 'header = "Bearer %s" % token\n'),
    (
        "py-template-string",
        "app/api.py",
        'tmpl = string.Template("Authorization: Bearer $token")\n',
    ),
    (
        "py-fstring-private-token",
        "app/gitlab.py",
        'session.headers.update({"PRIVATE-TOKEN": f"{self.token}"})\n',
    ),
    (
        "py-fstring-basic",
        "app/api.py",
        'headers = {"Authorization": f"Basic {b64encode(creds).decode()}"}\n',
    ),
    (
        "js-template-bearer",
        "web/src/http.js",
        "const headers = { Authorization: `Bearer ${token}` };\n",
    ),
    (
        "js-template-token",
        "web/src/github.js",
        "headers: { Authorization: `token ${GITHUB_TOKEN}` },\n",
    ),
    (
        "js-template-url",
        "server/db.js",
        "const url = `mongodb://${user}:${password}@${host}:27017/ledger`;\n",
    ),
    ("js-concat", "web/src/http.js", "config.headers.Authorization = 'Bearer ' + token;\n"),
    (
        "ts-template-auth",
        "src/api.ts",
        "const auth: string = `Basic ${btoa(`${username}:${password}`)}`;\n",
    ),
    (
        "go-sprintf",
        "internal/api/call.go",
        'req.Header.Set("Authorization", fmt.Sprintf("Bearer %s", token))\n',
    ),
    ("go-concat", "internal/api/call.go", 'req.Header.Set("Authorization", "Bearer "+token)\n'),
    (
        "go-dsn-sprintf",
        "internal/db/db.go",
        'dsn := fmt.Sprintf("%s:%s@tcp(%s)/%s", cfg.User, cfg.Password, cfg.Host, cfg.Name)\n',
    ),
    (
        "java-concat",
        "src/main/java/ledger/Client.java",
        'conn.setRequestProperty("Authorization", "Bearer " + accessToken);\n',
    ),
    (
        "java-format",
        "src/main/java/ledger/Client.java",
        'String header = String.format("Basic %s", encoded);\n',
    ),
    (
        "cs-interpolated",
        "src/Ledger/Client.cs",
        'client.DefaultRequestHeaders.Add("Authorization", $"Bearer {token}");\n',
    ),
    ("rb-interpolation", "lib/client.rb", 'headers = { "Authorization" => "Bearer #{token}" }\n'),
    ("rb-erb-password", "config/database.yml.erb", "  password: <%= db_password %>\n"),
    ("jinja-ini", "templates/app.ini.j2", "[database]\npassword = {{ db_password }}\n"),
    ("jinja-yaml", "templates/config.yml.j2", 'gitlab:\n  token: "{{ vault_gitlab_token }}"\n'),
    ("mustache", "templates/config.json.mustache", '{"api_key": "{{apiKey}}"}\n'),
    (
        "sh-url-vars",
        "scripts/migrate.sh",
        'psql "postgresql://${DB_USER}:${DB_PASSWORD}@${DB_HOST}/ledger"\n',
    ),
    (
        "kotlin-template",
        "app/src/main/kotlin/Api.kt",
        'val header = "Bearer $token"\nval basic = "Basic ${encode(user, password)}"\n',
    ),
    (
        "swift-interpolation",
        "ios/Api.swift",
        'request.setValue("Bearer \\(token)", forHTTPHeaderField: "Authorization")\n',
    ),
    (
        "gha-header-secret",
        ".github/workflows/release.yml",
        '        run: curl -H "Authorization: Bearer ${{ secrets.GITHUB_TOKEN }}" "$URL"\n',
    ),
    (
        "continue-config",
        "continue/config.yaml",
        "    requestOptions:\n      headers:\n        Authorization: Bearer ${{ secrets.CODERAG_TOKEN }}\n",
    ),
]
for id_, path, text in templates:
    L(id_, "template", path, text)

# --- $VAR and ${VAR} --------------------------------------------------------------------------------
shell_vars = [
    (
        "sh-private-token-var",
        "scripts/gitlab.sh",
        'curl -H "PRIVATE-TOKEN: $GITLAB_TOKEN" "$CI_API_V4_URL/projects"\n',
    ),
    (
        "sh-bearer-braces",
        "scripts/api.sh",
        'curl -H "Authorization: Bearer ${GITLAB_TOKEN}" https://gitlab.example.com/api/v4/user\n',
    ),
    ("sh-pgpassword-var", "scripts/dump.sh", 'PGPASSWORD="$DB_PASSWORD" pg_dump -h db ledger\n'),
    ("sh-export-var", "scripts/env.sh", 'export TOKEN="${CI_JOB_TOKEN}"\n'),
    (
        "sh-password-flag-var",
        "scripts/push.sh",
        'docker login -u "$REGISTRY_USER" --password "$REGISTRY_PASSWORD" "$REGISTRY"\n',
    ),
    ("sh-default-empty", "scripts/env.sh", "token=${TOKEN:-}\n"),
    ("sh-required", "scripts/env.sh", ': "${DB_PASSWORD:?DB_PASSWORD must be set}"\n'),
    ("sh-curl-user-vars", "scripts/health.sh", 'curl -u "$ADMIN_USER:$ADMIN_PASSWORD" "$URL"\n'),
    ("sh-read-password", "scripts/setup.sh", 'read -rsp "Password: " password\necho\n'),
    (
        "sh-test-empty",
        "scripts/check.sh",
        'if [ -z "$API_KEY" ]; then\n  echo "API_KEY missing"\nfi\n',
    ),
    ("sh-assign-from-file", "scripts/env.sh", 'export VAULT_TOKEN="$(cat ~/.vault-token)"\n'),
    ("sh-assign-subshell", "scripts/env.sh", "TOKEN=$(gcloud auth print-access-token)\n"),
    (
        "sh-heredoc-var",
        "scripts/npmrc.sh",
        "cat > ~/.npmrc <<EOF\n//registry.npmjs.org/:_authToken=${NPM_TOKEN}\nEOF\n",
    ),
    ("sh-printf-var", "scripts/login.sh", 'printf \'CODERAG_TOKEN=%s\\n\' "$token" >>"$tmp"\n'),
    (
        "ci-docker-login-vars",
        ".gitlab-ci.yml",
        "  script:\n    - docker login -u $CI_REGISTRY_USER -p $CI_REGISTRY_PASSWORD $CI_REGISTRY\n",
    ),
    (
        "ci-password-stdin",
        ".gitlab-ci.yml",
        '    - echo "$CI_JOB_TOKEN" | docker login -u gitlab-ci-token --password-stdin $CI_REGISTRY\n',
    ),
    ("ci-variable-ref", ".gitlab-ci.yml", "variables:\n  DB_PASSWORD: $TEST_DB_PASSWORD\n"),
    (
        "ci-curl-job-token",
        ".gitlab-ci.yml",
        '    - \'curl --header "JOB-TOKEN: $CI_JOB_TOKEN" --upload-file dist/app.tgz "$URL"\'\n',
    ),
    (
        "ci-git-url-token",
        ".gitlab-ci.yml",
        "    - git clone https://gitlab-ci-token:${CI_JOB_TOKEN}@gitlab.example.com/ledger/core.git\n",
    ),
    (
        "yaml-env-braces",
        "config/app.yaml",
        "db:\n  password: ${DB_PASSWORD}\n  token: ${API_TOKEN}\n",
    ),
    ("env-file-ref", ".env", "DATABASE_URL=postgres://ledger:${DB_PASSWORD}@db:5432/ledger\n"),
    ("env-file-ref-plain", ".env", "API_TOKEN=$GITLAB_TOKEN\n"),
    ("docker-env-var", "Dockerfile", "ENV PGPASSWORD=$DB_PASSWORD\n"),
    (
        "jenkins-credentials",
        "Jenkinsfile",
        "withCredentials([string(credentialsId: 'gitlab-token', variable: 'TOKEN')]) {\n"
        "  sh 'curl -H \"PRIVATE-TOKEN: $TOKEN\" $URL'\n}\n",
    ),
    (
        "md-curl-var",
        "docs/api.md",
        '```bash\ncurl -H "Authorization: Bearer $CODERAG_TOKEN" http://localhost:8080/v1/search\n```\n',
    ),
]
for id_, path, text in shell_vars:
    L(id_, "shell-var", path, text)

# --- %(name)s and %s ------------------------------------------------------------------------------
percent = [
    ("py-percent-named-dict", "app/settings.py", '    "password": "%(password)s",\n'),
    (
        "py-percent-url",
        "app/settings.py",
        'DSN = "postgresql://%(user)s:%(password)s@%(host)s/ledger"\n',
    ),
    ("py-percent-s", "app/api.py", 'query = "token=%s" % token\n'),
    ("py-log-args", "app/api.py", 'log.debug("token: %s", mask(token))\n'),
    ("ini-interpolation", "config/app.ini", "[db]\npassword = %(db_password)s\n"),
    (
        "sh-printf-header",
        "docker/backup.sh",
        '[ -z "$api_key" ] || printf \'api-key: %s\\n\' "$api_key" >"$headers_file"\n',
    ),
    ("c-printf", "src/client.c", 'snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", token);\n'),
    (
        "go-printf-password",
        "internal/db/db.go",
        'log.Printf("connecting with password=%q", redact(password))\n',
    ),
    ("php-sprintf", "src/Client.php", "$header = sprintf('Authorization: Bearer %s', $token);\n"),
    (
        "java-slf4j",
        "src/main/java/ledger/Auth.java",
        'log.info("token refreshed: {}", token.id());\n',
    ),
]
for id_, path, text in percent:
    L(id_, "percent-format", path, text)

# --- environment variable and key names -----------------------------------------------------------
names = [
    ("py-token-env", "app/config.py", 'TOKEN_ENV = "GITLAB_TOKEN"\n'),
    ("py-api-key-var", "app/config.py", 'API_KEY_VAR = "OPENAI_API_KEY"\n'),
    ("py-password-key", "app/forms.py", 'PASSWORD_KEY = "password"\n'),
    ("py-auth-header-name", "app/api.py", 'AUTH_HEADER = "Authorization"\n'),
    ("py-token-header-name", "webhooks/gitlab.py", 'TOKEN_HEADER = "X-Gitlab-Token"\n'),
    ("py-csrf-header", "app/settings.py", 'CSRF_HEADER_NAME = "HTTP_X_CSRFTOKEN"\n'),
    (
        "py-secret-names-list",
        "app/logging.py",
        '_SECRET_KEYS = ("password", "token", "api_key", "secret", "authorization")\n',
    ),
    (
        "py-env-names-dict",
        "app/config.py",
        'ENV = {"token": "CODERAG_GITLAB_TOKEN", "password": "CODERAG_DB_PASSWORD"}\n',
    ),
    (
        "py-kind-map",
        "chunkers/kinds.py",
        '_KINDS = {\n    "accountkey": "azure-storage-key",\n    "sharedaccesskey": "azure-storage-key",\n}\n',
    ),
    ("py-field-name-value", "app/schemas.py", 'password = "password"\napi_key = "api_key"\n'),
    ("py-secret-name", "deploy/k8s.py", 'secret = "ledger-db-credentials"\n'),
    ("py-token-url-name", "app/oauth.py", 'TOKEN_URL = "https://gitlab.example.com/oauth/token"\n'),
    ("py-secret-path", "app/config.py", 'SECRET_FILE = "/run/secrets/db_password"\n'),
    ("py-token-scope", "app/oauth.py", 'token_scope = "read_api read_repository"\n'),
    ("py-setting-name-lower", "app/settings.py", 'secret_key_setting = "secret_key"\n'),
    ("py-vault-path", "app/vault.py", 'secret_path = "kv/data/ledger/db"\n'),
    ("js-storage-key", "web/src/auth.js", 'const TOKEN_STORAGE_KEY = "auth_token";\n'),
    ("js-header-name", "web/src/api.js", 'const API_KEY_HEADER = "X-API-Key";\n'),
    (
        "js-input-name",
        "web/src/Login.jsx",
        '<input type="password" name="password" autoComplete="current-password" />\n',
    ),
    (
        "ts-enum",
        "src/auth.ts",
        'export enum Grant {\n  Password = "password",\n  RefreshToken = "refresh_token",\n}\n',
    ),
    ("go-env-name", "internal/config/config.go", 'const tokenEnv = "GITLAB_TOKEN"\n'),
    (
        "java-env-name",
        "src/main/java/ledger/Config.java",
        'static final String PASSWORD_ENV = "DB_PASSWORD";\n',
    ),
    (
        "yaml-secret-name",
        "chart/values.yaml",
        "existingSecret: ledger-db\nsecretName: ledger-tls\n",
    ),
    ("yaml-password-env-name", "config/app.yaml", "db:\n  password_env: DB_PASSWORD\n"),
    (
        "yaml-k8s-secret-volume",
        "deploy/api.yaml",
        "      volumes:\n        - name: tls\n          secret:\n            secretName: ledger-tls\n",
    ),
    ("yaml-token-header-name", "config/app.yaml", "auth:\n  token_header: X-Coderag-Token\n"),
    (
        "json-secret-ref",
        "deploy/task.json",
        '{"secrets": [{"name": "DB_PASSWORD", "valueFrom": "arn:aws:ssm:eu-west-1:123456789012:parameter/db"}]}\n',
    ),
    (
        "json-schema-props",
        "schema/user.json",
        '{"properties": {"password": {"type": "string", "minLength": 12}, "token": {"type": "string"}}}\n',
    ),
    (
        "openapi-security",
        "openapi.yaml",
        "components:\n  securitySchemes:\n    token:\n      type: http\n      scheme: bearer\n",
    ),
    ("ini-token-name", "config/app.ini", "[auth]\ntoken_env = GITLAB_TOKEN\n"),
    (
        "properties-names",
        "src/main/resources/application.properties",
        "app.auth.header=Authorization\napp.auth.token-name=X-Auth-Token\n",
    ),
    ("env-example-names", ".env.example", "# CODERAG_GITLAB_TOKEN is read from the vault\n"),
]
for id_, path, text in names:
    L(id_, "env-var-name", path, text)

# --- placeholders ----------------------------------------------------------------------------------
placeholders = [
    (
        "angle-token",
        "docs/api.md",
        'curl -H "Authorization: Bearer <token>" http://localhost:8080\n',
    ),
    ("angle-api-key", "app/example.py", 'client = Client(api_key="<your-api-key>")\n'),
    ("changeme-py", "app/config.py", 'password = "changeme"\n'),
    (
        "changeme-env",
        ".env.example",
        "CODERAG_GITLAB_TOKEN=changeme\nCODERAG_QDRANT_API_KEY=changeme\nREDIS_PASSWORD=changeme\n",
    ),
    ("changeme-suffix", ".env.example", "CODERAG_GATEWAY_TOKEN=changeme-gw\n"),
    ("xxx-lower", "config/app.yaml", "gitlab:\n  token: xxx\n"),
    ("xxx-long", "README.md", "export GITLAB_TOKEN=xxxxxxxxxxxxxxxxxxxx\n"),
    ("xxx-glpat", "tests/test_tokens.py", 'token = "glpat-xxxxxxxxxxxxxxxxxxxx"\n'),
    ("xxx-ghp", "docs/setup.md", "GITHUB_TOKEN=ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n"),
    ("your-secret-here", "config/app.yaml", "jwt:\n  secret: your-secret-here\n"),
    ("your-api-key-upper", "app/example.py", 'OPENAI_API_KEY = "YOUR_API_KEY"\n'),
    ("your-api-key-here", ".env.example", "API_KEY=your_api_key_here\n"),
    (
        "ellipsis",
        "docker/README.md",
        "QDRANT_URL=http://127.0.0.1:6333 QDRANT_API_KEY=... bash docker/backup.sh --out /backups\n",
    ),
    (
        "sk-ellipsis",
        "docs/gateway.md",
        'curl http://gateway:4000/v1/chat/completions -H "Authorization: Bearer sk-..."\n',
    ),
    ("stars", "config/app.ini", "[db]\npassword = ********\n"),
    ("angle-password", "config/app.yaml", "db:\n  password: <password>\n"),
    ("replace-me", "config/app.yaml", "gitlab:\n  token: REPLACE_ME\n"),
    ("todo", "config/app.yaml", "stripe:\n  secret_key: TODO\n"),
    ("dummy", "tests/test_client.py", 'client = Client(token="dummy")\n'),
    ("example-value", "tests/test_client.py", 'api_key = "example"\n'),
    ("fake-value", "tests/test_client.py", 'client = Client(api_key="fake-api-key")\n'),
    ("aws-example-id", "docs/aws.md", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"),
    (
        "aws-example-secret",
        "docs/aws.md",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    ),
    ("secret-word", "config/app.yaml", "jwt:\n  secret: secret\n"),
    ("password-word", "tests/test_login.py", 'login(user="admin", password="password")\n'),
    ("redacted", "docs/log.md", "token: [REDACTED]\n"),
    ("angle-redacted", "docs/log.md", "password: <redacted>\n"),
    ("mustache-placeholder", "config/app.json.tmpl", '{"password": "{{PASSWORD}}"}\n'),
    (
        "url-placeholder-password",
        "docs/health.md",
        "redis        REDIS_URL            redis://[:password@]host:port   (6379)\n",
    ),
    ("url-placeholder-upper", "docs/db.md", "DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/DB\n"),
    ("url-placeholder-angle", "docs/db.md", "mysql://<user>:<password>@localhost/ledger\n"),
    ("basic-placeholder", "docs/api.md", "Authorization: Basic <base64 of user:password>\n"),
    ("xml-placeholder", "maven/settings.xml", "      <password>${MAVEN_PASSWORD}</password>\n"),
    (
        "k8s-literal-placeholder",
        "deploy/README.md",
        "kubectl create secret generic coderag --from-literal=CODERAG_GITLAB_TOKEN=... \\\n"
        "  --from-literal=REDIS_PASSWORD=...\n",
    ),
    ("dots-password", "docs/dev.md", "password: ...\n"),
    (
        "md-table",
        "docs/config.md",
        "| `CODERAG_GITLAB_TOKEN` | `glpat-...` | token with read_api |\n",
    ),
    (
        "bearer-angle-access-token",
        "docs/identity.md",
        'curl -H "Authorization: Bearer <access_token>" https://coderag.example.com/v1/repos\n',
    ),
    ("token-empty-string", "config/app.json", '{"password": null, "token": ""}\n'),
]
for id_, path, text in placeholders:
    L(id_, "placeholder", path, text)

# --- hashes in lock files ----------------------------------------------------------------------------
lock = [
    (
        "poetry-lock",
        "poetry.lock",
        '[[package]]\nname = "httpx"\nversion = "0.27.0"\nfiles = [\n'
        f'    {{file = "httpx-0.27.0-py3-none-any.whl", hash = "sha256:{_sha256()}"}},\n'
        f'    {{file = "httpx-0.27.0.tar.gz", hash = "sha256:{_sha256()}"}},\n]\n',
    ),
    (
        "package-lock",
        "package-lock.json",
        '{\n  "packages": {\n    "node_modules/axios": {\n      "version": "1.7.2",\n'
        '      "resolved": "https://registry.npmjs.org/axios/-/axios-1.7.2.tgz",\n'
        f'      "integrity": "sha512-{_sha512_b64()}"\n    }}\n  }}\n}}\n',
    ),
    (
        "yarn-lock",
        "yarn.lock",
        'axios@^1.7.2:\n  version "1.7.2"\n'
        '  resolved "https://registry.yarnpkg.com/axios/-/axios-1.7.2.tgz"\n'
        f"  integrity sha512-{_sha512_b64()}\n",
    ),
    (
        "pnpm-lock",
        "pnpm-lock.yaml",
        f"packages:\n  /axios@1.7.2:\n    resolution: {{integrity: sha512-{_sha512_b64()}}}\n",
    ),
    (
        "requirements-hash",
        "requirements.txt",
        f"httpx==0.27.0 \\\n    --hash=sha256:{_sha256()} \\\n    --hash=sha256:{_sha256()}\n",
    ),
    (
        "pipfile-lock",
        "Pipfile.lock",
        f'{{"default": {{"httpx": {{"hashes": ["sha256:{_sha256()}"], "version": "==0.27.0"}}}}}}\n',
    ),
    (
        "go-sum",
        "go.sum",
        f"github.com/stretchr/testify v1.9.0 h1:{base64.b64encode(_rng.randbytes(32)).decode()}\n"
        f"github.com/stretchr/testify v1.9.0/go.mod h1:{base64.b64encode(_rng.randbytes(32)).decode()}\n",
    ),
    (
        "cargo-lock",
        "Cargo.lock",
        f'[[package]]\nname = "serde"\nversion = "1.0.203"\nchecksum = "{_sha256()}"\n',
    ),
    (
        "composer-lock",
        "composer.lock",
        f'{{"packages": [{{"name": "guzzlehttp/guzzle", "dist": {{"shasum": "{_hex(40)}"}}}}]}}\n',
    ),
    (
        "gradle-verification",
        "gradle/verification-metadata.xml",
        f'<artifact name="okhttp-4.12.0.jar">\n   <sha256 value="{_sha256()}" origin="Generated"/>\n</artifact>\n',
    ),
    (
        "terraform-lock",
        ".terraform.lock.hcl",
        'provider "registry.terraform.io/hashicorp/aws" {\n  version = "5.50.0"\n  hashes = [\n'
        f'    "h1:{base64.b64encode(_rng.randbytes(32)).decode()}",\n'
        f'    "zh:{_sha256()}",\n  ]\n}}\n',
    ),
    (
        "uv-lock",
        "uv.lock",
        f'[[package]]\nname = "anyio"\nsdist = {{ url = "https://files.pythonhosted.org/a.tar.gz", '
        f'hash = "sha256:{_sha256()}", size = 173422 }}\n',
    ),
    ("git-sha", "scripts/fetch.sh", f"COMMIT={_hex(40)}\nSHA256={_sha256()}\n"),
    ("docker-digest", "Dockerfile", f"FROM python:3.12-slim@sha256:{_sha256()}\n"),
    (
        "sri-script",
        "web/index.html",
        f'<script src="https://cdn.example.com/app.js" integrity="sha384-{base64.b64encode(_rng.randbytes(48)).decode()}" '
        'crossorigin="anonymous"></script>\n',
    ),
    (
        "checksum-yaml",
        "chart/Chart.lock",
        f"dependencies:\n- name: redis\n  version: 19.5.0\ndigest: sha256:{_sha256()}\n",
    ),
]
for id_, path, text in lock:
    L(id_, "lock-hash", path, text)

# --- UUIDs ----------------------------------------------------------------------------------------
uuids = [
    (
        "json-request-id",
        "tests/fixtures/event.json",
        f'{{"request_id": "{_uuid()}", "status": "ok"}}\n',
    ),
    ("py-client-id", "app/oauth.py", f'CLIENT_ID = "{_uuid()}"\n'),
    (
        "tf-tenant",
        "infra/azure.tf",
        f'provider "azurerm" {{\n  tenant_id       = "{_uuid()}"\n  subscription_id = "{_uuid()}"\n}}\n',
    ),
    ("yaml-project-uuid", "config/app.yaml", f"project:\n  uuid: {_uuid()}\n"),
    ("js-trace-id", "web/src/trace.js", f"const traceId = '{_uuid()}';\n"),
    ("json-id", "tests/fixtures/user.json", f'{{"id": "{_uuid()}", "name": "alice"}}\n'),
    ("token-id", "tests/test_tokens.py", f'token_id = "{_uuid()}"\n'),
    (
        "json-token-id",
        "tests/fixtures/token.json",
        f'{{"tokenId": "{_uuid()}", "expires_at": "2030-01-01T00:00:00Z"}}\n',
    ),
    (
        "jwt-claims-jti",
        "tests/fixtures/claims.json",
        f'{{"jti": "{_uuid()}", "sub": "alice", "aud": "coderag"}}\n',
    ),
    ("md-uuid", "docs/runbook.md", f"The staging project is `{_uuid()}`.\n"),
    ("env-device-uuid", ".env", f"DEVICE_UUID={_uuid()}\n"),
    ("header-request-id", "tests/fixtures/request.http", f"X-Request-Id: {_uuid()}\n"),
    ("secret-uuid-id", "deploy/vault.yaml", f"vault:\n  role_id: {_uuid()}\n"),
    ("idempotency-key", "tests/fixtures/webhook.http", f"Idempotency-Key: {_uuid()}\n"),
    ("session-key-uuid", "tests/test_sessions.py", f'session_key = "{_uuid()}"\n'),
]
for id_, path, text in uuids:
    L(id_, "uuid", path, text)

# --- base64 test data ------------------------------------------------------------------------------
b64 = [
    (
        "png-pixel",
        "tests/fixtures/images.py",
        'PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="\n',
    ),
    (
        "b64decode-hello",
        "tests/test_codec.py",
        'assert base64.b64decode("SGVsbG8sIHdvcmxkIQ==") == b"Hello, world!"\n',
    ),
    (
        "b64-json-payload",
        "tests/test_codec.py",
        f'payload = "{base64.b64encode(json.dumps({"key": "value", "n": 1}).encode()).decode()}"\n',
    ),
    (
        "data-uri",
        "web/src/logo.css",
        f".logo {{ background: url(data:image/png;base64,{base64.b64encode(_rng.randbytes(48)).decode()}); }}\n",
    ),
    ("b64-bytes", "tests/test_codec.py", 'expected = b"dGVzdCBkYXRh"\n'),
    (
        "b64-blob",
        "tests/fixtures/blobs.py",
        f'BLOB = "{base64.b64encode(_rng.randbytes(48)).decode()}"\n',
    ),
    (
        "b64-body-json",
        "tests/fixtures/message.json",
        f'{{"body": "{base64.b64encode(_rng.randbytes(60)).decode()}", "encoding": "base64"}}\n',
    ),
    (
        "b64-nonce",
        "tests/test_crypto.py",
        f'nonce = base64.b64decode("{base64.b64encode(_rng.randbytes(12)).decode()}")\n',
    ),
    (
        "b64-salt",
        "tests/test_crypto.py",
        f'SALT = "{base64.b64encode(_rng.randbytes(16)).decode()}"\n',
    ),
    (
        "hex-digest",
        "tests/test_hashing.py",
        f'assert sha256(b"abc").hexdigest() == "{_sha256()}"\n',
    ),
    (
        "b64-cert-public",
        "tests/fixtures/cert.pem",
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(_b64(64) for _ in range(6))
        + "\n-----END CERTIFICATE-----\n",
    ),
    (
        "b64-public-key",
        "tests/fixtures/pub.pem",
        "-----BEGIN PUBLIC KEY-----\n"
        + "\n".join(_b64(64) for _ in range(4))
        + "\n-----END PUBLIC KEY-----\n",
    ),
    (
        "ssh-public-key",
        "deploy/authorized_keys",
        f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{_b64(43)} deploy@ledger\n",
    ),
    ("yaml-ca-bundle", "config/tls.yaml", f"tls:\n  ca_bundle: {_b64(88)}\n"),
    ("b64-wasm", "web/src/wasm.js", f'const WASM = "AGFzbQEAAAAB{_b64(60)}";\n'),
    ("jwt-header-only", "tests/test_jwt.py", 'HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"\n'),
]
for id_, path, text in b64:
    L(id_, "base64-data", path, text)

# --- CLI flags whose value is not a secret ------------------------------------------------------
flags = [
    (
        "flag-password-stdin",
        "scripts/push.sh",
        'echo "$TOKEN" | docker login --username ci --password-stdin registry.internal\n',
    ),
    (
        "flag-password-var",
        "scripts/db.sh",
        'mysql --user=root --password="$MYSQL_ROOT_PASSWORD" ledger\n',
    ),
    (
        "flag-password-braces",
        "scripts/db.sh",
        "mysqldump --password=${DB_PASSWORD} ledger > out.sql\n",
    ),
    (
        "flag-password-subshell",
        "scripts/db.sh",
        "psql-wrapper --password $(cat /run/secrets/db_password) --host db\n",
    ),
    ("flag-docker-port", "scripts/dev.sh", "docker run -d -p 8080:80 -p 5432:5432 nginx\n"),
    ("flag-ssh-port", "scripts/deploy.sh", "ssh -p 2222 deploy@app01 uptime\n"),
    ("flag-password-file", "scripts/db.sh", "pg-tool --password-file /run/secrets/pw --host db\n"),
    ("flag-token-file", "scripts/ci.sh", "runner --token-file ~/.config/runner/token\n"),
    ("flag-mysql-prompt", "scripts/db.sh", "mysql -u root -p ledger\n"),
    ("flag-mysql-p-var", "scripts/db.sh", 'mysql -uroot -p"$MYSQL_PWD" -e "select 1"\n'),
    (
        "flag-gha-secret",
        ".github/workflows/ci.yml",
        "      - run: tool publish --token ${{ secrets.PUBLISH_TOKEN }}\n",
    ),
    ("flag-usage-text", "scripts/db.sh", 'echo "usage: $0 --password PASSWORD --host HOST" >&2\n'),
    ("flag-usage-api-key", "README.md", "  --api-key API_KEY     the key to upload with\n"),
    ("flag-angle", "README.md", "coderag-cli login --token <token>\n"),
    ("flag-no-password", "scripts/db.sh", "pg_dump --no-password -h db ledger > ledger.sql\n"),
    (
        "flag-secret-name",
        "scripts/k8s.sh",
        "kubectl create secret generic ledger --from-file=password=./pw.txt\n",
    ),
    (
        "flag-tokenizer",
        "scripts/train.sh",
        "python train.py --tokenizer bert-base-uncased --max-tokens 512\n",
    ),
    (
        "flag-argparse",
        "app/cli.py",
        'parser.add_argument("--api-key", default=None, help="API key")\n',
    ),
    (
        "flag-typer",
        "app/cli.py",
        'token: Annotated[str | None, typer.Option("--token", envvar="GITLAB_TOKEN")] = None,\n',
    ),
    (
        "flag-ci-var",
        ".gitlab-ci.yml",
        "    - helm upgrade --install app ./chart --set db.password=$DB_PASSWORD\n",
    ),
    (
        "flag-docker-secret",
        "scripts/build.sh",
        "docker build --secret id=npm,src=$HOME/.npmrc -t app .\n",
    ),
    (
        "flag-curl-user-only",
        "scripts/api.sh",
        "curl -u admin https://grafana.internal/api/health\n",
    ),
    (
        "flag-password-prompt",
        "scripts/db.sh",
        "mongosh --username admin --password --authenticationDatabase admin\n",
    ),
    (
        "flag-dockerfile-arg",
        "Dockerfile",
        'RUN --mount=type=secret,id=pw ./setup --password "$(cat /run/secrets/pw)"\n',
    ),
    ("flag-sshpass-env", "scripts/deploy.sh", "sshpass -e ssh deploy@app01 uptime\n"),
    ("flag-auth-method", "scripts/vault.sh", "vault login -method=oidc role=dev\n"),
]
for id_, path, text in flags:
    L(id_, "cli-flag", path, text)

# --- unquoted config values that are settings ---------------------------------------------------
config = [
    ("yaml-password-min-length", "config/policy.yaml", "password_min_length: 12\n"),
    ("yaml-token-ttl", "config/auth.yaml", "token_ttl: 3600\n"),
    ("yaml-auth-ldap", "config/auth.yaml", "auth: ldap\n"),
    ("yaml-auth-true", "config/proxy.yaml", "auth: true\n"),
    ("yaml-authentication", "config/kafka.yaml", "authentication: kerberos\n"),
    ("yaml-password-null", "config/db.yaml", "db:\n  password: null\n  token: ~\n"),
    (
        "yaml-token-empty",
        "config/app.yaml",
        "gitlab:\n  token:\n  url: https://gitlab.example.com\n",
    ),
    ("yaml-secret-false", "config/app.yaml", "tls:\n  secret: false\n"),
    ("ini-auth-type", "config/app.ini", "[auth]\nauth_type = basic\nmethod = oauth\n"),
    ("ini-token-expiry", "config/app.ini", "[session]\ntoken_expiry = 30d\n"),
    ("yaml-password-policy", "config/policy.yaml", "password_policy: strong\n"),
    (
        "properties-auth-enabled",
        "src/main/resources/application.properties",
        "auth.enabled=true\npassword.encoder=bcrypt\ntoken.header=Authorization\n",
    ),
    ("yaml-auth-none", "config/redis.yaml", "redis:\n  auth: none\n"),
    ("yaml-hash-algo", "config/policy.yaml", "password_hash_algorithm: argon2\n"),
    ("yaml-tokenizer", "config/model.yaml", "tokenizer: bpe\nmax_tokens: 4096\n"),
    ("yaml-use-auth", "config/app.yaml", "use_auth: yes\n"),
    ("ini-auth-mode", "config/app.ini", '[gitlab]\nauth_mode = "token"\n'),
    (
        "aws-credential-source",
        ".aws/config",
        "[profile prod]\nrole_arn = arn:aws:iam::123456789012:role/ops\ncredential_source = Ec2InstanceMetadata\n",
    ),
    (
        "aws-credential-process",
        ".aws/config",
        "[profile dev]\ncredential_process = /usr/local/bin/aws-vault exec dev --json\n",
    ),
    (
        "keycloak-lifespan",
        "keycloak/realm.json",
        '{\n  "accessTokenLifespan": 300,\n  "attributes": {"access.token.lifespan": "28800"}\n}\n',
    ),
    ("yaml-token-type", "config/auth.yaml", "token_type: bearer\n"),
    ("yaml-auth-provider", "config/auth.yaml", "auth:\n  provider: gitlab\n  scopes: read_api\n"),
    ("toml-password-length", "pyproject.toml", "[tool.app]\npassword_length = 24\n"),
    ("yaml-secret-backend", "config/app.yaml", "secrets:\n  backend: vault\n"),
    ("yaml-credentials-map", "config/app.yaml", "credentials:\n  source: env\n"),
    ("env-auth-disabled", ".env", "AUTH=disabled\nTOKEN_REFRESH=true\n"),
    ("yaml-api-key-header", "config/app.yaml", "api_key_header: X-API-Key\n"),
    (
        "yaml-token-endpoint",
        "config/oauth.yaml",
        "oauth:\n  token_endpoint: https://gitlab.example.com/oauth/token\n",
    ),
    ("yaml-password-reset", "config/mail.yaml", "password_reset: /account/reset\n"),
    ("yaml-secret-mount", "config/app.yaml", "secret_dir: /run/secrets\n"),
    (
        "nginx-auth-basic",
        "deploy/nginx.conf",
        'location / {\n    auth_basic "Restricted";\n    auth_basic_user_file /etc/nginx/.htpasswd;\n}\n',
    ),
    ("pg-hba", "deploy/pg_hba.conf", "host all all 10.0.0.0/8 scram-sha-256\n"),
    ("yaml-auth-plugin", "config/mysql.yaml", "mysql:\n  auth_plugin: caching_sha2_password\n"),
]
for id_, path, text in config:
    L(id_, "config-value", path, text)

# --- prose, comments, docs ------------------------------------------------------------------------
prose = [
    (
        "md-token-prose",
        "docker/README.md",
        "token: compose gives it to `coderag-api` as `CODERAG_DELEGATION_TOKENS` and to the hook\n",
    ),
    (
        "yaml-comment-prose",
        "docker/compose.yaml",
        "  # The gateway's token: it reads nothing of its own, only what the user it names may\n",
    ),
    (
        "py-docstring-args",
        "app/client.py",
        '    """Open a session.\n\n    Args:\n        token: The API token used to authenticate.\n'
        '        password: The user\'s password, never logged.\n    """\n',
    ),
    (
        "md-auth-prose",
        "docs/identity.md",
        "Authorization: the gateway checks it and forwards only what the user may read.\n",
    ),
    (
        "md-password-prose",
        "docs/setup.md",
        "Set `password:` to the database password of your own instance.\n",
    ),
    ("rst-param", "docs/api.rst", ":param token: the GitLab token with the read_api scope\n"),
    (
        "md-secret-prose",
        "docs/identity.md",
        "The IDE holds no shared secret: its environment and files are the developer's to read.\n",
    ),
    ("comment-hash", "config/app.yaml", "# token: set through CODERAG_GITLAB_TOKEN, never here\n"),
    (
        "md-prose-basic",
        "docs/api.md",
        "Basic authentication and Bearer tokens are both accepted.\n",
    ),
    (
        "md-prose-bearer-word",
        "docs/api.md",
        "Send the token in the header (`Authorization: Bearer`), never in the URL.\n",
    ),
    (
        "i18n-en",
        "web/src/locales/en.json",
        '{"login.password": "Password", "login.token_expired": "Your session has expired"}\n',
    ),
    (
        "i18n-fr",
        "web/src/locales/fr.json",
        '{"password": "Mot de passe", "password_hint": "Au moins 12 caractères"}\n',
    ),
    (
        "error-message",
        "app/auth.py",
        'raise ValueError("password must be at least 12 characters")\n',
    ),
    ("py-help-text", "app/cli.py", 'TOKEN_HELP = "the token to use for the API"\n'),
    (
        "www-authenticate",
        "app/api.py",
        'response.headers["WWW-Authenticate"] = \'Bearer realm="coderag", error="invalid_token"\'\n',
    ),
    (
        "basic-realm",
        "deploy/nginx.conf",
        "add_header WWW-Authenticate 'Basic realm=\"Restricted\"';\n",
    ),
    (
        "log-line-masked",
        "docs/logs.md",
        '{"event": "login", "password": "***", "token": "[REDACTED]"}\n',
    ),
    ("changelog", "CHANGELOG.md", "- The token: prefix is now optional in `.netrc` entries.\n"),
    (
        "md-table-setting",
        "docs/config.md",
        "| `redact_secrets` | true | secrets: replaced by a marker before chunking |\n",
    ),
    (
        "code-comment-password",
        "app/db.py",
        "# password: read from the vault at start-up, see vault.py\n",
    ),
]
for id_, path, text in prose:
    L(id_, "prose", path, text)

# --- ordinary code with secret-ish words ----------------------------------------------------------
code = [
    (
        "py-tokenizer",
        "ml/tok.py",
        'tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")\n',
    ),
    ("py-max-tokens", "ml/gen.py", "max_tokens = 256\nnum_tokens = len(ids)\n"),
    ("py-author", "setup.py", 'author = "Jane Doe"\n__author__ = "Jane Doe"\n'),
    ("py-token-type", "app/auth.py", 'token_type = "bearer"\npassword_field = "password"\n'),
    (
        "py-pad-token",
        "ml/tok.py",
        'pad_token = "[PAD]"\neos_token = "</s>"\nmask_token = "<mask>"\n',
    ),
    ("py-next-token", "app/paging.py", 'next_token = resp["NextToken"]\n'),
    (
        "py-pem-check",
        "app/keys.py",
        'if text.startswith("-----BEGIN RSA PRIVATE KEY-----"):\n    kind = "rsa"\n',
    ),
    (
        "py-url-no-password",
        "app/urls.py",
        'URL = "https://user@example.com/path"\nU = "http://localhost:8080/x"\n',
    ),
    ("git-ssh-url", "scripts/clone.sh", "git clone git@gitlab.example.com:ledger/core.git\n"),
    ("css-sk-class", "web/src/app.css", ".sk-button-primary-large-variant { color: red; }\n"),
    ("json-monkey", "tests/fixtures/a.json", '{"monkey": "business", "keys": "values"}\n'),
    ("py-secrets-module", "app/tokens.py", "token = secrets.token_urlsafe(32)\n"),
    (
        "py-password-hash",
        "app/users.py",
        "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())\n",
    ),
    ("py-test-assert", "tests/test_auth.py", 'assert resp.json()["token_type"] == "bearer"\n'),
    ("py-auth-class", "app/auth.py", "auth = HTTPBasicAuth(settings.user, settings.password)\n"),
    (
        "py-auth-backend",
        "app/settings.py",
        'AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]\n',
    ),
    (
        "py-password-validators",
        "app/settings.py",
        'AUTH_PASSWORD_VALIDATORS = [\n    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},\n]\n',
    ),
    ("js-token-split", "web/src/jwt.js", 'const [header, payload] = token.split(".");\n'),
    (
        "js-auth-import",
        "web/src/app.js",
        "import { authToken } from './auth';\nimport auth from '@/auth';\n",
    ),
    ("go-token-type", "internal/auth/token.go", 'const TokenTypeBearer = "Bearer"\n'),
    (
        "sql-password-column",
        "db/schema.sql",
        "CREATE TABLE users (\n  id uuid PRIMARY KEY,\n  password_hash text NOT NULL,\n  api_token_digest text\n);\n",
    ),
    (
        "java-password-encoder",
        "src/main/java/ledger/Security.java",
        "PasswordEncoder encoder = new BCryptPasswordEncoder(12);\n",
    ),
    ("py-public-key", "config/keys.yaml", "public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\n"),
    ("py-secret-tuple", "app/aws.py", "key, secret = load_credentials(profile)\n"),
    ("py-token-regex", "app/scan.py", 'TOKEN_RE = re.compile(r"glpat-[A-Za-z0-9_-]{20}")\n'),
    ("py-token-kind", "app/auth.py", 'kind = "token" if token else "password"\n'),
    (
        "py-oauth-grant",
        "app/oauth.py",
        'data = {"grant_type": "password", "username": user, "password": password}\n',
    ),
    (
        "ts-password-type",
        "src/Login.tsx",
        "const [password, setPassword] = useState<string>('');\n",
    ),
    (
        "rb-has-secure-password",
        "app/models/user.rb",
        "class User < ApplicationRecord\n  has_secure_password\nend\n",
    ),
    (
        "go-secret-interface",
        "internal/vault/vault.go",
        "type SecretStore interface {\n\tSecret(ctx context.Context, name string) (string, error)\n}\n",
    ),
]
for id_, path, text in code:
    L(id_, "code", path, text)


# =============================================================================================
# Held out: written after the scanner was tuned on the cases above, and scored as they were
# first run (docs/RELIABILITY.md). Same rules: planted values must go, look-alikes stay.
# =============================================================================================
_SPLIT = "holdout"

# --- planted ----------------------------------------------------------------------------------
v = _pw()
P(
    "ho-netrc",
    ".netrc",
    f"machine api.github.com\n  login ci-bot\n  password {v}\n",
    ("password", v),
)
v = _pw()
P("ho-pgpass", ".pgpass", f"db.internal:5432:ledger:ledger:{v}\n", ("password", v))
v = _pw()
P("ho-redis-conf", "deploy/redis.conf", f"bind 0.0.0.0\nrequirepass {v}\n", ("password", v))
v = _pw()
P(
    "ho-ansible-inventory",
    "ansible/hosts.ini",
    f"[web]\napp01 ansible_host=10.0.0.5 ansible_user=deploy ansible_password={v}\n",
    ("password", v),
)
v = base64.b64encode(_pem("RSA ", _pem_lines(4)).encode()).decode()
P(
    "ho-kubeconfig-key-data",
    ".kube/config",
    f"users:\n- name: ops\n  user:\n    client-certificate-data: {_b64(40)}\n"
    f"    client-key-data: {v}\n",
    ("private-key", v),
)
v = _jwt()
P(
    "ho-kubeconfig-token",
    ".kube/config",
    f"users:\n- name: ci\n  user:\n    token: {v}\n",
    ("jwt", v),
)
v = _pw()
P(
    "ho-prometheus-basic-auth",
    "deploy/prometheus.yml",
    "scrape_configs:\n  - job_name: app\n    basic_auth:\n      username: prom\n"
    f"      password: {v}\n",
    ("password", v),
)
v = _pw()
P(
    "ho-grafana-ini",
    "deploy/grafana.ini",
    f"[security]\nadmin_user = admin\nadmin_password = {v}\n",
    ("password", v),
)
s = _aws_secret()
a = _aws_id()
P(
    "ho-aws-credentials",
    ".aws/credentials",
    f"[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n",
    ("aws-access-key", a),
    ("aws-secret-key", s),
)
s = _aws_secret()
a = _aws_id()
P(
    "ho-s3cfg",
    ".s3cfg",
    f"[default]\naccess_key = {a}\nsecret_key = {s}\n",
    ("aws-access-key", a),
    ("aws-secret-key", s),
)
v = _hex(32)
P("ho-twilio", ".env", f"TWILIO_ACCOUNT_SID=AC{_hex(32)}\nTWILIO_AUTH_TOKEN={v}\n", ("token", v))
v = "key-" + _hex(32)
P(
    "ho-mailgun",
    "config/mail.yml",
    f"mailgun:\n  api_key: {v}\n  domain: mg.ledger.io\n",
    ("api-key", v),
)
v = "gh" + "p_" + _mixed(36)
P("ho-git-credentials", ".git-credentials", f"https://ci-bot:{v}@github.com\n", ("github-token", v))
v = "np" + "m_" + _mixed(36)
P(
    "ho-yarnrc",
    ".yarnrc.yml",
    f'npmAuthToken: "{v}"\nnpmRegistryServer: "https://registry.npmjs.org"\n',
    ("npm-token", v),
)
v = base64.b64encode(f"ci:{_mixed(18)}".encode()).decode()
P("ho-npmrc-auth", ".npmrc", f"registry=https://npm.ledger.internal/\n_auth={v}\n", ("token", v))
v = _pw()
P(
    "ho-systemd-env",
    "deploy/ledger.service",
    f"[Service]\nEnvironment=DB_PASSWORD={v}\nExecStart=/usr/bin/ledger\n",
    ("password", v),
)
v = "sk" + "_live_" + _mixed(24)
P(
    "ho-serverless",
    "serverless.yml",
    f"provider:\n  name: aws\n  environment:\n    STRIPE_KEY: {v}\n",
    ("stripe-key", v),
)
v = _pw()
P(
    "ho-jdbc-getconnection",
    "src/main/java/ledger/Jdbc.java",
    f'Connection c = DriverManager.getConnection(url, "sa", "{v}");\n',
    ("password", v),
)
v = _pw()
P("ho-smtplib-login", "jobs/mail.py", f'server.login("alerts@ledger.io", "{v}")\n', ("password", v))
v = _pw()
P(
    "ho-node-pool",
    "server/pg.js",
    f"const pool = new Pool({{ user: 'app', host: 'db', password: '{v}', port: 5432 }});\n",
    ("password", v),
)
v = _pw()
P(
    "ho-go-redis",
    "internal/cache/cache.go",
    f'rdb := redis.NewClient(&redis.Options{{Addr: "cache:6379", Password: "{v}", DB: 0}})\n',
    ("password", v),
)
v = _pw()
P(
    "ho-cs-network-credential",
    "src/Ledger/Mail.cs",
    f'client.Credentials = new NetworkCredential("svc-mail", "{v}");\n',
    ("password", v),
)
v = _pw()
P("ho-php-pdo", "src/db.php", f"$pdo = new PDO($dsn, 'root', '{v}');\n", ("password", v))
v = _pw()
P(
    "ho-rails-establish",
    "config/initializers/db.rb",
    f'ActiveRecord::Base.establish_connection(adapter: "postgresql", password: "{v}")\n',
    ("password", v),
)
v = _pw()
P(
    "ho-docker-run-quoted-env",
    "scripts/mysql.sh",
    f'docker run -d -e "MYSQL_ROOT_PASSWORD={v}" mysql:8\n',
    ("password", v),
)
v = _pw()
P(
    "ho-kubectl-docker-password",
    "scripts/registry.sh",
    "kubectl create secret docker-registry regcred --docker-server=registry.internal "
    f"--docker-username=ci --docker-password={v}\n",
    ("password", v),
)
v = _pw()
P(
    "ho-htpasswd",
    "scripts/nginx.sh",
    f"htpasswd -b -c /etc/nginx/.htpasswd admin {v}\n",
    ("password", v),
)
v = _pw()
P(
    "ho-echo-password-stdin",
    ".gitlab-ci.yml",
    f'  script:\n    - echo "{v}" | docker login -u ci --password-stdin registry.internal\n',
    ("password", v),
)
v = _pw()
P(
    "ho-gha-with-password",
    ".github/workflows/docker.yml",
    f"      - uses: docker/login-action@v3\n        with:\n          username: ci\n          password: {v}\n",
    ("password", v),
)
v = "sk" + "-proj-" + _mixed(48)
P(
    "ho-notebook",
    "notebooks/explore.ipynb",
    '{"cells": [{"cell_type": "code", "source": ["import openai\\n", '
    f'"openai.api_key = \\"{v}\\"\\n"]}}]}}\n',
    ("openai-key", v),
)
v = _mixed(32)
P(
    "ho-jwt-encode",
    "app/tokens.py",
    f'token = jwt.encode(payload, "{v}", algorithm="HS256")\n',
    ("secret", v),
)
v = f"T{_rand(ALNUM, 8)}/B{_rand(ALNUM, 10)}/{_mixed(24)}"
P(
    "ho-slack-webhook-env",
    ".env",
    f"SLACK_WEBHOOK=https://hooks.slack.com/services/{v}\n",
    ("slack-webhook", v),
)
v = _hex(32)
P(
    "ho-http-file-api-key",
    "requests/api.http",
    f"GET https://api.ledger.io/v1/accounts\nX-API-Key: {v}\n",
    ("api-key", v),
)
v = _mixed(32)
P(
    "ho-postman-env",
    "postman/ledger.postman_environment.json",
    f'{{"values": [{{"key": "apiKey", "value": "{v}", "enabled": true}}]}}\n',
    ("api-key", v),
)
v = _pw()
P(
    "ho-jdbc-properties",
    "config/jdbc.properties",
    f"jdbc.user=ledger\njdbc.password={v}\n",
    ("password", v),
)
v = "gl" + "rt-" + _rand(ALNUM + "_-", 20)
P(
    "ho-runner-config",
    "config.toml",
    f'[[runners]]\n  name = "docker"\n  url = "https://gitlab.example.com"\n  token = "{v}"\n',
    ("gitlab-token", v),
)
lines = _pem_lines()
P(
    "ho-pem-env-oneline",
    ".env",
    'PRIVATE_KEY="-----BEGIN RSA PRIVATE KEY-----\\n'
    + "\\n".join(lines)
    + '\\n-----END RSA PRIVATE KEY-----"\n',
    *(("private-key", x) for x in lines[:-1]),
)
v = _mixed(40)
P("ho-tf-iam-secret", "infra/ses.tf", f'locals {{\n  smtp_secret = "{v}"\n}}\n', ("secret", v))
v = _pw()
P("ho-ini-quoted-spaces", "config/app.cfg", f'[mail]\npassword = "{v} x"\n', ("password", v))
v = _mixed(28)
P(
    "ho-java-props-setproperty",
    "src/main/java/ledger/Mail.java",
    f'props.setProperty("mail.smtp.password", "{v}");\n',
    ("password", v),
)

# --- look-alikes ------------------------------------------------------------------------------
ho = [
    (
        "reference",
        "ho-gha-docker-login",
        ".github/workflows/docker.yml",
        "        with:\n          username: ${{ github.actor }}\n          password: ${{ secrets.GITHUB_TOKEN }}\n",
    ),
    (
        "reference",
        "ho-ansible-become",
        "ansible/group_vars/prod.yml",
        'ansible_become_password: "{{ vault_become_password }}"\n',
    ),
    (
        "reference",
        "ho-k8s-env-secret",
        "deploy/worker.yaml",
        "        env:\n          - name: GITLAB_TOKEN\n            valueFrom:\n              secretKeyRef: {name: gitlab, key: token}\n",
    ),
    (
        "reference",
        "ho-spring-yaml-default",
        "src/main/resources/application.yml",
        "app:\n  jwt:\n    secret: ${JWT_SECRET:}\n",
    ),
    (
        "reference",
        "ho-py-settings-getattr",
        "app/conf.py",
        'token = getattr(settings, "GITLAB_TOKEN", None)\n',
    ),
    (
        "reference",
        "ho-py-dict-get",
        "app/conf.py",
        'password = config.get("database", {}).get("password")\n',
    ),
    (
        "reference",
        "ho-js-config-get",
        "server/db.js",
        "const password = config.get('db.password');\n",
    ),
    (
        "reference",
        "ho-go-viper",
        "internal/config/viper.go",
        'token := viper.GetString("gitlab.token")\n',
    ),
    (
        "reference",
        "ho-java-properties-get",
        "src/main/java/ledger/Db.java",
        'String pw = props.getProperty("db.password");\n',
    ),
    (
        "reference",
        "ho-cs-configuration",
        "src/Ledger/Startup.cs",
        'var apiKey = Configuration["Stripe:ApiKey"];\n',
    ),
    (
        "reference",
        "ho-rb-env-fetch",
        "config/initializers/gitlab.rb",
        'Gitlab.private_token = ENV.fetch("GITLAB_TOKEN")\n',
    ),
    (
        "reference",
        "ho-php-env-default-null",
        "config/services.php",
        "    'secret' => env('STRIPE_SECRET', null),\n",
    ),
    ("reference", "ho-tf-module-output", "infra/app.tf", "  db_password = module.db.password\n"),
    ("reference", "ho-tf-sensitive-var", "infra/app.tf", "  token = sensitive(var.gitlab_token)\n"),
    (
        "reference",
        "ho-serverless-ssm",
        "serverless.yml",
        "  environment:\n    STRIPE_KEY: ${ssm:/ledger/stripe-key}\n",
    ),
    (
        "reference",
        "ho-sam-resolve",
        "template.yaml",
        "      Password: '{{resolve:ssm-secure:/ledger/db-password:1}}'\n",
    ),
    (
        "reference",
        "ho-compose-secret-file",
        "docker-compose.yml",
        "    environment:\n      POSTGRES_PASSWORD_FILE: /run/secrets/db_password\n",
    ),
    (
        "reference",
        "ho-systemd-envfile",
        "deploy/ledger.service",
        "[Service]\nEnvironmentFile=/etc/ledger/secrets.env\n",
    ),
    (
        "reference",
        "ho-sh-vault-read",
        "scripts/env.sh",
        "export DB_PASSWORD=$(vault kv get -field=password secret/ledger/db)\n",
    ),
    (
        "reference",
        "ho-sh-aws-secretsmanager",
        "scripts/env.sh",
        'TOKEN="$(aws secretsmanager get-secret-value --secret-id gitlab --query SecretString --output text)"\n',
    ),
    (
        "reference",
        "ho-py-secret-manager",
        "app/secrets.py",
        'api_key = secret_client.access_secret_version(name=f"{project}/secrets/api-key/versions/latest")\n',
    ),
    (
        "reference",
        "ho-js-destructure-env",
        "server/config.js",
        "const { DB_PASSWORD: password, API_TOKEN: token } = process.env;\n",
    ),
    (
        "reference",
        "ho-ts-class-field",
        "src/client.ts",
        "  constructor(private readonly token: string, private apiKey?: string) {}\n",
    ),
    (
        "reference",
        "ho-kotlin-getenv",
        "app/src/main/kotlin/Config.kt",
        'val password: String = System.getenv("DB_PASSWORD") ?: error("DB_PASSWORD not set")\n',
    ),
    ("reference", "ho-yaml-anchor", "config/app.yaml", "defaults: &db\n  password: *db_password\n"),
    (
        "template",
        "ho-py-fstring-header-get",
        "app/gitlab.py",
        'headers = {"Authorization": f"Bearer {os.environ[\'GITLAB_TOKEN\']}"}\n',
    ),
    (
        "template",
        "ho-py-percent-dict",
        "app/api.py",
        'auth = "Token %(token)s" % {"token": token}\n',
    ),
    (
        "template",
        "ho-js-template-header",
        "web/src/api.ts",
        "fetch(url, { headers: { 'PRIVATE-TOKEN': `${this.token}` } });\n",
    ),
    (
        "template",
        "ho-go-header-add",
        "internal/gitlab/client.go",
        'req.Header.Add("PRIVATE-TOKEN", c.token)\n',
    ),
    (
        "template",
        "ho-java-basic-format",
        "src/main/java/ledger/Http.java",
        'String auth = "Basic " + Base64.getEncoder().encodeToString((user + ":" + password).getBytes());\n',
    ),
    ("template", "ho-rb-format", "lib/client.rb", 'auth = format("Bearer %s", token)\n'),
    (
        "template",
        "ho-sh-basic-printf",
        "scripts/api.sh",
        'AUTH=$(printf "%s:%s" "$USER" "$PASSWORD" | base64)\n',
    ),
    (
        "template",
        "ho-helm-tpl",
        "chart/templates/deploy.yaml",
        "            - name: TOKEN\n              value: {{ .Values.token | quote }}\n",
    ),
    (
        "template",
        "ho-jinja-url",
        "templates/alembic.ini.j2",
        "sqlalchemy.url = postgresql://{{ db_user }}:{{ db_password }}@{{ db_host }}/ledger\n",
    ),
    (
        "template",
        "ho-envsubst",
        "deploy/config.tmpl",
        "token: ${GITLAB_TOKEN}\npassword: ${DB_PASSWORD}\n",
    ),
    (
        "shell-var",
        "ho-sh-docker-login-stdin",
        "scripts/push.sh",
        'echo "${REGISTRY_PASSWORD}" | docker login --username "${REGISTRY_USER}" --password-stdin\n',
    ),
    (
        "shell-var",
        "ho-sh-curl-token-header",
        "scripts/upload.sh",
        'curl --fail -H "X-API-Key: ${API_KEY}" -F file=@dist/app.zip "$UPLOAD_URL"\n',
    ),
    (
        "shell-var",
        "ho-sh-mysql-env",
        "scripts/db.sh",
        'MYSQL_PWD="$DB_PASSWORD" mysql -u root ledger\n',
    ),
    (
        "shell-var",
        "ho-ci-twine",
        ".gitlab-ci.yml",
        "    - twine upload -u __token__ -p $PYPI_TOKEN dist/*\n",
    ),
    (
        "shell-var",
        "ho-ci-sshpass-var",
        ".gitlab-ci.yml",
        '    - sshpass -p "$DEPLOY_PASSWORD" ssh deploy@app01 uptime\n',
    ),
    (
        "shell-var",
        "ho-ci-curl-user-vars",
        ".gitlab-ci.yml",
        '    - curl -u "$NEXUS_USER:$NEXUS_PASSWORD" --upload-file app.jar "$NEXUS_URL"\n',
    ),
    (
        "shell-var",
        "ho-dockerfile-arg-use",
        "Dockerfile",
        'ARG PIP_INDEX_URL\nRUN pip install --index-url "$PIP_INDEX_URL" ledger-core\n',
    ),
    (
        "shell-var",
        "ho-ps1-env",
        "scripts/build.ps1",
        '$headers = @{ "PRIVATE-TOKEN" = $env:GITLAB_TOKEN }\n',
    ),
    (
        "shell-var",
        "ho-makefile-login",
        "Makefile",
        "login:\n\t@echo $$REGISTRY_PASSWORD | docker login -u $(REGISTRY_USER) --password-stdin\n",
    ),
    (
        "percent-format",
        "ho-c-sprintf-url",
        "src/db.c",
        'snprintf(url, sizeof url, "postgres://%s:%s@%s/ledger", user, password, host);\n',
    ),
    (
        "percent-format",
        "ho-py-logging-password",
        "app/db.py",
        'log.info("connecting as %s (password: %s)", user, "*" * len(password))\n',
    ),
    (
        "percent-format",
        "ho-go-errorf",
        "internal/auth/auth.go",
        'return fmt.Errorf("token %q rejected: %w", tokenID, err)\n',
    ),
    (
        "env-var-name",
        "ho-py-env-list",
        "app/check.py",
        'REQUIRED = ["DATABASE_URL", "GITLAB_TOKEN", "STRIPE_SECRET_KEY"]\n',
    ),
    (
        "env-var-name",
        "ho-ts-env-name",
        "src/env.ts",
        "export const TOKEN_VAR = 'GITLAB_TOKEN' as const;\n",
    ),
    (
        "env-var-name",
        "ho-yaml-secret-key-name",
        "deploy/external-secret.yaml",
        "  data:\n    - secretKey: password\n      remoteRef:\n        key: ledger/db\n        property: password\n",
    ),
    (
        "env-var-name",
        "ho-go-header-const",
        "internal/gitlab/client.go",
        'const tokenHeader = "PRIVATE-TOKEN"\n',
    ),
    (
        "env-var-name",
        "ho-java-header-const",
        "src/main/java/ledger/Api.java",
        'public static final String API_KEY_HEADER = "X-Api-Key";\n',
    ),
    (
        "env-var-name",
        "ho-cookie-name",
        "app/settings.py",
        'SESSION_COOKIE_NAME = "ledger_session"\nCSRF_COOKIE_NAME = "csrftoken"\n',
    ),
    ("env-var-name", "ho-ini-secret-name", "config/app.ini", "[vault]\nsecret = ledger/db\n"),
    (
        "env-var-name",
        "ho-k8s-secret-ref-name",
        "deploy/ingress.yaml",
        "  tls:\n    - hosts: [ledger.example.com]\n      secretName: ledger-tls\n",
    ),
    (
        "placeholder",
        "ho-readme-env",
        "README.md",
        "```env\nGITLAB_TOKEN=<your GitLab token>\nDB_PASSWORD=<choose one>\n```\n",
    ),
    (
        "placeholder",
        "ho-yaml-changeme-quoted",
        "config/app.yaml",
        'admin:\n  password: "CHANGE_ME"\n',
    ),
    ("placeholder", "ho-todo-comment-value", "config/app.yaml", "api_key: TODO-fill-in\n"),
    ("placeholder", "ho-stars", ".env.example", "STRIPE_SECRET_KEY=sk_live_****************\n"),
    (
        "placeholder",
        "ho-angle-flag",
        "docs/deploy.md",
        "docker login -u <user> --password <password> registry.internal\n",
    ),
    (
        "placeholder",
        "ho-curl-placeholder-user",
        "docs/api.md",
        "curl -u admin:<password> https://grafana.internal\n",
    ),
    (
        "placeholder",
        "ho-ellipsis-json",
        "docs/config.md",
        '{"token": "glpat-...", "url": "https://gitlab.example.com"}\n',
    ),
    (
        "placeholder",
        "ho-py-none-token",
        "app/example.py",
        'client = Gitlab(url, private_token="YOUR_TOKEN_HERE")\n',
    ),
    (
        "placeholder",
        "ho-secret-xxx-mixed",
        "docs/setup.md",
        "SECRET_KEY=xxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
    ),
    (
        "placeholder",
        "ho-test-password",
        "tests/test_db.py",
        'db = connect(user="test", password="test")\n',
    ),
    (
        "placeholder",
        "ho-password123",
        "tests/test_users.py",
        'create_user("alice", password="password123")\n',
    ),
    (
        "placeholder",
        "ho-secret-placeholder-brackets",
        "config/app.toml",
        'secret_key = "[your secret key]"\n',
    ),
    (
        "placeholder",
        "ho-url-user-pass-words",
        "docs/db.md",
        "postgresql://username:password@localhost:5432/dbname\n",
    ),
    (
        "lock-hash",
        "ho-yarn-berry-checksum",
        "yarn.lock",
        f'"axios@npm:^1.7.2":\n  version: 1.7.2\n  checksum: {_hex(128)}\n',
    ),
    (
        "lock-hash",
        "ho-gemfile-lock",
        "Gemfile.lock",
        "GEM\n  remote: https://rubygems.org/\n  specs:\n    rake (13.2.1)\n",
    ),
    (
        "lock-hash",
        "ho-mix-lock",
        "mix.lock",
        f'%{{"jason": {{:hex, :jason, "1.4.1", "{_sha256()}", [:mix], [], "hexpm", "{_sha256()}"}}}}\n',
    ),
    (
        "lock-hash",
        "ho-nix-flake-lock",
        "flake.lock",
        f'{{"nodes": {{"nixpkgs": {{"locked": {{"narHash": "sha256-{base64.b64encode(_rng.randbytes(32)).decode()}", "rev": "{_hex(40)}"}}}}}}}}\n',
    ),
    (
        "lock-hash",
        "ho-conda-lock",
        "conda-lock.yml",
        f"  - name: numpy\n    hash:\n      md5: {_hex(32)}\n      sha256: {_sha256()}\n",
    ),
    (
        "lock-hash",
        "ho-pip-compile-hash",
        "requirements.lock",
        f"certifi==2024.2.2 \\\n    --hash=sha256:{_sha256()}\n",
    ),
    (
        "lock-hash",
        "ho-helm-digest",
        "chart/Chart.lock",
        f'digest: sha256:{_sha256()}\ngenerated: "2024-05-01T10:00:00Z"\n',
    ),
    (
        "lock-hash",
        "ho-bazel-sha",
        "WORKSPACE",
        f'http_archive(\n    name = "rules_python",\n    sha256 = "{_sha256()}",\n)\n',
    ),
    ("uuid", "ho-azure-client-id", "infra/azure.tf", f'  client_id = "{_uuid()}"\n'),
    ("uuid", "ho-grafana-uid", "dashboards/api.json", f'{{"uid": "{_uuid()}", "title": "API"}}\n'),
    (
        "uuid",
        "ho-csproj-guid",
        "src/Ledger/Ledger.csproj",
        f"<ProjectGuid>{{{_uuid().upper()}}}</ProjectGuid>\n",
    ),
    ("uuid", "ho-secret-version-id", "deploy/secret.yaml", f"metadata:\n  uid: {_uuid()}\n"),
    (
        "uuid",
        "ho-token-jti-py",
        "tests/test_jwt.py",
        f'claims = {{"jti": "{_uuid()}", "sub": "alice"}}\n',
    ),
    (
        "uuid",
        "ho-auth-request-id",
        "tests/fixtures/auth.json",
        f'{{"auth_request_id": "{_uuid()}", "state": "pending"}}\n',
    ),
    (
        "base64-data",
        "ho-font-woff",
        "web/src/fonts.css",
        f"@font-face {{ src: url(data:font/woff2;base64,{base64.b64encode(_rng.randbytes(90)).decode()}); }}\n",
    ),
    (
        "base64-data",
        "ho-protobuf-fixture",
        "tests/fixtures/event.py",
        f'EVENT_PB = base64.b64decode("{base64.b64encode(_rng.randbytes(40)).decode()}")\n',
    ),
    (
        "base64-data",
        "ho-k8s-configmap-binary",
        "deploy/configmap.yaml",
        f"binaryData:\n  logo.png: {base64.b64encode(_rng.randbytes(60)).decode()}\n",
    ),
    (
        "base64-data",
        "ho-ca-cert-data",
        ".kube/config",
        f"clusters:\n- cluster:\n    certificate-authority-data: {_b64(120)}\n    server: https://k8s.internal\n",
    ),
    (
        "base64-data",
        "ho-sig-test-vector",
        "tests/test_sign.py",
        f'EXPECTED_SIGNATURE = "{base64.b64encode(_rng.randbytes(32)).decode()}"\n',
    ),
    (
        "base64-data",
        "ho-gpg-public",
        "keys/release.pub.asc",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n"
        + "\n".join(_b64(64) for _ in range(5))
        + "\n-----END PGP PUBLIC KEY BLOCK-----\n",
    ),
    (
        "cli-flag",
        "ho-flag-token-env-name",
        "scripts/ci.sh",
        "semantic-release --token-env GITLAB_TOKEN\n",
    ),
    (
        "cli-flag",
        "ho-flag-password-prompt-short",
        "scripts/db.sh",
        "psql -h db -U ledger -W ledger\n",
    ),
    (
        "cli-flag",
        "ho-flag-secret-arn",
        "scripts/aws.sh",
        "aws secretsmanager get-secret-value --secret-id arn:aws:secretsmanager:eu-west-1:123456789012:secret:ledger\n",
    ),
    (
        "cli-flag",
        "ho-flag-auth-type",
        "scripts/kafka.sh",
        "kafka-console-consumer --auth-type sasl --topic events\n",
    ),
    (
        "cli-flag",
        "ho-flag-api-key-var",
        "scripts/upload.sh",
        'datadog-ci sourcemaps upload --api-key "$DD_API_KEY" ./dist\n',
    ),
    (
        "cli-flag",
        "ho-flag-docs-table",
        "docs/cli.md",
        "| `--token TOKEN` | GitLab token (or `GITLAB_TOKEN`) |\n",
    ),
    (
        "cli-flag",
        "ho-flag-password-help",
        "app/cli.py",
        '@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)\n',
    ),
    (
        "cli-flag",
        "ho-flag-secret-generator",
        "scripts/k8s.sh",
        'kubectl create secret generic app --from-literal=password="$(openssl rand -hex 16)"\n',
    ),
    (
        "cli-flag",
        "ho-flag-htpasswd-prompt",
        "scripts/nginx.sh",
        "htpasswd -c /etc/nginx/.htpasswd admin\n",
    ),
    (
        "config-value",
        "ho-redis-conf-comment",
        "deploy/redis.conf",
        "# requirepass foobared\nmaxmemory 256mb\n",
    ),
    (
        "config-value",
        "ho-sshd-config",
        "deploy/sshd_config",
        "PasswordAuthentication no\nPubkeyAuthentication yes\n",
    ),
    (
        "config-value",
        "ho-mongod-auth",
        "deploy/mongod.conf",
        "security:\n  authorization: enabled\n",
    ),
    (
        "config-value",
        "ho-postgres-auth-method",
        "deploy/postgresql.conf",
        "password_encryption = scram-sha-256\n",
    ),
    (
        "config-value",
        "ho-kafka-sasl",
        "config/kafka.properties",
        "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n",
    ),
    (
        "config-value",
        "ho-oauth-token-url-env",
        ".env",
        "OAUTH_TOKEN_URL=https://gitlab.example.com/oauth/token\n",
    ),
    (
        "config-value",
        "ho-token-lifetime",
        "config/auth.yaml",
        "tokens:\n  access_lifetime: 15m\n  refresh_lifetime: 30d\n",
    ),
    (
        "config-value",
        "ho-jwt-algorithm",
        "config/auth.yaml",
        "jwt:\n  algorithm: RS256\n  issuer: ledger\n",
    ),
    ("config-value", "ho-auth-list", "config/app.yaml", "auth:\n  - oidc\n  - token\n"),
    (
        "config-value",
        "ho-credential-helper",
        ".gitconfig",
        "[credential]\n\thelper = osxkeychain\n",
    ),
    (
        "config-value",
        "ho-passwords-count",
        "config/policy.yaml",
        "password_history: 5\npassword_expiry_days: 90\n",
    ),
    ("config-value", "ho-token-audience", "config/auth.yaml", "token_audience: coderag\n"),
    ("config-value", "ho-basic-auth-enabled", "config/app.yaml", "basic_auth: false\n"),
    (
        "prose",
        "ho-docstring-returns",
        "app/auth.py",
        '    """Return the token.\n\n    Returns:\n        token: a short-lived access token for the API.\n    """\n',
    ),
    (
        "prose",
        "ho-md-secrets-heading",
        "docs/ops.md",
        "## Secrets\n\nPassword: ask the on-call engineer, never commit it.\n",
    ),
    (
        "prose",
        "ho-comment-todo",
        "app/db.py",
        "# TODO(alice): password rotation: move to the vault once it is set up\n",
    ),
    (
        "prose",
        "ho-yaml-description",
        "openapi.yaml",
        "      description: The token of the user, as returned by the login endpoint.\n",
    ),
    (
        "prose",
        "ho-commit-template",
        ".gitmessage",
        "Secret: do not paste credentials into commit messages\n",
    ),
    (
        "prose",
        "ho-faq",
        "docs/faq.md",
        "**Token:** create one under *Preferences > Access tokens* with the `read_api` scope.\n",
    ),
    (
        "prose",
        "ho-error-json",
        "web/src/locales/de.json",
        '{"errors": {"password": "Das Passwort ist falsch", "token": "Der Token ist abgelaufen"}}\n',
    ),
    (
        "code",
        "ho-py-password-compare",
        "app/auth.py",
        "if not check_password_hash(user.password_hash, password):\n    abort(401)\n",
    ),
    (
        "code",
        "ho-js-token-regex",
        "web/src/scan.js",
        "const TOKEN_RE = /glpat-[0-9A-Za-z_-]{20}/g;\n",
    ),
    (
        "code",
        "ho-py-token-bytes",
        "app/tokens.py",
        "token = base64.urlsafe_b64encode(os.urandom(32)).decode()\n",
    ),
    (
        "code",
        "ho-go-token-struct",
        "internal/auth/token.go",
        'type Token struct {\n\tValue     string    `json:"value"`\n\tExpiresAt time.Time `json:"expires_at"`\n}\n',
    ),
    ("code", "ho-sql-grant", "db/roles.sql", "CREATE ROLE reader WITH LOGIN PASSWORD NULL;\n"),
    (
        "code",
        "ho-java-char-password",
        "src/main/java/ledger/Keystore.java",
        'char[] password = System.console().readPassword("Keystore password: ");\n',
    ),
    (
        "code",
        "ho-rust-secret-type",
        "src/auth.rs",
        "pub fn verify(token: &SecretString) -> Result<Claims> {\n",
    ),
    (
        "code",
        "ho-test-mock-token",
        "tests/test_client.py",
        "client = Client(token=mock.sentinel.token)\n",
    ),
    (
        "code",
        "ho-ts-type-alias",
        "src/types.ts",
        "type Auth = { kind: 'token'; token: string } | { kind: 'anonymous' };\n",
    ),
]
for category, id_, path, text in ho:
    L(id_, category, path, text)


# =============================================================================================
# Fresh: a second held-out set, written after the held-out fixes, scored as first run.
# =============================================================================================
_SPLIT = "fresh"

v = _pw()
P(
    "fr-laravel-env",
    ".env",
    f"APP_ENV=production\nDB_CONNECTION=mysql\nDB_PASSWORD={v}\n",
    ("password", v),
)
v = _mixed(40)
P("fr-sentry-auth-token", ".sentryclirc", f"[auth]\ntoken={v}\n", ("token", v))
v = "gh" + "p_" + _mixed(36)
P(
    "fr-gh-actions-env",
    ".github/workflows/sync.yml",
    f"    env:\n      GH_TOKEN: {v}\n",
    ("github-token", v),
)
v = _pw()
P(
    "fr-spring-yaml",
    "src/main/resources/application-prod.yml",
    f"spring:\n  datasource:\n    url: jdbc:postgresql://db/ledger\n    username: ledger\n    password: {v}\n",
    ("password", v),
)
v = _pw()
P(
    "fr-knexfile",
    "knexfile.js",
    f"module.exports = {{\n  production: {{\n    client: 'pg',\n    connection: {{ host: 'db', user: 'ledger', password: '{v}' }},\n  }},\n}};\n",
    ("password", v),
)
v = _mixed(32)
P(
    "fr-go-const-block",
    "internal/keys/keys.go",
    f'const (\n\tStripeWebhookSecret = "{v}"\n\tRegion = "eu"\n)\n',
    ("secret", v),
)
v = _pw()
P(
    "fr-docker-compose-mysql",
    "docker-compose.yml",
    f"  db:\n    image: mysql:8\n    environment:\n      MYSQL_ROOT_PASSWORD: {v}\n",
    ("password", v),
)
v = _hex(40)
P(
    "fr-circleci",
    ".circleci/config.yml",
    f"jobs:\n  deploy:\n    steps:\n      - run: heroku container:login --api-key {v}\n",
    ("api-key", v),
)
v = _pw()
P(
    "fr-rabbitmq-url",
    "config/celery.py",
    f'broker_url = "amqp://ledger:{v}@rabbit:5672//"\n',
    ("url-password", v),
)
v = _mixed(36)
P(
    "fr-terraform-tfvars-token",
    "infra/secrets.auto.tfvars",
    f'cloudflare_api_token = "{v}"\n',
    ("token", v),
)
v = _pw()
P(
    "fr-ldap-bind",
    "app/ldap.py",
    f'conn.simple_bind_s("cn=admin,dc=ledger,dc=io", "{v}")\n',
    ("password", v),
)
v = _pw()
P(
    "fr-ps1-securestring",
    "scripts/deploy.ps1",
    f'$secure = ConvertTo-SecureString "{v}" -AsPlainText -Force\n',
    ("password", v),
)
v = _pw()
P(
    "fr-ftp-login",
    "jobs/export.py",
    f'ftp = FTP("ftp.ledger.io")\nftp.login("export", "{v}")\n',
    ("password", v),
)
v = _mixed(32)
P(
    "fr-csharp-const",
    "src/Ledger/Keys.cs",
    f'public const string ApiSecret = "{v}";\n',
    ("secret", v),
)
v = _mixed(30)
P("fr-swift-let", "ios/Config.swift", f'let apiKey = "{v}"\n', ("api-key", v))
v = _pw()
P(
    "fr-ruby-hash",
    "config/smtp.rb",
    f"ActionMailer::Base.smtp_settings = {{\n  user_name: 'alerts',\n  password: '{v}',\n}}\n",
    ("password", v),
)
v = _hex(64)
P(
    "fr-github-webhook-secret",
    "config/hooks.json",
    f'{{"github": {{"webhook_secret": "{v}"}}}}\n',
    ("secret", v),
)
v = _pw()
P(
    "fr-mssql-sqlcmd",
    "scripts/db.sh",
    f"sqlcmd -S db -U sa -P '{v}' -Q 'SELECT 1'\n",
    ("password", v),
)
v = _pw()
P("fr-ini-odbc", "odbc.ini", f"[ledger]\nDriver=PostgreSQL\nUID=ledger\nPWD={v}\n", ("password", v))
v = "xo" + "xb-" + _rand(string.digits, 12) + "-" + _rand(string.digits, 12) + "-" + _mixed(24)
P("fr-slack-yaml", "config/bot.yaml", f"slack:\n  bot_token: {v}\n", ("slack-token", v))

fresh = [
    (
        "reference",
        "fr-laravel-config",
        "config/database.php",
        "            'password' => env('DB_PASSWORD', ''),\n",
    ),
    (
        "reference",
        "fr-knex-env",
        "knexfile.js",
        "    connection: { host: process.env.DB_HOST, password: process.env.DB_PASSWORD },\n",
    ),
    (
        "reference",
        "fr-spring-env-ref",
        "src/main/resources/application.yml",
        "    password: ${SPRING_DATASOURCE_PASSWORD}\n",
    ),
    (
        "reference",
        "fr-gha-env-secret",
        ".github/workflows/sync.yml",
        "    env:\n      GH_TOKEN: ${{ secrets.GH_TOKEN }}\n",
    ),
    (
        "reference",
        "fr-compose-env-ref-default",
        "docker-compose.yml",
        "      MYSQL_ROOT_PASSWORD: ${MYSQL_ROOT_PASSWORD:-}\n",
    ),
    (
        "reference",
        "fr-py-settings-attr-chain",
        "app/mail.py",
        "server.login(settings.SMTP_USER, settings.SMTP_PASSWORD)\n",
    ),
    (
        "reference",
        "fr-ldap-bind-vars",
        "app/ldap.py",
        "conn.simple_bind_s(bind_dn, bind_password)\n",
    ),
    (
        "reference",
        "fr-go-os-lookup",
        "internal/config/env.go",
        'if pw, ok := os.LookupEnv("DB_PASSWORD"); ok {\n',
    ),
    (
        "reference",
        "fr-tf-var-token",
        "infra/cloudflare.tf",
        'provider "cloudflare" {\n  api_token = var.cloudflare_api_token\n}\n',
    ),
    (
        "reference",
        "fr-ps1-read-host",
        "scripts/deploy.ps1",
        '$secure = Read-Host "Password" -AsSecureString\n',
    ),
    (
        "reference",
        "fr-ruby-credentials",
        "config/smtp.rb",
        "  password: Rails.application.credentials.dig(:smtp, :password),\n",
    ),
    (
        "reference",
        "fr-cs-config",
        "src/Ledger/Keys.cs",
        'var secret = builder.Configuration["Stripe:WebhookSecret"];\n',
    ),
    (
        "template",
        "fr-js-basic-template",
        "server/http.js",
        "const auth = 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64');\n",
    ),
    (
        "template",
        "fr-py-fstring-dsn-env",
        "app/db.py",
        "url = f\"postgresql://{os.environ['DB_USER']}:{os.environ['DB_PASSWORD']}@db/ledger\"\n",
    ),
    (
        "template",
        "fr-go-template-header",
        "internal/api/h.go",
        'req.Header.Set("Authorization", "token "+os.Getenv("GH_TOKEN"))\n',
    ),
    (
        "template",
        "fr-helm-secret-b64",
        "chart/templates/secret.yaml",
        "data:\n  password: {{ .Values.db.password | b64enc | quote }}\n",
    ),
    (
        "shell-var",
        "fr-sqlcmd-var",
        "scripts/db.sh",
        "sqlcmd -S db -U sa -P \"$SA_PASSWORD\" -Q 'SELECT 1'\n",
    ),
    (
        "shell-var",
        "fr-heroku-var",
        ".circleci/config.yml",
        "      - run: heroku container:login --api-key $HEROKU_API_KEY\n",
    ),
    (
        "shell-var",
        "fr-npm-token-env",
        ".gitlab-ci.yml",
        '    - echo "//registry.npmjs.org/:_authToken=${NPM_TOKEN}" > .npmrc\n',
    ),
    (
        "shell-var",
        "fr-git-credential-var",
        "scripts/clone.sh",
        'git clone "https://oauth2:${GITLAB_TOKEN}@gitlab.example.com/ledger/core.git"\n',
    ),
    (
        "env-var-name",
        "fr-required-env-ts",
        "src/env.ts",
        "const required = ['DB_PASSWORD', 'STRIPE_SECRET_KEY'] as const;\n",
    ),
    (
        "env-var-name",
        "fr-secret-manager-name",
        "app/secrets.py",
        'SECRET_NAME = "projects/ledger/secrets/db-password"\n',
    ),
    (
        "env-var-name",
        "fr-header-name-go",
        "internal/api/h.go",
        'const apiKeyHeader = "X-API-Key"\n',
    ),
    ("placeholder", "fr-env-example-blank", ".env.example", "DB_PASSWORD=\nSTRIPE_SECRET_KEY=\n"),
    (
        "placeholder",
        "fr-readme-angle-flag",
        "README.md",
        "heroku container:login --api-key <your-api-key>\n",
    ),
    (
        "placeholder",
        "fr-yaml-replace-with",
        "config/bot.yaml",
        "slack:\n  bot_token: xoxb-your-token-here\n",
    ),
    (
        "placeholder",
        "fr-docs-sqlcmd",
        "docs/db.md",
        "sqlcmd -S db -U sa -P '<YourStrong!Passw0rd>'\n",
    ),
    (
        "placeholder",
        "fr-tfvars-example",
        "infra/terraform.tfvars.example",
        'cloudflare_api_token = "REPLACE_WITH_TOKEN"\n',
    ),
    (
        "placeholder",
        "fr-json-asterisks",
        "config/hooks.example.json",
        '{"github": {"webhook_secret": "********"}}\n',
    ),
    (
        "lock-hash",
        "fr-pubspec-lock",
        "pubspec.lock",
        f'  http:\n    description:\n      sha256: "{_sha256()}"\n',
    ),
    (
        "lock-hash",
        "fr-podfile-lock",
        "ios/Podfile.lock",
        f"SPEC CHECKSUMS:\n  Alamofire: {_hex(40)}\n",
    ),
    (
        "lock-hash",
        "fr-packages-lock-json",
        "src/Ledger/packages.lock.json",
        f'{{"contentHash": "{base64.b64encode(_rng.randbytes(64)).decode()}"}}\n',
    ),
    ("uuid", "fr-k8s-uid", "deploy/owner.yaml", f"ownerReferences:\n  - uid: {_uuid()}\n"),
    (
        "uuid",
        "fr-android-client-id",
        "android/app/google-services.json",
        f'{{"client_id": "{_uuid()}"}}\n',
    ),
    (
        "uuid",
        "fr-token-uuid-id",
        "tests/fixtures/tokens.json",
        f'{{"token_id": "{_uuid()}", "scopes": ["read_api"]}}\n',
    ),
    (
        "base64-data",
        "fr-ico",
        "web/public/favicon.txt",
        f"data:image/x-icon;base64,{base64.b64encode(_rng.randbytes(70)).decode()}\n",
    ),
    (
        "base64-data",
        "fr-snapshot-b64",
        "tests/__snapshots__/api.snap",
        f'exports[`avatar 1`] = `"{base64.b64encode(_rng.randbytes(45)).decode()}"`;\n',
    ),
    (
        "base64-data",
        "fr-x509-b64-der",
        "tests/fixtures/cert.py",
        f'CERT_DER = base64.b64decode("MII{_b64(80)}")\n',
    ),
    (
        "cli-flag",
        "fr-openssl-pass-env",
        "scripts/tls.sh",
        "openssl pkcs12 -export -in c.pem -inkey k.pem -passout env:P12_PASSWORD -out c.p12\n",
    ),
    (
        "cli-flag",
        "fr-gpg-passphrase-fd",
        "scripts/sign.sh",
        "gpg --batch --passphrase-fd 0 --sign dist/app.tar.gz\n",
    ),
    (
        "cli-flag",
        "fr-vault-token-flag-ref",
        "scripts/vault.sh",
        'vault login -no-print "$VAULT_TOKEN"\n',
    ),
    (
        "cli-flag",
        "fr-ssh-keygen-empty",
        "scripts/keys.sh",
        "ssh-keygen -t ed25519 -N '' -f ./deploy_key\n",
    ),
    (
        "cli-flag",
        "fr-curl-netrc",
        "scripts/api.sh",
        "curl --netrc-file ~/.netrc https://api.ledger.io/v1/health\n",
    ),
    (
        "config-value",
        "fr-odbc-trusted",
        "odbc.ini",
        "[ledger]\nDriver=PostgreSQL\nTrusted_Connection=yes\n",
    ),
    (
        "config-value",
        "fr-redis-acl-off",
        "deploy/redis.conf",
        "protected-mode yes\n# masterauth <master-password>\n",
    ),
    (
        "config-value",
        "fr-oauth-grant-type",
        "config/oauth.yaml",
        "oauth:\n  grant_type: client_credentials\n  token_url: https://id.ledger.io/token\n",
    ),
    (
        "config-value",
        "fr-token-refresh",
        "config/auth.yaml",
        "token_refresh_interval: 300\nsecret_rotation_days: 30\n",
    ),
    (
        "config-value",
        "fr-cookie-secure",
        "config/app.ini",
        "[session]\ncookie_secure = true\nsecret_backend = vault\n",
    ),
    (
        "prose",
        "fr-md-rotate",
        "docs/security.md",
        "Rotate the token: revoke it in GitLab, then update the CI variable.\n",
    ),
    (
        "prose",
        "fr-comment-password-policy",
        "app/users.py",
        "# Password: at least 12 characters, checked against the breach list.\n",
    ),
    (
        "prose",
        "fr-yaml-help",
        "config/schema.yaml",
        "  secret:\n    help: The shared secret GitLab signs webhooks with.\n",
    ),
    (
        "code",
        "fr-py-getpass",
        "scripts/setup.py",
        'password = getpass.getpass("Database password: ")\n',
    ),
    (
        "code",
        "fr-js-token-header-read",
        "server/auth.js",
        "const token = req.headers.authorization?.split(' ')[1];\n",
    ),
    (
        "code",
        "fr-sql-password-col-update",
        "db/migrate.sql",
        "UPDATE users SET password_hash = crypt(password, gen_salt('bf'));\n",
    ),
    (
        "code",
        "fr-ts-secret-generic",
        "src/vault.ts",
        "export async function readSecret<T>(path: string): Promise<T> {\n",
    ),
]
for category, id_, path, text in fresh:
    L(id_, category, path, text)


# =============================================================================================
# Field: cases met on real public repositories (Sphinx, astropy) after the rounds above; the
# reST ``:token:`` role was redacted until it was added here.
# =============================================================================================
_SPLIT = "field"
field = [
    ("prose", "fd-rst-token-role", "docs/grammar.rst", "- P1:A: :token:`P1:A`\n"),
    ("prose", "fd-rst-token-role-title", "docs/ref.rst", "* :token:`try statement <try_stmt>`\n"),
    (
        "prose",
        "fd-rst-productionlist",
        "docs/ref.rst",
        ".. productionlist::\n   try_stmt: try1_stmt | try2_stmt\n",
    ),
    (
        "prose",
        "fd-docstring-param-token",
        "app/client.py",
        '    """\n    :param token: The GitLab token used to authenticate.\n    :type password: str\n    """\n',
    ),
    (
        "prose",
        "fd-docstring-google-token",
        "app/client.py",
        '    """\n    Args:\n        token (str): the personal access token\n        password: The password to log in with.\n    """\n',
    ),
]
for category, id_, path, text in field:
    L(id_, category, path, text)
# a literal header secret in a test's config (Sphinx's linkcheck tests): a value, so redacted
P(
    "fd-header-secret",
    "tests/test_linkcheck.py",
    'headers = {"X-Secret": "open sesami"}\n',
    ("secret", "open sesami"),
)


def cases() -> list[Case]:
    """Every labelled case, in a fixed order (the same values on every run)."""
    seen: set[str] = set()
    for c in _CASES:
        assert c.id not in seen, f"duplicate case id {c.id}"
        seen.add(c.id)
    return list(_CASES)
