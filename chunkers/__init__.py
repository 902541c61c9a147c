"""chunkers: the bytes of one file -> chunks that each fit the embedder's token budget.

tree-sitter AST chunking (split what is too big, merge what is too small) for code, section
chunking for Markdown/TOML/YAML, line windows for everything else and as the fallback; skip
rules with reasons. Imports nothing of the service but :mod:`coderag.models`.
"""

from chunkers.api import ChunkResult, FileChunker, chunk_file
from chunkers.languages import SUPPORTED_LANGUAGES, language_for_path
from chunkers.skip import PathFilter

__all__ = [
    "SUPPORTED_LANGUAGES",
    "ChunkResult",
    "FileChunker",
    "PathFilter",
    "chunk_file",
    "language_for_path",
]
