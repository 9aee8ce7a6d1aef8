"""Per-example gradients (record-level DP-SGD clips each one): they must be the model's true gradients.

Two independent checks: their mean plus the L2 term equals the step ``fit_local`` takes (the
adapter's batch backpropagation), and each row matches a central finite difference of that
example's own loss, computed from the scikit-learn estimator's predict_proba (a different code path).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.learning.models import make_adapter

MODELS = [
    ("sgd_logistic", {}),
    ("mlp", {"hidden_layer_sizes": (5,), "activation": "tanh"}),
    ("mlp", {"hidden_layer_sizes": (4, 3), "activation": "logistic"}),
    ("mlp", {"hidden_layer_sizes": (6,), "activation": "relu"}),
]


def _data(rng: np.random.Generator, n: int, features: int, classes: tuple[int, ...]):
    X = rng.normal(size=(n, features))
    y = rng.choice(np.asarray(classes), size=n)
    return X, y


@settings(max_examples=30, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    n=st.integers(1, 12),
    features=st.integers(1, 5),
    n_classes=st.integers(2, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_mean_of_example_gradients_is_the_batch_step(model, n, features, n_classes, seed):
    kind, options = model
    classes = tuple(range(n_classes))
    adapter = make_adapter(kind, features, classes, l2=0.01, **options)
    rng = np.random.default_rng(seed)
    params = adapter.initial_parameters(seed=seed) + rng.normal(scale=0.3, size=adapter.parameter_count)
    X, y = _data(rng, n, features, classes)
    rows = adapter.per_example_gradients(params, X, y)
    assert rows.shape == (n, adapter.parameter_count)
    # one full-batch step with learning rate 1 moves the parameters by exactly minus the gradient
    stepped = adapter.fit_local(params, X, y, epochs=1, learning_rate=1.0, batch_size=n, seed=0)
    batch_gradient = params - stepped
    np.testing.assert_allclose(rows.mean(axis=0) + adapter.l2_gradient(params), batch_gradient, rtol=1e-9, atol=1e-11)


def _example_loss(adapter, params: np.ndarray, x: np.ndarray, label: int) -> float:
    """One example's training loss from the estimator's probabilities (one-vs-rest for sgd_logistic)."""
    estimator = adapter.to_estimator(params)
    if adapter.kind == "sgd_logistic":
        scores = estimator.decision_function(x[None, :]).reshape(-1)
        if scores.size == 1:
            targets = np.array([1.0 if label == adapter.classes[1] else 0.0])
        else:
            targets = (np.asarray(adapter.classes) == label).astype(float)
        return float(np.sum(np.logaddexp(0.0, scores) - targets * scores))
    proba = estimator.predict_proba(x[None, :])[0]
    return float(-np.log(proba[list(adapter.classes).index(label)]))


@pytest.mark.parametrize("kind,options", [MODELS[0], MODELS[1], MODELS[2]])
def test_each_row_is_that_examples_own_gradient(kind, options):
    rng = np.random.default_rng(7)
    classes = (0, 1, 2)
    adapter = make_adapter(kind, 3, classes, l2=0.0, **options)
    params = adapter.initial_parameters(seed=1) + rng.normal(scale=0.2, size=adapter.parameter_count)
    X, y = _data(rng, 4, 3, classes)
    rows = adapter.per_example_gradients(params, X, y)
    step = 1e-6
    for i in range(len(y)):
        numeric = np.empty(adapter.parameter_count)
        for j in range(adapter.parameter_count):
            up, down = params.copy(), params.copy()
            up[j] += step
            down[j] -= step
            numeric[j] = (_example_loss(adapter, up, X[i], int(y[i])) - _example_loss(adapter, down, X[i], int(y[i]))) / (
                2 * step
            )
        np.testing.assert_allclose(rows[i], numeric, rtol=1e-5, atol=1e-7)


def test_the_l2_gradient_leaves_intercepts_alone():
    adapter = make_adapter("mlp", 3, (0, 1), l2=0.5, hidden_layer_sizes=(2,))
    params = np.arange(adapter.parameter_count, dtype=float) + 1.0
    grad = adapter.l2_gradient(params)
    weights = 3 * 2 + 2 * 1
    np.testing.assert_array_equal(grad[:weights], 0.5 * params[:weights])
    np.testing.assert_array_equal(grad[weights:], 0.0)


def test_no_examples_give_no_rows_and_bad_labels_are_refused():
    adapter = make_adapter("sgd_logistic", 2, (0, 1))
    params = adapter.initial_parameters()
    assert adapter.per_example_gradients(params, np.zeros((0, 2)), np.zeros(0, dtype=int)).shape == (0, 3)
    with pytest.raises(Exception, match="not among the task's classes"):
        adapter.per_example_gradients(params, np.zeros((1, 2)), np.array([5]))
