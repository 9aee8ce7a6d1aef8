"""One log format for both daemons, and warnings that cannot flood the log.

Log lines carry reason codes, never key material. A peer that sends garbage
(or a key that keeps knocking) would otherwise write one WARNING per message:
20,000 malformed frames once made 20,000 lines. :class:`PeerWarnings` logs the
first warning about a peer in full and then, while more keep coming, one
summary per ``interval`` with their count by reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SUMMARY_INTERVAL", "PeerWarnings", "configure_logging"]

#: seconds between two summaries of the warnings about one peer
SUMMARY_INTERVAL = 10.0
#: peers tracked one by one; beyond that (e.g. an intruder cycling keys) they share one entry
MAX_PEERS = 64
OTHER_PEERS = "other peers"


def configure_logging(name: str) -> None:
    level = os.environ.get("SECUREFED_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )


@dataclass
class _Window:
    started: float
    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    last: str = ""


class PeerWarnings:
    """Rate-limited warnings, per peer: the first in full, then a periodic summary count.

    ``warn(peer, reason, message)`` logs ``message`` at once if nothing was logged about ``peer`` in
    the last ``interval`` seconds; otherwise it only counts it. ``flush()`` (call it often, e.g. every
    loop turn) logs "N more <what> in the last S s (reason: n, ...); the last: ..." for
    every peer whose window is over, and forgets peers that went quiet, so that the next warning about
    them is logged in full again. ``flush(force=True)`` writes every pending summary (at shutdown).
    ``what`` names the warnings in a summary, with ``{peer}`` standing for the peer, e.g.
    ``"dropped messages from {peer}"``. Thread-safe (the ZAP handler warns from its own thread).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = SUMMARY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = MAX_PEERS,
        level: int = logging.WARNING,
    ) -> None:
        self._log = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._max_peers = max_peers
        self._level = level
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        #: every warning, logged or only counted, by reason
        self.total: Counter[str] = Counter()

    def warn(self, peer: str, reason: str, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            self.total[reason] += 1
            if peer not in self._windows and len(self._windows) >= self._max_peers:
                peer = OTHER_PEERS
            window = self._windows.get(peer)
            if window is None:
                self._windows[peer] = _Window(now)
                self._log.log(self._level, message, *args)
                return
            window.count += 1
            window.reasons[reason] += 1
            window.last = message % args if args else message
            if now - window.started >= self._interval:
                self._summarise(peer, window, now)

    def flush(self, force: bool = False) -> None:
        now = self._clock()
        with self._lock:
            for peer, window in list(self._windows.items()):
                if now - window.started < self._interval and not force:
                    continue
                if window.count:
                    self._summarise(peer, window, now)
                else:
                    del self._windows[peer]  # quiet for a whole interval: the next one is news again

    def _summarise(self, peer: str, window: _Window, now: float) -> None:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in window.reasons.most_common())
        self._log.log(
            self._level,
            "%d more %s in the last %.0f s (%s); the last: %s",
            window.count,
            self._what.format(peer=peer),
            max(now - window.started, 0.0),
            reasons,
            window.last[:300],
        )
        self._windows[peer] = _Window(now)
