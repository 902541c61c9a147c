"""A second embedding model, brought in while the service keeps answering.

The second model is built by the test: the bundled all-MiniLM-L6-v2 cut to 2 of its 6
layers (same tokenizer and dimension, other vectors), saved to a temporary directory. With it:
``coderag models add`` checks it offline, ``models build`` re-embeds every served branch into
the model's own Edge shard from a separate process while the API serves the current shard,
``models switch`` refuses an incomplete index and otherwise flips the pointer, the API follows
within its check interval, and ``models rollback`` goes back. Searches run throughout through
the real HTTP API; none may fail and every answer must be wholly one model's.

The server path runs against qdrant-client's local mode, which implements collection aliases
(``qdrant_client/local/qdrant_local.py``: ``update_collection_aliases`` applies the
operations to a copy and saves them in one write, ``get_aliases``, and collection lookups
that resolve an alias), so the alias switch is exercised for real, not mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.api_support import ALPHA, BETA, make_repos, running_server
from tests.conftest import git

TINY = "tiny"
QUERY = "settle a payment on the ledger"
QUERY_PREFIX = "query: "


# --- the second model ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled MiniLM with only its first 2 transformer layers, saved as a
    sentence-transformers directory (offline: the bundled files, local_files_only)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embeddings.backends import resolve_model

    out = tmp_path_factory.mktemp("models") / "minilm-2l"
    st = SentenceTransformer(str(resolve_model(None).path), device="cpu", local_files_only=True)
    bert = st[0].auto_model
    bert.encoder.layer = torch.nn.ModuleList(list(bert.encoder.layer)[:2])
    bert.config.num_hidden_layers = 2
    st.save(str(out))
    return out


def _settings(root: Path, model_dir: Path, **extra: Any) -> Any:
    from coderag.settings import Settings

    values: dict[str, Any] = {
        "data_dir": root / "data",
        "model_export_dir": model_dir,
        "embedding_backend": "torch",  # the tiny model loads in a second, no export needed
        "model_watch_seconds": 0.1,
        "model_retire_seconds": 0.5,
        "reconcile_interval_seconds": 0,
        "log_json": True,
    }
    return Settings(**{**values, **extra})


def _env(settings: Any) -> dict[str, str]:
    """The environment that gives a ``coderag`` subprocess the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODERAG_")}
    env.update(
        CODERAG_DATA_DIR=str(settings.data_dir),
        CODERAG_MODEL_EXPORT_DIR=str(settings.models_dir),
        CODERAG_INDEX_BACKEND=settings.index_backend,
        CODERAG_EMBEDDING_BACKEND=settings.embedding_backend,
        CODERAG_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def _coderag(settings: Any, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``coderag ...`` in its own process, as an operator runs it beside ``coderag serve``."""
    code = "from coderag.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# --- searching throughout ------------------------------------------------------------------------


def _signature(results: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What a model decides: which chunks, in which order, with which scores."""
    return tuple((r["repo"], r["path"], r["start_line"], round(r["score"], 5)) for r in results)


class Searcher:
    """Threads that search over HTTP without pause and record every answer, in order."""

    def __init__(self, url: str, threads: int = 2) -> None:
        self.url = url
        self.stop = threading.Event()
        self.answers: list[list[tuple[Any, ...]]] = [[] for _ in range(threads)]
        self.failures: list[str] = []
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def one(self, client: httpx.Client) -> tuple[Any, ...]:
        body = {"query": QUERY, "k": 5, "mode": "dense"}
        r = client.post(f"{self.url}/v1/search", json=body, timeout=30)
        if r.status_code != 200:
            raise AssertionError(f"{r.status_code}: {r.text[:300]}")
        return _signature(r.json()["results"])

    def _run(self, i: int) -> None:
        with httpx.Client() as client:
            while not self.stop.is_set():
                try:
                    self.answers[i].append(self.one(client))
                except Exception as exc:  # recorded, then asserted on: zero allowed
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Searcher:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def count(self) -> int:
        return sum(len(a) for a in self.answers)


def _runs(seq: list[Any]) -> list[Any]:
    """Consecutive distinct values: A A B B A -> [A, B, A]."""
    out: list[Any] = []
    for x in seq:
        if not out or out[-1] != x:
            out.append(x)
    return out


# --- the Edge path, through the HTTP API ---------------------------------------------------------


@pytest.fixture
def edge_site(
    tmp_path: Path, embedder: Any, model_dir: Path
) -> Iterator[tuple[Any, Any, dict[str, Path], str]]:
    """The API on Edge over alpha (registered, indexed from its mirror: main, feature/x)
    and beta (indexed from a local path), with the bundled model serving."""
    from coderag.api import create_app
    from coderag.repos import RepoRecord, RepoRegistry, hash_secret
    from coderag.runtime import build_runtime
    from indexer.mirrors import mirror_for_url

    settings = _settings(tmp_path, model_dir, index_backend="edge")
    repos = make_repos(tmp_path / "src")
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    rt.warm_up()
    RepoRegistry(rt.index).put(
        RepoRecord(id=ALPHA, url=str(repos[ALPHA]), secret_hash=hash_secret("s" * 20))
    )
    mirror = mirror_for_url(str(repos[ALPHA]), settings)
    rt.indexer.index(mirror, ALPHA, "main")
    rt.indexer.index(mirror, ALPHA, "feature/x")
    rt.indexer.index(repos[BETA], BETA, "main")
    try:
        with running_server(create_app(settings, runtime=rt)) as url:
            yield settings, rt, {**repos, "alpha-mirror": mirror}, url
    finally:
        rt.close()


def test_switch_under_queries_edge(edge_site: Any, tiny_model: Path) -> None:
    from coderag.cli import app
    from coderag.errors import ConflictError
    from coderag.model_switch import build_shadow, check_shadow, switch
    from coderag.models_registry import ModelRegistry
    from indexer.mirrors import mirror_for_url

    settings, rt, repos, url = edge_site
    cli = CliRunner()
    searcher = Searcher(url)
    with httpx.Client() as c:
        before = searcher.one(c)
    assert before, "the served index answers"

    # add: checked offline in its own process, registered with a query instruction
    r = _coderag(
        settings, "models", "add", str(tiny_model), "--name", TINY,
        "--query-prefix", QUERY_PREFIX, "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    assert added["dim"] == 384 and added["query_prefix"] == QUERY_PREFIX
    assert added["fingerprint"].startswith("minilm-2l@") and "+" in added["fingerprint"]

    # nothing built yet: the switch is refused and nothing changes
    with pytest.raises(ConflictError, match="not built"):
        switch(settings, TINY)
    assert ModelRegistry.of(settings).read().active == "default" and rt.model == "default"

    # build from another process while the API owns the served shard (and the home state)
    r = _coderag(settings, "models", "build", TINY, "--source", f"{BETA}={repos[BETA]}", "--json")
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    assert built["complete"] is True
    assert {(x["repo"], x["branch"], x["mode"]) for x in built["results"]} == {
        (ALPHA, "main", "full"),
        (ALPHA, "feature/x", "full"),
        (BETA, "main", "full"),
    }

    # a push lands in the served index after the build: the shadow is behind, refused
    (repos[ALPHA] / "src" / "alpha" / "ledger.py").write_text(
        "def open_ledger(day):\n    return {'day': day, 'entries': []}\n"
    )
    git(repos[ALPHA], "add", "-A")
    git(repos[ALPHA], "commit", "-qm", "ledger")
    mirror_for_url(str(repos[ALPHA]), settings)
    assert rt.indexer.index(repos["alpha-mirror"], ALPHA, "main").mode == "incremental"
    check = check_shadow(settings, TINY)
    assert not check.complete
    assert [p.split(":")[0] for p in check.problems] == [f"{ALPHA}@main"]
    result = cli.invoke(app, ["models", "switch", TINY, "--data-dir", str(settings.data_dir)])
    assert result.exit_code != 0 and isinstance(result.exception, ConflictError)
    assert rt.model == "default"

    # building again resumes: only what changed is re-embedded
    modes = {
        (x["repo"], x["branch"]): x["mode"]
        for x in build_shadow(settings, TINY, sources={BETA: repos[BETA]})
    }
    assert modes == {
        (ALPHA, "main"): "incremental",
        (ALPHA, "feature/x"): "noop",
        (BETA, "main"): "noop",
    }
    assert check_shadow(settings, TINY).complete

    with httpx.Client() as c:
        a_ref = searcher.one(c)  # the served model's answer, new commit included
    with searcher:
        assert _wait(lambda: searcher.count() >= 10)
        out = switch(settings, TINY)
        assert out == {"model": TINY, "switched": True, "previous": "default", "branches": 3}
        assert _wait(lambda: rt.model == TINY), "the API follows the pointer"
        n = searcher.count()
        assert _wait(lambda: searcher.count() >= n + 10)
        assert rt.embedder.model_id == added["fingerprint"]
        with httpx.Client() as c:
            b_ref = searcher.one(c)
        result = cli.invoke(app, ["models", "rollback", "--data-dir", str(settings.data_dir)])
        assert result.exit_code == 0, result.output
        assert _wait(lambda: rt.model == "default")
        n = searcher.count()
        assert _wait(lambda: searcher.count() >= n + 10)

    assert searcher.failures == []
    assert a_ref != b_ref, "the two models rank differently"
    for answers in searcher.answers:
        assert set(answers) <= {a_ref, b_ref}, "every answer is one model's, never a mix"
        assert _runs(answers) == [a_ref, b_ref, a_ref]
    assert ModelRegistry.of(settings).read().active == "default"

    # the retired shard is closed after its grace period: the next build can open it
    time.sleep(settings.model_retire_seconds + 0.5)
    assert _wait(lambda: rt.close_retired() == 0 and not rt._retired)
    assert all("error" not in x for x in build_shadow(settings, TINY, sources={BETA: repos[BETA]}))

    # and what the API answered while switched is what the tiny model alone answers: its
    # query vectors (with the prefix) against its own index, nothing of the bundled model
    from coderag.index.factory import open_model_index
    from coderag.runtime import build_serving

    spec = ModelRegistry.of(settings).spec(TINY, settings)
    alone = build_serving(settings, spec, index=open_model_index(settings, TINY))
    try:
        hits = alone.retriever.search(QUERY, k=5, mode="dense")
        assert tuple((h.repo, h.path, h.start_line, round(h.score, 5)) for h in hits) == b_ref
    finally:
        alone.index.close()


# --- the server path (qdrant-client local mode) --------------------------------------------------


def test_switch_through_alias_server(
    tmp_path: Path, embedder: Any, model_dir: Path, tiny_model: Path
) -> None:
    from qdrant_client import QdrantClient

    from coderag.errors import ConflictError
    from coderag.index.server import ServerIndex
    from coderag.model_switch import add_model, build_shadow, rollback, switch
    from coderag.runtime import build_runtime
    from embeddings.options import ModelOptions

    client = QdrantClient(path=str(tmp_path / "qdrant"))
    home = ServerIndex(client=client)
    # the URL is never dialled: every call goes through the local client passed in
    settings = _settings(
        tmp_path, model_dir, index_backend="server", qdrant_url="http://127.0.0.1:9"
    )
    repos = make_repos(tmp_path / "src")
    rt = build_runtime(settings, index=home)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    try:
        rt.warm_up()
        for repo, branch in ((ALPHA, "main"), (BETA, "main")):
            rt.indexer.index(repos[repo], repo, branch)
        add_model(settings, tiny_model, name=TINY, options=ModelOptions(query_prefix=QUERY_PREFIX))
        sources = {ALPHA: repos[ALPHA], BETA: repos[BETA]}
        assert all(
            "error" not in x for x in build_shadow(settings, TINY, sources=sources, home=home)
        )
        assert {c.name for c in client.get_collections().collections} >= {
            "coderag",
            "coderag__tiny",
        }

        def search() -> tuple[Any, ...]:
            hits = rt.retriever.search(QUERY, k=5, mode="dense")
            return tuple((h.repo, h.path, h.start_line, round(h.score, 5)) for h in hits)

        a_ref = search()
        seen: list[tuple[Any, ...]] = []
        failures: list[str] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    seen.append(search())
                except Exception as exc:
                    failures.append(repr(exc))

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            switch(settings, TINY, home=home)
            aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
            assert aliases == {"coderag__active": "coderag__tiny"}
            assert _wait(lambda: rt.model == TINY), "the watcher follows the alias"
            n = len(seen)
            assert _wait(lambda: len(seen) >= n + 5)
            b_ref = search()
            out = rollback(settings, home=home)
            assert out["model"] == "default" and out["behind"] == []
            aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
            assert aliases == {"coderag__active": "coderag"}
            assert _wait(lambda: rt.model == "default")
            n = len(seen)
            assert _wait(lambda: len(seen) >= n + 5)
        finally:
            stop.set()
            t.join(timeout=60)
        assert failures == []
        assert a_ref != b_ref
        assert set(seen) <= {a_ref, b_ref} and _runs(seen) == [a_ref, b_ref, a_ref]

        # a repository removed while the new model served is still in the old index: a
        # rollback would serve it again, so it is refused unless forced
        switch(settings, TINY, home=home)
        assert _wait(lambda: rt.model == TINY)
        assert rt.indexer.delete_repo(BETA) > 0
        with pytest.raises(ConflictError, match=f"{BETA}@main: no longer served"):
            rollback(settings, home=home)
        out = rollback(settings, force=True, home=home)
        assert out["model"] == "default" and out["behind"] == [
            f"{BETA}@main: no longer served (`coderag models build` removes it)"
        ]
        assert _wait(lambda: rt.model == "default")
    finally:
        rt.close()
        client.close()


# --- the index fingerprint carries the chunker version -------------------------------------------


def test_chunker_version_forces_full_reindex(
    git_repo: Path, tmp_path: Path, embedder: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chunkers
    from coderag.runtime import build_runtime

    settings = _settings(tmp_path, model_dir, index_backend="edge", model_watch_seconds=0)
    (git_repo / "a.py").write_text("def one():\n    return 1\n")
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-qm", "one")
    with build_runtime(settings) as rt:
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        assert rt.indexer.index(git_repo, "g/r", "main").mode == "full"
        (git_repo / "b.py").write_text("def two():\n    return 2\n")
        git(git_repo, "add", "-A")
        git(git_repo, "commit", "-qm", "two")
        assert rt.indexer.index(git_repo, "g/r", "main").mode == "incremental"  # control
        fp = rt.indexer.fingerprint()
        assert fp.endswith(f":c{chunkers.CHUNKER_VERSION}")

        monkeypatch.setattr(chunkers, "CHUNKER_VERSION", chunkers.CHUNKER_VERSION + 1)
        assert rt.indexer.fingerprint() != fp
        (git_repo / "c.py").write_text("def three():\n    return 3\n")
        git(git_repo, "add", "-A")
        git(git_repo, "commit", "-qm", "three")
        report = rt.indexer.index(git_repo, "g/r", "main")
        assert report.mode == "full", "a chunker change re-writes the branch, never mixes shapes"
        assert report.files_indexed == 3


# --- per-model settings at embed time ------------------------------------------------------------


def test_model_options_apply_at_embed_time(
    tiny_model: Path, tmp_path: Path, model_dir: Path
) -> None:
    from coderag.models_registry import ModelSpec
    from coderag.runtime import build_serving
    from embeddings import Embedder
    from embeddings.options import ModelOptions

    def emb(**opts: Any) -> Embedder:
        e = Embedder(
            tiny_model,
            backend="torch",
            device="cpu",
            cache_dir=tmp_path / "cache",
            models_dir=model_dir,
            options=ModelOptions(**opts),
        )
        e.warm_up()
        return e

    plain = emb()
    prefixed = emb(query_prefix=QUERY_PREFIX, document_prefix="passage: ")
    assert prefixed.model_id.startswith(plain.model_id + "+")
    code = "def settle(payment):\n    payment.settled = True"
    # the prefixes are what the model reads: same vectors as embedding the prefixed text
    np.testing.assert_allclose(
        prefixed.embed_queries(["x"]), plain.embed_documents([QUERY_PREFIX + "x"]), atol=1e-5
    )
    np.testing.assert_allclose(
        prefixed.embed_documents([code]), plain.embed_documents(["passage: " + code]), atol=1e-5
    )
    # the cache: a second embedder with the same options hits it; the plain one's vector of
    # the unprefixed text is a different entry (other model id, other text key)
    again = emb(query_prefix=QUERY_PREFIX, document_prefix="passage: ")
    np.testing.assert_allclose(again.embed_documents([code]), prefixed.embed_documents([code]))
    assert (again.stats.cache_hits, again.stats.embedded) == (1, 0)
    cos = float(plain.embed_documents([code])[0] @ prefixed.embed_documents([code])[0])
    assert cos < 0.999

    cls = emb(pooling="cls")
    assert float(cls.embed_documents([code])[0] @ plain.embed_documents([code])[0]) < 0.99
    assert cls.model_id != plain.model_id

    short = emb(max_seq_length=32, document_prefix="passage: ")
    assert short.max_seq_length == 32
    long_text = " ".join(f"token{i}" for i in range(300))
    np.testing.assert_allclose(  # everything past 32 tokens is cut, as the model reads it
        short.embed_documents([long_text]),
        short.embed_documents([long_text + " more words at the end"]),
        atol=1e-6,
    )
    # chunks are budgeted to fit what the model reads, prefix included
    from coderag.settings import Settings

    spec = ModelSpec(
        TINY, str(tiny_model), ModelOptions(max_seq_length=32, document_prefix="passage: ")
    )
    serving = build_serving(Settings(data_dir=tmp_path / "d", model_export_dir=model_dir), spec)
    assert 16 <= serving.chunker.max_tokens < 32

    bf16 = emb(precision="bf16")
    assert bf16.backend_info["precision"] == "bf16"
    cos = float(bf16.embed_documents([code])[0] @ plain.embed_documents([code])[0])
    assert 0.98 < cos < 1.0 + 1e-6


def test_trusted_code_model_loads_offline(
    tiny_model: Path, tmp_path: Path, model_dir: Path
) -> None:
    """A model whose modeling code ships in its directory, as CodeRankEmbed's does (its
    files: ``modeling_hf_nomic_bert.py`` and ``configuration_hf_nomic_bert.py`` beside the
    weights, named by ``auto_map`` in config.json; model card: huggingface.co/nomic-ai/
    CodeRankEmbed). Here: the tiny model behind a custom config and model class."""
    import shutil

    from coderag.errors import EmbeddingError
    from coderag.model_switch import add_model
    from coderag.settings import Settings
    from embeddings import Embedder
    from embeddings.options import ModelOptions

    custom = tmp_path / "custom-bert"
    shutil.copytree(tiny_model, custom)
    (custom / "configuration_custom.py").write_text(
        "from transformers import BertConfig\n\n\n"
        "class CustomBertConfig(BertConfig):\n    model_type = 'custom_bert'\n"
    )
    (custom / "modeling_custom.py").write_text(
        "from transformers import BertModel\n\n"
        "from .configuration_custom import CustomBertConfig\n\n\n"
        "class CustomBertModel(BertModel):\n    config_class = CustomBertConfig\n"
    )
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(
        model_type="custom_bert",
        architectures=["CustomBertModel"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomBertConfig",
            "AutoModel": "modeling_custom.CustomBertModel",
        },
    )
    (custom / "config.json").write_text(json.dumps(cfg))
    settings = Settings(data_dir=tmp_path / "data", model_export_dir=model_dir)

    with pytest.raises(EmbeddingError, match="trust_remote_code"):  # never unasked
        add_model(settings, custom, name="custom")
    spec = add_model(settings, custom, name="custom", options=ModelOptions(trust_remote_code=True))
    assert spec.dim == 384 and spec.options.trust_remote_code
    trusted = Embedder(custom, device="cpu", models_dir=model_dir, options=spec.options)
    plain = Embedder(tiny_model, backend="torch", device="cpu", models_dir=model_dir)
    assert trusted.backend_info == {} and trusted.backend == "torch"
    text = "def settle(payment):\n    payment.settled = True"
    np.testing.assert_allclose(
        trusted.embed_documents([text]), plain.embed_documents([text]), atol=1e-5
    )
    assert trusted.backend_info["trust_remote_code"] is True


def test_models_add_checks_offline(tiny_model: Path, tmp_path: Path, model_dir: Path) -> None:
    from coderag.cli import app
    from coderag.errors import EmbeddingError, InputError
    from coderag.models_registry import ModelRegistry

    data = str(tmp_path / "data")
    env = {"CODERAG_MODEL_EXPORT_DIR": str(model_dir), "CODERAG_EMBEDDING_BACKEND": "torch"}
    cli = CliRunner(env=env)

    def add(*args: str) -> Any:
        return cli.invoke(app, ["models", "add", *args, "--data-dir", data])

    # a hub id is not a directory: refused with the reason, nothing fetched
    r = add("nomic-ai/CodeRankEmbed")
    assert isinstance(r.exception, InputError) and "never downloads" in str(r.exception)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = add(str(empty))
    assert isinstance(r.exception, EmbeddingError) and "config.json" in str(r.exception)
    r = add(str(tiny_model), "--name", "default")
    assert isinstance(r.exception, InputError) and "reserved" in str(r.exception)
    r = add(str(tiny_model), "--pooling", "sum")
    assert r.exception is not None and "pooling" in str(r.exception)

    r = add(str(tiny_model), "--name", TINY, "--pooling", "cls", "--max-seq-length", "128")
    assert r.exit_code == 0, r.output
    spec = ModelRegistry(tmp_path / "data" / "model-registry.json").read().models[TINY]
    assert spec.dim == 384 and spec.options.pooling == "cls" and spec.options.max_seq_length == 128
    assert spec.path == str(tiny_model.resolve())
    r = add(str(tiny_model), "--name", TINY)
    assert isinstance(r.exception, InputError) and "--replace" in str(r.exception)
    r = cli.invoke(app, ["models", "list", "--json", "--data-dir", data])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["default"]["active"] and not rows[TINY]["active"]
    assert rows[TINY]["index"].startswith("complete (0 branches)")


# --- comparing the two models on the site's own history ------------------------------------------


def test_eval_history_compare_two_models(
    git_repo: Path,
    tmp_path: Path,
    model_dir: Path,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coderag.cli import app
    from coderag.model_switch import add_model
    from coderag.settings import Settings

    data = tmp_path / "data"
    for k, v in {
        "CODERAG_DATA_DIR": str(data),
        "CODERAG_MODEL_EXPORT_DIR": str(model_dir),
        "CODERAG_EMBEDDING_BACKEND": "torch",
        "CODERAG_EMBEDDING_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(k, v)
    add_model(Settings(), tiny_model, name=TINY)
    files = {
        "billing/invoice.py": "def total(lines):\n    return sum(l.price for l in lines)\n",
        "billing/tax.py": "def vat(amount):\n    return amount * 0.2\n",
        "auth/login.py": "def login(user, password):\n    return check(user, password)\n",
    }
    for rel, text in files.items():
        (git_repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (git_repo / rel).write_text(text)
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-qm", "initial")
    for rel, extra, msg in (
        ("billing/tax.py", "\n\ndef reduced_vat(amount):\n    return amount * 0.05\n",
         "Add a reduced VAT rate for books"),
        ("auth/login.py", "\n\ndef logout(session):\n    session.clear()\n",
         "Let users log out and clear the session"),
        ("billing/invoice.py", "\n\ndef discount(total, pct):\n    return total * (1 - pct)\n",
         "Apply a percentage discount to invoice totals"),
    ):  # fmt: skip
        with open(git_repo / rel, "a") as fh:
            fh.write(extra)
        git(git_repo, "commit", "-qam", msg)

    cli = CliRunner()
    reports = {}
    for name in ("default", TINY):
        out = tmp_path / f"{name}.json"
        r = cli.invoke(app, ["eval", "history", str(git_repo), "--model", name, "--json", str(out)])
        assert r.exit_code == 0, r.output
        reports[name] = json.loads(out.read_text())
        assert reports[name]["n_queries"] == 3
        assert reports[name]["model"]["name"] == name
    assert reports[TINY]["model"]["id"] != reports["default"]["model"]["id"]
    png = tmp_path / "compare.png"
    r = cli.invoke(
        app, ["eval", "compare", str(tmp_path / "default.json"), str(tmp_path / f"{TINY}.json"),
              "--png", str(png)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "(default)" in r.stdout and f"({TINY})" in r.stdout
    assert png.stat().st_size > 0
