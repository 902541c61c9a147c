"""The tenant-isolation matrix: a token scoped to one repository gets nothing of another,
through every endpoint the app documents and every filter combination; webhook secrets are
per repository.

Four repositories are indexed, each with a canary word (what the queries ask for) and a
secret string that no request ever contains, so a secret in any answer can only be a leak:
``group/alpha``, ``group/beta``, and two whose names start like beta's, ``group/beta-tools``
(a string prefix) and ``group/beta/sub`` (a path prefix). The app runs over real HTTP with
``api_tokens``: ``alpha`` -> [alpha], ``beta`` -> [beta], ``admin`` -> ["*"], ``none`` -> [].

People ask too, and what they may read comes from GitLab (a fake GitLab on loopback with
recorded-shape payloads) while who they are comes from OIDC tokens of a test issuer on
loopback (:class:`tests.oidc_issuer.TestIssuer`): ``alice`` is a Reporter of alpha, ``bob`` a
Developer of beta, ``gus`` only a Guest of beta and beta/sub (Guests read no code of a private
project), ``erin`` an *external* Maintainer of alpha; beta-tools is an *internal* project,
which every signed-in non-external user may read. ``gw-alice`` and ``gw-bob`` are the gateway
acting for alice and bob (a delegation token and ``X-Coderag-User``). Their scopes in
:data:`SCOPES` are what GitLab's rules give, and the same matrix runs for them.

The endpoints come from the app's own OpenAPI schema, and so do the fields of each request
body: an operation or a body field the matrix has no values for fails the test, so a new
endpoint or filter cannot ship unchecked. For each (endpoint, filter combination, token) the
answer must carry no secret and no path of a repository outside the token's scope, every
result must belong to the scope, a request naming a repository outside the scope must be a
403 with a reason (never a silently empty 200), and no or an unknown token must be a 401.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from coderag.repos import RepoRecord, RepoRegistry, hash_secret
from coderag.runtime import Runtime, build_runtime
from coderag.settings import Settings
from indexer.queue import EmbeddedDispatcher
from tests.api_support import running_server
from tests.conftest import git
from tests.gitlab_mock import FakeGitLab
from tests.ingest_support import payload
from tests.oidc_issuer import TestIssuer

pytestmark = pytest.mark.integration

A, B, C1, C2 = "group/alpha", "group/beta", "group/beta-tools", "group/beta/sub"


@dataclass(frozen=True)
class Repo:
    name: str
    canary: str  # what queries ask for
    vault: str  # a directory only this repo has
    secret: str = field(default_factory=lambda: f"SECRET-{secrets.token_hex(8)}")
    hook_secret: str = field(default_factory=lambda: f"hook-{secrets.token_hex(16)}")

    @property
    def vault_file(self) -> str:
        return f"src/{self.vault}/ledger.py"

    def files(self) -> dict[str, str]:
        c, s = self.canary, self.secret
        return {
            self.vault_file: (
                f'def reconcile_{c}(entries):\n    """Reconcile the {c} ledger entries; '
                f'audit key {s}."""\n    return sum(e.amount for e in entries)  # {s}\n'
            ),
            "src/shared/common.py": (
                f'def shared_helper(entries):\n    """Shared helper of {c}: {s}."""\n'
                f"    return [e for e in entries if e]\n"
            ),
            "README.md": f"# {self.name}\n\nThe {c} service. Key {s}.\n",
        }


REPOS = {
    A: Repo(A, "zebracanary", "alpha_vault"),
    B: Repo(B, "quokkacanary", "beta_vault"),
    C1: Repo(C1, "wombatcanary", "betatools_vault"),
    C2: Repo(C2, "numbatcanary", "betasub_vault"),
}
TOKEN_SCOPES: dict[str, set[str] | None] = {
    "alpha": {A},
    "beta": {B},
    "none": set(),
    "admin": None,
}
"""service token role -> repos it may read (None: all)."""
PERSON_SCOPES: dict[str, set[str]] = {
    "alice": {A, C1},
    "bob": {B, C1},
    "gus": {C1},
    "erin": {A},
    "gw-alice": {A, C1},
    "gw-bob": {B, C1},
}
"""person (OIDC) or gateway-for-person role -> what GitLab's rules let them read."""
SCOPES: dict[str, set[str] | None] = {**TOKEN_SCOPES, **PERSON_SCOPES}
MATRIX_ROLES = [r for r in SCOPES if r != "admin"]

PROJECT_IDS = {A: 101, B: 102, C1: 103, C2: 104}
VISIBILITY = {A: "private", B: "private", C1: "internal", C2: "private"}
GITLAB_USERS: dict[str, tuple[int, bool, dict[str, int]]] = {
    # username -> (user id, external, {repo: access level})
    "alice": (11, False, {A: 20}),
    "bob": (12, False, {B: 30}),
    "gus": (13, False, {B: 10, C2: 10}),
    "erin": (14, True, {A: 40}),
}


