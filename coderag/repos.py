"""The registry of repositories that have indexing turned on.

Records live in the index's own durable state (``index.get_state`` under ``repo/<id>``), not
in a separate database: the embedded default then needs no extra service, the distributed
mode shares them through Qdrant, and a repository's record can never outlive or predate its
points by living somewhere else.

The webhook secret is never stored: only its sha256 is, and a presented token is checked by
hashing it and comparing digests in constant time, so a leaked state dump does not let anyone
forge pushes. A signing token (signed deliveries) cannot be hashed, since checking an HMAC needs
the key: it is stored encrypted (:mod:`coderag.secretbox`).

Identity: a record registered through GitLab knows its ``gitlab_project_id``, which GitLab
never changes, while a rename or transfer changes the path (``project.path_with_namespace``)
that is the record's id. ``project/<id>`` in the state maps a project id to the record's
current path (kept by :meth:`RepoRegistry.put` and :meth:`RepoRegistry.delete`), so the webhook
finds a record by the project id it carries; :meth:`RepoRegistry.move` moves a record to its
new path and leaves ``alias/<old path>`` naming the new one, which reads of the old path
answer with :class:`RepoMovedError`. Records without a project id (registered from a plain git
URL) are found by path only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import time
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from coderag.errors import ConflictError, InputError, NotFoundError
from coderag.index import VectorIndex

__all__ = [
    "ALIAS_STATE_PREFIX",
    "PROJECT_STATE_PREFIX",
    "REPO_ID_PATTERN",
    "REPO_STATE_PREFIX",
    "RepoIdPath",
    "RepoMovedError",
    "RepoRecord",
    "RepoRegistry",
    "hash_secret",
    "parse_repo_id",
    "run_state_key",
    "token_matches",
]

REPO_STATE_PREFIX = "repo/"
RUN_STATE_PREFIX = "run/"
PROJECT_STATE_PREFIX = "project/"
"""``project/<GitLab project id>`` -> ``{"repo": current path}``."""
ALIAS_STATE_PREFIX = "alias/"
"""``alias/<old path>`` -> ``{"moved_to", "gitlab_project_id", "moved_at"}``."""
_SEGMENT = (
    r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]*|\.(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*)?|\.\.[A-Za-z0-9_.-]+)"
)
REPO_ID_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})+$"
"""A GitLab ``group/project`` path: two or more segments of ``[A-Za-z0-9_.-]``, none starting
with ``-`` and none ``..``. Written without look-around so that the one pattern serves Python,
pydantic's Rust regex and the OpenAPI schema (clients and fuzzers draw ids from it)."""
_REPO_ID_RE = re.compile(REPO_ID_PATTERN)

RepoIdPath = Annotated[
    str,
    Path(
        description="``group/project`` (its ``/`` may be sent as ``%2F``)",
        min_length=3,
        max_length=512,
        pattern=REPO_ID_PATTERN,
        examples=["group/project"],
    ),
]
"""A repo id as a path parameter of any route: one pattern in the code and the schema."""
_DUMMY_HASH = hashlib.sha256(b"coderag: no such repository").hexdigest()


