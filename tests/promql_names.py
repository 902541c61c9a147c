"""Test-only: the metric names a PromQL expression reads, and the names an exposition offers.

Grafana panels and alert rules name metrics by string; nothing fails when one names a metric
no process exports, the panel just stays empty and the alert never fires. These helpers let a
test compare both sides. The expression side is a small scanner, not a PromQL parser: string
literals, label matchers, range and subquery brackets and the label lists of ``by``,
``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right`` are removed, then every
identifier left that is not a function call, keyword or Grafana variable is a metric name.
That is enough for the expressions this project ships; an unsupported construct shows as an
odd name in the failing assertion rather than passing silently.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["exposed_names", "grafana_exprs", "metric_names"]

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "atan2", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w:$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:,|\))")


def metric_names(expr: str) -> set[str]:
    """Metric names read by ``expr`` (PromQL, or Grafana's ``label_values(metric, label)``)."""
    grafana = _LABEL_VALUES.match(expr)
    if grafana:
        return {grafana.group(1)}
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Every name a query can select from a ``/metrics`` text: sample names, plus the names
    a declared family will have once it has samples (a labelled counter no one incremented
    yet is declared, ``# TYPE``, but has no sample line)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    out: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        out.update(family.name + s for s in suffixes.get(family.type, ("",)))
        out.update(sample.name for sample in family.samples)
    return out


def grafana_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and templating query of a dashboard,
    nested rows included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"panel {panel.get('title')!r}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and query:
            found.append((f"variable {var.get('name')!r}", query))
    return found
