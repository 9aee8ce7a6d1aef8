"""ZeroMQ sockets with CURVE on every connection, and a ZAP allow-list at the coordinator.

The coordinator binds a ROUTER socket as a CURVE server; nodes connect DEALER
sockets as CURVE clients that know the coordinator's public key. A ZAP
handler (pyzmq's authenticator thread) admits only client keys in the
coordinator's allow-list and stamps each message with the node *name* that
key belongs to (the ZMQ ``User-Id`` property): the coordinator identifies a
sender by the key that authenticated, never by a name a message claims.

Frames go through :mod:`securefed.wire.codec` with size limits enforced by
``zmq.MAXMSGSIZE`` before anything is read; a message that fails to decode is
dropped with a logged reason and counted, and the caller never sees it.
Warnings about one peer are rate-limited (:class:`~securefed.logging_setup.PeerWarnings`):
the first in full, then a summary count.

Liveness. Both sides send ZMTP heartbeats (``HEARTBEAT_IVL``), drop a
connection that stays silent for ``HEARTBEAT_TIMEOUT`` and ask the other side
to do the same (``HEARTBEAT_TTL``); libzmq answers them in its own I/O
thread, so a node busy training keeps its connection. A process that dies
closes its TCP connection at once; a host that vanishes is noticed within the
heartbeat timeout. The coordinator learns of it from a socket monitor: each
connection is known by its file descriptor (``EVENT_ACCEPTED`` and
``EVENT_DISCONNECTED`` carry it, and so does every message, ``zmq.SRCFD``),
counted up on every accept because descriptors are reused. libzmq reports a
connection's accept before any of its messages, so a message from an unknown
route is attributed after the monitor has been read: to the connection that
descriptor holds then. :meth:`CoordinatorSocket.connection_events` hands the
coordinator ``(node, "connected" | "disconnected", open connections left)``.

A node's socket monitor tells it whether its handshake completes; if it has
not after a few seconds, it logs what to check (the address, the coordinator's
public key, its own key in the coordinator's allow-list), from what it saw.

Both sockets count the message bytes they receive and send (``bytes_received``,
``bytes_sent``: the frames of every message, as encoded, before any is decoded
or refused; not the transport's own framing, encryption or heartbeats) for the
round history and the metrics endpoint.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping

import zmq
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from securefed.errors import RemoteProtocolError
from securefed.federation.messages import Envelope
from securefed.logging_setup import PeerWarnings
from securefed.wire.codec import DEFAULT_LIMITS, Limits, decode, encode, max_message_size
from securefed.wire.keys import CurveKeyPair
from securefed.wire.transcript import TranscriptWriter

__all__ = ["HANDSHAKE_ADVICE_AFTER", "HEARTBEAT_IVL_MS", "HEARTBEAT_TIMEOUT_MS", "CoordinatorSocket", "NodeSocket"]

log = logging.getLogger(__name__)

#: a PING every second on an idle connection
HEARTBEAT_IVL_MS = 1000
#: no traffic at all (not even a PONG) for this long and the peer is gone
HEARTBEAT_TIMEOUT_MS = 5000
#: a connection whose handshake has not completed by then is dropped (and retried by the node)
HANDSHAKE_IVL_MS = 10_000
#: a node without a completed handshake for this long says what to check; then again at doubling intervals
HANDSHAKE_ADVICE_AFTER = 5.0
_ADVICE_MAX_INTERVAL = 300.0
_RECONNECT_AFTER = 3.0

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
)
_PROTOCOL_ERRORS = {
    int(getattr(zmq, name)): name.removeprefix("PROTOCOL_ERROR_").lower().replace("_", "-")
    for name in dir(zmq)
    if name.startswith("PROTOCOL_ERROR_")
}


def _heartbeats(socket: zmq.Socket) -> None:
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)


def _drain(monitor: zmq.Socket) -> list[tuple[int, int]]:
    """Every monitor event waiting now, as (event, value)."""
    events: list[tuple[int, int]] = []
    while True:
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return events
        try:
            event = parse_monitor_message(frames)
        except (ValueError, IndexError, KeyError):  # pragma: no cover - libzmq writes these itself
            continue
        events.append((int(event["event"]), int(event["value"])))


def _size(frames: list) -> int:
    """Bytes in a message's frames (bytes, or buffers such as array frames)."""
    return sum(memoryview(frame).nbytes for frame in frames)


