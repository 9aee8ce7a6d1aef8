"""The four attack classes of the active-security review, each replayed against default policies.

Adversary: a malicious coordinator working with colluding nodes, built from the real state
machines (``tests/adversary.py``). Each class is first shown to *work* against a policy that
ignores colluders (so the test can fail, and the attack is real), then to meet its refusal under
the default policy, which defends against c = max(1, ceil(N/5)) colluders.

1. split view at the consistency stage        -> refused at start: 2t > N + c fails
2. SecAgg+ neighbourhood control (short key    -> the graph is fixed over the whole cohort from
   list, grinding over subsets or attempts)       committed randomness; the node refuses too few
                                                  live neighbours; the default policy refuses the
                                                  old (k, t) outright
3. rerun and subtract                          -> the node's durable release guard ("rerun")
4. one corrupt node (bad share, raw summand)   -> excluded and named, exact sum; or refused at
                                                  decode ("out-of-range")
"""

from __future__ import annotations

import numpy as np
import pytest

from securefed.errors import EncodingError, RemoteProtocolError
from securefed.federation.update import EvaluationCodec, TrainingUpdateCodec
from securefed.secagg.client import ClientState
from securefed.secagg.config import ClientPolicy
from securefed.secagg.graph import NeighbourGraph, propose_parameters
from securefed.secagg.messages import KeyList, SeedRevealList, Stage, UnmaskShares
from securefed.secagg.transcript import graph_seed
from tests.adversary import Attack, Strategy, advance, knowledge
from tests.secagg_harness import HonestRound, exact_sum, make_config

DEFAULT = ClientPolicy()
#: what the default policy used to be: more than half the neighbourhood, no colluder bound
OLD_DEFAULT = ClientPolicy(max_colluders=0, adversary="curious")

# --- 1. split view ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "t", "colluders"), [(10, 6, 2), (9, 5, 1), (11, 6, 1)])
def test_split_view_recovers_an_input_under_the_old_policy(n: int, t: int, colluders: int) -> None:
    attack = Attack(n, t, frozenset(range(n - colluders + 1, n + 1)), OLD_DEFAULT)
    attack.run(Strategy.SPLIT)
    assert attack.target() in knowledge(attack.rounds, attack.colluders, attack.honest).computable


@pytest.mark.parametrize(("n", "t"), [(10, 6), (9, 5), (11, 6)])
def test_split_view_parameters_are_refused_by_the_default_policy(n: int, t: int) -> None:
    r = HonestRound(n, t)
    for client in r.clients.values():
        with pytest.raises(RemoteProtocolError, match="2t > N") as info:
            client.start()
        assert info.value.reason == "weaker-than-policy"
        assert client.state is ClientState.ABORTED


