"""The registry of repositories that have indexing turned on.

Records live in the index's own durable state (``index.get_state`` under ``repo/<id>``), not
in a separate database: the embedded default then needs no extra service, the distributed
mode shares them through Qdrant, and a repository's record can never outlive or predate its
points by living somewhere else.

The webhook secret is never stored: only its sha256 is, and a presented token is checked by
hashing it and comparing digests in constant time, so a leaked state dump does not let anyone
forge pushes.
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

from coderag.errors import InputError, NotFoundError
from coderag.index import VectorIndex

__all__ = [
    "REPO_ID_PATTERN",
    "REPO_STATE_PREFIX",
    "RepoIdPath",
    "RepoRecord",
    "RepoRegistry",
    "hash_secret",
    "parse_repo_id",
    "run_state_key",
]

REPO_STATE_PREFIX = "repo/"
RUN_STATE_PREFIX = "run/"
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
    hook_id: int | None = None
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

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the secret hash."""
        return self.model_dump(exclude={"secret_hash"})


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
        rec = self.get(repo_id)
        if rec is None:
            raise NotFoundError(f"repository {repo_id!r} is not registered")
        return rec

    def put(self, record: RepoRecord) -> RepoRecord:
        self.index.set_state(self._key(record.id), record.model_dump(mode="json"))
        return record

    def list(self) -> list[RepoRecord]:
        states = self.index.list_state(REPO_STATE_PREFIX)
        return sorted((RepoRecord.model_validate(v) for v in states.values()), key=lambda r: r.id)

    def delete(self, repo_id: str) -> bool:
        """Forget the repository and its run records; its points are the indexer's job."""
        existed = self.get(repo_id) is not None
        self.index.set_state(self._key(repo_id), None)
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
