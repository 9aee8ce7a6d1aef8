"""A node's answer to an analytics request: its encoded contribution, or a refusal with its reason.

Everything the coordinator can cause (an unknown kind, bad parameters, a
request outside the site's policy, a request that does not fit the site's
data) is a :class:`~securefed.analytics.policy.Refusal`, for the node's audit
log and the coordinator; a local bug still raises.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from securefed.analytics.base import Request
from securefed.analytics.policy import AnalyticsPolicy, Refusal
from securefed.analytics.registry import REGISTRY
from securefed.dp.noise import UniformSource

__all__ = ["respond"]


def respond(
    request: Request | Mapping[str, object],
    X: object,
    y: object,
    policy: AnalyticsPolicy,
    *,
    rng: UniformSource | None = None,
) -> np.ndarray | Refusal:
    """The uint32 vector this site adds to the secure sum for ``request``, or why it will not."""
    if not isinstance(request, Request):
        try:
            request = Request.from_json(request)
        except ValueError as exc:
            return Refusal("invalid-parameters", str(exc))
    kind = REGISTRY.get(request.kind)
    if kind is None:
        return Refusal("unknown-computation", f"{request.kind!r} is not a computation this node knows")
    refused = kind.policy_check(request.params, policy, X, y)
    if refused is not None:
        return refused
    return kind.node_vector(request.params, X, y, rng=rng)
