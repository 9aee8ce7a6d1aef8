"""Hypothesis invariants of Shamir sharing: threshold reconstruction, secrecy below
it, the share parser's contract (a valid share that round-trips, or InvalidShare),
reproducible sharing from passed-in entropy, and error-correcting decoding."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from securefed.crypto.shamir import MAX_SHARES, PRIME, SHARE_SIZE, Decoded, Share, combine, decode, split, split_at
from securefed.errors import InvalidShare

secrets_ = st.binary(min_size=32, max_size=32)


@st.composite
def sharing_params(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=30))
    t = draw(st.integers(min_value=1, max_value=n))
    return n, t


@given(secrets_, sharing_params(), st.data())
def test_any_t_or_more_shares_reconstruct(secret: bytes, params: tuple[int, int], data: st.DataObject) -> None:
    n, t = params
    shares = split(secret, n, t)
    assert len(shares) == n
    order = data.draw(st.permutations(range(n)), label="order")
    size = data.draw(st.integers(min_value=t, max_value=n), label="size")
    subset = [shares[i] for i in order[:size]]
    assert combine(subset) == secret


@given(secrets_, sharing_params(), st.data())
def test_sampled_subsets_of_threshold_size_reconstruct(secret: bytes, params: tuple[int, int], data: st.DataObject) -> None:
    n, t = params
    shares = split(secret, n, t)
    chosen = data.draw(st.sets(st.sampled_from(range(n)), min_size=t, max_size=t), label="chosen")
    assert combine([shares[i] for i in sorted(chosen)]) == secret


@given(secrets_, sharing_params(), st.data())
def test_fewer_than_t_shares_do_not_give_the_secret(secret: bytes, params: tuple[int, int], data: st.DataObject) -> None:
    n, t = params
    shares = split(secret, n, t)
    order = data.draw(st.permutations(range(n)), label="order")
    size = data.draw(st.integers(min_value=0, max_value=t - 1), label="size")
    subset = [shares[i] for i in order[:size]]
    try:
        recovered = combine(subset)
    except InvalidShare:
        return
    # With t - 1 or fewer shares the interpolated value is uniform over the
    # field; equality with the secret has probability ~2^-256.
    assert recovered != secret


@given(
    secrets_,
    st.lists(st.integers(min_value=1, max_value=MAX_SHARES), min_size=1, max_size=30, unique=True),
    st.data(),
)
def test_split_at_any_t_of_the_chosen_points_reconstruct(secret: bytes, xs: list[int], data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=1, max_value=len(xs)), label="t")
    shares = split_at(secret, xs, t)
    assert [share.x for share in shares] == xs
    order = data.draw(st.permutations(range(len(xs))), label="order")
    assert combine([shares[i] for i in order[:t]]) == secret
    if t > 1:
        try:
            assert combine([shares[i] for i in order[: t - 1]]) != secret
        except InvalidShare:
            pass


@given(secrets_, st.integers(min_value=2, max_value=30), st.data())
def test_shares_from_different_sharings_do_not_mix(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=2, max_value=n), label="t")
    first, second = split(secret, n, t), split(secret, n, t)
    mixed = first[: t - 1] + second[t - 1 : t]
    try:
        assert combine(mixed) != secret
    except InvalidShare:
        pass


@given(st.binary(max_size=2 * SHARE_SIZE) | st.binary(min_size=SHARE_SIZE, max_size=SHARE_SIZE))
def test_from_bytes_is_valid_share_or_invalid_share(data: bytes) -> None:
    try:
        share = Share.from_bytes(data)
    except InvalidShare:
        return
    assert share.x >= 1 and share.x <= MAX_SHARES
    assert 0 <= share.y < PRIME
    assert share.to_bytes() == data


@given(st.integers(min_value=1, max_value=MAX_SHARES), st.integers(min_value=0, max_value=PRIME - 1))
def test_valid_shares_round_trip(x: int, y: int) -> None:
    share = Share(x, y)
    raw = share.to_bytes()
    assert len(raw) == SHARE_SIZE
    assert Share.from_bytes(raw) == share


@given(secrets_, sharing_params())
def test_serialised_shares_reconstruct(secret: bytes, params: tuple[int, int]) -> None:
    n, t = params
    wire = [share.to_bytes() for share in split(secret, n, t)]
    assert combine([Share.from_bytes(raw) for raw in wire[n - t :]]) == secret


@given(st.lists(st.integers(min_value=1, max_value=8), min_size=2, max_size=6))
def test_combine_rejects_any_repeated_x(xs: list[int]) -> None:
    assume(len(set(xs)) < len(xs))
    with pytest.raises(InvalidShare):
        combine([Share(x, x * 7) for x in xs])


def _seeded(seed: bytes) -> Callable[[int], bytes]:
    return lambda size: hashlib.shake_256(seed).digest(size)


@given(
    secrets_,
    st.integers(min_value=1, max_value=40),
    st.data(),
)
def test_decode_corrects_any_e_errors_and_names_them(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=1, max_value=n), label="t")
    sparse = data.draw(st.booleans(), label="sparse")
    if sparse:
        xs = data.draw(st.lists(st.integers(1, MAX_SHARES), min_size=n, max_size=n, unique=True), label="xs")
        shares = split_at(secret, xs, t)
    else:
        shares = split(secret, n, t)
    order = data.draw(st.permutations(range(n)), label="order")
    m = data.draw(st.integers(min_value=t, max_value=n), label="m")
    received = [shares[i] for i in order[:m]]
    count = data.draw(st.integers(min_value=0, max_value=(m - t) // 2), label="errors")
    positions = data.draw(st.sets(st.integers(0, m - 1), min_size=count, max_size=count), label="positions")
    for i in positions:
        wrong = data.draw(st.integers(min_value=0, max_value=PRIME - 1).filter(lambda y, i=i: y != received[i].y))
        received[i] = Share(received[i].x, wrong)
    result = decode(received, t)
    assert result.secret == secret
    assert result.bad == tuple(sorted(received[i].x for i in positions))


@given(st.binary(max_size=16), secrets_, sharing_params(), st.data())
def test_deterministic_entropy_gives_deterministic_shares(
    seed: bytes, secret: bytes, params: tuple[int, int], data: st.DataObject
) -> None:
    n, t = params
    first = split(secret, n, t, entropy=_seeded(seed))
    assert first == split(secret, n, t, entropy=_seeded(seed))
    size = data.draw(st.integers(min_value=t, max_value=n), label="size")
    subset = data.draw(st.permutations(first), label="order")[:size]
    assert combine(subset) == secret
    assert decode(subset, t) == Decoded(secret, ())


@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.integers(0, PRIME - 1) | st.integers(0, 5)),
        min_size=1,
        max_size=12,
        unique_by=lambda point: point[0],
    ),
    st.data(),
)
def test_decode_returns_a_polynomial_within_e_or_raises(points: list[tuple[int, int]], data: st.DataObject) -> None:
    shares = [Share(x, y) for x, y in points]
    t = data.draw(st.integers(min_value=1, max_value=len(shares)), label="t")
    try:
        result = decode(shares, t)
    except InvalidShare:
        return
    assert len(result.bad) <= (len(shares) - t) // 2
    assert list(result.bad) == sorted(set(result.bad))
    assert set(result.bad) <= {share.x for share in shares}
    good = [share for share in shares if share.x not in result.bad]
    assert combine(good) == result.secret
    assert decode(good, t) == Decoded(result.secret, ())
