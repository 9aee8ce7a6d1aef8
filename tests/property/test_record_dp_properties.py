"""Hypothesis invariants of record-level DP inputs: exact secure sums, no wrap-around, refusal when it could.

A record-level node's input is its clipped per-record gradients summed, scaled, rounded once, plus its
noise share (``SkellamParameters.encode_gradient_sum``). These properties extend the site-level ones
(tests/property/test_dp_properties.py) to those inputs: the planned parameters never wrap even when
every sampled record sits at the clip in one direction, however the batch is split among the sites;
the secure aggregation of such inputs (``securefed.secagg.simulate``, real masks, arbitrary dropouts
before the masked input) is exactly the sum of the survivors' inputs; and parameters whose worst-case
sum could wrap are refused when they are made, never used.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.dp.mechanism import MAX_WRAP_PROBABILITY, SkellamParameters, plan_record_skellam
from securefed.dp.noise import NoiseSource
from securefed.errors import InvalidParameter
from securefed.secagg import simulate
from securefed.secagg.bounds import default_colluders, minimum_safe_threshold

LIMIT = 2**31


def _plan(nodes: int, dimension: int, clip: float, records: int, batch: float, target: float) -> SkellamParameters:
    colluders = default_colluders(nodes)
    honest = minimum_safe_threshold(nodes, colluders) - colluders
    return plan_record_skellam(target, 1e-5, 50, clip, dimension, nodes, honest, records, batch)


@settings(max_examples=25, deadline=None)
@given(
    nodes=st.integers(3, 30),
    dimension=st.integers(1, 64),
    clip=st.floats(0.05, 10.0),
    records=st.integers(50, 100_000),
    batch_fraction=st.floats(0.001, 1.0),
    target=st.floats(0.5, 10.0),
    sign=st.sampled_from([1.0, -1.0]),
    split=st.randoms(use_true_random=False),
)
def test_record_level_sums_decode_exactly_at_the_extreme(nodes, dimension, clip, records, batch_fraction, target, sign, split):
    """batch_bound records, each at the clip on one coordinate with one sign, split among the sites in any
    way: the modular sum of the encodings (noise included) is the exact integer sum, inside int32."""
    batch = max(1.0, batch_fraction * records)
    plan = _plan(nodes, dimension, clip, records, batch, target)
    assert plan.wrap_probability <= MAX_WRAP_PROBABILITY
    counts = [0] * nodes
    for _ in range(plan.batch_bound):
        counts[split.randrange(nodes)] += 1
    encodings = []
    for i, count in enumerate(counts):
        gradient_sum = np.zeros(dimension)
        gradient_sum[0] = sign * clip * count
        encodings.append(plan.encode_gradient_sum(gradient_sum, NoiseSource(bytes([i % 256, 7]) * 16)))
    exact = np.sum([e.view(np.int32).astype(np.int64) for e in encodings], axis=0)
    total = np.zeros(dimension, dtype=np.uint32)
    for e in encodings:
        np.add(total, e, out=total)
    assert np.array_equal(total.view(np.int32).astype(np.int64), exact)
    assert np.abs(exact).max() < LIMIT - 1
    decoded = plan.decode_gradient_sum(total, nodes)
    noise_sd = math.sqrt(nodes * plan.node_variance) / plan.scale
    assert abs(decoded[0] - sign * clip * plan.batch_bound) <= 12 * noise_sd + nodes / plan.scale


@settings(max_examples=15, deadline=None)
@given(
    nodes=st.integers(3, 9),
    dropped=st.sets(st.integers(1, 9), max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_secure_aggregation_of_record_level_inputs_is_the_survivors_exact_sum(nodes, dropped, seed):
    """Real masks over record-level inputs; nodes that drop before their masked input are left out exactly."""
    plan = _plan(nodes, 16, 1.0, 5000, 200.0, 2.0)
    threshold = minimum_safe_threshold(nodes, default_colluders(nodes))
    dropped = {d for d in dropped if d <= nodes}
    if nodes - len(dropped) < threshold:
        dropped = set(sorted(dropped)[: nodes - threshold])
    rng = np.random.default_rng(seed)  # test inputs only
    inputs = [
        plan.encode_gradient_sum(rng.normal(size=16) * 3, NoiseSource(seed.to_bytes(4, "little") + bytes([i]) * 12))
        for i in range(nodes)
    ]
    result = simulate(inputs, threshold, dropouts={"masked_input": sorted(dropped)}, seed=seed)
    survivors = [i for i in range(1, nodes + 1) if i not in dropped]
    assert list(result.survivors) == survivors
    expected = np.zeros(16, dtype=np.uint32)
    for i in survivors:
        np.add(expected, inputs[i - 1], out=expected)
    assert np.array_equal(result.sum, expected)


@given(
    clip=st.floats(1e-2, 1e3),
    bits=st.integers(0, 30),
    log_variance=st.floats(0, 9.9),  # within the sampler's validated range (2^33)
    cohort=st.integers(1, 1000),
    batch_bound=st.integers(1, 10**7),
    dimension=st.integers(1, 10**6),
)
def test_record_parameters_that_could_wrap_are_refused(clip, bits, log_variance, cohort, batch_bound, dimension):
    try:
        params = SkellamParameters(
            clip, bits, 10.0**log_variance, 1, dimension, cohort, unit="record", sampling_rate=0.5,
            expected_batch=float(max(1, batch_bound // 2)), batch_bound=batch_bound,
        )  # fmt: skip
    except InvalidParameter as refused:
        assert "wrap" in str(refused), refused
        return
    # accepted: the worst case (every record at the clip, one direction) plus 7 noise standard deviations fits
    worst = batch_bound * clip * params.scale + cohort
    assert worst + 7 * math.sqrt(cohort * params.node_variance) < LIMIT
    assert params.wrap_probability <= MAX_WRAP_PROBABILITY
