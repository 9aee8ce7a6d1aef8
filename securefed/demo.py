"""``securefed demo``: a real federation on one machine, from nothing, in one command.

Generates keys in a temporary folder, splits a bundled scikit-learn dataset
across ``--nodes`` sites, starts one coordinator process and one process per
node (CURVE-encrypted ZeroMQ on loopback, secure aggregation on every round),
shows a line per round as it completes, and ends with the federated model's
test accuracy beside a centrally trained baseline of the same model.

The sites' CSV files hold the dataset's *raw* features, as a real site's
would. The task declares the scaling every node applies ([task.preprocessing]:
min-max with public per-feature bounds, see
:func:`securefed.learning.datasets.bundled_preprocessing`), and names the
features, so each node matches its columns by name; nothing is computed from
data pooled across the sites.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from securefed.errors import InvalidParameter

__all__ = ["run_demo"]

_OVERALL_TIMEOUT = 900.0
DP_CLIP_NORM = 0.5
#: record-level DP (DP-SGD across the sites): steps, expected records per step, per-record clip, step size
RECORD_LEVEL_ROUNDS = 150
RECORD_LEVEL_BATCH = 256
RECORD_CLIP_NORM = 1.0
DP_SGD_LEARNING_RATE = {"sgd_logistic": 2.0, "mlp": 0.5}


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "#" * filled + "-" * (width - filled)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_demo(args) -> int:
    from securefed.federation.store import CoordinatorStore
    from securefed.learning.data import save_csv
    from securefed.learning.datasets import bundled_preprocessing, load_bundled, train_test_split_stratified
    from securefed.learning.models import DEFAULT_TRAINING, make_adapter
    from securefed.learning.partition import partition
    from securefed.localfed import LocalFederation

    if args.nodes < 3:
        raise InvalidParameter("--nodes must be at least 3 (secure aggregation needs a threshold of peers)")
    record_level = args.epsilon is not None and getattr(args, "privacy_unit", "record") == "record"
    if args.rounds is None:
        args.rounds = RECORD_LEVEL_ROUNDS if record_level else 10
    if args.rounds < 1:
        raise InvalidParameter("--rounds must be at least 1")
    if args.epsilon is not None and not args.epsilon > 0:
        raise InvalidParameter("--epsilon must be positive")
    if not 0 < args.delta < 1:
        raise InvalidParameter("--delta must be in (0, 1)")
    if args.model not in DEFAULT_TRAINING:
        raise InvalidParameter(f"--model must be one of {sorted(DEFAULT_TRAINING)}")
    dataset = load_bundled(args.dataset, scaled=False)  # raw features, as a site's CSV holds them
    preprocessing = bundled_preprocessing(args.dataset)  # public bounds, declared in the task
    split = train_test_split_stratified(dataset.X, dataset.y, 0.25, args.seed)
    options = {"alpha": args.alpha} if args.partition == "dirichlet" else {}
    # (kmeans partitions by feature similarity: cluster on the scaled features, as the sites would train on)
    parts = partition(args.partition, preprocessing.transform(split.X_train), split.y_train, args.nodes, args.seed, **options)
    names = [f"site-{i + 1}" for i in range(args.nodes)]
    node_data = {name: (split.X_train[idx], split.y_train[idx]) for name, idx in zip(names, parts)}
    training = DEFAULT_TRAINING[args.model]
    task = {
        "name": f"demo-{args.dataset}",
        "model": args.model,
        "features": list(dataset.feature_names),
        "classes": list(dataset.classes),
        "rounds": args.rounds,
        "local_epochs": training["epochs"],
        "learning_rate": training["learning_rate"],
        "batch_size": training["batch_size"],
        "min_nodes": args.nodes,
        "clip_norm": 100.0,
        "preprocessing": preprocessing.to_json(),
    }
    policy: dict = {}
    validation_fraction = 0.2
    if record_level:
        # Record-level DP: each round is one DP-SGD step over records Poisson-sampled at every site. The
        # record count is declared in the task (public); the coordinator evaluates on held-out data it owns,
        # so the sites keep no validation split and sample from all their records.
        total = int(len(split.y_train))
        batch = float(min(RECORD_LEVEL_BATCH, max(16, total // 5)))
        task.update({"evaluate": False, "evaluation_data": "test.csv", "learning_rate": DP_SGD_LEARNING_RATE[args.model]})
        task["dp"] = {
            "epsilon": args.epsilon, "delta": args.delta, "clip_norm": RECORD_CLIP_NORM,
            "unit": "record", "expected_batch": batch, "total_records": total,
        }  # fmt: skip
        policy = {"max_epsilon": args.epsilon, "max_epsilon_total": args.epsilon, "delta": args.delta, "privacy_unit": "record"}
        validation_fraction = 0.0
    elif args.epsilon is not None:
        # Client-level DP: one local epoch and a tight clip keep the signal-to-noise ratio workable.
        task.update({"local_epochs": 1, "evaluate": False, "evaluation_data": "test.csv"})
        task["dp"] = {"epsilon": args.epsilon, "delta": args.delta, "clip_norm": DP_CLIP_NORM}
        policy = {"max_epsilon": args.epsilon, "max_epsilon_total": args.epsilon, "delta": args.delta}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="securefed-demo-"))
    keep = args.workdir is not None
    deadlines = {"advertise": 20, "reveal": 20, "share": 20, "masked_input": 60, "consistency": 20, "unmask": 20}
    federation = LocalFederation.create(
        workdir, node_data, list(dataset.feature_names), task, deadlines, policy, validation_fraction=validation_fraction
    )
    if args.epsilon is not None:
        # The coordinator evaluates each (public, noised) model on held-out data it owns.
        save_csv(federation.coordinator_config.parent / "test.csv", split.X_test, split.y_test, list(dataset.feature_names), "label")
    print(
        f"securefed demo: {args.nodes} nodes, {args.rounds} rounds, {args.dataset} "
        f"({len(split.y_train)} training samples split {args.partition}, {len(split.y_test)} held out), "
        f"model {args.model}, secure aggregation on, CURVE on {federation.endpoint}"
    )
    print(f"preprocessing (declared in the task, applied by every node): {preprocessing.describe()}")
    if record_level:
        dp = task["dp"]
        print(
            f"differential privacy for every record: DP-SGD across the sites, epsilon <= {args.epsilon:g} at delta "
            f"{args.delta:g} over {args.rounds} steps; each step every site samples each of its records with probability "
            f"{dp['expected_batch'] / dp['total_records']:.3f} (expected batch {dp['expected_batch']:g} of "
            f"{dp['total_records']}), clips each record's gradient to {RECORD_CLIP_NORM:g} and adds its share of "
            "Skellam noise (use --privacy-unit site for client-level DP)"
        )
    elif args.epsilon is not None:
        print(
            f"differential privacy: distributed Skellam noise added by the nodes, epsilon <= {args.epsilon:g} "
            f"over {args.rounds} rounds at delta {args.delta:g} (client-level, clip norm {DP_CLIP_NORM:g})"
        )
    print(f"keys, configs, data and logs in {workdir}")
    started = time.monotonic()
    processes = [federation.start_coordinator()] + [federation.start_node(name) for name in names]
    coordinator = processes[0]
    shown = 0
    history: list[dict] = []
    try:
        while True:
            history = _read_history(federation.state_path)
            while shown < len(history) and history[shown]["accuracy"] is not None:
                row = history[shown]
                spent = "" if row["epsilon"] is None else f"  epsilon {row['epsilon']:.3f}"
                print(
                    f"round {row['round']:>3}/{args.rounds} [{_bar(row['round'], args.rounds)}] "
                    f"{row['participants']}/{args.nodes} nodes  accuracy {row['accuracy']:.4f}  "
                    f"loss {row['loss']:.4f}{spent}  ({row['duration']:.2f} s)",
                    flush=True,
                )
                shown += 1
            if coordinator.poll() is not None:
                break
            if time.monotonic() - started > _OVERALL_TIMEOUT:
                raise InvalidParameter(f"demo did not finish in {_OVERALL_TIMEOUT:.0f} s; see logs in {workdir}")
            time.sleep(0.2)
    finally:
        _stop(processes)
    history = _read_history(federation.state_path)
    if coordinator.returncode != 0 or len(history) < args.rounds:
        print(federation.log("coordinator")[-3000:], file=sys.stderr)
        raise InvalidParameter(f"the coordinator stopped early (exit {coordinator.returncode}); logs are in {workdir}")
    for row in history[shown:]:
        print(f"round {row['round']:>3}/{args.rounds} [{_bar(row['round'], args.rounds)}] {row['participants']}/{args.nodes} nodes")

    store = CoordinatorStore(federation.state_path)
    _, model, _ = store.latest_model()
    store.close()
    adapter = make_adapter(args.model, dataset.n_features, dataset.classes)
    X_train, X_test = preprocessing.transform(split.X_train), preprocessing.transform(split.X_test)
    federated = adapter.evaluate(model, X_test, split.y_test).accuracy
    central_params = adapter.fit_local(
        adapter.initial_parameters(args.seed),
        X_train,
        split.y_train,
        epochs=min(task["local_epochs"] * args.rounds, training["epochs"] * 10),  # the non-private reference
        learning_rate=training["learning_rate"],
        batch_size=training["batch_size"],
        seed=args.seed,
    )
    baseline = adapter.evaluate(central_params, X_test, split.y_test).accuracy
    elapsed = time.monotonic() - started
    epsilon = history[-1]["epsilon"] if history else None
    if epsilon is not None:
        print(f"\nprivacy: epsilon spent {epsilon:.3f} of {args.epsilon:g} at delta {args.delta:g} over {len(history)} rounds")
    print(
        f"\nfinal test accuracy: federated {federated:.4f}  |  central baseline {baseline:.4f}  "
        f"(difference {100 * (baseline - federated):+.1f} points); {elapsed:.1f} s"
    )
    report = {
        "final_accuracy": federated,
        "baseline_accuracy": baseline,
        "epsilon": epsilon,
        "delta": args.delta if args.epsilon is not None else None,
        "privacy_unit": (args.privacy_unit if args.epsilon is not None else None),
        "nodes": args.nodes,
        "dataset": args.dataset,
        "model": args.model,
        "partition": args.partition,
        "seconds": elapsed,
        "rounds": [
            {
                "round": row["round"],
                "accuracy": row["accuracy"],
                "loss": row["loss"],
                "participants": row["participants"],
                "epsilon": row["epsilon"],
                "seconds": row["duration"],
            }
            for row in history
        ],
    }
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.report}")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _read_history(path: Path) -> list[dict]:
    """The coordinator's round history so far (read-only, beside the running daemon); [] until it exists."""
    from securefed.errors import StorageError
    from securefed.federation.store import CoordinatorStore

    if not path.exists():
        return []
    try:
        store = CoordinatorStore(path, read_only=True)
        try:
            records = store.rounds()
        finally:
            store.close()
    except StorageError:  # the daemon is creating or writing it right now: ask again on the next turn
        return []
    return [
        {
            "round": r.round,
            "participants": len(r.survivors),
            "accuracy": r.accuracy,
            "loss": r.loss,
            "epsilon": r.epsilon,
            "duration": r.duration,
        }
        for r in records
    ]
