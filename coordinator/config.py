"""The coordinator's TOML config: where to listen, its keys, the task and the federation's nodes.

The file is checked against :data:`COORDINATOR_SCHEMA` before anything is
used: an unknown section or key (a typo) is a :class:`~securefed.errors.ConfigError`
naming the file, the key and the nearest valid one. See docs/deployment.md for
a complete, commented example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securefed.config_util import NUMBER, ConfigFile, Key, Section, Table, load_config, parse_identity_key, resolve_path
from securefed.dp.settings import DpSettings
from securefed.errors import ConfigError, InvalidParameter
from securefed.federation.computation import COMPUTE_KINDS, ComputationJob
from securefed.federation.task import DEFAULT_DEADLINES, STAGE_NAMES, NodeEntry, TaskDefinition
from securefed.metrics import MetricsListen, parse_listen
from securefed.preprocessing import PREPROCESSING_SECTION, features_from, preprocessing_from
from securefed.wire.keys import parse_public_key

__all__ = [
    "COORDINATOR_SCHEMA",
    "CoordinatorConfig",
    "check_task_options",
    "load_coordinator_config",
]

#: The coordinator config's schema: every section and key it may contain.
COORDINATOR_SCHEMA: dict[str, Section] = {
    "coordinator": Section(
        required=True,
        keys={
            "listen": Key(str, required=True),
            "state_dir": Key(str, required=True),
            "curve_secret_key_file": Key(str, required=True),
            "transcript_file": Key(str),
        },
    ),
    "task": Section(
        required=True,
        keys={
            "name": Key(str, required=True),
            "model": Key(str, required=True),
            "model_options": Key(dict),
            "features": Key((int, list), required=True, items=str),
            "classes": Key(list, items=int),
            "target": Key(str),
            "rounds": Key(int),
            "local_epochs": Key(int),
            "learning_rate": Key(NUMBER),
            "batch_size": Key(int),
            "min_nodes": Key(int),
            "max_nodes": Key(int),
            "threshold": Key(NUMBER),
            "neighbours": Key((str, int)),
            "expected_dropout": Key(NUMBER),
            "max_colluders": Key(NUMBER),
            "clip_norm": Key(NUMBER),
            "weight_cap": Key(int),
            "strategy": Key(str),
            "strategy_options": Key(dict),
            "evaluate": Key(bool),
            "masking": Key(bool),
            "evaluation_data": Key(str),
            "evaluation_label_column": Key(str),
        },
        tables={
            "dp": Section(
                keys={
                    "epsilon": Key(NUMBER, required=True),
                    "delta": Key(NUMBER),
                    "clip_norm": Key(NUMBER),
                    "unit": Key(str),
                    "expected_batch": Key(NUMBER),
                    "total_records": Key(int),
                }
            ),
            "preprocessing": PREPROCESSING_SECTION,
        },
    ),
    "deadlines": Section(keys={stage: Key(NUMBER) for stage in STAGE_NAMES}),
    "nodes": Section(
        array=True,
        required=True,
        keys={
            "name": Key(str, required=True),
            "curve_public_key": Key(str, required=True),
            "identity_public_key": Key(str, required=True),
        },
    ),
    # Optional Prometheus endpoint (docs/monitoring.md); no section, no endpoint.
    "metrics": Section(keys={"listen": Key(str, required=True)}),
    # model = "analytics": the computations to run, in order (docs/analytics.md).
    "computations": Section(array=True, keys={"kind": Key(str, required=True), "params": Key(dict, required=True)}),
}


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
    #: where to serve Prometheus metrics ([metrics] listen); None: no endpoint
    metrics: MetricsListen | None = None
    #: the config file this was read from
    source: Path | None = None

    @property
    def store_path(self) -> Path:
        return self.state_dir / "coordinator.sqlite"


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    """Read and check a coordinator config; raises :class:`ConfigError` naming the file and key at fault."""
    config = load_config(path, COORDINATOR_SCHEMA)
    return coordinator_config_from(config)


def coordinator_config_from(config: ConfigFile) -> CoordinatorConfig:
    """A :class:`CoordinatorConfig` from a file already checked against :data:`COORDINATOR_SCHEMA`."""
    main, table = config.table("coordinator"), config.table("task")
    deadlines = dict(DEFAULT_DEADLINES)
    deadline_table = config.table("deadlines")
    for stage in STAGE_NAMES:
        seconds = deadline_table.get(stage, None)
        if seconds is not None:
            if not seconds > 0:
                raise deadline_table.error(stage, f"must be a positive number of seconds, got {seconds!r}")
            deadlines[stage] = float(seconds)
    declared = features_from(table)
    features, names = (declared, None) if isinstance(declared, int) else (len(declared), declared)
    classes = _classes(table)
    threshold = table.get("threshold", None)
    neighbours = table.get("neighbours", "complete")
    if isinstance(neighbours, str) and neighbours not in ("complete", "auto"):
        raise table.error("neighbours", f'must be "complete", "auto" or an even integer, got {neighbours!r}')
    for key in ("rounds", "min_nodes", "max_nodes", "local_epochs", "batch_size", "weight_cap"):
        value = table.get(key, None)
        if value is not None and value < (0 if key == "local_epochs" else 1):
            raise table.error(key, f"must be {'non-negative' if key == 'local_epochs' else 'positive'}, got {value}")
    model_options = _model_options(table)
    model = table.get("model")
    computations = [{"kind": entry.get("kind"), "params": dict(entry.get("params"))} for entry in config.entries("computations")]
    if model == "analytics":
        if not computations:
            raise table.error(
                "model", 'an analytics task lists its computations in [[computations]] tables (kind = "mean", params = {...})'
            )
        if model_options:
            raise table.error(
                "model_options", "an analytics task takes its computations from [[computations]], not model_options"
            )
        model_options = {"computations": computations}
    elif computations:
        raise config.error(f'[[computations]] is for model = "analytics"; this task\'s model is {model!r}', "computations")
    rounds = table.get("rounds", None)
    if rounds is None and model not in COMPUTE_KINDS:
        raise table.error("rounds", "is required: how many training rounds to run")
    if model in COMPUTE_KINDS:
        if table.get("evaluation_data", None) is not None:
            raise table.error("evaluation_data", f"is for SGD models; a {model} task's model is evaluated with securefed predict")
        if rounds is None:
            try:
                rounds = ComputationJob(
                    model, model_options, features, classes, preprocessing_from(table, declared)
                ).expected_aggregations()
            except InvalidParameter as exc:
                raise table.error(None, f"is not a usable task: {exc}") from None
    # Unset training keys take the model kind's defaults, which train well on scaled features; the
    # TaskDefinition's own generic defaults (one epoch at 0.1) left a trial federation at chance.
    from securefed.learning.models import DEFAULT_TRAINING

    training = DEFAULT_TRAINING.get(table.get("model"), {"epochs": 1, "learning_rate": 0.1, "batch_size": 32})
    try:
        task = TaskDefinition(
            name=table.get("name"),
            model_kind=table.get("model"),
            n_features=features,
            classes=classes,
            rounds=rounds,
            model_options=model_options,
            epochs=table.get("local_epochs", training["epochs"]),
            learning_rate=float(table.get("learning_rate", training["learning_rate"])),
            batch_size=table.get("batch_size", training["batch_size"]),
            min_nodes=table.get("min_nodes", 3),
            max_nodes=table.get("max_nodes", 1000),
            threshold=threshold,
            neighbours=neighbours,
            expected_dropout=float(table.get("expected_dropout", 0.05)),
            max_colluders=_colluders(table),
            clip_norm=float(table.get("clip_norm", 10.0)),
            weight_cap=table.get("weight_cap", 100_000),
            strategy=table.get("strategy", "fedavg"),
            strategy_options=dict(table.get("strategy_options", {})),
            evaluate=table.get("evaluate", model not in COMPUTE_KINDS),
            masking=table.get("masking", True),
            deadlines=deadlines,
            dp=_dp_settings(table),
            feature_names=names,
            preprocessing=preprocessing_from(table, declared),
        )
    except ConfigError:
        raise
    except InvalidParameter as exc:
        raise table.error(None, f"is not a usable task: {exc}") from None
    nodes = []
    for entry in config.entries("nodes"):
        nodes.append(
            NodeEntry(
                name=entry.get("name"),
                curve_public_key=_curve_key(entry, "curve_public_key"),
                identity_public_key=_identity_key(entry),
            )
        )
    names_seen = [node.name for node in nodes]
    if len(set(names_seen)) != len(names_seen):
        twice = sorted({n for n in names_seen if names_seen.count(n) > 1})
        raise config.error(f"[[nodes]] names must be distinct; {twice} appear more than once", "nodes.name")
    keys = [node.curve_public_key for node in nodes]
    if len(set(keys)) != len(keys):
        raise config.error("[[nodes]] CURVE keys must be distinct (two entries share one)", "nodes.curve_public_key")
    evaluation = table.get("evaluation_data", None)
    transcript = main.get("transcript_file", None)
    return CoordinatorConfig(
        listen=main.get("listen"),
        state_dir=resolve_path(config.base, main.get("state_dir")),
        curve_secret_key_file=resolve_path(config.base, main.get("curve_secret_key_file")),
        task=task,
        nodes=tuple(nodes),
        evaluation_data=resolve_path(config.base, evaluation) if evaluation is not None else None,
        evaluation_label_column=table.get("evaluation_label_column", "label"),
        transcript_file=resolve_path(config.base, transcript) if transcript is not None else None,
        metrics=_metrics(config, main.get("listen")),
        source=config.file,
    )


def _metrics(config: ConfigFile, endpoint: str) -> MetricsListen | None:
    """``[metrics] listen``, checked; it must not take the coordinator's own ZeroMQ port."""
    if "metrics" not in config.raw:
        return None
    table = config.table("metrics")
    try:
        listen = parse_listen(table.get("listen"))
    except InvalidParameter as exc:
        raise table.error("listen", str(exc)) from None
    scheme, _, address = endpoint.partition("://")
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    wildcard = ("*", "0.0.0.0", "::")
    if scheme == "tcp" and port == str(listen.port) and (host == listen.host or host in wildcard or listen.host in wildcard):
        raise table.error(
            "listen", f"= {str(listen)!r} takes the port of [coordinator] listen ({endpoint}); give the metrics another port"
        )
    return listen


