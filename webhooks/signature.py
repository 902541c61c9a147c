"""Signed webhook deliveries (Standard Webhooks, as GitLab implements them).

Newer GitLab signs a delivery when its hook has a ``signing_token`` (gitlab MR 230944,
231325): the token is ``whsec_<base64 of a 32-byte key>``, and GitLab sends ``webhook-id``
(the delivery id, equal to ``Idempotency-Key``), ``webhook-timestamp`` (unix seconds) and
``webhook-signature: v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{raw body}")>``; the
header may hold several space-separated entries (key rotation), any one valid is enough.

The check here: the id and timestamp are present, the timestamp is within the tolerance of
this server's clock (a captured delivery cannot be replayed later; within the window, the
spool refuses a seen ``webhook-id`` as a duplicate), and one ``v1`` entry equals the HMAC,
compared in constant time. The body is fed to the HMAC as the buffer it was read into, never
copied into one bigger string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

__all__ = [
    "SIGNING_TOKEN_PREFIX",
    "SignatureError",
    "new_signing_token",
    "sign",
    "signing_key",
    "verify_signature",
]

SIGNING_TOKEN_PREFIX = "whsec_"
_MAX_ENTRIES = 16


class SignatureError(Exception):
    """Why a signed delivery was refused (for the log; the client gets one 401)."""


def new_signing_token() -> str:
    """A fresh ``whsec_`` token with a 32-byte key, in the form GitLab takes."""
    return SIGNING_TOKEN_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def signing_key(token: str) -> bytes:
    """The HMAC key inside a ``whsec_`` token (raises ``ValueError`` if it is not one)."""
    if not token.startswith(SIGNING_TOKEN_PREFIX):
        raise ValueError("a signing token starts with whsec_")
    try:
        key = base64.b64decode(token[len(SIGNING_TOKEN_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("a signing token's key is base64") from exc
    if len(key) < 24:
        raise ValueError("a signing token's key is at least 24 bytes")
    return key


def _mac(key: bytes, msg_id: str, timestamp: str, body: bytes | bytearray) -> bytes:
    h = hmac.new(key, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    h.update(body)
    return h.digest()


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes | bytearray) -> str:
    """The ``webhook-signature`` value GitLab would send (tests and the simulator use it)."""
    return "v1," + base64.b64encode(_mac(key, msg_id, str(timestamp), body)).decode("ascii")


def verify_signature(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes | bytearray,
    *,
    now: float,
    tolerance: float,
) -> str:
    """Check a delivery's signature; returns its ``webhook-id``.

    Raises :class:`SignatureError` naming what is wrong (missing header, stale timestamp,
    no matching signature).
    """
    msg_id = (headers.get("webhook-id") or "").strip()
    stamp = (headers.get("webhook-timestamp") or "").strip()
    given = (headers.get("webhook-signature") or "").strip()
    if not msg_id or not stamp or not given:
        raise SignatureError("webhook-id, webhook-timestamp or webhook-signature missing")
    if not stamp.isdigit() or len(stamp) > 12:
        raise SignatureError("webhook-timestamp is not unix seconds")
    if abs(now - int(stamp)) > tolerance:
        raise SignatureError(f"webhook-timestamp is {int(now - int(stamp))} s off this clock")
    expected = _mac(key, msg_id, stamp, body)
    ok = False
    for entry in given.split()[:_MAX_ENTRIES]:
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        # Every entry is compared (no early exit): timing says nothing about which matched.
        ok = hmac.compare_digest(candidate, expected) | ok
    if not ok:
        raise SignatureError("no webhook-signature entry matches")
    return msg_id
