"""Counts and moments: count, mean, variance, covariance and correlation matrices.

Each node sends its record count n and sums over its rows of z, z squared or
the products z_i z_j, where z = (clip(x) - centre) / half_width is in [-1, 1]
(see :mod:`securefed.analytics.params`). The coordinator forms, with S = sum z
and P = sum z_i z_j over all survivors' records,

    mean_j = centre_j + half_j S_j / N
    cov_ij = half_i half_j (P_ij - S_i S_j / N) / (N - ddof)

Every summed coordinate is within ``e = survivors * 2^-f`` of its exact value
(plus float64 rounding), so each result carries a rigorous ``error_bound``
propagated from e; the correlation's bound comes from interval arithmetic
over the covariance's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from securefed.analytics.base import Computation
from securefed.analytics.params import Bounds, Cohort, Reader

__all__ = ["Correlation", "Count", "Covariance", "Mean", "Variance"]


@dataclass(frozen=True)
class CountParams:
    cohort: Cohort


@dataclass(frozen=True)
class MomentParams:
    cohort: Cohort
    bounds: Bounds
    ddof: int = 0


def _listed(values: np.ndarray, defined: bool) -> list | None:
    return [float(v) for v in values] if defined else None


class Count(Computation[CountParams]):
    name = "count"
    reveals = "the total number of records"

    def parse(self, params: Mapping[str, object]) -> CountParams:
        reader = Reader(self.name, params, ("max_nodes", "max_rows"))
        return CountParams(reader.cohort())

    def vector_length(self, p: CountParams) -> int:
        return 1

    def n_features(self, p: CountParams) -> None:
        return None

    def contribution(self, p: CountParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return np.array([float(X.shape[0])])

    def cell_counts(self, p: CountParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return np.array([X.shape[0]])

    def result(self, p: CountParams, sums: np.ndarray, survivors: int) -> dict:
        return {"count": int(self.whole(sums[:1], p, survivors, "count")[0])}


class Mean(Computation[MomentParams]):
    name = "mean"
    reveals = "the record count and, per feature, the sum of values clipped to the declared bounds"
    _KEYS: tuple[str, ...] = ("max_nodes", "max_rows", "low", "high")

    def parse(self, params: Mapping[str, object]) -> MomentParams:
        reader = Reader(self.name, params, self._KEYS)
        p = MomentParams(reader.cohort(), reader.bounds(), self._ddof(reader))
        self.checked_length(p, "low")
        return p

    def _ddof(self, reader: Reader) -> int:
        return 0

    def vector_length(self, p: MomentParams) -> int:
        return 1 + p.bounds.n_features

    def n_features(self, p: MomentParams) -> int:
        return p.bounds.n_features

    def contribution(self, p: MomentParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        Z = p.bounds.normalise(X)
        return np.concatenate(([float(X.shape[0])], Z.sum(axis=0), self._higher(Z)))

    def _higher(self, Z: np.ndarray) -> np.ndarray:
        return np.zeros(0)

    def cell_counts(self, p: MomentParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return np.array([X.shape[0]])

    def describe(self, params: Mapping[str, object] | MomentParams) -> str:
        p = self.ensure(params)
        return (
            f"{self.name} of {p.bounds.n_features} features clipped to declared bounds, at most "
            f"{p.cohort.max_nodes} nodes x {p.cohort.max_rows} rows ({self.vector_length(p)} coordinates)"
        )

    def _first(self, p: MomentParams, sums: np.ndarray, survivors: int) -> tuple[int, np.ndarray, float]:
        d = p.bounds.n_features
        n = int(self.whole(sums[:1], p, survivors, "count")[0])
        S = sums[1 : 1 + d]
        self.within(S, float(n), p, survivors, "sum of values")
        return n, S, p.cohort.sum_error(survivors)

    def result(self, p: MomentParams, sums: np.ndarray, survivors: int) -> dict:
        n, S, e = self._first(p, sums, survivors)
        mean, bound = _mean(p.bounds, n, S, e)
        return {"count": n, "mean": _listed(mean, n > 0), "error_bound": {"mean": _listed(bound, n > 0)}}


def _mean(bounds: Bounds, n: int, S: np.ndarray, e: float) -> tuple[np.ndarray, np.ndarray]:
    if n == 0:
        return np.zeros_like(S), np.zeros_like(S)
    return bounds.centre + bounds.half * S / n, bounds.half * e / n


class Variance(Mean):
    name = "variance"
    reveals = "the record count and, per feature, the sums of clipped values and of their squares"
    _KEYS = ("max_nodes", "max_rows", "low", "high", "ddof")

    def _ddof(self, reader: Reader) -> int:
        return reader.integer("ddof", 0, 1, default=1)

    def vector_length(self, p: MomentParams) -> int:
        return 1 + 2 * p.bounds.n_features

    def _higher(self, Z: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->j", Z, Z)

    def result(self, p: MomentParams, sums: np.ndarray, survivors: int) -> dict:
        n, S, e = self._first(p, sums, survivors)
        d = p.bounds.n_features
        Q = sums[1 + d : 1 + 2 * d]
        self.within(Q, float(n), p, survivors, "sum of squares")
        mean, mean_bound = _mean(p.bounds, n, S, e)
        dof = n - p.ddof
        defined = dof > 0
        if defined:
            spread = Q - S * S / n
            spread_bound = e + (2 * np.abs(S) * e + e * e) / n
            variance = np.maximum(p.bounds.half**2 * spread / dof, 0.0)
            bound = p.bounds.half**2 * spread_bound / dof
        else:
            variance = bound = np.zeros(d)
        return {
            "count": n,
            "ddof": p.ddof,
            "mean": _listed(mean, n > 0),
            "variance": _listed(variance, defined),
            "std": _listed(np.sqrt(variance), defined),
            "error_bound": {"mean": _listed(mean_bound, n > 0), "variance": _listed(bound, defined)},
        }


class Covariance(Variance):
    name = "covariance"
    reveals = "the record count, per-feature sums of clipped values, and the sums of their pairwise products"

    def vector_length(self, p: MomentParams) -> int:
        d = p.bounds.n_features
        return 1 + d + d * (d + 1) // 2

    def _higher(self, Z: np.ndarray) -> np.ndarray:
        d = Z.shape[1]
        rows, cols = np.triu_indices(d)
        return (Z.T @ Z)[rows, cols]

    def _matrix(
        self, p: MomentParams, sums: np.ndarray, survivors: int
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n, S, e = self._first(p, sums, survivors)
        d = p.bounds.n_features
        rows, cols = np.triu_indices(d)
        P = np.zeros((d, d))
        P[rows, cols] = sums[1 + d :]
        P[cols, rows] = sums[1 + d :]
        self.within(np.diag(P), float(n), p, survivors, "sum of squares")
        self.within(P, float(n), p, survivors, "sum of products")
        mean, mean_bound = _mean(p.bounds, n, S, e)
        dof = n - p.ddof
        if dof <= 0:
            return n, mean, mean_bound, np.zeros((d, d)), np.zeros((d, d))
        scale = np.outer(p.bounds.half, p.bounds.half) / dof
        cov = scale * (P - np.outer(S, S) / n)
        bound = scale * (e + (e * (np.abs(S)[:, None] + np.abs(S)[None, :]) + e * e) / n)
        np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.0))
        return n, mean, mean_bound, cov, bound

    def result(self, p: MomentParams, sums: np.ndarray, survivors: int) -> dict:
        n, mean, mean_bound, cov, bound = self._matrix(p, sums, survivors)
        defined = n - p.ddof > 0
        return {
            "count": n,
            "ddof": p.ddof,
            "mean": _listed(mean, n > 0),
            "covariance": cov.tolist() if defined else None,
            "error_bound": {"mean": _listed(mean_bound, n > 0), "covariance": bound.tolist() if defined else None},
        }


class Correlation(Covariance):
    name = "correlation"
    reveals = Covariance.reveals

    def result(self, p: MomentParams, sums: np.ndarray, survivors: int) -> dict:
        n, mean, mean_bound, cov, bound = self._matrix(p, sums, survivors)
        d = p.bounds.n_features
        corr: list[list[float | None]] = [[None] * d for _ in range(d)]
        corr_bound: list[list[float | None]] = [[None] * d for _ in range(d)]
        if n - p.ddof > 0:
            var, var_bound = np.diag(cov), np.diag(bound)
            known = var - var_bound > 0  # the variance is certainly positive at this resolution
            for i in range(d):
                for j in range(d):
                    if not (known[i] and known[j]):
                        continue
                    if i == j:
                        corr[i][j], corr_bound[i][j] = 1.0, 0.0
                        continue
                    value, err = _ratio(cov[i, j], bound[i, j], var[i], var_bound[i], var[j], var_bound[j])
                    corr[i][j], corr_bound[i][j] = value, err
        return {
            "count": n,
            "mean": _listed(mean, n > 0),
            "correlation": corr,
            "error_bound": {"mean": _listed(mean_bound, n > 0), "correlation": corr_bound},
            "note": "null where a variance is not certainly positive at the encoding resolution",
        }


def _ratio(c: float, cb: float, a: float, ab: float, b: float, bb: float) -> tuple[float, float]:
    """c / sqrt(a b) and a bound on its error, from intervals c +- cb, a +- ab, b +- bb (a - ab, b - bb > 0)."""
    value = float(np.clip(c / np.sqrt(a * b), -1.0, 1.0))
    low_den, high_den = np.sqrt((a - ab) * (b - bb)), np.sqrt((a + ab) * (b + bb))
    corners = [num / den for num in (c - cb, c + cb) for den in (low_den, high_den)]
    low, high = max(min(corners), -1.0), min(max(corners), 1.0)
    return value, float(max(value - low, high - value, 0.0))
