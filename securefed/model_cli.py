"""`securefed model export` and `securefed predict`: trained models out of a coordinator's store.

``model export`` reads the coordinator's store read-only (the daemon may be
running), interprets the stored vector with the task definition from the
coordinator's config (refusing a config whose task is not the one the store
was trained for), and writes a verified, pickle-free ``.npz`` (see
:mod:`securefed.learning.export` and docs/models.md). For a tree task
(``random_forest``, ``gbdt``) it writes the finished tree ensemble instead: a
tree model is built once, at the end of the computation, so it has no rounds.
``predict`` loads either kind of file and predicts for the rows of a CSV.

Only ``argparse`` is imported here at module level: ``securefed status`` builds
the same parser and must stay fast, so numpy, scikit-learn and the store are
imported inside the command functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from securefed._stdout import write_stdout
from securefed.errors import DataError, InvalidParameter, StorageError

if TYPE_CHECKING:
    import numpy as np

    from coordinator.config import CoordinatorConfig
    from securefed.federation.store import CoordinatorStore
    from securefed.federation.task import TaskDefinition
    from securefed.trees import TreeEnsemble

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``model export`` and ``predict`` on the ``securefed`` parser."""
    model = sub.add_parser("model", help="export the trained model from a coordinator's state")
    actions = model.add_subparsers(dest="model_command", required=True)
    export = actions.add_parser(
        "export",
        help="write a round's model with its task metadata to a verified .npz",
        description="Write the coordinator's model (latest round, or --round) to an .npz that "
        "securefed.load_model and `securefed predict` read. For a random_forest or gbdt task: the "
        "finished tree model. Safe while the coordinator runs.",
    )
    export.add_argument("--config", required=True, help="coordinator TOML config (for the task and the state folder)")
    export.add_argument(
        "--round", type=int, default=None, help="the round whose model to export (default: the latest; SGD tasks only)"
    )
    export.add_argument("--out", required=True, help="the .npz file to write")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.set_defaults(func=_cmd_export)

    predict = sub.add_parser(
        "predict",
        help="predict the labels of a CSV's rows with an exported model",
        description="Predict one label per CSV row with a model file from `securefed model export`. "
        "With declared feature names the columns are matched by name. If the CSV has the label "
        "column, the accuracy is printed too.",
    )
    predict.add_argument("--model", required=True, help="model file written by `securefed model export`")
    predict.add_argument("--csv", required=True, help="CSV with a header row; the model's features as columns")
    predict.add_argument("--out", default=None, help="write the predictions here (default: standard output)")
    predict.add_argument("--proba", action="store_true", help="also write each class's probability")
    predict.add_argument(
        "--label-column", default=None, help="the CSV's label column, if any (default: the one the model file names)"
    )
    predict.set_defaults(func=_cmd_predict)


# --- model export -------------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from coordinator.config import load_coordinator_config
    from securefed.federation.store import CoordinatorStore
    from securefed.learning.export import build_metadata, write_model

    out = Path(args.out)
    if out.is_dir():
        raise InvalidParameter(f"{out} is a folder; give --out a file name, e.g. {out / 'model.npz'}")
    if out.exists() and not args.force:
        raise InvalidParameter(f"{out} already exists; use --force to replace it")
    if not out.parent.is_dir():
        raise InvalidParameter(f"{out.parent} does not exist; create the folder first")
    config = load_coordinator_config(args.config)
    task = config.task
    if task.model_kind == "analytics":
        raise InvalidParameter(
            f"task {task.name!r} is an analytics task: it has results, not a model; get them with "
            f"`securefed analytics --config {args.config} --show`"
        )
    if task.is_computation and args.round is not None:
        raise InvalidParameter(
            f"--round does not apply to a {task.model_kind} task: its model is built once, at the end of the "
            "computation; leave --round out"
        )
    if not config.store_path.exists():
        goal = "finish the computation" if task.is_computation else "complete a round"
        raise InvalidParameter(
            f"{config.store_path}: no coordinator state yet; start the coordinator (securefed coordinator "
            f"--config {args.config}) and let it {goal}"
        )
    store = CoordinatorStore(config.store_path, read_only=True)
    try:
        bound = store.get_meta("task")
        if bound is None:
            raise InvalidParameter(
                f"{config.store_path}: the coordinator has not started task {task.name!r} yet; no model to export"
            )
        if bound != task.name or store.get_meta("task_fingerprint") != task.fingerprint():
            raise InvalidParameter(
                f"{config.store_path} was trained for task {bound!r} with another definition than {args.config} "
                f"declares now; export with the config the coordinator ran"
            )
        if task.is_computation:
            ensemble, aggregations = _stored_trees(store, args.config)
        else:
            round_number, weights = _stored_model(store, args.round)
            privacy = _privacy(store, task, round_number)
    finally:
        store.close()
    if task.is_computation:
        return _write_trees(out, config, ensemble, aggregations)
    metadata = build_metadata(
        task=task.name,
        round_number=round_number,
        model_kind=task.model_kind,
        model_options=task.model_options,
        n_features=task.n_features,
        feature_names=task.feature_names,
        classes=task.classes,
        preprocessing=task.preprocessing,
        weights=weights,
        label_column=config.evaluation_label_column,
        privacy=privacy,
    )
    write_model(out, metadata, weights)
    dp = (
        f"epsilon {privacy['epsilon']:.4g} spent at delta {privacy['delta']:g} ({privacy['releases']} DP releases)"
        if privacy is not None
        else "no differential privacy"
    )
    note = " (the initial, untrained model)" if round_number == 0 else ""
    print(
        f"wrote {out}: task {task.name!r}, round {round_number}{note}, {task.model_kind} with "
        f"{weights.size} parameters, sha256 {metadata['weights_sha256'][:16]}..., {dp}"
    )
    return 0


