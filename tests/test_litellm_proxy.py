"""The real LiteLLM proxy with coderag's hook, laid out and configured as docker/compose.yaml
runs it, in front of a stand-in model server, reading from the real coderag API.

What runs:

* the gateway: ``litellm --config <dir>/config.yaml`` from ``.venv-gateway`` (built by
  ``scripts/install-gateway.sh``, the release the compose image runs), with
  ``retriever/litellm_hook.py`` copied to ``<dir>/retriever/litellm_hook.py``, next to the
  config: the compose mounts them at ``/app/config/config.yaml`` and
  ``/app/config/retriever/litellm_hook.py``, and LiteLLM loads the callback
  ``retriever.litellm_hook.proxy_handler_instance`` from the config's directory first
  (``get_instance_fn`` in ``litellm/proxy/types_utils/utils.py``). Its environment is the
  compose's ``litellm`` environment, with only the addresses and secrets of this machine put
  in;
* coderag: the app over uvicorn on loopback (:func:`tests.api_support.serve_for_people`),
  with a delegation token for the gateway and a service token, over two indexed repos;
* the model: a stand-in OpenAI-compatible server on loopback (:class:`StandInModel`) that
  answers chat completions (plain and SSE) and the Responses API, and records each body it
  receives, which is what the assertions read;
* between the hook and coderag, :class:`CoderagLink`, a TCP relay the test can switch to
  hanging (connections accepted, never answered) or resetting, for "coderag down".

Two gateways:

* ``shipped``: ``docker/litellm/config.yaml`` byte for byte, with
  ``CODERAG_HOOK_IDENTITY=service`` (the hook reads with a service token's scope) and the
  master key: chat, streaming, ``/v1/responses``, Anthropic ``/v1/messages``, coderag down.
  The compose runs ``identity=user``, under which the master key gets no context by design
  (its ``user_id`` is ``default_user_id``); ``service`` is what lets the shipped file carry
  context here without a per-user key.
* ``per_user``: the same config plus one line, ``general_settings.custom_auth``, with the
  compose's ``CODERAG_HOOK_IDENTITY=user``. Why custom auth: per-user identity in LiteLLM
  comes from virtual keys (``/key/generate {"user_id": ...}``), which need LiteLLM's
  Postgres database through prisma (its query engine is fetched at run time: impossible
  offline), or from JWT auth, an enterprise feature (``user_api_key_auth.py`` raises "JWT
  Auth is an enterprise only feature" without a licence). ``custom_auth`` is open source and
  ends in the same place: the ``UserAPIKeyAuth`` it returns is what LiteLLM hands the hook
  as ``user_api_key_dict`` (``_user_api_key_auth_builder`` returns it as is), exactly as a
  virtual key's or a JWT's would be. The stand-in auth (:data:`GATEWAY_USERS`) maps keys to
  users and key metadata; everything after it (the hook, ``X-Coderag-User``, coderag's
  per-user scope from the fake GitLab, LiteLLM's translation to the model) is real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.support import free_port, stop_process
from tests.api_support import ALPHA, BETA, serve_for_people

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_VENV = ROOT / ".venv-gateway"
GATEWAY_BIN = GATEWAY_VENV / "bin" / "litellm"
INSTALL = "bash scripts/install-gateway.sh"
COMPOSE = ROOT / "docker" / "compose.yaml"
CONFIG = ROOT / "docker" / "litellm" / "config.yaml"
HOOK = ROOT / "retriever" / "litellm_hook.py"
IMAGE = "ghcr.io/berriai/litellm"

PREAMBLE = "Code retrieved from the organisation's repositories"  # retriever.litellm_hook
ANSWER = ("Stand-in ", "model ", "answer.")
QUESTION = "How is a payment refunded once it was settled?"
LEDGER_QUESTION = "How is the ledger closed for a day?"
HOOK_TIMEOUT = 2.0  # the hook's default (CODERAG_HOOK_TIMEOUT unset, as in the compose)
MASTER_KEY = "sk-master-" + os.urandom(8).hex()
PROJECTS = {ALPHA: 401, BETA: 402}
USERS = {"alice": (41, {ALPHA: 20}), "bob": (42, {BETA: 30}), "carol": (43, {ALPHA: 20, BETA: 20})}
DELEGATION = "gateway-" + os.urandom(12).hex()
SERVICE = "service-" + os.urandom(12).hex()
GATEWAY_USERS = {  # the per-user gateway's keys: what a virtual key or a JWT would carry
    "sk-alice-0123456789": {"user_id": "alice"},
    "sk-bob-0123456789": {"user_id": "bob"},
    "sk-carol-0123456789": {"user_id": "carol", "metadata": {"coderag_repos": [BETA]}},
}
CUSTOM_AUTH = '''"""Stand-in for LiteLLM's per-user keys (general_settings.custom_auth)."""

