"""The transport as an auditor sees it: only allow-listed CURVE keys get in, and the wire shows only ciphertext.

One federation of three node daemons and a coordinator runs on loopback. Before the nodes start,
two intruders knock: a ZeroMQ DEALER with a fresh CURVE key that is not in the allow-list, and a
plain (NULL mechanism) DEALER; a raw TCP client also speaks plain ZMTP at the port. Then one node
(site-1) is routed through a small TCP forwarder (:class:`~tests.privacy_audit.checks_secagg.TcpTap`)
that records every byte of its connection while a real training round (and its evaluation) runs.
The coordinator's transcript of the same messages is the plaintext the captured bytes must not
show; as a power control the very same tap and checks, on a plain ZeroMQ connection carrying those
messages, find everything.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from securefed.federation.messages import Envelope, Hello, RoundStart
from securefed.localfed import free_port
from securefed.secagg.messages import MaskedInput
from securefed.wire.codec import encode
from securefed.wire.keys import CurveKeyPair
from tests.privacy_audit.checks_secagg import (
    AuditFederation,
    CheckResult,
    TcpTap,
    Transcript,
    check_wire_has_no_plaintext,
    check_wire_is_curve_ciphertext,
    parse_zmtp,
    transcript_from_file,
    zmtp_plain_stream,
)

pytestmark = pytest.mark.integration

HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
}
TAPPED = "site-1"


@dataclass
class Knock:
    """What one intruder saw: its first handshake event (or None), and every message it received."""

    event: tuple[int, int] | None
    received: list[list[bytes]]


def _knock(context: zmq.Context, endpoint: str, message: list[bytes], curve: tuple[CurveKeyPair, bytes] | None) -> Knock:
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    if curve is not None:
        keys, server_key = curve
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = keys.secret, keys.public, server_key
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        sock.sndtimeo = 2000  # if the refused handshake already tore the pipe down, there is no one to send to
        try:
            sock.send_multipart(message)
        except zmq.Again:
            pass  # the intruder could not even send: it certainly receives nothing
        event = None
        deadline = time.monotonic() + 10
        while event is None and time.monotonic() < deadline:
            if monitor.poll(100):
                raw = recv_monitor_message(monitor)
                if raw["event"] in HANDSHAKE_EVENTS:
                    event = (int(raw["event"]), int(raw["value"]))
        received = []
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            if sock.poll(int(left * 1000) + 1):
                received.append(sock.recv_multipart(zmq.NOBLOCK))
        return Knock(event, received)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def _raw_plain_zmtp(endpoint: str, message: list[bytes]) -> bytes:
    """Speak plain (NULL) ZMTP at the port from a raw TCP socket; return every byte that comes back in 1 s."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    got = bytearray()
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(zmtp_plain_stream([message]))
        raw.settimeout(0.2)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data = raw.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            got += data
    return bytes(got)


def _plain_zeromq_capture(messages: list[tuple[str, tuple[bytes, ...]]]) -> list[bytes]:
    """The power control: the same tap between two plain (NULL) ZeroMQ sockets carrying ``messages``."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    dealer = context.socket(zmq.DEALER)
    tap = None
    try:
        router.linger = dealer.linger = 0
        port = free_port()
        router.bind(f"tcp://127.0.0.1:{port}")
        tap = TcpTap(("127.0.0.1", port))
        dealer.connect(f"tcp://127.0.0.1:{tap.port}")
        route = None
        for direction, frames in messages:
            if direction == "received":  # node -> coordinator
                dealer.send_multipart(list(frames))
                if route is None:
                    assert router.poll(5000), "the plain control connection carried nothing"
                    route = router.recv_multipart()[0]
        for direction, frames in messages:
            if direction == "sent" and route is not None:
                router.send_multipart([route, *frames])
        time.sleep(0.5)
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        context.term()
        if tap is not None:
            tap.close()
    return tap.streams()


@dataclass
class WireRun:
    federation: AuditFederation
    unknown_key: Knock
    plain_socket: Knock
    raw_reply: bytes
    status_after_knocks: dict
    alive_after_knocks: bool
    exit_code: int
    streams: list[bytes]
    transcript: Transcript


@pytest.fixture(scope="module")
def wire(tmp_path_factory) -> WireRun:
    federation = AuditFederation(tmp_path_factory.mktemp("wire") / "fed", n_nodes=3, rounds=1, transcript=True)
    tap = TcpTap(("127.0.0.1", federation.fed.port))
    context = zmq.Context()
    try:
        federation.route_node_through(TAPPED, tap.port)
        federation.start_coordinator()
        federation.wait_until(federation.status, 30, "the coordinator's first status.json")
        hello = encode(Envelope(federation.task["name"], 0, Hello(TAPPED)))  # claims to be a real node
        endpoint = federation.fed.endpoint
        unknown = _knock(context, endpoint, hello, (CurveKeyPair.generate(), federation.coordinator_public_key))
        plain = _knock(context, endpoint, hello, None)
        raw_reply = _raw_plain_zmtp(endpoint, hello)
        status = federation.wait_until(
            lambda: (s := federation.status()) and s["refused_connections"] >= 1 and s, 10, "refused_connections > 0"
        )
        alive = federation.coordinator_alive()
        federation.start_nodes()
        exit_code = federation.wait_coordinator_exit(timeout=90)
    finally:
        context.term()
        federation.stop()
        tap.close()
    return WireRun(
        federation, unknown, plain, raw_reply, status, alive, exit_code, tap.streams(),
        transcript_from_file(federation.fed.transcript_path),
    )  # fmt: skip


def _plaintext(run: WireRun) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Markers and arrays that crossed the tapped connection in the clear, as the coordinator's transcript shows."""
    task = run.federation.task["name"].encode()
    markers = {
        "task name": task,
        "node name": TAPPED.encode(),
        "codec version": b"SF1",
        "JSON header key": b'"aggregation"',
        "message type KeyList": b"KeyList",
        "message type MaskedInput": b"MaskedInput",
        "message type RoundStart": b"RoundStart",
    }
    arrays = {}
    for r in run.transcript.records:
        if r.node != TAPPED:
            continue
        if isinstance(r.body, RoundStart):
            arrays[f"model of aggregation {r.aggregation}"] = np.ascontiguousarray(r.body.model, dtype="<f8").tobytes()
        if isinstance(r.body, MaskedInput):
            arrays[f"{TAPPED}'s masked input, aggregation {r.aggregation}"] = r.body.vector.tobytes()
    # (the initial model is all zeros: zero runs also pad the ZMTP greeting, so it is no evidence either way)
    return markers, {label: data for label, data in arrays.items() if len(set(data)) > 1}


