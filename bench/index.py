"""``coderag bench index``: cold indexing throughput, per stage, against plain torch.

Prints, side by side: end-to-end chunks/s of the real pipeline (fresh index,
empty embedding cache) versus plain sentence-transformers torch fp32 ``encode`` on the very
same chunk texts, the pipeline's overhead relative to its embedding time, peak RSS, and the
seconds from a one-file commit to searchable.
"""

from __future__ import annotations

import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from coderag.settings import Settings
from indexer.git import GitRepo
from indexer.sources import GitSource

__all__ = ["bench_index"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_index(
    source: Path, *, baseline: bool = True, baseline_limit: int = 2000
) -> dict[str, Any]:
    """Index a fresh clone of ``source`` into a temporary data dir and report the figures;
    ``baseline`` also times torch fp32 on up to ``baseline_limit`` of the same chunks."""
    from coderag.runtime import build_runtime

    source = source.resolve()
    base = Settings()
    with tempfile.TemporaryDirectory(prefix="coderag-bench-") as tmp:
        work = Path(tmp) / "repo"
        subprocess.run(
            ["git", "clone", "--quiet", "--no-hardlinks", str(source), str(work)],
            check=True,
            capture_output=True,
        )
        settings = Settings(
            data_dir=Path(tmp) / "data",
            model_export_dir=base.models_dir,  # exported models are reused, not re-exported
            collection=base.collection,
        )
        rt = build_runtime(settings)
        t0 = time.perf_counter()
        rt.warm_up()
        warm_s = time.perf_counter() - t0
        git = GitRepo(work)
        branch = git.head_branch() or "main"
        report = rt.indexer.index(work, "bench/repo", branch)
        st = dict(report.stage_seconds)
        n = report.chunks_written
        embed_s = st.get("embed", 0.0)
        overhead_s = report.seconds - embed_s
        result: dict[str, Any] = {
            "repo": source.name,
            "files": report.files_indexed,
            "files_seen": report.files_seen,
            "skipped": report.skipped_by_reason(),
            "chunks": n,
            "seconds": round(report.seconds, 3),
            "model_load_seconds": round(warm_s, 3),
            "embedding_backend": rt.embedder.backend,
            "embedding_device": rt.embedder.device,
            "stages": {
                name: {
                    "seconds": round(sec, 3),
                    "chunks_per_s": round(n / sec, 1) if sec > 0 else None,
                }
                for name, sec in st.items()
            },
            "chunks_per_s_end_to_end": round(n / report.seconds, 1) if report.seconds else None,
            "pipeline_overhead_vs_embed": round(overhead_s / embed_s, 3) if embed_s else None,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }

        if baseline and n:
            result["torch_fp32_baseline"] = _torch_baseline(rt, work, baseline_limit)
            tb = result["torch_fp32_baseline"]["chunks_per_s"]
            e2e = result["chunks_per_s_end_to_end"]
            result["speedup_vs_torch_fp32"] = round(e2e / tb, 2) if tb else None

        result["incremental_one_file"] = _one_file_change(rt, work, branch)
        rt.close()
    return result


def _torch_baseline(rt: Any, work: Path, limit: int) -> dict[str, Any]:
    """Plain ``SentenceTransformer(...).encode`` (torch fp32, batch 32) on the same chunks."""
    from sentence_transformers import SentenceTransformer

    git = GitRepo(work)
    src = GitSource(git, git.resolve("HEAD"))
    files, _ = src.listing()
    texts: list[str] = []
    for f, data in src.read(files):
        res = rt.chunker.chunk(f.path, data)
        texts.extend(c.embed_text for c in res.chunks)
        if len(texts) >= limit:
            break
    texts = texts[:limit]
    model = SentenceTransformer(rt.embedder.model_path, device="cpu", backend="torch")
    model.encode(texts[:32], batch_size=32)  # warm-up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=32)
    sec = time.perf_counter() - t0
    return {
        "chunks": len(texts),
        "seconds": round(sec, 3),
        "chunks_per_s": round(len(texts) / sec, 1),
    }


def _one_file_change(rt: Any, work: Path, branch: str) -> dict[str, Any]:
    """Append a uniquely named function to one source file, commit, re-index, search it."""
    git = GitRepo(work)
    candidates = [e.path for e in git.ls_tree("HEAD") if e.path.endswith(".py")]
    target = work / (candidates[0] if candidates else "coderag_bench_probe.py")
    marker = f"bench_probe_{int(time.time())}"
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(
            f'\n\ndef {marker}(values):\n    """Sum the squares of values."""\n'
            f"    return sum(v * v for v in values)\n"
        )
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(work),
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-qm",
            "bench probe",
        ],
        check=True,
    )
    t0 = time.perf_counter()
    report = rt.indexer.index(work, "bench/repo", branch)
    hits = rt.retriever.search(marker, repos=["bench/repo"], k=5)
    sec = time.perf_counter() - t0
    return {
        "mode": report.mode,
        "files_changed": report.files_indexed,
        "chunks_rechunked": report.chunks_total,
        "chunks_reembedded": report.chunks_embedded,
        "seconds_index": round(report.seconds, 3),
        "seconds_commit_to_searchable": round(sec, 3),
        "found": any(marker in h.text for h in hits),
    }
