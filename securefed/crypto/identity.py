"""Ed25519 identity keys: the long-term key a node signs its round keys with.

Peers check signatures against their own copy of the federation roster, never
against keys the coordinator relays. Private keys are stored as PKCS#8 PEM
with file mode 0600, written atomically.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefed._fs import atomic_write
from securefed.errors import DataError, InvalidParameter, InvalidShare

__all__ = ["PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "SigningKey", "load_public_key_pem", "verify"]

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An Ed25519 private identity key. Never logged; ``repr`` shows only the public key."""

    _key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key as unencrypted PKCS#8 PEM, mode 0600, atomically."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(path, pem, mode=0o600)

    def save_public(self, path: str | os.PathLike[str]) -> None:
        pem = self._key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        atomic_write(path, pem, mode=0o644)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load a PEM private key; refuse a file that others can read or one of another type."""
        file = Path(path)
        try:
            mode = file.stat().st_mode
            data = file.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read identity key {file}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DataError(f"identity key {file} is readable by others; run: chmod 600 {file}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise DataError(f"{file} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise DataError(f"{file} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_bytes.hex()[:16]}…)"


def verify(public_bytes: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature; any failure raises the opaque :class:`InvalidShare`."""
    if len(public_bytes) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise InvalidShare("signature verification failed")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_bytes)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        raise InvalidShare("signature verification failed") from None


def load_public_key_pem(data: bytes) -> bytes:
    """Raw 32-byte Ed25519 public key from a SubjectPublicKeyInfo PEM."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InvalidParameter("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidParameter("not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
