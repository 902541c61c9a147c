"""Encryption at rest for the few secrets the server must be able to read back.

A webhook token can be stored as a hash (the presented one is hashed and compared), but a
webhook *signing* key cannot: checking an HMAC needs the key itself. So the registry keeps
signing keys encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from
``CODERAG_SECRET_KEY``; a leaked state dump without that setting reveals nothing, and a
tampered ciphertext fails to decrypt instead of yielding a wrong key.

Stored form: ``v1:<urlsafe base64 of 12-byte nonce + ciphertext + tag>``.
"""

from __future__ import annotations

import base64
import os

from pydantic import SecretStr

from coderag.errors import ConfigError

__all__ = ["SecretBox"]

_PREFIX = "v1:"
_INFO = b"coderag webhook signing tokens v1"
_AAD = b"coderag:signing-token"


class SecretBox:
    """Encrypts and decrypts short secrets with a key derived from ``secret_key``."""

    def __init__(self, secret_key: SecretStr | str | None) -> None:
        if secret_key is None:
            raise ConfigError(
                "CODERAG_SECRET_KEY is not set: it is needed to store and check webhook "
                "signing tokens (set a random value of at least 32 characters)"
            )
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        raw = secret_key.get_secret_value() if isinstance(secret_key, SecretStr) else secret_key
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            raw.strip().encode("utf-8")
        )
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, _AAD)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, stored: str) -> bytes:
        """The plaintext; :class:`ConfigError` when it was sealed under another key (the
        setting changed) or altered."""
        from cryptography.exceptions import InvalidTag

        if not stored.startswith(_PREFIX):
            raise ConfigError("stored secret is not in a known format")
        try:
            blob = base64.urlsafe_b64decode(stored[len(_PREFIX) :])
            return self._aead.decrypt(blob[:12], blob[12:], _AAD)
        except (InvalidTag, ValueError) as exc:
            raise ConfigError(
                "a stored signing token cannot be decrypted: CODERAG_SECRET_KEY differs from "
                "the one it was stored with (re-register the repository)"
            ) from exc
