"""Model backends, split by job as sentence-transformers' ``backend/`` is:

- :mod:`~embeddings.backends.source`: finding and checking a model directory (never a hub);
- :mod:`~embeddings.backends.check`: the probe texts and the cosine a backend must keep;
- :mod:`~embeddings.backends.export`: exporting for OpenVINO / ONNX Runtime, cached on disk;
- :mod:`~embeddings.backends.encode`: the encoders that run a batch;
- :mod:`~embeddings.backends.load`: choosing device and backend, loading, falling back.

Nothing here downloads anything: models load with ``local_files_only`` and the hub is
switched offline before transformers is first imported.
"""

from __future__ import annotations

from embeddings.backends.check import MIN_COSINE, PROBE_TEXTS
from embeddings.backends.encode import Encoder, normalize
from embeddings.backends.load import (
    BACKENDS,
    LoadedModel,
    available_backends,
    load_model,
    resolve_device,
)
from embeddings.backends.source import (
    BUNDLED_NAME,
    ModelSource,
    check_source,
    offline_hub,
    resolve_model,
)

__all__ = [
    "BACKENDS",
    "BUNDLED_NAME",
    "MIN_COSINE",
    "PROBE_TEXTS",
    "Encoder",
    "LoadedModel",
    "ModelSource",
    "available_backends",
    "check_source",
    "load_model",
    "normalize",
    "offline_hub",
    "resolve_device",
    "resolve_model",
]