import json
import os

from fastapi import HTTPException
from litellm.proxy._types import UserAPIKeyAuth

KEYS = json.loads(os.environ["GATEWAY_TEST_KEYS"])


async def user_api_key_auth(request, api_key: str) -> UserAPIKeyAuth:
    key = api_key.removeprefix("Bearer ").strip()
    if key not in KEYS:
        raise HTTPException(status_code=401, detail="unknown key")
    return UserAPIKeyAuth(api_key=key, **KEYS[key])
'''


# --- one LiteLLM version ------------------------------------------------------------------


def pinned_versions() -> dict[str, str]:
    """The LiteLLM release named by each place that names one."""
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    image, _, tag = services["litellm"]["image"].partition(":")
    assert image == IMAGE
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    pins = {
        f"pyproject [{extra}]": req.removeprefix("litellm==")
        for extra, reqs in extras.items()
        for req in reqs
        if req.startswith("litellm")
    }
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in pins.values()), pins  # exact pins
    script = (ROOT / "scripts" / "install-gateway.sh").read_text(encoding="utf-8")
    found = re.search(r'^LITELLM_VERSION="([^"]+)"$', script, re.M)
    assert found is not None
    return {
        # LiteLLM publishes each release as ghcr.io/berriai/litellm:v<version> since 1.84
        # (docs.litellm.ai/blog/cleaner-release-versions); the notes of each 1.108.x LTS
        # release name its image, e.g. github.com/BerriAI/litellm/releases/tag/v1.108.1
        # ("cosign verify ... ghcr.io/berriai/litellm:v1.108.1"), and so do v1.108.7's
        "compose image": tag.removeprefix("v"),
        **pins,
        "scripts/install-gateway.sh": found.group(1),
    }


def test_one_litellm_version_everywhere():
    """The gateway image, the tests' litellm and the gateway venv are one release, so what
    the tests prove is what the compose runs."""
    from importlib.metadata import version

    pins = pinned_versions()
    assert {"pyproject [dev]", "pyproject [litellm]"} <= set(pins)
    assert len(set(pins.values())) == 1, pins
    release = pins["compose image"]
    assert version("litellm") == release  # this venv: the in-process hook tests
    if GATEWAY_BIN.exists():
        out = subprocess.run(
            [
                str(GATEWAY_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m;print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert out.stdout.strip() == release, f"stale .venv-gateway: run {INSTALL}"


def test_the_shipped_config_reads_the_model_address_from_the_compose():
    """The config names no host of its own for the model, so the same file runs in the
    compose (vLLM at http://vllm:8000/v1) and here (the stand-in)."""
    cfg = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    chat = next(m for m in cfg["model_list"] if m["model_name"] == "chat")
    assert chat["litellm_params"]["api_base"] == "os.environ/VLLM_API_BASE"
    env = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["litellm"]["environment"]
    assert env["VLLM_API_BASE"] == "http://vllm:8000/v1"


# --- the stand-ins ------------------------------------------------------------------------


class StandInModel:
    """An OpenAI-compatible model server on loopback (what vLLM is to the gateway): chat
    completions, plain and SSE, and the Responses API; every POST body is recorded."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with model._lock:
                    model.received.append((self.path, body))
                if self.path == "/v1/chat/completions":
                    self._chat(body)
                elif self.path == "/v1/responses":
                    self._json(model.response(body))
                else:
                    self._json({"error": {"message": f"no route {self.path}"}}, 404)

            def _json(self, obj: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chat(self, body: dict[str, Any]) -> None:
                if not body.get("stream"):
                    self._json(model.completion(body))
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
                for chunk in model.chunks(body):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.02)
                self.wfile.write(b"data: [DONE]\n\n")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def completion(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(ANSWER)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }

    @staticmethod
    def chunks(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        base = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }
        deltas = [{"role": "assistant", "content": ""}, *({"content": p} for p in ANSWER)]
        for delta in deltas:
            yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

    @staticmethod
    def response(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "resp_standin",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body["model"],
            "output": [
                {
                    "type": "message",
                    "id": "msg_standin",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "".join(ANSWER), "annotations": []}
                    ],
                }
            ],
            "usage": {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13},
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }

    def last(self, path: str) -> dict[str, Any]:
        """The body of the latest request to ``path``."""
        with self._lock:
            return next(body for p, body in reversed(self.received) if p == path)

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class CoderagLink:
    """A TCP relay in front of coderag: ``up`` pipes bytes both ways, ``hanging`` accepts
    connections and never answers (coderag stuck), ``resetting`` resets them on accept
    (coderag's port gone bad). ``accepted`` counts connections: the hook's attempts."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self.mode = "up"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            if self.mode == "hanging":
                self._held.append(conn)
            elif self.mode == "resetting":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(self._target) as upstream:
            back = threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True)
            back.start()
            self._pipe(conn, upstream)
            back.join(timeout=30)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @contextmanager
    def switched(self, mode: str) -> Iterator[None]:
        self.mode = mode
        try:
            yield
        finally:
            self.mode = "up"
            for conn in self._held:
                conn.close()
            self._held.clear()

    def close(self) -> None:
        self._sock.close()


# --- the gateway --------------------------------------------------------------------------


def compose_env(**values: str) -> dict[str, str]:
    """The compose's ``litellm`` environment with this machine's values put in: only
    variables the compose sets may be given, so a renamed one fails here."""
    env = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["litellm"]["environment"]
    unknown = set(values) - set(env)
    assert not unknown, f"not in the compose's litellm environment: {unknown}"
    merged = {k: str(v) for k, v in {**env, **values}.items()}
    assert not [k for k, v in merged.items() if "${" in v], "a compose variable left unset"
    return merged


def lay_out(directory: Path, config: str) -> Path:
    """``config`` as ``<directory>/config.yaml`` and the hook as
    ``<directory>/retriever/litellm_hook.py``: the compose's /app/config."""
    (directory / "retriever").mkdir(parents=True)
    (directory / "config.yaml").write_text(config, encoding="utf-8")
    shutil.copyfile(HOOK, directory / "retriever" / "litellm_hook.py")
    return directory / "config.yaml"


@dataclass
class Gateway:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def client(self, key: str = MASTER_KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            trust_env=False,
        )

    def wait_up(self, timeout: float = 120) -> None:
        """Until ``/health/liveliness`` answers; raises with the log's tail if LiteLLM exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"litellm exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(
                    f"{self.url}/health/liveliness", timeout=2, trust_env=False
                ).is_success:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "litellm did not start"
            time.sleep(0.2)


@contextmanager
def run_gateway(config: Path, env: dict[str, str], home: Path) -> Iterator[Gateway]:
    """``litellm --config`` on a free loopback port, started (wait with
    :meth:`Gateway.wait_up`) and stopped when the block ends."""
    port = free_port()
    log = config.parent / "litellm.log"
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    base["NO_PROXY"] = base["no_proxy"] = "127.0.0.1,localhost"
    cmd = [str(GATEWAY_BIN), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=config.parent, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield Gateway(f"http://127.0.0.1:{port}", log, proc)
    finally:
        stop_process(proc)


@dataclass
class Stack:
    model: StandInModel
    link: CoderagLink
    shipped: Gateway
    per_user: Gateway


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, model_dir: Path
) -> Iterator[Stack]:
    if not GATEWAY_BIN.exists():
        pytest.skip(f"no LiteLLM gateway venv (.venv-gateway): build it with `{INSTALL}`")
    root = tmp_path_factory.mktemp("gateway")
    shipped_config = CONFIG.read_text(encoding="utf-8")
    per_user_config = yaml.safe_load(shipped_config)
    per_user_config["general_settings"]["custom_auth"] = "gateway_users.user_api_key_auth"
    model = StandInModel()
    try:
        with serve_for_people(
            root / "coderag",
            embedder,
            model_dir,
            PROJECTS,
            USERS,
            delegation_tokens=[DELEGATION],
            api_tokens={SERVICE: [ALPHA]},
        ) as coderag:
            link = CoderagLink(coderag.url)
            try:
                env = compose_env(
                    LITELLM_MASTER_KEY=MASTER_KEY,
                    VLLM_API_KEY="vllm-" + os.urandom(8).hex(),
                    VLLM_API_BASE=f"{model.url}/v1",
                    CODERAG_API_URL=link.url,
                    CODERAG_API_TOKEN=DELEGATION,
                )
                per_user_dir = root / "per-user"
                per_user = lay_out(per_user_dir, yaml.safe_dump(per_user_config))
                (per_user_dir / "gateway_users.py").write_text(CUSTOM_AUTH, encoding="utf-8")
                with (
                    run_gateway(
                        lay_out(root / "shipped", shipped_config),
                        {**env, "CODERAG_HOOK_IDENTITY": "service", "CODERAG_API_TOKEN": SERVICE},
                        root,
                    ) as shipped,
                    run_gateway(
                        per_user, {**env, "GATEWAY_TEST_KEYS": json.dumps(GATEWAY_USERS)}, root
                    ) as per_user_gw,
                ):
                    shipped.wait_up()  # the two started at once
                    per_user_gw.wait_up()
                    yield Stack(model, link, shipped, per_user_gw)
            finally:
                link.close()
    finally:
        model.close()


def chat(question: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": question},
        ],
        **extra,
    }


def system_of(body: dict[str, Any]) -> str:
    first = body["messages"][0]
    assert first["role"] == "system"
    return first["content"] if isinstance(first["content"], str) else json.dumps(first)


# --- the shipped config -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_a_chat_completion_reaches_the_model_with_coderag_context(stack: Stack):
    with stack.shipped.client() as gw:
        resp = gw.post("/v1/chat/completions", json=chat())
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "".join(ANSWER)
    sent = stack.model.last("/v1/chat/completions")
    system = system_of(sent)
    # merged into the conversation's own system message, the code of the token's scope
    assert system.startswith("Answer briefly.\n\n" + PREAMBLE)
    assert "src/alpha/payments.py" in system and "def refund_payment" in system
    assert "src/beta/" not in system  # the service token reads group/alpha only
    assert sent["messages"][1:] == chat()["messages"][1:]


@pytest.mark.slow
@pytest.mark.integration
def test_a_streamed_chat_completion_streams_with_context(stack: Stack):
    with (
        stack.shipped.client() as gw,
        gw.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in resp.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(ANSWER)
    sent = stack.model.last("/v1/chat/completions")
    assert sent["stream"] is True
    assert "def refund_payment" in system_of(sent)


@pytest.mark.slow
@pytest.mark.integration
def test_the_responses_route_gets_context_in_its_instructions(stack: Stack):
    """LiteLLM sends a hosted_vllm model's /v1/responses to vLLM's own /v1/responses
    (``litellm/llms/hosted_vllm/responses/transformation.py``): the context rides in
    ``instructions``."""
    body = {"model": "chat", "input": QUESTION, "instructions": "Answer briefly."}
    with stack.shipped.client() as gw:
        resp = gw.post("/v1/responses", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"][0]["content"][0]["text"] == "".join(ANSWER)
    sent = stack.model.last("/v1/responses")
    assert sent["input"] == QUESTION
    assert sent["instructions"].startswith("Answer briefly.\n\n" + PREAMBLE)
    assert "def refund_payment" in sent["instructions"]


@pytest.mark.slow
@pytest.mark.integration
def test_the_anthropic_messages_route_gets_context_in_its_system(stack: Stack):
    """LiteLLM translates Anthropic's /v1/messages into a chat completion for a non-Anthropic
    model, ``system`` becoming the first message: the context arrives there."""
    body = {
        "model": "chat",
        "max_tokens": 200,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
    }
    with stack.shipped.client() as gw:
        resp = gw.post("/v1/messages", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"][0]["text"] == "".join(ANSWER)
    sent = stack.model.last("/v1/chat/completions")
    system = system_of(sent)
    assert system.startswith("Answer briefly.\n\n" + PREAMBLE)
    assert "def refund_payment" in system
    assert sent["messages"][-1]["role"] == "user" and QUESTION in json.dumps(sent["messages"][-1])


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("mode", ["hanging", "resetting"])
def test_with_coderag_down_requests_go_through_unchanged_within_the_timeout(
    stack: Stack, mode: str
):
    before = stack.link.accepted
    with stack.link.switched(mode), stack.shipped.client() as gw:
        t0 = time.monotonic()
        resp = gw.post("/v1/chat/completions", json=chat())
        plain_s = time.monotonic() - t0
        sent = stack.model.last("/v1/chat/completions")
        with gw.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as streamed:
            lines = [line for line in streamed.iter_lines() if line]
        streamed_sent = stack.model.last("/v1/chat/completions")
    assert resp.status_code == 200 and streamed.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "".join(ANSWER)
    assert lines[-1] == "data: [DONE]"
    assert sent["messages"] == chat()["messages"]  # as the client sent them
    assert streamed_sent["messages"] == chat()["messages"]
    assert stack.link.accepted >= before + 2  # the hook did try coderag, both times
    assert plain_s < HOOK_TIMEOUT + 3
    if mode == "hanging":
        assert plain_s >= HOOK_TIMEOUT - 0.2  # it waited for coderag up to its timeout
    assert "coderag context unavailable; request passed through" in stack.shipped.log.read_text()
    # and once coderag answers again, so does the context
    with stack.shipped.client() as gw:
        assert gw.post("/v1/chat/completions", json=chat()).status_code == 200
    assert "def refund_payment" in system_of(stack.model.last("/v1/chat/completions"))


# --- per user -----------------------------------------------------------------------------


def ask(stack: Stack, key: str, question: str, **headers: str) -> dict[str, Any]:
    """What the model received for ``question`` asked through the per-user gateway."""
    with stack.per_user.client(key) as gw:
        resp = gw.post("/v1/chat/completions", json=chat(question), headers=headers)
    assert resp.status_code == 200, resp.text
    return stack.model.last("/v1/chat/completions")


@pytest.mark.slow
@pytest.mark.integration
def test_each_user_gets_the_code_they_may_read(stack: Stack):
    alice = system_of(ask(stack, "sk-alice-0123456789", QUESTION))
    assert "def refund_payment" in alice and "src/beta/" not in alice
    bob = system_of(ask(stack, "sk-bob-0123456789", LEDGER_QUESTION))
    assert "def close_ledger" in bob and "src/alpha/" not in bob
    # the same question, two users: each their own code
    bob_refund = ask(stack, "sk-bob-0123456789", QUESTION)
    assert "src/alpha/" not in json.dumps(bob_refund["messages"])


@pytest.mark.slow
@pytest.mark.integration
def test_a_user_naming_a_repo_they_may_not_read_gets_no_context(stack: Stack):
    sent = ask(stack, "sk-alice-0123456789", LEDGER_QUESTION, **{"x-coderag-repos": BETA})
    assert sent["messages"] == chat(LEDGER_QUESTION)["messages"]  # coderag refused: 403


@pytest.mark.slow
@pytest.mark.integration
def test_key_metadata_holds_a_user_to_its_repos(stack: Stack):
    """carol may read both repos in GitLab; her key's ``coderag_repos`` holds her to beta."""
    held = system_of(ask(stack, "sk-carol-0123456789", QUESTION))
    assert held.startswith("Answer briefly.\n\n" + PREAMBLE) and "src/beta/" in held
    assert "src/alpha/" not in held
    asked_alpha = ask(stack, "sk-carol-0123456789", QUESTION, **{"x-coderag-repos": ALPHA})
    assert asked_alpha["messages"] == chat()["messages"]


@pytest.mark.slow
@pytest.mark.integration
def test_an_unknown_key_is_refused_before_any_model_call(stack: Stack):
    """The per-user gateway's auth refuses it (401); the shipped one, with its master key and
    no database, refuses every other key with LiteLLM's 400 ``no_db_connection``."""
    before = stack.model.count()
    with stack.per_user.client("sk-nobody-0123456789") as gw:
        assert gw.post("/v1/chat/completions", json=chat()).status_code == 401
    with stack.shipped.client("sk-nobody-0123456789") as gw:
        resp = gw.post("/v1/chat/completions", json=chat())
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "no_db_connection"
    assert stack.model.count() == before
