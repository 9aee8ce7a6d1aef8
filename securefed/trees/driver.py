"""The coordinator-side state machine every tree computation shares (sans-IO).

A driver hands out a request (:meth:`Driver.request`), takes the securely
summed vector for it (:meth:`Driver.receive`) and answers with the next
request or, at the end, the finished :class:`~securefed.trees.model.TreeEnsemble`.
It does no I/O and keeps no clock: the daemon carries requests to the nodes
and the sums back. The legal moves are one table; a sum that fails a check
(wrong length, negative counts, histograms that disagree with known totals)
aborts the driver for good, since one bad sum taints every later level.
"""

from __future__ import annotations

import enum

import numpy as np

from securefed.errors import LocalProtocolError
from securefed.trees.model import TreeEnsemble
from securefed.trees.request import HistogramRequest

__all__ = ["TRANSITIONS", "Driver", "State"]


class State(enum.Enum):
    AWAIT_BASE = "await-base"  # boosting: waiting for the class counts / target sum
    AWAIT_HISTOGRAM = "await-histogram"  # waiting for a frontier's summed histograms
    DONE = "done"
    ABORTED = "aborted"


#: (state, outcome of a received sum) -> next state; anything else is a LocalProtocolError.
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.AWAIT_BASE, "next-request"): State.AWAIT_HISTOGRAM,
    (State.AWAIT_HISTOGRAM, "next-request"): State.AWAIT_HISTOGRAM,
    (State.AWAIT_HISTOGRAM, "finished"): State.DONE,
}


class Driver:
    """Base of :class:`~securefed.trees.forest.ForestBuilder` and :class:`~securefed.trees.boosting.BoostingBuilder`."""

    def __init__(self, initial: State) -> None:
        self.state = initial
        #: secure aggregations consumed so far (one per received sum)
        self.aggregations = 0
        self._model: TreeEnsemble | None = None
        self._pending: HistogramRequest | None = None

    def request(self) -> HistogramRequest:
        """The request the current sum must answer (the same object until a sum is received)."""
        if self.state not in (State.AWAIT_BASE, State.AWAIT_HISTOGRAM):
            raise LocalProtocolError(f"no request: the computation is {self.state.value}")
        if self._pending is None:
            self._pending = self._make_request()
        return self._pending

    def receive(self, summed: np.ndarray) -> HistogramRequest | TreeEnsemble:
        """Take the summed uint32 vector for :meth:`request`; return the next request or the finished model."""
        if self.state not in (State.AWAIT_BASE, State.AWAIT_HISTOGRAM):
            raise LocalProtocolError(f"cannot take a sum: the computation is {self.state.value}")
        self.request()
        try:
            outcome = self._take(np.asarray(summed))
        except Exception:
            self.state = State.ABORTED
            raise
        self.aggregations += 1
        self._pending = None
        self.state = TRANSITIONS[(self.state, "finished" if outcome is not None else "next-request")]
        if outcome is not None:
            self._model = outcome
            return outcome
        return self.request()

    @property
    def model(self) -> TreeEnsemble:
        if self._model is None:
            raise LocalProtocolError(f"no model yet: the computation is {self.state.value}")
        return self._model

    def _make_request(self) -> HistogramRequest:  # pragma: no cover - abstract
        raise NotImplementedError

    def _take(self, summed: np.ndarray) -> TreeEnsemble | None:  # pragma: no cover - abstract
        """Apply the sum; the finished model, or None when another request follows."""
        raise NotImplementedError
