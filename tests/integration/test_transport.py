"""The transport under attack: unknown CURVE keys, plain sockets, and floods of malformed frames.

Raw pyzmq sockets play the intruders. A socket monitor shows what happened to
each handshake (so "got nothing back" is backed by "the handshake was refused",
not just by a quiet socket), the coordinator's ``status.json`` shows its
``refused_connections`` and ``dropped_messages`` counters, and the real task
is run to completion afterwards to show that nothing was damaged.
"""

from __future__ import annotations

import math
import random
import re
import socket
import time
from collections import Counter

import numpy as np
import pytest
import zmq

from securefed.crypto.identity import SigningKey
from securefed.errors import RemoteProtocolError
from securefed.federation.messages import Envelope, Hello, Refusal, RoundResult, RoundStart
from securefed.logging_setup import SUMMARY_INTERVAL
from securefed.secagg.messages import ConsistencyRequest, KeyList, UnmaskRequest
from securefed.wire.codec import decode, encode, max_message_size
from securefed.wire.keys import CurveKeyPair
from tests.integration import malformed
from tests.integration.conftest import DEADLINE_HEADROOM, timed

pytestmark = pytest.mark.integration

HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
}
OVERSIZED = max_message_size() + 1  # one byte above the sockets' zmq.MAXMSGSIZE


def _fresh_member() -> tuple[CurveKeyPair, SigningKey]:
    return CurveKeyPair.generate(), SigningKey.generate()


def _flood_time(zmq_context, flood: list, cpus: int) -> float:
    """Seconds this machine takes to carry ``flood`` over a CURVE connection and decode every message (what the
    coordinator does with it), measured here with a throwaway pair of sockets; scaled for the processes that
    share the cores while the coordinator works (the coordinator and this test)."""
    server_keys, client_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
    server = zmq_context(zmq.ROUTER).curve_server(server_keys)
    port = server.socket.bind_to_random_port("tcp://127.0.0.1")
    client = zmq_context(zmq.DEALER).curve_client(client_keys, server_keys.public)
    client.socket.connect(f"tcp://127.0.0.1:{port}")

    def carry() -> None:
        for frames, _ in flood:
            client.socket.send_multipart(frames)
        for _ in flood:
            assert server.socket.poll(60_000), "the measurement's own socket pair stopped delivering"
            try:
                decode(server.socket.recv_multipart()[1:])
            except RemoteProtocolError:
                pass

    return timed(carry, repeats=1) * math.ceil(2 / cpus)  # the fixture closes both sockets


def _node_drop_counts(log: str) -> Counter:
    """Drops a node logged, by reason: its full warnings plus the counts in its rate-limited summaries."""
    counts: Counter = Counter()
    for line in log.splitlines():
        summary = re.search(r"\d+ more dropped messages from the coordinator in the last \d+ s \(([^)]*)\)", line)
        if summary:
            for part in summary.group(1).split(", "):
                reason, n = part.rsplit(": ", 1)
                counts[reason] += int(n)
            continue
        full = re.search(r"dropped a message from the coordinator \(([^)]+)\)", line)
        if full:
            counts[full.group(1)] += 1
    return counts


def _run_to_completion(federation, rounds: int) -> list[dict]:
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(rounds)) == 0, federation.diagnostics()
    history = federation.rounds()
    assert [row["round"] for row in history] == list(range(1, rounds + 1)), federation.diagnostics()
    return history


