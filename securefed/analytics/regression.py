"""Linear (and ridge) regression from secure sums of XᵀX, Xᵀy and yᵀy.

Theory of operation. With u = [1, z_1..z_d, z_y] per record (features and
target clipped to their declared bounds and normalised to [-1, 1]), a node
sends the upper triangle of sum u uᵀ: the record count, sums of z and z_y,
the Gram matrix, Xᵀy and yᵀy, each coordinate at most its row count. The
coordinator centres them (K = ZᵀZ - S Sᵀ / n, k = Zᵀz_y - S S_y / n) and
solves (K + diag(lambda / half_j^2)) a = k: in the data's units this is
exactly ridge regression with penalty lambda on the slopes and none on the
intercept (scikit-learn's ``Ridge(alpha=lambda)``; lambda = 0 is ordinary
least squares). The training R² comes from the same sums: SSE = SST - 2aᵀk +
aᵀKa with SST = sum (y - mean y)^2.

Error bound: every summed coordinate is within e of its exact value, so the
system is perturbed by at most E (Frobenius norm of the entry bounds) and
||a_exact - a|| <= (||dk|| + E ||a||) / (sigma_min - E) whenever the smallest
eigenvalue sigma_min of the solved system exceeds E (otherwise the
coefficients are not determined at this resolution and the bound is null).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from securefed.analytics.base import Computation
from securefed.analytics.params import Bounds, Cohort, Reader
from securefed.errors import LocalProtocolError

__all__ = ["LinearRegression"]


@dataclass(frozen=True)
class RegressionParams:
    cohort: Cohort
    bounds: Bounds
    target: Bounds
    ridge: float


class LinearRegression(Computation[RegressionParams]):
    name = "linear_regression"
    reveals = "the record count and the sums of [1, x, y][1, x, y]ᵀ over records clipped to the declared bounds (XᵀX, Xᵀy, yᵀy)"
    needs_y = True

    def parse(self, params: Mapping[str, object]) -> RegressionParams:
        reader = Reader(self.name, params, ("max_nodes", "max_rows", "low", "high", "y_low", "y_high", "ridge"))
        cohort = reader.cohort()
        bounds = reader.bounds()
        y_low = reader.number("y_low")
        y_high = reader.number("y_high")
        if not y_high > y_low or not np.isfinite(y_high - y_low):
            raise reader.error("y_high", f"must exceed y_low, got y_low {y_low:g}, y_high {y_high:g}")
        ridge = reader.number("ridge", low=0.0, default=0.0)
        p = RegressionParams(cohort, bounds, Bounds((y_low,), (y_high,)), ridge)
        self.checked_length(p, "low")
        return p

    def vector_length(self, p: RegressionParams) -> int:
        m = p.bounds.n_features + 2
        return m * (m + 1) // 2

    def n_features(self, p: RegressionParams) -> int:
        return p.bounds.n_features

    def contribution(self, p: RegressionParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        if y is None:  # pragma: no cover - check_data guarantees y for needs_y
            raise LocalProtocolError("linear_regression needs y")
        U = np.column_stack((np.ones(X.shape[0]), p.bounds.normalise(X), p.target.normalise(y.reshape(-1, 1))))
        rows, cols = np.triu_indices(U.shape[1])
        return (U.T @ U)[rows, cols]

    def cell_counts(self, p: RegressionParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return np.array([X.shape[0]])

    def result(self, p: RegressionParams, sums: np.ndarray, survivors: int) -> dict:
        d = p.bounds.n_features
        m = d + 2
        G = np.zeros((m, m))
        rows, cols = np.triu_indices(m)
        G[rows, cols] = sums
        G[cols, rows] = sums
        n = int(self.whole(G[:1, 0], p, survivors, "count")[0])
        self.within(G, float(n), p, survivors, "sums of products")
        if n == 0:
            return {
                "count": 0,
                "intercept": None,
                "coefficients": None,
                "r2_train": None,
                "rank_deficient": True,
                "error_bound": None,
            }
        e = p.cohort.sum_error(survivors)
        S, Sy = G[0, 1 : d + 1], float(G[0, d + 1])
        K = G[1 : d + 1, 1 : d + 1] - np.outer(S, S) / n
        k = G[1 : d + 1, d + 1] - S * Sy / n
        sst_z = max(float(G[d + 1, d + 1] - Sy * Sy / n), 0.0)
        penalty = p.ridge / p.bounds.half**2
        eigenvalues, vectors = np.linalg.eigh(K + np.diag(penalty))
        top = float(max(abs(eigenvalues[-1]), 1e-300))
        keep = eigenvalues > top * 1e-12 * d
        a = vectors[:, keep] @ ((vectors[:, keep].T @ k) / eigenvalues[keep])
        sse_z = max(sst_z - 2 * float(a @ k) + float(a @ K @ a), 0.0)
        hy, cy = float(p.target.half[0]), float(p.target.centre[0])
        slopes = a * hy / p.bounds.half
        x_mean = p.bounds.centre + p.bounds.half * S / n
        y_mean = cy + hy * Sy / n
        intercept = float(y_mean - slopes @ x_mean)
        full_rank = bool(np.all(keep))
        bound = None
        if full_rank:
            bound = _bound(p, n, e, S, Sy, k, a, penalty, float(eigenvalues[0]), slopes, x_mean, sse_z, sst_z)
        return {
            "count": n,
            "ridge": p.ridge,
            "intercept": intercept,
            "coefficients": slopes.tolist(),
            "rank_deficient": not full_rank,
            "y_mean": float(y_mean),
            "sse": hy * hy * sse_z,
            "sst": hy * hy * sst_z,
            "r2_train": 1.0 - sse_z / sst_z if sst_z > 0 else None,
            "error_bound": bound,
        }


def _bound(
    p: RegressionParams,
    n: int,
    e: float,
    S: np.ndarray,
    Sy: float,
    k: np.ndarray,
    a: np.ndarray,
    penalty: np.ndarray,
    smallest: float,
    slopes: np.ndarray,
    x_mean: np.ndarray,
    sse_z: float,
    sst_z: float,
) -> dict | None:
    """Rigorous error bounds (exact arithmetic) from the per-coordinate sum error e; None when undetermined."""
    absS = np.abs(S)
    dK = e + (e * (absS[:, None] + absS[None, :]) + e * e) / n
    dk = float(np.linalg.norm(e + (e * (absS + abs(Sy)) + e * e) / n))
    E = float(np.linalg.norm(dK))
    if smallest <= E:
        return None
    norm_a = float(np.linalg.norm(a))
    da = (dk + E * norm_a) / (smallest - E)
    hy = float(p.target.half[0])
    d_slopes = hy * da / p.bounds.half
    d_xmean = p.bounds.half * e / n
    d_intercept = hy * e / n + float(np.sum(d_slopes * np.abs(x_mean) + np.abs(slopes) * d_xmean + d_slopes * d_xmean))
    # At the solution (K + L) a = k, so SSE = SST - aᵀk - aᵀLa: perturb each term.
    d_sst = e + (2 * abs(Sy) * e + e * e) / n
    lam = float(np.max(penalty)) if penalty.size else 0.0
    d_sse = d_sst + dk * norm_a + float(np.linalg.norm(k)) * da + dk * da + lam * (2 * norm_a + da) * da
    out = {
        "coefficients": d_slopes.tolist(),
        "intercept": d_intercept,
        "sse": hy * hy * d_sse,
        "sst": hy * hy * d_sst,
        "r2_train": None,
    }
    if sst_z - d_sst > 0:
        low = 1.0 - (sse_z + d_sse) / (sst_z - d_sst)
        high = 1.0 - max(sse_z - d_sse, 0.0) / (sst_z + d_sst)
        r2 = 1.0 - sse_z / sst_z
        out["r2_train"] = max(r2 - low, high - r2)
    return out
