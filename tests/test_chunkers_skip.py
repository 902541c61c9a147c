"""Skip rules (each with its reason), fallbacks, and inputs that must never crash the chunker."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkers import FileChunker, PathFilter, chunk_file
from chunkers.engine import MAX_DEPTH
from coderag.models import SkippedFile

# -- by path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("node_modules/react/index.js", "vendored"),
        ("web/node_modules/lodash/lodash.js", "vendored"),
        ("vendor/github.com/pkg/errors/errors.go", "vendored"),
        ("third_party/zlib/inflate.c", "vendored"),
        ("ios/Pods/Alamofire/Source/Session.swift", "vendored"),
        (".git/config", "ignored"),
        ("pkg/__pycache__/mod.cpython-311.pyc", "ignored"),
        ("dist/app.js", "ignored"),
        ("src/app.egg-info/PKG-INFO", "ignored"),
        ("package-lock.json", "lockfile"),
        ("web/yarn.lock", "lockfile"),
        ("poetry.lock", "lockfile"),
        ("Cargo.lock", "lockfile"),
        ("go.sum", "lockfile"),
        ("Pipfile.lock", "lockfile"),
        ("composer.lock", "lockfile"),
        ("pnpm-lock.yaml", "lockfile"),
        ("uv.lock", "lockfile"),
        ("Gemfile.lock", "lockfile"),
        ("docs/logo.png", "binary"),
        ("lib/native.so", "binary"),
        ("static/app.min.js", "minified"),
        ("static/site.min.css", "minified"),
        ("static/app.js.map", "generated"),
        ("api/service.pb.go", "generated"),
        ("sphinx/locale/de/LC_MESSAGES/sphinx.po", "translation"),
        ("sphinx/locale/de/LC_MESSAGES/sphinx.js", "translation"),
        ("sphinx/locale/sphinx.pot", "translation"),
        ("po/fr.po", "translation"),
    ],
)
def test_builtin_path_rules(path: str, reason: str) -> None:
    skipped = PathFilter().check(path)
    assert isinstance(skipped, SkippedFile)
    assert skipped.reason == reason
    assert skipped.path == path
    assert skipped.detail


@pytest.mark.parametrize(
    "path",
    [
        "src/app.py",
        "build/build.sh",  # build/ often holds scripts (kubernetes), so it is indexed
        "docs/vendoring.md",
        "src/distance.py",
        "lockfile.py",
        "README.md",
    ],
)
def test_ordinary_paths_pass(path: str) -> None:
    assert PathFilter().check(path) is None


def test_gitignore_lines_and_negation() -> None:
    f = PathFilter(["*.log", "!keep.log", "/generated/", "tmp"])
    assert f.check("debug.log") == SkippedFile("debug.log", "ignored", ".gitignore")
    assert f.check("logs/keep.log") is None
    assert f.check("generated/api.py") is not None
    assert f.check("src/generated/api.py") is None  # anchored to the root
    assert f.check("a/tmp/x.py") is not None
    assert f.check("src/main.py") is None


def test_extra_patterns_beat_negations() -> None:
    f = PathFilter(["!secret.py"], extra_patterns=["secret.py", "fixtures/big/"])
    assert f.check("secret.py") == SkippedFile("secret.py", "ignored", "extra ignore pattern")
    assert f.check("fixtures/big/data.json") is not None
    assert f.check("tests/fixtures/big/data.json") is None  # a middle slash anchors, as in git


def test_from_root_reads_nested_gitignores(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.tmp\nout/\n")
    sub = tmp_path / "pkg"
    sub.mkdir()
    (sub / ".gitignore").write_text("local.py\n!keep.tmp\n")
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / ".gitignore").write_text("*\n")  # never read
    (tmp_path / "out" / "deep").mkdir(parents=True)
    (tmp_path / "out" / "deep" / ".gitignore").write_text("!*\n")  # pruned: out/ is ignored
    f = PathFilter.from_root(tmp_path, extra_patterns=["*.bak"])
    assert f.check("a.tmp") is not None
    assert f.check("pkg/b.tmp") is not None
    assert f.check("pkg/keep.tmp") is None  # the deeper file re-includes it
    assert f.check("pkg/local.py") == SkippedFile("pkg/local.py", "ignored", "pkg/.gitignore")
    assert f.check("local.py") is None  # pkg/.gitignore applies to pkg/ only
    assert f.check("out/report.txt") is not None
    assert f.check("pkg/x.bak") is not None
    assert f.check("pkg/main.py") is None


def test_from_gitignores_in_memory() -> None:
    f = PathFilter.from_gitignores({"pkg/sub": ["*.gen.py"], "": ["*.log", "!pkg/sub/keep.log"]})
    assert f.check("pkg/sub/a.gen.py") == SkippedFile(
        "pkg/sub/a.gen.py", "ignored", "pkg/sub/.gitignore"
    )
    assert f.check("a.gen.py") is None
    assert f.check("x.log") is not None
    assert f.check("pkg/sub/keep.log") is None


def test_chunker_applies_builtin_path_rules() -> None:
    result = chunk_file("node_modules/left-pad/index.js", b"module.exports = 1;\n")
    assert result.chunks == []
    assert result.skipped is not None and result.skipped.reason == "vendored"
    assert result.language == "javascript"


# -- by content -----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"   \n\n\t\n"])
def test_empty(data: bytes) -> None:
    result = chunk_file("src/empty.py", data)
    assert result.chunks == []
    assert result.skipped is not None and result.skipped.reason == "empty"
    assert result.fallback is None


def test_binary_by_nul_bytes() -> None:
    result = chunk_file("data/blob.txt", b"PK\x03\x04\x00\x00 some zip bytes")
    assert result.skipped == SkippedFile("data/blob.txt", "binary", "NUL bytes")


def test_binary_by_control_bytes() -> None:
    data = bytes(range(1, 32)) * 50 + b"text"
    result = chunk_file("data/blob.dat2", data)
    assert result.skipped is not None and result.skipped.reason == "binary"


def test_too_large() -> None:
    data = b"x = 1\n" * 100
    result = FileChunker(max_file_bytes=100).chunk("src/big.py", data)
    assert result.skipped is not None
    assert result.skipped.reason == "too_large"
    assert "600 bytes > 100" in result.skipped.detail
    assert chunk_file("src/big.py", data).skipped is None


def test_minified_by_line_length() -> None:
    data = ("var a=function(b){return b*2};" * 200 + "\n").encode()
    result = chunk_file("static/app.js", data)
    assert result.skipped is not None and result.skipped.reason == "minified"


def test_deep_indentation_is_not_minified() -> None:
    """Leading indentation does not count towards the line length (nested code)."""
    data = "".join(
        "    " * i + f"if x > {i}:\n" + "    " * (i + 1) + "x -= 1\n" for i in range(60)
    ).encode()
    result = chunk_file("src/nested.py", data)
    assert result.skipped is None
    assert result.chunks


@pytest.mark.parametrize(
    "marker",
    [
        "// Code generated by protoc-gen-go. DO NOT EDIT.",
        "# Generated by the protocol buffer compiler.  DO NOT EDIT!",
        "/* @generated by torchgen */",
        "// <auto-generated />",
        "# This file is autogenerated; do not edit by hand.",
    ],
)
def test_generated_markers(marker: str) -> None:
    data = f"{marker}\npackage api\n\nfunc F() int {{ return 1 }}\n".encode()
    result = chunk_file("api/service.go", data)
    assert result.skipped is not None and result.skipped.reason == "generated"


def test_generated_words_later_in_the_file_do_not_count() -> None:
    body = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(30))
    data = (body + "# Code generated by hand. DO NOT EDIT is just a comment here\n").encode()
    assert chunk_file("src/gen.py", data).skipped is None
    django = b"# Generated by Django 4.2 on 2024-01-01\nfrom django.db import migrations\n"
    assert chunk_file("app/migrations/0001_initial.py", django).skipped is None


def test_invalid_utf8_is_decoded_with_replacement() -> None:
    data = b"def caf\xe9():\n    return '\xff\xfe ok'\n\n\ndef after():\n    return 2\n"
    result = chunk_file("src/latin1.py", data)
    assert result.skipped is None
    assert result.fallback is None
    text = "\n".join(c.text for c in result.chunks)
    assert "\ufffd" in text
    assert "def after():" in text


def test_bom_and_crlf() -> None:
    data = b"\xef\xbb\xbfdef f():\r\n    return 1\r\n"
    result = chunk_file("src/win.py", data)
    (chunk,) = result.chunks
    assert chunk.text == "def f():\n    return 1"
    assert chunk.symbol == "f"


# -- fallbacks ------------------------------------------------------------------------------


def test_broken_syntax_falls_back_to_lines() -> None:
    data = b"def f(:\n  return ((\nclass X(:\n" * 40 + b"}}}{{{\n" * 40
    result = chunk_file("src/broken.py", data)
    assert result.skipped is None
    assert result.fallback is not None and "syntax errors" in result.fallback
    assert result.chunks and {c.kind for c in result.chunks} == {"lines"}
    assert result.language == "python"


def test_parse_timeout_falls_back_to_lines() -> None:
    chunker = FileChunker()
    chunker.parse_timeout_s = 1e-9
    data = b"".join(b"def f%d(x):\n    return [x, %d]\n\n" % (i, i) for i in range(20_000))
    result = chunker.chunk("src/huge.py", data)
    assert result.fallback is not None and result.fallback.startswith("parse timed out")
    assert {c.kind for c in result.chunks} == {"lines"}
    assert chunker.chunk("src/small.py", b"def f():\n    return 1\n").fallback is None


def test_a_small_syntax_error_keeps_the_ast() -> None:
    good = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(40))
    result = chunk_file("src/mostly_ok.py", (good + "def g(:\n    pass\n").encode())
    assert result.fallback is None
    assert {c.kind for c in result.chunks} == {"function"}


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("src/deep.py", b"x = " + b"(\n" * 10_000 + b"1\n" + b")\n" * 10_000),
        ("src/deep.js", b"const x = " + b"[\n" * 10_000 + b"]\n" * 10_000),
        ("src/deep.c", b"int main() {\n" + b"{\n" * 10_000 + b"}\n" * 10_000 + b"}\n"),
    ],
)
def test_ten_thousand_levels_fall_back_without_recursion_error(path: str, data: bytes) -> None:
    result = chunk_file(path, data)
    assert result.skipped is None
    assert result.fallback == f"nesting deeper than {MAX_DEPTH} levels"
    lines = data.decode().split("\n")
    covered = {n for c in result.chunks for n in range(c.start_line, c.end_line + 1)}
    assert all(n + 1 in covered for n, line in enumerate(lines) if line.strip())


def test_ten_thousand_levels_of_data_are_line_chunked() -> None:
    data = b"[\n" * 10_000 + b"]\n" * 10_000
    result = chunk_file("data/deep.json", data)
    assert result.fallback is None  # JSON has no AST path to fall back from
    assert result.chunks[-1].end_line == 20_000


def test_ten_thousand_levels_on_one_line() -> None:
    result = chunk_file("src/oneline.py", b"x = " + b"[" * 10_000 + b"]" * 10_000 + b"\n")
    assert result.skipped is not None and result.skipped.reason == "minified"
