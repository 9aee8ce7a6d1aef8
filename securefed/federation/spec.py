"""The round specification a coordinator proposes, and the context hash both sides bind.

``spec`` is a plain JSON object so that it crosses the wire without a
deserializer that could run code; :func:`parse_spec` validates it into a
typed :class:`RoundSpec`. :func:`round_context` hashes the spec, the cohort
and the global model: the node computes it from what it *received*, so a
coordinator that hands nodes different models or parameters produces
different contexts, and the nodes' signatures and masks stop matching.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.errors import InvalidParameter, RemoteProtocolError
from securefed.preprocessing import SCALERS, Preprocessing

__all__ = ["PHASES", "RoundSpec", "parse_spec", "round_context"]

PHASES = ("train", "evaluate", "compute")
#: the first parameter of each scaler (its length is the feature count it is declared for)
SCALER_FIRST = {name: params[0] for name, params in SCALERS.items()}


@dataclass(frozen=True)
class RoundSpec:
    task: str
    round: int
    phase: str
    model_kind: str
    model_options: dict
    n_features: int
    classes: tuple[int, ...]
    epochs: int
    learning_rate: float
    batch_size: int
    clip_norm: float
    fractional_bits: int
    weight_cap: int
    threshold: int
    neighbours: int | None
    masking: bool
    dp: dict | None
    #: the task's feature names in the model's order (None: the task declares a count only)
    feature_names: tuple[str, ...] | None = None
    #: the task's preprocessing in :meth:`Preprocessing.to_json` form (None: none)
    preprocessing: dict | None = None
    #: phase "compute" only: ``{"name": kind, "request": {...}}``, a registered computation's request
    #: (securefed.federation.computation); hashed with the rest of the spec into the round context
    computation: dict | None = None

    def to_json(self) -> dict[str, Any]:
        model: dict[str, object] = {
            "kind": self.model_kind,
            "options": self.model_options,
            "n_features": self.n_features,
            "classes": list(self.classes),
        }
        # Only when declared, so that a task without them keeps the spec (and context hash) it had.
        if self.feature_names is not None:
            model["feature_names"] = list(self.feature_names)
        out: dict[str, object] = {
            "task": self.task,
            "round": self.round,
            "phase": self.phase,
            "model": model,
            "training": {"epochs": self.epochs, "learning_rate": self.learning_rate, "batch_size": self.batch_size},
            "encoding": {
                "clip_norm": self.clip_norm,
                "fractional_bits": self.fractional_bits,
                "weight_cap": self.weight_cap,
            },
            "secagg": {"threshold": self.threshold, "neighbours": self.neighbours, "masking": self.masking},
            "dp": self.dp,
        }
        if self.preprocessing is not None:
            out["preprocessing"] = self.preprocessing
        if self.computation is not None:
            out["computation"] = self.computation
        return out

    def preprocessing_object(self) -> Preprocessing | None:
        """The round's preprocessing as an object (None when the task declares none)."""
        return None if self.preprocessing is None else Preprocessing.from_json(self.preprocessing, self.n_features)


