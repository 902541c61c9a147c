"""Per-user read permissions (:mod:`coderag.permissions`) through python-gitlab over real HTTP
on loopback, against the fake GitLab of ``tests/gitlab_mock.py`` (users, memberships, project
visibility, outages). Each rule's GitLab source is named where the rule is tested; the
payload shapes are ``tests/fixtures/gitlab/`` (its README names the doc pages)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coderag.errors import ConfigError, TransientError
from coderag.permissions import (
    DEVELOPER,
    GUEST,
    MAINTAINER,
    OWNER,
    PLANNER,
    REPORTER,
    GitLabPermissions,
    GitLabUser,
    PermissionsUnavailable,
)
from tests.gitlab_mock import ACCESS_LEVELS, FakeGitLab

TOKEN = "glpat-Pm3rT8vQ2nX6kL1sW4yZ"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gitlab"
TTL = 300.0

PRIVATE, INTERNAL, PUBLIC = "payments/core", "platform/handbook", "oss/sdk"
MEMBERS_ONLY, DISABLED, ARCHIVED = "oss/signing-keys", "ops/runbooks", "payments/legacy"
IDS = {PRIVATE: 11, INTERNAL: 12, PUBLIC: 13, MEMBERS_ONLY: 14, DISABLED: 15, ARCHIVED: 16}
ALICE, BOB = 7, 8


class Clock:
    """Monotonic seconds the test moves by hand (the TTL's clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def gl() -> Iterator[FakeGitLab]:
    with FakeGitLab(TOKEN) as fake:
        fake.add_project(PRIVATE, IDS[PRIVATE], "x", visibility="private")
        fake.add_project(INTERNAL, IDS[INTERNAL], "x", visibility="internal")
        fake.add_project(PUBLIC, IDS[PUBLIC], "x", visibility="public")
        fake.add_project(
            MEMBERS_ONLY, IDS[MEMBERS_ONLY], "x", visibility="public",
            repository_access_level="private",
        )  # fmt: skip
        fake.add_project(
            DISABLED, IDS[DISABLED], "x", visibility="internal", repository_access_level="disabled"
        )
        fake.add_project(ARCHIVED, IDS[ARCHIVED], "x", visibility="private", archived=True)
        fake.add_user("alice", ALICE, email="alice@corp.example")
        fake.add_user("bob", BOB, email="bob@corp.example")
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def perms(gl: FakeGitLab, clock: Clock) -> Iterator[GitLabPermissions]:
    p = GitLabPermissions(gl.url, TOKEN, ttl_seconds=TTL, clock=clock, timeout_seconds=5.0)
    yield p
    p.close()


def repos(*paths: str) -> dict[str, int]:
    return {p: IDS[p] for p in paths}


ALL = repos(*IDS)


def member_calls(gl: FakeGitLab, path: str | None = None) -> list[str]:
    found = [r.path for r in gl.calls("/api/v4/projects/") if "/members/all/" in r.path]
    return [p for p in found if path is None or p.startswith(f"/api/v4/projects/{IDS[path]}/")]


# -- roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "reads"),
    [(GUEST, False), (PLANNER, False), (REPORTER, True), (DEVELOPER, True),
     (MAINTAINER, True), (OWNER, True)],
)  # fmt: skip
def test_reporter_and_above_read_a_private_project_guests_do_not(
    gl: FakeGitLab, perms: GitLabPermissions, level: int, reads: bool
):
    """GitLab docs, "Roles and permissions" (View/Pull project code, footnote 1): Guests read
    code only of public and internal projects, not of private ones; "Project and group
    visibility": "Users with the Guest role cannot clone the project" (private). The roles'
    values: Projects members API, "Roles"."""
    assert tuple(ACCESS_LEVELS.values()) == (GUEST, PLANNER, REPORTER, DEVELOPER, MAINTAINER, OWNER)
    gl.set_member(PRIVATE, ALICE, level)
    assert perms.readable("alice", repos(PRIVATE)) == ({PRIVATE} if reads else set())
    assert member_calls(gl, PRIVATE) == [f"/api/v4/projects/{IDS[PRIVATE]}/members/all/{ALICE}"]