@pytest.mark.integration
def test_unknown_curve_key_and_plain_socket_are_refused(launch, zmq_context) -> None:
    spare_keys, spare_identity = _fresh_member()
    federation = launch(n_nodes=3, rounds=2, extra_nodes={"spare": (spare_keys, spare_identity)})
    federation.start_coordinator()
    status = federation.wait_bound()
    assert status["refused_connections"] == 0, status
    server_key = federation.coordinator_keys.public
    hello = encode(Envelope(federation.task["name"], 0, Hello("site-1")))  # claims to be a real node

    # Control: the same raw client with an allow-listed key completes the CURVE handshake.
    control = zmq_context(zmq.DEALER).curve_client(spare_keys, server_key)
    control.socket.connect(federation.endpoint)
    assert control.wait_event({zmq.EVENT_HANDSHAKE_SUCCEEDED, *HANDSHAKE_FAILED}, 10) == (
        zmq.EVENT_HANDSHAKE_SUCCEEDED, 0
    ), control.events  # fmt: skip
    control.close()  # it says nothing, so the coordinator never counts it as a node

    # A key that is not in the allow-list: ZAP refuses it (status 400), nothing it sends arrives.
    intruder_keys = CurveKeyPair.generate()
    intruder = zmq_context(zmq.DEALER).curve_client(intruder_keys, server_key)
    intruder.socket.connect(federation.endpoint)
    intruder.try_send(hello)
    event = intruder.wait_event({zmq.EVENT_HANDSHAKE_SUCCEEDED, *HANDSHAKE_FAILED}, 10)
    assert event == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400), intruder.events
    assert intruder.receive_all(1.0) == []
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in [e for e, _ in intruder.events]
    refused = federation.wait_until(
        lambda: (s := federation.status()) and s["refused_connections"] >= 1 and s, 10, "refused_connections to count it"
    )
    log = federation.log("coordinator")
    assert "refused a connection from an unknown CURVE key" in log
    assert intruder_keys.public.decode() in log  # the operator can see which key knocked
    intruder.close()

    # A plain (NULL mechanism) socket: the mechanism mismatch fails the handshake; nothing arrives.
    plain = zmq_context(zmq.DEALER)
    plain.socket.connect(federation.endpoint)
    plain.try_send(hello)
    event = plain.wait_event({zmq.EVENT_HANDSHAKE_SUCCEEDED, *HANDSHAKE_FAILED}, 10)
    assert event is not None and event[0] in HANDSHAKE_FAILED, plain.events  # EPIPE or mechanism mismatch
    assert plain.receive_all(1.0) == []
    plain.drain_events()
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in [e for e, _ in plain.events], plain.events
    plain.close()

    # And raw bytes on a TCP connection: no ZMTP greeting at all.
    host, port = federation.endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(random.Random(4).randbytes(65536))
        try:  # libzmq answers with its own greeting, then drops the connection: wait for that (bounded)
            while raw.recv(65536):
                pass
        except (ConnectionResetError, TimeoutError):
            pass

    assert federation.alive("coordinator"), federation.diagnostics()
    after = federation.wait_until(
        lambda: (s := federation.status()) and s["updated_at"] > refused["updated_at"] and s, 5, "a fresh status"
    )
    assert after["connected_nodes"] == [], after  # no intruder (nor the silent control) counts as a node
    assert after["dropped_messages"].get("unauthenticated", 0) == 0, after  # nothing got past the handshake

    federation.start_nodes()
    history = _run_to_completion(federation, rounds=2)
    for row in history:
        assert sorted(row["survivors"]) == federation.names, row


