"""Composition root: settings -> index, embedder, chunker, indexer, retriever.

The only place that knows which concrete classes make up a running coderag. The CLI, the API
app factory, Celery workers and the eval harness all build their parts here, so the embedded
default and the distributed mode differ by configuration only.

The parts that depend on the embedding model (embedder, chunker, the model's index, indexer,
retriever) form one :class:`Serving` bundle, held in one attribute of the :class:`Runtime`.
A model switch (docs/MODELS.md) builds and warms the new bundle beside the old one and then
replaces that attribute: one reference assignment, atomic in Python. A request reads
``runtime.retriever`` once and searches with that retriever's embedder and index, so a query
embedded by one model never meets another model's vectors, whatever the switch does meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from chunkers import FileChunker
from chunkers.secrets import AllowList
from coderag.index import VectorIndex
from coderag.index.factory import DEFAULT_MODEL, open_index, open_model_index
from coderag.models_registry import ModelSpec
from coderag.settings import Settings
from embeddings import Embedder
from indexer.precision_guard import aligned_precision
from indexer.service import IndexService
from retriever.search import Retriever

if TYPE_CHECKING:
    from coderag.model_watch import ModelWatcher

__all__ = ["Runtime", "Serving", "build_runtime", "build_serving", "embedder_max_tokens"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """Everything that depends on one embedding model, swapped as one."""

    model: str
    """Registry name of the model (``default``: the settings' own)."""
    embedder: Embedder
    chunker: FileChunker
    index: VectorIndex
    indexer: IndexService
    retriever: Retriever


def _bundle_part(name: str) -> Any:
    """A property of :class:`Runtime` reading one part of the serving bundle. Its setter
    replaces that part in the bundle (tests share one warmed embedder between runtimes)."""

    def get(self: Runtime) -> Any:
        return getattr(self._serving, name)

    def put(self: Runtime, value: Any) -> None:
        with self._swap_lock:
            self._serving = replace(self._serving, **{name: value})

    return property(get, put, doc=f"The serving bundle's {name}.")


class Runtime:
    """The running parts. ``index`` / ``embedder`` / ``chunker`` / ``indexer`` /
    ``retriever`` are those of the serving bundle at the moment they are read; ``home`` is the
    index holding the site's records (repository registry, runs), whichever model serves."""

    def __init__(
        self, settings: Settings, serving: Serving, home: VectorIndex, *, follow: bool = True
    ) -> None:
        self.settings = settings
        self.follow = follow
        """Whether :meth:`warm_up` starts following the active model (not for a runtime
        built for one given model, such as an eval's)."""
        self.home = home
        self._serving = serving
        self._swap_lock = threading.Lock()
        self._retired: list[tuple[float, Serving]] = []
        self._parked: dict[str, Serving] = {}
        self._watcher: ModelWatcher | None = None
        self._closed = False
        self._stop_warming = threading.Event()
        self._live: VectorIndex = _LiveIndex(self)  # type: ignore[assignment]

    # --- the serving bundle ----------------------------------------------------------------------
    @property
    def serving(self) -> Serving:
        return self._serving

    @property
    def model(self) -> str:
        return self._serving.model

    @property
    def index(self) -> VectorIndex:
        """The index being served *now*, read anew at every call: what long-lived holders
        (the repo registry, the reconciler, MCP reads) keep, so they follow a switch. A
        search never goes through it: the retriever holds its own bundle's index."""
        return self._live

    @index.setter
    def index(self, value: VectorIndex) -> None:
        with self._swap_lock:
            self._serving = replace(self._serving, index=value)

    embedder = _bundle_part("embedder")
    chunker = _bundle_part("chunker")
    indexer = _bundle_part("indexer")
    retriever = _bundle_part("retriever")

    def parked(self, model: str) -> Serving | None:
        """The bundle of ``model`` kept warm since it was switched away from (only the home
        index's bundle is kept: its index stays open for the site's records anyway)."""
        return self._parked.get(model)

    def swap(self, new: Serving) -> Serving:
        """Serve ``new`` from now on (it must be warm); the old bundle stays open for the
        requests that hold it and is closed ``model_retire_seconds`` later (the home
        index's bundle is parked instead, for a rollback without reloading)."""
        with self._swap_lock:
            old, self._serving = self._serving, new
            self._parked.pop(new.model, None)
            if old.index is self.home:
                self._parked[old.model] = old
            elif old.index is not new.index:
                self._retired.append((time.monotonic() + self.settings.model_retire_seconds, old))
        log.info("serving model", extra={"model": new.model, "previous": old.model})
        return old

    def close_retired(self, *, now: float | None = None) -> int:
        """Close retired bundles whose grace period ended; returns how many."""
        now = time.monotonic() if now is None else now
        with self._swap_lock:
            due = [s for t, s in self._retired if t <= now]
            self._retired = [(t, s) for t, s in self._retired if t > now]
        for s in due:
            _close_bundle(s)
        return len(due)

    def prepare(self, name: str) -> Serving:
        """The bundle of registered model ``name``, built beside the served one and warmed
        (model loaded, index opened), ready for :meth:`swap`; nothing is left open if it
        cannot be made ready."""
        from coderag.models_registry import ModelRegistry

        spec = ModelRegistry.of(self.settings).spec(name, self.settings)
        t0 = time.perf_counter()
        bundle = build_serving(self.settings, spec, home=self.home)
        try:
            bundle.embedder.warm_up()
            bundle.index.ensure(bundle.embedder.dim)
        except BaseException:
            if bundle.index is not self.home:
                _close_bundle(bundle)
            raise
        log.info(
            "model ready",
            extra={"model": name, "warm_up_s": round(time.perf_counter() - t0, 3)},
        )
        return bundle

    # --- lifecycle -------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the model and open the index: call once from a lifespan / worker init. Also
        starts the watcher that follows model switches (``model_watch_seconds``)."""
        serving = self._serving
        serving.embedder.warm_up()
        serving.index.ensure(serving.embedder.dim)
        watch = self.follow and self.settings.model_watch_seconds > 0
        if watch and self._watcher is None and not self._closed:
            from coderag.model_watch import ModelWatcher

            self._watcher = ModelWatcher(self).start()

    def warm_search_cache(self) -> threading.Thread | None:
        """Fill the served index's candidate field cache on a daemon thread, so the first
        searches after a start do not each read their candidates' fields (an index without
        such a cache returns at once). For serving processes: a one-shot command would only
        pay for the scan."""
        warm = getattr(self._serving.index, "warm_candidate_cache", None)
        if warm is None or self._closed:
            return None

        def run() -> None:
            t0 = time.perf_counter()
            try:
                n = warm(self._stop_warming)
            except Exception as exc:  # a cold cache is slower, not wrong: log and go on
                log.warning("search cache warm-up failed: %r", exc)
                return
            log.info(
                "search cache warm",
                extra={"points": n, "seconds": round(time.perf_counter() - t0, 3)},
            )

        t = threading.Thread(target=run, name="coderag-cache-warm", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_warming.set()
        if self._watcher is not None:
            self._watcher.stop()
        with self._swap_lock:
            bundles = [s for _, s in self._retired] + [self._serving, *self._parked.values()]
            self._retired = []
            self._parked = {}
        for s in bundles:
            if s.index is not self.home:
                _close_bundle(s)
        self.home.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LiveIndex:
    """Forwards every call to the serving bundle's index of the moment."""

    def __init__(self, runtime: Runtime) -> None:
        object.__setattr__(self, "_runtime", runtime)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime.serving.index, name)

    def __setattr__(self, name: str, value: Any) -> None:  # a test's patch reaches the index
        setattr(self._runtime.serving.index, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._runtime.serving.index, name)

    def __repr__(self) -> str:
        return f"<live index of {self._runtime.serving.index!r}>"


