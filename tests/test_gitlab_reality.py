"""GitLab as it really behaves, against coderag in distributed mode, on loopback.

GitLab sends each webhook once and never again, disables a hook that keeps failing, sends no
hook at all for a push of more than three refs, and renames projects under coderag's feet
(``tests/gitlab_sim.py`` says where each fact comes from). These scenarios run the whole
distributed stack with real processes: a private ``redis-server`` with the append-only file
on (as ``docker/compose.yaml`` runs it), the Qdrant stand-in (``tests/standin.py``), a Celery
worker process (``tests/launch_worker.py``), the API in its own process
(``tests/launch_api.py``: it is SIGKILLed in one scenario), and the simulator as GitLab: its
REST API (through which coderag creates and checks hooks) and its webhook sender. Git
repositories are real bare repositories, the projects' clone URLs.

1. Redis down for 30 s during 100 pushes to 5 repositories: every delivery answered 2xx
   (the spool), the hooks never disabled, nothing lost.
2. The API SIGKILLed right after answering a push that only its spool holds (Redis down);
   Redis back, API restarted: the push is indexed.
3. A delivery lost on the way: reflected by the next reconciliation.
4. A push of five refs (GitLab sends no hook): all five indexed by reconciliation.
5. A rename between two pushes: indexed under the new path, nothing re-embedded.
6. A hook disabled by GitLab: status and metrics show it; re-enabled where the token allows.

Scenarios 1 and 2 run with reconciliation off (an interval of an hour), so what they prove is
the webhook path alone; then the worker restarts with a 3 s interval for 3-6. Each
scenario ends with the index equal to a fresh index of every tracked branch's newest commit
(``tests/ingest_support.snapshot``), and prints one ``RELIABILITY-FIGURE {json}`` line (run
with ``-s``) for docs/RELIABILITY.md. The fast tests at the top pin the simulator itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from coderag.settings import Settings
from tests.gitlab_sim import Delivery, GitLabSim, HookState
from tests.ingest_support import NULL_SHA, Remote, snapshot
from tests.redis_support import RedisServer
from tests.standin import connect, free_port, start_standin

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
GL_TOKEN = "glpat-realityTestToken01234567"
COLLECTION = "reality"
DEBOUNCE_S = 0.3
LOCK_TTL_S = 3.0
SWEEP_S = 1.0
STALE_S = 8.0
RECONCILE_OFF_S = 0.0
"""Reconciliation off (interval 0) while the webhook path alone is under test (1, 2)."""
RECONCILE_ON_S = 3.0
"""Reconciliation interval of scenarios 3-6 (production default: 300 s)."""
OUTAGE_S = 30.0
SECRET_KEY = "reality-secret-key-0123456789-abcdefghij"
"""Seals the signing tokens of the signed hooks (``CODERAG_SECRET_KEY``)."""
WORDS = ["ledger", "settlement", "invoice", "payment", "refund", "account", "balance", "fee"]


def figure(**data: Any) -> None:
    print("\nRELIABILITY-FIGURE " + json.dumps(data, sort_keys=True))


def source(i: int, tag: str) -> str:
    """A small Python module with two distinct functions."""
    rnd = random.Random(f"{tag}-{i}")
    out = [f'"""{tag} module {i}: {" ".join(rnd.sample(WORDS, 3))}."""\n']
    for j in range(2):
        a, b = rnd.sample(WORDS, 2)
        out.append(
            f"\n\ndef {a}_{b}_{tag}_{i}_{j}(items):\n"
            f'    """Sum the {a} of every {b} ({tag}, step {j})."""\n'
            f"    return sum(x.get({a!r}, 0) * {rnd.randint(2, 97)} for x in items)\n"
        )
    return "".join(out)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, logs: list[Path] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists()
    )
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


# ====================================================================== the simulator itself
class _Receiver:
    """A webhook endpoint that records what it got and answers ``status`` (or sleeps)."""

    def __init__(self) -> None:
        self.status = 202
        self.delay_s = 0.0
        self.got: list[tuple[dict[str, str], bytes]] = []
        rx = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rx.got.append((dict(self.headers), body))
                time.sleep(rx.delay_s)
                with contextlib.suppress(OSError):  # the sender may have given up (timeout)
                    self.send_response(rx.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/webhooks/gitlab"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sim_project(tmp_path: Path) -> Iterator[tuple[GitLabSim, _Receiver, Remote, int]]:
    rx = _Receiver()
    with GitLabSim(GL_TOKEN, timeout_s=1.0) as sim:
        remote = Remote(tmp_path / "p")
        remote.commit({"a.py": "x = 1\n"}, "one")
        remote.push("main")
        sim.add_project("group/proj", 7, str(remote.bare))
        r = httpx.post(
            f"{sim.url}/api/v4/projects/group%2Fproj/hooks",
            json={"url": rx.url, "token": "s3cret", "push_events": True},
            headers={"PRIVATE-TOKEN": GL_TOKEN},
        )
        assert r.status_code == 201
        yield sim, rx, remote, r.json()["id"]
    rx.close()


def test_sim_sends_each_push_once_shaped_as_gitlab(sim_project):
    sim, rx, remote, hook = sim_project
    before = remote.push("main")
    sha = remote.commit({"b.py": "y = 2\n"}, "two")
    rx.status = 503
    (d,) = sim.push("group/proj", remote, {"main": sha})
    assert d.sent and d.status == 503 and not d.ok
    assert len(rx.got) == 1, "GitLab does not retry a failed delivery"
    headers, raw = rx.got[0]
    body = json.loads(raw)
    assert headers["X-Gitlab-Event"] == "Push Hook" and headers["X-Gitlab-Token"] == "s3cret"
    assert headers["User-Agent"].startswith("GitLab/")
    assert headers["Idempotency-Key"] and headers["X-Gitlab-Event-UUID"]
    assert body["before"] == before and body["after"] == sha and body["ref"] == "refs/heads/main"
    assert body["project"]["id"] == body["project_id"] == 7
    assert body["project"]["path_with_namespace"] == "group/proj"
    assert [c["id"] for c in body["commits"]] == [sha] and body["commits"][0]["added"] == ["b.py"]
    rx.status = 202
    again = sim.resend(d)
    assert again.ok and rx.got[1][0]["Idempotency-Key"] == headers["Idempotency-Key"]
    assert sim.hook_state(hook).recent_failures == 0


def test_sim_disables_after_four_failures_and_for_good_after_forty(sim_project):
    sim, rx, remote, hook = sim_project
    rx.delay_s = 1.5  # over the (shortened) timeout: a failure like any 5xx
    sha = remote.commit({"c.py": "z = 3\n"}, "three")
    (d,) = sim.push("group/proj", remote, {"main": sha})
    assert d.sent and d.status is None and "no answer" in (d.error or "")
    rx.delay_s = 0.0
    assert sim.break_hook("group/proj", remote, "temporarily_disabled") == 3
    st = sim.hook_state(hook)
    assert st.recent_failures == 4 and st.disabled_until is not None
    assert 59 <= st.disabled_until - sim.now() <= 61, "first backoff: one minute"
    rec = httpx.get(
        f"{sim.url}/api/v4/projects/7/hooks/{hook}", headers={"PRIVATE-TOKEN": GL_TOKEN}
    )
    if rec.status_code == 200:  # the hooks GET of tests/gitlab_mock.py, where it exists
        assert rec.json()["alert_status"] == "temporarily_disabled"
    assert sim.hooks[hook]["alert_status"] == "temporarily_disabled"
    n = len(rx.got)
    skipped = sim.push("group/proj", remote, {"main": remote.commit({"d.py": "w = 4\n"})})
    assert not skipped[0].sent and len(rx.got) == n, "a disabled hook sends nothing"
    sim.advance(61)
    assert sim.alert_status(hook) == "executable"  # the backoff expired
    failures = sim.break_hook("group/proj", remote, "disabled")
    assert sim.hook_state(hook).recent_failures == 40 and failures == 36
    assert sim.hooks[hook]["alert_status"] == "disabled"
    sim.advance(10 * 86400)
    assert sim.alert_status(hook) == "disabled", "40 failures: disabled for good"
    # a test delivery re-enables it when it succeeds
    r = httpx.post(
        f"{sim.url}/api/v4/projects/7/hooks/{hook}/test/push_events",
        headers={"PRIVATE-TOKEN": GL_TOKEN},
    )
    assert r.status_code == 201 and sim.alert_status(hook) == "executable"
    assert rx.got[-1][0]["X-Gitlab-Event"] == "Push Hook"


def test_sim_backoff_doubles_up_to_a_day():
    s, now, seen = HookState(), 1000.0, []
    for _ in range(39):
        s.failed(now)
        if s.disabled_until is not None:
            seen.append(s.disabled_until - now)
            now = s.disabled_until + 1
    assert seen[:4] == [60, 120, 240, 480] and max(seen) == 86400
    s.failed(now)
    assert s.alert_status(now + 10**9) == "disabled"


def test_sim_sends_no_hook_for_a_push_of_more_than_three_refs(sim_project):
    sim, rx, remote, _ = sim_project
    sha = remote.commit({"e.py": "v = 5\n"}, "five")
    three = sim.push("group/proj", remote, {"main": sha, "b1": sha, "b2": sha})
    assert len(three) == 3 and len(rx.got) == 3
    four = sim.push("group/proj", remote, {f"c{i}": sha for i in range(4)})
    assert four == [] and len(rx.got) == 3
    assert set(sim.heads("group/proj")) >= {f"refs/heads/c{i}" for i in range(4)}
    gone = sim.push("group/proj", remote, {"b1": None})
    assert json.loads(gone[0].body)["after"] == NULL_SHA


def test_sim_rename_keeps_the_id_and_changes_the_path(sim_project, tmp_path: Path):
    sim, _rx, remote, _ = sim_project
    sim.rename("group/proj", "other/renamed", move_repo=tmp_path / "moved.git")
    assert sim.project("group/proj")["path_with_namespace"] == "other/renamed"
    r = httpx.get(f"{sim.url}/api/v4/projects/group%2Fproj", headers={"PRIVATE-TOKEN": GL_TOKEN})
    assert r.json()["id"] == 7 and r.json()["path_with_namespace"] == "other/renamed"
    (d,) = sim.push(7, remote, {"main": remote.commit({"f.py": "u = 6\n"})})
    body = json.loads(d.body)
    assert body["project"]["path_with_namespace"] == "other/renamed"
    assert body["project"]["id"] == 7
    assert body["project"]["git_http_url"] == str(tmp_path / "moved.git")


def test_sim_signs_deliveries_of_a_hook_with_a_signing_token(sim_project):
    import base64
    import hashlib
    import hmac

    sim, rx, remote, _ = sim_project
    token = "whsec_" + base64.b64encode(b"k" * 32).decode()
    r = httpx.post(
        f"{sim.url}/api/v4/projects/7/hooks",
        json={"url": rx.url, "token": "t2", "signing_token": token},
        headers={"PRIVATE-TOKEN": GL_TOKEN},
    )
    assert r.status_code == 201
    sim.push(7, remote, {"main": remote.commit({"g.py": "t = 7\n"})})
    headers, body = rx.got[-1]
    assert headers["webhook-id"] == headers["Idempotency-Key"]
    msg = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    mac = base64.b64encode(hmac.new(b"k" * 32, msg, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{mac}"


# ====================================================================== the distributed stack
class Stack:
    """The running system: Redis, stand-in, worker process, API process, the simulator."""

    def __init__(self, tmp: Path, model_dir: Path) -> None:
        self.tmp = tmp
        self.model_dir = model_dir
        self.redis_server = RedisServer(tmp / "redis", aof=True)
        self.standin_key = os.urandom(16)
        self.standin_addr: tuple[str, int] = ("", 0)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.api_log = tmp / "api.log"
        self.worker_log = tmp / "worker.log"
        self.remotes: dict[str, Remote] = {}
        self.sim: GitLabSim
        self.http = httpx.Client(base_url=self.url, timeout=30, trust_env=False)
        self.index: Any = None
        self.reconcile_s = RECONCILE_OFF_S

    @property
    def logs(self) -> list[Path]:
        return [self.api_log, self.worker_log]

    def env(self, data: str, cache: str) -> dict[str, str]:
        return {
            **os.environ,
            "CODERAG_DATA_DIR": str(self.tmp / data),
            "CODERAG_CELERY_BROKER_URL": self.redis_server.url(),
            "CODERAG_REDIS_URL": self.redis_server.url(),
            "CODERAG_COLLECTION": COLLECTION,
            "CODERAG_PUSH_DEBOUNCE_SECONDS": str(DEBOUNCE_S),
            "CODERAG_BRANCH_LOCK_TTL_SECONDS": str(LOCK_TTL_S),
            "CODERAG_RECOVERY_INTERVAL_SECONDS": str(SWEEP_S),
            "CODERAG_RECOVERY_STALE_SECONDS": str(STALE_S),
            "CODERAG_RECONCILE_INTERVAL_SECONDS": str(self.reconcile_s),
            "CODERAG_MODEL_EXPORT_DIR": str(self.model_dir),
            "CODERAG_EMBEDDING_CACHE_DIR": str(self.tmp / cache),
            "CODERAG_GITLAB_URL": self.sim.url,
            "CODERAG_GITLAB_TOKEN": GL_TOKEN,
            "CODERAG_PUBLIC_URL": self.url,
            "CODERAG_LOG_JSON": "false",
            "CODERAG_LOG_LEVEL": "WARNING",
            "CODERAG_STANDIN_ADDR": f"{self.standin_addr[0]}:{self.standin_addr[1]}",
            "CODERAG_STANDIN_KEY": self.standin_key.hex(),
            "CODERAG_TEST_API_PORT": str(self.port),
            "CODERAG_SECRET_KEY": SECRET_KEY,
        }

    # -- processes ---------------------------------------------------------------------
    def _spawn(self, module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as fh:
            return subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    def start_worker(self) -> None:
        self.worker = self._spawn(
            "tests.launch_worker", self.env("worker-data", "worker-cache"), self.worker_log
        )

    def start_api(self) -> None:
        self.api = self._spawn("tests.launch_api", self.env("api-data", "api-cache"), self.api_log)

    def wait_api(self, timeout: float = 180) -> None:
        def ready() -> bool:
            assert self.api is not None and self.api.poll() is None, "the API process exited"
            try:
                return self.http.get("/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "the API to be ready", self.logs)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill_api(self) -> None:
        """SIGKILL: no shutdown, nothing flushed that was not already on disk."""
        self._stop(self.api, kill=True)
        self.api = None

    def restart_worker(self, *, reconcile_s: float) -> None:
        """The worker again, with this reconciliation interval (in distributed mode the
        workers run the pass; the API does not)."""
        self.reconcile_s = reconcile_s
        self._stop(self.worker)
        t0 = time.time()
        self.start_worker()

        def passed(repo: str = KILLED) -> bool:
            assert self.worker is not None and self.worker.poll() is None, "worker exited"
            return (self.status(repo).get("last_reconciled_at") or 0) > t0

        wait_for(passed, 180, "the worker's first reconciliation pass", self.logs)

    def close(self) -> None:
        self._stop(self.api)
        self._stop(self.worker)
        self.http.close()

    # -- GitLab's side -----------------------------------------------------------------
    def add_repo(
        self,
        repo: str,
        pid: int,
        files: dict[str, str | None],
        branches: list[str] | None = None,
        *,
        signed: bool = False,
    ) -> str:
        """Create the project and register it through ``POST /v1/repos`` (coderag creates
        the hook on the simulator; ``signed``: with a signing token)."""
        remote = Remote(self.tmp / "git" / repo.replace("/", "_"))
        sha = remote.commit(files, "initial")
        remote.push("main")
        self.remotes[repo] = remote
        self.sim.add_project(repo, pid, str(remote.bare))
        created = self.http.post(
            "/v1/repos",
            json={
                "url": f"{self.sim.url}/{repo}",
                "branches": branches or ["main"],
                **({"signed": True} if signed else {}),
            },
        )
        assert created.status_code == 201, created.text
        return sha

    def push(self, repo: str, updates: Mapping[str, str | None], **kw: Any) -> list[Delivery]:
        return self.sim.push(self.sim.project(repo)["id"], self.remotes[repo], updates, **kw)

    def hook(self, repo: str) -> int:
        (hid,) = self.sim.hooks_of(repo)
        return hid

    # -- what coderag says -------------------------------------------------------------
    def status(self, repo: str) -> dict[str, Any]:
        try:
            resp = self.http.get(f"/v1/repos/{repo}/status", timeout=5)
        except httpx.HTTPError:
            return {}
        return resp.json() if resp.status_code == 200 else {}

    def at(self, repo: str, heads: Mapping[str, str]) -> bool:
        """Every branch of ``heads`` indexed at its sha with nothing pending."""
        got = {b["branch"]: b for b in self.status(repo).get("branches", [])}
        return all(
            got.get(br, {}).get("commit") == sha and not got[br].get("pending_commit")
            for br, sha in heads.items()
        )

    def wait_at(self, repo: str, heads: Mapping[str, str], timeout: float = 120) -> float:
        t0 = time.perf_counter()
        wait_for(lambda: self.at(repo, heads), timeout, f"{repo} at {heads}", self.logs)
        return time.perf_counter() - t0

    def snapshot(self, repo: str) -> dict[str, dict[str, Any]]:
        return snapshot(self.index, repo)

    def embedded_vectors(self) -> int:
        """Rows of the worker's embedding cache: every model call leaves one."""
        path = self.tmp / "worker-cache" / "embeddings.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def spool_states(self, keys: list[str]) -> dict[str, str]:
        """Spool row state per delivery key, read from the API's spool file."""
        path = Settings(data_dir=self.tmp / "api-data").webhook_spool_file
        out: dict[str, str] = {}
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            for dedupe_key, state in db.execute("SELECT dedupe_key, state FROM deliveries"):
                for k in keys:
                    if dedupe_key and k in dedupe_key:
                        out[k] = state
        return out

    def metrics(self) -> str:
        return self.http.get("/metrics").text


