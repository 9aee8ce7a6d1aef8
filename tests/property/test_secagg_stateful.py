"""A hostile network between honest nodes and an honest coordinator, as a hypothesis state machine.

One round, n = 4..7 real ``ClientProtocol`` machines and one real
``ServerProtocol``, complete or sparse (SecAgg+) graph, threshold drawn per
run, every party's randomness from a drawn seed (so a failure replays). All
six stages run: advertise, reveal (graph randomness), share (ciphertexts and
signed share commitments), masked input, consistency, unmask. Every message in
either direction sits in flight until a rule acts on it: deliver any pending
message (so reordering is free), drop one, duplicate one, corrupt one (a byte
of a key, commitment, reveal, signature, ciphertext or share; an id in a list;
an entry removed, swapped or withheld), fire the coordinator's deadline for its
stage (or a stale one for another stage), or tell the coordinator a node is
gone.

Invariants, after every step:

* ``receive()`` / ``start()`` raise nothing but securefed's own protocol errors
  (``RemoteProtocolError``, ``ProtocolAborted``, ``InvalidShare``,
  ``LocalProtocolError``); a node that raises is ``ABORTED``; a message the
  coordinator rejects leaves its state alone (only ``ProtocolAborted`` ends it);
* no node ever releases both the b-share and the s-share of one peer, and no
  two nodes release different kinds for one peer (the coordinator never holds
  both secrets of a node);
* a node lists a dealer in ``bad_dealers`` only if that dealer's ``ShareKeys``
  or this node's ``ShareRelay`` was tampered with;
* nobody is named (``culprits``, ``excluded``) unless its own message was
  tampered with: every dealer is honest and its commitments are signed, so no
  dealer is ever blamed; a holder is excluded exactly when a changed copy of
  its unmask shares was accepted; a reveal-stage abort names exactly the
  advertisers whose reveal the coordinator never accepted;

and at the end, after letting the round run out (deliver what is in flight in
order, fire deadlines when nothing is), either the coordinator has a result
whose ``.sum`` is the exact uint32 sum of the inputs of ``.survivors``, or it
aborted and every node, once told, is in a terminal state.

Which corruptions can still end in a result? Anything covered by a signature,
a commitment or an AEAD tag is refused, and a node that refuses before sending
its masked input is just a dropout, so the sum stays exact. A share ciphertext
or commitment that fails makes its holder skip that dealer (it never reveals
it), which costs one share, not the sum. Changed unmask shares no longer taint
the sum: each is checked against its dealer's signed commitment and its
holder is excluded. A changed masked-input vector is a different input (input
integrity is not the protocol's job): the test adds the change to that node's
expected input. One payload still has no in-protocol integrity, by design,
because the transport (CurveZMQ) protects it: the list of senders the
coordinator relays shares from (withholding one makes the node mask without
that peer, and the coordinator then cannot take that mask out). When such a
relay is *accepted*, the run is marked tainted and the sum is not checked;
everything else still is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import event, given, settings
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
from securefed.secagg.client import ClientProtocol, ClientState
from securefed.secagg.config import ClientPolicy
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
    KeyList,
    MaskedInput,
    PeerGone,
    RoundAborted,
    SeedReveal,
    SeedRevealList,
    ShareKeys,
    ShareRelay,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.server import ServerProtocol, ServerState
from tests.secagg_harness import (
    assert_no_double_reveal,
    entropy_for,
    exact_sum,
    make_config,
    make_identities,
    make_inputs,
)

ALLOWED = (RemoteProtocolError, ProtocolAborted, InvalidShare, LocalProtocolError)
TERMINAL_CLIENT = (ClientState.DONE, ClientState.ABORTED)
TERMINAL_SERVER = (ServerState.DONE, ServerState.ABORTED)

# taint reason: a changed copy of this, once accepted, may legitimately change the sum
RELAY_WITHHELD = "relay-sender-withheld"
# ops on an UnmaskShares list that leave a share in it which its dealer never dealt to that holder
FORGING_OPS = frozenset({"flip", "replace-id", "swap"})

# Thresholds across the whole range are explored here, below what a real site would accept
# (a curious coordinator, no colluders); a sparse round still needs t >= 2.
PERMISSIVE = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=0, adversary="curious")


def _budget(examples: int) -> int:
    """``examples`` under the ci profile (100 examples), scaled with whatever profile is loaded."""
    return max(1, examples * settings.default.max_examples // 100)


@dataclass
class InFlight:
    up: bool  # node -> coordinator (else coordinator -> node)
    node: int  # the sender if up, the recipient if down
    message: object
    taint: str | None = None
    forged: str | None = None  # for a changed UnmaskShares: the op that changed it


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


@dataclass(frozen=True)
class Corruption:
    message: object
    taint: str | None = None
    forged: str | None = None


def corrupt(data: st.DataObject, message: object, n: int) -> Corruption | None:
    """A changed copy of ``message`` (with what to remember about it), or None if there is nothing to change."""
    if isinstance(message, AdvertiseKeys):
        field = data.draw(st.sampled_from(["c_pk", "s_pk", "seed_commitment", "signature", "sender"]), label="advertise field")
        if field == "sender":
            return Corruption(dataclasses.replace(message, sender=_other_id(data, n, message.sender)))
        return Corruption(dataclasses.replace(message, **{field: _flip(data, getattr(message, field), field)}))
    if isinstance(message, SeedReveal):
        if data.draw(st.booleans(), label="change revealer"):
            return Corruption(dataclasses.replace(message, sender=_other_id(data, n, message.sender)))
        return Corruption(dataclasses.replace(message, value=_flip(data, message.value, "reveal")))
    if isinstance(message, ShareKeys):
        field = data.draw(st.sampled_from(["ciphertexts", "commitments", "signature"]), label="share keys field")
        if field == "signature":
            return Corruption(dataclasses.replace(message, signature=_flip(data, message.signature, "signature")))
        pairs, _ = _mutate_pairs(data, getattr(message, field), n, f"share keys {field}")
        return Corruption(dataclasses.replace(message, **{field: pairs}))
    if isinstance(message, MaskedInput):
        vector = message.vector.copy()
        what = data.draw(st.sampled_from(["vector", "vector", "truncate", "reports"]), label="masked input field")
        if what == "truncate":
            return Corruption(dataclasses.replace(message, vector=vector[:-1]))
        if what == "reports":  # forge or drop a report of a bad dealer (it can frame that dealer)
            return Corruption(dataclasses.replace(message, bad_dealers=_mutate_ids(data, message.bad_dealers, n)))
        i = data.draw(st.integers(0, len(vector) - 1), label="vector index")
        vector[i] = (int(vector[i]) + data.draw(st.integers(1, (1 << 32) - 1), label="vector delta")) % (1 << 32)
        return Corruption(dataclasses.replace(message, vector=vector))
    if isinstance(message, ConsistencySignature):
        if data.draw(st.booleans(), label="change signer"):
            return Corruption(dataclasses.replace(message, sender=_other_id(data, n, message.sender)))
        return Corruption(dataclasses.replace(message, signature=_flip(data, message.signature, "signature")))
    if isinstance(message, UnmaskShares):
        field = data.draw(st.sampled_from(["b_shares", "s_shares", "move"]), label="unmask field")
        if field == "move" and message.b_shares:
            moved = message.b_shares[0]
            s_shares = tuple(sorted((*message.s_shares, moved)))
            return Corruption(UnmaskShares(message.sender, message.b_shares[1:], s_shares), forged="move")
        field = "b_shares" if field == "move" else field
        pairs, op = _mutate_pairs(data, getattr(message, field), n, field)
        return Corruption(dataclasses.replace(message, **{field: pairs}), forged=op)
    if isinstance(message, KeyList):
        entries = message.entries
        if not entries:
            return None
        i = data.draw(st.integers(0, len(entries) - 1), label="key list entry")
        field = data.draw(
            st.sampled_from(["c_pk", "s_pk", "seed_commitment", "signature", "sender", "remove"]), label="key list field"
        )
        if field == "remove":
            return Corruption(KeyList(entries[:i] + entries[i + 1 :]))
        entry = entries[i]
        if field == "sender":
            changed = dataclasses.replace(entry, sender=_other_id(data, n, entry.sender))
        else:
            changed = dataclasses.replace(entry, **{field: _flip(data, getattr(entry, field), field)})
        return Corruption(KeyList(entries[:i] + (changed,) + entries[i + 1 :]))
    if isinstance(message, SeedRevealList):
        pairs, _ = _mutate_pairs(data, message.reveals, n, "reveals")
        return Corruption(SeedRevealList(pairs))
    if isinstance(message, ShareRelay):
        field = data.draw(st.sampled_from(["ciphertexts", "commitments", "withhold"]), label="relay field")
        if field == "withhold":  # drop one sender from both lists, consistently
            if not message.ciphertexts:
                return None
            i = data.draw(st.integers(0, len(message.ciphertexts) - 1), label="withheld index")
            sender = message.ciphertexts[i][0]
            return Corruption(
                ShareRelay(
                    tuple(p for p in message.ciphertexts if p[0] != sender),
                    tuple(p for p in message.commitments if p[0] != sender),
                ),
                taint=RELAY_WITHHELD,
            )
        pairs, _ = _mutate_pairs(data, getattr(message, field), n, f"relay {field}")
        return Corruption(dataclasses.replace(message, **{field: pairs}))
    if isinstance(message, ConsistencyRequest):
        return Corruption(ConsistencyRequest(_mutate_ids(data, message.survivors, n)))
    if isinstance(message, UnmaskRequest):
        field = data.draw(st.sampled_from(["survivors", "dropped", "signatures"]), label="unmask request field")
        if field == "signatures":
            pairs, _ = _mutate_pairs(data, message.signatures, n, "signatures")
            return Corruption(dataclasses.replace(message, signatures=pairs))
        return Corruption(dataclasses.replace(message, **{field: _mutate_ids(data, getattr(message, field), n)}))
    return None  # RoundAborted: nothing worth changing


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
        """Draw a round (n, graph, t, inputs, randomness) and put every node's advertisement in flight."""
        n = data.draw(st.integers(4, 7), label="n")
        neighbours = data.draw(st.sampled_from([None, None, 2, 4]), label="neighbours (None = complete)")
        probe = make_config(n, 1, neighbours=neighbours)
        lowest = 1 if probe.is_complete_graph else 2  # a sparse round with t = 1 is refused by every node
        t = data.draw(st.integers(lowest, probe.neighbourhood_size), label="threshold")
        self.config = make_config(n, t, d=3, neighbours=neighbours)
        event(f"graph: {'complete' if self.config.is_complete_graph else 'sparse'}")
        identities = make_identities(n, seed=n)
        roster = {node: key.public_bytes for node, key in identities.items()}
        self.inputs = make_inputs(self.config, seed=data.draw(st.integers(0, 3), label="input seed"))
        # Every secret of the round comes from these streams, so a failing run replays exactly.
        seed = data.draw(st.binary(min_size=4, max_size=4), label="randomness seed")
        self.clients = {
            node: ClientProtocol(
                self.config,
                node,
                identities[node],
                roster,
                self.inputs[node],
                PERMISSIVE,
                entropy=entropy_for(seed, f"node/{node}"),
            )
            for node in self.config.ids
        }
        self.server = ServerProtocol(self.config, roster, entropy=entropy_for(seed, "server"))
        self.pending: list[InFlight] = []
        self.produced_masked: dict[int, np.ndarray] = {}  # what each node actually sent
        self.produced_reports: dict[int, list[tuple[int, ...]]] = {}  # the bad dealers it reported with it
        self.accepted_masked: dict[int, np.ndarray] = {}  # what the coordinator kept
        self.outputs: dict[int, list[UnmaskShares]] = {}
        self.taints: list[str] = []
        self.tampered_share_keys: set[int] = set()  # dealers whose ShareKeys a copy of was changed
        self.tampered_relays: set[int] = set()  # nodes whose ShareRelay a copy of was changed
        self.accepted_forgeries: dict[int, str] = {}  # holder -> op, for changed unmask shares the coordinator took
        self.refused_forgeries: set[int] = set()  # holders whose changed unmask shares were refused as malformed
        self.reported: set[int] = set()  # dealers reported as bad in masked inputs the coordinator took
        self.server_abort: ProtocolAborted | None = None
        for node, client in self.clients.items():
            (advert,) = client.start()
            self.pending.append(InFlight(True, node, advert))
        self.ready = True

    # --- moving messages -----------------------------------------------------------

    def _to_server(self, event_or_message: object) -> list | None:
        """The coordinator's answer, or None if it refused (the refusal must not move it, unless it aborts)."""
        return self._server_receive(event_or_message)[1]

    def _server_receive(self, event_or_message: object) -> tuple[bool, list | None]:
        """(whether the coordinator took it, its answer or None)."""
        before = self.server.state
        try:
            sends = self.server.receive(event_or_message)
        except ProtocolAborted as exc:
            # Only closing a stage aborts, after the message (if any) was taken into the inbox.
            assert self.server.state is ServerState.ABORTED
            self.server_abort = exc
            return True, None
        except ALLOWED:
            assert self.server.state is before, "a rejected message must not move the coordinator"
            return False, None
        self.pending.extend(InFlight(False, send.to, send.message) for send in sends)
        return True, sends

    def _deliver(self, item: InFlight) -> None:
        if item.up:
            accepted, _ = self._server_receive(item.message)
            if accepted and isinstance(item.message, MaskedInput):
                self.accepted_masked[item.node] = item.message.vector
                self.reported.update(item.message.bad_dealers)
            if accepted and item.taint:
                self.taints.append(item.taint)
            if accepted and item.forged:
                self.accepted_forgeries[item.node] = item.forged
            if not accepted and isinstance(item.message, UnmaskShares) and item.node in self.server._malformed_unmask:
                # refused as malformed after the coordinator looked at it: its sender is named too
                assert item.forged, "an untouched unmasking answer was refused as malformed"
                self.refused_forgeries.add(item.node)
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
                self.produced_reports.setdefault(item.node, []).append(reply.bad_dealers)
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
        changed = corrupt(data, item.message, self.config.cohort_size)
        if changed is None:
            return
        event(f"corrupted {type(item.message).__name__}")
        if isinstance(item.message, ShareKeys):
            self.tampered_share_keys.add(item.node)
        elif isinstance(item.message, ShareRelay):
            self.tampered_relays.add(item.node)
        self.pending[i] = InFlight(
            item.up, item.node, changed.message, item.taint or changed.taint, item.forged or changed.forged
        )

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

    @precondition(lambda self: self.ready and self.server.stage is not None)
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

    @invariant()
    def bad_dealers_only_where_shares_were_tampered_with(self) -> None:
        if not self.ready:
            return
        for node, client in self.clients.items():
            if node not in self.tampered_relays:
                assert client.bad_dealers <= self.tampered_share_keys, (node, client.bad_dealers)
            if client.bad_dealers:
                event("a holder skipped a dealer whose shares it could not use")
            # What a node reports with its masked input is exactly what it will never reveal.
            for message in self.produced_reports.get(node, ()):
                assert set(message) == set(client.bad_dealers), (node, message, client.bad_dealers)

    @invariant()
    def nobody_named_without_cause(self) -> None:
        if not self.ready:
            return
        forged = tuple(sorted({h for h, op in self.accepted_forgeries.items() if op in FORGING_OPS} | self.refused_forgeries))
        if self.server.result is not None:
            assert set(self.server.result.excluded) == set(forged), (self.server.result.excluded, forged)
        abort = self.server_abort
        if abort is None:
            return
        if abort.stage == Stage.REVEAL.value:
            advertised = set(self.server.answered[Stage.ADVERTISE])
            revealed = set(self.server.answered[Stage.REVEAL])
            assert abort.culprits == tuple(sorted(advertised - revealed)) and abort.culprits, abort.culprits
        elif abort.stage == Stage.UNMASK.value:
            # Dealers are honest and their commitments signed: only forging holders can be named.
            assert abort.culprits == forged, (abort.culprits, forged)
        elif abort.stage in (Stage.MASKED_INPUT.value, Stage.CONSISTENCY.value):
            # Before any reveal, a dealer is named only when holders reported its shares as bad
            # (and an honest holder reports only after a ShareKeys or ShareRelay was tampered with).
            assert abort.culprits == () or (len(abort.culprits) == 1 and set(abort.culprits) <= self.reported), (
                abort.culprits,
                self.reported,
            )
        else:
            assert abort.culprits == (), abort.culprits

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
        self.bad_dealers_only_where_shares_were_tampered_with()
        self.nobody_named_without_cause()

        if self.server.state is ServerState.DONE:
            result = self.server.result
            assert set(result.survivors) <= set(self.accepted_masked)
            if self.accepted_forgeries:
                event("result with forged unmask shares caught")
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
            reason = self.server.abort_reason.split(":")[0] if self.server.abort_reason else "?"
            event(f"aborted: {reason}" + (" (culprits named)" if self.server_abort.culprits else ""))
            # The driver tells everyone the round is over; afterwards nobody may still be waiting.
            for client in self.clients.values():
                if client.state not in TERMINAL_CLIENT:
                    client.receive(RoundAborted("coordinator-aborted"))
            states = {node: client.state for node, client in self.clients.items()}
            assert all(state in TERMINAL_CLIENT for state in states.values()), states


