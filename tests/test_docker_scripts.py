"""The ops scripts in docker/ run for real against processes on loopback.

health_check_all.sh probes a small HTTP stub server (200 / 503 / unreachable, with retries)
and a Redis-protocol stub; validate_env.sh checks env files, ports and model files;
backup.sh / restore.sh round-trip an embedded data dir and a Qdrant snapshot through a stub
of Qdrant's snapshot REST API, and refuse corrupt backups. No Docker engine is involved.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"

pytestmark = pytest.mark.integration

# --- loopback stubs ------------------------------------------------------------------------------

Response = tuple[int, bytes, str]  # status, body, content type


class Stub:
    """An HTTP server on 127.0.0.1 whose answers the test sets per (method, path)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Response] | Callable[..., Response]] = {}
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                request = {
                    "method": self.command,
                    "path": url.path,
                    "query": parse_qs(url.query),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
                stub.requests.append(request)
                route = stub.routes.get((self.command, url.path))
                if route is None:
                    status, payload, ctype = 404, b'{"status": "not found"}', "application/json"
                elif callable(route):
                    status, payload, ctype = route(request)
                else:
                    status, payload, ctype = route[0] if len(route) == 1 else route.pop(0)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def set(self, method: str, path: str, *responses: Response) -> None:
        self.routes[(method, path)] = list(responses)

    def ok(self, *paths: str) -> None:
        for path in paths:
            self.set("GET", path, (200, b'{"status": "ok"}', "application/json"))

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r["path"] == path)


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)


class _RedisHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        authed = self.server.password is None  # type: ignore[attr-defined]
        for raw in self.rfile:
            words = raw.decode().strip().split()
            if not words:
                continue
            if words[0].upper() == "AUTH":
                authed = words[-1] == self.server.password  # type: ignore[attr-defined]
                self.wfile.write(b"+OK\r\n" if authed else b"-WRONGPASS invalid password\r\n")
            elif words[0].upper() == "PING":
                self.wfile.write(b"+PONG\r\n" if authed else b"-NOAUTH Authentication required\r\n")
            self.wfile.flush()


