"""The chunkers facade: bytes of one file in, chunks (or the reason there are none) out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tree_sitter_language_pack import get_parser

from chunkers.ast_chunker import (
    ERROR_FRACTION,
    PARSE_TIMEOUT_S,
    TreeSitterStructure,
    error_fraction,
    parse,
)
from chunkers.engine import Engine, Structure, TooDeepError
from chunkers.languages import LANGUAGES, LanguageSpec, language_for_path, refine_language
from chunkers.secrets import RULES_VERSION, AllowList, Finding, redact
from chunkers.skip import PathFilter, check_bytes, check_text, normalize_path
from chunkers.text_chunker import SectionStructure, section_finder
from chunkers.tokens import DEFAULT_COUNTER, SpanMeter, TokenCounter
from coderag.models import Chunk, SkippedFile

__all__ = ["ChunkResult", "FileChunker", "chunk_file"]


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What became of one file.

    ``skipped`` is set (and ``chunks`` empty) when the file was left out; ``fallback`` says
    why a file that has a grammar was cut into line windows instead (syntax errors, timeout,
    nesting too deep), so the indexer can count and report it. ``redactions`` lists the
    secrets removed from the file before it was chunked (kind and line, never the value),
    and those an allow-list kept (``allowed``).
    """

    chunks: list[Chunk]
    skipped: SkippedFile | None = None
    language: str | None = None
    fallback: str | None = None
    redactions: tuple[Finding, ...] = ()


