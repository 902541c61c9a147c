"""BEIR-layout benchmarks (CoSQA dev): natural-language query -> one code snippet.

The snippets go through the repository indexer like any code: each document becomes a file
named after its id (``c123.py``) in a plain directory, indexed as a snapshot, and hits are
mapped back to ids by path. Only the corpus is always kept whole: ``limit`` cuts the queries,
never the pool, because the published figures (and the README's) are full-pool retrieval and
a smaller pool inflates every metric.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coderag.errors import InputError
from coderag.index import SearchFilter
from evals.harness import ProgressFn, check_mode
from evals.metrics import MRR_DEPTH, dedupe, score_query
from evals.report import QueryResult, Skipped, build_report

if TYPE_CHECKING:
    from coderag.runtime import Runtime

__all__ = ["BeirDataset", "load_beir", "materialise", "run_beir", "write_slice"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,150}$")


@dataclass
class BeirDataset:
    """A loaded BEIR directory. ``queries`` keeps file order (``limit`` takes a prefix)."""

    name: str
    corpus: dict[str, str]
    queries: list[tuple[str, str]]
    qrels: dict[str, set[str]] = field(default_factory=dict)


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path.name} line {n}: not JSON ({exc.msg})") from exc


def load_beir(directory: Path | str) -> BeirDataset:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels.tsv`` (header line, score > 0 =
    relevant; BEIR also ships ``qrels/test.tsv``, accepted as a fallback)."""
    d = Path(directory)
    qrels_path = d / "qrels.tsv"
    if not qrels_path.exists() and (d / "qrels" / "test.tsv").exists():
        qrels_path = d / "qrels" / "test.tsv"
    for p in (d / "corpus.jsonl", d / "queries.jsonl", qrels_path):
        if not p.exists():
            raise InputError(f"{d} is not a BEIR directory: {p.name} is missing")
    corpus: dict[str, str] = {}
    for doc in _jsonl(d / "corpus.jsonl"):
        title = str(doc.get("title") or "").strip()
        text = str(doc.get("text") or "")
        corpus[str(doc["_id"])] = f"{title}\n\n{text}" if title else text
    queries = [(str(q["_id"]), str(q["text"])) for q in _jsonl(d / "queries.jsonl")]
    qrels: dict[str, set[str]] = {}
    with qrels_path.open(encoding="utf-8") as fh:
        next(fh, None)  # header
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or not parts[0]:
                continue
            if float(parts[2]) > 0:
                qrels.setdefault(parts[0], set()).add(parts[1])
    return BeirDataset(d.resolve().name, corpus, queries, qrels)


def materialise(corpus: dict[str, str], dest: Path, ext: str = ".py") -> dict[str, str]:
    """Write one file per document; returns path (relative to ``dest``) -> document id.

    Ids that are not safe file names get a numbered name instead: the returned map, not the
    file stem, is what turns hits back into ids.
    """
    ext = ext if ext.startswith(".") or not ext else f".{ext}"
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for n, (doc_id, text) in enumerate(corpus.items()):
        name = f"{doc_id}{ext}" if _SAFE_ID.match(doc_id) else f"doc-{n}{ext}"
        if name in paths:  # ids differing only by unsafe characters
            name = f"doc-{n}{ext}"
        (dest / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        paths[name] = doc_id
    return paths


def _inside_git_worktree(path: Path) -> bool:
    """The indexer treats any path inside a git work tree as that repository; a corpus dir
    under a checked-out TMPDIR would be indexed as the wrong thing."""
    proc = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, check=False
    )
    return proc.returncode == 0


def run_beir(
    runtime: Runtime,
    dataset: BeirDataset,
    *,
    mode: str = "hybrid",
    limit: int | None = None,
    ext: str = ".py",
    per_query: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Index the whole corpus, run the first ``limit`` scorable queries, return the report."""
    check_mode(mode)
    if limit is not None and limit < 1:
        raise InputError("limit must be at least 1")
    repo = f"beir/{dataset.name}"
    skipped: list[Skipped] = []
    todo: list[tuple[str, str, list[str]]] = []
    for qid, text in dataset.queries:
        if limit is not None and len(todo) >= limit:
            break
        gold = sorted(d for d in dataset.qrels.get(qid, ()) if d in dataset.corpus)
        if not gold:
            skipped.append(Skipped(qid, "no relevant document in the corpus"))
        elif not text.strip():
            skipped.append(Skipped(qid, "empty query"))
        else:
            todo.append((qid, text, gold))

    tmp = Path(tempfile.mkdtemp(prefix="coderag-beir-"))
    try:
        corpus_dir = tmp / dataset.name
        path_to_id = materialise(dataset.corpus, corpus_dir, ext)
        if _inside_git_worktree(corpus_dir):
            raise InputError(f"temp dir {tmp} is inside a git work tree; set TMPDIR elsewhere")
        started = time.perf_counter()
        runtime.indexer.index(corpus_dir, repo=repo, branch="main", progress=progress)
        index_seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results: list[QueryResult] = []
    for n, (qid, text, gold) in enumerate(todo, 1):
        t0 = time.perf_counter()
        hits = runtime.retriever.search(
            text,
            repos=[repo],
            k=MRR_DEPTH,
            mode=mode,
            max_per_file=1,  # type: ignore[arg-type]
        )
        ms = (time.perf_counter() - t0) * 1000.0
        ranked = dedupe(path_to_id[h.path] for h in hits if h.path in path_to_id)
        results.append(QueryResult(qid, ranked, gold, score_query(ranked, gold), ms))
        if progress:
            progress("query", n, len(todo))

    return build_report(
        dataset=dataset.name,
        mode=mode,
        results=results,
        skipped=skipped,
        index_chunks=runtime.index.count(SearchFilter(repos=[repo])),
        index_seconds=index_seconds,
        per_query=per_query,
    )


def write_slice(full: BeirDataset, queries: list[tuple[str, str]], n_docs: int, dest: Path) -> Path:
    """Write a smaller BEIR directory: ``queries``, their gold documents and the first
    ``n_docs`` documents of the pool. Fixed slices keep CI checks short and comparable."""
    keep = list(full.corpus)[:n_docs]
    for qid, _ in queries:
        keep += sorted(full.qrels.get(qid, set()) - set(keep))
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id in keep:
            fh.write(json.dumps({"_id": doc_id, "text": full.corpus[doc_id]}) + "\n")
    with (dest / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, text in queries:
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with (dest / "qrels.tsv").open("w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, _ in queries:
            for doc_id in sorted(full.qrels.get(qid, set())):
                fh.write(f"{qid}\t{doc_id}\t1\n")
    return dest
