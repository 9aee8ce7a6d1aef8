"""The wire codec: round trips, strict field validation, limits before parsing, and no stray exceptions."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
from typing import Any

import numpy as np
import pytest

from securefed.errors import InvalidParameter, LocalProtocolError, RemoteProtocolError
from securefed.federation.messages import Envelope, Hello, Refusal, RoundResult, RoundStart
from securefed.secagg import ServerProtocol
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
    KeyList,
    MaskedInput,
    RoundAborted,
    SeedReveal,
    SeedRevealList,
    Send,
    ShareKeys,
    ShareRelay,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.wire import (
    DEFAULT_LIMITS,
    MAX_SPEC_DEPTH,
    MESSAGE_TYPES,
    REASONS,
    VERSION,
    Limits,
    codec,
    decode,
    encode,
    max_message_size,
)
from tests.integration import malformed

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
SIG = bytes(range(64))
C1 = bytes(range(64, 96))  # AdvertiseKeys.seed_commitment: 32 bytes (SHA-256)
V1 = bytes(range(96, 128))  # SeedReveal.value: 32 bytes
V2 = bytes(range(128, 160))
SC1 = bytes(range(160, 224))  # a share commitment pair (s || b): 64 bytes
SC2 = bytes(range(192, 256))
MC = bytes(range(224, 256))  # ShareKeys.mask_commitment: 32 bytes


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _nested(depth: int) -> Any:
    """A JSON object whose depth (counting itself) is ``depth``; lists and objects alternate inside."""
    value: Any = {}
    for level in range(depth - 1):
        value = {"k": value} if (depth - 2 - level) % 2 == 0 else [value]
    return value


# One hand-built valid envelope per body type (the first of each is the "base" example).
EXAMPLES: list[Envelope] = [
    Envelope("task-a", 7, AdvertiseKeys(1, K1, K2, C1, SIG)),
    Envelope("task-a", 7, SeedReveal(3, V1)),
    Envelope(
        "task-a",
        7,
        ShareKeys(
            2,
            ((1, b"\x00" * 60), (3, b"\xff" * 61), (65535, b"x")),
            ((1, SC1), (2, SC2), (3, SC1[::-1]), (65535, SC2[::-1])),
            SIG,
            MC,
        ),
    ),
    Envelope("task-a", 7, MaskedInput(3, np.array([0, 1, 2**32 - 1, 12345], dtype=np.uint32), (2, 7))),
    Envelope("task-a", 7, ConsistencySignature(4, SIG)),
    Envelope("task-a", 7, UnmaskShares(5, ((1, b"b1"), (2, b"b2")), ((7, b"s7"),))),
    Envelope("task-a", 7, KeyList((AdvertiseKeys(1, K1, K2, C1, SIG), AdvertiseKeys(4, K2, K1, C1[::-1], SIG)))),
    Envelope("task-a", 7, SeedRevealList(((1, V1), (4, V2)))),
    Envelope("task-a", 7, ShareRelay(((1, b"c1"), (2, b"c2")), ((1, SC1), (2, SC2)))),
    Envelope("task-a", 7, ConsistencyRequest((1, 2, 5))),
    Envelope("task-a", 7, UnmaskRequest((1, 2), (3,), ((1, SIG), (2, SIG[::-1])))),
    Envelope("task-a", 7, RoundAborted("too-few-neighbours")),
    Envelope("task-a", 0, Hello("site-α", busy=True)),
    Envelope("task-a", 7, Refusal("privacy-budget", "epsilon 3.0 would exceed the site's 2.0\nsee ledger")),
    Envelope(
        "task-a",
        7,
        RoundStart(
            2,
            ((1, "alpha"), (2, "beta"), (9, "gamma")),
            {"model": "logreg", "epochs": 2, "lr": 0.05, "neighbours": None, "dp": {"on": False, "z": [1.5, -2, 2**64 - 1]}},
            np.array([0.5, -1.25, 1e-300, -0.0, 1e308]),
        ),
    ),
    Envelope("task-a", 7, RoundResult(True, 5, "")),
]
BASE = {type(envelope.body).__name__: envelope for envelope in EXAMPLES}

EDGE_EXAMPLES: list[Envelope] = [
    Envelope("t", 2**63 - 1, ShareKeys(65535, (), (), SIG, MC)),
    Envelope("t", 1, ShareKeys(1, ((65535, b"\x01" * 4096),), ((1, bytes(64)), (65535, b"\xff" * 64)), bytes(64), MC)),
    Envelope("t", 0, KeyList(())),
    Envelope("t", 1, KeyList((AdvertiseKeys(65535, bytes(32), b"\xff" * 32, bytes(32), b"\xff" * 64),))),
    Envelope("t", 1, SeedReveal(65535, bytes(32))),
    Envelope("t", 1, SeedRevealList(())),
    Envelope("t", 1, SeedRevealList(((1, b"\xff" * 32), (2, bytes(32)), (65535, V2)))),
    Envelope("t", 1, ShareRelay((), ())),
    Envelope("t", 1, ShareRelay(((65535, b"\x02" * 4096),), ((65535, bytes(64)),))),
    Envelope("t", 1, ConsistencyRequest(())),
    Envelope("t", 1, UnmaskRequest((), (), ())),
    Envelope("t", 1, UnmaskShares(1, (), ((1, b"\x01" * 4096),))),
    Envelope("x" * 4096, 1, Refusal("r" * 4096, "d" * 4096)),
    Envelope("t", 1, Hello("n")),
    Envelope("t", 1, RoundStart(65535, (), {}, np.zeros(0))),
    Envelope("t", 1, RoundStart(1, ((1, "a"),), {"deep": _nested(MAX_SPEC_DEPTH - 1), "s": '[[[[[[[[{{{{{{\\"'}, np.ones(1))),
    Envelope("t", 1, MaskedInput(1, np.zeros(1, dtype=np.uint32))),
    Envelope("t", 1, MaskedInput(65535, np.zeros(1, dtype=np.uint32), (1, 65535))),
    Envelope("t", 1, RoundResult(False, 0, "line\nline\x00\t")),
    Envelope("t", 1, RoundAborted("ü")),
]


def _header(frames: list[bytes]) -> dict:
    return json.loads(frames[2])


def _with_header(frames: list[bytes], header: Any) -> list[bytes]:
    return [frames[0], frames[1], json.dumps(header).encode(), *frames[3:]]


def _rejected(frames: Any, reason: str, limits: Limits = DEFAULT_LIMITS) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frames, limits)
    assert info.value.reason == reason, str(info.value)
    return info.value


# --- round trips -------------------------------------------------------------------


def test_examples_cover_every_wire_type() -> None:
    expected = {
        AdvertiseKeys, SeedReveal, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares, KeyList,
        SeedRevealList, ShareRelay, ConsistencyRequest, UnmaskRequest, RoundAborted, Hello, Refusal, RoundStart, RoundResult,
    }  # fmt: skip
    assert set(MESSAGE_TYPES.values()) == expected
    assert {type(envelope.body) for envelope in EXAMPLES} == expected
    assert all(name == cls.__name__ for name, cls in MESSAGE_TYPES.items())


@pytest.mark.parametrize("envelope", EXAMPLES + EDGE_EXAMPLES, ids=lambda e: type(e.body).__name__)
def test_round_trip(envelope: Envelope) -> None:
    frames = encode(envelope)
    assert all(type(frame) is bytes for frame in frames)
    assert frames[0] == VERSION and frames[1] == type(envelope.body).__name__.encode()
    decoded = decode(frames)
    assert decoded == envelope
    assert type(decoded.body) is type(envelope.body)
    for field in dataclasses.fields(decoded.body):  # tuples stay tuples, arrays stay arrays
        value = getattr(decoded.body, field.name)
        original = getattr(envelope.body, field.name)
        assert type(value) is type(original)
        if isinstance(value, tuple):
            assert all(type(a) is type(b) for a, b in zip(value, original))
    assert encode(decoded) == frames  # deterministic


def test_header_layout_is_flat_json_with_descriptors() -> None:
    frames = encode(BASE["MaskedInput"])
    assert len(frames) == 4
    assert _header(frames) == {
        "task": "task-a", "aggregation": 7, "sender": 3, "vector": {"dtype": "<u4", "shape": [4]}, "bad_dealers": [2, 7]
    }  # fmt: skip
    assert frames[3] == np.array([0, 1, 2**32 - 1, 12345], dtype="<u4").tobytes()
    header = _header(encode(BASE["UnmaskRequest"]))
    assert header["signatures"] == [[1, _b64(SIG)], [2, _b64(SIG[::-1])]]
    assert _header(encode(BASE["KeyList"]))["entries"][0] == {
        "sender": 1, "c_pk": _b64(K1), "s_pk": _b64(K2), "seed_commitment": _b64(C1), "signature": _b64(SIG)
    }  # fmt: skip
    assert _header(encode(BASE["AdvertiseKeys"])) == {
        "task": "task-a", "aggregation": 7, "sender": 1, "c_pk": _b64(K1), "s_pk": _b64(K2), "seed_commitment": _b64(C1),
        "signature": _b64(SIG),
    }  # fmt: skip
    assert _header(encode(BASE["SeedReveal"])) == {"task": "task-a", "aggregation": 7, "sender": 3, "value": _b64(V1)}
    assert _header(encode(BASE["SeedRevealList"]))["reveals"] == [[1, _b64(V1)], [4, _b64(V2)]]
    share_keys = encode(BASE["ShareKeys"])
    assert len(share_keys) == 3  # no array frames
    assert _header(share_keys) == {
        "task": "task-a", "aggregation": 7, "sender": 2,
        "ciphertexts": [[1, _b64(b"\x00" * 60)], [3, _b64(b"\xff" * 61)], [65535, _b64(b"x")]],
        "commitments": [[1, _b64(SC1)], [2, _b64(SC2)], [3, _b64(SC1[::-1])], [65535, _b64(SC2[::-1])]],
        "signature": _b64(SIG), "mask_commitment": _b64(MC),
    }  # fmt: skip
    assert _header(encode(BASE["ShareRelay"])) == {
        "task": "task-a", "aggregation": 7, "ciphertexts": [[1, _b64(b"c1")], [2, _b64(b"c2")]],
        "commitments": [[1, _b64(SC1)], [2, _b64(SC2)]],
    }  # fmt: skip


@pytest.mark.parametrize("name", ["MaskedInput", "RoundStart"])
def test_decoded_arrays_are_read_only_native(name: str) -> None:
    body = decode(encode(BASE[name])).body
    array = body.vector if name == "MaskedInput" else body.model
    assert array.dtype == (np.uint32 if name == "MaskedInput" else np.float64)
    assert array.dtype.isnative
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 1
    copy = array.copy()
    copy[0] = 1  # a copy is writable


@pytest.mark.parametrize(
    "n, threshold, neighbours, colluders",
    [(6, 3, None, None), (6, 4, None, 1), (10, 3, 4, None)],
    ids=["complete-curious", "complete-one-colluder", "sparse"],
)
def test_real_protocol_messages_survive_the_wire(
    monkeypatch: pytest.MonkeyPatch, n: int, threshold: int, neighbours: int | None, colluders: int | None
) -> None:
    """Run the real state machines with every message going through encode/decode."""
    seen: dict[str, list[Any]] = {}

    def wire(body: Any) -> Any:
        seen.setdefault(type(body).__name__, []).append(body)
        envelope = decode(encode(Envelope("simulation", 0, body)))
        assert envelope.body == body
        return envelope.body

    class WiredServer(ServerProtocol):
        def receive(self, event: object) -> list[Send]:
            if not isinstance(event, Deadline):
                event = wire(event)
            return [Send(send.to, wire(send.message)) for send in super().receive(event)]

    module = importlib.import_module("securefed.secagg.simulate")
    monkeypatch.setattr(module, "ServerProtocol", WiredServer)
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, 2**32, size=10, dtype=np.uint32) for _ in range(n)]
    result = module.simulate(
        inputs, threshold=threshold, dropouts={"consistency": [6], "masked_input": [5]}, neighbours=neighbours, seed=7,
        colluders=colluders,
    )  # fmt: skip
    survivors = tuple(i for i in range(1, n + 1) if i != 5)
    assert tuple(result.survivors) == survivors
    assert np.array_equal(result.sum, np.sum(np.stack([inputs[i - 1] for i in survivors]), axis=0, dtype=np.uint32))
    secagg_types = {"AdvertiseKeys", "SeedReveal", "ShareKeys", "MaskedInput", "ConsistencySignature", "UnmaskShares",
                    "KeyList", "SeedRevealList", "ShareRelay", "ConsistencyRequest", "UnmaskRequest"}  # fmt: skip
    assert secagg_types <= set(seen)
    # The new fields carried real protocol values, not just empty tuples.
    assert all(len(body.seed_commitment) == 32 for body in seen["AdvertiseKeys"])
    assert len(seen["SeedReveal"]) == n and all(len(body.value) == 32 for body in seen["SeedReveal"])
    assert all(tuple(i for i, _ in list_.reveals) == tuple(range(1, n + 1)) for list_ in seen["SeedRevealList"])
    for body in seen["ShareKeys"]:
        holders = {holder for holder, _ in body.commitments}
        assert body.sender in holders and holders - {body.sender} == {recipient for recipient, _ in body.ciphertexts}
        assert all(len(commitment) == 64 for _, commitment in body.commitments) and len(body.signature) == 64
        assert len(holders) == (n if neighbours is None else neighbours + 1)
    assert all(body.bad_dealers == () for body in seen["MaskedInput"])  # every dealer was honest
    for body in seen["ShareRelay"]:
        assert body.commitments and [i for i, _ in body.commitments] == [i for i, _ in body.ciphertexts]


# --- encode refuses what a peer would refuse ---------------------------------------------


@pytest.mark.parametrize("body", [Deadline(Stage.SHARE), Send(1, RoundAborted("x")), "Hello", None])
def test_encode_refuses_local_only_bodies(body: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode(Envelope("t", 1, body))


def test_encode_refuses_non_envelopes() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Hello("n"))  # type: ignore[arg-type]


BAD_BODIES = {
    "sender-bool": AdvertiseKeys(True, K1, K2, C1, SIG),
    "sender-zero": AdvertiseKeys(0, K1, K2, C1, SIG),
    "short-key": AdvertiseKeys(1, K1[:31], K2, C1, SIG),
    "bytearray-key": AdvertiseKeys(1, bytearray(K1), K2, C1, SIG),
    "short-seed-commitment": AdvertiseKeys(1, K1, K2, C1[:31], SIG),
    "long-seed-commitment": AdvertiseKeys(1, K1, K2, C1 + b"\x00", SIG),
    "empty-seed-commitment": AdvertiseKeys(1, K1, K2, b"", SIG),
    "base64-seed-commitment": AdvertiseKeys(1, K1, K2, _b64(C1), SIG),
    "bytearray-seed-commitment": AdvertiseKeys(1, K1, K2, bytearray(C1), SIG),
    "none-seed-commitment": AdvertiseKeys(1, K1, K2, None, SIG),
    "advertise-long-signature": AdvertiseKeys(1, K1, K2, C1, SIG + b"!"),
    "short-signature": ConsistencySignature(1, SIG[:63]),
    "reveal-sender-zero": SeedReveal(0, V1),
    "reveal-sender-too-big": SeedReveal(65536, V1),
    "reveal-short-value": SeedReveal(1, V1[:31]),
    "reveal-long-value": SeedReveal(1, V1 + b"!"),
    "reveal-empty-value": SeedReveal(1, b""),
    "reveal-bytearray-value": SeedReveal(1, bytearray(V1)),
    "reveal-memoryview-value": SeedReveal(1, memoryview(V1)),
    "reveal-str-value": SeedReveal(1, _b64(V1)),
    "pairs-list": ShareKeys(1, [(2, b"x")], (), SIG, MC),
    "pair-list": ShareKeys(1, ([2, b"x"],), (), SIG, MC),
    "pairs-unsorted": ShareKeys(1, ((3, b"x"), (2, b"x")), (), SIG, MC),
    "commitments-list": ShareKeys(1, (), [(1, SC1)], SIG, MC),
    "commitments-pair-list": ShareKeys(1, (), ([1, SC1],), SIG, MC),
    "commitments-triple": ShareKeys(1, (), ((1, SC1, SC2),), SIG, MC),
    "commitments-unsorted": ShareKeys(1, (), ((2, SC1), (1, SC2)), SIG, MC),
    "commitments-duplicate": ShareKeys(1, (), ((1, SC1), (1, SC1)), SIG, MC),
    "commitments-id-zero": ShareKeys(1, (), ((0, SC1),), SIG, MC),
    "commitments-id-bool": ShareKeys(1, (), ((True, SC1),), SIG, MC),
    "commitment-short": ShareKeys(1, (), ((1, SC1[:63]),), SIG, MC),
    "commitment-long": ShareKeys(1, (), ((1, SC1 + b"!"),), SIG, MC),
    "commitment-single-hash": ShareKeys(1, (), ((1, SC1[:32]),), SIG, MC),
    "commitment-bytearray": ShareKeys(1, (), ((1, bytearray(SC1)),), SIG, MC),
    "commitment-second-bad": ShareKeys(1, (), ((1, SC1), (2, SC2[:63])), SIG, MC),
    "share-signature-short": ShareKeys(1, (), (), SIG[:63], MC),
    "share-signature-long": ShareKeys(1, (), (), SIG + b"!", MC),
    "share-signature-empty": ShareKeys(1, (), (), b"", MC),
    "share-signature-none": ShareKeys(1, (), (), None, MC),
    "share-signature-bytearray": ShareKeys(1, (), (), bytearray(SIG), MC),
    "mask-commitment-short": ShareKeys(1, (), (), SIG, MC[:31]),
    "mask-commitment-long": ShareKeys(1, (), (), SIG, MC + b"!"),
    "mask-commitment-pair": ShareKeys(1, (), (), SIG, SC1),
    "mask-commitment-none": ShareKeys(1, (), (), SIG, None),
    "mask-commitment-bytearray": ShareKeys(1, (), (), SIG, bytearray(MC)),
    "pair-empty-blob": ShareRelay(((1, b""),), ()),
    "pair-huge-blob": ShareRelay(((1, b"x" * 4097),), ()),
    "relay-commitments-list": ShareRelay((), [(1, SC1)]),
    "relay-commitments-unsorted": ShareRelay((), ((2, SC1), (1, SC2))),
    "relay-commitment-short": ShareRelay(((1, b"c"),), ((1, SC1[:63]),)),
    "relay-commitment-long": ShareRelay(((1, b"c"),), ((1, SC1 + b"!"),)),
    "relay-commitment-empty": ShareRelay(((1, b"c"),), ((1, b""),)),
    "reveals-list": SeedRevealList([(1, V1)]),
    "reveals-pair-list": SeedRevealList(([1, V1],)),
    "reveals-unsorted": SeedRevealList(((2, V1), (1, V2))),
    "reveals-duplicate": SeedRevealList(((1, V1), (1, V1))),
    "reveals-id-too-big": SeedRevealList(((65536, V1),)),
    "reveals-short-value": SeedRevealList(((1, V1[:31]),)),
    "reveals-long-value": SeedRevealList(((1, V1 + b"!"),)),
    "reveals-second-bad": SeedRevealList(((1, V1), (2, V2[:31]))),
    "ids-list": ConsistencyRequest([1, 2]),
    "ids-duplicate": ConsistencyRequest((1, 1)),
    "ids-numpy": ConsistencyRequest((np.int64(1),)),
    "entries-list": KeyList([AdvertiseKeys(1, K1, K2, C1, SIG)]),
    "entries-unsorted": KeyList((AdvertiseKeys(2, K1, K2, C1, SIG), AdvertiseKeys(1, K1, K2, C1, SIG))),
    "entries-not-advertise": KeyList((ConsistencySignature(1, SIG),)),
    "entries-short-seed-commitment": KeyList((AdvertiseKeys(1, K1, K2, C1, SIG), AdvertiseKeys(2, K1, K2, C1[:31], SIG))),
    "entries-seed-reveal": KeyList((SeedReveal(1, V1),)),
    "vector-int64": MaskedInput(1, np.arange(3)),
    "vector-big-endian": MaskedInput(1, np.arange(3, dtype=">u4")),
    "vector-2d": MaskedInput(1, np.zeros((2, 2), dtype=np.uint32)),
    "vector-empty": MaskedInput(1, np.zeros(0, dtype=np.uint32)),
    "vector-list": MaskedInput(1, [1, 2, 3]),
    "bad-dealers-list": MaskedInput(1, np.zeros(1, dtype=np.uint32), [2]),
    "bad-dealers-unsorted": MaskedInput(1, np.zeros(1, dtype=np.uint32), (3, 2)),
    "bad-dealers-duplicate": MaskedInput(1, np.zeros(1, dtype=np.uint32), (2, 2)),
    "bad-dealers-zero": MaskedInput(1, np.zeros(1, dtype=np.uint32), (0,)),
    "bad-dealers-numpy": MaskedInput(1, np.zeros(1, dtype=np.uint32), (np.int64(2),)),
    "model-float32": RoundStart(1, (), {}, np.zeros(2, dtype=np.float32)),
    "model-nan": RoundStart(1, (), {}, np.array([1.0, np.nan])),
    "model-inf": RoundStart(1, (), {}, np.array([np.inf])),
    "spec-tuple": RoundStart(1, (), {"a": (1, 2)}, np.zeros(1)),
    "spec-nan": RoundStart(1, (), {"a": float("nan")}, np.zeros(1)),
    "spec-numpy-float": RoundStart(1, (), {"a": np.float64(0.1)}, np.zeros(1)),
    "spec-int-key": RoundStart(1, (), {1: "a"}, np.zeros(1)),
    "spec-too-deep": RoundStart(1, (), _nested(MAX_SPEC_DEPTH + 1), np.zeros(1)),
    "spec-huge-int": RoundStart(1, (), {"a": 2**64}, np.zeros(1)),
    "spec-not-dict": RoundStart(1, (), [], np.zeros(1)),
    "cohort-bad-name": RoundStart(1, ((1, "a\nb"),), {}, np.zeros(1)),
    "hello-empty": Hello(""),
    "hello-busy-int": Hello("n", 1),
    "refusal-surrogate": Refusal("r", "\ud800"),
    "result-negative": RoundResult(True, -1, ""),
    "aborted-long": RoundAborted("r" * 4097),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_encode_refuses_invalid_bodies(body: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode(Envelope("t", 1, body))


def test_encode_refuses_spec_cycles() -> None:
    spec: dict = {}
    spec["self"] = spec
    with pytest.raises(LocalProtocolError):
        encode(Envelope("t", 1, RoundStart(1, (), spec, np.zeros(1))))


@pytest.mark.parametrize("task, aggregation", [("", 1), ("a\tb", 1), (5, 1), ("t", -1), ("t", 2**63), ("t", True), ("t", 1.0)])
def test_encode_refuses_invalid_envelopes(task: Any, aggregation: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode(Envelope(task, aggregation, Hello("n")))


def test_encode_respects_limits() -> None:
    limits = Limits(max_header_bytes=200, max_array_bytes=8)
    with pytest.raises(LocalProtocolError):
        encode(BASE["KeyList"], limits)
    with pytest.raises(LocalProtocolError):
        encode(Envelope("t", 1, MaskedInput(1, np.zeros(3, dtype=np.uint32))), limits)
    encode(Envelope("t", 1, MaskedInput(1, np.zeros(2, dtype=np.uint32))), limits)


# --- every field's bad values are refused --------------------------------------------

ID_BAD = [0, -1, 65536, True, False, 1.0, "1", None, [1], {}]


def _bytes_bad(size: int) -> list[Any]:
    good = _b64(bytes(size))
    non_canonical = good.rstrip("=")[:-1] + "B" + "=" * (len(good) - len(good.rstrip("=")))
    return [
        _b64(bytes(size - 1)), _b64(bytes(size + 1)), "", good[:-1], good.rstrip("="), "!" * len(good),
        good.replace("A", "-", 1), " " + good[1:], good[:-4] + "AA\nA", non_canonical, "é" * len(good), size, None, list(bytes(size)),
    ]  # fmt: skip


KEY_BAD = _bytes_bad(32)  # also every other 32-byte field: seed commitments, seed reveal values
SIG_BAD = _bytes_bad(64)  # also share commitment pairs (64 bytes)
X = _b64(b"x")
BLOB_PAIRS_BAD = [
    [[1, ""]], [[1, _b64(b"x" * 4097)]], [[0, X]], [[65536, X]], [[2, X], [1, X]], [[1, X], [1, X]], [[1]],
    [[1, X, 3]], [{"1": X}], [1, X], {"1": X}, "x", None, [[True, X]], [["1", X]], [[1, "eA"]], [[1, "e A="]],
    [[1, "eB=="]], [[1.0, X]], [[1, None]], [[1, [X]]],
]  # fmt: skip
SIG_PAIRS_BAD = [[[1, X]], [[1, _b64(bytes(65))]], [[2, _b64(SIG)], [1, _b64(SIG)]], [[1, None]]]


def _fixed_pairs_bad(size: int) -> list[Any]:
    """``[[id, base64 of size bytes], ...]`` gone wrong in exactly one way: each case's other parts are valid."""
    good, other = _b64(bytes(size)), _b64(b"\x01" * size)
    structure = [
        [[2, good], [1, other]], [[1, good], [1, other]], [[1, good], [3, other], [2, good]], [[0, good]], [[65536, good]],
        [[-1, good]], [[True, good]], [["1", good]], [[1.0, good]], [[None, good]], [[1]], [[1, good, other]], [[1, good, 3]],
        [{"1": good}], [1, good], [good], [[good, 1]], {"1": good}, "x", good, None, 5, [[1, None]], [[1, [good]]],
    ]  # fmt: skip
    values = [[[1, bad]] for bad in _bytes_bad(size)]
    later = [[[1, good], [2, bad]] for bad in _bytes_bad(size)[:4]]  # every pair is checked, not only the first
    return structure + values + later


