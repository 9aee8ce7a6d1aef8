"""Hypothesis invariants of the wire codec.

1. Round trip: ``decode(encode(e)) == e`` for generated valid envelopes of every type.
2. Field by field, against an independent oracle: the ``(id, bytes)`` pair fields, the
   id lists and the byte-string fields accept exactly the valid values (strictly
   increasing ids in range, canonical base64 of the field's size) and refuse a valid
   value with one fault planted in it.
3. h11's invariant: ``decode`` of *any* frames returns an Envelope or raises
   ``RemoteProtocolError`` with a documented reason, never anything else; and
   whatever it returns is valid (it encodes again and round-trips). Inputs are
   arbitrary frame lists, structured-but-random frames, and mutations of valid
   encodings at the byte, frame and JSON level.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
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
    SeedReveal,
    SeedRevealList,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.wire import DEFAULT_LIMITS, MAX_SPEC_DEPTH, MESSAGE_TYPES, REASONS, VERSION, decode, encode
from securefed.wire.codec import SPEC_INT_MAX, SPEC_INT_MIN

# --- valid envelopes ----------------------------------------------------------------------

ids = st.integers(1, 65535)
sorted_ids = st.lists(ids, unique=True, max_size=6).map(lambda values: tuple(sorted(values)))
blobs = st.binary(min_size=1, max_size=80)
names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)


def pairs(second: st.SearchStrategy) -> st.SearchStrategy:
    return st.dictionaries(ids, second, max_size=5).map(lambda d: tuple(sorted(d.items())))


bytes32 = st.binary(min_size=32, max_size=32)  # keys, seed commitments, seed reveal values
bytes64 = st.binary(min_size=64, max_size=64)  # signatures, share commitment pairs (s || b)
advertise = st.builds(AdvertiseKeys, ids, bytes32, bytes32, bytes32, bytes64)


@st.composite
def share_keys(draw: st.DrawFn) -> ShareKeys:
    """Either as a dealer sends it (commitments for every holder, the dealer included; ciphertexts for the
    others) or with unrelated id sets (the codec checks form, the state machines check consistency)."""
    sender = draw(ids)
    if draw(st.booleans()):
        holders = sorted({sender, *draw(st.lists(ids, max_size=5))})
        ciphertexts = tuple((holder, draw(blobs)) for holder in holders if holder != sender)
        commitments = tuple((holder, draw(bytes64)) for holder in holders)
    else:
        ciphertexts, commitments = draw(pairs(blobs)), draw(pairs(bytes64))
    return ShareKeys(sender, ciphertexts, commitments, draw(bytes64), draw(bytes32))


@st.composite
def share_relays(draw: st.DrawFn) -> ShareRelay:
    """Either as the coordinator relays it (the same senders in both lists) or with unrelated id sets."""
    if draw(st.booleans()):
        senders = draw(sorted_ids)
        return ShareRelay(tuple((s, draw(blobs)) for s in senders), tuple((s, draw(bytes64)) for s in senders))
    return ShareRelay(draw(pairs(blobs)), draw(pairs(bytes64)))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(SPEC_INT_MIN, SPEC_INT_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)


@functools.cache
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
    SeedReveal: st.builds(SeedReveal, ids, bytes32),
    ShareKeys: share_keys(),
    MaskedInput: st.builds(MaskedInput, ids, vectors, sorted_ids),
    ConsistencySignature: st.builds(ConsistencySignature, ids, bytes64),
    UnmaskShares: st.builds(UnmaskShares, ids, pairs(blobs), pairs(blobs)),
    KeyList: st.lists(advertise, unique_by=lambda a: a.sender, max_size=4).map(
        lambda entries: KeyList(tuple(sorted(entries, key=lambda a: a.sender)))
    ),
    SeedRevealList: st.builds(SeedRevealList, pairs(bytes32)),
    ShareRelay: share_relays(),
    ConsistencyRequest: st.builds(ConsistencyRequest, sorted_ids),
    UnmaskRequest: st.builds(UnmaskRequest, sorted_ids, sorted_ids, pairs(bytes64)),
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


@given(st.sampled_from(sorted(BODIES, key=lambda cls: cls.__name__)), st.data())
def test_round_trip_per_type(cls: type, data: st.DataObject) -> None:
    """The same, one type at a time, so every type (the reveal stage's and the commitments' too) is drawn."""
    envelope = Envelope(data.draw(names), data.draw(st.integers(0, 2**63 - 1)), data.draw(BODIES[cls]))
    decoded = decode(encode(envelope))
    assert decoded == envelope and type(decoded.body) is cls


# --- pair fields against an oracle --------------------------------------------------------------

# Every (id, bytes) list field, with the size its byte strings must have (None: 1..max_blob_bytes).
PAIR_FIELDS: dict[tuple[type, str], int | None] = {
    (ShareKeys, "ciphertexts"): None,
    (ShareKeys, "commitments"): 64,
    (UnmaskShares, "b_shares"): None,
    (UnmaskShares, "s_shares"): None,
    (SeedRevealList, "reveals"): 32,
    (ShareRelay, "ciphertexts"): None,
    (ShareRelay, "commitments"): 64,
    (UnmaskRequest, "signatures"): 64,
}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def test_pair_field_table_is_complete() -> None:
    """Every field typed as a tuple of (int, bytes) pairs is in the oracle's table."""
    found = {
        (cls, field.name)
        for cls in MESSAGE_TYPES.values()
        for field in dataclasses.fields(cls)
        if str(field.type).replace(" ", "") == "tuple[tuple[int,bytes],...]"
    }
    assert found == set(PAIR_FIELDS)


