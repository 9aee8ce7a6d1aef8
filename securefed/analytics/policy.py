"""A site's analytics policy, and the refusal a node returns when a request breaks it.

The site, not the coordinator, has the last word. A node runs a request only
when its kind is in ``allowed_computations``; it refuses histograms (and
quantile refinements) whose bins are narrower than ``min_bin_width``; and it
refuses any request under which one of the aggregates released would cover
between 1 and ``min_records - 1`` of *its own* records (the per-site cell
rule of DataSHIELD's disclosure filters). Any aggregate that holds one of the
site's records therefore holds at least ``min_records`` records. The refusal
itself says only that *some* aggregate was too small, never which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from securefed.config_util import nearest
from securefed.errors import InvalidParameter

__all__ = ["REFUSAL_CODES", "AnalyticsPolicy", "Refusal"]

#: Reason codes a node may return (safe to log and to send to the coordinator).
REFUSAL_CODES: tuple[str, ...] = (
    "computation-not-allowed",  # the kind is not in the site's allowed_computations
    "unknown-computation",  # no such kind is registered in this securefed
    "invalid-parameters",  # the parameters fail the kind's strict checks
    "bins-too-narrow",  # a histogram bin (or quantile lattice cell) is narrower than min_bin_width
    "too-few-records",  # an aggregate would cover 1..min_records-1 of this site's records
    "data-mismatch",  # the site's data does not fit the request (columns, rows > max_rows, NaN)
)


@dataclass(frozen=True)
class Refusal:
    """Why a node will not run a request: ``code`` (one of :data:`REFUSAL_CODES`) and a one-line ``detail``."""

    code: str
    detail: str

    def __post_init__(self) -> None:
        if self.code not in REFUSAL_CODES:
            raise InvalidParameter(f"unknown refusal code {self.code!r}; codes are {list(REFUSAL_CODES)}")

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"

    def to_json(self) -> dict:
        return {"code": self.code, "detail": self.detail}


_POLICY_KEYS = ("allowed_computations", "min_records", "min_bin_width")


@dataclass(frozen=True)
class AnalyticsPolicy:
    """What a site lets the federation compute over its data.

    ``allowed_computations``: the kinds it runs (default: none -- a site opts in);
    ``min_records`` (k): every released aggregate holding any of the site's
    records holds at least k of them; ``min_bin_width``: no histogram bin or
    quantile lattice cell narrower than this, in the units of the data.
    """

    allowed_computations: frozenset[str] = frozenset()
    min_records: int = 1
    min_bin_width: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_computations", _allowed_computations(self.allowed_computations))
        _min_records(self.min_records)
        object.__setattr__(self, "min_bin_width", _min_bin_width(self.min_bin_width))

    @classmethod
    def permissive(cls) -> AnalyticsPolicy:
        """Every registered kind, no record or bin limit (tests and benchmarks)."""
        from securefed.analytics.registry import REGISTRY

        return cls(frozenset(REGISTRY))

    @classmethod
    def from_mapping(cls, table: Mapping[str, object]) -> AnalyticsPolicy:
        """From a config table such as a node's ``[policy.analytics]``; unknown keys are refused by name."""
        if not isinstance(table, Mapping):
            raise InvalidParameter("the analytics policy must be a table")
        for key in table:
            if key not in _POLICY_KEYS:
                guess = nearest(str(key), list(_POLICY_KEYS))
                hint = f"; did you mean {guess!r}?" if guess else ""
                raise InvalidParameter(f"unknown analytics policy key {key!r}{hint} (valid: {list(_POLICY_KEYS)})")
        allowed = table.get("allowed_computations", [])
        if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
            raise InvalidParameter("allowed_computations must be a list of computation names")
        # checked here in the constructor's order, so the values passed are typed (the constructor checks them again)
        return cls(
            _allowed_computations(allowed),
            _min_records(table.get("min_records", 1)),
            _min_bin_width(table.get("min_bin_width", 0.0)),
        )

    def to_json(self) -> dict:
        return {
            "allowed_computations": sorted(self.allowed_computations),
            "min_records": self.min_records,
            "min_bin_width": self.min_bin_width,
        }


def _allowed_computations(allowed: object) -> frozenset[str]:
    if isinstance(allowed, str) or not isinstance(allowed, Iterable):
        raise InvalidParameter("allowed_computations must be a list of computation names")
    names = frozenset(allowed)
    from securefed.analytics.registry import REGISTRY  # late: the registry imports this module

    for name in sorted(map(str, names)):
        if name not in REGISTRY:
            guess = nearest(name, list(REGISTRY))
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise InvalidParameter(
                f"allowed_computations names {name!r}, which is not a computation{hint} (known: {sorted(REGISTRY)})"
            )
    return names


def _min_records(value: object) -> int:
    if type(value) is not int or value < 1:
        raise InvalidParameter(f"min_records must be a positive integer, got {value!r}")
    return value


def _min_bin_width(width: object) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width < 0:
        raise InvalidParameter(f"min_bin_width must be a non-negative number, got {width!r}")
    return float(width)
