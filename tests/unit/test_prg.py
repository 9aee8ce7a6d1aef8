"""AES-256-CTR mask expansion and the SecureRandom stream.

The keystream is checked against ``cryptography`` directly and against AES
applied block by block to the big-endian counter, so a wrong nonce, counter
or byte order cannot hide behind a self-consistent implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefed.crypto.prg import SEED_SIZE, MaskAccumulator, SecureRandom, expand_mask, expand_mask_into
from securefed.errors import InvalidParameter

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))

# Upper standard-normal quantile for p = 0.999 (lower one is its negative).
Z_999 = 3.090232306167813


def _reference_keystream(seed: bytes, n_bytes: int) -> bytes:
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(n_bytes)) + encryptor.finalize()


def _ecb_counter_keystream(seed: bytes, n_blocks: int) -> bytes:
    encryptor = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    return encryptor.update(b"".join(i.to_bytes(16, "big") for i in range(n_blocks)))


def chi_square_quantile(p_z: float, dof: int) -> float:
    """Wilson–Hilferty approximation of the chi-square quantile for normal quantile ``p_z``."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + p_z * math.sqrt(c)) ** 3


def byte_chi_square(data: bytes) -> float:
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256).astype(np.float64)
    expected = len(data) / 256.0
    return float(((counts - expected) ** 2 / expected).sum())


# --- keystream correctness --------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 1000, 4097])
def test_mask_is_cryptography_ctr_keystream_as_little_endian_uint32(length: int) -> None:
    expected = np.frombuffer(_reference_keystream(SEED, 4 * length), dtype="<u4")
    mask = expand_mask(SEED, length)
    assert mask.dtype == np.dtype("<u4")
    assert mask.shape == (length,)
    np.testing.assert_array_equal(mask, expected)


def test_keystream_is_aes_of_big_endian_counter_from_zero() -> None:
    mask = expand_mask(SEED, 4 * 64)
    assert mask.tobytes() == _ecb_counter_keystream(SEED, 64)


def test_known_answer_aes256_zero_key_zero_block() -> None:
    # AES-256 with the all-zero key on the all-zero block (a standard known answer).
    first_block = expand_mask(bytes(32), 4).tobytes()
    assert first_block == bytes.fromhex("dc95c078a2408989ad48a21492842087")


def test_mask_values_are_little_endian() -> None:
    raw = _reference_keystream(SEED, 4)
    assert int(expand_mask(SEED, 1)[0]) == int.from_bytes(raw, "little")


def test_deterministic_per_seed() -> None:
    np.testing.assert_array_equal(expand_mask(SEED, 1000), expand_mask(SEED, 1000))
    np.testing.assert_array_equal(expand_mask(bytearray(SEED), 1000), expand_mask(SEED, 1000))


def test_shorter_mask_is_prefix_of_longer() -> None:
    np.testing.assert_array_equal(expand_mask(SEED, 1000)[:333], expand_mask(SEED, 333))


def test_different_seeds_give_different_masks() -> None:
    assert not np.array_equal(expand_mask(SEED, 8), expand_mask(OTHER_SEED, 8))


def test_one_bit_seed_change_flips_about_half_the_mask_bits() -> None:
    flipped = bytes([SEED[0] ^ 1]) + SEED[1:]
    first, second = expand_mask(SEED, 1024), expand_mask(flipped, 1024)
    differing = int(np.unpackbits((first ^ second).view(np.uint8)).sum())
    total = 1024 * 32
    # Binomial(total, 1/2): sd = 90.5 bits; allow ~6 sd.
    assert abs(differing - total / 2) < 550


def test_expand_mask_into_overwrites_existing_contents() -> None:
    out = np.full(100, 0xDEADBEEF, dtype="<u4")
    result = expand_mask_into(SEED, out)
    assert result is out
    np.testing.assert_array_equal(out, expand_mask(SEED, 100))


