"""Dead nodes cost seconds, and the logs say what happened (issue 12, items 6 and 7), with real daemons.

* A node SIGKILLed while it trains closes its TCP connection; the
  coordinator's socket monitor reports it and the node is dropped from the
  aggregation at once, so the masked-input stage closes as soon as the others
  have trained instead of at its deadline.
* A node that freezes (SIGSTOP: its connection stays open, its ZeroMQ I/O
  thread stops answering) is noticed by the ZMTP heartbeat timeout.
* A flood of malformed frames from an allow-listed key leaves a few lines in
  the coordinator's log (the first warning, then summary counts), not one line
  per frame.
* A node that cannot connect says what to check; the coordinator logs
  connects, disconnects, what it waits for, and its shutdown.

Timing: stage deadlines come from step times measured on this machine
(``derive_deadlines``); what a test asserts about time is measured against
them (or against the transport's own heartbeat constants), never a fixed sleep.
"""

from __future__ import annotations

import math
import random
import re
import signal
import time

import pytest
import zmq

from securefed.crypto.identity import SigningKey
from securefed.errors import RemoteProtocolError
from securefed.federation.messages import Envelope, Hello
from securefed.logging_setup import SUMMARY_INTERVAL, PeerWarnings
from securefed.wire.codec import decode, encode
from securefed.wire.keys import CurveKeyPair
from securefed.wire.transport import (
    HANDSHAKE_ADVICE_AFTER,
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    CoordinatorSocket,
)
from tests.integration.conftest import DEADLINE_HEADROOM, SLOW_MLP, STARTUP_BUDGET, timed

pytestmark = pytest.mark.integration

_TRAIN_START = r"round 1/1 train: aggregation (\d+) with 4 nodes"
_HEARTBEAT_TIMEOUT = HEARTBEAT_TIMEOUT_MS / 1000
_HEARTBEAT_IVL = HEARTBEAT_IVL_MS / 1000


