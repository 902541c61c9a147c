"""Precision by hardware: which precision loads, what it keeps, and that an index never mixes.

The real bundled MiniLM on the real OpenVINO CPU plugin. bf16 and int8 run natively only on
CPUs that have them (OpenVINO's ``OPTIMIZATION_CAPABILITIES``); the tests that need them say
so and skip elsewhere, the rules are tested everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.precision import VARIANTS, bench_precision, cosqa_mrr, pick
from coderag.errors import ConfigError
from coderag.index.factory import DEFAULT_MODEL
from coderag.models_registry import ModelSpec
from coderag.runtime import build_runtime, build_serving
from coderag.settings import Settings
from embeddings import Embedder
from embeddings.backends import precision as prec
from indexer.precision_guard import stored_precisions
from indexer.service import IndexService
from tests.conftest import DATA

CAPS = prec.cpu_features()["openvino_capabilities"]
needs_bf16 = pytest.mark.skipif("BF16" not in CAPS, reason="this CPU has no native bf16")
needs_int8 = pytest.mark.skipif("INT8" not in CAPS, reason="OpenVINO runs no int8 here")


def _texts() -> list[str]:
    return [
        "def parse_config(path):\n    with open(path) as fh:\n        return json.load(fh)",
        "how do I retry a failed HTTP request?",
        "class Cache:\n    def get(self, key):\n        return self.data.get(key)",
        "SELECT id FROM users WHERE active",
    ] * 3


# --- rules ----------------------------------------------------------------------------------
def test_auto_resolves_by_backend_and_device(tmp_path: Path) -> None:
    r = prec.resolve_precision
    assert r("auto", "torch", "cuda", tmp_path, "m@1") == "fp16"
    assert r("auto", "torch", "cpu", tmp_path, "m@1") == "fp32"
    assert r("auto", "onnx", "cpu", tmp_path, "m@1") == "fp32"
    assert r("auto", "openvino", "cpu", tmp_path, "m@1") == prec.default_cpu_precision()
    assert r("int8", "openvino", "cpu", tmp_path, "m@1") == "int8"
    for bad in (("int8", "torch"), ("bf16", "onnx"), ("fp16", "openvino")):
        with pytest.raises(ValueError, match="precision"):
            r(bad[0], bad[1], "cpu", tmp_path, "m@1")


def test_an_explicit_precision_this_cpu_lacks_runs_but_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenVINO accepts the bf16 hint on a CPU without BF16 and quietly computes f32."""
    fake = {"model": "x", "flags": ["avx2"], "openvino_capabilities": ["FP32", "INT8"]}
    monkeypatch.setattr(prec, "cpu_features", lambda: fake)
    with caplog.at_level("WARNING", logger=prec.__name__):
        assert prec.resolve_precision("bf16", "openvino", "cpu", tmp_path, "m@1") == "bf16"
    assert "precision bf16 is not native on this CPU" in caplog.text
    assert "FP32, INT8" in caplog.text and "'auto' would pick fp32" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=prec.__name__):
        prec.resolve_precision("int8", "openvino", "cpu", tmp_path, "m@1")
    assert caplog.text == ""  # INT8 is there: nothing to say


def test_default_without_verdict_follows_openvino_capabilities() -> None:
    with_bf16 = {"model": "x", "flags": [], "openvino_capabilities": ["BF16", "FP32", "INT8"]}
    without = {"model": "x", "flags": [], "openvino_capabilities": ["FP32", "INT8"]}
    assert prec.default_cpu_precision(with_bf16) == "bf16"
    assert prec.default_cpu_precision(without) == "fp32"


