"""Is GitLab still sending us pushes? The project hook's health, read with python-gitlab.

GitLab sends a delivery once and never re-sends it by itself. A hook whose deliveries fail
4 times in a row is disabled *temporarily* (1 minute, doubling up to 24 hours) and after 40
failures in a row *permanently* (gitlabhq ``app/models/concerns/web_hooks/auto_disabling.rb``);
meanwhile every push is lost to us. The hooks API shows that state as ``alert_status``
(``executable``, ``temporarily_disabled``, ``disabled``) and ``disabled_until``, and a
successful test delivery (``POST /projects/:id/hooks/:hook_id/test/:trigger``) re-enables
the hook (GitLab docs "Failing webhooks").

:func:`check_hook` reads that state and, for a temporarily disabled hook, sends a test push
delivery when allowed: GitLab would retry it by itself after the back-off, but each push
until then is lost, and the back-off doubles up to a day. A permanently disabled hook is not
touched, only reported (40 failures in a row deserve an operator's look): WARNING in the log
for a temporarily disabled hook, ERROR for a permanently disabled one.

The missed pushes themselves are caught by the reconciliation pass that runs beside this
check (:mod:`coderag.freshness`), so re-enabling the hook restores low latency; it is not
what makes the index correct.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from coderag.errors import CoderagError
from coderag.repos import RepoRecord
from coderag.settings import Settings
from webhooks.gitlab_hooks import _client, _gitlab_errors

__all__ = [
    "DISABLED",
    "EXECUTABLE",
    "TEMPORARILY_DISABLED",
    "TEST_TRIGGER",
    "HookHealth",
    "check_hook",
]

log = logging.getLogger(__name__)

EXECUTABLE = "executable"
TEMPORARILY_DISABLED = "temporarily_disabled"
DISABLED = "disabled"
TEST_TRIGGER = "push_events"
"""The test delivery that re-enables a hook: a push event, the kind coderag indexes (GitLab
builds it from the project's latest commits; the push it announces is already indexed or
about to be, so it costs at most one folded run)."""


@dataclass(frozen=True, slots=True)
class HookHealth:
    """What GitLab says about one repository's project hook, and what was done about it."""

    repo: str
    hook_id: int | None
    managed: bool
    """Whether coderag manages a hook for the repo (created it, and has a GitLab token)."""
    alert_status: str | None
    """GitLab's ``alert_status``; ``None`` when unknown (unmanaged, GitLab unreachable, or a
    GitLab too old to report it)."""
    disabled_until: str | None
    """GitLab's ``disabled_until`` (ISO 8601) of a temporarily disabled hook."""
    reenabled: bool
    """A test delivery re-enabled the hook during this check."""
    checked_at: float
    error: str | None = None

    @property
    def temporarily_disabled(self) -> bool:
        return self.alert_status == TEMPORARILY_DISABLED

    @property
    def permanently_disabled(self) -> bool:
        return self.alert_status == DISABLED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_hook(settings: Settings, record: RepoRecord, *, reenable: bool = True) -> HookHealth:
    """Read the hook of ``record`` from GitLab; re-enable it if temporarily disabled.

    Never raises for GitLab's failures: they are the record's ``error`` (a refused test
    delivery too, e.g. a token without the Maintainer role), so one repository's trouble
    cannot stop the pass over the others.
    """
    now = time.time()
    base = dict(repo=record.id, hook_id=record.hook_id, checked_at=now)
    if (
        record.hook_id is None
        or record.gitlab_project_id is None
        or settings.gitlab_token is None
        or not settings.gitlab_url
    ):
        return HookHealth(
            **base, managed=False, alert_status=None, disabled_until=None, reenabled=False
        )
    try:
        status, until = _read(settings, record)
    except CoderagError as exc:
        log.warning(
            "hook health unknown", extra={"repo": record.id, "error": exc.detail}
        )
        return HookHealth(
            **base,
            managed=True,
            alert_status=None,
            disabled_until=None,
            reenabled=False,
            error=f"{exc.error_code}: {exc.detail}",
        )
    reenabled, error = False, None
    if status == TEMPORARILY_DISABLED and reenable:
        try:
            _test(settings, record)
            status, until = _read(settings, record)
            reenabled = status == EXECUTABLE
        except CoderagError as exc:
            error = f"re-enabling the hook failed: {exc.error_code}: {exc.detail}"
    health = HookHealth(
        **base,
        managed=True,
        alert_status=status,
        disabled_until=until,
        reenabled=reenabled,
        error=error,
    )
    _log(health)
    return health


def _project_hooks(settings: Settings, record: RepoRecord) -> Any:
    assert settings.gitlab_url is not None and record.gitlab_project_id is not None
    gl = _client(settings, settings.gitlab_url)
    return gl.projects.get(record.gitlab_project_id, lazy=True).hooks


def _read(settings: Settings, record: RepoRecord) -> tuple[str | None, str | None]:
    with _gitlab_errors(f"reading the hook of {record.id}"):
        hook = _project_hooks(settings, record).get(record.hook_id)
    attrs = hook.attributes
    status = attrs.get("alert_status")
    until = attrs.get("disabled_until")
    return (str(status) if status else None), (str(until) if until else None)


def _test(settings: Settings, record: RepoRecord) -> None:
    """One test delivery (GitLab rate-limits these, and each failed one extends the
    back-off: at most one per check)."""
    with _gitlab_errors(f"test delivery of the hook of {record.id}"):
        _project_hooks(settings, record).get(record.hook_id, lazy=True).test(TEST_TRIGGER)


def _log(health: HookHealth) -> None:
    extra = {
        "repo": health.repo,
        "hook_id": health.hook_id,
        "alert_status": health.alert_status,
        "disabled_until": health.disabled_until,
    }
    if health.permanently_disabled:
        log.error(
            "GitLab disabled the project hook permanently: no push reaches coderag until "
            "it is re-enabled (Settings > Webhooks > Test); reconciliation keeps the index "
            "current meanwhile",
            extra=extra,
        )
    elif health.reenabled:
        log.warning("re-enabled the temporarily disabled project hook", extra=extra)
    elif health.temporarily_disabled:
        log.warning(
            "GitLab disabled the project hook temporarily: pushes are not delivered until "
            "disabled_until; reconciliation keeps the index current meanwhile",
            extra={**extra, "error": health.error},
        )
