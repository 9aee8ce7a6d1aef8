"""Secure aggregation (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020), sans-IO.

``ClientProtocol`` and ``ServerProtocol`` are pure state machines; ``simulate``
runs them in memory. Nothing here imports ``zmq`` or the wire codec.
"""

from securefed.secagg.client import CLIENT_TRANSITIONS, ClientProtocol, ClientState
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.graph import GraphParameters, NeighbourGraph, propose_parameters
from securefed.secagg.server import SERVER_TRANSITIONS, AggregateResult, ServerProtocol, ServerState
from securefed.secagg.simulate import simulate

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "AggregateResult",
    "ClientPolicy",
    "ClientProtocol",
    "ClientState",
    "GraphParameters",
    "NeighbourGraph",
    "RoundConfig",
    "ServerProtocol",
    "ServerState",
    "propose_parameters",
    "simulate",
]
