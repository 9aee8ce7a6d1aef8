"""Run a tree computation in memory: nodes' vectors are summed as secure aggregation would reveal them.

The masks of secure aggregation cancel exactly in the sum mod 2^32, so adding
the nodes' uint32 vectors gives precisely what the coordinator learns; tests
and benchmarks use this instead of the ZeroMQ daemons. With ``via_json``
every request goes through its JSON form first, as on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from securefed.trees.driver import Driver
from securefed.trees.histograms import secure_sum
from securefed.trees.model import TreeEnsemble
from securefed.trees.request import HistogramRequest

__all__ = ["Worker", "run"]


class Worker(Protocol):
    def compute(self, request: HistogramRequest | dict) -> np.ndarray: ...


def run(driver: Driver, workers: Sequence[Worker], *, via_json: bool = False) -> TreeEnsemble:
    """Drive ``driver`` to its finished model with ``workers`` as the cohort."""
    request = driver.request()
    while True:
        sent: HistogramRequest | dict = json.loads(json.dumps(request.to_json())) if via_json else request
        outcome = driver.receive(secure_sum([worker.compute(sent) for worker in workers]))
        if isinstance(outcome, TreeEnsemble):
            return outcome
        request = outcome