COMMITMENT_PAIRS_BAD = _fixed_pairs_bad(64)
REVEAL_PAIRS_BAD = _fixed_pairs_bad(32)
IDS_BAD = [[2, 1], [1, 1], [0], [65536], [True], [1.0], "1,2", None, {"a": 1}, [[1]], [-3]]
NAME_BAD = ["", "a\nb", "a\x00", "\x7f", "\x85", 5, None, True, "x" * 4097, ["a"], "\ud800", {}]
TEXT_BAD = [5, None, True, "x" * 4097, ["a"], "\ud800", "a\udc00b"]
BOOL_BAD = [0, 1, "true", None, 1.0, []]
COUNT_BAD = [-1, 65536, True, 1.5, "3", None]
COHORT_BAD = [
    [[1, ""]], [[1, "a\n"]], [[2, "a"], [1, "b"]], [[1, "a"], [1, "b"]], [[0, "a"]], [[1, 5]], [["1", "a"]], [[1]],
    "x", None, {"1": "a"}, [[1, "\udfff"]],
]  # fmt: skip
SPEC_BAD = [
    [], "x", None, 1, {"a": "\ud800"}, {"\ud800": 1}, {"a": 2**64}, {"a": -(2**63) - 1}, {"k" * 4097: 1},
    {"a": "x" * 4097}, {"a": list(range(65536))}, {"a": {str(i): i for i in range(65536)}},
]  # fmt: skip
_ENTRY = {"sender": 1, "c_pk": _b64(K1), "s_pk": _b64(K2), "seed_commitment": _b64(C1), "signature": _b64(SIG)}
_ENTRY_FIELD_BAD = {"sender": ID_BAD, "c_pk": KEY_BAD, "s_pk": KEY_BAD, "seed_commitment": KEY_BAD, "signature": SIG_BAD}
ENTRIES_BAD = [
    [{k: v for k, v in _ENTRY.items() if k != "s_pk"}], [{**_ENTRY, "extra": 1}], [{**_ENTRY, "c_pk": _b64(K1[:31])}],
    [{**_ENTRY, "sender": 0}], [{**_ENTRY, "signature": _b64(SIG + b"!")}], [{**_ENTRY, "sender": 2}, _ENTRY],
    [_ENTRY, _ENTRY], "x", None, [list(_ENTRY.values())], [5], {"1": _ENTRY},
    [{k: v for k, v in _ENTRY.items() if k != "seed_commitment"}],  # an advertisement from before the reveal stage
    [{**_ENTRY, "seed_commitment": None}], [{**_ENTRY, "seed": _ENTRY["seed_commitment"]}],
    [{**{k: v for k, v in _ENTRY.items() if k != "seed_commitment"}, "seed": _ENTRY["seed_commitment"]}],
    [_ENTRY, {**_ENTRY, "sender": 2, "seed_commitment": _b64(C1[:31])}],
] + [
    [{**_ENTRY, name: bad}] for name, values in _ENTRY_FIELD_BAD.items() for bad in values  # each entry field, every bad value
]  # fmt: skip
AGGREGATION_BAD = [-1, 2**63, True, 1.0, "1", None, [0]]

