"""Unit tests for :mod:`securefed.learning.strategies`: the update rules against hand
computations (Reddi et al. 2021, Algorithm 2), state export/import, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.errors import InvalidParameter
from securefed.learning.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedYogi,
    make_strategy,
    mean_delta,
)

VECTORS = hnp.arrays(np.float64, 6, elements=st.floats(-1e6, 1e6))


@given(x=VECTORS, d=VECTORS)
def test_fedavg_with_rate_one_is_global_plus_delta(x: np.ndarray, d: np.ndarray) -> None:
    np.testing.assert_array_equal(FedAvg().apply(x, d), x + d)


def test_fedavg_server_learning_rate_and_no_mutation() -> None:
    x, d = np.array([1.0, 2.0]), np.array([0.5, -4.0])
    x0, d0 = x.copy(), d.copy()
    np.testing.assert_array_equal(FedAvg(server_learning_rate=0.5).apply(x, d), [1.25, 0.0])
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(d, d0)
    assert FedAvg().state_dict() == {}
    FedAvg().load_state_dict({})


def test_mean_delta_is_weighted_sum_over_total_weight() -> None:
    deltas = [np.array([1.0, -2.0]), np.array([3.0, 0.0])]
    weights = [10, 30]
    s = sum(w * d for w, d in zip(weights, deltas))
    np.testing.assert_allclose(mean_delta(s, sum(weights)), [2.5, -0.5])
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(InvalidParameter, match="total weight"):
            mean_delta(s, bad)


def adam_by_hand(x, deltas, lr, b1, b2, tau):
    """Algorithm 2 of Reddi et al. 2021, scalar by scalar, no numpy."""
    out = []
    for i, xi in enumerate(x):
        m, v = 0.0, tau * tau
        for d in deltas:
            di = d[i]
            m = b1 * m + (1 - b1) * di
            v = b2 * v + (1 - b2) * di * di
            xi = xi + lr * m / (math.sqrt(v) + tau)
        out.append(xi)
    return out


def test_fedadam_matches_a_hand_computation_for_two_steps() -> None:
    x0 = np.array([0.5, -1.0, 0.0])
    deltas = [np.array([0.2, -0.1, 0.0]), np.array([-0.4, 0.3, 1e-6])]
    strategy = FedAdam(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x1 = strategy.apply(x0, deltas[0])
    x2 = strategy.apply(x1, deltas[1])
    np.testing.assert_allclose(x1, adam_by_hand(x0, deltas[:1], 0.1, 0.9, 0.99, 1e-3), rtol=1e-13)
    np.testing.assert_allclose(x2, adam_by_hand(x0, deltas, 0.1, 0.9, 0.99, 1e-3), rtol=1e-13)
    # The first coordinate, written out: m = 0.02, v = 1e-6*0.99 + 0.01*0.04 = 4.0099e-4.
    assert x1[0] == pytest.approx(0.5 + 0.1 * 0.02 / (math.sqrt(4.0099e-4) + 1e-3), rel=1e-14)
    assert strategy.step == 2


def test_fedyogi_and_fedadagrad_match_hand_computations() -> None:
    x0, d1, d2 = np.array([1.0, 1.0]), np.array([0.3, -0.2]), np.array([0.1, 0.5])
    tau, b1, b2, lr = 1e-2, 0.5, 0.9, 0.2

    yogi = FedYogi(learning_rate=lr, beta1=b1, beta2=b2, tau=tau)
    x = yogi.apply(yogi.apply(x0, d1), d2)
    expected = []
    for i in range(2):
        m, v, xi = 0.0, tau**2, x0[i]
        for d in (d1[i], d2[i]):
            m = b1 * m + (1 - b1) * d
            v = v - (1 - b2) * d * d * math.copysign(1.0, v - d * d) if v != d * d else v
            xi += lr * m / (math.sqrt(v) + tau)
        expected.append(xi)
    np.testing.assert_allclose(x, expected, rtol=1e-13)

    adagrad = FedAdagrad(learning_rate=lr, beta1=b1, tau=tau)
    x = adagrad.apply(adagrad.apply(x0, d1), d2)
    expected = []
    for i in range(2):
        m, v, xi = 0.0, tau**2, x0[i]
        for d in (d1[i], d2[i]):
            m = b1 * m + (1 - b1) * d
            v = v + d * d
            xi += lr * m / (math.sqrt(v) + tau)
        expected.append(xi)
    np.testing.assert_allclose(x, expected, rtol=1e-13)


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_state_round_trip_continues_exactly(cls) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=5)
    deltas = [rng.normal(scale=0.1, size=5) for _ in range(3)]
    fresh = cls()
    empty = fresh.state_dict()
    assert empty["m"].size == 0 and int(empty["step"]) == 0
    original = cls()
    for d in deltas[:2]:
        x = original.apply(x, d)
    state = original.state_dict()
    assert set(state) == {"m", "v", "step"} and int(state["step"]) == 2
    restored = cls()
    restored.load_state_dict(state)
    state["m"][:] = 99.0  # exports and imports are copies
    assert not np.any(original.state_dict()["m"] == 99.0)
    continued = original.apply(x, deltas[2])
    np.testing.assert_array_equal(restored.apply(x, deltas[2]), continued)
    assert not np.array_equal(cls().apply(x, deltas[2]), continued)  # the state matters
    restored.load_state_dict(empty)
    assert restored.step == 0


def test_load_state_dict_refuses_bad_states() -> None:
    good = FedAdam()
    good.apply(np.zeros(3), np.ones(3))
    state = good.state_dict()
    bad_states = [
        {"m": state["m"], "v": state["v"]},
        {**state, "extra": np.zeros(1)},
        {**state, "v": state["v"][:2]},
        {**state, "v": -state["v"]},
        {**state, "m": np.array([np.nan, 0.0, 0.0])},
        {**state, "step": np.array(-1)},
        {**state, "step": np.array([1, 2])},
        {**state, "step": np.array(0)},
    ]
    for bad in bad_states:
        with pytest.raises(InvalidParameter):
            FedAdam().load_state_dict(bad)
    with pytest.raises(InvalidParameter, match="keeps no state"):
        FedAvg().load_state_dict(state)
    with pytest.raises(InvalidParameter, match="state is for 3 parameters"):
        good.apply(np.zeros(4), np.ones(4))


def test_apply_refuses_mismatched_or_non_finite_input() -> None:
    for strategy in (FedAvg(), FedAdam()):
        with pytest.raises(InvalidParameter, match="shape"):
            strategy.apply(np.zeros(3), np.zeros(2))
        with pytest.raises(InvalidParameter, match="NaN"):
            strategy.apply(np.zeros(2), np.array([0.0, np.inf]))
        with pytest.raises(InvalidParameter, match="1-D"):
            strategy.apply(np.zeros((2, 2)), np.zeros((2, 2)))


def test_make_strategy() -> None:
    assert STRATEGIES == ("fedavg", "fedadam", "fedyogi", "fedadagrad")
    assert isinstance(make_strategy("fedavg", server_learning_rate=0.5), FedAvg)
    adam = make_strategy("fedadam", learning_rate=0.1, tau=1e-2)
    assert isinstance(adam, FedAdam) and adam.learning_rate == 0.1 and adam.tau == 1e-2
    assert (adam.beta1, adam.beta2) == (0.9, 0.99)
    with pytest.raises(InvalidParameter, match=r"valid strategies are \['fedavg', 'fedadam'"):
        make_strategy("fedprox")
    with pytest.raises(InvalidParameter, match="unknown option"):
        make_strategy("fedavg", learning_rate=0.1)
    for options in ({"beta1": 1.0}, {"beta2": -0.1}, {"tau": 0.0}, {"learning_rate": -1.0}):
        with pytest.raises(InvalidParameter):
            make_strategy("fedadam", **options)
    with pytest.raises(InvalidParameter):
        make_strategy("fedavg", server_learning_rate=0.0)
