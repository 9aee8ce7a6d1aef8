"""The coordinator's side of secure aggregation, as a sans-IO state machine.

Theory of operation. A :class:`ServerProtocol` drives one round through five
collecting states. Each node message goes to ``receive()``; when every node
still in the round has answered, or when the driver feeds a
:class:`~securefed.secagg.messages.Deadline` for the current stage, the stage
closes: the server fixes the set of nodes that answered (U1..U5), checks
that enough remain for every secret to stay recoverable, and returns the
messages for the next stage. When unmasking closes it reconstructs each
survivor's self-mask seed b_u and each dropped node's mask key s_sk, strips
every mask from the sum of masked inputs, and keeps :attr:`result`.

The server is one machine facing many peers, so a peer that breaks the rules
(a message for the wrong stage, a duplicate, a bad signature) raises
:class:`RemoteProtocolError` and is ignored; the round goes on without that
message. Too few peers at any stage raises :class:`ProtocolAborted`, naming
the stage and the shortfall, and the machine stays ``ABORTED``.

The server learns the masked inputs, which are uniformly random mod 2^32 to
it, and for each node *either* b_u (survivor) *or* s_sk (dropped), never
both: honest nodes enforce that. So it learns only the sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from securefed.crypto.agreement import AgreementKeyPair, agree
from securefed.crypto.identity import verify
from securefed.crypto.prg import MaskAccumulator
from securefed.crypto.shamir import Share, combine
from securefed.errors import (
    InvalidParameter,
    InvalidShare,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
    SecureFedError,
)
from securefed.secagg.config import RoundConfig
from securefed.secagg.graph import NeighbourGraph, graph_seed
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
    KeyList,
    PeerGone,
    MaskedInput,
    RoundAborted,
    Send,
    ShareKeys,
    ShareRelay,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.transcript import advertise_transcript, consistency_transcript, mask_sign, pairwise_mask_seed
from securefed.secagg.validate import check_id_pairs, require

__all__ = ["ServerState", "ServerProtocol", "AggregateResult", "SERVER_TRANSITIONS"]


class ServerState(Enum):
    COLLECT_KEYS = "collect-keys"
    COLLECT_SHARES = "collect-shares"
    COLLECT_MASKED_INPUTS = "collect-masked-inputs"
    COLLECT_SIGNATURES = "collect-signatures"
    COLLECT_UNMASK_SHARES = "collect-unmask-shares"
    DONE = "done"
    ABORTED = "aborted"


_STAGE_OF = {
    ServerState.COLLECT_KEYS: Stage.ADVERTISE,
    ServerState.COLLECT_SHARES: Stage.SHARE,
    ServerState.COLLECT_MASKED_INPUTS: Stage.MASKED_INPUT,
    ServerState.COLLECT_SIGNATURES: Stage.CONSISTENCY,
    ServerState.COLLECT_UNMASK_SHARES: Stage.UNMASK,
}
_EXPECTED = {
    ServerState.COLLECT_KEYS: AdvertiseKeys,
    ServerState.COLLECT_SHARES: ShareKeys,
    ServerState.COLLECT_MASKED_INPUTS: MaskedInput,
    ServerState.COLLECT_SIGNATURES: ConsistencySignature,
    ServerState.COLLECT_UNMASK_SHARES: UnmaskShares,
}
_NEXT = {
    ServerState.COLLECT_KEYS: ServerState.COLLECT_SHARES,
    ServerState.COLLECT_SHARES: ServerState.COLLECT_MASKED_INPUTS,
    ServerState.COLLECT_MASKED_INPUTS: ServerState.COLLECT_SIGNATURES,
    ServerState.COLLECT_SIGNATURES: ServerState.COLLECT_UNMASK_SHARES,
    ServerState.COLLECT_UNMASK_SHARES: ServerState.DONE,
}

#: The legal moves. A node message of the stage's type keeps the state; a
#: deadline (or the last expected answer) closes the stage and moves on.
SERVER_TRANSITIONS: dict[tuple[ServerState, type], ServerState] = {
    **{(state, message_type): state for state, message_type in _EXPECTED.items()},
    **{(state, PeerGone): state for state in _EXPECTED},
    **{(state, Deadline): next_state for state, next_state in _NEXT.items()},
}


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The unmasked sum mod 2^32 and the ids whose inputs it contains."""

    sum: np.ndarray
    survivors: tuple[int, ...]


