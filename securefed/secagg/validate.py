"""Structural checks on id lists inside protocol messages, shared by client and server."""

from __future__ import annotations

from collections.abc import Iterable

from securefed.errors import RemoteProtocolError

__all__ = ["require", "check_sorted_ids", "check_id_pairs"]


def require(condition: bool, message: str, reason: str = "malformed") -> None:
    """Raise :class:`RemoteProtocolError` with a loggable ``reason`` unless ``condition`` holds."""
    if not condition:
        raise RemoteProtocolError(message, reason=reason)


def check_sorted_ids(ids: Iterable[int], cohort_size: int, what: str) -> tuple[int, ...]:
    """Ids must be ints in 1..n, strictly increasing (so also free of duplicates)."""
    values = tuple(ids)
    previous = 0
    for value in values:
        require(type(value) is int and previous < value <= cohort_size, f"{what}: ids not strictly increasing in 1..{cohort_size}")
        previous = value
    return values


def check_id_pairs(pairs: object, cohort_size: int, what: str) -> tuple[int, ...]:
    """A tuple of ``(id, bytes)`` pairs with strictly increasing ids; returns the ids."""
    require(isinstance(pairs, tuple), f"{what}: expected a tuple of pairs")
    for pair in pairs:
        require(isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], bytes), f"{what}: malformed pair")
    return check_sorted_ids((pair[0] for pair in pairs), cohort_size, what)