FIELD_BAD: dict[tuple[str, str], list[Any]] = {
    ("AdvertiseKeys", "sender"): ID_BAD,
    ("AdvertiseKeys", "c_pk"): KEY_BAD,
    ("AdvertiseKeys", "s_pk"): KEY_BAD,
    ("AdvertiseKeys", "seed_commitment"): KEY_BAD,
    ("AdvertiseKeys", "signature"): SIG_BAD,
    ("SeedReveal", "sender"): ID_BAD,
    ("SeedReveal", "value"): KEY_BAD,
    ("ShareKeys", "sender"): ID_BAD,
    ("ShareKeys", "ciphertexts"): BLOB_PAIRS_BAD,
    ("ShareKeys", "commitments"): COMMITMENT_PAIRS_BAD,
    ("ShareKeys", "signature"): SIG_BAD,
    ("ShareKeys", "mask_commitment"): KEY_BAD,
    ("MaskedInput", "sender"): ID_BAD,
    ("MaskedInput", "bad_dealers"): IDS_BAD,
    ("ConsistencySignature", "sender"): ID_BAD,
    ("ConsistencySignature", "signature"): SIG_BAD,
    ("UnmaskShares", "sender"): ID_BAD,
    ("UnmaskShares", "b_shares"): BLOB_PAIRS_BAD,
    ("UnmaskShares", "s_shares"): BLOB_PAIRS_BAD,
    ("KeyList", "entries"): ENTRIES_BAD,
    ("SeedRevealList", "reveals"): REVEAL_PAIRS_BAD,
    ("ShareRelay", "ciphertexts"): BLOB_PAIRS_BAD,
    ("ShareRelay", "commitments"): COMMITMENT_PAIRS_BAD,
    ("ConsistencyRequest", "survivors"): IDS_BAD,
    ("UnmaskRequest", "survivors"): IDS_BAD,
    ("UnmaskRequest", "dropped"): IDS_BAD,
    ("UnmaskRequest", "signatures"): SIG_PAIRS_BAD + BLOB_PAIRS_BAD[2:] + _fixed_pairs_bad(64),
    ("RoundAborted", "reason"): NAME_BAD,
    ("Hello", "node"): NAME_BAD,
    ("Hello", "busy"): BOOL_BAD,
    ("Refusal", "reason"): NAME_BAD,
    ("Refusal", "detail"): TEXT_BAD,
    ("RoundStart", "node_id"): ID_BAD,
    ("RoundStart", "cohort"): COHORT_BAD,
    ("RoundStart", "spec"): SPEC_BAD,
    ("RoundResult", "completed"): BOOL_BAD,
    ("RoundResult", "participants"): COUNT_BAD,
    ("RoundResult", "detail"): TEXT_BAD,
}
ARRAY_FIELDS = {("MaskedInput", "vector"), ("RoundStart", "model")}

