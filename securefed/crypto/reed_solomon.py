"""Reed–Solomon decoding of Shamir shares over a prime field GF(p): the sharp layer.

Theory of operation. ``m`` shares (x_i, y_i) of a polynomial f with deg f < k
are a codeword of a generalised Reed–Solomon code. Its dual code gives
``m - k`` parity checks, the *syndromes*

    S_j = sum_i v_i * y_i * x_i^j   (j = 0 .. m-k-1),   v_i = 1 / prod_{l != i} (x_i - x_l),

because sum_i v_i h(x_i) is the x^(m-1) coefficient of the interpolant of h,
which is zero whenever deg h <= m - 2. All syndromes are zero exactly when the
shares lie on one polynomial of degree < k; checking all of them detects every
error pattern, with no randomness.

Fast path (no errors): v and the Lagrange weights at zero depend only on the
x-set and are cached; a secret then costs 2m full multiplications, m(m-k)
multiplications by a small x_i, and m-k+1 sums reduced once each.

Slow path: an error E_i at x_i adds v_i E_i x_i^j to S_j, so the syndromes are
a sum of at most e = floor((m-k)/2) geometric sequences with ratios x_i.
Berlekamp–Massey finds their shortest linear recurrence, whose characteristic
polynomial has the error positions as roots. A candidate is accepted only if
the remaining shares pass every parity check, so an answer is always the
unique polynomial within distance e of the shares, and with at most e errors
it is always found.

Callers (:func:`securefed.crypto.shamir.decode`) validate inputs: sorted,
distinct x in 1..p-1, y in 0..p-1, 1 <= k <= m, p prime.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import lru_cache
from operator import mul

from securefed.errors import InvalidShare

__all__ = ["CACHE_SIZE", "decode_at_zero"]

# One entry holds 2m field elements (about 8 KB at m = 55): 1024 entries cover
# every x-set of a 1000-secret round in under 10 MB.
CACHE_SIZE = 1024


def decode_at_zero(xs: tuple[int, ...], ys: Sequence[int], k: int, p: int) -> tuple[int, tuple[int, ...]]:
    """f(0) for the unique f, deg f < k, within distance floor((m-k)/2) of the points, and
    the sorted x's off f. Raises :class:`InvalidShare` when no such f exists."""
    checks = len(xs) - k
    if not any(_syndromes(xs, ys, checks, p)):
        return _value_at_zero(xs, ys, p), ()
    bad = _error_positions(xs, ys, k, p)
    kept = [(x, y) for x, y in zip(xs, ys) if x not in bad]
    kept_xs = tuple(x for x, _ in kept)
    kept_ys = [y for _, y in kept]
    # Verification makes the answer exact whatever Berlekamp–Massey proposed.
    if any(_syndromes(kept_xs, kept_ys, len(kept_xs) - k, p)):
        raise InvalidShare("too many bad shares to correct")
    return _value_at_zero(kept_xs, kept_ys, p), tuple(sorted(bad))


def _syndromes(xs: tuple[int, ...], ys: Sequence[int], count: int, p: int) -> Iterator[int]:
    dual, _ = _weights(xs, p)
    terms = list(map(mul, dual, ys))
    for j in range(count):
        if j:
            terms = list(map(mul, terms, xs))  # x_i is small: cheap, reduced only in the sum
        yield sum(terms) % p


def _value_at_zero(xs: tuple[int, ...], ys: Sequence[int], p: int) -> int:
    _, lagrange = _weights(xs, p)
    return sum(map(mul, lagrange, ys)) % p


def _error_positions(xs: tuple[int, ...], ys: Sequence[int], k: int, p: int) -> set[int]:
    budget = (len(xs) - k) // 2
    syndromes = list(_syndromes(xs, ys, len(xs) - k, p))
    locator = _berlekamp_massey(syndromes, p)
    # locator = [1, c_1, .., c_L]; x^L + c_1 x^(L-1) + .. + c_L = prod over error positions (x - x_i).
    if not 1 <= len(locator) - 1 <= budget:
        raise InvalidShare("too many bad shares to correct")
    bad = {x for x in xs if _horner(locator, x, p) == 0}
    if len(bad) != len(locator) - 1:
        raise InvalidShare("too many bad shares to correct")
    return bad


def _berlekamp_massey(sequence: list[int], p: int) -> list[int]:
    """Shortest recurrence s_n + c_1 s_(n-1) + .. + c_L s_(n-L) = 0, as [1, c_1, .., c_L]."""
    current, previous = [1], [1]
    length, shift, last = 0, 1, 1
    for n, term in enumerate(sequence):
        discrepancy = (term + sum(current[i] * sequence[n - i] for i in range(1, length + 1))) % p
        if discrepancy == 0:
            shift += 1
            continue
        factor = discrepancy * pow(last, -1, p) % p
        snapshot = current[:]
        current += [0] * (len(previous) + shift - len(current))
        for i, coefficient in enumerate(previous):
            current[i + shift] = (current[i + shift] - factor * coefficient) % p
        if 2 * length <= n:
            length, previous, last, shift = n + 1 - length, snapshot, discrepancy, 1
        else:
            shift += 1
    return current[: length + 1]


def _horner(coefficients: list[int], x: int, p: int) -> int:
    value = 0
    for coefficient in coefficients:
        value = (value * x + coefficient) % p
    return value


@lru_cache(maxsize=CACHE_SIZE)
def _weights(xs: tuple[int, ...], p: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Dual-code weights v_i and Lagrange weights at zero; neither depends on k."""
    dual = _inverse_difference_products(xs, p)
    # Lagrange weight prod_{l != i} x_l / (x_l - x_i) = (-1)^(m-1) * (prod_l x_l / x_i) * v_i.
    product = math.prod(xs) if len(xs) % 2 else -math.prod(xs)
    lagrange = tuple(product // x * v % p for x, v in zip(xs, dual))
    return dual, lagrange


def _inverse_difference_products(xs: tuple[int, ...], p: int) -> tuple[int, ...]:
    """v_i = 1 / prod_{l != i} (x_i - x_l) mod p."""
    lo, hi = xs[0], xs[-1]
    span = hi - lo + 1
    if span < 3 * len(xs) // 2:
        # Dense x-sets (surviving node ids): over all of lo..hi the product is
        # (-1)^(hi-x) (span-1)! / C(span-1, x-lo), so divide out the few gaps and
        # invert a single factorial: O(m * gaps) and one inversion.
        present = set(xs)
        gaps = [z for z in range(lo, hi + 1) if z not in present]
        scale = pow(math.factorial(span - 1), -1, p)
        inverses = []
        for x in xs:
            value = math.comb(span - 1, x - lo) * math.prod([x - g for g in gaps])
            inverses.append((-value if (hi - x) % 2 else value) * scale % p)
        return tuple(inverses)
    products = [math.prod([x - xj for xj in xs[:i]]) * math.prod([x - xj for xj in xs[i + 1 :]]) % p for i, x in enumerate(xs)]
    return tuple(_batch_inverse(products, p))


def _batch_inverse(values: list[int], p: int) -> list[int]:
    """Montgomery's trick: one modular inversion and 3(n-1) multiplications for n inverses."""
    prefix = []
    running = 1
    for value in values:
        prefix.append(running)
        running = running * value % p
    inverse = pow(running, -1, p)
    inverses = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        inverses[i] = inverse * prefix[i] % p
        inverse = inverse * values[i] % p
    return inverses
