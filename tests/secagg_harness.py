"""Builders for honest secure-aggregation rounds, shared by the adversarial tests.

``tests/unit/test_malicious_coordinator.py`` runs an honest round up to some
stage with :class:`HonestRound`, then tampers with what the (real) coordinator
would send; ``tests/property/test_secagg_stateful.py`` uses the same builders
for its parties. Everything here drives the real ``ClientProtocol`` and
``ServerProtocol``; nothing re-implements protocol logic.

Identity keys, inputs and every round secret are deterministic (derived from a
seed: the state machines take their randomness as a parameter), so a failing
run can be replayed. ``HonestRound(..., seed=...)`` changes all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefed.crypto.identity import SigningKey
from securefed.crypto.prg import SecureRandom
from securefed.errors import InvalidShare, ProtocolAborted, RemoteProtocolError, SecureFedError
from securefed.secagg.bounds import default_colluders, minimum_safe_threshold
from securefed.secagg.client import ClientProtocol
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.graph import NeighbourGraph
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    Deadline,
    KeyList,
    MaskedInput,
    SeedReveal,
    SeedRevealList,
    Send,
    ShareKeys,
    Stage,
    UnmaskShares,
)
from securefed.secagg.server import AggregateResult, ServerProtocol
from securefed.secagg.transcript import graph_seed

__all__ = [
    "DEFAULT_CONTEXT",
    "STAGE_OF_CLIENT_MESSAGE",
    "HonestRound",
    "assert_no_double_reveal",
    "entropy_for",
    "exact_sum",
    "make_config",
    "make_identities",
    "make_inputs",
    "safe_threshold",
]

DEFAULT_CONTEXT = hashlib.sha256(b"securefed/tests/model-v1").digest()

STAGE_OF_CLIENT_MESSAGE: dict[type, Stage] = {
    AdvertiseKeys: Stage.ADVERTISE,
    SeedReveal: Stage.REVEAL,
    ShareKeys: Stage.SHARE,
    MaskedInput: Stage.MASKED_INPUT,
    ConsistencySignature: Stage.CONSISTENCY,
    UnmaskShares: Stage.UNMASK,
}


def make_identities(n: int, seed: int = 0) -> dict[int, SigningKey]:
    """Ed25519 identity keys for ids 1..n, derived from ``seed`` (test-only determinism)."""
    return {
        node: SigningKey(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"id/%d/%d" % (seed, node)).digest()))
        for node in range(1, n + 1)
    }


def make_config(
    n: int,
    t: int,
    *,
    d: int = 4,
    neighbours: int | None = None,
    task: str = "adversarial-test",
    round_id: int = 1,
    context: bytes = DEFAULT_CONTEXT,
) -> RoundConfig:
    return RoundConfig(task, round_id, n, t, d, context, neighbours)


def make_inputs(config: RoundConfig, seed: int = 0) -> dict[int, np.ndarray]:
    """Input vectors (not secrets for the test, so numpy's generator is fine here)."""
    rng = np.random.default_rng(seed)
    return {node: rng.integers(0, 1 << 32, size=config.vector_length, dtype=np.uint64).astype(np.uint32) for node in config.ids}


def exact_sum(inputs: Mapping[int, np.ndarray], ids: Iterable[int]) -> np.ndarray:
    """The uint32 sum mod 2^32, computed independently of the protocol (in Python ints)."""
    ids = list(ids)
    length = len(next(iter(inputs.values())))
    total = [0] * length
    for node in ids:
        for i, value in enumerate(inputs[node].tolist()):
            total[i] += value
    return np.array([value % (1 << 32) for value in total], dtype=np.uint32)


def entropy_for(seed: int | bytes, party: str):
    """A deterministic CSPRNG stream for one party (test-only: its output is no secret)."""
    return SecureRandom(hashlib.sha256(b"securefed/tests/entropy/" + repr(seed).encode() + b"/" + party.encode()).digest()).bytes


def safe_threshold(n: int, colluders: int | None = None) -> int:
    """The smallest threshold the default ClientPolicy accepts for a complete graph of n (roster n)."""
    return minimum_safe_threshold(n, default_colluders(n) if colluders is None else colluders)


def assert_no_double_reveal(
    clients: Mapping[int, ClientProtocol], outputs: Mapping[int, Iterable[UnmaskShares]] | None = None
) -> None:
    """No honest node released both shares of one peer — per node, and (honest nodes) across nodes.

    ``outputs`` are the ``UnmaskShares`` messages the nodes actually returned; they must agree
    with what each node recorded in ``revealed``. Across nodes: no two honest nodes give
    different answers for one peer, so one peer's b-share and s-share never both leave honest
    hands. That must hold with an honest coordinator whatever the network does, and against a
    malicious coordinator whenever t exceeds half the neighbourhood (the policy's default).
    """
    kinds_by_peer: dict[int, set[str]] = {}
    for node, client in clients.items():
        assert set(client.revealed.values()) <= {"b", "s"}, (node, client.revealed)
        sent_b: set[int] = set()
        sent_s: set[int] = set()
        for message in (outputs or {}).get(node, ()):
            assert message.sender == node
            sent_b |= {owner for owner, _ in message.b_shares}
            sent_s |= {owner for owner, _ in message.s_shares}
        assert not sent_b & sent_s, f"node {node} sent both shares of {sorted(sent_b & sent_s)}"
        assert all(client.revealed.get(owner) == "b" for owner in sent_b), (node, sent_b, client.revealed)
        assert all(client.revealed.get(owner) == "s" for owner in sent_s), (node, sent_s, client.revealed)
        for peer, kind in client.revealed.items():
            kinds_by_peer.setdefault(peer, set()).add(kind)
    mixed = {peer: kinds for peer, kinds in kinds_by_peer.items() if len(kinds) > 1}
    assert not mixed, f"both a b-share and an s-share were released for peers {sorted(mixed)}"


class HonestRound:
    """Real clients and a real coordinator for one round, driven step by step.

    ``silent`` maps a node to the stage from which it stops answering (a dropout).
    ``configs`` lets a test hand some nodes a different config than the coordinator's
    (e.g. another model context); by default everyone shares ``config``. ``policies``
    overrides ``policy`` for some nodes (e.g. colluders that accept anything). ``t=None``
    takes the smallest threshold the default policy accepts (2t > n + c, c = max(1, ceil(n/5))).
    Every party's randomness is a deterministic stream derived from ``seed``.
    """

    #: when a list, every round built is appended to it (tests check all of them afterwards)
    registry: list[HonestRound] | None = None

    def __init__(
        self,
        n: int = 5,
        t: int | None = None,
        *,
        d: int = 4,
        neighbours: int | None = None,
        task: str = "adversarial-test",
        round_id: int = 1,
        context: bytes = DEFAULT_CONTEXT,
        identities: Mapping[int, SigningKey] | None = None,
        inputs: Mapping[int, np.ndarray] | None = None,
        policy: ClientPolicy | None = None,
        policies: Mapping[int, ClientPolicy] | None = None,
        silent: Mapping[int, Stage] | None = None,
        configs: Mapping[int, RoundConfig] | None = None,
        seed: int = 0,
        roster_size: int | None = None,
    ) -> None:
        if t is None:
            t = safe_threshold(n)
        self.config = make_config(n, t, d=d, neighbours=neighbours, task=task, round_id=round_id, context=context)
        self.identities = dict(identities) if identities is not None else make_identities(n, seed)
        self.roster = {node: key.public_bytes for node, key in self.identities.items()}
        self.inputs = dict(inputs) if inputs is not None else make_inputs(self.config, seed)
        self.silent = dict(silent or {})
        self.node_configs = {node: (configs or {}).get(node, self.config) for node in self.config.ids}
        self.clients = {
            node: ClientProtocol(
                self.node_configs[node],
                node,
                self.identities[node],
                self.roster,
                self.inputs[node],
                policy=(policies or {}).get(node, policy),
                entropy=entropy_for(seed, f"{task}/{round_id}/node/{node}"),
                roster_size=roster_size,
            )
            for node in self.config.ids
        }
        self.server = ServerProtocol(self.config, self.roster, entropy=entropy_for(seed, f"{task}/{round_id}/server"))
        #: every UnmaskShares a node returned, by node
        self.unmask_outputs: dict[int, list[UnmaskShares]] = {}
        #: the exception each node raised, if any
        self.errors: dict[int, SecureFedError] = {}
        #: node messages the coordinator refused, with its reason
        self.server_rejections: list[tuple[object, SecureFedError]] = []
        #: every message the coordinator produced, in order (a transcript to replay later)
        self.server_log: list[Send] = []
        #: every message the nodes produced, in order
        self.client_log: list[object] = []
        if HonestRound.registry is not None:
            HonestRound.registry.append(self)

    def speaks(self, node: int, stage: Stage) -> bool:
        silent_from = self.silent.get(node)
        return (silent_from is None or stage.index < silent_from.index) and not self.clients[node].aborted

    def start(self) -> list[AdvertiseKeys]:
        out = []
        for node in self.config.ids:
            if self.speaks(node, Stage.ADVERTISE):
                out.extend(self.clients[node].start())
        self.client_log.extend(out)
        return out

    def to_server(self, messages: Iterable[object], *, close: bool = True) -> list[Send]:
        """Feed node messages to the coordinator; fire the stage's deadline if it is still open."""
        sends: list[Send] = []
        stage = self.server.stage
        for message in messages:
            try:
                sends.extend(self.server.receive(message))
            except (RemoteProtocolError, InvalidShare) as exc:  # the coordinator drops that message
                self.server_rejections.append((message, exc))
        if close and self.server.stage is stage and stage is not None:
            sends.extend(self.server.receive(Deadline(stage)))
        self.server_log.extend(sends)
        return sends

    def deliver(self, node: int, message: object) -> list[object]:
        """One coordinator message to one node; records outputs and errors; returns replies."""
        client = self.clients[node]
        try:
            replies = client.receive(message)
        except SecureFedError as exc:
            self.errors[node] = exc
            return []
        for reply in replies:
            if isinstance(reply, UnmaskShares):
                self.unmask_outputs.setdefault(node, []).append(reply)
        return replies

    def to_clients(self, sends: Iterable[Send]) -> list[object]:
        """Deliver coordinator messages; replies of nodes that go silent at that stage are withheld."""
        replies: list[object] = []
        for send in sends:
            if self.clients[send.to].state.value in ("done", "aborted"):
                continue
            out = self.deliver(send.to, send.message)
            out = [m for m in out if self.speaks(send.to, STAGE_OF_CLIENT_MESSAGE[type(m)])]
            replies.extend(out)
        self.client_log.extend(replies)
        return replies

    def run_until(self, message_type: type) -> list[Send]:
        """Run honestly until the coordinator emits ``message_type``; return those sends, undelivered."""
        outbox: list[object] = self.start()
        for _ in range(len(Stage)):
            sends = self.to_server(outbox)
            if any(isinstance(send.message, message_type) for send in sends):
                return sends
            if self.server.result is not None:
                break
            outbox = self.to_clients(sends)
        raise AssertionError(f"the coordinator never sent {message_type.__name__}")

    def finish(self, sends: Iterable[Send]) -> None:
        """Deliver ``sends`` and run the rest of the round honestly (until a result or an abort)."""
        outbox = self.to_clients(sends)
        try:
            while self.server.state.value not in ("done", "aborted"):
                outbox = self.to_clients(self.to_server(outbox))
        except ProtocolAborted:
            pass  # the coordinator gave up; callers check ``server.state``

    def run(self) -> AggregateResult:
        """The whole round, honestly. Returns the coordinator's result (raises if it aborts)."""
        outbox: list[object] = self.start()
        while self.server.result is None:
            outbox = self.to_clients(self.to_server(outbox))
        return self.server.result

    def key_list(self) -> KeyList:
        """The (honest) key list the coordinator sent, from the transcript."""
        for send in self.server_log:
            if isinstance(send.message, KeyList):
                return send.message
        raise AssertionError("the coordinator has not sent a key list yet")

    def reveal_list(self) -> SeedRevealList:
        """The (honest) list of graph-randomness reveals the coordinator sent, from the transcript."""
        for send in self.server_log:
            if isinstance(send.message, SeedRevealList):
                return send.message
        raise AssertionError("the coordinator has not sent the seed reveals yet")

    def graph_seed(self) -> bytes:
        """The graph seed every party derives from the revealed graph randomness."""
        return graph_seed(self.config, self.reveal_list().reveals)

    def graph(self) -> NeighbourGraph:
        """The graph over the whole cohort; nodes that never advertised are missing vertices."""
        return NeighbourGraph.build(self.config.ids, self.config.degree, self.graph_seed())

    def live_neighbours(self, node: int) -> frozenset[int]:
        """``node``'s closed neighbourhood among the nodes of the key list."""
        members = frozenset(entry.sender for entry in self.key_list().entries)
        return self.graph().neighbours(node) & members

    def sends_to(self, sends: Iterable[Send], node: int) -> object:
        """The single message in ``sends`` addressed to ``node``."""
        found = [send.message for send in sends if send.to == node]
        assert len(found) == 1, f"expected one message for {node}, got {found}"
        return found[0]
