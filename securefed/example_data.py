"""``securefed example-data``: one bundled dataset split into per-site CSVs, for a trial federation.

An operator's first run should use data whose right answer is known. This writes
what each site of such a trial would hold (raw features, a header row, a label
column), a held-out test file for the coordinator's evaluation and for
``securefed predict``, and the ``[task]`` lines (features, classes and the
public per-feature bounds for ``[task.preprocessing]``) that both kinds of
config must carry. The split is seeded: it is test data, not key material.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from securefed.errors import InvalidParameter

__all__ = ["add_command", "write_example_data"]


def _toml_list(values: list) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_example_data(dataset: str, names: list[str], out: Path, seed: int = 0, partition: str = "iid") -> str:
    """Write ``<name>.csv`` per site and ``test.csv`` into ``out``; return the ``[task]`` TOML lines."""
    from securefed.learning.data import save_csv
    from securefed.learning.datasets import bundled_preprocessing, load_bundled, train_test_split_stratified
    from securefed.learning.partition import partition as split_by

    if len(names) < 3:
        raise InvalidParameter("--sites must be at least 3 (secure aggregation needs a threshold of peers)")
    if len(set(names)) != len(names) or any(not name or "/" in name for name in names):
        raise InvalidParameter(f"site names must be distinct, non-empty and without '/': {names}")
    data = load_bundled(dataset, scaled=False)
    preprocessing = bundled_preprocessing(dataset)
    split = train_test_split_stratified(data.X, data.y, 0.25, seed)
    parts = split_by(partition, preprocessing.transform(split.X_train), split.y_train, len(names), seed)
    out.mkdir(parents=True, exist_ok=True)
    features = list(data.feature_names)
    for name, rows in zip(names, parts):
        save_csv(out / f"{name}.csv", split.X_train[rows], split.y_train[rows], features, "label")
    save_csv(out / "test.csv", split.X_test, split.y_test, features, "label")
    spec = preprocessing.to_json()
    lines = [
        f"# {dataset}: the [task] lines every config of this trial carries (see docs/deployment.md)",
        f"features = {_toml_list(features)}",
        f"classes = {_toml_list([int(c) for c in data.classes])}",
        "",
        "[task.preprocessing]",
        f'scaler = "{spec["scaler"]}"',
        f"min = {_toml_list(spec['min'])}",
        f"max = {_toml_list(spec['max'])}",
        f"clip = {'true' if spec['clip'] else 'false'}",
    ]
    text = "\n".join(lines) + "\n"
    (out / "task.toml").write_text(text)
    return text


def _run(args: argparse.Namespace) -> int:
    from securefed.learning.datasets import BUNDLED_DATASETS

    if args.dataset not in BUNDLED_DATASETS:
        raise InvalidParameter(f"--dataset must be one of {', '.join(sorted(BUNDLED_DATASETS))}, not {args.dataset!r}")
    names = [name.strip() for name in args.names.split(",")] if args.names else [f"site-{i + 1}" for i in range(args.sites)]
    out = Path(args.out)
    text = write_example_data(args.dataset, names, out, seed=args.seed, partition=args.partition)
    print(f"wrote {', '.join(f'{name}.csv' for name in names)} and test.csv (held out) to {out}")
    print(f"the task lines for both kinds of config are in {out / 'task.toml'}:\n")
    print(text, end="")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("example-data", help="split a bundled dataset into per-site CSVs for a trial federation")
    parser.add_argument("--dataset", default="iris", help="digits, iris, wine or breast_cancer (default iris)")
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--names", default=None, help="comma-separated site names (default site-1, site-2, ...)")
    parser.add_argument("--partition", default="iid", help="iid (default), dirichlet or kmeans")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--out", required=True, help="folder for the CSV files")
    parser.set_defaults(func=_run)