@dataclass
class Server:
    url: str
    runtime: Runtime
    tokens: dict[str, str]
    http: httpx.Client
    app: Any
    idp: TestIssuer
    gitlab: FakeGitLab
    delegation: str
    rotated_kid: str

    def auth(self, role: str | None) -> dict[str, str]:
        """Headers of ``role``: its service token, a fresh OIDC token of the person, or the
        gateway's delegation token naming the person."""
        if not role:
            return {}
        if role in self.tokens:
            return {"Authorization": f"Bearer {self.tokens[role]}"}
        if role.startswith("gw-"):
            return {"Authorization": f"Bearer {self.delegation}", "X-Coderag-User": role[3:]}
        token = self.idp.mint(username=role, sub=f"sub-{role}")
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, model_dir: Path
) -> Iterator[Server]:
    from coderag.api import create_app

    root = tmp_path_factory.mktemp("isolation")
    tokens = {role: f"{role}-{secrets.token_hex(16)}" for role in TOKEN_SCOPES}
    delegation = f"gateway-{secrets.token_hex(16)}"
    idp = TestIssuer(realm="bank").__enter__()
    rotated_kid = idp.rsa_kid
    idp.rotate()  # tokens signed with the rotated-out key must be refused
    gitlab = FakeGitLab(f"glpat-{secrets.token_hex(10)}", admin_token=True).__enter__()
    for repo, pid in PROJECT_IDS.items():
        gitlab.add_project(
            repo, pid, f"https://gitlab.example.com/{repo}.git", visibility=VISIBILITY[repo]
        )
    for username, (uid, external, levels) in GITLAB_USERS.items():
        gitlab.add_user(username, uid, external=external)
        for repo, level in levels.items():
            gitlab.set_member(repo, uid, level)
    settings = Settings(
        data_dir=root / "data",
        model_export_dir=model_dir,
        index_backend="edge",
        api_tokens={
            tokens[role]: ["*"] if scope is None else sorted(scope)
            for role, scope in TOKEN_SCOPES.items()
        },
        delegation_tokens=[delegation],
        oidc_issuer=idp.issuer,
        gitlab_url=gitlab.url,
        gitlab_token=gitlab.token,
        reconcile_interval_seconds=0,
        push_debounce_seconds=3600,  # an accepted push stays pending: countable, never run
        log_json=False,
        log_level="WARNING",
    )
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    rt.warm_up()
    registry = RepoRegistry(rt.index)
    for repo in REPOS.values():
        work = root / "src" / repo.name.replace("/", "_")
        work.mkdir(parents=True)
        git(work, "init", "-q", "-b", "main")
        for rel, text in repo.files().items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        git(work, "add", "-A")
        git(work, "commit", "-qm", "init")
        rt.indexer.index(work, repo.name, "main")
        git(work, "checkout", "-qb", "release")
        (work / "src" / repo.vault / "release.py").write_text(
            f'def release_{repo.canary}():\n    return "{repo.secret}"\n'
        )
        git(work, "add", "-A")
        git(work, "commit", "-qm", "release")
        rt.indexer.index(work, repo.name, "release")
        registry.put(
            RepoRecord(
                id=repo.name,
                url=str(work),
                branches=["main"],
                secret_hash=hash_secret(repo.hook_secret),
                gitlab_project_id=PROJECT_IDS[repo.name],
            )
        )
    app = create_app(settings, runtime=rt)
    try:
        with (
            running_server(app) as url,
            httpx.Client(base_url=url, timeout=60, trust_env=False) as http,
        ):
            yield Server(url, rt, tokens, http, app, idp, gitlab, delegation, rotated_kid)
    finally:
        rt.close()
        gitlab.__exit__(None, None, None)
        idp.__exit__(None, None, None)


# --- what a leak is ------------------------------------------------------------------------------


def _foreign(scope: set[str] | None) -> list[Repo]:
    return [r for r in REPOS.values() if scope is not None and r.name not in scope]


def leaks_in(body: str, scope: set[str] | None, status: int) -> list[str]:
    """Everything of a repository outside ``scope`` that ``body`` shows: a secret anywhere;
    in a 200, also a repo-unique path, and any result of a foreign repo."""
    found = [f"secret of {r.name}" for r in _foreign(scope) if r.secret in body]
    if status != 200:
        return found
    found += [f"path of {r.name}" for r in _foreign(scope) if r.vault in body]
    if scope is None:
        return found
    data = json.loads(body)
    items: list[Any] = []
    if isinstance(data, dict):
        items = data.get("results") or data.get("blocks") or data.get("repos") or []
        if "repo" in data:
            items = [data]
    elif isinstance(data, list):  # Continue items: "repo: path (lines)" descriptions
        items = [{"repo": str(it.get("description", "")).split(":")[0]} for it in data]
    for it in items:
        repo = it.get("repo") or it.get("id")
        if repo is not None and repo not in scope:
            found.append(f"result of {repo}")
    return found


# --- request variants ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request of the matrix and the statuses it may get."""

    op: str  # "METHOD /path/template"
    label: str
    method: str
    path: str
    body: Any = None
    expect: frozenset[int] = frozenset({200})


def _named_others(scope: set[str] | None, named: list[str]) -> bool:
    return scope is not None and any(r not in scope for r in named if r)


def _expect(scope: set[str] | None, named: list[str], invalid: bool = False) -> frozenset[int]:
    if invalid:
        return frozenset({422})
    if scope is not None and not scope:
        return frozenset({403})  # a token with no repositories reads nothing
    return frozenset({403} if _named_others(scope, named) else {200})


def repo_lists(own: str, other: str) -> list[tuple[str, list[str] | None]]:
    """Values of a ``repos`` list: the token's own repo, another's, and exotic spellings."""
    head, _, tail = other.partition("/")
    return [
        ("omitted", None),
        ("empty", []),
        ("own", [own]),
        ("own-twice", [own, own]),
        ("other", [other]),
        ("own+other", [own, other]),
        ("other+own", [other, own]),
        ("all-four", sorted(REPOS)),
        ("string-prefix", [C1]),
        ("path-prefix", [C2]),
        ("star", ["*"]),
        ("group-star", [f"{head}/*"]),
        ("upper", [other.upper()]),
        ("title", [other.title()]),
        ("trailing-slash", [other + "/"]),
        ("leading-slash", ["/" + other]),
        ("dotdot", [f"{own}/../{tail}"]),
        ("dotdot-rel", [f"../{tail}"]),
        ("url-encoded", [quote(other, safe="")]),
        ("space", [f" {other}"]),
        ("own-space", [f"{own} "]),
        ("nul", [other + "\x00"]),
        ("comma-joined", [f"{own},{other}"]),
        ("unknown", [f"{head}/does-not-exist"]),
        ("blank", [""]),
    ]


