"""The coordinator's TOML config: where to listen, its keys, the task and the federation's nodes.

See docs/deployment.md for a complete, commented example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securefed.config_util import field, load_toml, parse_identity_key, resolve_path, section
from securefed.dp.settings import DpSettings
from securefed.errors import InvalidParameter
from securefed.federation.task import DEFAULT_DEADLINES, NodeEntry, TaskDefinition
from securefed.wire.keys import parse_public_key

__all__ = ["CoordinatorConfig", "load_coordinator_config"]


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str
    state_dir: Path
    curve_secret_key_file: Path
    task: TaskDefinition
    nodes: tuple[NodeEntry, ...]
    evaluation_data: Path | None = None
    evaluation_label_column: str = "label"
    transcript_file: Path | None = None

    @property
    def store_path(self) -> Path:
        return self.state_dir / "coordinator.sqlite"


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    file = Path(path).resolve()
    raw = load_toml(file)
    base = file.parent
    main = section(raw, "coordinator")
    task_table = section(raw, "task")
    deadlines = dict(DEFAULT_DEADLINES)
    for stage, seconds in section(raw, "deadlines", required=False).items():
        if stage not in deadlines or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise InvalidParameter(f"[deadlines] {stage} must be one of {sorted(deadlines)} with positive seconds")
        deadlines[stage] = float(seconds)
    classes = field(task_table, "task", "classes", list)
    if not classes or not all(type(c) is int for c in classes):
        raise InvalidParameter("[task] classes must be a non-empty list of integers")
    task = TaskDefinition(
        name=field(task_table, "task", "name", str),
        model_kind=field(task_table, "task", "model", str),
        n_features=field(task_table, "task", "features", int),
        classes=tuple(classes),
        rounds=field(task_table, "task", "rounds", int),
        model_options=_model_options(field(task_table, "task", "model_options", dict, {})),
        epochs=field(task_table, "task", "local_epochs", int, 1),
        learning_rate=float(field(task_table, "task", "learning_rate", (int, float), 0.1)),
        batch_size=field(task_table, "task", "batch_size", int, 32),
        min_nodes=field(task_table, "task", "min_nodes", int, 3),
        max_nodes=field(task_table, "task", "max_nodes", int, 1000),
        threshold=field(task_table, "task", "threshold", (int, float), None),
        neighbours=field(task_table, "task", "neighbours", (str, int), "complete"),
        expected_dropout=float(field(task_table, "task", "expected_dropout", (int, float), 0.05)),
        max_colluders=_colluders(task_table),
        clip_norm=float(field(task_table, "task", "clip_norm", (int, float), 10.0)),
        weight_cap=field(task_table, "task", "weight_cap", int, 100_000),
        strategy=field(task_table, "task", "strategy", str, "fedavg"),
        strategy_options=field(task_table, "task", "strategy_options", dict, {}),
        evaluate=field(task_table, "task", "evaluate", bool, True),
        masking=field(task_table, "task", "masking", bool, True),
        deadlines=deadlines,
        dp=_dp_settings(task_table),
    )
    nodes_raw = raw.get("nodes", [])
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise InvalidParameter("config needs at least one [[nodes]] entry (name, curve_public_key, identity_public_key)")
    nodes = []
    for index, entry in enumerate(nodes_raw):
        where = f"nodes #{index + 1}"
        if not isinstance(entry, dict):
            raise InvalidParameter(f"[[nodes]] entry {index + 1} must be a table")
        name = field(entry, where, "name", str)
        nodes.append(
            NodeEntry(
                name=name,
                curve_public_key=parse_public_key(field(entry, where, "curve_public_key", str)),
                identity_public_key=parse_identity_key(field(entry, where, "identity_public_key", str), where),
            )
        )
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        raise InvalidParameter("[[nodes]] names must be distinct")
    keys = [node.curve_public_key for node in nodes]
    if len(set(keys)) != len(keys):
        raise InvalidParameter("[[nodes]] CURVE keys must be distinct")
    return CoordinatorConfig(
        listen=field(main, "coordinator", "listen", str),
        state_dir=resolve_path(base, field(main, "coordinator", "state_dir", str)),
        curve_secret_key_file=resolve_path(base, field(main, "coordinator", "curve_secret_key_file", str)),
        task=task,
        nodes=tuple(nodes),
        evaluation_data=(
            resolve_path(base, field(task_table, "task", "evaluation_data", str))
            if "evaluation_data" in task_table
            else None
        ),
        evaluation_label_column=field(task_table, "task", "evaluation_label_column", str, "label"),
        transcript_file=(
            resolve_path(base, field(main, "coordinator", "transcript_file", str)) if "transcript_file" in main else None
        ),
    )


def _colluders(task_table: dict) -> int | float | None:
    """``max_colluders``: a count (integer) or a fraction of the node list (a number in [0, 1))."""
    if "max_colluders" not in task_table:
        return None
    value = field(task_table, "task", "max_colluders", (int, float))
    if isinstance(value, float) and not 0 <= value < 1:
        raise InvalidParameter("[task] max_colluders is a count (integer) or a fraction of the node list in [0, 1)")
    if isinstance(value, int) and value < 0:
        raise InvalidParameter("[task] max_colluders must not be negative")
    return value


def _model_options(options: dict) -> dict:
    cleaned = dict(options)
    if "hidden_layer_sizes" in cleaned:
        sizes = cleaned["hidden_layer_sizes"]
        if not isinstance(sizes, list) or not all(type(s) is int and s > 0 for s in sizes):
            raise InvalidParameter("[task] model_options.hidden_layer_sizes must be a list of positive integers")
        cleaned["hidden_layer_sizes"] = list(sizes)
    return cleaned


def _dp_settings(task_table: dict) -> DpSettings | None:
    """``[task.dp]``: epsilon for the whole task, delta (default 1e-5), clip_norm (default 1.0)."""
    if "dp" not in task_table:
        return None
    table = task_table["dp"]
    if not isinstance(table, dict):
        raise InvalidParameter("[task.dp] must be a table with epsilon, delta and clip_norm")
    return DpSettings.from_mapping(table)
