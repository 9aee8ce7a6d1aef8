"""Federated histogram trees against scikit-learn on the pooled data.

Run:  python benchmarks/bench_trees.py [--seeds N] [--nodes K] [--extended]

For each seed: a stratified 70/30 train/test split of the raw features, the
training rows dealt IID to K nodes (default 5), bins from the dataset's public
bounds (``securefed.learning.datasets.bundled_preprocessing``: the published
per-feature min/max, never statistics of the data).

- random forest (iris; with --extended also wine and digits): 50 trees,
  max_depth 6, max_features sqrt, Poisson bootstrap at each node, Gini, 64
  bins; against ``RandomForestClassifier(n_estimators=50, max_depth=6,
  max_features="sqrt", bootstrap=True)`` on the pooled training rows.
- gradient boosting (breast_cancer; with --extended also wine, softmax): 100
  rounds, learning rate 0.1, max_depth 3, lambda 0, min_samples_leaf 20, 255
  bins; against ``HistGradientBoostingClassifier(max_iter=100,
  learning_rate=0.1, max_depth=3, max_leaf_nodes=None, max_bins=255,
  min_samples_leaf=20, l2_regularization=0, early_stopping=False)``.

The federated side is the real node workers and coordinator builders of
``securefed.trees``; secure aggregation is simulated by adding the nodes' uint32
vectors mod 2^32 (its masks cancel exactly, so the sum is what the
coordinator would learn), and every request goes through its JSON form. Wall
time covers all nodes' work, the sums and the coordinator (one process, so
nodes run one after another), not the network or the masking.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from securefed.learning.datasets import bundled_preprocessing, load_bundled, train_test_split_stratified
from securefed.learning.partition import iid
from securefed.trees import Bins, BoostingBuilder, BoostingParams, BoostingWorker, ForestBuilder, ForestParams, ForestWorker
from securefed.trees.driver import Driver
from securefed.trees.histograms import secure_sum
from securefed.trees.model import TreeEnsemble

FOREST = {"n_trees": 50, "max_depth": 6, "max_features": "sqrt", "n_bins": 64}
GBDT = {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3, "min_samples_leaf": 20, "n_bins": 255}


@dataclass
class Run:
    accuracy: float
    reference: float
    seconds: float
    reference_seconds: float
    aggregations: int
    trees: int
    largest_vector: int
    levels: int


def drive(driver: Driver, workers: list) -> tuple[TreeEnsemble, int]:
    """Run to the model; return it and the largest summed vector (entries)."""
    request, largest = driver.request(), 0
    while True:
        wire = json.loads(json.dumps(request.to_json()))
        vectors = [worker.compute(wire) for worker in workers]
        largest = max(largest, vectors[0].shape[0])
        outcome = driver.receive(secure_sum(vectors))
        if isinstance(outcome, TreeEnsemble):
            return outcome, largest
        request = outcome


def forest_run(name: str, seed: int, nodes: int) -> Run:
    data = load_bundled(name, scaled=False)
    split = train_test_split_stratified(data.X, data.y, 0.3, seed)
    bins = Bins.from_preprocessing(bundled_preprocessing(name), FOREST["n_bins"])
    params = ForestParams(
        bins=bins, n_classes=len(data.classes), n_trees=FOREST["n_trees"], max_depth=FOREST["max_depth"],
        max_features=FOREST["max_features"], bootstrap=True, seed=seed,
    )  # fmt: skip
    start = time.perf_counter()
    workers = [
        ForestWorker(params, split.X_train[part], split.y_train[part], rng=np.random.default_rng([seed, k]))
        for k, part in enumerate(iid(split.y_train.shape[0], nodes, seed))
    ]
    builder = ForestBuilder(params)
    model, largest = drive(builder, workers)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(model.predict(split.X_test) == split.y_test))
    start = time.perf_counter()
    reference = RandomForestClassifier(
        n_estimators=FOREST["n_trees"], max_depth=FOREST["max_depth"], max_features="sqrt", bootstrap=True, random_state=seed
    ).fit(split.X_train, split.y_train)
    reference_seconds = time.perf_counter() - start
    return Run(
        accuracy, float(reference.score(split.X_test, split.y_test)), seconds, reference_seconds,
        builder.aggregations, model.n_trees, largest, builder.aggregations,
    )  # fmt: skip


def gbdt_run(name: str, seed: int, nodes: int) -> Run:
    data = load_bundled(name, scaled=False)
    split = train_test_split_stratified(data.X, data.y, 0.3, seed)
    bins = Bins.from_preprocessing(bundled_preprocessing(name), GBDT["n_bins"])
    loss = "logistic" if len(data.classes) == 2 else "softmax"
    params = BoostingParams(
        bins=bins, loss=loss, n_classes=len(data.classes), n_estimators=GBDT["n_estimators"],
        learning_rate=GBDT["learning_rate"], max_depth=GBDT["max_depth"], reg_lambda=0.0,
        min_samples_leaf=GBDT["min_samples_leaf"],
    )  # fmt: skip
    start = time.perf_counter()
    workers = [
        BoostingWorker(params, split.X_train[part], split.y_train[part]) for part in iid(split.y_train.shape[0], nodes, seed)
    ]
    builder = BoostingBuilder(params)
    model, largest = drive(builder, workers)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(model.predict(split.X_test) == split.y_test))
    start = time.perf_counter()
    reference = HistGradientBoostingClassifier(
        max_iter=GBDT["n_estimators"], learning_rate=GBDT["learning_rate"], max_depth=GBDT["max_depth"],
        max_leaf_nodes=None, max_bins=GBDT["n_bins"], min_samples_leaf=GBDT["min_samples_leaf"],
        l2_regularization=0.0, early_stopping=False, random_state=seed,
    ).fit(split.X_train, split.y_train)  # fmt: skip
    reference_seconds = time.perf_counter() - start
    return Run(
        accuracy, float(reference.score(split.X_test, split.y_test)), seconds, reference_seconds,
        builder.aggregations, model.n_trees, largest, builder.aggregations - 1,
    )  # fmt: skip


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} ± {100 * sd:3.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--extended", action="store_true", help="also wine and digits")
    args = parser.parse_args()
    cases = [("random forest", "iris", forest_run), ("GBDT (logistic)", "breast_cancer", gbdt_run)]
    if args.extended:
        cases += [
            ("random forest", "wine", forest_run),
            ("random forest", "digits", forest_run),
            ("GBDT (softmax)", "wine", gbdt_run),
        ]
    print(f"python {platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}, "
          f"{args.nodes} nodes, {args.seeds} seeds")  # fmt: skip
    print(f"forest: {FOREST}; gbdt: {GBDT}\n")
    header = (
        "| model | dataset | federated acc % | sklearn pooled acc % | diff (pts) | secure aggs per model "
        "| per tree | largest vector | federated s | per tree ms | sklearn s |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    worst = 0.0
    for label, name, fn in cases:
        runs = [fn(name, seed, args.nodes) for seed in range(args.seeds)]
        fed = [r.accuracy for r in runs]
        ref = [r.reference for r in runs]
        diff = 100 * (statistics.mean(fed) - statistics.mean(ref))
        worst = min(worst, diff)
        aggs = statistics.mean(r.aggregations for r in runs)
        trees = runs[0].trees
        per_tree = (
            f"{aggs:.1f} shared by all {trees}"
            if fn is forest_run
            else f"{statistics.mean(r.levels for r in runs) / trees:.2f} (+1 base)"
        )
        seconds = statistics.mean(r.seconds for r in runs)
        print(
            f"| {label} | {name} | {spread(fed)} | {spread(ref)} | {diff:+.1f} | {aggs:.1f} | {per_tree} "
            f"| {max(r.largest_vector for r in runs):,} | {seconds:.2f} | {1000 * seconds / trees:.1f} "
            f"| {statistics.mean(r.reference_seconds for r in runs):.2f} |"
        )
    print(f"\nlargest shortfall against scikit-learn: {-worst:.1f} points (target: within 2)")
    return 0 if worst > -2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
