"""The securely aggregated model is plain weighted FedAvg of the same updates, up to the encoding's resolution.

The bound, derived from :class:`securefed.federation.update.TrainingUpdateCodec`
----------------------------------------------------------------------------------
Node k sends the vector ``v_k = [w_k * clip(d_k), w_k]`` (``w_k = min(samples,
cap) / cap``, ``clip`` the L2 clip to C), encoded at ``f`` fractional bits:
each coordinate is scaled by ``2^f`` (exact: a power of two), rounded
stochastically to ``floor`` or ``floor + 1`` (so off by *strictly less* than
one step ``e = 2^-f``), and reduced mod 2^32. The encoder's own clips are
no-ops here (``|v_k|_2 <= sqrt(C^2 + 1)`` and ``|v_k|_inf <= max(C, 1)`` by
construction), and the integers sum exactly (the codec refuses parameters
under which n of them could wrap). So for the m nodes whose inputs are in the
sum, every coordinate of the decoded sums satisfies

    |S^ - S| < m e        with S = sum_k w_k clip(d_k)
    |W^ - W| < m e        with W = sum_k w_k

and the coordinator's mean ``S^ / W^`` differs from FedAvg's ``S / W`` by

    S^/W^ - S/W = ((S^ - S) - (S/W) (W^ - W)) / W^
    |S^/W^ - S/W| < m e (1 + |S/W|) / W^           (per coordinate)

which the tests check with ``W^`` as decoded (plus 1e-12 for float64
arithmetic, and 1e-9 where two processes trained with different batch orders).
Each test also shows the bound has teeth: it is far below the update's size,
and the aggregates one might confuse with FedAvg (unweighted mean; a mean that
still counts a node that dropped out) fall outside it.
"""

from __future__ import annotations

import numpy as np
import pytest

from securefed.federation.node import _split as node_validation_split
from securefed.federation.update import TrainingUpdateCodec, choose_fractional_bits
from securefed.learning.data import load_local_dataset
from securefed.learning.models import make_adapter
from securefed.learning.strategies import make_strategy
from securefed.secagg import simulate

pytestmark = pytest.mark.integration


def _clip(delta: np.ndarray, clip_norm: float) -> np.ndarray:
    norm = float(np.linalg.norm(delta))
    return delta * (clip_norm / norm) if norm > clip_norm else delta


def _fedavg(deltas: dict[int, np.ndarray], weights: dict[int, float], ids) -> np.ndarray:
    total = sum(weights[k] for k in ids)
    return sum(weights[k] * deltas[k] for k in ids) / total


def _bound(summands: int, resolution: float, mean: np.ndarray, decoded_weight: float) -> np.ndarray:
    return summands * resolution * (1.0 + np.abs(mean)) / decoded_weight


