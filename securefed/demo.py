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

Three kinds of task run this way:

- SGD models (``sgd_logistic``, ``mlp``): training rounds, optionally with
  distributed differential privacy (``--epsilon``);
- tree models (``random_forest``, ``gbdt``): a compute task, one secure
  aggregation per tree level (docs/trees.md); bins come from the same public
  bounds and the trees split the raw features. No DP for trees yet;
- ``--dataset diabetes`` (regression): an analytics task, a federated linear
  and ridge regression from secure sums of XᵀX, Xᵀy and yᵀy
  (docs/analytics.md), scored by held-out R². The task and every site declare
  a numeric target (``target = "numeric"``): the label column holds the disease
  progression score itself, not classes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from securefed.errors import InvalidParameter

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from securefed.localfed import LocalFederation

__all__ = ["TREE_MODELS", "TREE_OPTIONS", "run_demo"]

_OVERALL_TIMEOUT = 900.0
DP_CLIP_NORM = 0.5
#: record-level DP (DP-SGD across the sites): steps, expected records per step, per-record clip, step size
RECORD_LEVEL_ROUNDS = 150
RECORD_LEVEL_BATCH = 256
RECORD_CLIP_NORM = 1.0
DP_SGD_LEARNING_RATE = {"sgd_logistic": 2.0, "mlp": 0.5}
#: tree tasks: the model_options the demo declares (the seed comes from --seed); docs/trees.md "Demo"
TREE_MODELS = ("random_forest", "gbdt")
TREE_OPTIONS: dict[str, dict] = {
    "random_forest": {"n_trees": 50, "max_depth": 6, "n_bins": 32, "max_features": "sqrt"},
    "gbdt": {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.3, "n_bins": 32, "reg_lambda": 1.0},
}
#: the diabetes demo's ridge penalty (besides ordinary least squares), scikit-learn's Ridge(alpha=...)
RIDGE_ALPHA = 1.0
#: what --model may be for a regression dataset (sgd_logistic: the CLI's default, i.e. "not given")
_REGRESSION_MODELS = ("sgd_logistic", "linear_regression")
_DEADLINES = {"advertise": 20, "reveal": 20, "share": 20, "masked_input": 60, "consistency": 20, "unmask": 20}


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = min(width, round(width * done / total)) if total else width
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


def run_demo(args: argparse.Namespace) -> int:
    from securefed.learning.datasets import BUNDLED_DATASETS, REGRESSION_DATASETS
    from securefed.learning.models import DEFAULT_TRAINING

    if args.nodes < 3:
        raise InvalidParameter("--nodes must be at least 3 (secure aggregation needs a threshold of peers)")
    if args.epsilon is not None and not args.epsilon > 0:
        raise InvalidParameter("--epsilon must be positive")
    if not 0 < args.delta < 1:
        raise InvalidParameter("--delta must be in (0, 1)")
    if args.dataset not in BUNDLED_DATASETS + REGRESSION_DATASETS:
        raise InvalidParameter(
            f"--dataset must be one of {list(BUNDLED_DATASETS)} or, for regression, {list(REGRESSION_DATASETS)}"
        )
    if args.dataset in REGRESSION_DATASETS:
        if args.model not in _REGRESSION_MODELS:
            why = (
                "regression GBDT over the daemons is not available yet (node data files hold class labels)"
                if args.model == "gbdt"
                else f"{args.model} is a classifier"
            )
            raise InvalidParameter(
                f"--model {args.model}: {why}. --dataset {args.dataset} is a regression: leave --model out and the demo "
                "runs a federated linear regression over secure sums"
            )
        _compute_only_flags(args, "a regression (analytics) task")
        return _run_regression(args)
    if args.model in TREE_MODELS:
        _compute_only_flags(args, f"a {args.model} task")
        return _run_trees(args)
    if args.model not in DEFAULT_TRAINING:
        raise InvalidParameter(f"--model must be one of {sorted([*DEFAULT_TRAINING, *TREE_MODELS])}")
    return _run_training(args)


def _compute_only_flags(args: argparse.Namespace, what: str) -> None:
    """Refuse the SGD-only flags for a compute task, saying why."""
    if args.epsilon is not None:
        raise InvalidParameter(f"--epsilon: differential privacy is not available for {what} yet; run it without --epsilon")
    if args.rounds is not None:
        raise InvalidParameter(f"--rounds is for SGD training; {what} derives its secure aggregations from its parameters")