@pytest.mark.parametrize(
    "out",
    [
        np.zeros(8, dtype=np.uint64),
        np.zeros(8, dtype=np.int32),
        np.zeros(8, dtype=">u4"),
        np.zeros(16, dtype="<u4")[::2],
    ],
    ids=["uint64", "int32", "big-endian", "strided"],
)
def test_expand_mask_into_rejects_unsuitable_output(out: np.ndarray) -> None:
    with pytest.raises(InvalidParameter):
        expand_mask_into(SEED, out)


def test_expand_mask_into_rejects_read_only_output() -> None:
    out = np.zeros(8, dtype="<u4")
    out.flags.writeable = False
    with pytest.raises(InvalidParameter):
        expand_mask_into(SEED, out)


def test_expand_mask_rejects_negative_length() -> None:
    with pytest.raises(InvalidParameter):
        expand_mask(SEED, -1)


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(31), bytes(33), bytes(64), "x" * 32, None, 32])
def test_invalid_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(InvalidParameter):
        expand_mask(seed, 4)  # type: ignore[arg-type]
    accumulator = MaskAccumulator(4)
    with pytest.raises(InvalidParameter):
        accumulator.add(seed)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        accumulator.subtract(seed)  # type: ignore[arg-type]
    np.testing.assert_array_equal(accumulator.value, np.zeros(4, dtype="<u4"))


# --- statistical quality ----------------------------------------------------------


def test_wilson_hilferty_matches_tabulated_quantiles() -> None:
    # Exact chi-square quantiles for 255 dof: 0.999 -> 330.52, 0.001 -> 190.87.
    assert chi_square_quantile(Z_999, 255) == pytest.approx(330.52, abs=0.3)
    assert chi_square_quantile(-Z_999, 255) == pytest.approx(190.87, abs=0.3)


def test_keystream_bytes_are_uniform() -> None:
    data = expand_mask(SEED, 1 << 18).tobytes()  # 1 MiB
    statistic = byte_chi_square(data)
    # Two-sided: too-even counts (e.g. a counter leaking through) also fail.
    assert chi_square_quantile(-Z_999, 255) < statistic < chi_square_quantile(Z_999, 255)


def test_chi_square_check_catches_planted_bias() -> None:
    # Quality check: the same test must fail on slightly biased or too-regular streams.
    data = bytearray(expand_mask(OTHER_SEED, 1 << 18).tobytes())
    data[::200] = bytes(len(data[::200]))  # 0.5 % of bytes forced to zero
    assert byte_chi_square(bytes(data)) > chi_square_quantile(Z_999, 255)
    regular = bytes(range(256)) * 4096
    assert byte_chi_square(regular) < chi_square_quantile(-Z_999, 255)


# --- MaskAccumulator --------------------------------------------------------------


def test_accumulator_add_matches_modular_sum() -> None:
    initial = np.array([0, 1, 2**32 - 1, 2**31, 12345], dtype="<u4")
    accumulator = MaskAccumulator(initial)
    accumulator.add(SEED)
    expected = (initial.astype(np.uint64) + expand_mask(SEED, 5).astype(np.uint64)) % 2**32
    np.testing.assert_array_equal(accumulator.value, expected.astype("<u4"))


def test_accumulator_copies_its_initial_vector() -> None:
    initial = np.arange(5, dtype="<u4")
    accumulator = MaskAccumulator(initial)
    accumulator.add(SEED)
    np.testing.assert_array_equal(initial, np.arange(5, dtype="<u4"))


def test_accumulator_masks_cancel_across_parties() -> None:
    # Pairwise masking as in secure aggregation: one party adds, the other subtracts.
    x, y = np.arange(1000, dtype="<u4"), np.arange(1000, 2000, dtype="<u4")
    left, right = MaskAccumulator(x), MaskAccumulator(y)
    left.add(SEED)
    right.subtract(SEED)
    assert not np.array_equal(left.value, x)
    np.testing.assert_array_equal(left.value + right.value, x + y)


def test_apply_with_signs() -> None:
    accumulator = MaskAccumulator(16)
    accumulator.apply([(SEED, +1)])
    np.testing.assert_array_equal(accumulator.value, expand_mask(SEED, 16))
    accumulator.apply([(SEED, -1)])
    np.testing.assert_array_equal(accumulator.value, np.zeros(16, dtype="<u4"))
    with pytest.raises(InvalidParameter):
        accumulator.apply([(SEED, 0)])


