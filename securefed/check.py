"""``securefed check --config FILE``: validate a node or coordinator config without starting anything.

The kind of file is told from its sections (``[node]``/``[[roster]]`` or
``[coordinator]``/``[[nodes]]``). The whole file is checked against that
kind's schema (unknown sections and keys, types, required keys), then what it
describes is summarised: the task, the roster or node list, the policy
bounds (with the colluder bound and the smallest safe threshold it implies),
the key files and the data file (its rows and columns, and whether they fit
the task) when they are readable here. Exit 0 when usable, 2 (with the error)
when not. Files that are absent on this machine (keys, data) are reported,
not counted as errors: a config is often checked before it is deployed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from securefed.config_util import load_toml
from securefed.errors import ConfigError, InvalidParameter, SecureFedError

if TYPE_CHECKING:
    from securefed.dp.settings import DpSettings
    from securefed.federation.task import TaskDefinition
    from securefed.metrics import MetricsListen
    from securefed.preprocessing import Preprocessing

__all__ = ["check_config", "config_kind"]


def config_kind(raw: dict, file: Path | str) -> str:
    """``"node"`` or ``"coordinator"``, told from the file's sections; :class:`ConfigError` if neither."""
    node = any(name in raw for name in ("node", "roster"))
    coordinator = any(name in raw for name in ("coordinator", "nodes"))
    if node and not coordinator:
        return "node"
    if coordinator and not node:
        return "coordinator"
    if node and coordinator:
        raise ConfigError(
            f"{file}: has both node sections ([node], [[roster]]) and coordinator sections ([coordinator], "
            "[[nodes]]); a config file is one or the other",
            file,
        )
    raise ConfigError(
        f"{file}: cannot tell what this config is for: a node config has [node] and [[roster]], "
        "a coordinator config has [coordinator] and [[nodes]]",
        file,
    )


def check_config(path: str | Path, out: TextIO | None = None) -> int:
    """Check a config file and print what it describes; 0 if usable, 2 (error printed) if not."""
    out = out or sys.stdout
    file = Path(path).expanduser().resolve()
    try:
        kind = config_kind(load_toml(file), file)
        problems = _check_node(file, out) if kind == "node" else _check_coordinator(file, out)
    except SecureFedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    print("OK: the config is usable", file=out)
    return 0


def _threshold_line(population: int, setting: int | float | None, who: str) -> str:
    from securefed.secagg.bounds import minimum_safe_threshold, resolve_colluders

    c = resolve_colluders(setting, population)
    t = minimum_safe_threshold(population, c)
    source = "default max(1, ceil(N/5))" if setting is None else f"max_colluders = {setting!r}"
    head = f"colluders:     c = {c} ({source}, N = {population} {who}); smallest safe threshold t = {t} (2t > N + c = {population + c})"
    if t > population:
        return f"{head}: more than the {population}, so no round can ever finish"
    return f"{head}: every round needs {t} of the {population} to finish, {population - t} may drop"


def _impossible(file: Path, population: int, setting: int | float | None, who: str) -> list[str]:
    from securefed.secagg.bounds import minimum_safe_threshold, resolve_colluders

    c = resolve_colluders(setting, population)
    t = minimum_safe_threshold(population, c)
    if t <= population:
        return []
    return [f"{file}: no round can run: {c} colluders among {population} {who} need a threshold of {t} (2t > N + c)"]


def _metrics_line(listen: MetricsListen | None) -> str:
    if listen is None:
        return "metrics:       no Prometheus endpoint (no [metrics] section)"
    where = "loopback only" if listen.loopback else "plain HTTP: keep it on a management network"
    return f"metrics:       Prometheus endpoint {listen.url} ({where})"


def _describe_preprocessing(preprocessing: Preprocessing | None) -> str:
    return "none (raw features)" if preprocessing is None else preprocessing.describe()


def _check_data(
    out: TextIO,
    path: Path,
    label_column: str,
    features: int | Sequence[str],
    classes: Sequence[int] | None,
    what: str = "data",
) -> list[str]:
    from securefed.learning.data import load_local_dataset

    if not path.exists():
        print(f"{what + ':':<15}{path}: not found here (not checked)", file=out)
        return []
    # The count-only warning is printed below in plain words, not as a log line.
    logging.getLogger("securefed.data").disabled = True
    try:
        dataset = load_local_dataset(path, label_column=label_column, features=features, classes=classes)
    except InvalidParameter as exc:
        print(f"{what + ':':<15}{path}: NOT USABLE", file=out)
        return [str(exc)]
    finally:
        logging.getLogger("securefed.data").disabled = False
    columns = (
        f"columns {', '.join(dataset.feature_names[:6])}{', ...' if dataset.n_features > 6 else ''}"
        if dataset.feature_names
        else "no column names"
    )
    if classes is None:
        spread = f"numeric target in [{float(dataset.y.min()):g}, {float(dataset.y.max()):g}]"
    else:
        spread = f"rows per class { {int(c): int((dataset.y == c).sum()) for c in classes} }"
    print(
        f"{what + ':':<15}{path}: {dataset.n_samples} rows, {dataset.n_features} features + label {label_column!r} "
        f"({columns}); {spread}",
        file=out,
    )
    if isinstance(features, int):
        print(
            f"{'':<15}warning: the task declares only a feature count, so the column order cannot be checked; "
            "declare features = [names] to match columns by name",
            file=out,
        )
    else:
        print(f"{'':<15}columns matched to the task's feature names (their order in the file does not matter)", file=out)
    return []


