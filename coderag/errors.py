"""The exception tree of coderag.

Every error coderag raises on purpose derives from :class:`CoderagError`. Library errors
(qdrant, git, gitlab, tree-sitter, model loading) are translated at the boundary with
:func:`translate`, so callers catch one family and the API maps each class to one
``{"error_code", "detail"}`` shape.

    CoderagError
    ├── ConfigError            settings that cannot work (missing model path, bad backend)
    ├── InputError             bad input from a caller (unknown repo, bad glob, bad payload)
    │   ├── NotFoundError      the thing named does not exist (repo, branch, commit)
    │   └── ConflictError      the thing to create exists already (a registered repo)
    ├── AuthError              missing or wrong credentials
    │   └── ForbiddenError     credentials valid, scope does not cover the resource
    ├── IndexError_            the vector index failed (qdrant / edge)
    │   └── IndexLockedError   the Edge shard is owned by another process
    ├── GitError               git failed (clone, fetch, diff, cat-file)
    ├── GitLabError            the GitLab API failed
    ├── EmbeddingError         the model could not be loaded or run
    └── TransientError         worth retrying (broker down, fetch timeout)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "AuthError",
    "CoderagError",
    "ConfigError",
    "ConflictError",
    "EmbeddingError",
    "ForbiddenError",
    "GitError",
    "GitLabError",
    "IndexError_",
    "IndexLockedError",
    "InputError",
    "NotFoundError",
    "TransientError",
    "translate",
]


class CoderagError(Exception):
    """Base of every error coderag raises on purpose."""

    error_code: str = "internal_error"
    http_status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(CoderagError):
    error_code = "config_error"
    http_status = 500


class InputError(CoderagError):
    error_code = "invalid_input"
    http_status = 400


class NotFoundError(InputError):
    error_code = "not_found"
    http_status = 404


class ConflictError(InputError):
    """A 409, not a 400: the request is well formed, the state it would create exists."""

    error_code = "conflict"
    http_status = 409


class AuthError(CoderagError):
    error_code = "unauthorized"
    http_status = 401


class ForbiddenError(AuthError):
    error_code = "forbidden"
    http_status = 403


class IndexError_(CoderagError):
    error_code = "index_error"
    http_status = 503


class IndexLockedError(IndexError_):
    error_code = "index_locked"


class GitError(CoderagError):
    error_code = "git_error"
    http_status = 502


class GitLabError(CoderagError):
    error_code = "gitlab_error"
    http_status = 502


class EmbeddingError(CoderagError):
    error_code = "embedding_error"
    http_status = 503


class TransientError(CoderagError):
    error_code = "unavailable"
    http_status = 503


@contextmanager
def translate(target: type[CoderagError], what: str) -> Iterator[None]:
    """Re-raise any non-coderag exception inside the block as ``target``.

    Keeps the cause chained (``raise ... from``) so logs still show the library error, while
    callers above the boundary only ever see the coderag tree.
    """
    try:
        yield
    except CoderagError:
        raise
    except Exception as exc:
        raise target(f"{what}: {type(exc).__name__}: {exc}") from exc