def _get(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise RemoteProtocolError(f"round spec lacks {key!r}", reason="bad-spec")
    value = obj[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RemoteProtocolError(f"round spec field {key!r} has the wrong type", reason="bad-spec")
    if not isinstance(value, kind):
        raise RemoteProtocolError(f"round spec field {key!r} has the wrong type", reason="bad-spec")
    return value


def parse_spec(raw: dict) -> RoundSpec:
    """Validate the JSON object from a ``RoundStart``; raises :class:`RemoteProtocolError`."""
    model = _get(raw, "model", dict)
    training = _get(raw, "training", dict)
    encoding = _get(raw, "encoding", dict)
    secagg = _get(raw, "secagg", dict)
    classes = _get(model, "classes", list)
    # no classes: a numeric target (analytics only; the node checks that against what it agreed to)
    if not all(type(c) is int for c in classes) or len(set(classes)) != len(classes):
        raise RemoteProtocolError("round spec classes must be distinct integers", reason="bad-spec")
    neighbours = secagg.get("neighbours")
    if neighbours is not None and (type(neighbours) is not int or neighbours < 1):
        raise RemoteProtocolError("round spec neighbours must be null or a positive integer", reason="bad-spec")
    dp = raw.get("dp")
    if dp is not None and not isinstance(dp, dict):
        raise RemoteProtocolError("round spec dp must be an object or null", reason="bad-spec")
    feature_names = model.get("feature_names")
    if feature_names is not None:
        if (
            not isinstance(feature_names, list)
            or not all(isinstance(n, str) and n for n in feature_names)
            or len(set(feature_names)) != len(feature_names)
        ):
            raise RemoteProtocolError("round spec feature_names must be distinct non-empty strings", reason="bad-spec")
        feature_names = tuple(feature_names)
    preprocessing = raw.get("preprocessing")
    if preprocessing is not None:
        try:
            preprocessing = Preprocessing.from_json(preprocessing).to_json()
        except InvalidParameter as exc:
            raise RemoteProtocolError(f"round spec preprocessing: {exc}", reason="bad-spec") from None
    computation = raw.get("computation")
    if computation is not None and (
        not isinstance(computation, dict)
        or set(computation) != {"name", "request"}
        or not isinstance(computation["name"], str)
        or not isinstance(computation["request"], dict)
    ):
        raise RemoteProtocolError('round spec computation must be {"name": str, "request": {...}}', reason="bad-spec")
    spec = RoundSpec(
        task=_get(raw, "task", str),
        round=_get(raw, "round", int),
        phase=_get(raw, "phase", str),
        model_kind=_get(model, "kind", str),
        model_options=_get(model, "options", dict),
        n_features=_get(model, "n_features", int),
        classes=tuple(classes),
        epochs=_get(training, "epochs", int),
        learning_rate=float(_get(training, "learning_rate", (int, float))),
        batch_size=_get(training, "batch_size", int),
        clip_norm=float(_get(encoding, "clip_norm", (int, float))),
        fractional_bits=_get(encoding, "fractional_bits", int),
        weight_cap=_get(encoding, "weight_cap", int),
        threshold=_get(secagg, "threshold", int),
        neighbours=neighbours,
        masking=_get(secagg, "masking", bool),
        dp=dp,
        feature_names=feature_names,
        preprocessing=preprocessing,
        computation=computation,
    )
    if spec.phase not in PHASES:
        raise RemoteProtocolError(f"unknown phase {spec.phase!r}", reason="bad-spec")
    checks = [
        (spec.round >= 1, "round must be >= 1"),
        (spec.n_features >= 1, "n_features must be positive"),
        (0 <= spec.epochs <= 10_000, "epochs out of range"),
        (math.isfinite(spec.learning_rate) and spec.learning_rate > 0, "learning rate must be positive"),
        (1 <= spec.batch_size <= 1_000_000, "batch size out of range"),
        (math.isfinite(spec.clip_norm) and spec.clip_norm > 0, "clip norm must be positive"),
        (0 <= spec.fractional_bits <= 30, "fractional bits out of range"),
        (1 <= spec.weight_cap <= 1 << 30, "weight cap out of range"),
        (spec.threshold >= 1, "threshold must be positive"),
        (
            (spec.phase == "compute") == (spec.computation is not None),
            "a computation goes with the compute phase, and only there",
        ),
        (spec.feature_names is None or len(spec.feature_names) == spec.n_features, "feature_names must name every feature"),
        (
            spec.preprocessing is None or len(spec.preprocessing[SCALER_FIRST[spec.preprocessing["scaler"]]]) == spec.n_features,
            "preprocessing must give one value per feature",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise RemoteProtocolError(f"round spec: {message}", reason="bad-spec")
    return spec


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def round_context(spec: dict, cohort: tuple[tuple[int, str], ...], model: np.ndarray) -> bytes:
    """SHA-256 over the spec, the cohort and the exact model bytes (little-endian float64)."""
    digest = hashlib.sha256(b"securefed/context/v1")
    for part in (_canonical(spec), _canonical([list(pair) for pair in cohort])):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    weights = np.ascontiguousarray(model, dtype="<f8")
    digest.update(weights.size.to_bytes(8, "big"))
    digest.update(weights.tobytes())
    return digest.digest()
