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
from collections.abc import Callable
from contextlib import AbstractContextManager
from unittest import mock

import numpy as np
from cryptography.hazmat.primitives.ciphers import algorithms

import securefed.crypto.aead as aead
import securefed.crypto.prg as prg
import securefed.secagg.client as client_module
from securefed.crypto.agreement import AgreementKeyPair, hkdf_sha256, kdf_info
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.messages import MaskedInput, UnmaskRequest, UnmaskShares
from tests.privacy_audit.checks_secagg import (
    CheckResult,
    attack_different_models,
    attack_double_reveal,
    attack_forged_consistency_signatures,
    attack_key_substitution,
    attack_node_round_start,
    attack_split_survivor_view,
    attack_weaker_than_policy,
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
    for peer in sorted(self._shared_with):
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
    """Canary: share ciphertexts whose associated data ignores task, round, direction and context are caught."""
    unbound = lambda task, round_id, sender, recipient, context=b"": b"securefed/share/v1"  # noqa: E731
    run_canary(audit, "AEAD associated data not bound to the share's address", lambda: [check_share_ciphertext_bound_to_address()],
               lambda: _patch_both(aead, client_module, "share_associated_data", unbound))  # fmt: skip


def _public_share_key(config: RoundConfig, own_c: AgreementKeyPair, peer_c_pk: bytes, me: int, peer: int) -> bytes:
    """Broken: the share key is HKDF over the two *public* keys (ordered by node id): no secret in it."""
    first, second = (own_c.public_bytes, peer_c_pk) if me < peer else (peer_c_pk, own_c.public_bytes)
    return hkdf_sha256(first + second, kdf_info("share-encryption", config.task, config.round_id, me, peer, config.context))


def test_canary_share_key_from_public_keys(audit):
    """Canary: share encryption keyed only by public material is caught because the coordinator can open the shares."""
    run_canary(audit, "share key derived from public keys only", relayed_share_probe,
               lambda: mock.patch.object(client_module, "share_key", _public_share_key))  # fmt: skip


def test_canary_policy_not_enforced(audit):
    """Canary: a node that never checks the round against its ClientPolicy is caught by the weaker-than-policy check."""
    run_canary(audit, "node ignores its ClientPolicy", lambda: [attack_weaker_than_policy(), attack_node_round_start("small-cohort")],
               lambda: mock.patch.object(ClientPolicy, "check", lambda self, config: None))  # fmt: skip


def test_canary_context_not_signed(audit):
    """Canary: key advertisements signed without the round context (model hash) are caught by the different-models check."""
    original = client_module.advertise_transcript

    def without_context(config: RoundConfig, sender: int, c_pk: bytes, s_pk: bytes) -> bytes:
        return original(dataclasses.replace(config, context=bytes(32)), sender, c_pk, s_pk)

    run_canary(audit, "round context not bound into key advertisements", lambda: [attack_different_models()],
               lambda: mock.patch.object(client_module, "advertise_transcript", without_context))  # fmt: skip


class _patch_both(AbstractContextManager):  # noqa: N801 - used like mock.patch
    """Patch one name in two modules (a function imported by name lives on in the importer too)."""

    def __init__(self, first: object, second: object, name: str, value: object) -> None:
        self._patches = [mock.patch.object(first, name, value), mock.patch.object(second, name, value)]

    def __enter__(self) -> None:
        for patch in self._patches:
            patch.__enter__()

    def __exit__(self, *exc: object) -> None:
        for patch in reversed(self._patches):
            patch.__exit__(*exc)
