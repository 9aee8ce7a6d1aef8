"""Run an analytics driver over in-memory sites (tests, benchmarks, examples).

The same calls a deployment makes -- ``respond`` at every site, a sum mod
2^32, ``driver.receive`` -- with the secure aggregation replaced by
``aggregate`` (default: the plain modular sum, which is what secure
aggregation reveals; benchmarks pass the real protocol's simulator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from securefed.analytics.base import Driver
from securefed.analytics.policy import AnalyticsPolicy, Refusal
from securefed.analytics.respond import respond
from securefed.dp.noise import UniformSource
from securefed.errors import ProtocolAborted

__all__ = ["modular_sum", "run_local"]

Site = tuple[object, object]  # (X, y); y may be None


def modular_sum(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The sum mod 2^32 of uint32 vectors (uint32 addition wraps)."""
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        total += vector
    return total


def run_local(
    driver: Driver,
    sites: Sequence[Site],
    policies: AnalyticsPolicy | Sequence[AnalyticsPolicy] | None = None,
    *,
    aggregate: Callable[[list[np.ndarray]], np.ndarray] = modular_sum,
    rng: UniformSource | None = None,
) -> dict:
    """Drive ``driver`` to its result; a site that refuses a request is left out of that sum.

    The result gains ``refusals``: one entry per refusal, ``{"site", "aggregation", "code", "detail"}``.
    Raises ProtocolAborted when every site refuses a request.
    """
    if policies is None:
        policies = AnalyticsPolicy.permissive()
    per_site = [policies] * len(sites) if isinstance(policies, AnalyticsPolicy) else list(policies)
    refusals = []
    while (request := driver.next_request()) is not None:
        vectors = []
        for index, ((X, y), policy) in enumerate(zip(sites, per_site)):
            answer = respond(request, X, y, policy, rng=rng)
            if isinstance(answer, Refusal):
                refusals.append({"site": index, "aggregation": driver.aggregations, **answer.to_json()})
            else:
                vectors.append(answer)
        if not vectors:
            raise ProtocolAborted(f"every site refused {request.kind}: {refusals[-1]['detail']}", stage="analytics")
        driver.receive(aggregate(vectors), len(vectors))
    result = dict(driver.result)
    result["refusals"] = refusals
    return result
