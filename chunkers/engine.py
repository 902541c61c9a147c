"""The split-then-merge engine (cAST) over any tree whose nodes cover row spans.

It is shared by the tree-sitter chunker, the Markdown/TOML/YAML section chunkers and the plain
line chunker, so every file goes through one budget discipline:

* **split**: a node whose rows do not fit the budget is opened; its children become the
  units. A non-definition (block, ``if``, literal) is flattened into its parent's sequence so
  that its pieces can still merge with their neighbours; a definition becomes a container of
  its own and pushes a scope (its signature goes into the header of the chunks inside it).
  A node that cannot be opened (a leaf, one row) is cut into line windows, and a row that
  alone is over the budget into character pieces;
* **merge**: consecutive units that fit are packed greedily up to the budget, as in cAST --
  except definitions, which share a chunk only while they and the pack are small (under
  ``min_tokens``), so that every real function stays separately findable. Leftovers (a lone
  ``}``, a class head) join the neighbour they share most scope with.

Chunks are row spans: a chunk's text is exactly rows ``start..end`` of the file, so it can be
served with line numbers, and since every container's units tile its rows, no row is lost.
Everything is driven by an explicit work stack: nesting depth costs heap, never the Python
stack, and a depth cap turns pathological nesting into a clean fallback.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

from chunkers.languages import CLASS_LIKE_KINDS
from chunkers.tokens import SpanMeter
from coderag.models import Chunk

__all__ = ["MAX_DEPTH", "Definition", "Engine", "Scope", "Structure", "TooDeepError"]

MAX_DEPTH = 400
"""Tree levels the engine opens before it gives up on the AST (real code stays far below)."""
_MAX_HEADER_SIGNATURES = 3
_MAX_PATH_CHARS = 120
_MAX_SYMBOL_CHARS = 200
_SHORT_SIG_CHARS = 60


class TooDeepError(Exception):
    """Nesting beyond :data:`MAX_DEPTH`; the caller falls back to line chunking."""


@dataclass(frozen=True, slots=True)
class Scope:
    """An enclosing definition, as the chunks inside it see it."""

    kind: str
    symbol: str
    signature: str
    sig_row: int  # row of the signature: a chunk containing it needs no header line for it


@dataclass(frozen=True, slots=True)
class Definition:
    """What a structure reports about a node that is a definition."""

    kind: str  # "function" becomes "method" inside a class-like scope
    name: str
    signature: str
    sig_row: int
    node: Any  # the node to open when the definition is too big
    qualified: bool = False  # name is already a full symbol (a Go method's Receiver.Name)
    body: Any = None  # opened along with the definition, so its members become units


class Structure(Protocol):
    """A tree the engine can chunk: children with row spans, definitions, attachments."""

    symbol_sep: str

    def children(self, node: Any) -> Sequence[tuple[int, int, Any]]:
        """``(start_row, end_row, child)`` in order; end_row inclusive."""
        ...

    def definition(self, node: Any) -> Definition | None: ...

    def attachable(self, node: Any) -> bool:
        """Comments/attributes that belong with the definition right below them."""
        ...


@dataclass(slots=True)
class _Item:
    s: int  # rows this unit answers for (gaps included)
    e: int
    core_s: int  # rows of the node itself
    core_e: int
    node: Any
    defn: Definition | None
    attach: bool
    depth: int


@dataclass(slots=True)
class Draft:
    """A chunk before its text is cut: rows, scope, the definitions it holds, its size."""

    s: int
    e: int
    scope: tuple[Scope, ...]
    defs: tuple[tuple[str, str], ...]  # (kind, symbol) of whole definitions inside
    size: float = 0.0  # content tokens of the text (exact or estimated)
    text: str | None = None  # a character piece of one over-long row
    exact: bool = False  # size comes from exact counts (so sums of drafts can skip a count)
    label: tuple[str, str] | None = None  # (kind, symbol) fixed when a leftover was merged in


class Engine:
    """Chunks one file. Cheap to build; one instance per file."""

    def __init__(
        self,
        *,
        path: str,
        language: str,
        comment: str,
        lines: Sequence[str],
        meter: SpanMeter,
        max_tokens: int,
        min_tokens: int,
        default_kind: str,
        structure: Structure | None = None,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.path = path
        self.language = language
        self.lines = lines
        self.m = meter
        self.max = max_tokens
        self.min = min_tokens
        self.default_kind = default_kind
        self.st = structure
        self.sep = structure.symbol_sep if structure is not None else "."
        self.max_depth = max_depth
        self._pre = f"{comment} " if comment else ""
        self._limit = max_tokens - meter.overhead  # content tokens allowed per embed text
        self._headers: dict[tuple[Scope, ...], tuple[str, int]] = {}
        self._budgets: dict[tuple[Scope, ...], int] = {}
        self._ends: list[int] | None = None

    # -- entry points -----------------------------------------------------------------------
    def run(self, root: Any = None) -> list[Chunk]:
        """AST/section chunking from ``root`` (or line windows when there is no structure).

        Raises :class:`TooDeepError` when nesting exceeds the cap.
        """
        last = len(self.lines) - 1
        if self.st is None or root is None:
            drafts = self._windows(0, last, ())
        else:
            drafts = []
            stack: list[tuple[Any, ...]] = [("c", root, 0, last, (), 0, None)]
            while stack:
                task = stack.pop()
                if task[0] == "g":
                    self._emit(task[1], task[2], drafts, stack)
                elif task[0] == "c":
                    self._container(*task[1:], stack)
                else:
                    drafts.extend(self._windows(task[1], task[2], task[3]))
        chunks = []
        for d in self._tidy(drafts):
            chunk = self._finish(d)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    # -- split ------------------------------------------------------------------------------
    def _items(self, node: Any, s0: int, e0: int, depth: int) -> list[_Item]:
        """Children of ``node`` clipped to rows s0..e0 and stretched to tile them."""
        if depth > self.max_depth:
            raise TooDeepError(f"nesting deeper than {self.max_depth} levels")
        assert self.st is not None
        items: list[_Item] = []
        nxt = s0
        for s, e, child in self.st.children(node):
            if e < nxt or s > e0:
                continue  # entirely on rows a previous sibling already answers for
            clipped = s < nxt
            s = max(s, nxt)
            e = min(e, e0)
            defn = None if clipped else self.st.definition(child)
            items.append(_Item(s, e, s, e, child, defn, self.st.attachable(child), depth))
            nxt = e + 1
        if items:
            items[0].s = s0
            for a, b in pairwise(items):
                a.e = b.s - 1
            items[-1].e = e0
        return items

    def _container(
        self,
        node: Any,
        s0: int,
        e0: int,
        scope: tuple[Scope, ...],
        depth: int,
        body: Any,
        stack: list,
    ) -> None:
        items = self._items(node, s0, e0, depth)
        if not items:
            stack.append(("l", s0, e0, scope))
            return
        budget = self._budget(scope)
        flat: list[_Item] = []
        todo = items[::-1]
        while todo:
            it = todo.pop()
            if (
                it.defn is None
                and it.e > it.s
                and ((body is not None and it.node == body) or not self.m.fits(it.s, it.e, budget))
            ):
                kids = self._items(it.node, it.s, it.e, it.depth + 1)
                if kids:
                    todo.extend(reversed(kids))
                    continue
            flat.append(it)
        tasks: list[tuple[Any, ...]] = []
        run: list[_Item] = []
        for it in self._attach(flat):
            if self.m.fits(it.s, it.e, budget):
                run.append(it)
                continue
            if run:
                tasks.extend(("g", g, scope) for g in self._group(run, budget))
                run = []
            tasks.append(self._open(it, scope))
        if run:
            tasks.extend(("g", g, scope) for g in self._group(run, budget))
        stack.extend(reversed(tasks))

    def _open(self, it: _Item, scope: tuple[Scope, ...]) -> tuple[Any, ...]:
        """The task that splits one unit that does not fit."""
        if it.defn is not None:
            inner = (*scope, self._scope_for(it.defn, scope))
            if it.e > it.s:
                return ("c", it.defn.node, it.s, it.e, inner, it.depth + 1, it.defn.body)
            return ("l", it.s, it.e, inner)
        if it.e > it.s:
            return ("c", it.node, it.s, it.e, scope, it.depth + 1, None)
        return ("l", it.s, it.e, scope)

    @staticmethod
    def _attach(items: list[_Item]) -> list[_Item]:
        """Glue comments/attributes immediately above a definition (no blank row between)
        onto it, so doc comments and decorators travel with what they describe."""
        out: list[_Item] = []
        for it in items:
            if it.defn is not None and out:
                j = len(out)
                first = it.core_s
                while (
                    j > 0
                    and out[j - 1].attach
                    and out[j - 1].defn is None
                    and out[j - 1].core_e >= first - 1
                ):
                    j -= 1
                    first = out[j].core_s
                if j < len(out):
                    head = out[j]
                    it = _Item(
                        head.s, it.e, head.core_s, it.core_e, it.node, it.defn, False, it.depth
                    )
                    del out[j:]
            out.append(it)
        return out

    # -- merge ------------------------------------------------------------------------------
    def _group(self, run: list[_Item], budget: int) -> list[list[_Item]]:
        """Pack consecutive units that fit into groups (one chunk each).

        Code that is not a definition (imports, statements, the pieces of a split function)
        packs greedily up to the budget, as in cAST. Definitions are what queries look for,
        so a definition only shares a chunk while both it and the pack are still small
        (under ``min_tokens``): tiny getters travel together, real functions stand alone.
        """
        groups: list[list[_Item]] = []
        sizes: list[float] = []
        has_def: list[bool] = []
        for it in run:
            sz = self.m.approx(it.s, it.e)
            is_def = it.defn is not None
            join = False
            if groups and sizes[-1] + sz <= budget:
                if is_def:
                    join = sizes[-1] < self.min and sz < self.min
                else:
                    join = not has_def[-1] or sizes[-1] < self.min
            if join:
                groups[-1].append(it)
                sizes[-1] += sz
                has_def[-1] = has_def[-1] or is_def
            else:
                groups.append([it])
                sizes.append(sz)
                has_def.append(is_def)
        # A small tail without definitions (closing brace, trailing statement) joins the
        # group before it rather than standing alone.
        if (
            len(groups) >= 2
            and not has_def[-1]
            and sizes[-1] < self.min
            and sizes[-2] + sizes[-1] <= budget
        ):
            groups[-2].extend(groups.pop())
        return groups

    def _emit(
        self, group: list[_Item], scope: tuple[Scope, ...], out: list[Draft], stack: list
    ) -> None:
        defs = tuple(
            (sc.kind, sc.symbol)
            for sc in (self._scope_for(it.defn, scope) for it in group if it.defn is not None)
        )
        d = Draft(group[0].s, group[-1].e, scope, defs)
        parts = [self.m.known(it.s, it.e) for it in group]
        known = None if None in parts else sum(p for p in parts if p is not None)
        size = self._verify(d, known)
        if size is not None:
            d.size = size
            out.append(d)
        elif len(group) > 1:  # the estimate was optimistic: emit the members one by one
            stack.extend(("g", [it], scope) for it in reversed(group))
        else:
            stack.append(self._open(group[0], scope))

    def _tidy(self, drafts: list[Draft]) -> list[Draft]:
        """Merge leftovers (small, no definition of their own) into the adjacent chunk that
        shares the most scope with them -- a class head into its first method, a closing
        brace into the last one -- when the result still fits."""
        out: list[Draft] = []
        pending = list(drafts)
        for i in range(len(pending)):
            d = pending[i]
            if d.text is not None or d.defs or d.size >= self.min:
                out.append(d)
                continue
            cands: list[tuple[int, int, Draft]] = []
            if out and out[-1].text is None and out[-1].e + 1 == d.s:
                cands.append((_common(out[-1].scope, d.scope), 1, out[-1]))
            if i + 1 < len(pending) and pending[i + 1].text is None and pending[i + 1].s == d.e + 1:
                cands.append((_common(pending[i + 1].scope, d.scope), 0, pending[i + 1]))
            for _, is_prev, other in sorted(cands, key=lambda c: (-c[0], -c[1])):
                a, b = (other, d) if is_prev else (d, other)
                merged = Draft(a.s, b.e, a.scope[: _common(a.scope, b.scope)], a.defs + b.defs)
                known = a.size + b.size if a.exact and b.exact else None
                size = self._verify(merged, known)
                if size is None:
                    continue
                merged.size = size
                merged.label = other.label or self._label(other)  # the leftover is absorbed
                if is_prev:
                    out[-1] = merged
                else:
                    pending[i + 1] = merged
                break
            else:
                out.append(d)
        return out

    # -- budget, header, verification ---------------------------------------------------------
    def _header(self, scope: tuple[Scope, ...], s: int, e: int) -> tuple[str, int]:
        """Header for a chunk of rows s..e: the path, then the signatures of the enclosing
        definitions whose signature row is not in the chunk (innermost few), capped at a
        quarter of the budget so that the code always has most of it."""
        inc = tuple(sc for sc in scope if not s <= sc.sig_row <= e)
        hit = self._headers.get(inc)
        if hit is not None:
            return hit
        path = self.path
        if len(path) > _MAX_PATH_CHARS:
            path = "..." + path[-(_MAX_PATH_CHARS - 3) :]
        path_lines = [f"{self._pre}path: {path}", f"{self._pre}path: .../{path.rsplit('/', 1)[-1]}"]
        full = [sc.signature for sc in inc if sc.signature][-_MAX_HEADER_SIGNATURES:]
        # Cheapest losses first: shorten long signatures, then drop the outermost ones,
        # then the directories of the path, then the header itself.
        attempts = [full, [_shorten(sig, _SHORT_SIG_CHARS) for sig in full]]
        short = attempts[-1]
        attempts += [short[i:] for i in range(1, len(short) + 1)]
        cap = self.max // 4
        header, n = "", 0
        for path_line in path_lines:
            for sigs in attempts:
                text = "\n".join([path_line, *(f"{self._pre}{sig}" for sig in sigs)])
                count = self.m.count_text(text)
                if count <= cap:
                    header, n = text, count
                    break
            else:
                continue
            break
        self._headers[inc] = (header, n)
        return header, n

    def _budget(self, scope: tuple[Scope, ...]) -> int:
        """Content tokens left for code under the fullest header this scope can have."""
        hit = self._budgets.get(scope)
        if hit is None:
            _, n = self._header(scope, -1, -1)
            # the newline joining header and code is free for an additive (WordPiece) count
            hit = max(1, self._limit - n - (0 if self.m.additive else 1))
            self._budgets[scope] = hit
        return hit

    def _verify(self, d: Draft, known: float | None = None) -> float | None:
        """Exact check that header + text fits the budget; the text's content size, or None.

        With an additive counter this is arithmetic: header and rows were counted per line,
        and WordPiece counts add up exactly across the joining newlines. With any other
        counter the joined text is counted for real, unless its UTF-8 length already proves
        it fits; ``known`` (a sum of exactly counted parts) only serves to reject early.
        """
        header, htoks = self._header(d.scope, d.s, d.e)
        if d.text is not None:
            n = self.m.count_text(f"{header}\n{d.text}" if header else d.text)
            return float(max(0, n - htoks)) if n <= self._limit else None
        if self.m.additive:
            size = self.m.exact(d.s, d.e)
            d.exact = True
            return float(size) if htoks + size <= self._limit else None
        if len(header.encode()) + 1 + self.m.upper(d.s, d.e) <= self._limit:
            d.exact = False
            return self.m.approx(d.s, d.e)
        if known is not None and htoks + known > self._limit + 8:
            return None  # far over: no need to tokenize
        text = self.m.text(d.s, d.e)
        n = self.m.count_text(f"{header}\n{text}" if header else text)
        if n > self._limit:
            return None
        size = max(0, n - htoks)
        self.m.learn(d.s, d.e, size)
        d.exact = True
        return float(size)

    # -- line windows -----------------------------------------------------------------------
    def _windows(self, s: int, e: int, scope: tuple[Scope, ...]) -> list[Draft]:
        """Rows s..e as windows that fit, ending at paragraph ends (a non-blank row before a
        blank one) where possible, else at any row; over-long rows become character pieces."""
        out: list[Draft] = []
        if s > e:
            return out
        budget = self._budget(scope)
        ends = self._paragraph_ends()
        row = s
        while row <= e:
            lo = bisect_left(ends, row)
            hi = bisect_right(ends, e, lo)
            cands = ends[lo : min(hi, lo + 512)]
            if hi <= lo + 512 and (not cands or cands[-1] != e):
                cands.append(e)  # the span's own end is always a legal window end
            end = self._largest(row, cands, budget)
            if end is None:
                end = self._largest(row, range(row, cands[0] + 1), budget)
            if end is not None:
                d = Draft(row, end, scope, ())
                size = self._verify(d)
                while size is None and end > row:
                    end -= 1
                    d = Draft(row, end, scope, ())
                    size = self._verify(d)
                if size is not None:
                    d.size = size
                    out.append(d)
                    row = end + 1
                    continue
            out.extend(self._pieces(row, scope))
            row += 1
        return out

    def _paragraph_ends(self) -> list[int]:
        if self._ends is None:
            blank = [not line.strip() for line in self.lines]
            self._ends = [r for r in range(len(blank) - 1) if not blank[r] and blank[r + 1]]
            self._ends.append(len(blank) - 1)
        return self._ends

    def _largest(self, row: int, cands: Sequence[int], budget: int) -> int | None:
        """Largest candidate end whose window from ``row`` fits (fits is monotone in end)."""
        if not cands:
            return None
        # The estimate bounds the search so that exact counts stay near budget-sized.
        lo, hi = 0, len(cands) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.m.estimate(row, cands[mid]) <= 3 * budget:
                lo = mid
            else:
                hi = mid - 1
        top = lo
        # First probe where the (calibrated) estimate says the budget runs out, then its
        # neighbour: usually one of the two is the answer, so a window costs two counts.
        probe = 0
        for i in range(top, -1, -1):
            if self.m.estimate(row, cands[i]) <= budget:
                probe = i
                break
        lo, hi, best = 0, top, None
        first = True
        while lo <= hi:
            ok = self.m.fits_exact(row, cands[probe], budget)
            if ok:
                best, lo = probe, probe + 1
            else:
                hi = probe - 1
            probe = (lo if ok else hi) if first else (lo + hi) // 2
            first = False
        return None if best is None else cands[best]

    def _pieces(self, row: int, scope: tuple[Scope, ...]) -> list[Draft]:
        """One over-long row cut into character pieces that fit (at a space when one is
        near the cut). Only these chunks are not whole rows."""
        line = self.lines[row]
        header, htoks = self._header(scope, row, row)
        out: list[Draft] = []
        pos = 0

        def fits(n: int) -> bool:
            piece = line[pos : pos + n]
            return self.m.count_text(f"{header}\n{piece}" if header else piece) <= self._limit

        while pos < len(line):
            remaining = len(line) - pos
            cap = min(remaining, max(64, (self._limit - htoks) * 16))
            if fits(cap):
                n = cap
            else:
                lo, hi = 1, cap - 1
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if fits(mid):
                        lo = mid
                    else:
                        hi = mid - 1
                n = lo
            if n < remaining:
                cut = line.rfind(" ", pos + n // 2, pos + n)
                if cut > pos:
                    n = cut - pos + 1
            piece = line[pos : pos + n]
            if piece.strip():
                out.append(Draft(row, row, scope, (), float(n), piece))
            pos += n
        return out

    # -- labels and output --------------------------------------------------------------------
    def _scope_for(self, defn: Definition, scope: tuple[Scope, ...]) -> Scope:
        parent = scope[-1] if scope else None
        kind = defn.kind
        if kind == "function" and parent is not None and parent.kind in CLASS_LIKE_KINDS:
            kind = "method"
        if defn.qualified or parent is None or not parent.symbol:
            symbol = defn.name
        else:
            symbol = f"{parent.symbol}{self.sep}{defn.name}"
            if len(symbol) > _MAX_SYMBOL_CHARS:  # pathological nesting: keep the inner end
                symbol = "..." + symbol[-(_MAX_SYMBOL_CHARS - 3) :]
        return Scope(kind, symbol, defn.signature, defn.sig_row)

    def _label(self, d: Draft) -> tuple[str, str]:
        if d.scope and d.s <= d.scope[-1].sig_row <= d.e:
            # The head of a split definition (class line, fields, maybe a stub member) is
            # that definition's chunk, whatever small members came along with it.
            return d.scope[-1].kind, d.scope[-1].symbol
        if len(d.defs) == 1:
            return d.defs[0]
        if d.defs:
            kinds = {k for k, _ in d.defs}
            kind = kinds.pop() if len(kinds) == 1 else "block"
            return kind, ", ".join(s for _, s in d.defs)
        if d.scope:
            return d.scope[-1].kind, d.scope[-1].symbol
        return self.default_kind, ""

    def _finish(self, d: Draft) -> Chunk | None:
        if d.text is not None:
            s = e = d.s
            text = d.text
        else:
            lines = self.lines
            s, e = d.s, d.e
            while s < e and not lines[s].strip():
                s += 1
            while e > s and not lines[e].strip():
                e -= 1
            if not lines[s].strip():
                return None
            text = "\n".join(lines[s : e + 1])
        header, _ = self._header(d.scope, s, e)
        kind, symbol = d.label or self._label(d)
        return Chunk(
            path=self.path,
            language=self.language,
            start_line=s + 1,
            end_line=e + 1,
            text=text,
            kind=kind,
            symbol=symbol,
            header=header,
        )


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _common(a: tuple[Scope, ...], b: tuple[Scope, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
