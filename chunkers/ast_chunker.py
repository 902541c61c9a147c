"""tree-sitter as a :class:`~chunkers.engine.Structure`: parsing, definitions, names, signatures.

The table in :mod:`chunkers.languages` says which node types are definitions; this module
holds what a table cannot: unwrapping (``export``, decorators, templates), names hidden in
declarator chains (C), receivers (Go), keyword-typed classes (Kotlin, Swift), arrow functions
bound to a name (JavaScript), and the parse guards -- a deadline, and the share of the tree
that is ``ERROR`` -- that decide when a file is better cut by lines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from chunkers.engine import Definition
from chunkers.languages import LanguageSpec

__all__ = ["ERROR_FRACTION", "PARSE_TIMEOUT_S", "TreeSitterStructure", "error_fraction", "parse"]

PARSE_TIMEOUT_S = 10.0
"""tree-sitter parses megabytes in well under a second; a parse still running after this is
pathological input and the file is line-chunked instead."""
ERROR_FRACTION = 0.25
"""Share of the file's bytes inside ``ERROR`` nodes above which AST chunks would follow a
wrong tree (a stray bracket can swallow the rest of the file); line windows are safer."""

_READ_CHUNK = 1 << 16
_SIG_BYTES = 400
_MAX_SIG_CHARS = 120
_MAX_NAME_CHARS = 100

_NAME_TYPES = frozenset(
    {
        "identifier",
        "type_identifier",
        "simple_identifier",
        "constant",
        "name",
        "property_identifier",
        "field_identifier",
        "namespace_identifier",
        "word",
    }
)
_DECLARATOR_LEAVES = frozenset(
    {
        "identifier",
        "field_identifier",
        "qualified_identifier",
        "destructor_name",
        "operator_name",
        "type_identifier",
        "template_function",
        "operator_cast",
    }
)
_BODY_TYPES = frozenset(
    {
        "block",
        "body_statement",
        "class_body",
        "compound_statement",
        "declaration_list",
        "enum_body",
        "enum_class_body",
        "field_declaration_list",
        "function_body",
        "interface_body",
        "protocol_body",
        "statement_block",
        "template_body",
    }
)
_FUNCTION_VALUES = frozenset(
    {
        "arrow_function",
        "function_expression",
        "function",
        "generator_function",
        "class",
        "class_expression",
    }
)
_KEYWORD_KINDS = {
    "enum": "enum",
    "interface": "interface",
    "protocol": "interface",
    "struct": "struct",
    "object": "object",
    "extension": "class",
    "actor": "class",
    "class": "class",
}
_KEYWORD_PRIORITY = ("enum", "interface", "protocol", "struct", "object", "extension", "actor")
_GENERIC_RE = re.compile(r"[<\[].*$")
_TIGHT_OPEN = re.compile(r"([(\[])\s+")
_TIGHT_CLOSE = re.compile(r",?\s+([)\]])")


def parse(parser: Any, src: bytes, timeout_s: float = PARSE_TIMEOUT_S) -> Any:
    """Parse with a deadline. tree-sitter only honours a progress callback when it reads the
    source through a callback, hence the chunked reader. Raises ``ValueError`` on timeout."""
    deadline = time.monotonic() + timeout_s

    def read(offset: int, _point: Any) -> bytes:
        return src[offset : offset + _READ_CHUNK]

    def progress(_offset: int, _has_error: bool) -> bool:
        return time.monotonic() > deadline

    return parser.parse(read, progress_callback=progress)


def error_fraction(root: Any) -> float:
    """Share of the source's bytes covered by ``ERROR`` nodes. Only subtrees flagged
    ``has_error`` are visited, so a clean tree costs nothing."""
    total = max(1, root.end_byte - root.start_byte)
    if not root.has_error:
        return 0.0
    bad = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error:
            bad += node.end_byte - node.start_byte
            continue
        stack.extend(c for c in node.children if c.has_error)
    return bad / total


class TreeSitterStructure:
    """A parsed file seen by the engine."""

    symbol_sep = "."

    def __init__(self, spec: LanguageSpec, src: bytes) -> None:
        self.spec = spec
        self.src = src
        self._defs = spec.definitions
        self._wrappers = spec.wrappers
        self._attach = spec.attach

    def children(self, node: Any) -> Sequence[tuple[int, int, Any]]:
        out = []
        for c in node.children:
            if c.start_byte == c.end_byte:
                continue  # MISSING tokens and other zero-width nodes own no row
            s = c.start_point[0]
            e, col = c.end_point
            if col == 0 and e > s:
                e -= 1  # a node ending with its newline does not own the next row
            out.append((s, e, c))
        return out

    def attachable(self, node: Any) -> bool:
        t = node.type
        return "comment" in t or t in self._attach

    def definition(self, node: Any) -> Definition | None:
        if not node.is_named:
            return None  # keyword tokens share type names with nodes (Ruby ``module``)
        t = node.type
        if t in self._wrappers:
            inner = self._unwrap(node)
            return None if inner is None else self._define(inner)
        if t in self._defs:
            return self._define(node)
        return None

    # -- internals ---------------------------------------------------------------------------
    def _unwrap(self, node: Any) -> Any | None:
        """The definition inside ``export``/``@decorator``/``template<>`` wrappers."""
        for _ in range(8):
            if node.type not in self._wrappers:
                return node if node.type in self._defs else None
            named = [
                c
                for c in node.named_children
                if "comment" not in c.type and c.type not in ("decorator", "attribute_item")
            ]
            if node.type == "expression_statement" and len(named) != 1:
                return None
            node = next(
                (c for c in named if c.type in self._defs or c.type in self._wrappers), None
            )
            if node is None:
                return None
        return None

    def _text(self, node: Any, limit: int = 4 * _MAX_NAME_CHARS) -> str:
        raw = self.src[node.start_byte : min(node.end_byte, node.start_byte + limit)]
        return " ".join(raw.decode("utf-8", "replace").split())

    def _define(self, node: Any) -> Definition | None:
        t = node.type
        kind = self._defs[t]
        body = node.child_by_field_name("body")
        if t in self.spec.needs_body and body is None:
            return None
        name_node: Any = None
        qualified = False
        name = ""
        if t in ("lexical_declaration", "variable_declaration"):
            decls = [c for c in node.named_children if c.type == "variable_declarator"]
            if len(decls) != 1:
                return None
            value = decls[0].child_by_field_name("value")
            if value is None or value.type not in _FUNCTION_VALUES:
                return None
            kind = "class" if "class" in value.type else "function"
            name_node = decls[0].child_by_field_name("name")
            body = value.child_by_field_name("body")
        elif t == "type_declaration":  # Go
            specs = [c for c in node.named_children if c.type in ("type_spec", "type_alias")]
            if len(specs) != 1:
                return None
            name_node = specs[0].child_by_field_name("name")
            type_node = specs[0].child_by_field_name("type")
            kind = {"struct_type": "struct", "interface_type": "interface"}.get(
                type_node.type if type_node is not None else "", "type"
            )
        elif t == "type_definition":  # C typedef struct {...} name;
            type_node = node.child_by_field_name("type")
            if type_node is None or type_node.type not in (
                "struct_specifier",
                "union_specifier",
                "enum_specifier",
            ):
                return None
            body = type_node.child_by_field_name("body")
            if body is None:
                return None
            kind = "enum" if type_node.type == "enum_specifier" else "struct"
            name_node = node.child_by_field_name("declarator")
        elif t == "impl_item":  # Rust: methods belong to the implementing type
            name_node = node.child_by_field_name("type")
        elif t == "method_declaration" and self.spec.name == "go":
            receiver = node.child_by_field_name("receiver")
            method = node.child_by_field_name("name")
            recv = _go_receiver(self._text(receiver)) if receiver is not None else ""
            meth = self._text(method) if method is not None else ""
            name = f"{recv}.{meth}" if recv else meth
            qualified = True
        elif kind == "?":
            kind = self._keyword_kind(node)
        if not name:
            if name_node is None:
                name_node = self._name_node(node)
            name = _clean_name(self._text(name_node)) if name_node is not None else ""
        if not name:
            name = {"init_declaration": "init", "companion_object": "Companion"}.get(
                t, "(anonymous)"
            )
        if body is None:
            body = next((c for c in node.named_children if c.type in _BODY_TYPES), None)
        return Definition(
            kind=kind,
            name=name,
            signature=self._signature(node, body),
            sig_row=node.start_point[0],
            node=node,
            qualified=qualified,
            body=body,
        )

    def _name_node(self, node: Any) -> Any | None:
        hit = node.child_by_field_name("name")
        if hit is not None:
            return hit
        decl = node.child_by_field_name("declarator")
        for _ in range(16):  # C/C++: int *(*name)(args) -> walk the declarator chain
            if decl is None or decl.type in _DECLARATOR_LEAVES:
                break
            nxt = decl.child_by_field_name("declarator")
            if nxt is None:
                nxt = next((c for c in decl.named_children if c.type in _DECLARATOR_LEAVES), None)
            decl = nxt
        if decl is not None:
            return decl
        return next((c for c in node.named_children if c.type in _NAME_TYPES), None)

    @staticmethod
    def _keyword_kind(node: Any) -> str:
        words = {c.type for c in node.children if not c.is_named}
        for word in _KEYWORD_PRIORITY:
            if word in words:
                return _KEYWORD_KINDS[word]
        return "class"

    def _signature(self, node: Any, body: Any | None) -> str:
        """The definition's text up to its body: ``def f(a, b) -> int:``, ``class A(B):``,
        ``func (s *Server) Start(port int) error``; whitespace collapsed, truncated."""
        start = node.start_byte
        if body is not None and body.start_byte > start:
            end = body.start_byte
            for c in node.children:  # stop before comments between the header and the body
                if c.start_byte >= body.start_byte:
                    break
                if "comment" not in c.type:
                    end = c.end_byte
            raw = self.src[start : min(end, start + _SIG_BYTES)]
        else:
            raw = self.src[start : min(node.end_byte, start + _SIG_BYTES)].split(b"\n", 1)[0]
        sig = " ".join(raw.decode("utf-8", "replace").split()).rstrip(" {")
        sig = _TIGHT_OPEN.sub(r"\1", _TIGHT_CLOSE.sub(r"\1", sig))  # "( a, b, )" -> "(a, b)"
        if len(sig) > _MAX_SIG_CHARS:
            sig = sig[: _MAX_SIG_CHARS - 3].rstrip() + "..."
        return sig


def _go_receiver(text: str) -> str:
    """``(s *Server[T])`` -> ``Server``."""
    inner = text.strip("() ")
    last = inner.split()[-1] if inner.split() else ""
    return _GENERIC_RE.sub("", last.lstrip("*"))


def _clean_name(name: str) -> str:
    if not name.startswith("operator"):
        name = _GENERIC_RE.sub("", name)
    name = name.replace("::", ".").strip()
    return name[:_MAX_NAME_CHARS]
