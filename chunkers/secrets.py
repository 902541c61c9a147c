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

Redact secrets, not the code that refers to them. The lines people ask about
("how do we authenticate to GitLab?") name secrets without holding one, so a value is kept
when it clearly is not a credential:

- a reference or template: ``${DB_PASSWORD}``, ``$TOKEN``, ``{{ .Values.pw }}``,
  ``f"Bearer {self.token}"``, ``"Bearer " + token``, ``%(password)s``, ``os.environ/KEY``,
  whose literal rest is only a scheme (``Bearer``) or punctuation;
- a name: an environment variable (``"CODERAG_SECRET_KEY"``), a header or key name
  (``"X-Gitlab-Token"``, ``"auth_token"``), a path (``/run/secrets/db``);
- a placeholder: ``<token>``, ``changeme``, ``xxxx``, ``your-api-key``, ``...``, ``TODO``,
  ``example`` values (AWS's documented ``...EXAMPLE`` keys), ``0123456789`` runs;
- prose (``token: the API token used to authenticate``), empty strings, masks (``****``)
  and literals like ``null``;
- for names that only say *auth* (``auth: ldap``, ``Authorization:``), any value that does
  not look generated.

Everything else after a secret name is redacted, human passwords (``Summer2024!``) included:
a placeholder hidden by mistake costs little, a real password served to every IDE costs a
rotation. In programming languages an assignment's value must be a quoted literal
(``password = get_password()`` is code, not a secret); in configuration and text files
(``.env``, YAML, INI, properties, shell...) bare values count too, and in shell-like files a
bare value ends at the first blank, as the shell reads it. Command-line flags
(``--password x``, ``mysql -pX``, ``curl -u user:pw``, ``sshpass -p``) count in every file.

An :class:`AllowList` (paths of known fakes such as ``tests/fixtures/**``, or exact values)
keeps a finding's text but still reports it, as ``allowed``, so an operator sees it.

Bump :data:`RULES_VERSION` whenever a rule changes what is redacted: it is part of the index
fingerprint, so existing indexes are re-chunked with the new rules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "KINDS",
    "RULES_VERSION",
    "AllowList",
    "Finding",
    "Redacted",
    "marker",
    "redact",
]

RULES_VERSION = 2
"""Version of the rule set (part of the index fingerprint: bump it when rules change).
2: references, templates, names, placeholders and prose are kept; CLI flags,
env-var defaults, WordPress ``define``, XML key/value attributes, Terraform variable
defaults, Dockerfile ``ENV name value``, Go DSNs and ``auth=(user, pw)`` are redacted."""

CODE_LANGUAGES = frozenset(
    {
        "python", "javascript", "typescript", "tsx", "java", "go", "rust", "c", "cpp",
        "csharp", "ruby", "php", "kotlin", "scala", "swift", "css", "sql", "graphql",
        "protobuf", "cmake", "hcl",
    }
)  # fmt: skip
"""Languages where a bare (unquoted) value after ``password =`` is an expression, not a
literal, and so is left alone (``hcl``: Terraform, whose ``var.x`` is a reference)."""

_SHELL_LANGUAGES = frozenset({"bash", "dockerfile", "dotenv"})
"""Where a bare value ends at the first blank (``PGPASSWORD=x psql ...``)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One secret found: what kind and on which line (never the value itself). ``allowed``:
    an allow-list entry kept it in the text; it is still reported."""

    kind: str
    line: int  # 1-based
    allowed: bool = False


@dataclass(frozen=True, slots=True)
class Redacted:
    """The redacted text and what was found in it."""

    text: str
    findings: tuple[Finding, ...] = ()

    def counts(self) -> dict[str, int]:
        """Redacted findings per kind (what the indexer adds to its report and metrics)."""
        return dict(sorted(Counter(f.kind for f in self.findings if not f.allowed).items()))

    def allowed_counts(self) -> dict[str, int]:
        """Findings an allow-list kept, per kind."""
        return dict(sorted(Counter(f.kind for f in self.findings if f.allowed).items()))


def marker(kind: str) -> str:
    """What replaces a secret value of ``kind``."""
    return f"[REDACTED:{kind}]"


_MARKER_PREFIX = "[REDACTED:"

KINDS = frozenset(
    {
        "aws-access-key", "aws-secret-key", "github-token", "gitlab-token", "slack-token",
        "slack-webhook", "stripe-key", "openai-key", "huggingface-token", "google-api-key",
        "npm-token", "pypi-token", "jwt", "url-password", "azure-storage-key", "azure-sas",
        "bearer-token", "basic-auth", "private-key", "password", "api-key", "token", "secret",
    }
)  # fmt: skip
"""Every kind a finding can have (what an allow-list entry may name)."""

# --- the allow-list ---------------------------------------------------------------------------

_GLOB_CHARS = frozenset("*?[")


def _glob_regex(glob: str) -> re.Pattern[str]:
    """A gitignore-like glob as a regex: ``**`` spans directories, ``*`` and ``?`` do not; a
    glob without ``/`` matches a file name at any depth."""
    out: list[str] = []
    i = 0
    g = glob.lstrip("/")
    while i < len(g):
        if g.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif g.startswith("**", i):
            out.append(".*")
            i += 2
        elif g[i] == "*":
            out.append("[^/]*")
            i += 1
        elif g[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(g[i]))
            i += 1
    body = "".join(out)
    if "/" not in glob.rstrip("/"):
        body = "(?:.*/)?" + body
    if glob.endswith("/"):
        body += ".*"
    return re.compile(body + r"\Z")


@dataclass(frozen=True)
class AllowList:
    """Findings to keep in the text (and report as allowed): files of known fakes, by path
    glob (optionally only some kinds), and exact values.

    One entry per line, ``#`` starts a comment::

        tests/fixtures/**                    every kind, in these files
        docs/examples/*.md password,token    only these kinds
        value:AKIAIOSFODNN7EXAMPLE           this exact value, anywhere

    Entries must be narrow: a glob needs one path segment without wildcards
    (``tests/fixtures/**``, ``**/testdata/**``; not ``**``, ``*.py`` or ``**/*.pem``), a value
    at least 6 characters. A private key is only kept by path, never by value.
    """

    paths: tuple[tuple[str, frozenset[str] | None], ...] = ()
    values: frozenset[str] = frozenset()
    _compiled: tuple[tuple[re.Pattern[str], frozenset[str] | None], ...] = field(
        default=(), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = tuple((_glob_regex(g), kinds) for g, kinds in self.paths)
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def parse(cls, lines: Iterable[str], *, strict: bool = True) -> tuple[AllowList, list[str]]:
        """The allow-list of ``lines`` and the entries refused (with why). ``strict``: raise
        :class:`ValueError` on the first refused entry instead."""
        paths: list[tuple[str, frozenset[str] | None]] = []
        values: set[str] = set()
        errors: list[str] = []
        for raw in lines:
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            if entry.startswith("value:"):
                value = entry[len("value:") :].strip()
                if len(value) < 6:
                    errors.append(f"{entry!r}: a value needs at least 6 characters")
                else:
                    values.add(value)
                continue
            entry = re.split(r"\s#", entry, maxsplit=1)[0].strip()
            glob, _, rest = entry.partition(" ")
            kinds = frozenset(k.strip() for k in rest.replace(" ", ",").split(",") if k.strip())
            unknown = sorted(kinds - KINDS)
            if unknown:
                errors.append(f"{entry!r}: unknown kind {', '.join(unknown)}")
            elif not any(seg and not (_GLOB_CHARS & set(seg)) for seg in glob.split("/")):
                errors.append(
                    f"{glob!r}: too broad, a glob needs a path segment without wildcards "
                    "(tests/fixtures/**, not ** or *.py)"
                )
            else:
                paths.append((glob, kinds or None))
        if strict and errors:
            raise ValueError("; ".join(errors))
        return cls(tuple(paths), frozenset(values)), errors

    def __bool__(self) -> bool:
        return bool(self.paths or self.values)

    def merged(self, other: AllowList | None) -> AllowList:
        """Both lists' entries."""
        if not other:
            return self
        if not self:
            return other
        return AllowList(self.paths + other.paths, self.values | other.values)

    def digest(self) -> str:
        """A short stable id of the entries (part of the index fingerprint)."""
        text = "\n".join(
            [f"{g} {','.join(sorted(k or ()))}" for g, k in self.paths]
            + [f"value:{v}" for v in sorted(self.values)]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def keeper(self, path: str | None) -> Callable[[str, str | None], bool] | None:
        """What this list keeps in the file at ``path``: ``keep(kind, value)``, or ``None``
        when it keeps nothing there (``value`` is ``None`` for a private key's body)."""
        every = False
        kinds: set[str] = set()
        if path:
            for rx, ks in self._compiled:
                if rx.match(path):
                    if ks is None:
                        every = True
                    else:
                        kinds |= ks
        values = self.values
        if not (every or kinds or values):
            return None

        def keep(kind: str, value: str | None) -> bool:
            return every or kind in kinds or (value is not None and value.strip() in values)

        return keep


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
        # settings about a secret, not the secret
        "lifespan", "lifetime", "duration", "seconds", "secs", "expired", "encoder", "hasher",
        "process", "setting", "settings", "option", "options", "stdin", "headers", "paths",
        "files", "dirs", "ref", "arn", "variable", "mount", "volume", "digest",
        "py", "js", "ts", "json", "yaml", "yml", "sh", "txt", "toml", "cfg", "conf", "ini",
        "md", "html", "xml", "sql", "j2", "tpl", "tmpl", "budget", "allowed", "number", "line",
        "enc", "encrypted", "hash", "hashed", "fingerprint", "checksum", "encryption",
        "audience", "aud", "issuer", "iss", "history", "days", "interval", "period",
        "frequency", "delay", "retries", "attempts", "refresh",
    }
)  # fmt: skip
_NOT_SECRET_FIRST = frozenset(
    {
        "existing", "use", "is", "has", "no", "enable", "disable", "require", "requires",
        "allow", "skip", "show", "with", "without", "need", "needs",
    }
)  # fmt: skip
"""``existingSecret``, ``use_auth``, ``has_password``, ``--no-password``: a name that says
something about a secret (a flag, another object's name), never one."""


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
    if words[0] in _NOT_SECRET_FIRST:
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


def _weak_name(name: str) -> bool:
    """A token name that only says *auth* (``auth``, ``Authorization``, ``custom_auth``): it
    holds a mode (``auth: ldap``) as often as a credential, so only generated-looking values
    count."""
    return _name_kind(name) == "token" and not any("token" in w for w in _name_words(name))


# --- what kind of file ----------------------------------------------------------------------

_DOLLAR_LANGUAGES = frozenset(
    {
        "bash", "dockerfile", "dotenv", "yaml", "makefile", "kotlin", "php", "perl", "groovy",
        "markdown", "text", "hcl", "powershell",
    }
)  # fmt: skip
"""Where ``$name`` inside a value is a variable (elsewhere ``"$ecret1"`` is a literal)."""


@dataclass(frozen=True, slots=True)
class _FileKind:
    """How values are written in one file."""

    bare: bool = True  # unquoted values count (configuration and text files)
    shell: bool = False  # a bare value ends at the first blank (shell, Dockerfile, .env)
    dollar: bool = True  # ``$name`` interpolates
    ini: bool = False  # ``key = a b c`` is one value, even without blanks around ``=``
    yaml: bool = False  # ``*name`` is an alias
    netrc: bool = False  # ``machine h login u password p``
    pgpass: bool = False  # ``host:port:db:user:password``
    lang: str | None = None  # the language, refined (``dotenv``, ``hcl``, ``powershell``)


def _file_kind(language: str | None, path: str | None) -> _FileKind:
    """The file kind of ``language``, refined by the file name the chunker's language does
    not tell apart: ``.env`` files (text to it) and Terraform (``var.x`` is a reference)."""
    lang = language
    base = path.rsplit("/", 1)[-1].lower() if path else ""
    if base.startswith(".env") or base.endswith(".env"):
        lang = "dotenv"
    elif base.endswith((".tf", ".tfvars", ".hcl")):
        lang = "hcl"
    elif base.endswith(".ps1"):
        lang = "powershell"
    return _FileKind(
        bare=lang not in CODE_LANGUAGES,
        shell=lang in _SHELL_LANGUAGES,
        dollar=lang is None or lang in _DOLLAR_LANGUAGES,
        ini=lang in ("ini", "toml"),
        yaml=lang == "yaml",
        netrc=base in (".netrc", "_netrc") or base.endswith(".netrc"),
        pgpass=base in (".pgpass", "pgpass.conf"),
        lang=lang,
    )


_ANY = _FileKind()
"""A file of unknown kind: bare values count, ``$name`` interpolates."""


# --- values that are not secrets ------------------------------------------------------------

_REFERENCE = re.compile(
    r"^(?:\$\{|\$\(|\$[A-Z_][A-Z0-9_]*(?![a-z])|\$\d[a-z]?\$|%\(|%[A-Za-z_]\w*%|\{\{|<%"
    r"|!(?:vault|Ref|Sub|GetAtt|ImportValue|Join|Select|FindInMap|secret|env|include)\b"
    r"|os\.environ|process\.env|env\(|ENV\[)"
)
"""``${VAR}``, ``$(cmd)``, ``$TOKEN``, ``%(name)s``, ``%VAR%``, ``{{ x`` and ``<%= x`` (a
template whose quotes cut the value short), ``!vault``/``!Ref`` (YAML tags),
``os.environ/KEY`` (LiteLLM), ``env('X')``, a crypt hash (``$2b$...``). Templates in the
middle of a value are :func:`_template_only`'s."""
_REFERENCE_DOLLAR = re.compile(r"^\$[A-Za-z_]\w*")
"""``$token``: a variable where ``$`` interpolates (shell, YAML, Kotlin, PHP...); in Python
or Java ``"$ecret1"`` is a literal."""
_YAML_ALIAS = re.compile(r"\*[A-Za-z_][\w.-]{0,80}")
"""``password: *db_password``: a YAML alias (in YAML files only)."""
_NOT_SECRET_VALUES = frozenset(
    {
        "null", "none", "nil", "true", "false", "undefined", "~", "str", "string", "int",
        "bool", "boolean", "bytes", "any", "object", "number", "char", "text", "secretstr",
        "optional", "required", "yes", "no", "on", "off",
    }
)  # fmt: skip
"""Literals and type names (``token: str`` in a Markdown snippet)."""
_MASK_CHARS = frozenset("*xX.-_?#•")

_PLACEHOLDER_WORDS = frozenset(
    {
        "changeme", "changeit", "replaceme", "todo", "tbd", "fixme", "dummy", "example",
        "sample", "placeholder", "secret", "secrets", "password", "passwd", "pass", "pwd",
        "token", "apikey", "key", "test", "testing", "default", "redacted", "hidden",
        "masked", "foo", "bar", "foobar", "baz", "value", "mypassword", "mysecret",
        "yourpassword", "yoursecret", "yourtoken", "s3cr3t", "passw0rd", "p4ssw0rd",
        # what tests send to be refused
        "wrong", "invalid", "incorrect", "bad", "guess", "bogus", "nope", "expired", "revoked",
    }
)  # fmt: skip
_PLACEHOLDER = re.compile(
    r"x{4,}|change[-_ ]?(?:me|it)|replace[-_ ]?me|example|placeholder|dummy|"
    r"(?<![a-z])(?:fake|sample|redacted|revoked|invalid|expired|wrong)(?![a-z])|(.)\1{7,}|"
    r"^(?:your|my[-_ ]|insert|enter[-_ ]|put[-_ ]|(?:todo|tbd|fixme)\b)|"
    r"^(?:password|passwd|secret|changeme|test|admin|example|dummy|token)[\d!_.-]*$|"
    r"[-_ ]here$|\.\.\.|\u2026|0123456789|123456789|abcdefghij|"
    r"^<[^<>\n]+>$|^\[[^\[\]\n]+\]$",
    re.IGNORECASE,
)
"""``<token>``, ``changeme``, ``xxxx``, ``your-api-key``, ``sk-...``, ``...EXAMPLE``,
``fake-token-0123456789``: values that say they are not real."""


def _placeholder(value: str) -> bool:
    """A value that says it is not a real secret."""
    v = value.strip().strip("\"'`")
    if _squash(v) in _PLACEHOLDER_WORDS or v.lower() in _PLACEHOLDER_WORDS:
        return True
    if len(v) >= 6 and len(set(v.lower())) <= 2:
        return True  # ``aaaaaaaa``, ``00000000``
    return _PLACEHOLDER.search(v) is not None


_TEMPLATE_PARTS = (
    r"\$\{\{[^}\n]{0,200}\}\}",  # ${{ secrets.X }} (GitHub Actions, Continue)
    r"\{\{[^}\n]{0,200}\}\}",  # {{ x }} (Jinja, Helm, mustache)
    r"\$\{[^}\n]{0,200}(?:\}|$)",  # ${X}, ${X:-d}, or cut off by a quote
    r"\$\([^)\n]{0,200}(?:\)|$)",  # $(cmd), $(VAR) in make
    r"\$[A-Z_][A-Z0-9_]{0,80}(?![a-z])",  # $VAR
    r"#\{[^}\n]{0,200}\}",  # Ruby "#{x}"
    r"<%=?[^%\n]{0,200}%>",  # ERB
    r"%\([A-Za-z_][\w.]{0,80}\)[sdifr]",  # %(name)s
    r"%[-+ 0#]?\d{0,3}(?:\.\d+)?[sdifrqvx](?![A-Za-z0-9])",  # %s, %q, %d
    r"%[A-Za-z_][A-Za-z0-9_]{0,80}%",  # %VAR% (cmd.exe)
    r"\\\([^)\n]{0,200}\)",  # Swift "\(x)"
    r"\{[\w.\[\]'\"()!:, \\-]{0,200}\}",  # f-string / str.format: {}, {0}, {self.x}, {d['k']}
    r"\{[\w.\[\]'\"()!:, \\-]{1,200}$",  # ... cut off by a quote: {v.replace(
    r"\\[nrt]",  # escapes
)
_TEMPLATE = re.compile("|".join(_TEMPLATE_PARTS))
_TEMPLATE_DOLLAR = re.compile("|".join((*_TEMPLATE_PARTS, r"\$[A-Za-z_]\w{0,80}")))
"""With ``$token`` too, where ``$`` interpolates."""
_SCHEME = re.compile(
    r"^(?:bearer|basic|token|bot|digest|apikey|api-key|sso-key|negotiate|hmac|jwt)\b[ \t:]*",
    re.IGNORECASE,
)
"""What precedes a credential in an ``Authorization`` value."""


def _template_only(value: str, dollar: bool = True) -> bool:
    """A template (``f"Bearer {token}"``, ``"$USER:$PASSWORD"``, ``"Bearer %s"``) or a bare
    scheme (``"Bearer "``) whose literal rest holds nothing that looks like a credential.
    ``dollar``: ``$name`` interpolates in this file."""
    rest, n = (_TEMPLATE_DOLLAR if dollar else _TEMPLATE).subn(" ", value)
    rest = _SCHEME.sub("", rest.strip())
    if n == 0:
        return not rest.strip()
    return not _secretish(rest)


_JOINED_WORDS = re.compile(r"[A-Za-z]+(?:[-_.][A-Za-z]+)*")
_TECH_WORD = re.compile(
    r"(?:oauth|sha|md|utf|base|x|http|aes|rsa|ec|ed|v|tls|ssl|s|k|h|ipv|rfc)\d{1,4}", re.I
)
_SPLIT = re.compile(r"[\s:;,=&@/|()\[\]{}<>\"'`]+")


def _secretish_word(w: str) -> bool:
    """Does one word look generated or password-like (``Harbor47``, ``aB3xQ9...``,
    ``Copper!Harbor``) rather than a word, identifier or number?"""
    if len(w) < 6 or _TECH_WORD.fullmatch(w):
        return False
    has_digit = any(c.isdigit() for c in w)
    has_alpha = any(c.isalpha() for c in w)
    if has_digit and has_alpha:
        return True
    if not has_alpha:
        return False  # numbers, ports, dates
    if _JOINED_WORDS.fullmatch(w):
        # Letters only: random when the case flips all along, not in camelCase words.
        parts = re.split(r"[-_.]", w)
        return any(len(p) >= 12 and len(_WORD.findall(p)) * 3 >= len(p) for p in parts)
    return len(w) >= 8  # letters and symbols


def _secretish(text: str) -> bool:
    """Does ``text`` hold any word that looks like a credential?"""
    return any(_secretish_word(w) for w in _SPLIT.split(text))


_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_.:][A-Za-z0-9]+)*")
_NAME_VOCAB = _SECRET_WORDS | {
    "key", "keys", "secrets", "tokens", "passwords", "api", "bearer", "jwt", "csrf", "xsrf",
    "oauth", "cookie", "header", "creds", "login",
}  # fmt: skip