def test_a_non_member_reads_no_private_project(gl: FakeGitLab, perms: GitLabPermissions):
    """GitLab docs, Projects members API: ``GET /projects/:id/members/all/:user_id`` of a
    non-member is a 404 ("404 Not found"), which is a decision, not an outage."""
    gl.set_member(PRIVATE, BOB, DEVELOPER)
    assert perms.readable("alice", repos(PRIVATE, ARCHIVED)) == frozenset()
    assert len(member_calls(gl)) == 2
    assert perms.readable("bob", repos(PRIVATE)) == {PRIVATE}


def test_a_membership_awaiting_approval_does_not_count(gl: FakeGitLab, perms: GitLabPermissions):
    """GitLab docs, Projects members API: members can be ``awaiting`` or ``active`` (the
    ``state`` filter of "List all members of a project, including inherited and invited
    members", Premium); only an active membership gives access."""
    gl.set_member(PRIVATE, ALICE, DEVELOPER, membership_state="awaiting")
    gl.set_member(PRIVATE, BOB, DEVELOPER, membership_state="active")
    assert perms.readable("alice", repos(PRIVATE)) == frozenset()
    assert perms.readable("bob", repos(PRIVATE)) == {PRIVATE}


def test_min_access_level_is_configurable(gl: FakeGitLab, clock: Clock):
    gl.set_member(PRIVATE, ALICE, REPORTER)
    strict = GitLabPermissions(gl.url, TOKEN, min_access_level=DEVELOPER, clock=clock)
    assert strict.readable("alice", repos(PRIVATE)) == frozenset()
    gl.set_member(PRIVATE, BOB, DEVELOPER)
    assert strict.readable("bob", repos(PRIVATE)) == {PRIVATE}
    strict.close()


def test_an_archived_project_stays_readable(gl: FakeGitLab, perms: GitLabPermissions):
    """GitLab docs, "Archive a project": archiving makes the repository read-only, it stays
    readable to those who could read it."""
    gl.set_member(ARCHIVED, ALICE, REPORTER)
    assert perms.readable("alice", repos(ARCHIVED)) == {ARCHIVED}
    assert perms.readable("bob", repos(ARCHIVED)) == frozenset()


# -- visibility ----------------------------------------------------------------------------


def test_an_internal_project_is_readable_by_a_signed_in_non_external_user(
    gl: FakeGitLab, perms: GitLabPermissions
):
    """GitLab docs, "Project and group visibility": internal projects can be cloned by any
    authenticated user (Guests included) except external users. With an administrator's
    token ``external`` is known (Users API, "List users", administrator example)."""
    gl.admin_token = True
    assert perms.readable("alice", repos(INTERNAL, PRIVATE)) == {INTERNAL}
    assert member_calls(gl, INTERNAL) == []  # visibility decided it: no membership asked


def test_an_internal_project_is_not_readable_by_an_external_user_without_reporter(
    gl: FakeGitLab, perms: GitLabPermissions
):
    """GitLab docs, "External users": they "can only access projects and groups to which
    they are explicitly granted access"; "Roles and permissions": external users "must be
    given explicit access (at least the Reporter role) even if the project is internal"."""
    gl.admin_token = True
    gl.add_user("carol", 9, external=True)
    gl.add_user("dave", 10, external=True)
    gl.set_member(INTERNAL, 9, GUEST)
    gl.set_member(INTERNAL, 10, REPORTER)
    assert perms.readable("carol", repos(INTERNAL)) == frozenset()
    assert perms.readable("dave", repos(INTERNAL)) == {INTERNAL}