# --- running the daemons ------------------------------------------------------------------------


def _drive(
    federation: LocalFederation, names: list[str], workdir: Path, ready: Callable[[dict], bool], line: Callable[[dict], str]
) -> tuple[int, list[dict]]:
    """Start the coordinator and the nodes, print ``line(row)`` for each history row once ``ready(row)``,
    and stop everything when the coordinator exits; returns its exit code and the rows not yet printed."""
    started = time.monotonic()
    processes = [federation.start_coordinator()] + [federation.start_node(name) for name in names]
    coordinator = processes[0]
    shown = 0
    try:
        while True:
            history = _read_history(federation.state_path)
            while shown < len(history) and ready(history[shown]):
                print(line(history[shown]), flush=True)
                shown += 1
            if coordinator.poll() is not None:
                break
            if time.monotonic() - started > _OVERALL_TIMEOUT:
                raise InvalidParameter(f"demo did not finish in {_OVERALL_TIMEOUT:.0f} s; see logs in {workdir}")
            time.sleep(0.2)
    finally:
        _stop(processes)
    history = _read_history(federation.state_path)  # rows the coordinator wrote just before it exited
    while shown < len(history) and ready(history[shown]):
        print(line(history[shown]), flush=True)
        shown += 1
    return int(coordinator.returncode), history[shown:]


def _layout(
    args: argparse.Namespace,
    node_data: dict[str, tuple[np.ndarray, np.ndarray]],
    feature_names: list[str],
    task: dict,
    policy: dict,
    validation_fraction: float,
) -> tuple[Path, LocalFederation]:
    from securefed.localfed import LocalFederation

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="securefed-demo-"))
    federation = LocalFederation.create(
        workdir, node_data, feature_names, task, _DEADLINES, policy, validation_fraction=validation_fraction
    )
    return workdir, federation


def _finish(args: argparse.Namespace, report: dict, workdir: Path) -> None:
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.report}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def _failed(federation: LocalFederation, workdir: Path, returncode: int) -> InvalidParameter:
    print(federation.log("coordinator")[-3000:], file=sys.stderr)
    return InvalidParameter(f"the coordinator stopped early (exit {returncode}); logs are in {workdir}")


def _computation_outcome(federation: LocalFederation) -> tuple[dict | None, dict[str, np.ndarray] | None]:
    from securefed.federation.store import CoordinatorStore

    store = CoordinatorStore(federation.state_path, read_only=True)
    try:
        return store.computation_result(), store.computation_model()
    finally:
        store.close()


