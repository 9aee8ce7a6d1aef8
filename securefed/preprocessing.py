"""A task's feature preprocessing: a named scaler with declared, public parameters.

Theory of operation. Sites' raw features come in very different units (a
cell area in the thousands beside a smoothness of 0.05); a linear model
trained on them federatedly learns poorly, and scaling each site's data by
its *own* statistics would make the same weight mean different things at
different sites. So the task definition declares the scaling once, with
public parameters (per-feature bounds from domain knowledge or a data
dictionary, never statistics pooled from the sites' data), and every node
applies exactly that to its own data before training and evaluation.

The coordinator carries the preprocessing in every round spec (so it is
bound into the round's context hash); each node's own config declares the
preprocessing it agreed to, and the node refuses a round whose preprocessing
differs (reason ``preprocessing-mismatch``). This module is deliberately
light (numpy only) so that config loading stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from securefed.config_util import NUMBER, Key, Section, Table, nearest
from securefed.errors import InvalidParameter

__all__ = ["PREPROCESSING_SECTION", "SCALERS", "Preprocessing", "features_from", "preprocessing_from"]

#: Scalers a task can declare, with the parameters each needs (one value per feature).
SCALERS: dict[str, tuple[str, ...]] = {
    "minmax": ("min", "max"),  # (x - min) / (max - min): the declared range maps to [0, 1]
    "standard": ("mean", "scale"),  # (x - mean) / scale, with declared (public) centre and spread
}


@dataclass(frozen=True)
class Preprocessing:
    """The task's feature scaling, with declared parameters, applied identically at every node.

    ``scaler`` is one of :data:`SCALERS`; ``params`` holds its parameters by
    name, one float per feature, in the task's feature order. With ``clip``
    (min-max only) values outside the declared range are clipped to it, so an
    out-of-range record cannot weigh more than the task allows.

    Build one from a config table with :meth:`from_mapping`, carry it in a
    round spec as :meth:`to_json` and read it back with :meth:`from_json`.
    Two preprocessings are equal exactly when every parameter is.
    """

    scaler: str
    params: tuple[tuple[str, tuple[float, ...]], ...]
    clip: bool = False

    def __post_init__(self) -> None:
        if self.scaler not in SCALERS:
            raise InvalidParameter(f"unknown scaler {self.scaler!r}; valid scalers are {list(SCALERS)}")
        names = tuple(name for name, _ in self.params)
        if names != SCALERS[self.scaler]:
            raise InvalidParameter(f"the {self.scaler} scaler takes {list(SCALERS[self.scaler])}, got {list(names)}")
        lengths = {len(values) for _, values in self.params}
        if len(lengths) != 1 or 0 in lengths:
            raise InvalidParameter(f"{' and '.join(names)} must give one value per feature, as many of each")
        for name, values in self.params:
            if not all(isinstance(v, float) and math.isfinite(v) for v in values):
                raise InvalidParameter(f"{self.scaler} {name} values must be finite numbers")
        if type(self.clip) is not bool:
            raise InvalidParameter("clip must be true or false")
        if self.clip and self.scaler != "minmax":
            raise InvalidParameter("clip applies to the minmax scaler only")
        if self.scaler == "minmax":
            low, high = self.param("min"), self.param("max")
            bad = [i for i, (lo, hi) in enumerate(zip(low, high)) if not hi > lo]
            if bad:
                i = bad[0]
                raise InvalidParameter(
                    f"minmax max must exceed min for every feature; feature #{i + 1} has min {low[i]!r}, max {high[i]!r}"
                )
        else:
            bad = [i for i, v in enumerate(self.param("scale")) if not v > 0]
            if bad:
                raise InvalidParameter(
                    f"standard scale must be positive for every feature; feature #{bad[0] + 1} has {self.param('scale')[bad[0]]!r}"
                )

    @property
    def n_features(self) -> int:
        return len(self.params[0][1])

    def param(self, name: str) -> tuple[float, ...]:
        for key, values in self.params:
            if key == name:
                return values
        raise KeyError(name)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The scaled features (a new float64 array); X must have one column per declared feature."""
        X_arr = np.asarray(X, dtype=np.float64)
        if X_arr.ndim != 2 or X_arr.shape[1] != self.n_features:
            raise InvalidParameter(f"preprocessing is declared for {self.n_features} features, the data has shape {X_arr.shape}")
        if self.scaler == "minmax":
            low = np.asarray(self.param("min"))
            out = (X_arr - low) / (np.asarray(self.param("max")) - low)
            if self.clip:
                np.clip(out, 0.0, 1.0, out=out)
            return out
        return (X_arr - np.asarray(self.param("mean"))) / np.asarray(self.param("scale"))

    def to_json(self) -> dict:
        """The canonical JSON form carried in a round spec (and so bound into its context hash)."""
        out: dict = {"scaler": self.scaler}
        out.update({name: list(values) for name, values in self.params})
        if self.scaler == "minmax":
            out["clip"] = self.clip
        return out

    @classmethod
    def from_json(cls, raw: object, n_features: int | None = None) -> Preprocessing:
        """Read :meth:`to_json`'s form strictly; raises :class:`InvalidParameter`."""
        if not isinstance(raw, dict):
            raise InvalidParameter("preprocessing must be an object")
        scaler = raw.get("scaler")
        if not isinstance(scaler, str) or scaler not in SCALERS:
            raise InvalidParameter(f"preprocessing scaler must be one of {list(SCALERS)}")
        expected = {"scaler", *SCALERS[scaler], *(("clip",) if scaler == "minmax" else ())}
        if set(raw) != expected:
            raise InvalidParameter(f"preprocessing for {scaler} has keys {sorted(raw)}, expected {sorted(expected)}")
        params = []
        for name in SCALERS[scaler]:
            values = raw[name]
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise InvalidParameter(f"preprocessing {name} must be a list of numbers")
            params.append((name, tuple(float(v) for v in values)))
        clip = raw.get("clip", False)
        if type(clip) is not bool:
            raise InvalidParameter("preprocessing clip must be true or false")
        made = cls(scaler, tuple(params), clip)
        if n_features is not None and made.n_features != n_features:
            raise InvalidParameter(f"preprocessing is declared for {made.n_features} features, the task has {n_features}")
        return made

    @classmethod
    def from_mapping(cls, table: Mapping[str, object], features: int | Sequence[str]) -> Preprocessing | None:
        """From a ``[task.preprocessing]`` table; None for ``scaler = "none"``.

        Each parameter is one number (the same for every feature), a list (one
        per feature, in the order of ``features``), or, when the features are
        named, a table keyed by feature name covering every feature.
        """
        names: tuple[str, ...] | None = None
        if isinstance(features, int):
            count = features
        else:
            names = tuple(features)
            count = len(names)
        scaler = table.get("scaler")
        if scaler == "none":
            extra = sorted(set(table) - {"scaler"})
            if extra:
                raise InvalidParameter(f'scaler = "none" takes no parameters, got {extra}')
            return None
        if not isinstance(scaler, str) or scaler not in SCALERS:
            guess = nearest(str(scaler), [*SCALERS, "none"])
            hint = f"; did you mean `{guess}`?" if guess else ""
            raise InvalidParameter(f"scaler must be one of {[*SCALERS, 'none']}, got {scaler!r}{hint}")
        allowed = {"scaler", *SCALERS[scaler], *(("clip",) if scaler == "minmax" else ())}
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise InvalidParameter(f"the {scaler} scaler takes {sorted(allowed - {'scaler'})}, not {unknown}")
        params = []
        for name in SCALERS[scaler]:
            if name not in table:
                raise InvalidParameter(f"the {scaler} scaler needs {name!r} (a number, or one per feature)")
            params.append((name, _per_feature(name, table[name], count, names)))
        clip = table.get("clip", scaler == "minmax")
        if type(clip) is not bool:
            raise InvalidParameter("clip must be true or false")
        return cls(scaler, tuple(params), clip)

    def describe(self) -> str:
        if self.scaler == "minmax":
            clipped = ", clipped to it" if self.clip else ""
            return f"minmax: declared per-feature [min, max] mapped to [0, 1]{clipped} ({self.n_features} features)"
        return f"standard: (x - declared mean) / declared scale ({self.n_features} features)"