def _debug_coordinator(federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes first (all retrying when the coordinator binds), then a coordinator that logs stage closes."""
    federation.start_nodes_ready()
    monkeypatch.setenv("SECUREFED_LOG_LEVEL", "DEBUG")
    federation.start_coordinator()
    monkeypatch.delenv("SECUREFED_LOG_LEVEL")


def _closed_at(log: str, aggregation: int, stage: str) -> float | None:
    match = re.search(rf"aggregation {aggregation}: {stage} closed at ([0-9.]+) s", log)
    return float(match.group(1)) if match else None


def _wait_shares_dealt(federation, aggregation: int) -> None:
    """Every node has dealt its shares (the share stage closed): they all train now."""
    timeout = sum(federation.deadlines[s] for s in ("advertise", "reveal", "share")) + STARTUP_BUDGET
    match = federation.wait_log("coordinator", rf"aggregation {aggregation}: (share closed at|\w+ deadline passed)", timeout)
    assert "closed" in match.group(1), f"not every node dealt its shares in time:\n{federation.diagnostics()}"


@pytest.mark.integration
def test_a_node_killed_while_it_trains_costs_seconds_not_the_deadline(launch, monkeypatch) -> None:
    """4 nodes, t = 3: one is SIGKILLed once every node dealt its shares (they train, about a second each).

    Its connection closes with it; the coordinator drops it from the aggregation when it notices
    (measured: from the kill to the coordinator's log line), and the masked-input stage closes when the
    other three have trained, long before its deadline (measured on the coordinator's clock)."""
    federation = launch(n_nodes=4, rounds=1, evaluate=False, **SLOW_MLP)  # min_nodes = 4
    deadline = federation.deadlines["masked_input"]
    _debug_coordinator(federation, monkeypatch)
    aggregation = int(federation.wait_log("coordinator", _TRAIN_START, federation.time_budget(1)).group(1))
    _wait_shares_dealt(federation, aggregation)
    victim = federation.names[-1]
    killed_at = time.monotonic()
    assert federation.kill(victim) == -signal.SIGKILL

    federation.wait_log("coordinator", rf"node {victim} lost its connection in the masked_input stage", deadline)
    noticed = time.monotonic() - killed_at
    federation.wait_log("coordinator", rf"aggregation {aggregation}: masked_input closed at", deadline + 10)
    after_kill = time.monotonic() - killed_at
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(1)) == 0, federation.diagnostics()

    log = federation.log("coordinator")
    stage_took = _closed_at(log, aggregation, "masked_input") - _closed_at(log, aggregation, "share")
    print(
        f"\nkill -> noticed {noticed:.2f} s; kill -> masked_input closed {after_kill:.2f} s; masked_input stage "
        f"{stage_took:.2f} s of a {deadline:.1f} s deadline (measured training {federation.training_time:.2f} s)"
    )
    assert "masked_input deadline passed" not in log, log[-3000:]
    assert stage_took < deadline, f"the stage took {stage_took:.2f} s, its deadline is {deadline:.2f} s"
    # Noticed from the closed TCP connection itself: sooner than even a heartbeat timeout.
    assert noticed < _HEARTBEAT_TIMEOUT, f"the coordinator noticed the dead node after {noticed:.2f} s"
    (row,) = federation.rounds()
    assert row["aggregation"] == aggregation and row["participants"] == 4, row
    assert sorted(row["survivors"]) == federation.names[:3], row
    assert [a["status"] for a in federation.attempts()] == ["completed"], federation.attempts()
    assert f"node {victim} disconnected" in log


@pytest.mark.integration
def test_a_frozen_node_is_dropped_by_the_heartbeat_timeout(launch, monkeypatch, step_times) -> None:
    """SIGSTOP: the process stops, its TCP connection stays open and nothing answers the coordinator's
    ZMTP pings. The masked-input deadline is made far longer than the heartbeat timeout, so the round can
    only go on early if the heartbeat noticed. The node is resumed afterwards and comes back."""
    federation = launch(n_nodes=4, rounds=1, evaluate=False, **SLOW_MLP)
    slack = DEADLINE_HEADROOM * step_times.secagg(4, 2) + 2 * _HEARTBEAT_IVL  # the coordinator's loop, busy machine
    federation.deadlines["masked_input"] += 10 * _HEARTBEAT_TIMEOUT
    _set_deadline(federation, "masked_input", federation.deadlines["masked_input"])
    _debug_coordinator(federation, monkeypatch)
    aggregation = int(federation.wait_log("coordinator", _TRAIN_START, federation.time_budget(1)).group(1))
    _wait_shares_dealt(federation, aggregation)
    victim = federation.names[-1]
    stopped_at = time.monotonic()
    federation.processes[victim].send_signal(signal.SIGSTOP)
    try:
        federation.wait_log(
            "coordinator", rf"node {victim} lost its connection in the masked_input stage", _HEARTBEAT_TIMEOUT + slack
        )
        noticed = time.monotonic() - stopped_at
    finally:
        federation.processes[victim].send_signal(signal.SIGCONT)
    print(f"\nSIGSTOP -> noticed {noticed:.2f} s (heartbeat timeout {_HEARTBEAT_TIMEOUT:.0f} s)")
    # Not a closed connection (that is immediate): the heartbeat timeout, give or take one interval.
    assert noticed >= _HEARTBEAT_TIMEOUT - _HEARTBEAT_IVL, noticed
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(1)) == 0, federation.diagnostics()
    (row,) = federation.rounds()
    assert sorted(row["survivors"]) == federation.names[:3], row
    assert "masked_input deadline passed" not in federation.log("coordinator")
    assert federation.alive(victim), federation.diagnostics()
    # The resumed node finds its connection gone (the coordinator dropped it, then finished).
    federation.wait_until(
        lambda: "lost the connection to the coordinator" in federation.log(victim),
        STARTUP_BUDGET,
        f"{victim} to notice its connection is gone",
        must_live=(victim,),
    )


def _set_deadline(federation, stage: str, seconds: float) -> None:
    path = federation.fed.coordinator_config
    text = path.read_text()
    text, count = re.subn(rf"(?m)^{stage} = .*$", f"{stage} = {seconds!r}", text)
    assert count == 1, text
    path.write_text(text)


# --- logs that help -----------------------------------------------------------------------------------


def _garbage(count: int, seed: int) -> list[list[bytes]]:
    """Frames that fail to decode (random bytes; three frames, so the version check refuses them)."""
    rng = random.Random(seed)
    return [[rng.randbytes(rng.randint(1, 16)), rng.randbytes(8), rng.randbytes(rng.randint(0, 64))] for _ in range(count)]


def _summed(log: str, first: str, peer_summary: str) -> int:
    """Warnings logged about one peer: the full ones, plus every summary's count."""
    full = sum(1 for line in log.splitlines() if first in line and " more " not in line)  # not "the last: ..."
    summaries = sum(int(n) for n in re.findall(rf"(\d+) more {re.escape(peer_summary)} in the last", log))
    return full + summaries


@pytest.mark.integration
def test_a_malformed_flood_leaves_a_few_log_lines(launch, zmq_context, step_times) -> None:
    """20,000 garbage frames and 2,000 messages for another task from an allow-listed key.

    Every one is still counted (status.json) and every one is accounted for in the log, in a handful
    of lines: the first of each kind in full, then a summary count every SUMMARY_INTERVAL seconds."""
    mole_keys, mole_identity = CurveKeyPair.generate(), SigningKey.generate()
    federation = launch(n_nodes=3, rounds=1, extra_nodes={"mole": (mole_keys, mole_identity)})
    garbage = _garbage(20_000, seed=5)
    wrong_task = [encode(Envelope("another-task", 0, Hello("mole")))] * 2_000
    carry = _carry_time(zmq_context, garbage + wrong_task, step_times.cpus)
    federation.start_coordinator()
    federation.wait_bound()
    before = len(federation.log("coordinator"))

    mole = zmq_context(zmq.DEALER).curve_client(mole_keys, federation.coordinator_keys.public)
    mole.socket.connect(federation.endpoint)
    assert mole.wait_event({zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10) is not None, mole.events
    started = time.monotonic()
    for frames in garbage + wrong_task:
        mole.socket.send_multipart(frames)

    def counted() -> bool:
        dropped = (federation.status() or {}).get("dropped_messages", {})
        return dropped.get("bad-version", 0) >= len(garbage) and dropped.get("wrong-task", 0) >= len(wrong_task)

    federation.wait_until(counted, max(20.0, DEADLINE_HEADROOM * carry), "status.json to count the whole flood")
    took = time.monotonic() - started

    def accounted() -> bool:
        log = federation.log("coordinator")[before:]
        drops = _summed(log, "dropped a message from mole (bad-version)", "dropped messages from mole")
        rejections = _summed(log, "dropped a message from mole (wrong-task)", "rejected messages from mole")
        return drops >= len(garbage) and rejections >= len(wrong_task)

    federation.wait_until(accounted, SUMMARY_INTERVAL + max(20.0, DEADLINE_HEADROOM * carry), "summaries of the flood")
    log = federation.log("coordinator")[before:]
    lines = [line for line in log.splitlines() if "mole" in line]
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    print(f"\nflood of {len(garbage) + len(wrong_task)} messages over {took:.1f} s: {len(warnings)} WARNING lines, "
          f"{len(log.encode())} bytes of log")  # fmt: skip
    # Per kind: one full line, then at most one summary per interval while the flood lasted (and one after).
    allowed = 2 * (2 + math.ceil((time.monotonic() - started) / SUMMARY_INTERVAL))
    assert len(lines) <= allowed, "\n".join(lines[:50])
    assert len(warnings) <= allowed + 2, "\n".join(warnings[:50])
    assert len(log.encode()) < 20_000, log[:3000]
    assert _summed(log, "dropped a message from mole (bad-version)", "dropped messages from mole") == len(garbage)
    assert _summed(log, "dropped a message from mole (wrong-task)", "rejected messages from mole") == len(wrong_task)
    mole.close()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(1)) == 0, federation.diagnostics()


def _carry_time(zmq_context, flood: list[list[bytes]], cpus: int) -> float:
    """Seconds this machine takes to carry ``flood`` over a CURVE connection and decode it (a throwaway pair)."""
    server_keys, client_keys = CurveKeyPair.generate(), CurveKeyPair.generate()
    server = zmq_context(zmq.ROUTER).curve_server(server_keys)
    port = server.socket.bind_to_random_port("tcp://127.0.0.1")
    client = zmq_context(zmq.DEALER).curve_client(client_keys, server_keys.public)
    client.socket.connect(f"tcp://127.0.0.1:{port}")

    def carry() -> None:
        for frames in flood:
            client.socket.send_multipart(frames)
        for _ in flood:
            assert server.socket.poll(60_000), "the measurement's own socket pair stopped delivering"
            try:
                decode(server.socket.recv_multipart()[1:])
            except RemoteProtocolError:
                pass

    return timed(carry, repeats=1) * math.ceil(2 / cpus)


@pytest.mark.integration
def test_a_node_that_cannot_connect_says_what_to_check(launch) -> None:
    """Three sites that cannot work, each told why within a few seconds: no coordinator at the address;
    a node whose key is not in the coordinator's allow-list; a node with the wrong coordinator key."""
    federation = launch(n_nodes=3, rounds=1)
    nobody, stranger, misled = federation.names
    budget = STARTUP_BUDGET + HANDSHAKE_ADVICE_AFTER

    # Nothing listens yet.
    federation.start_node(nobody)
    federation.wait_log(
        nobody, r"no working connection to the coordinator at \S+ after \d+ s: nothing accepts connections", budget
    )

    # A fresh CURVE key the coordinator has never heard of.
    fresh = CurveKeyPair.generate()
    fresh.save(federation.root / stranger / "curve.key", federation.root / stranger / "curve.pub")
    # The wrong coordinator public key.
    config = federation.fed.node_configs[misled]
    text = config.read_text()
    wrong = CurveKeyPair.generate().public.decode()
    config.write_text(re.sub(r'(?m)^coordinator_curve_public_key = ".*"$', f'coordinator_curve_public_key = "{wrong}"', text))

    federation.start_coordinator()
    federation.wait_bound()
    federation.start_node(stranger)
    federation.start_node(misled)
    federation.wait_log(nobody, r"connected to the coordinator at \S+ \(CURVE handshake completed after \d+ s\)", budget)
    advice = federation.wait_log(stranger, r"no working connection to the coordinator .*", budget).group(0)
    assert "refused this node's CURVE key" in advice and fresh.public.decode() in advice, advice
    assert "allow-list" in advice, advice
    advice = federation.wait_log(misled, r"no working connection to the coordinator .*", budget).group(0)
    assert "coordinator_curve_public_key" in advice and wrong in advice, advice
    coordinator = federation.log("coordinator")
    assert f"refused a connection from an unknown CURVE key {fresh.public.decode()}" in coordinator
    federation.wait_log("coordinator", r"a connection failed the CURVE handshake", budget)
    # Each says so once, then at doubling intervals: no flood.
    for name in (stranger, misled):
        assert federation.log(name).count("no working connection") <= 2, federation.log(name)


@pytest.mark.integration
def test_the_coordinator_logs_connects_disconnects_waiting_and_shutdown(launch) -> None:
    federation = launch(n_nodes=3, rounds=1)  # min_nodes = 3
    first, second, third = federation.names
    federation.start_coordinator()
    federation.wait_bound()
    federation.start_nodes([first, second])
    budget = STARTUP_BUDGET
    federation.wait_log("coordinator", rf"node {first} connected \(\d of 3 nodes connected\)", budget)
    federation.wait_log("coordinator", rf"node {second} connected", budget)
    federation.wait_log(
        "coordinator", rf"waiting for nodes: 2 of min_nodes 3 connected and usable \({first}, {second}\); "
        rf"not connected: {third}", budget,
    )  # fmt: skip
    federation.kill(second)
    federation.wait_log("coordinator", rf"node {second} disconnected \(1 of 3 nodes connected\)", budget)
    federation.wait_log("coordinator", rf"waiting for nodes: 1 of min_nodes 3 connected and usable \({first}\)", budget)
    federation.kill("coordinator", signal.SIGTERM)
    log = federation.log("coordinator")
    assert re.search(r"stopped listening on \S+; closing the connections of 1 node\(s\) \(site-1\)", log), log
    assert federation.wait_log(first, r"lost the connection to the coordinator", budget)


# --- the pieces: connection tracking on real sockets, and the warning limiter ---------------------------


def test_connection_events_follow_connections_across_descriptor_reuse() -> None:
    """The coordinator's socket names the node whose connection closed, even when the operating system
    hands the next connection the same file descriptor (it does, at once, on Linux)."""
    server_keys = CurveKeyPair.generate()
    members = {name: CurveKeyPair.generate() for name in ("a", "b", "c")}
    socket = CoordinatorSocket("tcp://127.0.0.1:*", server_keys, {k.public: n for n, k in members.items()})
    context = zmq.Context()
    clients: dict[str, zmq.Socket] = {}

    def connect(name: str) -> None:
        client = context.socket(zmq.DEALER)
        client.linger = 0
        client.curve_secretkey, client.curve_publickey = members[name].secret, members[name].public
        client.curve_serverkey = server_keys.public
        client.connect(socket.endpoint)
        client.send_multipart(encode(Envelope("t", 0, Hello(name))))
        clients[name] = client

    def events_until(wanted: int) -> list[tuple[str, str, int]]:
        seen: list[tuple[str, str, int]] = []
        deadline = time.monotonic() + 10
        while len(seen) < wanted and time.monotonic() < deadline:
            socket.poll(20)
            seen += socket.connection_events()
        return seen

    try:
        connect("a")
        connect("b")
        assert sorted(events_until(2)) == [("a", "connected", 1), ("b", "connected", 1)]
        for _ in range(5):  # close one and connect another right away, a few times: descriptors get reused
            clients.pop("a").close()
            connect("c")
            assert sorted(events_until(2)) == [("a", "disconnected", 0), ("c", "connected", 1)]
            assert socket.connected("c") and not socket.connected("a") and socket.connected("b")
            clients.pop("c").close()
            connect("a")
            assert sorted(events_until(2)) == [("a", "connected", 1), ("c", "disconnected", 0)]
        # A node that reconnects before its old connection is seen closing has two for a moment.
        old = clients.pop("b")
        connect("b")
        events = events_until(1)
        old.close()
        events += events_until(1)
        assert events == [("b", "connected", 2), ("b", "disconnected", 1)], events
        assert socket.connected("b")
    finally:
        for client in clients.values():
            client.close()
        socket.close()
        context.term()


def test_peer_warnings_log_the_first_then_summaries() -> None:
    now = [0.0]
    records: list[str] = []

    class _Log:
        def log(self, level: int, message: str, *args: object) -> None:
            records.append(message % args)

    warnings = PeerWarnings(_Log(), "dropped messages from {peer}", interval=10.0, clock=lambda: now[0], max_peers=2)
    for i in range(1000):
        warnings.warn("mole", "bad-version" if i % 2 else "malformed", "dropped %d", i)
        now[0] += 0.015  # 15 s in all
    warnings.flush(force=True)
    assert records[0] == "dropped 0"
    assert len(records) == 3, records
    counted = sum(int(re.match(r"(\d+) more dropped messages from mole", line).group(1)) for line in records[1:])
    assert counted == 999 and "bad-version: " in records[1] and "malformed: " in records[1]
    # A peer quiet for a whole interval is news again; beyond max_peers, new peers share one entry.
    now[0] += 20
    warnings.flush()
    warnings.warn("mole", "x", "again")
    for key in ("k1", "k2", "k3", "k4"):
        warnings.warn(key, "unknown-key", "refused %s", key)
    assert records[3:] == ["again", "refused k1", "refused k2"], records  # k2 opens "other peers", k3 and k4 counted
    warnings.flush(force=True)
    assert any(line.startswith("2 more dropped messages from other peers") for line in records), records
