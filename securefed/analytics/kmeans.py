"""Secure k-means: Lloyd iterations over secure sums of per-cluster sums and counts.

Theory of operation. The centres are public (they are what the task
computes). Each iteration the coordinator sends the current centres; each
node assigns each of its records (clipped to the declared bounds) to the
nearest centre (squared Euclidean distance in the data's units, ties to the
lower index, as scikit-learn's Lloyd step) and sends, per cluster, its count,
the sum of its normalised values z and the sum of z squared. From the sums
alone the coordinator gets the new centres (an empty cluster keeps its
centre), the inertia about the centres it sent (the Lloyd objective of the
assignment) and the within-cluster sum of squares about the new centres.

:class:`KMeansDriver` runs this from given initial centres until the centres
stop moving (their squared shift is at most ``tol`` times the mean variance
of a uniform spread over the declared bounds -- a public stand-in for
scikit-learn's data variance -- or no centre moved by more than its encoding
error, i.e. the assignment did not change) or ``max_iter`` aggregations. A
cluster left empty is re-seeded from the sums alone (see :func:`_reseed`), not
onto a record as scikit-learn does, so the two differ only when a cluster empties.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from securefed.analytics.base import Computation, Driver, Request
from securefed.analytics.params import Bounds, Cohort, Reader

__all__ = ["MAX_CLUSTERS", "KMeansDriver", "KMeansStep"]

MAX_CLUSTERS = 1024


@dataclass(frozen=True)
class KMeansParams:
    cohort: Cohort
    bounds: Bounds
    centres: tuple[tuple[float, ...], ...]

    @property
    def k(self) -> int:
        return len(self.centres)


def _read_centres(reader: Reader, d: int) -> tuple[tuple[float, ...], ...]:
    raw = reader.raw("centres")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CLUSTERS:
        raise reader.error("centres", f"must be a list of 1..{MAX_CLUSTERS} centres, each a list of {d} numbers")
    centres = []
    for i, row in enumerate(raw):
        if not isinstance(row, list) or len(row) != d:
            raise reader.error("centres", f"centre #{i} must be a list of {d} numbers (one per feature)")
        centres.append(tuple(reader.check_number("centres", v) for v in row))
    return tuple(centres)


class KMeansStep(Computation[KMeansParams]):
    """One Lloyd iteration (what a node sees of a k-means task)."""

    name = "kmeans"
    reveals = (
        "per cluster of the given centres, the number of records nearest to it and the sums of their clipped values and squares"
    )

    def parse(self, params: Mapping[str, object]) -> KMeansParams:
        reader = Reader(self.name, params, ("max_nodes", "max_rows", "low", "high", "centres"))
        cohort = reader.cohort()
        bounds = reader.bounds()
        p = KMeansParams(cohort, bounds, _read_centres(reader, bounds.n_features))
        self.checked_length(p, "centres")
        return p

    def vector_length(self, p: KMeansParams) -> int:
        return p.k * (1 + 2 * p.bounds.n_features)

    def n_features(self, p: KMeansParams) -> int:
        return p.bounds.n_features

    def _assign(self, p: KMeansParams, X: np.ndarray) -> np.ndarray:
        clipped = p.bounds.clip(X)
        centres = np.asarray(p.centres)
        distances = np.stack([np.einsum("ij,ij->i", clipped - c, clipped - c) for c in centres], axis=1)
        return np.argmin(distances, axis=1) if X.shape[0] else np.zeros(0, dtype=np.int64)

    def contribution(self, p: KMeansParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        labels = self._assign(p, X)
        Z = p.bounds.normalise(X)
        member = np.zeros((X.shape[0], p.k))
        member[np.arange(X.shape[0]), labels] = 1.0
        counts = member.sum(axis=0)
        return np.concatenate((counts, (member.T @ Z).ravel(), (member.T @ (Z * Z)).ravel()))

    def cell_counts(self, p: KMeansParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return np.bincount(self._assign(p, X), minlength=p.k)

    def result(self, p: KMeansParams, sums: np.ndarray, survivors: int) -> dict:
        k, d = p.k, p.bounds.n_features
        counts = self.whole(sums[:k], p, survivors, "cluster counts")
        S = sums[k : k + k * d].reshape(k, d)
        Q = sums[k + k * d :].reshape(k, d)
        n = counts[:, None].astype(np.float64)
        self.within(S, n, p, survivors, "cluster sums")
        self.within(Q, n, p, survivors, "cluster sums of squares")
        e = p.cohort.sum_error(survivors)
        half2 = p.bounds.half**2
        old = np.asarray(p.centres)
        sent = (old - p.bounds.centre) / p.bounds.half  # the sent centres, normalised
        inertia = float(np.sum(half2 * (Q - 2 * sent * S + n * sent * sent)))
        inertia_bound = float(np.sum(half2 * (e + 2 * np.abs(sent) * e)))
        filled = counts > 0
        safe = np.where(filled, counts, 1)[:, None].astype(np.float64)
        means = np.where(filled[:, None], p.bounds.centre + p.bounds.half * S / safe, old)
        centre_bound = np.where(filled[:, None], p.bounds.half * e / safe, 0.0)
        spread = np.where(filled[:, None], Q - S * S / safe, 0.0)
        within_ss = float(np.sum(half2 * spread))
        within_bound = float(np.sum(np.where(filled[:, None], half2 * (e + (2 * np.abs(S) * e + e * e) / safe), 0.0)))
        spread_units = half2 * spread / safe  # per-cluster, per-feature variance (ddof 0) in the data's units
        return {
            "count": int(counts.sum()),
            "counts": counts.tolist(),
            "centres": means.tolist(),
            "cluster_variance": np.maximum(spread_units, 0.0).tolist(),
            "empty_clusters": np.flatnonzero(~filled).tolist(),
            "inertia": max(inertia, 0.0),
            "within_ss": max(within_ss, 0.0),
            "error_bound": {"centres": centre_bound.tolist(), "inertia": inertia_bound, "within_ss": within_bound},
            "note": "inertia: about the centres sent, for the assignment made with them; within_ss: about the new centres",
        }


class KMeansDriver(Driver):
    """Lloyd's algorithm from given initial centres over secure sums.

    Spec (JSON): ``max_nodes``, ``max_rows``, ``low``, ``high``, ``centres``
    (the k initial centres), optional ``max_iter`` (default 300) and ``tol``
    (default 1e-4, relative as described in the module docstring).
    """

    def __init__(self, spec: Mapping[str, object]) -> None:
        super().__init__()
        reader = Reader("kmeans", spec, ("max_nodes", "max_rows", "low", "high", "centres", "max_iter", "tol"))
        self.cohort = reader.cohort()
        self.bounds = reader.bounds()
        self.centres = np.asarray(_read_centres(reader, self.bounds.n_features))
        self.max_iter = reader.integer("max_iter", 1, 10_000, default=300)
        self.tol = reader.number("tol", low=0.0, default=1e-4)
        self.threshold = self.tol * float(np.mean(self.bounds.half**2 / 3.0))
        self._step = KMeansStep()
        self._step.parse(self._params())  # refuses a vector that would be too long
        self.trace: list[float] = []
        self.reseeded = 0

    def _params(self) -> dict:
        return {
            "max_nodes": self.cohort.max_nodes,
            "max_rows": self.cohort.max_rows,
            **self.bounds.to_json(),
            "centres": self.centres.tolist(),
        }

    def _plan(self) -> Request:
        return Request(self._step.name, self._params())

    def _absorb(self, request: Request, summed: np.ndarray, survivors: int) -> None:
        answer = self._step.finish(request.params, summed, survivors)
        new = np.asarray(answer["centres"])
        shift = float(np.sum((new - self.centres) ** 2))
        settled = bool(np.all(np.abs(new - self.centres) <= 2 * np.asarray(answer["error_bound"]["centres"])))
        self.trace.append(answer["inertia"])
        last = self.aggregations >= self.max_iter
        reseeded = 0
        if answer["empty_clusters"] and not last:
            reseeded = _reseed(
                new, np.asarray(answer["counts"]), np.asarray(answer["cluster_variance"]), answer["empty_clusters"]
            )
            self.reseeded += reseeded
        converged = (shift <= self.threshold or settled) and not reseeded
        self.centres = new
        if converged or last:
            self.finish_with(
                {
                    "computation": "kmeans",
                    "count": answer["count"],
                    "centres": new.tolist(),
                    "counts": answer["counts"],
                    "inertia": answer["within_ss"],
                    "error_bound": {"centres": answer["error_bound"]["centres"], "inertia": answer["error_bound"]["within_ss"]},
                    "iterations": self.aggregations,
                    "converged": converged,
                    "reseeded_empty_clusters": self.reseeded,
                    "inertia_trace": list(self.trace),
                    "encoding": answer["encoding"],
                }
            )


def _reseed(centres: np.ndarray, counts: np.ndarray, variance: np.ndarray, empty: list[int]) -> int:
    """Move each empty cluster's centre (in place) by splitting the widest cluster along its widest feature.

    scikit-learn moves an empty centre onto the record farthest from its centre,
    which would reveal that record; here only the sums are used: the cluster with
    the largest within-cluster sum of squares is split one standard deviation
    either side of its mean along its most spread feature. Returns how many moved.
    """
    counts = counts.astype(np.float64).copy()
    variance = variance.copy()
    moved = 0
    for cluster in empty:
        widest = int(np.argmax(counts * variance.sum(axis=1)))
        if counts[widest] * variance[widest].sum() <= 0:
            break
        feature = int(np.argmax(variance[widest]))
        step = np.sqrt(variance[widest, feature])
        centres[cluster] = centres[widest]
        centres[cluster, feature] += step
        centres[widest, feature] -= step
        counts[widest] /= 2  # each half now stands for about half the records
        counts[cluster] = counts[widest]
        variance[cluster] = variance[widest]
        moved += 1
    return moved
