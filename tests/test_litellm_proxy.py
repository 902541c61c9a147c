"""The real LiteLLM proxy with coderag's hook, laid out and configured as docker/compose.yaml
runs it, in front of a stand-in model server, reading from the real coderag API.

What runs:

* the gateway: ``litellm --config <dir>/config.yaml`` from ``.venv-gateway`` (built by
  ``scripts/install-gateway.sh``, the release the compose image runs), with
  ``retriever/litellm_hook.py`` and ``retriever/litellm_auth.py`` copied to
  ``<dir>/retriever/``, next to the config: the compose mounts them at
  ``/app/config/config.yaml`` and ``/app/config/retriever/*.py``, and LiteLLM loads the
  callback ``retriever.litellm_hook.proxy_handler_instance`` and the custom auth
  ``retriever.litellm_auth.user_api_key_auth`` from the config's directory first
  (``get_instance_fn`` in ``litellm/proxy/types_utils/utils.py``). Its environment is the
  compose's ``litellm`` environment, with only the addresses and secrets of this machine put
  in;
* coderag: the app over uvicorn on loopback (:func:`tests.api_support.serve_for_people`),
  with a delegation token for the gateway and a service token, over two indexed repos, and
  the OpenID Connect issuer whose tokens it accepts (:class:`tests.oidc_issuer.TestIssuer`,
  shaped like a Keycloak realm, RSA keys published as a JWKS on loopback): the gateway checks
  the same tokens against the same keys, as the compose points both at the stack's Keycloak;
* the model: a stand-in OpenAI-compatible server on loopback (:class:`StandInModel`) that
  answers chat completions (plain and SSE) and the Responses API, and records each body it
  receives, which is what the assertions read;
* between the hook and coderag, :class:`CoderagLink`, a TCP relay the test can switch to
  hanging (connections accepted, never answered) or resetting, for "coderag down".

Two gateways, both with the shipped custom auth (``retriever/litellm_auth.py``):

* ``shipped``: ``docker/litellm/config.yaml`` byte for byte, with
  ``CODERAG_HOOK_IDENTITY=service`` (the hook reads with a service token's scope) and the
  master key: chat, streaming, ``/v1/responses``, Anthropic ``/v1/messages``, coderag down.
  The compose runs ``identity=user``, under which the master key gets no context by design
  (its ``user_id`` is ``default_user_id``); ``service`` is what lets the shipped file carry
  context here with the master key.
* ``per_user``: the compose's ``CODERAG_HOOK_IDENTITY=user`` and the same config, but for the
  ``/autocomplete`` pass-through's target (Tabby in the compose), here the stand-in model, so
  that what a developer's token reaches there is recorded. Each developer sends their own
  OIDC access token: the custom auth verifies it and names the user, the hook reads as that
  user (``X-Coderag-User``), coderag answers with what the fake GitLab lets them read. Why
  custom auth: per-user identity in LiteLLM otherwise comes from virtual keys, which need
  LiteLLM's Postgres database through prisma (its query engine is fetched at run time:
  impossible offline), or from JWT auth, an enterprise feature (``user_api_key_auth.py``
  raises "JWT Auth is an enterprise only feature" without a licence); ``custom_auth`` is open
  source, and the ``UserAPIKeyAuth`` it returns is what LiteLLM hands the hook as
  ``user_api_key_dict`` (``user_api_key_auth_builder`` returns it as is).
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
from tests.oidc_issuer import TestIssuer

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_VENV = ROOT / ".venv-gateway"
GATEWAY_BIN = GATEWAY_VENV / "bin" / "litellm"
INSTALL = "bash scripts/install-gateway.sh"
COMPOSE = ROOT / "docker" / "compose.yaml"
CONFIG = ROOT / "docker" / "litellm" / "config.yaml"
HOOK = ROOT / "retriever" / "litellm_hook.py"
AUTH = ROOT / "retriever" / "litellm_auth.py"
IMAGE = "ghcr.io/berriai/litellm"

PREAMBLE = "Code retrieved from the organisation's repositories"  # retriever.litellm_hook
ANSWER = ("Stand-in ", "model ", "answer.")
QUESTION = "How is a payment refunded once it was settled?"
LEDGER_QUESTION = "How is the ledger closed for a day?"
HOOK_TIMEOUT = 2.0  # the hook's default (CODERAG_HOOK_TIMEOUT unset, as in the compose)
MASTER_KEY = "sk-master-" + os.urandom(8).hex()
PROJECTS = {ALPHA: 401, BETA: 402}
USERS = {"alice": (41, {ALPHA: 20}), "bob": (42, {BETA: 30})}
DELEGATION = "gateway-" + os.urandom(12).hex()
SERVICE = "service-" + os.urandom(12).hex()


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
    """``config`` as ``<directory>/config.yaml``, the hook and the auth as
    ``<directory>/retriever/litellm_hook.py`` and ``litellm_auth.py``: the compose's
    /app/config."""
    (directory / "retriever").mkdir(parents=True)
    (directory / "config.yaml").write_text(config, encoding="utf-8")
    for module in (HOOK, AUTH):
        shutil.copyfile(module, directory / "retriever" / module.name)
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
    idp: TestIssuer
    shipped: Gateway
    per_user: Gateway

    def token(self, username: str, **claims: Any) -> str:
        """``username``'s access token from the issuer coderag and the gateway trust."""
        return self.idp.mint(username=username, sub=f"{username}-subject", **claims)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, model_dir: Path
) -> Iterator[Stack]:
    if not GATEWAY_BIN.exists():
        pytest.skip(f"no LiteLLM gateway venv (.venv-gateway): build it with `{INSTALL}`")
    root = tmp_path_factory.mktemp("gateway")
    shipped_config = CONFIG.read_text(encoding="utf-8")
    model = StandInModel()
    per_user_config = yaml.safe_load(shipped_config)
    [autocomplete] = per_user_config["general_settings"]["pass_through_endpoints"]
    autocomplete["target"] = model.url  # Tabby's place: record what reaches it
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
                    # the compose: the public issuer, the keys over the internal network
                    CODERAG_GATEWAY_OIDC_ISSUER=coderag.idp.issuer,
                    CODERAG_GATEWAY_OIDC_JWKS_URL=coderag.idp.jwks_uri,
                )
                per_user = lay_out(root / "per-user", yaml.safe_dump(per_user_config))
                with (
                    run_gateway(
                        lay_out(root / "shipped", shipped_config),
                        {**env, "CODERAG_HOOK_IDENTITY": "service", "CODERAG_API_TOKEN": SERVICE},
                        root,
                    ) as shipped,
                    run_gateway(per_user, env, root) as per_user_gw,
                ):
                    shipped.wait_up()  # the two started at once
                    per_user_gw.wait_up()
                    yield Stack(model, link, coderag.idp, shipped, per_user_gw)
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
    """Each developer's own access token, as Continue sends it (``apiKey`` of
    docker/continue/config.yaml): the gateway names the user, coderag answers for them."""
    alice = system_of(ask(stack, stack.token("alice"), QUESTION))
    assert alice.startswith("Answer briefly.\n\n" + PREAMBLE)
    assert "def refund_payment" in alice and "src/beta/" not in alice
    bob = system_of(ask(stack, stack.token("bob"), LEDGER_QUESTION))
    assert "def close_ledger" in bob and "src/alpha/" not in bob
    # the same question, two users: each their own code
    bob_refund = ask(stack, stack.token("bob"), QUESTION)
    assert "src/alpha/" not in json.dumps(bob_refund["messages"])
    # an ES256 token of the same issuer (its EC key is in the same JWKS) works alike
    alice_ec = system_of(ask(stack, stack.token("alice", alg="ES256"), QUESTION))
    assert "def refund_payment" in alice_ec and "src/beta/" not in alice_ec