FIELD_CASES = [
    pytest.param(name, field, bad, id=f"{name}.{field}-{index}")
    for (name, field), values in FIELD_BAD.items()
    for index, bad in enumerate(values)
] + [
    pytest.param(name, field, bad, id=f"{name}.{field}-{index}")
    for name in BASE
    for field, values in (("task", NAME_BAD), ("aggregation", AGGREGATION_BAD))
    for index, bad in enumerate(values)
]


def test_bad_field_table_covers_every_field() -> None:
    every = {(name, field.name) for name, cls in MESSAGE_TYPES.items() for field in dataclasses.fields(cls)}
    assert every == set(FIELD_BAD) | ARRAY_FIELDS


@pytest.mark.parametrize("name, field, bad", FIELD_CASES)
def test_bad_field_values_are_rejected(name: str, field: str, bad: Any) -> None:
    frames = encode(BASE[name])
    header = _header(frames)
    assert field in header
    header[field] = bad
    _rejected(_with_header(frames, header), "bad-field")


GOOD_EDITS: list[tuple[str, dict[str, Any], Any]] = [
    (
        "ShareKeys",
        {
            "sender": 65535, "ciphertexts": [[1, X], [65535, _b64(b"x" * 4096)]],
            "commitments": [[1, _b64(SC2)], [65535, _b64(SC1)]], "signature": _b64(SIG[::-1]),
        },
        ShareKeys(65535, ((1, b"x"), (65535, b"x" * 4096)), ((1, SC2), (65535, SC1)), SIG[::-1], MC),
    ),
    ("ShareKeys", {"ciphertexts": [], "commitments": []}, ShareKeys(2, (), (), SIG, MC)),
    ("AdvertiseKeys", {"seed_commitment": _b64(V2)}, AdvertiseKeys(1, K1, K2, V2, SIG)),
    ("SeedReveal", {"sender": 65535, "value": _b64(bytes(32))}, SeedReveal(65535, bytes(32))),
    ("SeedRevealList", {"reveals": [[2, _b64(V2)], [65535, _b64(V1)]]}, SeedRevealList(((2, V2), (65535, V1)))),
    ("SeedRevealList", {"reveals": []}, SeedRevealList(())),
    ("ShareRelay", {"ciphertexts": [[7, X]], "commitments": [[7, _b64(SC2)]]}, ShareRelay(((7, b"x"),), ((7, SC2),))),
    (
        "KeyList",
        {"entries": [{**_ENTRY, "sender": 65535, "seed_commitment": _b64(V1)}]},
        KeyList((AdvertiseKeys(65535, K1, K2, V1, SIG),)),
    ),
    ("UnmaskRequest", {"signatures": [[65535, _b64(SIG)]]}, UnmaskRequest((1, 2), (3,), ((65535, SIG),))),
    ("MaskedInput", {"bad_dealers": [1, 65535]}, MaskedInput(3, np.array([0, 1, 2**32 - 1, 12345], dtype=np.uint32), (1, 65535))),
    ("MaskedInput", {"bad_dealers": []}, MaskedInput(3, np.array([0, 1, 2**32 - 1, 12345], dtype=np.uint32))),
]  # fmt: skip