def queries(own: Repo, other: Repo) -> list[str]:
    return [
        other.canary,
        f"reconcile_{other.canary}",
        other.vault_file,
        f"{other.name} {other.canary}",
        "*",
        own.canary,
    ]


FILTER_VALUES: dict[str, list[tuple[str, Any]]] = {
    "branch": [
        ("main", "main"),
        ("release", "release"),
        ("star", "*"),
        ("empty", ""),
        ("dotdot", "../main"),
        ("upper", "MAIN"),
    ],
    "path_globs": [
        ("other-vault", ["src/beta_vault/**"]),
        ("all", ["**"]),
        ("all-files", ["**/*"]),
        ("star", ["*"]),
        ("absolute", ["/**"]),
        ("dotdot", ["../**"]),
        ("shared", ["src/shared/*.py"]),
        ("repo-as-path", ["group/beta/**"]),
        ("vaults", ["**/*vault/**"]),
        ("many", ["src/**", "README.md", "**/*.py"]),
    ],
    "languages": [
        ("python", ["python"]),
        ("star", ["*"]),
        ("upper", ["PYTHON"]),
        ("two", ["python", "markdown"]),
    ],
    "mode": [("hybrid", "hybrid"), ("dense", "dense"), ("lexical", "lexical")],
    "workspace_path": [("abs", "/home/dev/beta"), ("uri", "file:///home/dev/beta")],
    "k": [("max", 100), ("one", 1)],
    "token_budget": [("max", 200_000), ("min", 100)],
}
"""Values of every filter field (``repos`` and the query text are varied separately)."""


def search_cases(
    op: str, path: str, fields: set[str], role: str, own: Repo, other: Repo
) -> list[Case]:
    """/v1/search and /v1/context: every repos value x query x mode, then every other
    filter value alone and together, with no repos and with the token's own."""
    unknown = fields - set(FILTER_VALUES) - {"repos", "query"}
    assert not unknown, f"{op}: body fields the matrix has no values for: {unknown}"
    scope = SCOPES[role]
    cases = []
    for (rlabel, repos), query, mode in itertools.product(
        repo_lists(own.name, other.name), queries(own, other), ("hybrid", "lexical")
    ):
        body: dict[str, Any] = {"query": query, "k": 100, "mode": mode}
        if repos is not None:
            body["repos"] = repos
        invalid = repos == [""]  # a repo name has min_length 1
        cases.append(
            Case(
                op,
                f"repos={rlabel} q={query!r} {mode}",
                "POST",
                path,
                body,
                _expect(scope, repos or [], invalid),
            )
        )
    for name in sorted(fields & set(FILTER_VALUES)):
        for (vlabel, value), repos in itertools.product(FILTER_VALUES[name], (None, [own.name])):
            body = {"query": other.canary, "k": 100, name: value}
            if name == "k":
                body["k"] = value
            if repos:
                body["repos"] = repos
            cases.append(
                Case(
                    op,
                    f"{name}={vlabel} repos={repos}",
                    "POST",
                    path,
                    body,
                    _expect(scope, repos or []),
                )
            )
    # Everything at once: the widest filters and the other repo's words.
    everything = {
        "query": f"{other.vault_file} reconcile_{other.canary} {other.canary}",
        "k": 100,
        "branch": "main",
        "path_globs": ["**", "src/beta_vault/**", "**/*.py"],
        "languages": ["python", "markdown"],
        "mode": "hybrid",
    }
    cases.append(Case(op, "everything", "POST", path, everything, _expect(scope, [])))
    return cases


def continue_cases(
    op: str, path: str, fields: set[str], options: set[str], role: str, own: Repo, other: Repo
) -> list[Case]:
    """/v1/continue/context: repos through ``options.repo``, ``options.repos`` (a list or a
    comma-separated string), the query in ``query`` or ``fullInput``, every option."""
    known_top = {"query", "fullInput", "options", "workspacePath"}
    assert fields <= known_top, f"{op}: fields without values: {fields - known_top}"
    known_opts = {"repo", "repos", *FILTER_VALUES}
    assert options <= known_opts, f"{op}: options without values: {options - known_opts}"
    scope = SCOPES[role]
    cases = []

    def add(label: str, body: dict[str, Any], named: list[str]) -> None:
        cases.append(Case(op, label, "POST", path, body, _expect(scope, named)))

    for (rlabel, repos), query in itertools.product(
        repo_lists(own.name, other.name), queries(own, other)
    ):
        for text_field in ("fullInput", "query"):
            body: dict[str, Any] = {text_field: query}
            if repos is not None:
                body["options"] = {"repos": repos}
            add(f"repos={rlabel} {text_field}={query!r}", body, list(repos or []))
            if repos == [""]:  # a repo name in a list has min_length 1
                cases[-1] = Case(op, cases[-1].label, "POST", path, body, frozenset({422}))
        if repos and len(repos) == 1:
            add(f"repo={rlabel}", {"fullInput": query, "options": {"repo": repos[0]}}, repos)
        if repos:
            joined = ",".join(repos)
            parts = [p.strip() for p in joined.split(",") if p.strip()]
            add(f"repos-string={rlabel}", {"fullInput": query, "options": {"repos": joined}}, parts)
    for text in ("", "   ", f"@coderag {other.canary}"):  # empty text still checks the scope
        add(
            f"text={text!r} repo=other",
            {"fullInput": text, "options": {"repo": other.name}},
            [other.name],
        )
        add(f"text={text!r}", {"fullInput": text}, [])
    for name in sorted(options & set(FILTER_VALUES)):
        for (vlabel, value), repo in itertools.product(FILTER_VALUES[name], (None, own.name)):
            opts: dict[str, Any] = {name: value}
            if repo:
                opts["repo"] = repo
            add(
                f"options.{name}={vlabel} repo={repo}",
                {"fullInput": other.canary, "options": opts},
                [],
            )
    add("workspacePath", {"fullInput": other.canary, "workspacePath": "/home/dev/beta"}, [])
    return cases