@pytest.mark.parametrize("n", [9, 10, 11])
def test_split_view_fails_at_the_threshold_the_default_policy_accepts(n: int) -> None:
    c = DEFAULT.colluders(n)
    attack = Attack(n, (n + c) // 2 + 1, frozenset(range(n - c + 1, n + 1)), DEFAULT)
    attack.run(Strategy.SPLIT)
    learned = knowledge(attack.rounds, attack.colluders, attack.honest)
    assert learned.computable == frozenset()
    assert len(learned.learnable) == 1  # one sum, over one group


# --- 2. neighbourhood control ------------------------------------------------------------


def test_the_reviewed_sparse_parameters_are_refused_by_the_default_policy() -> None:
    for n, k, t in ((1000, 54, 39), (1000, 2, 2), (50, 2, 2)):
        with pytest.raises(RemoteProtocolError, match="neighbourhood") as info:
            DEFAULT.check(make_config(n, t, neighbours=k))
        assert info.value.reason == "weaker-than-policy"
    proposal = propose_parameters(1000, 0.05)  # sized for the default 20% colluders
    DEFAULT.check(make_config(1000, proposal.threshold, neighbours=proposal.neighbours))


def _sparse_attack(seed: int = 0) -> Attack:
    proposal = propose_parameters(100, 0.05, 5)
    colluders = frozenset(range(96, 101))
    return Attack(
        100, proposal.threshold, colluders, ClientPolicy(max_colluders=5), neighbours=proposal.neighbours, d=2, seed=seed
    )


def test_a_short_key_list_cannot_reshape_the_target_neighbourhood() -> None:
    """The reviewed attack sent the target a key list of itself and colluders, which used to become
    a complete graph. Now the graph is drawn over the whole cohort: a short key list only removes
    live neighbours (here the target is left with fewer than t and refuses)."""
    attack = _sparse_attack()
    r = attack.new_round()
    sends = advance(r, None, KeyList)
    target = attack.target()
    key_list = r.sends_to(sends, target)
    honest_padding = [e.sender for e in key_list.entries if e.sender in attack.honest and e.sender != target]
    keep = {target, *attack.colluders, *honest_padding[: r.config.threshold - 1 - len(attack.colluders)]}
    short = KeyList(tuple(e for e in key_list.entries if e.sender in keep))
    assert len(short.entries) == r.config.threshold  # passes the first count
    reveals = {}
    for node in sorted(keep):
        (reveal,) = r.clients[node].receive(short)
        reveals[node] = reveal.value
    listed = SeedRevealList(tuple(sorted(reveals.items())))
    r.deliver(target, listed)
    client = r.clients[target]
    whole_cohort = NeighbourGraph.build(r.config.ids, r.config.degree, graph_seed(r.config, listed.reveals))
    assert client.neighbours == whole_cohort.neighbours(target) & keep
    assert len(client.neighbours) < r.config.threshold
    assert client.aborted and "neighbours advertised keys" in str(r.errors[target])


def test_grinding_over_attempts_gains_nothing_and_the_split_still_fails() -> None:
    """Keep the best of several attempts (most colluders around the target), then split it."""
    attack = _sparse_attack(seed=1)
    attack.run(Strategy.GRIND, attempts=3)
    learned = knowledge(attack.rounds, attack.colluders, attack.honest)
    assert learned.computable == frozenset()
    assert all(len(s) >= 2 for s in learned.learnable)


def test_the_graph_cannot_be_changed_once_a_node_has_revealed() -> None:
    """Offline grinding needs a second look at the graph: a second key list, or a reveal list for a
    subset, are both refused; the only move left is to abort and start a new attempt."""
    r = HonestRound(7, neighbours=None)
    sends = advance(r, None, SeedRevealList)
    reveals = r.sends_to(sends, 1)
    # a second key list after the reveal
    second = HonestRound(7, neighbours=None, seed=3)
    advance(second, None, SeedRevealList)
    with pytest.raises(RemoteProtocolError):
        second.clients[1].receive(second.key_list())
    # a reveal list for a subset of the key list
    subset = SeedRevealList(tuple(pair for pair in reveals.reveals if pair[0] != 7))
    with pytest.raises(RemoteProtocolError) as info:
        r.clients[2].receive(subset)
    assert info.value.reason == "inconsistent-graph"


# --- 3. rerun and subtract ------------------------------------------------------------------


def test_rerun_and_subtract_is_stopped_by_the_release_guard() -> None:
    unguarded = Attack(10, 7, frozenset({9, 10}), DEFAULT)
    unguarded.run_rerun(guard=False)
    assert unguarded.target() in knowledge(unguarded.rounds, unguarded.colluders, unguarded.honest).computable
    guarded = Attack(10, 7, frozenset({9, 10}), DEFAULT)
    guarded.run_rerun(guard=True)
    assert knowledge(guarded.rounds, guarded.colluders, guarded.honest).computable == frozenset()


# --- 4. one corrupt node --------------------------------------------------------------------


def _corrupted(message: UnmaskShares, kind: str) -> UnmaskShares:
    field = "b_shares" if kind == "b" else "s_shares"
    pairs = list(getattr(message, field))
    owner, raw = pairs[0]
    pairs[0] = (owner, raw[:-1] + bytes([raw[-1] ^ 1]))
    return UnmaskShares(message.sender, **{"b_shares": message.b_shares, "s_shares": message.s_shares, field: tuple(pairs)})


@pytest.mark.parametrize("kind", ["b", "s"])
def test_a_wrong_unmask_share_is_excluded_and_named_and_the_sum_stays_exact(kind: str) -> None:
    r = HonestRound(10, 7, silent={10: Stage.MASKED_INPUT})  # node 10 drops: s-shares are needed too
    outbox = r.start()
    while True:
        produced = r.to_server(outbox)
        outbox = r.to_clients(produced)
        if any(isinstance(m, UnmaskShares) for m in outbox):
            break
    cheat = next(m for m in outbox if isinstance(m, UnmaskShares) and getattr(m, f"{kind}_shares"))
    outbox = [(_corrupted(m, kind) if m is cheat else m) for m in outbox]
    r.to_server(outbox)
    result = r.server.result
    assert result is not None, r.server.abort_reason
    assert set(result.excluded) == {cheat.sender}
    assert np.array_equal(result.sum, exact_sum(r.inputs, result.survivors))


def test_a_raw_malicious_summand_is_refused_at_decode() -> None:
    codec = TrainingUpdateCodec(parameter_count=4, clip_norm=1.0, fractional_bits=16, weight_cap=100, cohort_size=5)
    honest = [codec.encode(np.full(4, 0.1), 50) for _ in range(4)]
    total = np.sum(np.array(honest, dtype=np.uint64), axis=0)
    # a weight of almost nothing with a huge update: the reviewed summand decoded to weight 6e-8
    evil = np.zeros(5, dtype=np.uint32)
    evil[:4] = 1 << 28
    evil[4] = (1 << 32) - int(total[4]) + 1  # total weight -> 1 step
    summed = ((total + evil) % (1 << 32)).astype(np.uint32)
    with pytest.raises(EncodingError, match="out-of-range"):
        codec.decode_mean(summed, 5)
    fine = ((total + codec.encode(np.full(4, -0.2), 80)) % (1 << 32)).astype(np.uint32)
    mean, weight = codec.decode_mean(fine, 5)
    assert weight == pytest.approx(4 * 0.5 + 0.8, abs=1e-3)
    np.testing.assert_allclose(mean, np.full(4, (4 * 0.5 * 0.1 + 0.8 * -0.2) / (4 * 0.5 + 0.8)), atol=1e-3)
    with pytest.raises(EncodingError, match="out-of-range"):
        EvaluationCodec(3).decode(np.array([10, 5, 0], dtype=np.uint32), 3)  # more correct than counted
