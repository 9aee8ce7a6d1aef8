"""Trees over the real daemons: secure aggregations and wall time per tree and per forest.

Run:  python benchmarks/bench_trees_daemons.py [--seeds N] [--nodes K] [--out FILE]

For each seed and each case, ``securefed demo --report`` runs a whole federation on this machine
(one coordinator and K node processes, CURVE ZeroMQ on loopback, secure aggregation with masks on
every step) and this script reads its JSON summary:

- random forest on iris (the demo's 50 trees, depth 6, 32 bins);
- GBDT on breast_cancer (the demo's 30 rounds, depth 3, learning rate 0.3, 32 bins).

Reported: federated and scikit-learn test accuracy (scikit-learn on the pooled training rows, same
hyper-parameters), secure aggregations per model, seconds spent aggregating (first step's start to
last step's end, read from the store), per tree (forest) or per boosting round (GBDT), and the
whole demo including starting the processes. Figures come from one run of this script; they are
written to docs/trees.md by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = (("random_forest", "iris"), ("gbdt", "breast_cancer"))


def run_demo(model: str, dataset: str, nodes: int, seed: int, folder: Path) -> dict:
    report = folder / f"{model}-{dataset}-{seed}.json"
    command = [sys.executable, "-m", "securefed.cli", "demo", "--model", model, "--dataset", dataset]
    command += ["--nodes", str(nodes), "--seed", str(seed), "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"demo failed ({' '.join(command)}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(report.read_text())


def _pick(summary: dict, *keys: str) -> float:
    for key in keys:
        if key in summary and summary[key] is not None:
            return float(summary[key])
    raise SystemExit(f"the demo's report lacks {keys}: {sorted(summary)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, dataset in CASES:
            runs = [run_demo(model, dataset, args.nodes, seed, Path(tmp)) for seed in range(args.seeds)]
            rows.append((model, dataset, runs))
    table = [
        "| model | dataset | federated acc % | scikit-learn acc % | secure aggregations | aggregating s | per tree or round s | whole demo s |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    out = []
    for model, dataset, runs in rows:
        fed = [100 * _pick(r, "final_accuracy") for r in runs]
        central = [100 * _pick(r, "baseline_accuracy") for r in runs]
        aggs = [_pick(r, "aggregations") for r in runs]
        agg_s = [_pick(r, "aggregation_seconds") for r in runs]
        unit = [_pick(r, "seconds_per_tree", "seconds_per_boosting_round") for r in runs]
        whole = [_pick(r, "seconds") for r in runs]
        sd = statistics.stdev if len(runs) > 1 else (lambda _values: 0.0)
        table.append(
            f"| {model} | {dataset} | {statistics.mean(fed):.1f} ± {sd(fed):.1f} | {statistics.mean(central):.1f} ± {sd(central):.1f} "
            f"| {statistics.mean(aggs):.0f} | {statistics.mean(agg_s):.2f} | {statistics.mean(unit):.3f} | {statistics.mean(whole):.1f} |"
        )
        out.append({"model": model, "dataset": dataset, "runs": runs})
    print(f"{args.nodes} nodes, seeds 0..{args.seeds - 1}, real daemons on this machine")
    print("\n".join(table))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