def test_an_internal_project_needs_membership_when_external_is_unknown(
    gl: FakeGitLab, perms: GitLabPermissions
):
    """A token that is not an administrator's gets ``UserBasic`` from ``GET /users``: no
    ``external`` (GitLab docs, Users API, "List users"; gitlabhq ``lib/api/users.rb``). The
    user might be external, and an external user may not read an internal project without
    Reporter: so unknown counts as external (fail closed), and membership decides."""
    with httpx.Client(trust_env=False) as http:
        listed = http.get(f"{gl.url}/api/v4/users?username=alice", headers={"PRIVATE-TOKEN": TOKEN})
    assert set(listed.json()[0]) == set(json.loads((FIXTURES / "user_basic.json").read_text()))
    assert "external" not in listed.json()[0] and "email" not in listed.json()[0]
    gl.requests.clear()
    assert perms.readable("alice", repos(INTERNAL)) == frozenset()
    assert member_calls(gl, INTERNAL) == [f"/api/v4/projects/{IDS[INTERNAL]}/members/all/{ALICE}"]
    gl.set_member(INTERNAL, BOB, REPORTER)
    assert perms.readable("bob", repos(INTERNAL)) == {INTERNAL}


@pytest.mark.parametrize("admin_token", [False, True])
def test_a_public_project_is_readable_by_every_active_user(
    gl: FakeGitLab, perms: GitLabPermissions, admin_token: bool
):
    """GitLab docs, "Project and group visibility": anyone may clone a public project;
    "External users": they "can access public groups and public projects"."""
    gl.admin_token = admin_token
    gl.add_user("erin", 11, external=True)
    assert perms.readable("alice", repos(PUBLIC, PRIVATE)) == {PUBLIC}
    assert perms.readable("erin", repos(PUBLIC)) == {PUBLIC}
    assert member_calls(gl, PUBLIC) == []


def test_repository_access_level_private_needs_membership_even_in_a_public_project(
    gl: FakeGitLab, perms: GitLabPermissions
):
    """GitLab docs, Projects API, "Project feature visibility level": ``private`` is "Only
    project members"; ``enabled`` is "Everyone with access"."""
    gl.admin_token = True
    gl.set_member(MEMBERS_ONLY, BOB, REPORTER)
    assert perms.readable("alice", repos(MEMBERS_ONLY)) == frozenset()
    assert perms.readable("bob", repos(MEMBERS_ONLY)) == {MEMBERS_ONLY}


def test_a_disabled_repository_is_readable_by_nobody(gl: FakeGitLab, perms: GitLabPermissions):
    """Projects API: ``disabled`` turns the repository feature off; even its Owner reads no
    code through it, so no membership is asked."""
    gl.admin_token = True
    gl.set_member(DISABLED, ALICE, OWNER)
    assert perms.readable("alice", repos(DISABLED)) == frozenset()
    assert member_calls(gl, DISABLED) == []


def test_a_project_gitlab_does_not_show_is_not_readable(gl: FakeGitLab, perms: GitLabPermissions):
    """``GET /projects/:id`` is a 404 for a project that does not exist or that the token may
    not see ("404 Project Not Found"): a decision, cached like the others."""
    assert perms.readable("alice", {"gone/repo": 999}) == frozenset()
    assert perms.readable("alice", {"gone/repo": 999}) == frozenset()
    assert len(gl.calls("/api/v4/projects/999")) == 1


def test_a_repo_without_a_project_id_is_not_readable_and_not_asked(
    gl: FakeGitLab, perms: GitLabPermissions
):
    assert perms.readable("alice", {"a/b": None, "c/d": 0, "e/f": True}) == frozenset()  # type: ignore[dict-item]
    assert gl.requests == []


def test_the_docs_example_project_is_read_as_gitlab_sends_it(
    gl: FakeGitLab, perms: GitLabPermissions
):
    """``tests/fixtures/gitlab/project.json``: Projects API, "Retrieve a project" example
    (``visibility`` private, ``repository_access_level`` enabled)."""
    project = json.loads((FIXTURES / "project.json").read_text())
    gl.projects[project["path_with_namespace"]] = project
    gl.set_member(project["path_with_namespace"], ALICE, REPORTER)
    target = {"diaspora/site": project["id"]}
    assert perms.readable("alice", target) == {"diaspora/site"}
    assert perms.readable("bob", target) == frozenset()


