"""The on-disk embedding cache: batch get/put, durability, several writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from embeddings.cache import CACHE_FILENAME, EmbeddingCache, text_key


def _vecs(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_text_key_is_sha256() -> None:
    import hashlib

    assert text_key("abc") == hashlib.sha256(b"abc").digest()
    assert len(text_key("\ud800 lone surrogate")) == 32  # never raises


def test_roundtrip_order_and_misses(tmp_path: Path) -> None:
    keys = [text_key(f"t{i}") for i in range(5)]
    vecs = _vecs(5)
    with EmbeddingCache(tmp_path) as cache:
        assert cache.get("m", keys) == [None] * 5
        cache.put("m", keys[:3], vecs[:3])
        got = cache.get("m", [keys[4], keys[2], keys[0], keys[2]])
        assert got[0] is None
        np.testing.assert_array_equal(got[1], vecs[2])
        np.testing.assert_array_equal(got[2], vecs[0])
        np.testing.assert_array_equal(got[3], vecs[2])
        assert got[1].dtype == np.float32
        assert cache.count("m") == 3


def test_existing_entries_are_kept(tmp_path: Path) -> None:
    k = [text_key("x")]
    with EmbeddingCache(tmp_path) as cache:
        cache.put("m", k, _vecs(1, seed=1))
        cache.put("m", k, _vecs(1, seed=2))
        np.testing.assert_array_equal(cache.get("m", k)[0], _vecs(1, seed=1)[0])


def test_survives_reopening_and_is_per_model(tmp_path: Path) -> None:
    keys = [text_key(f"t{i}") for i in range(600)]  # > one SELECT chunk
    vecs = _vecs(600)
    with EmbeddingCache(tmp_path) as cache:
        cache.put("model-a", keys, vecs)
    with EmbeddingCache(tmp_path) as cache:
        got = cache.get("model-a", keys)
        np.testing.assert_array_equal(np.stack(got), vecs)  # type: ignore[arg-type]
        assert cache.get("model-b", keys[:3]) == [None] * 3
        assert cache.count() == 600 and cache.count("model-b") == 0
    conn = sqlite3.connect(tmp_path / CACHE_FILENAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_threads_share_one_cache(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for r in range(10):
                keys = [text_key(f"{t}-{r}-{i}") for i in range(20)]
                cache.put("m", keys, _vecs(20, seed=t * 100 + r))
                assert all(v is not None for v in cache.get("m", keys))
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert cache.count("m") == 4 * 10 * 20
    cache.close()


_WRITER = """
import sys
import numpy as np
from embeddings.cache import EmbeddingCache, text_key
cache = EmbeddingCache(sys.argv[1])
for r in range(20):
    keys = [text_key(f"proc-{r}-{i}") for i in range(50)]
    cache.put("m", keys, np.ones((50, 8), dtype=np.float32))
cache.close()
"""


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)])
    with EmbeddingCache(tmp_path) as cache:
        for r in range(20):
            keys = [text_key(f"main-{r}-{i}") for i in range(50)]
            cache.put("m", keys, _vecs(50, seed=r))
        assert proc.wait(timeout=60) == 0
        assert cache.count("m") == 2 * 20 * 50
        assert cache.get("m", [text_key("proc-3-7")])[0] is not None
