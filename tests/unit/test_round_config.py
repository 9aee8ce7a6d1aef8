"""RoundConfig validation, ClientPolicy checks, and a node refusing a round weaker than its policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from securefed.crypto.identity import SigningKey
from securefed.errors import InvalidParameter, LocalProtocolError, RemoteProtocolError
from securefed.secagg import ClientPolicy, ClientProtocol, ClientState, RoundConfig
from securefed.secagg.messages import KeyList, RoundAborted

CONTEXT = bytes(range(32))
GOOD = {
    "task": "mnist",
    "round_id": 7,
    "cohort_size": 10,
    "threshold": 6,
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
    policy = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=fraction)
    error = _refusal(policy, RoundConfig("t", 0, n, refused, 1, CONTEXT))
    assert f"threshold {refused}" in str(error)
    assert f"neighbourhood of {n}" in str(error)
    assert f"needs >= {accepted}" in str(error)
    policy.check(RoundConfig("t", 0, n, accepted, 1, CONTEXT))


def test_fraction_counts_within_the_sparse_neighbourhood() -> None:
    policy = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.5)
    # k=8: neighbourhoods of 9; t=5 exceeds 4.5 although it is far below half of 100.
    policy.check(RoundConfig("t", 0, 100, 5, 1, CONTEXT, 8))
    error = _refusal(policy, RoundConfig("t", 0, 100, 4, 1, CONTEXT, 8))
    assert "neighbourhood of 9" in str(error)


def test_vector_longer_than_the_limit_is_refused() -> None:
    error = _refusal(ClientPolicy(max_vector_length=99), _config(vector_length=100))
    assert "vector length 100" in str(error)
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
        (ClientPolicy(), _config()),  # defaults: t >= 2, n >= 2, t > n/2
        (ClientPolicy(min_threshold=6, min_cohort=10, min_threshold_fraction=0.5), _config(threshold=6)),
        (ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0), _config(cohort_size=1, threshold=1)),
        (ClientPolicy(min_threshold_fraction=0.0), _config(threshold=2)),
        (ClientPolicy(min_threshold=3, min_cohort=100, min_threshold_fraction=0.5), RoundConfig("t", 0, 1000, 7, 1, CONTEXT, 10)),
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
    client = _client(_config(threshold=6), ClientPolicy(min_threshold=6, min_cohort=10, min_threshold_fraction=0.5))
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
