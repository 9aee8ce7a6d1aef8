"""Run the real client and server state machines in memory.

This is the public way to exercise the protocol without a network: tests,
``securefed simulate`` and large-n benchmarks use it. Every node gets an
Ed25519 identity; every message goes through the same ``receive()`` calls the
daemons make. A node listed in ``dropouts`` under a stage goes silent from
that stage on: it sends nothing at that stage or later. After each stage the
simulator feeds the server a ``Deadline``, as a daemon's timer would.

Randomness is passed into every state machine. Without ``seed`` it is the OS
CSPRNG; with ``seed`` every identity key and every round secret comes from
AES-CTR streams keyed by a hash of the seed and the party, so a run is
reproducible (for tests and benchmarks only: a seeded run has no secrets).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefed.crypto.identity import SigningKey
from securefed.crypto.prg import SecureRandom
from securefed.errors import InvalidParameter, ProtocolAborted, SecureFedError
from securefed.secagg.client import ClientProtocol
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.messages import Deadline, Stage
from securefed.secagg.server import AggregateResult, ServerProtocol

__all__ = ["SimulationResult", "simulate"]

SimulationResult = AggregateResult


def _silent_from(dropouts: Mapping[str, Sequence[int]] | None, n: int) -> dict[int, int]:
    """id -> index of the first stage at which the node is silent."""
    silent: dict[int, int] = {}
    if dropouts is not None and not isinstance(dropouts, Mapping):
        raise InvalidParameter("dropouts maps a stage name to the ids that go silent from that stage on")
    valid = {stage.value: stage for stage in Stage}
    for name, ids in (dropouts or {}).items():
        if name not in valid:
            raise InvalidParameter(f"unknown stage {name!r}; expected one of {sorted(valid)}")
        for node in ids:
            if type(node) is not int or not 1 <= node <= n:
                raise InvalidParameter(f"dropout id {node!r} is not a node id in 1..{n}")
            index = valid[name].index
            silent[node] = min(index, silent.get(node, index))
    return silent


class _AnyRound(ClientPolicy):
    """The simulator's policy when no colluder count is given: every threshold and graph is used as
    given (tests explore t = 1 too); real nodes use ClientPolicy's colluder bounds."""

    def check(self, config: RoundConfig, roster_size: int | None = None) -> None:
        return None

    def consistency_quorum(self, roster_size: int) -> int:
        return 1


def _entropy_for(seed: bytes | int | None, party: str) -> Callable[[int], bytes]:
    if seed is None:
        return os.urandom
    return SecureRandom(
        hashlib.sha256(b"securefed/simulate/entropy/v1" + repr(seed).encode() + b"/" + party.encode()).digest()
    ).bytes


def _identity_for(seed: bytes | int | None, node: int) -> SigningKey:
    if seed is None:
        return SigningKey.generate()
    material = hashlib.sha256(b"securefed/simulate/identity/v1" + repr(seed).encode() + b"/%d" % node).digest()
    return SigningKey(Ed25519PrivateKey.from_private_bytes(material))


def simulate(
    inputs: Sequence[np.ndarray],
    threshold: int,
    dropouts: Mapping[str, Sequence[int]] | None = None,
    neighbours: int | None = None,
    seed: bytes | int | None = None,
    *,
    colluders: int | None = None,
    task: str = "simulation",
    round_id: int = 0,
) -> AggregateResult:
    """Securely aggregate ``inputs[i]`` (node ``i + 1``'s uint32 vector) in memory.

    Returns the sum mod 2^32 of the inputs that made it into the aggregate and
    the survivor ids; raises :class:`ProtocolAborted` when too few remain.
    ``seed`` makes the run reproducible (keys and round secrets derived from
    it; never use a seed where secrecy matters). ``colluders``, if given, makes
    every node enforce the colluder bound for that many colluding nodes
    (2t > n + c, or the sparse-graph bound); a round that fails it is refused
    with :class:`RemoteProtocolError` (reason ``weaker-than-policy``). Without
    it the threshold is used as given.
    """
    n = len(inputs)
    if n < 1:
        raise InvalidParameter("need at least one input")
    vectors = [np.asarray(vector) for vector in inputs]
    length = vectors[0].shape[0] if vectors[0].ndim == 1 else -1
    for vector in vectors:
        if vector.dtype != np.uint32 or vector.ndim != 1 or vector.shape[0] != length:
            raise InvalidParameter("inputs must be 1-D uint32 vectors of one length")
    if colluders is not None and (type(colluders) is not int or colluders < 0):
        raise InvalidParameter("colluders must be a non-negative integer")
    context = hashlib.sha256(b"securefed/simulate/v1" + repr(seed).encode()).digest()
    config = RoundConfig(task, round_id, n, threshold, length, context, neighbours)
    silent = _silent_from(dropouts, n)
    identities = {node: _identity_for(seed, node) for node in config.ids}
    roster = {node: key.public_bytes for node, key in identities.items()}
    if colluders is None:
        policy: ClientPolicy = _AnyRound(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=0)
    else:
        policy = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=colluders)
    verified: set[bytes] = set()
    clients = {
        node: ClientProtocol(
            config,
            node,
            identities[node],
            roster,
            vectors[node - 1],
            policy,
            signature_cache=verified,
            entropy=_entropy_for(seed, f"node/{node}"),
        )
        for node in config.ids
    }
    server = ServerProtocol(config, roster, entropy=_entropy_for(seed, "server"))

    def speaks(node: int, stage: Stage) -> bool:
        return silent.get(node, len(Stage)) > stage.index and not clients[node].aborted

    outbox = {node: clients[node].start() for node in config.ids if speaks(node, Stage.ADVERTISE)}
    for stage in Stage:
        deliveries = []
        for node in sorted(outbox):
            for message in outbox[node]:
                deliveries.extend(server.receive(message))
        if server.stage is stage:  # someone stayed silent: the deadline closes the stage
            deliveries.extend(server.receive(Deadline(stage)))
        if server.result is not None:
            return server.result
        next_stage = list(Stage)[stage.index + 1]
        outbox = {}
        for send in deliveries:
            client = clients[send.to]
            if client.aborted:
                continue
            try:
                replies = client.receive(send.message)
            except ProtocolAborted:
                continue  # the node refuses to go on; the server sees it as a dropout
            if speaks(send.to, next_stage):
                outbox[send.to] = replies
    raise SecureFedError("simulation ended without a result")  # unreachable by construction
