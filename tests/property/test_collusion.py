"""Secure aggregation against an actively malicious coordinator working with colluding nodes.

Adversary (docs/threat-model.md P1): the coordinator deviates at will and works with up to c
corrupt nodes, c from the honest nodes' own policy (``max_colluders``). The property: whatever
the cohort, threshold, graph, colluders, dropouts and coordinator strategy (honest, split view,
partition into two worlds, graph grinding over attempts, rerun-and-subtract), once everything
the adversary holds is gathered (:func:`tests.adversary.knowledge`), **no honest node's input is
computable** whenever the honest nodes' policy accepted the round; for the complete graph the
adversary learns at most one sum. When the policy refuses, every honest node refuses before it
sends anything and the adversary learns nothing.

The sweeps below show the checker can fail and the bound is the true one: one colluder more
than 2t > N + c allows and the split view recovers the target's input exactly; a rerun without
the node's release guard does too.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from securefed.errors import RemoteProtocolError
from securefed.secagg.bounds import minimum_safe_threshold, smallest_safe_threshold
from securefed.secagg.config import ClientPolicy
from securefed.secagg.messages import Stage
from tests.adversary import Attack, Strategy, knowledge
from tests.secagg_harness import make_config

STAGES = [stage for stage in Stage]


@st.composite
def attacks(draw, strategy: Strategy | None = None, dropouts: bool = True) -> tuple[Attack, Strategy, bool]:
    n = draw(st.integers(3, 12))
    setting = draw(st.one_of(st.none(), st.integers(0, n // 2)))
    policy = ClientPolicy(max_colluders=setting)
    c_policy = policy.colluders(n)
    c_actual = draw(st.integers(0, min(c_policy, n - 1)))
    colluders = frozenset(draw(st.permutations(range(1, n + 1)))[:c_actual])
    neighbours = None
    if n >= 7 and draw(st.booleans()):
        neighbours = draw(st.sampled_from([k for k in (2, 4, 6) if k + 3 <= n]))
    pool = make_config(n, 1, neighbours=neighbours).neighbourhood_size
    safe = minimum_safe_threshold(n, c_policy) if neighbours is None else smallest_safe_threshold(n, neighbours, c_policy)
    t = draw(st.one_of(st.integers(1, pool), st.integers(min(safe, pool), pool)))
    honest = sorted(set(range(1, n + 1)) - colluders)
    dropping = []
    if honest and dropouts:
        dropping = draw(st.lists(st.sampled_from(honest), unique=True, max_size=max(0, len(honest) - 1)))
    silent = {node: draw(st.sampled_from(STAGES)) for node in dropping}
    if strategy is None:
        strategy = draw(st.sampled_from(list(Strategy)))
    event(f"strategy {strategy.value}")
    event("complete graph" if neighbours is None else f"sparse k={neighbours}")
    attack = Attack(n, t, colluders, policy, neighbours=neighbours, silent=silent, seed=draw(st.integers(0, 3)))
    config = make_config(n, t, neighbours=neighbours)
    try:
        policy.check(config, roster_size=n)
        accepted = True
    except RemoteProtocolError:
        accepted = False
    return attack, strategy, accepted


@given(attacks())
def test_no_honest_input_is_computable_when_the_policy_accepts(case) -> None:
    attack, strategy, accepted = case
    attack.run(strategy)
    learned = knowledge(attack.rounds, attack.colluders, attack.honest)
    event(("accepted by policy" if accepted else "refused by policy") + (" (sparse)" if attack.neighbours else ""))
    event(f"learned {len(set(learned.learnable))} sum(s)")
    if not accepted:
        for r in attack.rounds:
            for node in attack.honest:
                if r.speaks(node, Stage.ADVERTISE) or node in r.errors:
                    assert node in r.errors, f"honest node {node} took part in a round its policy refuses"
                    assert getattr(r.errors[node], "reason", None) == "weaker-than-policy"
        assert learned.learnable == (), learned
        return
    assert learned.computable == frozenset(), (
        f"{strategy.value}: the adversary computes the inputs of honest nodes {sorted(learned.computable)} "
        f"(n={attack.n}, t={attack.t}, k={attack.neighbours}, colluders={sorted(attack.colluders)}, "
        f"learnable sums over {[sorted(s) for s in learned.learnable]})"
    )
    if attack.neighbours is None:
        assert len(set(learned.learnable)) <= 1, f"{strategy.value}: more than one sum: {learned.learnable}"


@given(attacks(strategy=Strategy.HONEST, dropouts=False))
def test_an_honest_round_reveals_exactly_the_sum_of_the_honest_survivors(case) -> None:
    """The control: the model is not vacuous; an honest run's sum is learnable, as it must be."""
    attack, _, accepted = case
    attack.run(Strategy.HONEST)
    (r,) = attack.rounds
    learned = knowledge(attack.rounds, attack.colluders, attack.honest)
    if r.server.result is None:
        assert learned.learnable == ()
        return
    honest_survivors = frozenset(r.server.result.survivors) & attack.honest
    assert accepted or not honest_survivors, "honest nodes took part in a round their policy refuses"
    assert set(learned.learnable) == ({honest_survivors} if honest_survivors else set())