@pytest.mark.parametrize("name, changes, expected", GOOD_EDITS, ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(GOOD_EDITS)])
def test_a_good_value_in_the_same_slot_is_accepted(name: str, changes: dict[str, Any], expected: Any) -> None:
    """The bad-field test edits the header the way a valid change would be made: check that route works."""
    frames = encode(BASE[name])
    header = _header(frames)
    assert changes.keys() <= header.keys()
    header.update(changes)
    decoded = decode(_with_header(frames, header))
    assert decoded.body == expected
    assert decoded == Envelope("task-a", 7, expected)


def test_old_wire_formats_are_rejected() -> None:
    """Messages shaped as before the reveal stage, the signed share commitments and bad-dealer reports do not decode."""
    advertise = _header(encode(BASE["AdvertiseKeys"]))
    del advertise["seed_commitment"]
    _rejected([VERSION, b"AdvertiseKeys", json.dumps(advertise).encode()], "bad-header")
    share = _header(encode(BASE["ShareKeys"]))
    del share["commitments"], share["signature"]
    _rejected([VERSION, b"ShareKeys", json.dumps(share).encode()], "bad-header")
    relay = _header(encode(BASE["ShareRelay"]))
    del relay["commitments"]
    _rejected([VERSION, b"ShareRelay", json.dumps(relay).encode()], "bad-header")
    masked = encode(BASE["MaskedInput"])
    header = _header(masked)
    del header["bad_dealers"]
    _rejected(_with_header(masked, header), "bad-header")
    keylist = _header(encode(BASE["KeyList"]))
    for entry in keylist["entries"]:
        del entry["seed_commitment"]
    _rejected([VERSION, b"KeyList", json.dumps(keylist).encode()], "bad-field")


