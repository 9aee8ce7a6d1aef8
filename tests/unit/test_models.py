"""Unit tests for :mod:`securefed.learning.models`.

Layout exactness (hypothesis), agreement with scikit-learn (both directions),
the training step being the gradient of the model scikit-learn evaluates,
training genuinely starting from the given parameters, evaluation counts,
nodes that lack classes, refusals, and the federated-vs-central quality bound
on digits.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.neural_network import MLPClassifier

from securefed.errors import InvalidParameter
from securefed.learning.datasets import load_bundled, train_test_split_stratified
from securefed.learning.models import (
    DEFAULT_TRAINING,
    MODEL_KINDS,
    EvalMetrics,
    MLPAdapter,
    SGDLogisticAdapter,
    make_adapter,
)
from securefed.learning.partition import iid

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


def toy_data(n: int = 60, n_features: int = 5, classes: tuple[int, ...] = (0, 1, 2), seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    y = np.array([classes[i % len(classes)] for i in range(n)], dtype=np.int64)
    X[:, 0] += y  # some signal
    return X, y


# --- layout ------------------------------------------------------------------------------------


@st.composite
def adapters(draw: st.DrawFn):
    kind = draw(st.sampled_from(MODEL_KINDS))
    n_features = draw(st.integers(1, 6))
    n_classes = draw(st.integers(2, 5))
    classes = draw(st.lists(st.integers(-50, 50), min_size=n_classes, max_size=n_classes, unique=True))
    if kind == "mlp":
        hidden = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        return make_adapter(kind, n_features, classes, hidden_layer_sizes=hidden)
    return make_adapter(kind, n_features, classes)


@given(data=st.data())
def test_round_trip_is_bit_exact(data: st.DataObject) -> None:
    adapter = data.draw(adapters())
    params = data.draw(hnp.arrays(np.float64, adapter.parameter_count, elements=FINITE))
    back = adapter.get_parameters(adapter.to_estimator(params))
    assert back.dtype == np.float64
    assert back.tobytes() == params.tobytes()


def test_parameter_counts_follow_scikit_learn_shapes() -> None:
    assert make_adapter("sgd_logistic", 4, [0, 1]).parameter_count == 4 + 1  # binary: one row
    assert make_adapter("sgd_logistic", 4, [0, 1, 2]).parameter_count == 3 * 4 + 3
    mlp = make_adapter("mlp", 4, [0, 1, 2], hidden_layer_sizes=(5, 6))
    assert mlp.parameter_count == 4 * 5 + 5 * 6 + 6 * 3 + 5 + 6 + 3
    assert make_adapter("mlp", 4, [0, 1], hidden_layer_sizes=(5,)).parameter_count == 20 + 5 + 5 + 1
    assert make_adapter("mlp", 64, range(10)).hidden_layer_sizes == (64,)


def test_layout_is_coef_then_intercept() -> None:
    adapter = make_adapter("sgd_logistic", 2, [0, 1, 2])
    est = adapter.to_estimator(np.arange(9, dtype=np.float64))
    np.testing.assert_array_equal(est.coef_, [[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(est.intercept_, [6, 7, 8])
    mlp = make_adapter("mlp", 2, [0, 1], hidden_layer_sizes=(3,))
    est = mlp.to_estimator(np.arange(mlp.parameter_count, dtype=np.float64))
    np.testing.assert_array_equal(est.coefs_[0], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(est.coefs_[1], [[6], [7], [8]])
    np.testing.assert_array_equal(est.intercepts_[0], [9, 10, 11])
    np.testing.assert_array_equal(est.intercepts_[1], [12])


def test_classes_are_sorted_like_scikit_learn() -> None:
    adapter = make_adapter("sgd_logistic", 3, [7, 2, 5])
    assert adapter.classes == (2, 5, 7)
    np.testing.assert_array_equal(adapter.to_estimator(adapter.initial_parameters()).classes_, [2, 5, 7])


@pytest.mark.parametrize("classes", [(0, 1), (3, 5, 9)])
def test_sklearn_fitted_sgd_round_trips_with_the_same_predictions(classes: tuple[int, ...]) -> None:
    X, y = toy_data(classes=classes)
    fitted = SGDClassifier(loss="log_loss", random_state=0).fit(X, y)
    adapter = make_adapter("sgd_logistic", X.shape[1], classes)
    params = adapter.get_parameters(fitted)
    rebuilt = adapter.to_estimator(params)
    np.testing.assert_array_equal(rebuilt.predict(X), fitted.predict(X))
    np.testing.assert_allclose(rebuilt.predict_proba(X), fitted.predict_proba(X), rtol=0, atol=0)
    np.testing.assert_array_equal(adapter.predict(params, X), fitted.predict(X))


@pytest.mark.parametrize("classes", [(0, 1), (3, 5, 9)])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
def test_sklearn_fitted_mlp_round_trips_with_the_same_predictions(classes: tuple[int, ...], activation: str) -> None:
    X, y = toy_data(classes=classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = MLPClassifier(hidden_layer_sizes=(7, 4), activation=activation, max_iter=30, random_state=0)
        fitted.fit(X, y)
    adapter = make_adapter("mlp", X.shape[1], classes, hidden_layer_sizes=(7, 4), activation=activation)
    params = adapter.get_parameters(fitted)
    rebuilt = adapter.to_estimator(params)
    np.testing.assert_array_equal(rebuilt.predict(X), fitted.predict(X))
    np.testing.assert_array_equal(rebuilt.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(adapter.predict(params, X), fitted.predict(X))


def test_get_parameters_refuses_foreign_estimators() -> None:
    X, y = toy_data()
    sgd = make_adapter("sgd_logistic", X.shape[1], [0, 1, 2])
    with pytest.raises(TypeError):
        sgd.get_parameters(MLPClassifier())
    with pytest.raises(TypeError):
        sgd.get_parameters(SGDClassifier(loss="hinge").fit(X, y))
    with pytest.raises(InvalidParameter, match="classes"):
        make_adapter("sgd_logistic", X.shape[1], [0, 1, 2, 3]).get_parameters(SGDClassifier(loss="log_loss").fit(X, y))
    with pytest.raises(InvalidParameter, match="not fitted"):
        sgd.get_parameters(SGDClassifier(loss="log_loss"))
    mlp = make_adapter("mlp", X.shape[1], [0, 1, 2], hidden_layer_sizes=(3,))
    other = make_adapter("mlp", X.shape[1], [0, 1, 2], hidden_layer_sizes=(4,))
    with pytest.raises(InvalidParameter, match="shapes"):
        mlp.get_parameters(other.to_estimator(other.initial_parameters(0)))
    tanh = make_adapter("mlp", X.shape[1], [0, 1, 2], hidden_layer_sizes=(3,), activation="tanh")
    with pytest.raises(InvalidParameter, match="activation"):
        mlp.get_parameters(tanh.to_estimator(tanh.initial_parameters(0)))


# --- construction and refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        (("svm", 3, [0, 1]), {}, "valid kinds are \\['sgd_logistic', 'mlp'\\]"),
        (("mlp", 3, [0, 1]), {"hidden": (3,)}, "unknown option"),
        (("sgd_logistic", 3, [0, 1]), {"hidden_layer_sizes": (3,)}, "unknown option"),
        (("mlp", 3, [0, 1]), {"hidden_layer_sizes": ()}, "hidden_layer_sizes"),
        (("mlp", 3, [0, 1]), {"hidden_layer_sizes": (4, 0)}, "hidden_layer_sizes"),
        (("mlp", 3, [0, 1]), {"hidden_layer_sizes": "64"}, "hidden_layer_sizes"),
        (("mlp", 3, [0, 1]), {"activation": "softplus"}, "activation"),
        (("sgd_logistic", 3, [0, 1]), {"l2": -1.0}, "l2"),
        (("sgd_logistic", 0, [0, 1]), {}, "n_features"),
        (("sgd_logistic", 3, [0]), {}, "at least two classes"),
        (("sgd_logistic", 3, [0, 0, 1]), {}, "distinct"),
        (("sgd_logistic", 3, [0, 1.5]), {}, "integers"),
        (("sgd_logistic", 3, "01"), {}, "sequence"),
    ],
)
def test_make_adapter_refuses_bad_arguments(args, options, match) -> None:
    with pytest.raises(InvalidParameter, match=match):
        make_adapter(*args, **options)


def test_refuses_bad_params_data_and_training_arguments() -> None:
    X, y = toy_data()
    adapter = make_adapter("sgd_logistic", X.shape[1], [0, 1, 2])
    p = adapter.initial_parameters()
    train = dict(epochs=1, learning_rate=0.1, batch_size=4, seed=0)
    with pytest.raises(InvalidParameter, match="length"):
        adapter.to_estimator(p[:-1])
    with pytest.raises(InvalidParameter, match="NaN"):
        adapter.to_estimator(np.where(np.arange(p.size) == 3, np.nan, p))
    with pytest.raises(InvalidParameter, match="feature columns"):
        adapter.fit_local(p, X[:, :-1], y, **train)
    with pytest.raises(InvalidParameter, match="NaN"):
        adapter.evaluate(p, np.where(X > 1, np.inf, X), y)
    with pytest.raises(InvalidParameter, match="labels"):
        adapter.fit_local(p, X, y[:-1], **train)
    with pytest.raises(InvalidParameter, match=r"labels \[4, 9\] are not among"):
        adapter.fit_local(p, X, np.where(y == 2, 9, np.where(y == 1, 4, y)), **train)
    for bad in (
        dict(epochs=-1),
        dict(epochs=1.5),
        dict(learning_rate=0.0),
        dict(learning_rate=math.nan),
        dict(batch_size=0),
        dict(seed=-3),
    ):
        with pytest.raises(InvalidParameter):
            adapter.fit_local(p, X, y, **{**train, **bad})


def test_divergence_is_reported_not_returned() -> None:
    X, y = toy_data()
    adapter = make_adapter("mlp", X.shape[1], [0, 1, 2], hidden_layer_sizes=(8,))
    with pytest.raises(InvalidParameter, match="diverged"):
        adapter.fit_local(adapter.initial_parameters(0), X * 10, y, epochs=3, learning_rate=1e12, batch_size=5, seed=0)


# --- initialisation ------------------------------------------------------------------------------


def test_initial_parameters() -> None:
    sgd = make_adapter("sgd_logistic", 5, [0, 1, 2])
    assert not np.any(sgd.initial_parameters(3))
    mlp = make_adapter("mlp", 10, [0, 1, 2], hidden_layer_sizes=(6,))
    a, b = mlp.initial_parameters(1), mlp.initial_parameters(1)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, mlp.initial_parameters(2))
    assert not np.array_equal(mlp.initial_parameters(), mlp.initial_parameters())  # os.urandom seeded
    est = mlp.to_estimator(a)
    for coef, intercept in zip(est.coefs_, est.intercepts_):
        bound = math.sqrt(6.0 / sum(coef.shape))  # Glorot uniform, as scikit-learn for relu
        assert np.all(np.abs(coef) <= bound) and np.all(np.abs(intercept) <= bound)
        assert np.abs(coef).max() > bound / 2  # actually spread over the range
        assert np.all(intercept != 0)  # biases are drawn too, as scikit-learn does
    logistic = make_adapter("mlp", 10, [0, 1, 2], hidden_layer_sizes=(6,), activation="logistic")
    first = logistic.to_estimator(logistic.initial_parameters(0)).coefs_[0]
    assert np.abs(first).max() <= math.sqrt(2.0 / 16)


# --- training is gradient descent on the model scikit-learn evaluates ----------------------------


def sgd_objective(adapter: SGDLogisticAdapter, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Mean one-vs-rest binary log loss of the *scikit-learn* estimator, plus the L2 term."""
    est = adapter.to_estimator(params)
    z = est.decision_function(X).reshape(len(X), -1)
    if z.shape[1] == 1:
        t = (y == adapter.classes[1]).astype(float)[:, None]
    else:
        t = (y[:, None] == np.asarray(adapter.classes)[None, :]).astype(float)
    loss = np.where(t == 1, np.logaddexp(0, -z), np.logaddexp(0, z)).sum(axis=1).mean()
    return float(loss + adapter.l2 / 2 * np.sum(est.coef_**2))