def _check_key(out: TextIO, what: str, path: Path, loader: Callable[[Path], object]) -> list[str]:
    if not path.exists():
        print(f"{what + ':':<15}{path}: not found here (not checked)", file=out)
        return []
    try:
        loader(path)
    except SecureFedError as exc:
        print(f"{what + ':':<15}{path}: NOT USABLE", file=out)
        return [str(exc)]
    print(f"{what + ':':<15}{path}: ok", file=out)
    return []


def _check_node(file: Path, out: TextIO) -> list[str]:
    from node.config import load_node_config
    from securefed.crypto.identity import SigningKey
    from securefed.wire.keys import CurveKeyPair

    config = load_node_config(file)
    policy = config.policy
    roster_size = len(config.roster)
    print(f"node config:   {config.source}", file=out)
    print(f"node:          {config.name}, coordinator {config.coordinator}", file=out)
    features = (
        f"{config.features} features (count only: column order cannot be checked)"
        if isinstance(config.features, int)
        else f"{len(config.features)} named features"
    )
    target = "numeric target" if config.classes is None else f"classes {list(config.classes)}"
    print(f"task:          {config.task}: {features}, {target}", file=out)
    print(f"preprocessing: {_describe_preprocessing(config.preprocessing)}", file=out)
    listed = "listed" if config.name in config.roster else "NOT listed"
    print(f"roster:        {roster_size} members ({config.name} {listed})", file=out)
    problems = []
    if config.name not in config.roster:
        problems.append(f"{file}: [[roster]] must list this node ({config.name!r}) with its own identity key")
    print(_threshold_line(roster_size, policy.max_colluders, "roster members"), file=out)
    problems += _impossible(config.source or file, roster_size, policy.max_colluders, "roster members")
    print(
        f"policy:        invited cohort >= {policy.min_cohort} (min_cohort); survivors signed for >= "
        f"{policy.min_participants or 'threshold'} (min_participants); threshold >= {policy.min_threshold} "
        f"(min_threshold) and > {policy.min_threshold_fraction:g} of the neighbourhood (min_threshold_fraction)",
        file=out,
    )
    sparse = f"allowed, k >= {policy.min_neighbours}" if policy.allow_sparse_graph else "refused"
    print(
        f"{'':<15}sparse graph {sparse}; models {list(policy.allowed_models)}; rounds <= {policy.max_rounds}; "
        f"unmasked benchmark rounds {'allowed' if policy.allow_unmasked_benchmark else 'refused'}",
        file=out,
    )
    if policy.allowed_computations:
        print(
            f"{'':<15}analytics {list(policy.allowed_computations)}; aggregates over >= {policy.min_records} of this site's "
            f"records (min_records); bins >= {policy.min_bin_width:g} wide; <= {policy.max_queries} per task (max_queries)",
            file=out,
        )
    else:
        print(f"{'':<15}analytics refused (no allowed_computations)", file=out)
    if policy.requires_dp:
        limits = f"epsilon <= {policy.max_epsilon} per task" if policy.max_epsilon is not None else "no per-task limit"
        total = f", <= {policy.max_epsilon_total} for the site" if policy.max_epsilon_total is not None else ""
        print(
            f"privacy:       DP required: {limits}{total}, delta {policy.delta:g}, noise multiplier >= "
            f"{policy.min_noise_multiplier:g}"
            + (f"; privacy unit {policy.privacy_unit!r} only" if policy.privacy_unit else "; either privacy unit"),
            file=out,
        )
    else:
        print("privacy:       no epsilon limit: rounds without differential privacy are accepted", file=out)
    print(_metrics_line(config.metrics), file=out)
    problems += _check_key(out, "CURVE key", config.curve_secret_key_file, CurveKeyPair.load)
    problems += _check_key(out, "identity key", config.identity_key_file, SigningKey.load)
    problems += _check_data(out, config.data_path, config.label_column, config.features, config.classes)
    return problems


