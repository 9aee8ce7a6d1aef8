"""Bins from public per-feature bounds (equal width, or at secure quantiles), and a node's feature codes.

Theory of operation. A histogram tree compares a feature only with bin edges,
so every site must cut its features at the *same* edges, and the edges must
reveal nothing about any site's data. They come from the task definition: a
declared [min, max] per feature (domain knowledge or a data dictionary, the
same bounds a task declares for its min-max preprocessing, see
:mod:`securefed.preprocessing`), cut into ``n_bins`` equal-width bins. A value
outside the declared range falls into the first or last bin (it is clipped,
never refused, so an outlying record cannot break a round), and a split
"code <= b goes left" is the threshold ``x < min + (b + 1) * width``.

Alternatively the inner ``edges`` are given per feature (``n_bins - 1``
non-decreasing values inside the bounds), e.g. the cohort's quantiles computed
by secure aggregation before the trees grow (``bins = "quantiles"`` in a tree
task, :mod:`securefed.federation.computation`): then bin b holds
``edges[b-1] <= x < edges[b]``. Repeated edges leave empty bins, which no
split can use to separate anything, so a discrete feature costs nothing.

Codes are uint8 for up to 256 bins and uint16 beyond, so a node's coded copy
of its data is small; NaN and infinity are refused with a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import Field, dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np

from securefed.errors import InvalidParameter
from securefed.preprocessing import Preprocessing
from securefed.trees._checks import check_int, check_keys

__all__ = ["MAX_BINS", "Bins"]

#: The most bins a feature may have (codes are uint16).
MAX_BINS = 1 << 16


@dataclass(frozen=True)
class Bins:
    """``n_bins`` equal-width bins per feature between the declared ``low`` and ``high``."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    n_bins: int
    #: per feature, the n_bins - 1 inner edges (None: equal width between low and high)
    edges: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        check_int("n_bins", self.n_bins, 2, MAX_BINS)
        for name in ("low", "high"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise InvalidParameter(f"bins {name} must be a non-empty tuple with one bound per feature")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise InvalidParameter(f"bins {name} must hold finite numbers")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if len(self.low) != len(self.high):
            raise InvalidParameter(
                f"bins declare {len(self.low)} lower and {len(self.high)} upper bounds; give one of each per feature"
            )
        bad = [i for i, (lo, hi) in enumerate(zip(self.low, self.high)) if not hi > lo]
        if bad:
            i = bad[0]
            raise InvalidParameter(
                f"bin bounds need max > min for every feature; feature #{i + 1} has min {self.low[i]!r}, max {self.high[i]!r}"
            )
        if self.edges is not None:
            self._check_edges()

    def _check_edges(self) -> None:
        edges = self.edges
        if not isinstance(edges, (tuple, list)) or len(edges) != len(self.low):
            raise InvalidParameter(f"bin edges must give one list per feature ({len(self.low)})")
        checked = []
        for i, row in enumerate(edges):
            if not isinstance(row, (tuple, list)) or len(row) != self.n_bins - 1:
                raise InvalidParameter(f"bin edges of feature #{i + 1} must be {self.n_bins - 1} numbers (n_bins - 1)")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row):
                raise InvalidParameter(f"bin edges of feature #{i + 1} must be finite numbers")
            values = tuple(float(v) for v in row)
            if any(b < a for a, b in zip(values, values[1:])):
                raise InvalidParameter(f"bin edges of feature #{i + 1} must not decrease")
            if values and (values[0] < self.low[i] or values[-1] > self.high[i]):
                raise InvalidParameter(
                    f"bin edges of feature #{i + 1} must lie within its bounds [{self.low[i]!r}, {self.high[i]!r}]"
                )
            checked.append(values)
        object.__setattr__(self, "edges", tuple(checked))

    @classmethod
    def uniform(cls, low: Sequence[float], high: Sequence[float], n_bins: int) -> Bins:
        """Bins from any sequences of bounds (converted to tuples)."""
        return cls(tuple(low), tuple(high), n_bins)

    @classmethod
    def from_preprocessing(cls, preprocessing: Preprocessing, n_bins: int) -> Bins:
        """Bins over a task's declared min-max bounds (the public ranges its preprocessing uses).

        The bins apply to the *raw* features; a standard scaler declares no
        range, so it is refused.
        """
        if preprocessing.scaler != "minmax":
            raise InvalidParameter(
                f"bins need declared per-feature bounds; the {preprocessing.scaler} scaler has none: declare a minmax preprocessing or pass the bounds"
            )
        return cls(preprocessing.param("min"), preprocessing.param("max"), n_bins)

    @property
    def n_features(self) -> int:
        return len(self.low)

    @property
    def code_dtype(self) -> type[np.unsignedinteger]:
        return np.uint8 if self.n_bins <= 256 else np.uint16

    def digitize(self, X: np.ndarray) -> np.ndarray:
        """The bin code of every value (rows x features), clipped to the end bins."""
        try:
            values = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidParameter("features must be numbers") from None
        if values.ndim != 2 or values.shape[1] != self.n_features:
            raise InvalidParameter(f"bins are declared for {self.n_features} features; the data has shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise InvalidParameter("features contain NaN or infinity; impute or drop those rows first")
        if self.edges is not None:
            codes = np.empty(values.shape, dtype=self.code_dtype)
            for f, row in enumerate(self.edges):
                codes[:, f] = np.searchsorted(np.asarray(row), values[:, f], side="right")
            return codes
        low = np.asarray(self.low)
        scaled = (values - low) / (np.asarray(self.high) - low) * self.n_bins
        np.clip(np.floor(scaled), 0, self.n_bins - 1, out=scaled)
        return scaled.astype(self.code_dtype)

    def thresholds(self) -> np.ndarray:
        """Upper edge of every bin but the last (features x (n_bins - 1)): split b sends x < edge[b] left."""
        if self.edges is not None:
            return np.asarray(self.edges, dtype=np.float64).reshape(self.n_features, self.n_bins - 1)
        low = np.asarray(self.low)[:, None]
        width = (np.asarray(self.high) - np.asarray(self.low))[:, None] / self.n_bins
        return low + width * np.arange(1, self.n_bins)[None, :]

    def to_json(self) -> dict:
        out: dict = {"low": list(self.low), "high": list(self.high), "n_bins": self.n_bins}
        if self.edges is not None:  # only when set: equal-width bins keep the JSON (and digests) they had
            out["edges"] = [list(row) for row in self.edges]
        return out

    @classmethod
    def from_json(cls, raw: object) -> Bins:
        """Read :meth:`to_json`'s form strictly; raises :class:`InvalidParameter`."""
        with_edges = isinstance(raw, dict) and "edges" in raw
        data = check_keys("bins", raw, ("low", "high", "n_bins", "edges") if with_edges else ("low", "high", "n_bins"))
        for name in ("low", "high"):
            if not isinstance(data[name], list):
                raise InvalidParameter(f"bins {name} must be a list of numbers")
        edges = None
        if with_edges:
            if not isinstance(data["edges"], list) or not all(isinstance(row, list) for row in data["edges"]):
                raise InvalidParameter("bins edges must be a list of lists of numbers")
            edges = tuple(tuple(row) for row in data["edges"])
        return cls(tuple(data["low"]), tuple(data["high"]), data["n_bins"], edges)


class BinnedParams:
    """JSON round trip for a frozen parameter dataclass whose ``bins`` field is :class:`Bins` (forest, boosting).

    ``from_json`` refuses missing or unknown keys by name (``_JSON_NAME`` says what is being read)."""

    _JSON_NAME: ClassVar[str] = "params"
    # What a subclass has by being a dataclass with a ``bins`` field (declared here for the type checker only).
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    bins: Bins

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["bins"] = self.bins.to_json()
        return out

    @classmethod
    def from_json(cls, raw: object) -> Self:
        data = check_keys(cls._JSON_NAME, raw, [f.name for f in fields(cls)])
        return cls(**{**data, "bins": Bins.from_json(data["bins"])})
