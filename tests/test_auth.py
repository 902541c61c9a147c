"""Bearer tokens and scopes (unit level; the HTTP matrix is in test_auth_api.py)."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from coderag.auth import ANONYMOUS, Principal, TokenAuth, token_id
from coderag.errors import AuthError, ForbiddenError
from coderag.logging import JsonFormatter, redact

TOKEN_A = "alpha-token-0123456789abcdef"
TOKEN_ALL = "admin-token-0123456789abcdef"


@pytest.fixture
def auth() -> TokenAuth:
    return TokenAuth({TOKEN_A: ["g/a"], TOKEN_ALL: ["*"], "empty-scope-0123456789": []})


def test_no_tokens_disables_auth():
    assert TokenAuth({}).authenticate(None) is ANONYMOUS
    assert ANONYMOUS.scope(None) is None


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic abc", f"Token {TOKEN_A}", "Bearer wrong"]
)
def test_missing_malformed_or_unknown_tokens_are_refused(auth: TokenAuth, header: str | None):
    with pytest.raises(AuthError) as ei:
        auth.authenticate(header)
    assert not isinstance(ei.value, ForbiddenError)
    assert TOKEN_A not in ei.value.detail


def test_token_resolves_to_its_scope_and_a_hashed_id(auth: TokenAuth):
    p = auth.authenticate(f"Bearer {TOKEN_A}")
    assert p.repos == frozenset({"g/a"})
    assert p.token_id == hashlib.sha256(TOKEN_A.encode()).hexdigest()[:12] == token_id(TOKEN_A)
    assert TOKEN_A not in repr(p)
    assert auth.authenticate(f"bearer {TOKEN_ALL}").unrestricted


def test_scope_rules(auth: TokenAuth):
    a = auth.authenticate(f"Bearer {TOKEN_A}")
    assert a.scope(None) == ["g/a"]  # nothing asked: the token's scope, never "all"
    assert a.scope([]) == ["g/a"]
    assert a.scope(["g/a", "g/a"]) == ["g/a"]
    with pytest.raises(ForbiddenError):
        a.scope(["g/b"])
    with pytest.raises(ForbiddenError):
        a.scope(["g/a", "g/b"])  # refused, not silently narrowed
    admin = auth.authenticate(f"Bearer {TOKEN_ALL}")
    assert admin.scope(None) is None
    assert admin.scope(["g/b"]) == ["g/b"]


def test_an_empty_scope_is_refused_not_turned_into_no_filter(auth: TokenAuth):
    empty = auth.authenticate("Bearer empty-scope-0123456789")
    with pytest.raises(ForbiddenError):
        empty.scope(None)
    assert not empty.can_read("g/a")
    assert Principal("x", frozenset()).repos == frozenset()


def test_logs_redact_credentials_at_any_depth():
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "sent Bearer %s", (TOKEN_A,), None)
    record.headers = {"Authorization": f"Bearer {TOKEN_A}", "X-Gitlab-Token": "s3cr3t-hook"}
    record.api_tokens = {TOKEN_A: ["g/a"]}
    record.nested = [{"private_token": "glpat-abcdef123456"}]
    record.url = "https://h/x?token=abc123&x=1"
    line = JsonFormatter().format(record)
    for secret in (TOKEN_A, "s3cr3t-hook", "glpat-abcdef123456", "abc123"):
        assert secret not in line
    out = json.loads(line)
    assert out["event"] == "sent Bearer [REDACTED]"
    assert out["headers"]["Authorization"] == "[REDACTED]"
    assert redact({"token_id": "3f2a", "query_chars": 12}) == {
        "token_id": "3f2a",
        "query_chars": 12,
    }
