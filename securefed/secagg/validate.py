"""Structural checks on id lists inside protocol messages, shared by client and server."""

from __future__ import annotations

from collections.abc import Iterable

from securefed.errors import RemoteProtocolError

__all__ = ["check_id_pairs", "check_sorted_ids", "require"]


def require(condition: bool, message: str, reason: str = "malformed") -> None:
    """Raise :class:`RemoteProtocolError` with a loggable ``reason`` unless ``condition`` holds."""
    if not condition:
        raise RemoteProtocolError(message, reason=reason)


def check_sorted_ids(ids: Iterable[int], cohort_size: int, what: str) -> tuple[int, ...]:
    """Ids must be ints in 1..n, strictly increasing (so also free of duplicates)."""
    values = tuple(ids)
    ok = all(type(value) is int for value in values) and all(a < b for a, b in zip(values, values[1:]))
    require(
        ok and (not values or (values[0] >= 1 and values[-1] <= cohort_size)),
        f"{what}: ids not strictly increasing in 1..{cohort_size}",
    )
    return values


def check_id_pairs(pairs: object, cohort_size: int, what: str) -> tuple[int, ...]:
    """A tuple of ``(id, bytes)`` pairs with strictly increasing ids; returns the ids."""
    if not isinstance(pairs, tuple):
        raise RemoteProtocolError(f"{what}: expected a tuple of pairs", reason="malformed")
    require(
        all(type(pair) is tuple and len(pair) == 2 and type(pair[1]) is bytes for pair in pairs),
        f"{what}: malformed pair",
    )
    return check_sorted_ids([pair[0] for pair in pairs], cohort_size, what)