@pytest.mark.integration
@pytest.mark.parametrize(
    ("sizes", "threshold", "neighbours", "dropouts", "survivors"),
    [
        # complete graph; node 5 drops before its masked input, node 2 after it (its input counts)
        ((40, 90, 160, 250, 400), 3, None, {"masked_input": [5], "unmask": [2]}, (1, 2, 3, 4)),
        # sparse SecAgg+ graph with 4 neighbours each; node 3 drops at share, node 7 before its input
        ((30, 60, 90, 120, 150, 180, 210, 240), 3, 4, {"share": [3], "masked_input": [7]}, (1, 2, 4, 5, 6, 8)),
    ],
)
def test_secure_aggregate_equals_plain_fedavg(digits, sizes, threshold, neighbours, dropouts, survivors) -> None:
    n = len(sizes)
    dataset, split = digits.dataset, digits.split
    adapter = make_adapter("sgd_logistic", dataset.n_features, dataset.classes)
    model = adapter.initial_parameters(0)
    order = np.random.default_rng(7).permutation(len(split.y_train))
    cuts = np.cumsum((0, *sizes))
    deltas, samples = {}, {}
    for k in range(1, n + 1):
        rows = order[cuts[k - 1] : cuts[k]]
        trained = adapter.fit_local(
            model, split.X_train[rows], split.y_train[rows], epochs=3, learning_rate=0.5, batch_size=8, seed=k
        )
        deltas[k], samples[k] = trained - model, len(rows)
    norms = sorted(float(np.linalg.norm(d)) for d in deltas.values())
    clip_norm = norms[n // 2]  # about half the updates get clipped
    weight_cap = 150  # some nodes are capped at weight 1, the others weigh samples / cap
    codec = TrainingUpdateCodec(adapter.parameter_count, clip_norm, choose_fractional_bits(clip_norm, n), weight_cap, n)
    resolution = codec.encoder.resolution

    encoded = [codec.encode(deltas[k], samples[k]) for k in range(1, n + 1)]
    result = simulate(encoded, threshold, dropouts, neighbours)
    assert result.survivors == survivors

    # The secure sum is exactly the sum of the survivors' encodings mod 2^32 (masks cancel)...
    plain_sum = np.zeros(codec.vector_length, dtype=np.uint32)
    for k in survivors:
        plain_sum += encoded[k - 1]
    assert np.array_equal(result.sum, plain_sum)

    # ...and what the coordinator decodes from it is FedAvg of the survivors' clipped updates.
    mean_hat, weight_hat = codec.decode_mean(result.sum)
    weights = {k: min(samples[k], weight_cap) / weight_cap for k in deltas}
    assert {round(w, 6) for w in weights.values()} & {1.0} and min(weights.values()) < 1  # both kinds present
    clipped = {k: _clip(d, clip_norm) for k, d in deltas.items()}
    fedavg = _fedavg(clipped, weights, survivors)
    m = len(survivors)
    assert abs(weight_hat - sum(weights[k] for k in survivors)) < m * resolution
    bound = _bound(m, resolution, fedavg, weight_hat) + 1e-12
    error = np.abs(mean_hat - fedavg)
    assert np.all(error <= bound), f"max error {error.max():.3g} vs bound {bound[np.argmax(error - bound)]:.3g}"

    strategy = make_strategy("fedavg")
    assert np.all(np.abs(strategy.apply(model, mean_hat) - (model + fedavg)) <= bound + 1e-12)

    # The comparison has teeth.
    assert bound.max() < 1e-4 * np.abs(fedavg).max()
    unweighted = sum(clipped[k] for k in survivors) / m
    assert np.any(np.abs(mean_hat - unweighted) > bound)
    counting_dropped = _fedavg(clipped, weights, range(1, n + 1))
    assert np.any(np.abs(mean_hat - counting_dropped) > bound)
    unclipped = _fedavg(deltas, weights, survivors)
    assert np.any(np.abs(mean_hat - unclipped) > bound)


@pytest.mark.integration
def test_daemon_round_equals_fedavg_recomputed_from_node_data(launch) -> None:
    """One real round (masking on, three node processes) against FedAvg recomputed here from their files.

    Full-batch local training (batch larger than any node's data) makes each
    node's update a deterministic function of its data and the global model,
    so the test can redo every node's training and the weighted average itself.
    """
    clip_norm, weight_cap, epochs, learning_rate = 10.0, 1000, 3, 0.5
    federation = launch(
        n_nodes=3,
        rounds=1,
        local_epochs=epochs,
        learning_rate=learning_rate,
        batch_size=100_000,
        clip_norm=clip_norm,
        weight_cap=weight_cap,
        sizes=(150, 400, 700),  # weights 0.12, 0.32, 0.56 after each node's validation split
    )
    assert federation.task.get("masking", True) is True  # secure aggregation on (nodes refuse it off anyway)
    federation.start_coordinator()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(1)) == 0, federation.diagnostics()
    (row,) = federation.rounds()
    assert row["participants"] == 3 and sorted(row["survivors"]) == federation.names, row
    model0, model1 = federation.model(0), federation.model(1)
    assert model0 is not None and model1 is not None

    digits = federation.digits
    adapter = make_adapter("sgd_logistic", digits.dataset.n_features, digits.dataset.classes)
    deltas, weights = {}, {}
    for name in federation.names:
        local = load_local_dataset(
            federation.root / name / "data.csv",
            label_column="label",
            features=digits.dataset.n_features,
            classes=digits.dataset.classes,
        )
        train_rows, _ = node_validation_split(len(local.y), 0.2, name)  # the node's own fixed split
        assert len(train_rows) < 100_000
        trained = adapter.fit_local(
            model0, local.X[train_rows], local.y[train_rows], epochs=epochs, learning_rate=learning_rate,
            batch_size=100_000, seed=0,
        )  # fmt: skip
        deltas[name] = _clip(trained - model0, clip_norm)
        weights[name] = min(len(train_rows), weight_cap) / weight_cap
    fedavg = _fedavg(deltas, weights, federation.names)

    resolution = 2.0 ** -choose_fractional_bits(clip_norm, 3)  # what the coordinator proposed for 3 nodes
    weight_hat = row["total_weight"]
    assert abs(weight_hat - sum(weights.values())) < 3 * resolution
    bound = _bound(3, resolution, fedavg, weight_hat) + 1e-9
    error = np.abs(model1 - (model0 + fedavg))
    assert np.all(error <= bound), f"max error {error.max():.3g} vs bound {bound[np.argmax(error - bound)]:.3g}"
    assert bound.max() < 1e-4 * np.abs(fedavg).max()
    unweighted = sum(deltas.values()) / 3
    assert np.any(np.abs(model1 - (model0 + unweighted)) > bound)
