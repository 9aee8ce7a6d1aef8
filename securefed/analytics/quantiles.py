"""Quantiles by refined secure histograms on a public lattice.

Theory of operation. Each feature's declared range [low, high] is cut into a
public lattice of M = ceil((high - low) / resolution) equal cells (so a cell
is at most ``resolution`` wide). Values are clipped to [low, high]. The
k-th order statistic x_(k) of the pooled data lies in exactly one lattice
cell; the driver finds it by bisection with B-way fan-out:

* round 1 asks, per feature, for the counts of the lattice cells grouped into
  B bins over the whole range; the total gives N, hence the ranks k that the
  requested levels need (numpy's definitions, e.g. ``linear``:
  h = (N - 1) q, interpolating x_(floor h) and x_(floor h + 1));
* each later round asks, per rank still open, for the window (a lattice range
  known to hold x_(k)) split into B bins, with the counts below and above it;
  the bin holding rank k becomes the next window;
* after ceil(log_B M) rounds every window is one lattice cell, and x_(k) is
  taken as its midpoint: within half a cell of the true order statistic, so
  the estimate is within half a cell (at most resolution / 2) of numpy's.

All windows of a round travel in one secure aggregation (one request of kind
``quantiles``). Every bin any request can name is a union of lattice cells,
so even by differencing all its answers the coordinator learns counts over
lattice cells, never over anything narrower: a site's ``min_bin_width``
applies to the lattice cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from securefed.analytics.base import Computation, Driver, Request
from securefed.analytics.params import MAX_FEATURES, Bounds, Cohort, Reader
from securefed.analytics.policy import AnalyticsPolicy, Refusal
from securefed.errors import EncodingError

__all__ = ["QUANTILE_METHODS", "QuantileDriver", "QuantileStep", "lattice_edge", "lattice_index"]

#: numpy ``method`` names the driver reproduces (to within half a lattice cell).
QUANTILE_METHODS: tuple[str, ...] = ("linear", "lower", "higher", "inverted_cdf")
_MAX_CELLS = 1 << 40
_MAX_BINS = 4096
_MAX_WINDOWS = 8 * MAX_FEATURES
_WIDTH_SLACK = 1e-9


def _cells(low: float, high: float, resolution: float) -> int:
    """ceil(range / resolution), forgiving float noise (a range of 0.01 at 0.005 is 2 cells, not 3)."""
    return max(1, math.ceil((high - low) / resolution * (1 - 1e-12)))


def lattice_edge(low: float, high: float, cells: int, k: int) -> float:
    """The k-th lattice point (0..cells); the last one is ``high`` exactly."""
    return high if k >= cells else low + k * ((high - low) / cells)


def lattice_index(values: np.ndarray, low: float, high: float, cells: int) -> np.ndarray:
    """The lattice cell of each value (clipped to [low, high]): cell c holds [edge(c), edge(c+1)), the last also high."""
    width = (high - low) / cells
    index = np.clip(np.floor((values - low) / width), 0, cells - 1).astype(np.int64)
    index = np.where(values < low + index * width, index - 1, index)  # float rounding put it one too high
    upper = np.where(index + 1 >= cells, np.inf, low + (index + 1) * width)
    index = np.where(values >= upper, index + 1, index)  # ...or one too low
    return np.clip(index, 0, cells - 1)


@dataclass(frozen=True)
class Window:
    column: int
    start: int
    stop: int
    bins: int

    def sub_edges(self) -> np.ndarray:
        """Lattice indices of the window's bin edges: B + 1 of them, strictly increasing."""
        span = self.stop - self.start
        return self.start + (np.arange(self.bins + 1, dtype=np.int64) * span) // self.bins

    def to_json(self) -> dict:
        return {"column": self.column, "start": self.start, "stop": self.stop, "bins": self.bins}


