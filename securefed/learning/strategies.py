"""Server-side aggregation strategies, applied to the mean update.

Theory of operation. Under secure aggregation the coordinator never sees a
node's update: it learns only S = sum_k w_k * delta_k and W = sum_k w_k, so the
one thing a strategy can use is the weighted mean update ``mean_delta = S / W``
(see :func:`mean_delta`), where a node's delta is its locally trained
parameters minus the global parameters it started from. A strategy turns the
global parameters and that mean into the next global parameters.

- :class:`FedAvg`: ``x + server_learning_rate * mean_delta`` (McMahan et al.
  2017; a server learning rate of 1 is plain federated averaging).
- :class:`FedAdam`, :class:`FedYogi`, :class:`FedAdagrad`: the adaptive
  server optimisers of Reddi et al. 2021, "Adaptive Federated Optimization",
  Algorithm 2, which treat ``mean_delta`` as a pseudo-gradient step:

      m_t = beta1 * m_{t-1} + (1 - beta1) * delta_t
      v_t = beta2 * v_{t-1} + (1 - beta2) * delta_t^2                  (Adam)
      v_t = v_{t-1} - (1 - beta2) * delta_t^2 * sign(v_{t-1} - delta_t^2)  (Yogi)
      v_t = v_{t-1} + delta_t^2                                          (Adagrad)
      x_{t+1} = x_t + learning_rate * m_t / (sqrt(v_t) + tau)

  with m_{-1} = 0 and v_{-1} = tau^2 (the paper asks v_{-1} >= tau^2) and,
  as in the paper, no bias correction. Their state (m, v and the step count)
  is exported as a dict of arrays so the coordinator can checkpoint it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from securefed.errors import InvalidParameter
from securefed.learning.models import _check_real

__all__ = [
    "STRATEGIES",
    "AdaptiveStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "Strategy",
    "make_strategy",
    "mean_delta",
]


def mean_delta(weighted_sum: np.ndarray, total_weight: float) -> np.ndarray:
    """The weighted mean update ``S / W`` from the securely aggregated totals."""
    s = _float_vector("weighted_sum", weighted_sum)
    if not isinstance(total_weight, (int, float, np.integer, np.floating)) or not (
        math.isfinite(float(total_weight)) and float(total_weight) > 0
    ):
        raise InvalidParameter(
            f"total weight must be a positive finite number, got {total_weight!r} (no node's update reached the aggregate?)"
        )
    return s / float(total_weight)


def _float_vector(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "fiu":
        raise InvalidParameter(f"{name} must be a 1-D real vector, got shape {arr.shape}, dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InvalidParameter(f"{name} contains NaN or infinity")
    return arr


def _check_pair(global_params: object, delta: object) -> tuple[np.ndarray, np.ndarray]:
    x = _float_vector("global_params", global_params)
    d = _float_vector("mean_delta", delta)
    if x.shape != d.shape:
        raise InvalidParameter(f"mean_delta has shape {d.shape} but the global parameters {x.shape}")
    return x, d


class Strategy(ABC):
    """Turns the global parameters and the mean update into the next global parameters."""

    name: str

    @abstractmethod
    def apply(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """The next global parameters (a fresh array; the inputs are not modified)."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """The strategy's mutable state, as arrays (empty for stateless strategies)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if dict(state):
            raise InvalidParameter(f"{self.name} keeps no state, got keys {sorted(state)}")