@pytest.mark.integration
def test_malformed_flood_does_not_hurt_the_coordinator(launch, zmq_context, step_times) -> None:
    """Hundreds of malformed messages and an over-MAXMSGSIZE frame from an authorised key.

    How long the coordinator may take to count them all is derived from the time this machine takes to carry
    and decode the same flood (the oversized-but-allowed messages alone are some 25 MB through CURVE)."""
    mole_keys, mole_identity = _fresh_member()  # an allow-listed member whose key was stolen
    federation = launch(n_nodes=3, rounds=2, extra_nodes={"mole": (mole_keys, mole_identity)})
    flood = malformed.to_coordinator(seed=1, task=federation.task["name"])
    expected = malformed.expected_counts(flood)
    assert len(flood) >= 300
    budget = max(20.0, DEADLINE_HEADROOM * _flood_time(zmq_context, flood, step_times.cpus))
    federation.start_coordinator()
    federation.wait_bound()

    mole = zmq_context(zmq.DEALER).curve_client(mole_keys, federation.coordinator_keys.public)
    mole.socket.connect(federation.endpoint)
    assert mole.wait_event({zmq.EVENT_HANDSHAKE_SUCCEEDED, *HANDSHAKE_FAILED}, 10) == (zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)
    started = time.monotonic()
    for frames, _ in flood:
        mole.socket.send_multipart(frames)
    # Valid messages for another task: decoded, then rejected by the coordinator (counted, not a crash).
    for _ in range(20):
        mole.socket.send_multipart(encode(Envelope("another-task", 0, Hello("mole"))))
    expected["wrong-task"] += 20

    def counted() -> dict | None:
        status = federation.status()
        dropped = (status or {}).get("dropped_messages", {})
        return status if all(dropped.get(reason, 0) >= n for reason, n in expected.items()) else None

    status = federation.wait_until(counted, budget, f"status.json dropped_messages to reach {dict(expected)}")
    assert federation.alive("coordinator")

    # A frame above zmq.MAXMSGSIZE: libzmq cuts the connection before reading it; the peer may reconnect.
    mole.socket.send(bytes(OVERSIZED), copy=False)
    assert mole.wait_event({zmq.EVENT_DISCONNECTED}, 20) is not None, mole.events
    assert mole.wait_event({zmq.EVENT_HANDSHAKE_SUCCEEDED}, 20) is not None, mole.events
    before = federation.status()["dropped_messages"].get("bad-version", 0)
    for _ in range(5):
        mole.socket.send_multipart([b"SF0", b"Hello", b"{}"])
    federation.wait_until(
        lambda: federation.status()["dropped_messages"].get("bad-version", 0) >= before + 5, 10, "the reconnected mole's messages"
    )
    elapsed = time.monotonic() - started
    assert elapsed < budget + 10, f"the flood took {elapsed:.1f} s (allowed {budget:.1f} s and 10 s to reconnect)"
    mole.close()
    assert federation.alive("coordinator"), federation.diagnostics()
    assert status["connected_nodes"] == [], status  # no garbage made the mole a participant
    assert "dropped a message" in federation.log("coordinator")

    federation.start_nodes()
    history = _run_to_completion(federation, rounds=2)
    for row in history:
        assert sorted(row["survivors"]) == federation.names, row  # the mole never joined a cohort


