"""A site's analytics policy: refusals carry their reason; the node's answer is a vector or a refusal."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.analytics import REFUSAL_CODES, AnalyticsPolicy, Refusal, Request, get, respond
from securefed.errors import InvalidParameter

MEAN = {"max_nodes": 3, "max_rows": 100, "low": [0.0], "high": [10.0]}
HIST = {"max_nodes": 3, "max_rows": 100, "edges": [[0.0, 1.0, 2.0, 10.0]]}
EVERYTHING = AnalyticsPolicy.permissive()


def test_the_default_policy_allows_nothing() -> None:
    refusal = get("mean").policy_check(MEAN, AnalyticsPolicy())
    assert isinstance(refusal, Refusal) and refusal.code == "computation-not-allowed"
    assert "'mean'" in refusal.detail


def test_a_kind_outside_allowed_computations_is_refused_with_its_reason() -> None:
    policy = AnalyticsPolicy(frozenset({"count", "histogram"}))
    refusal = get("covariance").policy_check({"nonsense": 1}, policy)  # not even parsed: the allow-list comes first
    assert refusal is not None and refusal.code == "computation-not-allowed"
    assert str(refusal).startswith("computation-not-allowed: 'covariance' is not in this site's allowed_computations")
    assert get("histogram").policy_check(HIST, policy) is None


def test_bins_narrower_than_the_site_minimum_are_refused() -> None:
    policy = AnalyticsPolicy(frozenset({"histogram", "quantiles"}), min_bin_width=1.5)
    refusal = get("histogram").policy_check(HIST, policy)
    assert refusal is not None and refusal.code == "bins-too-narrow" and "min_bin_width is 1.5" in refusal.detail
    wide = {**HIST, "edges": [[0.0, 2.0, 10.0]]}
    assert get("histogram").policy_check(wide, policy) is None
    # a quantile request is judged by its lattice cell, however wide the window's bins
    step = {"max_nodes": 3, "max_rows": 100, "low": [0.0], "high": [10.0], "resolution": 1.0,
            "windows": [{"column": 0, "start": 0, "stop": 10, "bins": 2}]}  # fmt: skip
    refusal = get("quantiles").policy_check(step, policy)
    assert refusal is not None and refusal.code == "bins-too-narrow" and "lattice" in refusal.detail
    assert (
        get("quantiles").policy_check(
            {**step, "resolution": 2.0, "windows": [{"column": 0, "start": 0, "stop": 5, "bins": 5}]}, policy
        )
        is None
    )


def test_an_aggregate_over_fewer_than_k_of_the_sites_records_is_refused() -> None:
    policy = AnalyticsPolicy(frozenset({"mean", "histogram", "kmeans", "count"}), min_records=3)
    few = np.array([[1.0], [2.0]])
    refusal = get("mean").policy_check(MEAN, policy, few)
    assert refusal is not None and refusal.code == "too-few-records"
    assert "min_records = 3" in refusal.detail and "bin" not in refusal.detail  # which aggregate is not revealed
    enough = np.array([[0.5], [0.6], [0.7], [5.0], [5.5], [6.0]])
    assert get("mean").policy_check(MEAN, policy, enough) is None
    # histogram: cells of 3, 0 and 3 records pass (an empty cell reveals none of the site's records) ...
    assert get("histogram").policy_check(HIST, policy, enough) is None
    # ... a cell with one record does not
    refusal = get("histogram").policy_check(HIST, policy, np.vstack([enough, [[1.5]]]))
    assert refusal is not None and refusal.code == "too-few-records"
    # k-means: a cluster holding 1 of the site's records
    kmeans = {**MEAN, "centres": [[0.5], [5.5], [9.0]]}
    assert get("kmeans").policy_check(kmeans, policy, np.vstack([enough, [[9.5]]])).code == "too-few-records"  # type: ignore[union-attr]
    assert get("kmeans").policy_check(kmeans, policy, enough) is None
    # a site with no records reveals none
    assert get("count").policy_check({"max_nodes": 3, "max_rows": 10}, policy, np.zeros((0, 1))) is None


def test_invalid_parameters_and_unfit_data_are_refusals_not_tracebacks() -> None:
    refusal = get("mean").policy_check({**MEAN, "hgih": [1.0]}, EVERYTHING)
    assert refusal is not None and refusal.code == "invalid-parameters" and "'hgih'" in refusal.detail
    refusal = get("mean").policy_check(MEAN, EVERYTHING, np.zeros((200, 1)))
    assert refusal is not None and refusal.code == "data-mismatch" and "max_rows" in refusal.detail


def test_respond_gives_the_vector_or_the_refusal() -> None:
    X = np.array([[1.0], [2.0], [3.0]])
    vector = respond(Request("mean", MEAN), X, None, EVERYTHING)
    assert isinstance(vector, np.ndarray) and vector.dtype == np.uint32 and vector.shape == (2,)
    vector = respond({"kind": "mean", "params": MEAN}, X, None, EVERYTHING)  # the JSON form
    assert isinstance(vector, np.ndarray)
    cases = {
        "unknown-computation": ({"kind": "exec", "params": {}}, X),
        "invalid-parameters": ({"kind": "mean"}, X),
        "computation-not-allowed": ({"kind": "mean", "params": MEAN}, X),
        "data-mismatch": ({"kind": "mean", "params": MEAN}, np.array([[np.inf]])),
    }
    for code, (request, data) in cases.items():
        policy = AnalyticsPolicy(frozenset({"count"})) if code == "computation-not-allowed" else EVERYTHING
        answer = respond(request, data, None, policy)
        assert isinstance(answer, Refusal) and answer.code == code, (code, answer)


def test_policy_is_validated_and_reads_a_config_table() -> None:
    with pytest.raises(InvalidParameter, match=r"'meen'.*did you mean 'mean'"):
        AnalyticsPolicy(frozenset({"meen"}))
    with pytest.raises(InvalidParameter, match="min_records"):
        AnalyticsPolicy(frozenset(), min_records=0)
    with pytest.raises(InvalidParameter, match="min_bin_width"):
        AnalyticsPolicy(frozenset(), min_bin_width=-1.0)
    with pytest.raises(InvalidParameter, match="list of computation names"):
        AnalyticsPolicy("mean")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match=r"'min_record'.*did you mean 'min_records'"):
        AnalyticsPolicy.from_mapping({"min_record": 5})
    policy = AnalyticsPolicy.from_mapping({"allowed_computations": ["mean", "count"], "min_records": 5, "min_bin_width": 2})
    assert policy.allowed_computations == frozenset({"mean", "count"}) and policy.min_records == 5 and policy.min_bin_width == 2.0
    assert AnalyticsPolicy.from_mapping(policy.to_json()) == policy


def test_refusal_codes_are_fixed() -> None:
    with pytest.raises(InvalidParameter):
        Refusal("because", "I said so")
    assert all(Refusal(code, "x").to_json()["code"] == code for code in REFUSAL_CODES)
