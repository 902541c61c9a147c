"""Test-only: a fake GitLab that *sends* webhooks the way GitLab does, beside the REST API of
:class:`tests.gitlab_mock.FakeGitLab` (which it extends, so coderag reads the same hooks
through python-gitlab that the simulator is delivering with).

What it reproduces, and where GitLab does it:

* **Each event is sent once.** A delivery is one HTTP POST to the hook's URL; its outcome
  (any 2xx or 3xx is a success, anything else, a connection error or no answer within
  :data:`WEBHOOK_TIMEOUT_S` is a failure) is recorded and never retried. Only a person's
  "Resend request" sends it again, with the same ``Idempotency-Key``
  (:meth:`GitLabSim.resend`). (gitlabhq ``app/services/web_hook_service.rb``; GitLab docs
  "Webhook events", "Troubleshooting webhooks".)
* **Auto-disabling** (gitlabhq ``app/models/concerns/web_hooks/auto_disabling.rb``): every
  failure of an executable hook increments ``recent_failures`` (capped at 40); from the 4th in
  a row the hook is *temporarily disabled* until ``disabled_until`` = now + 1 minute, doubling
  with every further failure up to 24 hours; a disabled hook is not executed at all (nothing
  is sent, nothing counted); once ``disabled_until`` has passed it is executable again; 40
  failures in a row disable it for good. A success resets the count (``enable!``).
  ``alert_status`` is ``executable``, ``temporarily_disabled`` or ``disabled``, as the hooks
  API shows it, and this simulator keeps the hook records of the REST API in step.
* **Test deliveries re-enable** a hook: ``POST /projects/:id/hooks/:hook_id/test/:trigger``
  sends a sample event to the hook whatever its state, and a 2xx answer enables it; a failed
  test is a 422 and does not count as a failure of a disabled hook (GitLab docs "Failing
  webhooks"; gitlabhq ``lib/api/hooks/test.rb``). ``fail_tests_with`` (of the mock) refuses
  tests instead, as GitLab does for a token without the Maintainer role (403) or past the
  rate limit (429).
* **No hook for a push of more than 3 refs** (``push_event_hooks_limit``, default 3,
  gitlabhq ``app/services/git/process_ref_changes_service.rb``); otherwise one delivery per
  changed ref: ``Push Hook`` for a branch (when the hook has ``push_events`` and its
  ``push_events_branch_filter``, a wildcard, matches), ``Tag Push Hook`` for a tag (when
  ``tag_push_events``).
* **A rename or transfer** changes the project's ``path_with_namespace`` (its ``id`` stays);
  later payloads carry the new path, and the API still finds the project by its old path
  (GitLab keeps a redirect route).
* **Payloads and headers** as GitLab sends them: the recorded shapes in
  ``tests/fixtures/gitlab/`` (through :func:`tests.ingest_support.payload`) with the
  project's real id, path and URLs and the pushed commits read from git; headers
  ``X-Gitlab-Event``, ``X-Gitlab-Token``, ``X-Gitlab-Instance``, ``X-Gitlab-Webhook-UUID``,
  ``X-Gitlab-Event-UUID``, ``Idempotency-Key``, ``User-Agent: GitLab/<version>``, and for a
  hook with a signing token the Standard Webhooks headers ``webhook-id`` (= the
  Idempotency-Key), ``webhook-timestamp``, ``webhook-signature: v1,<HMAC-SHA256>`` (gitlab
  MR 230944, 231325). The signature is computed here, independently of coderag's verifier.

What the network can do: :meth:`GitLabSim.push` with ``drop=True`` loses the delivery on the
way (coderag never sees it; GitLab sees a connection error, a failure).

Git is real: a project's clone URL is a bare repository on disk, and :meth:`GitLabSim.push`
is a real ``git push`` into it, after which the hooks fire for the refs that changed.

Time: auto-disabling runs on :meth:`GitLabSim.now` (the wall clock plus what
:meth:`GitLabSim.advance` added), so a test can let a backoff expire without waiting for it.
Signatures use the wall clock: they are checked against coderag's.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from tests.gitlab_mock import FakeGitLab
from tests.ingest_support import NULL_SHA, Remote, payload

__all__ = [
    "GITLAB_VERSION",
    "INITIAL_BACKOFF_S",
    "MAX_BACKOFF_S",
    "PERMANENT_FAILURES",
    "PUSH_EVENT_HOOKS_LIMIT",
    "TEMPORARY_FAILURES",
    "WEBHOOK_TIMEOUT_S",
    "Delivery",
    "GitLabSim",
    "HookState",
]

GITLAB_VERSION = "17.9.0"
WEBHOOK_TIMEOUT_S = 10.0
"""GitLab's default webhook timeout: no answer within it is a failed delivery."""
PUSH_EVENT_HOOKS_LIMIT = 3
"""A push changing more refs than this fires no push hooks (``push_event_hooks_limit``)."""
TEMPORARY_FAILURES = 4
"""Failures in a row after which a hook is temporarily disabled (threshold 3, exceeded)."""
PERMANENT_FAILURES = 40
"""Failures in a row after which a hook is disabled for good (threshold 39, exceeded)."""
INITIAL_BACKOFF_S = 60.0
MAX_BACKOFF_S = 24 * 3600.0