def _partition(args: argparse.Namespace, X_scaled: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    from securefed.learning.partition import partition

    options = {"alpha": args.alpha} if args.partition == "dirichlet" else {}
    # (kmeans partitions by feature similarity: cluster on the scaled features, as the sites would train on)
    return partition(args.partition, X_scaled, y, args.nodes, args.seed, **options)


def _step_line(expected: int, nodes: int) -> Callable[[dict], str]:
    def line(row: dict) -> str:
        return (
            f"aggregation {row['round']:>3} of at most {expected} [{_bar(row['round'], expected)}] "
            f"{row['participants']}/{nodes} nodes  ({row['duration']:.2f} s)"
        )

    return line


def _rows(history: list[dict]) -> list[dict]:
    return [
        {
            "round": row["round"],
            "accuracy": row["accuracy"],
            "loss": row["loss"],
            "participants": row["participants"],
            "epsilon": row["epsilon"],
            "seconds": row["duration"],
        }
        for row in history
    ]


# --- trees --------------------------------------------------------------------------------------


def _run_trees(args: argparse.Namespace) -> int:
    """A random forest or GBDT grown over secure sums of histograms, beside scikit-learn on the pooled data."""
    from securefed.learning.datasets import bundled_preprocessing, load_bundled, train_test_split_stratified
    from securefed.trees import TreeEnsemble

    dataset = load_bundled(args.dataset, scaled=False)
    preprocessing = bundled_preprocessing(args.dataset)  # public bounds: the bins' edges
    split = train_test_split_stratified(dataset.X, dataset.y, 0.25, args.seed)
    parts = _partition(args, preprocessing.transform(split.X_train), split.y_train)
    names = [f"site-{i + 1}" for i in range(args.nodes)]
    node_data = {name: (split.X_train[idx], split.y_train[idx]) for name, idx in zip(names, parts)}
    options = dict(TREE_OPTIONS[args.model])
    if args.model == "random_forest":
        options["seed"] = args.seed
    task = {
        "name": f"demo-{args.dataset}",
        "model": args.model,
        "model_options": options,
        "features": list(dataset.feature_names),
        "classes": list(dataset.classes),
        "min_nodes": args.nodes,
        "preprocessing": preprocessing.to_json(),
    }
    policy = {"allowed_models": list(TREE_MODELS)}
    workdir, federation = _layout(args, node_data, list(dataset.feature_names), task, policy, 0.0)
    expected = _expected_aggregations(federation)
    if args.model == "random_forest":
        units, unit = options["n_trees"], "tree"
        shape = f"{options['n_trees']} trees of depth <= {options['max_depth']}, max_features {options['max_features']}"
    else:
        units, unit = options["n_estimators"], "boosting round"
        shape = (
            f"{options['n_estimators']} boosting rounds of depth-{options['max_depth']} trees, "
            f"learning rate {options['learning_rate']:g}"
        )
    print(
        f"securefed demo: {args.nodes} nodes, {args.model} on {args.dataset} ({len(split.y_train)} training samples "
        f"split {args.partition}, {len(split.y_test)} held out): {shape}, {options['n_bins']} bins per feature; "
        f"secure aggregation of histograms on every tree level (at most {expected}), CURVE on {federation.endpoint}"
    )
    print(f"bins: equal-width between the public bounds declared in the task ({preprocessing.describe()}); raw features")
    print(f"keys, configs, data and logs in {workdir}")
    started = time.monotonic()
    returncode, _ = _drive(federation, names, workdir, lambda row: True, _step_line(expected, args.nodes))
    elapsed = time.monotonic() - started
    result, arrays = _computation_outcome(federation)
    if returncode != 0 or result is None or arrays is None:
        raise _failed(federation, workdir, returncode)
    history = _read_history(federation.state_path)
    model = TreeEnsemble.from_arrays(arrays)
    federated = float(np.mean(model.predict(split.X_test) == split.y_test))
    central_started = time.monotonic()
    baseline = _central_trees(args.model, options, args.seed).fit(split.X_train, split.y_train)
    central_seconds = time.monotonic() - central_started
    central = float(baseline.score(split.X_test, split.y_test))
    aggregations = int(result.get("aggregations", len(history)))
    print(
        f"\nfinal test accuracy: federated {federated:.4f}  |  scikit-learn {type(baseline).__name__} on the pooled "
        f"training data {central:.4f}  (federated − scikit-learn: {100 * (federated - central):+.1f} points)"
    )
    computing = _aggregating_seconds(history)
    print(
        f"{model.n_trees} trees from {aggregations} secure aggregations in {computing:.1f} s "
        f"({computing / units:.3f} s per {unit}; scikit-learn {central_seconds:.2f} s); "
        f"{elapsed:.1f} s in all, with starting {args.nodes + 1} processes"
    )
    report = {
        "dataset": args.dataset,
        "model": args.model,
        "model_options": options,
        "nodes": args.nodes,
        "partition": args.partition,
        "final_accuracy": federated,
        "baseline_accuracy": central,
        "baseline": type(baseline).__name__,
        "aggregations": aggregations,
        "trees": model.n_trees,
        "seconds": elapsed,
        "aggregation_seconds": computing,
        f"seconds_per_{unit.replace(' ', '_')}": computing / units,
        "baseline_seconds": central_seconds,
        "rounds": _rows(history),
    }
    _finish(args, report, workdir)
    return 0


def _expected_aggregations(federation: LocalFederation) -> int:
    """The coordinator's own bound on the task's secure aggregations (its derived ``rounds``)."""
    from coordinator.config import load_coordinator_config

    return int(load_coordinator_config(federation.coordinator_config).task.rounds)


def _central_trees(model: str, options: dict, seed: int) -> RandomForestClassifier | HistGradientBoostingClassifier:
    """scikit-learn's closest model with the same hyper-parameters, for the pooled-data baseline."""
    if model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=options["n_trees"], max_depth=options["max_depth"], max_features=options["max_features"],
            random_state=seed, n_jobs=1,
        )  # fmt: skip
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=options["n_estimators"], learning_rate=options["learning_rate"], max_depth=options["max_depth"],
        max_bins=min(255, options["n_bins"]), l2_regularization=options["reg_lambda"], min_samples_leaf=1,
        max_leaf_nodes=None, early_stopping=False, random_state=seed,
    )  # fmt: skip


