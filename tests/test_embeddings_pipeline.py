"""The GPU path's two steps, run on the CPU: tokenise the next batch while the model runs.

A GPU runs a MiniLM batch in milliseconds, so tokenising on the same thread would leave it
idle; :class:`~embeddings.backends.encode.TorchEncoder` splits ``encode`` into ``prepare``
(tokenise) and ``run`` (the model) and the embedder overlaps them. The overlap is on by
default on CUDA only, but the code is the same on any device: here it runs on the CPU with
the real bundled model and must give the vectors of the plain path, in order.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from coderag.settings import Settings
from embeddings import Embedder
from embeddings.backends.encode import TorchEncoder


def _texts() -> list[str]:
    base = [
        "def parse_config(path):\n    with open(path) as fh:\n        return json.load(fh)",
        "how do I retry a failed HTTP request?",
        "class Cache:\n    def get(self, key):\n        return self.data.get(key)\n" * 6,
        "SELECT id FROM users WHERE active",
        "raise ValueError(f'bad port {port}')",
    ]
    return [f"{t} # {i}" for i in range(5) for t in base]  # 25 distinct, varied lengths


def _torch(tmp_path: Path, **kw: object) -> Embedder:
    return Embedder(backend="torch", device="cpu", batch_size=4, models_dir=tmp_path / "m", **kw)  # type: ignore[arg-type]


def test_pipelined_batches_give_the_plain_vectors_in_order(tmp_path: Path) -> None:
    texts = _texts()
    plain = _torch(tmp_path, pipeline=False).embed_documents(texts)
    emb = _torch(tmp_path, pipeline=True)
    emb.warm_up()
    enc = emb._model().encoder
    assert isinstance(enc, TorchEncoder)
    threads: list[str] = []
    prepare = enc.prepare

    def spy(batch: list[str]) -> object:  # records where tokenising ran, then does it
        threads.append(threading.current_thread().name)
        return prepare(batch)

    enc.prepare = spy  # type: ignore[method-assign]
    piped = emb.embed_documents(texts)
    assert piped.shape == plain.shape == (25, emb.dim)
    cos = np.sum(piped * plain, axis=1)
    assert cos.min() > 0.99999  # the same forward pass, the same order
    assert len(threads) == 7  # ceil(25 / 4) batches, each tokenised once
    assert all(name.startswith("coderag-tokenize") for name in threads)


def test_torch_encoder_matches_sentence_transformers_encode(tmp_path: Path) -> None:
    emb = _torch(tmp_path)
    emb.warm_up()
    enc = emb._model().encoder
    assert isinstance(enc, TorchEncoder)
    texts = _texts()[:6]
    theirs = enc.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    ours = enc.run(enc.prepare(texts))
    assert np.sum(ours * theirs, axis=1).min() > 0.99999


def test_pipeline_is_off_on_cpu_by_default_and_settings_carry_the_gpu_batch(
    tmp_path: Path,
) -> None:
    emb = Embedder.from_settings(
        Settings(data_dir=tmp_path, embedding_cuda_batch_size=512, embedding_backend="torch")
    )
    assert emb.pipeline is None and emb.cuda_batch_size == 512
    emb.warm_up()
    assert emb.device == "cpu"  # no GPU here: CPU batches stay at embedding_batch_size
    assert emb.embed_documents(_texts()[:3]).shape == (3, emb.dim)


def test_gpu_bench_texts_are_distinct_and_it_refuses_without_a_gpu() -> None:
    import pytest
    import torch

    from bench.gpu import _texts, run

    texts = _texts(300)
    assert len(texts) == len(set(texts)) == 300  # nothing deduplicated away
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: scripts/gpu-bench.sh measures it")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        run(None, chunks=10, rounds=1)