@pytest.mark.integration
def test_malformed_flood_does_not_hurt_a_node(launch, zmq_context) -> None:
    """A fake coordinator (the real coordinator's keys, before it starts) floods a node, which then trains."""
    federation = launch(n_nodes=3, rounds=2)
    task = federation.task["name"]
    victim = federation.names[0]
    fake = zmq_context(zmq.ROUTER).curve_server(federation.coordinator_keys)
    fake.socket.bind(federation.endpoint)
    federation.start_node(victim)

    def greeting() -> list[bytes] | None:
        for frames in fake.receive_all(0.2):
            envelope = decode(frames[1:])
            if isinstance(envelope.body, Hello):
                assert envelope.body.node == victim
                return frames
        return None

    route = federation.wait_until(greeting, 30, f"a Hello from {victim}", must_live=(victim,))[0]
    flood = malformed.to_node(seed=2, task=task, node=victim)
    expected = malformed.expected_counts(flood)
    for frames, _ in flood:
        fake.socket.send_multipart([route, *frames])
    # Messages that decode but that a node must refuse or ignore, never crash on.
    hostile_starts = [
        {},  # no spec at all
        {"model": {"kind": "mlp"}},
        {"task": task, "round": 1, "phase": "train", "model": {"kind": "sgd_logistic", "options": {}, "n_features": 3,
         "classes": [0, 1]}, "training": {"epochs": 1, "learning_rate": 0.1, "batch_size": 8},
         "encoding": {"clip_norm": 1.0, "fractional_bits": 16, "weight_cap": 100}, "secagg": {"threshold": 1,
         "neighbours": None, "masking": True}, "dp": None},  # features do not match the local data
    ]  # fmt: skip
    for spec in hostile_starts * 3:  # aggregation 0 can never be claimed, so nothing is joined
        fake.socket.send_multipart([route, *encode(Envelope(task, 0, RoundStart(1, ((1, victim),), spec, np.zeros(3))))])
    for body in (KeyList(()), ConsistencyRequest((1, 2)), UnmaskRequest((1,), (), ()), RoundResult(True, 3, "x")) * 3:
        fake.socket.send_multipart([route, *encode(Envelope(task, 99, body))])
    fake.socket.send_multipart([route, *encode(Envelope("another-task", 0, RoundStart(1, ((1, victim),), {}, np.zeros(3))))])

    def refusals_and_counts() -> bool:
        counts = _node_drop_counts(federation.log(victim))
        return all(counts[reason] >= n for reason, n in expected.items())

    # The node logs its first drop in full and then a count by reason every SUMMARY_INTERVAL seconds.
    federation.wait_until(
        refusals_and_counts, 30 + SUMMARY_INTERVAL, f"{victim} to log drops {dict(expected)}", must_live=(victim,)
    )
    replies: list[Envelope] = []

    def refusals() -> list[Refusal]:
        replies.extend(decode(frames[1:]) for frames in fake.receive_all(0.1))
        return [envelope.body for envelope in replies if isinstance(envelope.body, Refusal)]

    federation.wait_until(
        lambda: len(refusals()) >= len(hostile_starts) * 3, 20, "a refusal for each hostile RoundStart", must_live=(victim,)
    )
    refused = refusals()
    assert len(refused) == len(hostile_starts) * 3, replies  # one each, nothing else was answered
    assert {refusal.reason for refusal in refused} == {"bad-spec", "feature-mismatch"}, refused
    assert all(envelope.aggregation == 0 for envelope in replies), replies
    assert "ignored a message for task 'another-task'" in federation.log(victim)
    assert federation.alive(victim), federation.diagnostics()

    fake.close()

    # The flooded node still takes part in real training with the real coordinator.
    federation.start_coordinator()
    federation.start_nodes(federation.names[1:])
    history = _run_to_completion(federation, rounds=2)
    for row in history:
        assert sorted(row["survivors"]) == federation.names, row


@pytest.mark.integration
def test_node_reconnects_after_an_oversized_frame(launch, zmq_context) -> None:
    """A frame above zmq.MAXMSGSIZE makes the node's socket drop the connection; it must come back by itself.

    libzmq treats an oversized frame (like a CURVE authentication failure or a
    malformed ZMTP frame, which an on-path attacker can forge without any key)
    as a protocol error and terminates the connecting session instead of
    scheduling a reconnect, so ``RECONNECT_IVL`` never applies.
    """
    federation = launch(n_nodes=3, rounds=1)
    victim = federation.names[0]
    fake = zmq_context(zmq.ROUTER).curve_server(federation.coordinator_keys)
    fake.socket.bind(federation.endpoint)
    federation.start_node(victim)

    def greeting() -> list[bytes] | None:
        for frames in fake.receive_all(0.2):
            if isinstance(decode(frames[1:]).body, Hello):
                return frames
        return None

    route = federation.wait_until(greeting, 30, f"a Hello from {victim}", must_live=(victim,))[0]
    fake.drain_events()
    fake.socket.send_multipart([route, bytes(OVERSIZED)], copy=False)
    assert fake.wait_event({zmq.EVENT_DISCONNECTED}, 20) is not None, fake.events  # the node's socket dropped it
    fake.receive_all(0.5)  # whatever arrived over the old connection
    assert federation.alive(victim), federation.diagnostics()
    # The node greets every second and reconnects within RECONNECT_IVL_MAX (2 s): 10 s is ample.
    # A new connection gets a new routing id, so a Hello from another route is a fresh one.
    deadline = time.monotonic() + 10
    greeted = None
    while greeted is None and time.monotonic() < deadline:
        frames = greeting()
        greeted = frames if frames is not None and frames[0] != route else None
    assert greeted is not None, f"{victim} never reconnected after the oversized frame:\n" + "\n".join(
        federation.log(victim).splitlines()[-5:]
    )
    assert federation.alive(victim)
