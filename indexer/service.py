"""The indexing service: diff -> chunk -> embed -> upsert/delete.

One code path for every way of running (CLI, embedded background tasks, Celery workers).
The index itself is the source of truth for which branch references which chunk (the
``branches`` payload); the durable state records only the last commit indexed per (repo,
branch). Every run reconciles "what the branch should contain" against "what the index says
the branch contains" for the paths it touches, so:

- re-running a finished run is a no-op (state check first);
- an interrupted run converges when re-run (state is written last, writes are idempotent:
  point ids are content-addressed), and also when the next run goes to another commit (a
  rewind, a push reverting the change): before its first write a run records the paths it
  may write as ``pending`` in the state, and the next run reconciles those paths too;
- a chunk shared by several branches is stored and embedded once, and deleting a branch only
  removes what no other branch references.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from chunkers import FileChunker, PathFilter
from chunkers.secrets import AllowList, Finding
from chunkers.skip import check_path
from coderag.errors import InputError, NotFoundError
from coderag.index import (
    ChunkPayload,
    IndexPoint,
    SearchFilter,
    VectorIndex,
    branch_state_key,
    branch_state_prefix,
)
from coderag.metrics import CHUNKS_EMBEDDED, SECRETS_REDACTED
from coderag.models import Chunk, SkippedFile
from embeddings import Embedder, sparse_document
from indexer.git import GitRepo
from indexer.precision_guard import check_precision
from indexer.sources import DirSource, GitSource, SourceFile

__all__ = [
    "INDEX_FORMAT",
    "REDACT_ALLOW_FILE",
    "IndexReport",
    "IndexService",
    "ProgressFn",
    "files_by_findings",
]

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
"""Bump when the payload or point layout changes: forces a full re-write of every branch."""

ProgressFn = Callable[[str, int, int], None]
"""progress(stage, done, total): stages are "read", "embed", "write"."""

_GROUP_CHUNKS = 2048  # chunks embedded + written per group: bounds memory on huge repos

_NO_ALLOW = AllowList().digest()
REDACT_ALLOW_FILE = ".coderag/redact-allow"
"""A repository's own redaction allow-list (see :class:`chunkers.secrets.AllowList`), read at
the indexed commit; changing it re-chunks the whole branch once."""


@dataclass
class IndexReport:
    """What one indexing run did (printed by the CLI, returned by tasks, used by benches)."""

    repo: str
    branch: str
    commit: str
    mode: str = "full"  # full | incremental | noop
    previous_commit: str | None = None
    files_seen: int = 0
    files_indexed: int = 0
    files_deleted: int = 0
    chunks_total: int = 0  # chunks of the files this run (re)chunked
    chunks_written: int = 0  # points upserted
    chunks_embedded: int = 0  # texts actually run through the model (cache misses)
    chunks_linked: int = 0  # existing points that gained this branch (no embedding)
    chunks_removed: int = 0  # points deleted (no branch left)
    fallbacks: int = 0
    secrets_redacted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Secrets replaced by markers in the files this run chunked, by kind."""
    secrets_redacted_files: dict[str, dict[str, int]] = field(default_factory=dict)
    """Where they were: path -> kind -> count (so an operator can check and rotate them)."""
    secrets_allowed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Findings an allow-list kept in the text (known fakes), by kind."""
    secrets_allowed_files: dict[str, dict[str, int]] = field(default_factory=dict)
    redact_allow_errors: list[str] = field(default_factory=list)
    """Entries of the repository's allow-list that were refused (too broad, unknown kind)."""
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for s in self.skipped:
            counts[s.reason] += 1
        return dict(sorted(counts.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "branch": self.branch,
            "commit": self.commit,
            "mode": self.mode,
            "previous_commit": self.previous_commit,
            "files_seen": self.files_seen,
            "files_indexed": self.files_indexed,
            "files_deleted": self.files_deleted,
            "chunks_total": self.chunks_total,
            "chunks_written": self.chunks_written,
            "chunks_embedded": self.chunks_embedded,
            "chunks_linked": self.chunks_linked,
            "chunks_removed": self.chunks_removed,
            "fallbacks": self.fallbacks,
            "secrets_redacted": dict(sorted(self.secrets_redacted.items())),
            "secrets_redacted_files": _top_files(self.secrets_redacted_files),
            "secrets_allowed": dict(sorted(self.secrets_allowed.items())),
            "secrets_allowed_files": _top_files(self.secrets_allowed_files),
            "redact_allow_errors": list(self.redact_allow_errors),
            "skipped": self.skipped_by_reason(),
            "seconds": round(self.seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


class IndexService:
    """Indexes repositories into a :class:`VectorIndex`. Cheap to construct."""

    def __init__(
        self,
        index: VectorIndex,
        embedder: Embedder,
        chunker: FileChunker,
        *,
        extra_ignore: Sequence[str] = (),
        write_batch: int = 512,
    ) -> None:
        self.store = index
        self.embedder = embedder
        self.chunker = chunker
        self.extra_ignore = list(extra_ignore)
        self.write_batch = write_batch

    # ------------------------------------------------------------------------- public API
    def fingerprint(self) -> str:
        """What, if changed, invalidates stored vectors/chunks (forces a full re-write).

        The chunker version is read at call time (``chunkers.CHUNKER_VERSION``): a chunker
        change re-writes every branch like a model change does, never mixes chunk shapes."""
        import chunkers

        return (
            f"v{INDEX_FORMAT}:{self.embedder.model_id}:"
            f"{self.chunker.max_tokens}:{self.chunker.min_tokens}"
            # Stored text changes with the secret rules: an index written before them (or
            # with other rules) is re-written once, so no redacted secret stays stored.
            f":{self.chunker.redaction_id}:c{chunkers.CHUNKER_VERSION}"
        )

    def index(
        self,
        source: Path | str,
        repo: str,
        branch: str = "main",
        commit: str | None = None,
        progress: ProgressFn | None = None,
        *,
        token: str | None = None,
    ) -> IndexReport:
        """Bring (repo, branch) in the index to ``commit`` (default: the branch head).

        ``source`` is a local git repository (bare or not) or a plain directory.
        """
        if not repo or "\x00" in repo:
            raise InputError("repo name must be a non-empty string")
        started = time.perf_counter()
        path = Path(source)
        if not path.exists():
            raise InputError(f"source {source} does not exist")
        git = GitRepo(path, token=token)
        # Resolved before the model loads: an empty repository or a dangling HEAD is a clear
        # error at once, not after seconds of warm-up.
        sha = _resolve_commit(git, branch, commit) if git.is_repo() else None
        self.embedder.warm_up()
        self.store.ensure(self.embedder.dim)
        check_precision(self.store, self.embedder.base_id, self.embedder.precision)
        key = branch_state_key(repo, branch)
        prev = self.store.get_state(key) or {}
        fp = self.fingerprint()
        same_fp = prev.get("fingerprint") == fp

        # A run that died after writing left ``pending``: the paths it may have written
        # (or "all"). This run brings those into scope too, whatever commit it goes to:
        # points of a commit the branch never reached must not stay beside the real ones.
        pending = prev.get("pending")
        if sha is not None:
            report = IndexReport(repo, branch, sha, previous_commit=prev.get("commit"))
            if same_fp and prev.get("commit") == sha and not pending:
                report.mode = "noop"
                report.seconds = time.perf_counter() - started
                return report
            src: GitSource | DirSource = GitSource(git, sha)
            incremental = bool(same_fp and prev.get("commit") and git.has_commit(prev["commit"]))
            if pending is not None and pending.get("paths") is None:
                incremental = False  # a full run died: any path may hold its points
        else:
            src = DirSource(path)
            report = IndexReport(repo, branch, "", previous_commit=prev.get("commit"))
            incremental = False

        t0 = time.perf_counter()
        all_files, tree_skipped = src.listing()
        if isinstance(src, DirSource):
            report.commit = src.snapshot_id(all_files)
            if same_fp and prev.get("commit") == report.commit and not pending:
                report.mode = "noop"
                report.seconds = time.perf_counter() - started
                return report
        path_filter = self._path_filter(src, all_files)
        allow = self._redact_allow(src, all_files, report)
        if allow.digest() != prev.get("redact_allow", _NO_ALLOW):
            incremental = False  # what is redacted changed in files this diff does not touch

        if incremental and isinstance(src, GitSource):
            report.mode = "incremental"
            changes = git.diff(prev["commit"], report.commit)
            gone = {c.old_path for c in changes if c.old_path} | {
                c.path for c in changes if c.status == "D"
            }
            touched = {c.path for c in changes if c.status != "D"}
            if pending is not None:
                touched |= set(pending["paths"])  # re-read at this commit, or unlinked
            wanted = [f for f in all_files if f.path in touched]
            report.skipped.extend(s for s in tree_skipped if s.path in touched)
            paths_in_scope = gone | touched
            force = False
        else:
            report.mode = "full"
            wanted = all_files
            report.skipped.extend(tree_skipped)
            paths_in_scope = None  # the whole branch
            # A changed model or chunker makes stored vectors stale: re-write, don't link.
            force = bool(prev) and not same_fp
        report.files_seen = len(all_files)

        to_chunk: list[SourceFile] = []
        for f in wanted:
            skip = path_filter.check(f.path)
            if skip is not None:
                report.skipped.append(skip)
            elif f.size > self.chunker.max_file_bytes:
                report.skipped.append(
                    SkippedFile(
                        f.path, "too_large", f"{f.size} bytes > {self.chunker.max_file_bytes}"
                    )
                )
            else:
                to_chunk.append(f)
        report.stage_seconds["list"] += time.perf_counter() - t0

        # Before the first write: what this run may write, so that if it dies the next run
        # cleans up after it (the state's commit stays the last one finished).
        if paths_in_scope is None or paths_in_scope:
            scope = None if paths_in_scope is None else sorted(paths_in_scope)
            intent = {"commit": report.commit, "paths": scope, "since": time.time()}
            self.store.set_state(key, {**prev, "repo": repo, "branch": branch, "pending": intent})

        # What the index says this branch holds, for the paths in scope.
        existing = self._existing(repo, branch, paths_in_scope)
        kept_ids: set[str] = set()
        indexed_paths: set[str] = set()

        for group in self._chunk_groups(src, to_chunk, report, progress, allow):
            for c in group:
                indexed_paths.add(c.path)
            group = [replace(c, repo=repo, commit=report.commit) for c in group]
            self._write_group(group, repo, branch, existing, kept_ids, report, progress, force)
        report.files_indexed = len(indexed_paths)

        # Everything in scope the branch no longer references.
        t0 = time.perf_counter()
        stale = [pid for pid in existing if pid not in kept_ids]
        report.files_deleted = len(
            {existing[p]["path"] for p in stale} - indexed_paths - {f.path for f in to_chunk}
        )
        self._unlink(stale, existing, branch, report)
        self.store.flush()
        report.stage_seconds["write"] += time.perf_counter() - t0

        self.store.set_state(
            key,
            {
                "repo": repo,
                "branch": branch,
                "commit": report.commit,
                "fingerprint": fp,
                "redact_allow": allow.digest(),
                "indexed_at": time.time(),
                "mode": report.mode,
            },
        )
        report.seconds = time.perf_counter() - started
        log.info("indexed", extra={"report": report.as_dict()})
        return report

    def delete_branch(self, repo: str, branch: str) -> int:
        """Drop ``branch`` from every point of ``repo``; delete points no branch references."""
        existing = self._existing(repo, branch, None)
        report = IndexReport(repo, branch, "")
        self._unlink(list(existing), existing, branch, report)
        self.store.flush()
        self.store.set_state(branch_state_key(repo, branch), None)
        return report.chunks_removed

    def delete_repo(self, repo: str) -> int:
        n = self.store.count(SearchFilter(repos=[repo]))
        self.store.delete_where(SearchFilter(repos=[repo]))
        # The prefix also lists repos nested under this one's path ("g/b" -> "g/b/sub"):
        # the record's own repo field decides, or removing one repo resets another's state.
        for key, st in self.store.list_state(branch_state_prefix(repo)).items():
            if st.get("repo") == repo:
                self.store.set_state(key, None)
        self.store.flush()
        return n

    def indexed_commit(self, repo: str, branch: str) -> str | None:
        st = self.store.get_state(branch_state_key(repo, branch))
        return st.get("commit") if st else None

    # ------------------------------------------------------------------------- internals
    def _path_filter(self, src: GitSource | DirSource, files: Sequence[SourceFile]) -> PathFilter:
        """Nested .gitignore files of the tree, each applied to its own subtree."""
        return PathFilter.from_gitignores(src.gitignore_lines(files), self.extra_ignore)

    def _redact_allow(
        self, src: GitSource | DirSource, files: Sequence[SourceFile], report: IndexReport
    ) -> AllowList:
        """The repository's allow-list (:data:`REDACT_ALLOW_FILE` at this commit). Entries
        it refuses are reported and skipped: the files they name stay redacted."""
        found = [f for f in files if f.path == REDACT_ALLOW_FILE]
        if not found or not self.chunker.redact_secrets:
            return AllowList()
        text = b"".join(data for _, data in src.read(found)).decode("utf-8", "replace")
        allow, errors = AllowList.parse(text.splitlines(), strict=False)
        if errors:
            report.redact_allow_errors.extend(errors)
            log.warning(
                "redaction allow-list entries refused",
                extra={"repo": report.repo, "path": REDACT_ALLOW_FILE, "errors": errors},
            )
        return allow

    def _existing(
        self, repo: str, branch: str, paths: Iterable[str] | None
    ) -> dict[str, dict[str, Any]]:
        fields = ["path", "branches", "hash"]
        if paths is None:
            return dict(self.store.scroll(SearchFilter(repos=[repo], branch=branch), fields))
        out: dict[str, dict[str, Any]] = {}
        # An unsafe path (a name that is not UTF-8, say) was never indexed, and the index
        # cannot even take it in a filter: asking for it would fail every later push.
        plist = sorted(p for p in paths if check_path(p) is None)
        for i in range(0, len(plist), 256):
            flt = SearchFilter(repos=[repo], branch=branch, paths=plist[i : i + 256])
            out.update(self.store.scroll(flt, fields))
        return out

    def _chunk_groups(
        self,
        src: GitSource | DirSource,
        files: Sequence[SourceFile],
        report: IndexReport,
        progress: ProgressFn | None,
        allow: AllowList | None = None,
    ) -> Iterable[list[Chunk]]:
        group: list[Chunk] = []
        t0 = time.perf_counter()
        for done, (f, data) in enumerate(src.read(files), 1):
            result = self.chunker.chunk(f.path, data, allow=allow)
            if result.redactions:
                _count_redactions(report, f.path, result.redactions)
            if result.skipped is not None:
                report.skipped.append(result.skipped)
            if result.fallback:
                report.fallbacks += 1
            group.extend(result.chunks)
            if progress:
                progress("read", done, len(files))
            if len(group) >= _GROUP_CHUNKS:
                report.stage_seconds["read+chunk"] += time.perf_counter() - t0
                report.chunks_total += len(group)
                yield group
                group = []
                t0 = time.perf_counter()
        report.stage_seconds["read+chunk"] += time.perf_counter() - t0
        if group:
            report.chunks_total += len(group)
            yield group

    def _write_group(
        self,
        group: list[Chunk],
        repo: str,
        branch: str,
        existing: dict[str, dict[str, Any]],
        kept: set[str],
        report: IndexReport,
        progress: ProgressFn | None,
        force: bool,
    ) -> None:
        by_id: dict[str, Chunk] = {}
        for c in group:
            by_id.setdefault(c.id, c)
        kept.update(by_id)
        # Already in this branch and unchanged: nothing to do (unless vectors are stale).
        new_ids = [i for i in by_id if force or i not in existing]
        if not new_ids:
            return
        t0 = time.perf_counter()
        # Present in the index through another branch: link, don't embed (unless stale).
        elsewhere = self.store.retrieve(new_ids)
        if not force:
            link: dict[str, list[str]] = {}
            for pid, payload in elsewhere.items():
                branches = list(payload.get("branches") or [])
                if branch not in branches:
                    link[pid] = sorted({*branches, branch})
            if link:
                self.store.set_branches(link)
                report.chunks_linked += len(link)
        report.stage_seconds["write"] += time.perf_counter() - t0

        to_embed = [by_id[i] for i in new_ids if force or i not in elsewhere]
        if not to_embed:
            return
        t0 = time.perf_counter()
        before = self.embedder.stats.embedded
        done0 = report.chunks_written

        def on_embed(n: int) -> None:
            if progress:
                progress("embed", done0 + n, done0 + len(to_embed))

        vectors = self.embedder.embed_documents([c.embed_text for c in to_embed], on_embed)
        embedded = self.embedder.stats.embedded - before
        report.chunks_embedded += embedded
        CHUNKS_EMBEDDED.inc(embedded)
        report.stage_seconds["embed"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        points = []
        for c, vec in zip(to_embed, vectors, strict=True):
            prior = elsewhere.get(c.id, {}).get("branches") or []
            branches = sorted({*prior, branch})
            points.append(
                IndexPoint(
                    id=c.id,
                    dense=vec.tolist(),
                    sparse=sparse_document(_sparse_text(c), c.path),
                    payload=ChunkPayload.from_chunk(c, branches).to_dict(),
                )
            )
        for i in range(0, len(points), self.write_batch):
            self.store.upsert(points[i : i + self.write_batch])
            report.chunks_written += len(points[i : i + self.write_batch])
            if progress:
                progress("write", report.chunks_written, done0 + len(points))
        report.stage_seconds["write"] += time.perf_counter() - t0

    def _unlink(
        self,
        ids: Sequence[str],
        existing: dict[str, dict[str, Any]],
        branch: str,
        report: IndexReport,
    ) -> None:
        delete: list[str] = []
        relink: dict[str, list[str]] = {}
        for pid in ids:
            branches = [b for b in (existing[pid].get("branches") or []) if b != branch]
            if branches:
                relink[pid] = branches
            else:
                delete.append(pid)
        if relink:
            self.store.set_branches(relink)
        if delete:
            for i in range(0, len(delete), 1024):
                self.store.delete(delete[i : i + 1024])
        report.chunks_removed += len(delete)


def _resolve_commit(git: GitRepo, branch: str, commit: str | None) -> str:
    """The commit to index: ``commit``, else the head of ``branch``, else HEAD (a folder
    checked out on another branch, the CLI's default). Raises :class:`NotFoundError` with
    the reason when there is none: no commits at all, or HEAD naming an unborn branch."""
    if commit is not None:
        return git.resolve(commit)
    try:
        return git.resolve(branch)
    except NotFoundError:
        pass
    try:
        return git.resolve("HEAD")
    except NotFoundError:
        pass
    heads = git.branches()
    where = git.path.name
    if not heads:
        raise NotFoundError(f"repository {where} has no commits yet: nothing to index")
    head = git.head_branch() or "HEAD"
    raise NotFoundError(
        f"branch {branch!r} not found in {where}, and HEAD points to {head!r}, which has no "
        f"commits; index one of its branches instead: {', '.join(heads[:10])}"
    )


def _count_redactions(report: IndexReport, path: str, found: Sequence[Finding]) -> None:
    """Report, count and log the secrets removed from one file, and those an allow-list kept:
    the path, kinds and lines (so the owner can rotate them, or check a fake is one), never
    the values."""
    kinds = Counter(f.kind for f in found if not f.allowed)
    allowed = Counter(f.kind for f in found if f.allowed)
    for kind, n in kinds.items():
        report.secrets_redacted[kind] += n
        SECRETS_REDACTED.labels(kind=kind).inc(n)
    for kind, n in allowed.items():
        report.secrets_allowed[kind] += n
    if kinds:
        report.secrets_redacted_files[path] = dict(sorted(kinds.items()))
    if allowed:
        report.secrets_allowed_files[path] = dict(sorted(allowed.items()))
    log.info(
        "secrets redacted",
        extra={
            "repo": report.repo,
            "path": path,
            # {"kind", "count"} items, not {kind: count}: the log redactor masks the value of
            # any key named like a credential ("token", "password") and any "token=..." text
            "kinds": [{"kind": k, "count": n} for k, n in sorted(kinds.items())],
            "lines": sorted({f.line for f in found if not f.allowed}),
            "allowed": [{"kind": k, "count": n} for k, n in sorted(allowed.items())],
        },
    )


_FILES_REPORTED = 1000
"""Files per map in :meth:`IndexReport.as_dict`: the dict is also a job's run record, kept in
the index state, so a repository of thousands of fixtures must not make it megabytes."""


def files_by_findings(files: dict[str, dict[str, int]]) -> list[tuple[str, dict[str, int]]]:
    """(path, kinds) pairs, the files with the most findings first, then by path: the order
    in which the report and the CLI list them."""
    return sorted(files.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))


def _top_files(files: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """:func:`files_by_findings`, at most :data:`_FILES_REPORTED`; ``"..."`` then counts the
    files left out."""
    top = files_by_findings(files)
    out = dict(top[:_FILES_REPORTED])
    if len(top) > _FILES_REPORTED:
        out["..."] = {"files": len(top) - _FILES_REPORTED}
    return out


def _sparse_text(c: Chunk) -> str:
    return f"{c.symbol}\n{c.text}" if c.symbol else c.text