class ServerProtocol:
    """The coordinator's state for one round. Single use."""

    def __init__(self, config: RoundConfig, roster: Mapping[int, bytes]) -> None:
        if not isinstance(config, RoundConfig):
            raise TypeError("config must be a RoundConfig")
        missing = [i for i in config.ids if i not in roster]
        if missing:
            raise InvalidParameter(f"roster has no identity key for ids {missing[:5]}")
        self.config = config
        self._roster = dict(roster)
        self.state = ServerState.COLLECT_KEYS
        self.result: AggregateResult | None = None
        self.abort_reason: str | None = None
        #: ids that answered each stage, fixed when the stage closes (U1..U5)
        self.answered: dict[Stage, tuple[int, ...]] = {}
        self._expected: set[int] = set(config.ids)
        self._inbox: dict[int, object] = {}
        self._keys: dict[int, AdvertiseKeys] = {}
        self._graph: NeighbourGraph | None = None
        self._neighbourhoods: dict[int, frozenset[int]] = {}
        self._seed = b""
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._shared: frozenset[int] = frozenset()
        self._survivors: tuple[int, ...] = ()
        self._masked_sum: np.ndarray | None = None
        self._signatures: dict[int, bytes] = {}
        self._probe = AgreementKeyPair.generate()

    # --- public API ---------------------------------------------------------

    @property
    def stage(self) -> Stage | None:
        return _STAGE_OF.get(self.state)

    @property
    def waiting_for(self) -> frozenset[int]:
        """Ids whose answer the current stage still waits for."""
        return frozenset(self._expected - set(self._inbox))

    def receive(self, event: object) -> list[Send]:
        """Handle a node message, a :class:`Deadline` or a :class:`PeerGone`; returns messages to send."""
        if self.state in (ServerState.DONE, ServerState.ABORTED):
            raise RemoteProtocolError(f"round is over ({self.state.value})", reason="round-over")
        next_state = SERVER_TRANSITIONS.get((self.state, type(event)))
        if next_state is None:
            raise RemoteProtocolError(
                f"{type(event).__name__} is not accepted in state {self.state.value}", reason="unexpected-message"
            )
        if isinstance(event, Deadline):
            if not isinstance(event.stage, Stage):
                raise LocalProtocolError(f"Deadline needs a Stage, got {event.stage!r}")
            if event.stage is not self.stage:
                return []  # a stale timer for a stage that already closed
            return self._close_stage()
        if isinstance(event, PeerGone):
            if event.node not in self._inbox:  # an answer already given still counts
                self._expected.discard(event.node)
            return self._close_stage() if not self.waiting_for else []
        self._accept(event)
        if not self.waiting_for:
            return self._close_stage()
        return []

    # --- collecting ---------------------------------------------------------

    def _accept(self, message: object) -> None:
        sender = getattr(message, "sender", None)
        if type(sender) is not int or sender not in self._expected:
            raise RemoteProtocolError(f"unexpected sender {sender!r} for this stage", reason="unexpected-sender")
        if sender in self._inbox:
            raise RemoteProtocolError(f"duplicate message from {sender}", reason="duplicate")
        try:
            validated = _VALIDATORS[type(message)](self, message)
        except SecureFedError:
            raise
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError) as exc:
            raise RemoteProtocolError(f"malformed {type(message).__name__} from {sender}: {exc}", reason="malformed") from None
        self._inbox[sender] = validated

    def _validate_advertise(self, message: AdvertiseKeys) -> AdvertiseKeys:
        require(isinstance(message.c_pk, bytes) and len(message.c_pk) == 32, "bad c_pk")
        require(isinstance(message.s_pk, bytes) and len(message.s_pk) == 32, "bad s_pk")
        require(isinstance(message.signature, bytes), "bad signature")
        try:
            verify(
                self._roster[message.sender],
                message.signature,
                advertise_transcript(self.config, message.sender, message.c_pk, message.s_pk),
            )
        except InvalidShare:
            raise RemoteProtocolError(f"bad key signature from {message.sender}", reason="bad-signature") from None
        for key in (message.c_pk, message.s_pk):
            try:  # a low-order point makes every agreement fail: it would abort all honest peers
                agree(self._probe, key)
            except InvalidShare:
                raise RemoteProtocolError(f"low-order public key from {message.sender}", reason="bad-key") from None
        return message

    def _validate_share_keys(self, message: ShareKeys) -> dict[int, bytes]:
        recipients = check_id_pairs(message.ciphertexts, self.config.cohort_size, "share keys")
        wanted = self._neighbourhoods[message.sender] - {message.sender}
        require(set(recipients) == wanted, "shares not addressed to exactly the sender's neighbours")
        return dict(message.ciphertexts)

    def _validate_masked_input(self, message: MaskedInput) -> np.ndarray:
        vector = message.vector
        require(
            isinstance(vector, np.ndarray) and vector.dtype == np.uint32 and vector.shape == (self.config.vector_length,),
            f"masked input must be uint32[{self.config.vector_length}]",
        )
        return vector

    def _validate_signature(self, message: ConsistencySignature) -> bytes:
        require(isinstance(message.signature, bytes), "bad signature")
        try:
            verify(
                self._roster[message.sender],
                message.signature,
                consistency_transcript(self.config, self._seed, self._survivors),
            )
        except InvalidShare:
            raise RemoteProtocolError(f"bad consistency signature from {message.sender}", reason="bad-signature") from None
        return message.signature

    def _validate_unmask(self, message: UnmaskShares) -> tuple[dict[int, Share], dict[int, Share]]:
        sender = message.sender
        neighbourhood = self._neighbourhoods[sender]
        survivors = set(self._survivors)
        b_owners = check_id_pairs(message.b_shares, self.config.cohort_size, "b shares")
        s_owners = check_id_pairs(message.s_shares, self.config.cohort_size, "s shares")
        require(set(b_owners) <= neighbourhood & survivors, "b share for a node that is not a surviving neighbour")
        require(set(s_owners) <= (neighbourhood & self._shared) - survivors, "s share for a node that did not drop")
        b_shares = {owner: Share.from_bytes(raw) for owner, raw in message.b_shares}
        s_shares = {owner: Share.from_bytes(raw) for owner, raw in message.s_shares}
        require(all(share.x == sender for share in (*b_shares.values(), *s_shares.values())), "share x is not the sender")
        return b_shares, s_shares

    # --- closing stages -----------------------------------------------------

    def _close_stage(self) -> list[Send]:
        stage = self.stage
        answered = tuple(sorted(self._inbox))
        self.answered[stage] = answered
        inbox, self._inbox = self._inbox, {}
        try:
            outgoing = _CLOSERS[self.state](self, answered, inbox)
        except ProtocolAborted as exc:
            self.state = ServerState.ABORTED
            self.abort_reason = str(exc)
            raise
        self.state = _NEXT[self.state]
        self._expected = {send.to for send in outgoing if not isinstance(send.message, RoundAborted)}
        return outgoing

    def _shortfall(self, stage: Stage, have: int, what: str) -> None:
        need = self.config.threshold
        if have < need:
            raise ProtocolAborted(
                f"{stage.value} stage: {have} {what}, threshold is {need} (short by {need - have})",
                stage=stage.value,
                shortfall=need - have,
            )

    def _close_keys(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        self._shortfall(Stage.ADVERTISE, len(answered), "nodes advertised keys")
        self._keys = {sender: inbox[sender] for sender in answered}
        entries = tuple(self._keys[sender] for sender in answered)
        self._seed = graph_seed(self.config.task, self.config.round_id, self.config.context, entries)
        self._graph = NeighbourGraph.build(answered, self.config.degree, self._seed)
        self._neighbourhoods = self._graph.all_neighbourhoods()
        key_list = KeyList(entries)
        return [Send(node, key_list) for node in answered]

    def _close_shares(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        # A node whose neighbourhood has fewer than t sharers cannot be protected:
        # drop it before anything is relayed, and repeat until stable.
        self._shortfall(Stage.SHARE, len(answered), "nodes shared keys")
        shared = set(answered)
        changed = True
        while changed:
            changed = False
            for node in sorted(shared):
                if len(self._neighbourhoods[node] & shared) < self.config.threshold:
                    shared.discard(node)
                    changed = True
        self._shortfall(Stage.SHARE, len(shared), "nodes shared keys with enough neighbours")
        self._shared = frozenset(shared)
        sends = [
            Send(node, RoundAborted("too-few-neighbours")) for node in answered if node not in shared
        ]
        for recipient in sorted(shared):
            relay = tuple(
                (sender, inbox[sender][recipient])
                for sender in sorted(self._neighbourhoods[recipient] & shared)
                if sender != recipient
            )
            sends.append(Send(recipient, ShareRelay(relay)))
        return sends

    def _close_masked_inputs(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        survivors = set(answered)
        self._require_recoverable(Stage.MASKED_INPUT, survivors)
        total = np.zeros(self.config.vector_length, dtype=np.uint32)
        for sender in answered:
            np.add(total, inbox[sender], out=total)
        self._masked_sum = total
        self._survivors = answered
        request = ConsistencyRequest(answered)
        return [Send(node, request) for node in answered]

    def _close_signatures(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        self._require_recoverable(Stage.CONSISTENCY, set(answered))
        self._signatures = dict(inbox)
        dropped = tuple(sorted(self._shared - set(self._survivors)))
        sends = []
        for node in answered:
            signers = sorted(self._neighbourhoods[node] & set(answered))
            signatures = tuple((signer, self._signatures[signer]) for signer in signers)
            sends.append(Send(node, UnmaskRequest(self._survivors, dropped, signatures)))
        return sends

    def _close_unmask(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        config = self.config
        b_pool: dict[int, list[Share]] = {node: [] for node in self._survivors}
        s_pool: dict[int, list[Share]] = {node: [] for node in self._shared - set(self._survivors)}
        for sender in answered:
            b_shares, s_shares = inbox[sender]
            for owner, share in b_shares.items():
                b_pool[owner].append(share)
            for owner, share in s_shares.items():
                s_pool[owner].append(share)
        for pool, kind in ((b_pool, "self-mask"), (s_pool, "mask-key")):
            for owner, shares in pool.items():
                self._shortfall(Stage.UNMASK, len(shares), f"{kind} shares for node {owner}")

        masks = [(self._reconstruct(owner, shares), -1) for owner, shares in b_pool.items()]
        survivors = set(self._survivors)
        for owner, shares in s_pool.items():
            s_private = self._reconstruct(owner, shares)
            keys = AgreementKeyPair.from_private_bytes(s_private)
            if keys.public_bytes != self._keys[owner].s_pk:
                raise ProtocolAborted(
                    f"unmask stage: shares for dropped node {owner} do not reconstruct its key",
                    stage=Stage.UNMASK.value,
                    shortfall=0,
                )
            for survivor in sorted(self._neighbourhoods[owner] & survivors):
                seed = pairwise_mask_seed(config, keys, self._keys[survivor].s_pk, owner, survivor)
                # The survivor applied mask_sign(survivor, owner) * PRG(seed): take it back out.
                masks.append((seed, -mask_sign(survivor, owner)))
        unmasked = MaskAccumulator(self._masked_sum)
        unmasked.apply(masks)
        self.result = AggregateResult(unmasked.value, self._survivors)
        return []

    def _reconstruct(self, owner: int, shares: list[Share]) -> bytes:
        chosen = sorted(shares, key=lambda share: share.x)[: self.config.threshold]
        try:
            return combine(chosen)
        except InvalidShare:
            raise ProtocolAborted(
                f"unmask stage: shares for node {owner} do not combine", stage=Stage.UNMASK.value, shortfall=0
            ) from None

    def _require_recoverable(self, stage: Stage, holders: set[int]) -> None:
        """Every node that shared must keep at least t share holders among ``holders``."""
        worst = min(
            (len(self._neighbourhoods[node] & holders), node) for node in self._shared
        )
        self._shortfall(stage, worst[0], f"share holders remain for node {worst[1]}")

    def abort_messages(self, reason: str) -> list[Send]:
        """Tell every node still in the round that it is over (for drivers after an abort)."""
        participants = set(self._keys) or set(self.config.ids)
        return [Send(node, RoundAborted(reason)) for node in sorted(participants)]


_VALIDATORS = {
    AdvertiseKeys: ServerProtocol._validate_advertise,
    ShareKeys: ServerProtocol._validate_share_keys,
    MaskedInput: ServerProtocol._validate_masked_input,
    ConsistencySignature: ServerProtocol._validate_signature,
    UnmaskShares: ServerProtocol._validate_unmask,
}
_CLOSERS = {
    ServerState.COLLECT_KEYS: ServerProtocol._close_keys,
    ServerState.COLLECT_SHARES: ServerProtocol._close_shares,
    ServerState.COLLECT_MASKED_INPUTS: ServerProtocol._close_masked_inputs,
    ServerState.COLLECT_SIGNATURES: ServerProtocol._close_signatures,
    ServerState.COLLECT_UNMASK_SHARES: ServerProtocol._close_unmask,
}
