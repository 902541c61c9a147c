"""Ranked chunks -> the context an LLM actually reads, within a token budget.

Search returns chunks; a model is better served by *code regions*: two overlapping or
adjacent chunks of one file read as one stretch of that file, not as two fragments that repeat
lines. So :func:`assemble`

1. merges the hits of one file whose line ranges overlap or touch into one block (path and
   line numbers kept, each line once; the block's score is its best hit's);
2. orders the blocks by score;
3. fills the budget greedily: a block that does not fit whole is skipped (a smaller one ranked
   lower may still fit), never cut silently; a block that alone exceeds the whole budget is
   truncated to what is left, *with a visible marker* that says which lines were dropped.

The same blocks feed the Continue context provider (one context item per block) and the
LiteLLM hook (one system message), so both see the same code for the same query.

Token counts come from the caller (``count_tokens``): the LLM's tokenizer is not ours to
load, so the API uses :func:`approx_tokens`, a deliberately pessimistic estimate for code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from coderag.models import Hit

__all__ = ["ContextBlock", "approx_tokens", "assemble", "merge_hits", "render_blocks"]

CountTokens = Callable[[str], int]

_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|\n|[^\sA-Za-z0-9]")
MIN_TRUNCATED_TOKENS = 32
"""Below this many tokens left, a truncated block would be a header and a marker: skip it."""


def approx_tokens(text: str) -> int:
    """Estimate of BPE tokens for code, erring high so the budget is rarely overrun.

    Code tokenises worse than prose (symbols and short identifiers are tokens of their own);
    counting one token per ~4 characters undercounts it. We take the larger of that and a
    count of word / number / symbol pieces, which tracks code-oriented BPE vocabularies
    within ~20% on typical source, without loading any tokenizer.
    """
    if not text:
        return 0
    return max(math.ceil(len(text) / 4), len(_PIECE.findall(text)))


@dataclass(frozen=True, slots=True)
class ContextBlock:
    """A contiguous region of one file, ready to show to a model."""

    repo: str
    path: str
    language: str
    start_line: int
    end_line: int
    text: str
    score: float
    symbols: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    branches: tuple[str, ...] = ()
    hit_ids: tuple[str, ...] = ()
    truncated: bool = False
    omitted: tuple[int, int] | None = None
    """Lines dropped by truncation (first, last), when :attr:`truncated`."""
    tokens: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def lines_label(self) -> str:
        return f"lines {self.start_line}-{self.end_line}"

    @property
    def symbol(self) -> str:
        """The block's main symbol (its best hit's), or "" for anonymous chunks."""
        return self.symbols[0] if self.symbols else ""

    @property
    def name(self) -> str:
        """Short title: ``x.py:10-42``."""
        base = self.path.rsplit("/", 1)[-1]
        return f"{base}:{self.start_line}-{self.end_line}"

    def render(self) -> str:
        """The block as a fenced code block headed by its path and lines."""
        fence = _fence_for(self.text)
        lang = _fence_lang(self.language)
        body = self.text if self.text.endswith("\n") or not self.text else self.text + "\n"
        if self.truncated and self.omitted:
            body += f"... [truncated: lines {self.omitted[0]}-{self.omitted[1]} omitted]\n"
        return f"{fence}{lang} {self.path} ({self.lines_label})\n{body}{fence}"


def _fence_for(text: str) -> str:
    """A backtick fence longer than any run of backticks inside the code (markdown in code)."""
    longest = max((len(m.group()) for m in re.finditer(r"`{3,}", text)), default=0)
    return "`" * max(3, longest + 1)


def _fence_lang(language: str) -> str:
    lang = (language or "").strip().lower()
    return lang if re.fullmatch(r"[a-z0-9_+#.\-]{1,32}", lang) else ""


def _lines(text: str) -> list[str]:
    return text.split("\n") if text else []


def _strip_final_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


@dataclass
class _Region:
    repo: str
    path: str
    language: str
    start: int
    end: int
    lines: list[str]
    score: float
    hits: list[Hit]


def _consistent(hit: Hit) -> bool:
    """True when the hit's text has exactly one line per line of its range (mergeable)."""
    n = hit.end_line - hit.start_line + 1
    return n >= 1 and len(_lines(_strip_final_newline(hit.text))) == n