_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", "-C", str(cwd), *args],
        check=check,
        capture_output=True,
        text=True,
        env={**os.environ, **_ENV},
    )
    return proc.stdout.strip()


def _iso(ts: float | None) -> str | None:
    """A timestamp as the GitLab API writes it (``2025-03-11T13:04:11.317Z``)."""
    if ts is None:
        return None
    d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


@dataclass
class HookState:
    """The auto-disabling state GitLab keeps per hook (``recent_failures``,
    ``disabled_until``) and what the hooks API derives from it."""

    recent_failures: int = 0
    disabled_until: float | None = None

    def alert_status(self, now: float) -> str:
        if self.recent_failures >= PERMANENT_FAILURES:
            return "disabled"
        if (
            self.recent_failures >= TEMPORARY_FAILURES
            and self.disabled_until is not None
            and self.disabled_until >= now
        ):
            return "temporarily_disabled"
        return "executable"

    def executable(self, now: float) -> bool:
        return self.alert_status(now) == "executable"

    def failed(self, now: float) -> None:
        """``backoff!``: only an executable hook counts a failure."""
        if not self.executable(now):
            return
        old = self.recent_failures
        self.recent_failures = min(old + 1, PERMANENT_FAILURES)
        if self.recent_failures >= TEMPORARY_FAILURES:
            exponent = old - (TEMPORARY_FAILURES - 1)
            backoff = INITIAL_BACKOFF_S * (2.0**exponent)
            self.disabled_until = now + min(max(backoff, INITIAL_BACKOFF_S), MAX_BACKOFF_S)

    def enabled(self) -> None:
        """``enable!``: a successful delivery (or test) resets the count."""
        self.recent_failures = 0
        self.disabled_until = None


@dataclass
class Delivery:
    """One event GitLab meant to send to one hook, and what became of it."""

    hook_id: int
    project_id: int
    event: str
    ref: str
    key: str
    body: bytes
    headers: dict[str, str]
    sent: bool
    """False: the hook was disabled, nothing went out (GitLab does not execute it)."""
    dropped: bool = False
    """Lost on the way: coderag never saw it; GitLab saw a connection error."""
    status: int | None = None
    error: str | None = None
    seconds: float = 0.0
    at: float = 0.0
    test: bool = False
    answer: str = ""
    """coderag's answer body (its first 2,000 characters)."""

    @property
    def ok(self) -> bool:
        """What GitLab counts as a success: an answer in 2xx or 3xx within the timeout."""
        return self.status is not None and 200 <= self.status < 400


@dataclass
class _Hook:
    id: int
    project_id: int
    url: str
    token: str | None
    signing_token: str | None
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: HookState = field(default_factory=HookState)