def _names_a_secret(value: str) -> bool:
    """A value that is the *name* of a secret, not one: an environment variable
    (``"CODERAG_SECRET_KEY"``), a key or header name (``"auth_token"``, ``"X-Api-Key"``,
    ``"azure-storage-key"``), a secret object's name (``"ledger-db-credentials"``)."""
    v = value.strip()
    if _ENV_NAME.fullmatch(v):
        return any(p.isalpha() and len(p) >= 3 for p in v.split("_"))
    if not _IDENTIFIER.fullmatch(v):
        return False
    if any(_secretish_word(p) for p in re.split(r"[-_.:]", v)):
        return False
    return any(w in _NAME_VOCAB for w in _name_words(v))


_STOPWORDS = frozenset(
    {
        "the", "a", "an", "to", "of", "in", "on", "at", "by", "for", "from", "with", "as",
        "is", "are", "was", "be", "it", "its", "this", "that", "and", "or", "not", "no",
        "never", "only", "your", "you", "we", "our", "used", "use", "see", "set", "through",
        "into", "if", "then", "when", "must", "should", "can", "will", "has", "have", "what",
        "which", "who", "de", "la", "le", "du", "des", "der", "die", "das", "und", "en", "el",
    }
)  # fmt: skip


def _prose(value: str) -> bool:
    """A sentence (``token: the API token used to authenticate``): three words or more, one
    of them a function word, none of them credential-like (a passphrase of plain words such
    as ``correct horse battery staple`` has no function word, and stays a secret)."""
    words = value.split()
    if len(words) < 3:
        return False
    cores = [w.strip(".,:;!?()[]{}\"'`*=<>") for w in words]
    if any(_secretish_word(c) for c in cores):
        return False
    return any(c.lower() in _STOPWORDS for c in cores)


