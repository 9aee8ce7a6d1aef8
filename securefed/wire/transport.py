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
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping

import zmq
from zmq.auth.thread import ThreadAuthenticator

from securefed.errors import RemoteProtocolError
from securefed.federation.messages import Envelope
from securefed.wire.codec import DEFAULT_LIMITS, Limits, decode, encode, max_message_size
from securefed.wire.keys import CurveKeyPair
from securefed.wire.transcript import TranscriptWriter

__all__ = ["CoordinatorSocket", "NodeSocket"]

log = logging.getLogger(__name__)

_HEARTBEAT_MS = 1000
_RECONNECT_AFTER = 3.0


class _AllowList:
    """ZAP credentials provider: a client key is admitted iff it is in the allow-list."""

    def __init__(self, allowed: Mapping[bytes, str]) -> None:
        self.allowed = dict(allowed)
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            self.refused += 1
            log.warning("refused a connection from an unknown CURVE key %s", key.decode("ascii", "replace"))
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
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_MS)
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5 * _HEARTBEAT_MS)
        self._socket.bind(endpoint)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._routes: dict[str, bytes] = {}
        self.dropped = Counter()  # reason code -> count of messages refused

    def poll(self, timeout_ms: int) -> list[tuple[str, Envelope]]:
        """Everything that arrives within ``timeout_ms`` (at least one wait), decoded and attributed."""
        received: list[tuple[str, Envelope]] = []
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return received
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return received
            route = frames[0].bytes
            try:
                name = frames[-1].get("User-Id")
            except zmq.ZMQError:
                name = None
            if not name:
                self._count("unauthenticated", "message without an authenticated key")
                continue
            payload = [frame.bytes for frame in frames[1:]]
            try:
                envelope = decode(payload, self._limits)
            except RemoteProtocolError as exc:
                self._count(exc.reason, f"from {name}: {exc}")
                continue
            if self._transcript is not None:
                self._transcript.write("received", name, payload)
            self._routes[name] = route
            received.append((name, envelope))

    def send(self, node: str, envelope: Envelope) -> bool:
        """Send to a node by name; False if the node has not been heard from (no route yet)."""
        route = self._routes.get(node)
        if route is None:
            return False
        frames = encode(envelope)
        try:
            self._socket.send_multipart([route, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # queue full or peer gone: the protocol treats it as a dropout
            log.warning("could not send %s to %s: %s", type(envelope.body).__name__, node, exc)
            return False
        if self._transcript is not None:
            self._transcript.write("sent", node, frames)
        return True

    def _count(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        log.warning("dropped a message (%s): %s", reason, detail)

    def close(self) -> None:
        self._socket.close(linger=0)
        self._auth.stop()
        if self._transcript is not None:
            self._transcript.close()
        if self._owns_context:
            self._context.term()


class NodeSocket:
    """A node's DEALER socket to the coordinator. ZMQ reconnects by itself after a restart."""

    def __init__(
        self,
        endpoint: str,
        keys: CurveKeyPair,
        coordinator_public_key: bytes,
        limits: Limits = DEFAULT_LIMITS,
        context: zmq.Context | None = None,
    ) -> None:
        self._context = context or zmq.Context()
        self._owns_context = context is None
        self._limits = limits
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.curve_secretkey = keys.secret
        self._socket.curve_publickey = keys.public
        self._socket.curve_serverkey = coordinator_public_key
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_size(limits))
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RECONNECT_IVL, 200)
        self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_MS)
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5 * _HEARTBEAT_MS)
        self._socket.connect(endpoint)
        self._endpoint = endpoint
        self._failing_since: float | None = None
        self._last_reconnect = time.monotonic()
        self.reconnects = 0
        self.dropped = Counter()

    def poll(self, timeout_ms: int) -> list[Envelope]:
        received: list[Envelope] = []
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return received
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            try:
                received.append(decode(frames, self._limits))
            except RemoteProtocolError as exc:
                self.dropped[exc.reason] += 1
                log.warning("dropped a message from the coordinator (%s): %s", exc.reason, exc)

    def send(self, envelope: Envelope) -> bool:
        try:
            self._socket.send_multipart(encode(envelope), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send %s: %s", type(envelope.body).__name__, exc)
            self._maybe_reconnect()
            return False
        self._failing_since = None
        return True

    def _maybe_reconnect(self) -> None:
        """libzmq gives up on a connection after a protocol error (e.g. an oversized or forged
        frame) and never reconnects by itself; sends then fail with EAGAIN. After a few seconds of
        that, start the connection afresh (at most every ``_RECONNECT_AFTER`` seconds)."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            return
        if now - self._failing_since < _RECONNECT_AFTER or now - self._last_reconnect < _RECONNECT_AFTER:
            return
        log.warning("no working connection to %s for %.0f s; reconnecting", self._endpoint, now - self._failing_since)
        try:
            self._socket.disconnect(self._endpoint)
        except zmq.ZMQError:
            pass
        self._socket.connect(self._endpoint)
        self._last_reconnect = now
        self.reconnects += 1

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._owns_context:
            self._context.term()
