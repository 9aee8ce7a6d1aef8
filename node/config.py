"""The node's TOML config: coordinator endpoint and key, own keys, data, policy, roster.

The file is checked against :data:`NODE_SCHEMA` before anything is used: an
unknown section or key is a :class:`~securefed.errors.ConfigError` naming the
file, the key and the nearest valid one, so a typo such as ``max_epsion`` or
``[polcy]`` can never load as "no limit". See docs/deployment.md for a
complete, commented example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securefed.config_util import NUMBER, ConfigFile, Key, Section, Table, load_config, parse_identity_key, resolve_path
from securefed.errors import ConfigError, InvalidParameter
from securefed.federation.node import NodePolicy
from securefed.metrics import MetricsListen, parse_listen
from securefed.preprocessing import PREPROCESSING_SECTION, Preprocessing, features_from, preprocessing_from
from securefed.wire.keys import parse_public_key

__all__ = ["NODE_SCHEMA", "NodeConfig", "load_node_config"]

#: The node config's schema: every section and key it may contain.
NODE_SCHEMA: dict[str, Section] = {
    "node": Section(
        required=True,
        keys={
            "name": Key(str, required=True),
            "coordinator": Key(str, required=True),
            "coordinator_curve_public_key": Key(str, required=True),
            "curve_secret_key_file": Key(str, required=True),
            "identity_key_file": Key(str, required=True),
            "state_dir": Key(str, required=True),
        },
    ),
    "task": Section(
        required=True,
        keys={
            "name": Key(str, required=True),
            "features": Key((int, list), required=True, items=str),
            "classes": Key(list, items=int),
            "target": Key(str),
        },
        tables={"preprocessing": PREPROCESSING_SECTION},
    ),
    "data": Section(
        required=True,
        keys={
            "path": Key(str, required=True),
            "label_column": Key(str),
            "validation_fraction": Key(NUMBER),
        },
    ),
    "policy": Section(
        keys={
            "max_colluders": Key(NUMBER),
            "min_cohort": Key(int),
            "min_participants": Key(int),
            "min_threshold": Key(int),
            "min_threshold_fraction": Key(NUMBER),
            "allow_sparse_graph": Key(bool),
            "min_neighbours": Key(int),
            "allowed_models": Key(list, items=str),
            "max_rounds": Key(int),
            "allow_unmasked_benchmark": Key(bool),
            "max_epsilon": Key(NUMBER),
            "max_epsilon_total": Key(NUMBER),
            "delta": Key(NUMBER),
            "min_noise_multiplier": Key(NUMBER),
            "privacy_unit": Key(str),
            "allowed_computations": Key(list, items=str),
            "min_records": Key(int),
            "min_bin_width": Key(NUMBER),
            "max_queries": Key(int),
        },
    ),
    "roster": Section(
        array=True,
        required=True,
        keys={"name": Key(str, required=True), "identity_public_key": Key(str, required=True)},
    ),
    # Optional Prometheus endpoint (docs/monitoring.md); no section, no endpoint.
    "metrics": Section(keys={"listen": Key(str, required=True)}),
}


@dataclass(frozen=True)
class NodeConfig:
    name: str
    task: str
    features: int | tuple[str, ...]
    #: the agreed class labels; None when the task's target is numeric (target = "numeric": analytics only)
    classes: tuple[int, ...] | None
    coordinator: str
    coordinator_curve_public_key: bytes
    curve_secret_key_file: Path
    identity_key_file: Path
    state_dir: Path
    data_path: Path
    label_column: str
    validation_fraction: float
    policy: NodePolicy
    roster: dict[str, bytes]
    #: the preprocessing this site agreed to; rounds with any other are refused
    preprocessing: Preprocessing | None = None
    #: where to serve Prometheus metrics ([metrics] listen); None: no endpoint
    metrics: MetricsListen | None = None
    #: the config file this was read from
    source: Path | None = None

    @property
    def state_path(self) -> Path:
        return self.state_dir / "node.sqlite"

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.state_dir / "audit.log"


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and check a node config; raises :class:`ConfigError` naming the file and key at fault."""
    return node_config_from(load_config(path, NODE_SCHEMA))


def node_config_from(config: ConfigFile) -> NodeConfig:
    """A :class:`NodeConfig` from a file already checked against :data:`NODE_SCHEMA`."""
    main, task, data = config.table("node"), config.table("task"), config.table("data")
    features = features_from(task)
    classes = _task_classes(task)
    validation = float(data.get("validation_fraction", 0.2))
    if not 0 <= validation < 1:
        raise data.error("validation_fraction", f"must be in [0, 1), got {validation}")
    label_column = data.get("label_column", "label")
    if not label_column:
        raise data.error("label_column", "must name the label column")
    roster: dict[str, bytes] = {}
    for entry in config.entries("roster"):
        name = entry.get("name")
        if name in roster:
            raise entry.error("name", f"{name!r} is listed twice in the roster")
        try:
            roster[name] = parse_identity_key(entry.get("identity_public_key"), entry.where)
        except InvalidParameter:
            raise entry.error("identity_public_key", "must be 32 bytes in base64 (as printed by securefed keygen)") from None
    try:
        coordinator_key = parse_public_key(main.get("coordinator_curve_public_key"))
    except InvalidParameter as exc:
        raise main.error("coordinator_curve_public_key", f"is not usable: {exc}") from None
    return NodeConfig(
        name=main.get("name"),
        task=task.get("name"),
        features=features,
        classes=classes,
        coordinator=main.get("coordinator"),
        coordinator_curve_public_key=coordinator_key,
        curve_secret_key_file=resolve_path(config.base, main.get("curve_secret_key_file")),
        identity_key_file=resolve_path(config.base, main.get("identity_key_file")),
        state_dir=resolve_path(config.base, main.get("state_dir")),
        data_path=resolve_path(config.base, data.get("path")),
        label_column=label_column,
        validation_fraction=validation,
        policy=_policy(config.table("policy")),
        roster=roster,
        preprocessing=preprocessing_from(task, features),
        metrics=_metrics(config),
        source=config.file,
    )


