"""Record-level DP: accuracy against epsilon, federated (distributed Skellam) beside central DP-SGD.

Run:  python benchmarks/bench_record_dp.py [--runs 5] [--out table.md] [--datasets digits,breast_cancer]
      [--nodes 5,20] [--epsilons 0.5,1,2,4,8,inf]

Each federated run is the record-level protocol's arithmetic exactly as the daemons run it, in one
process: the coordinator's plan (``plan_record_skellam``: noise for t - c honest survivors, the
integer scale, sampling rate q = expected batch / records), then every round each node's
``sampled_clipped_gradient_sum`` (Poisson sampling from the cryptographic generator, per-record
gradients clipped to C) and ``encode_gradient_sum`` (scale, stochastic rounding, its Skellam noise
share, mod 2^32); the uint32 sum over the nodes; the coordinator's ``decode_gradient_sum`` (range
check) and ``dpsgd_delta`` step. Only the pairwise masks are left out: they cancel exactly in the sum
(tests/property/ prove that), and the daemons' own end-to-end run is `securefed demo --epsilon E`.
Every node survives, so the noise is n / (t - c) times the calibrated minimum (as in the demo).

The ceiling is central DP-SGD on the pooled records at the same epsilon and delta: the same model,
clip, q, steps and learning rate, Gaussian noise calibrated with dp-accounting's PLD accountant (the
tightest standard accounting). Cells are mean ± sample standard deviation over ``--runs`` runs
(each run its own split, partition and noise).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

from securefed.demo import DP_SGD_LEARNING_RATE, RECORD_CLIP_NORM, RECORD_LEVEL_BATCH, RECORD_LEVEL_ROUNDS
from securefed.dp.accountant import calibrate_gaussian, skellam_epsilon
from securefed.dp.dpsgd import dpsgd_delta, sampled_clipped_gradient_sum
from securefed.dp.mechanism import plan_record_skellam
from securefed.dp.noise import NoiseSource
from securefed.learning.datasets import bundled_preprocessing, load_bundled, train_test_split_stratified
from securefed.learning.models import make_adapter
from securefed.learning.partition import partition
from securefed.secagg.bounds import default_colluders, minimum_safe_threshold

DELTA = 1e-5


def _data(dataset: str, nodes: int, seed: int):
    data = load_bundled(dataset, scaled=False)
    pre = bundled_preprocessing(dataset)
    split = train_test_split_stratified(data.X, data.y, 0.25, seed)
    X, Xt = pre.transform(split.X_train), pre.transform(split.X_test)
    parts = partition("iid", X, split.y_train, nodes, seed)
    return data, X, split.y_train, Xt, split.y_test, parts


def federated_run(dataset: str, nodes: int, epsilon: float, seed: int) -> tuple[float, float]:
    """(test accuracy, epsilon recomputed from the rounds' releases) of one record-level run."""
    data, X, y, Xt, yt, parts = _data(dataset, nodes, seed)
    adapter = make_adapter("sgd_logistic", X.shape[1], data.classes)
    total = len(y)
    batch = float(min(RECORD_LEVEL_BATCH, max(16, total // 5)))
    rounds, lr = RECORD_LEVEL_ROUNDS, DP_SGD_LEARNING_RATE["sgd_logistic"]
    model = adapter.initial_parameters()
    if math.isinf(epsilon):  # no DP: the same DP-SGD steps without noise
        source = NoiseSource()
        for _ in range(rounds):
            gradient_sum = sum(
                sampled_clipped_gradient_sum(adapter, model, X[idx], y[idx], RECORD_CLIP_NORM, batch / total, source)
                for idx in parts
            )
            model = model + dpsgd_delta(adapter, model, gradient_sum, batch, lr)
        return adapter.evaluate(model, Xt, yt).accuracy, math.inf
    threshold = minimum_safe_threshold(nodes, default_colluders(nodes))
    honest = threshold - default_colluders(nodes)
    plan = plan_record_skellam(epsilon, DELTA, rounds, RECORD_CLIP_NORM, adapter.parameter_count, nodes, honest, total, batch)
    sources = [NoiseSource() for _ in parts]
    for _ in range(rounds):
        summed = np.zeros(adapter.parameter_count, dtype=np.uint32)
        for idx, source in zip(parts, sources):
            local = sampled_clipped_gradient_sum(adapter, model, X[idx], y[idx], plan.clip_norm, plan.sampling_rate, source)
            summed += plan.encode_gradient_sum(local, source)  # uint32: wraps mod 2^32 like the secure sum
        noisy = plan.decode_gradient_sum(summed, nodes)
        model = model + dpsgd_delta(adapter, model, noisy, plan.expected_batch, lr)
    return adapter.evaluate(model, Xt, yt).accuracy, skellam_epsilon([plan.release] * rounds, DELTA)


def central_run(dataset: str, epsilon: float, seed: int) -> float:
    """Central DP-SGD on the pooled records: same model, clip, q, steps and step size; Gaussian noise (PLD)."""
    data, X, y, Xt, yt, _ = _data(dataset, 1, seed)
    adapter = make_adapter("sgd_logistic", X.shape[1], data.classes)
    total = len(y)
    batch = float(min(RECORD_LEVEL_BATCH, max(16, total // 5)))
    q, rounds, lr = batch / total, RECORD_LEVEL_ROUNDS, DP_SGD_LEARNING_RATE["sgd_logistic"]
    sigma = 0.0 if math.isinf(epsilon) else calibrate_gaussian(epsilon, rounds, DELTA, q, "pld")
    source = NoiseSource()
    model = adapter.initial_parameters()
    for _ in range(rounds):
        gradient_sum = sampled_clipped_gradient_sum(adapter, model, X, y, RECORD_CLIP_NORM, q, source)
        gradient_sum = gradient_sum + source.gaussian(sigma * RECORD_CLIP_NORM, adapter.parameter_count)
        model = model + dpsgd_delta(adapter, model, gradient_sum, batch, lr)
    return adapter.evaluate(model, Xt, yt).accuracy


def _cell(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--datasets", default="digits,breast_cancer")
    parser.add_argument("--nodes", default="5,20")
    parser.add_argument("--epsilons", default="0.5,1,2,4,8,inf")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    header = "| dataset | sites | " + " | ".join("ε = ∞" if math.isinf(e) else f"ε = {e:g}" for e in epsilons) + " |"
    lines = [header, "|---|---|" + "--:|" * len(epsilons)]
    started = time.monotonic()
    worst_epsilon: dict[float, float] = {}
    for dataset in args.datasets.split(","):
        central = [_cell([central_run(dataset, e, seed) for seed in range(args.runs)]) for e in epsilons]
        lines.append(f"| {dataset} | central DP-SGD (pooled) | " + " | ".join(central) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
        for nodes in (int(n) for n in args.nodes.split(",")):
            cells = []
            for e in epsilons:
                results = [federated_run(dataset, nodes, e, seed) for seed in range(args.runs)]
                cells.append(_cell([accuracy for accuracy, _ in results]))
                if not math.isinf(e):
                    worst_epsilon[e] = max(worst_epsilon.get(e, 0.0), max(spent for _, spent in results))
            lines.append(f"| {dataset} | {nodes} sites, record-level | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines += [
        "",
        "epsilon recomputed from each run's releases (largest over its runs): "
        + ", ".join(f"target {e:g} -> {spent:.4f}" for e, spent in sorted(worst_epsilon.items())),
        f"({args.runs} runs per cell, {RECORD_LEVEL_ROUNDS} DP-SGD steps, clip {RECORD_CLIP_NORM:g}, "
        f"delta {DELTA:g}; {time.monotonic() - started:.0f} s)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