def check_task_options(config: CoordinatorConfig) -> None:
    """The deeper checks that need the learning code (slow to import): the model kind, its options, the
    strategy and its options. ``securefed check`` runs them; the daemon fails on them at start anyway."""
    from securefed.config_util import nearest
    from securefed.learning.models import MODEL_KINDS, make_adapter
    from securefed.learning.strategies import STRATEGIES, make_strategy

    task = config.task
    where = f"{config.source}: [task]" if config.source is not None else "[task]"
    if task.is_computation:
        return  # trees and analytics: TaskDefinition has built the computation from its options already
    if task.model_kind not in MODEL_KINDS:
        known = [*MODEL_KINDS, *COMPUTE_KINDS]
        guess = nearest(task.model_kind, known)
        hint = f"did you mean `{guess}`?" if guess else f"valid models: {', '.join(known)}"
        raise ConfigError(f"{where} model {task.model_kind!r} is unknown; {hint}", config.source, "task.model", guess)
    try:
        make_adapter(task.model_kind, task.n_features, task.classes, **task.model_options)
    except InvalidParameter as exc:
        raise ConfigError(f"{where} model_options: {exc}", config.source, "task.model_options") from None
    if task.strategy not in STRATEGIES:
        guess = nearest(task.strategy, list(STRATEGIES))
        hint = f"did you mean `{guess}`?" if guess else f"valid strategies: {', '.join(STRATEGIES)}"
        raise ConfigError(f"{where} strategy {task.strategy!r} is unknown; {hint}", config.source, "task.strategy", guess)
    try:
        make_strategy(task.strategy, **task.strategy_options)
    except (InvalidParameter, TypeError) as exc:
        raise ConfigError(f"{where} strategy_options: {exc}", config.source, "task.strategy_options") from None


