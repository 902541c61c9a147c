"""Test-only: a tiny GitLab API on 127.0.0.1 that answers as GitLab's REST API v4 does for
the calls coderag makes (project lookup by path, project hook create, read, test and delete),
and records every request so tests can assert on what was sent.

Hook health as GitLab shapes it: ``alert_status`` (``executable``, ``temporarily_disabled``,
``disabled``) and ``disabled_until`` on ``GET /projects/:id/hooks/:hook_id``; a successful
``POST /projects/:id/hooks/:hook_id/test/:trigger`` (201 ``{"message": "201 Created"}``)
re-enables the hook, a failed test delivery is a 422 with GitLab's message (lib/api/hooks/
test.rb; GitLab docs "Failing webhooks"). :meth:`FakeGitLab.set_hook_state` puts a hook in
any of those states.

Only GitLab is mocked in this project's tests; git, Redis, Celery and HTTP are real.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

__all__ = ["FakeGitLab", "Recorded"]


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

    def add_project(self, path: str, project_id: int, clone_url: str) -> dict[str, Any]:
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
            "visibility": "internal",
            "archived": False,
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
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                fake.requests.append(Recorded(method, self.path, dict(self.headers), body))
                if self.headers.get("PRIVATE-TOKEN") != fake.token:
                    self._reply(401, {"message": "401 Unauthorized"})
                    return
                status, out = fake._route(method, self.path.split("?", 1)[0], body)
                self._reply(status, out)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
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
