"""Shamir secret sharing over GF(2^256 + 297): parameters, encoding, malformed shares,
entropy passed in, and error-correcting decoding."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import pytest

from securefed.crypto.shamir import (
    MAX_SHARES,
    PRIME,
    SECRET_SIZE,
    SHARE_SIZE,
    Decoded,
    Share,
    combine,
    decode,
    split,
    split_at,
)
from securefed.errors import InvalidParameter, InvalidShare

SECRET = bytes(range(32))


def _raw(x: int, y: int) -> bytes:
    return x.to_bytes(2, "big") + y.to_bytes(33, "big")


def test_prime_is_the_documented_field() -> None:
    assert PRIME == 2**256 + 297
    assert PRIME > 2 ** (8 * SECRET_SIZE)
    assert SHARE_SIZE == 35
    # Fermat check with a few bases (PRIME is a known prime; this guards a typo).
    for base in (2, 3, 5, 7):
        assert pow(base, PRIME - 1, PRIME) == 1


def test_split_and_combine_round_trip() -> None:
    shares = split(SECRET, 5, 3)
    assert [share.x for share in shares] == [1, 2, 3, 4, 5]
    assert combine(shares[:3]) == SECRET
    assert combine(shares[2:]) == SECRET
    assert combine([shares[4], shares[0], shares[2]]) == SECRET
    assert combine(shares) == SECRET


@pytest.mark.parametrize("secret", [bytes(32), b"\xff" * 32, SECRET], ids=["zero", "max", "counting"])
def test_edge_secrets(secret: bytes) -> None:
    assert combine(split(secret, 4, 2)[1:3]) == secret


def test_threshold_one_shares_are_the_secret() -> None:
    shares = split(SECRET, 3, 1)
    assert all(share.y == int.from_bytes(SECRET, "big") for share in shares)
    assert all(combine([share]) == SECRET for share in shares)


def test_sharing_is_randomised() -> None:
    assert [s.y for s in split(SECRET, 3, 2)] != [s.y for s in split(SECRET, 3, 2)]


def test_split_accepts_bytearray() -> None:
    assert combine(split(bytearray(SECRET), 2, 2)) == SECRET


def test_largest_share_count() -> None:
    shares = split(SECRET, MAX_SHARES, 2)
    assert len(shares) == MAX_SHARES
    last = shares[-1]
    assert last.x == MAX_SHARES
    assert Share.from_bytes(last.to_bytes()) == last
    assert combine([shares[0], last]) == SECRET


def test_fewer_than_threshold_does_not_give_the_secret() -> None:
    shares = split(SECRET, 5, 3)
    for pair in ([shares[0], shares[1]], [shares[3], shares[4]], [shares[2]]):
        try:
            assert combine(pair) != SECRET
        except InvalidShare:
            pass


# --- bad parameters to split -----------------------------------------------------


@pytest.mark.parametrize("secret", [b"", bytes(31), bytes(33), "x" * 32, None, 12345], ids=repr)
def test_split_rejects_bad_secret(secret: object) -> None:
    with pytest.raises(InvalidParameter):
        split(secret, 3, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "t"),
    [
        (3, 4),
        (3, 0),
        (3, -1),
        (0, 0),
        (0, 1),
        (MAX_SHARES + 1, 1),
        (MAX_SHARES + 1, MAX_SHARES + 1),
        (3.0, 2),
        (3, 2.0),
        (True, True),
    ],
)
def test_split_rejects_bad_n_and_t(n: object, t: object) -> None:
    with pytest.raises(InvalidParameter):
        split(SECRET, n, t)  # type: ignore[arg-type]


# --- split_at (shares at chosen x-coordinates) -----------------------------------


def test_split_at_uses_the_given_coordinates() -> None:
    xs = [7, 300, 2, MAX_SHARES, 41]
    shares = split_at(SECRET, xs, 3)
    assert [share.x for share in shares] == xs
    assert combine(shares[:3]) == SECRET
    assert combine([shares[4], shares[1], shares[3]]) == SECRET
    assert combine(shares) == SECRET


def test_split_at_accepts_any_iterable() -> None:
    shares = split_at(SECRET, (x for x in (5, 9)), 2)
    assert combine(shares) == SECRET


@pytest.mark.parametrize(
    "xs",
    [[1, 2, 2], [0, 1, 2], [1, 2, MAX_SHARES + 1], [-1, 1, 2], [True, 2, 3], [1.0, 2, 3], ["1", 2, 3]],
    ids=repr,
)
def test_split_at_rejects_bad_coordinates(xs: list) -> None:
    with pytest.raises(InvalidParameter):
        split_at(SECRET, xs, 2)


@pytest.mark.parametrize("t", [0, -1, 4, 2.0, True], ids=repr)
def test_split_at_rejects_bad_threshold(t: object) -> None:
    with pytest.raises(InvalidParameter):
        split_at(SECRET, [1, 2, 3], t)  # type: ignore[arg-type]


def test_split_at_rejects_no_coordinates_and_bad_secret() -> None:
    with pytest.raises(InvalidParameter):
        split_at(SECRET, [], 1)
    with pytest.raises(InvalidParameter):
        split_at(bytes(31), [1, 2], 1)


# --- malformed shares ------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "y"),
    [(0, 1), (-1, 1), (MAX_SHARES + 1, 1), (1, -1), (1, PRIME), (1, PRIME + 1), (True, 1), (1, 1.0), ("1", 1)],
    ids=repr,
)
def test_share_constructor_rejects_out_of_range(x: object, y: object) -> None:
    with pytest.raises(InvalidShare):
        Share(x, y)  # type: ignore[arg-type]


def test_share_boundaries_are_valid() -> None:
    for x, y in [(1, 0), (MAX_SHARES, PRIME - 1)]:
        share = Share(x, y)
        assert Share.from_bytes(share.to_bytes()) == share


@pytest.mark.parametrize("length", [0, 1, 34, 36, 70])
def test_from_bytes_rejects_wrong_length(length: int) -> None:
    with pytest.raises(InvalidShare):
        Share.from_bytes(bytes([1]) * length)


@pytest.mark.parametrize(
    "data",
    [_raw(0, 5), _raw(1, PRIME), _raw(1, 2**264 - 1), b"\x00" * 35],
    ids=["x=0", "y=PRIME", "y=max", "zeros"],
)
def test_from_bytes_rejects_out_of_range_fields(data: bytes) -> None:
    assert len(data) == SHARE_SIZE
    with pytest.raises(InvalidShare):
        Share.from_bytes(data)


@pytest.mark.parametrize("data", [None, "x" * 35, 35, [0] * 35], ids=repr)
def test_from_bytes_rejects_non_bytes(data: object) -> None:
    with pytest.raises(InvalidShare):
        Share.from_bytes(data)  # type: ignore[arg-type]


def test_to_bytes_from_bytes_round_trip() -> None:
    for share in split(SECRET, 10, 4):
        raw = share.to_bytes()
        assert len(raw) == SHARE_SIZE
        assert Share.from_bytes(raw) == share
        assert Share.from_bytes(bytearray(raw)) == share
        assert Share.from_bytes(memoryview(raw)) == share


def test_combine_rejects_empty() -> None:
    with pytest.raises(InvalidShare):
        combine([])


def test_combine_rejects_duplicate_x() -> None:
    shares = split(SECRET, 4, 2)
    with pytest.raises(InvalidShare):
        combine([shares[0], shares[0]])
    forged = Share(shares[0].x, (shares[0].y + 1) % PRIME)
    with pytest.raises(InvalidShare):
        combine([shares[0], forged, shares[1]])


def test_combine_rejects_non_shares() -> None:
    shares = split(SECRET, 3, 2)
    for bad in ([shares[0], shares[1].to_bytes()], [(1, 2), (2, 3)], [None]):
        with pytest.raises(InvalidShare):
            combine(bad)  # type: ignore[arg-type]


def test_combine_rejects_result_outside_secret_range() -> None:
    # A single share with y >= 2^256 interpolates to a value no 32-byte secret has.
    with pytest.raises(InvalidShare):
        combine([Share(1, PRIME - 1)])


def test_repr_does_not_reveal_y() -> None:
    for share in split(SECRET, 3, 2):
        for text in (repr(share), str(share)):
            assert str(share.y) not in text
            assert hex(share.y)[2:] not in text
            assert f"x={share.x}" in text


# --- entropy passed in -------------------------------------------------------------


class _Stream:
    """A deterministic entropy function that records how it was called."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.calls: list[int] = []

    def __call__(self, size: int) -> bytes:
        self.calls.append(size)
        return hashlib.shake_256(self.seed).digest(size)


