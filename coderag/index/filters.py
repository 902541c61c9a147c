"""Backend-neutral filter planning and the one glob matcher both backends use.

A :class:`~coderag.index.base.SearchFilter` is turned into a :class:`FilterPlan` made of a
few plain conditions (:class:`Match`, :class:`Depth`) that each backend translates into its
own Qdrant filter type in a dozen lines. Keeping the planning here means the Edge and server
backends cannot drift apart on what a filter means.

Globs (``path_globs``) cannot be evaluated by Qdrant, so each glob becomes:

* a **prefilter** Qdrant can run on indexed payload: the exact ``path`` for a glob without
  wildcards; otherwise the literal directory prefix (``src/**/*.py`` -> ``dirs`` contains
  ``src``) and, for globs without ``**``, the exact directory depth (``tests/*`` -> the file
  has exactly one ancestor directory; ``*.md`` -> none);
* a **client-side check** (:func:`compile_globs`) applied to what comes back.

Glob semantics (fnmatch-style, no gitignore rules): ``*`` and ``?`` never cross ``/``;
``**`` crosses it; ``**/`` matches zero or more whole directories, so ``src/**/*.py``
matches ``src/a.py`` and ``src/x/y/a.py``; a trailing ``/**`` matches everything below the
directory; ``[abc]`` / ``[!abc]`` are character classes. A glob is matched against the whole
repo-relative path, so ``*.md`` only matches files at the repository root (use ``**/*.md``
for any depth).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from coderag.errors import InputError
from coderag.index.base import SearchFilter

__all__ = [
    "Depth",
    "FilterPlan",
    "Match",
    "compile_globs",
    "glob_match",
    "glob_prefilter",
    "glob_to_regex",
    "norm_id",
    "norm_ids",
    "plan_filter",
]

_MAGIC = frozenset("*?[")


# --- conditions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """``key`` (a keyword or a list of keywords) has any of ``values``."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Depth:
    """The list payload ``key`` has exactly ``n`` values (``dirs`` -> directory depth)."""

    key: str
    n: int


Cond = Match | Depth


@dataclass(frozen=True, slots=True)
class FilterPlan:
    """What a backend must ask Qdrant for, and what it must check on the results.

    ``must``: every condition holds. ``any_of``: when set, at least one of the groups holds
    entirely (one group per glob). ``has_ids`` / ``exclude_ids``: id restrictions.
    ``path_check``: the client-side glob check, ``None`` when there are no globs.
    """

    must: tuple[Cond, ...] = ()
    any_of: tuple[tuple[Cond, ...], ...] | None = None
    has_ids: tuple[str, ...] | None = None
    exclude_ids: tuple[str, ...] = ()
    path_check: Callable[[str], bool] | None = None

    @property
    def is_empty(self) -> bool:
        """True when the plan restricts nothing (a Qdrant call without any filter)."""
        return (
            not self.must
            and self.any_of is None
            and self.has_ids is None
            and not self.exclude_ids
            and self.path_check is None
        )

    def restricted_to(self, ids: Sequence[str]) -> FilterPlan:
        """The same plan, limited to ``ids`` and without the glob check (already applied)."""
        return FilterPlan(
            must=self.must,
            any_of=self.any_of,
            has_ids=tuple(ids),
            exclude_ids=self.exclude_ids,
            path_check=None,
        )


# --- ids ------------------------------------------------------------------------------------


def norm_id(point_id: str) -> str:
    """Canonical form (lowercase, hyphenated) of a uuid point id.

    Both Qdrant flavours answer with the canonical form, so normalising on the way in keeps
    the ids callers pass and the ids they get back comparable.
    """
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError as exc:
        raise InputError(f"point ids must be uuid strings, got {point_id!r}") from exc


def norm_ids(ids: Sequence[str]) -> list[str]:
    return [norm_id(i) for i in ids]


# --- globs ----------------------------------------------------------------------------------


def _clean_glob(glob: str) -> str:
    g = glob.strip()
    while g.startswith("./"):
        g = g[2:]
    g = g.lstrip("/")
    if not g:
        raise InputError(f"empty path glob {glob!r}")
    return g


