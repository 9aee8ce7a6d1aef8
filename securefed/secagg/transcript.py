"""What gets signed and what goes into each key derivation, in one place.

Client and server must build these byte strings identically; keeping them
here means a change to the binding can never reach only one side. Every
string carries a domain label, the task, the round and the round context
(the hash of the global model and task configuration).
"""

from __future__ import annotations

from collections.abc import Iterable

from securefed.crypto._encoding import encode_fields, encode_id_list
from securefed.crypto.agreement import AgreementKeyPair, derive_key
from securefed.secagg.config import RoundConfig

__all__ = ["advertise_transcript", "consistency_transcript", "share_key", "pairwise_mask_seed", "mask_sign"]


def advertise_transcript(config: RoundConfig, sender: int, c_pk: bytes, s_pk: bytes) -> bytes:
    return b"securefed/advertise/v1" + encode_fields(
        config.task, config.round_id, config.context, sender, c_pk, s_pk
    )


def consistency_transcript(config: RoundConfig, seed: bytes, survivors: Iterable[int]) -> bytes:
    return b"securefed/consistency/v1" + encode_fields(
        config.task, config.round_id, config.context, seed, encode_id_list(survivors)
    )


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
        context=config.context,
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
        context=config.context,
    )


def mask_sign(me: int, peer: int) -> int:
    """+1 if ``me`` adds the pairwise mask, -1 if it subtracts it; the pair cancels in the sum."""
    return 1 if me < peer else -1
