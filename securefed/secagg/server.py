"""The coordinator's side of secure aggregation, as a sans-IO state machine.

Theory of operation. A :class:`ServerProtocol` drives one round through six
collecting states. Each node message goes to ``receive()``; when every node
still in the round has answered, or when the driver feeds a
:class:`~securefed.secagg.messages.Deadline` for the current stage, the stage
closes: the server fixes the set of nodes that answered (U1..U5), checks
that enough remain for every secret to stay recoverable, and returns the
messages for the next stage. The reveal stage fixes the neighbour graph over
the whole cohort from the nodes' committed randomness; a node of the key list
that does not reveal aborts the round, naming it (any other choice would let
the coordinator pick among seeds).

When unmasking closes, reconstruction is robust and identifiable. Every
revealed share is checked against the commitment its dealer signed in the
share stage: a holder that reveals anything else is named, all its shares
are dropped, and the round goes on while at least t good shares of every
secret remain. The good shares of each secret are then decoded together
(Reed–Solomon over the Shamir field, :func:`~securefed.crypto.shamir.decode`):
if they do not lie on one polynomial of degree < t, or a mask key does not
match its advertised public key, the *dealer* committed to a bad sharing and
the round aborts naming it (:attr:`ProtocolAborted.culprits`), so the retry
can leave it out. Nobody can frame an honest node: commitments are signed by
their dealer, and an honest holder never reveals a share that fails its
dealer's commitment.

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

import base64
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from securefed.crypto.agreement import AgreementKeyPair, agree
from securefed.crypto.identity import verify
from securefed.crypto.prg import MaskAccumulator
from securefed.crypto.shamir import Share, decode
from securefed.errors import (
    EncodingError,
    InvalidParameter,
    InvalidShare,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
)
from securefed.secagg.config import RoundConfig
from securefed.secagg.graph import NeighbourGraph
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
    KeyList,
    MaskedInput,
    PeerGone,
    RoundAborted,
    SeedReveal,
    SeedRevealList,
    Send,
    ShareKeys,
    ShareRelay,
    Stage,
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
    share_commitment,
)
from securefed.secagg.validate import check_id_pairs, check_sorted_ids, require

__all__ = ["SERVER_TRANSITIONS", "AggregateResult", "ServerProtocol", "ServerState"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class ServerState(Enum):
    COLLECT_KEYS = "collect-keys"
    COLLECT_REVEALS = "collect-reveals"
    COLLECT_SHARES = "collect-shares"
    COLLECT_MASKED_INPUTS = "collect-masked-inputs"
    COLLECT_SIGNATURES = "collect-signatures"
    COLLECT_UNMASK_SHARES = "collect-unmask-shares"
    DONE = "done"
    ABORTED = "aborted"


_STAGE_OF = {
    ServerState.COLLECT_KEYS: Stage.ADVERTISE,
    ServerState.COLLECT_REVEALS: Stage.REVEAL,
    ServerState.COLLECT_SHARES: Stage.SHARE,
    ServerState.COLLECT_MASKED_INPUTS: Stage.MASKED_INPUT,
    ServerState.COLLECT_SIGNATURES: Stage.CONSISTENCY,
    ServerState.COLLECT_UNMASK_SHARES: Stage.UNMASK,
}
_EXPECTED = {
    ServerState.COLLECT_KEYS: AdvertiseKeys,
    ServerState.COLLECT_REVEALS: SeedReveal,
    ServerState.COLLECT_SHARES: ShareKeys,
    ServerState.COLLECT_MASKED_INPUTS: MaskedInput,
    ServerState.COLLECT_SIGNATURES: ConsistencySignature,
    ServerState.COLLECT_UNMASK_SHARES: UnmaskShares,
}
_NEXT = {
    ServerState.COLLECT_KEYS: ServerState.COLLECT_REVEALS,
    ServerState.COLLECT_REVEALS: ServerState.COLLECT_SHARES,
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
    """The unmasked sum mod 2^32 and the ids whose inputs it contains.

    ``excluded`` maps each node caught revealing a share its dealer never
    dealt to the reason: its unmasking shares were not used (its own input,
    already sent, is still in the sum). The coordinator should leave it out
    of later rounds.
    """

    sum: np.ndarray
    survivors: tuple[int, ...]
    excluded: Mapping[int, str] = field(default_factory=dict)


class ServerProtocol:
    """The coordinator's state for one round. Single use."""

    def __init__(
        self,
        config: RoundConfig,
        roster: Mapping[int, bytes],
        *,
        entropy: Callable[[int], bytes] | None = None,
        quorum: int = 1,
    ) -> None:
        if not isinstance(config, RoundConfig):
            raise TypeError("config must be a RoundConfig")
        if entropy is not None and not callable(entropy):
            raise TypeError("entropy must be a callable returning random bytes")
        if type(quorum) is not int or quorum < 1:
            raise InvalidParameter("quorum must be a positive integer")
        #: consistency signatures the nodes need before they reveal anything (2T > N + c): with
        #: fewer, some would reveal and others refuse, and the round could neither finish nor rerun
        self.quorum = quorum
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
        #: dealer -> holder -> (commitment to the s-share, commitment to the b-share)
        self._commitments: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        #: dealer -> commitment to its self-mask seed
        self._mask_commitments: dict[int, bytes] = {}
        self._shared: frozenset[int] = frozenset()
        self._survivors: tuple[int, ...] = ()
        self._masked_sum: np.ndarray | None = None
        self._signatures: dict[int, bytes] = {}
        #: holder -> dealers whose shares it reported as unusable (it will never reveal them)
        self._withheld: dict[int, frozenset[int]] = {}
        #: nodes whose unmasking answer was refused outright, and why
        self._malformed_unmask: dict[int, str] = {}
        key_material = (entropy or os.urandom)(32)
        if not isinstance(key_material, bytes) or len(key_material) != 32:
            raise LocalProtocolError("the entropy source must return the bytes asked for")
        self._probe = AgreementKeyPair.from_private_bytes(key_material)

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
        except (RemoteProtocolError, InvalidShare, EncodingError) as exc:
            # The validators' own checks failed: provably this sender's fault.
            if isinstance(message, UnmaskShares):
                # An unmasking answer that breaks the rules is as good as none, but its sender is named.
                self._malformed_unmask.setdefault(sender, f"sent malformed unmasking shares ({exc})")
            raise
        except (InvalidParameter, TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError) as exc:
            # Something the validators did not foresee: a message they should have refused, or a bug
            # here. The message is dropped either way, but its sender is not named a culprit (which
            # would exclude it for the run) on the strength of an error that may be ours.
            raise RemoteProtocolError(
                f"could not process {type(message).__name__} from {sender} ({type(exc).__name__}: {exc}); "
                "dropped, sender not blamed",
                reason="unprocessable",
            ) from None
        self._inbox[sender] = validated

    def _validate_advertise(self, message: AdvertiseKeys) -> AdvertiseKeys:
        require(isinstance(message.c_pk, bytes) and len(message.c_pk) == 32, "bad c_pk")
        require(isinstance(message.s_pk, bytes) and len(message.s_pk) == 32, "bad s_pk")
        require(
            isinstance(message.seed_commitment, bytes) and len(message.seed_commitment) == COMMITMENT_SIZE,
            "bad seed commitment",
        )
        require(isinstance(message.signature, bytes), "bad signature")
        try:
            verify(
                self._roster[message.sender],
                message.signature,
                advertise_transcript(self.config, message.sender, message.c_pk, message.s_pk, message.seed_commitment),
            )
        except InvalidShare:
            raise RemoteProtocolError(f"bad key signature from {message.sender}", reason="bad-signature") from None
        for key in (message.c_pk, message.s_pk):
            try:  # a low-order point makes every agreement fail: it would abort all honest peers
                agree(self._probe, key)
            except InvalidShare:
                raise RemoteProtocolError(f"low-order public key from {message.sender}", reason="bad-key") from None
        return message

    def _validate_reveal(self, message: SeedReveal) -> bytes:
        value = message.value
        require(isinstance(value, bytes) and len(value) == 32, "graph randomness must be 32 bytes")
        expected = self._keys[message.sender].seed_commitment
        require(
            hmac.compare_digest(seed_commitment(self.config, message.sender, value), expected),
            f"graph randomness from {message.sender} does not open its commitment",
            reason="bad-reveal",
        )
        return value

    def _validate_share_keys(self, message: ShareKeys) -> tuple[dict[int, bytes], dict[int, tuple[bytes, bytes]], bytes]:
        sender = message.sender
        recipients = check_id_pairs(message.ciphertexts, self.config.cohort_size, "share keys")
        neighbourhood = self._neighbourhoods[sender]
        require(set(recipients) == neighbourhood - {sender}, "shares not addressed to exactly the sender's neighbours")
        holders = check_id_pairs(message.commitments, self.config.cohort_size, "share commitments")
        require(set(holders) == neighbourhood, "share commitments do not cover exactly the sender's neighbourhood")
        require(
            all(len(commitment) == 2 * COMMITMENT_SIZE for _, commitment in message.commitments),
            "share commitments have the wrong size",
        )
        require(isinstance(message.signature, bytes), "bad signature")
        require(
            isinstance(message.mask_commitment, bytes) and len(message.mask_commitment) == COMMITMENT_SIZE,
            "bad self-mask commitment",
        )
        try:
            verify(
                self._roster[sender],
                message.signature,
                commitments_transcript(self.config, self._seed, sender, message.commitments, message.mask_commitment),
            )
        except InvalidShare:
            raise RemoteProtocolError(f"bad share-commitment signature from {sender}", reason="bad-signature") from None
        commitments = {
            holder: (commitment[:COMMITMENT_SIZE], commitment[COMMITMENT_SIZE:]) for holder, commitment in message.commitments
        }
        return dict(message.ciphertexts), commitments, message.mask_commitment

    def _validate_masked_input(self, message: MaskedInput) -> tuple[np.ndarray, frozenset[int]]:
        vector = message.vector
        require(
            isinstance(vector, np.ndarray) and vector.dtype == np.uint32 and vector.shape == (self.config.vector_length,),
            f"masked input must be uint32[{self.config.vector_length}]",
        )
        accused = check_sorted_ids(message.bad_dealers, self.config.cohort_size, "bad dealers")
        require(
            set(accused) <= (self._neighbourhoods[message.sender] & self._shared) - {message.sender},
            "bad dealers must be neighbours that shared",
        )
        return vector, frozenset(accused)

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
        if stage is None:
            raise LocalProtocolError(f"a stage closed in state {self.state.value}, which collects nothing")
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
        key_list = KeyList(tuple(self._keys[sender] for sender in answered))
        return [Send(node, key_list) for node in answered]

    def _close_reveals(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        missing = tuple(sorted(set(self._keys) - set(answered)))
        if missing:
            # Going on without them would mean choosing a seed after seeing the others' randomness.
            raise ProtocolAborted(
                f"reveal stage: nodes {list(missing)} advertised keys but did not reveal their graph "
                f"randomness; the graph cannot be fixed without it (retry without them)",
                stage=Stage.REVEAL.value,
                shortfall=len(missing),
                culprits=missing,
            )
        reveals = tuple((sender, inbox[sender]) for sender in answered)
        self._seed = graph_seed(self.config, reveals)
        self._graph = NeighbourGraph.build(self.config.ids, self.config.degree, self._seed)
        live = frozenset(answered)
        self._neighbourhoods = {node: self._graph.neighbours(node) & live for node in answered}
        message = SeedRevealList(reveals)
        return [Send(node, message) for node in answered]

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
        self._commitments = {sender: inbox[sender][1] for sender in shared}
        self._mask_commitments = {sender: inbox[sender][2] for sender in shared}
        sends = [Send(node, RoundAborted("too-few-neighbours")) for node in answered if node not in shared]
        for recipient in sorted(shared):
            senders = [s for s in sorted(self._neighbourhoods[recipient] & shared) if s != recipient]
            relay = ShareRelay(
                tuple((sender, inbox[sender][0][recipient]) for sender in senders),
                tuple((sender, b"".join(self._commitments[sender][recipient])) for sender in senders),
            )
            sends.append(Send(recipient, relay))
        return sends

    def _close_masked_inputs(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        survivors = set(answered)
        # Holders that could not open a dealer's shares will never reveal them: they do not count.
        self._withheld = {sender: inbox[sender][1] for sender in answered if inbox[sender][1]}
        self._require_recoverable(Stage.MASKED_INPUT, survivors)
        total = np.zeros(self.config.vector_length, dtype=np.uint32)
        for sender in answered:
            np.add(total, inbox[sender][0], out=total)
        self._masked_sum = total
        self._survivors = answered
        request = ConsistencyRequest(answered)
        return [Send(node, request) for node in answered]

    def _close_signatures(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        self._require_recoverable(Stage.CONSISTENCY, set(answered))
        if len(answered) < self.quorum:
            raise ProtocolAborted(
                f"consistency stage: {len(answered)} consistency signatures, the nodes need {self.quorum} before "
                f"they reveal anything (short by {self.quorum - len(answered)})",
                stage=Stage.CONSISTENCY.value,
                shortfall=self.quorum - len(answered),
            )
        self._signatures = dict(inbox)
        dropped = tuple(sorted(self._shared - set(self._survivors)))
        # Every node gets every signature: besides t from its neighbours it checks a quorum from the
        # whole cohort, which is what keeps all honest nodes on one survivor list.
        request = UnmaskRequest(self._survivors, dropped, tuple((signer, self._signatures[signer]) for signer in answered))
        return [Send(node, request) for node in answered]

    def _close_unmask(self, answered: tuple[int, ...], inbox: dict) -> list[Send]:
        config = self.config
        masked_sum = self._masked_sum
        if masked_sum is None:
            raise LocalProtocolError("unmasking closed without a masked sum (not after the masked-input stage or a resume)")
        survivors = set(self._survivors)
        dropped = self._shared - survivors
        # 1. Every revealed share must be the one its dealer committed to; a holder caught
        #    revealing anything else is excluded with all its shares.
        excluded: dict[int, str] = dict(self._malformed_unmask)
        for sender in answered:
            b_shares, s_shares = inbox[sender]
            for kind, shares, index in (("b", b_shares, 1), ("s", s_shares, 0)):
                for owner, share in shares.items():
                    committed = self._commitments[owner][sender][index]
                    actual = share_commitment(config, owner, sender, kind, share.to_bytes())
                    if not hmac.compare_digest(actual, committed):
                        excluded.setdefault(sender, f"revealed a {kind}-share of node {owner} that {owner} never committed to")
        b_pool: dict[int, list[Share]] = {node: [] for node in self._survivors}
        s_pool: dict[int, list[Share]] = {node: [] for node in dropped}
        for sender in answered:
            if sender in excluded:
                continue
            b_shares, s_shares = inbox[sender]
            for owner, share in b_shares.items():
                b_pool[owner].append(share)
            for owner, share in s_shares.items():
                s_pool[owner].append(share)
        culprits = tuple(sorted(excluded))
        for pool, kind in ((b_pool, "self-mask"), (s_pool, "mask-key")):
            for owner, shares in pool.items():
                if len(shares) < config.threshold:
                    blame = f"; excluded for bad shares: {culprits}" if culprits else ""
                    raise ProtocolAborted(
                        f"unmask stage: {len(shares)} good {kind} shares for node {owner}, threshold is "
                        f"{config.threshold} (short by {config.threshold - len(shares)}){blame}",
                        stage=Stage.UNMASK.value,
                        shortfall=config.threshold - len(shares),
                        culprits=culprits,
                    )
        # 2. Decode every secret from all its good shares. Shares that match their dealer's signed
        #    commitments yet do not lie on one polynomial were dealt that way: the dealer is at fault.
        bad_dealers: dict[int, str] = {}
        b_secrets: dict[int, bytes] = {}
        s_keys: dict[int, AgreementKeyPair] = {}
        for owner, shares in b_pool.items():
            secret = self._decode(owner, shares, bad_dealers)
            if secret is None:
                continue
            if not hmac.compare_digest(mask_seed_commitment(config, owner, secret), self._mask_commitments[owner]):
                bad_dealers.setdefault(owner, "its shares reconstruct a self-mask seed it never committed to")
                continue
            b_secrets[owner] = secret
        for owner, shares in s_pool.items():
            secret = self._decode(owner, shares, bad_dealers)
            if secret is None:
                continue
            keys = AgreementKeyPair.from_private_bytes(secret)
            if not hmac.compare_digest(keys.public_bytes, self._keys[owner].s_pk):
                bad_dealers.setdefault(owner, "its shares reconstruct a key that does not match its advertised key")
                continue
            s_keys[owner] = keys
        if bad_dealers:
            reasons = "; ".join(f"node {owner}: {why}" for owner, why in sorted(bad_dealers.items()))
            raise ProtocolAborted(
                f"unmask stage: identifiable abort, dealt inconsistent shares ({reasons}); retry without them",
                stage=Stage.UNMASK.value,
                shortfall=0,
                culprits=tuple(sorted(bad_dealers)),
            )
        masks = [(b_secrets[owner], -1) for owner in self._survivors]
        for owner, keys in s_keys.items():
            for survivor in sorted(self._neighbourhoods[owner] & survivors):
                seed = pairwise_mask_seed(config, keys, self._keys[survivor].s_pk, owner, survivor)
                # The survivor applied mask_sign(survivor, owner) * PRG(seed): take it back out.
                masks.append((seed, -mask_sign(survivor, owner)))
        unmasked = MaskAccumulator(masked_sum)
        unmasked.apply(masks)
        self.result = AggregateResult(unmasked.value, self._survivors, excluded)
        return []

    def _decode(self, owner: int, shares: list[Share], bad_dealers: dict[int, str]) -> bytes | None:
        try:
            decoded = decode(shares, self.config.threshold)
        except InvalidShare:
            bad_dealers.setdefault(owner, "its committed shares do not lie on one polynomial of degree < t")
            return None
        if decoded.bad:
            bad_dealers.setdefault(owner, f"its committed shares at {list(decoded.bad)} lie off the polynomial of the others")
            return None
        return decoded.secret

    def _require_recoverable(self, stage: Stage, holders: set[int]) -> None:
        """Every node that shared must keep at least t share holders among ``holders`` that can open its shares.

        Checked before anything is revealed, so a round that could not be unmasked stops while it
        can still be retried. If it stops because holders reported a dealer's shares as bad, that
        dealer is named: the reports cannot be checked (only the holder saw the share), so a corrupt
        holder could frame an honest dealer this way, but only to keep it out of the retries of this
        round (and the coordinator takes it back when the round cannot run without it).
        """
        withheld = self._withheld
        worst, owner = min(
            (len({h for h in self._neighbourhoods[node] & holders if node not in withheld.get(h, ())}), node)
            for node in self._shared
        )
        if worst >= self.config.threshold:
            return
        accusers = sorted(h for h in self._neighbourhoods[owner] & holders if owner in withheld.get(h, ()))
        need = self.config.threshold
        if accusers and len(self._neighbourhoods[owner] & holders) >= need:
            raise ProtocolAborted(
                f"{stage.value} stage: node {owner} keeps {worst} share holders that can open its shares, threshold "
                f"is {need} (short by {need - worst}); nodes {accusers} reported its shares as bad (retry without {owner})",
                stage=stage.value,
                shortfall=need - worst,
                culprits=(owner,),
            )
        self._shortfall(stage, worst, f"share holders remain for node {owner}")

    # --- surviving a coordinator restart during unmasking ---------------------

    def unmask_snapshot(self) -> tuple[dict, bytes]:
        """What a restarted coordinator needs to finish this round's unmasking: (JSON-able dict, masked sum bytes).

        Taken once the consistency stage has closed and *before* the unmask requests go out:
        from then on nodes release shares and will never contribute to this round again, so
        the only way to finish it after a crash is to collect those same shares again.
        Everything here is public or already held by the coordinator (no node secret).
        """
        if self.state is not ServerState.COLLECT_UNMASK_SHARES:
            raise LocalProtocolError("a snapshot is taken in the unmask stage only")
        b64 = _b64
        data = {
            "version": 1,
            "answered": {stage.value: list(ids) for stage, ids in self.answered.items()},
            "keys": [[e.sender, b64(e.c_pk), b64(e.s_pk), b64(e.seed_commitment), b64(e.signature)] for e in self._keys.values()],
            "seed": b64(self._seed),
            "commitments": [
                [dealer, holder, b64(pair[0]), b64(pair[1])]
                for dealer, holders in sorted(self._commitments.items())
                for holder, pair in sorted(holders.items())
            ],
            "mask_commitments": [[dealer, b64(value)] for dealer, value in sorted(self._mask_commitments.items())],
            "shared": sorted(self._shared),
            "survivors": list(self._survivors),
            "signatures": [[signer, b64(signature)] for signer, signature in sorted(self._signatures.items())],
            "withheld": [[holder, sorted(dealers)] for holder, dealers in sorted(self._withheld.items())],
            "expected": sorted(self._expected),
            "quorum": self.quorum,
        }
        return data, np.ascontiguousarray(self._masked_sum, dtype="<u4").tobytes()

    @classmethod
    def resume_unmasking(
        cls,
        config: RoundConfig,
        roster: Mapping[int, bytes],
        data: dict,
        masked_sum: bytes,
        *,
        entropy: Callable[[int], bytes] | None = None,
    ) -> ServerProtocol:
        """Rebuild a server waiting for unmask shares from :meth:`unmask_snapshot`'s output.

        Raises :class:`InvalidParameter` if the snapshot does not fit ``config`` (a damaged or
        foreign file): a coordinator must then give the round up, not guess.
        """
        server = cls(config, roster, entropy=entropy, quorum=int(data.get("quorum", 1)))
        try:
            if data.get("version") != 1:
                raise ValueError("unknown snapshot version")
            unb64 = _unb64
            server.answered = {Stage(name): tuple(ids) for name, ids in data["answered"].items()}
            server._keys = {
                int(sender): AdvertiseKeys(int(sender), unb64(c_pk), unb64(s_pk), unb64(commitment), unb64(signature))
                for sender, c_pk, s_pk, commitment, signature in data["keys"]
            }
            server._seed = unb64(data["seed"])
            commitments: dict[int, dict[int, tuple[bytes, bytes]]] = {}
            for dealer, holder, s_commitment, b_commitment in data["commitments"]:
                commitments.setdefault(int(dealer), {})[int(holder)] = (unb64(s_commitment), unb64(b_commitment))
            server._commitments = commitments
            server._mask_commitments = {int(dealer): unb64(value) for dealer, value in data["mask_commitments"]}
            server._shared = frozenset(int(i) for i in data["shared"])
            server._survivors = tuple(int(i) for i in data["survivors"])
            server._signatures = {int(signer): unb64(signature) for signer, signature in data["signatures"]}
            server._withheld = {int(holder): frozenset(int(d) for d in dealers) for holder, dealers in data["withheld"]}
            server._expected = {int(i) for i in data["expected"]}
            total = np.frombuffer(masked_sum, dtype="<u4").astype(np.uint32)
            if total.shape != (config.vector_length,) or not server._survivors:
                raise ValueError("masked sum or survivors do not fit the round")
            if not set(server._survivors) <= server._shared <= set(server._keys) <= set(config.ids):
                raise ValueError("inconsistent survivor, sharer and key sets")
            server._masked_sum = total
            graph = NeighbourGraph.build(config.ids, config.degree, server._seed)
            live = frozenset(server._keys)
            server._graph = graph
            server._neighbourhoods = {node: graph.neighbours(node) & live for node in live}
        except (KeyError, TypeError, ValueError, AttributeError, InvalidParameter) as exc:
            raise InvalidParameter(f"cannot resume unmasking from this snapshot: {exc}") from None
        server.state = ServerState.COLLECT_UNMASK_SHARES
        return server

    def unmask_requests(self) -> list[Send]:
        """The unmask requests of this round (again), for nodes that have not answered yet."""
        if self.state is not ServerState.COLLECT_UNMASK_SHARES:
            raise LocalProtocolError("unmask requests exist in the unmask stage only")
        dropped = tuple(sorted(self._shared - set(self._survivors)))
        request = UnmaskRequest(
            self._survivors, dropped, tuple((signer, self._signatures[signer]) for signer in sorted(self._signatures))
        )
        return [Send(node, request) for node in sorted(self.waiting_for)]

    def abort_messages(self, reason: str) -> list[Send]:
        """Tell every node still in the round that it is over (for drivers after an abort)."""
        participants = set(self._keys) or set(self.config.ids)
        return [Send(node, RoundAborted(reason)) for node in sorted(participants)]


#: Each validator takes the message type it is keyed by; a dict type cannot tie the two, hence ``Any``.
_VALIDATORS: dict[type, Callable[[ServerProtocol, Any], object]] = {
    AdvertiseKeys: ServerProtocol._validate_advertise,
    SeedReveal: ServerProtocol._validate_reveal,
    ShareKeys: ServerProtocol._validate_share_keys,
    MaskedInput: ServerProtocol._validate_masked_input,
    ConsistencySignature: ServerProtocol._validate_signature,
    UnmaskShares: ServerProtocol._validate_unmask,
}
_CLOSERS: dict[ServerState, Callable[[ServerProtocol, tuple[int, ...], dict], list[Send]]] = {
    ServerState.COLLECT_KEYS: ServerProtocol._close_keys,
    ServerState.COLLECT_REVEALS: ServerProtocol._close_reveals,
    ServerState.COLLECT_SHARES: ServerProtocol._close_shares,
    ServerState.COLLECT_MASKED_INPUTS: ServerProtocol._close_masked_inputs,
    ServerState.COLLECT_SIGNATURES: ServerProtocol._close_signatures,
    ServerState.COLLECT_UNMASK_SHARES: ServerProtocol._close_unmask,
}