class FileChunker:
    """Turns one file into chunks that each fit ``max_tokens`` of ``count_tokens``.

    ``count_tokens`` should be the embedder's own tokenizer, special tokens included. Wrap a
    Hugging Face tokenizer with :func:`chunkers.tokens.tokenizer_counter`: it switches off
    the tokenizer.json's truncation/padding (which would cap every count) and, for WordPiece,
    adds ``count_lines`` so that each file is tokenized once, in one batch. Without a
    counter, the conservative estimate :func:`chunkers.tokens.estimate_tokens` is used.
    ``max_tokens`` includes the context header. Code that is not a definition packs up to
    ``max_tokens``; definitions share a chunk only while they are smaller than
    ``min_tokens``. Files over ``max_file_bytes`` are skipped.

    Construction is cheap: parsers are created on first use, one per language and thread
    (tree-sitter parsers must not be shared between threads), and cached.

    With ``redact_secrets`` (the default) the file's text goes through
    :func:`chunkers.secrets.redact` before it is chunked: every indexing path (CLI, Celery
    workers, embedded tasks, evals) chunks here, so token budgets, stored text, sparse and
    dense vectors and point ids are all computed from the redacted text, and nothing served
    can hold the secret. Redaction keeps every line, so chunk line numbers stay true.
    """

    parse_timeout_s: float = PARSE_TIMEOUT_S
    """A parse still running after this is abandoned for line windows (override per
    instance if needed)."""

    def __init__(
        self,
        count_tokens: Callable[[str], int] | None = None,
        max_tokens: int = 256,
        min_tokens: int = 48,
        max_file_bytes: int = 1_000_000,
        redact_secrets: bool = True,
        redact_allow: AllowList | None = None,
    ) -> None:
        if max_tokens < 16:
            raise ValueError("max_tokens must be at least 16")
        if min_tokens < 0 or min_tokens > max_tokens:
            raise ValueError("min_tokens must be between 0 and max_tokens")
        if max_file_bytes < 1:
            raise ValueError("max_file_bytes must be positive")
        self.count_tokens: TokenCounter = count_tokens or DEFAULT_COUNTER
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.max_file_bytes = max_file_bytes
        self.redact_secrets = redact_secrets
        self.redact_allow = redact_allow or AllowList()
        """Findings kept in every file (``CODERAG_REDACT_ALLOW``); a repository adds its own
        per call (:meth:`chunk`'s ``allow``)."""
        self._overhead: int | None = None
        self._paths = PathFilter()
        self._local = threading.local()

    # -- public ------------------------------------------------------------------------------
    def chunk(self, path: str, data: bytes, *, allow: AllowList | None = None) -> ChunkResult:
        """Chunk one file; ``path`` is repo-relative and '/'-separated. Never raises for bad
        content: such files come back skipped or line-chunked with a reason. ``allow``: the
        repository's redaction allow-list, on top of the chunker's own."""
        path = normalize_path(path)
        language = language_for_path(path)
        skipped = self._paths.check(path) or check_bytes(path, data, self.max_file_bytes)
        if skipped is not None:
            return ChunkResult([], skipped, language)
        text = data.decode("utf-8", errors="replace")
        if text.startswith("\ufeff"):
            text = text[1:]
        if "\r\n" in text:
            text = text.replace("\r\n", "\n")
        language = refine_language(path, language, text)
        skipped = check_text(path, text, language)
        if skipped is not None:
            return ChunkResult([], skipped, language)
        found: tuple[Finding, ...] = ()
        if self.redact_secrets:
            keep = self.redact_allow.merged(allow)
            redacted = redact(text, language, path=path, allow=keep or None)
            text, found = redacted.text, redacted.findings

        spec = LANGUAGES[language]
        lines = text.split("\n")
        # A fresh meter per file: what it learns must not depend on which files came before,
        # or the same file could chunk differently (and change its chunk ids) between runs.
        meter = SpanMeter(self.count_tokens, self._get_overhead(), lines)
        chunks: list[Chunk] | None = None
        fallback: str | None = None
        structured = spec.is_ast or spec.structure in ("markdown", "toml", "yaml")
        if structured:
            try:
                chunks, fallback = self._structured(path, spec, text, lines, meter)
            except Exception as exc:  # a chunker bug must cost one file's structure, not a run
                chunks, fallback = None, f"chunker error: {type(exc).__name__}: {exc}"
        if chunks is None:
            kind = "lines" if spec.is_ast or not structured else "section"
            try:
                chunks = self._engine(path, spec, lines, meter, None, kind).run()
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"
                return ChunkResult(
                    [], SkippedFile(path, "error", detail), language, fallback, found
                )
        return ChunkResult(chunks, None, language, fallback, found)

    @property
    def redaction_id(self) -> str:
        """What the stored text went through (part of the index fingerprint): the secret
        rules' version and allow-list, or ``raw`` when redaction is off."""
        if not self.redact_secrets:
            return "raw"
        allow = f"+allow{self.redact_allow.digest()}" if self.redact_allow else ""
        return f"secrets{RULES_VERSION}{allow}"

    # -- internals ---------------------------------------------------------------------------
    def _structured(
        self, path: str, spec: LanguageSpec, text: str, lines: list[str], meter: SpanMeter
    ) -> tuple[list[Chunk] | None, str | None]:
        """AST or section chunks, or ``(None, reason)`` when line windows should be used."""
        if not spec.is_ast:
            st = SectionStructure(lines, section_finder(spec.structure)(lines))
            return self._engine(path, spec, lines, meter, st, "section").run(st.root), None
        assert spec.grammar is not None
        src = text.encode("utf-8")
        parser = self._parser(spec.grammar)
        started = time.monotonic()
        try:
            tree = parse(parser, src, self.parse_timeout_s)
        except ValueError as exc:
            parser.reset()
            if time.monotonic() - started >= self.parse_timeout_s:
                return None, f"parse timed out after {self.parse_timeout_s:g}s"
            return None, f"parse failed: {exc}"
        frac = error_fraction(tree.root_node)
        if frac > ERROR_FRACTION:
            return None, f"syntax errors cover {frac:.0%} of the file (> {ERROR_FRACTION:.0%})"
        st_ast = TreeSitterStructure(spec, src)
        try:
            chunks = self._engine(path, spec, lines, meter, st_ast, "module").run(tree.root_node)
        except TooDeepError as exc:
            return None, str(exc)
        return chunks, None

    def _engine(
        self,
        path: str,
        spec: LanguageSpec,
        lines: list[str],
        meter: SpanMeter,
        structure: Structure | None,
        default_kind: str,
    ) -> Engine:
        return Engine(
            path=path,
            language=spec.name,
            comment=spec.comment,
            lines=lines,
            meter=meter,
            max_tokens=self.max_tokens,
            min_tokens=self.min_tokens,
            default_kind=default_kind,
            structure=structure,
        )

    def _parser(self, grammar: str) -> Any:
        parsers = getattr(self._local, "parsers", None)
        if parsers is None:
            parsers = self._local.parsers = {}
        parser = parsers.get(grammar)
        if parser is None:
            parser = parsers[grammar] = get_parser(grammar)  # type: ignore[arg-type]
        return parser

    def _get_overhead(self) -> int:
        """Tokens the counter adds to any text ([CLS]/[SEP] for BERT): budgets are kept in
        content tokens so that sizes of neighbouring spans add up."""
        if self._overhead is None:
            self._overhead = max(0, self.count_tokens(""))
        return self._overhead


@lru_cache(maxsize=1)
def _default_chunker() -> FileChunker:
    return FileChunker()


def chunk_file(path: str, data: bytes, **kw: Any) -> ChunkResult:
    """One-off convenience: ``FileChunker(**kw).chunk(path, data)`` (a shared default chunker
    when no options are given, so its parsers are reused)."""
    chunker = FileChunker(**kw) if kw else _default_chunker()
    return chunker.chunk(path, data)