@dataclass(frozen=True)
class QuantileStepParams:
    cohort: Cohort
    bounds: Bounds
    resolution: tuple[float, ...]
    windows: tuple[Window, ...]

    def cells(self, column: int) -> int:
        return _cells(self.bounds.low[column], self.bounds.high[column], self.resolution[column])

    def cell_width(self, column: int) -> float:
        return (self.bounds.high[column] - self.bounds.low[column]) / self.cells(column)


def _read_lattice(reader: Reader) -> tuple[Bounds, tuple[float, ...]]:
    bounds = reader.bounds()
    raw = reader.raw("resolution")
    if isinstance(raw, list):
        resolution = reader.numbers("resolution", length=bounds.n_features)
    else:
        resolution = (reader.check_number("resolution", raw),) * bounds.n_features
    for j, (lo, hi, res) in enumerate(zip(bounds.low, bounds.high, resolution)):
        if not res > 0:
            raise reader.error("resolution", f"must be positive, got {res:g} for feature #{j}")
        cells = _cells(lo, hi, res)
        if cells > _MAX_CELLS or (hi - lo) / cells <= max(abs(lo), abs(hi)) * 2.0**-40:
            raise reader.error("resolution", f"{res:g} is too fine for feature #{j} (range {lo:g}..{hi:g}); use a coarser one")
    return bounds, resolution


