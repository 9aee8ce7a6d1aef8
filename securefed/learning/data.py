"""A node's local data: load it from CSV or .npz, check it against the task, refuse clearly.

A site prepares its own data file, so every refusal says what is wrong and
where (file, row, column) and what to do about it. The task (agreed by all
sites) declares the features and the classes; the file must match them. Data
that does not match would silently train a different model, so nothing is
guessed: extra columns, missing columns, undeclared labels, NaN and infinity
are all refused.

- CSV: a header row; the label column by name; every other column a feature;
  numbers only. With declared feature names, columns are matched by name (their
  order in the file does not matter).
- .npz: arrays ``"X"`` (2-D) and ``"y"`` (1-D), optionally ``"feature_names"``
  (1-D strings); read with ``allow_pickle=False``, so no code runs on load.

A task declared with a feature *count* only cannot have its column order
checked: loading then logs a warning (declare ``features = [names]``).

The task's feature scaling (:class:`~securefed.preprocessing.Preprocessing`,
re-exported here) is applied by the node after loading, never by the loader.
"""

from __future__ import annotations

import csv
import logging
import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.errors import DataError, InvalidParameter
from securefed.learning.models import _is_int, _normalize_classes
from securefed.preprocessing import SCALERS, Preprocessing

__all__ = ["SCALERS", "LocalDataset", "Preprocessing", "load_local_dataset", "save_csv", "save_npz"]

log = logging.getLogger("securefed.data")

_MAX_LISTED = 20
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class LocalDataset:
    """Features (float64, 2-D), labels (int64; float64 for a numeric target) and the feature names (None if the file has none)."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...] | None

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def _listed(values: Sequence[object]) -> str:
    shown = ", ".join(repr(v) for v in values[:_MAX_LISTED])
    more = f", ... ({len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _check_declared_features(features: int | Sequence[str] | None) -> int | tuple[str, ...] | None:
    if features is None:
        return None
    if _is_int(features):
        if int(features) < 1:
            raise InvalidParameter(f"the declared feature count must be >= 1, got {features}")
        return int(features)
    if isinstance(features, (str, bytes)) or not isinstance(features, (Sequence, np.ndarray)):
        raise InvalidParameter("features must be a count, a sequence of names, or None")
    names = tuple(str(n) if isinstance(n, np.str_) else n for n in features)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidParameter("declared feature names must be non-empty strings")
    if len(set(names)) != len(names):
        raise InvalidParameter(f"declared feature names repeat: {_listed(_duplicates(names))}")
    return names


def _duplicates(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    repeated: set[str] = set()
    for n in names:
        (repeated if n in seen else seen).add(n)
    return sorted(repeated)


def _order_columns(
    source: str, found: tuple[str, ...] | None, n_columns: int, declared: int | tuple[str, ...] | None
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Which file columns make the task's features, in the task's order (None: as they are)."""
    if declared is None:
        return None, found
    if isinstance(declared, int):
        if n_columns != declared:
            raise DataError(
                f"{source}: has {n_columns} feature columns but the task declares {declared}; "
                "bring the file to the task's features"
            )
        log.warning(
            "%s: the task declares only a feature count (%d), so the order of the columns cannot be checked; "
            "declare features = [names] in [task] to match columns by name",
            source,
            declared,
        )
        return None, found
    if found is None:
        raise DataError(
            f"{source}: the task declares feature names but the file has none; add a "
            "'feature_names' array listing the columns of X"
        )
    missing = [n for n in declared if n not in found]
    extra = [n for n in found if n not in declared]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing features {_listed(missing)}")
        if extra:
            parts.append(f"columns the task does not declare {_listed(extra)} (remove them)")
        raise DataError(f"{source}: " + "; ".join(parts))
    position = {n: i for i, n in enumerate(found)}
    return np.array([position[n] for n in declared], dtype=np.int64), declared


