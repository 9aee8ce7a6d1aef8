"""Trained models out of securefed: one ``.npz`` file, checked on load, read into scikit-learn.

Theory of operation. The coordinator's store holds a model as a flat float64
vector; only the task definition says what it means (model kind and options,
features, classes, the declared preprocessing). An exported model file keeps
the two together so that it can be used without the coordinator:

- ``weights``: the flat vector, 1-D little-endian float64, exactly as stored;
- ``metadata``: UTF-8 JSON as a 1-D uint8 array (see :data:`METADATA_KEYS` and
  docs/models.md), including the SHA-256 of the weights (the same digest the
  store records: SHA-256 of the little-endian float64 bytes).

Nothing in the file can run code. The reader does not call ``np.load`` at all:
it opens the zip itself, parses each ``.npy`` header (numpy's public
``read_array_header_*``), refuses any member other than the two arrays, any
dtype other than the expected one (so an object array, i.e. pickled data, is
refused before a byte of it is read), any size other than what the header and
the model layout imply, and only then reads the raw bytes with
``np.frombuffer``. Every refusal is an :class:`InvalidParameter` naming the file
and the problem; any bytes either load or are refused that way.

The parameters become an estimator through the model adapter's own
``to_estimator`` (so predictions are exactly the adapter's), behind a fitted
``MinMaxScaler``/``StandardScaler`` in a ``Pipeline`` when the task declares
preprocessing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from securefed.errors import InvalidParameter
from securefed.preprocessing import Preprocessing

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEYS",
    "build_metadata",
    "check_metadata",
    "encode_model",
    "write_model",
    "read_model",
    "to_estimator",
    "load_model",
    "weights_sha256",
]

#: the ``format`` field of every exported model's metadata
FORMAT = "securefed-model"
#: the file layout this code writes and the only one it reads
FORMAT_VERSION = 1
#: every metadata key, each required (``preprocessing`` and ``privacy`` may be null)
METADATA_KEYS = frozenset(
    {
        "format",
        "format_version",
        "securefed_version",
        "created_at",
        "task",
        "round",
        "model",
        "features",
        "classes",
        "label_column",
        "preprocessing",
        "weights_sha256",
        "privacy",
    }
)
_MODEL_KEYS = frozenset({"kind", "options", "parameter_count"})
_FEATURE_KEYS = frozenset({"count", "names"})
_PRIVACY_KEYS = frozenset({"epsilon", "delta", "epsilon_budget", "releases", "unit"})

_MEMBERS = {"weights.npy": "weights", "metadata.npy": "metadata"}
_MAX_METADATA_BYTES = 16 * 1024 * 1024
_MAX_HEADER_BYTES = 10_000
_WEIGHTS_DTYPE = np.dtype("<f8")
_METADATA_DTYPE = np.dtype("u1")


def weights_sha256(weights: np.ndarray) -> str:
    """SHA-256 of the weights as little-endian float64 bytes: the digest the coordinator's store records."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype=_WEIGHTS_DTYPE).tobytes()).hexdigest()


# --- metadata ---------------------------------------------------------------------------------------


def build_metadata(
    *,
    task: str,
    round_number: int,
    model_kind: str,
    model_options: Mapping[str, Any],
    n_features: int,
    feature_names: Sequence[str] | None,
    classes: Sequence[int],
    preprocessing: Preprocessing | None,
    weights: np.ndarray,
    label_column: str = "label",
    privacy: Mapping[str, Any] | None = None,
    created_at: float | None = None,
) -> dict:
    """The metadata of an exported model, checked exactly as :func:`read_model` will check it.

    ``privacy`` is None for a model trained without differential privacy, else
    ``{"epsilon": spent up to this round, "delta": ..., "epsilon_budget": the task's,
    "releases": DP releases composed}``. ``created_at`` defaults to now.
    """
    from securefed import __version__

    stamp = _dt.datetime.fromtimestamp(created_at if created_at is not None else _now(), _dt.timezone.utc)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "securefed_version": __version__,
        "created_at": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "task": task,
        "round": round_number,
        "model": {"kind": model_kind, "options": dict(model_options), "parameter_count": int(np.asarray(weights).size)},
        "features": {"count": n_features, "names": None if feature_names is None else list(feature_names)},
        "classes": sorted(int(c) for c in classes),
        "label_column": label_column,
        "preprocessing": None if preprocessing is None else preprocessing.to_json(),
        "weights_sha256": weights_sha256(weights),
        "privacy": None if privacy is None else dict(privacy),
    }
    try:  # the JSON form is the one that is written: normalise tuples to lists, refuse NaN now
        metadata = json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(f"the model's metadata is not plain JSON ({exc})") from None
    check_metadata(metadata)
    return metadata