# -- users ---------------------------------------------------------------------------------


@pytest.mark.parametrize("admin_token", [False, True])
@pytest.mark.parametrize("state", ["blocked", "deactivated", "banned", "ldap_blocked"])
def test_a_user_who_is_not_active_reads_nothing(
    gl: FakeGitLab, perms: GitLabPermissions, admin_token: bool, state: str
):
    """Users API: ``state`` is ``active`` for a user who may sign in; a non-administrator's
    token does not even list ``blocked``, ``banned`` or ``ldap_blocked`` users (gitlabhq
    ``UsersFinder``, ``User::FORBIDDEN_SEARCH_STATES``). Either way: nothing, and cached."""
    gl.admin_token = admin_token
    gl.add_user("mallory", 12, state=state)
    gl.set_member(PRIVATE, 12, OWNER)
    assert perms.readable("mallory", ALL) == frozenset()
    assert perms.readable("mallory", ALL) == frozenset()
    assert len(gl.calls("/api/v4/users")) == 1
    assert gl.calls("/api/v4/projects/") == []


def test_an_unknown_user_reads_nothing_and_the_answer_is_cached(
    gl: FakeGitLab, perms: GitLabPermissions
):
    assert perms.readable("nobody", repos(PUBLIC)) == frozenset()
    assert perms.readable("NOBODY", repos(PUBLIC)) == frozenset()
    assert [r.path for r in gl.requests] == ["/api/v4/users?username=nobody"]
    assert perms.readable("", repos(PUBLIC)) == frozenset()
    assert len(gl.requests) == 1


def test_the_username_is_matched_exactly_and_case_insensitively(
    gl: FakeGitLab, perms: GitLabPermissions
):
    """GitLab docs, Users API: "Username search is case insensitive"; ``?username=`` is an
    exact match (gitlabhq ``UsersFinder#by_username``)."""
    gl.add_user("Alice.Smith", 13)
    gl.set_member(PRIVATE, 13, REPORTER)
    assert perms.readable("alice.smith", repos(PRIVATE)) == {PRIVATE}
    assert perms.readable("ALICE.SMITH", repos(PRIVATE)) == {PRIVATE}
    assert perms.readable("alice.smit", repos(PRIVATE)) == frozenset()


def test_users_are_parsed_from_the_docs_shapes():
    """Users API: the administrator's entity carries ``external``; ``UserBasic`` does not, so
    it is unknown (None), never False."""
    admin = json.loads((FIXTURES / "user_admin.json").read_text())
    basic = json.loads((FIXTURES / "user_basic.json").read_text())
    assert GitLabUser.from_payload(admin) == GitLabUser(1, "john_smith", "active", False)
    assert GitLabUser.from_payload({**admin, "external": True}).external is True  # type: ignore[union-attr]
    assert GitLabUser.from_payload(basic) == GitLabUser(1, "john_smith", "active", None)
    assert GitLabUser.from_payload({"username": "x"}) is None
    member = json.loads((FIXTURES / "member.json").read_text())
    assert member["access_level"] == DEVELOPER and "membership_state" not in member


# -- email lookup --------------------------------------------------------------------------


def test_email_lookup_with_an_administrators_token_uses_the_primary_email(
    gl: FakeGitLab, clock: Clock
):
    """Users API: ``?search=`` matches the primary email for an administrator's token
    (gitlabhq ``User.search``, ``with_private_emails``); the match must be exact."""
    gl.admin_token = True
    gl.add_user("alice-bot", 14, name="alice@corp.example mirror")  # contains it, no match
    gl.set_member(PRIVATE, ALICE, REPORTER)
    p = GitLabPermissions(gl.url, TOKEN, user_lookup="email", clock=clock)
    assert p.readable("Alice@Corp.Example", repos(PRIVATE, INTERNAL)) == {PRIVATE, INTERNAL}
    assert p.readable("alice-bot@corp.example", repos(PUBLIC)) == frozenset()
    assert gl.calls("/api/v4/users/") == []  # the list had the emails
    p.close()


