"""A malicious coordinator (with up to c colluding nodes), scripted: every attack ends with honest nodes refusing, and no secret leaves.

Each attack (``ATTACKS`` in ``checks_secagg.py``) runs the real ``ClientProtocol`` nodes and the
real ``ServerProtocol`` of an honest round up to some stage with ``tests/secagg_harness.py``'s
``HonestRound``, then tampers with what the coordinator sends (or, for a colluder, with what that
node sends). Rounds use the smallest threshold the nodes' default policy accepts (2t > N + c).
An attack passes only if every tampered message makes its node raise, end ``ABORTED`` and answer
nothing — except tampered *shares*: an honest holder never aborts over a dealer's shares (that would
hand one corrupt dealer a veto over every round), so there it must take none of them, never reveal
them, and the round must not end with a wrong sum — *and* no honest node released both the b-share
and the s-share of any peer (per node and across nodes). The robust-reconstruction checks require
the coordinator to name the culprit (a lying holder, a dealer of inconsistent shares) and nobody
else. A positive control shows the untampered script completes, so a refusal cannot come from the
harness itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from securefed.federation.node import NodePolicy
from tests.privacy_audit.checks_secagg import (
    ATTACKS,
    AUDIT_TASK,
    attack_node_round_start,
    check_share_ciphertext_bound_to_address,
    no_double_reveal,
)
from tests.secagg_harness import HonestRound, exact_sum


def test_untampered_script_completes():
    """Positive control: the honest round the attacks cut into completes with the right sum and no refusal."""
    r = HonestRound(5, task=AUDIT_TASK)  # t = 4: the smallest the nodes' default policy accepts
    result = r.run()
    assert np.array_equal(result.sum, exact_sum(r.inputs, r.config.ids))
    assert not r.errors and not r.server_rejections
    assert no_double_reveal(r) == (True, "")
    # ... and the node-level check can fail: a site whose policy allows unmasked benchmark rounds sends its input.
    allowed = attack_node_round_start("unmasked", policy=NodePolicy(allow_unmasked_benchmark=True))
    assert not allowed and "sent its input" in allowed.detail, allowed


@pytest.mark.parametrize("name", list(ATTACKS))
def test_malicious_coordinator_attack_is_refused(name, audit):
    """Promise: each scripted coordinator attack ends with the honest node refusing and no peer's b- and s-share both released."""
    promise, attack = ATTACKS[name]
    result = attack()
    assert result.name == name
    audit.check(name, promise, result.passed, result.detail)
    assert result.passed, result.detail


def test_share_ciphertext_is_bound_to_its_address(audit):
    """Promise: a share ciphertext opens only under its own task, round, sender -> recipient and model context."""
    result = check_share_ciphertext_bound_to_address()
    audit.check(
        result.name,
        "a relayed share cannot be re-addressed to another node, direction, round, task or model",
        result.passed,
        result.detail,
    )
    assert result.passed, result.detail
