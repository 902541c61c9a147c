"""Turning indexing on and off for a GitLab project: the project hook, the registry record,
the first full index, and the clean-up.

The hook is created with a fresh secret (``secrets.token_urlsafe(32)``) that is returned once
to the caller and stored only as its sha256. The GitLab token comes from settings, travels
in python-gitlab's ``PRIVATE-TOKEN`` header only, and is sent to ``settings.gitlab_url`` and
nowhere else: a URL on another host is refused rather than handed our token.

Without a GitLab token (``CODERAG_GITLAB_TOKEN`` unset) registration still works in *manual*
mode: the record and secret are created, and the operator pastes the secret into the
project's webhook settings.

``signed=True`` also gives the hook a signing token (``whsec_...``, :mod:`webhooks.signature`)
sent to GitLab as the hook's ``signing_token`` (newer GitLab then signs every delivery; gitlab
MR 230944, 231325) and stored encrypted with ``CODERAG_SECRET_KEY``; from then on a delivery
without a valid ``webhook-signature`` is refused. In manual mode the token is returned once,
to be pasted into the hook settings with the secret.

The hook subscribes to merge request events only when ``CODERAG_INDEX_MERGE_REQUESTS`` is on:
otherwise GitLab would send, and we would parse and ignore, a delivery per MR update.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from coderag.errors import (
    ConfigError,
    ConflictError,
    GitLabError,
    InputError,
    NotFoundError,
    TransientError,
    translate,
)
from coderag.repos import RepoRecord, RepoRegistry, hash_secret, parse_repo_id
from coderag.secretbox import SecretBox
from coderag.settings import Settings
from webhooks.routes import WEBHOOK_PATH
from webhooks.signature import new_signing_token, signing_key

__all__ = [
    "Registration",
    "hook_attributes",
    "hook_url",
    "register_repo",
    "remove_repo",
    "split_project_url",
]

log = logging.getLogger(__name__)

GITLAB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Registration:
    """The outcome of turning a project on. ``secret`` is shown once and never stored;
    ``signing_token`` only in manual mode (with GitLab's API it went to the hook directly)."""

    record: RepoRecord
    secret: str
    task_id: str | None
    warning: str | None = None
    signing_token: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.record.public(),
            "secret": self.secret,
            "signing_token": self.signing_token,
            "task_id": self.task_id,
            "warning": self.warning,
        }


def hook_url(settings: Settings) -> str:
    if not settings.public_url:
        raise ConfigError(
            "CODERAG_PUBLIC_URL is not set: GitLab needs the URL at which it reaches coderag"
        )
    return settings.public_url.rstrip("/") + WEBHOOK_PATH


def hook_attributes(
    settings: Settings, secret: str, signing_token: str | None = None
) -> dict[str, Any]:
    """The project hook coderag asks GitLab for (``POST /projects/:id/hooks``)."""
    attrs: dict[str, Any] = {
        "url": hook_url(settings),
        "token": secret,
        "push_events": True,
        "merge_requests_events": bool(settings.index_merge_requests),
        "tag_push_events": bool(settings.index_tags),
        "enable_ssl_verification": True,
    }
    if signing_token is not None:
        attrs["signing_token"] = signing_token
    return attrs


def split_project_url(url: str, gitlab_url: str | None) -> tuple[str | None, str]:
    """``https://gitlab.example.com/group/project(.git)`` -> (GitLab base URL, ``group/project``).

    A web URL's ``/-/...`` tail is dropped. When ``gitlab_url`` is set the URL must be under
    it (its path prefix is the instance's relative root). Anything that is not an http(s) URL
    (a local path, ``file://``, ``git@host:...``) has no GitLab base: ``(None, last two
    path segments)``.
    """
    raw = url.strip()
    if not raw:
        raise InputError("url is empty")
    parts = urlsplit(raw)
    if parts.scheme in ("http", "https") and parts.netloc:
        if "@" in parts.netloc:
            raise InputError("put no credentials in the URL: the token comes from settings")
        full = raw.split("?", 1)[0].split("#", 1)[0].rstrip("/")
        base = f"{parts.scheme}://{parts.netloc}"
        if gitlab_url:
            root = gitlab_url.rstrip("/")
            if not (full == root or full.startswith(root + "/")):
                raise InputError(f"{url!r} is not on the configured GitLab ({root})")
            base, rest = root, full[len(root) :]
        else:
            rest = parts.path
        rest = rest.split("/-/", 1)[0].strip("/").removesuffix(".git")
        return base, parse_repo_id(rest)
    tail = raw.rstrip("/").removesuffix(".git").replace(":", "/").split("/")
    return None, parse_repo_id("/".join(tail[-2:]))


def _client(settings: Settings, base: str) -> Any:
    import gitlab

    assert settings.gitlab_token is not None
    return gitlab.Gitlab(
        url=base,
        private_token=settings.gitlab_token.get_secret_value(),
        timeout=GITLAB_TIMEOUT_S,
        ssl_verify=True,  # an internal CA: REQUESTS_CA_BUNDLE
        retry_transient_errors=False,
    )


