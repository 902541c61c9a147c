"""The git CLI, wrapped: trees, diffs, blobs, and bare mirrors.

We shell out to git rather than binding libgit2: git is on every box, speaks every
transport and credential setup an operator already has, and its plumbing output
(``ls-tree -z``, ``diff --name-status -z``, ``cat-file --batch``) is a stable interface.
Tokens are passed through ``GIT_CONFIG_*`` environment variables as an HTTP header, never in
argv or URLs, so they cannot leak into process lists or logs.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from coderag.errors import GitError, NotFoundError

__all__ = [
    "NULL_SHA",
    "Change",
    "GitRepo",
    "TreeEntry",
    "redact_url",
]

NULL_SHA = "0" * 40
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_MODE_SYMLINK = "120000"
_MODE_SUBMODULE = "160000"


def redact_url(url: str) -> str:
    """Drop any userinfo from a URL before it is logged."""
    return re.sub(r"//[^/@]*@", "//***@", url)


@dataclass(frozen=True, slots=True)
class TreeEntry:
    path: str
    sha: str
    mode: str
    size: int

    @property
    def is_symlink(self) -> bool:
        return self.mode == _MODE_SYMLINK

    @property
    def is_submodule(self) -> bool:
        return self.mode == _MODE_SUBMODULE


@dataclass(frozen=True, slots=True)
class Change:
    """One file changed between two commits. ``status``: A, M, D, or R (old_path set)."""

    status: str
    path: str
    old_path: str | None = None


class GitRepo:
    """A local repository (bare or not). Cheap to construct; every call runs git."""

    def __init__(self, path: Path | str, token: str | None = None) -> None:
        self.path = Path(path)
        self._token = token

    # -- plumbing -------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        if self._token:
            basic = base64.b64encode(f"oauth2:{self._token}".encode()).decode()
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
            )
        return env

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        cmd = ["git", "-C", str(self.path), *args]
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, env=self._env())
        except FileNotFoundError as exc:  # git missing entirely
            raise GitError("git is not installed or not on PATH") from exc
        if check and proc.returncode != 0:
            msg = proc.stderr.decode("utf-8", "replace").strip()
            raise GitError(f"git {' '.join(_safe_args(args))} failed: {msg[:500]}")
        return proc.stdout

    # -- queries --------------------------------------------------------------------------
    def is_repo(self) -> bool:
        if not self.path.exists():
            return False
        out = self.run("rev-parse", "--git-dir", check=False)
        return bool(out.strip())

    def resolve(self, rev: str) -> str:
        """Full sha of ``rev`` (branch, tag, sha); NotFoundError when it does not exist."""
        out = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        sha = out.decode().strip()
        if not _SHA_RE.match(sha):
            raise NotFoundError(f"revision {rev!r} not found in {self.path.name}")
        return sha

    def has_commit(self, sha: str) -> bool:
        out = self.run("cat-file", "-t", sha, check=False)
        return out.strip() == b"commit"

    def is_sound(self, *, full: bool = True) -> bool:
        """Whether ``git fsck`` finds the repository intact (local work, no network).

        ``full=False`` checks that every reachable object is present and readable as far as
        commits and trees go (cheap); ``full=True`` also inflates and hashes every blob, which
        is what a corrupt pack or loose object fails.
        """
        if not self.is_repo():
            return False
        args = ["fsck", "--no-dangling", "--no-progress"]
        if not full:
            args.append("--connectivity-only")
        try:
            self.run(*args)
        except GitError:
            return False
        return True

    def head_branch(self) -> str | None:
        out = self.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        return out.decode().strip() or None

    def branches(self) -> list[str]:
        """Short names of the local branches (``refs/heads``), sorted."""
        out = self.run("for-each-ref", "--format=%(refname:short)", "refs/heads/", check=False)
        return sorted(line for line in out.decode("utf-8", "replace").splitlines() if line)

    def commit_time(self, sha: str) -> int:
        return int(self.run("log", "-1", "--format=%ct", sha).decode().strip() or 0)

    def ls_tree(self, commit: str) -> list[TreeEntry]:
        """Every blob of the commit's tree, with sizes (one git call)."""
        out = self.run("ls-tree", "-r", "-z", "--long", "--full-tree", commit)
        entries: list[TreeEntry] = []
        for rec in out.split(b"\0"):
            if not rec:
                continue
            meta, _, raw_path = rec.partition(b"\t")
            mode, _kind, sha, size = meta.split(None, 3)
            path = raw_path.decode("utf-8", "surrogateescape")
            entries.append(
                TreeEntry(
                    path=path,
                    sha=sha.decode(),
                    mode=mode.decode(),
                    size=int(size) if size.strip().isdigit() else 0,
                )
            )
        return entries

    def diff(self, old: str, new: str) -> list[Change]:
        """Files changed between two commits, renames detected (``-M``)."""
        out = self.run("diff", "--name-status", "-z", "-M", old, new)
        fields = out.split(b"\0")
        changes: list[Change] = []
        i = 0
        while i < len(fields) and fields[i]:
            status = fields[i].decode()
            code = status[0]
            if code in ("R", "C"):
                src = fields[i + 1].decode("utf-8", "surrogateescape")
                dst = fields[i + 2].decode("utf-8", "surrogateescape")
                changes.append(
                    Change("R" if code == "R" else "A", dst, src if code == "R" else None)
                )
                i += 3
            else:
                path = fields[i + 1].decode("utf-8", "surrogateescape")
                changes.append(Change({"T": "M"}.get(code, code), path))
                i += 2
        return changes

    def read_blobs(self, shas: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """Stream blob contents through one ``cat-file --batch`` process."""
        if not shas:
            return
        cmd = ["git", "-C", str(self.path), "cat-file", "--batch"]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self._env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # One request, one answer: interleaving keeps both pipes from filling up.
            for sha in shas:
                proc.stdin.write(sha.encode() + b"\n")
                proc.stdin.flush()
                header = proc.stdout.readline()
                parts = header.split()
                if len(parts) == 2 and parts[1] == b"missing":
                    raise GitError(f"blob {sha} missing from {self.path.name}")
                size = int(parts[2])
                data = proc.stdout.read(size)
                proc.stdout.read(1)  # trailing newline
                yield sha, data
        finally:
            proc.stdin.close()
            proc.stdout.close()
            proc.wait()

    def read_file(self, commit: str, path: str) -> bytes:
        return self.run("show", f"{commit}:{path}")

    def log(
        self,
        rev: str = "HEAD",
        *,
        since: str | None = None,
        max_count: int | None = None,
        extra: Iterable[str] = (),
    ) -> list[dict[str, str]]:
        """Commits as dicts (sha, parents, author, email, subject, body), newest first."""
        sep, end = "\x1f", "\x1e"
        fmt = sep.join(["%H", "%P", "%an", "%ae", "%s", "%b"]) + end
        args = ["log", f"--format={fmt}"]
        if max_count:
            args.append(f"--max-count={max_count}")
        args.extend(extra)
        args.append(f"{since}..{rev}" if since else rev)
        out = self.run(*args).decode("utf-8", "replace")
        commits = []
        for rec in out.split(end):
            rec = rec.strip("\n")
            if not rec:
                continue
            sha, parents, author, email, subject, body = (rec.split(sep) + [""] * 6)[:6]
            commits.append(
                dict(
                    sha=sha,
                    parents=parents,
                    author=author,
                    email=email,
                    subject=subject,
                    body=body.strip(),
                )
            )
        return commits

    # -- mirrors --------------------------------------------------------------------------
    def mirror_from(self, url: str) -> None:
        """Create (``clone --mirror``) or update (``fetch --prune``) a bare mirror of ``url``."""
        if self.is_repo():
            self.run("remote", "set-url", "origin", url)
            self.run(
                "fetch",
                "--prune",
                "--force",
                "origin",
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            )
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["git", "clone", "--mirror", "--quiet", url, str(self.path)]
        proc = subprocess.run(cmd, capture_output=True, env=self._env())
        if proc.returncode != 0:
            msg = proc.stderr.decode("utf-8", "replace").strip()
            raise GitError(f"git clone --mirror {redact_url(url)} failed: {msg[:500]}")


def _safe_args(args: Sequence[str]) -> list[str]:
    return [redact_url(a) for a in args]
