"""GitLab webhook payloads, parsed as far as coderag needs them and no further.

Every model ignores unknown fields: GitLab adds fields in minor releases, and a webhook that
rejects a payload because of a new field would silently stop indexing. What we do need is
validated (shas, refs, ids), so a malformed delivery is a clear 422, never a task.

Shapes: https://docs.gitlab.com/user/project/integrations/webhook_events/ (Push, Tag, Merge
request events). The recorded fixtures in ``tests/fixtures/gitlab/`` follow them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = [
    "EVENT_MERGE_REQUEST",
    "EVENT_PUSH",
    "EVENT_SYSTEM",
    "EVENT_TAG_PUSH",
    "MergeRequestAttributes",
    "MergeRequestEvent",
    "Project",
    "PushEvent",
    "TagPushEvent",
    "is_null_sha",
]

EVENT_PUSH = "Push Hook"
EVENT_TAG_PUSH = "Tag Push Hook"
EVENT_MERGE_REQUEST = "Merge Request Hook"
EVENT_SYSTEM = "System Hook"

# sha1 or sha256 object names (GitLab supports sha256 repositories)
_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def is_null_sha(sha: str) -> bool:
    """GitLab's "no commit": ``after`` of a deleted ref, ``before`` of a created one."""
    return set(sha) == {"0"}


def _check_sha(v: str) -> str:
    v = v.strip().lower()
    if not _SHA_RE.match(v):
        raise ValueError("not a git commit sha")
    return v


Sha = Annotated[str, AfterValidator(_check_sha)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Project(_Model):
    id: int
    path_with_namespace: str
    name: str | None = None
    git_http_url: str | None = None
    git_ssh_url: str | None = None
    web_url: str | None = None
    default_branch: str | None = None


class _RefPush(_Model):
    before: Sha
    after: Sha
    ref: str
    checkout_sha: str | None = None
    user_username: str | None = None
    project: Project
    total_commits_count: int = 0

    @property
    def deleted(self) -> bool:
        return is_null_sha(self.after)

    @property
    def created(self) -> bool:
        return is_null_sha(self.before)


class PushEvent(_RefPush):
    """``X-Gitlab-Event: Push Hook``: a branch was created, updated or deleted.

    ``commits[]`` holds at most 20 commits: never index from it, diff the mirror instead.
    """

    object_kind: Literal["push"]

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None


class TagPushEvent(_RefPush):
    """``X-Gitlab-Event: Tag Push Hook``: a tag was created or deleted."""

    object_kind: Literal["tag_push"]

    @property
    def tag(self) -> str | None:
        return self.ref.removeprefix("refs/tags/") if self.ref.startswith("refs/tags/") else None


class LastCommit(_Model):
    id: Sha


class MergeRequestAttributes(_Model):
    iid: int
    source_branch: str
    target_branch: str
    source_project_id: int
    target_project_id: int
    state: str
    action: str | None = None
    last_commit: LastCommit | None = None


class MergeRequestEvent(_Model):
    """``X-Gitlab-Event: Merge Request Hook``. We index the source branch of open MRs whose
    source is the same project (a fork's branch is not in our mirror)."""

    object_kind: Literal["merge_request"]
    project: Project
    object_attributes: MergeRequestAttributes

    @property
    def same_project(self) -> bool:
        a = self.object_attributes
        return a.source_project_id == a.target_project_id == self.project.id
