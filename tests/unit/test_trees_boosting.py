"""securefed.trees.boosting: parameters, base score, model-digest sync and the worker's refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from securefed.errors import InvalidParameter, LocalProtocolError, ProtocolAborted
from securefed.trees.binning import Bins
from securefed.trees.boosting import BoostingBuilder, BoostingParams, BoostingWorker, base_score
from securefed.trees.driver import State
from securefed.trees.histograms import secure_sum
from securefed.trees.model import TreeEnsemble
from securefed.trees.request import HistogramRequest
from securefed.trees.simulate import run

BINS = Bins((-3.0,) * 3, (3.0,) * 3, 32)


def data(seed: int, n: int = 300, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    score = X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return X, y


def params(**overrides: object) -> BoostingParams:
    base: dict = {
        "bins": BINS,
        "n_estimators": 10,
        "max_depth": 3,
        "learning_rate": 0.3,
        "max_rows_per_node": 1000,
        "max_nodes": 10,
    }
    return BoostingParams(**{**base, **overrides})


def split(p: BoostingParams, X: np.ndarray, y: np.ndarray, n_nodes: int = 3) -> list[BoostingWorker]:
    return [BoostingWorker(p, X[part], y[part]) for part in np.array_split(np.arange(len(y)), n_nodes)]


@pytest.mark.parametrize(("loss", "classes"), [("logistic", 2), ("softmax", 3)])
def test_classification_learns(loss: str, classes: int) -> None:
    X, y = data(0, classes=classes)
    p = params(loss=loss, n_classes=classes)
    builder = BoostingBuilder(p)
    model = run(builder, split(p, X, y), via_json=True)
    assert builder.state is State.DONE
    assert model.n_trees == 10 * p.n_outputs
    assert builder.aggregations <= 1 + 10 * 3
    X_test, y_test = data(1, classes=classes)
    assert np.mean(model.predict(X_test) == y_test) > 0.75
    assert model.predict_proba(X_test).shape == (len(y_test), classes)


def test_squared_error_regresses_and_needs_a_clip() -> None:
    with pytest.raises(InvalidParameter, match="grad_clip"):
        params(loss="squared_error")
    with pytest.raises(InvalidParameter, match="n_classes must be 0"):
        params(loss="squared_error", grad_clip=10.0, n_classes=2)
    rng = np.random.default_rng(2)
    X = rng.uniform(-2, 2, size=(400, 3))
    y = 3.0 * X[:, 0] - X[:, 1] + 0.1 * rng.normal(size=400)
    p = params(loss="squared_error", grad_clip=20.0, n_estimators=30)
    model = run(BoostingBuilder(p), split(p, X, y))
    residual = model.predict(X) - y
    assert np.mean(residual**2) < 0.1 * np.var(y)
    with pytest.raises(InvalidParameter, match="no class probabilities"):
        model.predict_proba(X)


def test_base_scores_follow_the_priors() -> None:
    assert base_score(params(), np.array([30, 10]))[0] == pytest.approx(math.log(10 / 30))
    soft = base_score(params(loss="softmax", n_classes=3), np.array([10, 20, 70]))
    assert soft.sum() == pytest.approx(0.0) and np.allclose(np.exp(soft) / np.exp(soft).sum(), [0.1, 0.2, 0.7])
    reg = params(loss="squared_error", grad_clip=8.0)
    assert base_score(reg, np.array([int(2.5 * 2**reg.grad_bits) * 4, 4]))[0] == pytest.approx(2.5)
    with pytest.raises(ProtocolAborted, match="no training rows"):
        base_score(params(), np.array([0, 0]))


def test_worker_follows_the_coordinators_model_by_digest() -> None:
    X, y = data(3)
    p = params(n_estimators=4)
    builder = BoostingBuilder(p)
    nodes = split(p, X, y)
    first_of_round: dict[int, dict] = {}
    request = builder.receive(secure_sum([w.compute(builder.request()) for w in nodes]))
    while isinstance(request, HistogramRequest) and request.round < 2:
        first_of_round.setdefault(request.round, request.to_json())
        request = builder.receive(secure_sum([w.compute(request) for w in nodes]))
    assert isinstance(request, HistogramRequest) and request.round == 2 and len(request.previous) == 1

    late = BoostingWorker(p, X[:50], y[:50])  # missed rounds 0 and 1 entirely
    with pytest.raises(InvalidParameter, match=r"out of step.*from 0 on"):
        late.compute(request)
    catch_up = builder.request_since(late.rounds_applied)
    assert len(catch_up.previous) == 2
    late.compute(json.loads(json.dumps(catch_up.to_json())))
    assert late.rounds_applied == 2

    behind = BoostingWorker(p, X[:50], y[:50])
    behind.compute(first_of_round[1])  # now holds round 0
    assert behind.rounds_applied == 1
    forged = json.loads(json.dumps(request.to_json()))
    forged["previous"][0][0]["value"][0][0] += 0.5  # the coordinator hands this node a different round 1
    with pytest.raises(InvalidParameter, match="model-digest-mismatch"):
        behind.compute(forged)
    assert behind.rounds_applied == 1  # a refused update leaves the node's state untouched
    behind.compute(request)
    assert behind.rounds_applied == 2


def test_worker_refusals() -> None:
    X, y = data(4)
    p = params()
    worker = BoostingWorker(p, X, y)
    builder = BoostingBuilder(p)
    base = builder.request().to_json()
    with pytest.raises(InvalidParameter, match="params-mismatch"):
        worker.compute({**base, "params": params(learning_rate=0.2).to_json()})
    request = builder.receive(secure_sum([worker.compute(base)]))
    assert isinstance(request, HistogramRequest)
    wire = request.to_json()
    with pytest.raises(InvalidParameter, match="every feature"):
        worker.compute({**wire, "features": [[0, 1]]})
    with pytest.raises(InvalidParameter, match="base score"):
        worker.compute({**wire, "base_score": [0.0, 1.0]})
    with pytest.raises(InvalidParameter, match="model-digest-mismatch"):
        worker.compute({**wire, "model_digest": "0" * 64})
    worker.compute(wire)
    with pytest.raises(InvalidParameter, match="base score differs"):
        worker.compute({**wire, "base_score": [wire["base_score"][0] + 1.0]})
    with pytest.raises(InvalidParameter, match="class indices"):
        BoostingWorker(p, X, y + 5)
    with pytest.raises(InvalidParameter, match="at most 10 per node"):
        BoostingWorker(params(max_rows_per_node=10), X, y)
    with pytest.raises(InvalidParameter, match="finite"):
        BoostingWorker(params(loss="squared_error", grad_clip=1.0), X, np.full(len(y), np.nan))


def test_params_validation_and_json() -> None:
    p = params(loss="softmax", n_classes=4, reg_lambda=0.5, gamma=0.1)
    assert BoostingParams.from_json(json.loads(json.dumps(p.to_json()))) == p
    for bad in (
        {"loss": "hinge"},
        {"loss": "softmax"},
        {"n_classes": 3},
        {"learning_rate": 0.0},
        {"max_depth": 0},
        {"reg_lambda": -1.0},
        {"grad_clip": float("inf")},
    ):
        with pytest.raises(InvalidParameter):
            params(**bad)
    assert "2^-" in p.describe()
    with pytest.raises(InvalidParameter, match="n_classes"):
        params(loss="softmax", n_classes=3.0)
    # a coordinator configured with 1 and a node with 1.0 agree on parameters and on the model digest
    X, y = data(6)
    as_int, as_float = params(learning_rate=1, reg_lambda=0), params(learning_rate=1.0, reg_lambda=0.0)
    assert as_int.to_json() == as_float.to_json() and json.dumps(as_int.to_json()) == json.dumps(as_float.to_json())
    run(BoostingBuilder(as_int), [BoostingWorker(as_float, X, y)], via_json=True)


def test_state_machine_from_base_to_done() -> None:
    X, y = data(5)
    p = params(n_estimators=1, max_depth=1)
    builder = BoostingBuilder(p)
    assert builder.state is State.AWAIT_BASE
    worker = BoostingWorker(p, X, y)
    nxt = builder.receive(secure_sum([worker.compute(builder.request())]))
    assert builder.state is State.AWAIT_HISTOGRAM and isinstance(nxt, HistogramRequest)
    model = builder.receive(secure_sum([worker.compute(nxt)]))
    assert isinstance(model, TreeEnsemble) and builder.state is State.DONE and builder.aggregations == 2
    with pytest.raises(LocalProtocolError):
        builder.request()