def status_cases(op: str, template: str, role: str, own: Repo, other: Repo) -> list[Case]:
    """``GET /v1/repos/{repo}/status`` for the own repo, others, and spellings of others."""
    scope = SCOPES[role]
    head, _, tail = other.name.partition("/")
    cases = []
    raw = {
        "own": own.name,
        "other": other.name,
        "string-prefix": C1,
        "path-prefix": C2,
        "unknown": f"{head}/does-not-exist",
        "upper": other.name.upper(),
        "trailing-slash": other.name + "/",
        "double-slash": other.name.replace("/", "//"),
        "encoded-slash": other.name.replace("/", "%2F"),
        "encoded-dotdot": f"{own.name}/%2e%2e/{tail}",
        "star": "*",
        "group-star": f"{head}/*",
        "space": "%20" + other.name,
    }
    for label, value in raw.items():
        path = template.replace("{repo}", value)
        named = [value.replace("%2F", "/")]
        expect = _expect(scope, named)
        if expect == {403} and label not in ("other", "string-prefix", "path-prefix", "unknown"):
            expect = frozenset({403, 404, 422})  # refused, whichever check comes first
        if scope is None and label != "own":
            expect = frozenset({200, 404, 422})
        cases.append(Case(op, f"repo={label}", "GET", path, None, expect))
    return cases


def admin_cases(
    op: str, method: str, template: str, role: str, own: Repo, other: Repo
) -> list[Case]:
    """Changing what is indexed needs an unrestricted token: a scoped one gets 403, on its
    own repo as much as on another's (an admin token is not used: these change state)."""
    if SCOPES[role] is None:
        return []
    cases = []
    for label, repo in (("own", own.name), ("other", other.name)):
        path = template.replace("{repo_id}", repo)
        body = None
        if "{repo_id}" not in template:
            body = {"url": f"https://gitlab.example.com/{repo}", "id": repo}
        cases.append(Case(op, f"repo={label}", method, path, body, frozenset({403})))
    return cases


def list_cases(op: str, path: str, role: str) -> list[Case]:
    return [
        Case(op, "plain", "GET", path),
        Case(op, "repo query param", "GET", f"{path}?repo={B}&repos={B}&all=true"),
    ]


# --- the matrix ----------------------------------------------------------------------------------

PUBLIC = {"GET /healthz", "GET /readyz", "GET /metrics"}
WEBHOOK = "POST /v1/webhooks/gitlab"


def operations(server: Server) -> dict[str, dict[str, Any]]:
    """Every operation of the app's OpenAPI schema: "METHOD /path" -> its operation object."""
    schema = server.http.get("/openapi.json").json()
    ops = {}
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            op["_schema"] = schema
            ops[f"{method.upper()} {path}"] = op
    return ops


def _body_fields(op: dict[str, Any]) -> tuple[str, set[str], set[str]]:
    """(schema name, its properties, properties of its ``options`` object if any)."""
    schema = op["_schema"]
    ref = op["requestBody"]["content"]["application/json"]["schema"].get("$ref", "")
    name = ref.rsplit("/", 1)[-1]
    comps = schema["components"]["schemas"]
    props = set(comps[name].get("properties", {}))
    options: set[str] = set()
    if "options" in props:
        opt = comps[name]["properties"]["options"]
        refs = [x.get("$ref", "") for x in opt.get("anyOf", [opt])]
        for r in refs:
            if r:
                options |= set(comps[r.rsplit("/", 1)[-1]].get("properties", {}))
    return name, props, options


def cases_for(key: str, op: dict[str, Any], role: str) -> list[Case]:
    method, template = key.split(" ", 1)
    # "own": a repo the role may read (requests naming it must work); "other": alpha or beta,
    # whichever it may not read (what the queries go after).
    scope = SCOPES[role] or set()
    own = REPOS[next((r for r in (A, B, C1, C2) if r in scope), A)]
    other = REPOS[next((r for r in (B, A) if r not in scope), B)]
    if method == "POST" and "requestBody" in op and "{" not in template:
        name, props, options = _body_fields(op)
        if name in ("SearchRequest", "ContextRequest"):
            return search_cases(key, template, props, role, own, other)
        if name == "ContinueRequest":
            return continue_cases(key, template, props, options, role, own, other)
        if name == "RegisterRepo":
            return admin_cases(key, method, template, role, own, other)
    if method == "GET" and template.endswith("/{repo}/status"):
        return status_cases(key, template, role, own, other)
    if method == "GET" and template == "/v1/repos":
        return list_cases(key, template, role)
    if "{repo_id}" in template:
        return admin_cases(key, method, template, role, own, other)
    raise AssertionError(f"{key}: no request variants for this operation; extend the matrix")


def run_case(server: Server, role: str, case: Case) -> tuple[int, str]:
    resp = server.http.request(
        case.method,
        case.path,
        headers=server.auth(role),
        json=case.body,
    )
    return resp.status_code, resp.text