@contextlib.contextmanager
def redis_stub(password: str | None) -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RedisHandler)
    server.daemon_threads = True
    server.password = password  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a docker/ script with the venv's python3 first on PATH."""
    base = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        ["bash", str(DOCKER / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


# --- health_check_all.sh -------------------------------------------------------------------------

FAST = ["--retries", "1", "--interval", "0", "--timeout", "3"]


def test_health_check_passes_when_selected_services_answer_200(stub: Stub) -> None:
    stub.ok("/readyz")
    env = {"CODERAG_API_URL": stub.url, "QDRANT_URL": stub.url + "/"}
    result = run("health_check_all.sh", "--only", "coderag,qdrant", *FAST, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^ok\s+coderag\s+http://127\.0\.0\.1:\d+/readyz$", result.stdout, re.M)
    assert re.search(r"^ok\s+qdrant\s+", result.stdout, re.M)
    assert "all 2 services healthy" in result.stdout
    assert stub.hits("/readyz") == 2


def test_health_check_fails_on_503_and_shows_why(stub: Stub) -> None:
    stub.ok("/health/liveliness")
    stub.set("GET", "/readyz", (503, b'{"redis": "unreachable"}', "application/json"))
    env = {"CODERAG_API_URL": stub.url, "LITELLM_URL": stub.url}
    result = run("health_check_all.sh", "--only", "coderag,litellm", *FAST, env=env)
    assert result.returncode == 1
    assert re.search(r"^FAIL\s+coderag\s+.*HTTP 503.*redis.*unreachable", result.stdout, re.M)
    assert re.search(r"^ok\s+litellm\s+", result.stdout, re.M)
    assert "unhealthy: coderag" in result.stderr


def test_health_check_retries_until_the_service_is_up(stub: Stub) -> None:
    down = (503, b'{"index": "loading"}', "application/json")
    stub.set("GET", "/readyz", down, down, (200, b"{}", "application/json"))
    env = {"CODERAG_API_URL": stub.url}
    args = ["--only", "coderag", "--retries", "5", "--interval", "0.05"]
    result = run("health_check_all.sh", *args, env=env)
    assert result.returncode == 0, result.stdout
    assert stub.hits("/readyz") == 3


def test_health_check_gives_up_after_the_retries(stub: Stub) -> None:
    stub.set("GET", "/readyz", (503, b"{}", "application/json"))
    env = {"CODERAG_API_URL": stub.url}
    args = ["--only", "coderag", "--retries", "3", "--interval", "0"]
    result = run("health_check_all.sh", *args, env=env)
    assert result.returncode == 1
    assert stub.hits("/readyz") == 3
    assert "after 3 attempts" in result.stdout


def test_health_check_fails_on_an_unreachable_service() -> None:
    env = {"QDRANT_URL": f"http://127.0.0.1:{free_port()}"}
    result = run("health_check_all.sh", "--only", "qdrant", *FAST, env=env)
    assert result.returncode == 1
    assert re.search(r"^FAIL\s+qdrant\s+.*unreachable", result.stdout, re.M)


def test_health_check_default_selection_covers_the_stack(stub: Stub) -> None:
    stub.ok("/readyz", "/metrics", "/health/liveliness", "/healthz", "/-/healthy")
    stub.ok("/api/health", "/health", "/v1/health")
    urls = ["CODERAG_API_URL", "WORKER_METRICS_URL", "WORKER_GPU_METRICS_URL", "QDRANT_URL"]
    urls += ["LITELLM_URL", "VLLM_URL", "TABBY_URL", "CODE_SERVER_URL", "PROMETHEUS_URL"]
    urls += ["GRAFANA_URL"]
    env = dict.fromkeys(urls, stub.url)
    with redis_stub(password="s3cret-pw") as port:
        env["REDIS_URL"] = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
        cpu = run("health_check_all.sh", *FAST, env=env)
        gpu = run("health_check_all.sh", "--gpu", *FAST, env=env)
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    checked = set(re.findall(r"^ok\s+(\S+)", cpu.stdout, re.M))
    assert checked == {
        "coderag", "worker", "qdrant", "redis", "litellm", "code-server", "prometheus", "grafana",
    }  # fmt: skip
    assert gpu.returncode == 0, gpu.stdout
    assert set(re.findall(r"^ok\s+(\S+)", gpu.stdout, re.M)) - checked == {
        "vllm",
        "tabby",
        "worker-gpu",
    }
    assert "s3cret-pw" not in cpu.stdout + cpu.stderr, "the Redis password is printed"


def test_health_check_redis_ping_with_and_without_the_password() -> None:
    with redis_stub(password="right-password") as port:
        good = run(
            "health_check_all.sh", "--only", "redis", *FAST,
            env={"REDIS_URL": f"redis://:right-password@127.0.0.1:{port}"},
        )  # fmt: skip
        bad = run(
            "health_check_all.sh", "--only", "redis", *FAST,
            env={"REDIS_URL": f"redis://:wrong-password@127.0.0.1:{port}"},
        )  # fmt: skip
    assert good.returncode == 0, good.stdout
    assert bad.returncode == 1
    assert "WRONGPASS" in bad.stdout


def test_health_check_falls_back_to_python_without_curl(stub: Stub, tmp_path: Path) -> None:
    stub.ok("/readyz")
    stub.set("GET", "/-/healthy", (503, b"not ready", "text/plain"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "seq", "sed", "sleep", "mktemp", "head", "tr", "rm", "cat"):
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {"PATH": str(bin_dir), "CODERAG_API_URL": stub.url, "PROMETHEUS_URL": stub.url}
    result = subprocess.run(
        [str(bin_dir / "bash"), str(DOCKER / "health_check_all.sh"), "--only",
         "coderag,prometheus", *FAST],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^ok\s+coderag", result.stdout, re.M)
    assert re.search(r"^FAIL\s+prometheus\s+.*HTTP 503: not ready", result.stdout, re.M)


def test_health_check_rejects_unknown_services() -> None:
    result = run("health_check_all.sh", "--only", "coderag,mysql")
    assert result.returncode == 2
    assert "unknown service 'mysql'" in result.stderr


# --- validate_env.sh -----------------------------------------------------------------------------


def _good_env(tmp_path: Path, **overrides: str) -> Path:
    vsix = tmp_path / "continue.vsix"
    with zipfile.ZipFile(vsix, "w") as zf:
        zf.writestr("extension.vsixmanifest", "<PackageManifest/>")
    values = {
        "CODERAG_API_TOKENS": "'" + json.dumps({"t0k3n-of-an-operator-0123456789": ["*"]}) + "'",
        "CODERAG_GATEWAY_TOKEN": "d3l3gation-for-the-gateway-0123456789",
        "CODERAG_GITLAB_URL": "https://gitlab.bank.internal",
        "CODERAG_GITLAB_TOKEN": "glpat-0123456789abcdefghij",
        "CODERAG_PUBLIC_URL": "https://coderag.bank.internal",
        "CODERAG_QDRANT_API_KEY": "9f86d081884c7d659a2feaa0c55ad015",
        "REDIS_PASSWORD": "3c59dc048e8850243be8079a5c74d079",
        "LITELLM_MASTER_KEY": "sk-b6d767d2f8ed5d21a44b0e5886680cb9",
        "VLLM_API_KEY": "37693cfc748049e45d87b8c7d8b9aacd",
        "GRAFANA_ADMIN_PASSWORD": "1ff1de774005f8da13f42943881c655f",
        "CODE_SERVER_PASSWORD": "8e296a067a37563370ded05f5a3bf3ec",
        "KEYCLOAK_HOSTNAME": "login.bank.internal",
        "KEYCLOAK_BOOTSTRAP_ADMIN_USER": "bootstrap-admin",
        "KEYCLOAK_BOOTSTRAP_ADMIN_PASSWORD": "a87ff679a2f3e71d9181a67b7542122c",
        "KEYCLOAK_DB_PASSWORD": "e4da3b7fbbce2345d7772b0674a318d5",
        "CONTINUE_VSIX": str(vsix),
        "CHAT_MODEL_DIR": str(tmp_path / "models" / "chat"),
        "TABBY_MODEL_DIR": str(tmp_path / "models" / "tabby"),
    }
    values.update(overrides)
    path = tmp_path / "stack.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def _validate(env_file: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    ports = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    return run(
        "validate_env.sh", "--env-file", str(env_file), "--skip-docker",
        "--min-disk-gb", "0", "--disk-path", str(tmp_path), "--ports", ports, *args,
    )  # fmt: skip


def test_validate_env_passes_on_a_complete_setup(tmp_path: Path) -> None:
    result = _validate(_good_env(tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert "FAIL" not in result.stdout


def test_validate_env_lists_every_placeholder_of_the_example(tmp_path: Path) -> None:
    result = _validate(DOCKER / ".env.example", tmp_path)
    assert result.returncode == 1
    placeholder_line = next(
        line for line in result.stdout.splitlines() if "placeholder secrets" in line
    )
    for key in ("CODERAG_GITLAB_TOKEN", "CODERAG_QDRANT_API_KEY", "CODERAG_API_TOKENS",
                "CODERAG_GATEWAY_TOKEN", "REDIS_PASSWORD", "LITELLM_MASTER_KEY",
                "GRAFANA_ADMIN_PASSWORD", "KEYCLOAK_DB_PASSWORD"):  # fmt: skip
        assert key in placeholder_line
    assert "shorter than 16 characters" in result.stdout
    assert "CODERAG_GATEWAY_TOKEN is shorter than 16 characters" in result.stdout
    assert "Continue VSIX missing" in result.stdout
    assert "check(s) failed:" in result.stderr


def test_validate_env_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(
            "validate_env.sh", "--env-file", str(_good_env(tmp_path)), "--skip-docker",
            "--min-disk-gb", "0", "--disk-path", str(tmp_path), "--ports", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port 127.0.0.1:{port} not free" in result.stdout


def test_validate_env_checks_the_model_directories_for_gpu(tmp_path: Path) -> None:
    env_file = _good_env(tmp_path)
    missing = _validate(env_file, tmp_path, "--gpu")
    assert missing.returncode == 1
    assert "vLLM model directory incomplete" in missing.stdout
    assert "Tabby model directory incomplete" in missing.stdout
    chat = tmp_path / "models" / "chat"
    chat.mkdir(parents=True)
    (chat / "config.json").write_text("{}")
    (chat / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 16)
    ggml = tmp_path / "models" / "tabby" / "ggml"
    ggml.mkdir(parents=True)
    (ggml.parent / "tabby.json").write_text("{}")
    (ggml / "model-00001-of-00001.gguf").write_bytes(b"GGUF")
    present = _validate(env_file, tmp_path, "--gpu")
    assert re.search(r"^ok\s+vLLM model ", present.stdout, re.M)
    assert re.search(r"^ok\s+Tabby model ", present.stdout, re.M)


def test_validate_env_refuses_a_gateway_token_that_is_also_a_service_token(
    tmp_path: Path,
) -> None:
    token = "one-token-for-both-0123456789abcdef"
    env_file = _good_env(
        tmp_path,
        CODERAG_API_TOKENS="'" + json.dumps({token: ["*"]}) + "'",
        CODERAG_GATEWAY_TOKEN=token,
    )
    result = _validate(env_file, tmp_path)
    assert result.returncode == 1
    assert "CODERAG_GATEWAY_TOKEN is also a key of CODERAG_API_TOKENS" in result.stdout
    # coderag itself would refuse to start with it (coderag/settings.py)
    assert "a delegation token must not be a service token" in result.stdout


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("short-gw-token", "CODERAG_GATEWAY_TOKEN is shorter than 16 characters"),
        ('quote"in-the-gateway-token-0123', "has a quote, backslash or blank"),
        ("backslash\\in-the-gateway-token-0123", "has a quote, backslash or blank"),
    ],
    ids=["short", "quote", "backslash"],
)
def test_validate_env_refuses_a_bad_gateway_token(tmp_path: Path, token: str, message: str) -> None:
    result = _validate(_good_env(tmp_path, CODERAG_GATEWAY_TOKEN=token), tmp_path)
    assert result.returncode == 1
    assert re.search(rf"^FAIL\s+env file: .*{re.escape(message)}", result.stdout, re.M)


def test_validate_env_requires_the_gateway_token(tmp_path: Path) -> None:
    result = _validate(_good_env(tmp_path, CODERAG_GATEWAY_TOKEN=""), tmp_path)
    assert result.returncode == 1
    assert re.search(r"required variables not set: .*CODERAG_GATEWAY_TOKEN", result.stdout)


def test_validate_env_requires_what_compose_requires() -> None:
    """validate_env.sh's required list is exactly the ${VAR:?...} variables of compose.yaml."""
    script = (DOCKER / "validate_env.sh").read_text(encoding="utf-8")
    listed = re.search(r"^\s*required=\(([^)]*)\)", script, re.M)
    assert listed
    compose = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    assert set(listed.group(1).split()) == set(re.findall(r"\$\{([A-Z_]+):\?", compose))


def test_validate_env_refuses_the_embed_queue_without_gpu_workers(tmp_path: Path) -> None:
    env_file = _good_env(tmp_path, CODERAG_FULL_INDEX_QUEUE="embed")
    result = _validate(env_file, tmp_path)
    assert result.returncode == 1
    assert "CODERAG_FULL_INDEX_QUEUE=embed but no --gpu" in result.stdout


def test_validate_env_reports_a_missing_env_file(tmp_path: Path) -> None:
    result = _validate(tmp_path / "nope.env", tmp_path)
    assert result.returncode == 1
    assert "nope.env not found" in result.stdout


# --- code-server/start.sh ------------------------------------------------------------------------


def _write_continue_env(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Source start.sh (which then only defines its functions) and write ~/.continue/.env."""
    (home / ".continue").mkdir(parents=True, exist_ok=True)
    script = DOCKER / "code-server" / "start.sh"
    return subprocess.run(
        ["bash", "-c", f'source "{script}" && write_continue_env "$HOME/.continue/.env"'],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LANG": "C.UTF-8", **env},
    )


def test_start_script_writes_no_shared_key(tmp_path: Path) -> None:
    """A fresh home: an empty secrets file, owner-only; Continue sends the developer's own
    CODERAG_TOKEN (coderag-login.sh) to coderag and to the gateway, the IDE holds no key."""
    result = _write_continue_env(tmp_path, LITELLM_API_KEY="sk-gateway-key")
    assert result.returncode == 0, result.stderr
    env_file = tmp_path / ".continue" / ".env"
    assert env_file.read_text(encoding="utf-8") == ""
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert list(env_file.parent.iterdir()) == [env_file], "no temporary file left"


def test_start_script_keeps_the_developers_token(tmp_path: Path) -> None:
    """A re-created container rewrites ~/.continue/.env (its home is a volume): the token
    coderag-login.sh wrote stays, an older stack's service token and gateway key go."""
    env_file = tmp_path / ".continue" / ".env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(
        "CODERAG_API_TOKEN=old-service-token-0123456789\n"
        "LITELLM_API_KEY=sk-old-key\n"
        "CODERAG_TOKEN=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln\n",
        encoding="utf-8",
    )
    result = _write_continue_env(tmp_path)
    assert result.returncode == 0, result.stderr
    assert env_file.read_text(encoding="utf-8").splitlines() == [
        "CODERAG_TOKEN=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
    ]
    assert env_file.stat().st_mode & 0o777 == 0o600
    # and coderag-login.sh's rewrite keeps what start.sh wrote: the two agree on the format
    login = (DOCKER / "keycloak" / "coderag-login.sh").read_text(encoding="utf-8")
    assert "grep -v '^CODERAG_TOKEN=' \"$env_file\"" in login


def test_start_script_run_as_the_entrypoint_does_its_work(tmp_path: Path) -> None:
    # executed (not sourced), it runs: here it stops at the VSIX, which only the container has
    result = run("code-server/start.sh", env={"HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "continue.vsix is missing" in result.stderr


# --- backup.sh / restore.sh ----------------------------------------------------------------------


def make_data_dir(root: Path) -> Path:
    data = root / "data"
    (data / "index" / "shard-0").mkdir(parents=True)
    (data / "index" / "shard-0" / "segment.bin").write_bytes(bytes(range(256)) * 64)
    (data / "index" / "state.json").write_text('{"repo": "g/p", "commit": "abc"}')
    (data / "models" / "openvino").mkdir(parents=True)
    (data / "models" / "openvino" / "model.xml").write_text("<net/>")
    (data / "empty").mkdir()
    (data / "mirrors" / "g" / "p.git").mkdir(parents=True)
    (data / "mirrors" / "g" / "p.git" / "HEAD").write_text("ref: refs/heads/main\n")
    (data / "cache").mkdir()
    (data / "cache" / "vectors.db").write_bytes(b"cache")
    return data


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
        for p in sorted(root.rglob("*"))
    }


def backup(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run("backup.sh", "--out", str(tmp_path / "backups"), "--name", "b1", *args, env=env)


def test_embedded_backup_and_restore_round_trip(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    result = backup(tmp_path, "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    bdir = tmp_path / "backups" / "b1"
    assert result.stdout.strip() == str(bdir)
    assert sorted(p.name for p in bdir.iterdir()) == ["SHA256SUMS", "data.tar.gz", "manifest.json"]
    manifest = json.loads((bdir / "manifest.json").read_text())
    digest = hashlib.sha256((bdir / "data.tar.gz").read_bytes()).hexdigest()
    assert manifest["files"]["data.tar.gz"]["sha256"] == digest
    assert manifest["parts"]["data"]["excluded"] == ["mirrors", "cache"]
    with tarfile.open(bdir / "data.tar.gz") as tar:
        names = tar.getnames()
    assert not any(n.split("/")[1] in ("mirrors", "cache") for n in names if n.count("/"))

    verify = run("restore.sh", str(bdir), "--verify-only")
    assert verify.returncode == 0, verify.stderr

    target = tmp_path / "restored"
    restored = run("restore.sh", str(bdir), "--data-dir", str(target))
    assert restored.returncode == 0, restored.stderr
    expected = {k: v for k, v in tree(data).items() if not k.startswith(("mirrors", "cache"))}
    assert tree(target) == expected


def test_restore_keeps_the_old_data_dir_and_its_mirrors(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    assert backup(tmp_path, "--data-dir", str(data)).returncode == 0
    (data / "index" / "state.json").write_text('{"commit": "newer, broken"}')
    refused = run("restore.sh", str(tmp_path / "backups" / "b1"), "--data-dir", str(data))
    assert refused.returncode == 1
    assert "not empty" in refused.stderr
    forced = run("restore.sh", str(tmp_path / "backups" / "b1"), "--data-dir", str(data), "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((data / "index" / "state.json").read_text())["commit"] == "abc"
    assert (data / "mirrors" / "g" / "p.git" / "HEAD").is_file(), "mirrors carried over"
    old = [p for p in tmp_path.iterdir() if p.name.startswith("data.pre-restore-")]
    assert len(old) == 1 and "broken" in (old[0] / "index" / "state.json").read_text()


def test_restore_refuses_a_corrupted_archive(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    assert backup(tmp_path, "--data-dir", str(data)).returncode == 0
    archive = tmp_path / "backups" / "b1" / "data.tar.gz"
    blob = bytearray(archive.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    archive.write_bytes(bytes(blob))
    target = tmp_path / "restored"
    result = run("restore.sh", str(archive.parent), "--data-dir", str(target))
    assert result.returncode == 1
    assert "checksum verification failed" in result.stderr
    assert "data.tar.gz: FAILED" in result.stderr
    assert not target.exists()
    assert run("restore.sh", str(archive.parent), "--verify-only").returncode == 1


def test_restore_refuses_a_file_swapped_with_matching_sums(tmp_path: Path) -> None:
    """Someone replaced data.tar.gz and regenerated SHA256SUMS: the manifest disagrees."""
    data = make_data_dir(tmp_path)
    assert backup(tmp_path, "--data-dir", str(data)).returncode == 0
    bdir = tmp_path / "backups" / "b1"
    other = io.BytesIO()
    with tarfile.open(fileobj=other, mode="w:gz") as tar:
        info = tarfile.TarInfo("./index/state.json")
        payload = b'{"commit": "evil"}'
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (bdir / "data.tar.gz").write_bytes(other.getvalue())
    subprocess.run(
        "sha256sum manifest.json data.tar.gz > SHA256SUMS", shell=True, cwd=bdir, check=True
    )
    result = run("restore.sh", str(bdir), "--data-dir", str(tmp_path / "restored"))
    assert result.returncode == 1
    assert "manifest checksum does not match SHA256SUMS" in result.stderr
    assert not (tmp_path / "restored").exists()


def test_restore_refuses_a_backup_without_checksums(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path)
    assert backup(tmp_path, "--data-dir", str(data)).returncode == 0
    (tmp_path / "backups" / "b1" / "SHA256SUMS").unlink()
    result = run("restore.sh", str(tmp_path / "backups" / "b1"), "--verify-only")
    assert result.returncode == 1
    assert "no SHA256SUMS" in result.stderr


def test_restore_refuses_an_archive_that_escapes_the_data_dir(tmp_path: Path) -> None:
    bdir = tmp_path / "evil"
    bdir.mkdir()
    with tarfile.open(bdir / "data.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"pwn"))
    digest = hashlib.sha256((bdir / "data.tar.gz").read_bytes()).hexdigest()
    manifest = {
        "format": "coderag-backup/1",
        "parts": {"data": {"file": "data.tar.gz"}},
        "files": {
            "data.tar.gz": {"sha256": digest, "bytes": (bdir / "data.tar.gz").stat().st_size}
        },
    }
    (bdir / "manifest.json").write_text(json.dumps(manifest))
    subprocess.run(
        "sha256sum manifest.json data.tar.gz > SHA256SUMS", shell=True, cwd=bdir, check=True
    )
    result = run("restore.sh", str(bdir), "--data-dir", str(tmp_path / "target"))
    assert result.returncode == 1
    assert "unsafe path in data archive" in result.stderr
    assert not (tmp_path / "outside.txt").exists()


SNAPSHOT = b"QDRANT-SNAPSHOT\x00" + os.urandom(4096)


def qdrant_stub(stub: Stub, *, checksum: str | None = None) -> None:
    """Qdrant's snapshot endpoints for collection `coderag`, guarded by an API key."""
    name = "coderag-4242-2025-01-01-00-00-00.snapshot"
    json_ct = "application/json"

    def guarded(handler: Callable[[dict[str, Any]], Response]) -> Callable[..., Response]:
        def wrapper(request: dict[str, Any]) -> Response:
            if request["headers"].get("api-key") != "qdrant-key-0123456789":
                return 401, b'{"status": {"error": "Invalid api-key"}}', json_ct
            return handler(request)

        return wrapper

    def create(request: dict[str, Any]) -> Response:
        digest = checksum or hashlib.sha256(SNAPSHOT).hexdigest()
        result = {"name": name, "size": len(SNAPSHOT), "checksum": digest}
        return 200, json.dumps({"result": result, "status": "ok", "time": 0.1}).encode(), json_ct

    def upload(request: dict[str, Any]) -> Response:
        return 200, b'{"result": true, "status": "ok", "time": 0.2}', json_ct

    base = "/collections/coderag/snapshots"
    stub.routes[("POST", base)] = guarded(create)
    stub.routes[("GET", f"{base}/{name}")] = guarded(
        lambda r: (200, SNAPSHOT, "application/octet-stream")
    )
    stub.routes[("DELETE", f"{base}/{name}")] = guarded(
        lambda r: (200, b'{"result": true}', json_ct)
    )
    stub.routes[("POST", f"{base}/upload")] = guarded(upload)


def test_server_snapshot_backup_and_restore_through_the_rest_api(
    stub: Stub, tmp_path: Path
) -> None:
    qdrant_stub(stub)
    env = {"QDRANT_URL": stub.url, "QDRANT_API_KEY": "qdrant-key-0123456789"}
    result = backup(tmp_path, "--no-data", env=env)
    assert result.returncode == 0, result.stderr
    bdir = tmp_path / "backups" / "b1"
    assert (bdir / "qdrant-coderag.snapshot").read_bytes() == SNAPSHOT
    manifest = json.loads((bdir / "manifest.json").read_text())
    assert manifest["parts"]["qdrant"]["collection"] == "coderag"
    methods = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in stub.requests]
    assert methods[0] == ("POST", "snapshots") and methods[-1][0] == "DELETE"
    assert "qdrant-key-0123456789" not in result.stdout + result.stderr

    stub.requests.clear()
    restored = run("restore.sh", str(bdir), "--collection", "coderag", env=env)
    assert restored.returncode == 0, restored.stderr
    (upload,) = [r for r in stub.requests if r["path"].endswith("/upload")]
    assert upload["query"]["priority"] == ["snapshot"]
    assert upload["query"]["checksum"] == [hashlib.sha256(SNAPSHOT).hexdigest()]
    assert upload["headers"]["content-type"].startswith("multipart/form-data")
    assert b'name="snapshot"' in upload["body"] and SNAPSHOT in upload["body"]


def test_backup_fails_cleanly_when_qdrant_is_unreachable(tmp_path: Path) -> None:
    env = {"QDRANT_URL": f"http://127.0.0.1:{free_port()}"}
    result = backup(tmp_path, "--no-data", env=env)
    assert result.returncode == 1
    assert "did not create the snapshot" in result.stderr
    assert list((tmp_path / "backups").iterdir()) == [], "a partial backup was left behind"


def test_backup_refuses_a_snapshot_that_does_not_match_qdrants_checksum(
    stub: Stub, tmp_path: Path
) -> None:
    qdrant_stub(stub, checksum="0" * 64)
    env = {"QDRANT_URL": stub.url, "QDRANT_API_KEY": "qdrant-key-0123456789"}
    result = backup(tmp_path, "--no-data", env=env)
    assert result.returncode == 1
    assert "does not match Qdrant's checksum" in result.stderr
    assert list((tmp_path / "backups").iterdir()) == []


def test_backup_with_a_wrong_api_key_fails(stub: Stub, tmp_path: Path) -> None:
    qdrant_stub(stub)
    env = {"QDRANT_URL": stub.url, "QDRANT_API_KEY": "wrong-key"}
    result = backup(tmp_path, "--no-data", env=env)
    assert result.returncode == 1
    assert "Invalid api-key" in result.stderr


def test_backup_needs_something_to_back_up(tmp_path: Path) -> None:
    result = run("backup.sh", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "nothing to back up" in result.stderr
