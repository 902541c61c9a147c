"""``coderag bench redaction``: precision and recall of the secret redactor on the labelled
corpus (``tests/data/redaction/corpus.py``), next to detect-secrets on the same files, as JSON.

Why a corpus and not a tree: recall needs secrets whose place is known (planted), and
precision needs code known to hold none that still looks like it might (look-alikes:
references, templates, ``$VAR``, env-var names, placeholders, lock-file hashes, UUIDs, base64
data, CLI flags, config values, prose). Each scanner gets every case as a file with its real
name, so language and file-type rules apply as they would in a repository.

Figures, per scanner:

- ``planted_recall``: planted secret values of which no 12-character piece is left (coderag:
  in the redacted text; detect-secrets, which only reports lines: a finding on the value's
  line, or any private-key finding in a case that plants a key);
- ``lookalike_precision``: look-alike cases left untouched (no finding, text unchanged),
  over all look-alike cases, also per category;
- ``finding_precision``: standard precision over findings, true positives (a finding on a
  line that holds a planted value) over all findings, look-alike cases included;
- ``kind_accuracy`` (coderag only): planted values replaced by the marker of the expected kind.

``combined`` is the union of both scanners (a value is hidden if either hides it, a case is
touched if either touches it). Secret values are never printed: a missed planted secret is
named by its case id and kind.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from chunkers.languages import language_for_path, refine_language
from chunkers.secrets import marker, redact

__all__ = [
    "CORPUS_PATH",
    "ScanResult",
    "bench_redaction",
    "load_corpus",
    "scan_coderag",
    "scan_detect_secrets",
    "score",
]

CORPUS_PATH = Path(__file__).resolve().parents[1] / "tests" / "data" / "redaction" / "corpus.py"
"""The labelled corpus: a module of the test suite, loaded by path (``bench`` is installed
without the tests, so it is not imported as a package)."""

_FRAGMENT = 12  # a leak of any 12-character piece of a secret counts


def load_corpus(path: Path = CORPUS_PATH) -> list[Any]:
    """The corpus module's ``cases()``."""
    name = "coderag_redaction_corpus"
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"no redaction corpus at {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    assert isinstance(module, ModuleType)
    return list(module.cases())


@dataclass
class ScanResult:
    """What one scanner did with one case: the text it would serve (``None`` when the scanner
    only reports lines) and its findings as (1-based line, kind)."""

    text: str | None
    findings: list[tuple[int, str]] = field(default_factory=list)


def _fragments(value: str) -> set[str]:
    if len(value) <= _FRAGMENT:
        return {value}
    return {value[i : i + _FRAGMENT] for i in range(len(value) - _FRAGMENT + 1)}


def _lines_of(text: str, value: str) -> set[int]:
    """1-based lines of ``text`` on which ``value`` (or a piece of it) occurs."""
    out = {i for i, line in enumerate(text.split("\n"), 1) if value in line}
    return out or {
        i for i, line in enumerate(text.split("\n"), 1) if any(f in line for f in _fragments(value))
    }


def scan_coderag(cases: Sequence[Any]) -> tuple[dict[str, ScanResult], float]:
    """coderag's redactor on every case, with the language the chunker would give it."""
    out: dict[str, ScanResult] = {}
    seconds = 0.0
    for c in cases:
        language = refine_language(c.path, language_for_path(c.path), c.text)
        t0 = time.perf_counter()
        try:
            red = redact(c.text, language, path=c.path)  # type: ignore[call-arg]
        except TypeError:  # a redactor without per-path rules (rules v1)
            red = redact(c.text, language)
        seconds += time.perf_counter() - t0
        found = [(f.line, f.kind) for f in red.findings if not getattr(f, "allowed", False)]
        out[c.id] = ScanResult(red.text, found)
    return out, seconds