_PATH = re.compile(r"(?:~|\.{1,2})?/[\w.@-]+(?:/[\w.@-]*)*(?::[a-z]{1,4})?")
_RELATIVE_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)+")


def _path_like(value: str) -> bool:
    """``/run/secrets/db_password``, ``./pw.txt``, ``../auth.py:/app/auth.py:ro``,
    ``retriever/litellm_auth.py``, ``ledger/db`` (a vault path): no part of it generated."""
    if value.startswith(("/", "./", "../", "~/")):
        first = value.split(":/", 1)[0]
        if not _PATH.fullmatch(first):
            return False
    elif _RELATIVE_PATH.fullmatch(value):
        first = value
    else:
        return False
    return not any(_secretish_word(s) for s in re.split(r"[/.]", first) if s)


_EXPRESSION = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?=$|[()\[\],])|[A-Za-z_][\w.]*\(")


def _expression(value: str) -> bool:
    """Code where a bare value stands (``Token.Line))``, ``self.store.lookup(x)``): in text
    files that hold code, a dotted name or a call of plain words."""
    m = _EXPRESSION.match(value)
    if m is None:
        return False
    return not any(_secretish_word(p) for p in re.split(r"[.(]", m.group(0)) if p)


_JWT_SHAPE = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{0,15}")
"""A JWT with a stub signature (``...eyJzdWIiOiJhIn0.c2ln``): it grants nothing."""


def _plain_value(value: str, name: str = "", fk: _FileKind = _ANY) -> bool:
    """True when ``value`` is clearly not a secret: empty, a reference or template, a mask,
    a literal, a placeholder, or the key's own name (``PASSWORD = "password"``, ``apiKey =
    "apiKey"``: field names)."""
    v = value.strip()
    if name and _squash(v) == _squash(name):
        return True
    if len(v) < 3 or _MARKER_PREFIX in v:
        return True
    if _REFERENCE.match(v) or (fk.dollar and _REFERENCE_DOLLAR.match(v)):
        return True
    if fk.yaml and _YAML_ALIAS.fullmatch(v):
        return True
    if v.lower() in _NOT_SECRET_VALUES or all(ch in _MASK_CHARS for ch in v):
        return True
    if _JWT_SHAPE.fullmatch(v):
        return True
    return _placeholder(v) or _template_only(v, fk.dollar)


def _not_secret(value: str, name: str = "", fk: _FileKind = _ANY) -> bool:
    """What an assignment's value must not be to count as a secret: plain (see
    :func:`_plain_value`), a name, a path, prose, a word after a stop word, or, under a name
    that only says *auth*, anything that does not look generated."""
    v = value.strip()
    if _plain_value(v, name, fk) or _names_a_secret(v) or _path_like(v) or _prose(v):
        return True
    if v.lower() in _STOPWORDS:
        return True
    return bool(name) and _weak_name(name) and not _secretish(_SCHEME.sub("", v))


# --- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """A single-line pattern: group ``v`` (or the first of ``dq``/``sq``/``bq``/``uq`` that
    matched, or the whole match) is the secret value.

    ``check`` may refuse a match (return ``None``) or rename its kind; it gets the match and
    the file's kind.
    """

    kind: str
    pattern: re.Pattern[str]
    needles: tuple[str | re.Pattern[str], ...]
    """Lower-case strings (or patterns, for families such as ``glpat-``/``gldt-``...): the
    rule only runs on a file that holds one of them."""
    check: Callable[[re.Match[str], _FileKind], str | None] | None = None
    fast: re.Pattern[str] | None = None
    """Case-insensitive rules: ``pattern`` without ``re.IGNORECASE`` (see :func:`_rewrite`)."""
    when: Callable[[_FileKind], bool] | None = None
    """Only in files of this kind (a ``.pgpass`` line, a Terraform block): not run elsewhere."""


_VALUE_GROUPS = ("v", "dq", "sq", "bq", "eq", "uq")


def _value_group(m: re.Match[str]) -> str | int:
    """The group that holds the value: the first of :data:`_VALUE_GROUPS` that matched."""
    names = m.re.groupindex
    for g in _VALUE_GROUPS:
        if g in names and m.group(g) is not None:
            return g
    return 0


def _value(m: re.Match[str]) -> str:
    return m.group(_value_group(m))


def _mixed_case_digit(m: re.Match[str], _fk: _FileKind) -> str | None:
    """Random-looking keys mix upper and lower case (and digits, past their prefix); prose,
    identifiers and CSS classes do not."""
    v = m.group(0)
    if v.startswith("hf_"):
        body = v[3:]
        return "huggingface-token" if not body.islower() and not body.isupper() else None
    ok = any(c.isdigit() for c in v) and any(c.isupper() for c in v)
    return "openai-key" if ok and any(c.islower() for c in v) else None


def _jwt(m: re.Match[str], _fk: _FileKind) -> str | None:
    """A JWT with a real signature: ``header.claims.c2ln`` in a test checks parsing and
    grants nothing (HS256 signs with 43 characters, RS256 with 342)."""
    return "jwt" if len(m.group(0).rsplit(".", 1)[-1]) >= 16 else None


def _opaque(m: re.Match[str], _fk: _FileKind) -> str | None:
    """A bearer token has a digit or punctuation (``Bearer authentication`` is prose) and is
    not a phrase of words (``Bearer not-a-valid-token``)."""
    v = m.group("v")
    if not any(c.isdigit() or c in "._~+/-=" for c in v) or _JOINED_WORDS.fullmatch(v):
        return None
    return "bearer-token"


def _word_before(m: re.Match[str]) -> bool:
    """Is the match glued to a word before it? (Checked here, not by a look-behind at the
    pattern's start, which would keep ``re`` from searching for its first letters fast.)"""
    before = m.string[m.start() - 1 : m.start()]
    return bool(before) and (before.isalnum() or before == "_")


def _basic_credentials(m: re.Match[str], _fk: _FileKind) -> str | None:
    """``Basic <base64 of user:password>`` (``Basic authentication`` is prose; ``isBasic``
    is a name: the word must start there)."""
    if _word_before(m):
        return None
    v = m.group("v")
    try:
        raw = base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return "basic-auth" if b":" in raw else None


def _url_password(m: re.Match[str], fk: _FileKind) -> str | None:
    """``scheme://user:password@host``, unless the password is a reference or placeholder,
    or the user's name again (``guest:guest``, ``postgres:postgres``: well-known defaults)."""
    v = m.group("v")
    if _plain_value(v, fk=fk) or v == m.group("user"):
        return None
    return "url-password"


_CONN_KINDS = {
    "accountkey": "azure-storage-key",
    "sharedaccesskey": "azure-storage-key",
    "sharedaccesssignature": "azure-sas",
    "sig": "azure-sas",
}


def _conn_param(m: re.Match[str], fk: _FileKind) -> str | None:
    if _plain_value(m.group("v"), fk=fk):
        return None
    key = m.group("k").lower()
    return _CONN_KINDS.get(key) or _name_kind(key) or "secret"


def _xml_element(m: re.Match[str], fk: _FileKind) -> str | None:
    if _plain_value(m.group("v"), fk=fk):
        return None
    return _name_kind(m.group("tag").rsplit(":", 1)[-1])


def _named(m: re.Match[str], fk: _FileKind) -> str | None:
    """A value whose key is named in group ``name`` (``define('DB_PASSWORD', '...')``,
    ``<add key="ApiKey" value="..."/>``, ``getenv("TOKEN", "...")``, ``ENV TOKEN ...``)."""
    name = m.group("name")
    kind = _name_kind(name)
    if kind is None or _not_secret(_value(m), name, fk):
        return None
    return kind


def _flag(m: re.Match[str], fk: _FileKind) -> str | None:
    """``--password x``, ``--api-key=x``: the flag names the secret (``--password-stdin``,
    ``--no-password``, ``--tokenizer`` do not), the next word is its value unless it is
    another flag, a metavar (``PASSWORD``) or a reference."""
    v = _value(m)
    before = m.string[m.start() - 1 : m.start()]
    if v.startswith("-") or (before and (before.isalnum() or before in "_-")):
        return None
    return _named(m, fk)


def _password(m: re.Match[str], fk: _FileKind) -> str | None:
    """A password in a fixed place (``mysql -pX``, ``sshpass -p X``, ``auth=("u", "X")``)."""
    v = _value(m)
    if _plain_value(v, fk=fk) or _names_a_secret(v):
        return None
    if "user" in m.re.groupindex and v == m.group("user"):
        return None
    return "password"


def _password_kind(kind: str) -> Callable[[re.Match[str], _FileKind], str | None]:
    """:func:`_password` under another kind."""

    def check(m: re.Match[str], fk: _FileKind) -> str | None:
        return kind if _password(m, fk) else None

    return check


def _directive(m: re.Match[str], fk: _FileKind) -> str | None:
    """``requirepass x``: configuration files only (in code it is a statement)."""
    return _password(m, fk) if fk.bare else None


def _netrc(m: re.Match[str], fk: _FileKind) -> str | None:
    return _password(m, fk) if fk.netrc else None


def _pgpass(m: re.Match[str], fk: _FileKind) -> str | None:
    return _password(m, fk) if fk.pgpass else None


def _pem_base64(m: re.Match[str], _fk: _FileKind) -> str | None:
    """Base64 that decodes to a PEM private key."""
    v = m.group(0)
    try:
        head = base64.b64decode(v[:64] + "=" * (-len(v[:64]) % 4))
    except (binascii.Error, ValueError):
        return None
    return "private-key" if b"PRIVATE KEY" in head else None


_KW = r"(?:pass|pwd|secret|token|auth|cred|api[_.-]?key|access[_.-]?key|private[_.-]?key|signing[_.-]?key|encryption[_.-]?key|master[_.-]?key|account[_.-]?key|sas)"  # noqa: E501
_ASSIGNMENT = re.compile(
    _KW
    + r"""[\w.-]{0,40}+(?P<kq>["'`]?)"""
    # ``=`` (``:=``, ``=>``) after optional blanks; a type annotation then ``=``
    # (``password: str = "..."``, ``API_TOKEN: &str = "..."``); or a colon right after the
    # name (YAML, JSON, dicts: prose such as ``Pass :func:`` puts a blank before it)
    + r"""(?P<sep>[ \t]{0,8}+(?::=|=>|=(?!=))"""
    + r"""|:[ \t]{0,8}+[\w.\[\]|&<>*'][\w.\[\]|&<>*', ]{0,40}+=(?!=)"""
    + r"""|:(?![:=]))"""
    + r"""[ \t]{0,8}+(?:[rbfuRBFU@$]{0,2}(?:"(?P<dq>(?:[^"\\\n]|\\.){1,500})"|"""
    + r"""'(?P<sq>(?:[^'\\\n]|\\.){1,500})'|`(?P<bq>[^`\n]{1,500})`"""
    # an escaped quote (``password=\"...\"`` inside a Java string: Kafka's JAAS config)
    + r"""|\\["'](?P<eq>[^"'\\\n]{1,500})\\["'])"""
    + r"""|(?P<uq>[^\s"'`,;#)}\]][^\n"'`]{0,300}+))""",
    re.IGNORECASE,
)
_ASSIGNMENT_FAST = re.compile(_ASSIGNMENT.pattern)
_ASSIGNMENT_NEEDLES = (
    "pass", "pwd", "secret", "token", "auth", "cred", "key", "sas",
)  # fmt: skip

_AWS_SECRET = re.compile(r"[A-Za-z0-9/+]{40}")
_CONCAT = re.compile(r"[ \t]*\+[ \t]*[A-Za-z_(]")
_ANNOTATION = re.compile(
    r"(?:str|int|bool|bytes|float|string|Optional|list|dict|Any)\b[\[\]\w, |]*[),=]"
)
"""``passwd: str) -> None``: a parameter's type, in code that text files quote."""
_COMMENT = re.compile(r"[ \t][#;]")
_NEXT_PAIR = re.compile(r",[ \t]*[\w.-]{1,40}[ \t]*[:=][ \t]")
"""``api-key: 3, password: 6``: another pair after a comma, the value ends at it."""
_PARAM_EXPANSION = re.compile(r"(?P<op>:?[-=+?])(?P<v>[^}\n]{0,300})\}")


def _bare_value(
    m: re.Match[str], fk: _FileKind, text: str, line_start: int
) -> tuple[int, int] | None:
    """Where an unquoted value starts and ends: at the first blank in shell-like files and
    for ``NAME=value`` with no blank around ``=`` (a command line, a compose list); before an
    inline comment (`` #``) or, in a flow collection (``{a: 1, b: 2}``), a comma otherwise."""
    s = m.start("uq")
    value = m.group("uq").split("\\n", 1)[0]  # code inside a JSON string: ``\n`` ends it
    sep = m.group("sep")
    if sep == "=" and s == m.end("sep") and (fk.shell or not fk.ini):
        line_end = text.find("\n", s)
        close = text.find(">", s, None if line_end < 0 else line_end)
        if value.startswith("<") and close > 0:
            value = text[s : close + 1]  # ``TOKEN=<one of the tokens>``: a placeholder
        else:
            value = value.split(None, 1)[0] if value.split() else ""
    else:
        c = _COMMENT.search(value)
        if c is not None:
            value = value[: c.start()]
        prefix = text[line_start : m.start()]
        if "{" in prefix or "[" in prefix or _NEXT_PAIR.search(value):
            value = value.split(",", 1)[0]  # a flow mapping: ``{user: a, password: b}``
        value = value.rstrip().rstrip(",;|\u2502 \t")  # ``\u2502``: a box-drawn table's bar
        for opener, closer in ("()", "[]", "{}"):
            if opener not in value:  # the pair was inside parentheses: ``(password: x)``
                value = value.rstrip(closer)
    return (s, s + len(value)) if value else None


def _assignment(
    m: re.Match[str], fk: _FileKind, text: str, aws: bool
) -> tuple[str | None, int, int]:
    """``name = "value"`` (and ``name: value`` etc.): (kind or ``None``, value start, end).
    The end is where scanning goes on, also when the value is refused, so that a second
    assignment on the line (``-e A_PASSWORD=$X -e B_TOKEN=...``) is still seen."""
    group = next((g for g in ("dq", "sq", "bq", "eq") if m.group(g) is not None), None)
    start = m.start()
    lo = max(0, start - 64)
    while start > lo and text[start - 1] in _NAME_CHARS:
        start -= 1
    name = text[start : m.start("kq")]
    if group == "bq" and text[start - 1 : start] == ":" and m.group("sep") == ":":
        return None, m.end(), m.end()  # a reST role (``:token:`name```): markup, no value
    if text[max(0, start - 2) : start] == "${":  # ${NAME:-default}, ${NAME:?message}
        pe = _PARAM_EXPANSION.match(text, m.start("kq") + len(m.group("kq")))
        if pe is None or "?" in pe.group("op"):
            return None, m.end(), m.end()
        vs, ve = pe.start("v"), pe.end("v")
        kind = _name_kind(name)
        if kind is None or _not_secret(pe.group("v"), name, fk):
            return None, ve, max(ve, pe.end())
        return kind, vs, ve
    if group is None:
        if not fk.bare or m.group("uq") is None:
            return None, m.end(), m.end()
        line_start = text.rfind("\n", 0, m.start()) + 1
        span = _bare_value(m, fk, text, line_start)
        if span is None:
            return None, m.end(), m.end()
        vs, ve = span
    else:
        vs, ve = m.start(group), m.end(group)
    value = text[vs:ve]
    kind = _name_kind(name)
    if kind is None or _not_secret(value, name, fk):
        return None, ve, ve
    if group is None and (_expression(value) or _ANNOTATION.match(value)):
        return None, ve, ve
    prefix = value.strip("-_:./ ")
    if group is not None and _CONCAT.match(text, ve + 1) and not _secretish(prefix):
        return None, ve, ve  # ``"sk-master-" + os.urandom(8).hex()``: a prefix, not a value
    if kind == "secret" and aws and _AWS_SECRET.fullmatch(value):
        kind = "aws-secret-key"
    return kind, vs, ve


def _folded(
    kind: str,
    pattern: str,
    needles: tuple[str, ...],
    check: Callable[[re.Match[str], _FileKind], str | None] | None = None,
) -> _Rule:
    """A case-insensitive rule; ``pattern`` spells its literals in lower case."""
    return _Rule(kind, re.compile(pattern, re.IGNORECASE), needles, check, re.compile(pattern))


_QUOTED_OR_WORD = (
    r"""(?:"(?P<dq>[^"\n]{1,300})"|'(?P<sq>[^'\n]{1,300})'|(?P<uq>[^\s"'`;|&<>()]{1,300}+))"""
)
"""A shell word: double- or single-quoted, or bare up to a blank or an operator."""
_QUOTED = r"""(?:"(?P<dq>(?:[^"\\\n]|\\.){1,500})"|'(?P<sq>(?:[^'\\\n]|\\.){1,500})')"""
"""A quoted string literal of code."""

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
        (re.compile(r"gh[pousr]_|github_pat_"),),
    ),
    _Rule(
        "gitlab-token",
        re.compile(
            r"(?<![A-Za-z0-9_-])(?:gl(?:pat|dt|rt|ptt|cbt|oas|imt|ft|soat|agent|wt|ffct)-"
            r"[A-Za-z0-9_=.-]{20,}+|GR1348941[A-Za-z0-9_-]{20,}+)"
        ),
        (re.compile(r"gl(?:pat|dt|rt|ptt|cbt|oas|imt|ft|soat|agent|wt|ffct)-|gr1348941"),),
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
        ("k_live_", "k_test_", "whsec_"),
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
        _jwt,
    ),
    _Rule(
        "url-password",
        # The password runs to the last ``@`` before the host: people do commit ``@`` (and
        # ``#``) in it, unencoded.
        re.compile(r"://(?P<user>[^\s:@/?#\"'`<>]{0,128}+):(?P<v>[^\s/?\"'`<>]{1,256})@"),
        ("://",),
        _url_password,
    ),
    _Rule(
        "password",
        # Go's MySQL driver: ``user:password@tcp(host)/db``, no scheme.
        re.compile(
            r"""(?<=["'`])(?P<user>[^\s:@/"'`]{1,64}):(?P<v>[^\s"'`]{1,256})@(?:tcp|unix)\("""
        ),
        ("@tcp(", "@unix("),
        _password,
    ),
    _folded(
        "connection-string",
        r"[?&;\"'](?P<k>password|pwd|passwd|accountkey|sharedaccesskey|"
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
            r"[Bb]asic[ \t]{1,4}+(?P<v>[A-Za-z0-9+/]{8,}+={0,2}+)"
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
    _folded(
        "secret",
        # ``<add key="ApiKey" value="..."/>`` (.NET), ``<property name="password" value=.../>``
        r"""<(?:add|property|param|entry|setting|parameter|item)\b[^<>\n]{0,200}?"""
        r"""\b(?:key|name)[ \t]*=[ \t]*"(?P<name>[^"\n]{1,80})"[^<>\n]{0,200}?"""
        r"""\bvalue[ \t]*=[ \t]*"(?P<dq>[^"\n]{1,500})\"""",
        ("value=", "value ="),
        _named,
    ),
    _folded(
        "secret",
        r"""\bdefine\([ \t]*["'](?P<name>[\w.-]{1,80})["'][ \t]*,[ \t]*""" + _QUOTED,
        ("define(",),
        _named,
    ),
    _Rule(
        "secret",
        # ``os.environ.get("API_TOKEN", "<the token>")``: a default is a literal like any other
        re.compile(
            r"""(?:getenv|environ\.get|env\.get|ENV\.fetch|[Gg]et[Ee]nv)\([ \t]*"""
            r"""["'](?P<name>[\w.-]{1,80})["'][ \t]*,[ \t]*""" + _QUOTED
        ),
        ("getenv", "environ.get", "env.get", "env.fetch"),
        _named,
    ),
    _Rule(
        "secret",
        re.compile(
            r"""process\.env\.(?P<name>\w{1,80}+)[ \t]*(?:\|\||\?\?)[ \t]*"""
            r"""(?:"(?P<dq>[^"\n]{1,500})"|'(?P<sq>[^'\n]{1,500})'|`(?P<bq>[^`\n]{1,500})`)"""
        ),
        ("process.env",),
        _named,
    ),
    _Rule(
        "secret",
        # Terraform: ``variable "db_password" { default = "..." }``
        re.compile(
            r"""\bvariable[ \t]+"(?P<name>[^"\n]{1,80})"[ \t]*\{[^{}]{0,400}?"""
            r"""\bdefault[ \t]*=[ \t]*"(?P<dq>(?:[^"\\\n]|\\.){1,500})\""""
        ),
        ('variable "',),
        _named,
        when=lambda fk: fk.lang in ("hcl", None, "text", "markdown"),
    ),
    _Rule(
        "secret",
        # Dockerfile ``ENV TOKEN value`` (the old form, without ``=``)
        re.compile(
            r"""^[ \t]*(?:ENV|ARG)[ \t]+(?P<name>[A-Za-z_][\w.-]{0,80}+)[ \t]+"""
            r"""(?:"(?P<dq>[^"\n]{1,500})"|'(?P<sq>[^'\n]{1,500})'|"""
            r"""(?P<uq>[^\s"'=][^\n]{0,500}?))[ \t]*$""",
            re.MULTILINE,
        ),
        ("env ", "arg "),
        _named,
        when=lambda fk: fk.lang in ("dockerfile", None, "text", "markdown"),
    ),
    _Rule(
        "private-key",
        # base64 of a PEM private key (kubeconfig ``client-key-data``, k8s Secret ``data``)
        re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{20,}+={0,2}+"),
        ("ls0tls1crudjti",),
        _pem_base64,
    ),
    _folded(
        "secret",
        # ``{"key": "apiKey", "value": "..."}`` (Postman), ``{"name": "DB_PASSWORD", "value":
        # "..."}`` (ECS task definitions)
        r"""["'](?:key|name)["'][ \t]*:[ \t]*["'](?P<name>[^"'\n]{1,80})["'][ \t]*,[ \t]*"""
        r"""["']value["'][ \t]*:[ \t]*""" + _QUOTED,
        ('"value"', "'value'"),
        _named,
    ),
    _Rule(
        "secret",
        # ``props.setProperty("mail.smtp.password", "...")``, ``headers.put("X-Api-Key", ...)``
        re.compile(
            r"""\.(?:setProperty|put|set|setdefault|setHeader|addHeader|header|append|setenv|"""
            r"""putenv|Setenv|add)\([ \t]*["'](?P<name>[\w.:-]{1,80})["'][ \t]*,[ \t]*"""
            + _QUOTED
            + r"""[ \t]*\)"""
        ),
        (
            re.compile(
                r"\.(?:setproperty|put|set|setdefault|setheader|addheader|header|append|"
                r"setenv|putenv|add)\("
            ),
        ),
        _named,
    ),
    _Rule(
        "password",
        # a (user, password) pair of literals in a call that logs in: JDBC, smtplib/ftplib,
        # .NET, PDO, requests/httpx, Java HTTP clients, LDAP binds
        re.compile(
            r"""(?:getConnection|login|NetworkCredential|PDO|mysqli|mysql_connect|"""
            r"""PasswordAuthentication|UsernamePasswordCredentials|BasicAuth|DigestAuth|"""
            r"""Credentials|[Ss]et_?[Cc]redentials|simple_bind_s|bind_s|authenticate)"""
            r"""\((?:[^()\n,]{1,120},[ \t]*){0,3}(?:"[^"\n]{1,100}"|'[^'\n]{1,100}')[ \t]*,"""
            r"""[ \t]*""" + _QUOTED + r"""[ \t]*[,)]"""
        ),
        (
            "login(",
            "getconnection(",
            "credential",
            "pdo(",
            "mysql",
            "basicauth(",
            "digestauth(",
            "bind_s(",
            "authenticate(",
        ),
        _password,
    ),
    _Rule(
        "secret",
        # ``jwt.encode(payload, "<signing secret>", ...)``, ``jwt.sign(payload, '...')``
        re.compile(r"""\bjwt\.(?:encode|decode|sign|verify)\([^,\n]{1,200},[ \t]*""" + _QUOTED),
        ("jwt.",),
        _password_kind("secret"),
    ),
    _Rule(
        "password",
        # ``echo "<password>" | docker login --password-stdin``
        re.compile(
            r"""(?<![\w-])(?:echo|printf)[ \t]+(?:-n[ \t]+)?"""
            + _QUOTED_OR_WORD
            + r"""[ \t]*\|[^\n|]{0,200}?--password-stdin"""
        ),
        ("password-stdin",),
        _password,
    ),
    _Rule(
        "password",
        # ``htpasswd -b[c] FILE USER PASSWORD``
        re.compile(
            r"""(?<![\w-])htpasswd[ \t]+-[A-Za-z]*b[A-Za-z]*(?:[ \t]+-[A-Za-z]+)*[ \t]+"""
            r"""[^\s;|&]+[ \t]+[^\s;|&]+[ \t]+""" + _QUOTED_OR_WORD
        ),
        ("htpasswd",),
        _password,
    ),
    _Rule(
        "password",
        # a directive and its value, blank-separated, alone on its line (``requirepass x`` in
        # redis.conf, ``password x`` in a .netrc, ``masterauth x``)
        re.compile(
            r"""^[ \t]*(?:requirepass|masterauth|password|passwd)[ \t]+"""
            r"""(?P<uq>[^\s"'`#;]{3,300}+)[ \t]*$""",
            re.MULTILINE,
        ),
        ("requirepass", "masterauth", "password ", "passwd ", "password\t"),
        _directive,
    ),
    _Rule(
        "password",
        # .netrc: ``machine h login u password p`` on one line
        re.compile(r"""(?<![\w-])password[ \t]+(?P<uq>[^\s"'`]{1,300}+)"""),
        ("password",),
        _netrc,
        when=lambda fk: fk.netrc,
    ),
    _Rule(
        "password",
        # .pgpass: ``host:port:database:user:password``
        re.compile(r"""^(?:[^:\s#]+:){4}(?P<uq>[^\s]{1,300}+)$""", re.MULTILINE),
        (":",),
        _pgpass,
        when=lambda fk: fk.pgpass,
    ),
    _Rule(
        "secret",
        # ``--password x``, ``--api-key=x``, in scripts, Dockerfiles, CI jobs and docs alike
        re.compile(r"""--(?P<name>[A-Za-z][\w-]{0,60}+)(?:=|[ \t]{1,4}+)""" + _QUOTED_OR_WORD),
        (re.compile(r"--[\w-]{0,40}?(?:pass|pwd|secret|token|auth|api|access|cred|key)"),),
        _flag,
    ),
    _Rule(
        "password",
        re.compile(
            r"""(?<![\w-])(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlsh|mariadb|"""
            r"""mariadb-dump)\b[^\n|;&]{0,200}?[ \t]-p(?:"(?P<dq>[^"\n]{1,300})"|"""
            r"""'(?P<sq>[^'\n]{1,300})'|(?P<uq>[^\s"'`;|&<>()-][^\s"'`;|&<>()]{0,300}+))"""
        ),
        ("mysql", "mariadb"),
        _password,
    ),
    _Rule(
        "password",
        re.compile(
            r"""(?<![\w-])(?:sshpass[ \t]+|docker[ \t]+login\b[^\n|;&]{0,200}?[ \t])"""
            r"""-p[ \t]*+""" + _QUOTED_OR_WORD
        ),
        ("sshpass", "docker"),
        _password,
    ),
    _Rule(
        "password",
        # SQL Server's ``sqlcmd -U sa -P <password>`` (and bcp, osql)
        re.compile(
            r"""(?<![\w-])(?:sqlcmd|bcp|osql)\b[^\n|;&]{0,200}?[ \t]-P[ \t]*+""" + _QUOTED_OR_WORD
        ),
        ("sqlcmd", "bcp", "osql"),
        _password,
    ),
    _Rule(
        "password",
        # PowerShell: ``ConvertTo-SecureString "<password>" -AsPlainText``
        re.compile(
            r"""ConvertTo-SecureString[ \t]+(?:-String[ \t]+)?"""
            + _QUOTED
            + r"""[^\n]{0,100}?-AsPlainText"""
        ),
        ("convertto-securestring",),
        _password,
    ),
    _Rule(
        "password",
        re.compile(
            r"""(?<![\w-])curl\b[^\n|;&]{0,300}?[ \t](?:-u|--user)(?:[ \t]{1,4}+|=)["']?"""
            r"""(?P<user>[^\s:"'`@]{1,100}):(?P<v>[^\s"'`]{1,300}+)"""
        ),
        ("curl",),
        _password,
    ),
    _Rule(
        "password",
        # requests' ``auth=("user", "password")``, ``HTTPBasicAuth("user", "password")``
        re.compile(
            r"""\bauth[ \t]*=[ \t]*\([ \t]*(?:"[^"\n]{1,100}"|'[^'\n]{1,100}')"""
            r"""[ \t]*,[ \t]*""" + _QUOTED
        ),
        ("auth=(", "auth =(", "auth= (", "auth = ("),
        _password,
    ),
)

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


