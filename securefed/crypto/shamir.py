"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

The prime is the smallest above 2^256, so every 32-byte secret is a single
field element and a share is one x-coordinate (1..n) and one field element.
Coefficients come from the OS CSPRNG (``secrets``). Any ``t`` shares
reconstruct the secret by Lagrange interpolation at zero; ``t - 1`` shares
are independent of it (perfect secrecy), so combining too few gives an
unrelated value, not a partial secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from securefed.errors import InvalidParameter, InvalidShare

__all__ = ["PRIME", "SECRET_SIZE", "SHARE_SIZE", "MAX_SHARES", "Share", "split", "split_at", "combine"]

PRIME = (1 << 256) + 297
SECRET_SIZE = 32
MAX_SHARES = 0xFFFF
_X_SIZE = 2
_Y_SIZE = 33
SHARE_SIZE = _X_SIZE + _Y_SIZE


@dataclass(frozen=True, repr=False)
class Share:
    """One point (x, y) of the sharing polynomial. ``y`` is secret material."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if type(self.x) is not int or type(self.y) is not int:
            raise InvalidShare("malformed share")
        if not 1 <= self.x <= MAX_SHARES or not 0 <= self.y < PRIME:
            raise InvalidShare("malformed share")

    def to_bytes(self) -> bytes:
        """Fixed 35-byte encoding: x as 2 bytes, y as 33 bytes, both big-endian."""
        return self.x.to_bytes(_X_SIZE, "big") + self.y.to_bytes(_Y_SIZE, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse and validate; anything malformed raises :class:`InvalidShare`."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != SHARE_SIZE:
            raise InvalidShare("malformed share")
        raw = bytes(data)
        return cls(int.from_bytes(raw[:_X_SIZE], "big"), int.from_bytes(raw[_X_SIZE:], "big"))

    def __repr__(self) -> str:
        return f"Share(x={self.x}, y=…)"


def split(secret: bytes, n: int, t: int) -> list[Share]:
    """Split a 32-byte secret into ``n`` shares at x = 1..n, any ``t`` of which recover it."""
    if type(n) is not int or type(t) is not int:
        raise InvalidParameter("n and t must be integers")
    if not 1 <= t <= n <= MAX_SHARES:
        raise InvalidParameter(f"need 1 <= t <= n <= {MAX_SHARES}, got t={t}, n={n}")
    return split_at(secret, range(1, n + 1), t)


def split_at(secret: bytes, xs: Iterable[int], t: int) -> list[Share]:
    """Shares at the given distinct x-coordinates (e.g. the ids of a node's neighbours)."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_SIZE:
        raise InvalidParameter(f"secret must be exactly {SECRET_SIZE} bytes")
    points = list(xs)
    if len(set(points)) != len(points) or not all(type(x) is int and 1 <= x <= MAX_SHARES for x in points):
        raise InvalidParameter(f"x-coordinates must be distinct integers in 1..{MAX_SHARES}")
    if type(t) is not int or not 1 <= t <= len(points):
        raise InvalidParameter(f"need 1 <= t <= number of shares ({len(points)}), got t={t}")
    prime = PRIME
    # Highest-degree coefficient first, the secret last, ready for Horner's rule.
    coefficients = [secrets.randbelow(prime) for _ in range(t - 1)]
    coefficients.append(int.from_bytes(secret, "big"))
    shares = []
    for x in points:
        y = 0
        for coefficient in coefficients:
            y = (y * x + coefficient) % prime
        shares.append(Share(x, y))
    return shares


def combine(shares: Sequence[Share]) -> bytes:
    """Interpolate the secret at zero from the given shares (all of them are used).

    Raises :class:`InvalidShare` for no shares, repeated x-coordinates, or a
    result that cannot be a 32-byte secret (a sign of too few or bad shares).
    """
    points = list(shares)
    if not points or not all(isinstance(share, Share) for share in points):
        raise InvalidShare("no valid shares to combine")
    xs = [share.x for share in points]
    if len(set(xs)) != len(xs):
        raise InvalidShare("repeated share coordinates")
    prime = PRIME
    all_x = 1
    for x in xs:
        all_x *= x
    total = 0
    for i, share in enumerate(points):
        xi = share.x
        denominator = xi
        for xj in xs:
            if xj != xi:
                denominator *= xj - xi
        # Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i) = all_x / denominator.
        total += share.y * pow(denominator % prime, -1, prime)
    secret = (total * all_x) % prime
    if secret >> (8 * SECRET_SIZE):
        raise InvalidShare("shares do not combine to a valid secret")
    return secret.to_bytes(SECRET_SIZE, "big")
