"""Shamir ``decode`` (error-correcting) against ``combine``, at coordinator sizes.

Run:  python benchmarks/bench_shamir_decode.py [--repeats N]

(a) 50 secrets shared over one x-set, m = 45 shares, t = 31, warm cache, no
    errors: the common unmasking case (every survivor holds every share).
(b) as (a) but one secret has one wrong share; the wrong share moves each
    repeat, so the error path (Berlekamp–Massey and a check of the remaining
    x-set) runs cold every time.
(c) m = 55, t = 39, 1000 secrets over 1000 distinct x-sets, cold cache: the
    per-x-set precomputation, for sparse x's (random ids in 1..65535) and for
    dense ones (55 of the ids 1..64, survivors of a small cohort).
``combine`` of the same shares is shown for comparison (it trusts every share).
Times are for the whole batch; the table shows median and min over repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

from securefed.crypto.shamir import PRIME, Share, combine, decode, split_at

SECRETS, M, T = 50, 45, 31
COLD_SETS, COLD_M, COLD_T = 1000, 55, 39


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), min(times)


def _check(batch: list[list[Share]], t: int, secrets: list[bytes]) -> None:
    if [decode(shares, t).secret for shares in batch] != secrets:
        raise RuntimeError("decode did not recover the secrets")


def bench_warm(repeats: int, rng: random.Random) -> dict[str, tuple[float, float]]:
    xs = rng.sample(range(1, 65536), M)
    secrets = [os.urandom(32) for _ in range(SECRETS)]
    batch = [split_at(secret, xs, T) for secret in secrets]
    _check(batch, T, secrets)  # warms the cache
    clean = [_time(lambda: [decode(shares, T) for shares in batch]) for _ in range(repeats)]
    combined = [_time(lambda: [combine(shares) for shares in batch]) for _ in range(repeats)]
    one_error = []
    for r in range(repeats):
        faulty = [list(shares) for shares in batch]
        wrong = faulty[7][r % M]
        faulty[7][r % M] = Share(wrong.x, (wrong.y + 1) % PRIME)
        one_error.append(_time(lambda faulty=faulty: [decode(shares, T) for shares in faulty]))
        if decode(faulty[7], T).bad != (wrong.x,):
            raise RuntimeError("decode did not name the wrong share")
    return {"clean": _summary(clean), "combine": _summary(combined), "one_error": _summary(one_error)}


def bench_cold(repeats: int, rng: random.Random, dense: bool) -> dict[str, tuple[float, float]]:
    decoded, combined = [], []
    for _ in range(repeats):
        # Fresh x-sets each repeat: none is in the cache (sparse collisions have
        # probability ~0; dense ones are drawn from C(64, 55) ~ 2.8e10 sets).
        sets = [rng.sample(range(1, 65) if dense else range(1, 65536), COLD_M) for _ in range(COLD_SETS)]
        secrets = [os.urandom(32) for _ in range(COLD_SETS)]
        batch = [split_at(secret, xs, COLD_T) for secret, xs in zip(secrets, sets)]
        decoded.append(_time(lambda batch=batch, secrets=secrets: _check(batch, COLD_T, secrets)))
        combined.append(_time(lambda batch=batch: [combine(shares) for shares in batch]))
    return {"decode": _summary(decoded), "combine": _summary(combined)}


def _row(case: str, secrets: int, r: tuple[float, float], base: tuple[float, float] | None) -> str:
    per = 1e6 * r[0] / secrets
    ratio = f"{base[0] / r[0]:>13.1f}x" if base else " " * 14
    return f"| {case:<50} | {secrets:>7} | {1e3 * r[0]:>10.2f} ({1e3 * r[1]:>8.2f}) | {per:>9.1f} | {ratio} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed repeats of (a), (b) (default 21)")
    parser.add_argument("--cold-repeats", type=int, default=5, help="timed repeats of (c) (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the x-sets (default 1)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    print(
        f"# Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"median (min) of {args.repeats} repeats for (a)-(b), {args.cold_repeats} for (c)"
    )
    print()
    print(f"| {'case':<50} | secrets | batch ms median (min) | us/secret | combine/decode |")
    print(f"|:{'-' * 51}|--------:|----------------------:|----------:|---------------:|")
    warm = bench_warm(args.repeats, rng)
    print(_row(f"(a) decode m={M} t={T}, one x-set, no errors", SECRETS, warm["clean"], warm["combine"]))
    print(_row(f"(b) decode m={M} t={T}, one x-set, 1 wrong share", SECRETS, warm["one_error"], warm["combine"]))
    print(_row(f"    combine m={M} (no checks)", SECRETS, warm["combine"], None))
    for dense in (False, True):
        cold = bench_cold(args.cold_repeats, rng, dense)
        label = "dense ids 1..64" if dense else "sparse ids"
        print(_row(f"(c) decode m={COLD_M} t={COLD_T}, cold, {label}", COLD_SETS, cold["decode"], cold["combine"]))
        print(_row(f"    combine m={COLD_M}, {label}", COLD_SETS, cold["combine"], None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
