"""``coderag bench secrets``: throughput and hit rate of the secret redactor, as JSON.

``coderag bench secrets DIR [--max-files N]``: how fast :func:`chunkers.secrets.redact`
runs on real files (so its cost can be set against chunking and embedding) and what it finds
in them (false positives show up here first: run it on a tree known to hold no secret).
Prints kinds and counts only, never a value or a line.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from chunkers.languages import language_for_path, refine_language
from chunkers.secrets import redact

__all__ = ["bench_secrets"]


def bench_secrets(
    root: Path, max_files: int = 20_000, max_bytes: int = 1_000_000
) -> dict[str, object]:
    """Redact every text file under ``root`` (up to ``max_files``); figures as a dict."""
    seconds, size, files, hit_files = 0.0, 0, 0, 0
    kinds: Counter[str] = Counter()
    for path in sorted(root.rglob("*")):
        if files >= max_files:
            break
        if not path.is_file() or path.stat().st_size > max_bytes:
            continue
        data = path.read_bytes()
        if b"\x00" in data[:8192]:
            continue
        text = data.decode("utf-8", errors="replace")
        rel = path.relative_to(root).as_posix()
        language = refine_language(rel, language_for_path(rel), text)
        t0 = time.perf_counter()
        out = redact(text, language)
        seconds += time.perf_counter() - t0
        files += 1
        size += len(data)
        if out.findings:
            hit_files += 1
            kinds.update(out.counts())
    return {
        "files": files,
        "mb": round(size / 1e6, 2),
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / 1e6 / seconds, 2) if seconds else None,
        "files_with_findings": hit_files,
        "findings_by_kind": dict(sorted(kinds.items())),
    }
