"""Where files come from: a git commit, or a plain directory on disk.

Both give the indexer the same thing, a list of (path, content-id) pairs and a way to read
bytes, so the indexing service has one code path. A plain directory is indexed as a snapshot
(its "commit" is a hash of the listing), which is how the BEIR evaluation and ad-hoc local
folders get indexed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from chunkers.skip import check_path
from coderag.models import SkippedFile
from indexer.git import GitRepo

__all__ = ["DirSource", "GitSource", "SourceFile"]


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # repo-relative, '/'-separated
    key: str  # blob sha (git) or abs path (dir); what read() takes
    size: int


class GitSource:
    """Files of one commit of a local (possibly bare) git repository."""

    def __init__(self, repo: GitRepo, commit: str) -> None:
        self.repo = repo
        self.commit = commit

    def listing(self) -> tuple[list[SourceFile], list[SkippedFile]]:
        files: list[SourceFile] = []
        skipped: list[SkippedFile] = []
        for e in self.repo.ls_tree(self.commit):
            unsafe = check_path(e.path)  # the raw tree path: a '..' or '.' entry, odd bytes
            if unsafe is not None:
                skipped.append(unsafe)
            elif e.is_submodule:
                skipped.append(SkippedFile(e.path, "submodule"))
            elif e.is_symlink:
                # A symlink's target may point outside the repository: never follow it.
                skipped.append(SkippedFile(e.path, "symlink"))
            else:
                files.append(SourceFile(e.path, e.sha, e.size))
        return files, skipped

    def select(self, paths: Sequence[str]) -> tuple[list[SourceFile], list[SkippedFile]]:
        wanted = set(paths)
        files, skipped = self.listing()
        return (
            [f for f in files if f.path in wanted],
            [s for s in skipped if s.path in wanted],
        )

    def read(self, files: Sequence[SourceFile]) -> Iterator[tuple[SourceFile, bytes]]:
        by_sha: dict[str, list[SourceFile]] = {}
        for f in files:
            by_sha.setdefault(f.key, []).append(f)
        for sha, data in self.repo.read_blobs(list(by_sha)):
            for f in by_sha[sha]:
                yield f, data

    def gitignore_lines(self, files: Sequence[SourceFile]) -> dict[str, list[str]]:
        """Contents of every .gitignore in the tree, keyed by its directory."""
        out: dict[str, list[str]] = {}
        ignores = [f for f in files if f.path == ".gitignore" or f.path.endswith("/.gitignore")]
        for f, data in self.read(ignores):
            out[f.path.rpartition("/")[0]] = data.decode("utf-8", "replace").splitlines()
        return out


class DirSource:
    """Files under a directory (not a git repository). Symlinks are never followed."""

    _PRUNE: ClassVar[frozenset[str]] = frozenset(
        {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", ".tox"}
    )

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def listing(self) -> tuple[list[SourceFile], list[SkippedFile]]:
        files: list[SourceFile] = []
        skipped: list[SkippedFile] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
            for d in list(dirnames):
                if d in self._PRUNE:
                    dirnames.remove(d)
                    skipped.append(SkippedFile(_join(rel_dir, d) + "/", "vendored"))
                elif os.path.islink(os.path.join(dirpath, d)):
                    # Not descended into (followlinks=False), and said so: never silent.
                    dirnames.remove(d)
                    skipped.append(SkippedFile(_join(rel_dir, d), "symlink"))
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = _join(rel_dir, name)
                if os.path.islink(full):
                    skipped.append(SkippedFile(rel, "symlink"))
                    continue
                try:
                    size = os.stat(full).st_size
                except OSError as exc:
                    skipped.append(SkippedFile(rel, "unreadable", str(exc)))
                    continue
                files.append(SourceFile(rel, full, size))
        files.sort(key=lambda f: f.path)
        return files, skipped

    def select(self, paths: Sequence[str]) -> tuple[list[SourceFile], list[SkippedFile]]:
        wanted = set(paths)
        files, skipped = self.listing()
        return [f for f in files if f.path in wanted], [s for s in skipped if s.path in wanted]

    def read(self, files: Sequence[SourceFile]) -> Iterator[tuple[SourceFile, bytes]]:
        for f in files:
            with open(f.key, "rb") as fh:
                yield f, fh.read()

    def gitignore_lines(self, files: Sequence[SourceFile]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in files:
            if f.path == ".gitignore" or f.path.endswith("/.gitignore"):
                out[f.path.rpartition("/")[0]] = (
                    Path(f.key).read_text("utf-8", "replace").splitlines()
                )
        return out

    def snapshot_id(self, files: Sequence[SourceFile]) -> str:
        """A stable id of the directory's state (paths, sizes, mtimes)."""
        h = hashlib.sha1()
        for f in files:
            st = os.stat(f.key)
            h.update(f"{f.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "replace"))
        return "dir-" + h.hexdigest()


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b