# --- the bound is the true one: sweeping the colluders across it -------------------------


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10, 11])
def test_split_view_fails_up_to_the_bound_and_succeeds_one_colluder_beyond(n: int) -> None:
    """At t = floor((n + c)/2) + 1, a split view needs 2(t - c') <= n - c' colluders c'.

    The sweep runs the attack with every c' from 0 up to n - t + ... : the target's input stays
    hidden exactly while 2t > n + c', and is recovered exactly as soon as 2t <= n + c'.
    """
    policy = ClientPolicy()  # the default: c = max(1, ceil(n/5))
    t = minimum_safe_threshold(n, policy.colluders(n))
    for c_actual in range(0, t):
        colluders = frozenset(range(n - c_actual + 1, n + 1))
        attack = Attack(n, t, colluders, policy, seed=c_actual)
        attack.run(Strategy.SPLIT)
        learned = knowledge(attack.rounds, attack.colluders, attack.honest)
        target = attack.target()
        if 2 * t > n + c_actual:
            assert learned.computable == frozenset(), (n, t, c_actual, learned)
        else:
            assert target in learned.computable, (n, t, c_actual, learned)
            # and what the model says is computable really is: unmask the target's input
            assert _recovered_input(attack, target) is not None


def _recovered_input(attack: Attack, target: int) -> np.ndarray | None:
    """Reconstruct the target's b and s keys from what the adversary holds and unmask its y exactly."""
    from securefed.crypto.agreement import AgreementKeyPair
    from securefed.crypto.prg import MaskAccumulator
    from securefed.crypto.shamir import Share, combine
    from securefed.secagg.messages import MaskedInput, ShareKeys, ShareRelay
    from securefed.secagg.transcript import mask_sign, pairwise_mask_seed

    (r,) = attack.rounds
    config = r.config
    b_shares: dict[int, Share] = {}
    s_shares: dict[int, Share] = {}
    for colluder in attack.colluders:  # colluders hold both shares the target dealt them
        held = r.clients[colluder]._held.get(target)
        if held is not None:
            s_shares[colluder], b_shares[colluder] = held
    for holder, outputs in r.unmask_outputs.items():
        for message in outputs:  # a holder reveals at most one share of each owner: key them by holder
            for owner, raw in message.b_shares:
                if owner == target:
                    b_shares[holder] = Share.from_bytes(raw)
            for owner, raw in message.s_shares:
                if owner == target:
                    s_shares[holder] = Share.from_bytes(raw)
    if len(b_shares) < config.threshold or len(s_shares) < config.threshold:
        return None
    b_seed = combine(list(b_shares.values())[: config.threshold])
    s_keys = AgreementKeyPair.from_private_bytes(combine(list(s_shares.values())[: config.threshold]))
    entries = {e.sender: e for e in r.key_list().entries}
    masked = next(m.vector for m in r.client_log if isinstance(m, MaskedInput) and m.sender == target)
    masks = [(b_seed, -1)]
    for peer in sorted(r.clients[target].shared_with - {target}):
        seed = pairwise_mask_seed(config, s_keys, entries[peer].s_pk, target, peer)
        masks.append((seed, -mask_sign(target, peer)))
    unmasked = MaskAccumulator(masked.copy())
    unmasked.apply(masks)
    assert np.array_equal(unmasked.value, attack.inputs[target]), "the model said computable, but it is not"
    del ShareKeys, ShareRelay
    return unmasked.value


def test_rerun_without_the_release_guard_is_caught_by_the_checker_and_the_guard_stops_it() -> None:
    policy = ClientPolicy()
    attack = Attack(10, 7, frozenset({9, 10}), policy)
    attack.run_rerun(guard=False)
    assert attack.target() in knowledge(attack.rounds, attack.colluders, attack.honest).computable
    guarded = Attack(10, 7, frozenset({9, 10}), policy)
    guarded.run_rerun(guard=True)
    assert knowledge(guarded.rounds, guarded.colluders, guarded.honest).computable == frozenset()
    assert guarded.rounds[1].server.state.value == "aborted"


def test_partition_into_two_worlds_cannot_complete_both_under_the_bound() -> None:
    """Two rounds of one (task, round): with 2t > N + c at most one world reaches t live nodes."""
    policy = ClientPolicy()
    for with_target in range(0, 8):
        attack = Attack(10, 7, frozenset({9, 10}), policy, seed=with_target)
        attack.run_partition(with_target=with_target)
        completed = [r for r in attack.rounds if r.server.result is not None]
        assert len(completed) <= 1
        assert knowledge(attack.rounds, attack.colluders, attack.honest).computable == frozenset()
    # The same move against a policy that ignores colluders learns two sums, and with one honest
    # node beside the target in its world, that node pair's sum: the checker sees it.
    weak = ClientPolicy(max_colluders=0, adversary="curious", min_threshold_fraction=0.0)
    attack = Attack(10, 3, frozenset({9, 10}), weak)
    attack.run_partition(with_target=0)
    assert attack.target() in knowledge(attack.rounds, attack.colluders, attack.honest).computable
