"""Generated requests against the running app's own OpenAPI schema (schemathesis).

The server is the real app over real HTTP on loopback: an Edge index of the two repos of
``tests/api_support.py``, the bundled model, bearer auth on, the webhook and repo
administration routes mounted, ``group/alpha`` registered with a webhook secret, and the
GitLab API mocked (the one thing this project mocks) so that registering a project never
leaves the machine. The schema is loaded from the server's ``/openapi.json``, as a client
would, and every operation gets positive (schema-valid) and negative (schema-violating)
requests, each sent as one of several callers: an unrestricted token, a token scoped to one
repo, a token scoped to none, an unknown token, no token.

Every answer must be documented: no 5xx, the status code and content type the schema
declares, a body that matches the declared response schema, schema-violating input refused
with a 4xx, and every 4xx a JSON ``{"error_code", "detail"}`` with a reason. Requests and
5xx are counted by wrapping the call, so the test asserts how many requests it really made.

Generation is seeded per operation and mode (a CRC of both), never random: a failure
reproduces on the next run. The default suite makes at least ``FUZZ_REQUESTS`` requests,
``CODERAG_SOAK=1`` at least ``SOAK_REQUESTS``, ``CODERAG_FUZZ_REQUESTS=N`` at least N. A JSON
summary line (``fuzz:``) reports requests, 5xx, statuses per operation and seconds.

Known, not fixed here: ``DELETE /v1/repos/{id}`` forgets the record and queues a removal task
that forgets the record again when it runs; a re-registration of the same project in between
is wiped by that task (its new hook stays on GitLab). The generated re-registrations below
wait for the removal to finish.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from coderag.errors import InputError
from tests.api_support import ALPHA, BETA, index_repos, make_repos, running_server
from tests.gitlab_mock import FakeGitLab

pytestmark = pytest.mark.integration

FUZZ_REQUESTS = 1000
SOAK_REQUESTS = 5000
GITLAB_TOKEN = "glpat-fuzz-0123456789abcdef"
SECRET = "fuzz-webhook-secret-0123456789abcdef"
GAMMA = "group/gamma"
ROLES = ("admin", "alpha", "none", "unknown", None)
"""Who sends a generated request: a token role of the server, a token it does not know, or
no ``Authorization`` header at all (``None``)."""


def _target() -> int:
    if os.environ.get("CODERAG_FUZZ_REQUESTS"):
        return int(os.environ["CODERAG_FUZZ_REQUESTS"])
    return SOAK_REQUESTS if os.environ.get("CODERAG_SOAK") == "1" else FUZZ_REQUESTS


@dataclass
class FuzzServer:
    url: str
    tokens: dict[str, str]
    app: Any
    gitlab: FakeGitLab


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, model_dir: Path
) -> Iterator[FuzzServer]:
    """The app as a shared server runs it: auth on, GitLab configured (mocked), alpha
    registered. Its own runtime: generated admin requests register and delete repositories,
    which must not leak into the session's ``api_server``."""
    from coderag.api import create_app
    from coderag.repos import RepoRecord, hash_secret
    from coderag.runtime import build_runtime
    from coderag.settings import Settings

    root = tmp_path_factory.mktemp("fuzz")
    tokens = {role: f"{role}-{secrets.token_hex(16)}" for role in ("admin", "alpha", "none")}
    tokens["unknown"] = f"unknown-{secrets.token_hex(16)}"
    repos = make_repos(root / "src")
    with FakeGitLab(GITLAB_TOKEN) as gitlab:
        gitlab.add_project(BETA, 2, str(repos[BETA]))  # what generated registrations find
        gitlab.add_project(GAMMA, 3, str(repos[BETA]))  # the 409 test's own
        settings = Settings(
            data_dir=root / "data",
            model_export_dir=model_dir,
            index_backend="edge",
            api_tokens={tokens["admin"]: ["*"], tokens["alpha"]: [ALPHA], tokens["none"]: []},
            gitlab_url=gitlab.url,
            gitlab_token=GITLAB_TOKEN,
            public_url="http://127.0.0.1:9",
            log_json=True,
            log_level="WARNING",
        )
        rt = build_runtime(settings)
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        rt.warm_up()
        index_repos(rt, repos)
        app = create_app(settings, runtime=rt)
        try:
            with running_server(app) as url:
                app.state.registry.put(
                    RepoRecord(
                        id=ALPHA,
                        url=str(repos[ALPHA]),
                        branches=["main", "feature/*"],
                        secret_hash=hash_secret(SECRET),
                    )
                )
                yield FuzzServer(url=url, tokens=tokens, app=app, gitlab=gitlab)
        finally:
            rt.close()


# --- checks ---------------------------------------------------------------------------------