class QuantileStep(Computation[QuantileStepParams]):
    """One refinement round: counts per bin of lattice windows (what the node sees of a quantile task)."""

    name = "quantiles"
    reveals = "per window, the number of records below it, in each of its bins (unions of public lattice cells), and above it"

    def parse(self, params: Mapping[str, object]) -> QuantileStepParams:
        reader = Reader(self.name, params, ("max_nodes", "max_rows", "low", "high", "resolution", "windows"))
        cohort = reader.cohort()
        bounds, resolution = _read_lattice(reader)
        raw = reader.raw("windows")
        if not isinstance(raw, list) or not raw or len(raw) > _MAX_WINDOWS:
            raise reader.error("windows", f"must be a non-empty list of at most {_MAX_WINDOWS} windows")
        windows = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or set(item) != {"column", "start", "stop", "bins"}:
                raise reader.error("windows", f'#{i} must be {{"column", "start", "stop", "bins"}}')
            if not all(type(item[k]) is int for k in item):
                raise reader.error("windows", f"#{i}: column, start, stop and bins must be integers")
            column = item["column"]
            if not 0 <= column < bounds.n_features:
                raise reader.error("windows", f"#{i}: column {column} is not one of the {bounds.n_features} declared features")
            cells = _cells(bounds.low[column], bounds.high[column], resolution[column])
            if not 0 <= item["start"] < item["stop"] <= cells:
                raise reader.error("windows", f"#{i}: need 0 <= start < stop <= {cells} (lattice cells of column {column})")
            if not 1 <= item["bins"] <= min(_MAX_BINS, item["stop"] - item["start"]):
                raise reader.error("windows", f"#{i}: bins must be in 1..min({_MAX_BINS}, stop - start)")
            windows.append(Window(column, item["start"], item["stop"], item["bins"]))
        p = QuantileStepParams(cohort, bounds, resolution, tuple(windows))
        self.checked_length(p, "windows")
        return p

    def vector_length(self, p: QuantileStepParams) -> int:
        return sum(w.bins + 2 for w in p.windows)

    def n_features(self, p: QuantileStepParams) -> int:
        return p.bounds.n_features

    def static_policy(self, p: QuantileStepParams, policy: AnalyticsPolicy) -> Refusal | None:
        for column in sorted({w.column for w in p.windows}):
            width = p.cell_width(column)
            if width < policy.min_bin_width * (1 - _WIDTH_SLACK):
                return Refusal(
                    "bins-too-narrow",
                    f"the quantile lattice of column {column} is {width:g} wide; this site's min_bin_width is {policy.min_bin_width:g}",
                )
        return None

    def contribution(self, p: QuantileStepParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return self.cell_counts(p, X, y).astype(np.float64)

    def cell_counts(self, p: QuantileStepParams, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        clipped = p.bounds.clip(X)
        index: dict[int, np.ndarray] = {}
        parts: list[npt.ArrayLike] = []
        for w in p.windows:
            if w.column not in index:
                index[w.column] = lattice_index(
                    clipped[:, w.column], p.bounds.low[w.column], p.bounds.high[w.column], p.cells(w.column)
                )
            cells = index[w.column]
            inside = cells[(cells >= w.start) & (cells < w.stop)]
            binned = np.searchsorted(w.sub_edges(), inside, side="right") - 1
            parts.append([np.count_nonzero(cells < w.start)])
            parts.append(np.bincount(binned, minlength=w.bins))
            parts.append([np.count_nonzero(cells >= w.stop)])
        return np.concatenate(parts).astype(np.int64)

    def result(self, p: QuantileStepParams, sums: np.ndarray, survivors: int) -> dict:
        cells = self.whole(sums, p, survivors, "window counts")
        out, start, totals = [], 0, set()
        for w in p.windows:
            part = cells[start : start + w.bins + 2]
            start += w.bins + 2
            totals.add(int(part.sum()))
            out.append(
                {
                    **w.to_json(),
                    "edges": w.sub_edges().tolist(),
                    "below": int(part[0]),
                    "counts": part[1:-1].tolist(),
                    "above": int(part[-1]),
                }
            )
        if len(totals) != 1:
            raise EncodingError(
                f"{self.name}: the summed windows hold different record totals {sorted(totals)}; a contribution was malformed"
            )
        return {"count": totals.pop(), "windows": out}


def _ranks(n: int, q: float, method: str) -> tuple[int, int, float]:
    """(first rank, second rank, weight of the second) as numpy computes them for ``method``."""
    if method == "inverted_cdf":
        virtual = n * q - 1
        before = math.floor(virtual)
        rank = before + (1 if virtual - before > 0 else 0)
        rank = min(max(rank, 0), n - 1)
        return rank, rank, 0.0
    virtual = (n - 1) * q
    before = min(max(math.floor(virtual), 0), n - 1)
    after = min(before + 1, n - 1)
    if method == "lower":
        return before, before, 0.0
    if method == "higher":
        rank = min(max(math.ceil(virtual), 0), n - 1)
        return rank, rank, 0.0
    return before, after, virtual - math.floor(virtual)


class QuantileDriver(Driver):
    """Quantiles of several features to a declared resolution, in ceil(log_B M) secure aggregations.

    Spec (JSON): ``max_nodes``, ``max_rows``, ``low``, ``high``, ``resolution``
    (a number or one per feature), ``quantiles`` (levels in [0, 1]),
    optional ``method`` (one of :data:`QUANTILE_METHODS`, default numpy's
    ``linear``), ``bins_per_round`` (B, default 64) and ``columns`` (default all).
    """

    def __init__(self, spec: Mapping[str, object]) -> None:
        super().__init__()
        reader = Reader(
            "quantiles",
            spec,
            ("max_nodes", "max_rows", "low", "high", "resolution", "quantiles", "method", "bins_per_round", "columns"),
        )
        self.cohort = reader.cohort()
        self.bounds, self.resolution = _read_lattice(reader)
        levels = reader.numbers("quantiles", max_length=256)
        for q in levels:
            if not 0.0 <= q <= 1.0:
                raise reader.error("quantiles", f"levels must be in [0, 1], got {q:g}")
        self.levels = levels
        self.method = reader.choice("method", QUANTILE_METHODS, default="linear")
        self.fanout = reader.integer("bins_per_round", 2, _MAX_BINS, default=64)
        columns = reader.integers("columns", 0, self.bounds.n_features - 1, default=None)
        self.columns = tuple(range(self.bounds.n_features)) if columns is None else tuple(dict.fromkeys(columns))
        self._step = QuantileStep()
        self._n: int | None = None
        self._open: dict[tuple[int, int], tuple[int, int]] = {}  # (column, rank) -> lattice window [start, stop)
        self._found: dict[tuple[int, int], int] = {}  # (column, rank) -> lattice cell
        self._asked: list[Window] = []
        self._step.checked_length(
            self._step.parse(self._params([self._window(c, 0, self._cells(c)) for c in self.columns])), "columns"
        )

    def _cells(self, column: int) -> int:
        return _cells(self.bounds.low[column], self.bounds.high[column], self.resolution[column])

    def _window(self, column: int, start: int, stop: int) -> Window:
        return Window(column, start, stop, min(self.fanout, stop - start))

    def _params(self, windows: list[Window]) -> dict:
        return {
            "max_nodes": self.cohort.max_nodes,
            "max_rows": self.cohort.max_rows,
            **self.bounds.to_json(),
            "resolution": list(self.resolution),
            "windows": [w.to_json() for w in windows],
        }

    def _plan(self) -> Request:
        if self._n is None:
            windows = [self._window(c, 0, self._cells(c)) for c in self.columns]
        else:
            windows = list(dict.fromkeys(self._window(c, *span) for (c, _), span in sorted(self._open.items())))
        self._asked = windows
        return Request(self._step.name, self._params(windows))

    def _absorb(self, request: Request, summed: np.ndarray, survivors: int) -> None:
        answer = self._step.finish(request.params, summed, survivors)
        if self._n is None:
            self._n = answer["count"]
            if self._n == 0:
                self._conclude()
                return
            for column in self.columns:
                for q in self.levels:
                    first, second, _ = _ranks(self._n, q, self.method)
                    for rank in (first, second):
                        self._open[(column, rank)] = (0, self._cells(column))
        elif answer["count"] != self._n:
            raise EncodingError(
                f"quantiles: a refinement round counted {answer['count']} records, the first {self._n}; a contribution was malformed"
            )
        by_window = {(w["column"], w["start"], w["stop"]): w for w in answer["windows"]}
        for (column, rank), (start, stop) in list(self._open.items()):
            self._narrow(column, rank, by_window[(column, start, stop)])
        if not self._open:
            self._conclude()

    def _narrow(self, column: int, rank: int, window: dict) -> None:
        before = window["below"]
        edges = window["edges"]
        for i, count in enumerate(window["counts"]):
            if before + count > rank:
                start, stop = edges[i], edges[i + 1]
                del self._open[(column, rank)]
                if stop - start == 1:
                    self._found[(column, rank)] = start
                else:
                    self._open[(column, rank)] = (start, stop)
                return
            before += count
        raise EncodingError(
            f"quantiles: rank {rank} of column {column} is not in the window that must hold it; a contribution was malformed"
        )

    def _value(self, column: int, rank: int) -> float:
        cell = self._found[(column, rank)]
        low, high, cells = self.bounds.low[column], self.bounds.high[column], self._cells(column)
        return (lattice_edge(low, high, cells, cell) + lattice_edge(low, high, cells, cell + 1)) / 2.0

    def _conclude(self) -> None:
        values: list[list[float] | None] = []
        for column in self.columns:
            if not self._n:
                values.append(None)
                continue
            row = []
            for q in self.levels:
                first, second, weight = _ranks(self._n, q, self.method)
                a, b = self._value(column, first), self._value(column, second)
                row.append(a + weight * (b - a))
            values.append(row)
        widths = [(self.bounds.high[c] - self.bounds.low[c]) / self._cells(c) for c in self.columns]
        self.finish_with(
            {
                "computation": "quantiles",
                "count": self._n,
                "method": self.method,
                "levels": list(self.levels),
                "columns": list(self.columns),
                "quantiles": values,
                "lattice_cell": widths,
                "error_bound": [w / 2 for w in widths],
                "note": "each value is within error_bound of numpy.quantile(clipped pooled data, method) (half a lattice cell)",
                "encoding": self.cohort.describe(),
            }
        )