def merge_hits(hits: Iterable[Hit]) -> list[ContextBlock]:
    """Merge overlapping or adjacent hits of the same (repo, path) into blocks, best first.

    Hits whose text does not span exactly their line range (the chunker's contract is that it
    does; an odd payload must not corrupt a neighbour) are kept as blocks of their own.
    """
    by_file: dict[tuple[str, str], list[Hit]] = {}
    order: list[Hit] = []
    for h in hits:
        by_file.setdefault((h.repo, h.path), []).append(h)
        order.append(h)
    regions: list[_Region] = []
    for (repo, path), group in by_file.items():
        group.sort(key=lambda h: (h.start_line, h.end_line))
        cur: _Region | None = None
        for h in group:
            lines = _lines(_strip_final_newline(h.text))
            if cur is not None and _consistent(h) and h.start_line <= cur.end + 1:
                if h.end_line > cur.end:
                    cur.lines.extend(lines[cur.end - h.start_line + 1 :])
                    cur.end = h.end_line
                cur.score = max(cur.score, h.score)
                cur.hits.append(h)
                continue
            if cur is not None:
                regions.append(cur)
            cur = _Region(repo, path, h.language, h.start_line, h.end_line, lines, h.score, [h])
            if not _consistent(h):  # never extend an inconsistent chunk
                regions.append(cur)
                cur = None
        if cur is not None:
            regions.append(cur)
    rank = {id(h): i for i, h in enumerate(order)}
    regions.sort(key=lambda r: (-r.score, min(rank[id(h)] for h in r.hits)))
    blocks = []
    for r in regions:
        best_first = sorted(r.hits, key=lambda h: -h.score)
        blocks.append(
            ContextBlock(
                repo=r.repo,
                path=r.path,
                language=r.language,
                start_line=r.start,
                end_line=r.end,
                text="\n".join(r.lines),
                score=r.score,
                symbols=tuple(dict.fromkeys(h.symbol for h in best_first if h.symbol)),
                kinds=tuple(dict.fromkeys(h.kind for h in best_first if h.kind)),
                branches=tuple(dict.fromkeys(b for h in best_first for b in h.branches)),
                hit_ids=tuple(h.id for h in best_first),
            )
        )
    return blocks


def _truncate(block: ContextBlock, budget: int, count_tokens: CountTokens) -> ContextBlock | None:
    """The longest head of ``block`` that, rendered with its marker, fits ``budget``."""
    lines = _lines(block.text)

    def cut(n: int) -> ContextBlock:
        end = block.start_line + n - 1
        return ContextBlock(
            repo=block.repo,
            path=block.path,
            language=block.language,
            start_line=block.start_line,
            end_line=end,
            text="\n".join(lines[:n]),
            score=block.score,
            symbols=block.symbols,
            kinds=block.kinds,
            branches=block.branches,
            hit_ids=block.hit_ids,
            truncated=True,
            omitted=(end + 1, block.end_line),
        )

    lo, hi, best = 1, len(lines) - 1, 0
    while lo <= hi:  # binary search on the number of lines kept
        mid = (lo + hi) // 2
        if count_tokens(cut(mid).render()) <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best == 0:
        return None
    out = cut(best)
    return _with_tokens(out, count_tokens(out.render()))


def _with_tokens(block: ContextBlock, tokens: int) -> ContextBlock:
    from dataclasses import replace

    return replace(block, tokens=tokens)


def assemble(
    hits: Sequence[Hit],
    token_budget: int,
    count_tokens: CountTokens = approx_tokens,
) -> list[ContextBlock]:
    """Merge ``hits`` into blocks and keep the best ones whose rendering fits ``token_budget``.

    Each returned block carries its rendered token count (:attr:`ContextBlock.tokens`); their
    sum never exceeds the budget.
    """
    if token_budget <= 0:
        return []
    out: list[ContextBlock] = []
    left = token_budget
    for block in merge_hits(hits):
        cost = count_tokens(block.render())
        if cost <= left:
            out.append(_with_tokens(block, cost))
            left -= cost
        elif cost > token_budget and left >= MIN_TRUNCATED_TOKENS:
            cut = _truncate(block, left, count_tokens)
            if cut is not None:
                out.append(cut)
                left -= cut.tokens
        if left <= 0:
            break
    return out


def render_blocks(blocks: Sequence[ContextBlock], *, repo_headers: bool = True) -> str:
    """All blocks as one text (the LiteLLM hook's system message body)."""
    parts = []
    for b in blocks:
        head = f"{b.repo}: {b.path}" + (f" ({b.symbol})" if b.symbol else "")
        parts.append(f"{head}\n{b.render()}" if repo_headers else b.render())
    return "\n\n".join(parts)