def _mangle_base64(data: st.DataObject, raw: bytes) -> str:
    """A string close to the canonical base64 of ``raw`` that is not canonical base64 of anything (or is ``raw``'s own)."""
    text = base64.b64encode(raw).decode("ascii")
    ops = ["no-padding", "urlsafe", "newline", "space", "extra-padding", "truncate"] + (
        ["unused-bits"] * 3 if len(raw) % 3 else []
    )
    op = data.draw(st.sampled_from(ops))
    if op == "unused-bits":  # decodes to the same bytes: only the canonical check can refuse it
        body = text.rstrip("=")
        bits = data.draw(st.integers(1, 3 if len(raw) % 3 == 2 else 15))
        return body[:-1] + _ALPHABET[_ALPHABET.index(body[-1]) | bits] + text[len(body) :]
    if op == "no-padding":
        return text.rstrip("=")
    if op == "urlsafe":
        return text.replace("+", "-").replace("/", "_")
    if op in ("newline", "space"):
        at = data.draw(st.integers(0, len(text)))
        return text[:at] + ("\n" if op == "newline" else " ") + text[at:]
    if op == "extra-padding":
        return text + "="
    return text[: len(text) - data.draw(st.integers(1, min(3, len(text))))]  # truncate: never a whole 4-character group


