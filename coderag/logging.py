"""Structured JSON logs for every coderag process, with secrets redacted on the way out.

One pipeline: stdlib :mod:`logging` with a JSON formatter on the root logger, and structlog
configured to hand its event dicts to that same logger. So a line written with
``logging.getLogger(__name__).info("indexed", extra={...})``, one written with
``structlog.get_logger().info("push", repo=...)`` and uvicorn's own lines all come out as one
JSON object per line, and all of them pass through :func:`redact` first.

Why redaction sits in the formatter and not at the call sites: a bank's log pipeline keeps
lines for years, and one ``log.info("headers", extra={"headers": request.headers})`` written
in a hurry must not leak a bearer token or a GitLab webhook secret. Any key that names a
credential (``authorization``, ``x-gitlab-token``, ``token``, ``password``, ...) is replaced
by ``"[REDACTED]"`` at any depth, and ``Bearer <token>`` / ``glpat-...`` inside free text is
masked too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import structlog

__all__ = ["JsonFormatter", "configure_logging", "redact", "redact_text"]

REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"(^|[_\-.])(authorization|x-gitlab-token|gitlab[_-]?token|token|tokens|api[_-]?tokens?|"
    r"api[_-]?key|password|passwd|secret|cookie|set-cookie|private[_-]?token)$",
    re.I,
)
_SECRET_TEXT = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+|(glpat-|glptt-|gldt-)[A-Za-z0-9_\-]+"
    r"|((?:token|password|secret)=)[^\s&\"']+"
)

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def redact_text(text: str) -> str:
    """Mask bearer tokens, GitLab tokens and ``token=...`` pairs inside free text."""

    def sub(m: re.Match[str]) -> str:
        prefix = m.group(1) or m.group(2) or m.group(3) or ""
        return f"{prefix}{REDACTED}"

    return _SECRET_TEXT.sub(sub, text)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with credential-named keys replaced, at any depth (JSON-able out)."""
    if _depth > 8:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if _is_secret_key(k) else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr
        return REDACTED
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": msg,
        }
        for key, val in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_") or key == "color_message":
                continue
            out[key] = val
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(redact(out), default=str, ensure_ascii=False)


class _PlainFormatter(logging.Formatter):
    """Human-readable lines for a terminal, redacted like the JSON ones."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {
            k: v
            for k, v in record.__dict__.items()
            if k not in _RECORD_ATTRS and not k.startswith("_")
        }
        if extras:
            base += " " + json.dumps(redact(extras), default=str, ensure_ascii=False)
        return redact_text(base)


_HANDLER_MARK = "_coderag_handler"


def _structlog_redact(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return redact(event_dict)  # type: ignore[no-any-return]


def configure_logging(level: str | int = "INFO", *, json_lines: bool = True) -> None:
    """Install the coderag handler on the root logger. Idempotent: calling it again (the CLI,
    then the app factory) replaces the handler instead of doubling every line."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else _PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    # uvicorn installs its own handlers unless told otherwise; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _structlog_redact,
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