SIZE_SWAPS = [
    ("ShareKeys", "commitments", [[1, _b64(V1)]]),  # one 32-byte hash where the 64-byte pair (s || b) belongs
    ("ShareRelay", "commitments", [[1, _b64(V1)]]),
    ("SeedRevealList", "reveals", [[1, _b64(SC1)]]),  # a 64-byte commitment pair where a 32-byte value belongs
    ("SeedReveal", "value", _b64(SIG)),
    ("AdvertiseKeys", "seed_commitment", _b64(SC1)),
    ("KeyList", "entries", [{**_ENTRY, "seed_commitment": _b64(SC1)}]),
    ("ShareKeys", "signature", _b64(V1)),
]


@pytest.mark.parametrize("name, field, value", SIZE_SWAPS, ids=[f"{name}.{field}" for name, field, _ in SIZE_SWAPS])
def test_fixed_size_fields_refuse_the_other_protocol_size(name: str, field: str, value: Any) -> None:
    """A well-formed value of a neighbouring field's size (32 vs 64 bytes) is refused: each field has its own size."""
    frames = encode(BASE[name])
    header = _header(frames)
    header[field] = value
    _rejected(_with_header(frames, header), "bad-field")


def test_variable_size_fields_take_any_protocol_size() -> None:
    frames = encode(BASE["ShareRelay"])
    header = _header(frames)
    header["ciphertexts"] = [[1, _b64(SC1)], [2, _b64(V1)]]
    assert decode(_with_header(frames, header)).body == ShareRelay(((1, SC1), (2, V1)), ((1, SC1), (2, SC2)))


# --- header structure ------------------------------------------------------------------


@pytest.mark.parametrize("name", BASE)
def test_extra_key_is_rejected(name: str) -> None:
    frames = encode(BASE[name])
    for extra in ("extra", "Task", "body", "__class__"):
        header = _header(frames)
        header[extra] = 1
        _rejected(_with_header(frames, header), "bad-header")


@pytest.mark.parametrize("name", BASE)
def test_each_missing_key_is_rejected(name: str) -> None:
    frames = encode(BASE[name])
    for key in _header(frames):
        header = _header(frames)
        del header[key]
        _rejected(_with_header(frames, header), "bad-header")


def test_duplicate_keys_are_rejected() -> None:
    frames = encode(BASE["Hello"])
    text = frames[2].decode()
    assert text.startswith('{"task":"task-a",')
    duplicated = '{"task":"other","task":"task-a",' + text[len('{"task":"task-a",') :]
    _rejected([frames[0], frames[1], duplicated.encode()], "bad-header")
    nested = encode(BASE["RoundStart"])
    spec_dup = nested[2].replace(b'"spec":{', b'"spec":{"lr":1,')
    _rejected([*nested[:2], spec_dup, *nested[3:]], "bad-header")


@pytest.mark.parametrize(
    "header",
    [
        b"\xff\xfe", b"", b"null", b"[]", b'"x"', b"1", b"{", b"{}", b"\xef\xbb\xbf{}", b"{'task': 1}",
        b'{"task":"t","aggregation":1,"node":"n","busy":false} x', b'{"task":"t","aggregation":1' + b"9" * 5000 + b',"node":"n","busy":false}',
        b'{"task":"t\xed\xa0\x80","aggregation":1,"node":"n","busy":false}',
    ],
)  # fmt: skip
def test_malformed_headers_are_rejected(header: bytes) -> None:
    _rejected([VERSION, b"Hello", header], "bad-header")


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_numbers_in_spec_are_rejected(constant: bytes) -> None:
    frames = encode(BASE["RoundStart"])
    assert b'"lr":0.05' in frames[2]
    _rejected([*frames[:2], frames[2].replace(b'"lr":0.05', b'"lr":' + constant), *frames[3:]], "bad-header")


def test_spec_depth_limit() -> None:
    ok = Envelope("t", 1, RoundStart(1, (), _nested(MAX_SPEC_DEPTH), np.zeros(1)))
    assert decode(encode(ok)) == ok
    frames = encode(ok)
    header = _header(frames)
    header["spec"] = _nested(MAX_SPEC_DEPTH + 1)
    _rejected(_with_header(frames, header), "bad-header")  # caught by the pre-scan, before json.loads


@pytest.mark.parametrize("size", [10_000, 1 << 20])
def test_deep_nesting_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json.loads called on a header that is nested too deeply")

    monkeypatch.setattr(codec.json, "loads", no_parse)
    _rejected([VERSION, b"Hello", b"[" * size], "bad-header")
    _rejected([VERSION, b"Hello", b'{"a":' * size], "bad-header")
    _rejected([VERSION, b"RoundStart", b'{"spec":' + b"[{" * size, b""], "bad-header")


