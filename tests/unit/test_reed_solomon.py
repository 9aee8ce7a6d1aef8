"""The Reed–Solomon layer under Shamir decoding: weights, Berlekamp–Massey, and
exhaustive error patterns over a small prime field."""

from __future__ import annotations

import itertools
import math

import pytest

from securefed.crypto.reed_solomon import (
    CACHE_SIZE,
    _berlekamp_massey,
    _inverse_difference_products,
    _weights,
    decode_at_zero,
)
from securefed.errors import InvalidShare

P = (1 << 256) + 297
SMALL_P = 101


def _naive(xs: tuple[int, ...], p: int) -> tuple[list[int], list[int]]:
    dual = [pow(math.prod(x - other for other in xs if other != x), -1, p) for x in xs]
    lagrange = [
        math.prod(other for other in xs if other != x) * pow(math.prod(other - x for other in xs if other != x), -1, p) % p
        for x in xs
    ]
    return dual, lagrange


@pytest.mark.parametrize(
    "xs",
    [
        (1,),
        (7, 8),
        tuple(range(1, 46)),  # dense: no gaps
        tuple(x for x in range(1, 61) if x not in (2, 17, 33, 59, 60)),  # dense with gaps
        (5, 9, 10, 300, 4000, 65535),  # sparse
        tuple(range(100, 65536, 1300)),  # sparse, wide
    ],
    ids=["one", "two", "consecutive", "gaps", "sparse", "wide"],
)
def test_weights_match_their_definition(xs: tuple[int, ...]) -> None:
    dual, lagrange = _weights(xs, P)
    assert (list(dual), list(lagrange)) == _naive(xs, P)
    assert _inverse_difference_products(xs, P) == dual


def test_berlekamp_massey_finds_the_error_locator() -> None:
    # s_j = 3 * 5^j + 4 * 7^j: connection polynomial (1 - 5z)(1 - 7z) = 1 - 12z + 35z^2.
    sequence = [(3 * 5**j + 4 * 7**j) % SMALL_P for j in range(6)]
    assert _berlekamp_massey(sequence, SMALL_P) == [1, -12 % SMALL_P, 35]
    assert _berlekamp_massey([0, 0, 0, 0], SMALL_P) == [1]


def _codeword(coefficients: list[int], xs: tuple[int, ...], p: int) -> list[int]:
    return [sum(c * pow(x, j, p) for j, c in enumerate(coefficients)) % p for x in xs]


@pytest.mark.parametrize(("m", "k"), [(6, 2), (7, 3), (8, 3), (5, 5), (6, 5)])
def test_every_correctable_error_pattern_is_corrected(m: int, k: int) -> None:
    xs = tuple(range(3, 3 * m + 3, 3))
    coefficients = [42, *range(17, 17 + k - 1)]
    word = _codeword(coefficients, xs, SMALL_P)
    e = (m - k) // 2
    for count in range(e + 1):
        for positions in itertools.combinations(range(m), count):
            for delta in (1, SMALL_P - 1, 50):
                received = [(y + delta * (i + 1)) % SMALL_P if i in positions else y for i, y in enumerate(word)]
                assert decode_at_zero(xs, received, k, SMALL_P) == (42, tuple(xs[i] for i in positions))


def test_an_uncorrectable_word_raises() -> None:
    xs = (1, 2, 3, 4, 5, 6)
    received = [0, 0, 0, 1, 2, 4]  # no line mod 101 passes through four of these points
    with pytest.raises(InvalidShare):
        decode_at_zero(xs, received, 2, SMALL_P)


def test_cache_is_bounded_and_independent_of_k() -> None:
    assert _weights.cache_info().maxsize == CACHE_SIZE
    xs = (11, 12, 13, 14, 15)
    word = _codeword([9, 1, 1, 1], xs, SMALL_P)  # degree 3
    assert decode_at_zero(xs, word, 4, SMALL_P) == (9, ())
    with pytest.raises(InvalidShare):
        decode_at_zero(xs, word, 1, SMALL_P)  # a cubic is not within 2 of any constant
    assert decode_at_zero(xs, word, 4, SMALL_P) == (9, ())
