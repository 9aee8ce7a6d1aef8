"""Hypothesis invariants of mask expansion and the in-place mask accumulator."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.crypto.prg import MaskAccumulator, SecureRandom, expand_mask

seeds = st.binary(min_size=32, max_size=32)
vectors = hnp.arrays(dtype=np.dtype("<u4"), shape=st.integers(min_value=0, max_value=300))


@given(vectors, seeds)
def test_add_then_subtract_restores_the_vector(initial: np.ndarray, seed: bytes) -> None:
    accumulator = MaskAccumulator(initial)
    accumulator.add(seed)
    accumulator.subtract(seed)
    np.testing.assert_array_equal(accumulator.value, initial)


@given(vectors, seeds)
def test_add_is_modular_sum_with_the_mask(initial: np.ndarray, seed: bytes) -> None:
    accumulator = MaskAccumulator(initial)
    accumulator.add(seed)
    wide = initial.astype(np.uint64) + expand_mask(seed, len(initial)).astype(np.uint64)
    np.testing.assert_array_equal(accumulator.value.astype(np.uint64), wide % np.uint64(2**32))


@given(vectors, seeds)
def test_subtract_is_modular_difference_with_the_mask(initial: np.ndarray, seed: bytes) -> None:
    accumulator = MaskAccumulator(initial)
    accumulator.subtract(seed)
    wide = initial.astype(np.int64) - expand_mask(seed, len(initial)).astype(np.int64)
    np.testing.assert_array_equal(accumulator.value.astype(np.int64), wide % 2**32)


@given(vectors, st.lists(st.tuples(seeds, st.sampled_from([1, -1])), max_size=6), st.randoms(use_true_random=False))
def test_masks_cancel_in_any_order(initial: np.ndarray, signed_seeds: list, rng) -> None:
    accumulator = MaskAccumulator(initial)
    accumulator.apply(signed_seeds)
    undo = [(seed, -sign) for seed, sign in signed_seeds]
    rng.shuffle(undo)
    for seed, sign in undo:
        accumulator.apply([(seed, sign)])
    np.testing.assert_array_equal(accumulator.value, initial)


@given(seeds, st.integers(min_value=0, max_value=500), st.integers(min_value=0, max_value=500))
def test_expansion_is_deterministic_and_prefix_consistent(seed: bytes, short: int, extra: int) -> None:
    long_mask = expand_mask(seed, short + extra)
    np.testing.assert_array_equal(expand_mask(seed, short + extra), long_mask)
    np.testing.assert_array_equal(expand_mask(seed, short), long_mask[:short])


@given(seeds, seeds)
def test_distinct_seeds_give_distinct_masks(first: bytes, second: bytes) -> None:
    assume(first != second)
    assert not np.array_equal(expand_mask(first, 8), expand_mask(second, 8))


@given(seeds, st.lists(st.integers(min_value=0, max_value=64), max_size=5))
def test_secure_random_is_one_stream_regardless_of_chunking(seed: bytes, sizes: list[int]) -> None:
    rng = SecureRandom(seed)
    chunked = b"".join(rng.bytes(size) for size in sizes)
    assert chunked == SecureRandom(seed).bytes(sum(sizes))