def _reasoned_4xx(response: Any) -> str | None:
    """Every 4xx answers why, in the one error shape (None: fine, else what is wrong)."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"{response.status_code} without a JSON body: {response.content[:200]!r}"
    shape = {"error_code", "detail"}
    url = str(getattr(getattr(response, "request", None), "url", ""))
    if url.split("?")[0].endswith("/v1/continue/context"):
        shape |= {"name", "description", "content"}  # also one item Continue shows
    if not isinstance(body, dict) or set(body) != shape:
        return f"{response.status_code} not in the error shape: {str(body)[:200]}"
    if not all(isinstance(body[k], str) and body[k].strip() for k in ("error_code", "detail")):
        return f"{response.status_code} without a reason: {body}"
    return None


@dataclass
class Tally:
    """What was sent and answered, per operation."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, label: str, status: int) -> None:
        self.statuses.setdefault(label, Counter())[status] += 1

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for c in self.statuses.values() for s, n in c.items() if s >= 500)


def _fuzz_operation(
    operation: Any, mode: Any, examples: int, server: FuzzServer, tally: Tally, http: Any
) -> None:
    """Up to ``examples`` generated requests for one operation in one generation mode; the
    first failing one (shrunk by hypothesis) is recorded in ``tally.failures``."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis import checks

    validations: list[Callable[..., Any]] = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
        checks.negative_data_rejection,
    ]

    # A generated URL is never on the mocked GitLab, so registration would stop at "not on the
    # configured GitLab": half the valid registrations name its project, as the admin, to
    # reach the rest (hook, record, first index); one that succeeds is undone at once.
    steer = operation.label == "POST /v1/repos" and mode.value == "positive"

    @seed(zlib.crc32(f"{operation.label} {mode.value}".encode()))  # reproducible, per operation
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        role=st.sampled_from(ROLES),
        on_gitlab=st.booleans(),
    )
    def run(case: Any, role: str | None, on_gitlab: bool) -> None:
        case.headers = {
            k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
        }
        if role is not None:
            case.headers["Authorization"] = f"Bearer {server.tokens[role]}"
        if steer and on_gitlab and isinstance(case.body, dict):
            case.body["url"] = f"{server.gitlab.url}/{BETA}"
            case.headers["Authorization"] = f"Bearer {server.tokens['admin']}"
        response = case.call(session=http, timeout=60)
        tally.add(operation.label, response.status_code)
        if steer and response.status_code == 201:  # unregister: the next one gets as far
            admin = {"Authorization": f"Bearer {server.tokens['admin']}"}
            assert http.delete(f"{server.url}/v1/repos/{BETA}", headers=admin).status_code == 202
            # The removal task forgets whatever record it finds: a registration made before
            # it ran would vanish (a known race, see the module docstring). Let it finish.
            assert server.app.state.dispatcher.wait_idle(60)
        case.validate_response(response, checks=validations)
        problem = _reasoned_4xx(response)
        assert problem is None, problem

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
        tally.failures.append(f"{operation.label} [{mode.value}]: {_explain(exc)}")


def _explain(exc: BaseException) -> str:
    """The message of an exception and of every exception it groups (hypothesis reports a
    failure that a replay did not repeat as a group around the original one)."""
    text = str(exc)
    for sub in getattr(exc, "exceptions", ()):
        text += "\n  " + _explain(sub).replace("\n", "\n  ")
    return text


def test_generated_requests_get_documented_answers_and_no_server_error(
    fuzz_server: FuzzServer,
) -> None:
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(
        f"{fuzz_server.url}/openapi.json", config=schemathesis.Config(), timeout=30
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/search", "POST /v1/webhooks/gitlab", "DELETE /v1/repos/{repo_id}"} <= labels
    # Negative data needs something to violate: a parameter or a body.
    plan = [
        (op, mode)
        for op in operations
        for mode in GenerationMode
        if mode is GenerationMode.POSITIVE or any(op.iter_parameters()) or len(op.body)
    ]
    target = _target()
    tally = Tally()
    t0 = time.perf_counter()
    # An operation without inputs has one request to make; the others share the rest, with a
    # margin for the draws hypothesis rejects before sending. Short of the target (it should
    # not be), a second round asks for more.
    with requests.Session() as http:
        http.trust_env = False  # loopback only, whatever proxy the environment names
        varied = sum(1 for op, _ in plan if any(op.iter_parameters()) or len(op.body))
        examples = math.ceil(1.1 * target / max(varied, 1))
        for _ in range(2):
            for op, mode in plan:
                _fuzz_operation(op, mode, examples, fuzz_server, tally, http)
            if tally.failures or tally.requests >= target:
                break
            examples *= 2
    seconds = time.perf_counter() - t0
    summary = {
        "requests": tally.requests,
        "server_errors": tally.server_errors,
        "operations": len(operations),
        "seconds": round(seconds, 1),
        "requests_per_s": round(tally.requests / seconds, 1),
        "statuses": {label: dict(sorted(c.items())) for label, c in sorted(tally.statuses.items())},
    }
    print("fuzz:", json.dumps(summary))
    assert not tally.failures, "\n\n".join(tally.failures)
    assert tally.server_errors == 0, summary
    assert tally.requests >= target, summary
    for op in operations:  # every operation answered, and not only with errors
        assert tally.statuses.get(op.label), f"{op.label} never called"


# --- a malformed webhook is a 4xx with a reason ---------------------------------------------


def _hook(server: FuzzServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/webhooks/gitlab",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
        trust_env=False,
    )


def _push(repo: str = ALPHA) -> dict[str, Any]:
    return {
        "object_kind": "push",
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": "1" * 40,
        "project": {"id": 1, "path_with_namespace": repo},
    }


MALFORMED: list[tuple[str, bytes, dict[str, str], int, str]] = [
    (
        "no event header",
        json.dumps(_push()).encode(),
        {"X-Gitlab-Token": SECRET},
        400,
        "X-Gitlab-Event",
    ),
    ("not JSON", b'{"object_kind": "push", ', {"X-Gitlab-Event": "Push Hook"}, 400, "JSON"),
    ("not UTF-8", b"\xff\xfe{}", {"X-Gitlab-Event": "Push Hook"}, 400, "JSON"),
    ("a JSON list", b"[1, 2]", {"X-Gitlab-Event": "Push Hook"}, 400, "object"),
    ("unknown event, bad body", b"nope", {"X-Gitlab-Event": "Pipeline Hook"}, 400, "JSON"),
    ("no project", b'{"object_kind": "push"}', {"X-Gitlab-Event": "Push Hook"}, 422, "project"),
    (
        "bad sha",
        json.dumps({**_push(), "after": "xyz"}).encode(),
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET},
        422,
        "after",
    ),
    (
        "unregistered project",  # the same 401 as a wrong token: no oracle of indexed projects
        json.dumps(_push("group/nobody")).encode(),
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET},
        401,
        "unknown project",
    ),
    ("no token", json.dumps(_push()).encode(), {"X-Gitlab-Event": "Push Hook"}, 401, "Token"),
    (
        "wrong token",
        json.dumps(_push()).encode(),
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "guess"},
        401,
        "Token",
    ),
    (
        "key too long",
        json.dumps(_push()).encode(),
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET, "Idempotency-Key": "k" * 300},
        400,
        "Idempotency-Key",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [m[1:] for m in MALFORMED],
    ids=[m[0] for m in MALFORMED],
)
def test_a_malformed_webhook_is_a_4xx_with_a_reason(
    fuzz_server: FuzzServer, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    resp = _hook(fuzz_server, body, headers)
    assert resp.status_code == status, resp.text
    assert _reasoned_4xx(resp) is None, resp.text
    assert reason in resp.json()["detail"], resp.text


def test_an_oversized_webhook_is_a_413_with_a_reason(fuzz_server: FuzzServer) -> None:
    limit = fuzz_server.app.state.settings.webhook_max_bytes
    resp = _hook(fuzz_server, b" " * (limit + 1), {"X-Gitlab-Event": "Push Hook"})
    assert resp.status_code == 413 and str(limit) in resp.json()["detail"], resp.text


def test_registering_a_registered_repo_is_a_409(fuzz_server: FuzzServer) -> None:
    """Through the mocked GitLab: the first registration creates the hook, the second finds
    the repository registered (a conflict with the server's state, not bad input)."""
    admin = {"Authorization": f"Bearer {fuzz_server.tokens['admin']}"}
    body = {"url": f"{fuzz_server.gitlab.url}/{GAMMA}", "branches": ["main"]}
    with httpx.Client(base_url=fuzz_server.url, headers=admin, timeout=60, trust_env=False) as c:
        first = c.post("/v1/repos", json=body)
        assert first.status_code == 201, first.text
        again = c.post("/v1/repos", json=body)
        assert again.status_code == 409, again.text
        assert again.json()["error_code"] == "conflict" and GAMMA in again.json()["detail"]
        assert c.delete(f"/v1/repos/{GAMMA}").status_code == 202
        bad = c.delete("/v1/repos/-group/x")  # no segment starts with "-"
        assert bad.status_code == 422 and "repo_id" in bad.json()["detail"], bad.text


def test_blank_branch_patterns_are_refused_before_gitlab_is_called(fuzz_server: FuzzServer) -> None:
    """Found by schemathesis: ``"branches": [""]`` passed the body's schema, GitLab got a hook,
    then the record refused the pattern: a 500 and an orphaned hook. Now the schema refuses it
    (422), and ``register_repo`` itself refuses it before any GitLab call (400)."""
    from webhooks.gitlab_hooks import register_repo

    admin = {"Authorization": f"Bearer {fuzz_server.tokens['admin']}"}
    hooks_before = len(fuzz_server.gitlab.hooks)
    body = {"url": f"{fuzz_server.gitlab.url}/{GAMMA}", "branches": [" "]}
    resp = httpx.post(
        f"{fuzz_server.url}/v1/repos", json=body, headers=admin, timeout=60, trust_env=False
    )
    assert resp.status_code == 422 and "branches" in resp.json()["detail"], resp.text
    state = fuzz_server.app.state
    with pytest.raises(InputError, match="branch pattern"):
        register_repo(state.settings, state.registry, state.dispatcher, body["url"], ["", " "])
    assert len(fuzz_server.gitlab.hooks) == hooks_before
    assert state.registry.get(GAMMA) is None
