"""Redaction case by case: the three lines users reported come back unchanged, a password
passed as a CLI flag is caught in a shell script, a Dockerfile and a CI job, and the
allow-list keeps known fakes (reported as allowed) while a real secret in the same repository
is still redacted, through the real IndexService and the real ``coderag index`` command.

Planted values are drawn at test time (right shapes, fake values), as in test_secrets.py.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import pytest

from chunkers import FileChunker
from chunkers.secrets import AllowList, Finding, marker, redact
from coderag.index import SearchFilter
from tests.conftest import git

_rng = random.Random(0x14)
ALNUM = string.ascii_letters + string.digits


def _mixed(n: int) -> str:
    return "Aa7" + "".join(_rng.choice(ALNUM) for _ in range(n - 3))


PASSWORD = "Quartz" + _mixed(10) + "!"
GITHUB = "gh" + "p_" + _mixed(36)
FAKE_GITLAB = "gl" + "pat-" + _mixed(20)  # a fixture's fake that looks real


# --- the issue's own lines ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("retriever/hook.py", 'headers = {"Authorization": f"Bearer {self.token}"}\n'),
        (
            "scripts/release.sh",
            'curl -fsS -H "Authorization: Bearer $GITLAB_TOKEN" "$GITLAB_URL/api/v4/user"\n',
        ),
        ("coderag/settings.py", 'SECRET_KEY_SETTING = "CODERAG_SECRET_KEY"\n'),
    ],
    ids=["fstring-bearer", "shell-bearer-var", "env-var-name"],
)
def test_the_issue_lines_come_back_unchanged(path: str, text: str) -> None:
    language = {"py": "python", "sh": "bash"}[path.rsplit(".", 1)[1]]
    out = redact(text, language, path=path)
    assert out.text == text
    assert out.findings == ()


def test_a_literal_next_to_a_template_is_still_a_secret() -> None:
    """A template does not excuse the literal credential beside it."""
    text = f'DSN = f"postgresql://ledger:{PASSWORD}@{{host}}/ledger"\n'
    assert PASSWORD not in redact(text, "python", path="db.py").text
    text = f'headers = {{"Authorization": "Bearer {_mixed(40)}"}}\n'
    assert "[REDACTED:bearer-token]" in redact(text, "python", path="a.py").text


@pytest.mark.parametrize(
    ("path", "language", "text"),
    [
        ("db.py", "python", 'DSN = "postgresql://app:{pw}@db/app"\n'),
        (".env", None, "DATABASE_URL=mysql://app:{pw}@db/app\n"),
        ("app.ini", "ini", "[db]\npassword = {pw}\n"),
        ("app.properties", "ini", "db.password={pw}\n"),
        ("config.yaml", "yaml", "db:\n  password: {pw}  # rotated monthly\n"),
        (".env", None, "DB_PASSWORD={pw}\n"),
    ],
)
@pytest.mark.parametrize("pw", ["Copper@Harbor47", "Copper#Harbor47", "Copper,Har;bor47"])
def test_passwords_with_url_or_comment_characters_go_whole(
    path: str, language: str | None, text: str, pw: str
) -> None:
    """The tail after ``@``, ``#``, ``,`` or ``;`` is part of the password (the old gap)."""
    if "://" in text and ("," in pw or ";" in pw):
        pw = pw.replace(",", "").replace(";", "")
    out = redact(text.format(pw=pw), language, path=path)
    assert "Harbor" not in out.text and "bor47" not in out.text, out.text


# --- passwords passed as flags -----------------------------------------------------------

FLAG_CASES = [
    ("scripts/push.sh", "bash", f"docker login -u deploy --password {PASSWORD} registry\n"),
    ("scripts/push.sh", "bash", f"docker login -u deploy --password={PASSWORD} registry\n"),
    ("scripts/push.sh", "bash", f"docker login -u deploy --password '{PASSWORD}' registry\n"),
    ("scripts/db.sh", "bash", f"mysql -u root -p{PASSWORD} ledger < dump.sql\n"),
    ("scripts/db.sh", "bash", f"curl -u admin:{PASSWORD} https://grafana.internal\n"),
    ("scripts/db.sh", "bash", f"sshpass -p '{PASSWORD}' ssh deploy@app01 uptime\n"),
    ("Dockerfile", "dockerfile", f"RUN ./setup --admin-password {PASSWORD}\n"),
    ("Dockerfile", "dockerfile", f'RUN mysql -uroot -p{PASSWORD} -e "select 1"\n'),
    (
        ".gitlab-ci.yml",
        "yaml",
        f"build:\n  script:\n    - docker login -u ci --password {PASSWORD} $CI_REGISTRY\n",
    ),
    (".gitlab-ci.yml", "yaml", f"test:\n  script:\n    - mysql --password={PASSWORD} < a.sql\n"),
    ("Jenkinsfile", "text", f"sh 'docker login -u jenkins --password {PASSWORD} registry'\n"),
]


