"""Test-only: the distributed stack of ``tests/test_webhooks_e2e.py``, built per fault test on
its **own** redis-server (:class:`tests.redis_support.RedisServer`, so killing or restarting
Redis disturbs nobody else), with handles to break each part: the worker process, Redis, the
index (the stand-in's write switch) and the worker's git mirrors.

Pieces, all real: a private ``redis-server`` on a free loopback port (broker, coordination);
the API's webhook spool in its data dir (de-duplication, and deliveries while Redis is down);
the Qdrant stand-in process (``tests/standin.py``); a Celery worker process
(``tests/launch_worker.py``); the API under uvicorn in this process (sharing the session's
model); git repositories on disk as the GitLab projects' clone URLs. Only GitLab's REST API
is mocked (``tests/gitlab_mock.py``).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from coderag.settings import Settings
from tests.api_support import running_server
from tests.gitlab_mock import FakeGitLab
from tests.ingest_support import Remote, payload, snapshot
from tests.redis_support import RedisServer
from tests.standin import connect, free_port, start_standin

__all__ = ["FaultStack", "corrupt", "fault_stack", "fresh_snapshot", "wait_for"]

ROOT = Path(__file__).resolve().parents[1]
GL_TOKEN = "glpat-faultTestToken0123456789"
COLLECTION = "faults"
DEBOUNCE_S = 0.3
LOCK_TTL_S = 3.0
"""Workers' branch-lock TTL here: a killed worker's lock frees within seconds, not a minute."""
SWEEP_S = 1.0
"""Workers' orphan-sweep interval here (production default: 30 s)."""
STALE_S = 8.0
"""Age of a "scheduled" flag the sweep stops trusting here (production default: 600 s)."""


