"""What gets signed, hashed and bound into each key derivation, in one place.

Client and server must build these byte strings identically; keeping them
here means a change to the binding can never reach only one side. Every
string starts with a domain label and the round's *binding*: task, round,
round context (the hash of the global model and task configuration), cohort
size, threshold, neighbour count and vector length. A coordinator that shows
two nodes different parameters therefore gets signatures that do not verify
and masks that do not cancel, even if it kept the context the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import lru_cache

from securefed.crypto._encoding import encode_fields, encode_id_list
from securefed.crypto.agreement import AgreementKeyPair, derive_key
from securefed.secagg.config import RoundConfig

__all__ = [
    "COMMITMENT_SIZE",
    "advertise_transcript",
    "commitments_transcript",
    "consistency_transcript",
    "graph_seed",
    "mask_seed_commitment",
    "mask_sign",
    "pairwise_mask_seed",
    "round_binding",
    "seed_commitment",
    "share_associated_data_for",
    "share_commitment",
    "share_key",
]

COMMITMENT_SIZE = 32


@lru_cache(maxsize=256)
def round_binding(config: RoundConfig) -> bytes:
    """Every public parameter of the round, length-prefixed."""
    return encode_fields(
        config.task,
        config.round_id,
        config.context,
        config.cohort_size,
        config.threshold,
        0 if config.neighbours is None else config.neighbours,
        config.vector_length,
    )


def advertise_transcript(config: RoundConfig, sender: int, c_pk: bytes, s_pk: bytes, commitment: bytes) -> bytes:
    return b"securefed/advertise/v2" + round_binding(config) + encode_fields(sender, c_pk, s_pk, commitment)


@lru_cache(maxsize=64)
def _prefixed_hash(label: bytes, config: RoundConfig) -> hashlib._Hash:
    """SHA-256 state after ``label || round_binding``; callers ``copy()`` it (saves rehashing per item)."""
    return hashlib.sha256(label + round_binding(config))


def seed_commitment(config: RoundConfig, sender: int, value: bytes) -> bytes:
    """A hiding, binding commitment to a node's graph randomness (32 random bytes)."""
    digest = _prefixed_hash(b"securefed/graph-commitment/v1", config).copy()
    digest.update(encode_fields(sender, value))
    return digest.digest()


def graph_seed(config: RoundConfig, reveals: Iterable[tuple[int, bytes]]) -> bytes:
    """SHA-256 over every revealed graph randomness of the key list, in id order."""
    digest = _prefixed_hash(b"securefed/graph/v2", config).copy()
    digest.update(b"".join(encode_fields(sender, value) for sender, value in sorted(reveals)))
    return digest.digest()


def share_commitment(config: RoundConfig, dealer: int, holder: int, kind: str, share: bytes) -> bytes:
    """Commitment to one share (``kind`` "s" or "b"); shares are uniform 256-bit values, so it hides them."""
    digest = _prefixed_hash(b"securefed/share-commitment/v1", config).copy()
    digest.update(encode_fields(dealer, holder, kind, share))
    return digest.digest()


def mask_seed_commitment(config: RoundConfig, dealer: int, seed: bytes) -> bytes:
    """Commitment to a node's self-mask seed b (32 random bytes, so it hides it)."""
    digest = _prefixed_hash(b"securefed/mask-seed-commitment/v1", config).copy()
    digest.update(encode_fields(dealer, seed))
    return digest.digest()


def commitments_transcript(
    config: RoundConfig,
    seed: bytes,
    dealer: int,
    commitments: Sequence[tuple[int, bytes]],
    mask_commitment: bytes,
) -> bytes:
    """What a dealer signs over its share commitments (one signature per dealer and round)."""
    parts = [b"securefed/share-commitments/v2", round_binding(config), encode_fields(seed, dealer, mask_commitment)]
    parts.extend(encode_fields(holder, commitment) for holder, commitment in commitments)
    return b"".join(parts)


def consistency_transcript(config: RoundConfig, seed: bytes, survivors: Iterable[int]) -> bytes:
    """What a node signs over the survivor set U3 (hashed, so the transcript stays short for large n)."""
    digest = hashlib.sha256(encode_id_list(survivors)).digest()
    return b"securefed/consistency/v3" + round_binding(config) + encode_fields(seed, digest)


def share_associated_data_for(config: RoundConfig, sender: int, recipient: int) -> bytes:
    """AEAD associated data for the share ciphertext from ``sender`` to ``recipient`` (direction matters)."""
    return b"securefed/share/v2" + round_binding(config) + encode_fields(sender, recipient)


def share_key(config: RoundConfig, own_c: AgreementKeyPair | bytes, peer_c_pk: bytes, me: int, peer: int) -> bytes:
    """The AEAD key for shares between two nodes (same key both ways; direction is in the AD)."""
    return derive_key(
        own_c,
        peer_c_pk,
        purpose="share-encryption",
        task=config.task,
        round_id=config.round_id,
        party_a=me,
        party_b=peer,
        context=round_binding(config),
    )


def pairwise_mask_seed(config: RoundConfig, own_s: AgreementKeyPair | bytes, peer_s_pk: bytes, me: int, peer: int) -> bytes:
    """The PRG seed for the pairwise mask between two nodes."""
    return derive_key(
        own_s,
        peer_s_pk,
        purpose="pairwise-mask",
        task=config.task,
        round_id=config.round_id,
        party_a=me,
        party_b=peer,
        context=round_binding(config),
    )


def mask_sign(me: int, peer: int) -> int:
    """+1 if ``me`` adds the pairwise mask, -1 if it subtracts it; the pair cancels in the sum."""
    return 1 if me < peer else -1