@pytest.mark.parametrize("length", [MaskAccumulator.BLOCK - 1, MaskAccumulator.BLOCK, 3 * MaskAccumulator.BLOCK + 5])
def test_blocked_apply_equals_whole_vector_masks_across_block_edges(length: int) -> None:
    seeds = [bytes([i]) * 32 for i in range(1, 5)]
    signs = [1, -1, -1, 1]
    initial = np.arange(length, dtype=np.uint32)
    accumulator = MaskAccumulator(initial)
    accumulator.apply(list(zip(seeds, signs)))
    expected = initial.astype(np.int64)
    for seed, sign in zip(seeds, signs):
        expected += sign * expand_mask(seed, length).astype(np.int64)
    np.testing.assert_array_equal(accumulator.value, (expected % 2**32).astype(np.uint32))


def test_accumulator_length_and_empty_vector() -> None:
    assert len(MaskAccumulator(7)) == 7
    empty = MaskAccumulator(0)
    empty.add(SEED)
    assert len(empty) == 0


def test_accumulator_rejects_bad_shapes() -> None:
    with pytest.raises(InvalidParameter):
        MaskAccumulator(np.zeros((2, 2), dtype="<u4"))
    with pytest.raises(InvalidParameter):
        MaskAccumulator(-1)


# --- SecureRandom -----------------------------------------------------------------


def test_secure_random_is_deterministic_when_seeded() -> None:
    first, second = SecureRandom(SEED), SecureRandom(SEED)
    np.testing.assert_array_equal(first.uint32(100), second.uint32(100))
    np.testing.assert_array_equal(first.uniform(100), second.uniform(100))
    assert first.bytes(33) == second.bytes(33)


def test_secure_random_stream_continues_rather_than_restarts() -> None:
    rng = SecureRandom(SEED)
    assert not np.array_equal(rng.uint32(8), rng.uint32(8))


def test_secure_random_differs_when_unseeded() -> None:
    assert SecureRandom().bytes(32) != SecureRandom().bytes(32)
    assert not np.array_equal(SecureRandom().uniform(16), SecureRandom().uniform(16))


def test_secure_random_different_seeds_differ() -> None:
    assert SecureRandom(SEED).bytes(32) != SecureRandom(OTHER_SEED).bytes(32)


def test_uniform_is_in_unit_interval_and_centred() -> None:
    n = 200_000
    values = SecureRandom(SEED).uniform(n)
    assert values.dtype == np.float64
    assert values.shape == (n,)
    assert values.min() >= 0.0
    assert values.max() < 1.0
    # Mean of U[0,1) has sd sqrt(1/12/n) ~ 6.5e-4; allow 6 sd.
    assert abs(values.mean() - 0.5) < 6 * math.sqrt(1 / 12 / n)
    assert len(np.unique(values)) == n  # 53-bit values: collisions are essentially impossible


def test_uniform_uses_53_bits() -> None:
    values = SecureRandom(SEED).uniform(4096)
    scaled = values * 2.0**53
    np.testing.assert_array_equal(scaled, np.floor(scaled))
    # A coarser generator (e.g. 32-bit) would leave the low bits all zero.
    assert np.any(scaled.astype(np.uint64) & np.uint64(0x1FFFFF))


def test_sizes_and_dtypes() -> None:
    rng = SecureRandom(SEED)
    assert rng.uint32(5).dtype == np.dtype("<u4")
    assert rng.uint64(5).dtype == np.dtype("<u8")
    assert len(rng.bytes(7)) == 7


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(31), bytes(33), bytes(64)])
def test_secure_random_rejects_bad_seed_lengths(seed: bytes) -> None:
    with pytest.raises(InvalidParameter):
        SecureRandom(seed)


def test_secure_random_rejects_integer_seed() -> None:
    with pytest.raises(InvalidParameter):
        SecureRandom(SEED_SIZE)  # type: ignore[arg-type]
