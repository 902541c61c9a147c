"""What not to index, and why.

Two stages, because they need different inputs: :class:`PathFilter` decides by path alone
(vendored trees, build and cache directories, .gitignore, lock files, translation catalogs,
binary and minified file names), so the indexer can skip a blob without reading it;
:func:`check_bytes` and :func:`check_text` decide by content (empty, too large, binary,
minified, generated). Every skip carries a reason so that summaries can show what was left
out instead of hiding it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pathspec

from coderag.models import SkippedFile

__all__ = [
    "BINARY_EXTENSIONS",
    "IGNORED_DIRS",
    "LOCKFILES",
    "TRANSLATION_EXTENSIONS",
    "VENDORED_DIRS",
    "PathFilter",
    "check_bytes",
    "check_path",
    "check_text",
    "normalize_path",
]

VENDORED_DIRS = frozenset(
    {
        "node_modules",
        "bower_components",
        "jspm_packages",
        "vendor",
        "vendors",
        "third_party",
        "third-party",
        "thirdparty",
        "Pods",
        "Carthage",
        ".yarn",
        "site-packages",
    }
)
"""Other people's code checked into the tree: it drowns the repo's own code in search."""

IGNORED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".venv",
        ".tox",
        ".nox",
        ".eggs",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".idea",
        ".gradle",
        ".terraform",
        ".next",
        ".nuxt",
        ".svelte-kit",
        ".parcel-cache",
        ".angular",
        "dist",
        "htmlcov",
    }
)
"""VCS metadata, caches and build output. ``dist/`` is skipped because committed bundles
duplicate the sources; ``build/`` and ``target/`` are not, since several projects keep build
scripts there (kubernetes' ``build/``)."""

LOCKFILES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "bun.lock",
        "deno.lock",
        "poetry.lock",
        "pipfile.lock",
        "pdm.lock",
        "uv.lock",
        "conda-lock.yml",
        "cargo.lock",
        "go.sum",
        "go.work.sum",
        "composer.lock",
        "gemfile.lock",
        "mix.lock",
        "pubspec.lock",
        "podfile.lock",
        "package.resolved",
        "packages.lock.json",
        "gradle.lockfile",
        "flake.lock",
        "cabal.project.freeze",
    }
)
"""Lock files (lower-case names): machine-written, huge, and never what a query is about."""

BINARY_EXTENSIONS = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".bmp",
        ".ico",
        ".icns",
        ".webp",
        ".tif",
        ".tiff",
        ".psd",
        ".ai",
        ".heic",
        ".avif",
        ".pdf",
        ".doc",
        ".docx",
        ".xls",
        ".xlsx",
        ".ppt",
        ".pptx",
        ".odt",
        ".zip",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".7z",
        ".rar",
        ".tar",
        ".jar",
        ".war",
        ".ear",
        ".aar",
        ".apk",
        ".ipa",
        ".whl",
        ".egg",
        ".pyc",
        ".pyo",
        ".pyd",
        ".class",
        ".so",
        ".dylib",
        ".dll",
        ".exe",
        ".o",
        ".a",
        ".lib",
        ".obj",
        ".wasm",
        ".mp3",
        ".mp4",
        ".wav",
        ".ogg",
        ".flac",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".m4a",
        ".woff",
        ".woff2",
        ".ttf",
        ".otf",
        ".eot",
        ".db",
        ".sqlite",
        ".sqlite3",
        ".npy",
        ".npz",
        ".pkl",
        ".pickle",
        ".h5",
        ".hdf5",
        ".onnx",
        ".pt",
        ".pth",
        ".ckpt",
        ".safetensors",
        ".parquet",
        ".avro",
        ".orc",
        ".bin",
        ".dat",
        ".lockb",
    }
)
"""Extensions that are never text worth indexing; skipped without reading the blob."""

TRANSLATION_EXTENSIONS = frozenset({".po", ".pot", ".mo"})
"""gettext catalogs: the program's user-facing strings again, once per language (Sphinx
ships 60 of them, about as many chunks as its whole Python source). Never the code a
question is about, and their copies of the same words crowd lexical search."""

