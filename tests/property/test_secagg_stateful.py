"""A hostile network between honest nodes and an honest coordinator, as a hypothesis state machine.

One round, n = 4..7 real ``ClientProtocol`` machines and one real
``ServerProtocol``, complete or sparse (SecAgg+) graph, threshold drawn per
run. Every message in either direction sits in flight until a rule acts on it:
deliver any pending message (so reordering is free), drop one, duplicate one,
corrupt one (a byte of a key, signature, ciphertext or share; an id in a list;
an entry removed), fire the coordinator's deadline for its stage (or a stale
one for another stage), or tell the coordinator a node is gone.

Invariants, after every step:

* ``receive()`` / ``start()`` raise nothing but securefed's own protocol errors
  (``RemoteProtocolError``, ``ProtocolAborted``, ``InvalidShare``,
  ``LocalProtocolError``); a node that raises is ``ABORTED``; a message the
  coordinator rejects leaves its state alone (only ``ProtocolAborted`` ends it);
* no node ever releases both the b-share and the s-share of one peer, and no
  two nodes release different kinds for one peer (the coordinator never holds
  both secrets of a node);

and at the end, after letting the round run out (deliver what is in flight in
order, fire deadlines when nothing is), either the coordinator has a result
whose ``.sum`` is the exact uint32 sum of the inputs of ``.survivors``, or it
aborted and every node, once told, is in a terminal state.

Which corruptions can still end in a result? Anything covered by a signature
or an AEAD tag is refused, and a node that refuses before sending its masked
input is just a dropout, so the sum stays exact. A changed masked-input vector
is a different input (input integrity is not the protocol's job): the test
adds the change to that node's expected input. Two payloads have no
in-protocol integrity, by design, because the transport (CurveZMQ) protects
them: the shares a node returns to the coordinator at unmasking, and the list
of senders the coordinator relays shares from (withholding one makes the node
mask without that peer, and the coordinator then cannot take that mask out).
When a changed copy of one of those is *accepted*, the run is marked tainted
and the sum is not checked; everything else still is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from securefed.errors import (
    InvalidShare,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
)
from securefed.secagg import messages as _messages
from securefed.secagg.client import ClientProtocol, ClientState
from securefed.secagg.config import ClientPolicy
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
    KeyList,
    MaskedInput,
    RoundAborted,
    ShareKeys,
    ShareRelay,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.server import ServerProtocol, ServerState
from tests.secagg_harness import (
    assert_no_double_reveal,
    deterministic_round_keys,
    exact_sum,
    make_config,
    make_identities,
    make_inputs,
)

ALLOWED = (RemoteProtocolError, ProtocolAborted, InvalidShare, LocalProtocolError)
TERMINAL_CLIENT = (ClientState.DONE, ClientState.ABORTED)
TERMINAL_SERVER = (ServerState.DONE, ServerState.ABORTED)
PeerGone = getattr(_messages, "PeerGone", None)  # a driver event; not every version has it

# taint reasons: a changed copy of these, once accepted, may legitimately change the sum
UNMASK_PAYLOAD = "unmask-shares-changed"
RELAY_WITHHELD = "relay-sender-withheld"

# Thresholds across the whole range are explored here, below what a real site would accept.
PERMISSIVE = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0)


@dataclass
class InFlight:
    up: bool  # node -> coordinator (else coordinator -> node)
    node: int  # the sender if up, the recipient if down
    message: object
    taint: str | None = None


# --- corruption ---------------------------------------------------------------------


def _flip(data: st.DataObject, raw: bytes, what: str) -> bytes:
    if not raw:
        return b"\x00"
    i = data.draw(st.integers(0, len(raw) - 1), label=f"{what}: byte")
    mask = data.draw(st.integers(1, 255), label=f"{what}: xor")
    return raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]


def _other_id(data: st.DataObject, n: int, current: int) -> int:
    value = data.draw(st.integers(1, n - 1), label="other id")
    return value if value < current else value + 1


def _mutate_ids(data: st.DataObject, ids: tuple[int, ...], n: int) -> tuple[int, ...]:
    ops = ["add"] + (["replace", "remove"] if ids else [])
    op = data.draw(st.sampled_from(ops), label="id list op")
    if op == "add":
        new = data.draw(st.integers(1, n), label="added id")
        return tuple(sorted((*ids, new)))
    i = data.draw(st.integers(0, len(ids) - 1), label="id index")
    if op == "remove":
        return ids[:i] + ids[i + 1 :]
    return ids[:i] + (_other_id(data, n, ids[i]),) + ids[i + 1 :]


def _mutate_pairs(data: st.DataObject, pairs: tuple[tuple[int, bytes], ...], n: int, what: str):
    """Returns (new pairs, op) — op names what was done, so callers can judge it."""
    if not pairs:
        return ((data.draw(st.integers(1, n), label="id"), b"\x00" * 16),), "add"
    ops = ["flip", "replace-id", "remove"] + (["swap"] if len(pairs) > 1 else [])
    op = data.draw(st.sampled_from(ops), label=f"{what}: op")
    i = data.draw(st.integers(0, len(pairs) - 1), label=f"{what}: index")
    owner, payload = pairs[i]
    if op == "flip":
        return pairs[:i] + ((owner, _flip(data, payload, what)),) + pairs[i + 1 :], op
    if op == "replace-id":
        return pairs[:i] + ((_other_id(data, n, owner), payload),) + pairs[i + 1 :], op
    if op == "remove":
        return pairs[:i] + pairs[i + 1 :], op
    j = data.draw(st.integers(0, len(pairs) - 2), label=f"{what}: other index")
    j = j if j < i else j + 1
    swapped = list(pairs)
    swapped[i], swapped[j] = (pairs[i][0], pairs[j][1]), (pairs[j][0], pairs[i][1])
    return tuple(swapped), op


def corrupt(data: st.DataObject, message: object, n: int) -> tuple[object | None, str | None]:
    """A changed copy of ``message`` and a taint reason, or (None, None) if there is nothing to change."""
    if isinstance(message, AdvertiseKeys):
        field = data.draw(st.sampled_from(["c_pk", "s_pk", "signature", "sender"]), label="advertise field")
        if field == "sender":
            return dataclasses.replace(message, sender=_other_id(data, n, message.sender)), None
        return dataclasses.replace(message, **{field: _flip(data, getattr(message, field), field)}), None
    if isinstance(message, ShareKeys):
        pairs, _ = _mutate_pairs(data, message.ciphertexts, n, "share ciphertexts")
        return dataclasses.replace(message, ciphertexts=pairs), None
    if isinstance(message, MaskedInput):
        vector = message.vector.copy()
        if data.draw(st.booleans(), label="truncate vector"):
            return MaskedInput(message.sender, vector[:-1]), None
        i = data.draw(st.integers(0, len(vector) - 1), label="vector index")
        vector[i] = (int(vector[i]) + data.draw(st.integers(1, (1 << 32) - 1), label="vector delta")) % (1 << 32)
        return MaskedInput(message.sender, vector), None
    if isinstance(message, ConsistencySignature):
        if data.draw(st.booleans(), label="change signer"):
            return dataclasses.replace(message, sender=_other_id(data, n, message.sender)), None
        return dataclasses.replace(message, signature=_flip(data, message.signature, "signature")), None
    if isinstance(message, UnmaskShares):
        field = data.draw(st.sampled_from(["b_shares", "s_shares", "move"]), label="unmask field")
        if field == "move" and message.b_shares:
            moved = message.b_shares[0]
            s_shares = tuple(sorted((*message.s_shares, moved)))
            return UnmaskShares(message.sender, message.b_shares[1:], s_shares), UNMASK_PAYLOAD
        field = "b_shares" if field == "move" else field
        pairs, _ = _mutate_pairs(data, getattr(message, field), n, field)
        return dataclasses.replace(message, **{field: pairs}), UNMASK_PAYLOAD
    if isinstance(message, KeyList):
        entries = message.entries
        if not entries:
            return None, None
        i = data.draw(st.integers(0, len(entries) - 1), label="key list entry")
        field = data.draw(st.sampled_from(["c_pk", "s_pk", "signature", "sender", "remove"]), label="key list field")
        if field == "remove":
            return KeyList(entries[:i] + entries[i + 1 :]), None
        entry = entries[i]
        if field == "sender":
            changed = dataclasses.replace(entry, sender=_other_id(data, n, entry.sender))
        else:
            changed = dataclasses.replace(entry, **{field: _flip(data, getattr(entry, field), field)})
        return KeyList(entries[:i] + (changed,) + entries[i + 1 :]), None
    if isinstance(message, ShareRelay):
        pairs, op = _mutate_pairs(data, message.ciphertexts, n, "relay")
        return ShareRelay(pairs), (RELAY_WITHHELD if op == "remove" else None)
    if isinstance(message, ConsistencyRequest):
        return ConsistencyRequest(_mutate_ids(data, message.survivors, n)), None
    if isinstance(message, UnmaskRequest):
        field = data.draw(st.sampled_from(["survivors", "dropped", "signatures"]), label="unmask request field")
        if field == "signatures":
            pairs, _ = _mutate_pairs(data, message.signatures, n, "signatures")
            return dataclasses.replace(message, signatures=pairs), None
        return dataclasses.replace(message, **{field: _mutate_ids(data, getattr(message, field), n)}), None
    return None, None  # RoundAborted: nothing worth changing


# --- the machine ---------------------------------------------------------------------


class HostileNetworkRound(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.pending: list[InFlight] = []

    @initialize(data=st.data())
    def set_up_round(self, data: st.DataObject) -> None:
        self.build(data)
        # Let the network behave until the coordinator reaches a drawn stage, so that the
        # adversary's few dozen steps land on every stage, not mostly on the first one.
        honest_until = data.draw(st.sampled_from(list(Stage)), label="adversary starts at stage")
        event(f"adversary starts at {honest_until.value}")
        while self.pending and self.server.stage is not None and self.server.stage.index < honest_until.index:
            self._deliver(self.pending.pop(0))

    def build(self, data: st.DataObject) -> None:
        """Draw a round (n, graph, t, inputs, round keys) and put every node's advertisement in flight."""
        n = data.draw(st.integers(4, 7), label="n")
        neighbours = data.draw(st.sampled_from([None, None, 2, 4]), label="neighbours (None = complete)")
        size = make_config(n, 1, neighbours=neighbours).neighbourhood_size
        t = data.draw(st.integers(1, size), label="threshold")
        self.config = make_config(n, t, d=3, neighbours=neighbours)
        event(f"graph: {'complete' if self.config.is_complete_graph else 'sparse'}")
        identities = make_identities(n, seed=n)
        roster = {node: key.public_bytes for node, key in identities.items()}
        self.inputs = make_inputs(self.config, seed=data.draw(st.integers(0, 3), label="input seed"))
        self.clients = {
            node: ClientProtocol(self.config, node, identities[node], roster, self.inputs[node], PERMISSIVE)
            for node in self.config.ids
        }
        self.server = ServerProtocol(self.config, roster)
        self.pending: list[InFlight] = []
        self.produced_masked: dict[int, np.ndarray] = {}  # what each node actually sent
        self.accepted_masked: dict[int, np.ndarray] = {}  # what the coordinator kept
        self.outputs: dict[int, list[UnmaskShares]] = {}
        self.taints: list[str] = []
        # The sparse graph's seed depends on the round keys: make them replayable.
        with deterministic_round_keys(data.draw(st.binary(min_size=4, max_size=4), label="key seed")):
            for node, client in self.clients.items():
                (advert,) = client.start()
                self.pending.append(InFlight(True, node, advert))
        self.ready = True

    # --- moving messages -----------------------------------------------------------

    def _to_server(self, event_or_message: object) -> list | None:
        """The coordinator's answer, or None if it refused (the refusal must not move it, unless it aborts)."""
        before = self.server.state
        try:
            sends = self.server.receive(event_or_message)
        except ProtocolAborted:
            assert self.server.state is ServerState.ABORTED
            return
        except ALLOWED:
            assert self.server.state is before, "a rejected message must not move the coordinator"
            return
        self.pending.extend(InFlight(False, send.to, send.message) for send in sends)
        return sends

    def _deliver(self, item: InFlight) -> None:
        if item.up:
            accepted = self._to_server(item.message) is not None
            if accepted and isinstance(item.message, MaskedInput):
                self.accepted_masked[item.node] = item.message.vector
            if accepted and item.taint:
                self.taints.append(item.taint)
            return
        client = self.clients[item.node]
        was_terminal = client.state in TERMINAL_CLIENT
        try:
            replies = client.receive(item.message)
        except ALLOWED:
            assert client.state is ClientState.ABORTED or was_terminal, client.state
            return
        if item.taint:
            self.taints.append(item.taint)
        for reply in replies:
            assert reply.sender == item.node
            if isinstance(reply, MaskedInput):
                assert item.node not in self.produced_masked, "a node masked its input twice"
                self.produced_masked[item.node] = reply.vector.copy()
            if isinstance(reply, UnmaskShares):
                self.outputs.setdefault(item.node, []).append(reply)
            self.pending.append(InFlight(True, item.node, reply))

    def _pick(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.pending) - 1), label="in-flight index")

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def deliver_one(self, data: st.DataObject) -> None:
        self._deliver(self.pending.pop(self._pick(data)))

    @precondition(lambda self: self.pending)
    @rule()
    def deliver_all_in_flight(self) -> None:
        batch, self.pending = self.pending, []
        for item in batch:
            self._deliver(item)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def drop_or_duplicate(self, data: st.DataObject) -> None:
        i = self._pick(data)
        if data.draw(st.booleans(), label="duplicate (else drop)"):
            self.pending.append(dataclasses.replace(self.pending[i]))
        else:
            del self.pending[i]

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def corrupt_one(self, data: st.DataObject) -> None:
        self.corrupt_at(self._pick(data), data)

    def corrupt_at(self, i: int, data: st.DataObject) -> None:
        item = self.pending[i]
        changed, taint = corrupt(data, item.message, self.config.cohort_size)
        if changed is not None:
            event(f"corrupted {type(item.message).__name__}")
            self.pending[i] = InFlight(item.up, item.node, changed, item.taint or taint)

    @precondition(lambda self: self.ready and self.server.stage is not None)
    @rule(stage=st.one_of(st.none(), st.sampled_from(list(Stage))))
    def deadline(self, stage: Stage | None) -> None:
        """The stage's timer fires (``None``), or a stale or early timer for any stage."""
        current, before = self.server.stage, self.server.state
        sends = self._to_server(Deadline(current if stage is None else stage))
        if stage is not None and stage is not current:  # a stale (or early) timer changes nothing
            assert sends == [] and self.server.state is before

    @rule()
    def time_passes(self) -> None:
        """Always enabled (the round may be over): a quiet network lets the stage's timer fire."""
        if self.ready and not self.pending and self.server.stage is not None:
            self._to_server(Deadline(self.server.stage))

    @precondition(lambda self: PeerGone is not None and self.ready and self.server.stage is not None)
    @rule(data=st.data())
    def peer_gone(self, data: st.DataObject) -> None:
        node = data.draw(st.integers(1, self.config.cohort_size), label="gone node")
        self._to_server(PeerGone(node))

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def nobody_released_both_shares_of_a_peer(self) -> None:
        if self.ready:
            assert_no_double_reveal(self.clients, self.outputs)

    @invariant()
    def result_iff_done(self) -> None:
        if self.ready:
            assert (self.server.result is not None) == (self.server.state is ServerState.DONE)

    # --- the end -----------------------------------------------------------------------

    def teardown(self) -> None:
        if not self.ready:
            return
        for _ in range(10_000):  # let the round run out: in order, no more tampering
            if self.server.state in TERMINAL_SERVER:
                break
            if self.pending:
                self._deliver(self.pending.pop(0))
            else:
                self._to_server(Deadline(self.server.stage))
        assert self.server.state in TERMINAL_SERVER, f"coordinator stuck in {self.server.state}"
        assert_no_double_reveal(self.clients, self.outputs)

        if self.server.state is ServerState.DONE:
            result = self.server.result
            assert set(result.survivors) <= set(self.accepted_masked)
            if self.taints:
                event("result, tainted: " + ",".join(sorted(set(self.taints))))
                return
            event("result, checked")
            effective = {
                node: (self.inputs[node] + (self.accepted_masked[node] - self.produced_masked[node])).astype(np.uint32)
                for node in result.survivors
            }
            assert np.array_equal(result.sum, exact_sum(effective, result.survivors)), (
                f"wrong sum for survivors {result.survivors}"
            )
        else:
            event(f"aborted: {self.server.abort_reason.split(':')[0] if self.server.abort_reason else '?'}")
            # The driver tells everyone the round is over; afterwards nobody may still be waiting.
            for client in self.clients.values():
                if client.state not in TERMINAL_CLIENT:
                    client.receive(RoundAborted("coordinator-aborted"))
            states = {node: client.state for node, client in self.clients.items()}
            assert all(state in TERMINAL_CLIENT for state in states.values()), states


