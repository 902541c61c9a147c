"""The point payload and the state keys: the one place that knows their layout.

The indexer writes a :class:`ChunkPayload` for every point and the retriever reads it back;
both go through :meth:`ChunkPayload.to_dict` and :meth:`ChunkPayload.from_dict`, so the
stored field names are spelled once. ``dirs`` (the ancestor directories of ``path``) is
derived on write, never stored by callers: it exists only so a glob's literal prefix can be
filtered inside Qdrant.

The index also keeps small state records (the last commit indexed per repo and branch) under
keys made by :func:`branch_state_key`; :func:`branch_state_prefix` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coderag.index.base import ancestor_dirs

if TYPE_CHECKING:
    from coderag.models import Chunk

__all__ = ["ChunkPayload", "branch_state_key", "branch_state_prefix", "tag_label"]

_STATE_BRANCH = "branch/"


def tag_label(tag: str) -> str:
    """The ``branches`` label of an indexed tag. ``:`` is illegal in git ref names, so a tag
    label can never collide with a branch name."""
    return f"tag:{tag}"


def branch_state_key(repo: str, branch: str) -> str:
    """State key of one (repo, branch): its last indexed commit and index format."""
    return f"{_STATE_BRANCH}{repo}/{branch}"


def branch_state_prefix(repo: str | None = None) -> str:
    """Prefix that lists the branch states of ``repo`` (every repo when ``None``).

    A prefix alone is ambiguous (``branch/a/b/c`` is repo ``a/b`` branch ``c`` or repo ``a``
    branch ``b/c``): callers check the record's own ``repo`` field.
    """
    return f"{_STATE_BRANCH}{repo}/" if repo else _STATE_BRANCH


@dataclass(frozen=True, slots=True)
class ChunkPayload:
    """What one point carries besides its vectors (see ``coderag.index.base``)."""

    repo: str
    branches: tuple[str, ...]
    path: str
    language: str
    start_line: int
    end_line: int
    text: str
    hash: str
    symbol: str = ""
    kind: str = "block"
    commit: str = ""

    @classmethod
    def from_chunk(cls, chunk: Chunk, branches: list[str] | tuple[str, ...]) -> ChunkPayload:
        return cls(
            repo=chunk.repo,
            branches=tuple(branches),
            path=chunk.path,
            language=chunk.language,
            start_line=chunk.start_line,
            end_line=chunk.end_line,
            text=chunk.text,
            hash=chunk.text_hash,
            symbol=chunk.symbol,
            kind=chunk.kind,
            commit=chunk.commit,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "branches": list(self.branches),
            "path": self.path,
            "dirs": ancestor_dirs(self.path),
            "language": self.language,
            "symbol": self.symbol,
            "kind": self.kind,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "hash": self.hash,
            "commit": self.commit,
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, p: dict[str, Any]) -> ChunkPayload:
        """Read a stored payload; a missing field reads as empty (payloads written by a
        partial ``with_payload`` selection carry only what was asked for)."""
        return cls(
            repo=str(p.get("repo", "")),
            branches=tuple(p.get("branches") or ()),
            path=str(p.get("path", "")),
            language=str(p.get("language", "")),
            start_line=int(p.get("start_line", 0)),
            end_line=int(p.get("end_line", 0)),
            text=str(p.get("text", "")),
            hash=str(p.get("hash", "")),
            symbol=str(p.get("symbol", "")),
            kind=str(p.get("kind", "block")),
            commit=str(p.get("commit", "")),
        )