_MINIFIED_SUFFIXES = (".min.js", ".min.mjs", ".min.css", "-min.js", ".bundle.js", ".chunk.js")
_GENERATED_SUFFIXES = (".js.map", ".css.map", ".map", ".pb.go", "_pb2.py", "_pb2_grpc.py")

_PROSE = frozenset({"markdown", "text", "restructuredtext", "html", "xml"})
_GENERATED_RE = re.compile(
    r"(?i)(?:\bgenerated\b.*\bdo not (?:edit|modify)\b|\bdo not (?:edit|modify)\b.*\bgenerated\b"
    r"|auto-?generated.*\bdo not\b|@generated\b|<auto-generated)"
)


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_path(path: str) -> SkippedFile | None:
    """``unsafe_path`` for a name no source file has and that would be unsafe to serve.

    A git tree is attacker-shaped data: ``git mktree`` accepts an entry named ``..`` or
    ``.``, and a name may hold any byte but ``/`` and NUL. Such a path must never reach the
    index, because clients resolve served paths against their checkout (``../x`` escapes
    it), a control character or newline in a path rewrites log lines, terminals and the
    prompt a context block is pasted into, and bytes that are not UTF-8 cannot be stored or
    sent as JSON at all (they arrive here as lone surrogates, ``surrogateescape``). Checked
    on the path as given: the git listing is not normalized first, so ``./x`` cannot pose as
    ``x``. The skip keeps the raw path (the indexer matches it against diffs); ``detail``
    shows it escaped, safe to log.
    """
    shown = ascii(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return SkippedFile(path, "unsafe_path", f"file name is not valid UTF-8: {shown}")
    if _CONTROL_CHARS.search(path):
        return SkippedFile(path, "unsafe_path", f"control character in the file name: {shown}")
    parts = path.replace("\\", "/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return SkippedFile(path, "unsafe_path", f"empty, '.' or '..' path component: {shown}")
    return None


def normalize_path(path: str) -> str:
    """Repo-relative, '/'-separated, without a leading './' or '/'."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


class PathFilter:
    """Decides by path alone whether a file is left out: vendored, ignored, lock file, binary
    or minified by its name.

    ``gitignore_lines`` are the patterns of the repository's root ``.gitignore``;
    ``extra_patterns`` (gitignore syntax too, e.g. from settings) are applied on top and
    cannot be re-included by a ``!`` rule in a .gitignore.
    """

    def __init__(
        self, gitignore_lines: Iterable[str] = (), extra_patterns: Iterable[str] = ()
    ) -> None:
        root = pathspec.GitIgnoreSpec.from_lines(list(gitignore_lines))
        self._specs: list[tuple[str, pathspec.GitIgnoreSpec]] = [("", root)] if root else []
        extra = list(extra_patterns)
        self._extra = pathspec.GitIgnoreSpec.from_lines(extra) if extra else None

    @classmethod
    def from_root(cls, root: Path, extra_patterns: Iterable[str] = ()) -> PathFilter:
        """Reads every ``.gitignore`` under ``root`` (and ``.git/info/exclude``); a nested
        file applies to its own subtree, and deeper files win, as in git."""
        root = Path(root)
        found = cls((), extra_patterns)
        exclude = root / ".git" / "info" / "exclude"
        if exclude.is_file():
            found._add("", _read_lines(exclude))
        # Top-down, so a directory's .gitignore is known before its subdirectories are
        # visited: ignored directories are pruned (git cannot re-include below them), and
        # the specs list stays ordered ancestors-first, which makes the deepest file win.
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root).as_posix()
            base = "" if rel == "." else rel
            if ".gitignore" in filenames:
                found._add(base, _read_lines(Path(dirpath) / ".gitignore"))
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in IGNORED_DIRS
                and d not in VENDORED_DIRS
                and found._gitignored(f"{base}/{d}/" if base else f"{d}/") is None
            )
        return found

    @classmethod
    def from_gitignores(
        cls, gitignores: Mapping[str, Iterable[str]], extra_patterns: Iterable[str] = ()
    ) -> PathFilter:
        """Like :meth:`from_root` for .gitignore contents already at hand (read from a git
        tree, say): ``{directory: lines}`` with ``""`` for the root. Each file applies to its
        own subtree and deeper files win, with no rewriting of the patterns."""
        found = cls((), extra_patterns)
        for base in sorted(gitignores, key=lambda b: (b.count("/") + bool(b), b)):
            found._add(normalize_path(base).rstrip("/"), list(gitignores[base]))
        return found

    def _add(self, base: str, lines: list[str]) -> None:
        spec = pathspec.GitIgnoreSpec.from_lines(lines)
        if spec:
            self._specs.append((base, spec))

    def check(self, path: str) -> SkippedFile | None:
        """The reason ``path`` is not indexed, or ``None`` if it may be."""
        path = normalize_path(path)
        unsafe = check_path(path)
        if unsafe is not None:
            return unsafe
        parts = path.split("/")
        for part in parts[:-1]:
            if part in IGNORED_DIRS or part.endswith(".egg-info"):
                return SkippedFile(path, "ignored", f"{part}/ directory")
            if part in VENDORED_DIRS:
                return SkippedFile(path, "vendored", f"{part}/ directory")
        if self._extra is not None and self._extra.match_file(path):
            return SkippedFile(path, "ignored", "extra ignore pattern")
        ignored_by = self._gitignored(path)
        if ignored_by is not None:
            return SkippedFile(path, "ignored", ignored_by)
        name = parts[-1].lower()
        if name in LOCKFILES:
            return SkippedFile(path, "lockfile", parts[-1])
        dot = name.rfind(".")
        if dot > 0 and name[dot:] in BINARY_EXTENSIONS:
            return SkippedFile(path, "binary", f"{name[dot:]} file")
        if (dot > 0 and name[dot:] in TRANSLATION_EXTENSIONS) or "LC_MESSAGES" in parts[:-1]:
            return SkippedFile(path, "translation", "gettext translation catalog")
        if name.endswith(_MINIFIED_SUFFIXES):
            return SkippedFile(path, "minified", "minified file name")
        if name.endswith(_GENERATED_SUFFIXES):
            return SkippedFile(path, "generated", "generated file name")
        return None

    def _gitignored(self, path: str) -> str | None:
        verdict: bool | None = None
        where = ""
        for base, spec in self._specs:
            if base and not path.startswith(base + "/"):
                continue
            result = spec.check_file(path[len(base) + 1 :] if base else path)
            if result.include is not None:
                verdict, where = result.include, base
        if verdict:
            return f"{where}/.gitignore" if where else ".gitignore"
        return None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def check_bytes(path: str, data: bytes, max_bytes: int) -> SkippedFile | None:
    """Skips decided on raw bytes: empty, too large, binary.

    Binary means a NUL byte anywhere (text encodings we index never contain one; UTF-16 is
    left out on purpose) or more than 10% control bytes in the first 8 KiB.
    """
    if not data.strip():
        return SkippedFile(path, "empty", "no content" if not data else "whitespace only")
    if len(data) > max_bytes:
        return SkippedFile(path, "too_large", f"{len(data)} bytes > {max_bytes}")
    if b"\x00" in data:
        return SkippedFile(path, "binary", "NUL bytes")
    head = data[:8192]
    control = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if control > 0.1 * len(head):
        return SkippedFile(path, "binary", f"{control} control bytes in the first {len(head)}")
    return None


_CONTROL_BYTES = bytes(b for b in range(32) if b not in (8, 9, 10, 12, 13, 27))


def check_text(path: str, text: str, language: str) -> SkippedFile | None:
    """Skips decided on decoded text: generated (a marker in the first lines) or minified
    (a very long average line, spaces not counted; prose languages get more room, since a
    paragraph is one long line)."""
    head = text[:4096].split("\n", 40)[:40]
    for line in head:
        if len(line) < 300 and _GENERATED_RE.search(line):
            return SkippedFile(path, "generated", line.strip()[:120])
    if len(text) >= 1000:
        # Indentation does not count: deeply nested code is long-lined but not minified.
        n_lines = text.count("\n") + 1
        mean = (len(text) - text.count(" ") - text.count("\t")) / n_lines
        limit = 800 if language in _PROSE else 200
        if mean > limit:
            return SkippedFile(path, "minified", f"average line length {mean:.0f} (no spaces)")
    return None
