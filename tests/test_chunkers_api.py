"""The public surface of chunkers: names, records, the language table, construction."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from tree_sitter_language_pack import get_parser

import chunkers
from chunkers import (
    SUPPORTED_LANGUAGES,
    ChunkResult,
    FileChunker,
    PathFilter,
    chunk_file,
    language_for_path,
)
from chunkers.languages import LANGUAGES
from coderag.models import Chunk

REQUIRED_AST = {
    "python",
    "javascript",
    "typescript",
    "tsx",
    "java",
    "go",
    "rust",
    "c",
    "cpp",
    "csharp",
    "ruby",
    "php",
    "kotlin",
    "scala",
    "swift",
    "bash",
}
REQUIRED_TEXT = {"markdown", "yaml", "json", "toml", "sql", "dockerfile", "text"}


def test_exported_names() -> None:
    assert sorted(chunkers.__all__) == sorted(
        [
            "CHUNKER_VERSION",
            "ChunkResult",
            "FileChunker",
            "PathFilter",
            "SUPPORTED_LANGUAGES",
            "chunk_file",
            "language_for_path",
        ]
    )
    for name in chunkers.__all__:
        assert getattr(chunkers, name) is not None


def test_private_modules_declare_all() -> None:
    for name in (
        "api", "ast_chunker", "engine", "languages", "secrets", "skip", "text_chunker", "tokens",
    ):  # fmt: skip
        module = sys.modules[f"chunkers.{name}"]
        assert isinstance(module.__all__, list), name


def test_chunk_result_record() -> None:
    fields = [f.name for f in dataclasses.fields(ChunkResult)]
    assert fields == ["chunks", "skipped", "language", "fallback", "redactions"]
    result = chunk_file("src/a.py", b"def a():\n    return 1\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.language = "x"  # type: ignore[misc]
    (chunk,) = result.chunks
    assert isinstance(chunk, Chunk)
    assert chunk.repo == "" and chunk.commit == ""
    assert (chunk.path, chunk.language, chunk.start_line, chunk.end_line) == (
        "src/a.py",
        "python",
        1,
        2,
    )
    assert (chunk.kind, chunk.symbol) == ("function", "a")
    assert chunk.header == "# path: src/a.py"
    assert chunk.embed_text == "# path: src/a.py\ndef a():\n    return 1"


def test_path_is_normalised() -> None:
    (chunk,) = chunk_file("./src\\win/a.py", b"x = 1\n").chunks
    assert chunk.path == "src/win/a.py"


@pytest.mark.parametrize(
    "kwargs",
    [{"max_tokens": 8}, {"min_tokens": -1}, {"min_tokens": 300}, {"max_file_bytes": 0}],
)
def test_invalid_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FileChunker(**kwargs)


def test_construction_is_cheap_and_lazy() -> None:
    calls: list[str] = []

    def counter(text: str) -> int:
        calls.append(text)
        return len(text.split()) + 2

    chunker = FileChunker(counter)
    assert calls == []  # nothing counted (nor parsed) before the first file
    chunker.chunk("a.py", b"x = 1\n")
    assert calls


def test_chunk_file_accepts_options() -> None:
    source = b"".join(b"def f%d(x):\n    return x * %d + 1\n\n\n" % (i, i) for i in range(8))
    few = chunk_file("src/m.py", source)
    many = chunk_file("src/m.py", source, max_tokens=32, min_tokens=0)
    assert len(many.chunks) > len(few.chunks)


def test_supported_languages() -> None:
    assert REQUIRED_AST | REQUIRED_TEXT <= SUPPORTED_LANGUAGES
    assert {name for name, spec in LANGUAGES.items() if spec.is_ast} == REQUIRED_AST


@pytest.mark.parametrize("language", sorted(REQUIRED_AST))
def test_every_grammar_loads(language: str) -> None:
    grammar = LANGUAGES[language].grammar
    assert grammar is not None
    parser = get_parser(grammar)  # type: ignore[arg-type]
    assert parser.parse(b"\n").root_node is not None


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("a/b.py", "python"),
        ("types.pyi", "python"),
        ("x.mjs", "javascript"),
        ("x.jsx", "javascript"),
        ("x.ts", "typescript"),
        ("x.tsx", "tsx"),
        ("X.java", "java"),
        ("main.go", "go"),
        ("lib.rs", "rust"),
        ("a.c", "c"),
        ("a.h", "c"),
        ("a.cc", "cpp"),
        ("a.hpp", "cpp"),
        ("A.cs", "csharp"),
        ("a.rb", "ruby"),
        ("Rakefile", "ruby"),
        ("index.php", "php"),
        ("A.kt", "kotlin"),
        ("build.gradle.kts", "kotlin"),
        ("A.scala", "scala"),
        ("A.swift", "swift"),
        ("run.sh", "bash"),
        ("README.md", "markdown"),
        ("ci.yml", "yaml"),
        ("a.yaml", "yaml"),
        ("package.json", "json"),
        ("pyproject.toml", "toml"),
        ("q.sql", "sql"),
        ("Dockerfile", "dockerfile"),
        ("docker/Dockerfile.prod", "dockerfile"),
        ("api.Dockerfile", "dockerfile"),
        ("Makefile", "makefile"),
        ("LICENSE", None),
        ("archive.xyz", None),
        (".env", None),
    ],
)
def test_language_for_path(path: str, language: str | None) -> None:
    assert language_for_path(path) == language


def test_path_filter_is_public() -> None:
    assert PathFilter().check("node_modules/x.js") is not None
