"""An actively malicious coordinator working with colluding nodes, and what it ends up knowing.

The adversary of docs/threat-model.md, built from the real state machines: honest nodes are real
``ClientProtocol`` objects under the policy being tested; colluding nodes are real
``ClientProtocol`` objects too, whose every received share the adversary reads; the coordinator
is a real ``ServerProtocol`` wherever it behaves, and this module wherever it does not. Five
strategies (:class:`Strategy`):

* ``honest``    — the protocol as written (the control: it must learn exactly the survivors' sum);
* ``split``     — at the consistency stage, tell the target and a group A that the target
  survived and everyone else (group B) that it dropped; colluders sign both survivor lists;
* ``partition`` — run two rounds of the same (task, round, context) at once, the target and a
  few honest nodes in one, the rest in the other, colluders in both ("shrink" the target's world);
* ``grind``     — start several attempts, look at each one's neighbour graph once it is fixed,
  keep the attempt where the target has the most colluding neighbours, then split it;
* ``rerun``     — complete the round, then run the same round again without the target and
  subtract (the node's durable release guard, ``NodeState``, stands between the two).

:func:`knowledge` is the ideal-world check: from everything the adversary holds at the end
(masked inputs, every share the colluders received, every share honest nodes revealed) it works
out which sums of honest inputs the adversary can compute, exactly, with Shamir's threshold
(``t`` shares of a secret reveal it, fewer reveal nothing) and the structure of the masks (a sum
over a set S unmasks iff every member's self-mask seed is recoverable and every pairwise mask
between S and the honest nodes outside it is removable). An honest input is *computable* when its
unit vector lies in the span of those sums.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from securefed.errors import ProtocolAborted, SecureFedError
from securefed.secagg.config import ClientPolicy
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    SeedRevealList,
    Send,
    ShareKeys,
    Stage,
    UnmaskRequest,
)
from securefed.secagg.transcript import consistency_transcript
from tests.secagg_harness import STAGE_OF_CLIENT_MESSAGE, HonestRound, make_config, make_identities, make_inputs

__all__ = ["COLLUDER_POLICY", "Attack", "Knowledge", "Strategy", "knowledge"]

#: Colluding nodes take part in anything the coordinator proposes.
COLLUDER_POLICY = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=0, adversary="curious")


class Strategy(Enum):
    HONEST = "honest"
    SPLIT = "split"
    PARTITION = "partition"
    GRIND = "grind"
    RERUN = "rerun"


class AdversarialRound(HonestRound):
    """An ``HonestRound`` whose nodes may refuse at start (policy) without stopping the harness."""

    def start(self) -> list[AdvertiseKeys]:
        out: list[AdvertiseKeys] = []
        for node in self.config.ids:
            if not self.speaks(node, Stage.ADVERTISE):
                continue
            try:
                out.extend(self.clients[node].start())
            except SecureFedError as exc:
                self.errors[node] = exc
        self.client_log.extend(out)
        return out

    def deliver_and_log(self, node: int, message: object) -> list[object]:
        replies = [m for m in self.deliver(node, message) if self.speaks(node, STAGE_OF_CLIENT_MESSAGE[type(m)])]
        self.client_log.extend(replies)
        return replies

    def refused_at_start(self, nodes: Iterable[int]) -> bool:
        return any(node in self.errors and self.clients[node].state.value == "aborted" for node in nodes)


@dataclass
class Attack:
    """One adversary: cohort, threshold, graph, who colludes, the honest nodes' policy, dropouts."""

    n: int
    t: int
    colluders: frozenset[int]
    policy: ClientPolicy
    neighbours: int | None = None
    silent: Mapping[int, Stage] = field(default_factory=dict)
    seed: int = 0
    d: int = 3
    rounds: list[AdversarialRound] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.identities = make_identities(self.n, self.seed)
        self.inputs = make_inputs(make_config(self.n, 1, d=self.d), self.seed)

    @property
    def honest(self) -> frozenset[int]:
        return frozenset(range(1, self.n + 1)) - self.colluders

    def new_round(self, round_id: int = 1, silent: Mapping[int, Stage] | None = None, label: str = "") -> AdversarialRound:
        policies = {node: COLLUDER_POLICY for node in self.colluders}
        r = AdversarialRound(
            self.n,
            self.t,
            d=self.d,
            neighbours=self.neighbours,
            round_id=round_id,
            identities=self.identities,
            inputs=self.inputs,
            policy=self.policy,
            policies=policies,
            silent=dict(self.silent if silent is None else silent),
            seed=f"{self.seed}/{label}/{round_id}",
            task="collusion",
        )
        self.rounds.append(r)
        return r

    def target(self) -> int | None:
        """The honest node the adversary goes after: the first one that is not dropping out."""
        for node in sorted(self.honest):
            if node not in self.silent:
                return node
        return None

    # --- strategies ---------------------------------------------------------

    def run(self, strategy: Strategy, **options: object) -> None:
        {
            Strategy.HONEST: self.run_honest,
            Strategy.SPLIT: self.run_split,
            Strategy.PARTITION: self.run_partition,
            Strategy.GRIND: self.run_grind,
            Strategy.RERUN: self.run_rerun,
        }[strategy](**options)

    def run_honest(self) -> None:
        run_to_end(self.new_round())

    def run_split(self, group_a: Sequence[int] | None = None, r: AdversarialRound | None = None, sends=None) -> None:
        r = r or self.new_round()
        target = self.target()
        try:
            sends = advance(r, sends, ConsistencyRequest)
        except ProtocolAborted:
            return
        if sends is None:
            return
        survivors = tuple(sends[0].message.survivors)
        honest_survivors = [node for node in survivors if node in self.honest]
        if target not in honest_survivors:
            run_to_end(r, sends)  # no target left: behave
            return
        others = [node for node in honest_survivors if node != target]
        if group_a is None:
            # The adversary's best split: as few as the target's group needs, the rest told it dropped.
            need = max(0, self.t - 1 - len(self.colluders & set(survivors)))
            group_a = others[:need]
        a_view = set(group_a) | {target}
        views = {
            "A": (tuple(survivors), sorted(a_view)),
            "B": (tuple(node for node in survivors if node != target), [v for v in others if v not in a_view]),
        }
        seed = r.graph_seed()
        sharers = set(r.server._shared)
        colluders_in = [node for node in survivors if node in self.colluders]
        for survivor_list, members in views.values():
            signatures: dict[int, bytes] = {}
            for node in members:
                for reply in r.deliver_and_log(node, ConsistencyRequest(survivor_list)):
                    if isinstance(reply, ConsistencySignature):
                        signatures[node] = reply.signature
            transcript = consistency_transcript(r.config, seed, survivor_list)
            for colluder in colluders_in:  # colluders sign whatever list they are shown
                signatures[colluder] = self.identities[colluder].sign(transcript)
            dropped = tuple(sorted(sharers - set(survivor_list)))
            for node in members:
                if node not in signatures:
                    continue
                signers = sorted(set(signatures) & set(survivor_list))  # everything it has for this list
                request = UnmaskRequest(survivor_list, dropped, tuple((s, signatures[s]) for s in signers))
                r.deliver_and_log(node, request)

    def run_partition(self, with_target: int = 1) -> None:
        """Two rounds of one (task, round): the target and ``with_target`` other honest nodes in one."""
        target = self.target()
        if target is None:
            self.run_honest()
            return
        others = sorted(self.honest - {target})
        world_t = {target, *others[:with_target]}
        world_f = set(others[with_target:])
        for label, members in (("T", world_t), ("F", world_f)):
            silent = dict(self.silent)
            for node in self.honest - members:
                silent[node] = Stage.ADVERTISE
            run_to_end(self.new_round(silent=silent, label=label))

    def run_grind(self, attempts: int = 4) -> None:
        """Keep the attempt where the target has the most colluding neighbours, then split it."""
        target = self.target()
        best: tuple[int, int, AdversarialRound, list[Send]] | None = None
        for attempt in range(attempts):
            r = self.new_round(round_id=attempt + 1, label="grind")
            try:
                sends = advance(r, None, SeedRevealList)
            except ProtocolAborted:
                continue
            if sends is None or target is None:
                continue
            score = len(r.graph().neighbours(target) & self.colluders)
            if best is None or score > best[0]:
                best = (score, attempt, r, sends)
        # Abandoned attempts end here: their nodes revealed keys and graph randomness, nothing more.
        if best is not None:
            self.run_split(r=best[2], sends=best[3])

    def run_rerun(self, guard: bool = True) -> None:
        """Complete round r; then aggregate round r again (new attempt id, same model) without the target."""
        from securefed.federation.node import NodeState

        target = self.target()
        model_hash = "model-of-round-1"
        with tempfile.TemporaryDirectory() as folder:
            states = {node: NodeState(Path(folder) / f"node-{node}.sqlite") for node in self.honest}
            try:
                first = self.new_round(round_id=1, label="rerun")
                run_to_end(first)
                for node, outputs in first.unmask_outputs.items():
                    if outputs and node in self.honest and guard:
                        states[node].record_release("collusion", "train", 1, model_hash, 1)
                silent = dict(self.silent)
                if target is not None:
                    silent[target] = Stage.ADVERTISE
                for node in self.honest:
                    if states[node].released("collusion", "train", 1, model_hash) is not None:
                        silent[node] = Stage.ADVERTISE  # the node refuses before training ("rerun")
                run_to_end(self.new_round(round_id=2, silent=silent, label="rerun"))
            finally:
                for state in states.values():
                    state.close()


