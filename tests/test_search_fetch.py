"""Candidates carry ids, scores and the fields fusion reads; only the answers carry text.

Through a real Edge shard on disk (and qdrant-client local mode for the server backend):
the ranking must be the one the full-payload candidates gave, the answers complete, and the
candidate field cache exact across writes.
"""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coderag.index import ChunkPayload, EdgeIndex, IndexPoint, ScoredRecord, SearchFilter
from coderag.models import Hit
from embeddings import sparse_document
from retriever.query import parse_query
from retriever.search import (
    CANDIDATE_FIELDS,
    Mode,
    Retriever,
    _diversify,
    record_to_hit,
)

pytestmark = pytest.mark.integration

DIM = 16
WORDS = [
    "ledger",
    "payment",
    "session",
    "token",
    "refund",
    "invoice",
    "settle",
    "retry",
    "parse",
    "render",
    "cache",
]


class _Embedder:
    """A deterministic unit vector per text: fusion is what is under test, not the model."""

    dim = DIM

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM)
            out[i] = v / np.linalg.norm(v)
        return out


def _points(n: int, seed: int = 3) -> list[IndexPoint]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(WORDS, 4)
        name = f"{words[0]}_{words[1]}"
        text = f"def {name}(rows):\n    return {words[2]}({words[3]}, rows)  # {i}\n"
        path = ("tests/" if i % 7 == 0 else "src/") + f"m{i % 9}/f{i // 3}.py"
        vec = [rng.gauss(0, 1) for _ in range(DIM)]
        payload = ChunkPayload(
            repo=f"r{i % 2}",
            branches=("main",),
            path=path,
            language="python",
            start_line=1 + 10 * (i % 3),
            end_line=9 + 10 * (i % 3),
            text=text,
            hash=f"{i:08x}",
            symbol=name,
            kind="function",
        ).to_dict()
        out.append(IndexPoint(str(uuid.UUID(int=i + 1)), vec, sparse_document(text, path), payload))
    return out


@pytest.fixture
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    idx = EdgeIndex(tmp_path / "index")
    idx.ensure(DIM)
    idx.upsert(_points(120))
    yield idx
    idx.close()


def _old_search(
    r: Retriever, query: str, k: int, mode: Mode, per_file: int, flt: SearchFilter
) -> list[Hit]:
    """The search as it was: full payloads on every candidate, hits built before the cap."""
    pq = parse_query(query)
    n = min(1000, max(r.fusion.candidates, k if per_file >= k else 3 * k))
    dense: list[ScoredRecord] = []
    lexical: list[ScoredRecord] = []
    if mode in ("dense", "hybrid"):
        vec = r.embedder.embed_queries([pq.text])[0].tolist()
        dense = r.index.search_dense(vec, flt, n)
    if mode in ("lexical", "hybrid"):
        from embeddings import sparse_query

        sv = sparse_query(" ".join([pq.text, *pq.identifiers]))
        lexical = r.index.search_sparse(sv, flt, n) if sv.indices else []
    if mode == "dense":
        scored = [(x, x.score) for x in dense]
    elif mode == "lexical":
        scored = [(x, x.score) for x in lexical]
    else:
        scored = r._fuse(pq, dense, lexical)
    return _diversify([record_to_hit(x, s) for x, s in scored], per_file, k)


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
@pytest.mark.parametrize(("k", "per_file"), [(5, 2), (10, 1), (20, 1000)])
def test_trimmed_candidates_rank_as_full_ones(
    index: EdgeIndex, mode: Mode, k: int, per_file: int
) -> None:
    r = Retriever(index, _Embedder())  # type: ignore[arg-type]
    filters = [SearchFilter(), SearchFilter(repos=["r1"]), SearchFilter(path_globs=["src/**"])]
    for query in ("payment_refund rows", "how is a ledger settled", "tests for token parse"):
        for flt in filters:
            want = _old_search(r, query, k, mode, per_file, flt)
            got = r.search(
                query,
                k=k,
                mode=mode,
                max_per_file=per_file,
                repos=flt.repos,
                path_globs=flt.path_globs,
            )
            assert want, (query, flt)
            assert [(h.id, round(h.score, 6)) for h in got] == [
                (h.id, round(h.score, 6)) for h in want
            ]
            assert got == want  # every field, the text included


