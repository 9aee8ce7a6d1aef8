"""Secure-aggregation benchmark: per-stage cost of the real state machines.

Run:  python benchmarks/bench_secagg.py [--dimension D] [--nodes N] [--skip-large]

Part 1 (n = 50, d = 1,000,000, 10% of nodes drop after sharing keys and
before sending a masked input), once with the complete graph (k = 49, the
smallest threshold the default policy accepts: 2t > N + c with c = 10) and
once with the SecAgg+ graph (k = 10, for a site that defends against 2
colluders): the time each client stage and each server stage-close takes,
measured around the ``receive()`` calls a daemon makes. Beside the two
mask-heavy steps stands their *floor*, measured in the same run: the raw
AES-256-CTR keystream for exactly the number of masks that step must expand
(``update_into`` a preallocated buffer, fresh cipher per seed), i.e. what the
step would cost if it did nothing but generate masks. The robust
reconstruction is costed in the same run: checking every revealed share
against its dealer's commitment and Reed–Solomon decoding every secret from
all its shares, against interpolating each secret from its first t shares
(what the server did before it could name a cheater).

Part 2: the in-memory simulator at n = 1,000, d = 10,000 with the sparse
graph and the (k, t) that ``propose_parameters`` picks for 5% dropouts and
the default colluder bound (20% of the roster); 5% of nodes drop before the
masked input.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections import defaultdict

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefed.crypto.identity import SigningKey
from securefed.crypto.shamir import Share, combine, decode
from securefed.secagg import ClientPolicy, ClientProtocol, RoundConfig, ServerProtocol, propose_parameters, simulate
from securefed.secagg.bounds import smallest_safe_threshold
from securefed.secagg.messages import Deadline, Stage, UnmaskShares
from securefed.secagg.transcript import share_commitment

CLIENT_STEPS = ("advertise keys", "reveal", "share keys", "masked input", "consistency", "unmask")
SERVER_STEPS = (
    "close advertise",
    "close reveal",
    "close share",
    "close masked input",
    "close consistency",
    "unmasking",
)


def keystream_floor(masks: int, d: int, repeats: int = 3) -> float:
    zeros = memoryview(np.zeros(d, dtype="<u4")).cast("B")
    out = memoryview(np.empty(d, dtype="<u4")).cast("B")
    seeds = [os.urandom(32) for _ in range(masks)]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for seed in seeds:
            Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update_into(zeros, out)
        best = min(best, time.perf_counter() - start)
    return best


def timed_round(n: int, d: int, k: int | None, threshold: int, dropped: set[int], policy: ClientPolicy):
    """Run one round by hand, timing every client and server step. Returns (client, server, result, exact, shares)."""
    rng = np.random.default_rng(7)  # benchmark inputs only; no security role
    inputs = {i: rng.integers(0, 2**32, d, dtype=np.uint32) for i in range(1, n + 1)}
    config = RoundConfig("bench", 1, n, threshold, d, hashlib.sha256(b"bench").digest(), k)
    identities = {i: SigningKey.generate() for i in config.ids}
    roster = {i: key.public_bytes for i, key in identities.items()}
    clients = {i: ClientProtocol(config, i, identities[i], roster, inputs[i], policy) for i in config.ids}
    server = ServerProtocol(config, roster)
    client_times: dict[str, list[float]] = defaultdict(list)
    server_times: dict[str, float] = {}
    revealed: list[UnmaskShares] = []

    outbox = {}
    for i, client in clients.items():
        start = time.perf_counter()
        outbox[i] = client.start()
        client_times[CLIENT_STEPS[0]].append(time.perf_counter() - start)
    for index, stage in enumerate(Stage):
        deliveries = []
        elapsed = 0.0
        for i in sorted(outbox):
            for message in outbox[i]:
                start = time.perf_counter()
                deliveries.extend(server.receive(message))
                elapsed += time.perf_counter() - start
        if server.stage is stage:
            start = time.perf_counter()
            deliveries.extend(server.receive(Deadline(stage)))
            elapsed += time.perf_counter() - start
        server_times[SERVER_STEPS[index]] = elapsed
        if server.result is not None:
            break
        outbox = {}
        for send in deliveries:
            start = time.perf_counter()
            replies = clients[send.to].receive(send.message)
            client_times[CLIENT_STEPS[index + 1]].append(time.perf_counter() - start)
            silent = send.to in dropped and stage.index >= Stage.SHARE.index  # silent from masked input on
            if not silent:
                outbox[send.to] = replies
                revealed.extend(reply for reply in replies if isinstance(reply, UnmaskShares))
    expected = np.zeros(d, dtype=np.uint32)
    for i in server.result.survivors:
        expected += inputs[i]
    exact = bool(np.array_equal(expected, server.result.sum))
    return client_times, server_times, server.result, exact, (config, revealed)


def reconstruction_costs(config: RoundConfig, revealed: list[UnmaskShares], repeats: int = 5) -> tuple[float, float]:
    """(robust, plain) seconds: commitment checks + RS decode of all shares vs combine of the first t."""
    pools: dict[tuple[str, int], list[tuple[int, bytes]]] = defaultdict(list)
    for message in revealed:
        for owner, raw in message.b_shares:
            pools[("b", owner)].append((message.sender, raw))
        for owner, raw in message.s_shares:
            pools[("s", owner)].append((message.sender, raw))
    robust, plain = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for (kind, owner), pairs in pools.items():
            for holder, raw in pairs:
                share_commitment(config, owner, holder, kind, raw)
            decode([Share.from_bytes(raw) for _, raw in pairs], config.threshold)
        robust = min(robust, time.perf_counter() - start)
        start = time.perf_counter()
        for pairs in pools.values():
            shares = sorted((Share.from_bytes(raw) for _, raw in pairs), key=lambda share: share.x)
            combine(shares[: config.threshold])
        plain = min(plain, time.perf_counter() - start)
    return robust, plain


def part_one(n: int, d: int) -> list[str]:
    lines = []
    dropped = set(range(1, n + 1, 10))  # 10%
    for k in (n - 1, 10):
        sparse = k < n - 1
        policy = ClientPolicy(max_colluders=2) if sparse else ClientPolicy()
        threshold = smallest_safe_threshold(n, k if sparse else None, policy.colluders(n))
        client, server, result, exact, (config, revealed) = timed_round(n, d, k if sparse else None, threshold, dropped, policy)
        degree = n - 1 if k >= n - 1 else k
        survivors = len(result.survivors)
        client_mask_floor = keystream_floor(degree + 1, d)  # b_u plus one pairwise mask per neighbour
        if k >= n - 1:
            server_masks = survivors + len(dropped) * survivors
        else:
            server_masks = survivors + len(dropped) * degree  # upper bound: each dropped node's neighbours
        server_floor = keystream_floor(server_masks, d)
        lines.append(
            f"\n### n={n}, d={d:,}, k={degree}, t={threshold} (withstands {policy.colluders(n)} colluders), "
            f"{len(dropped)} dropped before masked input"
        )
        lines.append(f"exact sum: {exact}; survivors: {survivors}")
        lines.append("| client step | median ms | max ms |")
        lines.append("|---|--:|--:|")
        for step in CLIENT_STEPS:
            values = client[step]
            lines.append(f"| {step} | {1e3 * statistics.median(values):.1f} | {1e3 * max(values):.1f} |")
        masked = statistics.median(client["masked input"])
        lines.append(
            f"| floor: {degree + 1} raw keystreams | {1e3 * client_mask_floor:.1f} | ratio {masked / client_mask_floor:.2f}x |"
        )
        lines.append("\n| server step | ms |")
        lines.append("|---|--:|")
        for step in SERVER_STEPS:
            lines.append(f"| {step} | {1e3 * server[step]:.1f} |")
        unmask = server["unmasking"]
        lines.append(f"| floor: {server_masks} raw keystreams | {1e3 * server_floor:.1f} (ratio {unmask / server_floor:.2f}x) |")
        robust, plain = reconstruction_costs(config, revealed)
        lines.append(
            f"\nrobust reconstruction ({sum(len(m.b_shares) + len(m.s_shares) for m in revealed)} shares): "
            f"{1e3 * robust:.1f} ms against {1e3 * plain:.1f} ms for first-t interpolation; "
            f"adds {100 * max(0.0, robust - plain) / unmask:.1f}% to the unmasking step"
        )
    return lines


def part_two(n: int, d: int) -> list[str]:
    params = propose_parameters(n, dropout_rate=0.05)
    rng = np.random.default_rng(11)
    inputs = [rng.integers(0, 2**32, d, dtype=np.uint32) for _ in range(n)]
    dropped = list(range(1, n + 1, 20))
    start, cpu = time.perf_counter(), time.process_time()
    result = simulate(
        inputs, params.threshold, dropouts={"masked_input": dropped}, neighbours=params.neighbours, colluders=params.colluders
    )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    expected = np.zeros(d, dtype=np.uint32)
    for i in result.survivors:
        expected += inputs[i - 1]
    return [
        f"\n### simulator: n={n:,}, d={d:,}, {params.explanation}",
        f"{len(dropped)} dropped before masked input; survivors {len(result.survivors)}; "
        f"exact: {bool(np.array_equal(expected, result.sum))}; wall time {elapsed:.1f} s (CPU {cpu:.1f} s)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--dimension", type=int, default=1_000_000)
    parser.add_argument("--skip-large", action="store_true", help="skip the 1,000-node simulator run")
    args = parser.parse_args()
    lines = part_one(args.nodes, args.dimension)
    if not args.skip_large:
        lines += part_two(1000, 10_000)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
