"""Shamir secret sharing over GF(2^256 + 297): parameters, encoding, malformed shares."""

from __future__ import annotations

import pytest

from securefed.crypto.shamir import (
    MAX_SHARES,
    PRIME,
    SECRET_SIZE,
    SHARE_SIZE,
    Share,
    combine,
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