def test_a_verdict_is_read_only_on_a_cpu_like_this_one(tmp_path: Path) -> None:
    prec.write_verdict(tmp_path, "m@1", {"pick": "int8"})
    assert prec.resolve_precision("auto", "openvino", "cpu", tmp_path, "m@1") == "int8"
    assert prec.resolve_precision("auto", "openvino", "cpu", tmp_path, "other@2") != "int8" or (
        prec.default_cpu_precision() == "int8"
    )
    path = prec.verdict_path(tmp_path, "m@1")
    data = json.loads(path.read_text())
    data["cpu_signature"] = "another CPU|avx2"
    path.write_text(json.dumps(data))
    assert prec.read_verdict(tmp_path, "m@1") is None  # measured elsewhere: not trusted here


def test_precision_tags() -> None:
    assert prec.precision_tag("fp32") == ""  # indexes written before keep their id
    assert prec.precision_tag("bf16") == "~bf16"
    assert prec.strip_precision_tag("v3:m@1+ab~int8:256:16:r:c2") == (
        "v3:m@1+ab:256:16:r:c2",
        "int8",
    )
    assert prec.strip_precision_tag("v3:m@1:256") == ("v3:m@1:256", "fp32")


def test_pick_is_the_fastest_within_tolerance() -> None:
    results: dict[str, dict[str, Any]] = {
        "torch-fp32": {"ok": True, "mrr": 54.0, "chunks_per_s": 40},
        "openvino-bf16": {"ok": True, "mrr": 53.8, "chunks_per_s": 150},
        "openvino-int8": {"ok": True, "mrr": 53.0, "chunks_per_s": 160},  # loses 1.0: out
    }
    assert pick(results, 0.3) == "openvino-bf16"
    assert pick(results, 2.0) == "openvino-int8"
    assert pick({"torch-fp32": results["torch-fp32"]}, 0.3) == "torch-fp32"


def test_cosqa_mrr_counts_rank_and_cutoff() -> None:
    docs = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0], [0.1, 0.9, 0, 0]], dtype=np.float32)
    assert cosqa_mrr(docs, queries, [0, 0]) == 75.0  # ranks 1 and 2


# --- real models ----------------------------------------------------------------------------
@needs_bf16
def test_bf16_keeps_the_vectors_and_has_its_own_id(
    model_dir: Path, torch_embedder: Embedder, tmp_path: Path
) -> None:
    bf16 = Embedder(precision="bf16", device="cpu", models_dir=model_dir, cache_dir=tmp_path)
    assert bf16.model_id.endswith("~bf16")  # planned, before loading
    bf16.warm_up()
    assert (bf16.backend, bf16.precision) == ("openvino", "bf16")
    assert bf16.model_id == torch_embedder.model_id + "~bf16"
    cos = np.sum(bf16.embed_documents(_texts()) * torch_embedder.embed_documents(_texts()), axis=1)
    assert cos.min() >= 0.999
    # Separate cache keys: an fp32 process on the same cache embeds, never reads bf16 vectors.
    fp32 = Embedder(precision="fp32", device="cpu", models_dir=model_dir, cache_dir=tmp_path)
    fp32.embed_documents(_texts())
    assert fp32.stats.cache_hits == 8 and fp32.stats.embedded == 4  # duplicates only
    assert fp32.model_id == torch_embedder.model_id