def assert_equals_fresh(
    st: Stack, embedder: Any, root: Path, want: Mapping[str, Mapping[str, str]]
) -> dict[str, int]:
    """The index holds exactly what a fresh index of each repo's branches at these shas
    holds (``IndexService`` directly, same point ids and payloads); returns point counts."""
    from coderag.runtime import build_runtime

    fresh = build_runtime(Settings(data_dir=root, index_backend="edge"))
    fresh.embedder = fresh.indexer.embedder = fresh.retriever.embedder = embedder
    counts = {}
    try:
        for repo, heads in want.items():
            work = st.remotes[repo].work
            for branch, sha in sorted(heads.items()):
                fresh.indexer.index(work, repo, branch, sha)
            expected = snapshot(fresh.index, repo)
            got = st.snapshot(repo)
            assert set(got) == set(expected), f"{repo}: point ids differ from a fresh index"
            assert got == expected, f"{repo}: payloads differ from a fresh index"
            counts[repo] = len(got)
    finally:
        fresh.close()
    return counts


BURST = [f"burst/r{i}" for i in range(5)]
KILLED = "banking/killed"
DROPPED = "banking/dropped"
MULTI = "banking/multi"
OLD_NAME, NEW_NAME = "banking/old-name", "payments/new-name"
HOOKED = "banking/hooked"
SIGNED = {BURST[0], BURST[1], KILLED}
"""Registered with ``"signed": true``: GitLab signs their deliveries (webhook-signature)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Stack]:
    """One stack for the scenarios (each process boot loads the model: many seconds on two
    cores); every repository is registered up front so their first indexes run together."""
    tmp = tmp_path_factory.mktemp("reality")
    st = Stack(tmp, model_dir)
    st.redis_server.start()
    standin, st.standin_addr = start_standin(tmp / "qdrant", st.standin_key)
    from coderag.index.server import ServerIndex

    st.index = ServerIndex(client=connect(st.standin_addr, st.standin_key), collection=COLLECTION)
    with GitLabSim(GL_TOKEN) as sim:
        st.sim = sim
        try:
            st.start_worker()
            st.start_api()
            st.wait_api()
            repos = [*BURST, KILLED, DROPPED, MULTI, OLD_NAME, HOOKED]
            first = {}
            for n, repo in enumerate(repos):
                files = {"README.md": f"# {repo}\n", "src/base.py": source(n, f"base{n}")}
                first[repo] = st.add_repo(
                    repo,
                    200 + n,
                    files,
                    ["main", "feature/*"] if repo == MULTI else None,
                    signed=repo in SIGNED,
                )
            for repo in repos:
                st.wait_at(repo, {"main": first[repo]}, timeout=240)
            yield st
        finally:
            st.close()
            standin.terminate()
            standin.wait(timeout=10)
            st.redis_server.stop(kill=True)


# ---------------------------------------------------------------------------- 1. Redis down
def test_redis_down_30s_during_100_pushes_answers_2xx_and_loses_nothing(
    stack: Stack, tmp_path: Path, embedder: Any
):
    st = stack
    per_repo, pace_s = 20, 1.2
    shas = {
        r: [
            st.remotes[r].commit({f"src/step{i % 5}.py": source(i, f"s{i % 5}")}, f"push {i}")
            for i in range(per_repo)
        ]
        for r in BURST
    }
    deliveries: list[Delivery] = []
    errors: list[BaseException] = []
    mu = threading.Lock()

    def sender(repo: str) -> None:
        try:
            for sha in shas[repo]:
                sent = st.push(repo, {"main": sha})
                with mu:
                    deliveries.extend(sent)
                time.sleep(pace_s)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(r,), daemon=True) for r in BURST]
    for t in threads:
        t.start()
    wait_for(lambda: len(deliveries) >= 2 * len(BURST), 60, "the first pushes")
    down_at = time.time()
    st.redis_server.stop()  # SIGTERM: what `docker stop` does; AOF keeps what it had
    time.sleep(OUTAGE_S)
    st.redis_server.start()
    up_at = time.time()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    non_2xx = [d for d in deliveries if not (d.status and 200 <= d.status < 300)]
    during = [d for d in deliveries if down_at <= d.at <= up_at]
    assert not non_2xx, [(d.sent, d.status, d.error) for d in non_2xx[:5]]
    assert len(deliveries) == per_repo * len(BURST) and all(d.sent for d in deliveries)
    assert len(during) >= len(deliveries) // 2, "the outage did not cover the burst"
    for r in BURST:
        state = st.sim.hook_state(st.hook(r))
        assert state.recent_failures == 0 and st.sim.alert_status(st.hook(r)) == "executable"
    heads = {r: shas[r][-1] for r in BURST}
    t_up = time.perf_counter()
    for r in BURST:
        st.wait_at(r, {"main": heads[r]}, timeout=240)
    converged_s = time.perf_counter() - t_up
    counts = assert_equals_fresh(st, embedder, tmp_path, {r: {"main": heads[r]} for r in BURST})
    keys = [d.key for d in deliveries]
    spooled = st.spool_states(keys)
    assert len(spooled) == len(deliveries), "a 2xx delivery is not in the spool"
    # The heads may be indexed before the last rows are handed over (a run indexes the
    # branch head it fetches): the spool must still drain, every row to the queue.
    wait_for(
        lambda: set(st.spool_states(keys).values()) == {"forwarded"},
        60,
        "the spool to hand every row over",
        st.logs,
    )
    drained_s = time.perf_counter() - t_up
    pending_at_convergence = sum(1 for v in spooled.values() if v != "forwarded")
    spooled = st.spool_states(keys)
    # A person presses "Resend request" (same Idempotency-Key; signed: same webhook-id, a
    # fresh timestamp and signature): a duplicate, not a second push.
    resent = [
        st.sim.resend(next(d for d in deliveries if d.project_id == st.sim.project(r)["id"]))
        for r in (BURST[0], BURST[-1])  # one signed hook, one unsigned
    ]
    assert [(x.status, json.loads(x.answer)["status"]) for x in resent] == [
        (200, "duplicate"),
        (200, "duplicate"),
    ]
    assert len(st.spool_states([x.key for x in resent])) == 2  # the original rows only
    figure(
        scenario="redis_down_during_pushes",
        pushes=len(deliveries),
        repos=len(BURST),
        outage_s=round(up_at - down_at, 1),
        accepted_during_outage=sum(1 for d in during if d.ok),
        non_2xx=len(non_2xx),
        slowest_answer_s=round(max(d.seconds for d in deliveries), 2),
        hooks_disabled=0,
        lost=0,
        signed_deliveries=sum(1 for d in deliveries if "webhook-signature" in d.headers),
        resends_answered_duplicate=len(resent),
        answered_queued_false=sum(1 for d in deliveries if '"queued":false' in d.answer),
        spool_rows_forwarded=sum(1 for v in spooled.values() if v == "forwarded"),
        spool_rows_pending_when_heads_indexed=pending_at_convergence,
        redis_back_to_spool_drained_s=round(drained_s, 1),
        redis_back_to_all_indexed_s=round(converged_s, 1),
        points=sum(counts.values()),
        equals_fresh=True,
    )


# ---------------------------------------------------------------------------- 2. API SIGKILL
def test_api_sigkilled_after_answering_a_spooled_push_still_indexes_it(
    stack: Stack, tmp_path: Path, embedder: Any
):
    st = stack
    remote = st.remotes[KILLED]
    sha = remote.commit({"src/killed.py": source(1, "killed")}, "spooled only")
    st.redis_server.stop()
    (d,) = st.push(KILLED, {"main": sha})
    st.kill_api()  # right after the 2xx: only the spool file knows the push
    assert d.ok and 200 <= (d.status or 0) < 300, (d.status, d.error)
    spooled = st.spool_states([d.key])
    st.redis_server.start()
    t0 = time.perf_counter()
    st.start_api()
    st.wait_api()
    st.wait_at(KILLED, {"main": sha}, timeout=180)
    restart_to_indexed_s = time.perf_counter() - t0
    counts = assert_equals_fresh(st, embedder, tmp_path, {KILLED: {"main": sha}})
    after = st.spool_states([d.key])
    assert spooled.get(d.key) in ("pending", "forwarding"), spooled
    assert after.get(d.key) == "forwarded", after
    figure(
        scenario="api_sigkill_after_2xx",
        answered=d.status,
        spooled_before_kill=True,
        lost=0,
        api_restart_to_indexed_s=round(restart_to_indexed_s, 1),
        points=counts[KILLED],
        equals_fresh=True,
    )


def reconciling(st: Stack) -> Stack:
    """Scenarios 3-6 need reconciliation: restart the worker with a short interval (once;
    scenarios 1 and 2, which run first, need it off)."""
    if st.reconcile_s != RECONCILE_ON_S:
        st.restart_worker(reconcile_s=RECONCILE_ON_S)
    return st


def scheduled_by_reconciliation(st: Stack, repo: str) -> float:
    """``coderag_reconcile_scheduled_total`` of ``repo`` on the API's /metrics (0 if none):
    branch runs that a reconciliation pass, not a webhook, scheduled."""
    prefix = f'coderag_reconcile_scheduled_total{{repo="{repo}"}} '
    for line in st.metrics().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


# ---------------------------------------------------------------------------- 3. dropped
def test_a_delivery_lost_on_the_way_is_reflected_by_reconciliation(
    stack: Stack, tmp_path: Path, embedder: Any
):
    st = reconciling(stack)
    sha = st.remotes[DROPPED].commit({"src/dropped.py": source(2, "dropped")}, "lost hook")
    before = scheduled_by_reconciliation(st, DROPPED)
    t0 = time.perf_counter()
    (d,) = st.push(DROPPED, {"main": sha}, drop=True)
    assert d.dropped and not d.ok
    seconds = st.wait_at(DROPPED, {"main": sha}, timeout=RECONCILE_ON_S * 10 + 60)
    missed_to_indexed_s = time.perf_counter() - t0
    counts = assert_equals_fresh(st, embedder, tmp_path, {DROPPED: {"main": sha}})
    assert st.sim.hook_state(st.hook(DROPPED)).recent_failures == 1
    scheduled = scheduled_by_reconciliation(st, DROPPED) - before
    assert scheduled >= 1, "the push was not scheduled by reconciliation"
    figure(
        scenario="delivery_dropped",
        reconcile_interval_s=RECONCILE_ON_S,
        missed_delivery_to_indexed_s=round(missed_to_indexed_s, 1),
        waited_s=round(seconds, 1),
        runs_scheduled_by_reconciliation=scheduled,
        lost=0,
        points=counts[DROPPED],
        equals_fresh=True,
    )


# ---------------------------------------------------------------------------- 4. five refs
def test_a_push_of_five_refs_sends_no_hook_and_reconciliation_indexes_all(
    stack: Stack, tmp_path: Path, embedder: Any
):
    st = reconciling(stack)
    remote = st.remotes[MULTI]
    heads: dict[str, str] = {"main": st.sim.heads(MULTI)["refs/heads/main"]}
    for b in ("feature/a", "feature/b"):  # two branches that exist and are indexed already
        remote.checkout(b, create=True)
        heads[b] = remote.commit({f"src/{b}.py": source(3, b.replace("/", "_"))}, b)
        remote.checkout("main")
        (d,) = st.push(MULTI, {b: heads[b]})
        assert d.ok, (d.status, d.error)
    st.wait_at(MULTI, heads)
    for b in ("main", "feature/a", "feature/b", "feature/c", "feature/d"):
        remote.checkout("main")
        if b != "main":
            remote.checkout(b, create=b in ("feature/c", "feature/d"))
        heads[b] = remote.commit({f"src/{b}-5.py": source(5, b.replace("/", "_"))}, f"{b} 5")
    remote.checkout("main")
    before = scheduled_by_reconciliation(st, MULTI)
    t0 = time.perf_counter()
    sent = st.push(MULTI, dict(heads))
    assert sent == [], "GitLab sends no hook for a push of more than 3 refs"
    st.wait_at(MULTI, heads, timeout=RECONCILE_ON_S * 10 + 90)
    seconds = time.perf_counter() - t0
    counts = assert_equals_fresh(st, embedder, tmp_path, {MULTI: heads})
    scheduled = scheduled_by_reconciliation(st, MULTI) - before
    assert scheduled >= len(heads), scheduled
    figure(
        scenario="five_ref_push_no_hook",
        refs=len(heads),
        hooks_sent=0,
        refs_indexed=len(heads),
        runs_scheduled_by_reconciliation=scheduled,
        push_to_all_indexed_s=round(seconds, 1),
        points=counts[MULTI],
        equals_fresh=True,
    )


# ---------------------------------------------------------------------------- 5. rename
def test_a_rename_between_two_pushes_is_indexed_under_the_new_path_without_re_embedding(
    stack: Stack, tmp_path: Path, embedder: Any
):
    st = reconciling(stack)
    remote = st.remotes[OLD_NAME]
    one = remote.commit({f"src/m{i}.py": source(i, "renamed") for i in range(3)}, "before")
    (d,) = st.push(OLD_NAME, {"main": one})
    assert d.ok
    st.wait_at(OLD_NAME, {"main": one})
    vectors_before = st.embedded_vectors()
    st.sim.rename(OLD_NAME, NEW_NAME, move_repo=st.tmp / "git" / "payments_new-name.git")
    st.remotes[NEW_NAME] = remote
    two = remote.commit({"src/m0.py": None}, "after the rename: drop a module")
    (d,) = st.push(NEW_NAME, {"main": two})
    assert d.ok, (d.status, d.error)
    assert json.loads(d.body)["project"]["path_with_namespace"] == NEW_NAME
    st.wait_at(NEW_NAME, {"main": two}, timeout=120)
    wait_for(lambda: not st.snapshot(OLD_NAME), 60, "the old path's points to go", st.logs)
    counts = assert_equals_fresh(st, embedder, tmp_path, {NEW_NAME: {"main": two}})
    re_embedded = st.embedded_vectors() - vectors_before
    old = st.http.get(f"/v1/repos/{OLD_NAME}/status")
    pointer = old.text + old.headers.get("location", "")
    assert NEW_NAME in pointer, (old.status_code, old.text)
    assert re_embedded == 0
    figure(
        scenario="rename_between_pushes",
        old_path=OLD_NAME,
        new_path=NEW_NAME,
        project_id=st.sim.project(NEW_NAME)["id"],
        chunks_re_embedded=re_embedded,
        old_path_answer=old.status_code,
        points=counts[NEW_NAME],
        equals_fresh=True,
    )


# ---------------------------------------------------------------------------- 6. hook disabled
def _hook_health(st: Stack, repo: str) -> str:
    """The hook's alert status as coderag's status reports it ("" when not (yet) shown)."""
    hook = st.status(repo).get("hook") or {}
    return str(hook.get("alert_status") or "")


def hook_metric(st: Stack, repo: str, value: float) -> str | None:
    """The ``coderag_hook_disabled`` line of ``repo`` on the API's /metrics, if it has
    ``value`` (0 executable, 0.5 temporarily disabled, 1 disabled for good)."""
    prefix = f'coderag_hook_disabled{{repo="{repo}"}} '
    for line in st.metrics().splitlines():
        if line.startswith(prefix) and float(line[len(prefix) :]) == value:
            return line
    return None


def test_a_disabled_hook_shows_in_status_and_metrics_and_is_re_enabled_where_allowed(
    stack: Stack, tmp_path: Path, embedder: Any
):
    st = reconciling(stack)
    remote, hook = st.remotes[HOOKED], st.hook(HOOKED)
    # a) temporarily disabled, and the token may not test hooks: reported, not re-enabled
    st.sim.fail_tests_with = 403
    failures = st.sim.break_hook(HOOKED, remote, "temporarily_disabled")
    sha = remote.commit({"src/while_disabled.py": source(6, "disabled")}, "while disabled")
    (d,) = st.push(HOOKED, {"main": sha})
    assert not d.sent, "a disabled hook sends nothing"
    st.wait_at(HOOKED, {"main": sha}, timeout=RECONCILE_ON_S * 10 + 60)
    wait_for(
        lambda: _hook_health(st, HOOKED) == "temporarily_disabled",
        RECONCILE_ON_S * 10 + 30,
        "status to report the disabled hook",
        st.logs,
    )
    metrics_temp = wait_for(
        lambda: hook_metric(st, HOOKED, 0.5), 30, "coderag_hook_disabled 0.5", st.logs
    )
    assert st.sim.alert_status(hook) == "temporarily_disabled"
    # b) allowed: the next reconciliation re-enables it with a test delivery
    st.sim.fail_tests_with = None
    t0 = time.perf_counter()
    wait_for(
        lambda: st.sim.alert_status(hook) == "executable",
        RECONCILE_ON_S * 10 + 30,
        "coderag to re-enable the hook",
        st.logs,
    )
    re_enabled_s = time.perf_counter() - t0
    tests = [x for x in st.sim.deliveries if x.hook_id == hook and x.test]
    assert tests and tests[-1].ok
    wait_for(lambda: _hook_health(st, HOOKED) == "executable", 60, "status executable", st.logs)
    # c) disabled for good (40 failures): reported; pushes still indexed by reconciliation
    st.sim.fail_tests_with = 403
    failures_perm = st.sim.break_hook(HOOKED, remote, "disabled")
    sha2 = remote.commit({"src/for_good.py": source(7, "disabled")}, "disabled for good")
    (d2,) = st.push(HOOKED, {"main": sha2})
    assert not d2.sent
    st.wait_at(HOOKED, {"main": sha2}, timeout=RECONCILE_ON_S * 10 + 60)
    wait_for(
        lambda: _hook_health(st, HOOKED) == "disabled", 60, "status: disabled for good", st.logs
    )
    metrics_perm = wait_for(
        lambda: hook_metric(st, HOOKED, 1.0), 30, "coderag_hook_disabled 1.0", st.logs
    )
    st.sim.fail_tests_with = None
    counts = assert_equals_fresh(st, embedder, tmp_path, {HOOKED: {"main": sha2}})
    figure(
        scenario="hook_disabled",
        failures_to_temporarily_disabled=failures,
        failures_to_disabled=failures_perm,
        temporarily_disabled_re_enabled_s=round(re_enabled_s, 1),
        status_shows=["temporarily_disabled", "executable", "disabled"],
        metric_lines=[metrics_temp, metrics_perm],
        pushes_while_disabled_indexed=2,
        points=counts[HOOKED],
        equals_fresh=True,
    )
