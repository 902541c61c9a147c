"""Secret redaction: file text in, the same text with credential values replaced, out.

Runs on every file before it is chunked (see :class:`chunkers.FileChunker`), so what is
embedded, stored and served never holds a private key, cloud key, token or password that was
committed by mistake. The rule set follows gitleaks/detect-secrets but is written here so that
it can keep three promises those scanners do not make:

- **Lines are never added or removed.** Only the secret *value* is replaced by a marker such
  as ``[REDACTED:aws-access-key]``; the variable name and the rest of the line stay (so they
  are still searchable), and a multi-line private key keeps its line count (each body line is
  replaced). Chunk line numbers therefore stay true to the file.
- **Linear time.** Every pattern is anchored on a literal or a bounded keyword, its runs are
  bounded or possessive, and multi-line keys are found by a line scan instead of a ``.*?``
  regex, so a 1 MB pathological line costs a few passes, not a quadratic backtrack.
- **Cheap on ordinary code.** Each rule has lower-case *needles*; its regex only runs when one
  of them occurs in the lower-cased file, so a file with no secret-looking text costs a few
  substring searches.

When in doubt a value is redacted: a placeholder like ``changeme`` hidden by mistake costs
nothing, a real password served to every IDE does. Only values that clearly are not secrets
are kept: empty strings, references (``${DB_PASSWORD}``, ``{{ .Values.pw }}``), masks
(``****``) and literals like ``null``. In programming languages an assignment's value must be
a quoted literal (``password = get_password()`` is code, not a secret); in configuration and
text files (``.env``, YAML, INI, properties, shell, Terraform...) bare values count too.

Bump :data:`RULES_VERSION` whenever a rule changes what is redacted: it is part of the index
fingerprint, so existing indexes are re-chunked with the new rules.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RULES_VERSION", "Finding", "Redacted", "marker", "redact"]

RULES_VERSION = 1
"""Version of the rule set (part of the index fingerprint: bump it when rules change)."""

CODE_LANGUAGES = frozenset(
    {
        "python", "javascript", "typescript", "tsx", "java", "go", "rust", "c", "cpp",
        "csharp", "ruby", "php", "kotlin", "scala", "swift", "css", "sql", "graphql",
        "protobuf", "cmake",
    }
)  # fmt: skip
"""Languages where a bare (unquoted) value after ``password =`` is an expression, not a
literal, and so is left alone."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One redacted secret: what kind and on which line (never the value itself)."""

    kind: str
    line: int  # 1-based


@dataclass(frozen=True, slots=True)
class Redacted:
    """The redacted text and what was removed from it."""

    text: str
    findings: tuple[Finding, ...] = ()

    def counts(self) -> dict[str, int]:
        """Findings per kind (what the indexer adds to its report and metrics)."""
        return dict(sorted(Counter(f.kind for f in self.findings).items()))


def marker(kind: str) -> str:
    """What replaces a secret value of ``kind``."""
    return f"[REDACTED:{kind}]"


_MARKER_PREFIX = "[REDACTED:"

# --- the names of secret-holding keys -------------------------------------------------------

_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "pass", "passphrase", "passcode", "secret", "token",
        "auth", "authorization", "credential", "credentials", "apikey", "privatekey",
        "accesskey", "secretkey", "accountkey", "sas",
    }
)  # fmt: skip
_PASSWORD_WORDS = frozenset({"password", "passwd", "pwd", "pass", "passphrase", "passcode"})
_KEY_QUALIFIERS = frozenset(
    {"api", "access", "private", "signing", "encryption", "master", "account"}
)
_NOT_SECRET_LAST = frozenset(
    {
        "name", "names", "file", "filename", "path", "dir", "type", "types", "field", "label",
        "length", "len", "size", "min", "max", "policy", "prompt", "hint", "regex", "pattern",
        "count", "expires", "expiry", "expiration", "ttl", "endpoint", "env", "var", "placeholder",
        "required", "enabled", "enable", "disabled", "validation", "validator", "error",
        "message", "msg", "format", "reset", "input", "strength", "version", "kind", "mode",
        "timeout", "location", "provider", "class", "method", "form", "url", "uri", "header",
        "param", "prefix", "suffix", "scope", "scopes", "column", "attr", "attribute", "level",
        "status", "state", "algorithm", "algo", "usage", "description", "title", "help",
        "id", "ids", "backend", "scheme", "realm", "domain", "plugin", "flow", "service",
        "store", "source", "changed", "rotation", "manager", "helper", "command", "cmd",
        "fn", "func", "function", "callback", "handler", "factory", "cls", "getter", "setter",
        "sign", "verify", "generator", "parser", "serializer", "schema", "model", "widget",
        "tensor", "tensors", "mask", "logits", "embedding", "embeddings", "index", "idx",
        "offset", "offsets", "position", "positions", "span", "spans", "start", "end",
    }
)  # fmt: skip


