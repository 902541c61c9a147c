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
    paths: tuple[str, ...]
    code_like: float  # 0..1: how much the query looks like code rather than prose


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
        cleaned or raw.strip()[:MAX_QUERY_CHARS], tuple(idents[:32]), tuple(paths[:8]), code_like
    )


def _dedupe(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        i = i.strip()
        if i and i not in seen:
            seen[i] = None
    return list(seen)