def _dp_plan_line(out: TextIO, task: TaskDefinition, dp: DpSettings, n: int, threshold: int) -> list[str]:
    """What the coordinator would plan with all ``n`` nodes: the noise multiplier the target costs, before a round runs."""
    from securefed.dp.mechanism import plan_record_skellam, plan_skellam
    from securefed.errors import InvalidParameter
    from securefed.learning.models import make_adapter

    honest = threshold - task.colluders(n)
    dimension = make_adapter(task.model_kind, task.n_features, task.classes, **task.model_options).parameter_count
    try:
        if dp.unit == "record":
            if dp.total_records is None or dp.expected_batch is None:  # refused by DpSettings.__post_init__
                raise InvalidParameter('[task.dp] unit = "record" needs total_records and expected_batch')
            plan = plan_record_skellam(
                dp.epsilon, dp.delta, task.rounds, dp.clip_norm, dimension, n, honest, dp.total_records, dp.expected_batch
            )
        else:
            plan = plan_skellam(dp.epsilon, dp.delta, task.rounds, dp.clip_norm, dimension, n, honest)
    except InvalidParameter as exc:
        return [f"no DP plan fits: {exc}"]
    print(
        f"DP plan:       with all {n} nodes: noise for t - c = {honest} honest survivors, noise multiplier "
        f"{plan.noise_multiplier:.3f} over {task.rounds} rounds of {dimension} parameters (scale 2^{plan.scale_bits})",
        file=out,
    )
    return []


def _check_coordinator(file: Path, out: TextIO) -> list[str]:
    from coordinator.config import check_task_options, load_coordinator_config
    from securefed.wire.keys import CurveKeyPair

    config = load_coordinator_config(file)
    check_task_options(config)
    task = config.task
    n = len(config.nodes)
    print(f"coordinator config: {config.source}", file=out)
    print(f"listen:        {config.listen}; state in {config.state_dir}", file=out)
    features = f"{len(task.feature_names)} named features" if task.feature_names else f"{task.n_features} features (count only)"
    plan = f"at most {task.rounds} secure aggregations" if task.is_computation else f"{task.rounds} rounds"
    target = f"classes {list(task.classes)}" if task.classes else "numeric target"
    print(f"task:          {task.name}: {task.model_kind}, {plan}, {features}, {target}", file=out)
    if task.is_computation:
        job = task.computation_job()
        if task.model_kind == "analytics":
            kinds = ", ".join(item["kind"] for item in task.model_options["computations"])
            print(f"computations:  {kinds} (in this order; each node must allow them in its allowed_computations)", file=out)
        else:
            bins = (
                "at secure quantiles"
                if task.model_options.get("bins") == "quantiles"
                else "equal width between the declared bounds"
            )
            print(f"computation:   {job.params.describe()}; bins {bins}", file=out)
    print(f"preprocessing: {_describe_preprocessing(task.preprocessing)}", file=out)
    print(f"nodes:         {n} ({', '.join(node.name for node in config.nodes[:8])}{', ...' if n > 8 else ''})", file=out)
    print(_threshold_line(n, task.max_colluders, "nodes listed"), file=out)
    threshold, neighbours = task.secagg_parameters(n, n)
    graph = "complete graph" if neighbours is None else f"{neighbours} neighbours per node"
    print(
        f"rounds:        threshold {threshold} with all {n} nodes ({graph}); waits for {task.min_nodes} connected (min_nodes)",
        file=out,
    )
    problems = []
    if threshold > n:
        problems.append(f"{file}: no round can run: {n} nodes are fewer than the threshold {threshold}")
    if task.dp is not None:
        if task.dp.unit == "record":
            print(
                f"privacy:       record level (DP-SGD across the sites): epsilon {task.dp.epsilon:g} for the task at delta "
                f"{task.dp.delta:g}; each record's gradient clipped to {task.dp.clip_norm:g}; each round samples each record "
                f"with probability {task.dp.sampling_rate:.4g} ({task.dp.expected_batch:g} of {task.dp.total_records} expected)",
                file=out,
            )
        else:
            print(
                f"privacy:       epsilon {task.dp.epsilon:g} for the task at delta {task.dp.delta:g}, clip norm {task.dp.clip_norm:g}",
                file=out,
            )
        if threshold <= n:
            problems += _dp_plan_line(out, task, task.dp, n, threshold)
    else:
        print("privacy:       no differential privacy", file=out)
    print(_metrics_line(config.metrics), file=out)
    problems += _check_key(out, "CURVE key", config.curve_secret_key_file, CurveKeyPair.load)
    if config.evaluation_data is not None:
        problems += _check_data(
            out,
            config.evaluation_data,
            config.evaluation_label_column,
            task.feature_names or task.n_features,
            task.classes,
            "evaluation",
        )
    return problems
