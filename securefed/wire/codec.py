"""Typed envelopes <-> ZeroMQ multipart frames, with strict validation.

Theory of operation
-------------------
A message on the wire is a list of frames::

    [VERSION, type name, JSON header, *raw array frames]

``VERSION`` is ``b"SF1"``. The type name is the body's class name, looked up
in a fixed registry (:data:`MESSAGE_TYPES`); nothing else is ever
instantiated. The header is one flat UTF-8 JSON object holding ``task``,
``aggregation`` and the body's fields, under exactly the keys of that message
type. Byte strings travel as canonical standard base64; ``(id, x)`` pairs as
2-element lists; ``KeyList.entries`` as a list of ``AdvertiseKeys`` field
objects. A numpy array field is described in the header by
``{"dtype": "<u4", "shape": [d]}`` and its data is the next raw frame,
little-endian, in field order.

``decode`` works from the cheap checks to the expensive ones, so a hostile
peer can make it spend no more than a linear pass over bytes it already had
to receive: frame count and types, version, total and per-frame sizes
(:class:`Limits`), type name, the header's bracket nesting depth (a linear
scan, before ``json.loads`` can recurse), then the JSON parse itself (no
NaN/Infinity, no overflowing floats, no duplicate keys, no huge integers),
then every field against its schema, and only then ``np.frombuffer`` over an
array frame whose dtype, shape and exact byte length were checked against the
descriptor and against the one dtype allowed for that field.

The invariant (h11's, adopted for this codec): ``decode`` of *any* input
returns a valid :class:`~securefed.federation.messages.Envelope` or raises
:class:`~securefed.errors.RemoteProtocolError` with a short ``reason`` code
(:data:`REASONS`), never any other exception. "Valid" means ``encode`` accepts
it again and ``decode(encode(e)) == e``.

``encode`` runs the very same field validation over the header it built
before serialising it, so we never send what a peer with the same limits
would refuse; it raises :class:`~securefed.errors.LocalProtocolError` (we
were misused) for a body it cannot send.

Arrays that ``decode`` returns are **read-only** native-endian views over the
received frame (zero copy; the frame stays alive as long as the array does).
Call ``.copy()`` to get a writable array. On a big-endian host they are
read-only native copies instead.

No pickle, no eval: the only parsers are ``json``, ``base64`` and
``np.frombuffer`` with a fixed, non-object dtype.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from securefed.errors import InvalidParameter, LocalProtocolError, RemoteProtocolError
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

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_SPEC_DEPTH",
    "MESSAGE_TYPES",
    "REASONS",
    "VERSION",
    "Limits",
    "decode",
    "encode",
    "max_message_size",
]

VERSION = b"SF1"

MAX_ID = 0xFFFF
MAX_AGGREGATION = (1 << 63) - 1
#: Round specs nest: spec > computation > request > previous trees > round > tree > value rows
#: (a boosting request), or spec > model > options > computations > one > params > bounds.
MAX_SPEC_DEPTH = 10
KEY_SIZE = 32
SIGNATURE_SIZE = 64
COMMITMENT_SIZE = 32
SHARE_COMMITMENT_SIZE = 2 * COMMITMENT_SIZE
# Integers inside RoundStart.spec: anything an int64 or a uint64 can hold.
SPEC_INT_MIN = -(1 << 63)
SPEC_INT_MAX = (1 << 64) - 1

_MIB = 1 << 20
_MAX_TYPE_NAME = 64

REASONS = frozenset(
    {
        "bad-frames",  # not a list of bytes frames, or the wrong number of frames for the type
        "bad-version",  # first frame is not VERSION
        "too-large",  # a limit was exceeded (checked before anything is parsed)
        "unknown-type",  # type name not in the registry
        "bad-header",  # header is not UTF-8 JSON object with exactly the type's keys
        "bad-field",  # a field has the wrong type, range, length or order
        "bad-array",  # array descriptor or frame does not match what the field allows
    }
)


@dataclass(frozen=True)
class Limits:
    """Size limits that :func:`decode` enforces before parsing anything.

    ``max_frames`` counts all frames; ``max_header_bytes`` is the JSON frame;
    ``max_array_bytes`` is any one array frame; ``max_total_bytes`` is the sum
    of all frames. ``max_list_length`` bounds every list in the header,
    ``max_string`` every string (in characters, keys in ``spec`` included),
    ``max_vector_length`` the element count of an array, and
    ``max_blob_bytes`` the decoded size of a variable-length byte field
    (ciphertexts, shares).
    """

    max_frames: int = 4  # version, type, header and at most one array
    max_header_bytes: int = 8 * _MIB
    max_array_bytes: int = 512 * _MIB
    max_total_bytes: int = 8 * _MIB + 512 * _MIB + 4096
    max_list_length: int = 65535
    max_string: int = 4096
    max_vector_length: int = 100_000_000
    max_blob_bytes: int = 4096

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                raise InvalidParameter(f"Limits.{field.name} must be a positive integer, got {value!r}")
        if self.max_frames < 3:
            raise InvalidParameter("Limits.max_frames must be at least 3 (version, type, header)")


DEFAULT_LIMITS = Limits()


def max_message_size(limits: Limits = DEFAULT_LIMITS) -> int:
    """The value for ``zmq.MAXMSGSIZE`` that goes with ``limits``.

    libzmq applies ``MAXMSGSIZE`` to each part of a multipart message, not to
    the sum, so this is the largest single frame a message within ``limits``
    can have; :func:`decode` still checks the frame count and the total.
    """
    if not isinstance(limits, Limits):
        raise InvalidParameter("limits must be a Limits instance")
    return min(limits.max_total_bytes, max(limits.max_header_bytes, limits.max_array_bytes, len(VERSION), _MAX_TYPE_NAME))


# --- errors ------------------------------------------------------------------


def _fail(reason: str, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason)


# --- field kinds ---------------------------------------------------------------
#
# Each kind turns a Python value into its JSON form (``dump``, strict about the
# Python types whose JSON form would not come back equal) and validates a JSON
# value into the Python value (``load``, strict about everything). ``load`` is
# run on both paths, so encode and decode accept exactly the same things.

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Kind:
    arrays = 0  # raw frames the field consumes

    def dump(self, value: Any, limits: Limits, where: str, frames: list[bytes]) -> Any:
        return value

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> Any:
        raise NotImplementedError


class _Int(_Kind):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> int:
        if type(value) is not int or not self.low <= value <= self.high:
            raise _fail("bad-field", f"{where}: expected an integer in {self.low}..{self.high}")
        return value


_ID = _Int(1, MAX_ID)


class _Bool(_Kind):
    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> bool:
        if type(value) is not bool:
            raise _fail("bad-field", f"{where}: expected true or false")
        return value


def _check_text(value: Any, limits: Limits, where: str) -> str:
    if type(value) is not str or len(value) > limits.max_string:
        raise _fail("bad-field", f"{where}: expected a string of at most {limits.max_string} characters")
    if _SURROGATE.search(value):
        raise _fail("bad-field", f"{where}: string is not valid Unicode")
    return value


class _Str(_Kind):
    """A string; ``name`` strings (tasks, node names, reason codes) are non-empty, one line, no control characters."""

    def __init__(self, name: bool) -> None:
        self.name = name

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> str:
        text = _check_text(value, limits, where)
        if self.name and (not text or _CONTROL.search(text)):
            raise _fail("bad-field", f"{where}: expected a non-empty name without control characters")
        return text


class _Bytes(_Kind):
    """Bytes as canonical standard base64; exactly ``size`` bytes, or 1..max_blob_bytes."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def _bounds(self, limits: Limits) -> tuple[int, int]:
        return (self.size, self.size) if self.size is not None else (1, limits.max_blob_bytes)

    def dump(self, value: Any, limits: Limits, where: str, frames: list[bytes]) -> Any:
        if type(value) is not bytes:
            raise LocalProtocolError(f"{where}: expected bytes, got {type(value).__name__}")
        return base64.b64encode(value).decode("ascii")

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> bytes:
        low, high = self._bounds(limits)
        wanted = f"{low} bytes" if low == high else f"{low}..{high} bytes"
        # Length of the base64 text first: never decode more than the field may hold.
        if type(value) is not str or not 4 * -(-low // 3) <= len(value) <= 4 * -(-high // 3):
            raise _fail("bad-field", f"{where}: expected base64 of {wanted}")
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise _fail("bad-field", f"{where}: invalid base64") from None
        if not low <= len(raw) <= high:
            raise _fail("bad-field", f"{where}: expected {wanted}")
        if base64.b64encode(raw) != value.encode("ascii"):
            raise _fail("bad-field", f"{where}: non-canonical base64")
        return raw


def _check_list(value: Any, limits: Limits, where: str) -> list:
    if type(value) is not list or len(value) > limits.max_list_length:
        raise _fail("bad-field", f"{where}: expected a list of at most {limits.max_list_length} items")
    return value


def _check_tuple(value: Any, where: str) -> tuple:
    if type(value) is not tuple:
        raise LocalProtocolError(f"{where}: expected a tuple, got {type(value).__name__}")
    return value


class _Ids(_Kind):
    """A strictly increasing list of ids -> tuple of ints."""

    def dump(self, value: Any, limits: Limits, where: str, frames: list[bytes]) -> Any:
        return list(_check_tuple(value, where))

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> tuple[int, ...]:
        previous = 0
        for item in _check_list(value, limits, where):
            _ID.load(item, limits, where, frames)
            if item <= previous:
                raise _fail("bad-field", f"{where}: ids must be strictly increasing")
            previous = item
        return tuple(value)


class _Pairs(_Kind):
    """``[[id, x], ...]`` with strictly increasing ids -> tuple of ``(id, x)`` tuples."""

    def __init__(self, second: _Kind) -> None:
        self.second = second

    def dump(self, value: Any, limits: Limits, where: str, frames: list[bytes]) -> Any:
        out = []
        for pair in _check_tuple(value, where):
            if type(pair) is not tuple or len(pair) != 2:
                raise LocalProtocolError(f"{where}: expected (id, value) tuples")
            out.append([pair[0], self.second.dump(pair[1], limits, where, frames)])
        return out

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> tuple[tuple[int, Any], ...]:
        previous = 0
        out = []
        for pair in _check_list(value, limits, where):
            if type(pair) is not list or len(pair) != 2:
                raise _fail("bad-field", f"{where}: expected [id, value] pairs")
            ident = _ID.load(pair[0], limits, where, frames)
            if ident <= previous:
                raise _fail("bad-field", f"{where}: ids must be strictly increasing")
            previous = ident
            out.append((ident, self.second.load(pair[1], limits, where, frames)))
        return tuple(out)


_ADVERTISE_FIELDS = {
    "sender": _ID,
    "c_pk": _Bytes(KEY_SIZE),
    "s_pk": _Bytes(KEY_SIZE),
    "seed_commitment": _Bytes(COMMITMENT_SIZE),
    "signature": _Bytes(SIGNATURE_SIZE),
}


class _Entries(_Kind):
    """KeyList entries: AdvertiseKeys field objects, strictly increasing by sender."""

    def dump(self, value: Any, limits: Limits, where: str, frames: list[bytes]) -> Any:
        out = []
        for entry in _check_tuple(value, where):
            if type(entry) is not AdvertiseKeys:
                raise LocalProtocolError(f"{where}: expected AdvertiseKeys entries")
            out.append({name: kind.dump(getattr(entry, name), limits, where, frames) for name, kind in _ADVERTISE_FIELDS.items()})
        return out

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> tuple[AdvertiseKeys, ...]:
        previous = 0
        out = []
        for item in _check_list(value, limits, where):
            if type(item) is not dict or item.keys() != _ADVERTISE_FIELDS.keys():
                raise _fail("bad-field", f"{where}: expected objects with keys {sorted(_ADVERTISE_FIELDS)}")
            entry = AdvertiseKeys(
                **{name: kind.load(item[name], limits, f"{where}.{name}", frames) for name, kind in _ADVERTISE_FIELDS.items()}
            )
            if entry.sender <= previous:
                raise _fail("bad-field", f"{where}: senders must be strictly increasing")
            previous = entry.sender
            out.append(entry)
        return tuple(out)


class _Spec(_Kind):
    """A JSON object of round parameters: depth <= MAX_SPEC_DEPTH, finite floats, bounded ints, lists and strings."""

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> dict:
        if type(value) is not dict:
            raise _fail("bad-field", f"{where}: expected a JSON object")
        self._check(value, 1, limits, where)
        return value

    def _check(self, value: Any, depth: int, limits: Limits, where: str) -> None:
        kind = type(value)
        if kind is dict or kind is list:
            if depth > MAX_SPEC_DEPTH:
                raise _fail("bad-field", f"{where}: nested deeper than {MAX_SPEC_DEPTH}")
            if len(value) > limits.max_list_length:
                raise _fail("bad-field", f"{where}: more than {limits.max_list_length} items")
            if kind is dict:
                for key, item in value.items():
                    _check_text(key, limits, where)
                    self._check(item, depth + 1, limits, where)
            else:
                for item in value:
                    self._check(item, depth + 1, limits, where)
        elif kind is str:
            _check_text(value, limits, where)
        elif kind is int:
            if not SPEC_INT_MIN <= value <= SPEC_INT_MAX:
                raise _fail("bad-field", f"{where}: integer out of the 64-bit range")
        elif kind is float:
            if not math.isfinite(value):
                raise _fail("bad-field", f"{where}: NaN and infinities are not allowed")
        elif not (kind is bool or value is None):
            raise _fail("bad-field", f"{where}: {kind.__name__} is not a JSON value")


class _Array(_Kind):
    """A 1-D array of one fixed dtype, described in the header, data in the next raw frame."""

    arrays = 1

    def __init__(self, dtype: str, min_length: int, finite: bool = False) -> None:
        self.wire = np.dtype(dtype)  # what travels: little-endian
        self.native = self.wire.newbyteorder("=")  # what callers get and give
        self.descriptor = dtype
        self.min_length = min_length
        self.finite = finite

    def dump(self, value: Any, limits: Limits, where: str, frames: list[bytes]) -> Any:
        if not isinstance(value, np.ndarray) or value.dtype != self.native or value.ndim != 1:
            raise LocalProtocolError(f"{where}: expected a 1-D numpy array of dtype {self.native}")
        frames.append(value.astype(self.wire, copy=False).tobytes())
        return {"dtype": self.descriptor, "shape": [int(value.shape[0])]}

    def load(self, value: Any, limits: Limits, where: str, frames: Iterator[bytes]) -> np.ndarray:
        frame = next(frames)  # the frame count was checked against the type before any field is read
        if type(value) is not dict or value.keys() != {"dtype", "shape"}:
            raise _fail("bad-array", f"{where}: expected an array descriptor {{dtype, shape}}")
        if value["dtype"] != self.descriptor:
            raise _fail("bad-array", f"{where}: dtype must be {self.descriptor!r}")
        shape = value["shape"]
        if type(shape) is not list or len(shape) != 1:
            raise _fail("bad-array", f"{where}: shape must be [length]")
        length = shape[0]
        if type(length) is not int or not self.min_length <= length <= limits.max_vector_length:
            raise _fail("bad-array", f"{where}: length must be in {self.min_length}..{limits.max_vector_length}")
        size = length * self.wire.itemsize
        if size > limits.max_array_bytes:
            raise _fail("too-large", f"{where}: array larger than {limits.max_array_bytes} bytes")
        if len(frame) != size:
            raise _fail("bad-array", f"{where}: array frame has {len(frame)} bytes, descriptor says {size}")
        array = np.frombuffer(frame, dtype=self.wire)
        if array.dtype != self.native:  # big-endian host
            array = array.astype(self.native)
        array.flags.writeable = False
        if self.finite and not np.isfinite(array).all():
            raise _fail("bad-array", f"{where}: NaN or infinite values")
        return array


# --- the registry --------------------------------------------------------------


@dataclass(frozen=True)
class _Schema:
    cls: type
    fields: dict[str, _Kind]

    @property
    def arrays(self) -> int:
        return sum(kind.arrays for kind in self.fields.values())


_ENVELOPE_FIELDS: dict[str, _Kind] = {"task": _Str(name=True), "aggregation": _Int(0, MAX_AGGREGATION)}
_ANY_TEXT = _Str(name=False)
_NAME = _Str(name=True)

_SCHEMAS: tuple[_Schema, ...] = (
    _Schema(AdvertiseKeys, dict(_ADVERTISE_FIELDS)),
    _Schema(SeedReveal, {"sender": _ID, "value": _Bytes(KEY_SIZE)}),
    _Schema(
        ShareKeys,
        {
            "sender": _ID,
            "ciphertexts": _Pairs(_Bytes()),
            "commitments": _Pairs(_Bytes(SHARE_COMMITMENT_SIZE)),
            "signature": _Bytes(SIGNATURE_SIZE),
            "mask_commitment": _Bytes(COMMITMENT_SIZE),
        },
    ),
    _Schema(MaskedInput, {"sender": _ID, "vector": _Array("<u4", min_length=1), "bad_dealers": _Ids()}),
    _Schema(ConsistencySignature, {"sender": _ID, "signature": _Bytes(SIGNATURE_SIZE)}),
    _Schema(UnmaskShares, {"sender": _ID, "b_shares": _Pairs(_Bytes()), "s_shares": _Pairs(_Bytes())}),
    _Schema(KeyList, {"entries": _Entries()}),
    _Schema(SeedRevealList, {"reveals": _Pairs(_Bytes(KEY_SIZE))}),
    _Schema(ShareRelay, {"ciphertexts": _Pairs(_Bytes()), "commitments": _Pairs(_Bytes(SHARE_COMMITMENT_SIZE))}),
    _Schema(ConsistencyRequest, {"survivors": _Ids()}),
    _Schema(UnmaskRequest, {"survivors": _Ids(), "dropped": _Ids(), "signatures": _Pairs(_Bytes(SIGNATURE_SIZE))}),
    _Schema(RoundAborted, {"reason": _NAME}),
    _Schema(Hello, {"node": _NAME, "busy": _Bool()}),
    _Schema(Refusal, {"reason": _NAME, "detail": _ANY_TEXT}),
    _Schema(
        RoundStart,
        {"node_id": _ID, "cohort": _Pairs(_NAME), "spec": _Spec(), "model": _Array("<f8", min_length=0, finite=True)},
    ),
    _Schema(RoundResult, {"completed": _Bool(), "participants": _Int(0, MAX_ID), "detail": _ANY_TEXT}),
)

for _schema in _SCHEMAS:  # the registry must describe every dataclass field, and none may shadow the envelope's
    if set(_schema.fields) != {f.name for f in fields(_schema.cls)} or set(_schema.fields) & set(_ENVELOPE_FIELDS):
        raise RuntimeError(f"wire schema out of date for {_schema.cls.__name__}")

_BY_NAME: dict[bytes, _Schema] = {schema.cls.__name__.encode("ascii"): schema for schema in _SCHEMAS}
_BY_CLASS: dict[type, _Schema] = {schema.cls: schema for schema in _SCHEMAS}

MESSAGE_TYPES: dict[str, type] = {schema.cls.__name__: schema.cls for schema in _SCHEMAS}
"""Every body type the codec carries, by its wire name."""

_MAX_HEADER_DEPTH = 1 + MAX_SPEC_DEPTH  # the header object itself, then RoundStart.spec


# --- header parsing ------------------------------------------------------------


class _Rejected(ValueError):
    """Raised inside json.loads hooks; turned into bad-header."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Rejected("duplicate key")
    return result


def _reject_constant(name: str) -> Any:
    raise _Rejected("NaN and infinities are not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected("float overflows")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 24:  # far beyond any 64-bit value; stops quadratic big-int parsing
        raise _Rejected("integer too long")
    return int(text)


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*+(?:"|\Z)')  # always matches from a quote: linear time


def _nesting_depth(data: bytes) -> int:
    """Bracket depth outside string literals; exact for valid JSON, an upper bound on what json.loads reaches otherwise."""
    stripped = _STRING.sub(b"", _ESCAPE.sub(b"", data))
    codes = np.frombuffer(stripped, dtype=np.uint8)
    if codes.size == 0:
        return 0
    steps = ((codes == 0x7B) | (codes == 0x5B)).astype(np.int32) - ((codes == 0x7D) | (codes == 0x5D))
    return int(np.cumsum(steps).max())


def _parse_header(data: bytes) -> dict:
    if _nesting_depth(data) > _MAX_HEADER_DEPTH:
        raise _fail("bad-header", "header nested too deeply")
    try:
        text = data.decode("utf-8")
        header = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _fail("bad-header", "header is not valid UTF-8 JSON") from None
    if type(header) is not dict:
        raise _fail("bad-header", "header is not a JSON object")
    return header


def _load_envelope(schema: _Schema, header: dict, arrays: list[bytes], limits: Limits) -> Envelope:
    name = schema.cls.__name__
    expected = _ENVELOPE_FIELDS.keys() | schema.fields.keys()
    if header.keys() != expected:
        missing = sorted(expected - header.keys())
        raise _fail("bad-header", f"{name}: header keys differ (missing {missing}, {len(header.keys() - expected)} unexpected)")
    frames = iter(arrays)
    task = _ENVELOPE_FIELDS["task"].load(header["task"], limits, "task", frames)
    aggregation = _ENVELOPE_FIELDS["aggregation"].load(header["aggregation"], limits, "aggregation", frames)
    values = {field: kind.load(header[field], limits, f"{name}.{field}", frames) for field, kind in schema.fields.items()}
    return Envelope(task, aggregation, schema.cls(**values))


def _check_frames(frames: Any, limits: Limits) -> _Schema:
    """Everything that can be checked without parsing: count, types, version, sizes, type name."""
    if type(frames) not in (list, tuple):
        raise _fail("bad-frames", "expected a list of frames")
    if len(frames) > limits.max_frames:
        raise _fail("too-large", f"more than {limits.max_frames} frames")
    if len(frames) < 3:
        raise _fail("bad-frames", "expected at least version, type and header frames")
    if any(type(frame) is not bytes for frame in frames):
        raise _fail("bad-frames", "frames must be bytes")
    if frames[0] != VERSION:
        raise _fail("bad-version", "unsupported wire version")
    if sum(len(frame) for frame in frames) > limits.max_total_bytes:
        raise _fail("too-large", f"message larger than {limits.max_total_bytes} bytes")
    if len(frames[2]) > limits.max_header_bytes:
        raise _fail("too-large", f"header larger than {limits.max_header_bytes} bytes")
    if any(len(frame) > limits.max_array_bytes for frame in frames[3:]):
        raise _fail("too-large", f"array frame larger than {limits.max_array_bytes} bytes")
    schema = _BY_NAME.get(frames[1]) if len(frames[1]) <= _MAX_TYPE_NAME else None
    if schema is None:
        raise _fail("unknown-type", "unknown message type")
    if len(frames) != 3 + schema.arrays:
        raise _fail("bad-frames", f"{schema.cls.__name__} takes exactly {schema.arrays} array frame(s)")
    return schema


# --- public API ------------------------------------------------------------------


def decode(frames: Any, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Frames received from a peer -> a validated :class:`Envelope`.

    ``frames`` is a list (or tuple) of ``bytes``, as ``recv_multipart()``
    returns them. Raises :class:`RemoteProtocolError` with a ``reason`` from
    :data:`REASONS` for anything else, and for nothing else. Arrays in the
    result are read-only.
    """
    if not isinstance(limits, Limits):
        raise InvalidParameter("limits must be a Limits instance")  # our caller's bug, not the peer's
    schema = _check_frames(frames, limits)
    header = _parse_header(frames[2])
    return _load_envelope(schema, header, list(frames[3:]), limits)


def encode(envelope: Envelope, limits: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """An :class:`Envelope` -> frames for ``send_multipart``.

    The result always decodes (under the same ``limits``) to an envelope
    equal to ``envelope``. Raises :class:`LocalProtocolError` for a body type
    the wire does not carry (``Deadline``, ``Send``) or any field a peer would
    reject: tuples must be tuples, bytes ``bytes``, arrays 1-D native
    ``uint32`` (``MaskedInput.vector``) or finite ``float64``
    (``RoundStart.model``), ``spec`` plain JSON types (dict, list, str, int,
    float, bool, None).
    """
    if not isinstance(limits, Limits):
        raise InvalidParameter("limits must be a Limits instance")
    if type(envelope) is not Envelope:
        raise LocalProtocolError(f"expected an Envelope, got {type(envelope).__name__}")
    schema = _BY_CLASS.get(type(envelope.body))
    if schema is None:
        raise LocalProtocolError(f"{type(envelope.body).__name__} does not travel over the wire")
    name = schema.cls.__name__
    arrays: list[bytes] = []
    header: dict[str, Any] = {"task": envelope.task, "aggregation": envelope.aggregation}
    for field, kind in schema.fields.items():
        header[field] = kind.dump(getattr(envelope.body, field), limits, f"{name}.{field}", arrays)
    try:
        _load_envelope(schema, header, arrays, limits)  # exactly what the peer will check
        data = json.dumps(header, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
        frames = [VERSION, name.encode("ascii"), data, *arrays]
        _check_frames(frames, limits)
    except RemoteProtocolError as error:
        raise LocalProtocolError(f"cannot encode {name}: {error}") from None
    return frames