TestHostileNetworkRound = HostileNetworkRound.TestCase
TestHostileNetworkRound.settings = settings(stateful_step_count=40)


# --- one corruption, otherwise a well-behaved network ------------------------------------
#
# The machine above mixes everything, so any single kind of corruption is rare in a
# bounded run. Here each example corrupts exactly one message of a given type (or drops
# or duplicates it) and delivers everything else in order, so every kind gets dozens of
# tries; the end-of-round checks are the machine's own.

IN_FLIGHT_TYPES = [
    AdvertiseKeys,
    KeyList,
    SeedReveal,
    SeedRevealList,
    ShareKeys,
    ShareRelay,
    MaskedInput,
    ConsistencyRequest,
    ConsistencySignature,
    UnmaskRequest,
    UnmaskShares,
]


@pytest.mark.parametrize("target", IN_FLIGHT_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=_budget(60))
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
        machine.bad_dealers_only_where_shares_were_tampered_with()
        machine.nobody_named_without_cause()
    machine.teardown()


@settings(max_examples=_budget(30))
@given(data=st.data())
def test_a_lost_reveal_stops_the_round_and_names_its_sender(data: st.DataObject) -> None:
    """Otherwise orderly: one node's reveal never arrives. Going on would let the coordinator pick
    among graph seeds, so the round aborts at the reveal stage naming exactly that node."""
    machine = HostileNetworkRound()
    machine.build(data)
    while not any(isinstance(item.message, SeedReveal) for item in machine.pending):
        machine._deliver(machine.pending.pop(0))
    in_flight = [i for i, item in enumerate(machine.pending) if isinstance(item.message, SeedReveal)]
    victim = machine.pending.pop(data.draw(st.sampled_from(in_flight), label="lost reveal")).node
    machine.teardown()
    assert machine.server_abort is not None, "the round went on without a reveal"
    assert (machine.server_abort.stage, machine.server_abort.culprits) == ("reveal", (victim,))
    assert str(victim) in str(machine.server_abort)
