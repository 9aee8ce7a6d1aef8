"""Hostile multipart messages for flooding a daemon, each with the reason code its decoder must drop it for.

Every message here fails :func:`securefed.wire.codec.decode` (so a daemon must
drop it, count it under the reason and carry on); the reasons are the codes of
:data:`securefed.wire.codec.REASONS`. The builders are deterministic per seed.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter

import numpy as np

from securefed.federation.messages import Envelope, Hello, RoundStart
from securefed.secagg.messages import (
    AdvertiseKeys,
    KeyList,
    MaskedInput,
    SeedReveal,
    SeedRevealList,
    ShareKeys,
    ShareRelay,
)
from securefed.wire.codec import DEFAULT_LIMITS, VERSION, encode

Message = list[bytes]


def _with_header(frames: Message, change) -> Message:
    header = json.loads(frames[2])
    change(header)
    return [frames[0], frames[1], json.dumps(header).encode(), *frames[3:]]


def _common(
    rng: random.Random, sample: Message, array_sample: Message, array_field: str, dtype: str
) -> list[tuple[Message, str]]:
    """Malformations that apply to either direction; ``array_sample`` carries one array frame."""
    out: list[tuple[Message, str]] = []
    # Random multipart noise: the frame count alone decides the reason.
    for _ in range(80):
        count = rng.randint(1, 7)
        frames = [bytes([rng.randrange(0x80, 0x100)]) + rng.randbytes(rng.randint(0, 64)) for _ in range(count)]
        out.append((frames, "too-large" if count > DEFAULT_LIMITS.max_frames else "bad-frames" if count < 3 else "bad-version"))
    for version in (b"", b"SF0", b"SF2", b"sf1", b"SF1\x00", VERSION * 2) * 5:
        out.append(([version, *sample[1:]], "bad-version"))
    for name in (b"", b"Pickle", b"hello", b"Envelope", b"__class__", b"X" * 65) * 5:
        out.append(([VERSION, name, sample[2]], "unknown-type"))
    bad_headers = [
        b"",
        b"\xff\xfe{}",
        b"{",
        b'{"task": NaN}',
        b'{"task": "a", "task": "b"}',
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"aggregation": 1' + b"9" * 100 + b"}",
        b'{"x": 1e999}',
        b"[" * 200_000,
        b'{"a":' * 50_000,
        sample[2][:-1],
        sample[2] + b"}",
        b"\x00" * 1000,
        rng.randbytes(4096),
    ]
    for header in bad_headers * 3:
        out.append(([VERSION, sample[1], header], "bad-header"))
    for _ in range(10):
        out.append((_with_header(sample, lambda h: h.update(extra=True)), "bad-header"))
        out.append((_with_header(sample, lambda h: h.pop("task")), "bad-header"))
        out.append((_with_header(sample, lambda h: h.update(aggregation=-1)), "bad-field"))
        out.append((_with_header(sample, lambda h: h.update(task="")), "bad-field"))
        out.append((_with_header(sample, lambda h: h.update(task="x" * 5000)), "bad-field"))
        out.append((_with_header(sample, lambda h: h.update(aggregation=1.5)), "bad-field"))
    # Array descriptors that promise far more (or other) data than the frame holds.
    itemsize = np.dtype(dtype).itemsize
    lies = [
        ({"dtype": dtype, "shape": [400_000_000 // itemsize]}, b"\x00" * 16),  # 400 MB promised, 16 bytes sent
        ({"dtype": dtype, "shape": [1 << 40]}, b"\x00" * 16),
        ({"dtype": dtype, "shape": [2**62]}, b""),
        ({"dtype": dtype, "shape": [3]}, b"\x00" * (3 * itemsize - 1)),  # not a whole number of items
        ({"dtype": dtype, "shape": [3]}, b"\x00" * (3 * itemsize + itemsize)),
        ({"dtype": dtype, "shape": [2, 2]}, b"\x00" * (4 * itemsize)),
        ({"dtype": dtype, "shape": [-1]}, b"\x00" * itemsize),
        ({"dtype": "|O", "shape": [1]}, b"\x00" * 8),
        ({"dtype": ">u4" if dtype == "<u4" else ">f8", "shape": [2]}, b"\x00" * (2 * itemsize)),
        ({"dtype": dtype}, b"\x00" * itemsize),
        ([dtype, 3], b"\x00" * (3 * itemsize)),
    ]
    for descriptor, data in lies * 4:
        frames = _with_header(array_sample, lambda h, d=descriptor: h.update({array_field: d}))
        out.append(([*frames[:3], data], "bad-array"))
    # Too many frames, and a header above max_header_bytes (but below zmq.MAXMSGSIZE).
    for _ in range(10):
        out.append(([*array_sample, b"extra", b"more"], "too-large"))
    for _ in range(3):
        out.append(([VERSION, sample[1], b" " * (DEFAULT_LIMITS.max_header_bytes + 1)], "too-large"))
    rng.shuffle(out)
    return out


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _non_canonical(raw: bytes) -> str:
    """Base64 of ``raw`` with the unused low bits of its last character set (``len(raw) % 3 != 0``)."""
    if len(raw) % 3 == 0:
        raise ValueError("base64 of a multiple of 3 bytes has no unused bits")
    text = _b64(raw)
    body = text.rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return body[:-1] + alphabet[alphabet.index(body[-1]) | 1] + text[len(body) :]


def _field_faults(template: Message, changes: list[tuple[object, str]]) -> list[tuple[Message, str]]:
    """``changes``: (a function editing the header in place, the reason it must be dropped for)."""
    return [(_with_header(template, change), reason) for change, reason in changes]


def _reveal_and_commitment_faults(rng: random.Random, task: str) -> list[tuple[Message, str]]:
    """Node -> coordinator: the fields of the reveal stage, of the signed share commitments and of the
    bad-dealer report, each gone wrong."""
    value, commitment, pair, signature = rng.randbytes(32), rng.randbytes(32), rng.randbytes(64), rng.randbytes(64)
    advertise = encode(Envelope(task, 1, AdvertiseKeys(1, rng.randbytes(32), rng.randbytes(32), commitment, signature)))
    reveal = encode(Envelope(task, 1, SeedReveal(1, value)))
    ciphertexts = ((2, rng.randbytes(80)), (3, rng.randbytes(80)))
    share = encode(Envelope(task, 1, ShareKeys(1, ciphertexts, ((1, pair), (2, pair), (3, pair)), signature, bytes(32))))
    out = _field_faults(
        advertise,
        [
            (lambda h: h.pop("seed_commitment"), "bad-header"),  # an advertisement from before the reveal stage
            (lambda h: h.update(seed_commitment=_b64(commitment + b"\x00")), "bad-field"),
            (lambda h: h.update(seed_commitment=_b64(commitment[:31])), "bad-field"),
            (lambda h: h.update(seed_commitment=_non_canonical(commitment)), "bad-field"),
        ],
    )
    out += _field_faults(
        reveal,
        [
            (lambda h: h.update(value=_b64(value[:31])), "bad-field"),
            (lambda h: h.update(value=_b64(value + value)), "bad-field"),
            (lambda h: h.update(value=_non_canonical(value)), "bad-field"),
            (lambda h: h.update(value=_b64(value).rstrip("=")), "bad-field"),
            (lambda h: h.update(sender=0), "bad-field"),
            (lambda h: h.pop("value"), "bad-header"),
            (lambda h: h.update(seed=h["value"]), "bad-header"),
        ],
    )
    masked = encode(Envelope(task, 1, MaskedInput(1, np.arange(3, dtype=np.uint32), (2, 3))))
    out += _field_faults(
        masked,
        [
            (lambda h: h.update(bad_dealers=[3, 2]), "bad-field"),
            (lambda h: h.update(bad_dealers=[2, 2]), "bad-field"),
            (lambda h: h.update(bad_dealers=[0]), "bad-field"),
            (lambda h: h.update(bad_dealers="2,3"), "bad-field"),
            (lambda h: h.pop("bad_dealers"), "bad-header"),  # a masked input from before bad-dealer reports
        ],
    )
    out += _field_faults(
        share,
        [
            (lambda h: h.update(commitments=h["commitments"][::-1]), "bad-field"),
            (lambda h: h.update(commitments=[h["commitments"][0], *h["commitments"]]), "bad-field"),
            (lambda h: h.update(commitments=[[1, _b64(pair[:63])]]), "bad-field"),
            (lambda h: h.update(commitments=[[1, _b64(pair[:32])]]), "bad-field"),
            (lambda h: h.update(commitments=[[1, _non_canonical(pair)]]), "bad-field"),
            (lambda h: h.update(commitments={"1": _b64(pair)}), "bad-field"),
            (lambda h: h.update(signature=_b64(signature + b"!")), "bad-field"),
            (lambda h: h.update(signature=_non_canonical(signature)), "bad-field"),
            (lambda h: h.pop("commitments"), "bad-header"),
            (lambda h: (h.pop("commitments"), h.pop("signature")), "bad-header"),  # the ShareKeys of before
        ],
    )
    return out * 3


def _reveal_list_and_relay_faults(rng: random.Random, task: str) -> list[tuple[Message, str]]:
    """Coordinator -> node: the seed reveal list's, the relayed commitments' and the key list's new fields, each gone wrong."""
    first, second, pair = rng.randbytes(32), rng.randbytes(32), rng.randbytes(64)
    reveals = encode(Envelope(task, 1, SeedRevealList(((1, first), (2, second)))))
    relay = encode(Envelope(task, 1, ShareRelay(((2, rng.randbytes(80)),), ((2, pair),))))
    entry = AdvertiseKeys(1, rng.randbytes(32), rng.randbytes(32), first, rng.randbytes(64))
    keylist = encode(Envelope(task, 1, KeyList((entry,))))
    out = _field_faults(
        reveals,
        [
            (lambda h: h.update(reveals=h["reveals"][::-1]), "bad-field"),
            (lambda h: h.update(reveals=[h["reveals"][0], h["reveals"][0]]), "bad-field"),
            (lambda h: h.update(reveals=[[1, _b64(first[:31])]]), "bad-field"),
            (lambda h: h.update(reveals=[[1, _b64(pair)]]), "bad-field"),
            (lambda h: h.update(reveals=[[1, _non_canonical(first)]]), "bad-field"),
            (lambda h: h.update(reveals=[[0, _b64(first)]]), "bad-field"),
            (lambda h: h.update(reveals=[_b64(first)]), "bad-field"),
            (lambda h: h.pop("reveals"), "bad-header"),
        ],
    )
    out += _field_faults(
        relay,
        [
            (lambda h: h.update(commitments=[[2, _b64(pair + b"!")]]), "bad-field"),
            (lambda h: h.update(commitments=[[2, _b64(first)]]), "bad-field"),
            (lambda h: h.update(commitments=[[3, _b64(pair)], [2, _b64(pair)]]), "bad-field"),
            (lambda h: h.update(commitments=[[2, ""]]), "bad-field"),
            (lambda h: h.pop("commitments"), "bad-header"),  # the ShareRelay of before
        ],
    )
    out += _field_faults(
        keylist,
        [
            (lambda h: h["entries"][0].pop("seed_commitment"), "bad-field"),  # an entry from before the reveal stage
            (lambda h: h["entries"][0].update(seed_commitment=_non_canonical(first)), "bad-field"),
            (lambda h: h["entries"][0].update(seed_commitment=_b64(pair)), "bad-field"),
        ],
    )
    return out * 3


