"""Exhaustive (state x message type) tests of the protocol's transition tables.

For every state of each machine and every message type, a real machine is
driven into that state by a small honest round (n=4, t=3: the smallest
threshold the default policy accepts for four nodes, 2t > n + c with c = 1)
and handed a message of that type. In-table pairs must move to the table's
state (given a valid message from that round); every other pair must raise
:class:`RemoteProtocolError`. A client then ends ``ABORTED`` for good; the
server, one machine facing many peers, ignores the message and stays put.

The one in-table pair that cannot move where the table points is a deadline
in ``COLLECT_REVEALS``: the reveal stage only moves on once every member of
the key list revealed (and then the last reveal closes it), so a deadline
there always finds a reveal missing and aborts the round, naming the node.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest

from securefed.errors import InvalidParameter, LocalProtocolError, ProtocolAborted, RemoteProtocolError
from securefed.secagg import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientProtocol,
    ClientState,
    RoundConfig,
    ServerProtocol,
    ServerState,
)
from securefed.secagg import messages as _messages
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
    KeyList,
    MaskedInput,
    RoundAborted,
    SeedReveal,
    SeedRevealList,
    Send,
    ShareKeys,
    ShareRelay,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from tests.secagg_harness import entropy_for, make_identities, safe_threshold

N, D = 4, 4
T = safe_threshold(N)  # 3: what the default ClientPolicy accepts for a roster of 4
ME = 1  # the client under test
ANSWERING = tuple(range(1, N))  # who answers before a deadline in the deadline tests (T of them)
CLIENT_TERMINAL = (ClientState.DONE, ClientState.ABORTED)
SERVER_TERMINAL = (ServerState.DONE, ServerState.ABORTED)
CLIENT_MESSAGE_TYPES = (AdvertiseKeys, SeedReveal, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)
SERVER_MESSAGE_TYPES = (KeyList, SeedRevealList, ShareRelay, ConsistencyRequest, UnmaskRequest, RoundAborted)


class _Junk:
    """Not a protocol message at all."""


# Events a driver (not a peer) feeds the coordinator, with a valid instance for the current stage.
# PeerGone ("stop waiting for this node") is newer than Deadline; cover it wherever it exists.
_PeerGone = getattr(_messages, "PeerGone", None)
DRIVER_EVENTS: dict[type, Callable[[ServerProtocol], object]] = {Deadline: lambda server: Deadline(server.stage)}
if _PeerGone is not None:
    DRIVER_EVENTS[_PeerGone] = lambda server: _PeerGone(ME)
DRIVER_EVENT_TYPES = tuple(DRIVER_EVENTS)


# What a client answers to each in-table coordinator message.
CLIENT_REPLY = {
    KeyList: SeedReveal,
    SeedRevealList: ShareKeys,
    ShareRelay: MaskedInput,
    ConsistencyRequest: ConsistencySignature,
    UnmaskRequest: UnmaskShares,
}


# --- a small honest round, stepped by hand -------------------------------------


@dataclass
class Round:
    config: RoundConfig
    clients: dict[int, ClientProtocol]
    server: ServerProtocol
    to_server: dict[int, list[object]] = field(default_factory=dict)
    to_client: dict[int, list[object]] = field(default_factory=dict)

    @classmethod
    def new(cls, round_id: int = 0) -> Round:
        """Default ClientPolicy; identities and every round secret are reproducible streams."""
        config = RoundConfig("transitions", round_id, N, T, D, bytes(range(32)))
        identities = make_identities(N, seed=round_id)
        roster = {node: key.public_bytes for node, key in identities.items()}
        clients = {
            node: ClientProtocol(
                config,
                node,
                identities[node],
                roster,
                np.full(D, node, dtype=np.uint32),
                entropy=entropy_for(round_id, f"transitions/node/{node}"),
            )
            for node in config.ids
        }
        return cls(config, clients, ServerProtocol(config, roster, entropy=entropy_for(round_id, "transitions/server")))

    def start(self) -> Round:
        self.to_server = {node: client.start() for node, client in self.clients.items()}
        return self

    def flush_server(self, nodes: tuple[int, ...] | None = None) -> Round:
        """Deliver the held client messages (of ``nodes``, default all) to the server."""
        for node in sorted(self.to_server) if nodes is None else nodes:
            for message in self.to_server.pop(node):
                self._route(self.server.receive(message))
        return self

    def flush_clients(self) -> Round:
        """Deliver the held coordinator messages to the clients; hold their replies."""
        pending, self.to_client = self.to_client, {}
        for node in sorted(pending):
            for message in pending[node]:
                self.to_server.setdefault(node, []).extend(self.clients[node].receive(message))
        return self

    def _route(self, sends: list[Send]) -> None:
        for send in sends:
            self.to_client.setdefault(send.to, []).append(send.message)

    def next_for(self, node: int) -> object:
        (message,) = self.to_client[node]
        return message


# client state -> steps that bring client ME into it (with its next message, if any, held in to_client)
def _one_stage_after(previous: ClientState) -> Callable[[Round], Round]:
    """Reach ``previous``, let the clients answer and the server close the stage."""
    return lambda r: _CLIENT_PATH[previous](r).flush_clients().flush_server()


_CLIENT_PATH: dict[ClientState, Callable[[Round], Round]] = {
    ClientState.START: lambda r: r,
    ClientState.AWAIT_KEY_LIST: lambda r: r.start().flush_server(),
    ClientState.AWAIT_SEED_REVEALS: _one_stage_after(ClientState.AWAIT_KEY_LIST),
    ClientState.AWAIT_SHARES: _one_stage_after(ClientState.AWAIT_SEED_REVEALS),
    ClientState.AWAIT_CONSISTENCY_REQUEST: _one_stage_after(ClientState.AWAIT_SHARES),
    ClientState.AWAIT_UNMASK_REQUEST: _one_stage_after(ClientState.AWAIT_CONSISTENCY_REQUEST),
    ClientState.DONE: _one_stage_after(ClientState.AWAIT_UNMASK_REQUEST),
}


def client_in(state: ClientState) -> Round:
    if state is ClientState.ABORTED:
        r = Round.new().start().flush_server()
        r.clients[ME].receive(RoundAborted("test"))
        r.to_client.pop(ME, None)
        return r
    return _CLIENT_PATH[state](Round.new())


# server state -> steps that bring the server into it (with every node's next message held in to_server)
_SERVER_PATH: dict[ServerState, Callable[[Round], Round]] = {
    ServerState.COLLECT_KEYS: lambda r: r.start(),
    ServerState.COLLECT_REVEALS: lambda r: r.start().flush_server().flush_clients(),
    ServerState.COLLECT_SHARES: lambda r: _SERVER_PATH[ServerState.COLLECT_REVEALS](r).flush_server().flush_clients(),
    ServerState.COLLECT_MASKED_INPUTS: lambda r: _SERVER_PATH[ServerState.COLLECT_SHARES](r).flush_server().flush_clients(),
    ServerState.COLLECT_SIGNATURES: lambda r: _SERVER_PATH[ServerState.COLLECT_MASKED_INPUTS](r).flush_server().flush_clients(),
    ServerState.COLLECT_UNMASK_SHARES: lambda r: _SERVER_PATH[ServerState.COLLECT_SIGNATURES](r).flush_server().flush_clients(),
    ServerState.DONE: lambda r: _SERVER_PATH[ServerState.COLLECT_UNMASK_SHARES](r).flush_server(),
}


def server_in(state: ServerState) -> Round:
    if state is ServerState.ABORTED:
        r = Round.new()
        with pytest.raises(ProtocolAborted):
            r.server.receive(Deadline(Stage.ADVERTISE))
        return r
    r = _SERVER_PATH[state](Round.new())
    assert r.server.state is state
    return r


@cache
def samples() -> dict[type, object]:
    """One real instance of every message type, from a complete honest round."""
    found: dict[type, object] = {}
    r = Round.new(round_id=99).start()
    while r.to_server:
        for messages in r.to_server.values():
            for message in messages:
                found.setdefault(type(message), message)
        r.flush_server()
        for messages in r.to_client.values():
            for message in messages:
                found.setdefault(type(message), message)
        r.flush_clients()
        r.to_server = {node: msgs for node, msgs in r.to_server.items() if msgs}
    assert r.server.result is not None
    found[RoundAborted] = RoundAborted("coordinator-gave-up")
    found[Deadline] = Deadline(Stage.SHARE)
    if _PeerGone is not None:
        found[_PeerGone] = _PeerGone(ME)
    found[_Junk] = _Junk()
    found[str] = "KeyList"
    found[type(None)] = None
    return found


ALL_TYPES = (*SERVER_MESSAGE_TYPES, *CLIENT_MESSAGE_TYPES, *DRIVER_EVENT_TYPES, _Junk, str, type(None))


def _id(value: object) -> str:
    return getattr(value, "name", None) or getattr(value, "__name__", str(value))


# --- the client table ----------------------------------------------------------


@pytest.mark.parametrize("message_type", ALL_TYPES, ids=_id)
@pytest.mark.parametrize("state", list(ClientState), ids=_id)
def test_client_state_by_message_type(state: ClientState, message_type: type) -> None:
    r = client_in(state)
    client = r.clients[ME]
    assert client.state is state
    target = CLIENT_TRANSITIONS.get((state, message_type))

    if target is None:
        message = samples()[message_type]
        with pytest.raises(RemoteProtocolError) as info:
            client.receive(message)
        if state in CLIENT_TERMINAL:
            assert client.state is state
            assert info.value.reason == "round-over"
        else:
            assert client.state is ClientState.ABORTED
            assert info.value.reason == "unexpected-message"
            assert client.abort_reason == "unexpected-message"
        return

    if message_type is RoundAborted:
        assert client.receive(RoundAborted("stop")) == []
        assert client.state is target is ClientState.ABORTED
        assert client.abort_reason == "aborted"
        return

    message = r.next_for(ME)
    assert type(message) is message_type
    replies = client.receive(message)
    assert client.state is target
    assert [type(reply) for reply in replies] == [CLIENT_REPLY[message_type]]
    assert all(reply.sender == ME for reply in replies)


def test_client_table_covers_the_non_terminal_states() -> None:
    states = {state for state, _ in CLIENT_TRANSITIONS}
    non_terminal = set(ClientState) - set(CLIENT_TERMINAL)
    # START is left by start(), not by a message; at most a RoundAborted could be legal there.
    assert non_terminal - {ClientState.START} <= states <= non_terminal
    assert all(message_type is RoundAborted for state, message_type in CLIENT_TRANSITIONS if state is ClientState.START)
    for (_, message_type), target in CLIENT_TRANSITIONS.items():
        assert message_type in SERVER_MESSAGE_TYPES
        if message_type is RoundAborted:
            assert target is ClientState.ABORTED
    for state in non_terminal - {ClientState.START}:
        assert CLIENT_TRANSITIONS[(state, RoundAborted)] is ClientState.ABORTED


def test_client_table_is_one_straight_path_to_done() -> None:
    path = [ClientState.AWAIT_KEY_LIST]
    for message_type in (KeyList, SeedRevealList, ShareRelay, ConsistencyRequest, UnmaskRequest):
        path.append(CLIENT_TRANSITIONS[(path[-1], message_type)])
    assert path[-1] is ClientState.DONE
    assert len(set(path)) == len(path)
    # The node reveals its graph randomness only once it holds the key list, and deals shares
    # only once the reveals fixed the graph.
    assert path[1:3] == [ClientState.AWAIT_SEED_REVEALS, ClientState.AWAIT_SHARES]


def test_message_type_lists_cover_every_protocol_message() -> None:
    """A new message type must show up in the exhaustive tests above, not slip past them."""
    assert set(CLIENT_MESSAGE_TYPES) == set(typing.get_args(_messages.ClientMessage))
    assert set(SERVER_MESSAGE_TYPES) == set(typing.get_args(_messages.ServerMessage))
    assert set(CLIENT_REPLY) == {t for t in SERVER_MESSAGE_TYPES if t is not RoundAborted}
    assert set(CLIENT_REPLY.values()) == set(CLIENT_MESSAGE_TYPES) - {AdvertiseKeys}
    assert set(_CLIENT_PATH) | {ClientState.ABORTED} == set(ClientState)
    assert set(_SERVER_PATH) | {ServerState.ABORTED} == set(ServerState)


def test_start_twice_is_a_local_error() -> None:
    r = Round.new()
    client = r.clients[ME]
    (advert,) = client.start()
    assert isinstance(advert, AdvertiseKeys)
    with pytest.raises(LocalProtocolError):
        client.start()
    assert client.state is not ClientState.START


@pytest.mark.parametrize("state", [ClientState.DONE, ClientState.ABORTED, ClientState.AWAIT_SHARES], ids=_id)
def test_start_after_the_round_began_is_a_local_error(state: ClientState) -> None:
    client = client_in(state).clients[ME]
    with pytest.raises(LocalProtocolError):
        client.start()


def test_message_before_start_aborts() -> None:
    r = Round.new()
    other = client_in(ClientState.AWAIT_KEY_LIST)
    client = r.clients[ME]
    with pytest.raises(RemoteProtocolError):
        client.receive(other.next_for(ME))
    assert client.state is ClientState.ABORTED
    with pytest.raises(LocalProtocolError):
        client.start()


@pytest.mark.parametrize(
    "state",
    [
        ClientState.AWAIT_KEY_LIST,
        ClientState.AWAIT_SEED_REVEALS,
        ClientState.AWAIT_SHARES,
        ClientState.AWAIT_CONSISTENCY_REQUEST,
        ClientState.AWAIT_UNMASK_REQUEST,
    ],
    ids=_id,
)
def test_client_aborted_by_a_bad_message_refuses_everything_afterwards(state: ClientState) -> None:
    r = client_in(state)
    client = r.clients[ME]
    valid = r.next_for(ME)
    wrong = next(samples()[t] for t in SERVER_MESSAGE_TYPES if (state, t) not in CLIENT_TRANSITIONS)
    with pytest.raises(RemoteProtocolError):
        client.receive(wrong)
    assert client.state is ClientState.ABORTED
    # Not even the message it was waiting for brings it back.
    for message in (valid, *(samples()[t] for t in ALL_TYPES)):
        with pytest.raises(RemoteProtocolError) as info:
            client.receive(message)
        assert info.value.reason == "round-over"
        assert client.state is ClientState.ABORTED
    with pytest.raises(LocalProtocolError):
        client.start()
    assert client.state is ClientState.ABORTED


def test_message_of_a_subclass_is_not_in_the_table() -> None:
    class SneakyKeyList(KeyList):
        pass

    r = client_in(ClientState.AWAIT_KEY_LIST)
    client = r.clients[ME]
    with pytest.raises(RemoteProtocolError):
        client.receive(SneakyKeyList(r.next_for(ME).entries))
    assert client.state is ClientState.ABORTED


def test_second_key_list_after_revealing_is_refused() -> None:
    """Once a node has revealed its graph randomness, no other key list can reuse that reveal."""
    r = client_in(ClientState.AWAIT_KEY_LIST)
    client = r.clients[ME]
    key_list = r.next_for(ME)
    (reveal,) = client.receive(key_list)
    assert isinstance(reveal, SeedReveal) and client.state is ClientState.AWAIT_SEED_REVEALS
    shorter = KeyList(tuple(e for e in key_list.entries if e.sender != N))
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(shorter)
    assert info.value.reason == "unexpected-message" and client.state is ClientState.ABORTED


# --- the server table ----------------------------------------------------------

SERVER_EVENT_TYPES = (*CLIENT_MESSAGE_TYPES, *DRIVER_EVENT_TYPES, *SERVER_MESSAGE_TYPES, _Junk, type(None))
_STAGE_OF = {
    ServerState.COLLECT_KEYS: Stage.ADVERTISE,
    ServerState.COLLECT_REVEALS: Stage.REVEAL,
    ServerState.COLLECT_SHARES: Stage.SHARE,
    ServerState.COLLECT_MASKED_INPUTS: Stage.MASKED_INPUT,
    ServerState.COLLECT_SIGNATURES: Stage.CONSISTENCY,
    ServerState.COLLECT_UNMASK_SHARES: Stage.UNMASK,
}


@pytest.mark.parametrize("event_type", SERVER_EVENT_TYPES, ids=_id)
@pytest.mark.parametrize("state", list(ServerState), ids=_id)
def test_server_state_by_event_type(state: ServerState, event_type: type) -> None:
    r = server_in(state)
    server = r.server
    target = SERVER_TRANSITIONS.get((state, event_type))
    waiting = server.waiting_for

    if target is None:
        with pytest.raises(RemoteProtocolError) as info:
            server.receive(samples()[event_type])
        assert server.state is state
        assert server.waiting_for == waiting
        assert info.value.reason == ("round-over" if state in SERVER_TERMINAL else "unexpected-message")
        return

    if event_type is Deadline:
        # Three of four answer (t=3), then time is up for this stage.
        r.flush_server(nodes=ANSWERING)
        assert server.state is state
        if state is ServerState.COLLECT_REVEALS:
            # By design: a key-list member without a reveal aborts the round and is named (going on
            # without it would let the coordinator pick among seeds). The table's move happens when
            # every reveal is in: the last one closes the stage (see the test after this one).
            with pytest.raises(ProtocolAborted) as info:
                server.receive(Deadline(Stage.REVEAL))
            assert info.value.stage == "reveal" and info.value.culprits == (N,)
            assert server.state is ServerState.ABORTED
            assert server.answered[Stage.REVEAL] == ANSWERING
            return
        sends = server.receive(Deadline(_STAGE_OF[state]))
        assert server.state is target
        assert server.answered[_STAGE_OF[state]] == ANSWERING
        if target is ServerState.DONE:
            assert sends == [] and server.result is not None
        else:
            assert sends and {send.to for send in sends} <= set(ANSWERING)
        return

    if event_type in DRIVER_EVENTS:  # e.g. PeerGone(ME): stop waiting for ME, keep collecting
        assert server.receive(DRIVER_EVENTS[event_type](server)) == []
        assert server.state is target is state
        assert server.waiting_for == waiting - {ME}
        return

    (message,) = r.to_server[ME]
    assert type(message) is event_type
    assert server.receive(message) == []
    assert server.state is target is state
    assert server.waiting_for == waiting - {ME}


def test_server_table_keys_cover_exactly_the_non_terminal_states() -> None:
    states = {state for state, _ in SERVER_TRANSITIONS}
    assert states == set(ServerState) - set(SERVER_TERMINAL)
    for state in states:
        accepted = {event for s, event in SERVER_TRANSITIONS if s is state}
        assert Deadline in accepted
        # Exactly one kind of peer message per stage; it keeps the stage open.
        (message_type,) = accepted & set(CLIENT_MESSAGE_TYPES)
        assert SERVER_TRANSITIONS[(state, message_type)] is state
        # Everything else is a driver event this file knows how to exercise.
        assert accepted - {message_type} <= set(DRIVER_EVENT_TYPES), "add the new event to DRIVER_EVENTS"
        assert not accepted & set(SERVER_MESSAGE_TYPES)


def test_server_table_deadlines_walk_the_stages_in_order() -> None:
    state = ServerState.COLLECT_KEYS
    seen = [state]
    while state not in SERVER_TERMINAL:
        state = SERVER_TRANSITIONS[(state, Deadline)]
        seen.append(state)
    assert seen == [
        ServerState.COLLECT_KEYS,
        ServerState.COLLECT_REVEALS,
        ServerState.COLLECT_SHARES,
        ServerState.COLLECT_MASKED_INPUTS,
        ServerState.COLLECT_SIGNATURES,
        ServerState.COLLECT_UNMASK_SHARES,
        ServerState.DONE,
    ]


@pytest.mark.parametrize(
    "state", [s for s in ServerState if s not in SERVER_TERMINAL and s is not ServerState.COLLECT_KEYS], ids=_id
)
def test_server_ignores_a_stale_deadline(state: ServerState) -> None:
    server = server_in(state).server
    waiting = server.waiting_for
    assert server.receive(Deadline(Stage.ADVERTISE)) == []
    assert server.state is state and server.waiting_for == waiting


@pytest.mark.parametrize(
    "state, sent",
    [(ServerState.COLLECT_KEYS, KeyList), (ServerState.COLLECT_REVEALS, SeedRevealList)],
    ids=["keys", "reveals"],
)
def test_server_last_answer_closes_the_stage_without_a_deadline(state: ServerState, sent: type) -> None:
    r = server_in(state)
    r.flush_server()
    assert r.server.state is SERVER_TRANSITIONS[(state, Deadline)]
    assert sorted(r.to_client) == list(range(1, N + 1))
    assert all(isinstance(r.next_for(node), sent) for node in range(1, N + 1))
    if sent is SeedRevealList:
        # Everyone gets the same list: every key-list member's reveal, sorted by id.
        reveals = {r.next_for(node) for node in range(1, N + 1)}
        assert len(reveals) == 1 and [i for i, _ in reveals.pop().reveals] == list(range(1, N + 1))


def test_server_drops_a_reveal_that_does_not_open_the_commitment() -> None:
    r = server_in(ServerState.COLLECT_REVEALS)
    server = r.server
    (reveal,) = r.to_server[ME]
    waiting = server.waiting_for
    forged = SeedReveal(ME, bytes(a ^ 1 for a in reveal.value))
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(forged)
    assert info.value.reason == "bad-reveal"
    assert server.state is ServerState.COLLECT_REVEALS and server.waiting_for == waiting
    # The bad one was dropped, not recorded: the node's real reveal still counts.
    assert server.receive(reveal) == []
    assert server.waiting_for == waiting - {ME}


def test_server_refuses_a_reveal_from_outside_the_key_list() -> None:
    r = server_in(ServerState.COLLECT_KEYS)
    r.flush_server(nodes=ANSWERING)
    r.server.receive(Deadline(Stage.ADVERTISE))
    assert r.server.state is ServerState.COLLECT_REVEALS
    with pytest.raises(RemoteProtocolError) as info:
        r.server.receive(SeedReveal(N, bytes(32)))
    assert info.value.reason == "unexpected-sender"
    assert r.server.waiting_for == set(ANSWERING)


def test_server_refuses_a_duplicate_without_changing_state() -> None:
    r = server_in(ServerState.COLLECT_SHARES)
    (message,) = r.to_server[ME]
    r.server.receive(message)
    waiting = r.server.waiting_for
    with pytest.raises(RemoteProtocolError) as info:
        r.server.receive(message)
    assert info.value.reason == "duplicate"
    assert r.server.state is ServerState.COLLECT_SHARES and r.server.waiting_for == waiting


def test_server_rejections_are_remote_protocol_errors_not_crashes() -> None:
    # Messages of every type, most of them from another round: each is accepted or
    # refused with RemoteProtocolError; nothing else escapes.
    server = server_in(ServerState.COLLECT_MASKED_INPUTS).server
    for event in (samples()[t] for t in SERVER_EVENT_TYPES if t not in DRIVER_EVENTS):
        try:
            server.receive(event)
        except RemoteProtocolError:
            pass
    assert server.state is ServerState.COLLECT_MASKED_INPUTS


def test_deadline_with_a_stage_name_instead_of_a_stage_is_refused() -> None:
    server = server_in(ServerState.COLLECT_KEYS).server
    with pytest.raises((LocalProtocolError, TypeError, InvalidParameter)):
        server.receive(Deadline("advertise"))  # type: ignore[arg-type]
