"""Unambiguous byte encodings for things that get signed, hashed or bound into KDFs.

Every field is length-prefixed, so two different tuples never encode to the
same bytes (no ``"ab" + "c" == "a" + "bc"`` confusion).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

Field = bytes | str | int


def encode_fields(*fields: Field) -> bytes:
    """Length-prefix each field: str as UTF-8, int as unsigned 64-bit big-endian."""
    parts: list[bytes] = []
    for field in fields:
        if isinstance(field, bool):
            raise TypeError("bool is not a valid encoded field")
        if isinstance(field, int):
            if field < 0 or field >= 1 << 64:
                raise ValueError(f"integer field out of range: {field}")
            raw = field.to_bytes(8, "big")
            parts.append(b"i" + raw)
            continue
        if isinstance(field, str):
            raw = field.encode("utf-8")
            tag = b"s"
        elif isinstance(field, (bytes, bytearray, memoryview)):
            raw = bytes(field)
            tag = b"b"
        else:
            raise TypeError(f"cannot encode field of type {type(field).__name__}")
        parts.append(tag + struct.pack(">I", len(raw)) + raw)
    return b"".join(parts)


def encode_id_list(ids: Iterable[int]) -> bytes:
    """A sorted, deduplicated id set as fixed-width big-endian integers."""
    return b"".join(i.to_bytes(4, "big") for i in sorted(set(ids)))
