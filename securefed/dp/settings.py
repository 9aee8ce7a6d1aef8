"""A task's differential-privacy settings, typed and checked once (``[task.dp]``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from securefed.errors import InvalidParameter

__all__ = ["DpSettings"]

_KEYS = ("epsilon", "delta", "clip_norm")


@dataclass(frozen=True)
class DpSettings:
    """epsilon for the whole task (all its rounds), at delta; updates clipped to L2 norm clip_norm."""

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        for key in _KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidParameter(f"[task.dp] {key} must be a positive number, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.delta >= 1:
            raise InvalidParameter("[task.dp] delta must be below 1")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> DpSettings:
        """From a TOML table or a dict; unknown keys are refused by name."""
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            raise InvalidParameter(f"[task.dp] has unknown keys {unknown}; use {', '.join(_KEYS)}")
        if "epsilon" not in table:
            raise InvalidParameter("[task.dp] needs epsilon (the whole task's budget)")
        return cls(**{key: table[key] for key in _KEYS if key in table})

    def as_dict(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in _KEYS}

    def __getitem__(self, key: str) -> float:
        """Read like the mapping it replaces (``settings["delta"]``)."""
        if key not in _KEYS:
            raise KeyError(key)
        return getattr(self, key)
