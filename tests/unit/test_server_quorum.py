"""The coordinator stops before any reveal when the consistency quorum cannot be met.

Nodes reveal only with T = floor((N + c)/2) + 1 valid consistency signatures over their survivor
list. In a sparse round t (per neighbourhood) is below T, so a coordinator that sent unmask
requests with fewer signatures would have some nodes reveal and others refuse: a round that can
neither finish nor be run again (released nodes refuse a second contribution).
"""

from __future__ import annotations

import pytest

from securefed.errors import ProtocolAborted
from securefed.secagg.config import ClientPolicy
from securefed.secagg.messages import SeedRevealList, Stage, UnmaskRequest, UnmaskShares
from securefed.secagg.server import ServerProtocol
from tests.adversary import advance
from tests.secagg_harness import HonestRound

ROSTER = 40  # the nodes' roster is larger than this cohort of 30: T = 21 with c = 0
POLICY = ClientPolicy(max_colluders=0, min_threshold_fraction=0.0)


def _round(silent_count: int, quorum: int | None) -> HonestRound:
    """30 nodes, k = 16, t = 9; ``silent_count`` nodes, spread around the ring, stop before consistency."""
    r = HonestRound(30, 9, neighbours=16, policy=POLICY, seed=11, roster_size=ROSTER)
    assert POLICY.consistency_quorum(ROSTER) == 21
    r.server = ServerProtocol(r.config, r.roster, **({} if quorum is None else {"quorum": quorum}))
    sends = advance(r, None, SeedRevealList)
    ring = r.graph().ring
    for node in ring[::3][:silent_count]:  # every third ring position: each neighbourhood keeps t
        r.silent[node] = Stage.CONSISTENCY
    r.pending = sends
    return r


def test_too_few_signers_for_the_quorum_abort_before_any_unmask_request() -> None:
    r = _round(silent_count=10, quorum=21)  # 20 signers, the nodes need 21
    with pytest.raises(ProtocolAborted) as info:
        advance(r, r.pending, UnmaskRequest)
    assert info.value.stage == "consistency" and "need 21" in str(info.value)
    assert not any(isinstance(send.message, UnmaskRequest) for send in r.server_log)
    assert not r.unmask_outputs  # nobody revealed anything


def test_enough_signers_unmask_as_usual() -> None:
    r = _round(silent_count=9, quorum=21)  # 21 signers
    sends = advance(r, r.pending, UnmaskRequest)
    replies = r.to_clients(sends)
    assert sum(isinstance(m, UnmaskShares) for m in replies) == 21
    r.to_server(replies)
    assert r.server.result is not None


def test_without_the_quorum_the_server_asks_and_every_node_refuses() -> None:
    """The control: a server that does not know the quorum sends the requests; the nodes refuse them."""
    r = _round(silent_count=10, quorum=None)
    sends = advance(r, r.pending, UnmaskRequest)
    r.to_clients(sends)
    assert not r.unmask_outputs
    assert len(r.errors) == 20 and all("this node needs 21" in str(e) for e in r.errors.values())
