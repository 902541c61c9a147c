"""The language table: which file is which language, and what a definition is in each.

Detection is by path alone (extension, then well-known file names), so the indexer can
decide before it reads a byte. Two content sniffs refine it where the path is ambiguous:
a shebang for extension-less scripts and C++ constructs in ``.h`` headers.

Per language the table says which tree-sitter grammar parses it (``None``: chunked by
lines or sections), which node types are definitions and of what kind, which nodes wrap a
definition (``export``, decorators, templates) and which nodes stick to the definition that
follows them (comments, attributes). The rules that cannot be said with a table (a Go
method's receiver, a C declarator chain, a Kotlin class keyword) live in
:mod:`chunkers.ast_chunker`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "CLASS_LIKE_KINDS",
    "LANGUAGES",
    "SUPPORTED_LANGUAGES",
    "LanguageSpec",
    "language_for_path",
    "refine_language",
]

Structure = Literal["ast", "markdown", "toml", "yaml", "lines"]

CLASS_LIKE_KINDS = frozenset(
    {"class", "struct", "interface", "enum", "impl", "trait", "object", "record"}
)
"""A function defined directly inside one of these is a ``method``."""


@dataclass(frozen=True, slots=True)
class LanguageSpec:
    """How one language is chunked."""

    name: str
    structure: Structure = "lines"
    grammar: str | None = None
    """Name in tree-sitter-language-pack, for ``structure == "ast"``."""
    comment: str = "#"
    """Line-comment prefix used for the context header, so the header reads like code."""
    definitions: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Node type -> kind. Kind ``"?"``: decided by the class keyword (Kotlin, Swift)."""
    wrappers: frozenset[str] = frozenset()
    """Nodes whose definition is a child (``export_statement``, ``decorated_definition``)."""
    attach: frozenset[str] = frozenset()
    """Non-comment nodes that belong to the definition below them (Rust attributes)."""
    needs_body: frozenset[str] = frozenset()
    """Definition types that are only definitions with a body (``struct foo;`` is not)."""

    @property
    def is_ast(self) -> bool:
        return self.structure == "ast" and self.grammar is not None


def _m(**kinds: str) -> MappingProxyType[str, str]:
    return MappingProxyType(dict(kinds))


_JS_DEFS = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "class_declaration": "class",
    "method_definition": "function",
    "lexical_declaration": "function",  # only ``const f = () => ...``; checked in code
    "variable_declaration": "function",
}
_TS_DEFS = {
    **_JS_DEFS,
    "abstract_class_declaration": "class",
    "interface_declaration": "interface",
    "enum_declaration": "enum",
    "type_alias_declaration": "type",
    "internal_module": "namespace",
    "module": "namespace",
}
_C_DEFS = {
    "function_definition": "function",
    "struct_specifier": "struct",
    "union_specifier": "struct",
    "enum_specifier": "enum",
    "type_definition": "struct",  # ``typedef struct {...} name``; checked in code
}
_C_NEEDS_BODY = frozenset({"struct_specifier", "union_specifier", "enum_specifier"})