def test_email_lookup_with_a_regular_token_compares_the_public_email(gl: FakeGitLab, clock: Clock):
    """Users API: without an administrator's token ``?search=`` matches only the public
    email and lists ``UserBasic`` (no email): the match is checked on ``GET /users/:id``'s
    ``public_email`` ("Get a single user"). A private primary email is not found: nothing."""
    gl.add_user("frank", 15, email="frank@corp.example", public_email="frank@corp.example")
    gl.set_member(PRIVATE, 15, REPORTER)
    gl.set_member(PRIVATE, ALICE, REPORTER)
    p = GitLabPermissions(gl.url, TOKEN, user_lookup="email", clock=clock)
    assert p.readable("frank@corp.example", repos(PRIVATE)) == {PRIVATE}
    assert [r.path for r in gl.calls("/api/v4/users/")] == ["/api/v4/users/15"]
    assert p.readable("alice@corp.example", repos(PRIVATE)) == frozenset()
    before = len(gl.requests)
    assert p.readable("not-an-email", repos(PUBLIC)) == frozenset()
    assert len(gl.requests) == before  # nothing to search for
    p.close()


# -- the cache -----------------------------------------------------------------------------


def test_a_second_request_asks_gitlab_nothing(gl: FakeGitLab, perms: GitLabPermissions):
    gl.set_member(PRIVATE, ALICE, REPORTER)
    first = perms.readable("alice", ALL)
    asked = len(gl.requests)
    assert first == {PRIVATE, PUBLIC}
    assert perms.readable("alice", ALL) == first
    assert perms.readable("alice", repos(PRIVATE)) == {PRIVATE}
    assert len(gl.requests) == asked
    assert perms.stats() == {"hits": 2, "misses": 1, "gitlab_calls": asked, "failures": 0}


def test_project_answers_are_shared_between_users(gl: FakeGitLab, perms: GitLabPermissions):
    perms.readable("alice", repos(PUBLIC, PRIVATE))
    perms.readable("bob", repos(PUBLIC, PRIVATE))
    assert len(gl.calls(f"/api/v4/projects/{IDS[PUBLIC]}")) == 1
    assert len(gl.calls(f"/api/v4/projects/{IDS[PRIVATE]}")) == 1 + 2  # project + 2 members


def test_a_revoked_membership_counts_until_the_ttl_then_not(
    gl: FakeGitLab, perms: GitLabPermissions, clock: Clock
):
    gl.set_member(PRIVATE, ALICE, DEVELOPER)
    assert perms.readable("alice", repos(PRIVATE)) == {PRIVATE}
    gl.remove_member(PRIVATE, ALICE)
    clock.advance(TTL - 1)
    assert perms.readable("alice", repos(PRIVATE)) == {PRIVATE}  # GitLab not asked again
    clock.advance(2)
    assert perms.readable("alice", repos(PRIVATE)) == frozenset()
    assert len(member_calls(gl, PRIVATE)) == 2


def test_invalidate_drops_one_user_or_everything(gl: FakeGitLab, perms: GitLabPermissions):
    gl.set_member(PRIVATE, ALICE, REPORTER)
    gl.set_member(PRIVATE, BOB, REPORTER)
    perms.readable("alice", repos(PRIVATE))
    perms.readable("bob", repos(PRIVATE))
    gl.remove_member(PRIVATE, ALICE)
    gl.remove_member(PRIVATE, BOB)
    perms.invalidate("ALICE")
    assert perms.readable("alice", repos(PRIVATE)) == frozenset()
    assert perms.readable("bob", repos(PRIVATE)) == {PRIVATE}
    projects_before = len(gl.calls(f"/api/v4/projects/{IDS[PRIVATE]}"))
    perms.invalidate()
    assert perms.readable("bob", repos(PRIVATE)) == frozenset()
    assert len(gl.calls(f"/api/v4/projects/{IDS[PRIVATE]}")) == projects_before + 2


