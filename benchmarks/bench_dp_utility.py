"""Accuracy against epsilon: `securefed demo` over real daemons, several runs per cell.

Run:  python benchmarks/bench_dp_utility.py [--runs 5] [--rounds 10] [--out table.md]

Each cell is the final test accuracy of `securefed demo --dataset D --nodes N --rounds R
[--epsilon E]` (coordinator and node processes on loopback, CURVE, secure aggregation on every
round), reported as mean ± sample standard deviation over ``--runs`` runs, with the epsilon every
run reported (composed from the recorded releases). The central baseline the demo prints beside
it is the same model trained centrally, non-privately. The demo's own settings apply: with
--epsilon, client-level DP (--privacy-unit site), 1 local epoch, clip norm 0.5 and noise sized
for t - c honest survivors. Record-level DP is measured by benchmarks/bench_record_dp.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELLS = [("digits", 5), ("digits", 20), ("breast_cancer", 5), ("breast_cancer", 20)]
EPSILONS = [1.0, 4.0, 8.0, None]


def run_demo(dataset: str, nodes: int, rounds: int, epsilon: float | None, folder: Path) -> dict:
    report = folder / f"{dataset}-{nodes}-{epsilon}-{time.monotonic_ns()}.json"
    command = [sys.executable, "-m", "securefed.cli", "demo", "--dataset", dataset, "--nodes", str(nodes),
               "--rounds", str(rounds), "--report", str(report)]  # fmt: skip
    if epsilon is not None:
        command += ["--epsilon", str(epsilon), "--privacy-unit", "site"]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epsilons", default=None, help="comma-separated, 'inf' for no DP (default 1,4,8,inf)")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of digits,breast_cancer (default both)")
    args = parser.parse_args()
    global EPSILONS, CELLS
    if args.datasets:
        CELLS = [cell for cell in CELLS if cell[0] in args.datasets.split(",")]
    if args.epsilons:
        EPSILONS = [None if e.strip() == "inf" else float(e) for e in args.epsilons.split(",")]
    lines = [
        "| dataset | nodes | " + " | ".join("ε = ∞ (no DP)" if e is None else f"ε = {e:g}" for e in EPSILONS) + " | central |",
        "|---|--:|" + "--:|" * (len(EPSILONS) + 1),
    ]
    spent: dict[float, set[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for dataset, nodes in CELLS:
            cells, central = [], []
            for epsilon in EPSILONS:
                accuracies = []
                for _ in range(args.runs):
                    report = run_demo(dataset, nodes, args.rounds, epsilon, Path(folder))
                    accuracies.append(report["final_accuracy"])
                    central.append(report["baseline_accuracy"])
                    if epsilon is not None:
                        spent.setdefault(epsilon, set()).add(f"{report['epsilon']:.3f}")
                mean = statistics.fmean(accuracies)
                sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
                cells.append(f"{mean:.3f} ± {sd:.3f}")
                print(f"{dataset} {nodes} nodes epsilon {epsilon}: {accuracies}", file=sys.stderr, flush=True)
            lines.append(f"| {dataset} | {nodes} | " + " | ".join(cells) + f" | {statistics.fmean(central):.3f} |")
    lines.append("")
    lines.append("epsilon reported per target: " + "; ".join(f"{e:g}: {', '.join(sorted(v))}" for e, v in sorted(spent.items())))
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
