"""What the coordinator sees: its full transcript, in memory and from the real daemons, holds only the sum.

In memory, a :class:`~tests.privacy_audit.checks_secagg.RecordingServer` wraps the real
``ServerProtocol`` of an honest round (real ``ClientProtocol`` nodes, d = 65,536, node 5 dropping
before the masked-input stage so both kinds of unmasking share appear) and every message it
receives or sends is encoded exactly as the daemon puts it on the wire. The inputs are known and
deliberately structured (a ramp, zeros, a constant, an encoded update, random words), so any leak
would stand out. Over the daemons, ``LocalFederation(transcript=True)`` makes the coordinator
record everything it received and sent while four nodes train sgd_logistic on digits for two
rounds. Each statistical check is shown to have power: the same function run on plaintext fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from securefed.federation.messages import Envelope, RoundStart
from securefed.federation.node import _split
from securefed.federation.spec import parse_spec
from securefed.federation.update import TrainingUpdateCodec
from securefed.learning.models import make_adapter
from securefed.secagg.messages import MaskedInput, ShareKeys, Stage, UnmaskShares
from securefed.wire.codec import encode
from tests.privacy_audit.checks_secagg import (
    AuditFederation,
    CheckResult,
    Record,
    RecordedRound,
    Transcript,
    check_mask_depends_on_every_seed_bit,
    check_masked_independent_of_input,
    check_masked_inputs_uniform,
    check_masked_uncorrelated,
    check_no_double_reveal_in_view,
    check_no_plaintext_inputs,
    check_share_ciphertexts_look_random,
    check_share_ciphertexts_unopenable,
    check_share_ciphertexts_well_formed,
    default_policy_threshold,
    recorded_round,
    structured_inputs,
    transcript_from_file,
    uniformity_pvalues,
)
from tests.secagg_harness import exact_sum

D = 65_536

PROMISES = {
    "transcript-holds-no-plaintext-input": "the coordinator never receives any node's unmasked input",
    "masked-inputs-uniform-mod-2^32": "each masked input is uniformly random mod 2^32 to the coordinator",
    "masked-input-independent-of-input": "the masked input's distribution does not depend on the input",
    "masked-input-uncorrelated-with-plain": "masked inputs carry no linear trace of the plain input or update",
    "share-ciphertexts-aead-sized": "relayed shares are AEAD ciphertexts (nonce + 70 + tag), never reusing a nonce",
    "share-ciphertexts-look-random": "relayed share ciphertexts are indistinguishable from random bytes",
    "share-ciphertexts-unopenable-by-coordinator": "the coordinator cannot open the shares it relays",
    "coordinator-never-holds-both-shares": "the coordinator never obtains both the b-share and the s-share of one node",
    "mask-depends-on-every-seed-bit": "the mask PRG uses its whole 256-bit seed",
}


def record(audit, result: CheckResult, where: str) -> None:
    audit.check(f"{result.name} [{where}]", PROMISES[result.name], result.passed, result.detail)
    assert result.passed, result.detail


# --- in memory ------------------------------------------------------------------------------------


GRAPHS = {
    # name: (nodes, threshold, neighbours, the node that goes silent before its masked input, d).
    # Thresholds are the smallest the nodes' default policy accepts (c = max(1, ceil(n/5)) colluders):
    # t = 4 of 5 (2t > N + c) and t = 4 per neighbourhood of 5 for the sparse graph.
    "complete": (5, 4, None, 5, D),
    "sparse": (9, 4, 4, 2, 4096),
}


@pytest.fixture(scope="module", params=list(GRAPHS))
def observed(request) -> RecordedRound:
    """Structured inputs on the complete graph (5 nodes) and a SecAgg+ graph (9 nodes, 4 neighbours); one node drops."""
    n, t, neighbours, silent, d = GRAPHS[request.param]
    assert t == default_policy_threshold(n, neighbours)  # the nodes run their default policy
    run = recorded_round(
        structured_inputs(d, n), t=t, neighbours=neighbours, seed=b"audit/" + request.param.encode(),
        silent={silent: Stage.MASKED_INPUT},
    )  # fmt: skip
    survivors = tuple(node for node in range(1, n + 1) if node != silent)
    assert run.result.survivors == survivors
    assert np.array_equal(run.result.sum, exact_sum(run.inputs, survivors))  # the round really worked
    run.where = f"in-memory, {request.param} graph"
    return run


@pytest.fixture(scope="module")
def zeros_and_large() -> tuple[RecordedRound, RecordedRound]:
    """Two rounds, independent keys: every input all zeros, then every input a large constant plus a ramp."""
    zeros = {node: np.zeros(D, dtype=np.uint32) for node in range(1, 6)}
    large = {node: (np.uint32(0xC0FFEE42) + np.arange(D, dtype=np.uint32) * np.uint32(node)) for node in range(1, 6)}
    return recorded_round(zeros, seed=b"audit/zeros"), recorded_round(large, seed=b"audit/large")


def _masked(run: RecordedRound) -> list[np.ndarray]:
    return [r.body.vector for r in run.transcript.of(MaskedInput, "received")]


def _replace_bodies(transcript: Transcript, change) -> Transcript:
    """A copy of ``transcript`` with some message bodies changed (re-encoded for the wire)."""
    records = []
    for r in transcript.records:
        body = change(r.body)
        if body is r.body:
            records.append(r)
        else:
            envelope = Envelope(r.envelope.task, r.envelope.aggregation, body)
            records.append(Record(r.direction, r.node, envelope, tuple(encode(envelope))))
    return dataclasses.replace(transcript, records=records)


def test_transcript_holds_no_plaintext_input(observed, audit):
    """Promise: no message the coordinator receives or sends contains any node's unmasked input, even in part."""
    result = check_no_plaintext_inputs(observed.transcript, observed.inputs)
    # Power: a 16-byte excerpt of node 4's input hidden at an odd offset inside one ciphertext is found.
    excerpt = observed.inputs[4].tobytes()[4000:4016]

    def plant(body):
        if isinstance(body, ShareKeys) and body.sender == 1:
            (recipient, c), *rest = body.ciphertexts
            return dataclasses.replace(body, ciphertexts=((recipient, c[:13] + excerpt + c[29:]), *rest))
        return body

    assert not check_no_plaintext_inputs(_replace_bodies(observed.transcript, plant), observed.inputs)
    record(audit, result, observed.where)