def _check_labels(source: str, y: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    unknown = np.setdiff1d(np.unique(y), np.asarray(classes, dtype=np.int64))
    if unknown.size:
        raise DataError(
            f"{source}: labels {_listed([int(v) for v in unknown])} are not among the task's "
            f"classes {list(classes)}; remove those rows or fix the labels"
        )
    return y


def _parse_number(source: str, text: str, line: int, column: str) -> float:
    cell = text.strip()
    if not cell:
        raise DataError(f"{source}: empty value at line {line}, column {column!r}; fill it in or drop the row")
    try:
        value = float(cell)
    except ValueError:
        raise DataError(
            f"{source}: non-numeric value {cell[:40]!r} at line {line}, column {column!r}; "
            "only numbers are allowed (encode categories as numbers first)"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{source}: {cell!r} at line {line}, column {column!r}; NaN and infinity are not allowed")
    return value


def header_names(reader: Iterator[list[str]], source: str) -> list[str]:
    """The header row of a CSV (``csv.reader``): stripped, non-empty, distinct column names, or a clear error."""
    header = next(reader, None)
    if header is None:
        raise DataError(f"{source}: the file is empty; it needs a header row and data rows")
    names = [h.strip() for h in header]
    if any(not n for n in names):
        raise DataError(f"{source}: the header row has an empty column name")
    if len(set(names)) != len(names):
        raise DataError(f"{source}: the header repeats column names {_listed(_duplicates(names))}")
    return names


def _load_csv(path: Path, label_column: str, numeric: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    source = str(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        names = header_names(reader, source)
        if label_column not in names:
            raise DataError(
                f"{source}: no label column {label_column!r}; the header has {_listed(names)}. "
                "Name the label column as the task says"
            )
        label_at = names.index(label_column)
        feature_at = [i for i in range(len(names)) if i != label_at]
        if not feature_at:
            raise DataError(f"{source}: there are no feature columns besides {label_column!r}")
        rows: list[list[float]] = []
        labels: list[float] = []
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(names):
                raise DataError(f"{source}: line {line} has {len(row)} fields, the header has {len(names)}")
            label = _parse_number(source, row[label_at], line, label_column)
            if not numeric and not label.is_integer():
                raise DataError(f"{source}: label {row[label_at].strip()!r} at line {line} is not an integer class")
            labels.append(label)
            rows.append([_parse_number(source, row[i], line, names[i]) for i in feature_at])
    if not rows:
        raise DataError(f"{source}: no data rows after the header")
    X = np.asarray(rows, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64 if numeric else np.int64)
    return X, y, tuple(names[i] for i in feature_at)


def _load_npz(path: Path, numeric: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    source = str(path)
    with path.open("rb") as handle:
        magic = handle.read(len(_NPY_MAGIC))
    if magic.startswith(_NPY_MAGIC):
        raise DataError(f"{source}: holds a single .npy array, not an .npz archive; save 'X' and 'y' with np.savez")
    if not magic.startswith(_ZIP_MAGIC):
        raise DataError(f"{source}: not a readable .npz file (it is not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = [k for k in ("X", "y") if k not in keys]
            if missing:
                raise DataError(
                    f"{source}: missing array(s) {missing}; the .npz needs 'X' (features) and 'y' (labels), found {sorted(keys)}"
                )
            X = archive["X"]
            y = archive["y"]
            names = archive["feature_names"] if "feature_names" in keys else None
    except InvalidParameter:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(
                f"{source}: holds object arrays or pickled data, which would need pickle to "
                "load; save plain numeric arrays (and feature names as a unicode string array)"
            ) from None
        raise DataError(f"{source}: not a readable .npz file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{source}: not a readable .npz file ({exc})") from None

    if X.dtype.kind not in "fiu" or X.ndim != 2:
        raise DataError(f"{source}: 'X' must be a 2-D numeric array, got shape {X.shape}, dtype {X.dtype}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(f"{source}: 'y' must be 1-D with one label per row of X ({X.shape[0]}), got shape {y.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{source}: the data is empty (0 rows)")
    if X.shape[1] == 0:
        raise DataError(f"{source}: 'X' has no feature columns")
    X = X.astype(np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        r, c = (int(v) for v in bad[0])
        raise DataError(
            f"{source}: 'X' has NaN or infinity at row {r}, column {c} ({bad.shape[0]} such values); clean or drop those rows"
        )
    if numeric:
        if y.dtype.kind not in "fiu" or not np.all(np.isfinite(y.astype(np.float64))):
            raise DataError(f"{source}: 'y' must hold finite numbers (the task's target is numeric), got dtype {y.dtype}")
        y = y.astype(np.float64)
    elif y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            not_integer = ~np.isfinite(y) | (y != np.round(y))
        if np.any(not_integer):
            row = int(np.flatnonzero(not_integer)[0])
            raise DataError(f"{source}: 'y' has a non-integer label {float(y[row])!r} at row {row}")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{source}: 'y' must hold integer labels, got dtype {y.dtype}")
    if not numeric:
        y = y.astype(np.int64)

    feature_names: tuple[str, ...] | None = None
    if names is not None:
        if names.dtype.kind != "U" or names.ndim != 1 or names.shape[0] != X.shape[1]:
            raise DataError(
                f"{source}: 'feature_names' must be a 1-D string array with one name per column "
                f"of X ({X.shape[1]}), got shape {names.shape}, dtype {names.dtype}"
            )
        feature_names = tuple(str(n) for n in names)
        if len(set(feature_names)) != len(feature_names):
            raise DataError(f"{source}: 'feature_names' repeats {_listed(_duplicates(feature_names))}")
    return X, y, feature_names


def load_local_dataset(
    path: str | Path,
    *,
    label_column: str,
    features: int | Sequence[str] | None,
    classes: Sequence[int] | None,
) -> LocalDataset:
    """Load a node's data file and check it against the task's features and classes.

    ``features`` is the declared feature count, the declared feature names (the
    file's columns are put in that order), or None (accept what the file has).
    ``classes`` None means the task's target is numeric (analytics such as a
    regression): the label column then holds any finite numbers, as float64.
    ``label_column`` names the CSV label column; .npz files keep labels in "y".
    Anything that does not fit raises :class:`InvalidParameter` saying what to fix.
    """
    declared = _check_declared_features(features)
    numeric = classes is None
    declared_classes = None if classes is None else _normalize_classes(classes)
    if not isinstance(label_column, str) or not label_column:
        raise InvalidParameter("label_column must be a non-empty column name")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file; check the node's data path")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file; point the node at a .csv or .npz file")
    suffix = p.suffix.lower()
    found: tuple[str, ...] | None
    if suffix == ".csv":
        X, y, found = _load_csv(p, label_column, numeric)
    elif suffix == ".npz":
        X, y, found = _load_npz(p, numeric)
    else:
        raise DataError(f"{p}: unknown file type {p.suffix!r}; use a .csv (with a header row) or .npz file")
    order, names = _order_columns(str(p), found, X.shape[1], declared)
    if order is not None:
        X = X[:, order]
    if declared_classes is not None:
        _check_labels(str(p), y, declared_classes)
    return LocalDataset(X=np.ascontiguousarray(X), y=y, feature_names=names)


def _check_for_saving(
    X: np.ndarray, y: np.ndarray, feature_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    X_arr, y_arr = np.asarray(X), np.asarray(y)
    if X_arr.ndim != 2 or X_arr.dtype.kind not in "fiu" or X_arr.shape[0] == 0 or X_arr.shape[1] == 0:
        raise InvalidParameter(f"X must be a non-empty numeric 2-D array, got shape {X_arr.shape}")
    if y_arr.ndim != 1 or y_arr.shape[0] != X_arr.shape[0] or y_arr.dtype.kind not in "fiu":
        raise InvalidParameter(
            f"y must be 1-D labels (integers, or numbers for a numeric target), one per row of X, got shape {y_arr.shape}"
        )
    if y_arr.dtype.kind == "f" and not np.all(np.isfinite(y_arr)):
        raise InvalidParameter("y contains NaN or infinity")
    if not np.all(np.isfinite(X_arr)):
        raise InvalidParameter("X contains NaN or infinity")
    names = None if feature_names is None else tuple(str(n) for n in feature_names)
    if names is not None:
        if len(names) != X_arr.shape[1] or len(set(names)) != len(names) or not all(names):
            raise InvalidParameter(f"feature_names must be {X_arr.shape[1]} distinct non-empty names, got {len(names)}")
    return X_arr.astype(np.float64), y_arr.astype(np.float64 if y_arr.dtype.kind == "f" else np.int64), names


def save_csv(path: str | Path, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str], label_column: str) -> None:
    """Write a CSV that :func:`load_local_dataset` reads back exactly (features, then the label)."""
    X_arr, y_arr, names = _check_for_saving(X, y, feature_names)
    if names is None:
        raise InvalidParameter("a CSV needs feature names for its header")
    if not label_column or label_column in names:
        raise InvalidParameter(f"label_column {label_column!r} must be non-empty and not a feature name")
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, label_column])
        for row, label in zip(X_arr.tolist(), y_arr.tolist()):
            writer.writerow([*(repr(v) for v in row), repr(label) if isinstance(label, float) else str(label)])


def save_npz(path: str | Path, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str] | None = None) -> None:
    """Write an .npz (no object arrays) that :func:`load_local_dataset` reads back exactly."""
    p = Path(path)
    if p.suffix.lower() != ".npz":
        raise DataError(f"{p}: an .npz data file must end in .npz")
    X_arr, y_arr, names = _check_for_saving(X, y, feature_names)
    with p.open("wb") as handle:
        if names is None:
            np.savez(handle, X=X_arr, y=y_arr)
        else:
            np.savez(handle, X=X_arr, y=y_arr, feature_names=np.array(names, dtype=np.str_))
