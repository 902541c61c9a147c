"""Bringing in a better embedding model: add, build a shadow index, switch, roll back.

The steps (docs/MODELS.md has the operator's view):

1. :func:`add_model` checks a model directory offline (loads it from local files only, embeds
   a probe, records its dimension and fingerprint) and registers it
   (:class:`coderag.models_registry.ModelRegistry`). Nothing is downloaded, ever.
2. :func:`build_shadow` re-embeds every branch the served index holds, at the commit it holds
   it, into the model's own index, through the one indexing path there is
   (:meth:`indexer.service.IndexService.index` with that model's embedder and index), so the
   shadow holds exactly the points the indexer writes. Re-running continues where it stopped
   (the indexer is incremental and writes a branch's state last) and catches up with commits
   indexed since; branches the served index no longer has are removed.
3. :func:`check_shadow` compares the two indexes' branch states; :func:`switch` refuses
   unless every served branch is in the shadow at the same commit with the shadow model's
   current fingerprint (model files, options, chunker version), so nothing half-built is
   ever served. Then one atomic step: the collection alias on a Qdrant server, the registry
   file's ``active`` (one ``os.replace``) on Edge. Serving processes follow within
   ``model_watch_seconds`` (:mod:`coderag.model_watch`).
4. :func:`rollback` switches back to the previous model. Its index may lag behind (pushes
   since the switch went to the new model only): that is allowed and reported, since it is
   complete at older commits and the next push or reconciliation pass brings each branch up
   to date; a branch written with another fingerprint is still refused.

Where the shadow is built: in the process that runs the command. On Edge the serving process
owns the served shard (and the home index that holds the site's records), never the shadow's,
which lives in its own directory with its own LOCK; the command reads the served index's
state file without taking it over (:func:`coderag.index.edge.read_state_file`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coderag.errors import ConfigError, ConflictError, InputError
from coderag.index.factory import (
    DEFAULT_MODEL,
    active_alias,
    model_collection,
    open_model_index,
    peek_state,
)
from coderag.index.payload import branch_state_prefix
from coderag.model_active import active_model, active_spec, with_server
from coderag.models_registry import ModelRegistry, ModelSpec, check_model_name
from embeddings.options import ModelOptions

if TYPE_CHECKING:
    from coderag.index.base import VectorIndex
    from coderag.settings import Settings
    from indexer.service import ProgressFn

__all__ = [
    "BranchTarget",
    "ShadowCheck",
    "active_model",
    "active_spec",
    "add_model",
    "build_shadow",
    "check_shadow",
    "rollback",
    "shadow_targets",
    "switch",
]

log = logging.getLogger(__name__)

_BRANCH = branch_state_prefix()
_PROBES = (
    "def retry(fn, attempts=3):\n    for i in range(attempts):\n        try:\n"
    "            return fn()\n        except OSError:\n            continue",
    "where do we retry failed requests?",
)


# --- which model serves ----------------------------------------------------------------------


# --- adding a model --------------------------------------------------------------------------


def add_model(
    settings: Settings,
    path: Path,
    *,
    name: str | None = None,
    options: ModelOptions | None = None,
    replace: bool = False,
) -> ModelSpec:
    """Check ``path`` offline and register it. Loads the model from its files only (the hub
    is switched off before transformers is imported), embeds a probe query and document,
    and refuses vectors that are not finite unit vectors."""
    import numpy as np

    from embeddings import Embedder

    path = Path(path).expanduser()
    if not path.is_dir():
        raise InputError(
            f"{path} is not a directory: coderag never downloads models; copy the model "
            "directory onto this machine and name it"
        )
    path = path.resolve()
    options = options or ModelOptions()
    model_name = check_model_name(name or _slug(path.name))
    # torch is the reference backend: checking the files needs no export (the first build
    # exports for the configured backend, once, and checks it against torch).
    emb = Embedder(
        model=path,
        backend=options.backend_for("torch"),
        device=settings.embedding_device,
        models_dir=settings.models_dir,
        options=options,
    )
    try:
        queries = emb.embed_queries([_PROBES[1]])
        docs = emb.embed_documents([_PROBES[0]])
    finally:
        emb.close()
    for vecs in (queries, docs):
        norms = np.linalg.norm(vecs, axis=1)
        if not np.all(np.isfinite(vecs)) or not np.allclose(norms, 1.0, atol=1e-3):
            raise ConfigError(f"{path}: the probe embeddings are not finite unit vectors")
    spec = ModelSpec(
        name=model_name,
        path=str(path),
        options=options,
        fingerprint=emb.model_id,
        dim=int(queries.shape[1]),
    )
    ModelRegistry.of(settings).add(spec, replace_existing=replace)
    return spec


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:48]
    return slug or "model"


# --- what a shadow must hold ------------------------------------------------------------------


@dataclass(frozen=True)
class BranchTarget:
    """One served branch: what the shadow must index, and from where."""

    repo: str
    branch: str
    commit: str
    source: Path | None
    """A local git repository (the mirror) or folder; ``None`` when none is known."""
    missing: str | None = None

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.branch}"


def shadow_targets(
    settings: Settings,
    *,
    sources: Mapping[str, Path] | None = None,
    home: VectorIndex | None = None,
) -> list[BranchTarget]:
    """Every branch of the served index with its commit and source: ``sources`` (repo ->
    local path) first, else the mirror of the registered repository's URL."""
    from coderag.repos import REPO_STATE_PREFIX, RepoRecord
    from indexer.mirrors import mirror_path

    sources = dict(sources or {})
    active = active_model(settings, home)
    states = peek_state(settings, active, _BRANCH, home)
    records = peek_state(settings, DEFAULT_MODEL, REPO_STATE_PREFIX, home)
    urls = {}
    for raw in records.values():
        try:
            rec = RepoRecord.model_validate(raw)
        except ValueError:
            continue
        urls[rec.id] = rec.url
    out = []
    for st in sorted(states.values(), key=lambda s: (str(s.get("repo")), str(s.get("branch")))):
        repo, branch, commit = str(st["repo"]), str(st["branch"]), str(st.get("commit") or "")
        src, missing = sources.get(repo), None
        if src is None and repo in urls:
            mirror = mirror_path(urls[repo], settings)
            src = mirror if mirror.exists() else None
            missing = None if src else f"its mirror {mirror.name} is missing"
        elif src is None:
            missing = f"indexed from a local path: pass --source {repo}=PATH"
        out.append(BranchTarget(repo, branch, commit, Path(src) if src else None, missing))
    return out


