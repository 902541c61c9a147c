"""Test-only: a tiny GitLab API on 127.0.0.1 that answers as GitLab's REST API v4 does for
the calls coderag makes (project lookup by path, project hook create, read, test and delete),
and records every request so tests can assert on what was sent.

Hook health as GitLab shapes it: ``alert_status`` (``executable``, ``temporarily_disabled``,
``disabled``) and ``disabled_until`` on ``GET /projects/:id/hooks/:hook_id``; a successful
``POST /projects/:id/hooks/:hook_id/test/:trigger`` (201 ``{"message": "201 Created"}``)
re-enables the hook, a failed test delivery is a 422 with GitLab's message (lib/api/hooks/
test.rb; GitLab docs "Failing webhooks"). :meth:`FakeGitLab.set_hook_state` puts a hook in
any of those states.

Users, memberships and who sees what, for coderag's per-user permissions
(:mod:`coderag.permissions`), with the shapes of ``tests/fixtures/gitlab/`` (its README names
the doc pages):

* ``GET /users?username=`` (exact, case-insensitive) and ``GET /users?search=`` (name or
  username containing it, or an exact email: the primary or secondary one for an
  administrator's token, only the public one otherwise; exact public-email matches first),
  ``GET /users/:id``. A token that is not an administrator's (``admin_token=False``, the
  default) gets the ``UserBasic`` entity (no ``email``, no ``external``) and does not see
  ``blocked``, ``banned`` or ``ldap_blocked`` users at all (gitlabhq ``lib/api/users.rb``,
  ``app/finders/users_finder.rb``, ``User::FORBIDDEN_SEARCH_STATES``).
* ``GET /projects/:id/members/all/:user_id``: the effective membership (an inherited or
  invited one is modelled as a direct one), 404 ``{"message": "404 Not found"}`` for a
  non-member (gitlabhq ``lib/api/members.rb``, ``find_by!``).
* Projects carry ``visibility`` and ``repository_access_level``.
* An outage: :meth:`FakeGitLab.down` answers every request with one status (503, 502, 429
  with ``Retry-After``, or 401/403 as for a refused token) until :meth:`FakeGitLab.up`;
  ``delay_s`` slows every answer (a client timeout). Every request is still recorded
  (:meth:`FakeGitLab.calls`).

Only GitLab is mocked in this project's tests; git, Redis, Celery and HTTP are real.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

__all__ = ["ACCESS_LEVELS", "FakeGitLab", "Recorded"]

_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gitlab"


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((_FIXTURES / f"{name}.json").read_text())


_USER_ADMIN = _fixture("user_admin")
"""An administrator's view of a user (``GET /users``, ``GET /users/:id``)."""
_USER_BASIC_KEYS = tuple(_fixture("user_basic"))
"""Anyone else's view of a user in a list (``UserBasic``)."""
_USER_KEYS = tuple(_fixture("user"))
"""Anyone else's view of one user (``GET /users/:id``, ``User``)."""
_MEMBER = _fixture("member")
_FORBIDDEN_SEARCH_STATES = ("blocked", "banned", "ldap_blocked")
"""States a non-administrator never sees in ``GET /users`` (``User::FORBIDDEN_SEARCH_STATES``)."""