def _task_classes(task: Table) -> tuple[int, ...] | None:
    """The agreed classes, or None when ``target = "numeric"`` (the label column holds numbers: analytics only)."""
    target = task.get("target", "classes")
    if target not in ("classes", "numeric"):
        raise task.error("target", f'must be "classes" (the label column holds class labels) or "numeric", got {target!r}')
    if target == "numeric":
        if "classes" in task:
            raise task.error("classes", 'goes with target = "classes"; a numeric target has no classes')
        return None
    if "classes" not in task:
        raise task.error(None, "lacks the required key 'classes' (or declare target = \"numeric\" for a numeric label column)")
    classes = task.get("classes")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise task.error("classes", f"must list at least two distinct integer labels, got {classes}")
    return tuple(classes)


def _metrics(config: ConfigFile) -> MetricsListen | None:
    """``[metrics] listen``, checked (no section: no endpoint)."""
    if "metrics" not in config.raw:
        return None
    table = config.table("metrics")
    try:
        return parse_listen(table.get("listen"))
    except InvalidParameter as exc:
        raise table.error("listen", str(exc)) from None


def _policy(table: Table) -> NodePolicy:
    for key in ("min_cohort", "min_threshold"):
        if key in table and table.get(key) < 1:
            raise table.error(key, f"must be at least 1, got {table.get(key)}")
    for key in ("min_participants", "min_neighbours"):
        if key in table and table.get(key) < 0:
            raise table.error(key, f"must not be negative, got {table.get(key)}")
    if "max_rounds" in table and table.get("max_rounds") < 1:
        raise table.error("max_rounds", f"must be at least 1, got {table.get('max_rounds')}")
    fraction = float(table.get("min_threshold_fraction", 0.5))
    if not 0 <= fraction < 1:
        raise table.error("min_threshold_fraction", f"must be in [0, 1), got {fraction}")
    delta = float(table.get("delta", 1e-5))
    if not 0 < delta < 1:
        raise table.error("delta", f"must be in (0, 1), got {delta}")
    noise = float(table.get("min_noise_multiplier", 0.0))
    if not noise >= 0:
        raise table.error("min_noise_multiplier", f"must not be negative, got {noise}")
    unit = table.get("privacy_unit", None)
    if unit is not None and unit not in ("site", "record"):
        raise table.error("privacy_unit", f'must be "site" or "record", got {unit!r}')
    for key in ("min_records", "max_queries"):
        if key in table and table.get(key) < 1:
            raise table.error(key, f"must be at least 1, got {table.get(key)}")
    width = float(table.get("min_bin_width", 0.0))
    if not width >= 0:
        raise table.error("min_bin_width", f"must not be negative, got {width}")
    computations = tuple(table.get("allowed_computations", []))
    try:
        from securefed.analytics import AnalyticsPolicy

        AnalyticsPolicy(frozenset(computations))
    except InvalidParameter as exc:
        raise table.error("allowed_computations", str(exc)) from None
    try:
        return NodePolicy(
            min_threshold=table.get("min_threshold", 2),
            min_cohort=table.get("min_cohort", 3),
            min_participants=table.get("min_participants", 0),
            min_threshold_fraction=fraction,
            allowed_models=tuple(table.get("allowed_models", ["sgd_logistic", "mlp"])),
            max_rounds=table.get("max_rounds", 1000),
            allow_unmasked_benchmark=table.get("allow_unmasked_benchmark", False),
            max_epsilon=_optional_positive(table, "max_epsilon"),
            max_epsilon_total=_optional_positive(table, "max_epsilon_total"),
            delta=delta,
            min_noise_multiplier=noise,
            privacy_unit=unit,
            max_colluders=_colluders(table),
            allow_sparse_graph=table.get("allow_sparse_graph", True),
            min_neighbours=table.get("min_neighbours", 0),
            allowed_computations=computations,
            min_records=table.get("min_records", 1),
            min_bin_width=width,
            max_queries=table.get("max_queries", 100),
        )
    except ConfigError:
        raise
    except InvalidParameter as exc:
        raise table.error(None, f"is not a usable policy: {exc}") from None


def _colluders(table: Table) -> int | float | None:
    """``max_colluders``: a count (integer) or a fraction of the roster (a number in [0, 1))."""
    value = table.get("max_colluders", None)
    if value is None:
        return None
    if isinstance(value, int):
        if value < 0:
            raise table.error("max_colluders", "must not be negative")
        return value
    if not 0 <= value < 1:
        raise table.error("max_colluders", "is a count (integer) or a fraction of the roster in [0, 1)")
    return float(value)


def _optional_positive(table: Table, name: str) -> float | None:
    value = table.get(name, None)
    if value is None:
        return None
    if not value > 0:
        raise table.error(name, f"must be positive, got {value}")
    return float(value)
