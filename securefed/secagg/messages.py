"""Typed messages of the secure-aggregation protocol (frozen dataclasses).

Nodes send the first six to the coordinator; the coordinator sends the next
six to nodes; :class:`Deadline` is the event a driver feeds the coordinator
when a stage's time is up. Sequences are tuples so messages are immutable;
byte strings and arrays are validated by the state machines and by the wire
codec, never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "AdvertiseKeys",
    "ClientMessage",
    "ConsistencyRequest",
    "ConsistencySignature",
    "Deadline",
    "KeyList",
    "MaskedInput",
    "PeerGone",
    "RoundAborted",
    "SeedReveal",
    "SeedRevealList",
    "Send",
    "ServerMessage",
    "ShareKeys",
    "ShareRelay",
    "Stage",
    "UnmaskRequest",
    "UnmaskShares",
]


class Stage(Enum):
    """The stages in order; values are the names the simulator's ``dropouts`` uses.

    ``REVEAL`` sits between advertising and sharing: nodes open the commitments
    to graph randomness they made in their advertisements, which fixes the
    neighbour graph (see :mod:`securefed.secagg.graph`).
    """

    ADVERTISE = "advertise"
    REVEAL = "reveal"
    SHARE = "share"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"

    @property
    def index(self) -> int:
        return _STAGE_ORDER.index(self)


_STAGE_ORDER = list(Stage)


# --- node -> coordinator ---------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0: fresh round keys and a commitment to graph randomness, signed with the identity key."""

    sender: int
    c_pk: bytes
    s_pk: bytes
    seed_commitment: bytes
    signature: bytes


@dataclass(frozen=True)
class SeedReveal:
    """Stage 0b: the graph randomness behind ``seed_commitment``, sent once the key list is fixed."""

    sender: int
    value: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Stage 1: ``(recipient, AEAD ciphertext)`` per neighbour, and the dealer's share commitments.

    ``commitments`` holds ``(holder, commitment to the s-share || commitment to
    the b-share)`` for every holder, the dealer itself included, and
    ``mask_commitment`` is a commitment to the self-mask seed b itself (so a
    sharing that does not open to it is caught even when only t shares
    arrive); ``signature`` (the dealer's identity key) covers all of them, so a
    revealed share can be checked against what its dealer dealt and nobody can
    frame anybody.
    """

    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]
    commitments: tuple[tuple[int, bytes], ...]
    signature: bytes
    mask_commitment: bytes


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Stage 2: y_u = x_u + PRG(b_u) + sum of signed pairwise masks, mod 2^32.

    ``bad_dealers`` lists the neighbours whose shares did not open or did not match their
    commitments: this node will never reveal anything for them, and says so before anything
    is revealed, so the coordinator can stop a round that could not be unmasked.
    """

    sender: int
    vector: np.ndarray
    bad_dealers: tuple[int, ...] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskedInput):
            return NotImplemented
        return self.sender == other.sender and self.bad_dealers == other.bad_dealers and np.array_equal(self.vector, other.vector)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class ConsistencySignature:
    """Stage 3: the node's signature over the survivor set U3 it was shown."""

    sender: int
    signature: bytes


@dataclass(frozen=True)
class UnmaskShares:
    """Stage 4: ``(owner, share bytes)`` of b for survivors and of s_sk for dropped peers."""

    sender: int
    b_shares: tuple[tuple[int, bytes], ...]
    s_shares: tuple[tuple[int, bytes], ...]


# --- coordinator -> node ---------------------------------------------------


@dataclass(frozen=True)
class KeyList:
    """U1: every advertisement that arrived in time, sorted by sender."""

    entries: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True)
class SeedRevealList:
    """Every reveal of the key list's members, sorted by sender: the graph seed's inputs."""

    reveals: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class ShareRelay:
    """The ciphertexts addressed to one node, ``(sender, ciphertext)`` sorted by sender, and each
    sender's commitment pair for this node (``(sender, commitment)``, same ids)."""

    ciphertexts: tuple[tuple[int, bytes], ...]
    commitments: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class ConsistencyRequest:
    """U3: the nodes whose masked input the coordinator holds."""

    survivors: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskRequest:
    """The survivors (U3), the dropped (U2 \\ U3) and the consistency signatures collected."""

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class RoundAborted:
    """The coordinator gave up on the round; ``reason`` is a short, loggable code."""

    reason: str


# --- events and envelopes ---------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """Time is up for ``stage``: close it with whoever has answered."""

    stage: Stage


@dataclass(frozen=True)
class PeerGone:
    """The driver knows ``node`` is gone (it refused, or its connection died): stop waiting for it."""

    node: int


@dataclass(frozen=True)
class Send:
    """An outgoing message from the coordinator to the node with id ``to``."""

    to: int
    message: ServerMessage


ClientMessage = AdvertiseKeys | SeedReveal | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares
ServerMessage = KeyList | SeedRevealList | ShareRelay | ConsistencyRequest | UnmaskRequest | RoundAborted