@pytest.mark.parametrize(("path", "language", "text"), FLAG_CASES)
def test_a_password_passed_as_a_flag_is_redacted(path: str, language: str, text: str) -> None:
    out = redact(text, language, path=path)
    assert PASSWORD not in out.text
    assert marker("password") in out.text
    assert out.text.count("\n") == text.count("\n")
    assert "--password-" not in out.text  # the flag itself stays searchable


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("scripts/push.sh", 'docker login -u "$USER" --password "$REGISTRY_PASSWORD" reg\n'),
        ("scripts/push.sh", 'echo "$TOKEN" | docker login -u ci --password-stdin reg\n'),
        ("scripts/push.sh", "docker run -d -p 8080:80 -p 5432:5432 nginx\n"),
        ("scripts/db.sh", "mysql -u root -p ledger\n"),
        ("scripts/db.sh", "pg_dump --no-password -h db ledger > out.sql\n"),
        ("scripts/db.sh", 'echo "usage: $0 --password PASSWORD --host HOST"\n'),
        ("scripts/db.sh", "tool --password-file /run/secrets/pw --token <token>\n"),
        ("scripts/db.sh", "mysqldump --password=${DB_PASSWORD} ledger\n"),
        (".gitlab-ci.yml", "  script:\n    - docker login -u $U -p $CI_REGISTRY_PASSWORD $R\n"),
        ("Dockerfile", 'RUN --mount=type=secret,id=pw ./setup --password "$(cat /run/pw)"\n'),
    ],
)
def test_flags_whose_value_is_no_secret_are_left_alone(path: str, text: str) -> None:
    out = redact(text, None, path=path)
    assert out.text == text
    assert out.findings == ()


# --- the allow-list ------------------------------------------------------------------------


def test_allow_list_entries_must_be_narrow() -> None:
    ok, errors = AllowList.parse(
        [
            "# fixtures of known fakes",
            "tests/fixtures/**",
            "**/testdata/**  # any depth",
            "docs/examples/*.md password,token",
            "value:AKIAIOSFODNN7EXAMPLE",
        ]
    )
    assert errors == []
    assert len(ok.paths) == 3 and ok.values == {"AKIAIOSFODNN7EXAMPLE"}
    for broad in ("**", "*", "**/*", "*.py", "**/*.pem", "*/*"):
        with pytest.raises(ValueError, match="too broad"):
            AllowList.parse([broad])
    with pytest.raises(ValueError, match="unknown kind"):
        AllowList.parse(["tests/fixtures/** passwords"])
    with pytest.raises(ValueError, match="at least 6"):
        AllowList.parse(["value:abc"])
    lenient, errors = AllowList.parse(["**", "tests/fixtures/**"], strict=False)
    assert len(errors) == 1 and len(lenient.paths) == 1


def test_allowed_findings_stay_in_the_text_and_are_reported() -> None:
    allow = AllowList.parse(["tests/fixtures/**", "docs/*.md password"])[0]
    text = f'TOKEN = "{GITHUB}"\nPASSWORD = "{PASSWORD}"\n'
    kept = redact(text, "python", path="tests/fixtures/creds.py", allow=allow)
    assert kept.text == text
    assert kept.findings == (
        Finding("github-token", 1, allowed=True),
        Finding("password", 2, allowed=True),
    )
    assert kept.counts() == {} and kept.allowed_counts() == {"github-token": 1, "password": 1}
    elsewhere = redact(text, "python", path="src/creds.py", allow=allow)
    assert GITHUB not in elsewhere.text and PASSWORD not in elsewhere.text
    md = f"password: {PASSWORD}\ntoken: {GITHUB}\n"
    only_kind = redact(md, "markdown", path="docs/setup.md", allow=allow)
    assert PASSWORD in only_kind.text and GITHUB not in only_kind.text  # only the named kind
    key = "-----BEGIN RSA PRIVATE KEY-----\n" + _mixed(64) + "\n-----END RSA PRIVATE KEY-----\n"
    pem = redact(key, None, path="tests/fixtures/id_rsa", allow=allow)
    assert pem.text == key and pem.findings == (Finding("private-key", 2, allowed=True),)


def test_an_exact_value_entry_keeps_that_value_only() -> None:
    allow = AllowList.parse([f"value:{FAKE_GITLAB}"])[0]
    text = f'A = "{FAKE_GITLAB}"\nB = "{GITHUB}"\n'
    out = redact(text, "python", path="src/a.py", allow=allow)
    assert FAKE_GITLAB in out.text and GITHUB not in out.text
    assert [f.allowed for f in out.findings] == [True, False]


def test_the_setting_parses_and_refuses_broad_entries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from coderag.settings import Settings

    monkeypatch.setenv("CODERAG_REDACT_ALLOW", "tests/fixtures/**;docs/*.md password,token")
    s = Settings(data_dir=tmp_path)
    assert s.redact_allow == ["tests/fixtures/**", "docs/*.md password,token"]
    monkeypatch.setenv("CODERAG_REDACT_ALLOW", '["**"]')
    with pytest.raises(ValueError, match="too broad"):
        Settings(data_dir=tmp_path)


