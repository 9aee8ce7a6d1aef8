"""Crypto micro-benchmarks: mask expansion against its AES-CTR floor, and Shamir.

Run:  python benchmarks/bench_crypto.py [--repeats N] [--check]

(a) Floor: k raw AES-256-CTR keystreams of 4*d bytes, each from a fresh
    cipher (as every mask has its own seed), written with ``update_into``
    from a preallocated zero buffer into a preallocated output buffer.
(b) ``MaskAccumulator.apply`` of k masks of d uint32 entries (blocked: every
    mask's keystream for one cache-sized block, added in place): the same keystream
    work plus one in-place add pass per mask. The ratio (b)/(a) shows what the
    accumulator costs above the keystream itself; the target is under 2x.
(c) Shamir ``split`` of a 32-byte secret into n shares with t = n/2, and
    ``combine`` of t shares.

Raw and accumulator runs alternate inside each repeat, so drift in machine
load hits both alike. Times are per call; the table shows median and min.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import cryptography
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefed.crypto.prg import MaskAccumulator
from securefed.crypto.shamir import combine, split

MASK_SIZES = (100_000, 1_000_000)
MASK_COUNTS = (10, 50)
SHAMIR_SIZES = (50, 100)
RATIO_LIMIT = 2.0


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _raw_keystreams(seeds: list[bytes], zeros: memoryview, out: memoryview) -> None:
    nonce = bytes(16)
    for seed in seeds:
        Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor().update_into(zeros, out)


def _accumulate(accumulator: MaskAccumulator, seeds: list[bytes]) -> None:
    accumulator.apply([(seed, 1) for seed in seeds])


def bench_masks(d: int, k: int, repeats: int) -> dict[str, float]:
    seeds = [os.urandom(32) for _ in range(k)]
    zeros = memoryview(np.zeros(d, dtype="<u4")).cast("B")
    out = memoryview(np.empty(d, dtype="<u4")).cast("B")
    accumulator = MaskAccumulator(d)
    # Warm up: page in every buffer, load the cipher backend.
    _raw_keystreams(seeds[:1], zeros, out)
    accumulator.add(seeds[0])
    raw_times, acc_times = [], []
    for _ in range(repeats):
        raw_times.append(_time(lambda: _raw_keystreams(seeds, zeros, out)))
        acc_times.append(_time(lambda: _accumulate(accumulator, seeds)))
    return {
        "raw_median": statistics.median(raw_times),
        "raw_min": min(raw_times),
        "acc_median": statistics.median(acc_times),
        "acc_min": min(acc_times),
    }


def bench_shamir(n: int, repeats: int) -> dict[str, float]:
    t = n // 2
    secret = os.urandom(32)
    shares = split(secret, n, t)
    if combine(shares[:t]) != secret:
        raise RuntimeError("Shamir round trip failed")
    split_times = [_time(lambda: split(secret, n, t)) for _ in range(repeats)]
    combine_times = [_time(lambda: combine(shares[:t])) for _ in range(repeats)]
    return {
        "t": t,
        "split_median": statistics.median(split_times),
        "split_min": min(split_times),
        "combine_median": statistics.median(combine_times),
        "combine_min": min(combine_times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats per case (default 11)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if any mask ratio exceeds {RATIO_LIMIT}x")
    args = parser.parse_args(argv)

    print(
        f"# Python {platform.python_version()}, numpy {np.__version__}, cryptography {cryptography.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {args.repeats} repeats, median (min)"
    )
    print()
    print("Mask expansion: k masks of d uint32 entries (floor = k raw AES-256-CTR keystreams of 4*d bytes)")
    print()
    print("|         d |  k | floor ms median (min) | MaskAccumulator.apply ms median (min) | floor GB/s | ratio median (min) |")
    print("|----------:|---:|----------------------:|------------------------------------:|-----------:|-------------------:|")
    worst = 0.0
    for d in MASK_SIZES:
        for k in MASK_COUNTS:
            r = bench_masks(d, k, args.repeats)
            ratio = r["acc_median"] / r["raw_median"]
            ratio_min = r["acc_min"] / r["raw_min"]
            worst = max(worst, ratio)
            gbps = 4 * d * k / r["raw_median"] / 1e9
            print(
                f"| {d:>9,} | {k:>2} | {1e3 * r['raw_median']:>10.2f} ({1e3 * r['raw_min']:>8.2f}) "
                f"| {1e3 * r['acc_median']:>24.2f} ({1e3 * r['acc_min']:>8.2f}) "
                f"| {gbps:>10.2f} | {ratio:>9.2f}x ({ratio_min:>4.2f}x) |"
            )
    print()
    verdict = "within" if worst <= RATIO_LIMIT else "EXCEEDS"
    print(f"Worst median ratio {worst:.2f}x: {verdict} the {RATIO_LIMIT:.0f}x budget.")
    print()
    print("Shamir over GF(2^256 + 297), 32-byte secret, t = n/2")
    print()
    print("|   n |  t | split ms median (min) | combine(t shares) ms median (min) |")
    print("|----:|---:|----------------------:|----------------------------------:|")
    for n in SHAMIR_SIZES:
        s = bench_shamir(n, max(args.repeats, 21))
        print(
            f"| {n:>3} | {s['t']:>2} | {1e3 * s['split_median']:>10.3f} ({1e3 * s['split_min']:>8.3f}) "
            f"| {1e3 * s['combine_median']:>22.3f} ({1e3 * s['combine_min']:>8.3f}) |"
        )
    return 1 if args.check and worst > RATIO_LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
