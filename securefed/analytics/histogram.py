"""Histograms on declared bins.

Each requested histogram names a data column and its bin edges (strictly
increasing). A node sends, per histogram, the count of its values below the
first edge, one count per bin with numpy's rule (every bin half-open
``[e_i, e_i+1)`` except the last, which includes its right edge), and the
count above the last edge. Counts are whole numbers, so the summed histogram
is exactly the histogram of the pooled data, and every histogram's cells add
up to the record count (the coordinator checks both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from securefed.analytics.base import Computation
from securefed.analytics.params import MAX_FEATURES, MAX_VECTOR_LENGTH, Cohort, Reader
from securefed.analytics.policy import AnalyticsPolicy, Refusal
from securefed.errors import EncodingError

__all__ = ["Histogram", "narrowest_bin"]

#: Bin edges compare with this relative slack against a site's min_bin_width (float rounding of edges).
_WIDTH_SLACK = 1e-9


@dataclass(frozen=True)
class HistogramParams:
    cohort: Cohort
    columns: tuple[int, ...]
    edges: tuple[tuple[float, ...], ...]


def narrowest_bin(edges: tuple[float, ...]) -> float:
    return float(np.min(np.diff(np.asarray(edges))))


class Histogram(Computation[HistogramParams]):
    name = "histogram"
    reveals = "per declared bin, the number of records whose value falls in it (and below / above the edges)"

    def parse(self, params: Mapping[str, object]) -> HistogramParams:
        reader = Reader(self.name, params, ("max_nodes", "max_rows", "edges", "columns"))
        cohort = reader.cohort()
        raw = reader.raw("edges")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_FEATURES:
            raise reader.error("edges", f"must be a non-empty list (at most {MAX_FEATURES}) of edge lists, one per histogram")
        edges = []
        for i, item in enumerate(raw):
            if not isinstance(item, list) or len(item) < 2 or len(item) > MAX_VECTOR_LENGTH:
                raise reader.error("edges", f"histogram #{i} needs a list of at least 2 edges")
            values = tuple(reader.check_number("edges", v) for v in item)
            if not all(b > a for a, b in zip(values, values[1:])):
                raise reader.error("edges", f"histogram #{i}: edges must increase strictly")
            edges.append(values)
        columns = reader.integers("columns", 0, MAX_FEATURES - 1, default=None, max_length=MAX_FEATURES)
        if columns is None:
            columns = tuple(range(len(edges)))
        if len(columns) != len(edges):
            raise reader.error("columns", f"must name one column per histogram ({len(edges)}), got {len(columns)}")
        p = HistogramParams(cohort, columns, tuple(edges))
        self.checked_length(p, "edges")
        return p

    def vector_length(self, p: HistogramParams) -> int:
        return sum(len(e) + 1 for e in p.edges)

    def n_features(self, p: HistogramParams) -> None:
        return None

    def used_columns(self, p: HistogramParams) -> tuple[int, ...]:
        return tuple(sorted(set(p.columns)))

    def static_policy(self, p: HistogramParams, policy: AnalyticsPolicy) -> Refusal | None:
        floor = policy.min_bin_width * (1 - _WIDTH_SLACK)
        for i, edges in enumerate(p.edges):
            width = narrowest_bin(edges)
            if width < floor:
                return Refusal(
                    "bins-too-narrow",
                    f"histogram #{i} has a bin {width:g} wide; this site's min_bin_width is {policy.min_bin_width:g}",
                )
        return None

    def contribution(self, p: HistogramParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return self.cell_counts(p, X, y).astype(np.float64)

    def cell_counts(self, p: HistogramParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        parts: list[npt.ArrayLike] = []
        for column, edges in zip(p.columns, p.edges):
            values = X[:, column]
            inside, _ = np.histogram(values, bins=np.asarray(edges))
            parts.append([np.count_nonzero(values < edges[0])])
            parts.append(inside)
            parts.append([np.count_nonzero(values > edges[-1])])
        return np.concatenate(parts).astype(np.int64)

    def result(self, p: HistogramParams, sums: np.ndarray, survivors: int) -> dict:
        cells = self.whole(sums, p, survivors, "histogram counts")
        out, start, totals = [], 0, set()
        for column, edges in zip(p.columns, p.edges):
            part = cells[start : start + len(edges) + 1]
            start += len(edges) + 1
            totals.add(int(part.sum()))
            out.append(
                {
                    "column": column,
                    "edges": list(edges),
                    "below": int(part[0]),
                    "counts": part[1:-1].tolist(),
                    "above": int(part[-1]),
                }
            )
        if len(totals) != 1:
            raise EncodingError(
                f"{self.name}: the summed histograms hold different record totals {sorted(totals)}; a contribution was malformed"
            )
        return {"count": totals.pop(), "histograms": out}
