"""Argument checks shared by the tree modules (numpy-free, so parameters load fast)."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TypeGuard

from securefed.errors import InvalidParameter


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; a bool or a float is refused, not converted."""
    if not is_int(value) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise InvalidParameter(f"{name} must be an integer {span}, got {value!r}")
    return int(value)


def check_real(name: str, value: object, low: float, *, open_low: bool = False, high: float | None = None) -> float:
    """``value`` as a finite float >= low (> low with ``open_low``) and <= high."""
    v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    ok = math.isfinite(v) and (v > low if open_low else v >= low) and (high is None or v <= high)
    if not ok:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        top = "" if high is None else f" and <= {high:g}"
        raise InvalidParameter(f"{name} must be a finite number {bound}{top}, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidParameter(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    if type(value) is not bool:
        raise InvalidParameter(f"{name} must be true or false, got {value!r}")
    return value


def check_keys(what: str, raw: object, required: Collection[str]) -> dict:
    """``raw`` as a JSON object with exactly the ``required`` keys."""
    if not isinstance(raw, dict):
        raise InvalidParameter(f"{what} must be a JSON object, got {type(raw).__name__}")
    missing = sorted(set(required) - set(raw))
    extra = sorted(set(raw) - set(required))
    if missing or extra:
        raise InvalidParameter(f"{what} has wrong keys: missing {missing}, unexpected {extra}")
    return raw


def int_list(name: str, raw: object, low: int, high: int) -> list[int]:
    """A JSON list of ints in [low, high]."""
    if not isinstance(raw, list) or not all(is_int(v) and low <= v <= high for v in raw):
        raise InvalidParameter(f"{name} must be a list of integers in {low}..{high}")
    return raw