@dataclass
class ShadowCheck:
    """How a model's index compares with the served one."""

    model: str
    active: str
    branches: int
    problems: list[str] = field(default_factory=list)
    """Refusals: a branch not built, built with another fingerprint, or at another commit."""
    behind: list[str] = field(default_factory=list)
    """Branches that lag (only collected for a rollback, where they are allowed)."""
    extra: list[str] = field(default_factory=list)
    """Branches this index holds that are no longer served: a removed repository's among
    them, so serving them again would show code that was taken out. Refused unless a
    rollback is forced."""

    @property
    def complete(self) -> bool:
        return not self.problems and not self.extra


def expected_fingerprint(
    settings: Settings, spec: ModelSpec, home: VectorIndex | None = None
) -> str:
    """The fingerprint the indexer would write for ``spec`` now (model files and options,
    precision, chunk budget, secret rules, chunker version). Loads the tokenizer only.
    ``home``: this process's open home index, reused rather than opened twice (the precision
    under ``auto`` is read from the index, see :mod:`indexer.precision_guard`)."""
    from coderag.runtime import build_serving

    idx = open_model_index(settings, spec.name, home)
    try:
        serving = build_serving(settings, spec, index=idx)
        return serving.indexer.fingerprint()
    finally:
        if home is None:  # ours to close; a sibling of home shares its client
            idx.close()


def check_shadow(
    settings: Settings,
    name: str,
    *,
    allow_behind: bool = False,
    home: VectorIndex | None = None,
) -> ShadowCheck:
    registry = ModelRegistry.of(settings)
    spec = registry.spec(name, settings)
    active = active_model(settings, home)
    served = peek_state(settings, active, _BRANCH, home)
    check = ShadowCheck(name, active, len(served))
    if name == active:
        return check
    fp = expected_fingerprint(settings, spec, home)
    built = peek_state(settings, name, _BRANCH, home)
    for key, st in sorted(served.items()):
        label = f"{st.get('repo')}@{st.get('branch')}"
        mine = built.get(key)
        if mine is None:
            (check.behind if allow_behind else check.problems).append(f"{label}: not built")
        elif mine.get("fingerprint") != fp:
            check.problems.append(
                f"{label}: written with another model, options, precision or chunker version "
                f"({mine.get('fingerprint')}, expected {fp}; run `coderag models build` again)"
            )
        elif mine.get("commit") != st.get("commit"):
            where = f"at {str(mine.get('commit'))[:12]}, served at {str(st.get('commit'))[:12]}"
            (check.behind if allow_behind else check.problems).append(f"{label}: {where}")
    for key, st in sorted(built.items()):
        if key not in served:
            label = f"{st.get('repo')}@{st.get('branch')}"
            check.extra.append(f"{label}: no longer served (`coderag models build` removes it)")
    return check


# --- building ---------------------------------------------------------------------------------


