"""One training round over real daemons: secure aggregation vs the same round unmasked.

Run:  python benchmarks/bench_round.py [--nodes 10] [--hidden 1400] [--rounds 6]

Lays out a loopback federation (``securefed.localfed``) of ``--nodes`` node
processes and one coordinator process, CURVE on every socket, and trains an
MLP on digits whose hidden layer makes d ~ 100,000 parameters. The same task
runs twice: with secure aggregation (five stages, pairwise masks, Shamir
shares) and with masking switched off (``masking = false`` in the task and
``allow_unmasked_benchmark = true`` in every node's policy, a switch that
exists only for this measurement). Each round's duration is what the
coordinator records from sending ``RoundStart`` to holding the new model:
local training, encoding, all protocol stages and decoding. The secure and
unmasked tasks run alternately ``--repeats`` times, so changes in machine load
hit both; the first round of each task (process warm-up) is excluded and the
table shows the median of the rest.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import tempfile
from pathlib import Path

from securefed.learning.datasets import load_bundled, train_test_split_stratified
from securefed.learning.models import DEFAULT_TRAINING, make_adapter
from securefed.learning.partition import partition
from securefed.localfed import LocalFederation


def run_task(root: Path, nodes: int, hidden: int, rounds: int, masking: bool, epochs: int) -> list[float]:
    data = load_bundled("digits")
    split = train_test_split_stratified(data.X, data.y, 0.25, 0)
    parts = partition("iid", split.X_train, split.y_train, nodes, 0)
    names = [f"site-{i + 1}" for i in range(nodes)]
    node_data = {name: (split.X_train[idx], split.y_train[idx]) for name, idx in zip(names, parts)}
    task = {
        "name": f"bench-{'secure' if masking else 'plain'}",
        "model": "mlp",
        "model_options": {"hidden_layer_sizes": [hidden]},
        "features": data.n_features,
        "classes": list(data.classes),
        "rounds": rounds,
        "local_epochs": epochs,
        "learning_rate": DEFAULT_TRAINING["mlp"]["learning_rate"],
        "batch_size": DEFAULT_TRAINING["mlp"]["batch_size"],
        "min_nodes": nodes,
        "threshold": 0.6,
        "evaluate": False,
        "masking": masking,
    }
    policy = {"allow_unmasked_benchmark": True}
    federation = LocalFederation.create(root, node_data, list(data.feature_names), task, policy=policy)
    processes: list[subprocess.Popen] = [federation.start_node(name) for name in names]
    processes.insert(0, federation.start_coordinator())
    try:
        if processes[0].wait(timeout=900) != 0:
            raise SystemExit(f"coordinator failed:\n{federation.log('coordinator')[-2000:]}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait(timeout=10)
    db = sqlite3.connect(federation.state_path)
    rows = db.execute("SELECT round, duration, survivors FROM rounds ORDER BY round").fetchall()
    db.close()
    if len(rows) != rounds or any(len(json.loads(r[2])) != nodes for r in rows):
        raise SystemExit("a round lost participants; the comparison would be unfair")
    return [r[1] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=1400)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="secure/unmasked task pairs, run alternately")
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_TRAINING["mlp"]["epochs"], help="local epochs per round (default: the mlp default)"
    )
    args = parser.parse_args()
    parameters = make_adapter("mlp", 64, range(10), hidden_layer_sizes=(args.hidden,)).parameter_count
    collected: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="securefed-bench-") as folder:
        # Alternate the two variants so that drift in machine load hits both alike.
        for repeat in range(args.repeats):
            for masking in (True, False):
                durations = run_task(
                    Path(folder) / f"{masking}-{repeat}", args.nodes, args.hidden, args.rounds, masking, args.epochs
                )
                collected[masking].extend(durations[1:])
    results = {masking: (statistics.median(values), values, 0.0) for masking, values in collected.items()}
    secure, plain = results[True][0], results[False][0]
    print(
        f"{args.nodes} nodes, mlp with {parameters:,} parameters, {args.epochs} local epochs, "
        f"{args.repeats} x {args.rounds} rounds per variant "
        "(first round of each task excluded)"
    )
    print("| round | median s | all rounds s |")
    print("|---|--:|---|")
    for label, masking in (("secure aggregation", True), ("unmasked (benchmark only)", False)):
        median, durations, _ = results[masking]
        print(f"| {label} | {median:.3f} | {', '.join(f'{d:.3f}' for d in durations)} |")
    print(f"ratio secure / unmasked: {secure / plain:.2f}x")


if __name__ == "__main__":
    main()
