"""The node's side of secure aggregation, as a sans-IO state machine.

Theory of operation. A :class:`ClientProtocol` is made for one round with
the node's input vector (already encoded to uint32), its identity key, its
own copy of the federation roster (id -> Ed25519 public key) and a source of
randomness (default: the OS CSPRNG). ``start()`` returns the stage-0
advertisement; after that, every message from the coordinator goes to
``receive()``, which returns the messages to send back. There is no I/O, no
clock and no thread here.

The machine trusts nothing the coordinator says that it can check itself:

* before anything else, the round must meet the site's :class:`ClientPolicy`,
  including the colluder bound it computes from its own roster (2t > N + c,
  or the per-neighbourhood bound for a sparse graph);
* peers' round keys are accepted only with a valid signature under the
  peer's key in the node's *own* roster, over the round's full binding
  (task, round, context, n, t, k, d) and the keys;
* the neighbour graph is built over the whole cohort from a seed made by
  commit and reveal: the node reveals its own randomness only after the key
  list is fixed, and checks every reveal against its signed commitment, so
  the coordinator cannot steer who holds this node's shares;
* every share it deals is committed to (hash) and the commitments are signed,
  so a holder that later reveals a wrong share is caught and cannot blame this
  node; shares it receives are checked against their dealer's commitments and
  a bad one is never revealed (the round goes on without it);
* it masks only with neighbours whose encrypted shares reached it, and later
  insists that the survivor list is consistent with that;
* it signs a survivor set only if it holds at least the site's participation
  floor (``ClientPolicy.min_participants``) of nodes, and it stops earlier
  (before dealing shares, or before sending its masked input) once the key
  list or, in a complete graph, the sharers fall below that floor;
* it answers unmasking only for the survivor set it signed, backed by at
  least t valid consistency signatures from its neighbours and a quorum T
  (2T > N + c) from the whole cohort over that same set, so every honest
  node that reveals anything answers for one and the same set; it computes
  the dropped set itself: for each peer it reveals the b-share (peer
  survived) or the s_sk-share (peer dropped), never both;
* any failed check moves the machine to ``ABORTED`` for good and raises; an
  abort reveals nothing about the input (the masked input is the only thing
  derived from it, and it is sent only after every earlier check passed).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import numpy as np

from securefed.crypto.aead import NONCE_SIZE, open_sealed, seal
from securefed.crypto.agreement import AgreementKeyPair
from securefed.crypto.identity import SigningKey, verify
from securefed.crypto.prg import SEED_SIZE, MaskAccumulator
from securefed.crypto.shamir import SHARE_SIZE, Share, split_at
from securefed.errors import (
    InvalidParameter,
    InvalidShare,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
    SecureFedError,
)
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.graph import NeighbourGraph
from securefed.secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    KeyList,
    MaskedInput,
    RoundAborted,
    SeedReveal,
    SeedRevealList,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.transcript import (
    COMMITMENT_SIZE,
    advertise_transcript,
    commitments_transcript,
    consistency_transcript,
    graph_seed,
    mask_seed_commitment,
    mask_sign,
    pairwise_mask_seed,
    seed_commitment,
    share_associated_data_for,
    share_commitment,
    share_key,
)
from securefed.secagg.validate import check_id_pairs, check_sorted_ids, require

__all__ = ["CLIENT_TRANSITIONS", "ClientProtocol", "ClientState"]


Entropy = Callable[[int], bytes]
"""A source of randomness: ``entropy(n)`` returns n bytes from a CSPRNG (default ``os.urandom``)."""


class ClientState(Enum):
    START = "start"
    AWAIT_KEY_LIST = "await-key-list"
    AWAIT_SEED_REVEALS = "await-seed-reveals"
    AWAIT_SHARES = "await-shares"
    AWAIT_CONSISTENCY_REQUEST = "await-consistency-request"
    AWAIT_UNMASK_REQUEST = "await-unmask-request"
    DONE = "done"
    ABORTED = "aborted"


TERMINAL_STATES = frozenset({ClientState.DONE, ClientState.ABORTED})

#: The only legal moves on a message from the coordinator. Anything else aborts.
CLIENT_TRANSITIONS: dict[tuple[ClientState, type], ClientState] = {
    (ClientState.AWAIT_KEY_LIST, KeyList): ClientState.AWAIT_SEED_REVEALS,
    (ClientState.AWAIT_SEED_REVEALS, SeedRevealList): ClientState.AWAIT_SHARES,
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

    ``policy`` defaults to :class:`ClientPolicy`'s own defaults (the colluder
    bound for max(1, ceil(N/5)) colluders). ``roster_size`` is N, the size of
    the node's whole roster (default: ``len(roster)``); the colluder bound is
    computed from it, never from what the coordinator lists. ``entropy`` is
    where every secret of the round comes from (round keys, self-mask seed,
    graph randomness, Shamir coefficients, AEAD nonces); it must be a CSPRNG.
    ``signature_cache`` lets nodes that share one process and one trust domain
    (the in-memory simulator) skip re-verifying a signature another of them
    already verified over the identical bytes; a real node never shares it.
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
        *,
        entropy: Entropy | None = None,
        roster_size: int | None = None,
    ) -> None:
        if not isinstance(config, RoundConfig):
            raise TypeError("config must be a RoundConfig")
        if node_id not in config.ids:
            raise InvalidParameter(f"node id {node_id} is outside the cohort 1..{config.cohort_size}")
        missing = [i for i in config.ids if i not in roster]
        if missing:
            raise InvalidParameter(f"roster has no identity key for ids {missing[:5]}")
        if entropy is not None and not callable(entropy):
            raise TypeError("entropy must be a callable returning random bytes")
        if roster_size is not None and (type(roster_size) is not int or roster_size < config.cohort_size):
            raise InvalidParameter("roster_size must be an integer of at least the cohort size")
        self.config = config
        self.node_id = node_id
        self._identity = identity
        self._roster = dict(roster)
        self._roster_size = roster_size if roster_size is not None else max(len(self._roster), config.cohort_size)
        self._entropy: Entropy = entropy if entropy is not None else os.urandom
        self._input: np.ndarray | None = None
        if input_vector is not None:
            self._input = self._checked_input(input_vector)
        self._policy = policy if policy is not None else ClientPolicy()
        self._signature_cache = signature_cache
        self.state = ClientState.START
        self.abort_reason: str | None = None
        #: peer id -> "b" or "s": which share of that peer this node released.
        self.revealed: dict[int, str] = {}
        #: dealers whose shares to this node failed to decrypt or to match their commitments;
        #: the node never reveals anything for them (the round goes on without those shares).
        self.bad_dealers: frozenset[int] = frozenset()
        #: this node's closed neighbourhood among the nodes that advertised keys.
        self.neighbours: frozenset[int] = frozenset()
        self._c_keys: AgreementKeyPair | None = None
        self._s_keys: AgreementKeyPair | None = None
        self._b_seed: bytes | None = None
        self._graph_value: bytes | None = None
        self._entries: dict[int, AdvertiseKeys] = {}
        self._graph_seed = b""
        self._held: dict[int, tuple[Share, Share]] = {}
        self._share_keys: dict[int, bytes] = {}
        self._shared_with: frozenset[int] = frozenset()
        self._signed_survivors: tuple[int, ...] | None = None

    # --- public API ---------------------------------------------------------

    def provide_input(self, input_vector: np.ndarray) -> None:
        """Hand over the input later than construction, e.g. after training that overlaps the
        key advertisement. It must arrive before the coordinator relays the shares."""
        if (
            self._input is not None
            or self.state in TERMINAL_STATES
            or self.state
            in (
                ClientState.AWAIT_CONSISTENCY_REQUEST,
                ClientState.AWAIT_UNMASK_REQUEST,
            )
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
            self._policy.check(self.config, self._roster_size)
        except SecureFedError as exc:
            self._abort(exc)
            raise
        self._c_keys = AgreementKeyPair.from_private_bytes(self._random(32))
        self._s_keys = AgreementKeyPair.from_private_bytes(self._random(32))
        self._b_seed = self._random(SEED_SIZE)
        self._graph_value = self._random(32)
        commitment = seed_commitment(self.config, self.node_id, self._graph_value)
        signature = self._identity.sign(
            advertise_transcript(self.config, self.node_id, self._c_keys.public_bytes, self._s_keys.public_bytes, commitment)
        )
        self.state = ClientState.AWAIT_KEY_LIST
        return [AdvertiseKeys(self.node_id, self._c_keys.public_bytes, self._s_keys.public_bytes, commitment, signature)]

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
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError) as exc:
            # Not one of the handlers' own checks: a message they should have refused, or a bug here.
            # The round cannot go on either way; the reason says so without blaming the coordinator.
            error = RemoteProtocolError(
                f"could not process {type(message).__name__} ({type(exc).__name__}: {exc})", reason="unprocessable"
            )
            self._abort(error)
            raise error from None
        self.state = next_state
        return outgoing

    @property
    def aborted(self) -> bool:
        return self.state is ClientState.ABORTED

    @property
    def shared_with(self) -> frozenset[int]:
        """The neighbours (and itself) whose shares reached this node: the ones it masks with."""
        return self._shared_with

    @property
    def signed_survivors(self) -> tuple[int, ...] | None:
        """The survivor set (U3) this node signed in the consistency stage, if it got that far."""
        return self._signed_survivors

    # --- stage handlers -----------------------------------------------------

    def _on_key_list(self, message: KeyList) -> list[ClientMessage]:
        config = self.config
        c_keys, s_keys, _ = self._round_keys()
        graph_value = self._graph_value
        if graph_value is None:
            raise LocalProtocolError(f"graph randomness needed in state {self.state.value}, after it was revealed")
        entries = message.entries
        require(isinstance(entries, tuple) and all(isinstance(e, AdvertiseKeys) for e in entries), "bad key list")
        check_sorted_ids((e.sender for e in entries), config.cohort_size, "key list")
        by_id = {entry.sender: entry for entry in entries}
        own = by_id.get(self.node_id)
        require(
            own is not None
            and own.c_pk == c_keys.public_bytes
            and own.s_pk == s_keys.public_bytes
            and own.seed_commitment == seed_commitment(config, self.node_id, graph_value),
            "key list does not carry this node's own keys unchanged",
            reason="key-substitution",
        )
        for entry in entries:
            require(
                isinstance(entry.seed_commitment, bytes) and len(entry.seed_commitment) == COMMITMENT_SIZE,
                "bad seed commitment",
            )
        self._need(len(by_id), "advertise", "peers advertised keys")
        # Survivors are a subset of the key list: if it is already below the site's floor, stop now,
        # before dealing shares or training (the consistency stage below is the binding check).
        self._policy.check_participants(len(by_id), "the key list")
        # The key list is fixed now; only from here on may this node's graph randomness be known.
        self._entries = by_id
        return [SeedReveal(self.node_id, graph_value)]

    def _on_seed_reveals(self, message: SeedRevealList) -> list[ClientMessage]:
        config = self.config
        c_keys, s_keys, b_seed = self._round_keys()
        revealers = check_id_pairs(message.reveals, config.cohort_size, "seed reveals")
        require(
            revealers == tuple(sorted(self._entries)),
            "seed reveals do not cover exactly the key list",
            reason="inconsistent-graph",
        )
        for peer, value in message.reveals:
            require(len(value) == 32, "graph randomness must be 32 bytes")
            require(
                hmac.compare_digest(seed_commitment(config, peer, value), self._entries[peer].seed_commitment),
                f"graph randomness of node {peer} does not open its commitment",
                reason="bad-reveal",
            )
        self._graph_seed = graph_seed(config, message.reveals)
        self._graph_value = None
        graph = NeighbourGraph.build(config.ids, config.degree, self._graph_seed)
        self.neighbours = graph.neighbours(self.node_id) & frozenset(self._entries)
        self._need(len(self.neighbours), "advertise", "neighbours advertised keys")
        # Only the neighbours' keys are ever used, so only their signatures matter: the graph does
        # not depend on the keys, and the reveals are bound by the commitments checked above.
        for peer in sorted(self.neighbours - {self.node_id}):
            entry = self._entries[peer]
            require(
                isinstance(entry.c_pk, bytes)
                and len(entry.c_pk) == 32
                and isinstance(entry.s_pk, bytes)
                and len(entry.s_pk) == 32,
                "bad key size",
            )
            require(isinstance(entry.signature, bytes), "bad signature type")
            self._verify(peer, entry.signature, advertise_transcript(config, peer, entry.c_pk, entry.s_pk, entry.seed_commitment))

        holders = sorted(self.neighbours)
        s_shares = split_at(s_keys.private_bytes, holders, config.threshold, entropy=self._random)
        b_shares = split_at(b_seed, holders, config.threshold, entropy=self._random)
        ciphertexts = []
        commitments = []
        for s_share, b_share in zip(s_shares, b_shares):
            peer = s_share.x
            s_bytes, b_bytes = s_share.to_bytes(), b_share.to_bytes()
            commitments.append(
                (
                    peer,
                    share_commitment(config, self.node_id, peer, "s", s_bytes)
                    + share_commitment(config, self.node_id, peer, "b", b_bytes),
                )
            )
            if peer == self.node_id:
                self._held[peer] = (s_share, b_share)
                continue
            key = share_key(config, c_keys, self._entries[peer].c_pk, self.node_id, peer)
            self._share_keys[peer] = key  # the same key opens what that peer sends back
            associated = share_associated_data_for(config, self.node_id, peer)
            ciphertexts.append((peer, seal(key, s_bytes + b_bytes, associated, nonce=self._random(NONCE_SIZE))))
        commitments_t = tuple(commitments)
        mask_commitment = mask_seed_commitment(config, self.node_id, b_seed)
        signature = self._identity.sign(
            commitments_transcript(config, self._graph_seed, self.node_id, commitments_t, mask_commitment)
        )
        return [ShareKeys(self.node_id, tuple(ciphertexts), commitments_t, signature, mask_commitment)]

    def _on_share_relay(self, message: ShareRelay) -> list[ClientMessage]:
        config = self.config
        c_keys, s_keys, b_seed = self._round_keys()
        senders = check_id_pairs(message.ciphertexts, config.cohort_size, "share relay")
        committed = check_id_pairs(message.commitments, config.cohort_size, "share commitments")
        require(committed == senders, "share commitments do not match the relayed ciphertexts")
        require(
            set(senders) <= self.neighbours - {self.node_id},
            "shares relayed from nodes that are not this node's neighbours",
            reason="inconsistent-graph",
        )
        bad: set[int] = set()
        for (sender, ciphertext), (_, commitment) in zip(message.ciphertexts, message.commitments):
            require(len(commitment) == 2 * COMMITMENT_SIZE, "share commitment has the wrong size")
            key = self._share_keys.get(sender)
            if key is None:
                key = share_key(config, c_keys, self._entries[sender].c_pk, self.node_id, sender)
            try:
                plaintext = open_sealed(key, ciphertext, share_associated_data_for(config, sender, self.node_id))
                if len(plaintext) != 2 * SHARE_SIZE:
                    raise InvalidShare("share payload has the wrong size")
                s_bytes, b_bytes = plaintext[:SHARE_SIZE], plaintext[SHARE_SIZE:]
                s_share, b_share = Share.from_bytes(s_bytes), Share.from_bytes(b_bytes)
                expected = share_commitment(config, sender, self.node_id, "s", s_bytes) + share_commitment(
                    config, sender, self.node_id, "b", b_bytes
                )
                if s_share.x != self.node_id or b_share.x != self.node_id or not hmac.compare_digest(expected, commitment):
                    raise InvalidShare("share does not match its dealer's commitment")
            except InvalidShare:
                # The dealer (or whoever altered its message) sent something this node cannot vouch
                # for. Revealing it would get this node blamed; dropping out would hand a corrupt
                # dealer a way to stop the round. So: keep going, never reveal anything for it.
                bad.add(sender)
                continue
            self._held[sender] = (s_share, b_share)
        self.bad_dealers = frozenset(bad)
        self._shared_with = frozenset(senders) | {self.node_id}
        self._need(len(self._shared_with), "share", "neighbours shared their keys")
        if config.is_complete_graph:
            # Every sharer reached this node, so no more than these can survive: below the floor, do
            # not even send the masked input. (In a sparse graph only the neighbours are seen here.)
            self._policy.check_participants(len(self._shared_with), "the share relay")

        masks = [(b_seed, 1)]
        for peer in sorted(self._shared_with - {self.node_id}):
            seed = pairwise_mask_seed(config, s_keys, self._entries[peer].s_pk, self.node_id, peer)
            masks.append((seed, mask_sign(self.node_id, peer)))
        if self._input is None:
            raise LocalProtocolError("shares arrived before the input was provided")
        masked = MaskAccumulator(self._input)
        masked.apply(masks)
        # The secrets behind the mask live on only as Shamir shares now.
        self._share_keys.clear()
        self._input = None
        self._b_seed = None
        self._s_keys = None
        self._c_keys = None
        return [MaskedInput(self.node_id, masked.value, tuple(sorted(self.bad_dealers)))]

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
        # The participation floor: never sign (and so never reveal anything) for a sum of fewer inputs.
        self._policy.check_participants(len(survivor_set), "the survivor list")
        self._signed_survivors = tuple(survivors)
        signature = self._identity.sign(consistency_transcript(self.config, self._graph_seed, survivors))
        return [ConsistencySignature(self.node_id, signature)]

    def _on_unmask_request(self, message: UnmaskRequest) -> list[ClientMessage]:
        config = self.config
        signed = self._signed_survivors
        if signed is None:
            raise LocalProtocolError(f"unmask request handled in state {self.state.value}, before a survivor set was signed")
        require(
            tuple(message.survivors) == signed,
            "unmask request names a different survivor set than the one signed",
            reason="inconsistent-survivors",
        )
        check_sorted_ids(message.dropped, config.cohort_size, "dropped list")
        survivors = frozenset(signed)
        dropped = frozenset(message.dropped)
        require(not survivors & dropped, "a node is listed as both dropped and survived", reason="double-reveal")
        own_dropped = self._shared_with - survivors
        require(
            dropped & self.neighbours == own_dropped,
            "dropped list disagrees with what this node saw",
            reason="inconsistent-survivors",
        )
        signers = check_id_pairs(message.signatures, config.cohort_size, "signature list")
        require(set(signers) <= survivors, "consistency signature from a node outside the survivors", reason="bad-signature")
        transcript = consistency_transcript(config, self._graph_seed, signed)
        for signer, signature in message.signatures:
            require(isinstance(signature, bytes), "signature must be bytes")
            self._verify(signer, signature, transcript)
        # Locally: t of the neighbours that hold this node's shares agree. Globally: a quorum with
        # 2T > N + c agrees, so every honest node that reveals anything answers for this same list.
        self._need(len(set(signers) & self.neighbours), "consistency", "valid consistency signatures from neighbours")
        quorum = self._policy.consistency_quorum(self._roster_size)
        if len(signers) < quorum:
            raise ProtocolAborted(
                f"consistency stage: only {len(signers)} valid consistency signatures over the survivor list, "
                f"this node needs {quorum} (2T > N + c) before it reveals anything (short by {quorum - len(signers)})",
                stage="consistency",
                shortfall=quorum - len(signers),
            )

        b_shares = []
        s_shares = []
        for peer in sorted(self._shared_with - self.bad_dealers):
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

    def _round_keys(self) -> tuple[AgreementKeyPair, AgreementKeyPair, bytes]:
        """(c keys, s keys, self-mask seed): made by start(), dropped once the masked input is sent."""
        if self._c_keys is None or self._s_keys is None or self._b_seed is None:
            raise LocalProtocolError(
                f"round keys needed in state {self.state.value}; they exist only from start() until the masked input"
            )
        return self._c_keys, self._s_keys, self._b_seed

    def _random(self, size: int) -> bytes:
        value = self._entropy(size)
        if not isinstance(value, bytes) or len(value) != size:
            raise LocalProtocolError(f"the entropy source returned {type(value).__name__}, not {size} bytes")
        return value

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
        self._graph_value = None
        self._share_keys.clear()
        self._held.clear()


#: Each handler takes the message type it is keyed by; a dict type cannot tie the two, hence ``Any``.
_HANDLERS: dict[type, Callable[[ClientProtocol, Any], list[ClientMessage]]] = {
    KeyList: ClientProtocol._on_key_list,
    SeedRevealList: ClientProtocol._on_seed_reveals,
    ShareRelay: ClientProtocol._on_share_relay,
    ConsistencyRequest: ClientProtocol._on_consistency_request,
    UnmaskRequest: ClientProtocol._on_unmask_request,
}
