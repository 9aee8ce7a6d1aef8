"""The registry of vetted computations: name -> kind, and the coordinator's entry point.

Only what is registered here can run: a request names a kind and carries
JSON parameters, never code. ``driver_for`` turns a task's computation and
spec into the sans-IO :class:`~securefed.analytics.base.Driver` that plans its
secure aggregations: one for the single-shot kinds, several for ``quantiles``
(refined histograms) and ``kmeans`` (Lloyd iterations), whose specs differ from
the per-round parameters the nodes see (see their drivers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.analytics.base import Computation, Driver, Request
from securefed.analytics.histogram import Histogram
from securefed.analytics.kmeans import KMeansDriver, KMeansStep
from securefed.analytics.moments import Correlation, Count, Covariance, Mean, Variance
from securefed.analytics.quantiles import QuantileDriver, QuantileStep
from securefed.analytics.regression import LinearRegression
from securefed.config_util import nearest
from securefed.errors import InvalidParameter

__all__ = ["REGISTRY", "OneShot", "driver_for", "get"]

#: Every computation a node can be asked for, by name.
REGISTRY: dict[str, Computation[Any]] = {
    kind.name: kind
    for kind in (
        Count(),
        Mean(),
        Variance(),
        Covariance(),
        Correlation(),
        Histogram(),
        QuantileStep(),
        KMeansStep(),
        LinearRegression(),
    )
}


def get(name: object) -> Computation[Any]:
    """The registered kind called ``name``; InvalidParameter (with the nearest name) otherwise."""
    if not isinstance(name, str) or name not in REGISTRY:
        guess = nearest(str(name), list(REGISTRY))
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise InvalidParameter(f"unknown computation {name!r}{hint} (known: {sorted(REGISTRY)})")
    return REGISTRY[name]


class OneShot(Driver):
    """A single-aggregation kind as a driver: one request, then its finished result."""

    def __init__(self, kind: str, params: Mapping[str, object]) -> None:
        super().__init__()
        self.kind = get(kind)
        self.kind.parse(params)  # refuse a bad spec before anything is sent
        self.params = dict(params)

    def _plan(self) -> Request:
        return Request(self.kind.name, self.params)

    def _absorb(self, request: Request, summed: np.ndarray, survivors: int) -> None:
        self.finish_with(self.kind.finish(request.params, summed, survivors))


def driver_for(kind: str, spec: Mapping[str, object]) -> Driver:
    """The driver for a task asking for ``kind`` with ``spec`` (raises InvalidParameter on a bad spec)."""
    if kind == QuantileStep.name:
        return QuantileDriver(spec)
    if kind == KMeansStep.name:
        return KMeansDriver(spec)
    return OneShot(kind, spec)