def _close_bundle(s: Serving) -> None:
    with contextlib.suppress(Exception):  # closing: a failure changes nothing for anyone
        s.index.close()
    with contextlib.suppress(Exception):
        s.embedder.close()


def build_runtime(
    settings: Settings, *, index: VectorIndex | None = None, model: ModelSpec | None = None
) -> Runtime:
    """Wire the parts. Cheap: the model loads in :meth:`Runtime.warm_up` or on first use.

    ``index``: the home index to use instead of the settings' (tests). ``model``: serve this
    model instead of the active one (``coderag eval history --model``)."""
    home = index if index is not None else open_index(settings)
    follow = model is None
    if model is None:
        from coderag.model_active import active_spec

        model = active_spec(settings, home)
    return Runtime(settings, build_serving(settings, model, home=home), home, follow=follow)


def build_serving(
    settings: Settings,
    spec: ModelSpec,
    *,
    home: VectorIndex | None = None,
    index: VectorIndex | None = None,
) -> Serving:
    """One model's bundle, not loaded. Its index is ``index`` if given, else the model's own
    (:func:`coderag.index.factory.open_model_index`) with the site's records in ``home``."""
    if spec.name == DEFAULT_MODEL and spec.path is None and spec.options.is_default:
        embedder = Embedder.from_settings(settings)
    else:
        embedder = Embedder.from_settings(settings, model=spec.path, options=spec.options)
    if index is None:
        own = open_model_index(settings, spec.name, home)
        if home is not None and own is not home:
            from coderag.index.split import SplitStateIndex

            own = SplitStateIndex(own, home)
        index = own
    # Under precision auto, load the precision this index already holds (read at load).
    store = index
    embedder.align_precision(lambda: aligned_precision(store, embedder.base_id))
    max_tokens = min(settings.chunk_max_tokens, embedder_max_tokens(embedder))
    chunker = FileChunker(
        count_tokens=_token_counter(embedder),
        max_tokens=max_tokens,
        min_tokens=min(settings.chunk_min_tokens, max_tokens),
        max_file_bytes=settings.max_file_bytes,
        redact_secrets=settings.redact_secrets,
        redact_allow=AllowList.parse(settings.redact_allow)[0],
    )
    indexer = IndexService(index, embedder, chunker, extra_ignore=settings.extra_ignore)
    retriever = Retriever(
        index,
        embedder,
        reranker_model=settings.reranker_model,
        max_per_file=settings.max_per_file,
    )
    return Serving(spec.name, embedder, chunker, index, indexer, retriever)


def _token_counter(embedder: Embedder):  # type: ignore[no-untyped-def]
    """The exact counter of the model's own tokenizer. ``tokenizer_counter`` counts each file
    once (line by line for WordPiece models) instead of calling the tokenizer per candidate
    chunk, which made chunking ~4x slower; any other tokenizer gets the plain callable."""
    from chunkers.tokens import tokenizer_counter

    try:
        backend = embedder.tokenizer.backend_tokenizer
    except Exception:  # no fast tokenizer: count through the embedder
        return lambda text: embedder.count_tokens([text])[0]
    return tokenizer_counter(backend)


def embedder_max_tokens(embedder: Embedder) -> int:
    """The model's own sequence limit, less what the document prefix takes: a chunk longer
    than this would be silently truncated."""
    try:
        limit = int(embedder.max_seq_length)
    except Exception:
        return 10**6
    prefix = embedder.options.document_prefix
    if prefix:
        with contextlib.suppress(Exception):
            with_prefix, bare = embedder.count_tokens([prefix, ""])
            limit -= max(0, with_prefix - bare)
    return max(16, limit)
