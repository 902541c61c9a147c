"""The labelled redaction corpus: no planted secret survives, look-alikes do.

The figures are computed by the same code as ``coderag bench redaction`` (docs/RELIABILITY.md
prints its table), on every case of ``tests/data/redaction/corpus.py``: planted secrets of
every kind the scanner knows, in every file type, and look-alikes of every category the
issue names. Recall must be 100% (no real secret may be served), precision on look-alikes at
least 95%, on the cases the rules were tuned on and on the two held-out sets alike (their
first-run figures, before the fixes they led to, are in docs/RELIABILITY.md).
"""

from __future__ import annotations

from collections import Counter

import pytest

from bench.redaction import caught_in_text, scan_coderag, score
from chunkers.languages import language_for_path, refine_language
from chunkers.secrets import KINDS, marker, redact
from tests.data.redaction.corpus import Case, cases

CASES = cases()
LOOKALIKE_CATEGORIES = {
    "reference", "template", "shell-var", "percent-format", "env-var-name", "placeholder",
    "lock-hash", "uuid", "base64-data", "cli-flag", "config-value", "prose", "code",
}  # fmt: skip
"""What the issue lists: references, f-strings/.format, ``$VAR``/``${VAR}``, ``%(name)s``,
env-var names, placeholders, lock-file hashes, UUIDs, base64 test data, ``--password x``
flags whose value is no secret, unquoted config values (and prose, ordinary code)."""


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    return scan_coderag(CASES)[0]  # type: ignore[return-value]


def _language(c: Case) -> str | None:
    return refine_language(c.path, language_for_path(c.path), c.text)


def test_the_corpus_covers_every_kind_and_category() -> None:
    planted = [p for c in CASES for p in c.planted]
    assert {p.kind for p in planted} == KINDS  # >= 1 planted value of every kind
    looks = Counter(c.category for c in CASES if not c.is_planted)
    assert set(looks) == LOOKALIKE_CATEGORIES
    assert sum(looks.values()) >= 200
    assert len(planted) >= 100
    assert {c.split for c in CASES} == {"dev", "holdout", "fresh", "field"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("split", ["dev", "holdout", "fresh", "field", None])
def test_recall_is_total_and_lookalike_precision_at_least_95(
    results: dict[str, object], split: str | None
) -> None:
    part = [c for c in CASES if split is None or c.split == split]
    report = score(part, results, caught_in_text(results), kinds=True)  # type: ignore[arg-type]
    assert report["missed"] == [], report["missed"]
    assert report["planted_recall"] == 1.0
    assert report["lookalike_precision"] >= 0.95, report["lookalikes_touched"]
    assert report["kind_accuracy"] >= 0.95, report["wrong_kind"]


def test_every_planted_value_is_gone_and_its_line_kept() -> None:
    for c in (c for c in CASES if c.is_planted):
        out = redact(c.text, _language(c), path=c.path)
        assert out.text.count("\n") == c.text.count("\n"), c.id
        for p in c.planted:
            assert p.value not in out.text, (c.id, p.kind)
            line = next(i for i, t in enumerate(c.text.split("\n")) if p.value in t)
            assert marker(p.kind) in out.text.split("\n")[line], (c.id, p.kind)


def test_lookalikes_come_back_byte_for_byte() -> None:
    touched = []
    for c in (c for c in CASES if not c.is_planted):
        out = redact(c.text, _language(c), path=c.path)
        if out.text != c.text or out.findings:
            touched.append(c.id)
    assert len(touched) <= 0.05 * sum(not c.is_planted for c in CASES), touched


def test_redaction_of_the_corpus_is_idempotent() -> None:
    for c in CASES:
        once = redact(c.text, _language(c), path=c.path)
        twice = redact(once.text, _language(c), path=c.path)
        assert twice.text == once.text and twice.findings == (), c.id


def test_bench_reports_both_scanners_on_the_same_cases() -> None:
    """The bench's JSON: coderag always, detect-secrets when installed (its figures are not
    asserted: they are another project's)."""
    from bench.redaction import bench_redaction

    report = bench_redaction(failures=False)
    assert report["corpus"]["cases"] == len(CASES)
    ours = report["scanners"]["coderag"]
    assert ours["planted_recall"] == 1.0 and ours["lookalike_precision"] >= 0.95
    assert set(ours["by_split"]) == {"dev", "holdout", "fresh", "field"}
    theirs = report["scanners"]["detect-secrets"]
    if isinstance(theirs, dict):
        assert theirs["planted_values"] == ours["planted_values"]
        assert "combined" in report["scanners"]
    else:
        assert "not installed" in theirs