# --- regression (analytics) ---------------------------------------------------------------------


def _run_regression(args: argparse.Namespace) -> int:
    """Linear and ridge regression from secure sums, scored by held-out R² beside scikit-learn."""
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split

    from securefed.learning.datasets import PUBLIC_BOUNDS, TARGET_BOUNDS, bundled_preprocessing, load_bundled

    if args.partition == "dirichlet":
        raise InvalidParameter("--partition dirichlet skews class labels; a regression target has none: use iid or kmeans")
    dataset = load_bundled(args.dataset, scaled=False)
    preprocessing = bundled_preprocessing(args.dataset)
    X_train, X_test, y_train, y_test = train_test_split(dataset.X, dataset.y, test_size=0.25, random_state=args.seed)
    parts = _partition(args, preprocessing.transform(X_train), y_train)
    names = [f"site-{i + 1}" for i in range(args.nodes)]
    node_data = {name: (X_train[idx], y_train[idx]) for name, idx in zip(names, parts)}
    low, high = PUBLIC_BOUNDS[args.dataset]
    y_low, y_high = TARGET_BOUNDS[args.dataset]
    base = {
        # the wrap bound: at most --nodes sites of at most every training record each (public figures)
        "max_nodes": args.nodes, "max_rows": len(y_train),
        "low": _per_feature(low, dataset.n_features), "high": _per_feature(high, dataset.n_features),
        "y_low": float(y_low), "y_high": float(y_high),
    }  # fmt: skip
    penalties = (0.0, RIDGE_ALPHA)
    task = {
        "name": f"demo-{args.dataset}",
        "model": "analytics",
        "features": list(dataset.feature_names),
        "target": "numeric",
        "min_nodes": args.nodes,
        "preprocessing": preprocessing.to_json(),
        "computations": [{"kind": "linear_regression", "params": {**base, "ridge": ridge}} for ridge in penalties],
    }
    policy = {"allowed_computations": ["linear_regression"], "min_records": 10}
    workdir, federation = _layout(args, node_data, list(dataset.feature_names), task, policy, 0.0)
    expected = _expected_aggregations(federation)
    print(
        f"securefed demo: {args.nodes} nodes, linear regression on {args.dataset} ({len(y_train)} training samples "
        f"split {args.partition}, {len(y_test)} held out): least squares and ridge (alpha {RIDGE_ALPHA:g}) from "
        f"secure sums of XᵀX, Xᵀy and yᵀy ({expected} secure aggregations), CURVE on {federation.endpoint}"
    )
    print(f"public bounds declared in the task: features {preprocessing.describe()}; numeric target {y_low}..{y_high}")
    print(f"keys, configs, data and logs in {workdir}")
    started = time.monotonic()
    returncode, _ = _drive(federation, names, workdir, lambda row: True, _step_line(expected, args.nodes))
    elapsed = time.monotonic() - started
    result, _ = _computation_outcome(federation)
    if returncode != 0 or result is None:
        raise _failed(federation, workdir, returncode)
    history = _read_history(federation.state_path)
    fits = []
    for ridge, fitted in zip(penalties, result["results"]):
        if fitted.get("coefficients") is None:
            raise InvalidParameter(f"the federated regression (ridge {ridge:g}) is rank deficient; logs are in {workdir}")
        coefficients = np.asarray(fitted["coefficients"], dtype=np.float64)
        predicted = fitted["intercept"] + X_test @ coefficients
        central = (LinearRegression() if ridge == 0 else Ridge(alpha=ridge)).fit(X_train, y_train)
        fits.append(
            {
                "ridge": ridge,
                "r2": float(r2_score(y_test, predicted)),
                "baseline_r2": float(r2_score(y_test, central.predict(X_test))),
                "r2_train": fitted.get("r2_train"),
                "baseline_r2_train": float(central.score(X_train, y_train)),
                "intercept": float(fitted["intercept"]),
                "coefficients": coefficients.tolist(),
                "max_coefficient_difference": float(np.max(np.abs(coefficients - central.coef_))),
                "count": fitted.get("count"),
            }
        )
    print()
    for fit in fits:
        name = "least squares    " if fit["ridge"] == 0 else f"ridge (alpha {fit['ridge']:g})"
        print(
            f"{name} test R²: federated {fit['r2']:.6f}  |  scikit-learn on the pooled training data "
            f"{fit['baseline_r2']:.6f}  (federated − scikit-learn: {fit['r2'] - fit['baseline_r2']:+.1e})"
        )
    aggregations = int(result.get("aggregations", len(history)))
    computing = _aggregating_seconds(history)
    print(
        f"{aggregations} secure aggregations in {computing:.1f} s; {elapsed:.1f} s in all, with starting {args.nodes + 1} processes"
    )
    report = {
        "dataset": args.dataset,
        "model": "linear_regression",
        "nodes": args.nodes,
        "partition": args.partition,
        "final_r2": fits[0]["r2"],
        "baseline_r2": fits[0]["baseline_r2"],
        "regressions": fits,
        "aggregations": aggregations,
        "seconds": elapsed,
        "aggregation_seconds": computing,
        "rounds": _rows(history),
    }
    _finish(args, report, workdir)
    return 0


