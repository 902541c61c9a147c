"""The one entry point of the embeddings stage: :class:`Embedder`.

Cheap to construct (no model, no file touched), loaded once by :meth:`Embedder.warm_up`
from FastAPI's lifespan or Celery's ``worker_process_init`` (or on first use). Documents go
through a content-addressed on-disk cache, so the same text is embedded once per model
whatever the number of commits, branches and repos it appears in; queries go through a small
in-memory LRU.

Batches are formed after sorting texts by token length, because a batch is padded to its
longest member: mixing a 10-token and a 256-token text in one batch wastes most of the work.
Results are put back in input order.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coderag.errors import ConfigError, EmbeddingError
from embeddings.backends import (
    BACKENDS,
    LoadedModel,
    ModelSource,
    check_source,
    load_model,
    offline_hub,
    resolve_model,
)
from embeddings.backends.load import plan
from embeddings.backends.precision import PRECISIONS, can_run, precision_tag
from embeddings.cache import EmbeddingCache, text_key
from embeddings.gate import InferenceGate
from embeddings.options import ModelOptions

if TYPE_CHECKING:
    from coderag.settings import Settings

__all__ = ["EmbedStats", "Embedder"]

log = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """Counters since construction (documents and queries together).

    ``requested == cache_hits + embedded``: a text is either served without running the
    model (on-disk cache, query LRU, or a duplicate within the same call) or embedded.
    ``seconds`` is time spent inside the model.
    """

    requested: int = 0
    cache_hits: int = 0
    embedded: int = 0
    seconds: float = 0.0


class Embedder:
    """Text -> L2-normalised float32 vectors with the configured model and backend."""

    def __init__(
        self,
        model: str | Path | None = None,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        cache_dir: Path | None = None,
        models_dir: Path | None = None,
        *,
        query_cache_size: int = 2048,
        options: ModelOptions | None = None,
        precision: str = "auto",
        cuda_batch_size: int = 256,
        pipeline: bool | None = None,
    ) -> None:
        self.options = options if options is not None else ModelOptions()
        if backend not in ("auto", *BACKENDS):
            raise ConfigError(
                f"unknown embedding backend {backend!r} (auto, torch, onnx, openvino)"
            )
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown embedding device {device!r} (auto, cpu, cuda)")
        if batch_size < 1 or cuda_batch_size < 1:
            raise ConfigError("embedding batch sizes must be >= 1")
        self._source: ModelSource | None = None
        self._model_arg = model
        self._requested_backend = self.options.backend_for(backend)
        self._requested_device = device
        # A model's own precision option wins over the process-wide setting.
        self._requested_precision = (
            self.options.precision if self.options.precision != "auto" else precision
        )
        if self._requested_precision not in PRECISIONS:
            raise ConfigError(
                f"unknown embedding precision {precision!r} ({', '.join(PRECISIONS)})"
            )
        self._align: Callable[[], str | None] | None = None
        self.batch_size = batch_size
        self.cuda_batch_size = cuda_batch_size
        """Texts per batch on a GPU: a batch of 32 leaves most of one idle (launch-bound)."""
        self.pipeline = pipeline
        """Tokenise the next batch on another thread while the model runs this one (``None``:
        on CUDA only; on a CPU both steps compete for the same cores)."""
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._models_dir = Path(models_dir) if models_dir is not None else None
        self._models_dir_is_tmp = False
        self.stats = EmbedStats()
        self._loaded: LoadedModel | None = None
        self._model_id: str | None = None
        self._weights_id: str | None = None
        self._tokenizer: Any = None
        self._max_seq_length: int | None = None
        self._cache: EmbeddingCache | None = None
        self._query_lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_cache_size = query_cache_size
        self._load_lock = threading.RLock()
        self._gate = InferenceGate()  # one inference at a time; queries take the next turn
        self._stats_lock = threading.Lock()
        self._tok_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        model: str | Path | None = None,
        options: ModelOptions | None = None,
    ) -> Embedder:
        """The settings' model, or ``model`` (a registered model's path) with ``options``,
        on the settings' backend, device, batch size, cache and export dirs."""
        return cls(
            model=model if model is not None else settings.embedding_model,
            options=options,
            backend=settings.embedding_backend,
            device=settings.embedding_device,
            batch_size=settings.embedding_batch_size,
            cuda_batch_size=settings.embedding_cuda_batch_size,
            precision=settings.embedding_precision,
            cache_dir=settings.cache_dir if settings.embedding_cache else None,
            models_dir=settings.models_dir,
        )

    # --- identity --------------------------------------------------------------------------
    @property
    def source(self) -> ModelSource:
        if self._source is None:
            self._source = resolve_model(self._model_arg)
        return self._source

    @property
    def model_path(self) -> str:
        """Local directory of the model (what ``SentenceTransformer()`` would load)."""
        return str(self.source.path)

    @property
    def models_dir(self) -> Path:
        """Where exports are cached; a per-process temporary dir when none was configured."""
        if self._models_dir is None:
            with self._load_lock:
                if self._models_dir is None:
                    tmp = tempfile.mkdtemp(prefix="coderag-models-")
                    weakref.finalize(self, shutil.rmtree, tmp, ignore_errors=True)
                    self._models_dir = Path(tmp)
                    self._models_dir_is_tmp = True
        return self._models_dir

    @property
    def model_id(self) -> str:
        """``<name>@<sha256 of the model files, 16 hex>``: cache keys and index state depend on
        it, so it changes exactly when the weights or tokenizer do, not when a path does.
        Options that change vectors (prefixes, pooling, length) add ``+<8 hex>``
        (:meth:`ModelOptions.id_suffix`); a precision other than fp32 adds ``~bf16`` (or
        ``~int8``, ``~fp16``): the one loaded, or before loading the one that will be."""
        if self._model_id is None:
            with self._load_lock:
                if self._model_id is None:
                    model_id = self.base_id + precision_tag(self.precision)
                    if self._loaded is None:
                        return model_id  # planned: fixed once loaded (a fallback changes it)
                    self._model_id = model_id
        return self._model_id

    def align_precision(self, stored: Callable[[], str | None]) -> None:
        """Under ``auto``, load the precision the index already holds (``stored()``, read when
        the model loads) when this machine runs it: an upgrade or a new CPU never starts
        mixing precisions in an existing index. An explicit precision is never overridden
        (the indexer refuses to mix instead)."""
        self._align = stored

    def _precision_to_load(self) -> str:
        requested = self._requested_precision
        if requested != "auto" or self._align is None:
            return requested
        stored = self._align()
        if stored is None:
            return requested
        _, device, _ = plan(
            self._requested_backend, self._requested_device, "auto", self._models_dir, "-"
        )
        if can_run(stored, device):
            return stored
        log.warning(
            "the index holds %s vectors of this model, which this machine does not run "
            "natively: writes will be refused until embedding_precision is set",
            stored,
        )
        return requested

    @property
    def base_id(self) -> str:
        """The model id without its precision tag: the same model in any precision."""
        return self._weights() + self.options.id_suffix()

    @property
    def precision(self) -> str:
        """fp32, fp16, bf16 or int8: as loaded, or before loading as it will be chosen."""
        if self._loaded is not None:
            return str(self._loaded.info.get("precision", "fp32"))
        if self.options.trust_remote_code:
            req = self._requested_precision
            return req if req in ("fp16", "bf16") else "fp32"
        _, _, precision = plan(
            self._requested_backend,
            self._requested_device,
            self._precision_to_load(),
            self._models_dir,
            self._weights(),
        )
        return precision

    def _weights(self) -> str:
        """The id of the files alone: exports depend on the weights, not on the options."""
        if self._weights_id is None:
            with self._load_lock:
                if self._weights_id is None:
                    src = self.source
                    check_source(src)
                    memo = None if self._models_dir_is_tmp else self._models_dir
                    self._weights_id = f"{src.name}@{src.digest(memo)[:16]}"
        return self._weights_id

    # --- loading ---------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load (exporting on first use, then cached on disk) the model. Idempotent and
        thread-safe; the first caller pays, the others wait for it."""
        if self._loaded is not None:
            return
        with self._load_lock:
            if self._loaded is not None:
                return
            t0 = time.perf_counter()
            if self.options.max_seq_length is not None:
                self._check_length(self.options.max_seq_length)
            if self.options.trust_remote_code:
                loaded = _load_trusted(
                    self.source, self._requested_device, self._requested_precision
                )
            else:
                loaded = load_model(
                    self.source,
                    self._weights(),
                    self._requested_backend,
                    self._requested_device,
                    self.models_dir,
                    self._precision_to_load(),
                )
            self.options.apply(loaded)
            self._max_seq_length = loaded.max_seq_length
            self._model_id = None  # re-read with the precision actually loaded
            self._loaded = loaded
            log.info(
                "embedding model %s ready: backend=%s device=%s precision=%s dim=%d in %.1fs",
                self.model_id,
                loaded.backend,
                loaded.device,
                self.precision,
                loaded.dim,
                time.perf_counter() - t0,
            )

    def _model(self) -> LoadedModel:
        if self._loaded is None:
            self.warm_up()
        assert self._loaded is not None
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def dim(self) -> int:
        """Vector dimension (loads the model if needed)."""
        return self._model().dim

    @property
    def backend(self) -> str:
        """Resolved backend after :meth:`warm_up` (torch / onnx / openvino); before it, the
        requested one."""
        return self._loaded.backend if self._loaded else self._requested_backend

    @property
    def device(self) -> str:
        """Resolved device after :meth:`warm_up` (cpu / cuda); before it, the requested one."""
        return self._loaded.device if self._loaded else self._requested_device

    @property
    def backend_info(self) -> dict[str, Any]:
        """How the backend was obtained: export dir, whether exported in this process, probe
        cosine against torch, fallback reason. Empty before :meth:`warm_up`."""
        return dict(self._loaded.info) if self._loaded else {}

    # --- tokens ----------------------------------------------------------------------------
    def _tok(self) -> Any:
        if self._tokenizer is None:
            with self._load_lock:
                if self._tokenizer is None:
                    self._tokenizer = _load_tokenizer(self.source)
        return self._tokenizer

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (loaded on first use, without the model), for
        callers that budget text in the model's own tokens (the chunker)."""
        return self._tok()

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads per text (special tokens included); the rest is truncated.
        Known without loading the model (sentence-transformers config, else tokenizer)."""
        if self._max_seq_length is None:
            if self.options.max_seq_length is not None:
                self._check_length(self.options.max_seq_length)
                self._max_seq_length = self.options.max_seq_length
            else:
                self._max_seq_length = _read_max_seq_length(self.source, self._tok())
        return self._max_seq_length

    def _check_length(self, n: int) -> None:
        """A length past the model's position embeddings would fail at the first long text."""
        import json

        cfg = self.source.path / "config.json"
        limit = json.loads(cfg.read_text()).get("max_position_embeddings") if cfg.is_file() else 0
        if limit and n > int(limit):
            raise ConfigError(f"max_seq_length {n} exceeds the model's {limit} position embeddings")

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text in the model's own tokenizer, special tokens included, no
        truncation: the chunker budgets chunks with it. Loads the tokenizer only."""
        if not texts:
            return []
        tok = self._tok()
        backend = getattr(tok, "backend_tokenizer", None)
        with self._tok_lock:  # HF tokenizers are not safe to call from threads at once
            if backend is not None:
                return [len(e.ids) for e in backend.encode_batch(list(texts))]
            ids = tok(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
            return [len(x) for x in ids]

    # --- embedding -------------------------------------------------------------------------
    def _get_cache(self) -> EmbeddingCache | None:
        if self.cache_dir is None:
            return None
        if self._cache is None:
            with self._load_lock:
                if self._cache is None:
                    self._cache = EmbeddingCache(self.cache_dir)
        return self._cache

    def embed_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """``(len(texts), dim)`` float32, L2-normalised, in input order.

        Texts already in the on-disk cache are not embedded again; new vectors are written
        to it batch by batch, so an interrupted run keeps what it computed. ``progress(n)``
        is called with the number of texts done so far (cached ones count as done first).
        A failure is counted in ``coderag_embedding_errors_total{kind="documents"}``.
        """
        with _errors_counted("documents"):
            return self._embed_documents(texts, progress)

    def _embed_documents(
        self, texts: Sequence[str], progress: Callable[[int], None] | None
    ) -> np.ndarray:
        prefix = self.options.document_prefix
        # Keys are taken on the text as embedded, prefix included: the cache stays right when
        # a prefix changes (the model id changes too, see ModelOptions.id_suffix).
        texts = [prefix + t for t in texts] if prefix else list(texts)
        model = self._model()
        n = len(texts)
        out = np.zeros((n, model.dim), dtype=np.float32)
        if n == 0:
            return out
        keys = [text_key(t) for t in texts]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first)
        cache = self._get_cache()
        vectors: dict[bytes, np.ndarray] = {}
        if cache is not None:
            for k, v in zip(unique, self._cache_get(cache, unique), strict=True):
                if v is not None and v.shape == (model.dim,):
                    vectors[k] = v
        todo = [k for k in unique if k not in vectors]
        copies = Counter(keys)  # a text repeated in the call is embedded once, done n times
        done = n - sum(copies[k] for k in todo)
        if progress is not None and done:
            progress(done)

        todo_texts = [texts[first[k]] for k in todo]

        def on_batch(batch_keys: list[bytes], batch_vecs: np.ndarray) -> None:
            nonlocal done
            for k, v in zip(batch_keys, batch_vecs, strict=True):
                vectors[k] = v
            if cache is not None:
                self._cache_put(cache, batch_keys, batch_vecs)
            done += sum(copies[k] for k in batch_keys)
            if progress is not None:
                progress(done)

        embedded = self._encode_sorted(todo_texts, todo, on_batch)
        with self._stats_lock:
            self.stats.requested += n
            self.stats.embedded += embedded
            self.stats.cache_hits += n - embedded
        for i, k in enumerate(keys):
            out[i] = vectors[k]
        return out

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Same model and vectors as documents (with the query prefix instead of the document
        one); recent queries are served from memory. A failure is counted in
        ``coderag_embedding_errors_total{kind="queries"}``."""
        with _errors_counted("queries"):
            return self._embed_queries(texts)

    def _embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        model = self._model()
        out = np.zeros((len(texts), model.dim), dtype=np.float32)
        if not texts:
            return out
        todo: list[str] = []
        with self._stats_lock:
            for t in dict.fromkeys(texts):
                if t in self._query_lru:
                    self._query_lru.move_to_end(t)
                else:
                    todo.append(t)
            known = {t: self._query_lru[t] for t in texts if t in self._query_lru}
        new: dict[str, np.ndarray] = {}

        def on_batch(batch: list[str], vecs: np.ndarray) -> None:
            new.update(zip(batch, vecs, strict=True))

        prefix = self.options.query_prefix  # the LRU is keyed by the query as asked
        encoded = [prefix + t for t in todo] if prefix else todo
        embedded = self._encode_sorted(encoded, todo, on_batch, query=True)
        with self._stats_lock:
            for t, v in new.items():
                self._query_lru[t] = v
                self._query_lru.move_to_end(t)
            while len(self._query_lru) > self._query_cache_size:
                self._query_lru.popitem(last=False)
            self.stats.requested += len(texts)
            self.stats.embedded += embedded
            self.stats.cache_hits += len(texts) - embedded
        known.update(new)
        for i, t in enumerate(texts):
            out[i] = known[t]
        return out

    def _encode_sorted(
        self,
        texts: list[str],
        tags: list[Any],
        on_batch: Callable[[list[Any], np.ndarray], None],
        *,
        query: bool = False,
    ) -> int:
        """Embed ``texts`` longest first in batches; ``on_batch(tags, vectors)`` per batch.
        ``query`` texts are waited on by a user: they take the model's next turn."""
        if not texts:
            return 0
        model = self._model()
        limit = model.max_seq_length
        lengths = [min(n, limit) for n in self.count_tokens(texts)]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        size = self.cuda_batch_size if model.device == "cuda" else self.batch_size
        batches = [order[lo : lo + size] for lo in range(0, len(order), size)]
        enc = model.encoder
        prepare = getattr(enc, "prepare", None)
        run = getattr(enc, "run", None)
        pipelined = (model.device == "cuda") if self.pipeline is None else self.pipeline
        if not (pipelined and prepare and run and len(batches) > 1):
            for idx in batches:
                self._run_batch(model, idx, enc.encode, texts, tags, on_batch, query)
            return len(texts)
        # Batch i+1 is tokenised on the pool's thread while the device runs batch i.
        with ThreadPoolExecutor(1, thread_name_prefix="coderag-tokenize") as pool:
            ahead = pool.submit(prepare, [texts[i] for i in batches[0]])
            for n, idx in enumerate(batches):
                try:
                    features = ahead.result()
                except Exception as exc:
                    raise EmbeddingError(
                        f"tokenising {len(idx)} texts failed: {type(exc).__name__}: {exc}"
                    ) from exc
                if n + 1 < len(batches):
                    ahead = pool.submit(prepare, [texts[i] for i in batches[n + 1]])
                self._run_batch(
                    model, idx, lambda _b, f=features: run(f), texts, tags, on_batch, query
                )
        return len(texts)

    def _run_batch(
        self,
        model: LoadedModel,
        idx: list[int],
        infer: Callable[[list[str]], np.ndarray],
        texts: list[str],
        tags: list[Any],
        on_batch: Callable[[list[Any], np.ndarray], None],
        query: bool,
    ) -> None:
        """One batch through the model under the inference gate, timed, handed on."""
        batch = [texts[i] for i in idx]
        t0 = time.perf_counter()
        with self._gate.turn(query=query):  # per batch: a query waits one batch at most
            try:
                vecs = infer(batch)
            except Exception as exc:
                raise EmbeddingError(
                    f"embedding {len(batch)} texts with {model.backend} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        with self._stats_lock:
            self.stats.seconds += time.perf_counter() - t0
        on_batch([tags[i] for i in idx], vecs)

    def _cache_get(self, cache: EmbeddingCache, keys: list[bytes]) -> list[np.ndarray | None]:
        try:
            return cache.get(self.model_id, keys)
        except Exception as exc:  # a cache is an optimisation, never an outage
            log.warning("embedding cache read failed (%s); embedding instead", exc)
            return [None] * len(keys)

    def _cache_put(self, cache: EmbeddingCache, keys: list[bytes], vecs: np.ndarray) -> None:
        try:
            cache.put(self.model_id, keys, vecs)
        except Exception as exc:  # same: the vectors are still returned
            log.warning("embedding cache write failed (%s); continuing uncached", exc)

    def close(self) -> None:
        """Close the cache file handles (the model stays loaded)."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None


@contextmanager
def _errors_counted(kind: str) -> Iterator[None]:
    """Count a call that raises, whatever the cause (no model, a load or inference failure):
    the caller gets no vectors either way, and that is what the embedding-errors alert is
    about. The metric module is imported here, not at the top: a worker must set up
    prometheus_client's multiprocess dir before anything imports the library."""
    try:
        yield
    except Exception:
        from coderag.metrics import EMBEDDING_ERRORS

        EMBEDDING_ERRORS.labels(kind=kind).inc()
        raise


def _load_trusted(src: ModelSource, device: str, precision: str = "auto") -> LoadedModel:
    """A model whose modeling code ships in its directory, on torch (no export: the code is
    the model's, not the exporters'). The hub stays off: code named in another hub repo
    (``org/repo--file.Class`` in ``auto_map``) fails to load instead of being fetched."""
    from coderag.errors import translate
    from embeddings.backends import PROBE_TEXTS, resolve_device
    from embeddings.backends.encode import STEncoder, load_st

    offline_hub()
    check_source(src)
    dev = resolve_device(device)
    with translate(EmbeddingError, f"loading embedding model {src.path} (trusted code)"):
        st = load_st(src.path, dev, trust_remote_code=True)
        encoder = STEncoder(st)
        dim = int(encoder.encode(PROBE_TEXTS[:1]).shape[1])
    info = {"precision": "fp32", "trust_remote_code": True}
    if precision in ("fp16", "bf16"):  # asked for explicitly: torch casts the whole model
        import torch

        st.to(torch.float16 if precision == "fp16" else torch.bfloat16)
        info["precision"] = precision
    return LoadedModel(encoder, "torch", dev, dim, int(st.max_seq_length), info)


def _load_tokenizer(src: ModelSource) -> Any:
    offline_hub()
    check_source(src)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src.path), local_files_only=True)
    except Exception as exc:
        raise EmbeddingError(f"loading the tokenizer of {src.path}: {exc}") from exc
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        # Counting must see whole texts: tokenizer.json may carry a truncation / padding
        # setting, and this private instance is only ever used for counting.
        backend.no_truncation()
        backend.no_padding()
    return tok


def _read_max_seq_length(src: ModelSource, tokenizer: Any) -> int:
    import json

    cfg = src.path / "sentence_bert_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text()).get("max_seq_length")
        if value:
            return int(value)
    limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
    model_cfg = src.path / "config.json"
    if model_cfg.is_file():
        pos = json.loads(model_cfg.read_text()).get("max_position_embeddings")
        if pos:
            limit = min(limit, int(pos))
    return limit