def test_masked_inputs_are_uniform(observed, audit):
    """Promise: every masked input is uniformly distributed mod 2^32 (chi-square per byte lane, df 255, p >= 1e-6)."""
    result = check_masked_inputs_uniform(observed.transcript)
    assert len(observed.transcript.of(MaskedInput, "received")) == len(observed.inputs) - 1
    # Power: each structured input itself fails the very same tests.
    for node in (1, 2, 3, 4):
        assert min(uniformity_pvalues(observed.inputs[node]).values()) < 1e-6, node
    record(audit, result, observed.where)


def test_masked_input_is_independent_of_input(zeros_and_large, audit):
    """Promise: masked inputs of all-zero inputs and of large ramped inputs are indistinguishable (two-sample chi-square per lane)."""
    zeros, large = zeros_and_large
    result = check_masked_independent_of_input(_masked(zeros), _masked(large))
    # Power: the same two-sample test on the unmasked encodings rejects.
    assert not check_masked_independent_of_input(list(zeros.inputs.values()), list(large.inputs.values()))
    record(audit, result, "in-memory")


def test_masked_input_is_uncorrelated_with_input(observed, zeros_and_large, audit):
    """Promise: no masked input correlates with the input behind it (|r| <= 5/sqrt(d))."""
    runs = (observed, *zeros_and_large)
    pairs = [
        (f"node {r.body.sender}", r.body.vector, run.inputs[r.body.sender])
        for run in runs
        for r in run.transcript.of(MaskedInput, "received")
    ]
    result = check_masked_uncorrelated(pairs)
    assert not check_masked_uncorrelated([(label, ref, ref) for label, _, ref in pairs])  # power
    record(audit, result, observed.where)


