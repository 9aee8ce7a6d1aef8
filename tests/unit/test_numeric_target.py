"""A numeric target: an analytics task over a label column that holds numbers, not classes.

Sites declare ``[task] target = "numeric"`` instead of ``classes`` (so do coordinators, for analytics
tasks only); the label column is read as finite float64; a regression over it matches numpy on the
pooled data; and each side refuses a round of the other kind.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.config import load_coordinator_config
from node.config import load_node_config
from securefed.errors import ConfigError, DataError, InvalidParameter
from securefed.federation.messages import Refusal
from securefed.federation.node import NodePolicy
from securefed.federation.task import STAGE_NAMES, TaskDefinition
from securefed.learning.data import LocalDataset, load_local_dataset, save_csv
from tests.inprocess import InProcessFederation
from tests.unit.test_config_coordinator import full_coordinator_config, members  # noqa: F401 - a fixture
from tests.unit.test_config_node import full_node_config, keys, write_toml  # noqa: F401 - keys is a fixture

NAMES = ["site-a", "site-b", "site-c", "site-d"]


def _sites(seed: int = 3) -> tuple[np.ndarray, np.ndarray, list[LocalDataset]]:
    rng = np.random.default_rng(seed)  # test data only
    X = rng.uniform(0, 10, size=(160, 3))
    y = 1.5 + X @ np.array([0.7, -1.2, 0.25]) + rng.normal(0, 0.3, size=160)  # continuous: 12.37, -3.5, ...
    return X, y, [LocalDataset(X[i::4], y[i::4], None) for i in range(4)]


def test_a_numeric_label_column_loads_as_numbers_and_a_class_task_still_refuses_it(tmp_path) -> None:
    X, y, _ = _sites()
    path = tmp_path / "site.csv"
    save_csv(path, X, y, ["a", "b", "c"], "target")
    data = load_local_dataset(path, label_column="target", features=["a", "b", "c"], classes=None)
    assert data.y.dtype == np.float64 and np.array_equal(data.y, y)
    with pytest.raises(DataError, match="is not an integer class"):
        load_local_dataset(path, label_column="target", features=["a", "b", "c"], classes=[0, 1])


def _task(**extra: object) -> TaskDefinition:
    params = {"max_nodes": 10, "max_rows": 1000, "low": [0, 0, 0], "high": [10, 10, 10], "y_low": -30, "y_high": 30}
    return TaskDefinition(
        name="numeric",
        model_kind="analytics",
        n_features=3,
        classes=(),
        rounds=10,
        min_nodes=4,
        model_options={"computations": [{"kind": "linear_regression", "params": params}]},
        evaluate=False,
        deadlines=dict.fromkeys(STAGE_NAMES, 5.0),
        **extra,  # type: ignore[arg-type]
    )


def test_a_regression_over_a_numeric_target_is_numpys_on_the_pooled_data(tmp_path) -> None:
    X, y, sites = _sites()
    policy = NodePolicy(allowed_computations=("linear_regression",))
    fed = InProcessFederation(tmp_path, NAMES, task=_task(), datasets=sites, policy=policy)
    for node in fed.nodes.values():
        node.numeric_target = True
    fed.run_until(lambda f: f.coordinator.finished, max_steps=3000)
    [fit] = fed.store.computation_result()["results"]
    design = np.column_stack([np.ones(len(y)), X])
    expected = np.linalg.lstsq(design, y, rcond=None)[0]
    assert fit["count"] == len(y)
    np.testing.assert_allclose([fit["intercept"], *fit["coefficients"]], expected, atol=1e-4)


def test_each_side_refuses_a_round_of_the_other_kind_of_target(tmp_path) -> None:
    _, _, sites = _sites()
    policy = NodePolicy(allowed_computations=("linear_regression",))
    fed = InProcessFederation(tmp_path, NAMES, task=_task(), datasets=sites, policy=policy)  # sites declare classes
    for _ in range(30):
        fed.step()
    assert {b.reason for n in NAMES for _, b in fed.said(n, Refusal)} == {"target-mismatch"}
    numeric = InProcessFederation(tmp_path / "2", NAMES, rounds=1)  # an SGD task at sites with a numeric target
    for node in numeric.nodes.values():
        node.numeric_target = True
    for _ in range(30):
        numeric.step()
    assert {b.reason for n in NAMES for _, b in numeric.said(n, Refusal)} == {"target-mismatch"}


def test_only_analytics_tasks_may_have_a_numeric_target() -> None:
    with pytest.raises(InvalidParameter, match="only analytics tasks"):
        TaskDefinition(name="t", model_kind="sgd_logistic", n_features=3, classes=(), rounds=1)


def test_configs_declare_a_numeric_target_instead_of_classes(tmp_path, members) -> None:  # noqa: F811
    config = full_coordinator_config(members)
    task = config["task"]
    for key in ("model_options", "dp", "evaluation_data", "evaluation_label_column", "classes"):
        del task[key]
    task["model"], task["target"] = "analytics", "numeric"
    config["computations"] = [{"kind": "count", "params": {"max_nodes": 10, "max_rows": 100}}]
    assert load_coordinator_config(write_toml(tmp_path / "c.toml", config)).task.classes == ()
    task["model"] = "mlp"
    with pytest.raises(ConfigError, match='"numeric" is for analytics tasks'):
        load_coordinator_config(write_toml(tmp_path / "c.toml", config))
    task["model"], task["classes"] = "analytics", [0, 1]
    with pytest.raises(ConfigError, match="goes with target"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", config))


def test_a_site_declares_a_numeric_target_instead_of_classes(tmp_path, keys) -> None:  # noqa: F811
    config = full_node_config(keys)
    del config["task"]["classes"]
    config["task"]["target"] = "numeric"
    assert load_node_config(write_toml(tmp_path / "n.toml", config)).classes is None
    del config["task"]["target"]
    with pytest.raises(ConfigError, match="lacks the required key 'classes'"):
        load_node_config(write_toml(tmp_path / "n.toml", config))
    config["task"]["target"] = "ordinal"
    with pytest.raises(ConfigError, match='must be "classes"'):
        load_node_config(write_toml(tmp_path / "n.toml", config))