@needs_int8
def test_int8_is_quantised_once_and_stays_close(model_dir: Path, torch_embedder: Embedder) -> None:
    int8 = Embedder(precision="int8", device="cpu", models_dir=model_dir)
    int8.warm_up()
    assert (int8.backend, int8.precision) == ("openvino", "int8")
    assert int8.model_id.endswith("~int8")
    info = int8.backend_info
    manifest = json.loads((Path(info["export_dir"]) / "manifest.json").read_text())
    assert manifest["ok"] and manifest["precision"] == "int8"
    assert manifest["calibration"]["texts"] >= 100
    cos = np.sum(int8.embed_documents(_texts()) * torch_embedder.embed_documents(_texts()), axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98


def test_int8_on_torch_is_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(Exception, match="int8 runs on the openvino backend"):
        Embedder(backend="torch", precision="int8", models_dir=model_dir).warm_up()


# --- one index, one precision ---------------------------------------------------------------
@pytest.fixture
def fp32_index(tmp_path: Path, model_dir: Path) -> Any:
    src = tmp_path / "src"
    src.mkdir()
    (src / "util.py").write_text("def add(a, b):\n    return a + b\n")
    settings = Settings(
        data_dir=tmp_path / "data",
        index_backend="edge",
        embedding_precision="fp32",
        model_export_dir=model_dir,
    )
    rt = build_runtime(settings)
    rt.indexer.index(src, "grp/one", "main")
    yield rt, src, settings
    rt.close()


@needs_bf16
def test_a_worker_in_another_precision_refuses_to_write(fp32_index: Any, model_dir: Path) -> None:
    rt, src, _ = fp32_index
    bf16 = Embedder(precision="bf16", device="cpu", models_dir=model_dir)
    other = IndexService(rt.index, bf16, rt.indexer.chunker)
    before = rt.index.count()
    with pytest.raises(ConfigError, match="CODERAG_EMBEDDING_PRECISION") as err:
        other.index(src, "grp/two", "main")
    assert "fp32" in str(err.value) and "bf16" in str(err.value)
    assert rt.index.count() == before  # nothing written
    assert stored_precisions(rt.index, bf16.base_id) == {"fp32": 1}


def test_auto_aligns_to_the_precision_the_index_holds(fp32_index: Any) -> None:
    rt, src, settings = fp32_index
    auto = settings.model_copy(update={"embedding_precision": "auto"})
    serving = build_serving(auto, ModelSpec(name=DEFAULT_MODEL, path=None), index=rt.index)
    assert serving.embedder.precision == "fp32"  # whatever this CPU would pick alone
    report = serving.indexer.index(src, "grp/three", "main")  # aligned: allowed to write
    assert report.chunks_written >= 1


# --- the command ----------------------------------------------------------------------------
@needs_bf16
def test_bench_precision_measures_every_variant(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "pkg"
    src.mkdir()
    for i in range(6):
        body = "\n".join(f"    total_{j} = value_{i} * {j} + offset" for j in range(30))
        (src / f"m{i}.py").write_text(f"def compute_{i}(value_{i}, offset):\n{body}\n")
    cosqa = tmp_path / "cosqa"
    cosqa.mkdir()
    slice_dir = DATA / "cosqa-dev-slice"
    rows = (slice_dir / "qrels.tsv").read_text().splitlines()[1:]
    qrels = [r.split("\t") for r in rows][:10]
    gold = {q[1] for q in qrels}
    docs = [json.loads(x) for x in (slice_dir / "corpus.jsonl").read_text().splitlines()]
    corpus = [d for d in docs if d["_id"] in gold] + [d for d in docs if d["_id"] not in gold][:40]
    queries = {q[0] for q in qrels}
    qs = [json.loads(x) for x in (slice_dir / "queries.jsonl").read_text().splitlines()]
    (cosqa / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (cosqa / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(q) + "\n" for q in qrels)
    )
    (cosqa / "queries.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in qs if q["_id"] in queries)
    )
    try:
        out = bench_precision([src], cosqa, limit=12, rounds=1, models_dir=model_dir, write=True)
        verdict = prec.read_verdict(model_dir, out["model"])
    finally:  # the session's shared export dir must not keep a verdict for later tests
        for f in model_dir.glob(f"*/{prec.VERDICT_FILE}"):
            f.unlink()
    names = [v[0] for v in VARIANTS]
    assert list(out["variants"]) == names
    ref = out["variants"]["torch-fp32"]
    assert ref["ratio_to_torch_fp32"] == 1.0 and ref["cosine_min"] >= 0.9999
    for name in names:
        v = out["variants"][name]
        if v["ok"]:
            assert v["chunks_per_s"] > 0 and 0 <= v["mrr"] <= 100 and v["cosine_min"] > 0.9
    assert out["pick"] in names and out["cosqa"]["queries"] == len(queries)
    assert verdict is not None and verdict["pick"] == out["pick_precision"]