def _zeroed_ciphertexts(body):
    if isinstance(body, ShareKeys):  # a "cipher" that shows the layout of an all-zero plaintext
        return dataclasses.replace(body, ciphertexts=tuple((v, c[:12] + bytes(70) + c[-16:]) for v, c in body.ciphertexts))
    return body


def test_share_ciphertexts_are_aead_sized(observed, audit):
    """Promise: every share the coordinator relays is an AEAD ciphertext of nonce + 70 + tag bytes with a fresh nonce."""
    result = check_share_ciphertexts_well_formed(observed.transcript)
    record(audit, result, observed.where)


def test_share_ciphertexts_look_random(observed, audit):
    """Promise: relayed share ciphertexts look random (byte chi-square over pooled ciphertexts, no long runs)."""
    result = check_share_ciphertexts_look_random(observed.transcript)
    assert not check_share_ciphertexts_look_random(_replace_bodies(observed.transcript, _zeroed_ciphertexts))  # power
    record(audit, result, observed.where)


def test_share_ciphertexts_cannot_be_opened_by_the_coordinator(observed, audit):
    """Promise: no relayed share opens under any key the coordinator can build from the public keys it sees."""
    result = check_share_ciphertexts_unopenable(observed.transcript)
    record(audit, result, observed.where)


def test_coordinator_never_holds_both_shares_of_a_node(observed, audit):
    """Promise: the coordinator never receives both a b-share and an s-share of the same node."""
    result = check_no_double_reveal_in_view(observed.transcript)
    unmask = observed.transcript.of(UnmaskShares, "received")
    assert any(r.body.s_shares for r in unmask) and any(r.body.b_shares for r in unmask)  # both kinds flowed
    # Power: one extra UnmaskShares carrying a b-share of the dropped node next to its s-shares is caught.
    holder = next(r for r in unmask if r.body.s_shares)
    owner, share = holder.body.s_shares[0]
    forged = UnmaskShares(holder.body.sender, ((owner, share),), ())
    envelope = Envelope(holder.envelope.task, holder.aggregation, forged)
    tampered = dataclasses.replace(
        observed.transcript,
        records=[*observed.transcript.records, Record("received", "node-1", envelope, tuple(encode(envelope)))],
    )
    assert not check_no_double_reveal_in_view(tampered)
    record(audit, result, observed.where)


def test_mask_prg_depends_on_every_seed_bit(audit):
    """Promise: the mask PRG is keyed by all 256 bits of its seed (no short-seed generator)."""
    record(audit, check_mask_depends_on_every_seed_bit(), "prg")


# --- over the real daemons ------------------------------------------------------------------------


@dataclass
class DaemonRun:
    federation: AuditFederation
    transcript: Transcript
    #: (label, masked vector, aggregate mean update of that round, node's locally recomputed plain update)
    training_inputs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]


