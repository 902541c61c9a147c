"""The registry of embedding models a site brought, and which one serves.

One JSON file in the data dir (``settings.model_registry_file``), written whole to a temporary
file and renamed over the old one (``os.replace``), under an advisory lock so that two
commands never lose each other's change. A reader therefore always sees one complete version,
which is what makes the file usable as the Edge backend's *atomic pointer*: the ``active``
field names the model whose index is served, and a serving process that sees the file change
swaps to that model's (embedder, index) pair at once (:mod:`coderag.model_watch`).

Layout::

    {"format": 1, "generation": 7, "active": "coderank", "previous": "default",
     "models": {"coderank": {"path": ..., "query_prefix": ..., "document_prefix": ...,
                             "pooling": ..., "max_seq_length": ..., "precision": ...,
                             "fingerprint": "CodeRankEmbed@0123abcd...+9f0e1d2c",
                             "dim": 768, "added_at": 1767225600.0}}}

``default`` is not stored: it is always the model the settings name (``CODERAG_EMBEDDING_MODEL``
or the bundled MiniLM) with no options, served from the index that existed before any model
was added, so a site that never adds a model sees no change at all. ``active: null`` means
``default``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coderag.atomic import atomic_write
from coderag.errors import ConfigError, InputError, NotFoundError
from coderag.index.factory import DEFAULT_MODEL
from embeddings.options import ModelOptions

if TYPE_CHECKING:
    from coderag.settings import Settings

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_NAME_PATTERN",
    "ModelRegistry",
    "ModelSpec",
    "RegistryFile",
    "check_model_name",
    "default_spec",
]

MODEL_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,47}"
"""Lower-case letters, digits, ``-`` and ``_``: the name is used as is in a Qdrant collection
name (``<collection>__<name>``) and an Edge shard directory, so it needs no escaping."""
_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_RESERVED = {DEFAULT_MODEL, "active"}
_FORMAT = 1


def check_model_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InputError(
            f"model name {name!r}: use 1-48 lower-case letters, digits, '-' or '_' "
            "(it names a collection and a directory)"
        )
    return name


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its files are and how to run it."""

    name: str
    path: str | None
    """Local model directory; ``None`` only for ``default`` (the bundled model)."""
    options: ModelOptions = field(default_factory=ModelOptions)
    fingerprint: str | None = None
    """The embedder's model id when it was added (weights + options): a build refuses to
    write an index for files that changed since."""
    dim: int | None = None
    added_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            **self.options.as_dict(),
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "added_at": self.added_at,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> ModelSpec:
        return cls(
            name=name,
            path=data.get("path"),
            options=ModelOptions.from_dict(data),
            fingerprint=data.get("fingerprint"),
            dim=data.get("dim"),
            added_at=data.get("added_at"),
        )


@dataclass(frozen=True)
class RegistryFile:
    """One complete version of the registry file."""

    models: dict[str, ModelSpec] = field(default_factory=dict)
    active: str = DEFAULT_MODEL
    previous: str | None = None
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "generation": self.generation,
            "active": None if self.active == DEFAULT_MODEL else self.active,
            "previous": self.previous,
            "models": {n: s.to_json() for n, s in sorted(self.models.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegistryFile:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ConfigError("model registry: unknown format (written by a newer coderag?)")
        models = {n: ModelSpec.from_json(n, v) for n, v in (data.get("models") or {}).items()}
        return cls(
            models=models,
            active=data.get("active") or DEFAULT_MODEL,
            previous=data.get("previous"),
            generation=int(data.get("generation") or 0),
        )


class ModelRegistry:
    """Reads and changes the registry file. Cheap; nothing is read until asked."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, settings: Settings) -> ModelRegistry:
        return cls(settings.model_registry_file)

    # --- reading -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def signature(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime ns): changes with every replace, for a once-a-second check
        that costs one ``stat``. ``None`` when there is no registry."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> RegistryFile:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return RegistryFile()
        except OSError as exc:
            raise ConfigError(f"cannot read the model registry {self.path}: {exc}") from exc
        try:
            return RegistryFile.from_json(json.loads(text))
        except ValueError as exc:
            raise ConfigError(f"corrupt model registry {self.path}: {exc}") from exc

    def spec(self, name: str, settings: Settings, data: RegistryFile | None = None) -> ModelSpec:
        """The spec of ``name``; ``default`` is built from the settings."""
        if name == DEFAULT_MODEL:
            return default_spec(settings)
        data = data if data is not None else self.read()
        found = data.models.get(name)
        if found is None:
            known = ", ".join([DEFAULT_MODEL, *sorted(data.models)])
            raise NotFoundError(f"no model named {name!r} (known: {known})")
        return found

    # --- changing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[RegistryFile]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield self.read()
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write(self, data: RegistryFile) -> RegistryFile:
        new = replace(data, generation=data.generation + 1)
        atomic_write(self.path, json.dumps(new.to_json(), indent=2, sort_keys=True) + "\n")
        return new

    def add(self, spec: ModelSpec, *, replace_existing: bool = False) -> RegistryFile:
        check_model_name(spec.name)
        if spec.name in _RESERVED:
            raise InputError(f"{spec.name!r} is reserved; pick another --name")
        with self._locked() as data:
            if spec.name in data.models and not replace_existing:
                raise InputError(f"model {spec.name!r} exists; pass --replace to overwrite it")
            if spec.name == data.active and replace_existing:
                raise InputError(f"model {spec.name!r} is serving; switch away before replacing")
            models = {**data.models, spec.name: replace(spec, added_at=time.time())}
            return self._write(replace(data, models=models))

    def set_active(
        self, name: str, *, expect: str | None = None, previous: str | None = None
    ) -> RegistryFile:
        """Make ``name`` active and the current one (or ``previous``) the rollback target:
        one atomic replace of the file. ``expect``: refuse if another command switched
        meanwhile."""
        with self._locked() as data:
            if expect is not None and data.active != expect:
                raise InputError(
                    f"the active model changed to {data.active!r} meanwhile; run it again"
                )
            if name != DEFAULT_MODEL and name not in data.models:
                raise NotFoundError(f"no model named {name!r}")
            before = previous if previous is not None else data.active
            if name == data.active and before == data.previous:
                return data
            return self._write(replace(data, active=name, previous=before))


def default_spec(settings: Settings) -> ModelSpec:
    """``default``: the settings' model, no options, in the index that predates models."""
    path = str(settings.embedding_model) if settings.embedding_model else None
    return ModelSpec(name=DEFAULT_MODEL, path=path)