def test_concurrent_requests_for_one_user_ask_gitlab_once(gl: FakeGitLab, clock: Clock):
    gl.delay_s = 0.05
    gl.set_member(PRIVATE, ALICE, REPORTER)
    p = GitLabPermissions(gl.url, TOKEN, clock=clock)
    start = threading.Barrier(8)
    answers: list[frozenset[str]] = []

    def ask() -> None:
        start.wait()
        answers.append(p.readable("alice", repos(PRIVATE, PUBLIC)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert answers == [frozenset({PRIVATE, PUBLIC})] * 8
    assert len(gl.calls("/api/v4/users")) == 1
    assert len(gl.calls(f"/api/v4/projects/{IDS[PUBLIC]}")) == 1
    assert p.stats()["misses"] == 1 and p.stats()["hits"] == 7
    p.close()


def test_undecided_projects_are_looked_up_in_parallel(gl: FakeGitLab, clock: Clock):
    """Eight private projects: a project and a membership lookup each, 0.2 s per answer;
    one after the other that is 3.4 s with the user's, in parallel about 0.6 s."""
    targets = {}
    for i in range(8):
        path = f"team/service-{i}"
        gl.add_project(path, 100 + i, "x")
        gl.set_member(path, ALICE, REPORTER if i % 2 else GUEST)
        targets[path] = 100 + i
    gl.delay_s = 0.2
    p = GitLabPermissions(gl.url, TOKEN, clock=clock)
    began = time.monotonic()
    got = p.readable("alice", targets)
    took = time.monotonic() - began
    assert got == {f"team/service-{i}" for i in (1, 3, 5, 7)}
    assert len(gl.requests) == 17
    assert took < 2.0, f"{took:.2f} s: the lookups ran one after the other"
    p.close()


# -- GitLab unavailable --------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503, 429])
def test_gitlab_down_with_a_fresh_cache_answers_from_it(
    gl: FakeGitLab, perms: GitLabPermissions, clock: Clock, status: int
):
    gl.set_member(PRIVATE, ALICE, REPORTER)
    assert perms.readable("alice", ALL) == {PRIVATE, PUBLIC}
    gl.down(status)
    asked = len(gl.requests)
    clock.advance(TTL - 1)
    assert perms.readable("alice", ALL) == {PRIVATE, PUBLIC}
    assert len(gl.requests) == asked


REFUSED_403 = (
    "GitLab refused coderag's token (403 Forbidden): it needs the read_api scope and an "
    "administrator's (or auditor's) access"
)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (500, "GitLab failed (500)"),
        (502, "GitLab failed (502)"),
        (503, "GitLab failed (503)"),
        (504, "GitLab failed (504)"),
        (429, "GitLab is rate limiting coderag (429 Too Many Requests)"),
        (403, REFUSED_403),
    ],
)
def test_gitlab_failing_with_nothing_cached_is_a_503_never_a_guess(
    gl: FakeGitLab, perms: GitLabPermissions, status: int, reason: str
):
    gl.down(status)
    with pytest.raises(PermissionsUnavailable) as info:
        perms.readable("alice", repos(PUBLIC))
    err = info.value
    assert isinstance(err, TransientError)
    assert (err.http_status, err.error_code) == (503, "permissions_unavailable")
    assert err.detail == (
        f"permissions unavailable: could not ask GitLab ({gl.url}) about user 'alice': {reason}"
    )
    assert len(gl.requests) == 1  # 429: python-gitlab's Retry-After sleep is off
    assert perms.stats()["failures"] == 1


def test_gitlab_down_after_the_ttl_is_a_503(gl: FakeGitLab, perms: GitLabPermissions, clock: Clock):
    gl.set_member(PRIVATE, ALICE, REPORTER)
    assert perms.readable("alice", repos(PRIVATE)) == {PRIVATE}
    gl.down()
    clock.advance(TTL + 1)
    with pytest.raises(PermissionsUnavailable, match=r"GitLab failed \(503\)"):
        perms.readable("alice", repos(PRIVATE))
    gl.up()
    assert perms.readable("alice", repos(PRIVATE)) == {PRIVATE}