def hash_secret(secret: str) -> str:
    """sha256 hex of a webhook secret: what the registry keeps instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class RepoMovedError(NotFoundError):
    """The repository is no longer at this path: GitLab renamed or transferred the project.

    A 410 rather than a redirect: reads name the repo in a JSON body or a path of the API,
    so the client is told the new path (``detail``) and decides; ``moved_to`` holds it.
    """

    error_code = "repo_moved"
    http_status = 410

    def __init__(self, repo_id: str, moved_to: str) -> None:
        super().__init__(
            f"repository {repo_id!r} moved to {moved_to!r} (renamed or transferred on GitLab): "
            f"use {moved_to!r}"
        )
        self.repo_id = repo_id
        self.moved_to = moved_to


def token_matches(record: RepoRecord | None, presented: str | None) -> bool:
    """Constant-time check of a webhook token against ``record``'s stored hash.

    No record and no token still cost one comparison (against a dummy hash), so timing
    tells nobody whether a project is registered.
    """
    expected = record.secret_hash if record is not None else _DUMMY_HASH
    ok = hmac.compare_digest(expected.encode(), hash_secret(presented or "").encode())
    return ok and record is not None and bool(presented)


def run_state_key(repo_id: str, branch: str) -> str:
    """State key of the last indexing run of one branch (lag and outcome, for metrics)."""
    return f"{RUN_STATE_PREFIX}{repo_id}/{branch}"


class RepoRecord(BaseModel):
    """One repository with indexing on. Frozen: change it with ``model_copy(update=...)``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    """GitLab path with namespace, ``group/subgroup/project``: what webhooks name it by."""
    url: str
    """Clone URL without credentials (the token travels in a header, see ``indexer.git``)."""
    gitlab_project_id: int | None = None
    branches: list[str] = Field(default_factory=lambda: ["main"])
    """fnmatch patterns of the branches to index (``main``, ``release/*``)."""
    secret_hash: str
    signing_token_enc: str | None = None
    """The hook's ``whsec_`` signing token, encrypted (:class:`coderag.secretbox.SecretBox`);
    set: every delivery must carry a valid ``webhook-signature``."""
    hook_id: int | None = None
    previous_ids: list[str] = Field(default_factory=list)
    """Paths the project had before renames or transfers, oldest first."""
    created_at: float = Field(default_factory=time.time)
    last_run: dict[str, Any] | None = None
    last_error: str | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        v = v.strip("/")
        if not _REPO_ID_RE.fullmatch(v) or ".." in v.split("/"):
            raise ValueError("repo id must be a GitLab path like 'group/project'")
        return v

    @field_validator("branches")
    @classmethod
    def _check_branches(cls, v: list[str]) -> list[str]:
        out = [b.strip() for b in v if b.strip()]
        if not out:
            raise ValueError("at least one branch pattern is needed")
        return out

    @field_validator("secret_hash")
    @classmethod
    def _check_hash(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("secret_hash must be a sha256 hex digest, never the secret itself")
        return v

    def branch_enabled(self, branch: str) -> bool:
        """Whether pushes to ``branch`` are indexed (any pattern matches, case-sensitive)."""
        return any(fnmatch.fnmatchcase(branch, pat) for pat in self.branches)

    @property
    def signed(self) -> bool:
        return self.signing_token_enc is not None

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the secret hash and the sealed signing token."""
        out = self.model_dump(exclude={"secret_hash", "signing_token_enc"})
        out["signed"] = self.signed
        return out


class RepoRegistry:
    """CRUD over :class:`RepoRecord` in the index state. Cheap; safe to build per request."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index

    @staticmethod
    def _key(repo_id: str) -> str:
        return f"{REPO_STATE_PREFIX}{repo_id.strip('/')}"

    def get(self, repo_id: str) -> RepoRecord | None:
        raw = self.index.get_state(self._key(repo_id))
        return RepoRecord.model_validate(raw) if raw else None

    def require(self, repo_id: str) -> RepoRecord:
        """The record; :class:`RepoMovedError` for a path the project left,
        :class:`NotFoundError` for one never registered."""
        rec = self.get(repo_id)
        if rec is None:
            self.check_moved(repo_id)
            raise NotFoundError(f"repository {repo_id!r} is not registered")
        return rec

    def put(self, record: RepoRecord) -> RepoRecord:
        """Store the record, and point its project id at it."""
        self.index.set_state(self._key(record.id), record.model_dump(mode="json"))
        if record.gitlab_project_id is not None:
            key = f"{PROJECT_STATE_PREFIX}{record.gitlab_project_id}"
            if (self.index.get_state(key) or {}).get("repo") != record.id:
                self.index.set_state(key, {"repo": record.id})
        return record

    # ---------------------------------------------------------------- identity
    def get_by_project(self, project_id: int) -> RepoRecord | None:
        """The record of GitLab project ``project_id``, whatever its path now."""
        entry = self.index.get_state(f"{PROJECT_STATE_PREFIX}{int(project_id)}")
        if not entry or not entry.get("repo"):
            return None
        rec = self.get(str(entry["repo"]))
        return rec if rec is not None and rec.gitlab_project_id == int(project_id) else None

    def index_projects(self) -> int:
        """Write ``project/<id>`` for every record that has a project id (records stored
        before the index existed); returns how many were missing."""
        n = 0
        for rec in self.list():
            if rec.gitlab_project_id is None:
                continue
            key = f"{PROJECT_STATE_PREFIX}{rec.gitlab_project_id}"
            if not self.index.get_state(key):
                self.index.set_state(key, {"repo": rec.id})
                n += 1
        return n

    def alias(self, repo_id: str) -> dict[str, Any] | None:
        """Where a project that had this path went (``moved_to``), if it moved."""
        raw = self.index.get_state(f"{ALIAS_STATE_PREFIX}{repo_id.strip('/')}")
        return dict(raw) if raw and raw.get("moved_to") else None

    def check_moved(self, repo_id: str) -> None:
        """Raise :class:`RepoMovedError` when ``repo_id`` is a path a registered project
        left (and no record took it since)."""
        alias = self.alias(repo_id)
        if alias is not None and self.get(repo_id) is None:
            raise RepoMovedError(repo_id.strip("/"), str(alias["moved_to"]))

    def move(self, record: RepoRecord, new_id: str, *, url: str | None = None) -> RepoRecord:
        """Move ``record`` to path ``new_id`` (GitLab renamed or transferred the project):
        same secret, signing token, hook and project id; ``alias/<old>`` names the new path.

        The new record is written first: a crash half-way leaves both paths registered (the
        project index already names the new one), never neither. The old path's points and
        runs are not touched here: that is the removal task the caller schedules.
        """
        new_id = parse_repo_id(new_id)
        old_id = record.id
        if new_id == old_id:
            return record
        there = self.get(new_id)
        if there is not None and there.gitlab_project_id != record.gitlab_project_id:
            raise ConflictError(f"repository {new_id!r} is registered for another project")
        moved = record.model_copy(
            update={
                "id": new_id,
                "url": url or record.url,
                "previous_ids": [p for p in record.previous_ids if p != new_id] + [old_id],
            }
        )
        self.put(moved)
        alias = {
            "moved_to": new_id,
            "gitlab_project_id": record.gitlab_project_id,
            "moved_at": time.time(),
        }
        self.index.set_state(f"{ALIAS_STATE_PREFIX}{old_id}", alias)
        for key, entry in self.index.list_state(ALIAS_STATE_PREFIX).items():
            if entry.get("moved_to") == old_id:  # an older path: point it at the newest
                self.index.set_state(key, {**entry, "moved_to": new_id})
        self.index.set_state(f"{ALIAS_STATE_PREFIX}{new_id}", None)  # a record again
        self.index.set_state(self._key(old_id), None)
        return moved

    def gitlab_projects(self) -> dict[str, int]:
        """Registered repo id -> GitLab project id, for every record that has one: the repos a
        person can be granted (their permissions come from GitLab, by project id). Read from
        the ``project/<id>`` entries, so renames are followed."""
        out: dict[str, int] = {}
        for key, value in self.index.list_state(PROJECT_STATE_PREFIX).items():
            pid = key.removeprefix(PROJECT_STATE_PREFIX)
            repo = value.get("repo") if isinstance(value, dict) else None
            if pid.isdigit() and isinstance(repo, str):
                out[repo] = int(pid)
        return out

    def list(self) -> list[RepoRecord]:
        states = self.index.list_state(REPO_STATE_PREFIX)
        return sorted((RepoRecord.model_validate(v) for v in states.values()), key=lambda r: r.id)

    def delete(self, repo_id: str) -> bool:
        """Forget the repository, its run records, its project index entry and the aliases
        of its old paths; its points are the indexer's job.

        The alias *at* ``repo_id`` stays: deleting a path a project left (the removal task
        of its old name) must keep telling readers where it went.
        """
        rec = self.get(repo_id)
        existed = rec is not None
        self.index.set_state(self._key(repo_id), None)
        rid0 = repo_id.strip("/")
        if rec is not None and rec.gitlab_project_id is not None:
            key = f"{PROJECT_STATE_PREFIX}{rec.gitlab_project_id}"
            if (self.index.get_state(key) or {}).get("repo") == rid0:
                self.index.set_state(key, None)
        if existed:
            for key, entry in self.index.list_state(ALIAS_STATE_PREFIX).items():
                if entry.get("moved_to") == rid0:
                    self.index.set_state(key, None)
        # The prefix also lists the runs of repos nested under this path ("g/b/sub" under
        # "g/b"): the record's own repo field decides, as in ``coderag.status``.
        rid = repo_id.strip("/")
        for key, run in self.index.list_state(f"{RUN_STATE_PREFIX}{rid}/").items():
            if run.get("repo") == rid:
                self.index.set_state(key, None)
        return existed

    def verify_secret(
        self, repo_id: str, presented: str | None, *, record: RepoRecord | None = None
    ) -> bool:
        """Constant-time check of a webhook token against the stored hash.

        Unknown repos and missing tokens still cost one comparison, so timing tells nothing.
        ``record`` saves a state read when the caller already holds it.
        """
        rec = (
            record if record is not None and record.id == repo_id.strip("/") else self.get(repo_id)
        )
        expected = rec.secret_hash if rec is not None else _DUMMY_HASH
        given = hash_secret(presented or "")
        ok = hmac.compare_digest(expected.encode(), given.encode())
        return ok and rec is not None and bool(presented)

    def branch_enabled(self, repo_id: str, branch: str) -> bool:
        rec = self.get(repo_id)
        return rec is not None and rec.branch_enabled(branch)

    # ---------------------------------------------------------------- run bookkeeping
    def record_run(self, repo_id: str, branch: str, run: dict[str, Any]) -> None:
        """Keep the outcome of one run: per branch (lag metrics) and on the repo record.

        Written only while the repository is still registered, so a run finishing after a
        removal cannot bring the record back.
        """
        rec = self.get(repo_id)
        if rec is None:
            return
        prev = self.index.get_state(run_state_key(repo_id, branch)) or {}
        entry = {**run, "repo": repo_id, "branch": branch, "runs": int(prev.get("runs", 0)) + 1}
        self.index.set_state(run_state_key(repo_id, branch), entry)
        err = run.get("error")
        self.put(rec.model_copy(update={"last_run": entry, "last_error": err}))

    def branch_runs(self, repo_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Last run per branch (``run/<repo>/<branch>`` -> record), for status and metrics."""
        prefix = RUN_STATE_PREFIX + (f"{repo_id.strip('/')}/" if repo_id else "")
        return self.index.list_state(prefix)


def parse_repo_id(value: str) -> str:
    """Validate a repo id given by a caller (raises :class:`InputError`)."""
    v = value.strip().strip("/")
    if not _REPO_ID_RE.fullmatch(v) or ".." in v.split("/"):
        raise InputError(f"not a GitLab project path: {value!r}")
    return v