def _plain_updates(federation: AuditFederation, transcript: Transcript) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """For every training MaskedInput: the round's mean update (public) and the node's plain update, recomputed."""
    starts = {}
    for r in transcript.of(RoundStart, "sent"):
        spec = parse_spec(r.body.spec)
        starts[(spec.round, spec.phase)] = (r.aggregation, spec, r.body)
    out = []
    for (round_number, phase), (aggregation, spec, start) in sorted(starts.items()):
        if phase != "train":
            continue
        after = starts.get((round_number, "evaluate")) or starts.get((round_number + 1, "train"))
        if after is None:
            raise AssertionError(f"no later RoundStart carries the model after round {round_number}")
        model = np.asarray(start.model, dtype=np.float64)
        mean_delta = np.asarray(after[2].model, dtype=np.float64) - model
        adapter = make_adapter(spec.model_kind, spec.n_features, spec.classes, **spec.model_options)
        codec = TrainingUpdateCodec(
            adapter.parameter_count, spec.clip_norm, spec.fractional_bits, spec.weight_cap, len(start.cohort)
        )
        scale = float(1 << spec.fractional_bits)
        reference = np.round(mean_delta * scale).astype(np.int64).astype(np.uint32)
        for r in transcript.of(MaskedInput, "received"):
            if r.aggregation != aggregation:
                continue
            X, y = federation.node_data[r.node]
            train, _ = _split(len(y), 0.2, r.node)
            trained = adapter.fit_local(
                model,
                X[train],
                y[train],
                epochs=spec.epochs,
                learning_rate=spec.learning_rate,
                batch_size=spec.batch_size,
                seed=0,
            )
            plain = codec.encode(trained - model, len(train))
            out.append((f"{r.node} round {round_number}", r.body.vector[:-1], reference, plain[:-1]))
    return out


@pytest.fixture(scope="module")
def daemons(tmp_path_factory) -> DaemonRun:
    """Four node daemons and a recording coordinator over CURVE ZeroMQ: two rounds, each with federated evaluation."""
    federation = AuditFederation(tmp_path_factory.mktemp("transcript") / "fed", n_nodes=4, rounds=2, transcript=True)
    try:
        federation.start_coordinator()
        federation.start_nodes()
        code = federation.wait_coordinator_exit(timeout=90)
        assert code == 0, federation.diagnostics()
    finally:
        federation.stop()
    transcript = transcript_from_file(federation.fed.transcript_path)
    senders = {(r.aggregation, r.node) for r in transcript.of(MaskedInput, "received")}
    assert len(senders) == 16, f"expected 4 nodes x 4 aggregations of masked inputs, got {sorted(senders)}"
    return DaemonRun(federation, transcript, _plain_updates(federation, transcript))


@pytest.mark.integration
def test_daemon_masked_inputs_are_uniform(daemons, audit):
    """Promise: every masked input a real coordinator receives is uniform mod 2^32 (training and evaluation vectors)."""
    record(audit, check_masked_inputs_uniform(daemons.transcript), "daemons")


@pytest.mark.integration
def test_daemon_masked_inputs_are_uncorrelated_with_updates(daemons, audit):
    """Promise: no masked update a real coordinator receives correlates with the round's plain model update."""
    pairs = [(label, masked, mean) for label, masked, mean, _ in daemons.training_inputs]
    result = check_masked_uncorrelated(pairs)
    # Power: each node's plain update, recomputed from its own data, does correlate with the round's mean update.
    assert not check_masked_uncorrelated([(label, plain, mean) for label, _, mean, plain in daemons.training_inputs])
    # ... and the plain updates fail the uniformity tests the masked ones pass.
    for label, _, _, plain in daemons.training_inputs:
        assert min(uniformity_pvalues(plain).values()) < 1e-6, label
    record(audit, result, "daemons")


@pytest.mark.integration
@pytest.mark.parametrize(
    "check",
    [check_share_ciphertexts_well_formed, check_share_ciphertexts_look_random, check_share_ciphertexts_unopenable],
    ids=["aead-sized", "look-random", "unopenable"],
)
def test_daemon_relayed_shares_are_sealed(daemons, audit, check):
    """Promise: every share ciphertext a real coordinator relays is AEAD-sized, random-looking and unopenable by it."""
    record(audit, check(daemons.transcript), "daemons")


@pytest.mark.integration
def test_daemon_coordinator_never_holds_both_shares(daemons, audit):
    """Promise: a real coordinator never receives both the b-share and the s-share of one node."""
    record(audit, check_no_double_reveal_in_view(daemons.transcript), "daemons")
