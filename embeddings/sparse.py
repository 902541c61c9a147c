"""Sparse lexical vectors for code: the BM25 half of hybrid search.

Dense MiniLM vectors miss exact identifiers (``getHTTPResponse``, ``MAX_RETRIES``); a lexical
vector catches them. Qdrant stores the vectors and applies the IDF part itself (the sparse
vector's IDF modifier), so a document vector only carries BM25's saturated term frequency and
a query vector carries 1.0 per unique term: their dot product times IDF is BM25.

Tokens are hashed to uint32 indices with xxhash32, which is stable across processes, machines
and Python versions (Python's ``hash()`` is salted per process and would silently break every
stored vector on restart). Hash collisions merge two terms; at 2^32 buckets that is rare and
only costs a little precision.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import xxhash

from coderag.index.base import SparseVec

__all__ = [
    "AVG_DOC_TOKENS",
    "K1",
    "STOPWORDS",
    "B",
    "path_tokens",
    "sparse_document",
    "sparse_query",
    "term_index",
    "tokenize_code",
]

K1 = 1.2
"""BM25 term-frequency saturation."""
B = 0.75
"""BM25 length normalisation strength."""
AVG_DOC_TOKENS = 130.0
"""Fixed average document length (in our tokens). A running corpus average would change every
stored vector as the corpus grows; a constant keeps vectors immutable. 130 is about the mean
of a 40-line code chunk under :func:`tokenize_code` (measured on requests/urllib3/click)."""

MIN_TOKEN_LEN = 2
"""Single characters (``i``, ``x``, ``e``) match everything and mean nothing."""
MAX_TOKEN_LEN = 64
"""Longer "words" are base64 blobs, hashes or minified code: noise that bloats vectors."""

_STOP_TEXT = """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    self cls def return import from as none null nil true false pass var let const
    elif else end fn func function lambda new public private protected static void
"""
STOPWORDS: frozenset[str] = frozenset(_STOP_TEXT.split())
"""English stopwords plus the keywords that occur in nearly every chunk of every language:
they would get an IDF near zero anyway, so dropping them only saves space and time. Words
that do discriminate (``class``, ``async``, ``yield``, ``raise``) are kept."""

# A "word" is a run of letters, digits and underscores (Unicode-aware, so non-ASCII
# identifiers survive). Parts: acronym before a capitalised word (HTTP in HTTPResponse),
# capitalised or lower-case word, trailing acronym, digit run.
_WORD = re.compile(r"\w+")
_PART = re.compile(
    r"""
    [A-Z]+(?=[A-Z][a-z])   # HTTP in HTTPResponse
    | [A-Z]?[a-z]+         # get, Response
    | [A-Z]+               # URL at the end, ID
    | \d+                  # 404, 8 in utf8
    | [^\W\d_A-Za-z]+      # other scripts (no case to split on)
    """,
    re.VERBOSE,
)


def _keep(token: str) -> bool:
    return MIN_TOKEN_LEN <= len(token) <= MAX_TOKEN_LEN and token not in STOPWORDS


def _split_word(word: str) -> list[str]:
    """``getHTTPResponse`` -> ``[get, http, response, gethttpresponse]`` (parts, then whole)."""
    parts = [p.lower() for p in _PART.findall(word)]
    whole = word.lower().strip("_")
    out = [p for p in parts if _keep(p)]
    # The whole identifier is its own, very specific term; only worth adding when it differs
    # from its only part (``parse`` would otherwise be counted twice).
    if len(parts) > 1 and _keep(whole):
        out.append(whole)
    return out


def tokenize_code(text: str) -> list[str]:
    """Lexical terms of ``text`` in order, with repeats (term frequency matters).

    Identifiers are split on snake_case, camelCase/PascalCase, acronyms and digits, lower-cased,
    and also kept whole, so a query may name either the identifier or its words. Stopwords,
    single characters and over-long runs are dropped.
    """
    out: list[str] = []
    for word in _WORD.findall(text):
        out.extend(_split_word(word))
    return out


def path_tokens(path: str) -> list[str]:
    """Terms of a repository path: each directory, the file stem and the extension.

    ``src/HttpClient/retry_policy.py`` -> ``src, http, client, httpclient, retry, policy,
    retry_policy, py``. Users name files and folders in queries ("the retry policy in the
    http client"), and the path is often the best lexical signal a chunk has.
    """
    if not path:
        return []
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if not parts:
        return []
    *dirs, name = parts
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:  # "Makefile", ".bashrc"
        stem, ext = name.lstrip("."), ""
    out: list[str] = []
    for comp in (*dirs, stem):
        out.extend(tokenize_code(comp))
    ext = ext.lower()
    if ext and ext.isalnum() and len(ext) <= 10:
        out.append(ext)  # extensions are short by nature: no length floor (c, h, r)
    return out


def term_index(token: str) -> int:
    """Stable uint32 index of a term (xxhash32, seed 0, UTF-8)."""
    return xxhash.xxh32_intdigest(token.encode("utf-8", "surrogatepass"))


def _to_sparse(weights: Iterable[tuple[str, float]]) -> SparseVec:
    merged: dict[int, float] = {}
    for token, w in weights:
        idx = term_index(token)
        merged[idx] = merged.get(idx, 0.0) + w  # a hash collision merges the two terms
    indices = sorted(merged)
    return SparseVec(indices=indices, values=[float(merged[i]) for i in indices])


def sparse_document(text: str, path: str = "") -> SparseVec:
    """BM25 document side: saturated term frequency, length-normalised.

    ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / AVG_DOC_TOKENS))`` per term, over the
    terms of ``text`` plus the terms of ``path``. IDF is applied by Qdrant at query time.
    """
    tokens = tokenize_code(text) + path_tokens(path)
    if not tokens:
        return SparseVec(indices=[], values=[])
    counts = Counter(tokens)
    norm = K1 * (1.0 - B + B * len(tokens) / AVG_DOC_TOKENS)
    return _to_sparse((t, tf * (K1 + 1.0) / (tf + norm)) for t, tf in counts.items())


def sparse_query(text: str) -> SparseVec:
    """BM25 query side: 1.0 per unique term (repeating a word in a query does not boost it)."""
    return _to_sparse((t, 1.0) for t in dict.fromkeys(tokenize_code(text)))