@pytest.mark.parametrize("key", PAIR_FIELDS, ids=[f"{cls.__name__}.{field}" for cls, field in PAIR_FIELDS])
@given(data=st.data())
def test_pair_fields_accept_exactly_the_valid_lists(key: tuple[type, str], data: st.DataObject) -> None:
    """A valid list with at most one fault planted (so no other fault hides it), judged by an independent oracle."""
    cls, field = key
    size = PAIR_FIELDS[key]
    high = DEFAULT_LIMITS.max_blob_bytes
    fault = data.draw(st.sampled_from(["none", "id-range", "id-type", "size", "base64", "unsorted", "duplicate"]))
    lengths = st.just(size) if size else st.sampled_from([1, 2, 31, 32, 64, 65, high])
    least = {"none": 0, "unsorted": 2, "duplicate": 2}.get(fault, 1)
    items = data.draw(
        st.lists(
            st.tuples(st.integers(1, 65535), lengths, st.integers(0, 255)),
            min_size=least,
            max_size=5,
            unique_by=lambda item: item[0],
        )
    )
    ids_: list[Any] = sorted(item[0] for item in items)
    raws = [bytes([fill]) * length for (_, length, fill) in sorted(items)]
    texts_ = [base64.b64encode(raw).decode("ascii") for raw in raws]
    at = data.draw(st.integers(0, len(items) - 1)) if items else 0
    if fault == "id-range":
        ids_[at] = data.draw(st.sampled_from([0, -1, 65536, 2**31]))
    elif fault == "id-type":
        ids_[at] = data.draw(st.sampled_from([True, float(ids_[at]), str(ids_[at]), None, [ids_[at]]]))
    elif fault == "size":
        wrong = [size - 1, size + 1, 0, 32 if size == 64 else 64] if size else [0, high + 1]
        raws[at] = bytes([data.draw(st.integers(0, 255))]) * data.draw(st.sampled_from(wrong))
        texts_[at] = base64.b64encode(raws[at]).decode("ascii")
    elif fault == "base64":
        texts_[at] = _mangle_base64(data, raws[at])
    elif fault == "unsorted":
        at = min(at, len(items) - 2)
        ids_[at], ids_[at + 1] = ids_[at + 1], ids_[at]
    elif fault == "duplicate":
        at = min(at, len(items) - 2)
        ids_[at + 1] = ids_[at]
    valid = (
        all(type(i) is int and 1 <= i <= 65535 for i in ids_)
        and all(a < b for a, b in zip(ids_, ids_[1:]))
        and all((len(raw) == size) if size else (1 <= len(raw) <= high) for raw in raws)
        and all(text == base64.b64encode(raw).decode("ascii") for raw, text in zip(raws, texts_))
    )
    event(f"fault: {fault}, {'valid' if valid else 'invalid'}")
    template = encode(Envelope("task", 1, data.draw(BODIES[cls])))
    header = json.loads(template[2])
    header[field] = [[i, text] for i, text in zip(ids_, texts_)]
    frames = [template[0], template[1], json.dumps(header).encode(), *template[3:]]
    if valid:
        assert getattr(decode(frames).body, field) == tuple(zip(ids_, raws))
    else:
        try:
            decode(frames)
        except RemoteProtocolError as error:
            assert error.reason == "bad-field", error
        else:
            raise AssertionError(f"{cls.__name__}.{field} accepted {header[field]!r} ({fault})")


# Every list-of-ids field.
IDS_FIELDS = [
    (MaskedInput, "bad_dealers"),
    (ConsistencyRequest, "survivors"),
    (UnmaskRequest, "survivors"),
    (UnmaskRequest, "dropped"),
]


def test_ids_field_table_is_complete() -> None:
    found = {(cls, f.name) for cls in MESSAGE_TYPES.values() for f in dataclasses.fields(cls) if str(f.type) == "tuple[int, ...]"}
    assert found == set(IDS_FIELDS)


@pytest.mark.parametrize("key", IDS_FIELDS, ids=[f"{cls.__name__}.{field}" for cls, field in IDS_FIELDS])
@given(data=st.data())
def test_ids_fields_accept_exactly_strictly_increasing_ids(key: tuple[type, str], data: st.DataObject) -> None:
    cls, field = key
    fault = data.draw(st.sampled_from(["none", "id-range", "id-type", "unsorted", "duplicate"]))
    values: list[Any] = sorted(data.draw(st.lists(ids, unique=True, min_size=0 if fault == "none" else 2, max_size=6)))
    at = data.draw(st.integers(0, len(values) - 2)) if len(values) > 1 else 0
    if fault == "id-range":
        values[at] = data.draw(st.sampled_from([0, -1, 65536, 2**40]))
    elif fault == "id-type":
        values[at] = data.draw(st.sampled_from([True, float(values[at]), str(values[at]), None, [values[at]]]))
    elif fault == "unsorted":
        values[at], values[at + 1] = values[at + 1], values[at]
    elif fault == "duplicate":
        values[at + 1] = values[at]
    valid = all(type(i) is int and 1 <= i <= 65535 for i in values) and all(a < b for a, b in zip(values, values[1:]))
    event(f"fault: {fault}, {'valid' if valid else 'invalid'}")
    template = encode(Envelope("task", 1, data.draw(BODIES[cls])))
    header = json.loads(template[2])
    header[field] = values
    frames = [template[0], template[1], json.dumps(header).encode(), *template[3:]]
    if valid:
        assert getattr(decode(frames).body, field) == tuple(values)
    else:
        try:
            decode(frames)
        except RemoteProtocolError as error:
            assert error.reason == "bad-field", error
        else:
            raise AssertionError(f"{cls.__name__}.{field} accepted {values!r} ({fault})")