def _redact_yaml_blocks(lines: list[str], scan: _Scan) -> None:
    """``password: |`` followed by the value on more-indented lines (YAML block scalars)."""
    i = 0
    while i < len(lines):
        m = _YAML_BLOCK.match(lines[i])
        kind = _name_kind(m.group("name")) if m else None
        i += 1
        if m is None or kind is None:
            continue
        indent, body = len(m.group("ind")), []
        while i < len(lines):
            line = lines[i]
            content = line.lstrip()
            if content and len(line) - len(content) <= indent:
                break
            if content and _MARKER_PREFIX not in content:
                body.append(i)
            i += 1
        if not body or not scan.hide(kind, body[0] + 1, "\n".join(lines[j] for j in body)):
            continue
        for j in body:
            content = lines[j].lstrip()
            lines[j] = lines[j][: len(lines[j]) - len(content)] + marker(kind)


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


_CORES = ("pass", "token", "secret", "key", "auth", "cred", "pwd", "sig", "env", "value")
"""Short pieces that many needles share: a needle is only looked for when its core is in the
file, so a file with none of them costs a few dozen substring searches, not one per needle."""
_CORE_OF: dict[str, str] = {}


def _index_needles(needles: Iterable[str | re.Pattern[str]]) -> None:
    for n in needles:
        if not isinstance(n, str):
            continue
        core = next((c for c in _CORES if c in n and c != n), None)
        if core is not None:
            _CORE_OF[n] = core


