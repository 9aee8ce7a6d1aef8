"""X25519 key agreement and HKDF-SHA256 key derivation with mandatory context.

Every derived key binds *why* it exists (``purpose``), *where* (task, round,
the round context such as the global-model hash) and *between whom* (both
party ids) into HKDF's ``info``. Two derivations that differ in any of these
yield independent keys; this is what stops masks or ciphertexts from being
replayed across rounds or tasks, and what makes masks of nodes handed
different models fail to cancel.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.constant_time import bytes_eq
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefed.crypto._encoding import encode_fields
from securefed.errors import InvalidParameter, InvalidShare

__all__ = [
    "KEY_SIZE",
    "AgreementKeyPair",
    "agree",
    "derive_key",
    "hkdf_sha256",
    "kdf_info",
]

KEY_SIZE = 32
_INFO_PREFIX = b"securefed/v1"
_ZERO_SECRET = bytes(KEY_SIZE)


@dataclass(frozen=True, repr=False, eq=False)
class AgreementKeyPair:
    """An X25519 key pair. ``private_bytes`` is secret: never log or repr it."""

    private_bytes: bytes
    public_bytes: bytes
    private_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> AgreementKeyPair:
        """A fresh key pair from the OS CSPRNG (via OpenSSL)."""
        key = X25519PrivateKey.generate()
        return cls.from_private_bytes(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> AgreementKeyPair:
        """Rebuild a pair from a 32-byte private key (e.g. one recovered by Shamir)."""
        if not isinstance(private_bytes, (bytes, bytearray)) or len(private_bytes) != KEY_SIZE:
            raise InvalidParameter("an X25519 private key is exactly 32 bytes")
        key = X25519PrivateKey.from_private_bytes(bytes(private_bytes))
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(bytes(private_bytes), public, key)

    def __repr__(self) -> str:
        return f"AgreementKeyPair(public={self.public_bytes.hex()[:16]}…)"


def agree(private: bytes | AgreementKeyPair, peer_public_bytes: bytes) -> bytes:
    """Raw X25519 shared secret; refuses low-order peer keys (all-zero result).

    ``private`` is raw private-key bytes or a key pair (faster: no re-parsing).
    Raises :class:`InvalidShare` for a malformed or low-order peer key: the
    peer key arrived over the network, so this is an authentication failure.
    """
    if not isinstance(peer_public_bytes, bytes) or len(peer_public_bytes) != KEY_SIZE:
        raise InvalidShare("invalid peer key")
    if isinstance(private, AgreementKeyPair):
        private_key = private.private_key
    else:
        if not isinstance(private, (bytes, bytearray)) or len(private) != KEY_SIZE:
            raise InvalidParameter("an X25519 private key is exactly 32 bytes")
        private_key = X25519PrivateKey.from_private_bytes(bytes(private))
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public_bytes))
    except ValueError:
        # OpenSSL refuses the all-zero output of a low-order point.
        raise InvalidShare("invalid peer key") from None
    if bytes_eq(shared, _ZERO_SECRET):  # belt and braces; constant time
        raise InvalidShare("invalid peer key")
    return shared


def kdf_info(purpose: str, task: str, round_id: int, party_a: int, party_b: int, context: bytes = b"") -> bytes:
    """The HKDF ``info`` string: purpose, task, round, both ids, round context.

    The ids are put in ascending order so both parties derive the same key.
    """
    if not purpose:
        raise InvalidParameter("purpose must be non-empty: it separates key domains")
    for party in (party_a, party_b):
        if type(party) is not int or party < 0:
            raise InvalidParameter(f"party ids are non-negative integers, got {party!r}")
    low, high = sorted((party_a, party_b))
    return _INFO_PREFIX + encode_fields(purpose, task, round_id, low, high, context)


def hkdf_sha256(secret: bytes, info: bytes, length: int = KEY_SIZE, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869). ``info`` is mandatory and must be non-empty."""
    if not info:
        raise InvalidParameter("HKDF info must bind the key's purpose and context")
    if not 1 <= length <= 255 * 32:
        raise InvalidParameter("HKDF-SHA256 output length must be in 1..8160 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def derive_key(
    private: bytes | AgreementKeyPair,
    peer_public_bytes: bytes,
    *,
    purpose: str,
    task: str,
    round_id: int,
    party_a: int,
    party_b: int,
    context: bytes = b"",
) -> bytes:
    """Agree with a peer and derive a 32-byte key bound to the full context."""
    shared = agree(private, peer_public_bytes)
    return hkdf_sha256(shared, kdf_info(purpose, task, round_id, party_a, party_b, context))