def _squash(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


_NOT_SECRET_TOKENS = frozenset(
    {
        "input", "output", "next", "prev", "page", "pagination", "continuation", "cursor",
        "bos", "eos", "pad", "unk", "sep", "cls", "mask", "special", "stop", "num", "limit",
    }
)  # fmt: skip
"""With ``token``: ``next_token`` / ``input_token`` (paging), ``pad_token`` (tokenizers)."""

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _name_words(name: str) -> list[str]:
    """``DB_PASSWORD`` -> [db, password]; ``secretAccessKey`` -> [secret, access, key]."""
    return [w.lower() for w in _WORD.findall(name)]


def _name_kind(name: str) -> str | None:
    """The kind of secret a key called ``name`` holds, or ``None`` when it holds none.

    Decided on whole words, so ``author``, ``tokenizer``, ``max_tokens`` and ``monkey`` are
    not secret names, ``token_type`` and ``password_file`` describe a secret without holding
    one, and ``api_key`` / ``secretAccessKey`` / ``_authToken`` are secret names.
    """
    words = _name_words(name)
    if not words or words[-1] in _NOT_SECRET_LAST or "public" in words:
        return None
    joined = "".join(words)
    if "aws" in words or ("secret" in words and "access" in words):
        return "aws-secret-key"
    if any(w in _PASSWORD_WORDS or "password" in w or "passwd" in w for w in words):
        return "password"  # ``PGPASSWORD``, ``MYSQL_ROOT_PASSWORD``
    if joined.endswith(("apikey", "accesskey", "privatekey", "accountkey")):
        return "api-key"
    for a, b in itertools.pairwise(words):
        if b == "key" and a in _KEY_QUALIFIERS:
            return "api-key"
    if "token" in words or "auth" in words or "authorization" in words:
        # Pagination cursors and tokenizer specials are tokens of another kind.
        return None if _NOT_SECRET_TOKENS.intersection(words) else "token"
    if any(w in _SECRET_WORDS for w in words):
        return "secret"
    return None


_REFERENCE = re.compile(r"^(?:\$|%\(|\{|#\{|<%|@\{|!\w)")
"""``${VAR}``, ``{{ .Values.x }}``, f-string ``{name}``, ``%(name)s``, ``!vault``..."""
_NOT_SECRET_VALUES = frozenset(
    {
        "null", "none", "nil", "true", "false", "undefined", "~", "str", "string", "int",
        "bool", "boolean", "bytes", "any", "object", "number", "char", "text", "secretstr",
        "optional", "required",
    }
)  # fmt: skip
"""Literals and type names (``token: str`` in a Markdown snippet)."""
_MASK_CHARS = frozenset("*xX.-_?#•")


def _plain_value(value: str, name: str = "") -> bool:
    """True when ``value`` is clearly not a secret: empty, a reference, a mask, a literal, or
    the key's own name (``PASSWORD = "password"``, ``apiKey = "apiKey"``: field names)."""
    v = value.strip()
    if name and _squash(v) == _squash(name):
        return True
    if len(v) < 3 or _MARKER_PREFIX in v:
        return True
    if _REFERENCE.match(v) or v.lower() in _NOT_SECRET_VALUES:
        return True
    if (v[0], v[-1]) in (("<", ">"), ("[", "]")) and " " not in v:
        return True  # ``<your-password>``, tokenizer specials ``[PAD]``, ``<|endoftext|>``
    return all(ch in _MASK_CHARS for ch in v)


# --- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """A single-line pattern: group ``v`` (or the whole match) is the secret value.

    ``check`` may refuse a match (return ``None``) or rename its kind; it gets the match and
    whether bare values count (configuration files) or only quoted ones (code).
    """

    kind: str
    pattern: re.Pattern[str]
    needles: tuple[str, ...]
    check: Callable[[re.Match[str], bool], str | None] | None = None
    fast: re.Pattern[str] | None = None
    """Case-insensitive rules: ``pattern`` without ``re.IGNORECASE`` (see :func:`_rewrite`)."""


def _mixed_case_digit(m: re.Match[str], _bare: bool) -> str | None:
    """Random-looking keys mix upper and lower case (and digits, past their prefix); prose,
    identifiers and CSS classes do not."""
    v = m.group(0)
    if v.startswith("hf_"):
        body = v[3:]
        return "huggingface-token" if not body.islower() and not body.isupper() else None
    ok = any(c.isdigit() for c in v) and any(c.isupper() for c in v)
    return "openai-key" if ok and any(c.islower() for c in v) else None


def _opaque(m: re.Match[str], _bare: bool) -> str | None:
    """A bearer token has a digit or punctuation (``Bearer authentication`` is prose)."""
    v = m.group("v")
    return "bearer-token" if any(c.isdigit() or c in "._~+/-=" for c in v) else None


def _basic_credentials(m: re.Match[str], _bare: bool) -> str | None:
    """``Basic <base64 of user:password>`` (``Basic authentication`` is prose)."""
    v = m.group("v")
    try:
        raw = base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return "basic-auth" if b":" in raw else None


def _not_reference(kind: str) -> Callable[[re.Match[str], bool], str | None]:
    def check(m: re.Match[str], _bare: bool) -> str | None:
        return None if _plain_value(m.group("v")) else kind

    return check


_CONN_KINDS = {
    "accountkey": "azure-storage-key",
    "sharedaccesskey": "azure-storage-key",
    "sharedaccesssignature": "azure-sas",
    "sig": "azure-sas",
}


def _conn_param(m: re.Match[str], _bare: bool) -> str | None:
    if _plain_value(m.group("v")):
        return None
    key = m.group("k").lower()
    return _CONN_KINDS.get(key) or _name_kind(key) or "secret"


def _xml_element(m: re.Match[str], _bare: bool) -> str | None:
    if _plain_value(m.group("v")):
        return None
    return _name_kind(m.group("tag").rsplit(":", 1)[-1])


_KW = r"(?:pass|pwd|secret|token|auth|cred|api[_.-]?key|access[_.-]?key|private[_.-]?key|signing[_.-]?key|encryption[_.-]?key|master[_.-]?key|account[_.-]?key|sas)"  # noqa: E501
_ASSIGNMENT = re.compile(
    _KW
    + r"""[\w.-]{0,40}+(?P<kq>["'`]?)"""
    # ``=`` (``:=``, ``=>``) after optional blanks; a type annotation then ``=``
    # (``password: str = "..."``); or a colon right after the name (YAML, JSON, dicts: prose
    # such as ``Pass :func:`` puts a blank before it)
    + r"""(?P<sep>[ \t]{0,8}+(?::=|=>|=(?!=))|:[ \t]{0,8}+[\w.\[\]|][\w.\[\]|, ]{0,40}+=(?!=)"""
    + r"""|:(?![:=]))"""
    + r"""[ \t]{0,8}+(?:[rbfuRBFU]{0,2}(?:"(?P<dq>(?:[^"\\\n]|\\.){1,500})"|"""
    + r"""'(?P<sq>(?:[^'\\\n]|\\.){1,500})'|`(?P<bq>[^`\n]{1,500})`)"""
    + r"""|(?P<uq>[^\s"'`,;#)}\]][^\n,;#"'`]{0,300}+))""",
    re.IGNORECASE,
)
_ASSIGNMENT_FAST = re.compile(_ASSIGNMENT.pattern)


def _assignment(
    m: re.Match[str], bare: bool, text: str, aws: bool
) -> tuple[str, str, int, int] | None:
    """``name = "value"`` (and ``name: value`` etc.): (kind, value, start, end) or ``None``."""
    group = next((g for g in ("dq", "sq", "bq") if m.group(g) is not None), None)
    if group is None:
        if not bare or m.group("uq") is None:
            return None
        group = "uq"
    start = m.start()
    lo = max(0, start - 64)
    while start > lo and text[start - 1] in _NAME_CHARS:
        start -= 1
    name = text[start : m.start("kq")]
    kind = _name_kind(name)
    value = m.group(group)
    if group == "uq":
        value = value.rstrip()
    if kind is None or _plain_value(value, name):
        return None
    if kind == "secret" and aws and _AWS_SECRET.fullmatch(value):
        kind = "aws-secret-key"
    return kind, value, m.start(group), m.start(group) + len(value)


_AWS_SECRET = re.compile(r"[A-Za-z0-9/+]{40}")


def _folded(
    kind: str,
    pattern: str,
    needles: tuple[str, ...],
    check: Callable[[re.Match[str], bool], str | None] | None = None,
) -> _Rule:
    """A case-insensitive rule; ``pattern`` spells its literals in lower case."""
    return _Rule(kind, re.compile(pattern, re.IGNORECASE), needles, check, re.compile(pattern))


_RULES: tuple[_Rule, ...] = (
    _Rule(
        "aws-access-key",
        re.compile(
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"
        ),
        ("akia", "asia", "abia", "acca", "a3t"),
    ),
    _Rule(
        "github-token",
        re.compile(
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{30,}+|github_pat_[A-Za-z0-9_]{22,}+)"
        ),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _Rule(
        "gitlab-token",
        re.compile(
            r"(?<![A-Za-z0-9_-])(?:gl(?:pat|dt|rt|ptt|cbt|oas|imt|ft|soat|agent|wt|ffct)-"
            r"[A-Za-z0-9_=.-]{20,}+|GR1348941[A-Za-z0-9_-]{20,}+)"
        ),
        (
            "glpat-",
            "gldt-",
            "glrt-",
            "glptt-",
            "glcbt-",
            "gloas-",
            "glimt-",
            "glft-",
            "glsoat-",
            "glagent-",
            "glwt-",
            "glffct-",
            "gr1348941",
        ),
    ),
    _Rule(
        "slack-token",
        re.compile(
            r"(?<![A-Za-z0-9_-])(?:xox[abposre]-[A-Za-z0-9-]{10,}+|xapp-\d-[A-Za-z0-9-]{10,}+)"
        ),
        ("xox", "xapp-"),
    ),
    _Rule(
        "slack-webhook",
        re.compile(
            r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<v>[A-Za-z0-9_/+-]{16,}+)"
        ),
        ("hooks.slack.com",),
    ),
    _Rule(
        "stripe-key",
        re.compile(
            r"(?<![A-Za-z0-9_])(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}+|whsec_[A-Za-z0-9+/=]{24,}+)"
        ),
        ("sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"),
    ),
    _Rule(
        "openai-key",
        re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}+"),
        ("sk-",),
        _mixed_case_digit,
    ),
    _Rule(
        "huggingface-token",
        re.compile(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{34}(?![A-Za-z0-9])"),
        ("hf_",),
        _mixed_case_digit,
    ),
    _Rule("google-api-key", re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}"), ("aiza",)),
    _Rule(
        "npm-token",
        re.compile(r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
        ("npm_",),
    ),
    _Rule(
        "pypi-token",
        re.compile(r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}+"),
        ("pypi-ageichlwas5vcmc",),
    ),
    _Rule(
        "jwt",
        re.compile(
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+"
        ),
        ("eyj",),
    ),
    _Rule(
        "url-password",
        re.compile(r"(?<=://)[^\s:@/?#\"'`<>]{1,128}+:(?P<v>[^\s@/?#\"'`<>]{1,256}+)@"),
        ("://",),
        _not_reference("url-password"),
    ),
    _folded(
        "connection-string",
        r"(?<=[?&;\"'])(?P<k>password|pwd|passwd|accountkey|sharedaccesskey|"
        r"sharedaccesssignature|access_token|api[_-]?key|client_secret|secret|token|sig)="
        r"(?P<v>[^&;\s\"'`(),]{1,500}+)",
        ("password=", "pwd=", "passwd=", "key=", "signature=", "secret=", "token=", "sig="),
        _conn_param,
    ),
    _Rule(
        "bearer-token",
        re.compile(r"(?<![A-Za-z0-9_])[Bb]earer[ \t]{1,4}+(?P<v>[A-Za-z0-9._~+/-]{16,}+=*+)"),
        ("bearer",),
        _opaque,
    ),
    _Rule(
        "basic-auth",
        re.compile(
            r"(?<![A-Za-z0-9_])[Bb]asic[ \t]{1,4}+(?P<v>[A-Za-z0-9+/]{8,}+={0,2}+)"
            r"(?![A-Za-z0-9+/=])"
        ),
        ("basic",),
        _basic_credentials,
    ),
    _folded(
        "secret",
        r"<(?P<tag>[\w.:-]{0,40}?(?:password|passwd|secret|token|api-?key|api_key)"
        r"[\w.-]{0,40}+)>(?P<v>[^<\n]{1,500}+)</",
        ("password", "passwd", "secret", "token", "apikey", "api-key", "api_key"),
        _xml_element,
    ),
)
_ASSIGNMENT_NEEDLES = (
    "pass", "pwd", "secret", "token", "auth", "cred", "key", "sas",
)  # fmt: skip

# --- private keys (multi-line) --------------------------------------------------------------

_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_PEM_INLINE = re.compile(r"(?:\\[nr]|[A-Za-z0-9+/= \t])*+")
_PEM_BODY = re.compile(
    r"""^(?P<pre>[\s"'`+]*+)(?P<b>[A-Za-z0-9+/=]{4,}+)"""
    r"""(?P<post>(?:\\n)?["'`]?[ \t]*[+,;\\]?[ \t]*)$"""
)
_PEM_HEADER = re.compile(r"^\s*[A-Za-z][A-Za-z-]*:[ \t]")
_BASE64ISH = re.compile(r"[A-Za-z0-9+/]{8}")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{4,}+")
_PK = marker("private-key")


def _redact_inline_body(body: str) -> str:
    """A key on one line (``"-----BEGIN ...-----\\nMIIE...\\n-----END ...-----"`` in JSON)."""
    lead = "\\n" if body.startswith("\\n") else ""
    trail = "\\n" if body.endswith("\\n") and len(body) > 2 else ""
    return f"{lead}{_PK}{trail}"


def _redact_pem(lines: list[str], findings: list[Finding]) -> None:
    """Replace the body of every private key block, in place, line for line.

    A line scan (not a ``BEGIN.*?END`` regex, which is quadratic on unterminated blocks): after
    a BEGIN line, body lines (base64, optionally quoted or concatenated in code) are redacted
    until the END line; header lines (``Proc-Type:``) and blank lines are kept; any other line
    ends the block (a BEGIN marker in code that checks for keys is left alone, and counted as
    no finding).
    """
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _PEM_BEGIN.search(line)
        if m is None:
            i += 1
            continue
        line_no, hits, closed, pos = i + 1, 0, False, 0
        out: list[str] = []
        while m is not None:  # every key that starts on this line (JSON holds them inline)
            out.append(line[pos : m.end()])
            end = _PEM_END.search(line, m.end())
            stop = end.start() if end else _PEM_INLINE.match(line, m.end()).end()  # type: ignore[union-attr]
            body = line[m.end() : stop]
            if _BASE64ISH.search(body) and _MARKER_PREFIX not in body:
                out.append(_redact_inline_body(body))
                hits += 1
            else:
                out.append(body)
            pos, closed = stop, end is not None
            m = _PEM_BEGIN.search(line, end.end()) if end else None
        out.append(line[pos:])
        lines[i] = "".join(out)
        i += 1
        if not closed:
            first = i + 1
            i, body_hit = _redact_pem_body(lines, i)
            if body_hit and not hits:
                hits, line_no = 1, first + _first_marker(lines[first - 1 : i + 1])
        findings.extend(Finding("private-key", line_no) for _ in range(hits))


def _first_marker(lines: list[str]) -> int:
    """Index of the first line of ``lines`` that holds the private-key marker."""
    return next((n for n, line in enumerate(lines) if _PK in line), 0)


def _redact_pem_body(lines: list[str], i: int) -> tuple[int, bool]:
    """The body lines of a key whose BEGIN line ended before ``lines[i]``; returns where the
    scan stopped (the END line, which may hold another BEGIN) and whether anything was hidden."""
    hit = False
    while i < len(lines):
        line = lines[i]
        end = _PEM_END.search(line)
        if end is not None:
            head = line[: end.start()]
            if _BASE64_RUN.search(head):
                head = _BASE64_RUN.sub(_PK, head, count=1)
                hit = True
            lines[i] = head + line[end.start() :]
            return i, hit
        body = _PEM_BODY.match(line)
        if body is not None:
            lines[i] = body.group("pre") + _PK + body.group("post")
            hit = True
        elif line.strip() and not _PEM_HEADER.match(line):
            return i, hit
        i += 1
    return i, hit


_YAML_BLOCK = re.compile(
    r"""^(?P<ind>[ \t]*)(?:-[ \t]+)?["']?(?P<name>[\w.-]{1,80})["']?"""
    r"""[ \t]*:[ \t]*[|>][-+0-9]{0,3}[ \t]*(?:#.*)?$""",
    re.MULTILINE,
)


def _redact_yaml_blocks(lines: list[str], findings: list[Finding]) -> None:
    """``password: |`` followed by the value on more-indented lines (YAML block scalars)."""
    i = 0
    while i < len(lines):
        m = _YAML_BLOCK.match(lines[i])
        kind = _name_kind(m.group("name")) if m else None
        i += 1
        if m is None or kind is None:
            continue
        indent, hit = len(m.group("ind")), 0
        while i < len(lines):
            line = lines[i]
            content = line.lstrip()
            if content and len(line) - len(content) <= indent:
                break
            if content and _MARKER_PREFIX not in content:
                lines[i] = line[: len(line) - len(content)] + marker(kind)
                hit = hit or i + 1
            i += 1
        if hit:  # reported on the value's first line, like every other finding
            findings.append(Finding(kind, hit))


# --- the entry point ------------------------------------------------------------------------


class _LineCounter:
    """1-based line of increasing offsets into one text, in linear total time."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, offset: int) -> int:
        if offset < self.pos:  # not expected (matches come in order), but stay correct
            self.pos, self.line = 0, 1
        self.line += self.text.count("\n", self.pos, offset)
        self.pos = offset
        return self.line


def redact(text: str, language: str | None = None) -> Redacted:
    """Redact every secret of ``text``; ``language`` is the chunker's language name.

    Never changes the number of lines. Bare (unquoted) assignment values count as secrets
    unless ``language`` is a programming language (see :data:`CODE_LANGUAGES`).
    """
    lower = text.lower()
    needles = lower
    bare = language not in CODE_LANGUAGES
    findings: list[Finding] = []
    if "private key" in needles:
        lines = text.split("\n")
        _redact_pem(lines, findings)
        text = "\n".join(lines)
        lower = text.lower()
    for rule in _RULES:
        if any(n in needles for n in rule.needles):
            new = _apply(rule, text, lower, bare, findings)
            if new is not text:
                text, lower = new, new.lower()
    if any(n in needles for n in _ASSIGNMENT_NEEDLES):
        text = _apply_assignments(text, lower, bare, "aws" in needles, findings)
        if bare and (": |" in text or ": >" in text or ":|" in text or ":>" in text):
            lines = text.split("\n")
            _redact_yaml_blocks(lines, findings)
            text = "\n".join(lines)
    findings.sort(key=lambda f: f.line)
    return Redacted(text, tuple(findings))


def _rewrite(
    text: str,
    lower: str,
    pattern: re.Pattern[str],
    fast: re.Pattern[str] | None,
    replace: Callable[[re.Match[str]], str | None],
) -> str:
    """``pattern.sub`` with a callback that may keep a match (``None``), and a fast path for
    case-insensitive rules: ``fast`` (the same pattern without ``re.IGNORECASE``, lower-case
    literals) scans the lower-cased text, ~10x faster than an ``re.IGNORECASE`` scan, and
    ``pattern`` re-matches only at its hits, on the original text."""
    folded = fast is not None and len(lower) == len(text)  # lower() kept every offset
    matches = fast.finditer(lower) if folded else pattern.finditer(text)  # type: ignore[union-attr]
    out: list[str] = []
    pos = 0
    for hit in matches:
        m = pattern.match(text, hit.start()) if folded else hit
        if m is None or m.start() < pos:
            continue
        new = replace(m)
        if new is None:
            continue
        out += (text[pos : m.start()], new)
        pos = m.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _apply(rule: _Rule, text: str, lower: str, bare: bool, findings: list[Finding]) -> str:
    lines = _LineCounter(text)
    group = "v" if "v" in rule.pattern.groupindex else 0

    def replace(m: re.Match[str]) -> str | None:
        kind = rule.check(m, bare) if rule.check else rule.kind
        if kind is None or _MARKER_PREFIX in m.group(group):
            return None
        findings.append(Finding(kind, lines.at(m.start())))
        s, e = m.start(group) - m.start(), m.end(group) - m.start()
        whole = m.group(0)
        return whole[:s] + marker(kind) + whole[e:]

    return _rewrite(text, lower, rule.pattern, rule.fast, replace)


def _apply_assignments(
    text: str, lower: str, bare: bool, aws: bool, findings: list[Finding]
) -> str:
    lines = _LineCounter(text)

    def replace(m: re.Match[str]) -> str | None:
        found = _assignment(m, bare, text, aws)
        if found is None:
            return None
        kind, _value, s, e = found
        findings.append(Finding(kind, lines.at(m.start())))
        whole = m.group(0)
        return whole[: s - m.start()] + marker(kind) + whole[e - m.start() :]

    return _rewrite(text, lower, _ASSIGNMENT, _ASSIGNMENT_FAST, replace)