# Every byte-string field (all fixed-size), and the same fields inside a KeyList entry.
BYTES_FIELDS: dict[tuple[type, str], int] = {
    (AdvertiseKeys, "c_pk"): 32,
    (AdvertiseKeys, "s_pk"): 32,
    (AdvertiseKeys, "seed_commitment"): 32,
    (AdvertiseKeys, "signature"): 64,
    (SeedReveal, "value"): 32,
    (ShareKeys, "signature"): 64,
    (ShareKeys, "mask_commitment"): 32,
    (ConsistencySignature, "signature"): 64,
}


def test_bytes_field_table_is_complete() -> None:
    found = {(cls, f.name) for cls in MESSAGE_TYPES.values() for f in dataclasses.fields(cls) if str(f.type) == "bytes"}
    assert found == set(BYTES_FIELDS)


BYTES_CASES = [(key, False) for key in BYTES_FIELDS] + [(key, True) for key in BYTES_FIELDS if key[0] is AdvertiseKeys]


@pytest.mark.parametrize(
    "key, in_key_list",
    BYTES_CASES,
    ids=[f"{'KeyList.entries.' if inside else ''}{c.__name__}.{f}" for (c, f), inside in BYTES_CASES],
)
@given(data=st.data())
def test_bytes_fields_accept_exactly_canonical_base64_of_their_size(
    key: tuple[type, str], in_key_list: bool, data: st.DataObject
) -> None:
    """One field at a time: right size and canonical base64 decodes to those bytes; one planted fault is refused."""
    cls, field = key
    size = BYTES_FIELDS[key]
    fault = data.draw(st.sampled_from(["none", "size", "base64", "type"]))
    raw = data.draw(st.binary(min_size=size, max_size=size))
    text: Any = base64.b64encode(raw).decode("ascii")
    if fault == "size":
        raw = data.draw(st.sampled_from([raw[:-1], raw + b"\x00", b"", raw[:32] if size == 64 else raw + raw]))
        text = base64.b64encode(raw).decode("ascii")
    elif fault == "base64":
        text = _mangle_base64(data, raw)
    elif fault == "type":
        text = data.draw(st.sampled_from([None, size, list(raw), {"b64": text}, [text]]))
    valid = type(text) is str and len(raw) == size and text == base64.b64encode(raw).decode("ascii")
    event(f"fault: {fault}, {'valid' if valid else 'invalid'}")
    if in_key_list:
        body = KeyList((data.draw(advertise),))
        template = encode(Envelope("task", 1, body))
        header = json.loads(template[2])
        header["entries"][0][field] = text
    else:
        template = encode(Envelope("task", 1, data.draw(BODIES[cls])))
        header = json.loads(template[2])
        header[field] = text
    frames = [template[0], template[1], json.dumps(header).encode(), *template[3:]]
    if valid:
        body = decode(frames).body
        assert getattr(body.entries[0] if in_key_list else body, field) == raw
    else:
        try:
            decode(frames)
        except RemoteProtocolError as error:
            assert error.reason == "bad-field", error
        else:
            raise AssertionError(f"{cls.__name__}.{field} accepted {text!r} ({fault})")


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
        st.sampled_from(["", "AAAA", "eA==", "<u4", "<f8", "\ud800", "a\nb", "A" * 43 + "=", "A" * 86 + "==", "A" * 43 + "B"]),
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
