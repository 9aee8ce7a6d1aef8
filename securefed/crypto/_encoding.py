"""Unambiguous byte encodings for things that get signed, hashed or bound into KDFs.

Every field is length-prefixed, so two different tuples never encode to the
same bytes (no ``"ab" + "c" == "a" + "bc"`` confusion).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

Field = bytes | str | int


_LENGTH = struct.Struct(">I")


def encode_fields(*fields: Field) -> bytes:
    """Length-prefix each field: str as UTF-8, int as unsigned 64-bit big-endian."""
    parts: list[bytes] = []
    for field in fields:
        # Exact types first (subclasses, e.g. str enums, are converted below); bytes is the common
        # case: this runs millions of times in large simulations.
        if type(field) is bytes:
            parts.append(b"b" + _LENGTH.pack(len(field)) + field)
        elif type(field) is int:
            if field < 0 or field >= 1 << 64:
                raise ValueError(f"integer field out of range: {field}")
            parts.append(b"i" + field.to_bytes(8, "big"))
        elif type(field) is str:
            raw = field.encode("utf-8")
            parts.append(b"s" + _LENGTH.pack(len(raw)) + raw)
        elif isinstance(field, bool):
            raise TypeError("bool is not a valid encoded field")
        elif isinstance(field, int):
            parts.append(encode_fields(int(field)))
        elif isinstance(field, str):
            parts.append(encode_fields(str(field)))
        elif isinstance(field, (bytes, bytearray, memoryview)):
            parts.append(encode_fields(bytes(field)))
        else:
            raise TypeError(f"cannot encode field of type {type(field).__name__}")
    return b"".join(parts)


def encode_id_list(ids: Iterable[int]) -> bytes:
    """A sorted, deduplicated id set as fixed-width big-endian integers."""
    return b"".join(i.to_bytes(4, "big") for i in sorted(set(ids)))