_SPECS: tuple[LanguageSpec, ...] = (
    LanguageSpec(
        "python",
        "ast",
        "python",
        "#",
        _m(function_definition="function", class_definition="class"),
        frozenset({"decorated_definition"}),
    ),
    LanguageSpec(
        "javascript",
        "ast",
        "javascript",
        "//",
        MappingProxyType(_JS_DEFS),
        frozenset({"export_statement"}),
        frozenset({"decorator"}),
    ),
    LanguageSpec(
        "typescript",
        "ast",
        "typescript",
        "//",
        MappingProxyType(_TS_DEFS),
        frozenset({"export_statement", "expression_statement", "ambient_declaration"}),
        frozenset({"decorator"}),
    ),
    LanguageSpec(
        "tsx",
        "ast",
        "tsx",
        "//",
        MappingProxyType(_TS_DEFS),
        frozenset({"export_statement", "expression_statement", "ambient_declaration"}),
        frozenset({"decorator"}),
    ),
    LanguageSpec(
        "java",
        "ast",
        "java",
        "//",
        _m(
            class_declaration="class",
            interface_declaration="interface",
            enum_declaration="enum",
            record_declaration="record",
            annotation_type_declaration="interface",
            method_declaration="function",
            constructor_declaration="function",
            compact_constructor_declaration="function",
        ),
    ),
    LanguageSpec(
        "go",
        "ast",
        "go",
        "//",
        _m(
            function_declaration="function",
            method_declaration="method",
            type_declaration="type",  # kind from the type_spec; checked in code
        ),
    ),
    LanguageSpec(
        "rust",
        "ast",
        "rust",
        "//",
        _m(
            function_item="function",
            struct_item="struct",
            union_item="struct",
            enum_item="enum",
            trait_item="trait",
            impl_item="impl",
            mod_item="namespace",
            macro_definition="macro",
        ),
        attach=frozenset({"attribute_item"}),
        needs_body=frozenset({"mod_item"}),
    ),
    LanguageSpec(
        "c",
        "ast",
        "c",
        "//",
        MappingProxyType(_C_DEFS),
        needs_body=_C_NEEDS_BODY,
    ),
    LanguageSpec(
        "cpp",
        "ast",
        "cpp",
        "//",
        MappingProxyType(
            {
                **_C_DEFS,
                "class_specifier": "class",
                "namespace_definition": "namespace",
            }
        ),
        frozenset({"template_declaration"}),
        needs_body=_C_NEEDS_BODY | {"class_specifier"},
    ),
    LanguageSpec(
        "csharp",
        "ast",
        "csharp",
        "//",
        _m(
            class_declaration="class",
            struct_declaration="struct",
            interface_declaration="interface",
            enum_declaration="enum",
            record_declaration="record",
            record_struct_declaration="record",
            method_declaration="function",
            constructor_declaration="function",
            destructor_declaration="function",
            operator_declaration="function",
            local_function_statement="function",
            namespace_declaration="namespace",
            file_scoped_namespace_declaration="namespace",
        ),
    ),
    LanguageSpec(
        "ruby",
        "ast",
        "ruby",
        "#",
        _m(
            method="function",
            singleton_method="function",
            **{"class": "class", "module": "namespace"},
        ),
    ),
    LanguageSpec(
        "php",
        "ast",
        "php",
        "//",
        _m(
            function_definition="function",
            method_declaration="function",
            class_declaration="class",
            interface_declaration="interface",
            trait_declaration="trait",
            enum_declaration="enum",
            namespace_definition="namespace",
        ),
        attach=frozenset({"attribute_list"}),
        needs_body=frozenset({"namespace_definition"}),
    ),
    LanguageSpec(
        "kotlin",
        "ast",
        "kotlin",
        "//",
        _m(
            class_declaration="?",
            object_declaration="object",
            companion_object="object",
            function_declaration="function",
        ),
    ),
    LanguageSpec(
        "scala",
        "ast",
        "scala",
        "//",
        _m(
            class_definition="class",
            object_definition="object",
            trait_definition="trait",
            enum_definition="enum",
            function_definition="function",
        ),
    ),
    LanguageSpec(
        "swift",
        "ast",
        "swift",
        "//",
        _m(
            class_declaration="?",
            protocol_declaration="interface",
            function_declaration="function",
            init_declaration="function",
        ),
    ),
    LanguageSpec("bash", "ast", "bash", "#", _m(function_definition="function")),
    LanguageSpec("markdown", "markdown", comment=""),
    LanguageSpec("toml", "toml"),
    LanguageSpec("yaml", "yaml"),
    LanguageSpec("json", comment="//"),
    LanguageSpec("sql", comment="--"),
    LanguageSpec("dockerfile"),
    LanguageSpec("html", comment=""),
    LanguageSpec("xml", comment=""),
    LanguageSpec("css", comment="//"),
    LanguageSpec("ini", comment=";"),
    LanguageSpec("makefile"),
    LanguageSpec("cmake"),
    LanguageSpec("protobuf", comment="//"),
    LanguageSpec("graphql"),
    LanguageSpec("restructuredtext", comment=""),
    LanguageSpec("text", comment=""),
)

