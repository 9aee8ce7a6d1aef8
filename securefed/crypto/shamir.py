"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

The prime is the smallest above 2^256, so every 32-byte secret is a single
field element and a share is one x-coordinate (1..n) and one field element.
Coefficients come from an ``entropy`` function passed in (``os.urandom`` by
default), so tests can make sharings reproducible. Any ``t`` shares
reconstruct the secret by Lagrange interpolation at zero; ``t - 1`` shares
are independent of it (perfect secrecy), so combining too few gives an
unrelated value, not a partial secret.

:func:`combine` trusts every share it is given; :func:`decode` treats the
shares as a Reed–Solomon codeword (see :mod:`.reed_solomon`) and corrects up to
floor((m - t) / 2) wrong ones, naming them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from securefed.crypto.reed_solomon import decode_at_zero
from securefed.errors import InvalidParameter, InvalidShare

__all__ = [
    "MAX_SHARES",
    "PRIME",
    "SECRET_SIZE",
    "SHARE_SIZE",
    "Decoded",
    "Share",
    "combine",
    "decode",
    "split",
    "split_at",
]

PRIME = (1 << 256) + 297
SECRET_SIZE = 32
MAX_SHARES = 0xFFFF
_X_SIZE = 2
_Y_SIZE = 33
SHARE_SIZE = _X_SIZE + _Y_SIZE
# Bytes of entropy per coefficient: a 512-bit integer reduced mod PRIME is within
# statistical distance PRIME / 2^512 < 2^-255 of uniform on [0, PRIME).
_COEFFICIENT_BYTES = 64
# Horner steps between reductions: y stays under 2^(257 + 16 * 8 + 1).
_REDUCE_EVERY = 8

Entropy = Callable[[int], bytes]


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


@dataclass(frozen=True, repr=False)
class Decoded:
    """What :func:`decode` recovered: the secret, and the sorted x's of shares off its polynomial."""

    secret: bytes
    bad: tuple[int, ...]

    def __repr__(self) -> str:
        return f"Decoded(secret=…, bad={self.bad})"


def split(secret: bytes, n: int, t: int, *, entropy: Entropy | None = None) -> list[Share]:
    """Split a 32-byte secret into ``n`` shares at x = 1..n, any ``t`` of which recover it.

    ``entropy(k)`` must return ``k`` random bytes; ``None`` means ``os.urandom``.
    """
    if type(n) is not int or type(t) is not int:
        raise InvalidParameter("n and t must be integers")
    if not 1 <= t <= n <= MAX_SHARES:
        raise InvalidParameter(f"need 1 <= t <= n <= {MAX_SHARES}, got t={t}, n={n}")
    return split_at(secret, range(1, n + 1), t, entropy=entropy)


def split_at(secret: bytes, xs: Iterable[int], t: int, *, entropy: Entropy | None = None) -> list[Share]:
    """Shares at the given distinct x-coordinates (e.g. the ids of a node's neighbours).

    The ``t - 1`` random coefficients come from a single ``entropy(64 * (t - 1))``
    call (none when ``t == 1``): the coefficient of x^j is the j-th 64-byte block,
    big-endian, mod PRIME. So a deterministic ``entropy`` gives deterministic shares.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_SIZE:
        raise InvalidParameter(f"secret must be exactly {SECRET_SIZE} bytes")
    points = list(xs)
    if len(set(points)) != len(points) or not all(type(x) is int and 1 <= x <= MAX_SHARES for x in points):
        raise InvalidParameter(f"x-coordinates must be distinct integers in 1..{MAX_SHARES}")
    if type(t) is not int or not 1 <= t <= len(points):
        raise InvalidParameter(f"need 1 <= t <= number of shares ({len(points)}), got t={t}")
    if entropy is not None and not callable(entropy):
        raise InvalidParameter("entropy must be a callable returning bytes")
    prime = PRIME
    # Highest-degree coefficient first, the secret last, ready for Horner's rule.
    coefficients = _random_coefficients(t - 1, os.urandom if entropy is None else entropy)[::-1]
    coefficients.append(int.from_bytes(secret, "big"))
    # x <= 2^16, so reducing once per block of Horner steps is cheaper than every step.
    blocks = [coefficients[i : i + _REDUCE_EVERY] for i in range(0, len(coefficients), _REDUCE_EVERY)]
    shares = []
    for x in points:
        y = 0
        for block in blocks:
            for coefficient in block:
                y = y * x + coefficient
            y %= prime
        shares.append(Share(x, y))
    return shares


def _random_coefficients(count: int, entropy: Entropy) -> list[int]:
    if count == 0:
        return []
    size = _COEFFICIENT_BYTES * count
    raw = entropy(size)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != size:
        raise InvalidParameter(f"entropy({size}) must return exactly {size} bytes")
    # See _COEFFICIENT_BYTES: 64 bytes reduced mod PRIME are uniform up to < 2^-255.
    return [int.from_bytes(raw[i : i + _COEFFICIENT_BYTES], "big") % PRIME for i in range(0, size, _COEFFICIENT_BYTES)]


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
    for share in points:
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


def decode(shares: Sequence[Share], t: int) -> Decoded:
    """Recover the secret from m >= t shares, correcting up to e = floor((m - t) / 2) bad ones.

    The secret is the constant term of the unique polynomial of degree < t that
    agrees with all but at most e shares; ``bad`` holds the x's of the shares it
    disagrees with. Only this is guaranteed: with at most e bad shares the secret
    is right and ``bad`` names exactly them. With more, decode raises or lands on
    another polynomial (a wrong secret that blames honest shares). With m == t
    there is no redundancy: a wrong share goes unnoticed and ``bad`` is empty.
    Detection is deterministic (every parity check is evaluated), and per-x-set
    work is cached, so secrets shared over the same x's are cheap to decode.

    Raises :class:`InvalidShare` for non-share items, fewer than ``t`` shares,
    repeated x-coordinates, too many bad shares to correct, or a result that
    cannot be a 32-byte secret; :class:`InvalidParameter` for a bad ``t``.
    """
    if type(t) is not int or t < 1:
        raise InvalidParameter(f"t must be an integer >= 1, got {t!r}")
    points = list(shares)
    if not all(isinstance(share, Share) for share in points):
        raise InvalidShare("no valid shares to decode")
    if len(points) < t:
        raise InvalidShare("fewer shares than the threshold")
    points.sort(key=attrgetter("x"))
    xs = tuple(share.x for share in points)
    if any(a == b for a, b in zip(xs, xs[1:])):
        raise InvalidShare("repeated share coordinates")
    value, bad = decode_at_zero(xs, [share.y for share in points], t, PRIME)
    if value >> (8 * SECRET_SIZE):
        raise InvalidShare("shares do not decode to a valid secret")
    return Decoded(value.to_bytes(SECRET_SIZE, "big"), bad)