def _classes(table: Table) -> tuple[int, ...]:
    """The task's classes; () for ``target = "numeric"`` (an analytics task over a numeric label column)."""
    target = table.get("target", "classes")
    if target not in ("classes", "numeric"):
        raise table.error("target", f'must be "classes" (the label column holds class labels) or "numeric", got {target!r}')
    if target == "numeric":
        if "classes" in table:
            raise table.error("classes", 'goes with target = "classes"; a numeric target has no classes')
        if table.get("model") != "analytics":
            raise table.error("target", f'"numeric" is for analytics tasks; a {table.get("model")} task declares its classes')
        return ()
    if "classes" not in table:
        raise table.error(None, "lacks the required key 'classes' (or, for an analytics task, target = \"numeric\")")
    classes = table.get("classes")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise table.error("classes", f"must list at least two distinct integer labels, got {classes}")
    return tuple(classes)


def _curve_key(entry: Table, key: str) -> bytes:
    try:
        return parse_public_key(entry.get(key))
    except InvalidParameter as exc:
        raise entry.error(key, f"is not usable: {exc}") from None


def _identity_key(entry: Table) -> bytes:
    try:
        return parse_identity_key(entry.get("identity_public_key"), entry.where)
    except InvalidParameter:
        raise entry.error("identity_public_key", "must be 32 bytes in base64 (as printed by securefed keygen)") from None


def _colluders(table: Table) -> int | float | None:
    """``max_colluders``: a count (integer) or a fraction of the node list (a number in [0, 1))."""
    value = table.get("max_colluders", None)
    if value is None:
        return None
    if isinstance(value, float) and not 0 <= value < 1:
        raise table.error("max_colluders", "is a count (integer) or a fraction of the node list in [0, 1)")
    if isinstance(value, int) and value < 0:
        raise table.error("max_colluders", "must not be negative")
    return value


def _model_options(table: Table) -> dict[str, object]:
    cleaned = dict(table.get("model_options", {}))
    if "hidden_layer_sizes" in cleaned:
        sizes = cleaned["hidden_layer_sizes"]
        if not isinstance(sizes, list) or not all(type(s) is int and s > 0 for s in sizes):
            raise table.error("model_options", "hidden_layer_sizes must be a list of positive integers")
        cleaned["hidden_layer_sizes"] = list(sizes)
    return cleaned


def _dp_settings(table: Table) -> DpSettings | None:
    """``[task.dp]``: epsilon for the whole task, delta (default 1e-5), clip_norm (default 1.0), unit
    ("site", the default, or "record" with expected_batch and total_records)."""
    sub = table.sub("dp")
    if sub is None:
        return None
    try:
        return DpSettings.from_mapping(sub.data)
    except InvalidParameter as exc:
        raise sub.error(None, str(exc).removeprefix("[task.dp] ")) from None