def test_the_matrix_finds_the_other_repo_for_a_token_that_may_read_it(server: Server):
    """Without this, the matrix below could pass by finding nothing at all."""
    for role, repo in (("admin", REPOS[B]), ("beta", REPOS[B]), ("alpha", REPOS[A])):
        for path, body in (
            ("/v1/search", {"query": repo.canary, "k": 100}),
            ("/v1/context", {"query": repo.canary, "k": 100}),
            ("/v1/continue/context", {"fullInput": repo.canary}),
        ):
            resp = server.http.post(path, json=body, headers=server.auth(role))
            assert resp.status_code == 200 and repo.secret in resp.text, (role, path)
    # ... and both prefix-named repos for the admin: the prefix cases are real.
    for repo in (REPOS[C1], REPOS[C2]):
        resp = server.http.post(
            "/v1/search",
            json={"query": repo.canary, "repos": [repo.name]},
            headers=server.auth("admin"),
        )
        assert repo.secret in resp.text


def test_isolation_matrix(server: Server):
    ops = operations(server)
    covered = set()
    cases: list[tuple[str, Case]] = []
    for key, op in sorted(ops.items()):
        if key in PUBLIC or key == WEBHOOK:
            continue
        assert op.get("security"), f"{key} is not behind the bearer token"
        covered.add(key)
        for role in MATRIX_ROLES:
            cases.extend((role, c) for c in cases_for(key, op, role))
    assert {"POST /v1/search", "POST /v1/context", "POST /v1/continue/context"} <= covered

    def check(item: tuple[str, Case]) -> list[str]:
        role, case = item
        status, body = run_case(server, role, case)
        problems = [f"{p}" for p in leaks_in(body, SCOPES[role], status)]
        if status not in case.expect:
            problems.append(f"status {status} not in {sorted(case.expect)}: {body[:200]}")
        if status == 403:
            err = json.loads(body)
            if err.get("error_code") != "forbidden" or not err.get("detail"):
                problems.append(f"403 without a reason: {body[:200]}")
        return [f"{role} {case.op} [{case.label}]: {p}" for p in problems]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(check, cases))
    problems = [p for r in results for p in r]
    per_op: dict[str, int] = {}
    per_role: dict[str, dict[str, int]] = {}
    for (role, c), found in zip(cases, results, strict=True):
        per_op[c.op] = per_op.get(c.op, 0) + 1
        row = per_role.setdefault(role, {"combinations": 0, "problems": 0})
        row["combinations"] += 1
        row["problems"] += len(found)
    print(
        "\nISOLATION-FIGURE "
        + json.dumps(
            {
                "combinations": len(cases),
                "operations": per_op,
                "roles": per_role,
                "problems": len(problems),
            },
            sort_keys=True,
        )
    )
    if os.environ.get("CODERAG_ISOLATION_DUMP"):
        Path(os.environ["CODERAG_ISOLATION_DUMP"]).write_text("\n".join(problems))
    assert not problems, "\n".join(problems[:40])
    # The admin operations changed nothing.
    listed = server.http.get("/v1/repos", headers=server.auth("admin")).json()["repos"]
    assert sorted(r["id"] for r in listed) == sorted(REPOS)


def test_a_refusal_does_not_tell_whether_the_repo_exists(server: Server):
    """403 for another tenant's repo and for one that does not exist, in the same words."""
    answers = []
    for name in (B, "group/does-not-exist"):
        search = server.http.post(
            "/v1/search", json={"query": "x", "repos": [name]}, headers=server.auth("alpha")
        )
        status = server.http.get(f"/v1/repos/{name}/status", headers=server.auth("alpha"))
        answers.append(
            (
                search.status_code,
                search.json()["detail"].replace(name, "<repo>"),
                status.status_code,
                status.json()["detail"].replace(name, "<repo>"),
            )
        )
    assert answers[0] == answers[1] and answers[0][0] == 403


def test_a_scoped_token_lists_only_its_repositories(server: Server):
    for role, scope in SCOPES.items():
        resp = server.http.get("/v1/repos", headers=server.auth(role))
        assert resp.status_code == 200
        ids = {r["id"] for r in resp.json()["repos"]}
        assert ids == (set(REPOS) if scope is None else scope), role
        assert "secret_hash" not in resp.text


OTHER_ISSUER = "https://idp.example.com/realms/bank"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


UNAUTHENTICATED: list[tuple[str, Callable[[Server], dict[str, str]]]] = [
    ("no header", lambda s: {}),
    ("unknown token", lambda s: {"Authorization": f"Bearer {secrets.token_hex(20)}"}),
    ("empty bearer", lambda s: {"Authorization": "Bearer"}),
    ("basic", lambda s: {"Authorization": "Basic YWxwaGE6YWxwaGE="}),
    ("upper-cased token", lambda s: {"Authorization": f"Bearer {s.tokens['alpha'].upper()}"}),
    ("token prefix", lambda s: {"Authorization": f"Bearer {s.tokens['alpha'][:-1]}"}),
    ("token + suffix", lambda s: {"Authorization": f"Bearer {s.tokens['alpha']}x"}),
    ("webhook secret", lambda s: {"Authorization": f"Bearer {REPOS[A].hook_secret}"}),
    ("token in X-Gitlab-Token", lambda s: {"X-Gitlab-Token": s.tokens["admin"]}),
]
BAD_TOKENS: list[tuple[str, Callable[[Server], dict[str, str]]]] = [
    # OIDC tokens that must never authenticate, each refused with its reason:
    ("expired", lambda s: _bearer(s.idp.mint(username="bob", exp_in=-120))),
    ("not yet valid", lambda s: _bearer(s.idp.mint(username="bob", nbf_in=600))),
    ("another audience", lambda s: _bearer(s.idp.mint(username="bob", aud="account"))),
    ("another issuer", lambda s: _bearer(s.idp.mint(username="bob", iss=OTHER_ISSUER))),
    ("alg none", lambda s: _bearer(s.idp.none_token(username="bob"))),
    ("HS256 with the public key", lambda s: _bearer(s.idp.hs256_with_public_key_token())),
    ("tampered payload", lambda s: _bearer(s.idp.tampered_token(username="bob"))),
    ("unknown kid", lambda s: _bearer(s.idp.mint(kid="0" * 16, sign_with=s.idp.rsa_kid))),
    ("rotated-out key", lambda s: _bearer(s.idp.mint(kid=s.rotated_kid, username="bob"))),
    ("refresh token", lambda s: _bearer(s.idp.mint(username="bob", typ="Refresh"))),
    ("no username claim", lambda s: _bearer(s.idp.mint(username=None))),
    ("delegation token, no user", lambda s: _bearer(s.delegation)),
]