TestHostileNetworkRound = HostileNetworkRound.TestCase
TestHostileNetworkRound.settings = settings(
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


# --- one corruption, otherwise a well-behaved network ------------------------------------
#
# The machine above mixes everything, so any single kind of corruption is rare in a
# bounded run. Here each example corrupts exactly one message of a given type (or drops
# or duplicates it) and delivers everything else in order, so every kind gets dozens of
# tries; the end-of-round checks are the machine's own.

IN_FLIGHT_TYPES = [
    AdvertiseKeys,
    KeyList,
    ShareKeys,
    ShareRelay,
    MaskedInput,
    ConsistencyRequest,
    ConsistencySignature,
    UnmaskRequest,
    UnmaskShares,
]


@pytest.mark.parametrize("target", IN_FLIGHT_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_one_tampered_message_in_an_otherwise_orderly_round(target: type, data: st.DataObject) -> None:
    machine = HostileNetworkRound()
    machine.build(data)
    action = data.draw(st.sampled_from(["corrupt", "corrupt", "corrupt", "drop", "duplicate"]), label="action")
    done = False
    while machine.server.state not in TERMINAL_SERVER:
        candidates = [i for i, item in enumerate(machine.pending) if isinstance(item.message, target)]
        if candidates and not done:
            i = data.draw(st.sampled_from(candidates), label="which one")
            if action == "corrupt":
                machine.corrupt_at(i, data)
            elif action == "drop":
                del machine.pending[i]
            else:
                machine.pending.append(dataclasses.replace(machine.pending[i]))
            done = True
        elif machine.pending:
            machine._deliver(machine.pending.pop(0))
        else:
            machine._to_server(Deadline(machine.server.stage))
        machine.nobody_released_both_shares_of_a_peer()
        machine.result_iff_done()
    machine.teardown()