def _evaluate(coefficients: list[int], x: int) -> int:
    """sum_j coefficients[j] * x^j mod PRIME."""
    return sum(c * pow(x, j, PRIME) for j, c in enumerate(coefficients)) % PRIME


def test_deterministic_entropy_gives_deterministic_shares() -> None:
    first = split(SECRET, 7, 4, entropy=_Stream(b"seed"))
    second = split(SECRET, 7, 4, entropy=_Stream(b"seed"))
    other = split(SECRET, 7, 4, entropy=_Stream(b"other seed"))
    assert [s.y for s in first] == [s.y for s in second]
    assert [s.y for s in first] != [s.y for s in other]
    assert combine(first[:4]) == decode(first, 4).secret == SECRET


def test_entropy_is_called_once_for_all_coefficients() -> None:
    entropy = _Stream(b"once")
    split_at(SECRET, [3, 9, 27, 81, 243], 5, entropy=entropy)
    assert entropy.calls == [64 * 4]
    entropy = _Stream(b"none needed")
    assert all(s.y == int.from_bytes(SECRET, "big") for s in split(SECRET, 3, 1, entropy=entropy))
    assert entropy.calls == []


def test_coefficients_are_64_byte_blocks_reduced_mod_prime() -> None:
    raw = hashlib.shake_256(b"blocks").digest(64 * 3)
    shares = split(SECRET, 6, 4, entropy=lambda size: raw)
    blocks = [int.from_bytes(raw[i : i + 64], "big") % PRIME for i in range(0, len(raw), 64)]
    assert len(set(blocks)) == 3 and all(0 <= b < PRIME for b in blocks)
    coefficients = [int.from_bytes(SECRET, "big"), *blocks]  # block j-1 is the coefficient of x^j
    assert [s.y for s in shares] == [_evaluate(coefficients, x) for x in range(1, 7)]