class _Needles:
    """Which needles occur in one lower-cased text, each looked up at most once."""

    def __init__(self, lower: str) -> None:
        self.lower = lower
        self.memo: dict[str | re.Pattern[str], bool] = {}

    def has(self, needle: str | re.Pattern[str]) -> bool:
        found = self.memo.get(needle)
        if found is None:
            if isinstance(needle, str):
                core = _CORE_OF.get(needle)
                found = (core is None or self.has(core)) and needle in self.lower
            else:
                found = needle.search(self.lower) is not None
            self.memo[needle] = found
        return found


class _Scan:
    """The findings of one :func:`redact` call, and what its allow-list keeps."""

    def __init__(self, keep: Callable[[str, str | None], bool] | None) -> None:
        self.findings: list[Finding] = []
        self.keep = keep
        self._kept: dict[int, list[str]] = {}

    def hide(self, kind: str, line: int, value: str | None) -> bool:
        """Record a finding; True when its value is to be replaced, False when the
        allow-list keeps it (then it is reported once, as allowed, however many rules see
        it: a kept JWT is seen again by the ``token = ...`` rule)."""
        kept = self._kept.get(line, [])
        if value is not None and any(value in v or v in value for v in kept):
            return False
        if self.keep is None or not self.keep(kind, value):
            self.findings.append(Finding(kind, line))
            return True
        self._kept.setdefault(line, []).append(value or "")
        self.findings.append(Finding(kind, line, allowed=True))
        return False