def test_no_or_unknown_token_is_401_on_every_protected_operation(server: Server):
    ops = operations(server)
    checked = bad_oidc = 0
    for key, op in sorted(ops.items()):
        if key in PUBLIC or key == WEBHOOK:
            continue
        method, template = key.split(" ", 1)
        path = template.replace("{repo}", A).replace("{repo_id}", A)
        body = None
        if "requestBody" in op:
            name, _, _ = _body_fields(op)
            body = {
                "SearchRequest": {"query": REPOS[B].canary},
                "ContextRequest": {"query": REPOS[B].canary},
                "ContinueRequest": {"fullInput": REPOS[B].canary},
                "RegisterRepo": {"url": "https://gitlab.example.com/group/x"},
            }[name]
        for label, headers in UNAUTHENTICATED + BAD_TOKENS:
            resp = server.http.request(
                method, path, headers=headers(server), json=body, params={"token": "x"}
            )
            assert resp.status_code == 401, (key, label, resp.text)
            assert resp.json()["error_code"] == "unauthorized"
            assert resp.json()["detail"], (key, label)
            assert not leaks_in(resp.text, set(), resp.status_code)
            checked += 1
            bad_oidc += label in dict(BAD_TOKENS)
    print(
        "\nISOLATION-FIGURE "
        + json.dumps({"unauthenticated_checks": checked, "bad_token_checks": bad_oidc})
    )
    listed = server.http.get("/v1/repos", headers=server.auth("admin")).json()["repos"]
    assert len(listed) == len(REPOS)  # nothing was registered or deleted


def test_public_endpoints_show_no_code(server: Server):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        resp = server.http.get(path)
        assert resp.status_code == 200, path
        assert not leaks_in(resp.text, set(), 0), path


# --- webhooks: one secret per repository ------------------------------------------------------


def test_webhook_secrets_are_per_repository(server: Server):
    coord = server.app.state.dispatcher.coordinator  # the embedded pending-push book

    def push(repo: str, token: str | None, after: str, **kw: Any) -> httpx.Response:
        body = payload(
            "push",
            repo=repo,
            clone_url=f"https://gitlab.example.com/{repo}.git",
            after=after,
            ref="refs/heads/main",
        )
        # The project's GitLab id, as GitLab sends it (the registry knows the repo by it).
        pid = PROJECT_IDS.get(repo, 999)
        body["project_id"] = body["project"]["id"] = pid
        headers = {"X-Gitlab-Event": "Push Hook", **kw}
        if token is not None:
            headers["X-Gitlab-Token"] = token
        return server.http.post("/v1/webhooks/gitlab", json=body, headers=headers)

    sha = {name: secrets.token_hex(20) for name in ("a1", "a2", "b1")}
    refused = [
        (A, REPOS[B].hook_secret),
        (A, REPOS[C1].hook_secret),
        (A, None),
        (A, ""),
        (A, REPOS[A].hook_secret.upper()),
        (A, REPOS[A].hook_secret + "x"),
        (A, server.tokens["admin"]),  # an API token is not a webhook secret
        (B, REPOS[A].hook_secret),
        (C2, REPOS[B].hook_secret),  # a path-prefix repo has its own secret
        (C1, REPOS[B].hook_secret),
    ]
    checked = 0
    for repo, token in refused:
        resp = push(repo, token, sha["a1"])
        assert resp.status_code in (401, 403), (repo, resp.text)
        assert resp.json()["error_code"] in ("unauthorized", "forbidden")
        checked += 1
    assert all(coord.pending(r, "main") is None for r in REPOS), "a refused push was enqueued"

    # Unregistered spellings of A, with A's secret: not A, so not accepted.
    for spelled in (A.upper(), f"{A}-x", f" {A}", C2):
        resp = push(spelled, REPOS[A].hook_secret, sha["a1"])
        assert resp.status_code in (401, 403, 404), (spelled, resp.text)
        checked += 1
    assert all(coord.pending(r, "main") is None for r in REPOS)

    # A's secret works for A, and only A gets the push.
    ok = push(A, REPOS[A].hook_secret, sha["a2"])
    assert ok.status_code == 202 and ok.json()["status"] == "accepted", ok.text
    assert coord.pending(A, "main").sha == sha["a2"]
    assert all(coord.pending(r, "main") is None for r in REPOS if r != A)
    # ... and a later push to A signed with B's secret does not move A's pending commit.
    assert push(A, REPOS[B].hook_secret, sha["b1"]).status_code == 401
    assert coord.pending(A, "main").sha == sha["a2"]
    # B's own secret works for B.
    assert push(B, REPOS[B].hook_secret, sha["b1"]).status_code == 202
    assert coord.pending(B, "main").sha == sha["b1"]
    st = server.http.get(f"/v1/repos/{A}/status", headers=server.auth("alpha")).json()
    assert {b["branch"]: b["pending_commit"] for b in st["branches"]}["main"] == sha["a2"]
    print(f"\nISOLATION-FIGURE webhook_refusals={checked + 1} webhook_accepts=2")


