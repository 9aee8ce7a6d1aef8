"""Mutation canaries, secure-aggregation side: the audit checks catch what they claim to catch.

Each canary builds a deliberately broken variant of the implementation inside the test by
patching exactly one thing (``unittest.mock``), runs the same audit check functions the audit
tests run (``checks_secagg.py``), and requires at least one of them to fail. Each test first runs
the same checks on the unpatched code and requires them all to pass (positive control), so a
"caught" canary cannot come from a check that fails anyway. Every canary is recorded in the
report with the check(s) that caught it; an uncaught canary fails the suite.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from unittest import mock

import numpy as np
from cryptography.hazmat.primitives.ciphers import algorithms

import securefed.crypto.prg as prg
import securefed.secagg.client as client_module
import securefed.secagg.server as server_module
import securefed.secagg.transcript as transcript_module
from securefed.crypto.agreement import AgreementKeyPair, hkdf_sha256, kdf_info
from securefed.crypto.shamir import combine
from securefed.federation.node import NodeState
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.messages import MaskedInput, SeedRevealList, UnmaskRequest, UnmaskShares
from securefed.secagg.server import AggregateResult, ServerProtocol, ServerState
from tests.privacy_audit.checks_secagg import (
    CheckResult,
    attack_colluder_key_list,
    attack_dealer_share_mismatch,
    attack_different_models,
    attack_double_reveal,
    attack_forged_consistency_signatures,
    attack_inconsistent_dealer,
    attack_key_substitution,
    attack_node_round_start,
    attack_rerun_after_release,
    attack_split_survivor_view,
    attack_split_view_parameters,
    attack_weaker_than_policy,
    attack_wrong_share_revealed,
    check_graph_randomness_hidden,
    check_mask_depends_on_every_seed_bit,
    check_masked_independent_of_input,
    check_masked_inputs_uniform,
    check_masked_uncorrelated,
    check_no_plaintext_inputs,
    check_share_ciphertext_bound_to_address,
    check_share_ciphertexts_look_random,
    check_share_ciphertexts_unopenable,
    check_share_ciphertexts_well_formed,
    recorded_round,
    structured_inputs,
)

D = 8192  # enough for the byte-lane tests (>= 1,280 entries), small enough to be quick


def run_canary(audit, name: str, probe: Callable[[], list[CheckResult]], broken: Callable[[], AbstractContextManager]) -> None:
    """Positive control on the real code, then the same checks on the broken variant: at least one must fail."""
    control = probe()
    assert control and all(control), [r for r in control if not r]
    with broken():
        results = probe()
    caught = [r.name for r in results if not r]
    audit.canary(name, ", ".join(caught) if caught else None)
    assert caught, f"canary {name!r} was not caught: {[(r.name, r.detail) for r in results]}"


# --- probes: the audit checks, run on whatever implementation is in place --------------------------


def masked_input_probe() -> list[CheckResult]:
    observed = recorded_round(structured_inputs(D), seed=b"canary/observed")
    zeros = recorded_round({node: np.zeros(D, dtype=np.uint32) for node in range(1, 6)}, seed=b"canary/zeros")
    large = recorded_round(
        {node: np.uint32(0xC0FFEE42) + np.arange(D, dtype=np.uint32) for node in range(1, 6)}, seed=b"canary/large"
    )
    masked = {r.body.sender: r.body.vector for r in observed.transcript.of(MaskedInput, "received")}
    return [
        check_masked_inputs_uniform(observed.transcript),
        check_no_plaintext_inputs(observed.transcript, observed.inputs),
        check_masked_uncorrelated((f"node {n}", v, observed.inputs[n]) for n, v in masked.items()),
        check_masked_independent_of_input(
            [r.body.vector for r in zeros.transcript.of(MaskedInput)], [r.body.vector for r in large.transcript.of(MaskedInput)]
        ),
    ]


def relayed_share_probe() -> list[CheckResult]:
    transcript = recorded_round(structured_inputs(64), seed=b"canary/shares").transcript
    return [
        check_share_ciphertexts_well_formed(transcript),
        check_share_ciphertexts_look_random(transcript),
        check_share_ciphertexts_unopenable(transcript),
    ]


# --- the canaries ------------------------------------------------------------------------------------


def test_canary_masks_not_applied(audit):
    """Canary: a node whose masks are never added (MaskAccumulator.apply does nothing) is caught by the masked-input checks."""
    run_canary(audit, "masks not applied (MaskAccumulator.apply is a no-op)", masked_input_probe,
               lambda: mock.patch.object(prg.MaskAccumulator, "apply", lambda self, masks: None))  # fmt: skip


def test_canary_prg_with_32_bit_seed(audit):
    """Canary: a mask PRG keyed by only the first 4 bytes of its seed is caught by the seed-dependence check."""
    short_seed = types.SimpleNamespace(AES=lambda key: algorithms.AES(bytes(key[:4]) + bytes(28)))
    run_canary(audit, "mask PRG with a 32-bit seed", lambda: [check_mask_depends_on_every_seed_bit(), *masked_input_probe()],
               lambda: mock.patch.object(prg, "algorithms", short_seed))  # fmt: skip


def _reveal_whatever_is_asked(self: client_module.ClientProtocol, message: UnmaskRequest) -> list[UnmaskShares]:
    """Broken: no checks at all; the b-share of every listed survivor and the s-share of every listed dropped peer."""
    survivors, dropped = set(message.survivors), set(message.dropped)
    b_shares, s_shares = [], []
    for peer in sorted(set(self._shared_with) & set(self._held)):
        s_share, b_share = self._held[peer]
        if peer in survivors:
            b_shares.append((peer, b_share.to_bytes()))
            self.revealed[peer] = "b"
        if peer in dropped:
            s_shares.append((peer, s_share.to_bytes()))
            self.revealed[peer] = "s"
    return [UnmaskShares(self.node_id, tuple(b_shares), tuple(s_shares))]


def test_canary_node_answers_double_reveal_request(audit):
    """Canary: a node that answers an unmask request naming a peer as both survivor and dropped is caught."""
    run_canary(audit, "node answers a double-reveal request", lambda: [attack_double_reveal(), attack_split_survivor_view()],
               lambda: mock.patch.dict(client_module._HANDLERS, {UnmaskRequest: _reveal_whatever_is_asked}))  # fmt: skip


def test_canary_signatures_not_verified(audit):
    """Canary: a node that skips signature verification is caught by the key-substitution and forged-signature checks."""
    run_canary(audit, "node skips signature verification", lambda: [attack_key_substitution(), attack_forged_consistency_signatures()],
               lambda: mock.patch.object(client_module, "verify", lambda public, signature, message: None))  # fmt: skip


def test_canary_associated_data_not_bound(audit):
    """Canary: share ciphertexts whose associated data ignores the round binding and the direction are caught."""
    unbound = lambda config, sender, recipient: b"securefed/share/v2"  # noqa: E731
    run_canary(audit, "AEAD associated data not bound to the share's address", lambda: [check_share_ciphertext_bound_to_address()],
               lambda: mock.patch.object(client_module, "share_associated_data_for", unbound))  # fmt: skip


def _public_share_key(config: RoundConfig, own_c: AgreementKeyPair, peer_c_pk: bytes, me: int, peer: int) -> bytes:
    """Broken: the share key is HKDF over the two *public* keys (ordered by node id): no secret in it."""
    first, second = (own_c.public_bytes, peer_c_pk) if me < peer else (peer_c_pk, own_c.public_bytes)
    info = kdf_info("share-encryption", config.task, config.round_id, me, peer, transcript_module.round_binding(config))
    return hkdf_sha256(first + second, info)


def test_canary_share_key_from_public_keys(audit):
    """Canary: share encryption keyed only by public material is caught because the coordinator can open the shares."""
    run_canary(audit, "share key derived from public keys only", relayed_share_probe,
               lambda: mock.patch.object(client_module, "share_key", _public_share_key))  # fmt: skip


def test_canary_policy_not_enforced(audit):
    """Canary: a node that never checks the round against its ClientPolicy is caught by the weaker-than-policy check."""
    run_canary(audit, "node ignores its ClientPolicy", lambda: [attack_weaker_than_policy(), attack_node_round_start("small-cohort")],
               lambda: mock.patch.object(ClientPolicy, "check", lambda self, config, roster_size=None: None))  # fmt: skip


def test_canary_context_not_bound(audit):
    """Canary: a round binding without the round context (model hash) is caught by the different-models check.

    (Leaving the context out of the advertisement signature alone is no longer a defect: the signed
    graph commitment and every later transcript still bind it, through the round binding.)
    """
    original = transcript_module.round_binding

    def without_context(config: RoundConfig) -> bytes:
        return original(dataclasses.replace(config, context=bytes(32)))

    run_canary(audit, "round context not bound (round_binding ignores the model hash)", lambda: [attack_different_models()],
               lambda: _uncached(mock.patch.object(transcript_module, "round_binding", without_context)))  # fmt: skip


@contextmanager
def _uncached(patch: AbstractContextManager) -> Iterator[None]:
    """Apply ``patch`` with the transcript module's memo caches emptied before and after, so no byte string
    computed by the real binding survives into the broken variant (or back out of it)."""

    def clear() -> None:
        for value in vars(transcript_module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()

    clear()
    try:
        with patch:
            yield
    finally:
        clear()


# --- canaries for the active-security checks ----------------------------------------------------------


def test_canary_colluder_bound_skipped(audit):
    """Canary: a node whose policy check ignores max_colluders (defends against no colluder: t > n/2) is caught
    by the split-view-parameters checks."""
    run_canary(audit, "node skips the colluder bound (ClientPolicy ignores max_colluders)",
               lambda: [attack_split_view_parameters(), attack_node_round_start("weak-threshold")],
               lambda: mock.patch.object(ClientPolicy, "colluders", lambda self, roster_size: 0))  # fmt: skip


_REAL_REVEALS_HANDLER = client_module._HANDLERS[SeedRevealList]


def _graph_over_key_list(self: client_module.ClientProtocol, message: SeedRevealList) -> list:
    """Broken: the node draws its neighbour graph over the key list (the coordinator's choice), not the cohort."""
    members, build = sorted(self._entries), client_module.NeighbourGraph.build
    graph = types.SimpleNamespace(build=lambda _cohort, degree, seed: build(members, degree, seed))
    with mock.patch.object(client_module, "NeighbourGraph", graph):
        return _REAL_REVEALS_HANDLER(self, message)


def test_canary_graph_over_key_list(audit):
    """Canary: a node that builds the graph over the key list instead of the cohort is caught by the
    colluder-only key list check (all its neighbours would be colluders)."""
    run_canary(audit, "node builds the graph over the key list instead of the cohort", lambda: [attack_colluder_key_list()],
               lambda: mock.patch.dict(client_module._HANDLERS, {SeedRevealList: _graph_over_key_list}))  # fmt: skip


def test_canary_graph_randomness_revealed_early(audit):
    """Canary: a node whose advertisement carries its graph randomness itself (the "commitment" is the value)
    is caught by the graph-randomness check: the coordinator could grind the key list."""
    in_the_clear = lambda config, sender, value: value  # noqa: E731
    run_canary(audit, "node reveals its graph randomness before the key list (advertises the value)",
               lambda: [check_graph_randomness_hidden()],
               lambda: _patch_both(client_module, server_module, "seed_commitment", in_the_clear))  # fmt: skip


def _naive_unmask(self: ServerProtocol, answered: tuple[int, ...], inbox: dict) -> list:
    """Broken: every revealed share is trusted (no commitment check) and each secret is interpolated from its first t shares."""
    config, survivors = self.config, set(self._survivors)
    b_pool: dict[int, list] = {node: [] for node in self._survivors}
    s_pool: dict[int, list] = {node: [] for node in self._shared - survivors}
    for sender in answered:
        b_shares, s_shares = inbox[sender]
        for owner, share in b_shares.items():
            b_pool[owner].append(share)
        for owner, share in s_shares.items():
            s_pool[owner].append(share)
    masks = [(combine(b_pool[owner][: config.threshold]), -1) for owner in self._survivors]
    for owner, shares in s_pool.items():
        keys = AgreementKeyPair.from_private_bytes(combine(shares[: config.threshold]))
        for survivor in sorted(self._neighbourhoods[owner] & survivors):
            seed = transcript_module.pairwise_mask_seed(config, keys, self._keys[survivor].s_pk, owner, survivor)
            masks.append((seed, -transcript_module.mask_sign(survivor, owner)))
    unmasked = prg.MaskAccumulator(self._masked_sum)
    unmasked.apply(masks)
    self.result = AggregateResult(unmasked.value, self._survivors, {})
    return []


def test_canary_reconstruction_trusts_shares(audit):
    """Canary: a coordinator that reconstructs each secret from the first t shares without checking commitments
    is caught by the wrong-share and bad-dealer checks (it neither names the liar nor the dealer)."""
    run_canary(audit, "server reconstructs from the first t shares without checking commitments",
               lambda: [attack_wrong_share_revealed(), attack_inconsistent_dealer()],
               lambda: mock.patch.dict(server_module._CLOSERS, {ServerState.COLLECT_UNMASK_SHARES: _naive_unmask}))  # fmt: skip


def test_canary_holder_skips_share_commitments(audit):
    """Canary: a holder that takes (and later reveals) shares whatever its dealer committed to is caught by the
    uncommitted-share check: the corrupt dealer gets the honest holder excluded."""
    trusting = types.SimpleNamespace(compare_digest=lambda a, b: True)
    run_canary(audit, "holder reveals shares of a dealer whose commitment did not match", lambda: [attack_dealer_share_mismatch()],
               lambda: mock.patch.object(client_module, "hmac", trusting))  # fmt: skip


def test_canary_release_not_remembered(audit):
    """Canary: a node that does not remember which rounds and models it released is caught by the rerun check."""
    run_canary(audit, "node forgets its releases (rerun-and-subtract guard off)", lambda: [attack_rerun_after_release()],
               lambda: mock.patch.object(NodeState, "released", lambda self, task, phase, round_number, model_hash: None))  # fmt: skip


class _patch_both(AbstractContextManager):
    """Patch one name in two modules (a function imported by name lives on in the importer too)."""

    def __init__(self, first: object, second: object, name: str, value: object) -> None:
        self._patches = [mock.patch.object(first, name, value), mock.patch.object(second, name, value)]

    def __enter__(self) -> None:
        for patch in self._patches:
            patch.__enter__()

    def __exit__(self, *exc: object) -> None:
        for patch in reversed(self._patches):
            patch.__exit__(*exc)
