"""The wire: typed envelopes <-> ZeroMQ multipart frames, strictly validated.

``encode(envelope)`` gives the frames to send; ``decode(frames)`` gives back a
validated :class:`~securefed.federation.messages.Envelope` or raises
:class:`~securefed.errors.RemoteProtocolError` with a loggable ``reason``,
and nothing else. See :mod:`securefed.wire.codec` for the frame layout.
"""

from securefed.wire.codec import (
    DEFAULT_LIMITS,
    MAX_SPEC_DEPTH,
    MESSAGE_TYPES,
    REASONS,
    VERSION,
    Limits,
    decode,
    encode,
    max_message_size,
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
