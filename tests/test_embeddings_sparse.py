"""Sparse lexical vectors: code-aware splitting, stable hashing, BM25 values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from coderag.index.base import SparseVec
from embeddings.sparse import (
    AVG_DOC_TOKENS,
    K1,
    path_tokens,
    sparse_document,
    sparse_query,
    term_index,
    tokenize_code,
)


def _weights(vec: SparseVec) -> dict[int, float]:
    return dict(zip(vec.indices, vec.values, strict=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("getHTTPResponse", ["get", "http", "response", "gethttpresponse"]),
        ("parse_json_file", ["parse", "json", "file", "parse_json_file"]),
        ("XMLHttpRequest", ["xml", "http", "request", "xmlhttprequest"]),
        ("MAX_RETRIES", ["max", "retries", "max_retries"]),
        ("utf8Decode", ["utf", "decode", "utf8decode"]),
        ("sha256", ["sha", "256", "sha256"]),
        ("parse", ["parse"]),  # a one-part word is not added twice
        ("__init__", ["init"]),
    ],
)
def test_identifiers_split_and_kept_whole(text: str, expected: list[str]) -> None:
    assert tokenize_code(text) == expected


def test_stopwords_short_and_case() -> None:
    toks = tokenize_code("def run(self, x):\n    return The_Value if x else None  # the")
    assert "self" not in toks and "return" not in toks and "def" not in toks
    assert "the" not in toks and "none" not in toks and "x" not in toks
    assert {"run", "value", "the_value"} <= set(toks)
    assert all(t == t.lower() for t in toks)


def test_term_frequency_kept_in_order() -> None:
    assert tokenize_code("retry retry backoff") == ["retry", "retry", "backoff"]


def test_path_tokens() -> None:
    toks = path_tokens("src/HttpClient/retry_policy.py")
    assert toks == [
        "src",
        "http",
        "client",
        "httpclient",
        "retry",
        "policy",
        "retry_policy",
        "py",
    ]
    assert path_tokens("lib/x.c")[-1] == "c"  # extensions have no length floor
    assert path_tokens("Makefile") == ["makefile"]
    assert path_tokens("") == []


def test_hash_is_stable_across_processes() -> None:
    # Pinned: changing the hash silently invalidates every stored sparse vector.
    assert term_index("parse") == 1131554294
    assert 0 <= term_index("getHTTPResponse".lower()) < 2**32
    code = "from embeddings.sparse import term_index; print(term_index('parse'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    assert int(out.stdout) == term_index("parse")


def test_query_is_one_per_unique_term() -> None:
    q = sparse_query("parse json parse JSON")
    assert q.values == [1.0, 1.0]
    assert q.indices == sorted({term_index("parse"), term_index("json")})


def test_document_values_are_saturated_bm25_tf() -> None:
    # A document of exactly the average length with a term once scores (k1+1)/(1+k1) = 1.
    filler = " ".join(f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(200))
    doc_tokens = tokenize_code(filler)[: int(AVG_DOC_TOKENS) - 1]
    w = _weights(sparse_document(" ".join([*doc_tokens, "needle"])))
    assert w[term_index("needle")] == pytest.approx(1.0)

    short = _weights(sparse_document("retry retry retry backoff"))
    assert short[term_index("retry")] > short[term_index("backoff")]
    assert short[term_index("retry")] < K1 + 1  # saturates
    # Longer documents give the same term a lower weight.
    longer = _weights(sparse_document("backoff " + " ".join(doc_tokens)))
    assert longer[term_index("backoff")] < short[term_index("backoff")]


def test_document_includes_path_terms() -> None:
    doc = sparse_document("def apply(): ...", path="src/HttpClient/retry_policy.py")
    w = _weights(doc)
    for term in ("retry", "policy", "retry_policy", "httpclient", "py", "apply"):
        assert term_index(term) in w
    assert doc.indices == sorted(doc.indices)
    assert all(isinstance(i, int) for i in doc.indices)


def test_query_matches_document_terms() -> None:
    doc = _weights(sparse_document("class RetryPolicy:\n    max_attempts = 3"))
    q = _weights(sparse_query("retry policy attempts"))
    assert sum(v * doc.get(i, 0.0) for i, v in q.items()) > 0
    unrelated = _weights(sparse_query("database migration"))
    assert sum(v * doc.get(i, 0.0) for i, v in unrelated.items()) == 0


def test_empty_inputs() -> None:
    assert sparse_document("") == SparseVec(indices=[], values=[])
    assert sparse_query("the a of") == SparseVec(indices=[], values=[])
    assert tokenize_code("") == []