ACCESS_LEVELS = {
    "guest": 10,
    "planner": 15,
    "reporter": 20,
    "developer": 30,
    "maintainer": 40,
    "owner": 50,
}
"""GitLab docs, Projects members API, "Roles" (``Gitlab::Access``)."""


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGitLab:
    """``with FakeGitLab(token) as gl:`` serves at ``gl.url`` until the block ends."""

    token: str
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    hooks: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    fail_hooks_with: int | None = None
    fail_tests_with: int | None = None
    """Status of ``POST .../hooks/:id/test/:trigger`` (None: the test delivery succeeds)."""
    _next_hook: int = 41
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    """user id -> the administrator's view of the user (what :meth:`add_user` made)."""
    members: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    """(project id, user id) -> ``{"access_level", "expires_at"}``."""
    admin_token: bool = False
    """True: the token is an administrator's (users come with ``email`` and ``external``)."""
    fail_all_with: int | None = None
    """Status every request gets (None: GitLab answers); :meth:`down` / :meth:`up`."""
    delay_s: float = 0.0
    """Seconds every answer waits (past a client's timeout: a timeout)."""

    # -- users and members -----------------------------------------------------------------
    def add_user(
        self,
        username: str,
        user_id: int,
        *,
        state: str = "active",
        external: bool = False,
        email: str | None = None,
        public_email: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """A user as GitLab stores it (``state``: ``active``, ``blocked``, ``deactivated``,
        ``banned``, ...); ``email`` is the primary one (only an administrator sees it),
        ``public_email`` the one the profile shows."""
        base = getattr(self, "url", "https://gitlab.example.com")
        user = copy.deepcopy(_USER_ADMIN)
        user.update(
            id=user_id,
            username=username,
            name=name or username.replace("_", " ").replace(".", " ").title(),
            state=state,
            locked=False,
            avatar_url=f"{base}/uploads/-/system/user/avatar/{user_id}/avatar.png",
            web_url=f"{base}/{username}",
            email=email or f"{username}@users.noreply.gitlab.example.com",
            public_email=public_email,
            commit_email=email or f"{username}@users.noreply.gitlab.example.com",
            external=external,
            is_admin=False,
            identities=[],
        )
        self.users[user_id] = user
        return user

    def set_member(
        self,
        project: str | int,
        user_id: int,
        access_level: int,
        *,
        membership_state: str | None = None,
    ) -> dict[str, Any]:
        """Give ``user_id`` the role ``access_level`` (10 Guest ... 50 Owner) on ``project``
        (path or id); an inherited or invited membership reads the same.
        ``membership_state`` (``active`` or ``awaiting``, Premium): sent when given."""
        proj = self._project(str(project))
        if proj is None:
            raise KeyError(f"no project {project!r}")
        if user_id not in self.users:
            raise KeyError(f"no user {user_id}")
        entry: dict[str, Any] = {"access_level": int(access_level), "expires_at": None}
        if membership_state is not None:
            entry["membership_state"] = membership_state
        self.members[(int(proj["id"]), int(user_id))] = entry
        return entry

    def remove_member(self, project: str | int, user_id: int) -> None:
        proj = self._project(str(project))
        if proj is None:
            raise KeyError(f"no project {project!r}")
        self.members.pop((int(proj["id"]), int(user_id)), None)

    def down(self, status: int = 503) -> None:
        """Answer every request with ``status`` until :meth:`up`."""
        self.fail_all_with = status

    def up(self) -> None:
        self.fail_all_with = None

    def calls(self, path_prefix: str = "/api/v4/", method: str = "GET") -> list[Recorded]:
        """The recorded requests of ``method`` whose path starts with ``path_prefix``."""
        return [
            r for r in list(self.requests) if r.method == method and r.path.startswith(path_prefix)
        ]

    def _user_view(self, user: dict[str, Any], *, single: bool) -> dict[str, Any]:
        if self.admin_token:
            return copy.deepcopy(user)
        keys = _USER_KEYS if single else _USER_BASIC_KEYS
        return {k: copy.deepcopy(user.get(k)) for k in keys}

    def _users_route(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        parts = path.removeprefix("/api/v4/").split("/")
        if method != "GET" or parts[0] != "users" or len(parts) > 2:
            return 404, {"error": "404 Not Found"}
        if len(parts) == 2:
            user = self.users.get(int(parts[1])) if parts[1].isdigit() else None
            if user is None:
                return 404, {"message": "404 User Not Found"}
            return 200, self._user_view(user, single=True)
        found = [
            u for u in sorted(self.users.values(), key=lambda u: -u["id"])
            if self.admin_token or u["state"] not in _FORBIDDEN_SEARCH_STATES
        ]  # fmt: skip
        username = (query.get("username") or [None])[0]
        if username is not None:
            found = [u for u in found if u["username"].lower() == username.lower()]
        search = (query.get("search") or [""])[0].removeprefix("@").lower()
        if search:

            def email_match(u: dict[str, Any]) -> bool:
                mails = [u.get("public_email")] + ([u.get("email")] if self.admin_token else [])
                return any(isinstance(m, str) and m.lower() == search for m in mails)

            def rank(u: dict[str, Any]) -> int:
                """GitLab's order: an exact public email, username, then name first."""
                exact = [u.get("public_email"), u["username"], u["name"]]
                hits = [
                    i for i, v in enumerate(exact) if isinstance(v, str) and v.lower() == search
                ]
                return hits[0] if hits else 3

            found = [
                u for u in found
                if email_match(u) or search in u["username"].lower() or search in u["name"].lower()
            ]  # fmt: skip
            found.sort(key=lambda u: (rank(u), u["name"], -u["id"]))
        per_page = int((query.get("per_page") or ["20"])[0])
        return 200, [self._user_view(u, single=False) for u in found[: max(1, min(per_page, 100))]]

    def _member(self, project: dict[str, Any], user_ref: str) -> tuple[int, Any]:
        entry = (
            self.members.get((int(project["id"]), int(user_ref))) if user_ref.isdigit() else None
        )
        user = self.users.get(int(user_ref)) if user_ref.isdigit() else None
        if entry is None or user is None:
            return 404, {"message": "404 Not found"}
        member = copy.deepcopy(_MEMBER)
        member.update({k: copy.deepcopy(user.get(k)) for k in _USER_BASIC_KEYS})
        member.update(entry)
        member.pop("email", None)  # shown to group owners for enterprise users only
        return 200, member

    def set_hook_state(
        self, hook_id: int, alert_status: str, disabled_until: str | None = None
    ) -> dict[str, Any]:
        """Put a hook in GitLab's ``alert_status`` (a temporarily disabled one gets a
        ``disabled_until`` a minute ahead unless given), as failing deliveries would."""
        import datetime as dt

        hook = self.hooks[hook_id]
        if alert_status == "temporarily_disabled" and disabled_until is None:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
            disabled_until = until.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        hook["alert_status"] = alert_status
        hook["disabled_until"] = disabled_until if alert_status == "temporarily_disabled" else None
        return hook

    def add_project(
        self,
        path: str,
        project_id: int,
        clone_url: str,
        *,
        visibility: str = "private",
        repository_access_level: str = "enabled",
        archived: bool = False,
    ) -> dict[str, Any]:
        """``visibility``: ``private``, ``internal`` or ``public``; ``repository_access_level``:
        ``disabled``, ``private`` (only project members) or ``enabled`` (everyone with access)
        (GitLab docs, Projects API)."""
        name = path.rsplit("/", 1)[-1]
        web = f"{self.url}/{path}"
        self.projects[path] = {
            "id": project_id,
            "description": "Core payment processing services",
            "name": name,
            "name_with_namespace": path.replace("/", " / "),
            "path": name,
            "path_with_namespace": path,
            "created_at": "2024-11-02T09:12:44.317Z",
            "default_branch": "main",
            "tag_list": [],
            "topics": [],
            "ssh_url_to_repo": f"git@gitlab.example.com:{path}.git",
            "http_url_to_repo": clone_url,
            "web_url": web,
            "readme_url": f"{web}/-/blob/main/README.md",
            "avatar_url": None,
            "forks_count": 0,
            "star_count": 0,
            "last_activity_at": "2025-03-11T13:04:11.317Z",
            "namespace": {
                "id": 22,
                "name": path.split("/")[0],
                "path": path.split("/")[0],
                "kind": "group",
                "full_path": path.rsplit("/", 1)[0],
            },
            "visibility": visibility,
            "issues_access_level": "enabled",
            "repository_access_level": repository_access_level,
            "merge_requests_access_level": "enabled",
            "archived": archived,
            "empty_repo": False,
        }
        return self.projects[path]

    # -- server ----------------------------------------------------------------------------
    def __enter__(self) -> FakeGitLab:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self._send(
                    status, data, {"Content-Type": "application/json"} if body is not None else {}
                )

            def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _reply_outage(self, status: int) -> None:
                if status == 429:  # Rack::Attack's answer
                    headers = {"Content-Type": "text/plain", "Retry-After": "60"}
                    self._send(429, b"Retry later\n", headers)
                else:
                    self._reply(status, {"message": f"{status} {HTTPStatus(status).phrase}"})

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                fake.requests.append(Recorded(method, self.path, dict(self.headers), body))
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if fake.fail_all_with:
                    self._reply_outage(fake.fail_all_with)
                    return
                if self.headers.get("PRIVATE-TOKEN") != fake.token:
                    self._reply(401, {"message": "401 Unauthorized"})
                    return
                path, _, query = self.path.partition("?")
                if path == "/api/v4/users" or path.startswith("/api/v4/users/"):
                    status, out = fake._users_route(method, path, parse_qs(query))
                else:
                    status, out = fake._route(method, path, body)
                self._reply(status, out)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _project(self, ref: str) -> dict[str, Any] | None:
        ref = unquote(ref)
        if ref.isdigit():
            return next((p for p in self.projects.values() if p["id"] == int(ref)), None)
        return self.projects.get(ref)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.removeprefix("/api/v4/").split("/")
        if parts[0] != "projects" or len(parts) < 2:
            return 404, {"error": "404 Not Found"}
        project = self._project(parts[1])
        if project is None:
            return 404, {"message": "404 Project Not Found"}
        if method == "GET" and len(parts) == 2:
            return 200, project
        if method == "GET" and len(parts) == 5 and parts[2:4] == ["members", "all"]:
            return self._member(project, parts[4])
        if len(parts) >= 3 and parts[2] == "hooks":
            if method == "POST" and len(parts) == 3:
                if self.fail_hooks_with:
                    return self.fail_hooks_with, {"message": "403 Forbidden"}
                return 201, self._create_hook(project, body or {})
            hook = self.hooks.get(int(parts[3])) if len(parts) >= 4 and parts[3].isdigit() else None
            if len(parts) >= 4 and (hook is None or hook["project_id"] != project["id"]):
                return 404, {"message": "404 Hook Not Found"}
            if method == "GET" and len(parts) == 4:
                return 200, hook
            if method == "DELETE" and len(parts) == 4:
                del self.hooks[int(parts[3])]
                return 204, None
            if method == "POST" and len(parts) == 6 and parts[4] == "test":
                return self._test_hook(hook, parts[5])
        return 404, {"error": "404 Not Found"}

    def _test_hook(self, hook: Any, trigger: str) -> tuple[int, Any]:
        """A test delivery: success re-enables the hook (GitLab resets its back-off)."""
        if trigger not in ("push_events", "tag_push_events", "merge_requests_events"):
            return 400, {"error": "trigger does not have a valid value"}
        if self.fail_tests_with:
            message = {
                403: "403 Forbidden",
                429: "This endpoint has been requested too many times. Try again later.",
            }.get(self.fail_tests_with, "Hook execution failed: Failed to open TCP connection")
            return self.fail_tests_with, {"message": message}
        hook["alert_status"] = "executable"
        hook["disabled_until"] = None
        return 201, {"message": "201 Created"}

    def _create_hook(self, project: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        self._next_hook += 1
        hook = {
            "id": self._next_hook,
            "url": body.get("url"),
            "name": body.get("name") or "",
            "description": body.get("description") or "",
            "project_id": project["id"],
            "push_events": bool(body.get("push_events", True)),
            "push_events_branch_filter": body.get("push_events_branch_filter") or "",
            "branch_filter_strategy": "wildcard",
            "issues_events": False,
            "confidential_issues_events": False,
            "merge_requests_events": bool(body.get("merge_requests_events", False)),
            "tag_push_events": bool(body.get("tag_push_events", False)),
            "note_events": False,
            "confidential_note_events": None,
            "job_events": False,
            "pipeline_events": False,
            "wiki_page_events": False,
            "deployment_events": False,
            "releases_events": False,
            "milestone_events": False,
            "feature_flag_events": False,
            "emoji_events": False,
            "resource_access_token_events": False,
            "enable_ssl_verification": bool(body.get("enable_ssl_verification", True)),
            "repository_update_events": False,
            "alert_status": "executable",
            "disabled_until": None,
            "url_variables": [],
            "custom_webhook_template": None,
            "custom_headers": [],
            "created_at": "2025-03-11T13:04:11.317Z",
        }
        self.hooks[hook["id"]] = hook
        return hook