def _describe_failure(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"authentication refused (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"protocol error ({_PROTOCOL_ERRORS.get(value, value)})"
    return "the peer closed the connection during the handshake"


class _AllowList:
    """ZAP credentials provider: a client key is admitted iff it is in the allow-list."""

    def __init__(self, allowed: Mapping[bytes, str]) -> None:
        self.allowed = dict(allowed)
        self.refused = 0
        self.warnings = PeerWarnings(log, "refused connections from key {peer}")

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            self.refused += 1
            text = key.decode("ascii", "replace")
            self.warnings.warn(
                text,
                "unknown-key",
                "refused a connection from an unknown CURVE key %s (if that is a node of this federation, "
                "add it to the coordinator's [[nodes]] list as its curve_public_key)",
                text,
            )
        return ok


class _NamingAuthenticator(ThreadAuthenticator):
    """Maps an authenticated client key to the node name, which ZMQ then attaches as ``User-Id``."""

    def __init__(self, context: zmq.Context, allow_list: _AllowList) -> None:
        super().__init__(context)
        self._allow_list = allow_list

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._allow_list.allowed[zmq.utils.z85.encode(client_public_key)]


class CoordinatorSocket:
    """The coordinator's ROUTER socket: receive ``(node name, Envelope)``, send by node name."""

    def __init__(
        self,
        endpoint: str,
        keys: CurveKeyPair,
        allowed_nodes: Mapping[bytes, str],
        limits: Limits = DEFAULT_LIMITS,
        context: zmq.Context | None = None,
        transcript: TranscriptWriter | None = None,
    ) -> None:
        self._context = context or zmq.Context()
        self._owns_context = context is None
        self._limits = limits
        self._transcript = transcript
        self.allow_list = _AllowList(allowed_nodes)
        self._auth = _NamingAuthenticator(self._context, self.allow_list)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=self.allow_list)
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.curve_server = True
        self._socket.curve_secretkey = keys.secret
        self._socket.curve_publickey = keys.public
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_size(limits))
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted node takes over its route
        _heartbeats(self._socket)
        # The monitor exists before the socket binds, so it sees every connection's accept.
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )  # fmt: skip
        self._socket.bind(endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._routes: dict[str, bytes] = {}  # node -> the route of its newest connection
        self._generation: dict[int, int] = {}  # fd -> accepts seen on it
        self._open: dict[int, bool] = {}  # fd -> whether its newest connection is still open
        self._route_link: dict[bytes, tuple[int | None, int]] = {}  # route -> (fd, generation)
        self._link_route: dict[tuple[int | None, int], bytes] = {}
        self._route_node: dict[bytes, str] = {}
        self._node_routes: dict[str, set[bytes]] = {}  # node -> routes of its open connections
        self._events: list[tuple[str, str, int]] = []
        self._untracked = 0
        self._warnings = PeerWarnings(log, "dropped messages from {peer}")
        self._handshake_warnings = PeerWarnings(log, "failed handshakes by {peer}")
        self._send_warnings = PeerWarnings(log, "failed sends to {peer}")
        self._closed_routes: dict[bytes, None] = {}  # recently closed routes (messages may still be queued)
        self.dropped: Counter[str] = Counter()  # reason code -> count of messages refused
        self.failed_handshakes = 0
        #: message bytes received from and sent to nodes (every frame but the routing id)
        self.bytes_received = 0
        self.bytes_sent = 0

    def poll(self, timeout_ms: int) -> list[tuple[str, Envelope]]:
        """Everything that arrives within ``timeout_ms`` (at least one wait), decoded and attributed."""
        received: list[tuple[str, Envelope]] = []
        ready = dict(self._poller.poll(timeout_ms))
        self._read_monitor()
        if ready.get(self._socket):
            self._receive(received)
        self._warnings.flush()
        self._handshake_warnings.flush()
        self._send_warnings.flush()
        self.allow_list.warnings.flush()
        return received

    def _receive(self, received: list[tuple[str, Envelope]]) -> None:
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            route = frames[0].bytes
            self.bytes_received += sum(len(frame) for frame in frames[1:])
            try:
                name = frames[-1].get(b"User-Id")  # a message property: pyzmq types it str when named by bytes
            except zmq.ZMQError:
                name = None
            if not name:
                self._count("?", "unauthenticated", "message without an authenticated key")
                continue
            if route not in self._route_node and route not in self._closed_routes:
                self._attach(route, name, frames[-1])
            payload = [frame.bytes for frame in frames[1:]]
            try:
                envelope = decode(payload, self._limits)
            except RemoteProtocolError as exc:
                self._count(name, exc.reason, str(exc))
                continue
            if self._transcript is not None:
                self._transcript.write("received", name, payload)
            if route in self._route_node:  # not if its connection closed in the meantime
                self._routes[name] = route
            received.append((name, envelope))

    # --- connections ------------------------------------------------------------

    def connection_events(self) -> list[tuple[str, str, int]]:
        """What happened to node connections since the last call, in order: ``(node, kind, open)`` with
        kind ``"connected"`` (its first message on a new connection) or ``"disconnected"`` (a connection of
        it closed: the process died, the network or a heartbeat timed out, or libzmq dropped it after a
        protocol error), and how many connections of that node are open afterwards."""
        self._read_monitor()
        events, self._events = self._events, []
        return events

    def connected(self, node: str) -> bool:
        """Whether ``node`` has an open, authenticated connection that it has sent something on."""
        return bool(self._node_routes.get(node))

    def _attach(self, route: bytes, name: str, frame: zmq.Frame) -> None:
        """Bind a new route to its connection, known by descriptor and generation (see the module docstring)."""
        try:
            fd = int(frame.get(zmq.SRCFD))
        except (zmq.ZMQError, TypeError, ValueError, AttributeError):  # pragma: no cover - SRCFD is deprecated
            fd = None
        if fd is not None and fd < 0:  # no descriptor (e.g. inproc): this connection's close goes unseen
            fd = None
        self._read_monitor()  # the accept of this message's connection is in the monitor by now
        if fd is None:
            self._untracked += 1
            link: tuple[int | None, int] = (None, self._untracked)
        else:
            link = (fd, self._generation.get(fd, 0))
            stale = self._link_route.get(link)
            if stale is not None and stale != route:  # that connection was replaced (its close not seen yet)
                self._close_route(stale)
        self._route_link[route] = link
        self._link_route[link] = route
        self._route_node[route] = name
        routes = self._node_routes.setdefault(name, set())
        routes.add(route)
        self._events.append((name, "connected", len(routes)))
        log.debug("connection %s (fd %s) authenticated as %s", route.hex(), fd, name)
        if fd is not None and not self._open.get(fd, True):
            self._close_route(route)  # it said something and closed before we read it

    def _read_monitor(self) -> None:
        for event, value in _drain(self._monitor):
            if event == zmq.EVENT_ACCEPTED:
                self._generation[value] = self._generation.get(value, 0) + 1
                self._open[value] = True
            elif event == zmq.EVENT_DISCONNECTED:
                self._open[value] = False
                route = self._link_route.get((value, self._generation.get(value, 0)))
                if route is not None:
                    self._close_route(route)
            elif event in _HANDSHAKE_FAILED:
                self.failed_handshakes += 1
                self._handshake_warnings.warn(
                    "unidentified peers",
                    "handshake-failed",
                    "a connection failed the CURVE handshake: %s. A node whose coordinator_curve_public_key "
                    "is not this coordinator's public key fails like this, and so does a client that is not "
                    "a securefed node",
                    _describe_failure(event, value),
                )

    def _close_route(self, route: bytes) -> None:
        name = self._route_node.pop(route, None)
        link = self._route_link.pop(route, None)
        self._closed_routes[route] = None
        if len(self._closed_routes) > 4096:
            del self._closed_routes[next(iter(self._closed_routes))]
        if link is not None and self._link_route.get(link) == route:
            del self._link_route[link]
        if name is None:
            return
        routes = self._node_routes.get(name, set())
        routes.discard(route)
        if not routes:
            self._node_routes.pop(name, None)
        if self._routes.get(name) == route:
            if routes:
                self._routes[name] = next(iter(routes))
            else:
                del self._routes[name]
        self._events.append((name, "disconnected", len(routes)))

    # --- sending ------------------------------------------------------------------

    def send(self, node: str, envelope: Envelope) -> bool:
        """Send to a node by name; False if the node has not been heard from (no route yet)."""
        route = self._routes.get(node)
        if route is None:
            return False
        frames = encode(envelope)
        try:
            self._socket.send_multipart([route, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # queue full or peer gone: the protocol treats it as a dropout
            self._send_warnings.warn(node, "send-failed", "could not send %s to %s: %s", type(envelope.body).__name__, node, exc)
            return False
        self.bytes_sent += _size(frames)
        if self._transcript is not None:
            self._transcript.write("sent", node, frames)
        return True

    def _count(self, node: str, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self._warnings.warn(node, reason, "dropped a message from %s (%s): %s", node, reason, detail)

    def close(self) -> None:
        for warnings in (self._warnings, self._handshake_warnings, self._send_warnings, self.allow_list.warnings):
            warnings.flush(force=True)
        nodes = sorted(self._node_routes)
        log.info(
            "stopped listening on %s; closing the connections of %d node(s)%s",
            self.endpoint,
            len(nodes),
            f" ({', '.join(nodes)})" if nodes else "",
        )
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._auth.stop()
        if self._transcript is not None:
            self._transcript.close()
        if self._owns_context:
            self._context.term()


class NodeSocket:
    """A node's DEALER socket to the coordinator. ZMQ reconnects by itself after a restart.

    Its socket monitor tracks the connection: it logs when the CURVE handshake
    succeeds and when the connection is lost, and if no handshake has completed
    for ``HANDSHAKE_ADVICE_AFTER`` seconds it says what to check, from what it
    saw: nothing accepting connections at the address, a handshake that fails
    (the coordinator's public key), a refusal by the coordinator's allow-list
    (this node's key), or a listener that never answers.
    """

    def __init__(
        self,
        endpoint: str,
        keys: CurveKeyPair,
        coordinator_public_key: bytes,
        limits: Limits = DEFAULT_LIMITS,
        context: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._context = context or zmq.Context()
        self._owns_context = context is None
        self._limits = limits
        self._clock = clock
        self._public_key = keys.public
        self._server_key = coordinator_public_key
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.curve_secretkey = keys.secret
        self._socket.curve_publickey = keys.public
        self._socket.curve_serverkey = coordinator_public_key
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_size(limits))
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RECONNECT_IVL, 200)
        self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        _heartbeats(self._socket)
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )  # fmt: skip
        self._socket.connect(endpoint)
        self._endpoint = endpoint
        self._failing_since: float | None = None
        self._last_reconnect = self._clock()
        #: whether a CURVE handshake with the coordinator has completed on the current connection
        self.connected = False
        self._down_since = self._clock()
        self._advice_after = HANDSHAKE_ADVICE_AFTER
        self._advised = False
        self._seen: Counter[str] = Counter()  # what the monitor showed since the last handshake
        self._last_failure = ""
        self.reconnects = 0
        self.dropped: Counter[str] = Counter()
        #: message bytes received from and sent to the coordinator
        self.bytes_received = 0
        self.bytes_sent = 0
        self._warnings = PeerWarnings(log, "dropped messages from {peer}")
        self._send_warnings = PeerWarnings(log, "failed sends to {peer}")

    def poll(self, timeout_ms: int) -> list[Envelope]:
        received: list[Envelope] = []
        ready = self._socket.poll(timeout_ms, zmq.POLLIN)
        self.check_connection()
        self._warnings.flush()
        self._send_warnings.flush()
        if not ready:
            return received
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            self.bytes_received += _size(frames)
            try:
                received.append(decode(frames, self._limits))
            except RemoteProtocolError as exc:
                self.dropped[exc.reason] += 1
                self._warnings.warn(
                    "the coordinator", exc.reason, "dropped a message from the coordinator (%s): %s", exc.reason, exc
                )

    def send(self, envelope: Envelope) -> bool:
        frames = encode(envelope)
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if self.connected:
                self._send_warnings.warn(
                    "the coordinator", "send-failed", "could not send %s: %s", type(envelope.body).__name__, exc
                )
            else:  # no connection: check_connection says what to check, once it is overdue
                log.debug("could not send %s: %s", type(envelope.body).__name__, exc)
            self._maybe_reconnect()
            return False
        self._failing_since = None
        self.bytes_sent += _size(frames)
        return True

    # --- the connection -----------------------------------------------------------

    def check_connection(self) -> None:
        """Read the socket monitor; log a handshake, a lost connection, or (once it is overdue) advice."""
        now = self._clock()
        for event, value in _drain(self._monitor):
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if not self.connected:
                    waited = now - self._down_since
                    log.info(
                        "connected to the coordinator at %s (CURVE handshake completed%s)",
                        self._endpoint,
                        f" after {waited:.0f} s" if self._advised else "",
                    )
                self.connected = True
                self._seen.clear()
                self._advised = False
                self._advice_after = HANDSHAKE_ADVICE_AFTER
            elif event == zmq.EVENT_DISCONNECTED:
                self._seen["disconnected"] += 1
                if self.connected:
                    self.connected = False
                    self._down_since = now
                    log.warning("lost the connection to the coordinator at %s; reconnecting", self._endpoint)
            elif event == zmq.EVENT_CONNECTED:
                self._seen["tcp"] += 1
            elif event == zmq.EVENT_CONNECT_RETRIED:
                self._seen["retried"] += 1
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._seen["auth"] += 1
                self._last_failure = _describe_failure(event, value)
            elif event in _HANDSHAKE_FAILED:
                self._seen["handshake"] += 1
                self._last_failure = _describe_failure(event, value)
        if not self.connected and now - self._down_since >= self._advice_after:
            log.warning(
                "no working connection to the coordinator at %s after %.0f s: %s",
                self._endpoint,
                now - self._down_since,
                self.advice(),
            )
            self._advised = True
            self._advice_after = min(2 * self._advice_after, self._advice_after + _ADVICE_MAX_INTERVAL)

    def advice(self) -> str:
        """What to check, given what the socket monitor showed since the last completed handshake."""
        seen = self._seen
        key = self._public_key.decode("ascii", "replace")
        server = self._server_key.decode("ascii", "replace") if isinstance(self._server_key, bytes) else str(self._server_key)
        if seen["auth"]:
            return (
                f"the coordinator refused this node's CURVE key {seen['auth']} time(s) ({self._last_failure}). "
                f"Check that the coordinator's allow-list (its [[nodes]] entries) has this node's public key "
                f"{key} (this node's curve.pub) as its curve_public_key"
            )
        if seen["handshake"]:
            return (
                f"the CURVE handshake failed {seen['handshake']} time(s) ({self._last_failure}). Check that "
                f"coordinator_curve_public_key in this node's config is the coordinator's public key (its "
                f"curve.pub; this node expects {server}), and that {self._endpoint} is the securefed coordinator"
            )
        if seen["tcp"] and seen["disconnected"]:
            return (
                f"the connection to {self._endpoint} was made {seen['tcp']} time(s) but closed before the CURVE "
                f"handshake completed. Check that coordinator_curve_public_key in this node's config is the "
                f"coordinator's public key (this node expects {server}), that this node's public key {key} is "
                f"in the coordinator's allow-list, and that {self._endpoint} is the securefed coordinator"
            )
        if seen["tcp"]:
            return (
                f"something accepts TCP connections at {self._endpoint} but has not completed a ZeroMQ CURVE "
                f"handshake. Check that the address and port are the securefed coordinator's listen address"
            )
        if seen["retried"]:
            return (
                f"nothing accepts connections at {self._endpoint} ({seen['retried']} attempts). Check that the "
                f"coordinator is running and listening there, the address and port in this node's config "
                f"([node] coordinator), and any firewall in between"
            )
        return (
            f"no answer from {self._endpoint} yet. Check the address and port in this node's config "
            f"([node] coordinator), that the host is reachable, and any firewall in between"
        )

    def _maybe_reconnect(self) -> None:
        """libzmq gives up on a connection after a protocol error (e.g. an oversized or forged
        frame) or a refused authentication and never reconnects by itself; sends then fail with
        EAGAIN. After a few seconds of that, start the connection afresh (at most every
        ``_RECONNECT_AFTER`` seconds)."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
            return
        if now - self._failing_since < _RECONNECT_AFTER or now - self._last_reconnect < _RECONNECT_AFTER:
            return
        log.debug("no working connection to %s for %.0f s; reconnecting", self._endpoint, now - self._failing_since)
        try:
            self._socket.disconnect(self._endpoint)
        except zmq.ZMQError:
            pass
        self._socket.connect(self._endpoint)
        self._last_reconnect = now
        self.reconnects += 1

    def close(self) -> None:
        self._warnings.flush(force=True)
        self._send_warnings.flush(force=True)
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        if self._owns_context:
            self._context.term()