def _stored_trees(store: CoordinatorStore, config_path: str) -> tuple[TreeEnsemble, int]:
    """A finished tree task's model and the secure aggregations it took, or an error saying how to follow progress."""
    from securefed.trees import TreeEnsemble

    arrays = store.computation_model()
    if arrays is None:
        steps = len(store.rounds())
        done = f"{steps} secure aggregation{'s' if steps != 1 else ''} done so far" if steps else "no secure aggregation done yet"
        raise InvalidParameter(
            f"the computation has not finished ({done}): there is no tree model to export yet; check its "
            f"progress with `securefed status --config {config_path}` and export when it is done"
        )
    try:
        ensemble = TreeEnsemble.from_arrays(arrays)
    except InvalidParameter as exc:
        raise StorageError(
            f"{store.path}: the stored tree model is not usable ({exc}); restore the state from a backup"
        ) from None
    result = store.computation_result() or {}
    aggregations = result.get("aggregations")
    if isinstance(aggregations, bool) or not isinstance(aggregations, int) or aggregations < 1:
        aggregations = max(1, len(store.rounds()))
    return ensemble, aggregations


def _write_trees(out: Path, config: CoordinatorConfig, ensemble: TreeEnsemble, aggregations: int) -> int:
    from securefed.learning.export import build_tree_metadata, write_tree_model

    task = config.task
    metadata = build_tree_metadata(
        task=task.name,
        aggregations=aggregations,
        model_kind=task.model_kind,
        model_options=task.model_options,
        feature_names=task.feature_names,
        classes=task.classes,
        preprocessing=task.preprocessing,
        ensemble=ensemble,
        label_column=config.evaluation_label_column,
    )
    write_tree_model(out, metadata, ensemble)
    loss = f" ({ensemble.loss})" if ensemble.loss else ""
    print(
        f"wrote {out}: task {task.name!r}, {task.model_kind}{loss} with {ensemble.n_trees} trees and "
        f"{ensemble.n_nodes} nodes after {aggregations} secure aggregations, sha256 "
        f"{metadata['model_sha256'][:16]}..., no differential privacy"
    )
    return 0


def _stored_model(store: CoordinatorStore, wanted: int | None) -> tuple[int, np.ndarray]:
    """The model of round ``wanted`` (None: the latest), or an error naming the rounds available."""
    latest = store.latest_model()
    if latest is None:
        raise InvalidParameter(f"{store.path} holds no model yet")
    latest_round, latest_weights, _ = latest
    if wanted is None or wanted == latest_round:
        return latest_round, latest_weights
    if wanted < 0:
        raise InvalidParameter(f"--round must be a round number >= 0, got {wanted}")
    if wanted > latest_round:
        raise InvalidParameter(f"round {wanted} has not completed; the latest completed round is {latest_round}")
    weights = store.model_at(wanted)
    if weights is None:
        shown = ", ".join(str(r) for r in store.model_rounds())
        raise InvalidParameter(
            f"the model of round {wanted} is no longer stored (the coordinator keeps only the newest few); "
            f"rounds available: {shown}. Export each round you want to keep soon after it completes"
        )
    return wanted, weights