_index_needles(itertools.chain(_ASSIGNMENT_NEEDLES, *(r.needles for r in _RULES)))


def redact(
    text: str,
    language: str | None = None,
    *,
    path: str | None = None,
    allow: AllowList | None = None,
) -> Redacted:
    """Redact every secret of ``text``; ``language`` is the chunker's language name, ``path``
    the file's repo-relative path (it tells ``.env`` and Terraform files apart, and is what
    ``allow``'s globs match).

    Never changes the number of lines. Bare (unquoted) assignment values count as secrets
    unless ``language`` is a programming language (see :data:`CODE_LANGUAGES`). Findings an
    ``allow`` entry covers stay in the text and come back with ``allowed=True``.
    """
    lower = text.lower()
    needles = _Needles(lower)
    fk = _file_kind(language, path)
    scan = _Scan(allow.keeper(path) if allow else None)
    if needles.has("private key"):
        lines = text.split("\n")
        found: list[Finding] = []
        if scan.keep is not None and scan.keep("private-key", None):
            _redact_pem(list(lines), found)  # on a copy: report, keep the text
            scan.findings.extend(Finding(f.kind, f.line, allowed=True) for f in found)
        else:
            _redact_pem(lines, found)
            scan.findings.extend(found)
            text = "\n".join(lines)
            lower = text.lower()
    for rule in _RULES:
        if (rule.when is None or rule.when(fk)) and any(map(needles.has, rule.needles)):
            new = _apply(rule, text, lower, fk, scan)
            if new is not text:
                text, lower = new, new.lower()
    if any(map(needles.has, _ASSIGNMENT_NEEDLES)):
        # a 40-character secret next to an AWS key id is the AWS secret key (``.s3cfg``)
        aws = needles.has("aws") or marker("aws-access-key") in text
        text = _apply_assignments(text, lower, fk, aws, scan)
        if fk.bare and (": |" in text or ": >" in text or ":|" in text or ":>" in text):
            lines = text.split("\n")
            _redact_yaml_blocks(lines, scan)
            text = "\n".join(lines)
    scan.findings.sort(key=lambda f: f.line)
    return Redacted(text, tuple(scan.findings))