def run_to_end(r: HonestRound, sends: list[Send] | None = None) -> None:
    """Run honestly from ``sends`` (or from the start) until the round is done or aborted."""
    outbox = r.start() if sends is None else r.to_clients(sends)
    try:
        for _ in range(len(Stage) + 1):
            if r.server.state.value in ("done", "aborted"):
                return
            outbox = r.to_clients(r.to_server(outbox))
    except ProtocolAborted:
        return


def advance(r: HonestRound, sends: list[Send] | None, until: type) -> list[Send] | None:
    """Run honestly from ``sends`` (or from the start) until the server emits ``until``; None if it never does."""
    outbox = r.start() if sends is None else r.to_clients(sends)
    for _ in range(len(Stage) + 1):
        if r.server.state.value in ("done", "aborted"):
            return None
        produced = r.to_server(outbox)  # raises ProtocolAborted if a stage closes short
        if any(isinstance(send.message, until) for send in produced):
            return produced
        outbox = r.to_clients(produced)
    return None


# --- the ideal-world check -----------------------------------------------------


@dataclass(frozen=True)
class Knowledge:
    """Sums of honest inputs the adversary can compute, per round it ran, and what follows from them."""

    learnable: tuple[frozenset[int], ...]
    computable: frozenset[int]


def _learnable_sets(r: HonestRound, colluders: frozenset[int]) -> list[frozenset[int]]:
    honest = frozenset(r.config.ids) - colluders
    sent_masked = {m.sender for m in r.client_log if isinstance(m, MaskedInput)} & honest
    dealt = {m.sender: {holder for holder, _ in m.commitments} for m in r.client_log if isinstance(m, ShareKeys)}
    revealed_b: dict[int, set[int]] = {}
    revealed_s: dict[int, set[int]] = {}
    for holder, outputs in r.unmask_outputs.items():
        if holder in colluders:
            continue
        for message in outputs:
            for owner, _ in message.b_shares:
                revealed_b.setdefault(owner, set()).add(holder)
            for owner, _ in message.s_shares:
                revealed_s.setdefault(owner, set()).add(holder)

    def recoverable(owner: int, revealed: dict[int, set[int]]) -> bool:
        holders = dealt.get(owner)
        if holders is None:
            return False  # never dealt: no share exists
        threshold = r.node_configs[owner].threshold
        known = (holders & colluders) | (revealed.get(owner, set()) & holders)
        return len(known) >= threshold

    rec_b = {node: recoverable(node, revealed_b) for node in honest}
    rec_s = {node: recoverable(node, revealed_s) for node in honest}

    def removable(u: int, v: int) -> bool:
        return rec_s[u] or rec_s[v]

    bad: set[int] = set()
    glue: dict[int, set[int]] = {node: set() for node in sent_masked}
    for u in sent_masked:
        if not rec_b[u]:
            bad.add(u)
        for v in r.clients[u].shared_with - {u}:
            if v in colluders or removable(u, v):
                continue
            if v in sent_masked and u in r.clients[v].shared_with:
                glue[u].add(v)
                glue[v].add(u)
            else:
                bad.add(u)  # a mask that never cancels and cannot be removed
    learnable = []
    seen: set[int] = set()
    for start in sorted(sent_masked):
        if start in seen:
            continue
        component, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node in component:
                continue
            component.add(node)
            stack.extend(glue[node] - component)
        seen |= component
        if not component & bad:
            learnable.append(frozenset(component))
    return learnable


def knowledge(rounds: Iterable[HonestRound], colluders: frozenset[int], honest: Iterable[int]) -> Knowledge:
    """Everything computable from all ``rounds`` together (the honest inputs are the same in all of them)."""
    honest = sorted(honest)
    index = {node: i for i, node in enumerate(honest)}
    learnable: list[frozenset[int]] = []
    for r in rounds:
        learnable.extend(_learnable_sets(r, colluders))
    rows = [[1.0 if node in s else 0.0 for node in honest] for s in learnable]
    computable = set()
    if rows:
        matrix = np.array(rows)
        rank = np.linalg.matrix_rank(matrix)
        for node in honest:
            unit = np.zeros(len(honest))
            unit[index[node]] = 1.0
            if np.linalg.matrix_rank(np.vstack([matrix, unit])) == rank:
                computable.add(node)
    return Knowledge(tuple(learnable), frozenset(computable))