def test_candidates_carry_only_the_fusion_fields_and_answers_the_text(index: EdgeIndex) -> None:
    seen: list[dict[str, Any]] = []

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(index, name)

        def search_dense(self, *args: Any) -> list[ScoredRecord]:
            assert args[3] == CANDIDATE_FIELDS
            got = index.search_dense(*args)
            seen.extend(x.payload for x in got)
            return got

        def search_sparse(self, *args: Any) -> list[ScoredRecord]:
            assert args[3] == CANDIDATE_FIELDS
            got = index.search_sparse(*args)
            seen.extend(x.payload for x in got)
            return got

    hits = Retriever(Spy(), _Embedder()).search("ledger_payment rows", k=8)  # type: ignore[arg-type]
    assert seen and all(set(p) <= set(CANDIDATE_FIELDS) for p in seen)
    assert all("path" in p and "repo" in p for p in seen)
    stored = index.retrieve([h.id for h in hits])
    assert len(hits) == 8
    for h in hits:
        assert h.text and h.text == stored[h.id]["text"]
        assert h.start_line == stored[h.id]["start_line"]


def test_a_point_gone_before_its_text_is_read_gives_way_to_the_next(index: EdgeIndex) -> None:
    r = Retriever(index, _Embedder())  # type: ignore[arg-type]
    before = r.search("payment token", k=6, max_per_file=1)
    gone = before[0].id

    class Racing:
        def __getattr__(self, name: str) -> Any:
            return getattr(index, name)

        def retrieve(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
            return {k: v for k, v in index.retrieve(ids).items() if k != gone}

    after = Retriever(Racing(), _Embedder()).search("payment token", k=6, max_per_file=1)  # type: ignore[arg-type]
    assert [h.id for h in after][:5] == [h.id for h in before][1:]
    assert len(after) == 6 and gone not in {h.id for h in after}


def test_cached_fields_follow_writes(index: EdgeIndex) -> None:
    vec = [1.0] + [0.0] * (DIM - 1)
    pid = str(uuid.UUID(int=10_000))
    point = _points(1)[0]
    first = {**point.payload, "path": "src/first.py", "symbol": "first"}
    index.upsert([IndexPoint(pid, vec, point.sparse, first)])
    got = index.search_dense(vec, SearchFilter(), 1, CANDIDATE_FIELDS)
    assert got[0].id == pid and got[0].payload == {
        "repo": first["repo"],
        "path": "src/first.py",
        "symbol": "first",
    }
    assert pid in index._cache()[0]  # served from the cache from now on
    moved = {**first, "path": "src/moved.py", "symbol": "moved"}
    index.upsert([IndexPoint(pid, vec, point.sparse, moved)])
    again = index.search_dense(vec, SearchFilter(), 1, CANDIDATE_FIELDS)
    assert again[0].payload["path"] == "src/moved.py" and again[0].payload["symbol"] == "moved"
    index.delete([pid])
    assert pid not in index._cache()[0]
    assert pid not in {x.id for x in index.search_dense(vec, SearchFilter(), 5, ("path",))}


def test_fields_select_the_payload_on_both_backends(index: EdgeIndex, tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    from coderag.index.server import ServerIndex

    server = ServerIndex(client=QdrantClient(path=str(tmp_path / "local")), collection="t")
    server.ensure(DIM)
    server.upsert(_points(30))
    vec = _points(1)[0].dense
    try:
        for idx in (index, server):
            full = idx.search_dense(vec, SearchFilter(), 5)
            assert "text" in full[0].payload
            some = idx.search_dense(vec, SearchFilter(), 5, ("path", "symbol"))
            assert [x.id for x in some] == [x.id for x in full]
            assert all(set(x.payload) == {"path", "symbol"} for x in some)
            bare = idx.search_sparse(_points(1)[0].sparse, SearchFilter(), 5, ())
            assert bare and all(x.payload == {} for x in bare)
            globbed = idx.search_dense(vec, SearchFilter(path_globs=["src/**"]), 5, ("symbol",))
            assert globbed and all(x.payload["path"].startswith("src/") for x in globbed)
    finally:
        server.close()
