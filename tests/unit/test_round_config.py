"""RoundConfig validation, ClientPolicy checks (the colluder bound included), and a node refusing
a round weaker than its policy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from securefed.crypto.identity import SigningKey
from securefed.errors import InvalidParameter, LocalProtocolError, RemoteProtocolError
from securefed.secagg import ClientPolicy, ClientProtocol, ClientState, RoundConfig
from securefed.secagg.messages import KeyList, RoundAborted

CONTEXT = bytes(range(32))
GOOD = {
    "task": "mnist",
    "round_id": 7,
    "cohort_size": 10,
    "threshold": 7,  # the smallest the default policy accepts for 10 nodes: 2t > 10 + 2
    "vector_length": 100,
    "context": CONTEXT,
    "neighbours": None,
}


def _config(**overrides: object) -> RoundConfig:
    return RoundConfig(**{**GOOD, **overrides})


# --- RoundConfig ------------------------------------------------------------------


def test_a_good_config_is_accepted_and_frozen() -> None:
    config = _config()
    assert config.ids == range(1, 11)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threshold = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task", ""),
        ("task", None),
        ("task", b"mnist"),
        ("task", 3),
        ("round_id", -1),
        ("round_id", 1 << 63),
        ("round_id", 1.0),
        ("round_id", "7"),
        ("round_id", True),
        ("round_id", None),
        ("cohort_size", 0),
        ("cohort_size", -3),
        ("cohort_size", 0x10000),
        ("cohort_size", 10.0),
        ("cohort_size", True),
        ("cohort_size", None),
        ("threshold", 0),
        ("threshold", -1),
        ("threshold", 11),
        ("threshold", 6.0),
        ("threshold", True),
        ("threshold", None),
        ("vector_length", 0),
        ("vector_length", -1),
        ("vector_length", 100.0),
        ("vector_length", None),
        ("vector_length", True),
        ("context", b""),
        ("context", bytes(31)),
        ("context", bytes(33)),
        ("context", "x" * 32),
        ("context", bytearray(32)),
        ("context", None),
        ("neighbours", 0),
        ("neighbours", -2),
        ("neighbours", 4.0),
        ("neighbours", "4"),
        ("neighbours", True),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_every_bad_field_is_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidParameter):
        _config(**{field: value})


def test_boundaries_are_accepted() -> None:
    _config(round_id=0)
    _config(round_id=(1 << 63) - 1)
    _config(cohort_size=0xFFFF, threshold=1)
    _config(cohort_size=1, threshold=1)
    _config(threshold=10)
    _config(threshold=1)
    _config(vector_length=1)


@pytest.mark.parametrize(
    ("n", "neighbours", "degree", "size"),
    [
        (10, None, None, 10),
        (10, 2, 2, 3),
        (10, 3, 4, 5),  # odd k is rounded up
        (10, 4, 4, 5),
        (10, 7, 8, 9),  # 8 < n - 1 = 9: still sparse
        (10, 8, 8, 9),
        (10, 9, None, 10),  # rounds up to 10 >= 9: complete
        (10, 10, None, 10),
        (10, 500, None, 10),
        (1, 1, None, 1),
        (2, 1, None, 2),
        (3, 1, None, 3),  # 2 >= n - 1 = 2: complete
        (4, 1, 2, 3),  # 2 < n - 1 = 3: sparse
        (100, 12, 12, 13),
    ],
)
def test_degree_and_neighbourhood_size(n: int, neighbours: int | None, degree: int | None, size: int) -> None:
    config = RoundConfig("t", 0, n, 1, 1, CONTEXT, neighbours)
    assert config.degree == degree
    assert config.is_complete_graph is (degree is None)
    assert config.neighbourhood_size == size


def test_threshold_above_the_sparse_neighbourhood_is_refused() -> None:
    # k=4 of 100: a node and its 4 neighbours hold its shares, so t <= 5.
    RoundConfig("t", 0, 100, 5, 1, CONTEXT, 4)
    with pytest.raises(InvalidParameter) as info:
        RoundConfig("t", 0, 100, 6, 1, CONTEXT, 4)
    assert "5" in str(info.value)
    # Odd k rounds up: k=3 means 4 neighbours, so t=5 is fine and t=6 is not.
    RoundConfig("t", 0, 100, 5, 1, CONTEXT, 3)
    with pytest.raises(InvalidParameter):
        RoundConfig("t", 0, 100, 6, 1, CONTEXT, 3)


def test_threshold_above_the_cohort_is_refused_for_the_complete_graph() -> None:
    RoundConfig("t", 0, 5, 5, 1, CONTEXT, 50)
    with pytest.raises(InvalidParameter):
        RoundConfig("t", 0, 5, 6, 1, CONTEXT, 50)


def test_invalid_parameter_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        _config(threshold=0)


# --- ClientPolicy ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_threshold": 0},
        {"min_threshold": -1},
        {"min_cohort": 0},
        {"min_threshold_fraction": -0.1},
        {"min_threshold_fraction": 1.0},
        {"min_threshold_fraction": 1.5},
        {"min_threshold_fraction": float("nan")},
    ],
    ids=repr,
)
def test_bad_policy_is_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidParameter):
        ClientPolicy(**kwargs)


def _refusal(policy: ClientPolicy, config: RoundConfig) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        policy.check(config)
    assert info.value.reason == "weaker-than-policy"
    return info.value


def test_cohort_below_the_minimum_is_refused() -> None:
    error = _refusal(ClientPolicy(min_cohort=20, min_threshold=1, min_threshold_fraction=0.0), _config())
    assert "cohort of 10" in str(error) and "20" in str(error)


def test_threshold_below_the_minimum_is_refused() -> None:
    error = _refusal(ClientPolicy(min_threshold=8, min_cohort=1, min_threshold_fraction=0.0), _config(threshold=6))
    assert "threshold 6" in str(error) and "8" in str(error)


@pytest.mark.parametrize(
    ("fraction", "n", "refused", "accepted"),
    [
        (0.5, 10, 5, 6),  # t must exceed 5
        (0.5, 9, 4, 5),  # t must exceed 4.5
        (0.75, 8, 6, 7),  # t must exceed 6
        (0.25, 8, 2, 3),  # t must exceed 2
        (0.5, 2, 1, 2),
    ],
)
def test_threshold_not_above_the_fraction_is_refused(fraction: float, n: int, refused: int, accepted: int) -> None:
    # Colluder bound switched off (curious, no colluders) so only the fraction floor speaks.
    policy = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=fraction, max_colluders=0, adversary="curious")
    error = _refusal(policy, RoundConfig("t", 0, n, refused, 1, CONTEXT))
    assert f"threshold {refused}" in str(error)
    assert f"neighbourhood of {n}" in str(error)
    assert f"needs >= {accepted}" in str(error)
    policy.check(RoundConfig("t", 0, n, accepted, 1, CONTEXT))


def test_fraction_counts_within_the_sparse_neighbourhood() -> None:
    policy = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.5, max_colluders=0, adversary="curious")
    # k=8: neighbourhoods of 9; t=5 exceeds 4.5 although it is far below half of 100.
    policy.check(RoundConfig("t", 0, 100, 5, 1, CONTEXT, 8))
    error = _refusal(policy, RoundConfig("t", 0, 100, 4, 1, CONTEXT, 8))
    assert "neighbourhood of 9" in str(error)


def test_vector_longer_than_the_limit_is_refused() -> None:
    error = _refusal(ClientPolicy(max_vector_length=99), _config(vector_length=100))
    assert str(error) == "round refused: vector length 100 exceeds this site's limit"
    ClientPolicy(max_vector_length=100).check(_config(vector_length=100))


def test_every_shortfall_is_named_at_once() -> None:
    policy = ClientPolicy(min_threshold=9, min_cohort=50, min_threshold_fraction=0.9)
    error = _refusal(policy, _config(threshold=6))
    message = str(error)
    assert "cohort of 10" in message
    assert "below this site's minimum of 9" in message
    assert "does not exceed 0.9" in message


@pytest.mark.parametrize(
    ("policy", "config"),
    [
        (ClientPolicy(), _config()),  # defaults: t >= 2, n >= 2, t > n/2, 2t > N + c with c = 2
        (ClientPolicy(), _config(threshold=10)),
        # One colluder: 2t > 11, so t = 6 of 10 is enough.
        (ClientPolicy(min_threshold=6, min_cohort=10, min_threshold_fraction=0.5, max_colluders=1), _config(threshold=6)),
        (ClientPolicy(max_colluders=0.1), _config(threshold=6)),
        (
            ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=0),
            _config(cohort_size=1, threshold=1),
        ),
        (ClientPolicy(min_threshold_fraction=0.0, max_colluders=1, adversary="curious"), _config(threshold=2)),
        # Sparse: what propose_parameters(1000, 0.05) gives for the default 200 colluders, and for 50.
        (ClientPolicy(min_threshold=3, min_cohort=100), RoundConfig("t", 0, 1000, 75, 1, CONTEXT, 96)),
        (ClientPolicy(max_colluders=0.05), RoundConfig("t", 0, 1000, 37, 1, CONTEXT, 52)),
        (ClientPolicy(max_colluders=50), RoundConfig("t", 0, 1000, 37, 1, CONTEXT, 51)),  # 51 rounds up to 52
    ],
)
def test_compliant_rounds_are_accepted(policy: ClientPolicy, config: RoundConfig) -> None:
    assert policy.check(config) is None


def test_default_policy_refuses_a_minority_threshold() -> None:
    _refusal(ClientPolicy(), _config(threshold=5))
    _refusal(ClientPolicy(), _config(cohort_size=1, threshold=1))


# --- a node whose policy refuses the round -----------------------------------------


def _client(config: RoundConfig, policy: ClientPolicy | None) -> ClientProtocol:
    identities = {node: SigningKey.generate() for node in config.ids}
    roster = {node: key.public_bytes for node, key in identities.items()}
    vector = np.arange(config.vector_length, dtype=np.uint32)
    return ClientProtocol(config, 1, identities[1], roster, vector, policy=policy)


@pytest.mark.parametrize(
    ("policy", "config", "words"),
    [
        (ClientPolicy(min_cohort=20), _config(), "cohort of 10"),
        (ClientPolicy(min_threshold=7), _config(threshold=6), "threshold 6"),
        (ClientPolicy(min_threshold_fraction=0.6), _config(threshold=6), "does not exceed 0.6"),
        (ClientPolicy(), _config(threshold=6), "needs 2t > N + c = 10 + 2, i.e. t >= 7"),
        (ClientPolicy(adversary="curious", max_colluders=6), _config(threshold=6), "needs t > c, i.e. t >= 7"),
        (ClientPolicy(allow_sparse_graph=False), _config(cohort_size=1000, threshold=75, neighbours=96), "sparse-graph"),
    ],
)
def test_client_refuses_a_weaker_round_before_advertising(policy: ClientPolicy, config: RoundConfig, words: str) -> None:
    client = _client(config, policy)
    with pytest.raises(RemoteProtocolError) as info:
        client.start()  # raises instead of returning an advertisement
    assert info.value.reason == "weaker-than-policy"
    assert words in str(info.value)
    assert client.state is ClientState.ABORTED
    assert client.aborted
    assert client.abort_reason == "weaker-than-policy"
    # No second chance, and nothing from the coordinator is taken afterwards.
    with pytest.raises(LocalProtocolError):
        client.start()
    for message in (KeyList(()), RoundAborted("x")):
        with pytest.raises(RemoteProtocolError):
            client.receive(message)
    assert client.state is ClientState.ABORTED


def test_client_with_a_satisfied_policy_advertises() -> None:
    client = _client(_config(threshold=7), ClientPolicy(min_threshold=6, min_cohort=10, min_threshold_fraction=0.5))
    (advert,) = client.start()
    assert advert.sender == 1
    assert client.state is ClientState.AWAIT_KEY_LIST


def test_client_without_a_policy_uses_the_secure_defaults() -> None:
    weak = _client(_config(cohort_size=2, threshold=1), None)
    with pytest.raises(RemoteProtocolError) as refused:
        weak.start()
    assert refused.value.reason == "weaker-than-policy" and weak.aborted
    strong = _client(_config(cohort_size=4, threshold=3), None)
    assert len(strong.start()) == 1


@pytest.mark.parametrize("length", [0, -1])
def test_non_positive_max_vector_length_is_refused(length: int) -> None:
    with pytest.raises(InvalidParameter):
        ClientPolicy(max_vector_length=length)


# --- the colluder bound ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_colluders": -1},
        {"max_colluders": True},
        {"max_colluders": 1.0},
        {"max_colluders": 1.5},
        {"max_colluders": -0.1},
        {"max_colluders": float("nan")},
        {"max_colluders": "2"},
        {"adversary": "semi-malicious"},
        {"adversary": ""},
        {"adversary": None},
        {"allow_sparse_graph": 1},
        {"allow_sparse_graph": None},
        {"min_neighbours": -1},
        {"min_neighbours": 2.0},
        {"min_neighbours": True},
        {"security_bits": 0},
        {"security_bits": 257},
        {"security_bits": 40.0},
    ],
    ids=repr,
)
def test_bad_colluder_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidParameter):
        ClientPolicy(**kwargs)


@pytest.mark.parametrize(
    ("setting", "roster", "expected"),
    [
        (None, 5, 1),
        (None, 10, 2),
        (None, 11, 3),
        (None, 1000, 200),
        (0, 10, 0),
        (3, 10, 3),
        (0.1, 10, 1),
        (0.1, 11, 2),
        (0.05, 1000, 50),
    ],
)
def test_colluders_for_a_roster(setting: int | float | None, roster: int, expected: int) -> None:
    assert ClientPolicy(max_colluders=setting).colluders(roster) == expected


@pytest.mark.parametrize(
    ("n", "refused", "accepted", "c"),
    [(5, 3, 4, 1), (9, 5, 6, 2), (10, 6, 7, 2), (11, 7, 8, 3), (20, 12, 13, 4), (100, 60, 61, 20)],
)
def test_default_policy_needs_2t_above_n_plus_c(n: int, refused: int, accepted: int, c: int) -> None:
    # The issue's attack: t > n/2 yet 2t <= n + c; two honest groups of (n - c) / 2 each reach t with the colluders.
    assert 2 * refused <= n + c < 2 * accepted
    error = _refusal(ClientPolicy(), RoundConfig("t", 0, n, refused, 1, CONTEXT))
    assert f"threshold {refused} does not stop {c} colluding nodes (roster of {n})" in str(error)
    assert f"t >= {accepted}" in str(error)
    ClientPolicy().check(RoundConfig("t", 0, n, accepted, 1, CONTEXT))


def test_the_roster_not_the_cohort_sets_n() -> None:
    config = _config(threshold=7)  # 10 nodes
    ClientPolicy().check(config)
    ClientPolicy().check(config, 10)
    ClientPolicy().check(config, 5)  # a roster can never count fewer than the cohort
    # A roster of 12: c = ceil(12/5) = 3, so 2t > 15 and t = 7 is too low.
    error = _refusal_with_roster(ClientPolicy(), config, 12)
    assert "roster of 12" in str(error) and "2t > N + c = 12 + 3" in str(error)
    ClientPolicy().check(_config(threshold=8), 12)
    ClientPolicy(max_colluders=1).check(config, 12)  # 2t > 13


def _refusal_with_roster(policy: ClientPolicy, config: RoundConfig, roster: int) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        policy.check(config, roster)
    assert info.value.reason == "weaker-than-policy"
    return info.value


def test_more_colluders_than_the_roster_refuses_every_round() -> None:
    policy = ClientPolicy(max_colluders=10)
    for t in range(1, 11):
        _refusal(policy, _config(threshold=t))


def test_a_curious_adversary_needs_only_t_above_c() -> None:
    policy = ClientPolicy(adversary="curious", min_threshold_fraction=0.0)  # c = 2
    policy.check(_config(threshold=3))
    error = _refusal(policy, _config(threshold=2))
    assert "needs t > c, i.e. t >= 3" in str(error)


@pytest.mark.parametrize(("k", "t"), [(54, 39), (2, 2), (52, 37), (96, 74)])
def test_default_policy_refuses_sparse_rounds_200_colluders_can_break(k: int, t: int) -> None:
    # Recomputed with scipy: n * P[X >= 2t - (k + 1)], X ~ HG(999, 200, k), is above 2^-40.
    failure = 1000 * stats.hypergeom.sf(2 * t - (k + 1) - 1, 999, 200, k)
    assert failure > 2.0**-40
    error = _refusal(ClientPolicy(), RoundConfig("t", 0, 1000, t, 1, CONTEXT, k))
    assert f"with {k} neighbours and threshold {t}, 200 colluders break some neighbourhood" in str(error)
    assert "(this site requires at most 2^-40)" in str(error)


def test_the_issue_sparse_round_is_refused_with_its_probability() -> None:
    error = _refusal(ClientPolicy(), RoundConfig("t", 0, 1000, 39, 1, CONTEXT, 54))
    exponent = math.log2(1000 * stats.hypergeom.sf(2 * 39 - 55 - 1, 999, 200, 54))
    assert f"probability up to 2^{exponent:.1f}" in str(error)


def test_security_bits_set_the_sparse_target() -> None:
    # n=1000, k=52, 50 colluders: t=36 fails with probability 2^-32.9 (scipy), t=37 with 2^-41.4.
    assert 2.0**-40 < 1000 * stats.hypergeom.sf(2 * 36 - 53 - 1, 999, 50, 52) < 2.0**-30
    weak = RoundConfig("t", 0, 1000, 36, 1, CONTEXT, 52)
    _refusal(ClientPolicy(max_colluders=50), weak)
    ClientPolicy(max_colluders=50, security_bits=30).check(weak)
    ClientPolicy(max_colluders=50).check(RoundConfig("t", 0, 1000, 37, 1, CONTEXT, 52))


def test_a_site_may_refuse_sparse_graphs_or_too_few_neighbours() -> None:
    config = RoundConfig("t", 0, 1000, 75, 1, CONTEXT, 96)
    ClientPolicy(min_neighbours=96).check(config)
    error = _refusal(ClientPolicy(min_neighbours=100), config)
    assert "96 neighbours is below this site's minimum of 100" in str(error)
    error = _refusal(ClientPolicy(allow_sparse_graph=False), config)
    assert "does not take part in sparse-graph" in str(error)
    # The complete graph is not affected by either.
    ClientPolicy(allow_sparse_graph=False, min_neighbours=100).check(_config())


def test_a_client_counts_its_own_roster() -> None:
    config = _config(threshold=7)
    identities = {node: SigningKey.generate() for node in range(1, 13)}  # 12 members, 10 invited
    roster = {node: key.public_bytes for node, key in identities.items()}
    vector = np.zeros(config.vector_length, dtype=np.uint32)
    refused = ClientProtocol(config, 1, identities[1], roster, vector)
    with pytest.raises(RemoteProtocolError) as info:
        refused.start()
    assert info.value.reason == "weaker-than-policy" and "roster of 12" in str(info.value)
    small = {node: roster[node] for node in config.ids}
    assert len(ClientProtocol(config, 1, identities[1], small, vector).start()) == 1
    # An explicit roster size counts too (e.g. members this node knows of but holds no key for).
    explicit = ClientProtocol(config, 1, identities[1], small, vector, roster_size=12)
    with pytest.raises(RemoteProtocolError):
        explicit.start()
    for bad in (9, 0, 12.0, True):
        with pytest.raises(InvalidParameter):
            ClientProtocol(config, 1, identities[1], small, vector, roster_size=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "adversary", "roster", "expected"),
    [
        (None, "malicious", 10, 7),
        (None, "malicious", 1000, 601),
        (1, "malicious", 10, 6),
        (0, "malicious", 9, 5),
        (None, "curious", 10, 3),
        (0.05, "malicious", 1000, 526),
    ],
)
def test_consistency_quorum_is_the_smallest_t_with_2t_above_n_plus_c(
    setting: int | float | None, adversary: str, roster: int, expected: int
) -> None:
    policy = ClientPolicy(max_colluders=setting, adversary=adversary)
    assert policy.consistency_quorum(roster) == expected
    c = policy.colluders(roster)
    if adversary == "curious":
        assert expected == c + 1
    else:
        assert 2 * expected > roster + c >= 2 * (expected - 1)


def test_a_sparse_cohort_too_small_for_the_consistency_quorum_is_refused() -> None:
    # 100 of a roster of 1000 invited, k=48, t=35: fine on its own (quorum 61 of 100) ...
    config = RoundConfig("t", 0, 100, 35, 1, CONTEXT, 48)
    ClientPolicy().check(config)
    # ... but with a roster of 1000 (c = 200) a survivor list needs 601 signatures, which 100 cannot give.
    error = _refusal_with_roster(ClientPolicy(), config, 1000)
    assert "a cohort of 100 cannot gather the 601 consistent survivors" in str(error)
    assert "roster of 1000" in str(error)
    # The curious quorum is c + 1 (named alongside the neighbourhood bound, which fails too).
    error = _refusal_with_roster(ClientPolicy(adversary="curious", max_colluders=100), config, 1000)
    assert "cannot gather the 101 consistent survivors" in str(error)
