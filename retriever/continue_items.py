"""Context items as Continue's GUI handles them (the ``http`` context provider's answer).

Facts from continuedev/continue, each pinned by ``tests/test_continue.py``:

* **Items with the same ``uri`` are dropped.** ``gatherContextItems`` in
  ``gui/src/components/mainInput/TipTapEditor/utils/resolveEditorContent.ts`` keeps only the
  first item of each ``uri.type`` + ``uri.value``. Two regions of one file would lose all but
  the first, so the regions of a file are merged into one item (its content holds every
  region, each fenced and headed by its lines).
* **A name ``file.py (10-42)`` jumps to the lines.** ``openContextItem`` in
  ``gui/src/components/mainInput/belowMainInput/ContextItemsPeek.tsx`` calls ``showLines`` when
  the name contains ``" ("`` and ends with ``")"``, and ``ctxItemToRifWithContents`` in
  ``core/commands/util.ts`` reads 1-based ``start-end`` after the first ``(``; any other name
  only opens the file. So the basename must not hold a ``(`` of its own (it is then left out).
* **``uri.type: "url"`` opens in the browser** (``openUrl``), a ``file`` uri in the editor.
  Only files of the repository checked out in the caller's workspace can be opened from
  ``workspacePath``; a file of another repository has no local copy, so it gets the GitLab
  web URL of its lines when the registry knows the project's URL (unique per region and per
  repo), else the repo-relative path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from retriever.context import ContextBlock

__all__ = ["ContinueItem", "ContinueUri", "continue_items", "gitlab_file_url", "workspace_file"]


class ContinueUri(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["file", "url"] = "file"
    value: str = Field(
        description="``file``: a path under the caller's ``workspacePath`` (the repository "
        "the request named), or repo-relative; ``url``: the GitLab web URL of the lines, for "
        "files of other repositories (no local copy to open)."
    )


class ContinueItem(BaseModel):
    """One context item, exactly the fields Continue reads (it drops any other)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    content: str
    uri: ContinueUri


def workspace_file(path: str, workspace: str | None) -> str:
    """What Continue wants in a ``file`` uri: an absolute path under the workspace when it
    sent one (a URI when its workspace is a URI, as newer Continue versions send), else the
    repo-relative path."""
    rel = path.lstrip("/")
    if not workspace:
        return rel
    if workspace.startswith("file://"):
        return f"{workspace.rstrip('/')}/{rel}"
    sep = "\\" if ("\\" in workspace and "/" not in workspace) else "/"
    return workspace.rstrip("/\\") + sep + (rel.replace("/", sep) if sep == "\\" else rel)


_SCP_URL = re.compile(r"^[\w.-]+@(?P<host>[\w.-]+):(?P<path>.+)$")


def gitlab_file_url(clone_url: str, ref: str, path: str, start: int, end: int) -> str | None:
    """GitLab's web URL of lines ``start``-``end`` of ``path`` at ``ref``
    (``<project>/-/blob/<ref>/<path>#L<start>-<end>``), from the project's clone URL; None
    for a local path or an unknown form."""
    url = clone_url.strip()
    m = _SCP_URL.match(url)
    if m:
        url = f"https://{m.group('host')}/{m.group('path')}"
    if not url.startswith(("https://", "http://")):
        return None
    url = url.removesuffix("/").removesuffix(".git")
    if "@" in url.split("/", 3)[2]:  # credentials in a clone URL never reach a client
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://{rest.split('@', 1)[1]}"
    return f"{url}/-/blob/{ref}/{path.lstrip('/')}#L{start}-{end}"


def _span(blocks: Sequence[ContextBlock]) -> tuple[int, int]:
    return min(b.start_line for b in blocks), max(b.end_line for b in blocks)


def continue_items(
    blocks: Sequence[ContextBlock],
    *,
    workspace: str | None,
    workspace_repo: str | None,
    clone_url: Callable[[str], str | None],
    ref: str | None,
) -> list[ContinueItem]:
    """One item per (repo, file), in the order of each file's best block.

    ``workspace_repo`` is the repository the caller's workspace holds (the one repo the
    request named, or the only repo in the answer), whose files open under ``workspace``;
    ``clone_url`` gives a repo's clone URL (or None) for the web links of the others.
    """
    files: dict[tuple[str, str], list[ContextBlock]] = {}
    for b in blocks:
        files.setdefault((b.repo, b.path), []).append(b)
    repos = {repo for repo, _ in files}
    local = workspace_repo or (next(iter(repos)) if len(repos) == 1 else None)
    out = []
    for (repo, path), group in files.items():
        group = sorted(group, key=lambda b: b.start_line)
        start, end = _span(group)
        base = path.rsplit("/", 1)[-1]
        base = base if "(" not in base else base.replace("(", "[").replace(")", "]")
        regions = ", ".join(f"{b.start_line}-{b.end_line}" for b in group)
        symbols = list(dict.fromkeys(s for b in group for s in b.symbols if s))
        where = f"{repo}: {path} (lines {regions})"
        description = f"{where} · {', '.join(symbols[:5])}" if symbols else where
        content = "\n\n".join(b.render() for b in group)
        uri = ContinueUri(type="file", value=workspace_file(path, workspace))
        if repo != local or not workspace:
            clone = clone_url(repo)
            web = gitlab_file_url(clone, ref or "HEAD", path, start, end) if clone else None
            if web is not None:
                uri = ContinueUri(type="url", value=web)
            elif repo != local:  # no checkout: a value that opens nothing, never another file
                uri = ContinueUri(type="file", value=f"{repo}/{path.lstrip('/')}")
        name = f"{base} ({start}-{end})"
        out.append(ContinueItem(name=name, description=description, content=content, uri=uri))
    return out