LANGUAGES: MappingProxyType[str, LanguageSpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Every language the chunker labels, by name."""

SUPPORTED_LANGUAGES: frozenset[str] = frozenset(LANGUAGES)
"""Names that can appear in ``Chunk.language`` (``"text"`` for anything unrecognised)."""

_EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",  # refined to cpp by content, see refine_language
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".h++": "cpp",
    ".ipp": "cpp",
    ".inl": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".rake": "ruby",
    ".gemspec": "ruby",
    ".php": "php",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".sc": "scala",
    ".swift": "swift",
    ".sh": "bash",
    ".bash": "bash",
    ".zsh": "bash",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".jsonc": "json",
    ".json5": "json",
    ".ipynb": "json",
    ".sql": "sql",
    ".dockerfile": "dockerfile",
    ".html": "html",
    ".htm": "html",
    ".xml": "xml",
    ".xsd": "xml",
    ".css": "css",
    ".scss": "css",
    ".less": "css",
    ".ini": "ini",
    ".cfg": "ini",
    ".conf": "ini",
    ".properties": "ini",
    ".mk": "makefile",
    ".cmake": "cmake",
    ".proto": "protobuf",
    ".graphql": "graphql",
    ".gql": "graphql",
    ".rst": "restructuredtext",
    ".txt": "text",
}

_FILENAMES: dict[str, str] = {
    "dockerfile": "dockerfile",
    "containerfile": "dockerfile",
    "makefile": "makefile",
    "gnumakefile": "makefile",
    "cmakelists.txt": "cmake",
    "rakefile": "ruby",
    "gemfile": "ruby",
    "podfile": "ruby",
    "vagrantfile": "ruby",
    "jenkinsfile": "text",
    "pipfile": "toml",
    ".bashrc": "bash",
    ".bash_profile": "bash",
    ".zshrc": "bash",
    ".profile": "bash",
}

_SHEBANGS = (
    ("python", "python"),
    ("bash", "bash"),
    ("zsh", "bash"),
    ("sh", "bash"),
    ("ruby", "ruby"),
    ("node", "javascript"),
    ("deno", "typescript"),
)
_CPP_HINT = re.compile(
    r"^\s*(?:class\s+\w+|namespace\b|template\s*<|(?:public|private|protected)\s*:"
    r"|using\s+namespace\b|#\s*include\s*<\w+>)|\w::\w",
    re.MULTILINE,
)


def language_for_path(path: str) -> str | None:
    """Language of a repo-relative path by its name alone; ``None`` when unknown.

    Why by name only: the indexer asks before reading the blob, and the same answer has to
    come back for a path whether or not its content is at hand (search filters use it).
    """
    name = path.rsplit("/", 1)[-1]
    lower = name.lower()
    hit = _FILENAMES.get(lower)
    if hit is not None:
        return hit
    if lower.startswith(("dockerfile.", "containerfile.")):
        return "dockerfile"
    dot = lower.rfind(".")
    if dot <= 0 and not lower.startswith("."):
        return None
    return _EXTENSIONS.get(lower[dot:]) if dot >= 0 else None


def refine_language(path: str, language: str | None, text: str) -> str:
    """Settle what the path left open: a shebang names the language of an extension-less
    script; a ``.h`` that uses classes, namespaces or templates is C++ (the C grammar would
    mangle it). Anything still unknown is ``"text"``."""
    if language is None and text.startswith("#!"):
        interp = _interpreter(text[2 : text.find("\n") if "\n" in text else 200])
        for prefix, lang in _SHEBANGS:
            if interp.startswith(prefix):
                return lang
    if language == "c" and path.lower().endswith(".h") and _CPP_HINT.search(text[:65536]):
        return "cpp"
    return language or "text"


def _interpreter(shebang: str) -> str:
    """``/usr/bin/env -S python3 -u`` -> ``python3``."""
    parts = shebang.split()
    if not parts:
        return ""
    prog = parts[0].rsplit("/", 1)[-1]
    if prog == "env":
        args = [p for p in parts[1:] if not p.startswith("-") and "=" not in p]
        prog = args[0].rsplit("/", 1)[-1] if args else ""
    return prog.lower()
