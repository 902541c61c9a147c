"""Query -> ranked chunks: dense, lexical, and a hybrid that has to earn its fusion.

Naive equal-weight RRF *loses* to dense alone on natural-language code search (CoSQA: 54 ->
45 MRR): rank fusion throws away how confident each retriever is. We fuse scores instead:
each list is normalised against its own top score, and the two are mixed with a weight that
depends on the query (identifier-like queries lean lexical, prose leans dense). Symbol and path
matches add a small bonus. Results are then diversified per file and optionally re-ranked by a
local cross-encoder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from coderag.errors import InputError
from coderag.index import ChunkPayload, ScoredRecord, SearchFilter, VectorIndex
from coderag.models import Hit
from embeddings import Embedder, sparse_query
from retriever.query import ParsedQuery, parse_query
from retriever.roles import file_role, query_roles

__all__ = [
    "CANDIDATE_FIELDS",
    "FusionConfig",
    "Mode",
    "Retriever",
    "payload_to_hit",
    "record_to_hit",
]

log = logging.getLogger(__name__)
Mode = Literal["hybrid", "dense", "lexical"]
_MODES = ("hybrid", "dense", "lexical")

LEXICAL_THREADS = 8
"""Threads that run lexical searches beside the query embedding (one per request in flight;
beyond that a request's lexical search waits for a free thread)."""

_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()

CANDIDATE_FIELDS = ("repo", "path", "symbol")
"""The payload fields candidate lists carry: what fusion (symbol and path bonuses, a file's
lexical evidence, the role penalty) and the per-file cap read. Everything else, the text
above all, is read for the final results only (:meth:`Retriever._final`): at 100k chunks
fetching 2 x 100 full payloads per query cost more than the search itself."""


@dataclass(frozen=True, slots=True)
class FusionConfig:
    """How hybrid mixes its parts; defaults measured with ``coderag eval`` (README).

    The dense score is a cosine between normalised vectors, meaningful on its own, so it is
    the base; lexical evidence is added as a bonus scaled by the query's own best lexical
    score (``lexical / max lexical``). Prose leans dense (a small bonus breaks ties between
    near-equal cosines); code-like queries (identifiers, pasted code) lean lexical. Min-max
    rescaling of both lists and equal-weight RRF were measured and lost to dense alone on
    part of CoSQA; this scheme did not.
    """

    lexical_weight_prose: float = 0.05
    lexical_weight_code: float = 0.25
    candidates: int = 100
    symbol_bonus: float = 0.02
    path_bonus: float = 0.05
    file_lexical_weight: float = 0.1
    """Weight of a file's lexical evidence, added to each of its chunks' scores, at full
    strength for long queries (:attr:`long_query_words`) and none for short ones. A bug
    report names many of its file's words, spread over several chunks: the best chunk alone
    sees a few of them (lexical chunk ranking was 20 Acc@5 points below plain BM25 over
    whole files on large repositories). The evidence is the sum of a file's best
    :attr:`file_lexical_chunks` chunk scores, relative to the best file's. Short questions
    are left as they were: there the dense cosine wins (CoSQA) and summing would only
    favour long files. Measured (``coderag eval swebench``, file level): SWE-bench dev Acc@5
    87.0 -> 91.3, MRR 67.5 -> 66.7; the 8 earliest astropy instances of the large-repository
    dev set MRR 90.6 -> 91.7 (Acc@5 100 both); function-level MRR 50.0 -> 49.7 and
    48.5 -> 48.9. 0.2 gained more Acc@5 on dev (95.7) but lost 1.7 MRR and 4.5 Acc@1."""
    file_lexical_chunks: int = 3
    lexical_weight_long: float = 0.1
    """Added to a chunk's own lexical weight for long queries (none under 20 words, full at
    80, like the file evidence): a bug report's dense vector sees its first 256 tokens only,
    while its lexical query holds every word. Measured (``coderag eval swebench``, file
    level, hybrid): SWE-bench dev MRR 66.7 -> 66.9 (Acc@5 91.3 both); the 7 Sphinx
    dev-large instances of the CI gate on the ``sphinx`` package MRR 75.0 -> 90.5 (Acc@5
    71.4 -> 85.7; lexical alone, 82.1, had beaten hybrid), on the whole Sphinx tree MRR 48.6
    -> 51.2 (Acc@5 57.1 -> 71.4). 0.2 gained more on Sphinx (MRR 92.9 and 58.8) but lost 3.3
    MRR against 0.1 on dev; 0.4 lost Acc@5 on the whole tree. Short questions (CoSQA) are
    untouched."""
    long_query_words: tuple[int, int] = (20, 80)
    """Word counts where the file evidence starts, and where it reaches full weight."""
    lexical_candidates_long: int = 600
    """Lexical candidates for a long query: enough chunks per file for the file evidence."""
    dense_segments: bool = False
    """Also embed the windows of a long query after the first (``ParsedQuery.segments``)
    and keep each chunk's best cosine over all of them."""
    module_paths: bool = False
    """Count a dotted module name in the query (``sphinx.ext.autodoc``) as naming its file
    (``sphinx/ext/autodoc.py`` or ``.../autodoc/__init__.py``) for :attr:`path_bonus`."""
    secondary_penalty: float = 0.05
    """Subtracted from chunks of tests, docs and examples (:func:`retriever.roles.file_role`)
    unless the query asks for that kind of file. Questions and bug reports are answered by
    the code that implements the behaviour; tests and docs mention the same names and words
    and, unpenalised, crowd it out. Measured: SWE-bench dev file MRR +9.5, CoSQA unchanged
    (its documents are all source)."""
    secondary_penalty_long: float = 0.05
    """Added to :attr:`secondary_penalty` in proportion to the query's length
    (:attr:`long_query_words`): a bug report describes behaviour, and the code that behaves
    is what it needs, where a short question may be answered by a page of docs. Measured on
    the whole Sphinx tree (57 dev-large issues, one index): file MRR 47.5 -> 55.1, Acc@5
    33 -> 37 of 57."""
    meta_penalty: float = 0.25
    """Instead of :attr:`secondary_penalty` for issue templates and changelogs
    (:func:`retriever.roles.file_role` ``"meta"``) unless the query asks for them: they repeat
    an issue's headings and words without holding an answer. Measured on the same Sphinx
    index: file MRR 36.7 (counted as source) -> 44.3 (as docs) -> 47.5 (0.25)."""


class Retriever:
    """Searches one index with one embedder. Cheap to construct; thread-safe."""

    def __init__(
        self,
        index: VectorIndex,
        embedder: Embedder,
        *,
        fusion: FusionConfig | None = None,
        reranker_model: str | None = None,
        max_per_file: int = 2,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.fusion = fusion or FusionConfig()
        self.max_per_file = max_per_file
        self._reranker_path = reranker_model
        self._reranker = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------- search
    def search(
        self,
        query: str,
        *,
        repos: Sequence[str] | None = None,
        branch: str | None = None,
        path_globs: Sequence[str] | None = None,
        languages: Sequence[str] | None = None,
        k: int = 10,
        mode: Mode = "hybrid",
        max_per_file: int | None = None,
    ) -> list[Hit]:
        if mode not in _MODES:
            raise InputError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
        if k < 1 or k > 1000:
            raise InputError("k must be between 1 and 1000")
        if not query or not query.strip():
            raise InputError("query is empty")
        pq = parse_query(query)
        flt = SearchFilter(repos=repos, branch=branch, path_globs=path_globs, languages=languages)
        per_file = max_per_file if max_per_file is not None else self.max_per_file
        # Over-fetch only when the per-file cap will discard candidates; a capped depth keeps
        # the fusion (its floor for missing scores) the same whatever k a caller asks for.
        n_cand = min(1000, max(self.fusion.candidates, k if per_file >= k else 3 * k))
        scored = self._scores(pq, flt, mode, n_cand)
        if self._reranker_path:
            hits = self._rerank(pq.text, self._complete(scored[: max(3 * k, 30)]))
            return _diversify(hits, per_file, k)
        return self._final(scored, per_file, k)

    def search_files(
        self, query: str, *, k: int = 10, mode: Mode = "hybrid", **filters: object
    ) -> list[tuple[str, float, Hit]]:
        """Files ranked by their best chunk: (path, score, best hit)."""
        hits = self.search(
            query, k=min(1000, max(200, k * 20)), mode=mode, max_per_file=1000, **filters
        )  # type: ignore[arg-type]
        best: dict[tuple[str, str], Hit] = {}
        for h in hits:
            key = (h.repo, h.path)
            if key not in best or h.score > best[key].score:
                best[key] = h
        ranked = sorted(best.values(), key=lambda h: -h.score)
        return [(h.path, h.score, h) for h in ranked[:k]]

    # -------------------------------------------------------------------------- internals
    def _final(self, scored: list[tuple[ScoredRecord, float]], per_file: int, k: int) -> list[Hit]:
        """The best ``k`` candidates, at most ``per_file`` per file, with their full payloads.

        Candidates carry only :data:`CANDIDATE_FIELDS`; the text and the rest are read here
        for the few that are answered. A point deleted between the search and this read
        gives its place to the next candidate, as if the search had not seen it."""
        counts: dict[tuple[str, str], int] = {}
        out: list[Hit] = []
        pos = 0
        while len(out) < k and pos < len(scored):
            batch: list[tuple[ScoredRecord, float, tuple[str, str]]] = []
            while pos < len(scored) and len(out) + len(batch) < k:
                rec, score = scored[pos]
                pos += 1
                key = _file_key(rec)
                if counts.get(key, 0) >= per_file:
                    continue
                counts[key] = counts.get(key, 0) + 1
                batch.append((rec, score, key))
            full = self.index.retrieve([rec.id for rec, _, _ in batch]) if batch else {}
            for rec, score, key in batch:
                payload = full.get(rec.id)
                if payload is None:
                    counts[key] -= 1
                    continue
                out.append(payload_to_hit(rec.id, ChunkPayload.from_dict(payload), score))
        return out

    def _complete(self, scored: list[tuple[ScoredRecord, float]]) -> list[Hit]:
        """Hits with full payloads for ``scored`` (in order; points gone since are dropped)."""
        full = self.index.retrieve([rec.id for rec, _ in scored]) if scored else {}
        return [
            payload_to_hit(rec.id, ChunkPayload.from_dict(full[rec.id]), score)
            for rec, score in scored
            if rec.id in full
        ]

    def _scores(
        self, pq: ParsedQuery, flt: SearchFilter, mode: Mode, n: int
    ) -> list[tuple[ScoredRecord, float]]:
        dense: list[ScoredRecord] = []
        lexical: list[ScoredRecord] = []
        pending: Future[list[ScoredRecord]] | None = None
        if mode == "hybrid":  # the lexical list needs no embedding: search it meanwhile
            pending = self._pool().submit(self._lexical, pq, flt, mode, n)
        if mode in ("dense", "hybrid"):
            texts = [pq.text, *pq.segments] if self.fusion.dense_segments else [pq.text]
            vecs = self.embedder.embed_queries(texts)
            dense = self.index.search_dense(vecs[0].tolist(), flt, n, CANDIDATE_FIELDS)
            for vec in vecs[1:]:
                more = self.index.search_dense(vec.tolist(), flt, n, CANDIDATE_FIELDS)
                dense = _best_of(dense, more)
        if pending is not None:
            lexical = pending.result()
        elif mode == "lexical":
            lexical = self._lexical(pq, flt, mode, n)
        if mode == "dense":
            return [(r, r.score) for r in dense]
        if mode == "lexical":
            return [(r, r.score) for r in lexical]
        return self._fuse(pq, dense, lexical)

    def _lexical(
        self, pq: ParsedQuery, flt: SearchFilter, mode: Mode, n: int
    ) -> list[ScoredRecord]:
        sv = sparse_query(" ".join([pq.text, *pq.identifiers]))
        if not sv.indices:
            return []
        n_lex = n
        if mode == "hybrid" and self.fusion.file_lexical_weight * self._long_query(pq):
            n_lex = max(n, self.fusion.lexical_candidates_long)
        return self.index.search_sparse(sv, flt, n_lex, CANDIDATE_FIELDS)

    def _pool(self) -> ThreadPoolExecutor:
        """Threads for the lexical search of hybrid queries, which runs while the query is
        embedded (both release the GIL). One pool for the process, created on first use:
        retrievers are cheap to construct and must not each leave threads behind."""
        global _EXECUTOR
        with _EXECUTOR_LOCK:
            if _EXECUTOR is None:
                _EXECUTOR = ThreadPoolExecutor(
                    max_workers=LEXICAL_THREADS, thread_name_prefix="coderag-lexical"
                )
            return _EXECUTOR

    def _fuse(
        self, pq: ParsedQuery, dense: list[ScoredRecord], lexical: list[ScoredRecord]
    ) -> list[tuple[ScoredRecord, float]]:
        f = self.fusion
        w = f.lexical_weight_prose + (f.lexical_weight_code - f.lexical_weight_prose) * pq.code_like
        long = self._long_query(pq)
        w += f.lexical_weight_long * long
        d_score = {r.id: r.score for r in dense}
        floor = min(d_score.values()) if d_score else 0.0
        top_lex = max((r.score for r in lexical), default=0.0) or 1.0
        l_score = {r.id: r.score / top_lex for r in lexical}
        records = {r.id: r for r in lexical}
        records.update({r.id: r for r in dense})
        idents = {i.lower().rsplit(".", 1)[-1] for i in pq.identifiers}
        named = [*pq.paths, *(pq.module_paths if f.module_paths else ())]
        paths = tuple(p.lower() for p in named)
        wanted = query_roles(pq.text)
        secondary = f.secondary_penalty + f.secondary_penalty_long * long
        file_w = f.file_lexical_weight * long
        file_lex = _file_lexical(lexical, top_lex, f.file_lexical_chunks) if file_w else {}
        out = []
        for pid, rec in records.items():
            score = d_score.get(pid, floor) + w * l_score.get(pid, 0.0)
            sym = str(rec.payload.get("symbol") or "").lower()
            if sym and idents and sym.rsplit(".", 1)[-1] in idents:
                score += f.symbol_bonus
            path = str(rec.payload.get("path") or "").lower()
            if paths and any(_same_file(path, p) for p in paths):
                score += f.path_bonus
            if file_lex:
                key = _file_key(rec)
                score += file_w * file_lex.get(key, 0.0)
            role = file_role(str(rec.payload.get("path") or ""))
            if role != "source" and role not in wanted:
                score -= f.meta_penalty if role == "meta" else secondary
            out.append((rec, score))
        out.sort(key=lambda t: -t[1])
        return out

    def _long_query(self, pq: ParsedQuery) -> float:
        """0 for a short question, rising to 1 for a bug report's length."""
        lo, hi = self.fusion.long_query_words
        return min(1.0, max(0.0, (pq.words - lo) / max(1, hi - lo)))

    def _rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        with self._lock:
            if self._reranker is None:
                from sentence_transformers import CrossEncoder

                self._reranker = CrossEncoder(self._reranker_path, local_files_only=True)
        scores = self._reranker.predict([(query, h.text) for h in hits])
        order = sorted(range(len(hits)), key=lambda i: -float(scores[i]))
        return [_with_score(hits[i], float(scores[i])) for i in order]


def _best_of(a: list[ScoredRecord], b: list[ScoredRecord]) -> list[ScoredRecord]:
    """Union of two result lists of one index, each point at its higher score, best first."""
    best = {r.id: r for r in a}
    for r in b:
        if r.id not in best or r.score > best[r.id].score:
            best[r.id] = r
    return sorted(best.values(), key=lambda r: -r.score)


def _file_lexical(
    lexical: Sequence[ScoredRecord], top: float, per_file: int
) -> dict[tuple[str, str], float]:
    """(repo, path) -> the sum of the file's best ``per_file`` chunk lexical scores, relative
    to the best file's sum (0..1)."""
    best: dict[tuple[str, str], list[float]] = {}
    for r in lexical:  # in score order: the first ``per_file`` of a file are its best
        key = _file_key(r)
        got = best.setdefault(key, [])
        if len(got) < per_file:
            got.append(r.score / top)
    sums = {k: sum(v) for k, v in best.items()}
    top_sum = max(sums.values(), default=0.0) or 1.0
    return {k: v / top_sum for k, v in sums.items()}


def _same_file(path: str, mentioned: str) -> bool:
    """A path in the query names this file: the same path, or the file's path ends with it
    at a directory boundary (a bare ``mod.py`` names ``pkg/mod.py``, ``auth.py`` does not
    name ``oauth.py``). A longer path that ends with the file's (a traceback's
    ``/usr/lib/.../pkg/mod.py``, a web link) is not counted: measured on SWE-bench dev it
    left file ranking unchanged and cost function-level MRR 3.4 points (links in reports
    point at files the fix does not touch)."""
    return path == mentioned or path.endswith("/" + mentioned)


def _file_key(rec: ScoredRecord) -> tuple[str, str]:
    """(repo, path) of a candidate, read as :meth:`ChunkPayload.from_dict` reads them: the
    file a chunk belongs to, for the per-file cap and the file evidence alike."""
    return str(rec.payload.get("repo", "")), str(rec.payload.get("path", ""))


def _diversify(hits: list[Hit], per_file: int, k: int) -> list[Hit]:
    counts: dict[tuple[str, str], int] = {}
    out: list[Hit] = []
    for h in hits:
        key = (h.repo, h.path)
        if counts.get(key, 0) >= per_file:
            continue
        counts[key] = counts.get(key, 0) + 1
        out.append(h)
        if len(out) >= k:
            break
    return out


def record_to_hit(rec: ScoredRecord, score: float) -> Hit:
    return payload_to_hit(str(rec.id), ChunkPayload.from_dict(rec.payload), score)


def payload_to_hit(point_id: str, p: ChunkPayload, score: float = 1.0) -> Hit:
    """A :class:`Hit` of one stored point (searched, or read by a filter with no score)."""
    return Hit(
        id=point_id,
        score=float(score),
        repo=p.repo,
        path=p.path,
        language=p.language,
        start_line=p.start_line,
        end_line=p.end_line,
        text=p.text,
        kind=p.kind,
        symbol=p.symbol,
        branches=p.branches,
        commit=p.commit,
    )


def _with_score(h: Hit, score: float) -> Hit:
    from dataclasses import replace

    return replace(h, score=score)
