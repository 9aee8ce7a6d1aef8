"""Trained models out of securefed: one ``.npz`` file, checked on load, read into scikit-learn.

Theory of operation. The coordinator's store holds an SGD model as a flat
float64 vector; only the task definition says what it means (model kind and
options, features, classes, the declared preprocessing). An exported model
file keeps the two together so that it can be used without the coordinator:

- ``weights``: the flat vector, 1-D little-endian float64, exactly as stored;
- ``metadata``: UTF-8 JSON as a 1-D uint8 array (see :data:`METADATA_KEYS` and
  docs/models.md), including the SHA-256 of the weights (the same digest the
  store records: SHA-256 of the little-endian float64 bytes).

A tree task (``random_forest``, ``gbdt``) ends with a
:class:`~securefed.trees.TreeEnsemble` instead. Its file holds the ensemble's
own plain arrays (:meth:`TreeEnsemble.to_arrays`, see :data:`TREE_ARRAYS`)
next to the same kind of ``metadata`` (:data:`TREE_METADATA_KEYS`: no round,
the number of secure aggregations instead, and ``model_sha256`` over the
arrays, see :func:`tree_sha256`). The metadata's ``model.kind`` says which
layout the file has; the reader reads the metadata first and then expects
exactly that layout's arrays.

Nothing in the file can run code. The reader does not call ``np.load`` at all:
it opens the zip itself, parses each ``.npy`` header (numpy's public
``read_array_header_*``), refuses any member other than the layout's arrays,
any dtype other than the expected one (so an object array, i.e. pickled data,
is refused before a byte of it is read), any shape or size other than what the
header and the layout imply, and only then reads the raw bytes with
``np.frombuffer``. Every refusal is an :class:`InvalidParameter` naming the file
and the problem; any bytes either load or are refused that way.

SGD parameters become an estimator through the model adapter's own
``to_estimator`` (so predictions are exactly the adapter's), behind a fitted
``MinMaxScaler``/``StandardScaler`` in a ``Pipeline`` when the task declares
preprocessing. A tree ensemble becomes a :class:`TreeModel`: scikit-learn has
no estimator for trees over declared equal-width bins, so it is a small plain
class with scikit-learn's predictor surface, predicting from *raw* features
(the bins are over raw values; no scaler applies).
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
from typing import TYPE_CHECKING, Any, BinaryIO, TypeGuard

import numpy as np
import numpy.typing as npt

from securefed.errors import DataError, InvalidParameter
from securefed.preprocessing import Preprocessing

if TYPE_CHECKING:
    from securefed.learning.models import ModelAdapter
    from securefed.trees import TreeEnsemble

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEYS",
    "TREE_ARRAYS",
    "TREE_KINDS",
    "TREE_METADATA_KEYS",
    "TreeModel",
    "build_metadata",
    "build_tree_metadata",
    "check_metadata",
    "check_tree_metadata",
    "encode_model",
    "encode_tree_model",
    "load_model",
    "read_model",
    "read_tree_model",
    "to_estimator",
    "to_tree_model",
    "tree_sha256",
    "weights_sha256",
    "write_model",
    "write_tree_model",
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
#: model kinds whose file holds a tree ensemble rather than a weight vector
TREE_KINDS = ("random_forest", "gbdt")
#: every key of a tree model's metadata: a tree model has no round (it is built once, over
#: ``aggregations`` secure aggregations) and no weight vector (``model_sha256`` covers its arrays)
TREE_METADATA_KEYS = (METADATA_KEYS - {"round", "weights_sha256"}) | {"aggregations", "model_sha256"}
#: the arrays of a tree model file besides ``metadata``: exactly ``TreeEnsemble.to_arrays()``, as (dtype, dimensions)
TREE_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "bins_low": (np.dtype(np.float64), 1),
    "bins_high": (np.dtype(np.float64), 1),
    "tree_offsets": (np.dtype(np.int64), 1),
    "feature": (np.dtype(np.int32), 1),
    "threshold_bin": (np.dtype(np.int32), 1),
    "left": (np.dtype(np.int32), 1),
    "right": (np.dtype(np.int32), 1),
    "value": (np.dtype(np.float64), 2),
    "tree_output": (np.dtype(np.int32), 1),
    "base_score": (np.dtype(np.float64), 1),
    "meta": (np.dtype(np.uint8), 1),
}
#: arrays a tree model file may add: the inner bin edges of bins placed at secure quantiles
TREE_OPTIONAL_ARRAYS: dict[str, tuple[np.dtype, int]] = {"bins_edges": (np.dtype(np.float64), 2)}
_MODEL_KEYS = frozenset({"kind", "options", "parameter_count"})
_TREE_MODEL_KEYS = frozenset({"kind", "options", "loss", "n_trees", "n_nodes", "n_bins"})
_FEATURE_KEYS = frozenset({"count", "names"})
_PRIVACY_KEYS = frozenset({"epsilon", "delta", "epsilon_budget", "releases", "unit"})
#: the losses a tree model file may hold: a forest has none; boosting over the daemons classifies
_TREE_LOSSES = {"random_forest": ("",), "gbdt": ("logistic", "softmax")}

_MEMBERS = {"weights.npy": "weights", "metadata.npy": "metadata"}
_MAX_METADATA_BYTES = 16 * 1024 * 1024
_MAX_HEADER_BYTES = 10_000
#: the most a tree model file's arrays may hold together (a forest of 100 depth-6 trees is ~0.5 MB)
_MAX_TREE_BYTES = 1 << 30
_WEIGHTS_DTYPE = np.dtype("<f8")
_METADATA_DTYPE = np.dtype("u1")


def weights_sha256(weights: np.ndarray) -> str:
    """SHA-256 of the weights as little-endian float64 bytes: the digest the coordinator's store records."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype=_WEIGHTS_DTYPE).tobytes()).hexdigest()


