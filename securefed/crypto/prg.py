"""Mask expansion: a 32-byte seed keys AES-256-CTR; the keystream, read as
little-endian uint32, is the mask.

Theory of operation. Masking a d-vector with k seeds is memory-bound: the
keystream itself runs at several GB/s with AES-NI, so what costs is touching
memory. :class:`MaskAccumulator` therefore walks the vector in cache-sized
blocks, lets OpenSSL write each mask's keystream for the block straight into
a preallocated scratch block (``update_into``), and adds or subtracts it into
the accumulator block in place (uint32 arithmetic wraps mod 2^32 natively).
Main memory is touched about once per stage, not once per mask.

Each seed is used for exactly one mask (round keys are fresh every round and
every seed is derived with its round, task and party ids bound in), so the
fixed all-zero initial counter block never repeats under one key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefed.errors import InvalidParameter

__all__ = ["SEED_SIZE", "MaskAccumulator", "SecureRandom", "expand_mask", "expand_mask_into"]

SEED_SIZE = 32
_MASK_DTYPE = np.dtype("<u4")
_ZERO_COUNTER = bytes(16)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_SIZE:
        raise InvalidParameter(f"mask seed must be exactly {SEED_SIZE} bytes")


def _keystream_into(seed: bytes, zeros: memoryview, out: memoryview) -> None:
    encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_COUNTER)).encryptor()
    encryptor.update_into(zeros, out)


def expand_mask_into(seed: bytes, out: np.ndarray) -> np.ndarray:
    """Overwrite ``out`` (a C-contiguous uint32 array) with the mask for ``seed``."""
    _check_seed(seed)
    if out.dtype != _MASK_DTYPE or not out.flags.c_contiguous or not out.flags.writeable:
        raise InvalidParameter("mask output must be a writable, C-contiguous little-endian uint32 array")
    out[...] = 0
    view = out.data.cast("B")  # ndarray.data is memoryview(out); numpy types ndarray as a buffer only on 3.12+
    _keystream_into(seed, view, view)
    return out


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """A fresh uint32 mask of ``length`` entries; prefer :class:`MaskAccumulator` on hot paths."""
    if length < 0:
        raise InvalidParameter("mask length must be non-negative")
    return expand_mask_into(seed, np.zeros(length, dtype=_MASK_DTYPE))


class MaskAccumulator:
    """A uint32 accumulator that masks can be added into or subtracted from in place.

    :meth:`apply` takes all of a stage's masks at once and works block by
    block: for each 64 KiB block of the accumulator it runs every mask's
    keystream (one live AES-CTR context per seed) into a cache-resident
    scratch block and adds it in. The accumulator block stays in cache across
    all k masks, so masking costs about what the keystream alone costs,
    instead of k passes over main memory.

    >>> acc = MaskAccumulator(4)
    >>> acc.add(bytes(32)); acc.subtract(bytes(32))
    >>> acc.value.tolist()
    [0, 0, 0, 0]
    """

    BLOCK = 16_384  # uint32 entries per block

    def __init__(self, length_or_initial: int | np.ndarray) -> None:
        if isinstance(length_or_initial, np.ndarray):
            initial = length_or_initial
            if initial.ndim != 1 or initial.dtype != np.uint32:
                raise InvalidParameter("the accumulator starts from a flat uint32 vector")
            self.value = np.array(initial, dtype=_MASK_DTYPE, copy=True)
        else:
            if int(length_or_initial) < 0:
                raise InvalidParameter("length must be non-negative")
            self.value = np.zeros(int(length_or_initial), dtype=_MASK_DTYPE)
        block = min(self.BLOCK, max(1, self.value.shape[0]))
        self._scratch = np.empty(block, dtype=_MASK_DTYPE)
        self._zeros = np.zeros(block, dtype=_MASK_DTYPE).data.cast("B")

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def apply(self, masks: Iterable[tuple[bytes, int]]) -> None:
        """value += sign * PRG(seed) mod 2^32 for every ``(seed, sign)``, sign in {+1, -1}."""
        streams = []
        for seed, sign in masks:
            _check_seed(seed)
            if sign not in (1, -1):
                raise InvalidParameter("sign must be +1 or -1")
            encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_COUNTER)).encryptor()
            streams.append((encryptor.update_into, np.add if sign > 0 else np.subtract))
        if not streams:
            return
        value = self.value
        length = value.shape[0]
        full_scratch = self._scratch
        full_view = full_scratch.data.cast("B")
        for start in range(0, length, self.BLOCK):
            stop = min(length, start + self.BLOCK)
            block = value[start:stop]
            if stop - start == full_scratch.shape[0]:
                scratch, scratch_view, zeros = full_scratch, full_view, self._zeros
            else:  # the short last block
                scratch = full_scratch[: stop - start]
                scratch_view = full_view[: 4 * (stop - start)]
                zeros = self._zeros[: 4 * (stop - start)]
            for update_into, combine in streams:
                update_into(zeros, scratch_view)
                combine(block, scratch, out=block)

    def add(self, seed: bytes) -> None:
        """value += PRG(seed) mod 2^32."""
        self.apply([(seed, 1)])

    def subtract(self, seed: bytes) -> None:
        """value -= PRG(seed) mod 2^32."""
        self.apply([(seed, -1)])


class SecureRandom:
    """A cryptographically strong random stream (AES-256-CTR keyed from ``os.urandom``).

    For stochastic rounding and anything else that must not be predictable.
    Passing ``seed`` makes it reproducible, which only tests should do.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is not None:
            _check_seed(seed)
        key = os.urandom(SEED_SIZE) if seed is None else bytes(seed)
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()

    def _fill(self, out: np.ndarray) -> np.ndarray:
        view = out.data.cast("B")
        self._encryptor.update_into(view, view)
        return out

    def uint32(self, size: int) -> np.ndarray:
        """``size`` independent uniform uint32 values."""
        return self._fill(np.zeros(size, dtype=_MASK_DTYPE))

    def uint64(self, size: int) -> np.ndarray:
        return self._fill(np.zeros(size, dtype=np.dtype("<u8")))

    def uniform(self, size: int) -> np.ndarray:
        """``size`` uniform float64 values in [0, 1) with 53 random bits each."""
        return (self.uint64(size) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def bytes(self, size: int) -> bytes:
        return self._fill(np.zeros(size, dtype=np.uint8)).tobytes()