def test_an_unknown_project_while_gitlab_is_down_fails_the_whole_answer(
    gl: FakeGitLab, perms: GitLabPermissions
):
    """Nothing partial: the projects already decided are no answer to the request."""
    gl.set_member(PRIVATE, ALICE, REPORTER)
    assert perms.readable("alice", repos(PRIVATE)) == {PRIVATE}
    gl.down()
    with pytest.raises(PermissionsUnavailable, match=f"about project {IDS[INTERNAL]}"):
        perms.readable("alice", repos(PRIVATE, INTERNAL))
    assert perms.readable("alice", repos(PRIVATE)) == {PRIVATE}  # still cached


def test_a_failed_membership_lookup_fails_the_answer(gl: FakeGitLab, perms: GitLabPermissions):
    gl.set_member(PRIVATE, ALICE, REPORTER)
    perms.readable("bob", repos(PRIVATE))  # the project's answer is cached now
    assert perms.readable("alice", repos(PUBLIC)) == {PUBLIC}  # and alice's user
    gl.down(502)
    with pytest.raises(PermissionsUnavailable, match=f"membership of user {ALICE} in project"):
        perms.readable("alice", repos(PRIVATE))


def test_a_refused_service_token_is_a_503_that_says_so(gl: FakeGitLab, clock: Clock):
    p = GitLabPermissions(gl.url, "glpat-revoked-000000000000", clock=clock)
    with pytest.raises(PermissionsUnavailable) as info:
        p.readable("alice", repos(PUBLIC))
    assert info.value.detail.endswith(
        "GitLab refused coderag's token (401 Unauthorized): revoked, expired or wrong"
    )
    assert "glpat-revoked" not in info.value.detail
    p.close()


def test_gitlab_unreachable_or_too_slow_is_a_503(clock: Clock):
    with FakeGitLab(TOKEN) as gone:
        url = gone.url
    p = GitLabPermissions(url, TOKEN, clock=clock)
    with pytest.raises(PermissionsUnavailable, match=r"unreachable \(ConnectionError\)"):
        p.readable("alice", {PUBLIC: 13})
    p.close()
    with FakeGitLab(TOKEN, delay_s=1.0) as slow:
        p = GitLabPermissions(slow.url, TOKEN, timeout_seconds=0.2, clock=clock)
        with pytest.raises(PermissionsUnavailable, match=r"no answer within 0.2 s \(ReadTimeout\)"):
            p.readable("alice", {PUBLIC: 13})
        p.close()


def test_a_non_json_answer_is_a_503(gl: FakeGitLab, perms: GitLabPermissions):
    """A proxy's HTML page (200, not JSON) is not GitLab answering."""
    original = gl._users_route

    def html(*args: Any) -> tuple[int, Any]:
        return 200, "<html>sign in</html>"

    gl._users_route = html  # type: ignore[method-assign]
    with pytest.raises(PermissionsUnavailable, match="not the JSON"):
        perms.readable("alice", repos(PUBLIC))
    gl._users_route = original  # type: ignore[method-assign]


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gitlab_url": "gitlab.example.com"}, "must be http"),
     ({"token": " "}, "token is needed"),
     ({"min_access_level": 5}, "min_access_level"),
     ({"min_access_level": 60}, "min_access_level"),
     ({"ttl_seconds": -1}, "TTL"),
     ({"user_lookup": "sub"}, "user_lookup"),
     ({"timeout_seconds": 0}, "timeout")],
)  # fmt: skip
def test_settings_that_cannot_work_are_refused(kwargs: dict[str, Any], message: str):
    args: dict[str, Any] = {"gitlab_url": "https://gitlab.example.com", "token": TOKEN, **kwargs}
    with pytest.raises(ConfigError, match=message):
        GitLabPermissions(args.pop("gitlab_url"), args.pop("token"), **args)