def record(audit, result: CheckResult, promise: str) -> None:
    audit.check(result.name, promise, result.passed, result.detail)
    assert result.passed, result.detail


def test_unknown_curve_key_is_refused(wire, audit):
    """Promise: a client whose CURVE key is not in the allow-list is refused at the handshake and gets no reply."""
    knock = wire.unknown_key
    problems = []
    if knock.event != (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400):
        problems.append(f"handshake event {knock.event}, expected an authentication failure (400)")
    if knock.received:
        problems.append(f"received {len(knock.received)} messages")
    if wire.status_after_knocks["refused_connections"] < 1 or not wire.alive_after_knocks:
        problems.append(f"status {wire.status_after_knocks}, coordinator alive: {wire.alive_after_knocks}")
    if wire.exit_code != 0:
        problems.append(f"the coordinator then exited with {wire.exit_code}")
    detail = (
        f"handshake {knock.event}, refused_connections = {wire.status_after_knocks['refused_connections']}, round then completed"
    )
    record(audit, CheckResult("unknown-curve-key-refused", not problems, "; ".join(problems) or detail),
           "only nodes in the coordinator's allow-list can connect; others are refused and counted")  # fmt: skip


def test_plain_connection_gets_nothing(wire, audit):
    """Promise: a connection without CURVE encryption never completes a handshake nor receives a message."""
    knock = wire.plain_socket
    problems = []
    if knock.event is None or knock.event[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        problems.append(f"plain ZeroMQ socket: handshake event {knock.event}")
    if knock.received:
        problems.append(f"plain ZeroMQ socket received {len(knock.received)} messages")
    # At the byte level the coordinator sends at most (part of) its own ZMTP greeting, which names CURVE.
    raw = wire.raw_reply
    greeting_only = len(raw) <= 64 and raw[:1] in (b"", b"\xff") and (len(raw) < 32 or parse_zmtp(raw).mechanism == b"CURVE")
    if not greeting_only:
        problems.append(f"raw plain ZMTP client got {len(wire.raw_reply)} bytes: {wire.raw_reply[:80]!r}")
    detail = (
        f"plain socket: handshake event {knock.event}, 0 messages; raw client: {len(wire.raw_reply)} bytes (at most the greeting)"
    )
    record(audit, CheckResult("plain-connection-gets-nothing", not problems, "; ".join(problems) or detail),
           "every connection is CURVE-encrypted; a plain one gets nothing")  # fmt: skip


def test_captured_wire_bytes_are_not_plaintext(wire, audit):
    """Promise: bytes captured on a node's connection contain no task or node name, no codec markers, no model or update bytes."""
    assert any(r.node == TAPPED for r in wire.transcript.of(MaskedInput, "received")), "the tapped node never took part"
    assert sum(len(s) for s in wire.streams) > 10_000, [len(s) for s in wire.streams]
    markers, arrays = _plaintext(wire)
    assert len(arrays) >= 3, sorted(arrays)  # the trained model, and site-1's two masked inputs
    result = check_wire_has_no_plaintext(wire.streams, markers, arrays)
    # Power: the same tap and search over a plain ZeroMQ connection carrying the same messages find them all.
    plain = _plain_zeromq_capture([(r.direction, r.frames) for r in wire.transcript.records if r.node == TAPPED])
    for label, marker in markers.items():
        assert not check_wire_has_no_plaintext(plain, {label: marker}, {}), label
    for label, data in arrays.items():
        assert not check_wire_has_no_plaintext(plain, {}, {label: data}), label
    record(audit, result, "the wire between node and coordinator shows no plaintext (CURVE encryption)")


def test_captured_wire_bytes_are_curve_ciphertext(wire, audit):
    """Promise: after the CurveZMQ handshake every captured frame is a CURVE MESSAGE box whose bytes look random."""
    result = check_wire_is_curve_ciphertext(wire.streams)
    plain = _plain_zeromq_capture([(r.direction, r.frames) for r in wire.transcript.records if r.node == TAPPED])
    assert not check_wire_is_curve_ciphertext(plain)  # power: a plain ZeroMQ stream fails it
    record(audit, result, "everything on the wire after the handshake is authenticated ciphertext")