def _bracket(glob: str, i: int) -> tuple[str, int] | None:
    """Translate the character class starting at ``glob[i] == '['``; None if unterminated."""
    j = i + 1
    negate = j < len(glob) and glob[j] in "!^"
    if negate:
        j += 1
    if j < len(glob) and glob[j] == "]":  # a leading ']' is literal, as in fnmatch
        j += 1
    while j < len(glob) and glob[j] != "]":
        j += 1
    if j >= len(glob):
        return None
    body = glob[i + 1 + (1 if negate else 0) : j]
    body = body.replace("\\", "\\\\").replace("^", "\\^")
    # A class never matches '/', like '*' and '?': a path segment is the unit of a glob.
    cls = f"[^/{body}]" if negate else f"(?!/)[{body}]"
    return cls, j + 1


@lru_cache(maxsize=512)
def glob_to_regex(glob: str) -> re.Pattern[str]:
    """Compile ``glob`` (semantics in the module docstring) to an anchored regex."""
    g = _clean_glob(glob)
    out: list[str] = []
    i, n = 0, len(g)
    while i < n:
        c = g[i]
        if c == "*":
            j = i
            while j < n and g[j] == "*":
                j += 1
            if j - i >= 2:
                seg_start = i == 0 or g[i - 1] == "/"
                if seg_start and j < n and g[j] == "/":
                    out.append("(?:[^/]*/)*")  # '**/': zero or more whole directories
                    i = j + 1
                    continue
                out.append(".*")  # trailing '/**' or '**' inside a segment: anything
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            br = _bracket(g, i)
            if br is None:
                out.append(re.escape(c))
                i += 1
            else:
                out.append(br[0])
                i = br[1]
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise InputError(f"bad path glob {glob!r}: {exc}") from exc


def glob_match(glob: str, path: str) -> bool:
    """True when the repo-relative ``path`` matches ``glob`` as a whole."""
    return glob_to_regex(glob).fullmatch(path) is not None


def compile_globs(globs: Sequence[str]) -> Callable[[str], bool]:
    """One predicate for a list of globs: a path passes when any glob matches it."""
    patterns = [glob_to_regex(g) for g in globs]

    def check(path: str) -> bool:
        return any(p.fullmatch(path) is not None for p in patterns)

    return check


def glob_prefilter(glob: str) -> tuple[Cond, ...]:
    """Conditions Qdrant can evaluate that every path matching ``glob`` satisfies.

    Empty when nothing useful can be said (``**/*.py``): the caller then has to scan.
    """
    g = _clean_glob(glob)
    if not any(ch in _MAGIC for ch in g):
        return (Match("path", (g,)),)
    segments = g.split("/")
    literal: list[str] = []
    for seg in segments[:-1]:
        if any(ch in _MAGIC for ch in seg):
            break
        literal.append(seg)
    conds: list[Cond] = []
    if literal:
        conds.append(Match("dirs", ("/".join(literal),)))
    if "**" not in g:
        conds.append(Depth("dirs", len(segments) - 1))
    return tuple(conds)


# --- planning -------------------------------------------------------------------------------


def _values(name: str, values: Sequence[str] | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):  # a bare string is a common slip: "repo" is not ["r","e",...]
        raise InputError(f"filter field {name!r} takes a list of strings, not a string")
    return tuple(str(v) for v in values)


def plan_filter(flt: SearchFilter | None) -> FilterPlan:
    """Turn a :class:`SearchFilter` into a :class:`FilterPlan` (``None``: no restriction)."""
    if flt is None:
        return FilterPlan()
    must: list[Cond] = []
    for key, values in (
        ("repo", _values("repos", flt.repos)),
        ("path", _values("paths", flt.paths)),
        ("language", _values("languages", flt.languages)),
        ("symbol", _values("symbols", flt.symbols)),
    ):
        if values:
            must.append(Match(key, values))
    if flt.branch:
        must.append(Match("branches", (flt.branch,)))

    globs = _values("path_globs", flt.path_globs)
    any_of: tuple[tuple[Cond, ...], ...] | None = None
    path_check: Callable[[str], bool] | None = None
    if globs:
        path_check = compile_globs(globs)
        groups = tuple(glob_prefilter(g) for g in globs)
        # One glob with no usable prefilter makes the whole OR unrestricted.
        if all(groups):
            any_of = groups
    exclude = tuple(norm_ids(_values("exclude_ids", flt.exclude_ids)))
    return FilterPlan(must=tuple(must), any_of=any_of, exclude_ids=exclude, path_check=path_check)
