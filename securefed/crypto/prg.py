"""Mask expansion: a 32-byte seed keys AES-256-CTR; the keystream, read as
little-endian uint32, is the mask.

Theory of operation. Masking a d-vector with k seeds is memory-bound: the
keystream itself runs at several GB/s with AES-NI, so what costs is touching
memory. :class:`MaskAccumulator` therefore keeps one preallocated scratch
buffer and one all-zero input buffer, lets OpenSSL write the keystream
straight into the scratch buffer (``update_into``), and adds or subtracts it
into the accumulator in place (uint32 arithmetic wraps mod 2^32 natively).
Each mask costs one keystream write and one add pass; no per-mask allocation.

Each seed is used for exactly one mask (round keys are fresh every round and
every seed is derived with its round, task and party ids bound in), so the
fixed all-zero initial counter block never repeats under one key.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefed.errors import InvalidParameter

__all__ = ["SEED_SIZE", "expand_mask", "expand_mask_into", "MaskAccumulator", "SecureRandom"]

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
    view = memoryview(out).cast("B")
    _keystream_into(seed, view, view)
    return out


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """A fresh uint32 mask of ``length`` entries; prefer :class:`MaskAccumulator` on hot paths."""
    if length < 0:
        raise InvalidParameter("mask length must be non-negative")
    return expand_mask_into(seed, np.zeros(length, dtype=_MASK_DTYPE))


class MaskAccumulator:
    """A uint32 accumulator that masks can be added into or subtracted from in place.

    >>> acc = MaskAccumulator(4)
    >>> acc.add(bytes(32)); acc.subtract(bytes(32))
    >>> acc.value.tolist()
    [0, 0, 0, 0]
    """

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
        self._scratch = np.empty_like(self.value)
        self._zeros = np.zeros_like(self.value)
        self._scratch_view = memoryview(self._scratch).cast("B")
        self._zeros_view = memoryview(self._zeros).cast("B")

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def _mask(self, seed: bytes) -> np.ndarray:
        _check_seed(seed)
        _keystream_into(seed, self._zeros_view, self._scratch_view)
        return self._scratch

    def add(self, seed: bytes) -> None:
        """value += PRG(seed) mod 2^32."""
        np.add(self.value, self._mask(seed), out=self.value)

    def subtract(self, seed: bytes) -> None:
        """value -= PRG(seed) mod 2^32."""
        np.subtract(self.value, self._mask(seed), out=self.value)

    def add_signed(self, seed: bytes, sign: int) -> None:
        if sign > 0:
            self.add(seed)
        elif sign < 0:
            self.subtract(seed)
        else:
            raise InvalidParameter("sign must be +1 or -1")


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
        view = memoryview(out).cast("B")
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
