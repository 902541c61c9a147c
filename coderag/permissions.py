"""Which repositories a GitLab user may read the code of, asked of GitLab with a service token.

coderag serves code it indexed; a person must see only the code GitLab would show them. This
module answers "of these repositories (GitLab project ids), which may this GitLab user read?"
with the rules GitLab applies, cached per user for a while, and never guesses: whatever it
cannot establish is not readable, and when GitLab cannot be asked it says so
(:class:`PermissionsUnavailable`, a 503) instead of answering with too little or too much.

The GitLab facts it rests on (each pinned by a test in ``tests/test_permissions.py``):

* **Users.** ``GET /users?username=`` finds one user; GitLab matches the username
  case-insensitively (GitLab docs, Users API: "Username search is case insensitive"), so the
  answer is compared lowercased. ``GET /users?search=`` matches name, username or public email
  (for an administrator's token also the primary and secondary emails); GitLab orders exact
  public-email matches first (gitlabhq ``app/models/user.rb``, ``User.search``). A list item
  for a token that is not an administrator's is the ``UserBasic`` entity (``id``,
  ``username``, ``name``, ``state``, ``locked``, ``avatar_url``, ``web_url``): no ``email``,
  no ``external``; an administrator's token gets ``email`` and ``external`` (Users API, "List
  users"; gitlabhq ``lib/api/users.rb``, ``lib/api/entities/user_with_admin.rb``).
  ``GET /users/:id`` shows anyone ``public_email`` (Users API, "Get a single user"). For a
  non-administrator, ``blocked``, ``banned`` and ``ldap_blocked`` users are not listed at all
  (``UsersFinder``, ``User::FORBIDDEN_SEARCH_STATES``). Only ``state == "active"`` counts:
  blocked, deactivated or banned users read nothing.
* **Visibility** (GitLab docs, "Project and group visibility"): a *public* project can be
  cloned by anyone; an *internal* one by any authenticated user except external users; a
  *private* one only by its members, and "Users with the Guest role cannot clone the project".
  External users "can only access projects and groups to which they are explicitly granted
  access" (GitLab docs, "External users"). When the token cannot see ``external`` (not an
  administrator's token) the user might be external, so internal projects are readable to
  them only through membership: fail closed.
* **Repository access level** (GitLab docs, Projects API, "Project feature visibility
  level"): ``repository_access_level`` is ``disabled``, ``private`` ("Only project members")
  or ``enabled`` ("Everyone with access"). Disabled: nobody reads the code. Private: only
  members do, whatever the visibility. A project answer without it (a token that does not
  see it) is read as "cannot be established": not readable.
* **Roles** (GitLab docs, Projects members API, "Roles"; "Roles and permissions"): 10 Guest,
  15 Planner, 20 Reporter, 30 Developer, 40 Maintainer, 50 Owner. "View project code" and
  "Pull project code" need Reporter on private projects (Guests only on public and internal
  ones; external users "must be given explicit access (at least the Reporter role) even if
  the project is internal"). Hence ``min_access_level`` defaults to 20.
* **Effective membership** (GitLab docs, Projects members API, "Get a member of a project,
  including inherited and invited members"): ``GET /projects/:id/members/all/:user_id``
  returns the membership with the highest ``access_level`` among the project's own, its
  ancestor groups' and invited groups'; a non-member is a 404 (gitlabhq ``lib/api/members.rb``,
  ``find_by!``). A ``membership_state`` other than ``active`` (a Premium "awaiting" member)
  does not count.
* **Archived projects** stay readable: archiving makes a project read-only, it does not hide
  its code from those who could read it (GitLab docs, "Archive a project").

Caching: one entry per user (what GitLab said about the user and every project decided for
them) lives ``ttl_seconds`` from the user lookup; within it nothing is asked again, even while
GitLab is down. After it the next request asks again, so a removed member loses access at the
latest one TTL later. Project answers (visibility, repository access level) are cached the
same time and shared between users. A 404 (no such user, project or membership) is a decision
and cached like the others.

Failures: a connection error, a timeout, a 5xx, a 429 (python-gitlab's sleeping on
``Retry-After`` is turned off: the caller should not hang), a 401 or 403 of the service token
or a non-JSON answer, for anything that must be asked, raises :class:`PermissionsUnavailable`
naming GitLab and the failure; nothing partial is returned.

Threads: :class:`GitLabPermissions` is shared by the API's worker threads. Requests for one
user take that user's lock, so a burst of them asks GitLab once; a project's answer is fetched
under that project's lock; undecided projects of one request are decided in parallel by a pool
of at most :data:`MAX_WORKERS` threads. Each thread has its own python-gitlab client (its own
``requests`` session).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from coderag.errors import ConfigError, TransientError

__all__ = [
    "DEVELOPER",
    "GUEST",
    "MAINTAINER",
    "MAX_WORKERS",
    "OWNER",
    "PLANNER",
    "REPORTER",
    "GitLabPermissions",
    "GitLabUser",
    "PermissionsUnavailable",
]

GUEST, PLANNER, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 15, 20, 30, 40, 50
"""GitLab's ``access_level`` values (GitLab docs, Projects members API, "Roles")."""