@contextmanager
def _gitlab_errors(what: str) -> Iterator[None]:
    """python-gitlab / requests errors -> coderag's tree (a 404 is the caller's typo, an
    unreachable GitLab is worth retrying, the rest is a :class:`GitLabError`)."""
    import gitlab.exceptions as gle
    import requests

    with translate(GitLabError, what):
        try:
            yield
        except gle.GitlabError as exc:
            if exc.response_code == 404:
                raise NotFoundError(f"{what}: not found on GitLab") from exc
            if exc.response_code in (401, 403):
                raise GitLabError(
                    f"{what}: GitLab refused the token ({exc.response_code}); it needs the "
                    "Maintainer role on the project and the api scope"
                ) from exc
            raise
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"{what}: GitLab unreachable: {type(exc).__name__}") from exc


def register_repo(
    settings: Settings,
    registry: RepoRegistry,
    dispatcher: Any,
    url: str,
    branches: Sequence[str] = ("main",),
    *,
    repo_id: str | None = None,
    signed: bool = False,
) -> Registration:
    """Create the hook (when a GitLab token is configured), store the record, schedule the
    first full index. Compensates on failure: a hook is never left without its record.
    ``signed``: give the hook a signing token as well (needs ``CODERAG_SECRET_KEY``)."""
    branches = [b.strip() for b in branches if b.strip()]
    if not branches:  # before GitLab is called: never a hook whose record cannot be stored
        raise InputError("at least one non-blank branch pattern is needed")
    base, path = split_project_url(url, settings.gitlab_url)
    use_api = base is not None and settings.gitlab_token is not None
    if use_api and not settings.gitlab_url:
        raise ConfigError("set CODERAG_GITLAB_URL: the GitLab token is only sent there")
    secret = secrets.token_urlsafe(32)
    signing_token = sealed = None
    if signed:  # before GitLab is called: a missing key must not leave a hook behind
        signing_token = new_signing_token()
        sealed = SecretBox(settings.secret_key).encrypt(signing_key(signing_token))
    if use_api:
        assert base is not None
        gl = _client(settings, base)
        with _gitlab_errors(f"project {path}"):
            project = gl.projects.get(path)
        rid = project.path_with_namespace
        if registry.get(rid) is not None:
            raise ConflictError(f"repository {rid!r} is already registered")
        known = registry.get_by_project(int(project.id))
        if known is not None:  # renamed on GitLab since; its next delivery moves the record
            raise ConflictError(
                f"GitLab project {project.id} is already registered as {known.id!r}"
            )
        with _gitlab_errors(f"creating the hook of {rid}"):
            hook = project.hooks.create(hook_attributes(settings, secret, signing_token))
        record = RepoRecord(
            id=rid,
            url=project.http_url_to_repo,
            gitlab_project_id=int(project.id),
            branches=list(branches),
            secret_hash=hash_secret(secret),
            signing_token_enc=sealed,
            hook_id=int(hook.id),
        )
        try:
            registry.put(record)
        except Exception:
            _delete_hook(settings, record)
            raise
        log.info("repository registered", extra={"repo": rid, "hook_id": record.hook_id})
    else:
        rid = parse_repo_id(repo_id) if repo_id else path
        if registry.get(rid) is not None:
            raise ConflictError(f"repository {rid!r} is already registered")
        record = registry.put(
            RepoRecord(
                id=rid,
                url=url.strip(),
                branches=list(branches),
                secret_hash=hash_secret(secret),
                signing_token_enc=sealed,
            )
        )
        log.info("repository registered without a GitLab hook (manual)", extra={"repo": rid})
    try:
        task_id: str | None = dispatcher.submit_reindex(record.id, full=True)
        warning = None
    except TransientError as exc:
        task_id, warning = None, f"first index not scheduled ({exc.detail}); run reindex"
    if not use_api:
        note = "no GitLab token configured: add the project webhook by hand with this secret"
        if signed:
            note += " and this signing token"
        warning = f"{warning}; {note}" if warning else note
    return Registration(record, secret, task_id, warning, None if use_api else signing_token)


def _delete_hook(settings: Settings, record: RepoRecord) -> bool:
    """Delete the project hook; an already deleted hook (404) is fine."""
    if record.hook_id is None or record.gitlab_project_id is None:
        return False
    if settings.gitlab_token is None or not settings.gitlab_url:
        raise ConfigError("the repository has a GitLab hook but no GitLab token is configured")
    gl = _client(settings, settings.gitlab_url)
    project = gl.projects.get(record.gitlab_project_id, lazy=True)
    try:
        with _gitlab_errors(f"deleting the hook of {record.id}"):
            project.hooks.delete(record.hook_id)
    except NotFoundError:
        log.info("hook already gone", extra={"repo": record.id, "hook_id": record.hook_id})
        return False
    return True


def remove_repo(settings: Settings, registry: RepoRegistry, dispatcher: Any, repo_id: str) -> str:
    """Delete the hook, schedule the deletion of every point, forget the record.

    Returns the id of the removal task. The hook goes first so no new push arrives; the
    record goes last so a failed submit (broker down) can simply be retried.
    """
    record = registry.require(parse_repo_id(repo_id))
    requested_at = time.time()  # a registration after this supersedes the removal task
    _delete_hook(settings, record)
    task_id: str = dispatcher.submit_remove(record.id, requested_at)
    registry.delete(record.id)
    log.info("repository removed", extra={"repo": record.id, "task_id": task_id})
    return task_id
