"""Repository-level benchmarks: issue text -> the files (and functions) a fix has to touch.

Used for the SWE-bench dev slice and for benchmarks built from a repository's own history
(:mod:`evals.history`): both are lists of :class:`Instance` run by :func:`run_instances`.

How an instance is run, and why:

- each repository is indexed at the instance's ``base_commit`` (the fix is not in it) under
  one branch name, :data:`EVAL_BRANCH`; instances are taken in commit-date order, so every
  step after the first is an *incremental* update from the previous one, as a push would be.
  The whole history is embedded once instead of once per instance;
- the query is the problem statement, searched within that repository and branch;
- files are ranked by their best chunk (the max chunk score per file) over the top
  :data:`SEARCH_K` chunks, and scored against ``gold_files``;
- function level, where ``gold_spans`` name functions: the ranking is the chunk ranking, each
  chunk standing for its ``path::symbol``; a chunk matches a gold ``path::G`` when the paths
  are equal and one of its symbols S (a chunk that merged small definitions carries
  ``"a, b"``) is G, or G qualifies S (``G == X.S``: S named without its class), or -- only
  when no chunk of that file is G itself, i.e. the chunker kept G inside a bigger chunk --
  S encloses G (``G == S.Y``: the class's chunk holds the method). Spans that are not
  symbols (``imports``, ``impl:3``: module-level code) are left out; an instance with no
  symbol left is not part of the function-level average.

Instances whose repository was not given, or whose ``base_commit`` the given clone lacks,
are reported as skipped, never counted as misses.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coderag.errors import InputError
from coderag.index import SearchFilter
from evals._git import commit_times, require_repo
from evals.harness import ProgressFn, check_mode
from evals.metrics import dedupe, score_query
from evals.report import QueryResult, Skipped, build_report

if TYPE_CHECKING:
    from coderag.models import Hit
    from coderag.runtime import Runtime

__all__ = [
    "EVAL_BRANCH",
    "SEARCH_K",
    "SEARCH_MAX_PER_FILE",
    "Instance",
    "dataset_name",
    "function_gold",
    "load_instances",
    "parse_repo_map",
    "rank_files",
    "rank_functions",
    "run_instances",
    "run_instances_modes",
    "run_swebench",
    "symbol_matches",
]

EVAL_BRANCH = "eval"
SEARCH_K = 200
"""Chunks fetched per query; files are ranked over the files these chunks come from."""
SEARCH_MAX_PER_FILE = 1000
"""No per-file cap: a file's best chunk must win on its own score, not on diversification."""

_NOT_A_SYMBOL = re.compile(r"^(?:imports|impl)(?::\d+)?$")


@dataclass(frozen=True, slots=True)
class Instance:
    """One query against one repository at one commit."""

    instance_id: str
    repo: str
    base_commit: str
    query: str
    gold_files: tuple[str, ...]
    gold_spans: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def load_instances(path: Path | str) -> list[Instance]:
    """Read ``instances.jsonl`` (SWE-bench fields plus ``gold_files`` and ``gold_spans``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p} does not exist")
    out: list[Instance] = []
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append(
                    Instance(
                        instance_id=str(d["instance_id"]),
                        repo=str(d["repo"]),
                        base_commit=str(d["base_commit"]),
                        query=str(d["problem_statement"]),
                        gold_files=tuple(d.get("gold_files") or ()),
                        gold_spans={
                            str(k): tuple(v or ()) for k, v in (d.get("gold_spans") or {}).items()
                        },
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise InputError(f"{p.name} line {n}: not an instance ({exc!r})") from exc
    return out


def parse_repo_map(items: Iterable[str]) -> dict[str, Path]:
    """``["owner/name=GITDIR", ...]`` -> {owner/name: path}, each checked to be a git repo."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, gitdir = item.partition("=")
        if not sep or not name.strip() or not gitdir.strip():
            raise InputError(f"--repo expects owner/name=GITDIR, got {item!r}")
        out[name.strip()] = require_repo(Path(gitdir.strip()).expanduser(), f"--repo {name}")
    return out


def _parts(symbol: str) -> list[str]:
    """A chunk that merged several small definitions is labelled ``"a, b, c"``."""
    return [p for p in (x.strip() for x in symbol.split(",")) if p]


def symbol_matches(hit_symbol: str, gold_symbol: str, *, enclosing: bool = True) -> bool:
    """The module docstring's rule, for any of the chunk's symbols: ``S == G``,
    ``G == X.S``, or (when ``enclosing``) ``G == S.Y``."""
    if not gold_symbol:
        return False
    for part in _parts(hit_symbol):
        if part == gold_symbol or gold_symbol.endswith("." + part):
            return True
        if enclosing and gold_symbol.startswith(part + "."):
            return True
    return False


