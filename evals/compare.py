"""Side-by-side view of several reports: a markdown table to paste, a bar chart to look at.

Mode against mode, or before against after a change: the question is always "which wins,
where, by how much", which a chart answers at a glance and a wall of JSON does not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coderag.errors import InputError
from evals.metrics import METRIC_NAMES

__all__ = ["CHART_METRICS", "compare", "label", "load_report", "markdown_table", "write_chart"]

CHART_METRICS = ("mrr", "ndcg@10", "acc@1", "acc@5", "recall@10")
"""A readable subset for the chart; the table has every metric."""


def load_report(path: Path | str) -> dict[str, Any]:
    p = Path(path)
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: not a readable report ({exc})") from exc
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise InputError(f"{p}: not an eval report (no metrics)")
    return report


def label(report: dict[str, Any], path: Path | str) -> str:
    """``dataset / mode``, plus the file stem when that alone would not tell runs apart."""
    return f"{report.get('dataset', '?')} / {report.get('mode', '?')} ({Path(path).stem})"


def markdown_table(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """One row per report: counts, every metric, latency, index size and time."""
    head = ["run", "n", "skipped", *METRIC_NAMES, "p50 ms", "p95 ms", "chunks", "index s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for report, name in zip(reports, labels, strict=True):
        m = report.get("metrics", {})
        lat = report.get("latency_ms", {})
        idx = report.get("index", {})
        skipped = report.get("skipped", [])
        cells = [
            name,
            str(report.get("n_queries", "")),
            str(len(skipped) if isinstance(skipped, list) else skipped),
            *(_num(m.get(k)) for k in METRIC_NAMES),
            _num(lat.get("p50")),
            _num(lat.get("p95")),
            str(idx.get("chunks", "")),
            _num(idx.get("seconds")),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    fl = [(r, n) for r, n in zip(reports, labels, strict=True) if "function_level" in r]
    if fl:
        rows += ["", "Function level:", ""]
        fhead = ["run", "n", *METRIC_NAMES]
        rows += ["| " + " | ".join(fhead) + " |", "|" + "---|" * len(fhead)]
        for report, name in fl:
            f = report["function_level"]
            cells = [
                name,
                str(f.get("n_queries", "")),
                *(_num(f["metrics"].get(k)) for k in METRIC_NAMES),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _num(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else ""


def write_chart(reports: Sequence[dict[str, Any]], labels: Sequence[str], png: Path | str) -> Path:
    """Grouped bars: one group per metric in :data:`CHART_METRICS`, one bar per run.

    Uses the object-oriented Agg canvas (no pyplot): no global figure state, no display
    needed, safe in a server or a test run.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(reports)
    width = 0.8 / max(n, 1)
    fig = Figure(figsize=(max(6.0, 1.6 * len(CHART_METRICS) + 0.4 * n), 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(CHART_METRICS))
    for i, (report, name) in enumerate(zip(reports, labels, strict=True)):
        vals = [float(report["metrics"].get(m, 0.0)) for m in CHART_METRICS]
        pos = [x - 0.4 + width * (i + 0.5) for x in xs]
        bars = ax.bar(pos, vals, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(list(xs), list(CHART_METRICS))
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title("coderag eval")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(n, 2))
    fig.tight_layout()
    fig.savefig(out)
    return out


def compare(paths: Sequence[Path | str], png: Path | str | None = None) -> str:
    """The markdown table of the reports at ``paths``; also writes the chart when ``png``."""
    if not paths:
        raise InputError("compare needs at least one report")
    reports = [load_report(p) for p in paths]
    labels = [label(r, p) for r, p in zip(reports, paths, strict=True)]
    if png is not None:
        write_chart(reports, labels, png)
    return markdown_table(reports, labels)