# --- the LiteLLM hook, which reads through /v1/context ------------------------------------------


def test_the_litellm_hook_with_a_scoped_token_adds_no_other_repo(server: Server):
    import asyncio

    from retriever import litellm_hook as hook_mod

    other = REPOS[B]
    hook = hook_mod.CoderagContextHook(
        server.url, server.tokens["alpha"], timeout=30, identity="service"
    )
    admin_hook = hook_mod.CoderagContextHook(
        server.url, server.tokens["admin"], timeout=30, identity="service"
    )

    def chat(**extra: Any) -> dict[str, Any]:
        msg = f"How does reconcile_{other.canary} work? {other.vault_file}"
        return {"model": "m", "messages": [{"role": "user", "content": msg}], **extra}

    selections = [
        {},
        {"metadata": {"coderag": {"repos": [B]}}},
        {"metadata": {"coderag": {"repos": [A, B]}}},
        {"metadata": {"repo": B, "branch": "main"}},
        {"metadata": {"repos": f"{A},{B}"}},
        {"proxy_server_request": {"headers": {"x-coderag-repos": B}}},
        {"proxy_server_request": {"headers": {"x-coderag-repos": "*"}}},
    ]

    async def run_all() -> list[str]:
        out = []
        for sel in selections:
            data = await hook.async_pre_call_hook({}, None, chat(**sel), "acompletion")
            out.append(json.dumps(data))
            # The admin's hook, held by key metadata to A: the gateway-side bound.
            keyed = {"metadata": {"coderag_repos": [A]}}
            data = await admin_hook.async_pre_call_hook(keyed, None, chat(**sel), "acompletion")
            out.append(json.dumps(data))
        data = await admin_hook.async_pre_call_hook({}, None, chat(), "acompletion")
        out.append(json.dumps(data))  # the control: unbounded, it does find B
        return out

    answers = asyncio.run(run_all())
    assert other.secret in answers[-1]
    for text in answers[:-1]:
        assert other.secret not in text and other.vault not in text.replace(other.vault_file, "")


def test_the_litellm_hook_reads_as_the_gateways_user(server: Server):
    """The hook as LiteLLM calls it (its own ``UserAPIKeyAuth``, the request dict it builds):
    with a delegation token it reads what the key's user may read, and nothing for a key that
    names no user. The body's ``user`` (the client writes it) changes nothing."""
    import asyncio

    from retriever import litellm_hook as hook_mod  # first: it keeps litellm offline

    from litellm.proxy._types import UserAPIKeyAuth  # isort: skip

    hook = hook_mod.CoderagContextHook(server.url, server.delegation, timeout=30)
    assert hook.identity == "user"  # the default: act for the user, never as everyone

    def chat(repo: Repo, **extra: Any) -> dict[str, Any]:
        msg = f"How does reconcile_{repo.canary} work? {repo.vault_file}"
        return {"model": "m", "messages": [{"role": "user", "content": msg}], **extra}

    async def ask(user: UserAPIKeyAuth, data: dict[str, Any]) -> str:
        return json.dumps(await hook.async_pre_call_hook(user, None, data, "acompletion"))

    alice, bob, nobody = (
        UserAPIKeyAuth(api_key="hashed-key", user_id="alice"),
        UserAPIKeyAuth(api_key="hashed-key", user_id="bob"),
        UserAPIKeyAuth(api_key="hashed-key"),
    )
    selections = [
        {},
        {"metadata": {"coderag": {"repos": [B]}}},
        {"metadata": {"repo": B}},
        {"proxy_server_request": {"headers": {"x-coderag-repos": f"{A},{B}"}}},
        {"user": "bob"},  # the client's claim, not the gateway's
    ]

    async def run_all() -> dict[str, list[str]]:
        return {
            "alice": [await ask(alice, chat(REPOS[B], **sel)) for sel in selections],
            "nobody": [await ask(nobody, chat(REPOS[A], **sel)) for sel in selections],
            "bob": [await ask(bob, chat(REPOS[B]))],
            "alice-own": [await ask(alice, chat(REPOS[A]))],
        }

    answers = asyncio.run(run_all())
    assert REPOS[B].secret in answers["bob"][0]  # the control: bob does read beta
    assert REPOS[A].secret in answers["alice-own"][0]  # and alice alpha
    for text in answers["alice"]:
        assert REPOS[B].secret not in text, text[:300]
    for text in answers["nobody"]:
        assert hook_mod.PREAMBLE not in text and REPOS[A].secret not in text


def test_who_may_act_for_whom(server: Server):
    """Only a delegation token names a user; a person cannot become another, nor a service
    token a person; a user GitLab does not know reads nothing."""
    body = {"query": REPOS[B].canary}
    as_bob = {"X-Coderag-User": "bob"}
    cases = [
        ({**server.auth("alpha"), **as_bob}, 403),
        ({**server.auth("alice"), **as_bob}, 403),
        ({**server.auth("gw-alice"), "X-Coderag-User": "bob\tadmin"}, 401),
        (_bearer(server.idp.mint(username="mallory")), 403),  # not a GitLab user
        ({"Authorization": f"Bearer {server.delegation}", "X-Coderag-User": "mallory"}, 403),
    ]
    for headers, expect in cases:
        resp = server.http.post("/v1/search", json=body, headers=headers)
        assert resp.status_code == expect, (headers.get("X-Coderag-User"), resp.text)
        assert REPOS[B].secret not in resp.text and resp.json()["detail"]
    listed = server.http.get("/v1/repos", headers=_bearer(server.idp.mint(username="mallory")))
    assert listed.status_code == 200 and listed.json()["repos"] == []