def tree_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of a tree model's arrays: each array's name, dtype, shape and little-endian bytes, in name order.

    Independent of how the arrays were stored (the store's ``.npz`` blob carries zip timestamps),
    so the same model always has the same digest.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header = json.dumps([name, little.dtype.str, list(little.shape)]).encode()
        digest.update(len(header).to_bytes(4, "big") + header)
        digest.update(little.tobytes())
    return digest.hexdigest()


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
    metadata = {
        **_envelope(task, created_at),
        "round": round_number,
        "model": {"kind": model_kind, "options": dict(model_options), "parameter_count": int(np.asarray(weights).size)},
        "features": {"count": n_features, "names": None if feature_names is None else list(feature_names)},
        "classes": sorted(int(c) for c in classes),
        "label_column": label_column,
        "preprocessing": None if preprocessing is None else preprocessing.to_json(),
        "weights_sha256": weights_sha256(weights),
        "privacy": None if privacy is None else dict(privacy),
    }
    metadata = _plain_json(metadata)
    check_metadata(metadata)
    return metadata


def build_tree_metadata(
    *,
    task: str,
    aggregations: int,
    model_kind: str,
    model_options: Mapping[str, Any],
    feature_names: Sequence[str] | None,
    classes: Sequence[int],
    preprocessing: Preprocessing | None,
    ensemble: TreeEnsemble,
    label_column: str = "label",
    created_at: float | None = None,
) -> dict:
    """The metadata of an exported tree model, checked against ``ensemble`` exactly as :func:`read_tree_model` will.

    ``classes`` are the task's classes *in the task's order*: the ensemble's class index i
    is ``classes[i]`` (the order every node mapped its labels in). ``preprocessing`` is the
    task's declared min-max bounds, over which the bins were cut; it is recorded, not applied
    (None is refused: a tree model's bins need them). Tree tasks run without differential privacy, so ``privacy`` is null.
    """
    metadata = {
        **_envelope(task, created_at),
        "aggregations": aggregations,
        "model": {
            "kind": model_kind,
            "options": dict(model_options),
            "loss": ensemble.loss,
            "n_trees": ensemble.n_trees,
            "n_nodes": ensemble.n_nodes,
            "n_bins": ensemble.bins.n_bins,
        },
        "features": {"count": ensemble.bins.n_features, "names": None if feature_names is None else list(feature_names)},
        "classes": [int(c) for c in classes],
        "label_column": label_column,
        "preprocessing": None if preprocessing is None else preprocessing.to_json(),
        "model_sha256": tree_sha256(ensemble.to_arrays()),
        "privacy": None,
    }
    metadata = _plain_json(metadata)
    check_tree_metadata(metadata)
    _check_tree_fits(metadata, ensemble)
    return metadata


def _envelope(task: str, created_at: float | None) -> dict:
    from securefed import __version__

    stamp = _dt.datetime.fromtimestamp(created_at if created_at is not None else _now(), _dt.UTC)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "securefed_version": __version__,
        "created_at": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "task": task,
    }