class FedAvg(Strategy):
    """Federated averaging with a server learning rate (1.0: adopt the mean update as is)."""

    name = "fedavg"

    def __init__(self, server_learning_rate: float = 1.0) -> None:
        self.server_learning_rate = _check_real("server_learning_rate", server_learning_rate, low=0.0)

    def __repr__(self) -> str:
        return f"FedAvg(server_learning_rate={self.server_learning_rate})"

    def apply(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        x, d = _check_pair(global_params, mean_delta)
        return x + self.server_learning_rate * d


class AdaptiveStrategy(Strategy):
    """Shared machinery of the Reddi et al. 2021 server optimisers."""

    def __init__(
        self,
        learning_rate: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        self.learning_rate = _check_real("learning_rate", learning_rate, low=0.0)
        self.beta1 = _check_real("beta1", beta1, low=0.0, low_open=False)
        self.beta2 = _check_real("beta2", beta2, low=0.0, low_open=False)
        if self.beta1 >= 1.0 or self.beta2 >= 1.0:
            raise InvalidParameter(f"beta1 and beta2 must be in [0, 1), got {beta1} and {beta2}")
        self.tau = _check_real("tau", tau, low=0.0)
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._step = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(learning_rate={self.learning_rate}, beta1={self.beta1}, beta2={self.beta2}, tau={self.tau})"
        )

    @property
    def step(self) -> int:
        """How many updates have been applied."""
        return self._step

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray: ...

    def apply(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        x, d = _check_pair(global_params, mean_delta)
        if self._m is None or self._v is None:
            m, v = np.zeros_like(x), np.full_like(x, self.tau**2)
        elif self._m.shape != x.shape:
            raise InvalidParameter(f"{self.name} state is for {self._m.shape[0]} parameters, the model has {x.shape[0]}")
        else:
            m, v = self._m, self._v
        m = self.beta1 * m + (1.0 - self.beta1) * d
        v = self._second_moment(v, d)
        new = x + self.learning_rate * m / (np.sqrt(v) + self.tau)
        self._m, self._v, self._step = m, v, self._step + 1
        return new

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"m", "v"}`` (empty vectors before the first step) and ``"step"`` (0-d int64)."""
        empty = np.zeros(0, dtype=np.float64)
        return {
            "m": empty.copy() if self._m is None else self._m.copy(),
            "v": empty.copy() if self._v is None else self._v.copy(),
            "step": np.array(self._step, dtype=np.int64),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        keys = set(state)
        if keys != {"m", "v", "step"}:
            raise InvalidParameter(f"{self.name} state needs keys ['m', 'step', 'v'], got {sorted(keys)}")
        m = _float_vector("state m", state["m"])
        v = _float_vector("state v", state["v"])
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise InvalidParameter(f"state step must be a non-negative integer scalar, got {state['step']!r}")
        if m.shape != v.shape:
            raise InvalidParameter(f"state m and v differ in shape: {m.shape} vs {v.shape}")
        if np.any(v < 0):
            raise InvalidParameter("state v must be non-negative")
        if (m.size == 0) != (int(step) == 0):
            raise InvalidParameter("state is inconsistent: moments must be empty exactly when step is 0")
        if m.size == 0:
            self._m, self._v = None, None
        else:
            self._m, self._v = m.copy(), v.copy()
        self._step = int(step)


class FedAdam(AdaptiveStrategy):
    """Adam on the server (Reddi et al. 2021)."""

    name = "fedadam"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * delta * delta


class FedYogi(AdaptiveStrategy):
    """Yogi on the server (Reddi et al. 2021): v grows or shrinks additively."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        sq = delta * delta
        return v - (1.0 - self.beta2) * sq * np.sign(v - sq)


class FedAdagrad(AdaptiveStrategy):
    """Adagrad on the server (Reddi et al. 2021); ``beta2`` is unused."""

    name = "fedadagrad"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + delta * delta


_STRATEGIES: dict[str, tuple[type[Strategy], tuple[str, ...]]] = {
    "fedavg": (FedAvg, ("server_learning_rate",)),
    "fedadam": (FedAdam, ("learning_rate", "beta1", "beta2", "tau")),
    "fedyogi": (FedYogi, ("learning_rate", "beta1", "beta2", "tau")),
    "fedadagrad": (FedAdagrad, ("learning_rate", "beta1", "tau")),
}

#: Names ``make_strategy`` accepts.
STRATEGIES: tuple[str, ...] = tuple(_STRATEGIES)


def make_strategy(name: str, **options: Any) -> Strategy:
    """The named strategy (see :data:`STRATEGIES`) with its options."""
    if name not in _STRATEGIES:
        raise InvalidParameter(f"unknown strategy {name!r}; valid strategies are {list(STRATEGIES)}")
    cls, allowed = _STRATEGIES[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidParameter(f"unknown option(s) {unknown} for strategy {name!r}; valid options are {list(allowed)}")
    return cls(**options)
