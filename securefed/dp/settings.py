"""A task's differential-privacy settings, typed and checked once (``[task.dp]``).

``unit`` says whom the guarantee protects. ``"site"``: a whole site's update per
round (client-level DP: it needs hundreds of sites to be useful). ``"record"``:
each record (patient, customer) of every site, by DP-SGD across the sites: each
round every node Poisson-samples its records with probability
q = expected_batch / total_records, clips each sampled record's gradient to
``clip_norm`` and adds its share of the noise (docs/record-level-dp.md).
``total_records`` is the federation's record count, declared in the task (a
public number the sites agree to); ``expected_batch`` the records per round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from securefed.errors import InvalidParameter

__all__ = ["PRIVACY_UNITS", "DpSettings"]

#: the privacy units a task can protect
PRIVACY_UNITS = ("site", "record")
_NUMBERS = ("epsilon", "delta", "clip_norm")
_RECORD_KEYS = ("expected_batch", "total_records")
_KEYS = (*_NUMBERS, "unit", *_RECORD_KEYS)


def _positive(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidParameter(f"[task.dp] {key} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DpSettings:
    """epsilon for the whole task (all its rounds), at delta; clip_norm bounds a site's update (unit
    "site") or each record's gradient (unit "record", with expected_batch and total_records)."""

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0
    unit: str = "site"
    expected_batch: float | None = None
    total_records: int | None = None

    def __post_init__(self) -> None:
        for key in _NUMBERS:
            object.__setattr__(self, key, _positive(key, getattr(self, key)))
        if self.delta >= 1:
            raise InvalidParameter("[task.dp] delta must be below 1")
        if self.unit not in PRIVACY_UNITS:
            raise InvalidParameter(f"[task.dp] unit must be one of {', '.join(map(repr, PRIVACY_UNITS))}, got {self.unit!r}")
        if self.unit == "site":
            given = [key for key in _RECORD_KEYS if getattr(self, key) is not None]
            if given:
                raise InvalidParameter(f'[task.dp] {", ".join(given)} apply to unit = "record" only')
            return
        if self.total_records is None or self.expected_batch is None:
            raise InvalidParameter(
                '[task.dp] unit = "record" needs total_records (the records all sites hold together, as agreed) '
                "and expected_batch (records per round)"
            )
        if isinstance(self.total_records, bool) or not isinstance(self.total_records, int) or self.total_records < 1:
            raise InvalidParameter(f"[task.dp] total_records must be a positive integer, got {self.total_records!r}")
        batch = _positive("expected_batch", self.expected_batch)
        if batch > self.total_records:
            raise InvalidParameter(f"[task.dp] expected_batch {batch:g} is more than total_records {self.total_records}")
        object.__setattr__(self, "expected_batch", batch)

    @property
    def sampling_rate(self) -> float:
        """q: each record's chance of being in a round (1 for site-level releases)."""
        if self.unit == "site":
            return 1.0
        if self.expected_batch is None or self.total_records is None:  # refused by __post_init__
            raise InvalidParameter('[task.dp] unit = "record" needs total_records and expected_batch')
        return float(self.expected_batch) / float(self.total_records)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> DpSettings:
        """From a TOML table or a dict; unknown keys are refused by name."""
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            raise InvalidParameter(f"[task.dp] has unknown keys {unknown}; use {', '.join(_KEYS)}")
        if "epsilon" not in table:
            raise InvalidParameter("[task.dp] needs epsilon (the whole task's budget)")
        return cls(**{key: table[key] for key in _KEYS if key in table})

    def as_dict(self) -> dict[str, Any]:
        """The settings as given (record-level keys only for unit "record"), e.g. for a config file."""
        out: dict[str, Any] = {key: getattr(self, key) for key in _NUMBERS}
        if self.unit != "site":
            out.update(unit=self.unit, expected_batch=self.expected_batch, total_records=self.total_records)
        return out

    def __getitem__(self, key: str) -> Any:
        """Read like the mapping it replaces (``settings["delta"]``)."""
        if key not in _KEYS:
            raise KeyError(key)
        return getattr(self, key)