def mlp_objective(adapter: MLPAdapter, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of the *scikit-learn* estimator's probabilities, plus the L2 term."""
    est = adapter.to_estimator(params)
    proba = est.predict_proba(X)
    idx = np.searchsorted(np.asarray(adapter.classes), y)
    ce = -np.mean(np.log(proba[np.arange(len(y)), idx]))
    return float(ce + adapter.l2 / 2 * sum(np.sum(c**2) for c in est.coefs_))


@pytest.mark.parametrize(
    ("kind", "classes", "options"),
    [
        ("sgd_logistic", (0, 1), {}),
        ("sgd_logistic", (0, 1, 2, 3), {"l2": 0.01}),
        ("mlp", (0, 1), {"hidden_layer_sizes": (6,)}),
        ("mlp", (0, 1, 2), {"hidden_layer_sizes": (6, 4), "l2": 0.01}),
        ("mlp", (0, 1, 2), {"hidden_layer_sizes": (5,), "activation": "tanh"}),
        ("mlp", (0, 1, 2), {"hidden_layer_sizes": (5,), "activation": "logistic"}),
    ],
)
def test_training_step_is_the_gradient_of_the_evaluated_model(kind, classes, options) -> None:
    """One full-batch step with lr 1 moves by minus the gradient that finite differences of
    scikit-learn's own forward pass give: training optimises the model that predicts."""
    X, y = toy_data(n=40, n_features=4, classes=classes, seed=1)
    adapter = make_adapter(kind, X.shape[1], classes, **options)
    objective = sgd_objective if kind == "sgd_logistic" else mlp_objective
    p = adapter.initial_parameters(5) + np.random.default_rng(2).normal(scale=0.3, size=adapter.parameter_count)
    grad = p - adapter.fit_local(p, X, y, epochs=1, learning_rate=1.0, batch_size=len(X), seed=0)
    rng = np.random.default_rng(3)
    eps = 1e-6
    for _ in range(5):
        u = rng.normal(size=p.size)
        numeric = (objective(adapter, p + eps * u, X, y) - objective(adapter, p - eps * u, X, y)) / (2 * eps)
        assert numeric == pytest.approx(float(grad @ u), rel=1e-5, abs=1e-7)


# --- training starts from the given parameters ---------------------------------------------------


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_training_genuinely_starts_from_the_given_parameters(kind: str) -> None:
    X, y = toy_data()
    adapter = make_adapter(kind, X.shape[1], [0, 1, 2])
    a = adapter.initial_parameters(1) + 0.1
    b = adapter.initial_parameters(2) - 0.1
    a_before = a.copy()
    train = dict(learning_rate=0.05, batch_size=8, seed=11)
    assert adapter.fit_local(a, X, y, epochs=0, **train).tobytes() == a.tobytes()
    assert adapter.fit_local(a, X[:0], y[:0], epochs=3, **train).tobytes() == a.tobytes()
    after_a = adapter.fit_local(a, X, y, epochs=1, **train)
    after_b = adapter.fit_local(b, X, y, epochs=1, **train)
    assert a.tobytes() == a_before.tobytes()  # input not modified
    assert not np.array_equal(after_a, a)
    assert not np.array_equal(after_a, after_b)
    # a short run stays near its start: closer to its own start than to the other one
    assert np.linalg.norm(after_a - a) < np.linalg.norm(after_a - b)
    # same seed, same result; another seed, another order
    assert adapter.fit_local(a, X, y, epochs=1, **train).tobytes() == after_a.tobytes()
    assert not np.array_equal(adapter.fit_local(a, X, y, epochs=1, **{**train, "seed": 12}), after_a)
    # more epochs keep going down the loss on this easy problem
    longer = adapter.fit_local(a, X, y, epochs=5, **train)
    losses = [adapter.evaluate(p, X, y).loss_sum for p in (a, after_a, longer)]
    assert losses[0] > losses[1] > losses[2]


# --- evaluation ----------------------------------------------------------------------------------


def test_evaluate_counts_correct_and_sums_log_loss() -> None:
    # Scores are 10 * x per class, so the prediction is the argmax feature.
    adapter = make_adapter("sgd_logistic", 3, [0, 1, 2])
    params = np.concatenate([(10 * np.eye(3)).ravel(), np.zeros(3)])
    X = np.eye(3)[[0, 1, 2, 0, 1]]
    y = np.array([0, 1, 2, 1, 2])  # last two wrong
    metrics = adapter.evaluate(params, X, y)
    assert (metrics.correct, metrics.count) == (3, 5)
    np.testing.assert_array_equal(adapter.predict(params, X), [0, 1, 2, 0, 1])
    s1, s0 = 1 / (1 + math.exp(-10)), 0.5  # OvR probabilities, normalised per row
    p_right, p_wrong = s1 / (s1 + 2 * s0), s0 / (s1 + 2 * s0)
    expected = -(3 * math.log(p_right) + 2 * math.log(p_wrong))
    assert metrics.loss_sum == pytest.approx(expected, rel=1e-12)
    assert metrics.accuracy == pytest.approx(0.6)
    assert metrics.mean_loss == pytest.approx(expected / 5)


def test_evaluate_clips_probabilities() -> None:
    adapter = make_adapter("sgd_logistic", 1, [0, 1])
    params = np.array([-1000.0, 0.0])  # P(class 1 | x=1) underflows to 0
    metrics = adapter.evaluate(params, np.array([[1.0]]), np.array([1]))
    assert metrics.correct == 0
    assert metrics.loss_sum == pytest.approx(-math.log(1e-15))


def test_evaluate_matches_the_estimator() -> None:
    X, y = toy_data(n=90)
    adapter = make_adapter("mlp", X.shape[1], [0, 1, 2], hidden_layer_sizes=(5,))
    p = adapter.initial_parameters(4)
    est = adapter.to_estimator(p)
    m = adapter.evaluate(p, X, y)
    assert m.correct == int(np.sum(est.predict(X) == y))
    assert m.loss_sum == pytest.approx(-np.sum(np.log(est.predict_proba(X)[np.arange(len(y)), y])), rel=1e-12)
    assert adapter.evaluate(p, X[:0], y[:0]) == EvalMetrics(0, 0, 0.0)
    assert math.isnan(EvalMetrics(0, 0, 0.0).accuracy)
    assert EvalMetrics(1, 2, 0.5) + EvalMetrics(3, 4, 1.5) == EvalMetrics(4, 6, 2.0)


# --- nodes that lack classes ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_node_missing_classes_trains_on_the_declared_layout(kind: str) -> None:
    X, y = toy_data(n=60, classes=(0, 1, 2, 3, 4))
    only = np.isin(y, [0, 1])
    adapter = make_adapter(kind, X.shape[1], range(5))
    p = adapter.initial_parameters(0)
    new = adapter.fit_local(p, X[only], y[only], epochs=3, learning_rate=0.1, batch_size=8, seed=0)
    assert new.shape == p.shape
    assert set(np.unique(adapter.predict(new, X[only]))) <= {0, 1}  # learnt its own classes
    proba = adapter.predict_proba(new, X)
    assert proba.shape == (60, 5)
    assert proba[:, 2:].mean() < proba[:, :2].mean()  # absent classes pushed down, not lost
    m = adapter.evaluate(new, X, y)  # evaluates on all classes
    assert m.count == 60
    if kind == "sgd_logistic":
        intercepts = new[-5:]
        assert np.all(intercepts[2:] < 0)  # only negatives seen: their bias moved down


def test_binary_task_node_with_one_class() -> None:
    X, y = toy_data(classes=(0, 1))
    for kind in MODEL_KINDS:
        adapter = make_adapter(kind, X.shape[1], [0, 1])
        ones = y == 1
        new = adapter.fit_local(
            adapter.initial_parameters(0), X[ones], y[ones], epochs=5, learning_rate=0.1, batch_size=8, seed=0
        )
        assert np.all(adapter.predict(new, X[ones]) == 1)


# --- quality: federated vs central on digits -----------------------------------------------------


@pytest.fixture(scope="module")
def digits_split():
    d = load_bundled("digits")
    return d, train_test_split_stratified(d.X, d.y, 0.25, seed=0)


def federated_vs_central(kind: str, d, split, *, nodes: int = 5, rounds: int = 10) -> tuple[float, float]:
    """Plain-numpy FedAvg (sample-count weights, no crypto) and central training, same epochs."""
    adapter = make_adapter(kind, d.n_features, d.classes)
    train = DEFAULT_TRAINING[kind]
    parts = iid(len(split.y_train), nodes, seed=0)
    start = adapter.initial_parameters(seed=0)
    global_params = start.copy()
    for r in range(rounds):
        weighted_sum = np.zeros_like(global_params)
        total = 0
        for k, idx in enumerate(parts):
            local = adapter.fit_local(global_params, split.X_train[idx], split.y_train[idx], seed=1000 * r + k, **train)
            weighted_sum += len(idx) * (local - global_params)
            total += len(idx)
        global_params = global_params + weighted_sum / total
    central = adapter.fit_local(start, split.X_train, split.y_train, seed=1, **{**train, "epochs": train["epochs"] * rounds})
    fed = adapter.evaluate(global_params, split.X_test, split.y_test).accuracy
    cen = adapter.evaluate(central, split.X_test, split.y_test).accuracy
    return fed, cen


def test_federated_sgd_logistic_within_three_points_of_central(digits_split) -> None:
    started = time.perf_counter()
    fed, cen = federated_vs_central("sgd_logistic", *digits_split)
    assert cen > 0.9
    assert fed >= cen - 0.03, f"federated {fed:.3f} vs central {cen:.3f}"
    assert time.perf_counter() - started < 10


def test_federated_mlp_is_accurate(digits_split) -> None:
    fed, cen = federated_vs_central("mlp", *digits_split)
    assert cen > 0.9
    assert fed > 0.9
    assert fed >= cen - 0.03, f"federated {fed:.3f} vs central {cen:.3f}"