def build_shadow(
    settings: Settings,
    name: str,
    *,
    sources: Mapping[str, Path] | None = None,
    progress: ProgressFn | None = None,
    on_branch: Callable[[BranchTarget, int, int], None] | None = None,
    home: VectorIndex | None = None,
) -> list[dict[str, Any]]:
    """Bring ``name``'s index to the served index's branches and commits (see module doc).

    Returns one entry per branch: the indexer's report, or the reason it was not built.
    ``home``: the site's index when the caller has it open (a server client to share)."""
    from coderag.runtime import build_serving

    registry = ModelRegistry.of(settings)
    spec = registry.spec(name, settings)
    active = active_model(settings, home)
    if name == active:
        raise InputError(f"model {name!r} is serving: the indexer keeps its index current")
    targets = shadow_targets(settings, sources=sources, home=home)
    index = open_model_index(settings, name, home)
    owned = index is not home  # the caller's own index (``default`` on a server) stays open
    serving = build_serving(settings, spec, index=index)
    results: list[dict[str, Any]] = []
    try:
        if spec.fingerprint and serving.embedder.model_id != spec.fingerprint:
            raise ConfigError(
                f"the files of model {name!r} changed since it was added "
                f"({spec.fingerprint} -> {serving.embedder.model_id}); add it again"
            )
        for i, t in enumerate(targets):
            if on_branch is not None:
                on_branch(t, i, len(targets))
            if t.source is None:
                results.append({"repo": t.repo, "branch": t.branch, "error": t.missing})
                continue
            from indexer.git import GitRepo

            commit = t.commit if GitRepo(t.source).is_repo() and t.commit else None
            try:
                report = serving.indexer.index(t.source, t.repo, t.branch, commit, progress)
            except Exception as exc:  # one branch's failure leaves the others to build
                detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
                results.append({"repo": t.repo, "branch": t.branch, "error": detail})
                continue
            results.append(report.as_dict())
        wanted = {(t.repo, t.branch) for t in targets}
        for st in list(index.list_state(_BRANCH).values()):
            repo, branch = str(st.get("repo")), str(st.get("branch"))
            if (repo, branch) not in wanted:
                removed = serving.indexer.delete_branch(repo, branch)
                results.append({"repo": repo, "branch": branch, "removed": removed})
    finally:
        if owned:
            index.close()
        serving.embedder.close()
    return results


# --- switching --------------------------------------------------------------------------------


def switch(settings: Settings, name: str, *, home: VectorIndex | None = None) -> dict[str, Any]:
    """Serve ``name`` from now on, if its index is complete (else :class:`ConflictError`
    naming every incomplete branch)."""
    check = check_shadow(settings, name, home=home)
    if check.active == name:
        return {"model": name, "switched": False, "previous": None, "branches": check.branches}
    if not check.complete:
        raise ConflictError(
            f"refusing to switch to {name!r}: its index does not match the "
            f"{check.branches} served branches: " + "; ".join((check.problems + check.extra)[:20])
        )
    _flip(settings, name, check.active, home)
    return {"model": name, "switched": True, "previous": check.active, "branches": check.branches}


def rollback(
    settings: Settings, *, force: bool = False, home: VectorIndex | None = None
) -> dict[str, Any]:
    """Serve the previous model again. Its index may lag (reported, not refused); branches
    it holds that are no longer served are refused unless ``force``."""
    registry = ModelRegistry.of(settings)
    previous = registry.read().previous
    if previous is None:
        raise InputError("no previous model to roll back to")
    check = check_shadow(settings, previous, allow_behind=True, home=home)
    if check.problems or (check.extra and not force):
        hint = "" if check.problems else " (--force serves them; remove such repos again after)"
        raise ConflictError(
            f"refusing to roll back to {previous!r}: "
            + "; ".join((check.problems + check.extra)[:20])
            + hint
        )
    if check.active != previous:
        _flip(settings, previous, check.active, home)
    return {
        "model": previous,
        "switched": check.active != previous,
        "previous": check.active,
        "behind": check.behind + check.extra,
    }


def _flip(settings: Settings, name: str, current: str, home: VectorIndex | None) -> None:
    """The one atomic step. Server: the alias (what every process follows), then the local
    registry (for ``rollback``). Edge: the registry file, which is the pointer."""
    registry = ModelRegistry.of(settings)
    if settings.resolved_backend == "server":
        collection = model_collection(settings, name)
        spec = registry.spec(name, settings)

        def point(idx: Any) -> None:
            target = idx.sibling(collection)
            if not target.exists():  # nothing served yet, so nothing built: an empty index
                if not spec.dim:
                    raise ConfigError(f"collection {collection!r} does not exist yet")
                target.ensure(spec.dim)
            idx.point_alias(active_alias(settings), collection)

        with_server(settings, home, point)
        registry.set_active(name, previous=current)
    else:
        registry.set_active(name, expect=current)
    log.info("model switched", extra={"model": name, "previous": current})
