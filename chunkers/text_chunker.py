"""Section structures for files without a grammar: Markdown headings, TOML tables, YAML keys.

A section tree is fed to the same engine as an AST: a section that fits is one chunk; a big
one is opened into its own text and its subsections, and the headings above a chunk go into
its header the way class signatures do for a method. Files with no section notion (JSON,
SQL, Dockerfile, plain text) and AST fallbacks go straight to the engine's line windows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chunkers.engine import Definition

__all__ = ["Section", "SectionStructure", "section_finder"]

Heading = tuple[int, int, str]  # (row, level, title)

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r"^\s*(?:[-*+>|]|\d+[.)]\s|#|<|$)")
_TOML_TABLE = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
_YAML_KEY = re.compile(r"""^([A-Za-z0-9_$"'.][^#:]*?|"[^"]*"|'[^']*')\s*:(?:\s|$)""")


@dataclass(slots=True)
class Section:
    s: int
    e: int
    level: int
    title: str
    heading: str
    children: list[Section] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Body:
    """A section's own rows before its first subsection (a leaf for the engine)."""

    s: int
    e: int


def markdown_headings(lines: Sequence[str]) -> list[Heading]:
    """ATX (``## Title``) and setext (``Title\\n-----``) headings outside code fences and
    front matter."""
    out: list[Heading] = []
    fence = ""
    start = 0
    if lines and lines[0].strip() == "---":  # YAML front matter
        for r in range(1, len(lines)):
            if lines[r].strip() in ("---", "..."):
                start = r + 1
                break
    prev_text = False
    for r in range(start, len(lines)):
        line = lines[r]
        m = _FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = ""
            prev_text = False
            continue
        if m:
            fence = m.group(1)
            prev_text = False
            continue
        m = _ATX.match(line)
        if m:
            out.append((r, len(m.group(1)), (m.group(2) or "").strip()))
            prev_text = False
            continue
        m = _SETEXT.match(line)
        if m and prev_text and (out[-1][0] if out else -1) != r - 1:
            out.append((r - 1, 1 if m.group(1)[0] == "=" else 2, lines[r - 1].strip()))
            prev_text = False
            continue
        prev_text = not _NOT_PARAGRAPH.match(line)
    return out


def toml_headings(lines: Sequence[str]) -> list[Heading]:
    """``[table]`` and ``[[array.of.tables]]`` headers (flat: one level)."""
    out: list[Heading] = []
    for r, line in enumerate(lines):
        if line.startswith(("[", " ", "\t")):
            m = _TOML_TABLE.match(line)
            if m:
                out.append((r, 1, m.group(1).strip()))
    return out


def yaml_headings(lines: Sequence[str]) -> list[Heading]:
    """Top-level mapping keys (column 0), the natural sections of configs and CI files."""
    out: list[Heading] = []
    for r, line in enumerate(lines):
        if line and not line[0].isspace() and line[0] not in "-#":
            m = _YAML_KEY.match(line)
            if m:
                out.append((r, 1, m.group(1).strip("\"'")))
    return out


def section_finder(structure: str) -> Callable[[Sequence[str]], list[Heading]]:
    return {"markdown": markdown_headings, "toml": toml_headings, "yaml": yaml_headings}[structure]


class SectionStructure:
    """Headings as a tree the engine can chunk; symbols are heading paths ``A > B``."""

    symbol_sep = " > "

    def __init__(self, lines: Sequence[str], headings: list[Heading]) -> None:
        self.lines = lines
        last = len(lines) - 1
        self.root = Section(0, last, 0, "", "")
        stack = [self.root]
        for row, level, title in headings:
            while stack[-1].level >= level:
                stack.pop().e = row - 1
            sec = Section(row, last, level, title, lines[row])
            stack[-1].children.append(sec)
            stack.append(sec)

    def children(self, node: Any) -> Sequence[tuple[int, int, Any]]:
        if not isinstance(node, Section):
            return ()
        out: list[tuple[int, int, Any]] = []
        first = node.children[0].s if node.children else node.e + 1
        if first > node.s:
            out.append((node.s, first - 1, _Body(node.s, first - 1)))
        out.extend((c.s, c.e, c) for c in node.children)
        return out

    def definition(self, node: Any) -> Definition | None:
        if not isinstance(node, Section) or node.level == 0:
            return None
        sig = " ".join(node.heading.split())
        if len(sig) > 120:
            sig = sig[:117] + "..."
        return Definition("section", node.title or "(untitled)", sig, node.s, node)

    def attachable(self, node: Any) -> bool:
        return False
