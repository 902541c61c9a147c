"""Per-model embedding settings: what a model needs besides its weights to give right vectors.

Models brought on approved media rarely work as a plain sentence-transformers directory with
no further word: CodeRankEmbed embeds queries with an instruction in front ("Represent this
query for searching relevant code: ") and documents without one; a raw Hugging Face checkpoint
has no pooling config (sentence-transformers then falls back to mean pooling, which is wrong
for a CLS-trained model); a long-context model is better capped at a sequence length the
CPU can afford. :class:`ModelOptions` holds those settings and applies them at embed time.

Every option that changes a vector is part of the model's identity
(:meth:`ModelOptions.id_suffix`, appended to :attr:`embeddings.Embedder.model_id`), so the
embedding cache and the index fingerprint keep two variants of the same weights apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from coderag.errors import ConfigError

if TYPE_CHECKING:
    from embeddings.backends import LoadedModel

__all__ = ["POOLINGS", "PRECISIONS", "ModelOptions"]

POOLINGS = ("mean", "cls", "lasttoken", "max")
"""Pooling modes sentence-transformers' ``Pooling`` module implements (its POOLING_MODES,
minus the rarely used weighted variants)."""
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
"""``auto``: the settings' ``embedding_precision`` (see :mod:`embeddings.backends.precision`).
``fp16`` runs on torch (CUDA); ``bf16`` on OpenVINO (CPU) or torch; ``int8`` on OpenVINO."""


@dataclass(frozen=True)
class ModelOptions:
    """How one model is run. The defaults change nothing: the model as its files say."""

    query_prefix: str = ""
    """Prepended to every query before embedding (an instruction, e.g. CodeRankEmbed's)."""
    document_prefix: str = ""
    """Prepended to every chunk before embedding (nomic-style ``search_document: ``)."""
    pooling: str | None = None
    """Override of the model's pooling (``mean``, ``cls``, ``lasttoken``, ``max``)."""
    max_seq_length: int | None = None
    """Override of the tokens read per text; chunks are budgeted to fit it."""
    precision: str = "auto"
    trust_remote_code: bool = False
    """Run the modeling code that ships in the model directory (``auto_map`` in its
    config.json: CodeRankEmbed's ``modeling_hf_nomic_bert.py``). It is Python from the
    directory, so it is an explicit choice; loads on torch only (nothing to export)."""

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.max_seq_length is not None and not 16 <= self.max_seq_length <= 1_000_000:
            raise ConfigError("max_seq_length must be between 16 and 1000000")
        for name in ("query_prefix", "document_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or "\x00" in value or len(value) > 1000:
                raise ConfigError(f"{name} must be a string of at most 1000 characters")

    @property
    def is_default(self) -> bool:
        return self == ModelOptions()

    def _vector_options(self) -> dict[str, Any]:
        """The options that change vectors (running trusted code changes none by itself;
        the precision has its own tag in the model id, ``~bf16``, since ``auto`` resolves
        per machine)."""
        out = self.as_dict()
        out.pop("trust_remote_code")
        out.pop("precision")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelOptions:
        known = {k: data[k] for k in ModelOptions.__dataclass_fields__ if k in data}
        return cls(**known)

    def id_suffix(self) -> str:
        """``""`` for the defaults (existing caches and indexes keep their id), else
        ``+<8 hex>`` of the options: vectors differ, so their cache and index must too."""
        if self._vector_options() == ModelOptions()._vector_options():
            return ""
        blob = json.dumps(self._vector_options(), sort_keys=True).encode()
        return "+" + hashlib.sha256(blob).hexdigest()[:8]

    def backend_for(self, requested: str) -> str:
        """The backend to ask for: fp16 and trusted code exist only on torch."""
        if self.precision != "fp16" and not self.trust_remote_code:
            return requested
        if requested == "auto":
            return "torch"
        if requested != "torch":
            why = "trust_remote_code" if self.trust_remote_code else f"precision {self.precision}"
            raise ConfigError(f"{why} needs the torch backend, not {requested}")
        return requested

    def apply(self, loaded: LoadedModel) -> None:
        """Put pooling and sequence length onto a loaded model, in place (the precision is
        chosen when it loads).

        The encoders keep sentence-transformers' own modules (torch and OpenVINO run the whole
        ``SentenceTransformer``; ONNX Runtime runs the transformer and then the same Pooling
        object), so changing the ``Pooling`` module's mode changes every backend alike.
        """
        st = _st_model(loaded.encoder)
        if self.pooling is not None:
            from sentence_transformers.sentence_transformer.modules import Pooling

            pools = [m for m in st.modules() if isinstance(m, Pooling)] if st is not None else []
            if not pools:
                raise ConfigError("pooling was set, but this model has no Pooling module")
            for pool in pools:
                pool.pooling_mode = self.pooling
            loaded.info["pooling"] = self.pooling
        if self.max_seq_length is not None:
            if st is not None:
                st.max_seq_length = self.max_seq_length
            if hasattr(loaded.encoder, "max_len"):  # the ONNX encoder tokenises itself
                loaded.encoder.max_len = self.max_seq_length
            loaded.max_seq_length = self.max_seq_length


def _st_model(encoder: Any) -> Any:
    """The ``SentenceTransformer`` behind an encoder (``STEncoder.model``, ``OnnxEncoder.st``)."""
    return getattr(encoder, "model", None) or getattr(encoder, "st", None)