def test_the_chunker_merges_its_allow_list_with_the_repositorys() -> None:
    own = AllowList.parse(["tests/fixtures/**"])[0]
    repo = AllowList.parse(["testdata/**"])[0]
    chunker = FileChunker(redact_allow=own)
    data = f'TOKEN = "{GITHUB}"\n'.encode()
    assert GITHUB in chunker.chunk("tests/fixtures/a.py", data).chunks[0].text
    assert GITHUB not in chunker.chunk("testdata/a.py", data).chunks[0].text
    assert GITHUB in chunker.chunk("testdata/a.py", data, allow=repo).chunks[0].text
    assert GITHUB not in chunker.chunk("src/a.py", data, allow=repo).chunks[0].text
    # The settings' list changes what is stored: it is part of the fingerprint.
    assert FileChunker().redaction_id != chunker.redaction_id
    assert FileChunker(redact_allow=AllowList()).redaction_id == FileChunker().redaction_id


# --- through the real indexer and CLI ----------------------------------------------------

REPO = "ledger/service"


def _files(allow: str) -> dict[str, str]:
    return {
        ".coderag/redact-allow": allow,
        "tests/fixtures/gitlab.py": f'"""A fake for the tests."""\nTOKEN = "{FAKE_GITLAB}"\n',
        "deploy/push.sh": f"#!/bin/sh\ndocker login -u deploy --password {PASSWORD} registry\n",
        "src/release.py": f'GITHUB_TOKEN = "{GITHUB}"\n\n\ndef release():\n    return 1\n',
        "src/ok.py": 'headers = {"Authorization": f"Bearer {token}"}\n',
    }


def _commit(repo: Path, files: dict[str, str], message: str) -> None:
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def _stored(index: Any) -> str:
    return json.dumps([p for _, p in index.scroll(SearchFilter(repos=[REPO]))])


@pytest.mark.integration
def test_index_keeps_allowed_fakes_redacts_the_rest_and_reports_both(
    tmp_path: Path, embedder: Any
) -> None:
    from coderag.runtime import build_runtime
    from coderag.settings import Settings

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    _commit(repo, _files("# known fakes\ntests/fixtures/**\n**\n"), "fixtures")
    rt = build_runtime(Settings(data_dir=tmp_path / "data", index_backend="edge"))
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    with rt:
        report = type(rt.indexer).index(rt.indexer, repo, REPO, "main")
        stored = _stored(rt.index)
        assert FAKE_GITLAB in stored  # the fixture's fake is served as written
        assert GITHUB not in stored and PASSWORD not in stored  # real ones elsewhere are not
        assert "Bearer {token}" in stored  # code that refers to a secret is kept
        out = report.as_dict()
        assert out["secrets_redacted"] == {"github-token": 1, "password": 1}
        assert out["secrets_redacted_files"] == {
            "deploy/push.sh": {"password": 1},
            "src/release.py": {"github-token": 1},
        }
        assert out["secrets_allowed"] == {"gitlab-token": 1}
        assert out["secrets_allowed_files"] == {"tests/fixtures/gitlab.py": {"gitlab-token": 1}}
        assert len(out["redact_allow_errors"]) == 1 and "'**'" in out["redact_allow_errors"][0]

        # Dropping the entry changes no fixture file, yet the fixture is redacted now: a
        # changed allow-list re-chunks the branch (an incremental run would miss it).
        (repo / ".coderag/redact-allow").write_text("# none\n", encoding="utf-8")
        git(repo, "commit", "-qam", "no more allowed fakes")
        again = type(rt.indexer).index(rt.indexer, repo, REPO, "main")
        assert again.mode == "full"
        assert FAKE_GITLAB not in _stored(rt.index)
        assert again.secrets_allowed == {}
        assert again.secrets_redacted_files["tests/fixtures/gitlab.py"] == {"gitlab-token": 1}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_coderag_index_prints_kinds_and_files(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's first command, on a tiny repository: the table names kinds and files,
    ``--json`` has the per-file map."""
    from typer.testing import CliRunner

    from coderag.cli import app

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    _commit(repo, _files("tests/fixtures/**\n"), "fixtures")
    monkeypatch.setenv("CODERAG_MODEL_EXPORT_DIR", str(model_dir))
    monkeypatch.setenv("CODERAG_INDEX_BACKEND", "edge")
    monkeypatch.setenv("COLUMNS", "200")
    run = CliRunner().invoke
    table = run(app, ["index", str(repo), "--repo", REPO, "--data-dir", str(tmp_path / "a")])
    assert table.exit_code == 0, table.output
    text = table.output
    assert "secrets redacted" in text and "github-token: 1, password: 1" in text
    assert "deploy/push.sh (password: 1)" in text
    assert "src/release.py (github-token: 1)" in text
    assert "secrets allowed" in text and "tests/fixtures/gitlab.py (gitlab-token: 1)" in text
    assert GITHUB not in text and PASSWORD not in text

    as_json = run(
        app, ["index", str(repo), "--repo", REPO, "--data-dir", str(tmp_path / "b"), "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout[as_json.stdout.index("{") :])
    assert report["secrets_redacted_files"] == {
        "deploy/push.sh": {"password": 1},
        "src/release.py": {"github-token": 1},
    }
    assert report["secrets_allowed_files"] == {"tests/fixtures/gitlab.py": {"gitlab-token": 1}}