def _per_feature(bound: float | tuple[float, ...], n_features: int) -> list[float]:
    """A public bound as one value per feature (a single number holds for every feature)."""
    return [bound] * n_features if isinstance(bound, (int, float)) else list(bound)


# --- SGD training -------------------------------------------------------------------------------


def _run_training(args: argparse.Namespace) -> int:
    from securefed.federation.store import CoordinatorStore
    from securefed.learning.data import save_csv
    from securefed.learning.datasets import bundled_preprocessing, load_bundled, train_test_split_stratified
    from securefed.learning.models import DEFAULT_TRAINING, make_adapter

    record_level = args.epsilon is not None and getattr(args, "privacy_unit", "record") == "record"
    if args.rounds is None:
        args.rounds = RECORD_LEVEL_ROUNDS if record_level else 10
    if args.rounds < 1:
        raise InvalidParameter("--rounds must be at least 1")
    dataset = load_bundled(args.dataset, scaled=False)  # raw features, as a site's CSV holds them
    preprocessing = bundled_preprocessing(args.dataset)  # public bounds, declared in the task
    split = train_test_split_stratified(dataset.X, dataset.y, 0.25, args.seed)
    parts = _partition(args, preprocessing.transform(split.X_train), split.y_train)
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
        total = len(split.y_train)
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
    workdir, federation = _layout(args, node_data, list(dataset.feature_names), task, policy, validation_fraction)
    if args.epsilon is not None:
        # The coordinator evaluates each (public, noised) model on held-out data it owns.
        save_csv(
            federation.coordinator_config.parent / "test.csv", split.X_test, split.y_test, list(dataset.feature_names), "label"
        )
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

    def line(row: dict) -> str:
        spent = "" if row["epsilon"] is None else f"  epsilon {row['epsilon']:.3f}"
        return (
            f"round {row['round']:>3}/{args.rounds} [{_bar(row['round'], args.rounds)}] "
            f"{row['participants']}/{args.nodes} nodes  accuracy {row['accuracy']:.4f}  "
            f"loss {row['loss']:.4f}{spent}  ({row['duration']:.2f} s)"
        )

    returncode, rest = _drive(federation, names, workdir, lambda row: row["accuracy"] is not None, line)
    history = _read_history(federation.state_path)
    if returncode != 0 or len(history) < args.rounds:
        raise _failed(federation, workdir, returncode)
    for row in rest:
        print(
            f"round {row['round']:>3}/{args.rounds} [{_bar(row['round'], args.rounds)}] {row['participants']}/{args.nodes} nodes"
        )

    store = CoordinatorStore(federation.state_path)
    latest = store.latest_model()
    store.close()
    if latest is None:
        raise _failed(federation, workdir, returncode)
    _, model, _ = latest
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
        "rounds": _rows(history),
    }
    _finish(args, report, workdir)
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
            "completed_at": r.completed_at,
        }
        for r in records
    ]


def _aggregating_seconds(history: list[dict]) -> float:
    """From the start of the first aggregation to the end of the last (the daemons' start-up left out)."""
    if not history:
        return 0.0
    return max(0.0, history[-1]["completed_at"] - (history[0]["completed_at"] - history[0]["duration"]))