# --- MCP: the same isolation through the tools ----------------------------------------------


def mcp_cases(role: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(tool, arguments, names an out-of-scope repo) for ``role``: every tool, with the own
    repo, the other, the prefix-named ones, spellings of the other, and none."""
    scope = SCOPES[role] or set()
    own = REPOS[next((r for r in (A, B, C1, C2) if r in scope), A)]
    other = REPOS[next((r for r in (B, A) if r not in scope), B)]
    specs: list[dict[str, Any]] = [
        {},
        {"repo": own.name},
        {"repo": other.name},
        {"repo": C1},
        {"repo": C2},
        {"repo": "*"},
        {"repo": other.name.upper()},
        {"repo": other.name + "/"},
        {"repos": [own.name, other.name]},
    ]

    def named(spec: dict[str, Any]) -> list[str]:
        return [spec["repo"]] if "repo" in spec else list(spec.get("repos", []))

    def out_of_scope(names: list[str]) -> bool:
        return any(n not in scope for n in names) or not scope

    cases: list[tuple[str, dict[str, Any], bool]] = []
    for spec, query in itertools.product(specs, queries(own, other)):
        cases.append(("search_code", {"query": query, "k": 100, **spec}, out_of_scope(named(spec))))
    for spec in specs:
        if "repo" in spec:
            for path in (other.vault_file, own.vault_file, "src/shared/common.py"):
                args = {"repo": spec["repo"], "path": path}
                cases.append(("get_file", args, out_of_scope([spec["repo"]])))
        if "repos" not in spec:  # find_symbol takes one repo
            cases.append(
                (
                    "find_symbol",
                    {"name": f"reconcile_{other.canary}", **spec},
                    out_of_scope(named(spec)),
                )
            )
    cases.append(("list_repos", {}, False))
    return cases


def test_mcp_tools_hold_the_same_isolation(server: Server):
    """Every MCP tool, for every caller of the matrix, through the SDK's own client over HTTP:
    no secret, path or result of a repo outside the caller's scope, and naming such a repo is a
    tool error with the reason (never a silently empty answer)."""
    import anyio
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run_role(role: str) -> list[str]:
        scope = SCOPES[role]
        problems: list[str] = []
        async with (
            httpx2.AsyncClient(headers=server.auth(role), timeout=60) as http,
            streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for tool, args, refused in mcp_cases(role):
                res = await session.call_tool(tool, args)
                text = " ".join(getattr(c, "text", "") for c in res.content)
                where = f"{role} mcp {tool} {args}"
                if res.is_error:
                    problems += [f"{where}: {p}" for p in leaks_in(text, scope, 403)]
                    if not refused and "not_found" not in text:  # a path the repo lacks
                        problems.append(f"{where}: refused: {text[:200]}")
                    elif refused and scope and "may not read" not in text:
                        problems.append(f"{where}: refused without the reason: {text[:200]}")
                    continue
                if refused:
                    problems.append(f"{where}: answered, not refused: {text[:200]}")
                body = json.dumps(res.structured_content)
                problems += [f"{where}: {p}" for p in leaks_in(body, scope, 200)]
        return problems

    counts = {role: len(mcp_cases(role)) for role in MATRIX_ROLES}
    problems = [p for role in MATRIX_ROLES for p in anyio.run(run_role, role)]
    print(
        "\nISOLATION-FIGURE "
        + json.dumps({"mcp_calls": sum(counts.values()), "mcp_problems": len(problems)})
    )
    assert not problems, "\n".join(problems[:40])


# --- removing a repository touches no other --------------------------------------------------


def test_deleting_a_repo_leaves_a_path_prefixed_repo_alone(
    tmp_path: Path, embedder: Any, model_dir: Path
):
    settings = Settings(
        data_dir=tmp_path / "data", model_export_dir=model_dir, index_backend="edge"
    )
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    try:
        work = tmp_path / "work"
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        (work / "x.py").write_text("def x():\n    return 1\n")
        git(work, "add", "-A")
        git(work, "commit", "-qm", "x")
        registry = RepoRegistry(rt.index)
        for name in (B, C2, C1):
            rt.indexer.index(work, name, "main")
            registry.put(RepoRecord(id=name, url=str(work), secret_hash=hash_secret(name * 2)))
            registry.record_run(name, "main", {"commit": "c" * 40, "seconds": 1.0})
        # The removal task, as DELETE /v1/repos/{id} schedules it.
        dispatcher = EmbeddedDispatcher(rt, registry=registry)
        try:
            dispatcher.submit_remove(B)
            assert dispatcher.wait_idle(60)
        finally:
            dispatcher.close()
        assert rt.indexer.indexed_commit(B, "main") is None and registry.get(B) is None
        assert not [r for r in registry.branch_runs(B).values() if r["repo"] == B]
        for name in (C1, C2):
            assert rt.indexer.indexed_commit(name, "main") is not None, name
            assert registry.get(name) is not None, name
            runs = registry.branch_runs(name).values()
            assert [r["branch"] for r in runs if r["repo"] == name] == ["main"], name
            assert rt.indexer.index(work, name, "main").mode == "noop", name
    finally:
        rt.close()
