"""The Embedder facade on the real bundled MiniLM (loaded once per session in conftest)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

import embeddings
from coderag.errors import ConfigError, EmbeddingError
from coderag.settings import Settings
from embeddings import Embedder, EmbeddingCache
from embeddings.cache import text_key

CODE_JSON = "def load_config(path):\n    with open(path) as fh:\n        return json.load(fh)"
QUERY_JSON = "read a json configuration file"
SQL = "SELECT count(*) FROM orders WHERE status = 'shipped' GROUP BY region;"


def _texts(n: int) -> list[str]:
    """Unique texts (never cached by an earlier test) of very different lengths."""
    tag = uuid.uuid4().hex[:8]
    return [f"# {tag} {i}\n" + "x = compute(value)\n" * (1 + (i * 7) % 23) for i in range(n)]


def test_public_names() -> None:
    assert sorted(embeddings.__all__) == sorted(
        [
            "EmbedStats",
            "Embedder",
            "EmbeddingCache",
            "sparse_document",
            "sparse_query",
            "tokenize_code",
        ]
    )


def test_constructor_is_cheap_and_validates() -> None:
    emb = Embedder(model="/nonexistent/model/dir")  # nothing loaded, nothing checked yet
    assert not emb.loaded and emb.backend == "auto" and emb.device == "auto"
    with pytest.raises(ConfigError):
        Embedder(backend="tensorrt")
    with pytest.raises(ConfigError):
        Embedder(device="tpu")


def test_from_settings(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, embedding_backend="torch", embedding_batch_size=7)
    emb = Embedder.from_settings(s)
    assert emb.batch_size == 7 and emb.backend == "torch"
    assert emb.cache_dir == s.cache_dir and emb.models_dir == s.models_dir
    assert (
        Embedder.from_settings(Settings(data_dir=tmp_path, embedding_cache=False)).cache_dir is None
    )


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match="does not exist"):
        Embedder(model=tmp_path / "nope", models_dir=tmp_path).warm_up()
    with pytest.raises(EmbeddingError, match="never downloads"):
        Embedder(model="sentence-transformers/all-MiniLM-L6-v2").warm_up()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingError, match="not a sentence-transformers"):
        Embedder(model=tmp_path / "empty").count_tokens(["x"])


def test_vectors_are_normalised_float32_384(embedder: Embedder) -> None:
    assert embedder.dim == 384
    assert embedder.backend in ("torch", "onnx", "openvino") and embedder.device == "cpu"
    v = embedder.embed_documents(_texts(5))
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_documents([]).shape == (0, 384)
    assert embedder.embed_queries([]).shape == (0, 384)


def test_order_preserved_across_length_sorted_batches(embedder: Embedder) -> None:
    texts = _texts(36)  # two batches of 32, lengths shuffled
    batch = embedder.embed_documents(texts)
    alone = np.stack([embedder.embed_queries([t])[0] for t in texts])
    # A text embedded in a batch and alone differs by padding only; under bf16 by up to 5e-4
    # per dimension. What retrieval can see is the cosine: it stays >= 0.999 ...
    sims = batch @ alone.T
    assert np.all(np.diag(sims) >= 0.999), np.diag(sims).min()
    # ... and each row is its own text, not a neighbour put back in the wrong place.
    assert np.all(np.argmax(sims, axis=1) == np.arange(len(texts)))


def test_identical_texts_identical_vectors(embedder: Embedder) -> None:
    t = _texts(2)
    v = embedder.embed_documents([t[0], t[1], t[0]])
    np.testing.assert_array_equal(v[0], v[2])
    q = embedder.embed_queries([t[0]])[0]
    assert float(q @ v[0]) >= 0.999  # queries and documents: same model


def test_semantically_close_texts_are_closer(embedder: Embedder) -> None:
    q, code, sql = embedder.embed_queries([QUERY_JSON, CODE_JSON, SQL])
    assert float(q @ code) > float(q @ sql) + 0.1


def test_cache_second_embed_embeds_nothing(embedder: Embedder) -> None:
    texts = _texts(10)
    calls: list[int] = []
    before = embedder.stats.embedded
    first = embedder.embed_documents(texts, progress=calls.append)
    assert embedder.stats.embedded - before == 10
    assert calls and calls[-1] == 10 and calls == sorted(calls)
    hits = embedder.stats.cache_hits
    again = embedder.embed_documents(texts)
    assert embedder.stats.embedded - before == 10  # nothing new
    assert embedder.stats.cache_hits - hits == 10
    np.testing.assert_array_equal(first, again)
    s = embedder.stats
    assert s.requested == s.cache_hits + s.embedded and s.seconds > 0


def test_cache_survives_a_new_embedder_and_is_keyed_by_model(
    embedder: Embedder, tmp_path: Path
) -> None:
    texts = _texts(4)
    vecs = embedder.embed_documents(texts)
    assert embedder.cache_dir is not None
    # Another process's view: a new embedder on the same cache dir, in the same precision
    # (the key is the model id, which carries the precision, not the backend).
    reopened = Embedder(
        backend="torch" if embedder.precision == "fp32" else embedder.backend,
        precision=embedder.precision,
        device="cpu",
        cache_dir=embedder.cache_dir,
        models_dir=embedder.models_dir,
    )
    out = reopened.embed_documents(texts)
    assert reopened.stats.embedded == 0 and reopened.stats.cache_hits == 4
    np.testing.assert_array_equal(out, vecs)
    with EmbeddingCache(embedder.cache_dir) as cache:
        keys = [text_key(t) for t in texts]
        assert all(v is not None for v in cache.get(embedder.model_id, keys))
        assert cache.get("another-model@0000", keys) == [None] * 4
    reopened.close()


def test_model_id_follows_content(tmp_path: Path, embedder: Embedder) -> None:
    assert embedder.model_id.startswith("all-MiniLM-L6-v2@")
    assert embedder.model_id == Embedder(models_dir=tmp_path).model_id  # stable
    from embeddings.backends import ModelSource

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    a = ModelSource(d, "m").digest()
    (d / "config.json").write_text('{"x": 1}')
    assert ModelSource(d, "m").digest() != a


def test_count_tokens_matches_tokenizer(embedder: Embedder) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedder.model_path, local_files_only=True)
    texts = ["", "hello world", CODE_JSON, "word " * 600, "Fehler — 错误"]
    expected = [len(tok(t, verbose=False)["input_ids"]) for t in texts]
    assert embedder.count_tokens(texts) == expected
    assert embedder.count_tokens([""]) == [2]  # [CLS] [SEP]
    assert embedder.count_tokens(["word " * 600])[0] > 600  # never truncated
    assert embedder.count_tokens([]) == []
    assert embedder.max_seq_length == 256


def test_tokens_without_loading_the_model(tmp_path: Path) -> None:
    emb = Embedder(models_dir=tmp_path)
    assert emb.max_seq_length == 256
    assert emb.count_tokens(["hello world"]) == [4]
    assert not emb.loaded


def test_threads_get_consistent_vectors(embedder: Embedder) -> None:
    texts = _texts(6)
    ref = embedder.embed_queries(texts)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(embedder.embed_documents(texts))
            embedder.count_tokens(texts)
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for r in results:
        np.testing.assert_allclose(r, ref, atol=2e-4)
