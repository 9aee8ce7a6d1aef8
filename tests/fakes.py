"""Test doubles shared across test folders."""

from __future__ import annotations

from securefed.federation.messages import Envelope


class FakeNodeSocket:
    """What a ``Node`` needs of its socket: an inbox the test fills and a record of every send."""

    def __init__(self) -> None:
        self.inbox: list[Envelope] = []
        self.sent: list[Envelope] = []

    def poll(self, timeout_ms: int) -> list[Envelope]:
        out, self.inbox = self.inbox, []
        return out

    def send(self, envelope: Envelope) -> bool:
        self.sent.append(envelope)
        return True