def function_gold(instance: Instance) -> list[str]:
    """``path::Symbol`` for every span that names a function, method or class."""
    return [
        f"{path}::{sym}"
        for path, syms in instance.gold_spans.items()
        for sym in syms
        if sym and not _NOT_A_SYMBOL.match(sym)
    ]


def rank_files(hits: Sequence[Hit]) -> list[str]:
    """Paths by their best chunk's score (ties keep retrieval order)."""
    best: dict[str, float] = {}
    for h in hits:
        if h.path not in best or h.score > best[h.path]:
            best[h.path] = h.score
    return sorted(best, key=lambda p: -best[p])


def rank_functions(
    hits: Sequence[Hit],
    gold: Sequence[str],
    file_symbols: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """Chunks in retrieval order as ``path::symbol`` ids; a chunk matching gold items stands
    for them (all of them, when one chunk holds several), others for themselves.

    ``file_symbols`` (path -> the symbols of every chunk the index holds for it) makes the
    enclosing rule a fallback only: when the gold method has chunks of its own, the class's
    head chunk does not count as finding it.
    """
    by_path: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    for item in gold:
        path, _, sym = item.partition("::")
        enclosing = True
        if file_symbols is not None:
            own = file_symbols.get(path, ())
            enclosing = not any(symbol_matches(s, sym, enclosing=False) for s in own)
        by_path[path].append((item, sym, enclosing))
    out: list[str] = []
    for h in hits:
        matched = [
            item
            for item, sym, enclosing in by_path.get(h.path, ())
            if symbol_matches(h.symbol, sym, enclosing=enclosing)
        ]
        if matched:
            out.extend(matched)
        else:
            out.append(f"{h.path}::{h.symbol}" if h.symbol else f"{h.path}#L{h.start_line}")
    return dedupe(out)


def _file_symbols(runtime: Runtime, repo: str, paths: Iterable[str]) -> dict[str, set[str]]:
    """Symbols of every chunk of ``paths`` on the eval branch, as indexed right now."""
    out: dict[str, set[str]] = defaultdict(set)
    flt = SearchFilter(repos=[repo], branch=EVAL_BRANCH, paths=sorted(set(paths)))
    for _, payload in runtime.index.scroll(flt, ["path", "symbol"]):
        out[str(payload.get("path", ""))].add(str(payload.get("symbol") or ""))
    return out


def _order(
    instances: Sequence[Instance], repo_dirs: Mapping[str, Path], skipped: list[Skipped]
) -> list[tuple[Instance, Path]]:
    """Runnable instances grouped by repository, each group in commit-date order."""
    by_repo: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        if inst.repo not in repo_dirs:
            skipped.append(Skipped(inst.instance_id, f"repository {inst.repo} not given"))
        elif not inst.gold_files:
            skipped.append(Skipped(inst.instance_id, "no gold files"))
        elif not inst.query.strip():
            skipped.append(Skipped(inst.instance_id, "empty query"))
        else:
            by_repo[inst.repo].append(inst)
    ordered: list[tuple[Instance, Path]] = []
    for repo in sorted(by_repo):
        gitdir = repo_dirs[repo]
        times = commit_times(gitdir, (i.base_commit for i in by_repo[repo]))
        for inst in by_repo[repo]:
            if inst.base_commit not in times:
                skipped.append(
                    Skipped(inst.instance_id, f"base commit {inst.base_commit[:12]} not in {repo}")
                )
        runnable = [i for i in by_repo[repo] if i.base_commit in times]
        runnable.sort(key=lambda i: (times[i.base_commit], i.instance_id))
        ordered.extend((i, gitdir) for i in runnable)
    return ordered


def run_instances(
    runtime: Runtime,
    instances: Sequence[Instance],
    repo_dirs: Mapping[str, Path],
    *,
    dataset: str,
    mode: str = "hybrid",
    per_query: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Index each repository forward through its instances' base commits, query, score."""
    return run_instances_modes(
        runtime,
        instances,
        repo_dirs,
        dataset=dataset,
        modes=[mode],
        per_query=per_query,
        progress=progress,
    )[mode]


def run_instances_modes(
    runtime: Runtime,
    instances: Sequence[Instance],
    repo_dirs: Mapping[str, Path],
    *,
    dataset: str,
    modes: Sequence[str],
    per_query: bool = False,
    progress: ProgressFn | None = None,
    checkpoint: Callable[[dict[str, dict[str, Any]]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`run_instances` for several search modes in one pass: one report per mode.

    Each base commit is indexed once and every mode queries that same index, so comparing
    hybrid with its parts costs one indexing run instead of one per mode (on a large
    repository indexing is nearly all of an eval's time). ``index_seconds`` in each report
    is that shared indexing time. ``checkpoint`` gets the reports so far after every
    instance, each with ``"partial": {"done", "of"}``: an eval of hours that is stopped
    keeps what it measured."""
    modes = list(dict.fromkeys(check_mode(m) for m in modes))
    if not modes:
        raise InputError("at least one search mode is needed")
    skipped: list[Skipped] = []
    ordered = _order(instances, repo_dirs, skipped)
    results: dict[str, list[QueryResult]] = {m: [] for m in modes}
    index_seconds = 0.0
    repos_seen: set[str] = set()

    def reports(seen: set[str]) -> dict[str, dict[str, Any]]:
        chunks = runtime.index.count(SearchFilter(repos=sorted(seen))) if seen else 0
        return {
            mode: build_report(
                dataset=dataset,
                mode=mode,
                results=results[mode],
                skipped=skipped,
                index_chunks=chunks,
                index_seconds=index_seconds,
                per_query=per_query,
                function_level=True,
            )
            for mode in modes
        }

    for n, (inst, gitdir) in enumerate(ordered, 1):
        report = runtime.indexer.index(
            gitdir, repo=inst.repo, branch=EVAL_BRANCH, commit=inst.base_commit, progress=progress
        )
        index_seconds += report.seconds
        repos_seen.add(inst.repo)
        fgold = function_gold(inst)
        symbols: dict[str, set[str]] | None = None
        for mode in modes:
            t0 = time.perf_counter()
            hits = runtime.retriever.search(
                inst.query,
                repos=[inst.repo],
                branch=EVAL_BRANCH,
                k=SEARCH_K,
                mode=mode,  # type: ignore[arg-type]
                max_per_file=SEARCH_MAX_PER_FILE,
            )
            ms = (time.perf_counter() - t0) * 1000.0
            files = rank_files(hits)
            gold = list(inst.gold_files)
            extra = {"repo": inst.repo, "base_commit": inst.base_commit, "index_mode": report.mode}
            result = QueryResult(
                inst.instance_id, files, gold, score_query(files, gold), ms, extra=extra
            )
            if fgold:
                if symbols is None:
                    gold_paths = (g.partition("::")[0] for g in fgold)
                    symbols = _file_symbols(runtime, inst.repo, gold_paths)
                franked = rank_functions(hits, fgold, symbols)
                result.function_ranked = franked
                result.function_gold = fgold
                result.function_metrics = score_query(franked, fgold)
            results[mode].append(result)
        if progress:
            progress("query", n, len(ordered))
        if checkpoint is not None and n < len(ordered):
            partial = reports(repos_seen)
            for r in partial.values():
                r["partial"] = {"done": n, "of": len(ordered)}
            checkpoint(partial)

    return reports(repos_seen)


def dataset_name(instances_path: Path) -> str:
    """``.../swebench-dev/instances.jsonl`` -> ``swebench-dev``; otherwise the file stem."""
    p = Path(instances_path)
    return p.resolve().parent.name if p.stem == "instances" else p.stem


def run_swebench(
    runtime: Runtime,
    instances_path: Path | str,
    repo_dirs: Mapping[str, Path],
    *,
    mode: str = "hybrid",
    limit: int | None = None,
    per_query: bool = False,
    progress: ProgressFn | None = None,
    modes: Sequence[str] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load ``instances.jsonl``, keep the first ``limit`` (file order), run them.

    With ``modes`` (several search modes), one pass for all: ``{"modes": {mode: report}}``.
    ``checkpoint`` gets the report so far, in the same shape, after every instance.
    """
    if limit is not None and limit < 1:
        raise InputError("limit must be at least 1")
    instances = load_instances(instances_path)
    if limit is not None:
        instances = instances[:limit]
    name = dataset_name(Path(instances_path))

    def shaped(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {"dataset": name, "modes": reports} if modes else reports[mode]

    reports = run_instances_modes(
        runtime,
        instances,
        repo_dirs,
        dataset=name,
        modes=list(modes) if modes else [mode],
        per_query=per_query,
        progress=progress,
        checkpoint=(lambda r: checkpoint(shaped(r))) if checkpoint else None,
    )
    return shaped(reports)
