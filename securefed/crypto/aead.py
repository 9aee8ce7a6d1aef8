"""AES-256-GCM for the secret shares that nodes send each other through the coordinator.

The associated data binds sender, recipient, task, round and round context,
so the coordinator can neither read a share nor redirect it to another node,
another round or another direction. Every failure is one opaque
:class:`InvalidShare`.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securefed.crypto._encoding import encode_fields
from securefed.errors import InvalidParameter, InvalidShare

__all__ = ["NONCE_SIZE", "TAG_SIZE", "open_sealed", "seal", "share_associated_data"]

NONCE_SIZE = 12
TAG_SIZE = 16
_AD_PREFIX = b"securefed/share/v1"


def share_associated_data(task: str, round_id: int, sender: int, recipient: int, context: bytes = b"") -> bytes:
    """Associated data for a share ciphertext; direction matters (sender first)."""
    return _AD_PREFIX + encode_fields(task, round_id, sender, recipient, context)


def seal(key: bytes, plaintext: bytes, associated_data: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt under a fresh random 96-bit nonce; returns ``nonce || ciphertext || tag``.

    Each pairwise key seals at most a handful of messages per round (keys are
    fresh every round), so random nonces are far from any collision bound.
    ``nonce`` lets a caller that takes its randomness as a parameter supply it
    (it must come from a CSPRNG and never repeat under one key).
    """
    if len(key) != 32:
        raise InvalidParameter("AEAD key must be 32 bytes")
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise InvalidParameter(f"AEAD nonce must be {NONCE_SIZE} bytes")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Decrypt and authenticate; any failure raises :class:`InvalidShare`."""
    if len(key) != 32 or len(sealed) < NONCE_SIZE + TAG_SIZE:
        raise InvalidShare("share failed authentication")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated_data)
    except (InvalidTag, ValueError, TypeError):
        raise InvalidShare("share failed authentication") from None