@pytest.mark.parametrize(
    "header",
    [
        b'"' + b'\\"' * (1 << 19) + b"\\",  # unterminated string full of escaped quotes, lone trailing backslash
        b'"' + b'\\"' * (1 << 19),
        b'["' * (1 << 19),
        b"\\" * (1 << 20),
        b'"[' * (1 << 19),
    ],
    ids=["escaped-quotes-backslash", "escaped-quotes", "open-strings", "backslashes", "quote-bracket"],
)
def test_adversarial_headers_are_handled_in_linear_time(header: bytes) -> None:
    """Patterns that would make a naive string-skipping regex quadratic; each must finish promptly."""
    _rejected([VERSION, b"Hello", header], "bad-header")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = RoundStart(1, ((1, "[[[[{{{{"),), {"s": "[" * 100 + '\\"[' * 50, "t": "\\"}, np.zeros(1))
    envelope = Envelope("[[[[[[[[[[", 1, body)
    assert decode(encode(envelope)) == envelope


# --- frames, version, type ---------------------------------------------------------------


@pytest.mark.parametrize("version", [b"SF2", b"", b"sf1", b"SF1\x00", b"SF"])
def test_wrong_version_is_rejected(version: bytes) -> None:
    frames = encode(BASE["Hello"])
    _rejected([version, *frames[1:]], "bad-version")


@pytest.mark.parametrize(
    "name", [b"Deadline", b"Send", b"Envelope", b"Stage", b"advertisekeys", b"__class__", b"", b"Hello\x00", b"x" * 100_000]
)
def test_unknown_type_is_rejected(name: bytes) -> None:
    frames = encode(BASE["Hello"])
    _rejected([frames[0], name, frames[2]], "unknown-type")


@pytest.mark.parametrize(
    "frames",
    [
        None, b"SF1", "SF1", 5, {"a": b"b"}, iter([VERSION, b"Hello", b"{}"]), (f for f in [VERSION]),
        [], [VERSION], [VERSION, b"Hello"], [VERSION, b"Hello", "{}"], [VERSION, b"Hello", bytearray(b"{}")],
        [VERSION, b"Hello", memoryview(b"{}")], [VERSION, b"Hello", None], [VERSION, "Hello", b"{}"], [[VERSION], b"Hello", b"{}"],
    ],
)  # fmt: skip
def test_malformed_frame_lists_are_rejected(frames: Any) -> None:
    _rejected(frames, "bad-frames")


def test_frame_count_must_match_the_type() -> None:
    masked = encode(BASE["MaskedInput"])
    _rejected(masked[:3], "bad-frames")  # array frame missing
    hello = encode(BASE["Hello"])
    _rejected([*hello, b""], "bad-frames")  # stray frame
    _rejected([*masked, masked[3]], "too-large")  # over max_frames (4)
    _rejected([*masked, masked[3]], "bad-frames", Limits(max_frames=8))
    assert decode(tuple(masked)) == BASE["MaskedInput"]  # a tuple of frames is fine


# --- arrays -------------------------------------------------------------------------------


ARRAY_EXAMPLES = {"MaskedInput": ("vector", "<u4", 4), "RoundStart": ("model", "<f8", 8)}


@pytest.mark.parametrize("name", ARRAY_EXAMPLES)
def test_truncated_and_extended_array_frames_are_rejected(name: str) -> None:
    frames = encode(BASE[name])
    _, _, itemsize = ARRAY_EXAMPLES[name]
    for data in (frames[3][:-1], frames[3][:-itemsize], frames[3] + b"\x00", frames[3] + bytes(itemsize), b""):
        _rejected([*frames[:3], data], "bad-array")


@pytest.mark.parametrize("name", ARRAY_EXAMPLES)
def test_wrong_array_descriptors_are_rejected(name: str) -> None:
    frames = encode(BASE[name])
    field, dtype, itemsize = ARRAY_EXAMPLES[name]
    length = len(frames[3]) // itemsize
    other = "<f8" if dtype == "<u4" else "<u4"
    bad = [
        {"dtype": other, "shape": [length]}, {"dtype": ">" + dtype[1:], "shape": [length]}, {"dtype": dtype[1:], "shape": [length]},
        {"dtype": "|O", "shape": [length]}, {"dtype": dtype + " ", "shape": [length]}, {"dtype": "uint32", "shape": [length]},
        {"dtype": "float64", "shape": [length]}, {"dtype": 4, "shape": [length]}, {"dtype": None, "shape": [length]},
        {"dtype": dtype, "shape": []}, {"dtype": dtype, "shape": [length, 1]}, {"dtype": dtype, "shape": [1, length]},
        {"dtype": dtype, "shape": [-length]}, {"dtype": dtype, "shape": [float(length)]}, {"dtype": dtype, "shape": [True]},
        {"dtype": dtype, "shape": str(length)}, {"dtype": dtype, "shape": length}, {"dtype": dtype, "shape": [length + 1]},
        {"dtype": dtype, "shape": [length - 1]}, {"dtype": dtype}, {"shape": [length]},
        {"dtype": dtype, "shape": [length], "order": "C"}, [dtype, [length]], None, "x", length,
        {"dtype": [["f0", dtype]], "shape": [length]}, {"dtype": dtype, "shape": [10**12]},
    ]  # fmt: skip
    for descriptor in bad:
        header = _header(frames)
        header[field] = descriptor
        _rejected(_with_header(frames, header), "bad-array")


def test_empty_vector_rejected_but_empty_model_allowed() -> None:
    frames = encode(BASE["MaskedInput"])
    header = _header(frames)
    header["vector"]["shape"] = [0]
    _rejected(_with_header(frames, header)[:3] + [b""], "bad-array")
    empty = Envelope("t", 1, RoundStart(1, (), {}, np.zeros(0)))
    assert decode(encode(empty)) == empty


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_model_is_rejected(value: float) -> None:
    frames = encode(BASE["RoundStart"])
    model = np.frombuffer(frames[3], dtype="<f8").copy()
    model[1] = value
    _rejected([*frames[:3], model.astype("<f8").tobytes()], "bad-array")


def test_arrays_are_little_endian_on_the_wire() -> None:
    frames = encode(Envelope("t", 1, MaskedInput(1, np.array([1, 256], dtype=np.uint32))))
    assert frames[3] == b"\x01\x00\x00\x00\x00\x01\x00\x00"


# --- limits -----------------------------------------------------------------------------------


