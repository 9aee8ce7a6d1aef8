"""Federated analytics over secure sums: vetted, named computations with JSON parameters.

A node computes a fixed-point vector from its own data for a *registered*
computation (never shipped code), after checking it against its
:class:`AnalyticsPolicy`; secure aggregation reveals only the sum; the
coordinator finishes the result from the sum. See docs/analytics.md.

Coordinator: ``driver = driver_for(kind, spec)``; loop ``next_request()`` /
``receive(summed, survivors)``; ``driver.result``. Node: ``respond(request, X,
y, policy)`` gives the vector to aggregate or a :class:`Refusal`.
"""

from __future__ import annotations

from securefed.analytics.base import Computation, Driver, Request
from securefed.analytics.kmeans import KMeansDriver
from securefed.analytics.local import modular_sum, run_local
from securefed.analytics.params import ParameterError
from securefed.analytics.policy import REFUSAL_CODES, AnalyticsPolicy, Refusal
from securefed.analytics.quantiles import QuantileDriver
from securefed.analytics.registry import REGISTRY, OneShot, driver_for, get
from securefed.analytics.respond import respond

__all__ = [
    "REFUSAL_CODES",
    "REGISTRY",
    "AnalyticsPolicy",
    "Computation",
    "Driver",
    "KMeansDriver",
    "OneShot",
    "ParameterError",
    "QuantileDriver",
    "Refusal",
    "Request",
    "driver_for",
    "get",
    "modular_sum",
    "respond",
    "run_local",
]