_Replace = Callable[[re.Match[str]], tuple[str | None, int]]
"""A match -> (its replacement, or ``None`` to keep it; where the scan goes on)."""


def _rewrite(
    text: str,
    lower: str,
    pattern: re.Pattern[str],
    fast: re.Pattern[str] | None,
    replace: _Replace,
) -> str:
    """``pattern.sub`` with a callback that may keep a match, may end it early (an unquoted
    value that stops at a blank: the scan goes on from there), and a fast path for
    case-insensitive rules: ``fast`` (the same pattern without ``re.IGNORECASE``, lower-case
    literals) scans the lower-cased text, ~10x faster than an ``re.IGNORECASE`` scan, and
    ``pattern`` re-matches only at its hits, on the original text. The scan always moves
    forward (past the hit's start at least), so it stays linear."""
    folded = fast is not None and len(lower) == len(text)  # lower() kept every offset
    scanner, scanned = (fast, lower) if folded else (pattern, text)
    assert scanner is not None
    out: list[str] = []
    pos = at = 0
    while (hit := scanner.search(scanned, at)) is not None:
        m = pattern.match(text, hit.start()) if folded else hit
        if m is None:
            at = max(hit.end(), hit.start() + 1)
            continue
        new, end = replace(m)
        if new is not None:
            out += (text[pos : m.start()], new)
            pos = end
        at = max(end, hit.start() + 1)
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _apply(rule: _Rule, text: str, lower: str, fk: _FileKind, scan: _Scan) -> str:
    lines = _LineCounter(text)

    def replace(m: re.Match[str]) -> tuple[str | None, int]:
        group = _value_group(m)
        value = m.group(group)
        kind = rule.check(m, fk) if rule.check else rule.kind
        if kind is None or _MARKER_PREFIX in value or _placeholder(value):
            return None, m.end()
        # the value's line: a rule may match over several (a Terraform variable block)
        if not scan.hide(kind, lines.at(m.start(group) if group else m.start()), value):
            return None, m.end()
        s, e = m.start(group) - m.start(), m.end(group) - m.start()
        whole = m.group(0)
        return whole[:s] + marker(kind) + whole[e:], m.end()

    return _rewrite(text, lower, rule.pattern, rule.fast, replace)


def _apply_assignments(text: str, lower: str, fk: _FileKind, aws: bool, scan: _Scan) -> str:
    lines = _LineCounter(text)

    def replace(m: re.Match[str]) -> tuple[str | None, int]:
        kind, s, e = _assignment(m, fk, text, aws)
        if kind is None or not scan.hide(kind, lines.at(m.start()), text[s:e]):
            return None, e
        return text[m.start() : s] + marker(kind), e

    return _rewrite(text, lower, _ASSIGNMENT, _ASSIGNMENT_FAST, replace)
