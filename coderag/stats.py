"""Percentiles and latency summaries: one definition for every figure coderag prints.

Benchmarks (``coderag bench ...``) and the retrieval evaluations (``coderag eval ...``) both
report latency percentiles. They used to compute them three different ways; now every one of
them goes through :func:`percentile`, so a p95 means the same thing in every report.

Two conventions exist, and each report keeps the one its figures were always given in:

* ``"nearest-rank"`` (the default, used by the benchmarks): the smallest observed value such
  that at least ``q`` percent of the values are less than or equal to it, i.e. the value of
  1-based rank ``ceil(q / 100 * n)`` (rank 1 for ``q = 0``). The result is always a value
  that was actually measured, which is what a latency report wants.
* ``"linear"`` (used by the evaluations): linear interpolation between the two closest order
  statistics, the convention of ``numpy.percentile``'s default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

__all__ = ["Method", "percentile", "summarize"]

Method = Literal["nearest-rank", "linear"]


def percentile(values: Sequence[float], q: float, *, method: Method = "nearest-rank") -> float:
    """The ``q``-th percentile (``q`` in [0, 100]) of ``values`` (see the module docstring
    for the two methods). Raises ``ValueError`` on no values or ``q`` out of range: an empty
    sample has no percentile, and each caller decides what its report says instead."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be within [0, 100]")
    ordered = sorted(values)
    if method == "nearest-rank":
        rank = max(1, math.ceil(q / 100.0 * len(ordered)))
        return float(ordered[rank - 1])
    if method == "linear":
        pos = (len(ordered) - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    raise ValueError(f"unknown percentile method {method!r}")


def summarize(
    values: Sequence[float],
    quantiles: Sequence[float] = (50, 95),
    *,
    key: str = "p{q}",
    method: Method = "nearest-rank",
    ndigits: int = 2,
    empty: float | None = None,
) -> dict[str, float | None]:
    """One entry per quantile, named ``key.format(q=q)`` (``"p{q}_ms"`` gives ``p95_ms``),
    each value rounded to ``ndigits``; every entry is ``empty`` when there are no values.

    The key pattern is a parameter because the reports already published use different
    names for the same figures (``p95`` in evaluations, ``p95_ms`` in benchmarks), and a
    report's keys never change.
    """
    out: dict[str, float | None] = {}
    for q in quantiles:
        name = key.format(q=f"{q:g}")
        out[name] = round(percentile(values, q, method=method), ndigits) if values else empty
    return out
