"""Key primitives: user keys (generated, HMAC-hashed, masked) and upstream secrets
(MultiFernet-encrypted). Nothing else in the package touches raw key material.

User keys are stored only as HMAC-SHA256(pepper, key): a stolen database is useless
without the pepper, and changing ``KEY_PEPPER`` invalidates every issued key.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

RANDOM_BYTES = 30  # token_urlsafe(30) gives 40 characters, above the 32 the contract asks
DISPLAY_RANDOM_CHARS = 4  # random characters kept in the display prefix


def generate_user_key(tier_prefix: str) -> str:
    """A fresh user key: the tier's prefix followed by 40 URL-safe random characters."""
    return tier_prefix + secrets.token_urlsafe(RANDOM_BYTES)


def hash_user_key(key: str, pepper: str) -> str:
    return hmac.new(pepper.encode("utf-8"), key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def display_parts(key: str, tier_prefix: str) -> tuple[str, str]:
    """(display prefix, last four) - enough to recognise a key, never enough to use it.

    An imported legacy key may be short and lack the tier prefix; it shows at most a
    quarter of its characters up front, so prefix and last four never reveal most of it.
    """
    if key.startswith(tier_prefix):
        prefix = key[: len(tier_prefix) + DISPLAY_RANDOM_CHARS]
    else:
        prefix = key[: min(8, len(key) // 4)]
    return prefix, key[-4:]


def mask(prefix: str, last4: str) -> str:
    return f"{prefix}****{last4}"


def constant_time_in(candidate: str, allowed: list[str]) -> bool:
    """True when ``candidate`` equals one of ``allowed``, comparing every entry in
    constant time so the answer time does not reveal how much of a token matched."""
    found = False
    data = candidate.encode("utf-8", "surrogatepass")
    for token in allowed:
        if hmac.compare_digest(data, token.encode("utf-8")):
            found = True
    return found


class SecretBox:
    """Encrypts upstream secrets with the newest key; decrypts with any configured one."""

    def __init__(self, keys: list[str]):
        self._fernet = MultiFernet([Fernet(key.encode("ascii")) for key in keys])

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the newest key (raises InvalidToken if no key fits)."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")


__all__ = [
    "InvalidToken",
    "SecretBox",
    "constant_time_in",
    "display_parts",
    "generate_user_key",
    "hash_user_key",
    "mask",
]