@pytest.mark.slow
@pytest.mark.integration
def test_a_user_naming_a_repo_they_may_not_read_gets_no_context(stack: Stack):
    sent = ask(stack, stack.token("alice"), LEDGER_QUESTION, **{"x-coderag-repos": BETA})
    assert sent["messages"] == chat(LEDGER_QUESTION)["messages"]  # coderag refused: 403


REFUSED: dict[str, tuple[Any, str]] = {
    # name: (token from the issuer, the reason the 401 names)
    "expired": (lambda idp: idp.mint(exp_in=-120), "token expired"),
    "wrong audience": (lambda idp: idp.mint(aud="another-client"), "wrong audience"),
    "alg none": (lambda idp: idp.none_token(), "algorithm 'none' not allowed"),
    "tampered": (lambda idp: idp.tampered_token(), "invalid signature"),
    "HS256 with the public key": (
        lambda idp: idp.hs256_with_public_key_token(),
        "algorithm 'HS256' not allowed",
    ),
    "refresh token": (lambda idp: idp.mint(typ="Refresh"), "token type 'Refresh' not accepted"),
    "other issuer": (
        lambda idp: idp.mint(iss="https://login.example.invalid/realms/coderag"),
        "wrong issuer",
    ),
    "unknown key": (lambda idp: idp.mint(kid="not-a-published-kid"), "unknown signing key"),
    "no username": (lambda idp: idp.mint(username=None), "missing claim 'preferred_username'"),
    "not a JWT": (lambda idp: "sk-nobody-0123456789", "not an OIDC access token"),
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_token_is_refused_with_its_reason_before_any_call(stack: Stack, case: str):
    """LiteLLM sends a ProxyException raised by the custom auth back as is: its code as the
    status, ``{"error": {"message", "type", ...}}``, its headers
    (``_as_proxy_exception`` in litellm/proxy/auth/auth_exception_handler.py,
    ``openai_exception_handler`` in litellm/proxy/proxy_server.py)."""
    make, reason = REFUSED[case]
    before, asked = stack.model.count(), stack.link.accepted
    with stack.per_user.client(make(stack.idp)) as gw:
        resp = gw.post("/v1/chat/completions", json=chat())
        streamed = gw.post("/v1/chat/completions", json=chat(stream=True))
    for answer in (resp, streamed):
        assert answer.status_code == 401, answer.text
        error = answer.json()["error"]
        assert error["type"] == "auth_error" and reason in error["message"], error
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert stack.model.count() == before, "the model was called"
    assert stack.link.accepted == asked, "coderag was asked"


@pytest.mark.slow
@pytest.mark.integration
def test_without_a_token_the_gateway_says_so(stack: Stack):
    before = stack.model.count()
    resp = httpx.post(
        f"{stack.per_user.url}/v1/chat/completions", json=chat(), timeout=60, trust_env=False
    )
    assert resp.status_code == 401
    assert "no bearer token" in resp.json()["error"]["message"]
    assert stack.model.count() == before


@pytest.mark.slow
@pytest.mark.integration
def test_the_master_key_still_works_and_gets_no_context(stack: Stack):
    """The custom auth replaces LiteLLM's own key check; it answers the master key as LiteLLM
    does (user ``default_user_id``), for which the hook reads as nobody."""
    asked = stack.link.accepted
    sent = ask(stack, MASTER_KEY, QUESTION)
    assert sent["messages"] == chat()["messages"]  # as the client sent them
    assert stack.link.accepted == asked  # the hook did not even ask coderag


@pytest.mark.slow
@pytest.mark.integration
def test_a_developer_token_reaches_the_model_routes_only(stack: Stack):
    """Tabby's ``/autocomplete`` pass-through (``auth: true``) takes the developer's token; a
    management route refuses it (403 of LiteLLM's ``allowed_routes`` check,
    ``RouteChecks.is_virtual_key_allowed_to_call_route`` in
    litellm/proxy/auth/route_checks.py), before it reaches anything."""
    body = {"language": "python", "segments": {"prefix": "def refund(", "suffix": ""}}
    token = stack.token("alice")
    with stack.per_user.client(token) as gw:
        gw.post("/autocomplete/v1/completions", json=body)  # the stand-in answers it 404
        assert stack.model.last("/v1/completions") == body
        before = stack.model.count()
        for path, payload in (
            ("/key/generate", {"user_id": "alice"}),
            ("/config/update", {"general_settings": {}}),
        ):
            resp = gw.post(path, json=payload)
            assert resp.status_code == 403, (path, resp.text)
            assert "not allowed to call this route" in resp.text
        assert gw.get("/v1/models").json()["data"][0]["id"] == "chat"
    assert stack.model.count() == before


@pytest.mark.slow
@pytest.mark.integration
def test_the_shipped_gateway_refuses_a_key_it_does_not_know(stack: Stack):
    """The shipped config, master key and custom auth only: any other key is a 401 with the
    reason (without the custom auth, LiteLLM would answer 400 ``no_db_connection``)."""
    before = stack.model.count()
    with stack.shipped.client("sk-nobody-0123456789") as gw:
        resp = gw.post("/v1/chat/completions", json=chat())
    assert resp.status_code == 401
    assert "not an OIDC access token" in resp.json()["error"]["message"]
    assert stack.model.count() == before
