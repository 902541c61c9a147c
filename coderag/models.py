"""Frozen records passed between the stages of the data path.

chunkers produce :class:`Chunk`; the indexer stamps repo and commit on it and writes it to
the index; the retriever reads it back as :class:`Hit`. Keeping them frozen and typed means a
stage can never mutate what another stage still holds.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["POINT_NAMESPACE", "Chunk", "Hit", "SkippedFile", "content_hash", "point_id"]

POINT_NAMESPACE = uuid.UUID("6f1d3c1e-6b5a-4c8e-9a7e-2f0b7f3d9c11")
"""Namespace of the deterministic point ids (uuid5), fixed forever: changing it orphans every
existing index."""


def content_hash(text: str) -> str:
    """sha256 of the text, hex. Used for the embedding cache and the payload."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def point_id(repo: str, path: str, start_line: int, end_line: int, text_hash: str) -> str:
    """Deterministic id of one chunk occurrence: the same chunk at the same place in the same
    repo is the same point, whatever branch or commit it is seen on. Re-running any indexing
    task therefore converges to the same index."""
    key = f"{repo}\x00{path}\x00{start_line}\x00{end_line}\x00{text_hash}"
    return str(uuid.uuid5(POINT_NAMESPACE, key))


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrievable piece of one file.

    ``text`` is the source as it stands in the file (what is served); ``header`` is a short
    context line set (path and enclosing signatures) that is embedded *with* the text so that
    a method chunk still knows its class and file.
    """

    path: str
    language: str
    start_line: int  # 1-based, inclusive
    end_line: int  # 1-based, inclusive
    text: str
    kind: str = "block"  # function, method, class, module, section, block, lines...
    symbol: str = ""  # e.g. "Session.request"
    header: str = ""
    repo: str = ""
    commit: str = ""

    @property
    def text_hash(self) -> str:
        return content_hash(self.text)

    @property
    def embed_text(self) -> str:
        """What the embedder sees: header, then the code."""
        return f"{self.header}\n{self.text}" if self.header else self.text

    @property
    def id(self) -> str:
        return point_id(self.repo, self.path, self.start_line, self.end_line, self.text_hash)


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file the chunker did not index, and why (shown in summaries, never silent)."""

    path: str
    reason: str  # binary, too_large, minified, generated, vendored, ignored, lockfile, translation
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: a stored chunk and its score."""

    id: str
    score: float
    repo: str
    path: str
    language: str
    start_line: int
    end_line: int
    text: str
    kind: str = "block"
    symbol: str = ""
    branches: tuple[str, ...] = ()
    commit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"{self.path}#L{self.start_line}-L{self.end_line}"