def test_all_ones_entropy_is_reduced_into_the_field() -> None:
    top = (2**512 - 1) % PRIME
    assert top != 2**512 - 1
    shares = split(SECRET, 4, 3, entropy=lambda size: b"\xff" * size)
    assert [s.y for s in shares] == [_evaluate([int.from_bytes(SECRET, "big"), top, top], x) for x in range(1, 5)]


@pytest.mark.parametrize(
    "entropy",
    [lambda size: bytes(size - 1), lambda size: bytes(size + 1), lambda size: "x" * size, lambda size: None, 42],
    ids=["short", "long", "str", "none", "not-callable"],
)
def test_split_rejects_bad_entropy(entropy: object) -> None:
    with pytest.raises(InvalidParameter):
        split(SECRET, 3, 2, entropy=entropy)  # type: ignore[arg-type]


# --- decode: error correction ------------------------------------------------------


def _corrupt(shares: list[Share], xs: set[int]) -> list[Share]:
    return [Share(s.x, (s.y + 1 + s.x) % PRIME) if s.x in xs else s for s in shares]


def test_decode_known_small_example() -> None:
    # f(x) = 5 + 2x + 3x^2 at x = 1..7: m = 7, t = 3, so up to 2 bad shares are corrected.
    shares = [Share(x, 5 + 2 * x + 3 * x * x) for x in range(1, 8)]
    five = (5).to_bytes(32, "big")
    assert decode(shares, 3) == Decoded(five, ())
    shares[1] = Share(2, 0)
    shares[5] = Share(6, 1234)
    assert decode(shares, 3) == Decoded(five, (2, 6))
    assert decode(list(reversed(shares)), 3) == Decoded(five, (2, 6))


def test_decode_without_errors_matches_combine() -> None:
    shares = split(SECRET, 9, 4)
    for subset in (shares, shares[:4], shares[2:], shares[::-1], shares[::2]):
        result = decode(subset, 4)
        assert result.secret == combine(subset) == SECRET
        assert result.bad == ()


M, T = 12, 5  # e = 3
XS = [4, 9, 10, 11, 17, 200, 201, 1000, 4000, 4001, 65534, MAX_SHARES]