def _now() -> float:
    import time

    return time.time()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _keys(where: str, table: object, expected: frozenset[str]) -> dict:
    what = f"metadata {where}" if where else "metadata"
    if not isinstance(table, dict):
        raise InvalidParameter(f"{what} must be an object")
    missing, extra = sorted(expected - set(table)), sorted(set(table) - expected)
    if missing:
        raise InvalidParameter(f"{what} lacks {missing}")
    if extra:
        raise InvalidParameter(f"{what} has unknown fields {extra}")
    return table


def check_metadata(metadata: object) -> Any:
    """Check every field's presence and type; return the model adapter the metadata describes.

    Raises :class:`InvalidParameter` naming the first field at fault.
    """
    try:
        return _check_metadata(metadata)
    except OverflowError:  # an integer too large for a float where a number is expected
        raise InvalidParameter("metadata holds a number out of range") from None


def _check_metadata(metadata: object) -> Any:
    from securefed.learning.models import MODEL_KINDS, make_adapter

    if not isinstance(metadata, dict):
        raise InvalidParameter("metadata must be a JSON object")
    if metadata.get("format") != FORMAT:
        raise InvalidParameter(f"metadata format is {metadata.get('format')!r}, not {FORMAT!r}: not a securefed model file")
    version = metadata.get("format_version")
    if not _is_int(version):
        raise InvalidParameter("metadata format_version must be an integer")
    if version != FORMAT_VERSION:
        newer = " (written by a newer securefed: upgrade this one)" if version > FORMAT_VERSION else ""
        raise InvalidParameter(f"format version {version} is not supported; this securefed reads version {FORMAT_VERSION}{newer}")
    _keys("", metadata, METADATA_KEYS)
    for key in ("securefed_version", "created_at", "task", "label_column"):
        if not isinstance(metadata[key], str) or not metadata[key]:
            raise InvalidParameter(f"metadata {key} must be a non-empty string")
    try:
        _dt.datetime.fromisoformat(metadata["created_at"].replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(f"metadata created_at {metadata['created_at'][:40]!r} is not an ISO 8601 time") from None
    if not _is_int(metadata["round"]) or metadata["round"] < 0:
        raise InvalidParameter("metadata round must be a non-negative integer")
    digest = metadata["weights_sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidParameter("metadata weights_sha256 must be 64 lower-case hex digits")

    features = _keys("features", metadata["features"], _FEATURE_KEYS)
    count, names = features["count"], features["names"]
    if not _is_int(count) or count < 1:
        raise InvalidParameter("metadata features.count must be a positive integer")
    if names is not None:
        if (
            not isinstance(names, list)
            or len(names) != count
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
        ):
            raise InvalidParameter(f"metadata features.names must be null or {count} distinct non-empty names")

    classes = metadata["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(_is_int(c) for c in classes) or len(set(classes)) != len(classes):
        raise InvalidParameter("metadata classes must list at least two distinct integer labels")

    if metadata["preprocessing"] is not None:
        try:
            Preprocessing.from_json(metadata["preprocessing"], count)
        except InvalidParameter as exc:
            raise InvalidParameter(f"metadata preprocessing: {exc}") from None

    privacy = metadata["privacy"]
    if privacy is not None:
        _keys("privacy", privacy, _PRIVACY_KEYS)
        for key in ("epsilon", "delta", "epsilon_budget"):
            if not _is_number(privacy[key]) or privacy[key] < 0:
                raise InvalidParameter(f"metadata privacy.{key} must be a non-negative number")
        if not 0 < privacy["delta"] < 1:
            raise InvalidParameter("metadata privacy.delta must be in (0, 1)")
        if not _is_int(privacy["releases"]) or privacy["releases"] < 0:
            raise InvalidParameter("metadata privacy.releases must be a non-negative integer")
        if privacy["unit"] not in ("site", "record"):
            raise InvalidParameter('metadata privacy.unit must be "site" or "record"')

    model = _keys("model", metadata["model"], _MODEL_KEYS)
    kind, options = model["kind"], model["options"]
    if kind not in MODEL_KINDS:
        raise InvalidParameter(f"metadata model.kind {kind!r} is unknown; this securefed knows {list(MODEL_KINDS)}")
    if not isinstance(options, dict):
        raise InvalidParameter("metadata model.options must be an object")
    try:
        adapter = make_adapter(kind, count, classes, **options)
    except (InvalidParameter, TypeError) as exc:
        raise InvalidParameter(f"metadata model.options: {exc}") from None
    if not _is_int(model["parameter_count"]) or model["parameter_count"] != adapter.parameter_count:
        raise InvalidParameter(
            f"metadata model.parameter_count is {model['parameter_count']!r}, but a {kind} model with "
            f"{count} features and {len(classes)} classes has {adapter.parameter_count}"
        )
    return adapter


# --- the file ---------------------------------------------------------------------------------------


def encode_model(metadata: Mapping[str, Any], weights: np.ndarray) -> bytes:
    """The ``.npz`` bytes of a model file (two plain numeric arrays, no pickle)."""
    adapter = check_metadata(dict(metadata))
    flat = np.ascontiguousarray(weights, dtype=_WEIGHTS_DTYPE)
    if flat.ndim != 1 or flat.size != adapter.parameter_count:
        raise InvalidParameter(f"expected {adapter.parameter_count} weights, got shape {flat.shape}")
    if weights_sha256(flat) != metadata["weights_sha256"]:
        raise InvalidParameter("the metadata's weights_sha256 is not the digest of these weights")
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    buffer = io.BytesIO()
    np.savez(buffer, weights=flat, metadata=np.frombuffer(text, dtype=_METADATA_DTYPE))
    return buffer.getvalue()


def write_model(path: str | os.PathLike[str], metadata: Mapping[str, Any], weights: np.ndarray) -> None:
    """Write a model file atomically (temporary file, fsync, rename): a reader never sees half of one."""
    from securefed._fs import atomic_write

    data = encode_model(metadata, weights)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise InvalidParameter(f"{path}: cannot write the model file ({exc.strerror or exc})") from None


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype, max_bytes: int, count: int | None = None
) -> np.ndarray:
    """One ``.npy`` member as a 1-D array of ``dtype`` (of ``count`` values, if given).

    The header is parsed and checked before any data is read, so a hostile header
    cannot make the reader allocate or unpickle anything.
    """
    name = _MEMBERS[info.filename]
    if info.file_size > max_bytes + _MAX_HEADER_BYTES:
        raise InvalidParameter(f"array {name!r} is {info.file_size} bytes, more than a model of this layout can have")
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, found = np.lib.format.read_array_header_1_0(handle, max_header_size=_MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, _, found = np.lib.format.read_array_header_2_0(handle, max_header_size=_MAX_HEADER_BYTES)
        else:
            raise InvalidParameter(f"array {name!r} uses .npy version {version}, which a model file does not")
        if found.hasobject:
            raise InvalidParameter(f"array {name!r} is an object array (pickled data); a model file holds plain numbers only")
        if found.kind != dtype.kind or found.itemsize != dtype.itemsize or found.fields is not None or found.subdtype is not None:
            raise InvalidParameter(f"array {name!r} has dtype {found}, expected {dtype}")
        if len(shape) != 1:
            raise InvalidParameter(f"array {name!r} has shape {shape}, expected a 1-D array")
        if count is not None and shape[0] != count:
            raise InvalidParameter(f"array {name!r} holds {shape[0]} values, but the model's layout needs {count}")
        expected = shape[0] * found.itemsize
        if expected > max_bytes:
            raise InvalidParameter(f"array {name!r} declares {shape[0]} values, more than a model of this layout can have")
        data = handle.read(expected + 1)
    if len(data) != expected:
        raise InvalidParameter(f"array {name!r} holds {len(data)} bytes where its header declares {expected}")
    return np.frombuffer(data, dtype=found).astype(dtype)


def read_model(path: str | os.PathLike[str]) -> tuple[dict, np.ndarray]:
    """Read and verify a model file: (metadata, weights). Anything else raises :class:`InvalidParameter`.

    Checked: a zip holding exactly the two arrays, their dtypes and shapes, the
    metadata's format, version, fields and types, the weight count against the
    model layout, finiteness, and the SHA-256 of the weights.
    """
    source = os.fspath(path)
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        raise InvalidParameter(f"{source}: no such file") from None
    except OSError as exc:
        raise InvalidParameter(f"{source}: cannot read the model file ({exc.strerror or exc})") from None
    try:
        with handle:
            return _read_model(handle)
    except InvalidParameter as exc:
        raise InvalidParameter(f"{source}: {exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        # Damage inside the archive: zipfile's own errors, a seek past the end (OSError), numpy's header
        # errors and zlib or UTF-8 decoding (ValueError), an unknown compression or an encrypted member.
        raise InvalidParameter(
            f"{source}: not a readable securefed model file ({type(exc).__name__}: {str(exc)[:200]}); export it again"
        ) from None


def _read_model(handle: BinaryIO) -> tuple[dict, np.ndarray]:
    if handle.read(4) != b"PK\x03\x04":
        raise InvalidParameter("not a securefed model file (not an .npz archive); export one with `securefed model export`")
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if sorted(names) != sorted(_MEMBERS) or len(set(names)) != len(names):
            extra = sorted(set(names) - set(_MEMBERS))
            missing = sorted(set(_MEMBERS) - set(names))
            detail = f"unexpected arrays {extra}" if extra else f"missing arrays {missing}" if missing else "repeated arrays"
            raise InvalidParameter(f"a model file holds exactly the arrays 'weights' and 'metadata'; this one has {detail}")
        by_name = {_MEMBERS[info.filename]: info for info in infos}
        raw = _read_member(archive, by_name["metadata"], _METADATA_DTYPE, _MAX_METADATA_BYTES)
        try:
            metadata = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidParameter(f"the metadata is not UTF-8 JSON ({str(exc)[:120]})") from None
        adapter = check_metadata(metadata)
        weights = _read_member(
            archive, by_name["weights"], _WEIGHTS_DTYPE, 8 * adapter.parameter_count, adapter.parameter_count
        )
    if not np.all(np.isfinite(weights)):
        raise InvalidParameter("the weights contain NaN or infinity")
    if weights_sha256(weights) != metadata["weights_sha256"]:
        raise InvalidParameter("the weights do not match their SHA-256 in the metadata (the file is damaged or was altered)")
    return metadata, weights


def _refuse_constant(name: str) -> None:
    raise InvalidParameter(f"the metadata contains {name}, which is not a JSON number")


# --- the estimator ----------------------------------------------------------------------------------


def _scaler(preprocessing: Preprocessing) -> Any:
    """A fitted scikit-learn scaler doing what the task's declared preprocessing does."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    count = preprocessing.n_features
    if preprocessing.scaler == "minmax":
        low, high = (np.asarray(preprocessing.param(name), dtype=np.float64) for name in ("min", "max"))
        scaler = MinMaxScaler(feature_range=(0.0, 1.0), clip=preprocessing.clip)
        scaler.data_min_, scaler.data_max_ = low, high
        scaler.data_range_ = high - low
        scaler.scale_ = 1.0 / scaler.data_range_
        scaler.min_ = -low * scaler.scale_
    else:
        mean, scale = (np.asarray(preprocessing.param(name), dtype=np.float64) for name in ("mean", "scale"))
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = mean, scale, scale * scale
    scaler.n_features_in_ = count
    scaler.n_samples_seen_ = 0
    return scaler


def to_estimator(metadata: Mapping[str, Any], weights: np.ndarray) -> Any:
    """A fitted scikit-learn estimator from checked metadata and weights.

    The classifier is the model adapter's own ``to_estimator`` (predictions are
    exactly the adapter's); with declared preprocessing it is the last step of a
    ``Pipeline`` after the fitted scaler. The metadata rides along as
    ``securefed_metadata``.
    """
    from sklearn.pipeline import Pipeline

    adapter = check_metadata(dict(metadata))
    classifier = adapter.to_estimator(np.asarray(weights, dtype=np.float64))
    declared = metadata["preprocessing"]
    if declared is None:
        estimator = classifier
    else:
        scaling = Preprocessing.from_json(declared, adapter.n_features)
        estimator = Pipeline([("preprocessing", _scaler(scaling)), ("model", classifier)])
    estimator.securefed_metadata = json.loads(json.dumps(metadata))  # a private copy
    return estimator


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load an exported model file as a fitted scikit-learn estimator (``predict``, ``predict_proba``, ``classes_``).

    The file is verified first (see :func:`read_model`); its metadata is the
    estimator's ``securefed_metadata`` dict. Raises :class:`InvalidParameter`.
    """
    metadata, weights = read_model(path)
    return to_estimator(metadata, weights)