def scan_detect_secrets(cases: Sequence[Any]) -> tuple[dict[str, ScanResult], float] | None:
    """detect-secrets (default plugins and filters) on every case, written to a temp tree
    under its own path; ``None`` when detect-secrets is not installed."""
    try:
        from detect_secrets import SecretsCollection
        from detect_secrets.settings import default_settings
    except ImportError:
        return None
    out: dict[str, ScanResult] = {}
    seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="coderag-redaction-") as tmp, default_settings():
        for n, c in enumerate(cases):
            rel = f"{n:04d}/{c.path}"
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(c.text, encoding="utf-8")
            collection = SecretsCollection(root=tmp)
            t0 = time.perf_counter()
            collection.scan_file(rel)
            seconds += time.perf_counter() - t0
            found = sorted(
                {(s.line_number, s.type) for _, s in collection},
            )
            out[c.id] = ScanResult(None, list(found))
    return out, seconds


def _union(a: dict[str, ScanResult], b: dict[str, ScanResult]) -> dict[str, ScanResult]:
    """Both scanners: findings of either; served text is coderag's (``a``)."""
    return {k: ScanResult(a[k].text, sorted({*a[k].findings, *b[k].findings})) for k in a}


Caught = Callable[[Any, Any], bool]
"""caught(case, planted): whether a scanner kept that planted value from being served."""


def caught_in_text(results: dict[str, ScanResult]) -> Caught:
    """A rewriting scanner: no piece of the value is left in the text it serves."""

    def caught(c: Any, p: Any) -> bool:
        text = results[c.id].text
        assert text is not None
        return not any(f in text for f in _fragments(p.value))

    return caught


def caught_on_line(results: dict[str, ScanResult]) -> Caught:
    """A reporting scanner: a finding on the value's line (a private key: any private-key
    finding of the case, which such scanners report on the BEGIN line only)."""

    def caught(c: Any, p: Any) -> bool:
        found = results[c.id].findings
        lines = _lines_of(c.text, p.value)
        if any(line in lines for line, _ in found):
            return True
        return p.kind == "private-key" and any("private" in k.lower() for _, k in found)

    return caught


def score(
    cases: Sequence[Any], results: dict[str, ScanResult], caught: Caught, *, kinds: bool = False
) -> dict[str, Any]:
    """Recall on the planted values, precision on the look-alikes and over findings, and
    the failures (ids and kinds, never a value). ``kinds``: also check that each caught
    value was replaced by the marker of its expected kind."""
    planted = [(c, p) for c in cases if c.is_planted for p in c.planted]
    missed: list[dict[str, str]] = []
    wrong_kind: list[dict[str, str]] = []
    per_kind_missed: Counter[str] = Counter()
    for c, p in planted:
        res = results[c.id]
        if not caught(c, p):
            per_kind_missed[p.kind] += 1
            missed.append({"case": c.id, "path": c.path, "kind": p.kind})
        elif kinds and res.text is not None:
            lines = _lines_of(c.text, p.value)
            out_lines = res.text.split("\n")
            if not any(marker(p.kind) in out_lines[i - 1] for i in lines if i <= len(out_lines)):
                got = sorted({k for line, k in res.findings if line in lines})
                wrong_kind.append({"case": c.id, "kind": p.kind, "got": ",".join(got)})

    looks = [c for c in cases if not c.is_planted]
    touched: list[dict[str, Any]] = []
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in looks:
        res = results[c.id]
        hit = bool(res.findings) or (res.text is not None and res.text != c.text)
        by_category[c.category][0] += 1
        if hit:
            by_category[c.category][1] += 1
            lines = c.text.split("\n")
            touched.append(
                {
                    "case": c.id,
                    "category": c.category,
                    "path": c.path,
                    "findings": [
                        f"{line}:{kind}: {lines[line - 1].strip()[:120]}"
                        for line, kind in res.findings
                    ],
                }
            )

    tp = fp = 0
    for c in cases:
        hot: set[int] = set()
        for p in c.planted:
            hot |= _lines_of(c.text, p.value)
        pem = any(p.kind == "private-key" for p in c.planted)
        for line, kind in results[c.id].findings:
            if line in hot or (pem and "private" in kind.lower()):
                tp += 1
            else:
                fp += 1

    n_planted, n_missed = len(planted), len(missed)
    n_looks, n_touched = len(looks), len(touched)
    out: dict[str, Any] = {
        "planted_values": n_planted,
        "planted_caught": n_planted - n_missed,
        "planted_recall": round((n_planted - n_missed) / n_planted, 4) if n_planted else None,
        "lookalike_cases": n_looks,
        "lookalike_untouched": n_looks - n_touched,
        "lookalike_precision": round((n_looks - n_touched) / n_looks, 4) if n_looks else None,
        "findings": tp + fp,
        "findings_true": tp,
        "finding_precision": round(tp / (tp + fp), 4) if tp + fp else None,
    }
    if kinds:
        out["kind_accuracy"] = round((n_planted - n_missed - len(wrong_kind)) / n_planted, 4)
    out |= {
        "lookalike_precision_by_category": {
            k: f"{n - t}/{n}" for k, (n, t) in sorted(by_category.items())
        },
        "missed_by_kind": dict(sorted(per_kind_missed.items())),
        "missed": missed,
        "lookalikes_touched": touched,
    }
    if kinds:
        out["wrong_kind"] = wrong_kind
    return out


