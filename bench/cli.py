"""The ``coderag bench`` command group: every benchmark, each printing one JSON report.

Mounted on the main app by :mod:`coderag.cli`. The commands that load models or the index
backends import their module when they run, so ``coderag --help`` stays fast.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from bench.gpu import bench_gpu
from bench.scale import bench_scale
from bench.search_load import bench_search_load
from bench.serve import bench_serve
from bench.webhooks import bench_webhooks

__all__ = ["bench_app"]

bench_app = typer.Typer(help="Benchmarks that print JSON.", no_args_is_help=True)


class Backend(StrEnum):
    """Index backends ``vector-index`` can time (``--backend``)."""

    edge = "edge"
    local = "local"
    server = "server"


@bench_app.command("index")
def bench_index(
    source: Annotated[Path, typer.Argument(help="A local git repository.")],
    baseline: Annotated[bool, typer.Option(help="Also time plain torch fp32 encode.")] = True,
    limit: Annotated[int, typer.Option(help="Cap on chunks for the torch baseline.")] = 2000,
) -> None:
    """Cold indexing throughput per stage, peak RSS, and a one-file incremental update."""
    from bench.index import bench_index as run

    print(json.dumps(run(source, baseline=baseline, baseline_limit=limit), indent=2))


@bench_app.command("embeddings")
def bench_embeddings(
    source: Annotated[list[Path], typer.Option("--source", help="Source dir (repeatable).")],
    suffix: Annotated[str, typer.Option(help="File suffix of the texts.")] = ".py",
    lines: Annotated[int, typer.Option(help="Lines per text window.")] = 40,
    limit: Annotated[int, typer.Option(help="Texts in all.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Texts per embedding batch.")] = 32,
    rounds: Annotated[int, typer.Option(help="Timed rounds per backend (best reported).")] = 2,
    model: Annotated[
        str | None, typer.Option(help="Local model dir (default: bundled MiniLM).")
    ] = None,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", help="Backend to time (repeatable).")
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Export cache (default: a temporary dir).")
    ] = None,
) -> None:
    """Throughput and agreement (cosine with torch) of every embedding backend."""
    from bench.embeddings import bench_embeddings as run

    out = run(
        source,
        suffix=suffix,
        lines=lines,
        limit=limit,
        batch_size=batch_size,
        rounds=rounds,
        model=model,
        backends=backend or None,
        models_dir=models_dir,
    )
    print(json.dumps(out, indent=2))


@bench_app.command("precision")
def bench_precision(
    source: Annotated[list[Path], typer.Option("--source", help="Source dir (repeatable).")],
    cosqa: Annotated[
        Path | None,
        typer.Option(help="CoSQA dev (BEIR layout) for MRR; without it speed and cosine only."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Code windows timed.")] = 600,
    queries: Annotated[int | None, typer.Option(help="CoSQA queries (default: all).")] = None,
    rounds: Annotated[int, typer.Option(help="Timed rounds per variant (median kept).")] = 3,
    batch_size: Annotated[int, typer.Option(help="Texts per embedding batch.")] = 32,
    mrr_tolerance: Annotated[
        float, typer.Option(help="MRR points a faster precision may lose.")
    ] = 0.3,
    write_verdict: Annotated[
        bool, typer.Option(help="Store the pick where precision auto reads it.")
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="Local model dir (default: bundled MiniLM).")
    ] = None,
) -> None:
    """torch fp32, OpenVINO fp32, bf16 and int8 on this CPU: chunks/s, cosine, CoSQA MRR."""
    from bench.precision import bench_precision as run
    from coderag.settings import Settings

    out = run(
        source,
        cosqa,
        limit=limit,
        queries=queries,
        rounds=rounds,
        batch_size=batch_size,
        mrr_tolerance=mrr_tolerance,
        models_dir=Settings().models_dir,
        write=write_verdict,
        model=model,
    )
    print(json.dumps(out, indent=2))


@bench_app.command("vector-index")
def bench_vector_index(
    backend: Annotated[Backend, typer.Option(help="Index backend.")] = Backend.edge,
    points: Annotated[int, typer.Option("-n", "--points", help="Synthetic points.")] = 20_000,
    dim: Annotated[int, typer.Option(help="Dense vector dims.")] = 384,
    queries: Annotated[int, typer.Option(help="Timed queries of each kind.")] = 200,
    url: Annotated[str | None, typer.Option(help="Qdrant URL for --backend server.")] = None,
) -> None:
    """Index upsert throughput and filtered query latency on synthetic points."""
    if backend is Backend.server and not url:
        typer.echo("--backend server needs --url", err=True)
        raise typer.Exit(2)
    from bench.vector_index import bench_vector_index as run

    print(json.dumps(run(backend.value, points, dim, queries, url), indent=2))


@bench_app.command("secrets")
def bench_secrets(
    root: Annotated[Path, typer.Argument(help="Directory tree to scan.")],
    max_files: Annotated[int, typer.Option(help="Files at most.")] = 20_000,
) -> None:
    """Secret redactor throughput and findings by kind (never a value) over a tree."""
    from bench.secrets import bench_secrets as run

    print(json.dumps(run(root, max_files)))


@bench_app.command("redaction")
def bench_redaction(
    corpus: Annotated[
        Path | None, typer.Option(help="Corpus module (default: the test suite's).")
    ] = None,
    failures: Annotated[bool, typer.Option(help="List every miss and false positive.")] = True,
) -> None:
    """Secret redactor recall on planted secrets and precision on look-alikes, next to
    detect-secrets when it is installed (the table of docs/RELIABILITY.md)."""
    from bench.redaction import CORPUS_PATH
    from bench.redaction import bench_redaction as run

    print(json.dumps(run(corpus or CORPUS_PATH, failures=failures), indent=2))


bench_app.command("serve")(bench_serve)
bench_app.command("webhooks")(bench_webhooks)
bench_app.command("search-load")(bench_search_load)
bench_app.command("scale")(bench_scale)
bench_app.command("gpu")(bench_gpu)