def _plain_json(metadata: dict) -> dict:
    try:  # the JSON form is the one that is written: normalise tuples to lists, refuse NaN now
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(f"the model's metadata is not plain JSON ({exc})") from None


def _now() -> float:
    import time

    return time.time()


def _is_int(value: object) -> TypeGuard[int]:
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


def _is_tree(metadata: object) -> bool:
    """Whether metadata declares a tree model (its ``model.kind``): which layout the file has."""
    model = metadata.get("model") if isinstance(metadata, dict) else None
    return isinstance(model, dict) and isinstance(model.get("kind"), str) and model["kind"] in TREE_KINDS


def check_metadata(metadata: object) -> ModelAdapter:
    """Check every field's presence and type; return the model adapter the metadata describes.

    For SGD models (a weight vector); tree models are checked by :func:`check_tree_metadata`.
    Raises :class:`InvalidParameter` naming the first field at fault.
    """
    try:
        return _check_metadata(metadata)
    except OverflowError:  # an integer too large for a float where a number is expected
        raise InvalidParameter("metadata holds a number out of range") from None


def check_tree_metadata(metadata: object) -> None:
    """Check a tree model's metadata: every field's presence and type. Raises :class:`InvalidParameter`."""
    try:
        _check_tree_metadata(metadata)
    except OverflowError:
        raise InvalidParameter("metadata holds a number out of range") from None


