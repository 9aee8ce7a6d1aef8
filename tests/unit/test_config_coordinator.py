"""The coordinator's config loader is strict like the node's: every section and key ([coordinator], [task],
[task.dp], [task.preprocessing], [deadlines], [[nodes]]) misspelt, of the wrong type or missing is a
:class:`ConfigError` naming the file, the key and the nearest valid key (issue 12, item 1). Also
``securefed check`` on coordinator configs and the deeper checks of model and strategy options."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import COORDINATOR_SCHEMA, check_task_options, load_coordinator_config
from securefed.cli import main as cli_main
from securefed.crypto.identity import SigningKey
from securefed.errors import ConfigError
from securefed.federation.task import DEFAULT_DEADLINES, STAGE_NAMES
from securefed.learning.data import save_csv
from securefed.wire.keys import CurveKeyPair
from tests.unit.test_config_node import _every_key, _misspell, _rename, _table, _wrong_value, write_toml

NAMES = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")


@pytest.fixture(scope="module")
def members() -> dict:
    return {name: (CurveKeyPair.generate(), SigningKey.generate()) for name in NAMES}


def full_coordinator_config(members: dict) -> dict:
    """A coordinator config that sets every key the schema knows."""
    return {
        "coordinator": {
            "listen": "tcp://127.0.0.1:7700",
            "state_dir": "state",
            "curve_secret_key_file": "curve.key",
            "transcript_file": "transcript.bin",
        },
        "task": {
            "name": "readmission",
            "model": "mlp",
            "model_options": {"hidden_layer_sizes": [8]},
            "features": ["age", "bmi", "glucose"],
            "classes": [0, 1],
            "rounds": 5,
            "local_epochs": 2,
            "learning_rate": 0.05,
            "batch_size": 16,
            "min_nodes": 4,
            "max_nodes": 10,
            "threshold": 4,
            "neighbours": "complete",
            "expected_dropout": 0.1,
            "max_colluders": 1,
            "clip_norm": 5.0,
            "weight_cap": 1000,
            "strategy": "fedadam",
            "strategy_options": {"learning_rate": 0.01},
            "evaluate": False,
            "masking": True,
            "evaluation_data": "test.csv",
            "evaluation_label_column": "outcome",
            "dp": {
                "epsilon": 8.0,
                "delta": 1e-6,
                "clip_norm": 0.5,
                "unit": "record",
                "expected_batch": 64,
                "total_records": 1000,
            },
            "preprocessing": {"scaler": "minmax", "min": {"age": 0, "bmi": 10, "glucose": 40}, "max": [120, 60, 400]},
        },
        "deadlines": {stage: 10 + i for i, stage in enumerate(STAGE_NAMES)},
        "nodes": [
            {
                "name": name,
                "curve_public_key": curve.public.decode(),
                "identity_public_key": base64.b64encode(identity.public_bytes).decode(),
            }
            for name, (curve, identity) in members.items()
        ],
        "metrics": {"listen": "127.0.0.1:9464"},
    }


def analytics_config(members: dict) -> dict:
    """The full config as an analytics task: [[computations]] instead of training, DP and evaluation keys."""
    config = full_coordinator_config(members)
    task = config["task"]
    for key in ("model_options", "dp", "evaluation_data", "evaluation_label_column"):
        del task[key]
    task["model"] = "analytics"
    config["computations"] = [
        {"kind": "count", "params": {"max_nodes": 10, "max_rows": 100}},
        {"kind": "mean", "params": {"max_nodes": 10, "max_rows": 100, "low": [0, 10, 40], "high": [120, 60, 400]}},
    ]
    return config


@pytest.fixture
def base(members: dict, request: pytest.FixtureRequest) -> dict:
    """The full config; for the [[computations]] keys and section, the analytics task that has them."""
    params = getattr(request.node, "callspec", None)
    wanted = params.params if params is not None else {}
    path, section = wanted.get("path"), wanted.get("section")
    if (path is not None and path[0] == "computations") or section == "computations":
        return analytics_config(members)
    return full_coordinator_config(members)


def test_an_analytics_task_takes_its_computations_in_order(tmp_path: Path, members: dict) -> None:
    raw = analytics_config(members)
    del raw["task"]["rounds"], raw["task"]["evaluate"]
    config = load_coordinator_config(write_toml(tmp_path / "c.toml", raw))
    task = config.task
    assert task.is_computation and [c["kind"] for c in task.model_options["computations"]] == ["count", "mean"]
    assert task.rounds == 2 and task.evaluate is False  # rounds derived: one aggregation each


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("computations"), "lists its computations in \\[\\[computations\\]\\]"),
        (lambda c: c["task"].__setitem__("model_options", {"x": 1}), "not model_options"),
        (lambda c: c["task"].__setitem__("evaluation_data", "t.csv"), "evaluation_data is for SGD models"),
        (lambda c: c["computations"][0].__setitem__("kind", "meen"), "did you mean 'mean'"),
        (lambda c: c["computations"][1]["params"].__setitem__("low", [0, 10]), "computation #2"),
        (lambda c: c["task"].__setitem__("dp", {"epsilon": 1.0}), "not available for analytics"),
        (lambda c: c["task"].__setitem__("model", "mlp"), 'is for model = "analytics"'),
    ],
)
def test_analytics_tasks_are_checked_when_loaded(tmp_path: Path, members: dict, change, message: str) -> None:
    config = analytics_config(members)
    change(config)
    with pytest.raises(ConfigError, match=message):
        load_coordinator_config(write_toml(tmp_path / "c.toml", config))


def test_a_training_task_still_needs_rounds(tmp_path: Path, base: dict) -> None:
    del base["task"]["rounds"]
    with pytest.raises(ConfigError, match="rounds is required"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", base))


def test_a_config_with_every_key_loads(tmp_path: Path, base: dict, members: dict) -> None:
    config = load_coordinator_config(write_toml(tmp_path / "c.toml", base))
    task = config.task
    assert config.listen == "tcp://127.0.0.1:7700" and config.state_dir == tmp_path / "state"
    assert config.transcript_file == tmp_path / "transcript.bin"
    assert config.evaluation_data == tmp_path / "test.csv" and config.evaluation_label_column == "outcome"
    assert (task.name, task.model_kind, task.n_features, task.classes, task.rounds) == ("readmission", "mlp", 3, (0, 1), 5)
    assert task.feature_names == ("age", "bmi", "glucose")
    assert task.model_options == {"hidden_layer_sizes": [8]} and task.strategy_options == {"learning_rate": 0.01}
    assert (task.epochs, task.learning_rate, task.batch_size, task.min_nodes, task.max_nodes) == (2, 0.05, 16, 4, 10)
    assert (task.threshold, task.neighbours, task.expected_dropout, task.max_colluders) == (4, "complete", 0.1, 1)
    assert (task.clip_norm, task.weight_cap, task.strategy, task.evaluate, task.masking) == (5.0, 1000, "fedadam", False, True)
    assert task.dp is not None and (task.dp.epsilon, task.dp.delta, task.dp.clip_norm) == (8.0, 1e-6, 0.5)
    assert (task.dp.unit, task.dp.expected_batch, task.dp.total_records, task.dp.sampling_rate) == ("record", 64.0, 1000, 0.064)
    assert task.deadlines == {stage: float(10 + i) for i, stage in enumerate(STAGE_NAMES)}
    assert task.preprocessing is not None
    assert task.preprocessing.param("min") == (0.0, 10.0, 40.0) and task.preprocessing.param("max") == (120.0, 60.0, 400.0)
    assert [node.name for node in config.nodes] == list(NAMES)
    assert config.nodes[1].curve_public_key == members["hospital-b"][0].public
    check_task_options(config)


def test_defaults_when_optional_keys_are_absent(tmp_path: Path, base: dict) -> None:
    required = {key for key, spec in COORDINATOR_SCHEMA["task"].keys.items() if spec.required}
    # rounds and classes: required for training (optional only for computations / a numeric target)
    base["task"] = {k: v for k, v in base["task"].items() if k in required or k in ("rounds", "classes")}
    base["task"]["model"] = "sgd_logistic"
    del base["deadlines"]
    del base["coordinator"]["transcript_file"]
    base["task"]["features"] = 3
    config = load_coordinator_config(write_toml(tmp_path / "c.toml", base))
    assert config.task.deadlines == DEFAULT_DEADLINES and config.task.dp is None and config.task.preprocessing is None
    assert config.task.feature_names is None and config.evaluation_data is None and config.transcript_file is None
    # unset training keys take the model kind's defaults (these train; one epoch at 0.1 left iris at chance)
    assert (config.task.epochs, config.task.learning_rate, config.task.batch_size) == (5, 0.5, 8)
    base["task"]["model"] = "mlp"
    config = load_coordinator_config(write_toml(tmp_path / "c.toml", base))
    assert (config.task.epochs, config.task.learning_rate, config.task.batch_size) == (5, 0.1, 8)


@pytest.mark.parametrize(
    ("path", "key"), _every_key(COORDINATOR_SCHEMA), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v
)
def test_every_misspelt_key_is_refused_with_the_nearest_valid_one(tmp_path: Path, base: dict, path, key) -> None:
    typo = _misspell(key)
    file = write_toml(tmp_path / "c.toml", _rename(base, path, key, typo))
    with pytest.raises(ConfigError) as caught:
        load_coordinator_config(file)
    assert str(caught.value).startswith(f"{file}: ")
    assert f"did you mean `{key}`?" in str(caught.value)
    assert caught.value.suggestion == key and caught.value.key == ".".join((*path, typo))


@pytest.mark.parametrize("section", list(COORDINATOR_SCHEMA))
def test_every_misspelt_section_is_refused_with_the_nearest_valid_one(tmp_path: Path, base: dict, section: str) -> None:
    typo = _misspell(section)
    file = write_toml(tmp_path / "c.toml", {typo if name == section else name: body for name, body in base.items()})
    with pytest.raises(ConfigError, match=rf"unknown section '{typo}'; did you mean \[+{section}\]+\?") as caught:
        load_coordinator_config(file)
    assert caught.value.suggestion == section


@pytest.mark.parametrize(("sub", "typo"), [("dp", "dpp"), ("preprocessing", "preprocesing")])
def test_misspelt_sub_tables_are_refused(tmp_path: Path, base: dict, sub: str, typo: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[task\] unknown section '{typo}'; did you mean \[task\.{sub}\]\?"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", _rename(base, ("task",), sub, typo)))


def test_a_sub_table_at_the_top_level_says_where_it_belongs(tmp_path: Path, base: dict) -> None:
    base["dp"] = base["task"].pop("dp")
    with pytest.raises(ConfigError, match=r"unknown section 'dp'; did you mean \[task\.dp\]\?"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", base))


@pytest.mark.parametrize(
    ("path", "key"), _every_key(COORDINATOR_SCHEMA), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v
)
def test_every_key_of_the_wrong_type_is_refused(tmp_path: Path, base: dict, path, key) -> None:
    section = COORDINATOR_SCHEMA[path[0]]
    for part in path[1:]:
        section = section.tables[part]
    kinds = section.keys[key].kinds
    _table(base, path)[key] = [1] if kinds == (dict,) else _wrong_value(kinds)
    file = write_toml(tmp_path / "c.toml", base)
    with pytest.raises(ConfigError, match=rf"{key} must be") as caught:
        load_coordinator_config(file)
    assert str(caught.value).startswith(f"{file}: ")


@pytest.mark.parametrize("section", [name for name, s in COORDINATOR_SCHEMA.items() if s.required])
def test_a_missing_required_section_is_named(tmp_path: Path, base: dict, section: str) -> None:
    del base[section]
    with pytest.raises(ConfigError, match=rf"the required section \[+{section}\]+ is missing"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", base))


def _required(schema, path, key) -> bool:
    section = schema[path[0]]
    for part in path[1:]:
        section = section.tables[part]
    return section.keys[key].required


@pytest.mark.parametrize(
    ("path", "key"),
    [(p, k) for p, k in _every_key(COORDINATOR_SCHEMA) if _required(COORDINATOR_SCHEMA, p, k)],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else v,
)
def test_a_missing_required_key_is_named(tmp_path: Path, base: dict, path, key) -> None:
    del _table(base, path)[key]
    with pytest.raises(ConfigError, match=rf"lacks the required key '{key}'"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", base))


@pytest.mark.parametrize(
    ("path", "key", "value", "message"),
    [
        (("deadlines",), "share", 0, r"\[deadlines\] share must be a positive number of seconds"),
        (("task", "dp"), "epsilon", -1.0, r"\[task\.dp\] epsilon must be a positive number"),
        (("task", "dp"), "delta", 1.0, r"\[task\.dp\] delta must be below 1"),
        (("task",), "max_colluders", 1.5, r"\[task\] max_colluders is a count"),
        (("task",), "max_colluders", -2, r"\[task\] max_colluders must not be negative"),
        (("task",), "neighbours", "sparse", r'\[task\] neighbours must be "complete", "auto"'),
        (("task",), "rounds", 0, r"\[task\] rounds must be positive"),
        (("task",), "classes", [0, 0], r"\[task\] classes must list at least two distinct"),
        (("task",), "threshold", 1.5, r"\[task\] is not a usable task: a fractional threshold must be in \(0, 1\)"),
        (("task",), "model_options", {"hidden_layer_sizes": [0]}, r"hidden_layer_sizes must be a list of positive"),
        (("task", "preprocessing"), "min", {"age": 0, "bmi": 10, "glucse": 40}, r"did you mean `glucose`\?"),
        (("task", "preprocessing"), "scaler", "zscore", r"scaler must be one of"),
    ],
)
def test_unusable_values_are_refused_by_name(tmp_path: Path, base: dict, path, key, value, message) -> None:
    _table(base, path)[key] = value
    file = write_toml(tmp_path / "c.toml", base)
    with pytest.raises(ConfigError, match=message) as caught:
        load_coordinator_config(file)
    assert str(caught.value).startswith(f"{file}: ")


def test_dp_without_epsilon_is_refused(tmp_path: Path, base: dict) -> None:
    del base["task"]["dp"]["epsilon"]
    with pytest.raises(ConfigError, match=r"\[task\.dp\] lacks the required key 'epsilon'"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", base))


def test_node_list_problems_are_refused(tmp_path: Path, base: dict) -> None:
    twice = copy.deepcopy(base)
    twice["nodes"][1]["name"] = "hospital-a"
    with pytest.raises(ConfigError, match=r"\[\[nodes\]\] names must be distinct; \['hospital-a'\]"):
        load_coordinator_config(write_toml(tmp_path / "a.toml", twice))
    same_key = copy.deepcopy(base)
    same_key["nodes"][1]["curve_public_key"] = same_key["nodes"][0]["curve_public_key"]
    with pytest.raises(ConfigError, match="CURVE keys must be distinct"):
        load_coordinator_config(write_toml(tmp_path / "b.toml", same_key))
    bad = copy.deepcopy(base)
    bad["nodes"][2]["curve_public_key"] = "not a key"
    with pytest.raises(ConfigError, match=r"\[\[nodes\]\] #3 curve_public_key is not usable"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", bad))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "sgd_logistc", r"model 'sgd_logistc' is unknown; did you mean `sgd_logistic`\?"),
        ("strategy", "fedadm", r"strategy 'fedadm' is unknown; did you mean `fedadam`\?"),
        ("model_options", {"hidden_layer_size": [8]}, r"model_options: unknown option\(s\) \['hidden_layer_size'\]"),
        ("strategy_options", {"learning_rte": 0.1}, r"strategy_options: unknown option\(s\) \['learning_rte'\]"),
    ],
)
def test_model_and_strategy_options_are_checked_by_check(tmp_path: Path, base: dict, key, value, message, capsys) -> None:
    base["task"][key] = value
    file = write_toml(tmp_path / "c.toml", base)
    with pytest.raises(ConfigError, match=message):
        check_task_options(load_coordinator_config(file))
    assert cli_main(["check", "--config", str(file)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {file}: [task] ")


def test_check_reports_a_usable_coordinator_config(tmp_path: Path, base: dict, capsys) -> None:
    CurveKeyPair.generate().save(tmp_path / "curve.key", tmp_path / "curve.pub")
    rng = np.random.default_rng(1)
    save_csv(tmp_path / "test.csv", rng.uniform(50, 60, size=(20, 3)), np.arange(20) % 2, ["glucose", "age", "bmi"], "outcome")
    file = write_toml(tmp_path / "c.toml", base)
    assert cli_main(["check", "--config", str(file)]) == 0
    out = capsys.readouterr().out
    assert "task:          readmission: mlp, 5 rounds, 3 named features, classes [0, 1]" in out
    assert "nodes:         4 (hospital-a, hospital-b, hospital-c, hospital-d)" in out
    assert "c = 1 (max_colluders = 1, N = 4 nodes listed); smallest safe threshold t = 3" in out
    assert "threshold 4 with all 4 nodes (complete graph)" in out
    assert "epsilon 8 for the task at delta 1e-06" in out
    assert "record level (DP-SGD across the sites)" in out and "probability 0.064 (64 of 1000 expected)" in out
    # the plan a round would run with: noise for t - c = 4 - 1 honest survivors
    assert re.search(
        r"DP plan: +with all 4 nodes: noise for t - c = 3 honest survivors, noise multiplier \d+\.\d{3} over 5 rounds", out
    ), out
    assert "CURVE key:     " in out and "test.csv: 20 rows, 3 features + label 'outcome'" in out
    assert out.rstrip().endswith("OK: the config is usable")


def test_check_refuses_a_misspelt_coordinator_config(tmp_path: Path, base: dict, capsys) -> None:
    file = write_toml(tmp_path / "c.toml", _rename(base, ("deadlines",), "masked_input", "masked_inptu"))
    assert cli_main(["check", "--config", str(file)]) == 2
    assert "[deadlines] unknown key 'masked_inptu'; did you mean `masked_input`?" in capsys.readouterr().err


def test_check_refuses_a_task_no_round_can_run(tmp_path: Path, base: dict, capsys) -> None:
    base["nodes"] = base["nodes"][:2]
    base["task"]["min_nodes"] = 1
    base["task"]["max_colluders"] = 2  # 2t > N + c = 4 needs t = 3 of the 2 nodes
    file = write_toml(tmp_path / "c.toml", base)
    assert cli_main(["check", "--config", str(file)]) == 2
    assert "no round can run" in capsys.readouterr().err
