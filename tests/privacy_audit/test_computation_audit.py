"""What a site's auditor can check about trees and analytics, from the site's own signed audit log.

Promises (docs/analytics.md "What the daemons add", docs/trees.md "Running it on the daemons"), against a
malicious coordinator:

- every compute step the site took part in is in its signed log with the SHA-256 of the request it
  answered, and that digest is the digest of what the coordinator actually sent: the auditor can
  tell exactly what was asked;
- the site answers each distinct request at most once: the same request again, under a new
  aggregation id, is refused (``rerun``) and the refusal is logged;
- a request outside the site's policy is refused before the site sends anything for it;
- the site releases at most ``max_queries`` analytics aggregations per task.

Real Coordinator and Nodes in one process (tests/inprocess.py), real secure aggregation and real
signed audit logs.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris

from securefed.audit.log import authentic_entries, verify_log
from securefed.federation.computation import request_digest
from securefed.federation.messages import RoundStart
from securefed.federation.node import NodePolicy
from securefed.federation.task import STAGE_NAMES, TaskDefinition
from securefed.learning.data import LocalDataset
from securefed.secagg.messages import AdvertiseKeys, MaskedInput
from tests.inprocess import InProcessFederation

NAMES = ["site-a", "site-b", "site-c", "site-d"]
BOUNDS = {"low": [4.0, 2.0, 1.0, 0.0], "high": [8.0, 4.5, 7.0, 2.5]}


def _datasets() -> list[LocalDataset]:
    X, y = load_iris(return_X_y=True)
    return [LocalDataset(X[i :: len(NAMES)], y[i :: len(NAMES)].astype(np.int64), None) for i in range(len(NAMES))]


def _task(computations: list[dict]) -> TaskDefinition:
    return TaskDefinition(
        name="audited-analytics",
        model_kind="analytics",
        n_features=4,
        classes=(0, 1, 2),
        rounds=100,
        min_nodes=len(NAMES),
        model_options={"computations": computations},
        evaluate=False,
        deadlines=dict.fromkeys(STAGE_NAMES, 5.0),
    )


MEAN = {"kind": "mean", "params": {"max_nodes": 10, "max_rows": 1000, **BOUNDS}}
COUNT = {"kind": "count", "params": {"max_nodes": 10, "max_rows": 1000}}


def _receipts(fed: InProcessFederation, name: str) -> list[dict]:
    path = fed.tmp_path / name / "audit.log"
    assert verify_log(path, fed.identity_keys[name]).ok
    return [entry.receipt for entry in authentic_entries(path, fed.identity_keys[name])]


def _sent_requests(fed: InProcessFederation, name: str) -> dict[int, str]:
    """What the coordinator sent this site, by aggregation: the digest of each RoundStart's computation."""
    return {
        envelope.aggregation: request_digest(envelope.body.spec["computation"])
        for envelope in fed.hub.delivered.get(name, [])
        if isinstance(envelope.body, RoundStart)
    }


@pytest.fixture
def finished(tmp_path) -> InProcessFederation:
    policy = NodePolicy(allowed_computations=("mean", "count"))
    fed = InProcessFederation(tmp_path, NAMES, task=_task([COUNT, MEAN]), datasets=_datasets(), policy=policy, audit=True)
    fed.run_until(lambda f: f.coordinator.finished, max_steps=5000)
    return fed


def test_every_step_is_logged_with_the_digest_of_the_request_actually_sent(finished: InProcessFederation) -> None:
    for name in NAMES:
        sent = _sent_requests(finished, name)
        steps = [r for r in _receipts(finished, name) if r.get("phase") == "compute" and r.get("outcome") == "completed"]
        assert len(steps) == 2
        for receipt in steps:
            assert receipt["computation"]["request_sha256"] == sent[receipt["aggregation"]]
        assert [r["computation"]["kind"] for r in steps] == ["count", "mean"]


def test_the_same_request_again_is_refused_and_the_refusal_is_logged(finished: InProcessFederation) -> None:
    name = NAMES[0]
    node = finished.nodes[name]
    last = max(e.aggregation for e in finished.hub.delivered[name] if isinstance(e.body, RoundStart))
    start = next(e.body for e in finished.hub.delivered[name] if e.aggregation == last and isinstance(e.body, RoundStart))
    node._on_round_start(last + 50, start)  # a malicious coordinator replays the request under a fresh id
    refused = [r for r in _receipts(finished, name) if r.get("aggregation") == last + 50]
    assert len(refused) == 1 and refused[0]["outcome"] == "refused" and refused[0]["detail"].startswith("rerun")


def test_a_site_refuses_what_its_policy_does_not_allow_before_sending_anything(tmp_path) -> None:
    policy = NodePolicy(allowed_computations=("count",))
    fed = InProcessFederation(tmp_path, NAMES, task=_task([MEAN]), datasets=_datasets(), policy=policy, audit=True)
    for _ in range(40):
        fed.step()
    for name in NAMES:
        receipts = _receipts(fed, name)
        assert receipts and all(r["outcome"] == "refused" and "computation-not-allowed" in r["detail"] for r in receipts)
        sent = [e.body for e in fed.hub.from_node[name]]
        assert not any(isinstance(body, (AdvertiseKeys, MaskedInput)) for body in sent)


def test_a_site_releases_at_most_its_query_budget(tmp_path) -> None:
    policy = NodePolicy(allowed_computations=("mean", "count"), max_queries=1)
    fed = InProcessFederation(tmp_path, NAMES, task=_task([COUNT, MEAN]), datasets=_datasets(), policy=policy, audit=True)
    for _ in range(200):
        fed.step()
    for name in NAMES:
        released = [r for r in _receipts(fed, name) if r.get("phase") == "compute" and r.get("outcome") == "completed"]
        assert len(released) == 1
        assert any("query-budget-exhausted" in r.get("detail", "") for r in _receipts(fed, name))