def wait_for(cond: Callable[[], Any], timeout: float, what: str, log: Path | None = None) -> Any:
    """Poll ``cond`` until truthy; fail with the worker log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-6000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


class FaultStack:
    """The running system and the handles a fault test needs."""

    def __init__(self, tmp: Path, redis_server: RedisServer, model_dir: Path) -> None:
        self.tmp = tmp
        self.redis_server = redis_server
        self.model_dir = model_dir
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = tmp / "worker.log"
        self.worker_data = tmp / "worker-data"
        self.standin_addr: tuple[str, int] = ("", 0)
        self.standin_key = os.urandom(16)
        self.remotes: dict[str, Remote] = {}
        self.secrets: dict[str, str] = {}
        self.http: httpx.Client
        self.app: Any
        self.gitlab: FakeGitLab

    # -- processes ----------------------------------------------------------------------
    def start_worker(self) -> None:
        env = {
            **os.environ,
            "CODERAG_DATA_DIR": str(self.worker_data),
            "CODERAG_CELERY_BROKER_URL": self.redis_server.url(),
            "CODERAG_REDIS_URL": self.redis_server.url(),
            "CODERAG_COLLECTION": COLLECTION,
            "CODERAG_PUSH_DEBOUNCE_SECONDS": str(DEBOUNCE_S),
            "CODERAG_BRANCH_LOCK_TTL_SECONDS": str(LOCK_TTL_S),
            "CODERAG_RECOVERY_INTERVAL_SECONDS": str(SWEEP_S),
            "CODERAG_RECOVERY_STALE_SECONDS": str(STALE_S),
            "CODERAG_MODEL_EXPORT_DIR": str(self.model_dir),
            "CODERAG_EMBEDDING_CACHE_DIR": str(self.tmp / "worker-cache"),
            "CODERAG_LOG_JSON": "false",
            "CODERAG_STANDIN_ADDR": f"{self.standin_addr[0]}:{self.standin_addr[1]}",
            "CODERAG_STANDIN_KEY": self.standin_key.hex(),
        }
        with self.worker_log.open("ab") as log_fh:  # the child keeps its own descriptor
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "tests.launch_worker"],
                cwd=ROOT,
                env=env,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
            )

    def kill_worker(self) -> None:
        """SIGKILL: no warm shutdown, no ack, no lock release (an OOM kill, a lost node)."""
        assert self.worker is not None
        self.worker.kill()
        self.worker.wait(timeout=10)
        self.worker = None

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        self.worker.terminate()  # the interpreter's own exit is not what is tested here
        try:
            self.worker.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait(timeout=10)
        self.worker = None

    def standin(self) -> Any:
        """A fresh client of the stand-in (its fault switch: ``refuse_writes``)."""
        return connect(self.standin_addr, self.standin_key)

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_server.url(), socket_connect_timeout=1.0)

    def mirror(self, repo: str) -> Path:
        """Where the worker keeps its git mirror of ``repo`` (``indexer.mirrors``)."""
        from indexer.mirrors import mirror_path

        return mirror_path(str(self.remotes[repo].bare), Settings(data_dir=self.worker_data))

    # -- GitLab's side --------------------------------------------------------------------
    def add_repo(self, repo: str, files: dict[str, str | None]) -> str:
        """Create the project (one initial commit on main), register it through
        ``POST /v1/repos``; returns the initial sha (indexed once :meth:`settled`)."""
        remote = Remote(self.tmp / "git" / repo.replace("/", "_"))
        sha = remote.commit(files, "initial")
        remote.push("main")
        self.remotes[repo] = remote
        self.gitlab.add_project(repo, 100 + len(self.remotes), str(remote.bare))
        created = self.http.post(
            "/v1/repos", json={"url": f"{self.gitlab.url}/{repo}", "branches": ["main"]}
        )
        assert created.status_code == 201, created.text
        self.secrets[repo] = created.json()["secret"]
        return sha

    def push_hook(
        self,
        repo: str,
        before: str,
        after: str,
        *,
        key: str | None = None,
        http: httpx.Client | None = None,
    ) -> httpx.Response:
        """Deliver a Push Hook as GitLab does, once (``key``: the delivery's
        Idempotency-Key, the same only on a manual "Resend request"; ``http``: a sender
        thread's own client)."""
        body = payload(
            "push",
            repo=repo,
            clone_url=str(self.remotes[repo].bare),
            before=before,
            after=after,
            ref="refs/heads/main",
        )
        body["project"]["id"] = self.gitlab.projects[repo]["id"]  # as GitLab sends it
        headers = {
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Token": self.secrets[repo],
            "Idempotency-Key": key or str(uuid.uuid4()),
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            "User-Agent": "GitLab/17.9.0",
        }
        return (http or self.http).post("/v1/webhooks/gitlab", json=body, headers=headers)

    # -- what the system says -------------------------------------------------------------
    def branch(self, repo: str, branch: str = "main") -> dict[str, Any]:
        resp = self.http.get(f"/v1/repos/{repo}/status")
        if resp.status_code != 200:
            return {}
        return next((b for b in resp.json()["branches"] if b["branch"] == branch), {})

    def settled(self, repo: str, sha: str, branch: str = "main") -> bool:
        """Indexed at ``sha``, nothing pending, nothing queued."""
        try:
            b = self.branch(repo, branch)
            depths = self.app.state.dispatcher.queue_depths()
        except Exception:  # Redis restarting: not settled yet
            return False
        return (
            b.get("commit") == sha and not b.get("pending_commit") and depths.get("index", 0) == 0
        )

    def locked(self, repo: str, branch: str = "main") -> bool:
        with self.redis() as r:
            return bool(r.exists(f"coderag:lock:{repo}:{branch}"))

    def snapshot(self, repo: str) -> dict[str, dict[str, Any]]:
        return snapshot(self.app.state.runtime.index, repo)

    def log_mark(self) -> int:
        """The worker log's current length: count from here with :meth:`log_count`."""
        return self.worker_log.stat().st_size if self.worker_log.exists() else 0

    def log_count(self, since: int, text: str) -> int:
        """Occurrences of ``text`` in the worker log after ``since`` (a :meth:`log_mark`)."""
        with self.worker_log.open("rb") as fh:
            fh.seek(since)
            return fh.read().decode(errors="replace").count(text)


def fresh_snapshot(
    embedder: Any, root: Path, shas: dict[str, tuple[Path, str]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Index each repo's ``(work dir, sha)`` into a fresh Edge index with
    :class:`~indexer.service.IndexService` directly; ``{repo: snapshot}``."""
    from coderag.runtime import build_runtime

    fresh = build_runtime(Settings(data_dir=root, index_backend="edge"))
    fresh.embedder = fresh.indexer.embedder = fresh.retriever.embedder = embedder
    try:
        out = {}
        for repo, (work, sha) in shas.items():
            fresh.indexer.index(work, repo, "main", sha)
            out[repo] = snapshot(fresh.index, repo)
        return out
    finally:
        fresh.close()


@contextlib.contextmanager
def fault_stack(
    tmp: Path, model_dir: Path, embedder: Any, *, aof: bool = False
) -> Iterator[FaultStack]:
    """Start everything (worker warming up while the API starts), tear it all down after."""

    from coderag.api import create_app
    from coderag.index.server import ServerIndex
    from coderag.runtime import build_runtime

    redis_server = RedisServer(tmp / "redis", aof=aof)
    redis_server.start()
    st = FaultStack(tmp, redis_server, model_dir)
    standin, st.standin_addr = start_standin(tmp / "qdrant", st.standin_key)
    st.gitlab = FakeGitLab(GL_TOKEN).__enter__()
    try:
        st.start_worker()
        api_port = free_port()
        settings = Settings(
            data_dir=tmp / "api-data",
            celery_broker_url=redis_server.url(),
            redis_url=redis_server.url(),
            collection=COLLECTION,
            push_debounce_seconds=DEBOUNCE_S,
            gitlab_url=st.gitlab.url,
            gitlab_token=GL_TOKEN,
            public_url=f"http://127.0.0.1:{api_port}",
            log_json=False,
            log_level="WARNING",
        )
        rt = build_runtime(
            settings,
            index=ServerIndex(
                client=connect(st.standin_addr, st.standin_key), collection=COLLECTION
            ),
        )
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        st.app = create_app(settings, runtime=rt)
        with running_server(st.app, port=api_port) as url:
            st.http = httpx.Client(base_url=url, timeout=30)
            yield st
            st.http.close()
    finally:
        st.stop_worker()
        standin.terminate()
        standin.wait(timeout=10)
        st.gitlab.__exit__(None, None, None)
        redis_server.stop(kill=True)


def corrupt(mirror: Path) -> int:
    """Replace every other object file of ``mirror`` with garbage; returns how many.

    Unlink first, then write: a local clone hard-links its objects with the remote's, and
    writing through the link would corrupt "GitLab's" copy as well.
    """
    files = sorted(p for p in (mirror / "objects").rglob("*") if p.is_file())
    files = [p for p in files if p.parent.name not in ("info",)]
    for p in files[::2]:
        size = p.stat().st_size
        p.chmod(0o644)
        p.unlink()
        p.write_bytes(random.Random(str(p)).randbytes(max(16, size // 2)))
    return len(files[::2])