@pytest.mark.parametrize("errors", range((M - T) // 2 + 1))
@pytest.mark.parametrize("pattern", ["first", "last", "spread", "adjacent"])
def test_decode_corrects_up_to_e_errors_and_names_them(errors: int, pattern: str) -> None:
    shares = split_at(SECRET, XS, T)
    positions = {
        "first": range(errors),
        "last": range(M - errors, M),
        "spread": range(0, 3 * errors, 3),
        "adjacent": range(5, 5 + errors),
    }[pattern]
    bad = {XS[i] for i in positions}
    result = decode(_corrupt(shares, bad), T)
    assert result.secret == SECRET
    assert result.bad == tuple(sorted(bad))


def test_decode_corrects_on_dense_coordinates_too() -> None:
    # Consecutive x's (surviving node ids) take a different precomputation path.
    shares = split(SECRET, 45, 31)
    survivors = [s for s in shares if s.x not in (3, 30)]
    for bad in ({1}, {43}, {5, 6, 7, 8, 9, 10}, {1, 2, 40, 41, 42, 45}):
        result = decode(_corrupt(survivors, bad), 31)
        assert (result.secret, result.bad) == (SECRET, tuple(sorted(bad)))


def test_one_more_error_than_correctable_never_breaks_the_contract() -> None:
    # Beyond e the only promise is: raise, or return a polynomial within distance e.
    shares = split_at(SECRET, XS, T)
    e = (M - T) // 2
    for bad in itertools.combinations(XS, e + 1):
        received = _corrupt(shares, set(bad))
        try:
            result = decode(received, T)
        except InvalidShare:
            continue
        assert len(result.bad) <= e
        assert combine([s for s in received if s.x not in result.bad]) == result.secret


def test_too_many_errors_can_decode_to_a_different_secret() -> None:
    # f and f' = f + 7(x-1)(x-2) agree at x = 1, 2 only. Take f' at x = 3, 4, 5: that is
    # e + 1 = 3 errors from f but only 2 from f', so unique decoding returns f'.
    def f(x: int) -> int:
        return 5 + 2 * x + 3 * x * x

    def f_prime(x: int) -> int:
        return f(x) + 7 * (x - 1) * (x - 2)

    received = [Share(x, f_prime(x) if x in (3, 4, 5) else f(x)) for x in range(1, 8)]
    result = decode(received, 3)
    assert result.secret == (5 + 14).to_bytes(32, "big")
    assert result.bad == (6, 7)


def test_without_redundancy_a_wrong_share_is_undetectable() -> None:
    shares = split(SECRET, 5, 5)
    forged = _corrupt(shares, {3})
    try:
        result = decode(forged, 5)
    except InvalidShare:  # only if the wrong secret happens to be >= 2^256
        return
    assert result.bad == ()
    assert result.secret != SECRET
    assert result.secret == combine(forged)


def test_one_spare_share_detects_but_cannot_correct() -> None:
    shares = split(SECRET, 6, 5)
    assert decode(shares, 5) == Decoded(SECRET, ())
    with pytest.raises(InvalidShare):
        decode(_corrupt(shares, {2}), 5)


def test_decode_cache_does_not_confuse_thresholds() -> None:
    xs = [2, 3, 5, 7, 11, 13, 17]
    high = split_at(SECRET, xs, 5)  # degree 4
    low = split_at(SECRET, xs, 3)  # degree 2
    assert decode(high, 5) == Decoded(SECRET, ())
    # A degree-4 polynomial agrees with any degree-2 one on at most 4 of 7 points,
    # more than e = 2 away: not decodable with t = 3, whatever was cached for t = 5.
    with pytest.raises(InvalidShare):
        decode(high, 3)
    assert decode(low, 3) == Decoded(SECRET, ())
    assert decode(low, 5) == Decoded(SECRET, ())
    assert decode(high, 5) == Decoded(SECRET, ())
    assert decode(_corrupt(low, {5, 13}), 3) == Decoded(SECRET, (5, 13))
    assert decode(_corrupt(low, {5}), 5) == Decoded(SECRET, (5,))


# --- decode: bad input -------------------------------------------------------------


def test_decode_rejects_fewer_than_t_shares() -> None:
    shares = split(SECRET, 5, 3)
    for subset in ([], shares[:1], shares[:2]):
        with pytest.raises(InvalidShare):
            decode(subset, 3)


def test_decode_rejects_repeated_x() -> None:
    shares = split(SECRET, 5, 2)
    with pytest.raises(InvalidShare):
        decode([shares[0], shares[0], shares[1]], 2)
    forged = Share(shares[0].x, (shares[0].y + 1) % PRIME)
    with pytest.raises(InvalidShare):
        decode([*shares, forged], 2)


def test_decode_rejects_non_shares() -> None:
    shares = split(SECRET, 3, 2)
    for bad in ([shares[0], shares[1].to_bytes()], [(1, 2), (2, 3)], [None, shares[0]], "ab"):
        with pytest.raises(InvalidShare):
            decode(bad, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("t", [0, -1, 2.0, True, "2", None], ids=repr)
def test_decode_rejects_bad_threshold(t: object) -> None:
    with pytest.raises(InvalidParameter):
        decode(split(SECRET, 3, 2), t)  # type: ignore[arg-type]


def test_decode_rejects_result_outside_secret_range() -> None:
    with pytest.raises(InvalidShare):
        decode([Share(1, PRIME - 1)], 1)
    # A consistent sharing of a value >= 2^256 is caught after decoding, too.
    shares = [Share(x, (PRIME - 1 + x) % PRIME) for x in range(1, 6)]
    with pytest.raises(InvalidShare):
        decode(shares, 2)


def test_decoded_hides_the_secret_and_is_frozen() -> None:
    result = decode(split(SECRET, 3, 2), 2)
    assert SECRET.hex() not in repr(result) and str(SECRET) not in repr(result)
    assert "bad=()" in repr(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.bad = (1,)  # type: ignore[misc]