def to_coordinator(seed: int, task: str) -> list[tuple[Message, str]]:
    """Node -> coordinator garbage (a Hello and a MaskedInput are the templates, plus every field of the
    reveal stage, of the signed share commitments and of the bad-dealer report gone wrong)."""
    rng = random.Random(seed)
    hello = encode(Envelope(task, 0, Hello("site-1")))
    masked = encode(Envelope(task, 1, MaskedInput(1, np.arange(3, dtype=np.uint32))))
    out = _common(rng, hello, masked, "vector", "<u4") + _reveal_and_commitment_faults(rng, task)
    rng.shuffle(out)
    return out


def to_node(seed: int, task: str, node: str) -> list[tuple[Message, str]]:
    """Coordinator -> node garbage (a KeyList and a RoundStart are the templates, plus the reveal list's,
    the relayed commitments' and the key list's new fields gone wrong)."""
    rng = random.Random(seed)
    keylist = encode(Envelope(task, 1, KeyList(())))
    start = encode(Envelope(task, 0, RoundStart(1, ((1, node),), {}, np.zeros(3))))
    out = _common(rng, keylist, start, "model", "<f8")
    for _ in range(10):  # a model with NaN / infinity in it
        frames = list(start)
        frames[3] = np.array([0.0, np.nan, np.inf]).astype("<f8").tobytes()
        out.append((frames, "bad-array"))
    out += _reveal_list_and_relay_faults(rng, task)
    rng.shuffle(out)
    return out


def expected_counts(messages: list[tuple[Message, str]]) -> Counter:
    return Counter(reason for _, reason in messages)
