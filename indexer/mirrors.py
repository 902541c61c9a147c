"""Bare mirrors of remote repositories, kept in the data dir and fetched on each push.

A mirror is a cache of the remote, so a damaged one (a disk error, a killed ``git gc``,
someone's ``rm`` in the data dir) is repaired by cloning it again rather than by failing
every run of the repository until an operator steps in: :func:`mirror_for_url` re-clones
when a fetch fails on a mirror that ``git fsck`` finds broken, and :func:`repair_mirror`
does the same when a run fails reading a mirror that had just fetched fine.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import uuid
from pathlib import Path

from coderag.errors import GitError
from coderag.settings import Settings
from indexer.git import GitRepo, redact_url

__all__ = ["mirror_for_url", "mirror_path", "repair_mirror"]

log = logging.getLogger(__name__)


def mirror_path(url: str, settings: Settings) -> Path:
    """A readable, collision-free folder name for ``url`` under the mirrors dir."""
    clean = redact_url(url).rstrip("/").removesuffix(".git")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", clean.split("://")[-1].split("@")[-1])[-80:]
    digest = hashlib.sha1(clean.encode()).hexdigest()[:10]
    return settings.mirrors_dir / f"{slug}-{digest}.git"


def _token(settings: Settings) -> str | None:
    return settings.gitlab_token.get_secret_value() if settings.gitlab_token else None


_LOCAL_DAMAGE = re.compile(
    r"corrupt|unable to unpack|inflate|bad object|loose object|index-pack failed"
    r"|unpack-objects failed|packfile .* cannot be accessed|missing (?:blob|tree|commit)",
    re.I,
)


def mirror_for_url(url: str, settings: Settings) -> Path:
    """Clone or refresh the mirror of ``url`` (token from settings, never in the URL).

    A fetch that fails on a mirror ``git fsck`` finds broken (or on a folder that is no
    repository any more) re-clones it; a fetch failing on a sound mirror is the remote's
    problem and raises :class:`GitError` for the task to retry.
    """
    path = mirror_path(url, settings)
    repo = GitRepo(path, token=_token(settings))
    try:
        repo.mirror_from(url)
    except GitError as exc:
        # A network or remote failure must not cost a full fsck on every retry (minutes on a
        # big repository); git's own words for a damaged local store earn the full check,
        # which also catches corrupt objects that no ref reaches any more.
        if not path.exists() or repo.is_sound(full=_LOCAL_DAMAGE.search(exc.detail) is not None):
            raise
        log.warning("mirror %s is damaged (%s): cloning it again", path.name, exc.detail[:200])
        _reclone(url, path, settings)
    return path


def repair_mirror(url: str, settings: Settings) -> bool:
    """Re-clone the mirror of ``url`` if a full ``git fsck`` finds it broken.

    Called after a run failed reading a mirror (a missing or corrupt object, a commit the
    fetch should have brought); returns whether it re-cloned, i.e. whether running again can
    succeed where the failure was not the remote's.
    """
    path = mirror_path(url, settings)
    if GitRepo(path).is_sound(full=True):
        return False
    log.warning("mirror %s fails git fsck: cloning it again", path.name)
    _reclone(url, path, settings)
    return True


def _reclone(url: str, path: Path, settings: Settings) -> None:
    """Clone beside the broken mirror, then swap: a failed clone leaves it as it was, and a
    reader never sees a half-cloned folder under the mirror's name."""
    tag = uuid.uuid4().hex[:8]
    fresh = path.with_name(f"{path.name}.clone-{tag}")
    try:
        GitRepo(fresh, token=_token(settings)).mirror_from(url)
    except GitError:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    broken = path.with_name(f"{path.name}.broken-{tag}")
    if path.exists():
        path.rename(broken)
    fresh.rename(path)
    shutil.rmtree(broken, ignore_errors=True)
