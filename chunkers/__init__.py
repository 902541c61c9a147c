"""chunkers: the bytes of one file -> chunks that each fit the embedder's token budget.

tree-sitter AST chunking (split what is too big, merge what is too small) for code, section
chunking for Markdown/TOML/YAML, line windows for everything else and as the fallback; skip
rules with reasons. Imports nothing of the service but :mod:`coderag.models`.

Chunk kinds: ``function``, ``method`` (a function directly in a class-like definition),
``class``, ``struct``, ``interface``, ``enum``, ``impl``, ``trait``, ``object``, ``record``,
``namespace`` (C++/C#/TS namespaces, Ruby modules), ``type``, ``macro``; ``module`` for
top-level code between definitions; ``block`` for a chunk of several small definitions of
different kinds; ``section`` (Markdown/TOML/YAML) and ``lines`` (line windows, including
every fallback). Symbols are dotted paths (``Session.request``, ``geo.Shape.area``, Go
``Server.Start``), comma-joined when small definitions share a chunk, and heading paths
(``Install > From source``) for sections.
"""

from chunkers.api import ChunkResult, FileChunker, chunk_file
from chunkers.languages import SUPPORTED_LANGUAGES, language_for_path
from chunkers.skip import PathFilter

__all__ = [
    "CHUNKER_VERSION",
    "SUPPORTED_LANGUAGES",
    "ChunkResult",
    "FileChunker",
    "PathFilter",
    "chunk_file",
    "language_for_path",
]

CHUNKER_VERSION = 2
"""Bump whenever a change here gives any file different chunks (boundaries, header, kinds,
symbols, text): it is part of the index fingerprint (``IndexService.fingerprint``), so the
next run of every branch is a full re-write instead of an incremental one that would mix old
and new chunk shapes in one branch. To re-chunk without serving a half re-written index,
build a shadow index and switch to it (docs/MODELS.md)."""
