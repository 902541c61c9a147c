"""Turning what users type into what the index can match.

Continue sends the whole chat message (often with pasted code, file references and
pleasantries); LiteLLM sends the last user turn. We keep the parts that carry signal
(identifiers, quoted code, paths, the question itself), drop boilerplate, and cap the length so
a pasted 2,000-line file does not become a 2,000-line query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ParsedQuery", "parse_query"]

MAX_QUERY_CHARS = 2000
MAX_LEXICAL_CHARS = 20000
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]{1,200})`")
_IDENT = re.compile(
    r"\b(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*|[A-Za-z0-9]+_[A-Za-z0-9_]+)\b"
)
_PATH = re.compile(
    r"\b[\w.-]+(?:/[\w.-]+)+\b|\b[\w-]+\.(?:py|js|ts|tsx|java|go|rs|c|h|cpp|hpp|cs|rb|php|kt|scala|swift|sh|md|ya?ml|json|toml|sql)\b"
)
_CONTEXT_BLOCK = re.compile(r"<(?:context|file)[^>]*>.*?</(?:context|file)>", re.S)
_BOILER = re.compile(
    r"^\s*(?:hi|hello|hey|thanks|thank you|please|pls|can you|could you|would you"
    r"|i want you to)\b[,!.:]?\s*",
    re.I,
)


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    text: str  # what the dense model embeds
    identifiers: tuple[str, ...]  # code-like tokens found (for lexical emphasis)
    paths: tuple[str, ...]  # paths named in the query
    code_like: float  # 0..1: how much the query looks like code rather than prose
    full_text: str = ""  # everything but attached context, for the lexical side (no cap)
    words: int = 0  # words of prose: a short question or a long report
    segments: tuple[str, ...] = ()  # windows of a long query after ``text``'s own, for dense
    module_paths: tuple[str, ...] = ()  # files that dotted module names in it point at


def parse_query(raw: str) -> ParsedQuery:
    text = raw.replace("\r\n", "\n")
    text = _CONTEXT_BLOCK.sub(" ", text)  # context Continue already attached
    fences = _FENCE.findall(text)
    prose = _FENCE.sub(" ", text)
    inline = _INLINE.findall(prose)
    prose = _BOILER.sub("", prose.strip())
    idents = _dedupe(
        [*inline, *_IDENT.findall(prose)] + [i for f in fences for i in _IDENT.findall(f)]
    )
    paths = _dedupe(_PATH.findall(prose))
    pieces = [" ".join(prose.split())]
    if fences:
        # Keep the start of pasted code: it usually holds the signature that matters.
        pieces.append("\n".join(f.strip()[:600] for f in fences[:3]))
    cleaned = "\n".join(p for p in pieces if p).strip()[:MAX_QUERY_CHARS]
    words = re.findall(r"\S+", prose)
    codey = sum(1 for w in words if re.search(r"[_.()\[\]{}=<>]|[a-z][A-Z]", w))
    code_like = min(1.0, (codey + 3 * len(fences)) / max(1, len(words)))
    return ParsedQuery(
        cleaned or raw.strip()[:MAX_QUERY_CHARS],
        tuple(idents[:32]),
        tuple(paths[:8]),
        code_like,
        # The lexical side has no token window: a long report's later paragraphs and its
        # traceback still count there (capped only against pathological input).
        full_text=text[:MAX_LEXICAL_CHARS],
        words=len(words),
        module_paths=tuple(_module_paths(idents)[:16]),
        segments=tuple(
            _segments(" ".join([*prose.split(), *(f.strip()[:SEGMENT_CHARS] for f in fences[:3])]))
        ),
    )


SEGMENT_CHARS = 1000
"""About a MiniLM window (256 word pieces) of English prose."""
MAX_SEGMENTS = 3


def _segments(prose: str) -> list[str]:
    """The windows of a long report's prose *after* the first: the dense model reads only
    the start of ``text``, so the rest of a bug report (the steps, the actual error) would
    never be embedded. Cut at whitespace, at most :data:`MAX_SEGMENTS`."""
    out: list[str] = []
    rest = prose[SEGMENT_CHARS:]
    while rest.strip() and len(out) < MAX_SEGMENTS:
        cut = rest.rfind(" ", 0, SEGMENT_CHARS) if len(rest) > SEGMENT_CHARS else len(rest)
        cut = cut if cut > SEGMENT_CHARS // 2 else min(len(rest), SEGMENT_CHARS)
        piece, rest = rest[:cut].strip(), rest[cut:]
        if len(piece.split()) >= 8:  # a trailing fragment carries no topic of its own
            out.append(piece)
    return out


_MODULE = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+$")


def _module_paths(idents: list[str]) -> list[str]:
    """``sphinx.ext.autodoc`` -> ``sphinx/ext/autodoc.py`` and ``.../autodoc/__init__.py``:
    a dotted, all-lower-case name is usually a module, and names its file. (An attribute
    chain like ``self.app.config`` also matches; it names no file, so it costs nothing.)"""
    out: list[str] = []
    for ident in idents:
        if _MODULE.match(ident) and ident.count(".") >= 1 and not ident.startswith("self."):
            base = ident.replace(".", "/")
            out += [f"{base}.py", f"{base}/__init__.py"]
    return out


def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        i = i.strip()
        if i and i not in seen:
            seen[i] = None
    return list(seen)
