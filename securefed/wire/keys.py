"""CURVE key pairs for the transport: generation, and files in ZMQ's Z85 text form.

The secret key file is written atomically with mode 0600 and refused on load
if others can read it. Public keys are 40 Z85 characters, short enough to
paste into the other side's config.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from securefed._fs import atomic_write
from securefed.errors import DataError, InvalidParameter

__all__ = ["CurveKeyPair", "parse_public_key"]

_Z85_KEY_LENGTH = 40


def parse_public_key(text: str | bytes) -> bytes:
    """Validate a Z85 CURVE public key from a config file; returns it as bytes."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    raw = raw.strip()
    try:
        decoded = z85.decode(raw) if len(raw) == _Z85_KEY_LENGTH else b""
    except (ValueError, KeyError, TypeError):
        decoded = b""
    if len(decoded) != 32:
        raise InvalidParameter(f"not a CURVE public key (expected {_Z85_KEY_LENGTH} Z85 characters): {text!r}")
    return raw


@dataclass(frozen=True, repr=False)
class CurveKeyPair:
    """Z85-encoded CURVE keys. ``secret`` is never logged; repr shows the public key only."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> CurveKeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    def save(self, secret_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> None:
        atomic_write(secret_path, self.secret + b"\n", mode=0o600)
        atomic_write(public_path, self.public + b"\n", mode=0o644)

    @classmethod
    def load(cls, secret_path: str | os.PathLike[str]) -> CurveKeyPair:
        path = Path(secret_path)
        try:
            mode = path.stat().st_mode
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise DataError(f"cannot read CURVE secret key {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DataError(f"CURVE secret key {path} is readable by others; run: chmod 600 {path}")
        if len(secret) != _Z85_KEY_LENGTH:
            raise DataError(f"{path} is not a CURVE secret key file")
        try:
            public = zmq.curve_public(secret)
        except (zmq.ZMQError, ValueError):
            raise DataError(f"{path} is not a CURVE secret key file") from None
        return cls(public, secret)

    def __repr__(self) -> str:
        return f"CurveKeyPair(public={self.public.decode('ascii')})"