@dataclass
class GitLabSim(FakeGitLab):
    """``with GitLabSim(token) as gl:`` serves GitLab's REST API at ``gl.url`` (as
    :class:`~tests.gitlab_mock.FakeGitLab`) and sends webhooks to the hooks coderag created
    there. Thread-safe: several pushers may call :meth:`push` at once."""

    timeout_s: float = WEBHOOK_TIMEOUT_S
    instance_url: str = "https://gitlab.example.com"
    deliveries: list[Delivery] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)
    clock_offset: float = 0.0
    _sim_hooks: dict[int, _Hook] = field(default_factory=dict)
    _sim_lock: threading.RLock = field(default_factory=threading.RLock)
    _http: httpx.Client | None = None

    # -- life --------------------------------------------------------------------------
    def __enter__(self) -> GitLabSim:
        super().__enter__()
        self._http = httpx.Client(timeout=self.timeout_s, trust_env=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.close()
        super().__exit__(*exc)

    # -- time --------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for auto-disabling (a backoff expires without waiting)."""
        with self._sim_lock:
            self.clock_offset += seconds
            self.refresh()

    # -- the REST API side -------------------------------------------------------------
    def _create_hook(self, project: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """GitLab keeps the hook's secret token and signing token (it never shows them
        again): remembered here, to send with every delivery."""
        hook = super()._create_hook(project, body)
        with self._sim_lock:
            self._sim_hooks[int(hook["id"])] = _Hook(
                id=int(hook["id"]),
                project_id=int(project["id"]),
                url=str(body.get("url") or hook.get("url")),
                token=body.get("token"),
                signing_token=body.get("signing_token") or hook.get("signing_token"),
            )
        return hook

    def _project(self, ref: str) -> dict[str, Any] | None:
        """By id, by path, or by an old path (GitLab's redirect routes after a rename)."""
        ref = unquote(ref)
        seen = 0
        while ref in self.redirects and ref not in self.projects and seen < 50:
            ref, seen = self.redirects[ref], seen + 1
        return super()._project(ref)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.removeprefix("/api/v4/").split("/")
        with self._sim_lock:
            self.refresh()
        if (
            method == "POST"
            and len(parts) == 6
            and parts[0] == "projects"
            and parts[2] == "hooks"
            and parts[4] == "test"
        ):
            project = self._project(parts[1])
            hook = self._sim_hooks.get(int(parts[3])) if parts[3].isdigit() else None
            if project is None or hook is None or hook.project_id != project["id"]:
                return 404, {"message": "404 Not found"}
            if self.fail_tests_with or parts[5] not in ("push_events", "tag_push_events"):
                return super()._route(method, path, body)  # refused (the mock's answers)
            d = self.test_hook(hook.id, parts[5])
            if d.ok:
                return 201, {"message": "201 Created"}
            return 422, {"message": f"[{d.status or 'Error'}] {d.error or 'hook test failed'}"}
        return super()._route(method, path, body)

    def refresh(self) -> None:
        """Write every hook's ``alert_status`` / ``disabled_until`` into the REST API's
        records, as of :meth:`now` (a temporary disabling that expired reads executable)."""
        with self._sim_lock:
            now = self.now()
            for hid, h in self._sim_hooks.items():
                rec = self.hooks.get(hid)
                if rec is None:
                    continue
                rec["alert_status"] = h.state.alert_status(now)
                rec["disabled_until"] = _iso(h.state.disabled_until)

    # -- projects ------------------------------------------------------------------------
    def project(self, ref: str | int) -> dict[str, Any]:
        found = self._project(str(ref))
        if found is None:
            raise KeyError(f"no project {ref!r}")
        return found

    def hooks_of(self, ref: str | int) -> list[int]:
        pid = self.project(ref)["id"]
        with self._sim_lock:
            return [h.id for h in self._sim_hooks.values() if h.project_id == pid]

    def hook_state(self, hook_id: int) -> HookState:
        with self._sim_lock:
            s = self._sim_hooks[hook_id].state
            return HookState(s.recent_failures, s.disabled_until)

    def alert_status(self, hook_id: int) -> str:
        with self._sim_lock:
            return self._sim_hooks[hook_id].state.alert_status(self.now())

    def rename(self, ref: str | int, new_path: str, *, move_repo: Path | None = None) -> None:
        """Rename or transfer the project: ``path_with_namespace`` (and the names and URLs
        built from it) change, the id stays, the old path keeps resolving in the API.

        ``move_repo``: where the project's bare repository moves (its clone URL changes with
        the path); a symlink at the old place keeps old clone URLs working, as GitLab's
        redirects do. ``None``: the repository stays where it is.
        """
        with self._sim_lock:
            proj = self.project(ref)
            old = proj["path_with_namespace"]
            clone = proj["http_url_to_repo"]
            if move_repo is not None:
                src = Path(clone)
                move_repo.parent.mkdir(parents=True, exist_ok=True)
                src.rename(move_repo)
                src.symlink_to(move_repo, target_is_directory=True)
                clone = str(move_repo)
            del self.projects[old]
            fresh = self.add_project(new_path, proj["id"], clone)
            proj.clear()
            proj.update(fresh)  # same dict object: holders of the old record see the new one
            self.projects[new_path] = proj
            self.redirects[old] = new_path

    # -- git -----------------------------------------------------------------------------
    def _bare(self, proj: dict[str, Any]) -> Path:
        return Path(proj["http_url_to_repo"])

    def heads(self, ref: str | int) -> dict[str, str]:
        """``refs/...`` -> sha of the project's repository, as GitLab stores it."""
        bare = self._bare(self.project(ref))
        fmt = "--format=%(refname) %(objectname)"
        out = _git(bare, "for-each-ref", fmt, "refs/heads", "refs/tags")
        pairs = (line.split(" ", 1) for line in out.splitlines() if line)
        return {name: sha for name, sha in pairs}

    def push(
        self,
        ref: str | int,
        remote: Remote,
        updates: Mapping[str, str | None],
        *,
        drop: bool = False,
    ) -> list[Delivery]:
        """A real ``git push`` from ``remote``'s work repository into the project's
        repository, then the hooks GitLab fires for it.

        ``updates``: target ref (``main``, ``refs/heads/x``, ``refs/tags/v1``) -> what to
        push there (a sha or local ref of the work repository; ``None`` deletes it).
        ``drop``: every delivery of this push is lost on the way.
        Returns the deliveries (empty for a push of more than 3 refs)."""
        proj = self.project(ref)
        bare = self._bare(proj)
        targets = {self._full_ref(t): src for t, src in updates.items()}
        before = {t: self._rev(bare, t) for t in targets}
        specs = [f":{t}" if src is None else f"+{src}:{t}" for t, src in targets.items()]
        _git(remote.work, "push", "-q", str(bare), *specs)
        changes = [
            (t, before[t], self._rev(bare, t)) for t in targets if self._rev(bare, t) != before[t]
        ]
        if len(changes) > PUSH_EVENT_HOOKS_LIMIT:
            return []
        out: list[Delivery] = []
        for t, old, new in changes:
            out += self._fire(proj, t, old, new, drop=drop)
        return out

    @staticmethod
    def _full_ref(target: str) -> str:
        return target if target.startswith("refs/") else f"refs/heads/{target}"

    @staticmethod
    def _rev(bare: Path, ref: str) -> str:
        found = _git(bare, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
        return found or NULL_SHA

    def _commits(self, bare: Path, proj: dict[str, Any], before: str, after: str) -> list[dict]:
        """The pushed commits, newest first, at most 20 (GitLab's ``commits``)."""
        if after == NULL_SHA:
            return []
        rng = [after] if before == NULL_SHA else [f"{before}..{after}"]
        fmt = "%H%x1f%s%x1f%B%x1f%aI%x1f%an%x1f%ae%x1e"
        raw = _git(bare, "log", "-20", f"--format={fmt}", *rng)
        commits = []
        for rec in raw.split("\x1e"):
            rec = rec.strip("\n")
            if not rec:
                continue
            sha, title, message, when, name, email = rec.split("\x1f")
            changed = _git(
                bare, "diff-tree", "--no-commit-id", "-r", "--name-status", "--root", sha
            )
            added, modified, removed = [], [], []
            for line in changed.splitlines():
                status, _, path = line.partition("\t")
                {"A": added, "D": removed}.get(status[:1], modified).append(path)
            commits.append(
                {
                    "id": sha,
                    "message": message.strip() + "\n",
                    "title": title,
                    "timestamp": when,
                    "url": f"{proj['web_url']}/-/commit/{sha}",
                    "author": {"name": name, "email": email},
                    "added": added,
                    "modified": modified,
                    "removed": removed,
                }
            )
        return commits

    def event_body(self, proj: dict[str, Any], ref: str, before: str, after: str) -> dict:
        """The Push Hook / Tag Push Hook body GitLab builds for one ref change."""
        tag = ref.startswith("refs/tags/")
        bare = self._bare(proj)
        path = proj["path_with_namespace"]
        web = f"{self.instance_url}/{path}"
        data = payload(
            "tag_push" if tag else "push",
            repo=path,
            clone_url=proj["http_url_to_repo"],
            before=before,
            after=after,
            ref=ref,
        )
        commits = self._commits(bare, {**proj, "web_url": web}, before, after)
        data.update(
            project_id=proj["id"],
            commits=commits,
            total_commits_count=len(commits),
            checkout_sha=None if after == NULL_SHA else after,
        )
        ns = path.rsplit("/", 1)[0]
        data["project"].update(
            id=proj["id"],
            name=proj["name"],
            web_url=web,
            namespace=ns,
            homepage=web,
            git_ssh_url=f"git@gitlab.example.com:{path}.git",
            url=f"git@gitlab.example.com:{path}.git",
            ssh_url=f"git@gitlab.example.com:{path}.git",
            default_branch=proj.get("default_branch", "main"),
        )
        if isinstance(data.get("repository"), dict):
            data["repository"].update(
                name=proj["name"],
                url=f"git@gitlab.example.com:{path}.git",
                homepage=web,
                git_http_url=proj["http_url_to_repo"],
                git_ssh_url=f"git@gitlab.example.com:{path}.git",
            )
        return data

    # -- sending -------------------------------------------------------------------------
    def _fire(
        self, proj: dict[str, Any], ref: str, before: str, after: str, *, drop: bool
    ) -> list[Delivery]:
        tag = ref.startswith("refs/tags/")
        event = "Tag Push Hook" if tag else "Push Hook"
        out = []
        for hid in self.hooks_of(proj["id"]):
            rec = self.hooks.get(hid) or {}
            if tag and not rec.get("tag_push_events"):
                continue
            if not tag:
                if not rec.get("push_events", True):
                    continue
                flt = rec.get("push_events_branch_filter") or ""
                if flt and not fnmatch.fnmatchcase(ref.removeprefix("refs/heads/"), flt):
                    continue
            body = json.dumps(self.event_body(proj, ref, before, after)).encode()
            out.append(self.deliver(hid, event, ref, body, drop=drop))
        return out

    def _headers(self, hook: _Hook, event: str, key: str, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"GitLab/{GITLAB_VERSION}",
            "X-Gitlab-Event": event,
            "X-Gitlab-Instance": self.instance_url,
            "X-Gitlab-Webhook-UUID": hook.uuid,
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            "Idempotency-Key": key,
        }
        if hook.token:
            headers["X-Gitlab-Token"] = hook.token
        if hook.signing_token:
            stamp = str(int(time.time()))
            raw = base64.b64decode(hook.signing_token.removeprefix("whsec_"))
            mac = hmac.new(raw, f"{key}.{stamp}.".encode() + body, hashlib.sha256).digest()
            headers["webhook-id"] = key
            headers["webhook-timestamp"] = stamp
            headers["webhook-signature"] = "v1," + base64.b64encode(mac).decode()
        return headers

    def deliver(
        self,
        hook_id: int,
        event: str,
        ref: str,
        body: bytes,
        *,
        key: str | None = None,
        drop: bool = False,
        force: bool = False,
    ) -> Delivery:
        """Send one event to one hook, once, and update the hook's state with the outcome.
        ``force``: a test delivery (sent whatever the hook's state)."""
        with self._sim_lock:
            hook = self._sim_hooks[hook_id]
            executable = hook.state.executable(self.now())
        key = key or str(uuid.uuid4())
        headers = self._headers(hook, event, key, body)
        d = Delivery(
            hook_id, hook.project_id, event, ref, key, body, headers, sent=False, at=self.now()
        )
        d.test = force
        if not (executable or force):
            d.error = "hook is disabled: not executed"
            with self._sim_lock:
                self.deliveries.append(d)
            return d
        d.sent = True
        t0 = time.perf_counter()
        if drop:
            d.dropped, d.error = True, "connection reset on the way (dropped)"
        else:
            assert self._http is not None, "use GitLabSim as a context manager"
            try:
                resp = self._http.post(hook.url, content=body, headers=headers)
                d.status = resp.status_code
                d.answer = resp.text[:2000]
                if not d.ok:
                    d.error = resp.text[:500]
            except httpx.TimeoutException:
                d.error = f"no answer within {self.timeout_s:.0f} s"
            except httpx.TransportError as exc:
                d.error = f"{type(exc).__name__}: {exc}"
        d.seconds = time.perf_counter() - t0
        with self._sim_lock:
            if d.ok:
                hook.state.enabled()
            else:  # a no-op for a disabled hook (a failed test of one included)
                hook.state.failed(self.now())
            self.deliveries.append(d)
            self.refresh()
        return d

    def resend(self, delivery: Delivery) -> Delivery:
        """A person pressed "Resend request": the same body and Idempotency-Key again."""
        return self.deliver(
            delivery.hook_id, delivery.event, delivery.ref, delivery.body, key=delivery.key
        )

    def test_hook(self, hook_id: int, trigger: str = "push_events") -> Delivery:
        """``POST /projects/:id/hooks/:hook_id/test/:trigger``: a sample event built from
        the default branch's newest commits, sent whatever the hook's state; a success
        enables the hook."""
        with self._sim_lock:
            hook = self._sim_hooks[hook_id]
        proj = self.project(hook.project_id)
        bare = self._bare(proj)
        branch = f"refs/heads/{proj.get('default_branch') or 'main'}"
        after = self._rev(bare, branch)
        parent = _git(bare, "rev-parse", "-q", "--verify", f"{after}^", check=False)
        before = parent or NULL_SHA
        body = json.dumps(self.event_body(proj, branch, before, after)).encode()
        event = "Tag Push Hook" if trigger == "tag_push_events" else "Push Hook"
        return self.deliver(hook_id, event, branch, body, force=True)

    # -- failing on purpose --------------------------------------------------------------
    def break_hook(
        self, ref: str | int, remote: Remote, status: str, *, branch: str = "sim/noise"
    ) -> int:
        """Drive the project's hooks to ``status`` (``temporarily_disabled`` or
        ``disabled``) with deliveries lost on the way: real pushes that move ``branch`` (an
        untracked scratch branch) back and forth, one failure each; for ``disabled`` each
        temporary disabling is let expire on the simulated clock (:meth:`advance`), as a
        month of failures would. Returns the number of failed deliveries."""
        if status not in ("temporarily_disabled", "disabled"):
            raise ValueError(f"cannot drive a hook to {status!r}")
        head = _git(remote.work, "rev-parse", "HEAD")
        other = _git(remote.work, "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "noise")
        hooks = self.hooks_of(ref)
        failures, flip = 0, False
        while any(self.alert_status(h) != status for h in hooks):
            if all(self.alert_status(h) == "temporarily_disabled" for h in hooks):
                with self._sim_lock:
                    until = max(self._sim_hooks[h].state.disabled_until or 0 for h in hooks)
                self.advance(until - self.now() + 1)
            flip = not flip
            sent = self.push(ref, remote, {branch: other if flip else head}, drop=True)
            failures += sum(1 for d in sent if d.sent)
            if failures > 2 * PERMANENT_FAILURES:
                raise AssertionError(f"hooks {hooks} never reached {status!r}")
        return failures
