"""Federated analytics over secure sums against numpy / scikit-learn on the pooled data.

Run:  python benchmarks/bench_analytics.py [--nodes 5] [--seed 0] [--plain] [--out table.md]

Every task runs through ``securefed.analytics``: each of ``--nodes`` sites (a
random, seeded split of the dataset) answers every request with its encoded
vector, the vectors go through the real secure-aggregation state machines in
memory (``securefed.secagg.simulate``, threshold n // 2 + 1; ``--plain`` uses
the bare modular sum instead, which is what secure aggregation reveals), and
the coordinator's driver finishes the result. References are numpy and
scikit-learn on the pooled data clipped to the same declared bounds.

Declared public bounds: the bundled datasets' ``PUBLIC_BOUNDS`` on the raw
features (the published Min/Max of scikit-learn's DESCR; digits 0..16);
diabetes' features are pre-scaled (mean 0, sum of squares 1 per column), so
they are declared [-0.2, 0.2] (checked: the largest |x| is printed), the target
[0, 400]. Cohort: 5 nodes (``--nodes``) x 1000 rows (``max_rows``), hence 18
fractional bits. Quantiles: levels 0.1, 0.25, 0.5, 0.75, 0.9 at a lattice of
1/1000 of each feature's range, 64 bins per round. k-means: k = the number of
classes, initial centres the per-feature (i + 0.5)/k secure quantiles (public:
computed through secure aggregation too, and counted), the same centres given to
``sklearn.cluster.KMeans(init=..., n_init=1)``. Regression (diabetes): a 75/25
held-out split, R² on the held-out part of the federated fit against
``LinearRegression`` and ``Ridge(alpha=1)`` fitted on the pooled training part.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securefed.analytics import driver_for, modular_sum, run_local
from securefed.learning.datasets import PUBLIC_BOUNDS, load_bundled
from securefed.secagg.simulate import simulate

MAX_ROWS = 1000
LEVELS = [0.1, 0.25, 0.5, 0.75, 0.9]
DATASETS = ("iris", "wine", "breast_cancer", "digits")


def secure_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """The real protocol in memory: 5 sites, threshold n // 2 + 1, no dropouts."""
    return simulate(vectors, threshold=len(vectors) // 2 + 1).sum


def split(X: np.ndarray, y: np.ndarray | None, nodes: int, seed: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    order = np.random.default_rng(seed).permutation(X.shape[0])
    return [(X[part], None if y is None else y[part]) for part in np.array_split(order, nodes)]


def bounds_of(name: str, d: int) -> tuple[np.ndarray, np.ndarray]:
    low, high = PUBLIC_BOUNDS[name]
    return np.broadcast_to(np.asarray(low, dtype=float), d).copy(), np.broadcast_to(np.asarray(high, dtype=float), d).copy()


class Bench:
    def __init__(self, nodes: int, seed: int, plain: bool) -> None:
        self.nodes, self.seed = nodes, seed
        self.aggregate = modular_sum if plain else secure_sum
        self.rows: list[tuple[str, ...]] = []

    def run(self, kind: str, spec: dict, sites: list) -> tuple[dict, float]:
        start = time.perf_counter()
        result = run_local(driver_for(kind, spec), sites, aggregate=self.aggregate)
        return result, time.perf_counter() - start

    def add(self, computation: str, dataset: str, metric: str, value: str, ratio: str, aggregations: int, seconds: float) -> None:
        self.rows.append((computation, dataset, metric, value, ratio, str(aggregations), f"{seconds:.2f}"))

    def dataset(self, name: str) -> None:
        data = load_bundled(name, scaled=False)
        low, high = bounds_of(name, data.n_features)
        sites = split(data.X, None, self.nodes, self.seed)
        pooled = np.clip(data.X, low, high)
        base = {"max_nodes": self.nodes, "max_rows": MAX_ROWS, "low": low.tolist(), "high": high.tolist()}
        span = high - low

        result, seconds = self.run("mean", base, sites)
        err = np.abs(np.asarray(result["mean"]) - pooled.mean(axis=0))
        self.add("mean", name, "max abs error (max rel. to range)", f"{err.max():.2e} ({(err / span).max():.1e})",
                 f"{(err / np.asarray(result['error_bound']['mean'])).max():.2f}", result["aggregations"], seconds)  # fmt: skip

        result, seconds = self.run("variance", base, sites)
        err = np.abs(np.asarray(result["variance"]) - pooled.var(axis=0, ddof=1))
        self.add("variance", name, "max abs error (max rel. to range²)", f"{err.max():.2e} ({(err / span**2).max():.1e})",
                 f"{(err / np.asarray(result['error_bound']['variance'])).max():.2f}", result["aggregations"], seconds)  # fmt: skip

        result, seconds = self.run("correlation", base, sites)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # digits has constant pixels: numpy gives nan
            expected = np.corrcoef(pooled.T)
        got = np.array([[np.nan if v is None else v for v in row] for row in result["correlation"]])
        bound = np.array([[np.nan if v is None else v for v in row] for row in result["error_bound"]["correlation"]])
        both = np.isfinite(got) & np.isfinite(expected) & ~np.eye(data.n_features, dtype=bool)  # the diagonal is 1 by definition
        err = np.abs(got - expected)[both]
        undetermined = int(np.sum(~np.isfinite(got)))
        note = f" ({undetermined} entries of constant features null, numpy nan)" if undetermined else ""
        ratio = (err / bound[both]).max()
        self.add("correlation", name, "max abs error" + note, f"{err.max():.2e}", f"{ratio:.2f}", result["aggregations"], seconds)

        spec = {**base, "resolution": (span / 1000).tolist(), "quantiles": LEVELS, "bins_per_round": 64}
        result, seconds = self.run("quantiles", spec, sites)
        expected = np.quantile(pooled, LEVELS, axis=0).T
        cell = np.asarray(result["lattice_cell"])[:, None]
        bins = np.abs(np.asarray(result["quantiles"]) - expected) / cell
        self.add("quantiles", name, "max error in lattice cells (1/1000 of range)", f"{bins.max():.2f}",
                 f"{(bins / 0.5).max():.2f}", result["aggregations"], seconds)  # fmt: skip

        k = len(data.classes)
        init_spec = {**base, "resolution": (span / 1000).tolist(), "quantiles": [(i + 0.5) / k for i in range(k)]}
        start = time.perf_counter()
        init_result = run_local(driver_for("quantiles", init_spec), sites, aggregate=self.aggregate)
        init = np.asarray(init_result["quantiles"]).T  # k centres x d features
        result = run_local(driver_for("kmeans", {**base, "centres": init.tolist()}), sites, aggregate=self.aggregate)
        seconds = time.perf_counter() - start
        reference = KMeans(k, init=init, n_init=1, algorithm="lloyd").fit(pooled)
        best = KMeans(k, n_init=10, random_state=self.seed).fit(pooled)
        self.add("kmeans", name, f"inertia / sklearn same init (/ k-means++ n_init=10: {result['inertia'] / best.inertia_:.3f})",
                 f"{result['inertia'] / reference.inertia_:.4f}", "-", init_result["aggregations"] + result["aggregations"], seconds)  # fmt: skip

    def diabetes(self) -> None:
        bunch = load_diabetes()
        X, y = bunch.data, bunch.target
        largest = float(np.abs(X).max())
        if largest > 0.2 or y.min() < 0 or y.max() > 400:
            raise SystemExit(f"declared bounds do not hold: max |x| {largest}, y in [{y.min()}, {y.max()}]")
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=self.seed)
        sites = split(X_train, y_train, self.nodes, self.seed)
        d = X.shape[1]
        base = {
            "max_nodes": self.nodes,
            "max_rows": MAX_ROWS,
            "low": [-0.2] * d,
            "high": [0.2] * d,
            "y_low": 0.0,
            "y_high": 400.0,
        }
        for ridge, model in ((0.0, LinearRegression()), (1.0, Ridge(alpha=1.0))):
            result, seconds = self.run("linear_regression", {**base, "ridge": ridge}, sites)
            model.fit(X_train, y_train)
            coefficients = np.asarray(result["coefficients"])
            predicted = X_test @ coefficients + result["intercept"]
            ours, theirs = r2_score(y_test, predicted), model.score(X_test, y_test)
            err = np.abs(coefficients - model.coef_)
            label = "linear_regression" if ridge == 0 else "ridge (alpha 1)"
            self.add(label, "diabetes", f"held-out R² {ours:.6f} vs sklearn {theirs:.6f}; train R² {result['r2_train']:.6f} vs {model.score(X_train, y_train):.6f}",
                     f"|ΔR²| {abs(ours - theirs):.1e}, max |Δcoef| {err.max():.1e} (rel. {(err / np.abs(model.coef_)).max():.1e})",
                     f"{(err / np.asarray(result['error_bound']['coefficients'])).max():.2f}", result["aggregations"], seconds)  # fmt: skip
        print(
            f"diabetes: declared |x| <= 0.2 holds (largest {largest:.4f}); y in [{y.min():g}, {y.max():g}] within [0, 400]",
            file=sys.stderr,
        )

    def table(self) -> str:
        header = ("computation", "dataset", "metric", "value", "error / stated bound", "secure aggregations", "wall s")
        lines = ["| " + " | ".join(header) + " |", "|---|---|---|--:|--:|--:|--:|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plain", action="store_true", help="sum vectors directly instead of running the secure-aggregation simulator"
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bench = Bench(args.nodes, args.seed, args.plain)
    started = time.perf_counter()
    for name in args.datasets.split(","):
        bench.dataset(name.strip())
    bench.diabetes()
    table = bench.table()
    print(table)
    print(
        f"\n{args.nodes} nodes, max_rows {MAX_ROWS}, {'plain modular sum' if args.plain else 'in-memory SecAgg'}; total {time.perf_counter() - started:.1f} s"
    )
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
