"""Bare mirrors of remote repositories, kept in the data dir and fetched on each push."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from coderag.settings import Settings
from indexer.git import GitRepo, redact_url

__all__ = ["mirror_for_url", "mirror_path"]


def mirror_path(url: str, settings: Settings) -> Path:
    """A readable, collision-free folder name for ``url`` under the mirrors dir."""
    clean = redact_url(url).rstrip("/").removesuffix(".git")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", clean.split("://")[-1].split("@")[-1])[-80:]
    digest = hashlib.sha1(clean.encode()).hexdigest()[:10]
    return settings.mirrors_dir / f"{slug}-{digest}.git"


def mirror_for_url(url: str, settings: Settings) -> Path:
    """Clone or refresh the mirror of ``url`` (token from settings, never in the URL)."""
    token = settings.gitlab_token.get_secret_value() if settings.gitlab_token else None
    path = mirror_path(url, settings)
    GitRepo(path, token=token).mirror_from(url)
    return path
