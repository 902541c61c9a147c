"""One settings class for every process of coderag.

Values come from the environment (prefix ``CODERAG_``) or a ``.env`` file, so the same
image runs embedded or distributed by configuration alone. Validators refuse settings that
would silently do the wrong thing (a distributed index without a URL, a default secret).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from coderag.oidc import DEFAULT_ALGORITHMS

__all__ = ["Settings", "get_settings"]

_FORBIDDEN_SECRETS = {"changeme", "change-me", "secret", "password", "token", "default"}


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "coderag"


class Settings(BaseSettings):
    """All configuration of coderag. Every field maps to ``CODERAG_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="CODERAG_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- storage -------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where the embedded index, the embedding cache, exported models and git mirrors live."""

    index_backend: Literal["auto", "edge", "server"] = "auto"
    """``edge``: Qdrant Edge shard in ``data_dir`` (one process owns it). ``server``: a Qdrant
    server at ``qdrant_url``. ``auto`` picks ``server`` when ``qdrant_url`` is set."""
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    collection: str = "coderag"

    # --- chunking ------------------------------------------------------------------------
    chunk_max_tokens: int = Field(default=256, ge=32, le=8192)
    """Budget per chunk, header included, counted in the embedder's own tokens."""
    chunk_min_tokens: int = Field(default=48, ge=0)
    """Small sibling nodes are merged until they reach at least this many tokens."""
    max_file_bytes: int = Field(default=1_000_000, ge=1)
    extra_ignore: list[str] = Field(default_factory=list)
    """Extra gitignore-style patterns to skip, on top of .gitignore and the built-in rules."""
    redact_secrets: bool = True
    """Replace private keys, cloud keys, tokens and passwords in assignments by
    ``[REDACTED:<kind>]`` before chunking (see :mod:`chunkers.secrets`), so they are never
    embedded, stored or served. Turning it off (or on) re-writes every branch once."""
    redact_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Allow-list entries for files of known fakes, in every repository (a repository adds its
    own in ``.coderag/redact-allow``): path globs such as ``tests/fixtures/**`` (optionally
    followed by kinds: ``docs/*.md password,token``) and ``value:<exact value>``. Findings
    they cover stay in the text and are reported as allowed. A JSON list, or entries
    separated by newlines or ``;``. Too broad a glob (``**``, ``*.py``) is refused. Part of the
    index fingerprint: changing it re-writes every branch once."""

    @field_validator("redact_allow", mode="before")
    @classmethod
    def _allow_entries(cls, v: Any) -> Any:
        """Split the entries, and refuse the run on a broad or malformed one (a typo must not
        silently keep secrets, nor silently redact fixtures)."""
        from chunkers.secrets import AllowList

        if isinstance(v, str):
            text = v.strip()
            v = json.loads(text) if text.startswith("[") else re.split(r"[\n;]", text)
        entries = [str(e).strip() for e in v or [] if str(e).strip()]
        AllowList.parse(entries)  # raises ValueError with every refused entry
        return entries

    # --- embedding -----------------------------------------------------------------------
    embedding_model: str | None = None
    """Local path of a sentence-transformers model; ``None`` uses the bundled MiniLM."""
    embedding_backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    """``auto``: torch on CUDA, otherwise the fastest CPU backend that keeps the vectors."""
    embedding_device: Literal["auto", "cpu", "cuda"] = "auto"
    embedding_precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    """``auto``: fp16 on CUDA; on the CPU the pick of ``coderag bench precision`` when it was
    measured on a CPU like this one, else bf16 where the CPU runs it natively, else fp32.
    Part of the model id, so of the index fingerprint: pin one value for a whole fleet of
    mixed CPUs (a worker refuses to write a branch stored in another precision)."""
    embedding_batch_size: int = Field(default=32, ge=1, le=4096)
    embedding_cuda_batch_size: int = Field(default=256, ge=1, le=8192)
    """Texts per batch when the model runs on a GPU (length-sorted, so padding stays small;
    batches of 32 leave a GPU mostly idle)."""
    embedding_cache: bool = True
    embedding_cache_dir: Path | None = None
    """Override of ``data_dir/cache`` (e.g. one cache shared by many eval data dirs)."""
    model_export_dir: Path | None = None
    """Override of ``data_dir/models``, where exported ONNX/OpenVINO models are kept."""
    model_registry_path: Path | None = None
    """Override of ``data_dir/model-registry.json``: the models added with ``coderag models
    add`` and which one serves (docs/MODELS.md). Absent: the settings' model, as always."""
    model_watch_seconds: float = Field(default=1.0, ge=0)
    """How often a serving process (API, worker) checks which model is active: the registry
    file's ``stat`` on Edge, the collection alias on a Qdrant server (only once a model was
    added on this machine). A switch is served within about this time; 0 turns it off."""
    model_retire_seconds: float = Field(default=30.0, ge=0)
    """How long the pair switched away from stays open for requests that already hold it
    before its index is closed (an Edge shard is then free for ``coderag models build``)."""

    # --- retrieval -----------------------------------------------------------------------
    search_mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    reranker_model: str | None = None
    """Local path of a cross-encoder; no reranker is bundled, so off by default."""
    max_per_file: int = Field(default=2, ge=1)
    context_token_budget: int = Field(default=4000, ge=100)

    # --- service -------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_tokens: dict[str, list[str]] = Field(default_factory=dict)
    """Bearer token -> repos it may read (``["*"]`` for all). Empty: auth disabled (embedded
    single-user default); set it for any shared deployment."""
    delegation_tokens: list[SecretStr] = Field(default_factory=list)
    """Tokens of gateways (the LiteLLM hook) that act for one of their authenticated users,
    named in the ``X-Coderag-User`` header: each such request reads exactly what that user may
    read in GitLab, and a request without a user is refused. They read nothing of their own."""
    oidc_issuer: str | None = None
    """Issuer URL of the site's OIDC provider (Keycloak: ``https://<host>/realms/<realm>``).
    Set: bearer JWTs of that issuer authenticate people, whose repos come from GitLab."""
    oidc_audience: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["coderag"])
    """Accepted ``aud`` values (a token must name at least one)."""
    oidc_jwks_url: str | None = None
    """The issuer's JWKS URL, when discovery (``/.well-known/openid-configuration``) is not
    reachable or not wanted."""
    oidc_jwks_file: Path | None = None
    """A JWKS file: a fully offline site's keys, never fetched (replace it when keys rotate)."""
    oidc_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS)
    )
    """Signature algorithms accepted: asymmetric only (``none`` and ``HS*`` are refused)."""
    oidc_user_claim: str = "preferred_username"
    """The claim that names the user as GitLab knows them (``preferred_username``,
    ``email``, ``sub``)."""
    oidc_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""
    permissions_gitlab_token: SecretStr | None = None
    """GitLab token that may read users, projects and memberships (an administrator's
    ``read_api`` token sees every membership and the ``external`` flag). Default: the
    ``gitlab_token``."""
    permissions_ttl_seconds: float = Field(default=300.0, ge=0)
    """How long a user's GitLab permissions are cached: a removed member loses access within
    this time. Cached answers still count while GitLab is down; nothing else does."""
    permissions_min_access_level: int = Field(default=20, ge=10, le=50)
    """Least GitLab role that reads code by membership (20 = Reporter)."""
    permissions_user_lookup: Literal["username", "email"] = "username"
    """How the token's user claim is found in GitLab: as a username, or as an email."""
    audit_query_text: bool = False
    """Write the query text into audit lines. Off: a query often quotes the code."""
    celery_broker_url: str | None = None
    """``None``: embedded mode, tasks run in-process. Set (``redis://...``): distributed."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    gitlab_url: str | None = None
    gitlab_token: SecretStr | None = None
    webhook_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """Largest webhook body accepted (413 above it). 25 MiB by default: GitLab's own cap on
    a webhook payload (GitLab docs, "Webhook limits"), so no delivery GitLab sends is refused.
    The body is read into one buffer, checked against the cap as it grows."""
    webhook_spool_path: Path | None = None
    """Override of ``data_dir/webhooks/spool.sqlite3``, the durable webhook spool (see
    :mod:`webhooks.spool`). Put it on a persistent volume: a verified delivery lives only
    there until the broker has it."""
    webhook_spool_retention_seconds: float = Field(default=7 * 24 * 3600.0, ge=60.0)
    """How long forwarded deliveries stay in the spool: their delivery ids are the
    de-duplication record, so a resend or replay within this time is answered "duplicate"."""
    webhook_signature_tolerance_seconds: float = Field(default=300.0, ge=1.0)
    """Largest difference between a signed delivery's ``webhook-timestamp`` and this
    server's clock (either way) that is accepted; older or newer is a 401. 300 s is the
    Standard Webhooks recommendation that GitLab's signing follows."""
    secret_key: SecretStr | None = None
    """Key that encrypts webhook signing tokens at rest (AES-256-GCM, the key derived with
    HKDF-SHA256). The server must hold a hook's signing key itself to check its HMAC, so the
    registry keeps it encrypted, never in clear. At least 32 characters, not a placeholder;
    needed only for signed hooks (``POST /v1/repos`` with ``"signed": true``). Changing it
    makes the stored signing tokens unreadable: re-register those repositories."""
    index_tags: bool = False
    index_merge_requests: bool = False
    """Index the source branch of open same-project merge requests. Also decides whether
    the project hooks coderag creates subscribe to merge request events at all (off: GitLab
    never sends them)."""
    push_debounce_seconds: float = Field(default=0.5, ge=0)
    public_url: str | None = None
    """Base URL at which GitLab reaches this service (``https://coderag.bank.internal``): the
    project hooks that ``coderag repo add`` creates point at ``<public_url>/v1/webhooks/gitlab``."""
    full_index_queue: Literal["index", "embed"] = "index"
    """Celery queue of full (re)index runs. ``embed`` sends the embedding-heavy ones to GPU
    workers (``coderag worker --queues embed --pool solo``); pushes stay on ``index``."""
    branch_lock_ttl_seconds: float = Field(default=60.0, ge=1.0)
    """Expiry of a branch's run lock (renewed every third of it while the run lives): how
    long a branch stays blocked after its worker was killed mid-run."""
    recovery_interval_seconds: float = Field(default=30.0, ge=0)
    """Seconds between a worker's sweeps for orphaned pushes (a pending commit that no queued
    task and no live run will index, e.g. after a worker was killed or a task was lost with a
    Redis outage); 0 turns the sweep off. See :mod:`indexer.queue.recovery`."""
    recovery_stale_seconds: float = Field(default=600.0, ge=1.0)
    """Age past which the sweep stops trusting a branch's "run scheduled" flag and queues a
    run anyway (its task may sit in a dead consumer's unacked set until the broker's
    visibility timeout, an hour). At most one extra, harmless, folded run per branch per
    period when the queue is merely that far behind."""
    reconcile_interval_seconds: float = Field(default=300.0, ge=0)
    """Seconds between reconciliation passes (:mod:`coderag.freshness`): every registered
    repo's branch heads (``git ls-remote``) are compared with the indexed commits and what is
    behind is scheduled, vanished branches are removed, and the project hook's health is read
    from GitLab. GitLab sends a delivery once and fires no push hook for a push of more than
    3 refs, so this pass is what bounds how stale a branch can get. 0 turns it off."""
    reconcile_reenable_hooks: bool = True
    """Re-enable a *temporarily* disabled project hook with a test delivery
    (``POST /projects/:id/hooks/:hook_id/test/push_events``; GitLab docs "Failing webhooks")
    when the GitLab token allows it. A permanently disabled hook is only reported."""
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("oidc_audience", "oidc_algorithms", mode="before")
    @classmethod
    def _list_or_words(cls, v: Any) -> Any:
        """A JSON list (``["coderag","ide"]``) or plain words (``coderag`` or ``a,b``)."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [w.strip() for w in text.split(",") if w.strip()]
        return v

    @field_validator("oidc_algorithms")
    @classmethod
    def _asymmetric_only(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            raise ValueError(
                f"refusing OIDC algorithms {bad}: 'none' verifies nothing and HS* would accept "
                "tokens signed with the issuer's public key"
            )
        if not v:
            raise ValueError("CODERAG_OIDC_ALGORITHMS must name at least one algorithm")
        return v

    @field_validator("delegation_tokens")
    @classmethod
    def _real_delegation_tokens(cls, v: list[SecretStr]) -> list[SecretStr]:
        for t in v:
            raw = t.get_secret_value()
            if raw.strip().lower() in _FORBIDDEN_SECRETS or len(raw) < 16:
                raise ValueError("delegation tokens must be at least 16 characters, not a default")
        return v

    @field_validator("gitlab_token", "qdrant_api_key", "permissions_gitlab_token")
    @classmethod
    def _no_default_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value().strip().lower() in _FORBIDDEN_SECRETS:
            raise ValueError("refusing a default/placeholder secret; set a real value")
        return v

    @field_validator("secret_key")
    @classmethod
    def _real_secret_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        raw = v.get_secret_value().strip()
        if raw.lower() in _FORBIDDEN_SECRETS or len(set(raw)) < 8:
            raise ValueError("refusing a default/placeholder CODERAG_SECRET_KEY; set a real one")
        if len(raw) < 32:
            raise ValueError("CODERAG_SECRET_KEY must be at least 32 characters")
        return v

    @field_validator("api_tokens")
    @classmethod
    def _no_default_tokens(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for token in v:
            if token.strip().lower() in _FORBIDDEN_SECRETS or len(token) < 16:
                raise ValueError("API tokens must be at least 16 characters and not a default")
        return v

    @model_validator(mode="after")
    def _check_backend(self) -> Settings:
        if self.index_backend == "server" and not self.qdrant_url:
            raise ValueError("index_backend=server needs CODERAG_QDRANT_URL")
        overlap = set(self.api_tokens) & {t.get_secret_value() for t in self.delegation_tokens}
        if overlap:
            raise ValueError("a token cannot be both a service token and a delegation token")
        if (self.oidc_issuer or self.delegation_tokens) and not (
            self.gitlab_url and (self.permissions_gitlab_token or self.gitlab_token)
        ):
            raise ValueError(
                "per-user access (CODERAG_OIDC_ISSUER or CODERAG_DELEGATION_TOKENS) reads "
                "permissions from GitLab: set CODERAG_GITLAB_URL and "
                "CODERAG_PERMISSIONS_GITLAB_TOKEN (or CODERAG_GITLAB_TOKEN)"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens or self.delegation_tokens or self.oidc_issuer)

    @property
    def resolved_backend(self) -> Literal["edge", "server"]:
        if self.index_backend == "auto":
            return "server" if self.qdrant_url else "edge"
        return self.index_backend

    @property
    def distributed(self) -> bool:
        return self.celery_broker_url is not None

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def cache_dir(self) -> Path:
        return self.embedding_cache_dir or self.data_dir / "cache"

    @property
    def models_dir(self) -> Path:
        return self.model_export_dir or self.data_dir / "models"

    @property
    def model_registry_file(self) -> Path:
        return self.model_registry_path or self.data_dir / "model-registry.json"

    @property
    def model_index_root(self) -> Path:
        """Edge shards of added models: ``<root>/<model name>/`` each, one LOCK per model."""
        return self.data_dir / "index-models"

    @property
    def mirrors_dir(self) -> Path:
        return self.data_dir / "mirrors"

    @property
    def webhook_spool_file(self) -> Path:
        return self.webhook_spool_path or self.data_dir / "webhooks" / "spool.sqlite3"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once (tests build their own ``Settings`` instead)."""
    return Settings()