_HEADLINE = ("planted_recall", "lookalike_precision", "finding_precision")


def _by_split(
    cases: Sequence[Any], results: dict[str, ScanResult], caught: Caught
) -> dict[str, dict[str, Any]]:
    """The headline figures per corpus split: ``dev`` (what the rules were tuned on),
    ``holdout`` and ``fresh`` (each written after the previous round of fixes)."""
    out: dict[str, dict[str, Any]] = {}
    for split in sorted({getattr(c, "split", "dev") for c in cases}):
        part = [c for c in cases if getattr(c, "split", "dev") == split]
        full = score(part, results, caught)
        out[split] = {
            "planted": f"{full['planted_caught']}/{full['planted_values']}",
            "lookalikes_untouched": f"{full['lookalike_untouched']}/{full['lookalike_cases']}",
            **{k: full[k] for k in _HEADLINE},
        }
    return out


def bench_redaction(corpus: Path = CORPUS_PATH, failures: bool = True) -> dict[str, Any]:
    """The precision/recall table of every available scanner on the corpus."""
    cases = load_corpus(corpus)
    planted = [c for c in cases if c.is_planted]
    report: dict[str, Any] = {
        "corpus": {
            "cases": len(cases),
            "planted_cases": len(planted),
            "planted_values": sum(len(c.planted) for c in planted),
            "planted_kinds": len({p.kind for c in planted for p in c.planted}),
            "splits": dict(sorted(Counter(getattr(c, "split", "dev") for c in cases).items())),
            "lookalike_cases": len(cases) - len(planted),
            "lookalike_categories": dict(
                sorted(Counter(c.category for c in cases if not c.is_planted).items())
            ),
        },
        "scanners": {},
    }
    ours, ours_s = scan_coderag(cases)
    by_text = caught_in_text(ours)
    report["scanners"]["coderag"] = {
        "by_split": _by_split(cases, ours, by_text),
        **score(cases, ours, by_text, kinds=True),
        "seconds": round(ours_s, 3),
    }
    theirs = scan_detect_secrets(cases)
    if theirs is None:
        report["scanners"]["detect-secrets"] = "not installed (pip install detect-secrets)"
    else:
        ds, ds_s = theirs
        by_line = caught_on_line(ds)
        report["scanners"]["detect-secrets"] = {
            "version": _version("detect-secrets"),
            "by_split": _by_split(cases, ds, by_line),
            **score(cases, ds, by_line),
            "seconds": round(ds_s, 3),
        }
        both = _union(ours, ds)

        def either(c: Any, p: Any) -> bool:
            return by_text(c, p) or by_line(c, p)

        report["scanners"]["combined"] = {
            "note": "coderag's redaction plus every line detect-secrets flags",
            "by_split": _by_split(cases, both, either),
            **score(cases, both, either),
        }
    if not failures:
        for s in report["scanners"].values():
            if isinstance(s, dict):
                for k in ("missed", "wrong_kind", "lookalikes_touched"):
                    s.pop(k, None)
    return report


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