def _check_common(metadata: object, keys: frozenset[str]) -> tuple[dict, int]:
    """The fields SGD and tree metadata share; returns the metadata and the feature count."""
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
    _keys("", metadata, keys)
    for key in ("securefed_version", "created_at", "task", "label_column"):
        if not isinstance(metadata[key], str) or not metadata[key]:
            raise InvalidParameter(f"metadata {key} must be a non-empty string")
    try:
        _dt.datetime.fromisoformat(metadata["created_at"].replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(f"metadata created_at {metadata['created_at'][:40]!r} is not an ISO 8601 time") from None

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
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(_is_int(c) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise InvalidParameter("metadata classes must list at least two distinct integer labels")

    if metadata["preprocessing"] is not None:
        try:
            Preprocessing.from_json(metadata["preprocessing"], count)
        except InvalidParameter as exc:
            raise InvalidParameter(f"metadata preprocessing: {exc}") from None
    return metadata, count


def _check_digest(metadata: dict, key: str) -> None:
    digest = metadata[key]
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidParameter(f"metadata {key} must be 64 lower-case hex digits")


def _check_metadata(metadata: object) -> ModelAdapter:
    from securefed.learning.models import MODEL_KINDS, make_adapter

    metadata, count = _check_common(metadata, METADATA_KEYS)
    if not _is_int(metadata["round"]) or metadata["round"] < 0:
        raise InvalidParameter("metadata round must be a non-negative integer")
    _check_digest(metadata, "weights_sha256")

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
        known = [*MODEL_KINDS, *TREE_KINDS]
        raise InvalidParameter(f"metadata model.kind {kind!r} is unknown; this securefed knows {known}")
    if not isinstance(options, dict):
        raise InvalidParameter("metadata model.options must be an object")
    classes = metadata["classes"]
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


def _check_tree_metadata(metadata: object) -> None:
    from securefed.trees.binning import MAX_BINS

    metadata, _ = _check_common(metadata, TREE_METADATA_KEYS)
    if not _is_int(metadata["aggregations"]) or metadata["aggregations"] < 1:
        raise InvalidParameter("metadata aggregations must be a positive integer")
    _check_digest(metadata, "model_sha256")
    if metadata["privacy"] is not None:
        raise InvalidParameter("metadata privacy must be null: tree models are computed without differential privacy")
    declared = metadata["preprocessing"]
    if not isinstance(declared, dict) or declared.get("scaler") != "minmax":
        raise InvalidParameter("metadata preprocessing must be the task's minmax bounds (the tree bins are cut over them)")

    model = _keys("model", metadata["model"], _TREE_MODEL_KEYS)
    kind = model["kind"]
    if kind not in TREE_KINDS:
        raise InvalidParameter(f"metadata model.kind {kind!r} is not a tree model ({list(TREE_KINDS)})")
    if not isinstance(model["options"], dict):
        raise InvalidParameter("metadata model.options must be an object")
    if model["loss"] not in _TREE_LOSSES[kind]:
        raise InvalidParameter(
            f"metadata model.loss of a {kind} file must be one of {list(_TREE_LOSSES[kind])}, got {model['loss']!r}"
        )
    if model["loss"] == "logistic" and len(metadata["classes"]) != 2:
        raise InvalidParameter("metadata model.loss logistic is for two classes; this file lists more")
    if not _is_int(model["n_trees"]) or model["n_trees"] < 1:
        raise InvalidParameter("metadata model.n_trees must be a positive integer")
    if not _is_int(model["n_nodes"]) or model["n_nodes"] < model["n_trees"]:
        raise InvalidParameter("metadata model.n_nodes must be an integer, at least one node per tree")
    if not _is_int(model["n_bins"]) or not 2 <= model["n_bins"] <= MAX_BINS:
        raise InvalidParameter(f"metadata model.n_bins must be an integer in 2..{MAX_BINS}")


def _check_tree_fits(metadata: Mapping[str, Any], ensemble: TreeEnsemble) -> None:
    """The checked ensemble is the model the checked metadata describes."""
    model, count, classes = metadata["model"], metadata["features"]["count"], metadata["classes"]
    found = {
        "kind": ensemble.kind,
        "loss": ensemble.loss,
        "n_trees": ensemble.n_trees,
        "n_nodes": ensemble.n_nodes,
        "n_bins": ensemble.bins.n_bins,
    }
    for key, value in found.items():
        if model[key] != value:
            raise InvalidParameter(f"metadata model.{key} is {model[key]!r}, but the tree arrays hold {value!r}")
    if ensemble.bins.n_features != count:
        raise InvalidParameter(
            f"metadata features.count is {count}, but the trees' bins cover {ensemble.bins.n_features} features"
        )
    if ensemble.n_classes != len(classes):
        raise InvalidParameter(f"metadata lists {len(classes)} classes, but the trees predict {ensemble.n_classes}")
    bounds = Preprocessing.from_json(metadata["preprocessing"], count)
    if ensemble.bins.low != bounds.param("min") or ensemble.bins.high != bounds.param("max"):
        raise InvalidParameter("the trees' bins are not cut over the metadata's preprocessing min and max")


# --- the file ---------------------------------------------------------------------------------------


def encode_model(metadata: Mapping[str, Any], weights: np.ndarray) -> bytes:
    """The ``.npz`` bytes of a model file (two plain numeric arrays, no pickle)."""
    adapter = check_metadata(dict(metadata))
    flat = np.ascontiguousarray(weights, dtype=_WEIGHTS_DTYPE)
    if flat.ndim != 1 or flat.size != adapter.parameter_count:
        raise InvalidParameter(f"expected {adapter.parameter_count} weights, got shape {flat.shape}")
    if weights_sha256(flat) != metadata["weights_sha256"]:
        raise InvalidParameter("the metadata's weights_sha256 is not the digest of these weights")
    return _savez(metadata, {"weights": flat})


def encode_tree_model(metadata: Mapping[str, Any], ensemble: TreeEnsemble) -> bytes:
    """The ``.npz`` bytes of a tree model file: the ensemble's plain arrays and the metadata, no pickle."""
    check_tree_metadata(dict(metadata))
    _check_tree_fits(metadata, ensemble)
    arrays = ensemble.to_arrays()
    if set(arrays) - set(TREE_OPTIONAL_ARRAYS) != set(TREE_ARRAYS):  # securefed.trees changed its layout: follow it
        raise InvalidParameter(f"the tree model's arrays {sorted(arrays)} are not the file layout's {sorted(TREE_ARRAYS)}")
    if tree_sha256(arrays) != metadata["model_sha256"]:
        raise InvalidParameter("the metadata's model_sha256 is not the digest of this tree model")
    return _savez(metadata, arrays)


def _savez(metadata: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    members: dict[str, Any] = {**arrays, "metadata": np.frombuffer(text, dtype=_METADATA_DTYPE)}
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


def write_model(path: str | os.PathLike[str], metadata: Mapping[str, Any], weights: np.ndarray) -> None:
    """Write a model file atomically (temporary file, fsync, rename): a reader never sees half of one."""
    _write(path, encode_model(metadata, weights))


def write_tree_model(path: str | os.PathLike[str], metadata: Mapping[str, Any], ensemble: TreeEnsemble) -> None:
    """Write a tree model file atomically, as :func:`write_model` does."""
    _write(path, encode_tree_model(metadata, ensemble))


def _write(path: str | os.PathLike[str], data: bytes) -> None:
    from securefed._fs import atomic_write

    try:
        atomic_write(path, data)
    except OSError as exc:
        raise InvalidParameter(f"{path}: cannot write the model file ({exc.strerror or exc})") from None


def _read_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    dtype: np.dtype,
    max_bytes: int,
    count: int | None = None,
    ndim: int = 1,
) -> np.ndarray:
    """One ``.npy`` member as an ``ndim``-D C-ordered array of ``dtype`` (of ``count`` values, if given).

    The header is parsed and checked before any data is read, so a hostile header
    cannot make the reader allocate or unpickle anything.
    """
    if info.file_size > max_bytes + _MAX_HEADER_BYTES:
        raise InvalidParameter(f"array {name!r} is {info.file_size} bytes, more than a model of this layout can have")
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, found = np.lib.format.read_array_header_1_0(handle, max_header_size=_MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran, found = np.lib.format.read_array_header_2_0(handle, max_header_size=_MAX_HEADER_BYTES)
        else:
            raise InvalidParameter(f"array {name!r} uses .npy version {version}, which a model file does not")
        if found.hasobject:
            raise InvalidParameter(f"array {name!r} is an object array (pickled data); a model file holds plain numbers only")
        if found.kind != dtype.kind or found.itemsize != dtype.itemsize or found.fields is not None or found.subdtype is not None:
            raise InvalidParameter(f"array {name!r} has dtype {found}, expected {dtype}")
        if len(shape) != ndim:
            raise InvalidParameter(f"array {name!r} has shape {shape}, expected a {ndim}-D array")
        if any(side < 0 for side in shape):
            raise InvalidParameter(f"array {name!r} declares the negative shape {shape}")
        if count is not None and shape[0] != count:
            raise InvalidParameter(f"array {name!r} holds {shape[0]} values, but the model's layout needs {count}")
        expected = math.prod(shape) * found.itemsize
        if expected > max_bytes:
            raise InvalidParameter(
                f"array {name!r} declares {math.prod(shape)} values, more than a model of this layout can have"
            )
        data = handle.read(expected + 1)
    if len(data) != expected:
        raise InvalidParameter(f"array {name!r} holds {len(data)} bytes where its header declares {expected}")
    flat = np.frombuffer(data, dtype=found).astype(dtype)
    return np.ascontiguousarray(flat.reshape(shape, order="F" if fortran else "C"))


def read_model(path: str | os.PathLike[str]) -> tuple[dict, np.ndarray]:
    """Read and verify an SGD model file: (metadata, weights). Anything else raises :class:`DataError` (an :class:`InvalidParameter`).

    Checked: a zip holding exactly the two arrays, their dtypes and shapes, the
    metadata's format, version, fields and types, the weight count against the
    model layout, finiteness, and the SHA-256 of the weights. A tree model file
    is refused with a pointer to :func:`read_tree_model` / :func:`load_model`.
    """
    metadata, model = _read_file(path)
    if not isinstance(model, np.ndarray):
        raise DataError(
            f"{os.fspath(path)}: holds a {metadata['model']['kind']} tree model, not weights; read it with "
            "securefed.load_model or read_tree_model"
        )
    return metadata, model


def read_tree_model(path: str | os.PathLike[str]) -> tuple[dict, TreeEnsemble]:
    """Read and verify a tree model file: (metadata, ensemble). Anything else raises :class:`DataError` (an :class:`InvalidParameter`).

    Checked: a zip holding exactly the ensemble's arrays and the metadata, each
    array's dtype and shape, the metadata's fields and types, the SHA-256 of the
    arrays, every check of :meth:`TreeEnsemble.from_arrays` (each tree a tree over
    the declared features and bins), and that the ensemble is the one the metadata
    describes (kind, loss, classes, features, bins over the declared bounds).
    """
    metadata, model = _read_file(path)
    if isinstance(model, np.ndarray):
        raise DataError(
            f"{os.fspath(path)}: holds a {metadata['model']['kind']} model's weights, not trees; read it with "
            "securefed.load_model or read_model"
        )
    return metadata, model


def _read_file(path: str | os.PathLike[str]) -> tuple[dict, np.ndarray | TreeEnsemble]:
    source = os.fspath(path)
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        raise DataError(f"{source}: no such file") from None
    except OSError as exc:
        raise DataError(f"{source}: cannot read the model file ({exc.strerror or exc})") from None
    try:
        with handle:
            return _read_model(handle)
    except InvalidParameter as exc:
        raise DataError(f"{source}: {exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        # Damage inside the archive: zipfile's own errors, a seek past the end (OSError), numpy's header
        # errors and zlib or UTF-8 decoding (ValueError), an unknown compression or an encrypted member.
        raise DataError(
            f"{source}: not a readable securefed model file ({type(exc).__name__}: {str(exc)[:200]}); export it again"
        ) from None


def _read_model(handle: BinaryIO) -> tuple[dict, np.ndarray | TreeEnsemble]:
    if handle.read(4) != b"PK\x03\x04":
        raise InvalidParameter("not a securefed model file (not an .npz archive); export one with `securefed model export`")
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise InvalidParameter("a model file holds each array once; this one has repeated arrays")
        by_file = {info.filename: info for info in infos}
        if "metadata.npy" not in by_file:
            raise InvalidParameter(
                f"a model file holds a 'metadata' array; this one has missing arrays ['metadata.npy'] "
                f"(it has {sorted(names)[:12]}): not a securefed model file"
            )
        raw = _read_member(archive, by_file["metadata.npy"], "metadata", _METADATA_DTYPE, _MAX_METADATA_BYTES)
        try:
            metadata = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidParameter(f"the metadata is not UTF-8 JSON ({str(exc)[:120]})") from None

        if _is_tree(metadata):
            check_tree_metadata(metadata)
            layout = {**TREE_ARRAYS, **{k: v for k, v in TREE_OPTIONAL_ARRAYS.items() if f"{k}.npy" in by_file}}
            members = {f"{name}.npy": name for name in layout}
            _expect(names, {**members, "metadata.npy": "metadata"}, f"a {metadata['model']['kind']} model file")
            size = sum(by_file[member].file_size for member in members)
            if size > _MAX_TREE_BYTES:
                raise InvalidParameter(f"the tree arrays are {size} bytes, more than a model file may hold ({_MAX_TREE_BYTES})")
            arrays = {
                name: _read_member(archive, by_file[member], name, layout[name][0], _MAX_TREE_BYTES, ndim=layout[name][1])
                for member, name in members.items()
            }
            return metadata, _tree_from_arrays(metadata, arrays)

        adapter = check_metadata(metadata)
        _expect(names, _MEMBERS, "a model file")
        weights = _read_member(
            archive, by_file["weights.npy"], "weights", _WEIGHTS_DTYPE, 8 * adapter.parameter_count, adapter.parameter_count
        )
    if not np.all(np.isfinite(weights)):
        raise InvalidParameter("the weights contain NaN or infinity")
    if weights_sha256(weights) != metadata["weights_sha256"]:
        raise InvalidParameter("the weights do not match their SHA-256 in the metadata (the file is damaged or was altered)")
    return metadata, weights


def _expect(names: list[str], members: Mapping[str, str], what: str) -> None:
    """Exactly ``members`` (file name -> array name) in the archive, or an error naming the difference."""
    if sorted(names) == sorted(members):
        return
    extra = sorted(set(names) - set(members))
    missing = sorted(set(members) - set(names))
    detail = f"unexpected arrays {extra}" if extra else f"missing arrays {missing}"
    listed = " and ".join(", ".join(repr(m) for m in sorted(members.values())).rsplit(", ", 1))
    raise InvalidParameter(f"{what} holds exactly the arrays {listed}; this one has {detail}")


def _tree_from_arrays(metadata: dict, arrays: dict[str, np.ndarray]) -> TreeEnsemble:
    from securefed.trees import TreeEnsemble

    if tree_sha256(arrays) != metadata["model_sha256"]:
        raise InvalidParameter("the tree arrays do not match their SHA-256 in the metadata (the file is damaged or was altered)")
    try:
        ensemble = TreeEnsemble.from_arrays(arrays)
    except InvalidParameter as exc:
        raise InvalidParameter(f"tree model: {exc}") from None
    except RecursionError as exc:  # absurdly nested JSON in the ensemble's own meta
        raise InvalidParameter(f"tree model: unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    _check_tree_fits(metadata, ensemble)
    return ensemble


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


class TreeModel:
    """A federated tree ensemble with scikit-learn's predictor surface, from raw features.

    ``predict`` gives the task's class labels, ``predict_proba`` one column per
    class in the order of ``classes_`` (sorted, as scikit-learn orders them);
    ``n_features_in_``, and ``feature_names_in_`` when the task named its
    features, say what ``X`` must hold. ``X`` is in the data's *raw* units: the
    trees split on equal-width bins over the task's declared bounds, so the
    task's preprocessing scaler is not applied (values outside the bounds fall
    in the end bins, as they did at the sites).

    Not a scikit-learn estimator (no ``fit``, ``get_params`` or ``clone``):
    scikit-learn has no model over declared bins to build. ``ensemble`` is the
    :class:`~securefed.trees.TreeEnsemble` itself; ``securefed_metadata`` the
    file's metadata.
    """

    def __init__(self, ensemble: TreeEnsemble, metadata: Mapping[str, Any]) -> None:
        check_tree_metadata(dict(metadata))
        _check_tree_fits(metadata, ensemble)
        self.ensemble = ensemble
        self.securefed_metadata = json.loads(json.dumps(metadata))  # a private copy
        #: the task's classes by class index (the ensemble predicts indices into this)
        self._labels = np.asarray(metadata["classes"], dtype=np.int64)
        self._columns = np.argsort(self._labels, kind="stable")
        self.classes_ = self._labels[self._columns]
        self.n_classes_ = int(self.classes_.shape[0])
        self.n_features_in_ = int(ensemble.bins.n_features)
        names = metadata["features"]["names"]
        if names is not None:  # as in scikit-learn: present only when the features have names
            self.feature_names_in_ = np.asarray(names, dtype=object)

    def __repr__(self) -> str:
        loss = f" ({self.ensemble.loss})" if self.ensemble.loss else ""
        return f"TreeModel({self.ensemble.kind}{loss}, {self.ensemble.n_trees} trees, {self.n_features_in_} features, classes {self.classes_.tolist()})"

    def _features(self, X: npt.ArrayLike) -> np.ndarray:
        names = self.securefed_metadata["features"]["names"]
        columns = getattr(X, "columns", None)
        if names is not None and columns is not None and [str(c) for c in columns] != names:
            raise InvalidParameter(
                f"X's columns {[str(c) for c in columns][:20]} are not the model's features {names[:20]} in order"
            )
        try:
            values = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidParameter("X must hold numbers only") from None
        if values.ndim != 2 or values.shape[1] != self.n_features_in_:
            raise InvalidParameter(
                f"X has shape {values.shape}; the model takes rows x {self.n_features_in_} features (raw values)"
            )
        return values

    def predict_proba(self, X: npt.ArrayLike) -> np.ndarray:
        """Class probabilities, rows x classes in the order of ``classes_``."""
        return self.ensemble.predict_proba(self._features(X))[:, self._columns]

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
        """The predicted class label of every row (the most probable class; ties go to the task's first-listed)."""
        return self._labels[self.ensemble.predict(self._features(X))]

    def score(self, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """Accuracy of :meth:`predict` against labels ``y`` (as scikit-learn classifiers' ``score``)."""
        labels = np.asarray(y)
        predicted = self.predict(X)
        if labels.shape != predicted.shape:
            raise InvalidParameter(f"y has shape {labels.shape}; expected one label per row, {predicted.shape}")
        return float(np.mean(predicted == labels))


def to_tree_model(metadata: Mapping[str, Any], ensemble: TreeEnsemble) -> TreeModel:
    """A :class:`TreeModel` from checked tree metadata and the ensemble it describes."""
    return TreeModel(ensemble, metadata)


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load an exported model file: a fitted scikit-learn estimator, or a :class:`TreeModel` for a tree model.

    Either has ``predict``, ``predict_proba`` and ``classes_``. The file is verified
    first (see :func:`read_model`, :func:`read_tree_model`); its metadata is the
    model's ``securefed_metadata`` dict. Raises :class:`InvalidParameter`.
    """
    metadata, model = _read_file(path)
    if isinstance(model, np.ndarray):
        return to_estimator(metadata, model)
    return to_tree_model(metadata, model)