def _per_feature(name: str, value: object, count: int, names: tuple[str, ...] | None) -> tuple[float, ...]:
    def number(v: object, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise InvalidParameter(f"{name} {where}must be a finite number, got {v!r}")
        return float(v)

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (number(value, ""),) * count
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise InvalidParameter(f"{name} has {len(value)} values but the task declares {count} features (one each, in order)")
        return tuple(number(v, f"#{i + 1} ") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        if names is None:
            raise InvalidParameter(
                f"{name} is keyed by feature name, but the task declares only a feature count; declare features = [names]"
            )
        missing = [n for n in names if n not in value]
        extra = [n for n in value if n not in names]
        if extra:
            guess = nearest(str(extra[0]), list(names))
            hint = f"; did you mean `{guess}`?" if guess else ""
            raise InvalidParameter(f"{name} names {extra[0]!r}, which is not a declared feature{hint}")
        if missing:
            raise InvalidParameter(f"{name} lacks features {_listed(missing)}")
        return tuple(number(value[n], f"{n!r} ") for n in names)
    raise InvalidParameter(f"{name} must be a number, a list with one number per feature, or a table by feature name")


#: ``[task.preprocessing]``: the same table in the coordinator's and the nodes' configs.
PREPROCESSING_SECTION = Section(
    keys={
        "scaler": Key(str, required=True, help='"minmax", "standard" or "none"'),
        "min": Key((*NUMBER, list, dict), help="minmax: one number, one per feature, or a table by feature name"),
        "max": Key((*NUMBER, list, dict), help="minmax: as min"),
        "mean": Key((*NUMBER, list, dict), help="standard: the declared centre per feature"),
        "scale": Key((*NUMBER, list, dict), help="standard: the declared spread per feature"),
        "clip": Key(bool, help="minmax: clip values outside [min, max] to it (default true)"),
    },
    help="the task's feature scaling, with declared public parameters",
)


def features_from(table: Table) -> int | tuple[str, ...]:
    """A [task] table's ``features``: a count, or the feature names (recommended: CSV columns are then
    matched by name, in any order)."""
    value = table.get("features")
    if isinstance(value, int):
        if value < 1:
            raise table.error("features", f"must be a positive count or a list of names, got {value}")
        return value
    names = tuple(value)
    if not names or not all(names):
        raise table.error("features", "must list at least one non-empty feature name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise table.error("features", f"names repeat: {twice}")
    return names


def preprocessing_from(table: Table, features: int | tuple[str, ...]) -> Preprocessing | None:
    """A [task] table's ``[task.preprocessing]``, or None when it is absent or ``scaler = "none"``."""
    sub = table.sub("preprocessing")
    if sub is None:
        return None
    try:
        return Preprocessing.from_mapping(sub.data, features)
    except InvalidParameter as exc:
        raise sub.error(None, str(exc)) from None


def _listed(values: Sequence[object], limit: int = 20) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f", ... ({len(values) - limit} more)" if len(values) > limit else ""
    return f"[{shown}{more}]"
