"""Hypothesis invariants of the wire codec.

1. Round trip: ``decode(encode(e)) == e`` for generated valid envelopes of every type.
2. h11's invariant: ``decode`` of *any* frames returns an Envelope or raises
   ``RemoteProtocolError`` with a documented reason, never anything else; and
   whatever it returns is valid (it encodes again and round-trips). Inputs are
   arbitrary frame lists, structured-but-random frames, and mutations of valid
   encodings at the byte, frame and JSON level.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.errors import RemoteProtocolError
from securefed.federation.messages import Envelope, Hello, Refusal, RoundResult, RoundStart
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyList,
    MaskedInput,
    RoundAborted,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.wire import MAX_SPEC_DEPTH, MESSAGE_TYPES, REASONS, VERSION, decode, encode
from securefed.wire.codec import SPEC_INT_MAX, SPEC_INT_MIN

# --- valid envelopes ----------------------------------------------------------------------

ids = st.integers(1, 65535)
sorted_ids = st.lists(ids, unique=True, max_size=6).map(lambda values: tuple(sorted(values)))
blobs = st.binary(min_size=1, max_size=80)
names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)


def pairs(second: st.SearchStrategy) -> st.SearchStrategy:
    return st.dictionaries(ids, second, max_size=5).map(lambda d: tuple(sorted(d.items())))


advertise = st.builds(
    AdvertiseKeys, ids, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(SPEC_INT_MIN, SPEC_INT_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)


@functools.lru_cache(maxsize=None)
def json_values(depth: int) -> st.SearchStrategy:
    """JSON values whose container depth is at most ``depth``."""
    if depth == 0:
        return scalars
    child = json_values(depth - 1)
    return st.one_of(scalars, st.lists(child, max_size=3), st.dictionaries(texts, child, max_size=3))


specs = st.dictionaries(texts, json_values(MAX_SPEC_DEPTH - 1), max_size=5)
vectors = hnp.arrays(np.uint32, st.integers(1, 40))
models = hnp.arrays(np.float64, st.integers(0, 40), elements=st.floats(allow_nan=False, allow_infinity=False))

BODIES: dict[type, st.SearchStrategy] = {
    AdvertiseKeys: advertise,
    ShareKeys: st.builds(ShareKeys, ids, pairs(blobs)),
    MaskedInput: st.builds(MaskedInput, ids, vectors),
    ConsistencySignature: st.builds(ConsistencySignature, ids, st.binary(min_size=64, max_size=64)),
    UnmaskShares: st.builds(UnmaskShares, ids, pairs(blobs), pairs(blobs)),
    KeyList: st.lists(advertise, unique_by=lambda a: a.sender, max_size=4).map(
        lambda entries: KeyList(tuple(sorted(entries, key=lambda a: a.sender)))
    ),
    ShareRelay: st.builds(ShareRelay, pairs(blobs)),
    ConsistencyRequest: st.builds(ConsistencyRequest, sorted_ids),
    UnmaskRequest: st.builds(UnmaskRequest, sorted_ids, sorted_ids, pairs(st.binary(min_size=64, max_size=64))),
    RoundAborted: st.builds(RoundAborted, names),
    Hello: st.builds(Hello, names, st.booleans()),
    Refusal: st.builds(Refusal, names, texts),
    RoundStart: st.builds(RoundStart, ids, pairs(names), specs, models),
    RoundResult: st.builds(RoundResult, st.booleans(), st.integers(0, 65535), texts),
}
bodies = st.one_of(*BODIES.values())
envelopes = st.builds(Envelope, names, st.integers(0, 2**63 - 1), bodies)


def test_strategies_cover_every_wire_type() -> None:
    assert set(BODIES) == set(MESSAGE_TYPES.values())


@given(envelopes)
def test_round_trip(envelope: Envelope) -> None:
    frames = encode(envelope)
    decoded = decode(frames)
    assert decoded == envelope
    assert type(decoded.body) is type(envelope.body)
    assert encode(decoded) == frames


# --- the invariant ----------------------------------------------------------------------------


def check_invariant(frames: Any) -> None:
    """Decode returns a valid Envelope or raises RemoteProtocolError with a known reason; nothing else."""
    try:
        envelope = decode(frames)
    except RemoteProtocolError as error:
        assert error.reason in REASONS, error.reason
        return
    assert type(envelope) is Envelope
    assert type(envelope.body) in MESSAGE_TYPES.values()
    again = encode(envelope)  # anything decode accepts, encode accepts, and it comes back equal
    assert decode(again) == envelope


type_names = st.sampled_from(sorted(name.encode() for name in MESSAGE_TYPES))


@given(st.lists(st.binary(max_size=48), max_size=6))
def test_arbitrary_frames(frames: list[bytes]) -> None:
    check_invariant(frames)


not_bytes = st.one_of(
    st.text(max_size=8), st.none(), st.integers(), st.binary(max_size=8).map(bytearray),
    st.binary(max_size=8).map(memoryview), st.lists(st.binary(max_size=4), max_size=2),
)  # fmt: skip


@given(st.one_of(st.lists(not_bytes | st.binary(max_size=8), max_size=5).map(tuple), not_bytes, st.binary()))
def test_arbitrary_objects_as_frames(frames: Any) -> None:
    """Not even a list of bytes: still only RemoteProtocolError."""
    check_invariant(frames)


@given(envelopes, not_bytes, st.data())
def test_one_frame_is_not_bytes(envelope: Envelope, odd: Any, data: st.DataObject) -> None:
    frames = encode(envelope)
    frames[data.draw(st.integers(0, len(frames) - 1))] = odd
    check_invariant(frames)


@given(type_names, st.binary(max_size=200), st.lists(st.binary(max_size=48), max_size=1))
def test_arbitrary_header_bytes(name: bytes, header: bytes, arrays: list[bytes]) -> None:
    check_invariant([VERSION, name, header, *arrays])


def _json(floats: st.SearchStrategy) -> st.SearchStrategy:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), floats, st.text(max_size=8),
        st.sampled_from(["", "AAAA", "eA==", "<u4", "<f8", "\ud800", "a\nb"]),
    )  # fmt: skip
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    )


finite_json = _json(st.floats(allow_nan=False, allow_infinity=False))
any_json = _json(st.floats())  # NaN and infinities become NaN/Infinity tokens in json.dumps


@given(st.sampled_from(sorted(BODIES, key=lambda cls: cls.__name__)), st.data())
def test_arbitrary_field_values(cls: type, data: st.DataObject) -> None:
    """Exactly the right keys (sometimes one more or one less), each holding any JSON value."""
    keys = ["task", "aggregation", *(field.name for field in dataclasses.fields(cls))]
    header = {key: data.draw(finite_json, label=key) for key in keys}
    if data.draw(st.integers(0, 7)) == 7:
        header.pop(data.draw(st.sampled_from(keys)))
    if data.draw(st.integers(0, 7)) == 7:
        header[data.draw(st.text(max_size=6))] = data.draw(finite_json)
    arrays = data.draw(st.lists(st.binary(max_size=48), min_size=1, max_size=1)) if cls in (MaskedInput, RoundStart) else []
    check_invariant([VERSION, cls.__name__.encode(), json.dumps(header).encode(), *arrays])


# --- mutations of valid encodings -----------------------------------------------------------------


def _mutate_bytes(data: st.DataObject, frame: bytes) -> bytes:
    op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "extend"]))
    if op in ("flip", "delete") and not frame:
        op = "insert"
    if op == "flip":
        at = data.draw(st.integers(0, len(frame) - 1))
        return frame[:at] + bytes([frame[at] ^ data.draw(st.integers(1, 255))]) + frame[at + 1 :]
    if op == "insert":
        at = data.draw(st.integers(0, len(frame)))
        return frame[:at] + data.draw(st.binary(min_size=1, max_size=4)) + frame[at:]
    if op == "delete":
        at = data.draw(st.integers(0, len(frame) - 1))
        return frame[:at] + frame[at + data.draw(st.integers(1, 4)) :]
    if op == "truncate":
        return frame[: data.draw(st.integers(0, len(frame)))]
    return frame + data.draw(st.binary(min_size=1, max_size=8))


def _mutate_frames(data: st.DataObject, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    op = data.draw(st.sampled_from(["bytes", "bytes", "bytes", "drop", "duplicate", "swap", "append"]))
    # Mostly the header and array frames: version and type are all-or-nothing checks.
    index = data.draw(st.sampled_from([*range(min(2, len(frames))), *[i for i in range(2, len(frames)) for _ in range(3)]]))
    if op == "bytes":
        frames[index] = _mutate_bytes(data, frames[index])
    elif op == "drop":
        del frames[index]
    elif op == "duplicate":
        frames.insert(index, frames[index])
    elif op == "swap":
        other = data.draw(st.integers(0, len(frames) - 1))
        frames[index], frames[other] = frames[other], frames[index]
    else:
        frames.append(data.draw(st.binary(max_size=16)))
    return frames


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every node of a JSON tree, as the key/index path that leads to it."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _mutate_node(data: st.DataObject, value: Any) -> Any:
    ops = ["replace"]
    if isinstance(value, dict):
        ops += ["delete-key", "add-key", "as-list"] if value else ["add-key"]
    elif isinstance(value, list):
        ops += ["drop", "duplicate", "reverse", "append", "empty", "as-object"] if value else ["append"]
    elif isinstance(value, bool):
        ops += ["as-int"]
    elif isinstance(value, int):
        ops += ["nudge", "as-float", "as-string", "as-bool", "as-list"]
    elif isinstance(value, str):
        ops += ["edit", "edit", "truncate", "double", "as-list"]
    op = data.draw(st.sampled_from(ops))
    if op == "replace":
        return data.draw(any_json)
    if op == "delete-key":
        del value[data.draw(st.sampled_from(sorted(value)))]
        return value
    if op == "add-key":
        value[data.draw(st.text(max_size=8))] = data.draw(any_json)
        return value
    if op == "as-list":
        return [value] if not isinstance(value, dict) else list(value.values())
    if op == "as-object":
        return {str(index): item for index, item in enumerate(value)}
    if op == "drop":
        del value[data.draw(st.integers(0, len(value) - 1))]
        return value
    if op == "duplicate":
        at = data.draw(st.integers(0, len(value) - 1))
        return value[: at + 1] + value[at:]
    if op == "reverse":
        return value[::-1]
    if op == "append":
        return [*value, data.draw(any_json)]
    if op == "empty":
        return []
    if op == "as-int":
        return int(value)
    if op == "nudge":
        return value + data.draw(st.sampled_from([-1, 1, -(2**32), 2**63, 10**30]))
    if op == "as-float":
        return float(value)
    if op == "as-string":
        return str(value)
    if op == "as-bool":
        return bool(value)
    if op == "edit":  # one character changed, inserted or removed (base64 text, names, dtypes)
        at = data.draw(st.integers(0, len(value)))
        char = data.draw(st.sampled_from(["A", "/", "+", "=", "-", "_", "!", " ", "\n", "\x00", "é", "\ud800", "<", ">"]))
        cut = data.draw(st.integers(0, 1))
        return value[:at] + char + value[at + cut :]
    if op == "truncate":
        return value[: data.draw(st.integers(0, len(value)))]
    return value + value  # double


def _mutate_json(data: st.DataObject, header: Any) -> Any:
    """Change one node of the header, chosen uniformly among all its nodes."""
    path = data.draw(st.sampled_from(_paths(header)))
    if not path:
        return _mutate_node(data, header)
    parent = header
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = _mutate_node(data, parent[path[-1]])
    return header


FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(envelopes, st.data())
def test_mutated_frames(envelope: Envelope, data: st.DataObject) -> None:
    frames = encode(envelope)
    for _ in range(data.draw(st.integers(1, 3))):
        if not frames:
            break
        frames = _mutate_frames(data, frames)
    check_invariant(frames)


@FUZZ
@given(envelopes, st.data())
def test_mutated_headers(envelope: Envelope, data: st.DataObject) -> None:
    frames = encode(envelope)
    header = json.loads(frames[2])
    for _ in range(data.draw(st.integers(1, 3))):
        header = _mutate_json(data, header)
    text = json.dumps(header, ensure_ascii=data.draw(st.booleans()))  # NaN/Infinity tokens and raw surrogates included
    check_invariant([frames[0], frames[1], text.encode("utf-8", "surrogatepass"), *frames[3:]])


@FUZZ
@given(st.sampled_from(sorted(BODIES, key=lambda cls: cls.__name__)), st.data())
def test_mutated_header_keeps_version_and_type(cls: type, data: st.DataObject) -> None:
    """Aim the mutations at one message type at a time, so each type's validation is fuzzed."""
    frames = encode(Envelope("task", 1, data.draw(BODIES[cls])))
    header = json.loads(frames[2])
    for _ in range(data.draw(st.integers(1, 2))):
        header = _mutate_json(data, header)
    check_invariant([frames[0], frames[1], json.dumps(header).encode(), *frames[3:]])
