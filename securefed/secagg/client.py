"""The node's side of secure aggregation, as a sans-IO state machine.

Theory of operation. A :class:`ClientProtocol` is made for one round with
the node's input vector (already encoded to uint32), its identity key and its
own copy of the federation roster (id -> Ed25519 public key). ``start()``
returns the stage-0 advertisement; after that, every message from the
coordinator goes to ``receive()``, which returns the messages to send back.
There is no I/O, no clock and no thread here.

The machine trusts nothing the coordinator says that it can check itself:

* peers' round keys are accepted only with a valid signature under the
  peer's key in the node's *own* roster, over (task, round, context, id, keys);
* the round ``context`` (hash of the global model and task config) is in
  every signature and every derived key, so nodes given different models
  produce masks that never cancel;
* the node masks only with neighbours whose encrypted shares reached it, and
  later insists that the survivor list is consistent with that;
* it answers unmasking only for the survivor set it signed, backed by at
  least t valid consistency signatures over that same set, and it computes
  the dropped set itself: for each peer it reveals the b-share (peer
  survived) or the s_sk-share (peer dropped), never both;
* any failed check moves the machine to ``ABORTED`` for good and raises; an
  abort reveals nothing about the input (the masked input is the only thing
  derived from it, and it is sent only after every earlier check passed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from enum import Enum

import numpy as np

from securefed.crypto.aead import open_sealed, seal, share_associated_data
from securefed.crypto.agreement import AgreementKeyPair
from securefed.crypto.identity import SigningKey, verify
from securefed.crypto.prg import SEED_SIZE, MaskAccumulator
from securefed.crypto.shamir import SHARE_SIZE, Share, split_at
from securefed.errors import (
    InvalidParameter,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
    SecureFedError,
)
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.graph import NeighbourGraph, graph_seed
from securefed.secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    KeyList,
    MaskedInput,
    RoundAborted,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.transcript import (
    advertise_transcript,
    consistency_transcript,
    mask_sign,
    pairwise_mask_seed,
    share_key,
)
from securefed.secagg.validate import check_id_pairs, check_sorted_ids, require

__all__ = ["ClientState", "ClientProtocol", "CLIENT_TRANSITIONS"]


class ClientState(Enum):
    START = "start"
    AWAIT_KEY_LIST = "await-key-list"
    AWAIT_SHARES = "await-shares"
    AWAIT_CONSISTENCY_REQUEST = "await-consistency-request"
    AWAIT_UNMASK_REQUEST = "await-unmask-request"
    DONE = "done"
    ABORTED = "aborted"


TERMINAL_STATES = frozenset({ClientState.DONE, ClientState.ABORTED})

#: The only legal moves on a message from the coordinator. Anything else aborts.
CLIENT_TRANSITIONS: dict[tuple[ClientState, type], ClientState] = {
    (ClientState.AWAIT_KEY_LIST, KeyList): ClientState.AWAIT_SHARES,
    (ClientState.AWAIT_SHARES, ShareRelay): ClientState.AWAIT_CONSISTENCY_REQUEST,
    (ClientState.AWAIT_CONSISTENCY_REQUEST, ConsistencyRequest): ClientState.AWAIT_UNMASK_REQUEST,
    (ClientState.AWAIT_UNMASK_REQUEST, UnmaskRequest): ClientState.DONE,
    **{
        (state, RoundAborted): ClientState.ABORTED
        for state in ClientState
        if state not in TERMINAL_STATES and state is not ClientState.START
    },
}


class ClientProtocol:
    """One node's participation in one round. Single use.

    ``policy`` defaults to :class:`ClientPolicy`'s own defaults (threshold above
    half the neighbourhood). ``signature_cache`` lets nodes that share one
    process and one trust domain (the in-memory simulator) skip re-verifying a
    signature another of them already verified over the identical bytes; a
    real node never shares it.
    """

    def __init__(
        self,
        config: RoundConfig,
        node_id: int,
        identity: SigningKey,
        roster: Mapping[int, bytes],
        input_vector: np.ndarray | None,
        policy: ClientPolicy | None = None,
        signature_cache: set[bytes] | None = None,
    ) -> None:
        if not isinstance(config, RoundConfig):
            raise TypeError("config must be a RoundConfig")
        if node_id not in config.ids:
            raise InvalidParameter(f"node id {node_id} is outside the cohort 1..{config.cohort_size}")
        missing = [i for i in config.ids if i not in roster]
        if missing:
            raise InvalidParameter(f"roster has no identity key for ids {missing[:5]}")
        self.config = config
        self.node_id = node_id
        self._identity = identity
        self._roster = dict(roster)
        self._input: np.ndarray | None = None
        if input_vector is not None:
            self._input = self._checked_input(input_vector)
        self._policy = policy if policy is not None else ClientPolicy()
        self._signature_cache = signature_cache
        self.state = ClientState.START
        self.abort_reason: str | None = None
        #: peer id -> "b" or "s": which share of that peer this node released.
        self.revealed: dict[int, str] = {}
        self.neighbours: frozenset[int] = frozenset()
        self._c_keys: AgreementKeyPair | None = None
        self._s_keys: AgreementKeyPair | None = None
        self._b_seed: bytes | None = None
        self._entries: dict[int, AdvertiseKeys] = {}
        self._graph_seed = b""
        self._held: dict[int, tuple[Share, Share]] = {}
        self._shared_with: frozenset[int] = frozenset()
        self._signed_survivors: tuple[int, ...] | None = None

    # --- public API ---------------------------------------------------------

    def provide_input(self, input_vector: np.ndarray) -> None:
        """Hand over the input later than construction, e.g. after training that overlaps the
        key advertisement. It must arrive before the coordinator relays the shares."""
        if self._input is not None or self.state in TERMINAL_STATES or self.state in (
            ClientState.AWAIT_CONSISTENCY_REQUEST,
            ClientState.AWAIT_UNMASK_REQUEST,
        ):
            raise LocalProtocolError("the input can be provided once, before the masked-input stage")
        self._input = self._checked_input(input_vector)

    def _checked_input(self, input_vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(input_vector)
        if vector.dtype != np.uint32 or vector.shape != (self.config.vector_length,):
            raise InvalidParameter(
                f"input must be a uint32 vector of length {self.config.vector_length}, "
                f"got {vector.dtype} with shape {vector.shape}"
            )
        return vector

    def start(self) -> list[ClientMessage]:
        """Check the round against local policy, make fresh round keys, return the advertisement."""
        if self.state is not ClientState.START:
            raise LocalProtocolError(f"start() called in state {self.state.value}")
        try:
            self._policy.check(self.config)
        except SecureFedError as exc:
            self._abort(exc)
            raise
        self._c_keys = AgreementKeyPair.generate()
        self._s_keys = AgreementKeyPair.generate()
        self._b_seed = os.urandom(SEED_SIZE)
        signature = self._identity.sign(
            advertise_transcript(self.config, self.node_id, self._c_keys.public_bytes, self._s_keys.public_bytes)
        )
        self.state = ClientState.AWAIT_KEY_LIST
        return [AdvertiseKeys(self.node_id, self._c_keys.public_bytes, self._s_keys.public_bytes, signature)]

    def receive(self, message: object) -> list[ClientMessage]:
        """Handle one coordinator message; returns what to send back (possibly nothing)."""
        if self.state in TERMINAL_STATES:
            raise RemoteProtocolError(f"message after the round ended ({self.state.value})", reason="round-over")
        next_state = CLIENT_TRANSITIONS.get((self.state, type(message)))
        if next_state is None:
            error = RemoteProtocolError(
                f"{type(message).__name__} is not allowed in state {self.state.value}", reason="unexpected-message"
            )
            self._abort(error)
            raise error
        if isinstance(message, RoundAborted):
            self._abort(RemoteProtocolError(f"coordinator aborted the round: {message.reason}", reason="aborted"))
            return []
        handler = _HANDLERS[type(message)]
        try:
            outgoing = handler(self, message)
        except SecureFedError as exc:
            self._abort(exc)
            raise
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError) as exc:  # malformed fields
            error = RemoteProtocolError(f"malformed {type(message).__name__}: {exc}", reason="malformed")
            self._abort(error)
            raise error from None
        self.state = next_state
        return outgoing

    @property
    def aborted(self) -> bool:
        return self.state is ClientState.ABORTED

    @property
    def signed_survivors(self) -> tuple[int, ...] | None:
        """The survivor set (U3) this node signed in the consistency stage, if it got that far."""
        return self._signed_survivors

    # --- stage handlers -----------------------------------------------------

    def _on_key_list(self, message: KeyList) -> list[ClientMessage]:
        config = self.config
        entries = message.entries
        require(isinstance(entries, tuple) and all(isinstance(e, AdvertiseKeys) for e in entries), "bad key list")
        check_sorted_ids((e.sender for e in entries), config.cohort_size, "key list")
        by_id = {entry.sender: entry for entry in entries}
        own = by_id.get(self.node_id)
        require(
            own is not None
            and own.c_pk == self._c_keys.public_bytes
            and own.s_pk == self._s_keys.public_bytes,
            "key list does not carry this node's own keys unchanged",
            reason="key-substitution",
        )
        self._need(len(by_id), "advertise", "peers advertised keys")
        # Every entry is checked, not only the neighbours': all of them feed the graph seed, so an
        # unchecked entry would let the coordinator try forged signatures until it likes the graph.
        for peer, entry in by_id.items():
            if peer == self.node_id:
                continue
            require(
                isinstance(entry.c_pk, bytes) and len(entry.c_pk) == 32 and isinstance(entry.s_pk, bytes) and len(entry.s_pk) == 32,
                "bad key size",
            )
            require(isinstance(entry.signature, bytes), "bad signature type")
            self._verify(peer, entry.signature, advertise_transcript(config, peer, entry.c_pk, entry.s_pk))
        self._graph_seed = graph_seed(config.task, config.round_id, config.context, entries)
        graph = NeighbourGraph.build(by_id, config.degree, self._graph_seed)
        self.neighbours = graph.neighbours(self.node_id)
        self._need(len(self.neighbours), "advertise", "neighbours advertised keys")
        self._entries = by_id

        holders = sorted(self.neighbours)
        s_shares = split_at(self._s_keys.private_bytes, holders, config.threshold)
        b_shares = split_at(self._b_seed, holders, config.threshold)
        ciphertexts = []
        for s_share, b_share in zip(s_shares, b_shares):
            peer = s_share.x
            if peer == self.node_id:
                self._held[peer] = (s_share, b_share)
                continue
            key = share_key(config, self._c_keys, by_id[peer].c_pk, self.node_id, peer)
            associated = share_associated_data(config.task, config.round_id, self.node_id, peer, config.context)
            ciphertexts.append((peer, seal(key, s_share.to_bytes() + b_share.to_bytes(), associated)))
        return [ShareKeys(self.node_id, tuple(ciphertexts))]

    def _on_share_relay(self, message: ShareRelay) -> list[ClientMessage]:
        config = self.config
        senders = check_id_pairs(message.ciphertexts, config.cohort_size, "share relay")
        require(
            set(senders) <= self.neighbours - {self.node_id},
            "shares relayed from nodes that are not this node's neighbours",
            reason="inconsistent-graph",
        )
        for sender, ciphertext in message.ciphertexts:
            require(isinstance(ciphertext, bytes), "ciphertext must be bytes")
            key = share_key(config, self._c_keys, self._entries[sender].c_pk, self.node_id, sender)
            associated = share_associated_data(config.task, config.round_id, sender, self.node_id, config.context)
            plaintext = open_sealed(key, ciphertext, associated)
            require(len(plaintext) == 2 * SHARE_SIZE, "share payload has the wrong size", reason="bad-share")
            s_share = Share.from_bytes(plaintext[:SHARE_SIZE])
            b_share = Share.from_bytes(plaintext[SHARE_SIZE:])
            require(s_share.x == self.node_id and b_share.x == self.node_id, "share for another node", reason="bad-share")
            self._held[sender] = (s_share, b_share)
        self._shared_with = frozenset(senders) | {self.node_id}
        self._need(len(self._shared_with), "share", "neighbours shared their keys")

        masks = [(self._b_seed, 1)]
        for peer in sorted(self._shared_with - {self.node_id}):
            seed = pairwise_mask_seed(config, self._s_keys, self._entries[peer].s_pk, self.node_id, peer)
            masks.append((seed, mask_sign(self.node_id, peer)))
        if self._input is None:
            raise LocalProtocolError("shares arrived before the input was provided")
        masked = MaskAccumulator(self._input)
        masked.apply(masks)
        # The secrets behind the mask live on only as Shamir shares now.
        self._input = None
        self._b_seed = None
        self._s_keys = None
        self._c_keys = None
        return [MaskedInput(self.node_id, masked.value)]

    def _on_consistency_request(self, message: ConsistencyRequest) -> list[ClientMessage]:
        survivors = message.survivors
        check_sorted_ids(survivors, self.config.cohort_size, "survivor list")
        survivor_set = frozenset(survivors)
        require(self.node_id in survivor_set, "this node sent a masked input but is not listed", reason="inconsistent-survivors")
        require(survivor_set <= set(self._entries), "survivor never advertised keys", reason="inconsistent-survivors")
        require(
            survivor_set & self.neighbours <= self._shared_with,
            "a listed survivor never shared keys with this node",
            reason="inconsistent-survivors",
        )
        self._need(len(survivor_set & self.neighbours), "masked_input", "neighbours sent masked inputs")
        self._signed_survivors = tuple(survivors)
        signature = self._identity.sign(consistency_transcript(self.config, self._graph_seed, survivors))
        return [ConsistencySignature(self.node_id, signature)]

    def _on_unmask_request(self, message: UnmaskRequest) -> list[ClientMessage]:
        config = self.config
        require(
            tuple(message.survivors) == self._signed_survivors,
            "unmask request names a different survivor set than the one signed",
            reason="inconsistent-survivors",
        )
        check_sorted_ids(message.dropped, config.cohort_size, "dropped list")
        survivors = frozenset(self._signed_survivors)
        dropped = frozenset(message.dropped)
        require(not survivors & dropped, "a node is listed as both dropped and survived", reason="double-reveal")
        own_dropped = self._shared_with - survivors
        require(
            dropped & self.neighbours == own_dropped,
            "dropped list disagrees with what this node saw",
            reason="inconsistent-survivors",
        )
        signers = check_id_pairs(message.signatures, config.cohort_size, "signature list")
        require(
            set(signers) <= survivors & self.neighbours,
            "consistency signature from a node outside this neighbourhood's survivors",
            reason="bad-signature",
        )
        transcript = consistency_transcript(config, self._graph_seed, self._signed_survivors)
        for signer, signature in message.signatures:
            require(isinstance(signature, bytes), "signature must be bytes")
            self._verify(signer, signature, transcript)
        self._need(len(signers), "consistency", "valid consistency signatures")

        b_shares = []
        s_shares = []
        for peer in sorted(self._shared_with):
            s_share, b_share = self._held[peer]
            kind = "b" if peer in survivors else "s"
            if self.revealed.get(peer, kind) != kind:  # defence in depth; sets above are disjoint
                raise RemoteProtocolError("refusing to reveal both shares of one peer", reason="double-reveal")
            self.revealed[peer] = kind
            if kind == "b":
                b_shares.append((peer, b_share.to_bytes()))
            else:
                s_shares.append((peer, s_share.to_bytes()))
        self._held.clear()
        return [UnmaskShares(self.node_id, tuple(b_shares), tuple(s_shares))]

    # --- helpers ------------------------------------------------------------

    def _verify(self, peer: int, signature: bytes, transcript: bytes) -> None:
        """Check a peer's signature against this node's own roster (via the cache, if one was given)."""
        cache = self._signature_cache
        if cache is None:
            verify(self._roster[peer], signature, transcript)
            return
        token = hashlib.sha256(self._roster[peer] + signature + transcript).digest()
        if token not in cache:
            verify(self._roster[peer], signature, transcript)
            cache.add(token)

    def _need(self, have: int, stage: str, what: str) -> None:
        if have < self.config.threshold:
            raise ProtocolAborted(
                f"{stage} stage: only {have} {what}, threshold is {self.config.threshold} "
                f"(short by {self.config.threshold - have})",
                stage=stage,
                shortfall=self.config.threshold - have,
            )

    def _abort(self, error: Exception) -> None:
        self.state = ClientState.ABORTED
        self.abort_reason = getattr(error, "reason", None) or type(error).__name__
        self._input = None
        self._b_seed = None
        self._s_keys = None
        self._c_keys = None
        self._held.clear()


_HANDLERS = {
    KeyList: ClientProtocol._on_key_list,
    ShareRelay: ClientProtocol._on_share_relay,
    ConsistencyRequest: ClientProtocol._on_consistency_request,
    UnmaskRequest: ClientProtocol._on_unmask_request,
}