def _privacy(store: CoordinatorStore, task: TaskDefinition, round_number: int) -> dict | None:
    """Epsilon spent up to ``round_number`` (as the coordinator recorded it), with the task's delta; None without DP."""
    if task.dp is None:
        return None
    releases = [release for release in store.dp_releases() if release[0] <= round_number]
    recorded = {record.round: record.epsilon for record in store.rounds()}
    epsilon = recorded.get(round_number)
    if epsilon is None:  # round 0 (no release yet) or a record without its epsilon: compose the releases
        from securefed.dp.accountant import SkellamRelease, skellam_epsilon

        epsilon = skellam_epsilon([SkellamRelease(v, l2, l1, q) for _, v, l2, l1, q in releases], task.dp["delta"])
    return {
        "epsilon": float(epsilon),
        "delta": float(task.dp["delta"]),
        "epsilon_budget": float(task.dp["epsilon"]),
        "releases": len(releases),
        "unit": task.dp["unit"],
    }


# --- predict ------------------------------------------------------------------------------------------


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from securefed._fs import atomic_write
    from securefed.learning.export import load_model

    model = load_model(args.model)
    metadata = model.securefed_metadata
    label_column = args.label_column or metadata["label_column"]
    features = metadata["features"]
    declared = tuple(features["names"]) if features["names"] is not None else int(features["count"])
    X, y = _read_csv(Path(args.csv), label_column, declared)
    labels = np.asarray(model.predict(X))
    classes = [int(c) for c in model.classes_]
    header = ["prediction"]
    rows = [[str(int(v))] for v in labels]
    if args.proba:
        proba = np.asarray(model.predict_proba(X), dtype=np.float64)
        header += [f"proba_{c}" for c in classes]
        for row, values in zip(rows, proba.tolist()):
            row.extend(repr(v) for v in values)
    text = "".join(",".join(row) + "\n" for row in [header, *rows])
    made = f"round {metadata['round']}" if "round" in metadata else f"{metadata['aggregations']} secure aggregations"
    summary = f"{len(rows)} predictions by {metadata['model']['kind']} (task {metadata['task']!r}, {made})"
    if y is not None:
        correct = int(np.sum(labels == y))
        unknown = int(np.sum(~np.isin(y, classes)))
        summary += f"; accuracy {correct / len(y):.4f} ({correct} of {len(y)} rows, labels from column {label_column!r})"
        if unknown:
            summary += f"; {unknown} rows have labels the model does not know (counted as wrong)"
    if args.out is not None:
        try:
            atomic_write(args.out, text.encode())
        except OSError as exc:
            raise InvalidParameter(f"{args.out}: cannot write the predictions ({exc.strerror or exc})") from None
        print(f"wrote {args.out}: {summary}")
        return 0
    write_stdout(text)
    print(summary, file=sys.stderr)
    return 0


def _read_csv(path: Path, label_column: str, declared: int | tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """The features (in the model's order) and, if the CSV has the label column, the labels.

    The same rules as a node's data files (securefed.learning.data): a header row,
    numbers only, columns matched by name when the model declares names, nothing
    missing or extra besides the optional label column.
    """
    import csv

    import numpy as np

    from securefed.learning.data import _order_columns, _parse_number, header_names

    source = str(path)
    if not path.is_file():
        raise DataError(f"{source}: no such file" if not path.exists() else f"{source}: not a regular file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            names = header_names(reader, source)
            label_at = names.index(label_column) if label_column in names else None
            feature_at = [i for i in range(len(names)) if i != label_at]
            rows: list[list[float]] = []
            labels: list[int] = []
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(names):
                    raise DataError(f"{source}: line {line} has {len(row)} fields, the header has {len(names)}")
                if label_at is not None:
                    label = _parse_number(source, row[label_at], line, label_column)
                    if not label.is_integer():
                        raise DataError(f"{source}: label {row[label_at].strip()!r} at line {line} is not an integer class")
                    labels.append(int(label))
                rows.append([_parse_number(source, row[i], line, names[i]) for i in feature_at])
    except UnicodeDecodeError:
        raise DataError(f"{source}: not UTF-8 text; save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{source}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if not rows:
        raise DataError(f"{source}: no data rows after the header")
    found = tuple(names[i] for i in feature_at)
    try:
        order, _ = _order_columns(source, found, len(found), declared)
    except InvalidParameter as exc:
        hint = (
            ""
            if label_at is not None
            else f" (no label column {label_column!r}: if the CSV names it otherwise, pass --label-column)"
        )
        raise InvalidParameter(f"{exc}; the model's features are {_describe(declared)}{hint}") from None
    X = np.asarray(rows, dtype=np.float64)
    if order is not None:
        X = X[:, order]
    return np.ascontiguousarray(X), (np.asarray(labels, dtype=np.int64) if label_at is not None else None)


def _describe(declared: int | tuple[str, ...]) -> str:
    if isinstance(declared, int):
        return f"{declared} unnamed columns (in the training order)"
    from securefed.learning.data import _listed

    return _listed(list(declared))
