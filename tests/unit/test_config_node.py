"""The node's config loader is strict: every section and key misspelt, of the wrong type or missing is a
:class:`ConfigError` naming the file, the key and the nearest valid key (issue 12, item 1), so a typo can
never switch a site's privacy limit off. Also: ``securefed check`` on node configs, and
``load_node_config`` on its own in a fresh interpreter (the z85 import)."""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from node.config import NODE_SCHEMA, load_node_config
from securefed.cli import main as cli_main
from securefed.crypto.identity import SigningKey
from securefed.errors import ConfigError, InvalidParameter, SecureFedError
from securefed.learning.data import save_csv
from securefed.localfed import toml_value
from securefed.wire.keys import CurveKeyPair

ROOT = Path(__file__).resolve().parents[2]
SUBTABLES = ("preprocessing", "dp")


def write_toml(path: Path, config: dict) -> Path:
    """A TOML file from {section: {key: value}} ({section: [tables]} for [[section]]); sub-tables of a
    section (``preprocessing``, ``dp``) become [section.sub]."""
    lines: list[str] = []
    for name, body in config.items():
        if isinstance(body, list):
            for entry in body:
                lines += ["", f"[[{name}]]", *(f"{k} = {toml_value(v)}" for k, v in entry.items())]
            continue
        if not isinstance(body, dict):
            lines.insert(0, f"{name} = {toml_value(body)}")
            continue
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items() if not (k in SUBTABLES and isinstance(v, dict))]
        for sub, table in body.items():
            if sub in SUBTABLES and isinstance(table, dict):
                lines += ["", f"[{name}.{sub}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _b64(key: SigningKey) -> str:
    return base64.b64encode(key.public_bytes).decode()


@pytest.fixture(scope="module")
def keys() -> dict:
    return {
        "coordinator": CurveKeyPair.generate(),
        "curve": CurveKeyPair.generate(),
        "site-a": SigningKey.generate(),
        "site-b": SigningKey.generate(),
        "site-c": SigningKey.generate(),
    }


def full_node_config(keys: dict) -> dict:
    """A node config that sets every key the schema knows."""
    return {
        "node": {
            "name": "site-a",
            "coordinator": "tcp://127.0.0.1:7700",
            "coordinator_curve_public_key": keys["coordinator"].public.decode(),
            "curve_secret_key_file": "curve.key",
            "identity_key_file": "identity.pem",
            "state_dir": "state",
        },
        "task": {
            "name": "demo-task",
            "features": ["alpha", "beta", "gamma"],
            "classes": [0, 1],
            "preprocessing": {"scaler": "minmax", "min": [0.0, -1.0, 10.0], "max": [1.0, 1.0, 20.0], "clip": True},
        },
        "data": {"path": "data.csv", "label_column": "label", "validation_fraction": 0.25},
        "policy": {
            "max_colluders": 1,
            "min_cohort": 3,
            "min_participants": 3,
            "min_threshold": 2,
            "min_threshold_fraction": 0.5,
            "allow_sparse_graph": False,
            "min_neighbours": 4,
            "allowed_models": ["sgd_logistic"],
            "max_rounds": 50,
            "allow_unmasked_benchmark": False,
            "max_epsilon": 2.0,
            "max_epsilon_total": 5.0,
            "delta": 1e-6,
            "min_noise_multiplier": 0.5,
            "privacy_unit": "record",
        },
        "roster": [{"name": n, "identity_public_key": _b64(keys[n])} for n in ("site-a", "site-b", "site-c")],
        "metrics": {"listen": "127.0.0.1:9465"},
    }


@pytest.fixture
def base(keys: dict) -> dict:
    return full_node_config(keys)


def _misspell(name: str) -> str:
    """Drop one character from the middle: ``max_epsilon`` -> ``max_epsion``-like typos."""
    middle = len(name) // 2
    return name[:middle] + name[middle + 1 :]


def _every_key(schema=NODE_SCHEMA) -> list[tuple[tuple[str, ...], str]]:
    found = []

    def walk(path: tuple[str, ...], section) -> None:
        found.extend((path, key) for key in section.keys)
        for sub, table in section.tables.items():
            walk((*path, sub), table)

    for top, section in schema.items():
        walk((top,), section)
    return found


def _table(config: dict, path: tuple[str, ...]) -> dict:
    body = config[path[0]]
    if isinstance(body, list):
        body = body[0]
    for part in path[1:]:
        body = body[part]
    return body


def _rename(config: dict, path: tuple[str, ...], key: str, new: str) -> dict:
    changed = copy.deepcopy(config)
    table = _table(changed, path)
    table[new] = table.pop(key, 1.0)  # keys the full config leaves out (standard's mean, scale) take a number
    return changed


# --- the full config loads, and every value arrives ---------------------------------------------------


def test_a_config_with_every_key_loads(tmp_path: Path, base: dict, keys: dict) -> None:
    config = load_node_config(write_toml(tmp_path / "node.toml", base))
    assert config.name == "site-a" and config.task == "demo-task"
    assert config.features == ("alpha", "beta", "gamma") and config.classes == (0, 1)
    assert config.coordinator_curve_public_key == keys["coordinator"].public
    assert config.curve_secret_key_file == tmp_path / "curve.key"
    assert config.state_dir == tmp_path / "state" and config.data_path == tmp_path / "data.csv"
    assert config.validation_fraction == 0.25 and config.label_column == "label"
    assert set(config.roster) == {"site-a", "site-b", "site-c"}
    assert config.roster["site-b"] == keys["site-b"].public_bytes
    policy = config.policy
    assert (policy.max_colluders, policy.min_cohort, policy.min_participants, policy.min_threshold) == (1, 3, 3, 2)
    assert policy.allow_sparse_graph is False and policy.min_neighbours == 4
    assert policy.allowed_models == ("sgd_logistic",) and policy.max_rounds == 50
    assert (policy.max_epsilon, policy.max_epsilon_total, policy.delta, policy.min_noise_multiplier) == (2.0, 5.0, 1e-6, 0.5)
    assert policy.privacy_unit == "record"
    assert config.preprocessing is not None and config.preprocessing.param("min") == (0.0, -1.0, 10.0)
    assert config.source == tmp_path / "node.toml"


def test_defaults_when_optional_keys_are_absent(tmp_path: Path, base: dict) -> None:
    del base["policy"]
    del base["task"]["preprocessing"]
    del base["data"]["label_column"], base["data"]["validation_fraction"]
    base["task"]["features"] = 3
    config = load_node_config(write_toml(tmp_path / "node.toml", base))
    assert config.policy.max_epsilon is None and config.policy.min_participants == 0 and config.policy.min_cohort == 3
    assert config.preprocessing is None and config.features == 3
    assert config.label_column == "label" and config.validation_fraction == 0.2


def test_min_participants_reaches_the_client_policy(tmp_path: Path, base: dict) -> None:
    """The participation floor goes from [policy] through NodePolicy to the client's ClientPolicy."""
    config = load_node_config(write_toml(tmp_path / "node.toml", base))
    assert config.policy.client_policy().min_participants == 3


# --- every key and section misspelt: an error naming the file, the key and the nearest valid key ------------


@pytest.mark.parametrize(("path", "key"), _every_key(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
def test_every_misspelt_key_is_refused_with_the_nearest_valid_one(tmp_path: Path, base: dict, path, key) -> None:
    typo = _misspell(key)
    file = write_toml(tmp_path / "node.toml", _rename(base, path, key, typo))
    with pytest.raises(ConfigError) as caught:
        load_node_config(file)
    error = caught.value
    assert str(file) in str(error)
    assert repr(typo) in str(error) and f"did you mean `{key}`?" in str(error)
    assert error.suggestion == key and error.key == ".".join((*path, typo)) and error.file == file


@pytest.mark.parametrize("section", ["node", "task", "data", "policy", "roster"])
def test_every_misspelt_section_is_refused_with_the_nearest_valid_one(tmp_path: Path, base: dict, section: str) -> None:
    typo = _misspell(section)
    changed = {typo if name == section else name: body for name, body in base.items()}
    file = write_toml(tmp_path / "node.toml", changed)
    with pytest.raises(ConfigError) as caught:
        load_node_config(file)
    assert str(file) in str(caught.value) and f"unknown section {typo!r}" in str(caught.value)
    assert caught.value.suggestion == section


def test_the_issue_typos(tmp_path: Path, base: dict) -> None:
    """``max_epsion = 2.0`` and ``[polcy]`` used to load as "no limit"; ``label_colum`` was ignored."""
    cases = [
        (
            _rename(base, ("policy",), "max_epsilon", "max_epsion"),
            "[policy] unknown key 'max_epsion'; did you mean `max_epsilon`?",
        ),
        ({("polcy" if k == "policy" else k): v for k, v in base.items()}, "unknown section 'polcy'; did you mean [policy]?"),
        (
            _rename(base, ("data",), "label_column", "label_colum"),
            "[data] unknown key 'label_colum'; did you mean `label_column`?",
        ),
        (
            _rename(base, ("task",), "preprocessing", "preprocesing"),
            "[task] unknown section 'preprocesing'; did you mean [task.preprocessing]?",
        ),
    ]
    for config, message in cases:
        file = write_toml(tmp_path / "node.toml", config)
        with pytest.raises(ConfigError, match=r"^" + re.escape(str(file)) + ": ") as caught:
            load_node_config(file)
        assert message in str(caught.value)


def test_a_key_in_the_wrong_section_says_where_it_belongs(tmp_path: Path, base: dict) -> None:
    base["task"]["max_epsilon"] = base["policy"].pop("max_epsilon")
    with pytest.raises(ConfigError, match=r"\[task\] unknown key 'max_epsilon'; it belongs in \[policy\]"):
        load_node_config(write_toml(tmp_path / "node.toml", base))


def test_a_key_outside_any_section_says_where_it_belongs(tmp_path: Path, base: dict) -> None:
    base["max_epsilon"] = 1.0
    with pytest.raises(ConfigError, match=r"key 'max_epsilon' is outside any section; it belongs in \[policy\]"):
        load_node_config(write_toml(tmp_path / "node.toml", base))


def test_an_unknown_key_with_no_near_name_lists_the_valid_ones(tmp_path: Path, base: dict) -> None:
    base["data"]["zzzz"] = 1
    with pytest.raises(ConfigError, match=r"\[data\] unknown key 'zzzz'; valid here: path, label_column, validation_fraction"):
        load_node_config(write_toml(tmp_path / "node.toml", base))


def test_every_problem_is_listed_at_once(tmp_path: Path, base: dict) -> None:
    base["policy"]["max_epsion"] = base["policy"].pop("max_epsilon")
    base["data"]["label_colum"] = base["data"].pop("label_column")
    with pytest.raises(ConfigError) as caught:
        load_node_config(write_toml(tmp_path / "node.toml", base))
    text = str(caught.value)
    assert "`label_column`" in text and "`max_epsilon`" in text and "also:" in text


# --- wrong types --------------------------------------------------------------------------------------------


def _wrong_value(kinds: tuple[type, ...]) -> object:
    if str in kinds:
        return True if list not in kinds else 3.5
    if bool in kinds:
        return 1
    return "3"


@pytest.mark.parametrize(("path", "key"), _every_key(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
def test_every_key_of_the_wrong_type_is_refused(tmp_path: Path, base: dict, path, key) -> None:
    section = NODE_SCHEMA[path[0]]
    for part in path[1:]:
        section = section.tables[part]
    changed = copy.deepcopy(base)
    _table(changed, path)[key] = _wrong_value(section.keys[key].kinds)
    file = write_toml(tmp_path / "node.toml", changed)
    with pytest.raises(ConfigError, match=rf"{key} must be") as caught:
        load_node_config(file)
    assert str(file) in str(caught.value)


@pytest.mark.parametrize(
    ("path", "key", "value", "message"),
    [
        (("policy",), "min_cohort", True, "min_cohort must be an integer, got true"),
        (("policy",), "max_epsilon", "2.0", "max_epsilon must be a number, got '2.0'"),
        (("policy",), "allowed_models", ["mlp", 3], "allowed_models must be a list of strings"),
        (("task",), "classes", [0, 1.5], "classes must be a list of integers"),
        (("task",), "features", ["a", 2, "c"], "features must be a list of strings"),
        (("data",), "validation_fraction", True, "validation_fraction must be a number"),
    ],
)
def test_wrong_types_say_what_is_expected(tmp_path: Path, base: dict, path, key, value, message) -> None:
    _table(base, path)[key] = value
    with pytest.raises(ConfigError, match=message):
        load_node_config(write_toml(tmp_path / "node.toml", base))


def test_a_single_roster_table_must_be_a_list(tmp_path: Path, base: dict) -> None:
    path = tmp_path / "node.toml"
    write_toml(path, {k: v for k, v in base.items() if k != "roster"})
    path.write_text(path.read_text() + '\n[roster]\nname = "site-a"\nidentity_public_key = "x"\n')
    with pytest.raises(ConfigError, match=r"\[roster\] must be written \[\[roster\]\]"):
        load_node_config(path)


# --- missing required sections and keys ---------------------------------------------------------------------


@pytest.mark.parametrize("section", [name for name, s in NODE_SCHEMA.items() if s.required])
def test_a_missing_required_section_is_named(tmp_path: Path, base: dict, section: str) -> None:
    del base[section]
    with pytest.raises(ConfigError, match=rf"the required section \[+{section}\]+ is missing"):
        load_node_config(write_toml(tmp_path / "node.toml", base))


@pytest.mark.parametrize(
    ("path", "key"),
    [(p, k) for p, k in _every_key() if (NODE_SCHEMA[p[0]].tables[p[1]] if len(p) > 1 else NODE_SCHEMA[p[0]]).keys[k].required],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else v,
)
def test_a_missing_required_key_is_named(tmp_path: Path, base: dict, path, key) -> None:
    del _table(base, path)[key]
    with pytest.raises(ConfigError, match=rf"lacks the required key '{key}'") as caught:
        load_node_config(write_toml(tmp_path / "node.toml", base))
    assert caught.value.key == ".".join((*path, key))


def test_an_empty_roster_is_refused(tmp_path: Path, base: dict) -> None:
    path = write_toml(tmp_path / "node.toml", {k: v for k, v in base.items() if k != "roster"})
    path.write_text("roster = []\n" + path.read_text())  # a [[roster]] list with no entries
    with pytest.raises(ConfigError, match=r"\[\[roster\]\] needs at least one entry"):
        load_node_config(path)


# --- values out of range, keys unusable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "key", "value", "message"),
    [
        (("policy",), "delta", 1.5, r"\[policy\] delta must be in \(0, 1\)"),
        (("policy",), "max_colluders", -1, r"\[policy\] max_colluders must not be negative"),
        (("policy",), "max_colluders", 1.5, r"\[policy\] max_colluders is a count"),
        (("policy",), "max_epsilon", 0, r"\[policy\] max_epsilon must be positive"),
        (("policy",), "min_participants", -1, r"\[policy\] min_participants must not be negative"),
        (("policy",), "min_cohort", 0, r"\[policy\] min_cohort must be at least 1"),
        (("policy",), "min_threshold_fraction", 1.0, r"\[policy\] min_threshold_fraction must be in \[0, 1\)"),
        (("data",), "validation_fraction", 1.0, r"\[data\] validation_fraction must be in \[0, 1\)"),
        (("task",), "classes", [1], r"\[task\] classes must list at least two distinct"),
        (("task",), "features", ["a", "a", "b"], r"\[task\] features names repeat"),
        (("task",), "features", 0, r"\[task\] features must be a positive count"),
        (("node",), "coordinator_curve_public_key", "short", r"\[node\] coordinator_curve_public_key is not usable"),
        (("task", "preprocessing"), "max", [1.0, -2.0, 20.0], r"\[task\.preprocessing\] minmax max must exceed min"),
        (("task", "preprocessing"), "min", [0.0, 1.0], r"\[task\.preprocessing\] min has 2 values but the task declares 3"),
    ],
)
def test_unusable_values_are_refused_by_name(tmp_path: Path, base: dict, path, key, value, message) -> None:
    _table(base, path)[key] = value
    file = write_toml(tmp_path / "node.toml", base)
    with pytest.raises(ConfigError, match=message) as caught:
        load_node_config(file)
    assert str(caught.value).startswith(f"{file}: ")


def test_roster_problems_are_refused(tmp_path: Path, base: dict) -> None:
    twice = copy.deepcopy(base)
    twice["roster"].append(dict(twice["roster"][0]))
    with pytest.raises(ConfigError, match=r"\[\[roster\]\] #4 name 'site-a' is listed twice"):
        load_node_config(write_toml(tmp_path / "a.toml", twice))
    bad = copy.deepcopy(base)
    bad["roster"][1]["identity_public_key"] = "bm90IGEga2V5"
    with pytest.raises(ConfigError, match=r"\[\[roster\]\] #2 identity_public_key must be 32 bytes in base64"):
        load_node_config(write_toml(tmp_path / "b.toml", bad))


def test_file_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_node_config(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("[node\nname = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_node_config(tmp_path / "broken.toml")


def test_config_error_is_an_invalid_parameter() -> None:
    """Callers that catch InvalidParameter or SecureFedError keep working."""
    assert issubclass(ConfigError, InvalidParameter) and issubclass(ConfigError, SecureFedError)
    assert issubclass(ConfigError, ValueError)


def test_load_node_config_alone_in_a_fresh_interpreter(tmp_path: Path, base: dict) -> None:
    """``wire/keys.py`` used ``zmq.utils.z85`` without importing it: loading a node config alone failed."""
    file = write_toml(tmp_path / "node.toml", base)
    code = f"from node.config import load_node_config; print(load_node_config({str(file)!r}).name)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "site-a"


# --- securefed check on node configs --------------------------------------------------------------------------


def _site(tmp_path: Path, base: dict, keys: dict, rows: int = 30) -> Path:
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(rows, 3)) * [1.0, 2.0, 10.0] + [0.0, -1.0, 10.0]
    y = np.arange(rows) % 2
    # columns in another order than the task declares: matched by name
    save_csv(tmp_path / "data.csv", X[:, [2, 0, 1]], y, ["gamma", "alpha", "beta"], "label")
    keys["curve"].save(tmp_path / "curve.key", tmp_path / "curve.pub")
    keys["site-a"].save(tmp_path / "identity.pem")
    return write_toml(tmp_path / "node.toml", base)


def test_check_reports_a_usable_node_config(tmp_path: Path, base: dict, keys: dict, capsys) -> None:
    file = _site(tmp_path, base, keys)
    assert cli_main(["check", "--config", str(file)]) == 0
    out = capsys.readouterr().out
    assert "node:          site-a, coordinator tcp://127.0.0.1:7700" in out
    assert "task:          demo-task: 3 named features, classes [0, 1]" in out
    assert "roster:        3 members (site-a listed)" in out
    assert "c = 1 (max_colluders = 1, N = 3 roster members); smallest safe threshold t = 3" in out
    assert "invited cohort >= 3 (min_cohort); survivors signed for >= 3 (min_participants)" in out
    assert "DP required: epsilon <= 2.0 per task, <= 5.0 for the site" in out
    assert "30 rows, 3 features + label 'label'" in out and "matched to the task's feature names" in out
    assert "minmax" in out and out.rstrip().endswith("OK: the config is usable")


def test_check_with_a_count_only_task_warns_about_column_order(tmp_path: Path, base: dict, keys: dict, capsys) -> None:
    base["task"]["features"] = 3
    file = _site(tmp_path, base, keys)
    assert cli_main(["check", "--config", str(file)]) == 0
    out = capsys.readouterr().out
    assert "count only: column order cannot be checked" in out and "the column order cannot be checked" in out


def test_check_refuses_a_misspelt_node_config_with_exit_2(tmp_path: Path, base: dict, keys: dict, capsys) -> None:
    file = _site(tmp_path, _rename(base, ("policy",), "max_epsilon", "max_epsion"), keys)
    assert cli_main(["check", "--config", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {file}: [policy] unknown key 'max_epsion'; did you mean `max_epsilon`?")


def test_check_refuses_data_that_does_not_fit_the_task(tmp_path: Path, base: dict, keys: dict, capsys) -> None:
    base["task"]["features"] = ["alpha", "beta", "delta"]
    base["task"]["preprocessing"]["min"] = 0.0
    base["task"]["preprocessing"]["max"] = 100.0
    file = _site(tmp_path, base, keys)
    assert cli_main(["check", "--config", str(file)]) == 2
    captured = capsys.readouterr()
    assert "NOT USABLE" in captured.out and "missing features ['delta']" in captured.err


def test_check_does_not_need_the_site_files(tmp_path: Path, base: dict, capsys) -> None:
    """A config is often checked before it is deployed: absent key and data files are reported, not errors."""
    file = write_toml(tmp_path / "node.toml", base)
    assert cli_main(["check", "--config", str(file)]) == 0
    assert capsys.readouterr().out.count("not found here (not checked)") == 3


def test_check_refuses_a_file_of_no_known_kind(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.toml").write_text('[task]\nname = "t"\n')
    assert cli_main(["check", "--config", str(tmp_path / "x.toml")]) == 2
    assert "cannot tell what this config is for" in capsys.readouterr().err


def test_a_participation_floor_above_the_invited_cohort_is_refused_at_the_start(tmp_path: Path, base: dict, keys: dict) -> None:
    """[policy] min_participants = 4 with a cohort of 3: the node refuses before it advertises a key."""
    from securefed.federation.messages import Envelope, Refusal, RoundStart
    from securefed.federation.node import Node, NodeState
    from securefed.federation.spec import RoundSpec
    from securefed.learning.data import LocalDataset
    from securefed.learning.models import make_adapter
    from tests.fakes import FakeNodeSocket

    base["policy"]["min_participants"] = 4
    del base["task"]["preprocessing"]
    config = load_node_config(write_toml(tmp_path / "node.toml", base))
    socket, state = FakeNodeSocket(), NodeState(tmp_path / "node.sqlite")
    data = LocalDataset(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2, config.features)
    node = Node("site-a", config.task, socket, keys["site-a"], config.roster, data, state, config.policy)
    spec = RoundSpec(
        task=config.task, round=1, phase="train", model_kind="sgd_logistic", model_options={}, n_features=3,
        classes=(0, 1), epochs=1, learning_rate=0.1, batch_size=8, clip_norm=10.0, fractional_bits=16, weight_cap=100,
        threshold=3, neighbours=None, masking=True, dp=None, feature_names=config.features,
    )  # fmt: skip
    cohort = ((1, "site-a"), (2, "site-b"), (3, "site-c"))
    model = make_adapter("sgd_logistic", 3, (0, 1)).initial_parameters()
    socket.inbox.append(Envelope(config.task, 1, RoundStart(1, cohort, spec.to_json(), model)))
    node.step(0)
    refusals = [e.body for e in socket.sent if isinstance(e.body, Refusal)]
    assert [r.reason for r in refusals] == ["weaker-than-policy"]
    assert "participation floor of 4 (min_participants)" in refusals[0].detail
    state.close()
