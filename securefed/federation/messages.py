"""Orchestration messages between the coordinator and node daemons.

Secure-aggregation messages (``securefed.secagg.messages``) travel inside an
:class:`Envelope` that names the task and the aggregation they belong to;
the messages here wrap them with what a training round needs: who takes
part, the global model, the training and encoding parameters, refusals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.secagg.messages import ClientMessage, ServerMessage

__all__ = [
    "Envelope",
    "FederationMessage",
    "Hello",
    "Refusal",
    "RoundResult",
    "RoundStart",
]


@dataclass(frozen=True)
class Hello:
    """Node -> coordinator, on connect and as a heartbeat. Identity comes from the CURVE key, not ``node``."""

    node: str
    busy: bool = False


@dataclass(frozen=True)
class Refusal:
    """Node -> coordinator: the node will not take part in this aggregation, and why (shown to operators)."""

    reason: str
    detail: str


@dataclass(frozen=True, eq=False)
class RoundStart:
    """Coordinator -> node: everything a node needs to train and join one aggregation.

    ``cohort`` lists ``(id, node name)`` for every participant; ``spec`` is a
    JSON-compatible dict of round parameters (model kind, epochs, learning
    rate, encoding, threshold, neighbours, ...) that the node validates and
    hashes, with ``model``, into the round context.
    """

    node_id: int
    cohort: tuple[tuple[int, str], ...]
    spec: dict
    model: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoundStart):
            return NotImplemented
        return (
            self.node_id == other.node_id
            and self.cohort == other.cohort
            and self.spec == other.spec
            and self.model.dtype == other.model.dtype
            and np.array_equal(self.model, other.model)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class RoundResult:
    """Coordinator -> node: how the aggregation ended (for the node's log and audit trail)."""

    completed: bool
    participants: int
    detail: str


FederationMessage = Hello | Refusal | RoundStart | RoundResult


@dataclass(frozen=True, eq=False)
class Envelope:
    """What crosses the wire: a message plus the task and aggregation id it belongs to.

    ``aggregation`` is unique per aggregation attempt within a task (a retried
    round gets a new one), and it is the ``round_id`` bound into every
    signature and key of that attempt. 0 is used for messages outside any
    aggregation (``Hello``).
    """

    task: str
    aggregation: int
    body: FederationMessage | ClientMessage | ServerMessage

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return self.task == other.task and self.aggregation == other.aggregation and self.body == other.body

    __hash__ = None  # type: ignore[assignment]
