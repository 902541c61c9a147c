"""Support for the API tests: a real uvicorn server on loopback, and two small indexed repos.

The suite talks to the app the way clients do, over real HTTP, so middleware, error handlers,
serialisation and the lifespan are all exercised. Uvicorn runs in a thread of the test
process (it binds port 0, so no free-port race), against a runtime the tests built and
indexed themselves.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.support import serve_in_thread
from tests.conftest import git

ALPHA = "group/alpha"
BETA = "group/beta"

ALPHA_PAYMENTS = '''"""Payments of the alpha service."""


def settle_payment(payment, ledger):
    """Settle one payment: book it on the ledger and mark it as settled."""
    ledger.book(payment.amount, payment.account)
    payment.settled = True
    return payment


def refund_payment(payment, reason):
    """Refund a settled payment, keeping the reason for the audit trail."""
    if not payment.settled:
        raise ValueError("only settled payments can be refunded")
    payment.refunded = reason
    return payment
'''

ALPHA_UTIL = '''def parse_header_links(value):
    """Parse a Link header into a list of dicts with url and rel."""
    links = []
    for part in value.split(","):
        url, _, params = part.partition(";")
        links.append({"url": url.strip("<> "), "rel": params})
    return links
'''

ALPHA_FEATURE = '''def experimental_fee_waiver(payment):
    """Waive the fee of a payment under the experimental promotion."""
    payment.fee = 0
    return payment
'''

BETA_LEDGER = '''"""The beta ledger: payments are settled here too."""


def close_ledger(ledger, day):
    """Close the ledger for a day once every payment is settled."""
    for entry in ledger.entries(day):
        if not entry.settled:
            raise RuntimeError("unsettled payment")
    ledger.closed.add(day)


def settle_payment_batch(payments, ledger):
    """Settle a batch of payments on the beta ledger in one booking."""
    total = sum(p.amount for p in payments)
    ledger.book(total, "batch")
    return total
'''


def _commit(repo: Path, files: dict[str, str], msg: str) -> str:
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", msg)
    return git(repo, "rev-parse", "HEAD")


def make_repos(root: Path) -> dict[str, Path]:
    """Two git repos: alpha (main + feature/x) and beta (main)."""
    alpha, beta = root / "alpha", root / "beta"
    for r in (alpha, beta):
        r.mkdir(parents=True)
        git(r, "init", "-q", "-b", "main")
    _commit(
        alpha,
        {"src/alpha/payments.py": ALPHA_PAYMENTS, "src/alpha/util.py": ALPHA_UTIL},
        "alpha",
    )
    git(alpha, "checkout", "-qb", "feature/x")
    _commit(alpha, {"src/alpha/feature.py": ALPHA_FEATURE}, "feature")
    git(alpha, "checkout", "-q", "main")
    _commit(beta, {"src/beta/ledger.py": BETA_LEDGER}, "beta")
    return {ALPHA: alpha, BETA: beta}


def index_repos(runtime: Any, repos: dict[str, Path]) -> None:
    # Through the class: IndexService keeps its VectorIndex in an attribute named ``index``,
    # which shadows the ``index`` method on instances.
    index = type(runtime.indexer).index
    index(runtime.indexer, repos[ALPHA], ALPHA, "main")
    index(runtime.indexer, repos[ALPHA], ALPHA, "feature/x")
    index(runtime.indexer, repos[BETA], BETA, "main")


def running_server(app: Any, port: int = 0) -> AbstractContextManager[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port, or ``port``) until the block
    ends: :func:`bench.support.serve_in_thread`, given a minute to start."""
    return serve_in_thread(app, port, start_timeout=60)


@dataclass
class ApiServer:
    """What the session's API server fixture hands to tests."""

    url: str
    runtime: Any
    tokens: dict[str, str] = field(default_factory=dict)
    """role -> token: ``admin`` (all repos), ``alpha`` (group/alpha), ``beta``, ``none``."""
    repos: dict[str, Path] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@dataclass
class PeopleServer:
    """What :func:`serve_for_people` hands to tests: the app's URL, the OIDC issuer whose
    tokens it accepts and the fake GitLab its permissions come from."""

    url: str
    idp: Any  # tests.oidc_issuer.TestIssuer
    gitlab: Any  # tests.gitlab_mock.FakeGitLab


@contextmanager
def serve_for_people(
    root: Path,
    embedder: Any,
    model_dir: Path,
    projects: Mapping[str, int],
    users: Mapping[str, tuple[int, Mapping[str, int]]],
    **settings: Any,
) -> Iterator[PeopleServer]:
    """The app over uvicorn on loopback with per-user access: OIDC tokens of a test issuer,
    permissions read from a fake GitLab holding ``projects`` (repo -> project id, each
    registered with its id) and ``users`` (username -> (user id, {repo: access level})), over
    the two indexed repos of :func:`make_repos`. ``settings`` override :class:`Settings`."""
    from coderag.api import create_app
    from coderag.repos import RepoRecord, RepoRegistry, hash_secret
    from coderag.runtime import build_runtime
    from coderag.settings import Settings
    from tests.gitlab_mock import FakeGitLab
    from tests.oidc_issuer import TestIssuer

    with (
        TestIssuer(realm="bank") as idp,
        FakeGitLab(f"glpat-{secrets.token_hex(10)}", admin_token=True) as gitlab,
    ):
        for repo, pid in projects.items():
            gitlab.add_project(repo, pid, f"https://gitlab.example.com/{repo}.git")
        for username, (uid, levels) in users.items():
            gitlab.add_user(username, uid)
            for repo, level in levels.items():
                gitlab.set_member(repo, uid, level)
        config = Settings(
            data_dir=root / "data",
            model_export_dir=model_dir,
            index_backend="edge",
            oidc_issuer=idp.issuer,
            gitlab_url=gitlab.url,
            gitlab_token=gitlab.token,
            reconcile_interval_seconds=0,
            log_json=True,
            **settings,
        )
        rt = build_runtime(config)
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        rt.warm_up()
        index_repos(rt, make_repos(root / "src"))
        registry = RepoRegistry(rt.index)
        for repo, pid in projects.items():
            registry.put(
                RepoRecord(
                    id=repo,
                    url=f"https://gitlab.example.com/{repo}.git",
                    secret_hash=hash_secret(secrets.token_hex(8)),
                    gitlab_project_id=pid,
                )
            )
        try:
            with running_server(create_app(config, runtime=rt)) as url:
                yield PeopleServer(url, idp, gitlab)
        finally:
            rt.close()
