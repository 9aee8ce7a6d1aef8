"""Strict reading of a computation's JSON parameters, and the bounds every kind shares.

Theory of operation. Parameters arrive from the coordinator as JSON; a node
must never guess what a misspelt or out-of-range value meant, because a
guess could change what it reveals. So every kind reads its parameters
through a :class:`Reader` that refuses unknown keys by name (with the nearest
valid one), checks each value's type (a boolean is never a number) and range,
and raises :class:`ParameterError` naming the kind and the key.

Two declarations are common to every kind and carry the no-wrap guarantee:

* the **cohort** -- ``max_nodes`` (most nodes whose vectors are summed) and
  ``max_rows`` (most records one node may hold). Every coordinate of a node's
  contribution is a sum over its rows of a quantity in [-1, 1] (counts,
  normalised values, their products), so it is at most ``max_rows`` in
  magnitude, and the encoder (:class:`~securefed.encoding.FixedPointEncoder`)
  picks the finest fixed point at which ``max_nodes`` such sums cannot reach
  2^31. Parameters under which even whole numbers could wrap are refused.
* the **public per-feature bounds** ``low``/``high`` (as the task's min-max
  preprocessing declares them, see :mod:`securefed.preprocessing`): a value is
  clipped to them and carried as z = (x - centre) / half_width in [-1, 1], so
  sums of z, of z squared and of products z_i z_j all obey the bound above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np

from securefed.config_util import nearest
from securefed.encoding import FixedPointEncoder, max_safe_fractional_bits
from securefed.errors import InvalidParameter

__all__ = [
    "MAX_FEATURES",
    "MAX_NODES",
    "MAX_VECTOR_LENGTH",
    "Bounds",
    "Cohort",
    "ParameterError",
    "Reader",
]

#: The most nodes one sum can hold (the secure-aggregation cohort limit).
MAX_NODES = 0xFFFF
#: The most features one request may name.
MAX_FEATURES = 1000
#: The longest vector a request may ask for (16 MiB of uint32): keeps a hostile request from
#: making a node allocate without limit.
MAX_VECTOR_LENGTH = 1 << 22

_REQUIRED = object()


class ParameterError(InvalidParameter):
    """A computation's parameter is unusable; ``kind`` and ``key`` name it (``key`` None for the whole object)."""

    def __init__(self, kind: str, key: str | None, message: str) -> None:
        where = f"{kind}: parameter {key!r}" if key is not None else f"{kind}: parameters"
        super().__init__(f"{where} {message}")
        self.kind = kind
        self.key = key


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Reader:
    """Reads one request's parameters strictly; every failure is a :class:`ParameterError` naming the key."""

    def __init__(self, kind: str, params: object, allowed: Iterable[str]) -> None:
        self.kind = kind
        allowed = tuple(allowed)
        if not isinstance(params, Mapping):
            raise ParameterError(kind, None, f"must be a JSON object, got {type(params).__name__}")
        for key in params:
            if not isinstance(key, str):
                raise ParameterError(kind, str(key), "is not a string key")
            if key not in allowed:
                guess = nearest(key, list(allowed))
                hint = f"; did you mean {guess!r}?" if guess else ""
                raise ParameterError(kind, key, f"is not a parameter of {kind}{hint} (valid: {sorted(allowed)})")
        self._params = params

    def error(self, key: str | None, message: str) -> ParameterError:
        return ParameterError(self.kind, key, message)

    def _get(self, key: str, default: object) -> object:
        if key in self._params:
            return self._params[key]
        if default is _REQUIRED:
            raise self.error(key, "is required")
        return default

    def integer(self, key: str, low: int, high: int, default: object = _REQUIRED) -> int:
        value = self._get(key, default)
        if type(value) is not int:
            raise self.error(key, f"must be an integer in {low}..{high}, got {value!r}")
        if not low <= value <= high:
            raise self.error(key, f"must be in {low}..{high}, got {value}")
        return value

    def number(
        self,
        key: str,
        low: float | None = None,
        high: float | None = None,
        default: object = _REQUIRED,
        *,
        open_low: bool = False,
    ) -> float:
        value = self._get(key, default)
        return self.check_number(key, value, low, high, open_low=open_low)

    def check_number(
        self, key: str, value: object, low: float | None = None, high: float | None = None, *, open_low: bool = False
    ) -> float:
        if not _is_number(value) or not math.isfinite(float(value)):
            raise self.error(key, f"must be a finite number, got {value!r}")
        number = float(value)
        if low is not None and (number <= low if open_low else number < low):
            raise self.error(key, f"must be {'>' if open_low else '>='} {low:g}, got {number:g}")
        if high is not None and number > high:
            raise self.error(key, f"must be <= {high:g}, got {number:g}")
        return number

    def numbers(self, key: str, length: int | None = None, max_length: int = MAX_FEATURES) -> tuple[float, ...]:
        value = self._get(key, _REQUIRED)
        if not isinstance(value, list) or not value:
            raise self.error(key, f"must be a non-empty list of numbers, got {_short(value)}")
        if length is not None and len(value) != length:
            raise self.error(key, f"must have {length} values (one per feature), got {len(value)}")
        if len(value) > max_length:
            raise self.error(key, f"has {len(value)} values; at most {max_length} are allowed")
        return tuple(self.check_number(key, item) for item in value)

    def integers(
        self, key: str, low: int, high: int, default: object = _REQUIRED, max_length: int = MAX_FEATURES
    ) -> tuple[int, ...] | None:
        value = self._get(key, default)
        if value is None:
            return None
        if not isinstance(value, list) or not value or len(value) > max_length:
            raise self.error(key, f"must be a non-empty list of at most {max_length} integers, got {_short(value)}")
        if not all(type(v) is int and low <= v <= high for v in value):
            raise self.error(key, f"must hold integers in {low}..{high}, got {_short(value)}")
        return tuple(value)

    def choice(self, key: str, options: tuple[str, ...], default: object = _REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or value not in options:
            raise self.error(key, f"must be one of {list(options)}, got {value!r}")
        return value

    def raw(self, key: str, default: object = _REQUIRED) -> object:
        return self._get(key, default)

    def cohort(self) -> Cohort:
        """``max_nodes`` and ``max_rows``, refused when even whole-number sums could wrap."""
        nodes = self.integer("max_nodes", 1, MAX_NODES)
        rows = self.integer("max_rows", 1, (1 << 31) - 1)
        if max_safe_fractional_bits(float(rows), nodes) < 0:
            raise self.error(
                "max_rows",
                f"is too large: {nodes} nodes x {rows} rows = {nodes * rows} >= 2^31 could wrap the 32-bit sum; "
                "lower max_rows or max_nodes",
            )
        return Cohort(nodes, rows)

    def bounds(self) -> Bounds:
        """``low`` and ``high``: one public bound per feature, ``high > low``."""
        low = self.numbers("low")
        high = self.numbers("high", length=len(low))
        for i, (lo, hi) in enumerate(zip(low, high)):
            if not hi > lo or not math.isfinite(hi - lo):
                raise self.error("high", f"must exceed low for every feature; feature #{i} has low {lo:g}, high {hi:g}")
        return Bounds(low, high)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Cohort:
    """The declared most nodes and most rows per node; fixes the fixed-point encoding."""

    max_nodes: int
    max_rows: int

    @property
    def fractional_bits(self) -> int:
        return max_safe_fractional_bits(float(self.max_rows), self.max_nodes)

    @property
    def step(self) -> float:
        """One node's rounding step 2^-f, in normalised units."""
        return 2.0**-self.fractional_bits

    def encoder(self, length: int) -> FixedPointEncoder:
        """The encoder for a ``length``-long contribution whose coordinates are at most ``max_rows``.

        Every coordinate is bounded on its own, so the L2 clip is set where it can never bind
        (twice the largest possible norm); the L-infinity guard ``max_rows`` is the real bound.
        """
        reach = 2.0 * self.max_rows * math.sqrt(max(length, 1))
        return FixedPointEncoder(
            clip_norm=reach, fractional_bits=self.fractional_bits, max_summands=self.max_nodes, max_abs=float(self.max_rows)
        )

    def sum_error(self, survivors: int) -> float:
        """Bound on the absolute error of one summed coordinate, in normalised units.

        Each node's stochastic rounding is off by less than one step 2^-f; a
        float64 sum over at most ``max_rows`` terms in [-1, 1] adds well under
        ``max_rows`` * 2^-44 more (pairwise summation).
        """
        return survivors * (self.step + self.max_rows * 2.0**-44)

    def describe(self, survivors: int | None = None) -> dict:
        out = {
            "fractional_bits": self.fractional_bits,
            "step": self.step,
            "units": "normalised: (x - centre) / half_width of the declared bounds; counts are exact",
            "max_nodes": self.max_nodes,
            "max_rows": self.max_rows,
        }
        if survivors is not None:
            out["survivors"] = survivors
            out["sum_error"] = self.sum_error(survivors)
        return out


@dataclass(frozen=True)
class Bounds:
    """Public per-feature bounds; values are clipped to them and carried normalised to [-1, 1]."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    centre: np.ndarray = field(init=False, repr=False, compare=False)
    half: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        object.__setattr__(self, "centre", low + (high - low) / 2.0)
        object.__setattr__(self, "half", (high - low) / 2.0)

    @property
    def n_features(self) -> int:
        return len(self.low)

    def clip(self, X: np.ndarray) -> np.ndarray:
        return np.clip(X, np.asarray(self.low), np.asarray(self.high))

    def normalise(self, X: np.ndarray) -> np.ndarray:
        """Clip to the bounds and map to [-1, 1] (the clip guards against rounding past +-1)."""
        return np.clip((self.clip(X) - self.centre) / self.half, -1.0, 1.0)

    def to_json(self) -> dict:
        return {"low": list(self.low), "high": list(self.high)}
