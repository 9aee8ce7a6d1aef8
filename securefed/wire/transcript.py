"""A record of every message a coordinator receives and sends, for auditors.

When ``[coordinator] transcript_file`` is set, the coordinator's socket
appends each message it accepted or sent, exactly as encoded on the wire,
to this file: this is everything the coordinator ever learns, and the
privacy-audit suite checks it. Record format: a 1-byte direction
(``b"<"`` received, ``b">"`` sent), the node name, and the frames, each
length-prefixed (4-byte big-endian). Reading uses the strict codec.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from securefed.errors import DataError, RemoteProtocolError
from securefed.federation.messages import Envelope
from securefed.wire.codec import decode

__all__ = ["TranscriptRecord", "TranscriptWriter", "read_transcript"]


@dataclass(frozen=True)
class TranscriptRecord:
    direction: str  # "received" or "sent"
    node: str
    frames: tuple[bytes, ...]

    @property
    def envelope(self) -> Envelope:
        return decode(list(self.frames))


class TranscriptWriter:
    def __init__(self, path: str | Path) -> None:
        self._file: BinaryIO = open(path, "ab")

    def write(self, direction: str, node: str, frames: Sequence[bytes]) -> None:
        name = node.encode("utf-8")
        parts = [b"<" if direction == "received" else b">", struct.pack(">I", len(name)), name, struct.pack(">I", len(frames))]
        for frame in frames:
            parts += [struct.pack(">I", len(frame)), bytes(frame)]
        self._file.write(b"".join(parts))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_transcript(path: str | Path) -> Iterator[TranscriptRecord]:
    data = Path(path).read_bytes()
    offset = 0

    def take(count: int) -> bytes:
        nonlocal offset
        if offset + count > len(data):
            raise DataError(f"transcript {path} is truncated")
        chunk = data[offset : offset + count]
        offset += count
        return chunk

    while offset < len(data):
        direction = {b"<": "received", b">": "sent"}.get(take(1))
        if direction is None:
            raise DataError(f"transcript {path} is corrupt at byte {offset - 1}")
        node = take(struct.unpack(">I", take(4))[0]).decode("utf-8")
        count = struct.unpack(">I", take(4))[0]
        frames = tuple(take(struct.unpack(">I", take(4))[0]) for _ in range(count))
        yield TranscriptRecord(direction, node, frames)


def envelopes(path: str | Path) -> Iterator[tuple[str, str, Envelope]]:
    """(direction, node, envelope) for every record that decodes."""
    for record in read_transcript(path):
        try:
            yield record.direction, record.node, record.envelope
        except RemoteProtocolError:
            continue
