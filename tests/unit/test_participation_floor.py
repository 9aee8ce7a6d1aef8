"""The site's participation floor (``ClientPolicy.min_participants``), with the real state machines.

``min_cohort`` bounds the cohort a round starts with; dropouts can shrink the
survivors far below it (issue 12: sites signed and contributed to rounds with
two participants, where each learns the other's update from the sum). The
floor bounds the survivors: a node refuses to sign a survivor list shorter
than its floor, before it signs anything, so it reveals nothing for that sum;
it also stops earlier when the key list, or in a complete graph the set of
sharers, already rules the floor out.

Adversary: a coordinator that follows the protocol but lets the survivors
shrink (or lists fewer of them). The rounds are run by ``HonestRound`` (real
``ClientProtocol`` and ``ServerProtocol``); nodes go silent from a stage on.
With n = 9 the default colluder bound gives t = 6 and a quorum T = 6, so a
survivor list of 7 or 8 is otherwise acceptable: only the floor refuses it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from securefed.errors import InvalidParameter, ProtocolAborted, RemoteProtocolError
from securefed.federation.messages import Refusal
from securefed.federation.node import NodePolicy
from securefed.secagg.client import ClientState
from securefed.secagg.config import ClientPolicy
from securefed.secagg.messages import (
    ConsistencySignature,
    MaskedInput,
    SeedReveal,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from tests.inprocess import InProcessFederation
from tests.secagg_harness import HonestRound, assert_no_double_reveal, exact_sum

N = 9  # t = 6 and T = 6 under the default policy (c = 2 of a roster of 9)


def _sent(round_: HonestRound, node: int, kind: type) -> list:
    return [m for m in round_.client_log if isinstance(m, kind) and m.sender == node]


def _floor(value: int) -> ClientPolicy:
    return ClientPolicy(min_participants=value)


# --- the policy value ------------------------------------------------------------------


def test_the_default_is_no_floor() -> None:
    assert ClientPolicy().min_participants == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_min_participants_must_be_a_non_negative_integer(bad) -> None:
    with pytest.raises(InvalidParameter, match="min_participants"):
        ClientPolicy(min_participants=bad)


def test_a_cohort_below_the_floor_is_refused_before_any_key_is_made() -> None:
    round_ = HonestRound(n=N, policy=_floor(N + 1))
    with pytest.raises(RemoteProtocolError, match="participation floor of 10") as caught:
        round_.clients[1].start()
    assert caught.value.reason == "weaker-than-policy"
    assert round_.clients[1].state is ClientState.ABORTED


# --- the binding check: the survivor list -------------------------------------------------


def test_survivors_below_the_floor_get_no_signature_and_nothing_revealed() -> None:
    """Every node's floor is 8; nodes 8 and 9 deal their shares, then go silent: 7 survivors.

    The masked inputs were sent (9 nodes shared keys), but no node signs the list of 7, so no
    node reveals a share and the coordinator cannot unmask the sum of those 7."""
    round_ = HonestRound(n=N, policy=_floor(8), silent={8: Stage.MASKED_INPUT, 9: Stage.MASKED_INPUT})
    outbox = round_.start()
    with pytest.raises(ProtocolAborted, match="consistency"):
        while round_.server.result is None:
            outbox = round_.to_clients(round_.to_server(outbox))
    survivors = range(1, 8)
    for node in survivors:
        client = round_.clients[node]
        assert _sent(round_, node, MaskedInput), node  # the floor allowed the masked input (9 sharers)
        error = round_.errors[node]
        assert isinstance(error, RemoteProtocolError) and error.reason == "too-few-participants", error
        assert "7 nodes" in str(error) and "floor of 8" in str(error)
        assert client.state is ClientState.ABORTED and client.abort_reason == "too-few-participants"
        assert client.signed_survivors is None
        assert client.revealed == {}
        assert _sent(round_, node, ConsistencySignature) == []
        assert _sent(round_, node, UnmaskShares) == []
    assert round_.unmask_outputs == {}
    assert not any(isinstance(send.message, UnmaskRequest) for send in round_.server_log)
    assert round_.server.result is None


def test_survivors_at_the_floor_are_signed_for_and_the_round_completes() -> None:
    """The control: the same round with a floor of 7 (= the survivors) completes with the exact sum."""
    round_ = HonestRound(n=N, policy=_floor(7), silent={8: Stage.MASKED_INPUT, 9: Stage.MASKED_INPUT})
    result = round_.run()
    assert result.survivors == tuple(range(1, 8))
    assert (result.sum == exact_sum(round_.inputs, range(1, 8))).all()
    for node in range(1, 8):
        assert round_.clients[node].signed_survivors == tuple(range(1, 8))
        assert len(_sent(round_, node, UnmaskShares)) == 1
    assert_no_double_reveal(round_.clients, round_.unmask_outputs)


def test_a_node_whose_floor_is_not_met_reveals_nothing_while_others_go_on() -> None:
    """Only node 1 has a floor (8): it refuses the 7 survivors. The others sign (6 = t = T), so the
    round completes — node 1's floor is its own, and its masked input, already sent, is in the sum —
    but node 1 signs nothing and reveals no share of anyone. A floor keeps a sum of fewer inputs
    from being unmasked only when the survivors' floors agree (as every site's policy should)."""
    policies = {1: _floor(8)}
    round_ = HonestRound(n=N, policies=policies, silent={8: Stage.MASKED_INPUT, 9: Stage.MASKED_INPUT})
    result = round_.run()
    assert result.survivors == tuple(range(1, 8))
    assert round_.errors[1].reason == "too-few-participants"
    assert round_.clients[1].revealed == {} and round_.clients[1].signed_survivors is None
    assert _sent(round_, 1, ConsistencySignature) == [] and _sent(round_, 1, UnmaskShares) == []
    assert 1 not in round_.unmask_outputs
    assert_no_double_reveal(round_.clients, round_.unmask_outputs)


# --- earlier stops: the key list and the share relay -------------------------------------------


def test_a_key_list_below_the_floor_stops_the_node_before_it_reveals_or_deals_shares() -> None:
    round_ = HonestRound(n=N, policy=_floor(8), silent={8: Stage.ADVERTISE, 9: Stage.ADVERTISE})
    outbox = round_.start()
    round_.to_clients(round_.to_server(outbox))  # the key list of 7
    for node in range(1, 8):
        assert round_.errors[node].reason == "too-few-participants", round_.errors.get(node)
        assert "the key list lists 7 nodes" in str(round_.errors[node])
        assert _sent(round_, node, SeedReveal) == [] and _sent(round_, node, ShareKeys) == []


def test_sharers_below_the_floor_stop_the_node_before_its_masked_input() -> None:
    """Complete graph: every sharer reaches every node, so 7 sharers cap the survivors at 7."""
    round_ = HonestRound(n=N, policy=_floor(8), silent={8: Stage.SHARE, 9: Stage.SHARE})
    outbox = round_.start()
    with pytest.raises(ProtocolAborted):
        while round_.server.result is None:
            outbox = round_.to_clients(round_.to_server(outbox))
    for node in range(1, 8):
        assert round_.errors[node].reason == "too-few-participants", round_.errors.get(node)
        assert "the share relay lists 7 nodes" in str(round_.errors[node])
        assert _sent(round_, node, ShareKeys) and _sent(round_, node, MaskedInput) == []
    assert round_.unmask_outputs == {}


def test_a_sparse_graph_is_not_refused_for_its_neighbourhood_size() -> None:
    """In a sparse graph a node sees only its neighbours' shares: that is no bound on the survivors, so a
    floor above the neighbourhood size must not refuse a round whose survivors do meet it."""
    n, k = 40, 20
    round_ = HonestRound(n=n, t=16, neighbours=k, policy=ClientPolicy(min_participants=k + 5, max_colluders=1))
    result = round_.run()
    assert len(result.survivors) == n and not round_.errors


# --- the whole node: its refusal reaches the coordinator ----------------------------------------


def test_nodes_refuse_to_sign_a_round_that_shrank_below_their_floor(tmp_path: Path) -> None:
    """Real Nodes and Coordinator in one thread. Every site sets min_participants = 4; one of the four
    loses its masked input on the way, so three survive: every survivor refuses with
    ``too-few-participants``, no unmasking share leaves any node, and the attempt is aborted."""
    names = ["site-1", "site-2", "site-3", "site-4"]
    federation = InProcessFederation(tmp_path, names, rounds=1, policy=NodePolicy(min_participants=4))
    try:
        lost = {"done": False}

        def drop(direction: str, node: str, envelope) -> bool:
            if direction == "up" and node == "site-4" and isinstance(envelope.body, MaskedInput) and not lost["done"]:
                lost["done"] = True
                return True
            return False

        federation.hub.drop = drop
        federation.run_until(lambda f: lost["done"] and f.coordinator.current is None)
        for name in names[:3]:
            refusals = [body for _, body in federation.said(name, Refusal)]
            assert [r.reason for r in refusals] == ["too-few-participants"], refusals
            assert federation.said(name, ConsistencySignature) == []
            assert federation.said(name, UnmaskShares) == []
        attempts = federation.store._db.execute("SELECT status FROM attempts").fetchall()
        assert attempts and attempts[0][0] == "aborted", attempts
        assert federation.store.rounds() == []
    finally:
        federation.close()