MAX_WORKERS = 8
"""Parallel GitLab lookups for one request at most: enough to hide latency, few enough not to
look like a flood to GitLab's rate limits."""

EMAIL_DETAIL_LOOKUPS = 3
"""In email mode with a non-administrator's token, the search results carry no email: at most
this many of them (GitLab ranks an exact public-email match first) are opened with
``GET /users/:id`` to compare ``public_email``."""

_SEARCH_PAGE = 20


class PermissionsUnavailable(TransientError):
    """GitLab could not be asked who may read what: answer 503, never a guess."""

    error_code = "permissions_unavailable"
    http_status = 503


@dataclass(frozen=True, slots=True)
class GitLabUser:
    """A GitLab user as the service token sees them. ``external`` is None when the token
    cannot see it (only an administrator's token can)."""

    id: int
    username: str
    state: str
    external: bool | None

    @property
    def active(self) -> bool:
        return self.state == "active"

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> GitLabUser | None:
        """From a ``GET /users`` item (``UserBasic`` or the administrator's entity); None
        when it lacks an id or a username (nothing to decide on)."""
        uid, name = data.get("id"), data.get("username")
        if isinstance(uid, bool) or not isinstance(uid, int) or not isinstance(name, str):
            return None
        external = data.get("external")
        return cls(
            id=uid,
            username=name,
            state=str(data.get("state") or "unknown"),
            external=external if isinstance(external, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class _Project:
    visibility: str | None
    repository_access_level: str | None
    archived: bool

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> _Project:
        vis, repo = data.get("visibility"), data.get("repository_access_level")
        return cls(
            visibility=vis if isinstance(vis, str) else None,
            repository_access_level=repo if isinstance(repo, str) else None,
            archived=data.get("archived") is True,
        )


@dataclass
class _Entry:
    """What is known about one user until ``expires_at``: the user (None: no such user) and
    project id -> readable."""

    user: GitLabUser | None
    expires_at: float
    decisions: dict[int, bool] = field(default_factory=dict)


class GitLabPermissions:
    """``readable(username, {repo_id: project_id})`` -> the repo ids the user may read.

    ``gitlab_url``: the instance's base URL (``https://gitlab.example.com``); ``token``: a
    service token with ``read_api``, best an administrator's or (Premium) an auditor's: GitLab
    shows ``external`` only to tokens that can read all resources (gitlabhq
    ``lib/api/users.rb``, ``BasePolicy``: admins, and auditors in EE), and such a token sees
    every project and membership. With the instance's Admin Mode on, an administrator's
    token acts as one only with the ``admin_mode`` scope (gitlab MR 107925). With a lesser
    token internal projects count only through membership.

    ``user_lookup``: match the caller's name against GitLab usernames, or against emails
    (``"email"``: exact, on the primary email with an administrator's token, on the public
    email otherwise). ``clock``: monotonic seconds, for the TTL (a test passes its own).
    """

    def __init__(
        self,
        gitlab_url: str,
        token: str,
        *,
        ttl_seconds: float = 300.0,
        min_access_level: int = REPORTER,
        user_lookup: Literal["username", "email"] = "username",
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(gitlab_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"the GitLab URL for permissions must be http(s): {gitlab_url!r}")
        if not token or not token.strip():
            raise ConfigError("a GitLab token is needed to look up permissions")
        if ttl_seconds < 0:
            raise ConfigError(f"the permissions TTL must be >= 0 seconds, not {ttl_seconds}")
        if isinstance(min_access_level, bool) or min_access_level not in range(GUEST, OWNER + 1):
            raise ConfigError(
                f"min_access_level must be a GitLab role from {GUEST} (Guest) to {OWNER} "
                f"(Owner), not {min_access_level!r}"
            )
        if user_lookup not in ("username", "email"):
            raise ConfigError(f"user_lookup must be 'username' or 'email', not {user_lookup!r}")
        if timeout_seconds <= 0:
            raise ConfigError(f"the GitLab timeout must be > 0 seconds, not {timeout_seconds}")
        self.gitlab_url = gitlab_url.strip().rstrip("/")
        self._token = token.strip()
        self.ttl_seconds = float(ttl_seconds)
        self.min_access_level = int(min_access_level)
        self.user_lookup = user_lookup
        self.timeout_seconds = float(timeout_seconds)
        self._clock = clock
        self._lock = threading.Lock()  # the dicts below and the counters
        self._entries: dict[str, _Entry] = {}
        self._projects: dict[int, tuple[_Project | None, float]] = {}
        self._user_locks: dict[str, threading.Lock] = {}
        self._project_locks: dict[int, threading.Lock] = {}
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._stats = {"hits": 0, "misses": 0, "gitlab_calls": 0, "failures": 0}

    # -- the API ---------------------------------------------------------------------------
    def readable(self, username: str, projects: Mapping[str, int]) -> frozenset[str]:
        """Of ``projects`` (repo id -> GitLab project id), the repo ids the GitLab user may
        read the code of. Unknown or inactive users read nothing, nor does a repo without a
        valid project id (a positive int) nobody can ask GitLab about. Raises
        :class:`PermissionsUnavailable` when something that must be asked cannot be."""
        key = _key(username)
        wanted = {str(rid): pid for rid, pid in projects.items() if _is_project_id(pid)}
        if not key or not wanted:
            return frozenset()
        with self._user_lock(key):
            asked = False
            entry = self._fresh_entry(key)
            try:
                if entry is None:
                    asked = True
                    now = self._clock()
                    entry = _Entry(self._find_user(key), now + self.ttl_seconds)
                    with self._lock:
                        self._entries[key] = entry
                if entry.user is None or not entry.user.active:
                    return frozenset()
                todo = sorted({pid for pid in wanted.values() if pid not in entry.decisions})
                if todo:
                    asked = True
                    self._decide_all(entry, todo)
            finally:
                self._count("misses" if asked else "hits")
            return frozenset(rid for rid, pid in wanted.items() if entry.decisions.get(pid))

    def invalidate(self, username: str | None = None) -> None:
        """Forget one user (the next request asks GitLab again), or everything (users and
        projects) with no argument."""
        with self._lock:
            if username is None:
                self._entries.clear()
                self._projects.clear()
            else:
                self._entries.pop(_key(username), None)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: ``hits`` (requests answered from the cache alone),
        ``misses`` (requests that had to ask GitLab), ``gitlab_calls`` (HTTP requests made),
        ``failures`` (of those, the ones that made GitLab unavailable)."""
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        """Stop the lookup threads (a later lookup starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- deciding --------------------------------------------------------------------------
    def _decide_all(self, entry: _Entry, todo: list[int]) -> None:
        """Decide ``todo`` for ``entry.user``, in parallel when there are several; every
        decision made is kept, the first failure is raised after all have finished."""
        user = entry.user
        assert user is not None
        if len(todo) == 1:
            entry.decisions[todo[0]] = self._decide(user, todo[0])
            return
        futures: list[tuple[int, Future[bool]]] = [
            (pid, self._executor().submit(self._decide, user, pid)) for pid in todo
        ]
        failure: PermissionsUnavailable | None = None
        for pid, fut in futures:
            try:
                entry.decisions[pid] = fut.result()
            except PermissionsUnavailable as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _decide(self, user: GitLabUser, project_id: int) -> bool:
        project = self._project(project_id)
        if project is None:  # no such project, or not one the token may see
            return False
        # project.archived changes nothing: an archived project is read-only, not hidden
        level = project.repository_access_level
        if level not in ("enabled", "private"):  # disabled, or not visible to the token
            return False
        if level == "enabled":
            if project.visibility == "public":
                return True
            if project.visibility == "internal" and user.external is False:
                return True
        return self._access_level(project_id, user.id) >= self.min_access_level

    def _access_level(self, project_id: int, user_id: int) -> int:
        """The user's effective ``access_level`` on the project (0: not a member)."""
        data = self._get(
            f"/projects/{project_id}/members/all/{user_id}",
            what=f"the membership of user {user_id} in project {project_id}",
            expect=dict,
        )
        if data is None:
            return 0
        state = data.get("membership_state")
        if state is not None and state != "active":
            return 0
        level = data.get("access_level")
        return level if isinstance(level, int) and not isinstance(level, bool) else 0

    def _project(self, project_id: int) -> _Project | None:
        with self._project_lock(project_id):
            with self._lock:
                cached = self._projects.get(project_id)
            if cached is not None and cached[1] > self._clock():
                return cached[0]
            data = self._get(f"/projects/{project_id}", what=f"project {project_id}", expect=dict)
            project = None if data is None else _Project.from_payload(data)
            with self._lock:
                self._projects[project_id] = (project, self._clock() + self.ttl_seconds)
            return project

    # -- users -----------------------------------------------------------------------------
    def _find_user(self, key: str) -> GitLabUser | None:
        if self.user_lookup == "email":
            return self._find_by_email(key)
        found = self._get("/users", {"username": key}, what=f"user {key!r}", expect=list) or []
        users = [
            u
            for u in (GitLabUser.from_payload(d) for d in found if isinstance(d, dict))
            if u is not None and u.username.lower() == key
        ]
        return users[0] if len(users) == 1 else None

    def _find_by_email(self, email: str) -> GitLabUser | None:
        """The one user whose primary (administrator's token) or public email is ``email``,
        exactly; a name or username that merely contains it does not count."""
        if "@" not in email:
            return None
        what = f"the user with email {email!r}"
        query = {"search": email, "per_page": _SEARCH_PAGE}
        found = self._get("/users", query, what=what, expect=list) or []
        details = EMAIL_DETAIL_LOOKUPS
        for item in (d for d in found if isinstance(d, dict)):
            record: Mapping[str, Any] = item
            if "email" not in item and "public_email" not in item:
                if GitLabUser.from_payload(item) is None:
                    continue
                if details <= 0:
                    break
                details -= 1
                more = self._get(f"/users/{item['id']}", what=what, expect=dict)
                record = {**item, **(more or {})}
            mails = {record.get("email"), record.get("public_email")}
            if email in {m.strip().lower() for m in mails if isinstance(m, str)}:
                return GitLabUser.from_payload(record)
        return None

    # -- GitLab ----------------------------------------------------------------------------
    def _get(
        self,
        path: str,
        query: dict[str, Any] | None = None,
        *,
        what: str,
        expect: type,
    ) -> Any:
        """GET ``path`` as JSON; None for a 404 (a decision); anything else that is not a
        2xx JSON answer of type ``expect`` raises :class:`PermissionsUnavailable`."""
        import gitlab.exceptions as gle
        import requests

        self._count("gitlab_calls")
        try:
            data = self._client().http_get(
                path, query_data=query or {}, obey_rate_limit=False, retry_transient_errors=False
            )
        except gle.GitlabError as exc:
            if exc.response_code == 404:
                return None
            raise self._unavailable(what, _http_reason(exc.response_code)) from exc
        except requests.exceptions.Timeout as exc:
            reason = f"no answer within {self.timeout_seconds:g} s ({type(exc).__name__})"
            raise self._unavailable(what, reason) from exc
        except requests.exceptions.RequestException as exc:
            raise self._unavailable(what, f"unreachable ({type(exc).__name__})") from exc
        if not isinstance(data, expect):
            raise self._unavailable(what, "the answer was not the JSON GitLab's API sends")
        return data

    def _unavailable(self, what: str, reason: str) -> PermissionsUnavailable:
        self._count("failures")
        return PermissionsUnavailable(
            f"permissions unavailable: could not ask GitLab ({self.gitlab_url}) about {what}: "
            f"{reason}"
        )

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import gitlab

            client = gitlab.Gitlab(
                url=self.gitlab_url,
                private_token=self._token,
                timeout=self.timeout_seconds,
                ssl_verify=True,  # an internal CA: REQUESTS_CA_BUNDLE
                retry_transient_errors=False,
            )
            self._local.client = client
        return client

    # -- plumbing --------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="coderag-perms")
            return self._pool

    def _fresh_entry(self, key: str) -> _Entry | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= now:
                del self._entries[key]
                entry = None
            return entry

    def _user_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._user_locks.setdefault(key, threading.Lock())

    def _project_lock(self, project_id: int) -> threading.Lock:
        with self._lock:
            return self._project_locks.setdefault(project_id, threading.Lock())

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1


def _key(name: str) -> str:
    """GitLab compares usernames (and emails) case-insensitively."""
    return (name or "").strip().lower()


def _is_project_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _http_reason(code: int | None) -> str:
    if code == 401:
        return "GitLab refused coderag's token (401 Unauthorized): revoked, expired or wrong"
    if code == 403:
        return (
            "GitLab refused coderag's token (403 Forbidden): it needs the read_api scope and "
            "an administrator's (or auditor's) access"
        )
    if code == 429:
        return "GitLab is rate limiting coderag (429 Too Many Requests)"
    if code is not None and code >= 500:
        return f"GitLab failed ({code})"
    return f"GitLab answered {code}" if code else "GitLab's answer could not be read"
