"""One DP-SGD step across sites: what a node computes from its records, and what the coordinator does with the sum.

Shared by the node daemon and the benchmarks, so that what is measured is what runs. A node keeps
each record with probability q, drawn from the cryptographic generator it also rounds and noises
with (the sample never leaves the node: subsampling amplification needs it secret), computes each
kept record's loss gradient at the current model, clips each to L2 norm C and sums them. The
coordinator divides the noisy sum by the public expected batch, adds the L2 term (a function of the
public model) and steps; everything after the release is post-processing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from securefed.dp.noise import UniformSource

__all__ = ["GradientModel", "dpsgd_delta", "sampled_clipped_gradient_sum"]


class GradientModel(Protocol):
    """What DP-SGD needs of a model (``securefed.learning.models.ModelAdapter`` has it)."""

    @property
    def parameter_count(self) -> int: ...

    def per_example_gradients(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def l2_gradient(self, params: np.ndarray) -> np.ndarray: ...


def sampled_clipped_gradient_sum(
    adapter: GradientModel,
    params: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    clip_norm: float,
    sampling_rate: float,
    source: UniformSource,
) -> np.ndarray:
    """The sum of the clipped gradients of the records Poisson-sampled at rate q (zeros if none were)."""
    keep = source.uniform(len(y)) < sampling_rate
    gradients = adapter.per_example_gradients(params, X[keep], y[keep])
    if not len(gradients):
        return np.zeros(adapter.parameter_count)
    norms = np.linalg.norm(gradients, axis=1)
    gradients *= np.minimum(1.0, clip_norm / np.maximum(norms, np.finfo(float).tiny))[:, None]
    return gradients.sum(axis=0)


def dpsgd_delta(
    adapter: GradientModel, params: np.ndarray, noisy_gradient_sum: np.ndarray, expected_batch: float, learning_rate: float
) -> np.ndarray:
    """The step to take from ``params``: minus the learning rate times (noisy sum / expected batch + L2 term)."""
    gradient = np.asarray(noisy_gradient_sum, dtype=np.float64) / float(expected_batch) + adapter.l2_gradient(params)
    return -float(learning_rate) * gradient
