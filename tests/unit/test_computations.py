"""Trees and analytics through the real Coordinator and Nodes (in process, real secure aggregation).

What the daemons do for a compute task, checked end to end: the request travels in the round
spec (and so in the context hash), every node checks it against its own policy before it reads a
row, the coordinator learns only the sum, the result and the model are stored durably and the
computation resumes after a coordinator restart from the stored sums alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_iris

from securefed.analytics import AnalyticsPolicy
from securefed.errors import InvalidParameter, RemoteProtocolError
from securefed.federation.computation import ComputationJob, request_digest
from securefed.federation.compute_node import ComputeRefusal, ComputeResponder
from securefed.federation.messages import Refusal, RoundStart
from securefed.federation.node import NodePolicy
from securefed.federation.spec import parse_spec
from securefed.federation.task import STAGE_NAMES, TaskDefinition
from securefed.learning.data import LocalDataset
from securefed.learning.datasets import bundled_preprocessing
from securefed.trees import BoostingBuilder, BoostingWorker, TreeEnsemble
from securefed.trees.simulate import run as run_in_memory
from tests.inprocess import InProcessFederation

NAMES = [f"site{i}" for i in range(5)]
BOUNDS = {"low": [4.0, 2.0, 1.0, 0.0], "high": [8.0, 4.5, 7.0, 2.5]}


def _iris() -> tuple[np.ndarray, np.ndarray, list[LocalDataset]]:
    X, y = load_iris(return_X_y=True)
    order = np.argsort(np.arange(len(y)) * 7919 % len(y))  # a fixed shuffle
    X, y = X[order], y[order].astype(np.int64)
    parts = np.array_split(np.arange(len(y)), len(NAMES))
    return X, y, [LocalDataset(X[p], y[p], None) for p in parts]


def _task(kind: str, options: dict, **extra) -> TaskDefinition:
    return TaskDefinition(
        name=f"compute-{kind}",
        model_kind=kind,
        n_features=4,
        classes=(0, 1, 2),
        rounds=extra.pop("rounds", 1000),
        min_nodes=extra.pop("min_nodes", len(NAMES)),
        model_options=options,
        preprocessing=bundled_preprocessing("iris") if kind != "analytics" else None,
        evaluate=False,
        deadlines=dict.fromkeys(STAGE_NAMES, 5.0),
        **extra,
    )


POLICY = NodePolicy(allowed_models=("random_forest", "gbdt"), allowed_computations=("mean", "histogram", "count"))


def _mean_request(max_nodes: int = 10) -> dict:
    return {"kind": "mean", "params": {"max_nodes": max_nodes, "max_rows": 1000, **BOUNDS}}


def _finish(fed: InProcessFederation) -> None:
    fed.run_until(lambda f: f.coordinator.finished, max_steps=20_000)


def test_gbdt_over_the_daemons_equals_the_in_memory_run_tree_for_tree(tmp_path) -> None:
    X, y, datasets = _iris()
    task = _task("gbdt", {"n_estimators": 4, "max_depth": 2})
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=POLICY)
    _finish(fed)
    stored = TreeEnsemble.from_arrays(fed.store.computation_model())
    params = task.computation_job().params
    reference = run_in_memory(BoostingBuilder(params), [BoostingWorker(params, d.X, d.y) for d in datasets])
    for name, array in reference.to_arrays().items():
        np.testing.assert_array_equal(stored.to_arrays()[name], array, err_msg=name)
    result = fed.store.computation_result()
    assert result["kind"] == "gbdt" and result["trees"] == 12
    assert result["aggregations"] == fed.coordinator.completed_round == len(fed.store.rounds()) == 1 + 4 * 2
    assert (stored.predict(X) == y).mean() >= 0.9


def test_random_forest_over_the_daemons_classifies_iris(tmp_path) -> None:
    X, y, datasets = _iris()
    fed = InProcessFederation(
        tmp_path, NAMES, task=_task("random_forest", {"n_trees": 10, "max_depth": 4}), datasets=datasets, policy=POLICY
    )
    _finish(fed)
    model = TreeEnsemble.from_arrays(fed.store.computation_model())
    assert model.n_trees == 10
    assert (model.predict(X) == y).mean() >= 0.9
    assert [r.participants for r in fed.store.rounds()] == [5] * fed.coordinator.completed_round


def test_analytics_results_are_numpys_on_the_pooled_data_within_the_stated_bound(tmp_path) -> None:
    X, _, datasets = _iris()
    histogram = {
        "kind": "histogram",
        "params": {"max_nodes": 10, "max_rows": 1000, "columns": [2], "edges": [[1, 2, 3, 4, 5, 6, 7]]},
    }
    task = _task("analytics", {"computations": [_mean_request(), histogram]})
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=POLICY)
    _finish(fed)
    mean, hist = fed.store.computation_result()["results"]
    assert mean["count"] == len(X)
    assert np.all(np.abs(np.array(mean["mean"]) - X.mean(axis=0)) <= np.array(mean["error_bound"]["mean"]) + 1e-12)
    assert hist["histograms"][0]["counts"] == np.histogram(X[:, 2], bins=[1, 2, 3, 4, 5, 6, 7])[0].tolist()
    assert fed.store.computation_model() is None


def test_a_site_refuses_a_computation_outside_its_policy_and_says_why(tmp_path) -> None:
    _, _, datasets = _iris()
    strict = NodePolicy(allowed_computations=("count",))
    task = _task("analytics", {"computations": [_mean_request()]}, min_nodes=3)
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=strict)
    for _ in range(40):
        fed.step()
    refusals = [body for name in NAMES for _, body in fed.said(name, Refusal)]
    assert refusals and {r.reason for r in refusals} == {"computation-not-allowed"}
    assert "allowed_computations" in refusals[0].detail
    assert fed.store.computation_result() is None and not fed.store.rounds()
    assert {reason for _, _, reason, _ in fed.store.refusals()} == {"computation-not-allowed"}


def test_a_coordinator_restart_resumes_the_computation_from_its_stored_sums(tmp_path) -> None:
    _, _, datasets = _iris()
    task = _task("gbdt", {"n_estimators": 3, "max_depth": 2})
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=POLICY)
    fed.run_until(lambda f: f.coordinator.completed_round >= 3)
    fed.restart_coordinator()
    assert fed.coordinator.completed_round == 3 and fed.coordinator.job.aggregations == 3
    _finish(fed)
    params = task.computation_job().params
    reference = run_in_memory(BoostingBuilder(params), [BoostingWorker(params, d.X, d.y) for d in datasets])
    stored = TreeEnsemble.from_arrays(fed.store.computation_model())
    np.testing.assert_array_equal(stored.value, reference.value)
    assert fed.store.computation_result()["aggregations"] == 1 + 3 * 2


def test_a_node_never_answers_the_same_request_twice(tmp_path) -> None:
    _, _, datasets = _iris()
    task = _task("analytics", {"computations": [_mean_request()]})
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=POLICY)
    _finish(fed)
    node = fed.nodes[NAMES[0]]
    first = next(e for e in fed.hub.delivered[NAMES[0]] if isinstance(e.body, RoundStart))
    start = first.body
    again = RoundStart(start.node_id, start.cohort, start.spec, start.model)
    node._on_round_start(first.aggregation + 100, again)  # a fresh aggregation id, the same request
    assert fed.said(NAMES[0], Refusal)[-1][1].reason == "rerun"


def test_the_query_budget_caps_what_a_site_releases(tmp_path) -> None:
    _, _, datasets = _iris()
    count = {"kind": "count", "params": {"max_nodes": 10, "max_rows": 1000}}
    task = _task("analytics", {"computations": [_mean_request(), count]}, min_nodes=3)
    budget = NodePolicy(allowed_computations=("mean", "count"), max_queries=1)
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=budget)
    fed.run_until(lambda f: any(b.reason == "query-budget-exhausted" for n in NAMES for _, b in f.said(n, Refusal)))
    assert len(fed.store.rounds()) == 1 and fed.store.computation_result() is None


def test_the_cohort_never_exceeds_the_requests_wrap_bound(tmp_path) -> None:
    _, _, datasets = _iris()
    # five sites, a request whose wrap bound allows four: the coordinator invites four (the colluder
    # bound for a roster of five needs t = 4, so four is also the fewest it could run with)
    task = _task("analytics", {"computations": [_mean_request(max_nodes=4)]}, min_nodes=3)
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=POLICY)
    _finish(fed)
    assert fed.store.rounds()[0].participants == 4
    assert fed.store.computation_result()["results"][0]["count"] == sum(len(d.y) for d in datasets[:4])
    # the node's own check, whatever the coordinator does
    responder = ComputeResponder(datasets[0].X, datasets[0].y, POLICY.analytics_policy())
    spec = parse_spec(_spec(task, {"name": "analytics", "request": _mean_request(max_nodes=3)}))
    with pytest.raises(ComputeRefusal, match="max_nodes = 3") as refused:
        responder.vector(spec, cohort_size=4)
    assert refused.value.reason == "cohort-too-large"


def _spec(task: TaskDefinition, computation: dict) -> dict:
    return {
        "task": task.name,
        "round": 1,
        "phase": "compute",
        "model": {"kind": task.model_kind, "options": dict(task.model_options), "n_features": 4, "classes": [0, 1, 2]},
        "training": {"epochs": 1, "learning_rate": 0.1, "batch_size": 32},
        "encoding": {"clip_norm": 10.0, "fractional_bits": 0, "weight_cap": 100000},
        "secagg": {"threshold": 3, "neighbours": None, "masking": True},
        "dp": None,
        "computation": computation,
        **({"preprocessing": task.preprocessing.to_json()} if task.preprocessing is not None else {}),
    }


def test_a_node_refuses_tree_requests_that_are_not_the_tasks() -> None:
    _, _, datasets = _iris()
    task = _task("gbdt", {"n_estimators": 2, "max_depth": 2})
    job = task.computation_job()
    request = job.request()
    responder = ComputeResponder(datasets[0].X, datasets[0].y, AnalyticsPolicy())
    assert responder.vector(parse_spec(_spec(task, request)), 5).dtype == np.uint32
    tampered = json.loads(json.dumps(request))
    tampered["request"]["params"]["learning_rate"] = 0.9
    with pytest.raises(ComputeRefusal) as refused:
        responder.vector(parse_spec(_spec(task, tampered)), 5)
    assert refused.value.reason == "params-mismatch"
    with pytest.raises(ComputeRefusal) as refused:
        responder.vector(parse_spec(_spec(task, {"name": "analytics", "request": _mean_request()})), 5)
    assert refused.value.reason == "computation-mismatch"


def test_the_request_is_bound_into_the_spec_and_only_the_compute_phase_carries_one() -> None:
    task = _task("analytics", {"computations": [_mean_request()]})
    computation = {"name": "analytics", "request": _mean_request()}
    raw = _spec(task, computation)
    assert parse_spec(raw).to_json()["computation"] == computation
    for broken in ({**raw, "phase": "train"}, {**raw, "computation": None}, {**raw, "computation": {"name": "analytics"}}):
        with pytest.raises(RemoteProtocolError):
            parse_spec(broken)
    other = {"name": "analytics", "request": _mean_request(max_nodes=11)}
    assert request_digest(computation) != request_digest(other)


def test_compute_tasks_refuse_dp_and_bad_options_when_defined() -> None:
    with pytest.raises(InvalidParameter, match="not available"):
        _task("random_forest", {}, dp={"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0})
    with pytest.raises(InvalidParameter, match="n_tres"):
        _task("random_forest", {"n_tres": 5})
    with pytest.raises(InvalidParameter, match="minmax"):
        TaskDefinition(name="t", model_kind="gbdt", n_features=4, classes=(0, 1), rounds=10)
    with pytest.raises(InvalidParameter, match="computation #1"):
        _task("analytics", {"computations": [{"kind": "mean", "params": {"max_nodes": 0}}]})


def test_a_refused_sum_leaves_the_job_where_it_was() -> None:
    job = ComputationJob("gbdt", {"n_estimators": 2, "max_depth": 2}, 4, (0, 1, 2), bundled_preprocessing("iris"))
    before = job.request()
    with pytest.raises(Exception):
        job.receive(np.full(job.vector_length(), 0xFFFFFFFF, dtype=np.uint32), 5)  # negative class counts
    rebuilt = ComputationJob("gbdt", {"n_estimators": 2, "max_depth": 2}, 4, (0, 1, 2), bundled_preprocessing("iris"))
    assert rebuilt.request() == before


def test_quantile_bins_sit_at_the_cohorts_quantiles_found_by_secure_aggregation(tmp_path) -> None:
    X, y, datasets = _iris()
    task = _task("random_forest", {"n_trees": 6, "max_depth": 4, "n_bins": 8, "bins": "quantiles"})
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=POLICY)
    _finish(fed)
    result = fed.store.computation_result()
    assert result["bins"] == "quantiles" and result["binning_aggregations"] >= 1
    model = TreeEnsemble.from_arrays(fed.store.computation_model())
    expected = np.quantile(X, [i / 8 for i in range(1, 8)], axis=0, method="lower").T
    cell = (np.array(model.bins.high) - np.array(model.bins.low)) / 4096
    assert np.all(np.abs(model.bins.thresholds() - expected) <= cell[:, None] / 2 + 1e-9)
    assert (model.predict(X) == y).mean() >= 0.9


def test_a_node_answers_only_the_quantile_step_its_task_derives() -> None:
    _, _, datasets = _iris()
    task = _task("random_forest", {"n_trees": 4, "bins": "quantiles"})
    job = task.computation_job()
    request = job.request()
    assert request["request"]["kind"] == "quantiles"
    responder = ComputeResponder(datasets[0].X, datasets[0].y, AnalyticsPolicy())
    assert responder.vector(parse_spec(_spec(task, request)), 5).dtype == np.uint32
    finer = json.loads(json.dumps(request))
    finer["request"]["params"]["resolution"] = [r / 1000 for r in finer["request"]["params"]["resolution"]]
    with pytest.raises(ComputeRefusal) as refused:
        responder.vector(parse_spec(_spec(task, finer)), 5)
    assert refused.value.reason == "params-mismatch"
    uniform = _task("random_forest", {"n_trees": 4})
    with pytest.raises(ComputeRefusal) as refused:
        responder.vector(parse_spec(_spec(uniform, request)), 5)
    assert refused.value.reason == "computation-mismatch"
    strict = ComputeResponder(datasets[0].X, datasets[0].y, AnalyticsPolicy(min_bin_width=1.0))
    with pytest.raises(ComputeRefusal) as refused:
        strict.vector(parse_spec(_spec(task, request)), 5)
    assert refused.value.reason == "bins-too-narrow"


def test_the_phase_gauge_shows_a_running_compute_step(tmp_path) -> None:
    from securefed.metrics import CoordinatorMetrics

    _, _, datasets = _iris()
    task = _task("analytics", {"computations": [_mean_request()]})
    fed = InProcessFederation(tmp_path, NAMES, task=task, datasets=datasets, policy=POLICY)
    metrics = CoordinatorMetrics()
    idle = dict(metrics.samples(fed.coordinator, None, fed.store)["securefed_coordinator_phase"])
    assert idle[("compute",)] == 0.0 and idle[("idle",)] == 1.0  # the series exists before any step runs
    fed.run_until(lambda f: f.coordinator.current is not None)
    running = dict(metrics.samples(fed.coordinator, None, fed.store)["securefed_coordinator_phase"])
    assert running[("compute",)] == 1.0 and running[("idle",)] == 0.0