def test_limits_validate_themselves() -> None:
    for bad in ({"max_frames": 2}, {"max_string": 0}, {"max_string": True}, {"max_header_bytes": -1}, {"max_blob_bytes": 1.5}):
        with pytest.raises(InvalidParameter):
            Limits(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_frames = 9  # type: ignore[misc]
    assert DEFAULT_LIMITS.max_header_bytes == 8 << 20
    assert DEFAULT_LIMITS.max_array_bytes == 512 << 20
    assert DEFAULT_LIMITS.max_list_length == 65535
    assert DEFAULT_LIMITS.max_string == 4096
    assert DEFAULT_LIMITS.max_vector_length == 100_000_000


def test_max_message_size() -> None:
    assert max_message_size(DEFAULT_LIMITS) == 512 << 20
    assert max_message_size(Limits(max_header_bytes=1000, max_array_bytes=10, max_total_bytes=5000)) == 1000
    assert max_message_size(Limits(max_header_bytes=1000, max_array_bytes=10_000, max_total_bytes=5000)) == 5000
    with pytest.raises(InvalidParameter):
        max_message_size(None)  # type: ignore[arg-type]
    for envelope in EXAMPLES:  # no frame of a message within the limits exceeds it
        assert max(len(frame) for frame in encode(envelope)) <= max_message_size(DEFAULT_LIMITS)


def test_bad_limits_argument_is_a_local_error() -> None:
    with pytest.raises(InvalidParameter):
        decode(encode(BASE["Hello"]), limits={"max_frames": 4})  # type: ignore[arg-type]


@pytest.fixture
def forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call the fixture's value to make any parsing (nesting scan, JSON, array buffer) fail the test."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed an oversize message")

    def arm() -> None:
        monkeypatch.setattr(codec.json, "loads", boom)
        monkeypatch.setattr(codec, "_nesting_depth", boom)
        monkeypatch.setattr(codec.np, "frombuffer", boom)

    return arm


def test_oversize_header_rejected_before_parsing(forbid_parsing: Any) -> None:
    frames = encode(BASE["Hello"])
    forbid_parsing()
    _rejected(frames, "too-large", Limits(max_header_bytes=len(frames[2]) - 1))
    _rejected([VERSION, b"Hello", b" " * ((8 << 20) + 1)], "too-large")


def test_oversize_array_frame_rejected_before_parsing(forbid_parsing: Any) -> None:
    frames = encode(BASE["MaskedInput"])
    forbid_parsing()
    _rejected(frames, "too-large", Limits(max_array_bytes=len(frames[3]) - 1))


def test_oversize_total_rejected_before_parsing(forbid_parsing: Any) -> None:
    frames = encode(BASE["MaskedInput"])
    forbid_parsing()
    _rejected(frames, "too-large", Limits(max_total_bytes=sum(map(len, frames)) - 1))


def test_parsing_guard_is_armed(forbid_parsing: Any) -> None:
    """The guard above would catch a codec that parsed first and checked sizes later."""
    frames = encode(BASE["Hello"])
    forbid_parsing()
    with pytest.raises(AssertionError, match="parsed an oversize message"):
        decode(frames)


def test_descriptor_beyond_limits_is_rejected_before_reading_the_array(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = encode(BASE["MaskedInput"])
    frombuffer = np.frombuffer

    def guarded(buffer: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> Any:
        if np.dtype(dtype) != np.uint8:  # the nesting scan reads the header as bytes; arrays are never uint8
            raise AssertionError("array read despite an oversize descriptor")
        return frombuffer(buffer, dtype, *args, **kwargs)

    monkeypatch.setattr(codec.np, "frombuffer", guarded)
    header = _header(frames)
    header["vector"]["shape"] = [101]
    _rejected(_with_header(frames, header), "bad-array", Limits(max_vector_length=100))
    _rejected(_with_header(frames, header), "too-large", Limits(max_array_bytes=400))
    with pytest.raises(AssertionError, match="array read"):
        decode(frames)


def test_list_and_string_limits_follow_the_limits_object() -> None:
    frames = encode(BASE["ConsistencyRequest"])  # survivors (1, 2, 5)
    _rejected(frames, "bad-field", Limits(max_list_length=2))
    assert decode(frames, Limits(max_list_length=3)) == BASE["ConsistencyRequest"]
    _rejected(encode(Envelope("abcde", 1, Hello("n"))), "bad-field", Limits(max_string=4))
    share = encode(Envelope("t", 1, ShareRelay(((1, b"12345"),), ((1, SC1),))))
    _rejected(share, "bad-field", Limits(max_blob_bytes=4))
    assert decode(share, Limits(max_blob_bytes=5)).body == ShareRelay(((1, b"12345"),), ((1, SC1),))


@pytest.mark.parametrize(
    "name, field, length",
    [("ShareKeys", "ciphertexts", 3), ("ShareKeys", "commitments", 4), ("ShareRelay", "ciphertexts", 2),
     ("ShareRelay", "commitments", 2), ("SeedRevealList", "reveals", 2), ("KeyList", "entries", 2),
     ("MaskedInput", "bad_dealers", 2)],
)  # fmt: skip
def test_list_limit_applies_to_every_list_field(name: str, field: str, length: int) -> None:
    header = _header(encode(BASE[name]))
    assert len(header[field]) == length
    for other, value in header.items():  # only the field under test is long
        if other != field and isinstance(value, list):
            header[other] = []
    frames = _with_header(encode(BASE[name]), header)
    assert len(getattr(decode(frames, Limits(max_list_length=length)).body, field)) == length
    _rejected(frames, "bad-field", Limits(max_list_length=length - 1))


def test_blob_limit_does_not_apply_to_fixed_size_fields() -> None:
    """``max_blob_bytes`` bounds variable-length blobs only; keys, signatures, commitments and reveals have fixed sizes."""
    limits = Limits(max_blob_bytes=2)
    for name in ("AdvertiseKeys", "SeedReveal", "SeedRevealList", "KeyList", "ShareRelay", "ConsistencySignature"):
        assert decode(encode(BASE[name], limits), limits) == BASE[name]
    _rejected(encode(BASE["ShareRelay"]), "bad-field", Limits(max_blob_bytes=1))  # b"c1": the ciphertexts still count


def test_reasons_are_documented() -> None:
    assert {"bad-version", "too-large", "bad-header", "bad-field", "bad-array", "unknown-type", "bad-frames"} == set(REASONS)


def test_no_pickle_or_eval_in_the_codec() -> None:
    source = open(codec.__file__, encoding="utf-8").read()
    for banned in ("import pickle", "pickle.", "eval(", "exec(", "allow_pickle", "__import__"):
        assert banned not in source


@pytest.mark.parametrize("direction", ["to_coordinator", "to_node"])
def test_flood_corpus_fails_with_its_stated_reason(direction: str) -> None:
    """The transport tests count drops by reason; every message of their corpus must fail decode with exactly that reason."""
    if direction == "to_coordinator":
        build, new_types = (lambda: malformed.to_coordinator(3, "task-a")), {b"AdvertiseKeys", b"SeedReveal", b"ShareKeys"}
    else:
        build, new_types = (lambda: malformed.to_node(3, "task-a", "site-1")), {b"KeyList", b"SeedRevealList", b"ShareRelay"}
    messages = build()
    assert messages == build()  # deterministic per seed
    for frames, reason in messages:
        assert reason in REASONS
        _rejected(frames, reason)
    assert new_types <= {frames[1] for frames, _ in messages if len(frames) > 1}  # the new messages are in the flood
