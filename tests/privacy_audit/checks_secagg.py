"""Audit checks for the secure-aggregation side of securefed, as plain functions that return a result.

Theory of operation. Every check here takes what an auditor can observe (a coordinator
transcript, bytes captured on the wire, the behaviour of a real node under a scripted attack)
and returns a :class:`CheckResult` instead of asserting. The audit tests assert the result and
record it in the report; the mutation canaries (``test_canaries_secagg.py``) run the *same*
functions on a deliberately broken variant of the implementation and require at least one of
them to fail. A check that cannot fail proves nothing, so every statistical check also comes
with a power control in its test (the same function on plaintext must fail).

Statistics. All tests run at the 1e-6 level per p-value (``ALPHA``):

* uniformity of a uint32 vector mod 2^32: Pearson chi-square on each of the 4 byte lanes of the
  little-endian words, 256 bins, df = 255 (critical value ``chi2.isf(1e-6, 255)`` = 377.1); for
  vectors with fewer than 1,280 entries (under 5 expected per bin) on each of the 8 nibble lanes
  instead, 16 bins, df = 15 (critical value 56.5); below 80 entries no lane test. Every vector
  also gets a small-magnitude test: the count of entries whose signed value is below 2^20 in magnitude is
  Binomial(d, 2^-11) for a uniform vector (one-sided tail). Fixed-point model updates, counts and
  other plain encodings are overwhelmingly small, so this catches short vectors too;
* independence of input and masked input: two-sample (homogeneity) chi-square per byte lane over
  the bins that are non-empty in either sample, df = (non-empty bins - 1);
* correlation: Pearson r between a masked vector and a reference; under independence r is about
  N(0, 1/d), and the bound is 5/sqrt(d) (two-sided p ~ 6e-7).

In-memory masked inputs are deterministic (round keys and self-mask seeds derived from a fixed
seed, see :func:`fixed_round_randomness`), so the masked-input checks never flake; share
ciphertexts keep their fresh nonces and Shamir coefficients. Checks over the real daemons use the
daemons' own randomness; with about 150 p-values per run of the audit suite's secure-aggregation
side, the family-wise false-alarm rate is below 2e-4.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import signal
import socket
import subprocess
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from scipy import stats

import securefed.crypto.aead as aead
import securefed.crypto.prg as prg
import securefed.secagg.client as client_module
from securefed.crypto.agreement import AgreementKeyPair, hkdf_sha256, kdf_info
from securefed.crypto.identity import SigningKey
from securefed.crypto.shamir import SHARE_SIZE
from securefed.errors import InvalidShare, SecureFedError
from securefed.federation.messages import Envelope, RoundStart
from securefed.federation.spec import round_context
from securefed.secagg.config import ClientPolicy
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    Deadline,
    KeyList,
    MaskedInput,
    PeerGone,
    Send,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.transcript import advertise_transcript, consistency_transcript
from securefed.wire.codec import encode
from securefed.wire.transcript import read_transcript
from tests.fakes import FakeNodeSocket as _FakeNodeSocket
from tests.secagg_harness import (
    HonestRound,
    assert_no_double_reveal,
    deterministic_round_keys,
    make_config,
    make_identities,
)

ALPHA = 1e-6
AUDIT_TASK = "privacy-audit"
#: nonce || AES-GCM(share of s_sk || share of b) || tag
SHARE_CIPHERTEXT_SIZE = aead.NONCE_SIZE + 2 * SHARE_SIZE + aead.TAG_SIZE
#: The coordinator's own identity key: valid Ed25519, but in nobody's roster.
COORDINATOR_IDENTITY = SigningKey.generate()


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one audit check: its report name, whether it held, and why."""

    name: str
    passed: bool
    detail: str = ""

    def __bool__(self) -> bool:
        return self.passed


def _result(name: str, problems: Sequence[str], ok_detail: str) -> CheckResult:
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} problems)" if len(problems) > 4 else "")
        return CheckResult(name, False, shown)
    return CheckResult(name, True, ok_detail)


# --- statistics ------------------------------------------------------------------------------


def _as_u32(vector: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(vector), dtype="<u4")


def lane_counts(vector: np.ndarray, bits: int = 8) -> list[np.ndarray]:
    """Histograms of each byte lane (bits=8: 4 lanes, 256 bins) or nibble lane (bits=4: 8 lanes, 16 bins)."""
    octets = _as_u32(vector).view(np.uint8).reshape(-1, 4)
    if bits == 8:
        return [np.bincount(octets[:, lane], minlength=256) for lane in range(4)]
    return [np.bincount((octets[:, lane] >> shift) & 0xF, minlength=16) for lane in range(4) for shift in (0, 4)]


def chi2_uniform_p(counts: np.ndarray) -> float:
    """p-value of Pearson's goodness-of-fit test against the uniform distribution (df = bins - 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum() / counts.size
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(statistic, counts.size - 1))


def chi2_homogeneity_p(first: np.ndarray, second: np.ndarray) -> float:
    """p-value of the two-sample chi-square test that two histograms come from one distribution.

    Bins empty in both samples are dropped; df = (non-empty bins - 1). One non-empty bin means both
    samples are the same constant: p = 1.
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    if a.size < 2:
        return 1.0
    total_a, total_b = a.sum(), b.sum()
    pooled = (a + b) / (total_a + total_b)
    expected_a, expected_b = pooled * total_a, pooled * total_b
    statistic = float(((a - expected_a) ** 2 / expected_a).sum() + ((b - expected_b) ** 2 / expected_b).sum())
    return float(stats.chi2.sf(statistic, a.size - 1))


SMALL = 1 << 20
_SMALL_P = (2 * SMALL - 1) / 2**32


def small_magnitude_p(vector: np.ndarray) -> float:
    """P(at least this many entries with |signed value| < 2^20) for a uniform uint32 vector."""
    signed = _as_u32(vector).view(np.int32).astype(np.int64)
    small = int(np.count_nonzero(np.abs(signed) < SMALL))
    return float(stats.binom.sf(small - 1, signed.size, _SMALL_P)) if small else 1.0


def uniformity_pvalues(vector: np.ndarray) -> dict[str, float]:
    """Every uniformity test that applies to a vector of this length (see the module docstring)."""
    d = _as_u32(vector).size
    pvalues = {"small-magnitude": small_magnitude_p(vector)}
    if d >= 5 * 256:
        for lane, counts in enumerate(lane_counts(vector, 8)):
            pvalues[f"byte-lane-{lane}"] = chi2_uniform_p(counts)
    elif d >= 5 * 16:
        for lane, counts in enumerate(lane_counts(vector, 4)):
            pvalues[f"nibble-lane-{lane}"] = chi2_uniform_p(counts)
    return pvalues


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two equally long vectors (None if either is constant)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    scale = math.sqrt(float(x @ x) * float(y @ y))
    return None if scale == 0 else float(x @ y) / scale


def signed(vector: np.ndarray) -> np.ndarray:
    """A uint32 encoding read as the signed 32-bit integers the decoder reads."""
    return _as_u32(vector).view(np.int32).astype(np.float64)


def longest_run(data: bytes) -> int:
    """Length of the longest run of one repeated byte."""
    best = run = 0
    previous = None
    for byte in data:
        run = run + 1 if byte == previous else 1
        previous = byte
        best = max(best, run)
    return best


def shared_windows(
    needle: bytes, haystacks: Sequence[bytes], window: int = 16, step: int = 4, skip_degenerate: bool = False
) -> list[tuple[int, int, int]]:
    """Every place a ``window``-byte excerpt of ``needle`` (taken every ``step`` bytes) occurs.

    Returns ``(haystack index, offset in haystack, offset in needle)``; haystack offsets are any
    byte offset. ``skip_degenerate`` ignores excerpts that are one repeated byte (e.g. zero
    padding, which legitimately occurs in protocol framing). The haystacks are searched as one
    buffer with an 8-byte-prefix pre-filter (sorted keys, ``np.searchsorted``) at each of the 8
    byte alignments; every candidate is confirmed byte for byte and must lie inside one haystack.
    """
    if len(needle) < window or not haystacks:
        return []
    index: dict[int, dict[bytes, int]] = {}
    for start in range(0, len(needle) - window + 1, step):
        excerpt = needle[start : start + window]
        if skip_degenerate and excerpt.count(excerpt[:1]) == window:
            continue
        index.setdefault(int.from_bytes(excerpt[:8], "little"), {}).setdefault(excerpt, start)
    if not index:
        return []
    keys = np.sort(np.fromiter(index, dtype=np.uint64, count=len(index)))
    joined = b"".join(bytes(h) for h in haystacks)
    ends = np.cumsum([len(h) for h in haystacks])
    hits = []
    for offset in range(8):
        count = (len(joined) - offset) // 8
        if count <= 0:
            continue
        words = np.frombuffer(joined, dtype="<u8", count=count, offset=offset)
        slots = np.minimum(np.searchsorted(keys, words), keys.size - 1)
        for j in np.flatnonzero(keys[slots] == words):
            position = offset + 8 * int(j)
            h = int(np.searchsorted(ends, position, side="right"))
            if position + window > ends[h]:
                continue  # would straddle two haystacks
            start = index[int(words[j])].get(joined[position : position + window])
            if start is not None:
                hits.append((h, position - int(ends[h]) + len(haystacks[h]), start))
    return hits


# --- transcripts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One message the coordinator received from or sent to a node, decoded and as wire frames."""

    direction: str  # "received" | "sent"
    node: str
    envelope: Envelope
    frames: tuple[bytes, ...]

    @property
    def body(self) -> object:
        return self.envelope.body

    @property
    def aggregation(self) -> int:
        return self.envelope.aggregation


@dataclass
class Transcript:
    """Everything the coordinator saw: records, plus per-aggregation cohort ids and round context."""

    records: list[Record]
    cohorts: dict[int, dict[str, int]] = field(default_factory=dict)
    contexts: dict[int, bytes] = field(default_factory=dict)
    task: str = AUDIT_TASK

    def of(self, message_type: type, direction: str | None = None) -> list[Record]:
        return [
            r for r in self.records if isinstance(r.body, message_type) and (direction is None or r.direction == direction)
        ]

    def node_id(self, aggregation: int, name: str) -> int:
        return self.cohorts[aggregation][name]


def transcript_from_file(path: str | Path) -> Transcript:
    """Read a daemon's ``transcript_file``; cohorts and contexts are recomputed from its RoundStarts."""
    records = []
    transcript = Transcript(records)
    for raw in read_transcript(path):
        envelope = raw.envelope  # every recorded message already passed the strict codec once
        records.append(Record(raw.direction, raw.node, envelope, raw.frames))
        body = envelope.body
        transcript.task = envelope.task
        if isinstance(body, RoundStart) and raw.direction == "sent":
            transcript.cohorts[envelope.aggregation] = {name: i for i, name in body.cohort}
            transcript.contexts[envelope.aggregation] = round_context(body.spec, body.cohort, body.model)
    return transcript


class RecordingServer:
    """Wraps a real ``ServerProtocol``: records every node message it is given and every Send it emits."""

    def __init__(self, server: object) -> None:
        self._server = server
        self.events: list[tuple[str, int, object]] = []

    def receive(self, event: object) -> list[Send]:
        if not isinstance(event, (Deadline, PeerGone)):
            self.events.append(("received", event.sender, event))  # what the coordinator saw, even if refused
        sends = self._server.receive(event)
        self.events.extend(("sent", send.to, send.message) for send in sends)
        return sends

    def __getattr__(self, name: str) -> object:
        return getattr(self._server, name)


def transcript_from_recording(recording: RecordingServer, round_: HonestRound) -> Transcript:
    """Encode what a :class:`RecordingServer` saw exactly as the daemon would put it on the wire."""
    config = round_.config
    records = []
    for direction, node, message in recording.events:
        envelope = Envelope(config.task, config.round_id, message)
        records.append(Record(direction, f"node-{node}", envelope, tuple(encode(envelope))))
    return Transcript(
        records,
        cohorts={config.round_id: {f"node-{i}": i for i in config.ids}},
        contexts={config.round_id: config.context},
        task=config.task,
    )


@contextmanager
def fixed_round_randomness(seed: bytes) -> Iterator[None]:
    """Derive the nodes' round key pairs and self-mask seeds b_u from ``seed`` (test-only determinism).

    AEAD nonces and Shamir coefficients stay random: they do not affect the masked inputs.
    """
    counter = itertools.count()

    def urandom(size: int) -> bytes:
        return hashlib.shake_256(seed + b"/self-mask/%d" % next(counter)).digest(size)

    with deterministic_round_keys(seed), mock.patch.object(client_module, "os", types.SimpleNamespace(urandom=urandom)):
        yield


@dataclass
class RecordedRound:
    round: HonestRound
    transcript: Transcript
    inputs: dict[int, np.ndarray]
    where: str = "in-memory"  # how the audit report labels checks on this round

    @property
    def result(self):  # noqa: ANN201 - AggregateResult
        return self.round.server.result


def recorded_round(
    inputs: Mapping[int, np.ndarray],
    *,
    t: int = 3,
    neighbours: int | None = None,
    seed: bytes = b"audit",
    silent: Mapping | None = None,
) -> RecordedRound:
    """One honest round of the real client and server machines, with the coordinator's view recorded.

    ``inputs`` maps ids 1..n to uint32 vectors; ``neighbours`` None is the complete graph, k the
    SecAgg+ graph; ``silent`` maps a node to the stage from which it stops answering.
    """
    inputs = {node: _as_u32(vector) for node, vector in inputs.items()}
    n, d = len(inputs), len(next(iter(inputs.values())))
    with fixed_round_randomness(seed):
        r = HonestRound(n, t, d=d, neighbours=neighbours, task=AUDIT_TASK, inputs=inputs, silent=silent)
        recording = RecordingServer(r.server)
        r.server = recording
        r.run()
    return RecordedRound(r, transcript_from_recording(recording, r), inputs)


def structured_inputs(d: int, n: int = 5, seed: int = 0) -> dict[int, np.ndarray]:
    """Inputs an attacker would love to see: a ramp, zeros, a constant, an encoded update, random words."""
    rng = np.random.default_rng(seed)
    ramp = np.arange(d, dtype=np.uint32)
    update = np.round(rng.normal(0, 2**12, d)).astype(np.int64).astype(np.uint32)  # fixed-point deltas
    made = {
        1: ramp,
        2: np.zeros(d, dtype=np.uint32),
        3: np.full(d, 0xDEADBEEF, dtype=np.uint32),
        4: update,
        5: rng.integers(0, 1 << 32, size=d, dtype=np.uint64).astype(np.uint32),
    }
    return {node: made[(node - 1) % 5 + 1].copy() for node in range(1, n + 1)}


# --- checks over a coordinator transcript ------------------------------------------------------


def _blobs(value: object) -> Iterator[bytes]:
    """Every bytes field and array (as bytes) inside a decoded message, recursively."""
    if isinstance(value, (bytes, bytearray)):
        yield bytes(value)
    elif isinstance(value, np.ndarray):
        yield np.ascontiguousarray(value).tobytes()
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _blobs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _blobs(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _blobs(getattr(value, f.name))


def check_no_plaintext_inputs(transcript: Transcript, inputs: Mapping[int, np.ndarray], window: int = 16) -> CheckResult:
    """No wire frame, byte field or array the coordinator saw holds any ``window``-byte excerpt of an input."""
    name = "transcript-holds-no-plaintext-input"
    haystacks: list[bytes] = []
    where: list[str] = []
    for i, record in enumerate(transcript.records):
        for frame in record.frames:
            haystacks.append(frame)
            where.append(f"record {i} ({type(record.body).__name__} {record.direction} {record.node})")
        for blob in _blobs(record.body):
            haystacks.append(blob)
            where.append(f"record {i} ({type(record.body).__name__} field)")
    problems = []
    for node, vector in inputs.items():
        hits = shared_windows(_as_u32(vector).tobytes(), haystacks, window=window)
        if hits:
            h, offset, start = hits[0]
            problems.append(f"input of node {node} (bytes {start}..{start + window}) found in {where[h]} at {offset}")
    searched = sum(len(h) for h in haystacks)
    return _result(name, problems, f"{len(inputs)} inputs, every {window}-byte excerpt, over {searched} bytes")


def check_masked_inputs_uniform(transcript: Transcript) -> CheckResult:
    """Every MaskedInput the coordinator received passes every uniformity test at ALPHA."""
    name = "masked-inputs-uniform-mod-2^32"
    problems, tests = [], 0
    masked = transcript.of(MaskedInput, "received")
    for record in masked:
        pvalues = uniformity_pvalues(record.body.vector)
        tests += len(pvalues)
        worst = min(pvalues, key=pvalues.get)
        if pvalues[worst] < ALPHA:
            problems.append(
                f"{record.node} aggregation {record.aggregation}: {worst} p = {pvalues[worst]:.2e} (d = {record.body.vector.size})"
            )
    if not masked:
        problems.append("no masked input in the transcript (nothing to test)")
    return _result(name, problems, f"{len(masked)} masked inputs, {tests} tests, all p >= {ALPHA:g}")


def check_masked_independent_of_input(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> CheckResult:
    """Masked inputs of two rounds with very different inputs have one byte-lane distribution (p >= ALPHA)."""
    name = "masked-input-independent-of-input"
    a = np.concatenate([_as_u32(v) for v in first])
    b = np.concatenate([_as_u32(v) for v in second])
    pvalues = [chi2_homogeneity_p(x, y) for x, y in zip(lane_counts(a), lane_counts(b))]
    problems = [f"byte lane {lane}: two-sample p = {p:.2e}" for lane, p in enumerate(pvalues) if p < ALPHA]
    return _result(name, problems, f"{a.size} vs {b.size} words, per-lane p = {', '.join(f'{p:.3f}' for p in pvalues)}")


def check_masked_uncorrelated(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> CheckResult:
    """|Pearson r| <= 5/sqrt(d) between each masked vector and its reference (the input, or a plain update).

    ``pairs`` are ``(label, masked, reference)`` with both read as signed 32-bit fixed point;
    references that are constant (no correlation defined) are skipped.
    """
    name = "masked-input-uncorrelated-with-plain"
    problems, tested, worst = [], 0, 0.0
    for label, masked, reference in pairs:
        r = pearson(signed(masked), signed(reference))
        if r is None:
            continue
        tested += 1
        worst = max(worst, abs(r))
        bound = 5 / math.sqrt(len(masked))
        if abs(r) > bound:
            problems.append(f"{label}: r = {r:.3f} > {bound:.3f}")
    if not tested:
        problems.append("no pair to test")
    return _result(name, problems, f"{tested} pairs, max |r| = {worst:.4f}")


def _share_ciphertexts(transcript: Transcript) -> list[tuple[int, int, int, bytes, str]]:
    """(aggregation, sender id, recipient id, ciphertext, where) for every relayed share ciphertext."""
    found = []
    for record in transcript.records:
        body = record.body
        if isinstance(body, ShareKeys) and record.direction == "received":
            for recipient, ciphertext in body.ciphertexts:
                found.append((record.aggregation, body.sender, recipient, ciphertext, f"ShareKeys from {record.node}"))
        elif isinstance(body, ShareRelay) and record.direction == "sent":
            recipient = transcript.node_id(record.aggregation, record.node)
            for sender, ciphertext in body.ciphertexts:
                found.append((record.aggregation, sender, recipient, ciphertext, f"ShareRelay to {record.node}"))
    return found


def check_share_ciphertexts_well_formed(transcript: Transcript) -> CheckResult:
    """Every relayed share is exactly nonce + 70 + tag bytes, and no nonce is ever used twice."""
    name = "share-ciphertexts-aead-sized"
    found = _share_ciphertexts(transcript)
    problems = [
        f"{where}: {sender}->{recipient} is {len(c)} bytes, not {SHARE_CIPHERTEXT_SIZE}"
        for _, sender, recipient, c, where in found
        if len(c) != SHARE_CIPHERTEXT_SIZE
    ]
    unique = {c for *_, c, _ in found}
    nonces = [c[: aead.NONCE_SIZE] for c in unique]
    if len(set(nonces)) != len(nonces):
        problems.append("a nonce was used for two different ciphertexts")
    if not found:
        problems.append("no share ciphertext in the transcript (nothing to test)")
    return _result(name, problems, f"{len(found)} relayed ciphertexts ({len(unique)} distinct), {SHARE_CIPHERTEXT_SIZE} bytes each")


def check_share_ciphertexts_look_random(transcript: Transcript) -> CheckResult:
    """Pooled share-ciphertext bytes pass a 256-bin chi-square (df 255) and no ciphertext has a run of 5 equal bytes."""
    name = "share-ciphertexts-look-random"
    unique = sorted({c for *_, c, _ in _share_ciphertexts(transcript)})
    problems = []
    pooled = b"".join(unique)
    if len(pooled) < 5 * 256:
        problems.append(f"only {len(pooled)} ciphertext bytes: too few for the chi-square test")
        p = float("nan")
    else:
        p = chi2_uniform_p(np.bincount(np.frombuffer(pooled, dtype=np.uint8), minlength=256))
        if p < ALPHA:
            problems.append(f"pooled ciphertext bytes: chi-square p = {p:.2e}")
    runs = [longest_run(c) for c in unique]
    if runs and max(runs) >= 5:
        problems.append(f"a ciphertext has a run of {max(runs)} equal bytes")
    return _result(name, problems, f"{len(pooled)} bytes, chi-square p = {p:.3f}, longest run {max(runs, default=0)}")


def _coordinator_key_guesses(c_pk_u: bytes, c_pk_v: bytes, s_pk_u: bytes, s_pk_v: bytes, infos: Sequence[bytes]) -> list[bytes]:
    """Every AEAD key the coordinator could compute from public material alone."""
    secrets_ = [
        bytes(32),
        c_pk_u,
        c_pk_v,
        c_pk_u + c_pk_v,
        c_pk_v + c_pk_u,
        s_pk_u + s_pk_v,
        s_pk_v + s_pk_u,
        bytes(a ^ b for a, b in zip(c_pk_u, c_pk_v)),
    ]
    keys = [bytes(32), c_pk_u, c_pk_v]
    keys += [hashlib.sha256(s).digest() for s in secrets_]
    for secret in secrets_:
        for info in infos:
            keys.append(hkdf_sha256(secret, info))
        keys.append(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"").derive(secret))
    return keys


def check_share_ciphertexts_unopenable(transcript: Transcript) -> CheckResult:
    """No relayed share opens under any key the coordinator can derive from public keys (all-zero, raw keys, hashes, HKDF)."""
    name = "share-ciphertexts-unopenable-by-coordinator"
    adverts: dict[tuple[int, int], AdvertiseKeys] = {}
    for record in transcript.of(AdvertiseKeys, "received"):
        adverts[(record.aggregation, record.body.sender)] = record.body
    problems, attempts = [], 0
    seen = set()
    for aggregation, sender, recipient, ciphertext, where in _share_ciphertexts(transcript):
        if ciphertext in seen:
            continue
        seen.add(ciphertext)
        u, v = adverts.get((aggregation, sender)), adverts.get((aggregation, recipient))
        if u is None or v is None:
            problems.append(f"{where}: no advertised keys for {sender}->{recipient}")
            continue
        context = transcript.contexts.get(aggregation, b"")
        infos = [
            kdf_info(purpose, transcript.task, aggregation, sender, recipient, ctx)
            for purpose in ("share-encryption", "pairwise-mask")
            for ctx in {context, b""}
        ]
        ads = [aead.share_associated_data(transcript.task, aggregation, sender, recipient, context), b""]
        for key in _coordinator_key_guesses(u.c_pk, v.c_pk, u.s_pk, v.s_pk, infos):
            for ad in ads:
                attempts += 1
                try:
                    aead.open_sealed(key, ciphertext, ad)
                except InvalidShare:
                    continue
                problems.append(f"{where}: the share {sender}->{recipient} opened under a key built from public keys")
                break
    if not seen:
        problems.append("no share ciphertext in the transcript (nothing to test)")
    return _result(name, problems, f"{len(seen)} ciphertexts, {attempts} decryption attempts, none opened")


def check_no_double_reveal_in_view(transcript: Transcript) -> CheckResult:
    """Per aggregation, the UnmaskShares the coordinator received never name one owner in both b- and s-shares."""
    name = "coordinator-never-holds-both-shares"
    b_owners: dict[int, set[int]] = {}
    s_owners: dict[int, set[int]] = {}
    messages = transcript.of(UnmaskShares, "received")
    for record in messages:
        b_owners.setdefault(record.aggregation, set()).update(owner for owner, _ in record.body.b_shares)
        s_owners.setdefault(record.aggregation, set()).update(owner for owner, _ in record.body.s_shares)
    problems = [
        f"aggregation {agg}: both shares of {sorted(b_owners.get(agg, set()) & s_owners[agg])}"
        for agg in s_owners
        if b_owners.get(agg, set()) & s_owners[agg]
    ]
    if not messages:
        problems.append("no UnmaskShares in the transcript (nothing to test)")
    kinds = sum(len(v) for v in b_owners.values()), sum(len(v) for v in s_owners.values())
    return _result(name, problems, f"{len(messages)} UnmaskShares; b-share owners {kinds[0]}, s-share owners {kinds[1]}")


# --- the mask generator ---------------------------------------------------------------------------


def check_mask_depends_on_every_seed_bit(length: int = 8) -> CheckResult:
    """Flipping any one of the 256 seed bits changes about half the mask bits (both mask code paths)."""
    name = "mask-depends-on-every-seed-bit"
    base = hashlib.sha256(b"securefed/audit/seed").digest()
    problems = []

    def masks(seed: bytes) -> tuple[np.ndarray, np.ndarray]:
        accumulator = prg.MaskAccumulator(length)
        accumulator.add(seed)
        return prg.expand_mask(seed, length), accumulator.value

    reference = masks(base)
    if not np.array_equal(*reference):
        problems.append("expand_mask and MaskAccumulator disagree on one seed")
    bits = 32 * length
    low, high = bits // 4, 3 * bits // 4  # 8 standard deviations either side of bits/2
    distances = []
    for bit in range(8 * prg.SEED_SIZE):
        flipped = bytearray(base)
        flipped[bit // 8] ^= 1 << (bit % 8)
        for path, mask, ref in zip(("expand_mask", "MaskAccumulator"), masks(bytes(flipped)), reference):
            distance = int(np.unpackbits((mask ^ ref).view(np.uint8)).sum())
            distances.append(distance)
            if not low <= distance <= high:
                problems.append(f"{path}: flipping seed bit {bit} changes {distance} of {bits} mask bits")
    return _result(name, problems, f"256 seed bits x 2 code paths, mask bits changed {min(distances)}..{max(distances)} of {bits}")


def check_share_ciphertext_bound_to_address() -> CheckResult:
    """A share sealed for (task, round, u -> v, context) opens under exactly that associated data and no other."""
    name = "share-ciphertext-bound-to-address"
    key = hashlib.sha256(b"securefed/audit/aead-key").digest()
    context = hashlib.sha256(b"model A").digest()
    address = (AUDIT_TASK, 7, 1, 2, context)
    sealed = aead.seal(key, bytes(range(70)), aead.share_associated_data(*address))
    problems = []
    try:
        aead.open_sealed(key, sealed, aead.share_associated_data(*address))
    except InvalidShare:
        problems.append("the ciphertext does not open at its own address (positive control)")
    variants = {
        "reversed direction": (AUDIT_TASK, 7, 2, 1, context),
        "other recipient": (AUDIT_TASK, 7, 1, 3, context),
        "other sender": (AUDIT_TASK, 7, 3, 2, context),
        "other round": (AUDIT_TASK, 8, 1, 2, context),
        "other task": ("another-task", 7, 1, 2, context),
        "other model context": (AUDIT_TASK, 7, 1, 2, hashlib.sha256(b"model B").digest()),
    }
    for label, other in variants.items():
        try:
            aead.open_sealed(key, sealed, aead.share_associated_data(*other))
        except InvalidShare:
            continue
        problems.append(f"opens when re-addressed ({label})")
    return _result(name, problems, f"refused under all {len(variants)} re-addressings")


# --- scripted attacks by a malicious coordinator ----------------------------------------------------


def no_double_reveal(r: HonestRound) -> tuple[bool, str]:
    """No honest node released both shares of one peer (per node and across nodes)."""
    try:
        assert_no_double_reveal(r.clients, r.unmask_outputs)
    except AssertionError as exc:
        return False, f"double reveal: {exc}"
    return True, ""


def _refused(r: HonestRound, node: int, message: object) -> tuple[bool, str]:
    """Deliver a tampered message; the node must raise one of securefed's errors, abort and answer nothing."""
    before = r.errors.get(node)
    replies = r.deliver(node, message)
    error = r.errors.get(node)
    if error is None or error is before:
        return False, f"node {node} accepted {type(message).__name__} and answered {[type(m).__name__ for m in replies]}"
    if not r.clients[node].aborted or replies:
        return False, f"node {node} raised {type(error).__name__} but did not end ABORTED and silent"
    return True, f"node {node}: {type(error).__name__}({getattr(error, 'reason', '')})"


def _attack_result(name: str, r: HonestRound | Sequence[HonestRound], refusals: Sequence[tuple[bool, str]]) -> CheckResult:
    rounds = [r] if isinstance(r, HonestRound) else list(r)
    problems = [detail for ok, detail in refusals if not ok]
    for each in rounds:
        ok, detail = no_double_reveal(each)
        if not ok:
            problems.append(detail)
    if not refusals:
        problems.append("the attack was never delivered")
    return _result(name, problems, "; ".join(detail for _, detail in refusals))


def _replace_entry(key_list: KeyList, sender: int, **changes: object) -> KeyList:
    return KeyList(tuple(dataclasses.replace(e, **changes) if e.sender == sender else e for e in key_list.entries))


def attack_double_reveal() -> CheckResult:
    """The coordinator lists survivor 3 as dropped too, asking nodes 1 and 5 for s_3 while 2 and 4 reveal b_3."""
    r = HonestRound(5, 3, task=AUDIT_TASK)
    sends = r.run_until(UnmaskRequest)
    refusals = []
    for send in sends:
        if send.to in (1, 5):
            refusals.append(_refused(r, send.to, dataclasses.replace(send.message, dropped=(3,))))
        elif send.to in (2, 4):
            r.deliver(send.to, send.message)  # honest requests: b_3 leaves these nodes legitimately
    return _attack_result("refuses-double-reveal-request", r, refusals)


def attack_split_survivor_view() -> CheckResult:
    """U3 with node 5 to {1, 2, 5} and U3 without it to {3, 4}; then {3, 4} are asked for s_5."""
    r = HonestRound(5, 3, task=AUDIT_TASK, policy=ClientPolicy())
    r.run_until(ConsistencyRequest)
    full, split = (1, 2, 3, 4, 5), (1, 2, 3, 4)
    signatures = {}
    for node in r.config.ids:
        (reply,) = r.deliver(node, ConsistencyRequest(split if node in (3, 4) else full))
        signatures[node] = reply.signature
    for node in (1, 2, 5):  # the first group legitimately reveals b_5
        r.deliver(node, UnmaskRequest(full, (), tuple((s, signatures[s]) for s in (1, 2, 5))))
    everyone = tuple(sorted(signatures.items()))
    refusals = [
        _refused(r, 3, UnmaskRequest(split, (5,), tuple(p for p in everyone if p[0] != 5))),
        _refused(r, 4, UnmaskRequest(split, (5,), ((3, signatures[3]), (4, signatures[4])))),
    ]
    return _attack_result("refuses-inconsistent-survivor-lists", r, refusals)


def attack_key_substitution() -> CheckResult:
    """The coordinator swaps node 2's round keys for its own (re-signed with its own identity) and node 4's own keys."""
    r = HonestRound(5, 3, task=AUDIT_TASK)
    sends = r.run_until(KeyList)
    fake_c, fake_s = AgreementKeyPair.generate().public_bytes, AgreementKeyPair.generate().public_bytes
    forged = COORDINATOR_IDENTITY.sign(advertise_transcript(r.config, 2, fake_c, fake_s))
    peer_swap = _replace_entry(r.sends_to(sends, 1), 2, c_pk=fake_c, s_pk=fake_s, signature=forged)
    own = r.identities[4].sign(advertise_transcript(r.config, 4, fake_c, fake_s))  # worst case: validly signed
    own_swap = _replace_entry(r.sends_to(sends, 4), 4, c_pk=fake_c, s_pk=fake_s, signature=own)
    refusals = [_refused(r, 1, peer_swap), _refused(r, 4, own_swap)]
    return _attack_result("refuses-key-substitution", r, refusals)


def attack_forged_consistency_signatures() -> CheckResult:
    """Split view, and the coordinator forges nodes 1 and 2's consistency signatures over the smaller U3 for node 3."""
    r = HonestRound(5, 3, task=AUDIT_TASK)
    r.run_until(ConsistencyRequest)
    full, split = (1, 2, 3, 4, 5), (1, 2, 3, 4)
    signatures = {}
    for node in r.config.ids:
        (reply,) = r.deliver(node, ConsistencyRequest(split if node in (3, 4) else full))
        signatures[node] = reply.signature
    for node in (1, 2, 5):
        r.deliver(node, UnmaskRequest(full, (), tuple((s, signatures[s]) for s in (1, 2, 5))))
    transcript = consistency_transcript(r.config, r.graph_seed(), split)
    forged = {1: COORDINATOR_IDENTITY.sign(transcript), 2: bytes(reversed(signatures[2]))}
    request = UnmaskRequest(split, (5,), ((1, forged[1]), (2, forged[2]), (3, signatures[3])))
    return _attack_result("refuses-forged-consistency-signatures", r, [_refused(r, 3, request)])


def attack_different_models() -> CheckResult:
    """Nodes 1-3 are handed model A and nodes 4-5 model B; the coordinator sends all five one key list."""
    other = dataclasses.replace(make_config(5, 3, task=AUDIT_TASK), context=hashlib.sha256(b"another model").digest())
    r = HonestRound(5, 3, task=AUDIT_TASK, configs={4: other, 5: other})
    adverts = r.start()
    mixed = KeyList(tuple(sorted(adverts, key=lambda a: a.sender)))
    return _attack_result("refuses-different-models", r, [_refused(r, node, mixed) for node in r.config.ids])


def attack_weaker_than_policy() -> CheckResult:
    """A cohort of 3 to a site whose minimum is 5, and a threshold of 2 of 5 to a site requiring a majority."""
    refusals, rounds = [], []
    for n, t, policy in ((3, 2, ClientPolicy(min_cohort=5)), (5, 2, ClientPolicy())):
        r = HonestRound(n, t, task=AUDIT_TASK, policy=policy)
        rounds.append(r)
        try:
            sent = r.clients[1].start()
        except SecureFedError as exc:
            ok = r.clients[1].aborted and getattr(exc, "reason", "") == "weaker-than-policy"
            refusals.append((ok, f"n={n}, t={t}: {getattr(exc, 'reason', type(exc).__name__)}"))
        else:
            refusals.append((False, f"n={n}, t={t}: the node advertised keys ({len(sent)} messages)"))
    return _attack_result("refuses-cohort-below-policy", rounds, refusals)


def attack_replay(kind: str) -> CheckResult:
    """Round 1 completes; in round 2 (same identities, roster, model) the coordinator replays a round-1 message."""
    identities = make_identities(5, seed=11)
    first = HonestRound(5, 3, task=AUDIT_TASK, identities=identities, seed=11)
    first.run()
    second = HonestRound(5, 3, task=AUDIT_TASK, identities=identities, seed=11, round_id=2)
    wanted = {"key-list": KeyList, "share-relay": ShareRelay, "unmask-request": UnmaskRequest}[kind]
    if wanted is KeyList:
        second.start()
    else:
        second.run_until(wanted)
    old = next(send.message for send in first.server_log if send.to == 1 and isinstance(send.message, wanted))
    return _attack_result(f"refuses-replay-{kind}", [first, second], [_refused(second, 1, old)])


def attack_readdressed_ciphertexts() -> CheckResult:
    """Node 2's ciphertext for node 1 is relayed to node 3, and node 1's own ciphertext is reflected back to it."""
    r = HonestRound(5, 3, task=AUDIT_TASK)
    sends = r.run_until(ShareRelay)
    for_1, for_3 = r.sends_to(sends, 1), r.sends_to(sends, 3)
    redirected = ShareRelay(tuple((s, dict(for_1.ciphertexts)[2] if s == 2 else c) for s, c in for_3.ciphertexts))
    own_to_2 = next(dict(m.ciphertexts)[2] for m in r.client_log if isinstance(m, ShareKeys) and m.sender == 1)
    reflected = ShareRelay(tuple((s, own_to_2 if s == 2 else c) for s, c in for_1.ciphertexts))
    refusals = [_refused(r, 3, redirected), _refused(r, 1, reflected)]
    return _attack_result("refuses-readdressed-ciphertexts", r, refusals)


def attack_node_round_start(kind: str, policy: object | None = None) -> CheckResult:
    """A real ``Node`` (default site policy unless ``policy``) is sent a RoundStart it must refuse.

    ``kind``:

    * ``"unmasked"``: the coordinator asks for ``masking = false``; the node must refuse before
      training and never send its plain update;
    * ``"replayed"``: the same aggregation id again after the node joined it; the node must refuse
      and advertise no second set of keys;
    * ``"small-cohort"``: a cohort of 2 to a site whose minimum is 3; the node must refuse, and
      (as the node module promises) before it trains on its data.

    Training is observed (not changed) by wrapping ``ModelAdapter.fit_local``.
    """
    import tempfile  # noqa: PLC0415

    from securefed.federation.messages import Refusal  # noqa: PLC0415
    from securefed.federation.node import Node, NodeState  # noqa: PLC0415
    from securefed.federation.spec import RoundSpec  # noqa: PLC0415
    from securefed.learning.data import LocalDataset  # noqa: PLC0415
    from securefed.learning.models import ModelAdapter, make_adapter  # noqa: PLC0415

    names = ["site-1", "site-2", "site-3"]
    keys = {name: SigningKey.generate() for name in names}
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 4))
    dataset = LocalDataset(X, (X[:, 0] > 0).astype(np.int64), None)
    model = make_adapter("sgd_logistic", 4, (0, 1)).initial_parameters()

    def spec(masking: bool) -> dict:
        return RoundSpec(
            task=AUDIT_TASK, round=1, phase="train", model_kind="sgd_logistic", model_options={}, n_features=4,
            classes=(0, 1), epochs=1, learning_rate=0.1, batch_size=8, clip_norm=10.0, fractional_bits=16,
            weight_cap=100, threshold=2, neighbours=None, masking=masking, dp=None,
        ).to_json()  # fmt: skip

    cohort = tuple((i, name) for i, name in enumerate(names, start=1))
    starts = {
        "unmasked": [RoundStart(1, cohort, spec(False), model)],
        "replayed": [RoundStart(1, cohort, spec(True), model)] * 2,
        "small-cohort": [RoundStart(1, cohort[:2], spec(True), model)],
    }[kind]
    expected = {"unmasked": "masking-required", "replayed": "replay", "small-cohort": "weaker-than-policy"}[kind]
    trainings = []
    real_fit = ModelAdapter.fit_local

    def observed_fit(self, *args, **kwargs):  # noqa: ANN001, ANN202
        trainings.append(1)
        return real_fit(self, *args, **kwargs)

    with tempfile.TemporaryDirectory() as folder, mock.patch.object(ModelAdapter, "fit_local", observed_fit):
        state = NodeState(Path(folder) / "node.sqlite")
        sock = _FakeNodeSocket()
        try:
            roster = {n: k.public_bytes for n, k in keys.items()}
            node = Node("site-1", AUDIT_TASK, sock, keys["site-1"], roster, dataset, state, policy)
            for start in starts:
                sock.inbox.append(Envelope(AUDIT_TASK, 5, start))
                node.step(0)
        finally:
            state.close()
    bodies = [e.body for e in sock.sent]
    reasons = [b.reason for b in bodies if isinstance(b, Refusal)]
    problems = []
    if expected not in reasons:
        problems.append(f"no {expected!r} refusal (refusals: {reasons})")
    if any(isinstance(b, MaskedInput) for b in bodies):
        problems.append("the node sent its input")
    if sum(isinstance(b, AdvertiseKeys) for b in bodies) > (1 if kind == "replayed" else 0):
        problems.append("the node took part")
    if len(trainings) > (1 if kind == "replayed" else 0):
        problems.append(f"the node trained on its data {len(trainings)} time(s) for a round it refuses")
    trained = "after training once, for the round it joined" if kind == "replayed" else "without training on its data"
    return _result(f"refuses-{kind}-round-start", problems, f"site-1 refused ({expected}) {trained}")


#: name -> (promise, attack). The name is the audit-report check name.
ATTACKS: dict[str, tuple[str, Callable[[], CheckResult]]] = {
    "refuses-double-reveal-request": (
        "a node never reveals both the b-share and the s-share of one peer",
        attack_double_reveal,
    ),
    "refuses-inconsistent-survivor-lists": (
        "nodes shown different survivor sets cannot be made to release both shares of a peer",
        attack_split_survivor_view,
    ),
    "refuses-key-substitution": (
        "peers' round keys are accepted only under the node's own roster, and its own keys only unchanged",
        attack_key_substitution,
    ),
    "refuses-forged-consistency-signatures": (
        "unmasking needs t valid consistency signatures, checked against the node's own roster",
        attack_forged_consistency_signatures,
    ),
    "refuses-different-models": (
        "nodes handed different models (round contexts) do not accept each other's keys",
        attack_different_models,
    ),
    "refuses-cohort-below-policy": (
        "a node refuses rounds weaker than its own ClientPolicy before it advertises anything",
        attack_weaker_than_policy,
    ),
    "refuses-replay-key-list": (
        "messages from an earlier round are refused (round id bound into signatures and keys)",
        lambda: attack_replay("key-list"),
    ),
    "refuses-replay-share-relay": (
        "messages from an earlier round are refused (round id bound into signatures and keys)",
        lambda: attack_replay("share-relay"),
    ),
    "refuses-replay-unmask-request": (
        "messages from an earlier round are refused (round id bound into signatures and keys)",
        lambda: attack_replay("unmask-request"),
    ),
    "refuses-readdressed-ciphertexts": (
        "a relayed share opens only for its sender -> recipient direction",
        attack_readdressed_ciphertexts,
    ),
    "refuses-unmasked-round-start": (
        "a site never sends an unmasked update unless its own policy allows it",
        lambda: attack_node_round_start("unmasked"),
    ),
    "refuses-replayed-round-start": (
        "a site joins each aggregation at most once (durable replay guard)",
        lambda: attack_node_round_start("replayed"),
    ),
    "refuses-small-cohort-round-start": (
        "a site refuses a round weaker than its policy before it trains on its data",
        lambda: attack_node_round_start("small-cohort"),
    ),
}


# --- the wire: ZMTP/CurveZMQ streams captured on loopback ---------------------------------------------


_HANDSHAKE = (b"HELLO", b"WELCOME", b"INITIATE", b"READY")


@dataclass
class ZmtpStream:
    """One direction of a ZMTP 3 connection, split into greeting, handshake commands and CURVE boxes."""

    greeting: bytes
    commands: list[bytes]  # command names, in order
    boxes: list[bytes]  # MESSAGE payloads: 16-byte MAC + ciphertext
    nonces: list[int]
    plain_frames: list[bytes]  # frames that are neither a command nor a CURVE MESSAGE
    tail: int  # bytes of an incomplete last frame (connection cut mid-frame)

    @property
    def mechanism(self) -> bytes:
        return self.greeting[12:32].rstrip(b"\0")


def parse_zmtp(stream: bytes) -> ZmtpStream:
    """Split a captured ZMTP 3.x byte stream (RFC 23/37) into its parts; CURVE MESSAGEs per RFC 26."""
    parsed = ZmtpStream(stream[:64], [], [], [], [], 0)
    i = 64
    while i < len(stream):
        flags = stream[i]
        if flags & 0x02:
            if i + 9 > len(stream):
                break
            size, i = int.from_bytes(stream[i + 1 : i + 9], "big"), i + 9
        else:
            if i + 2 > len(stream):
                break
            size, i = stream[i + 1], i + 2
        if i + size > len(stream):
            i -= 9 if flags & 0x02 else 2
            break
        body = stream[i : i + size]
        i += size
        if body.startswith(b"\x07MESSAGE"):
            parsed.nonces.append(int.from_bytes(body[8:16], "big"))
            parsed.boxes.append(body[16:])
        elif flags & 0x04 and body:
            parsed.commands.append(body[1 : 1 + body[0]])
        else:
            parsed.plain_frames.append(body)
    parsed.tail = len(stream) - i
    return parsed


def check_wire_is_curve_ciphertext(streams: Sequence[bytes]) -> CheckResult:
    """Each captured direction is a CURVE greeting, the four handshake commands, then only MESSAGE boxes that look random."""
    name = "wire-carries-only-curve-boxes"
    problems, boxes = [], []
    for n, stream in enumerate(streams):
        if not stream:
            continue  # a connection that carried nothing in this direction
        parsed = parse_zmtp(stream)
        if parsed.greeting[:1] != b"\xff" or parsed.greeting[9:10] != b"\x7f":
            problems.append(f"stream {n}: no ZMTP greeting")
        if parsed.mechanism != b"CURVE":
            problems.append(f"stream {n}: security mechanism {parsed.mechanism!r}, not CURVE")
        unexpected = [c for c in parsed.commands if c not in _HANDSHAKE]
        if unexpected or len(parsed.commands) != len(set(parsed.commands)):
            problems.append(f"stream {n}: cleartext commands {parsed.commands[:6]}")
        if parsed.plain_frames:
            problems.append(f"stream {n}: {len(parsed.plain_frames)} frames outside CURVE boxes")
        if any(b <= a for a, b in zip(parsed.nonces, parsed.nonces[1:])):
            problems.append(f"stream {n}: MESSAGE nonces not strictly increasing")
        boxes.extend(parsed.boxes)
    pooled = b"".join(boxes)
    if len(pooled) < 5 * 256:
        problems.append(f"only {len(pooled)} bytes in CURVE boxes: too few to test")
        p = float("nan")
    else:
        p = chi2_uniform_p(np.bincount(np.frombuffer(pooled, dtype=np.uint8), minlength=256))
        if p < ALPHA:
            problems.append(f"pooled box bytes: chi-square p = {p:.2e} (df 255)")
    return _result(name, problems, f"{len(streams)} streams, {len(boxes)} MESSAGE boxes, {len(pooled)} bytes, chi-square p = {p:.3f}")


def check_wire_has_no_plaintext(
    streams: Sequence[bytes], markers: Mapping[str, bytes], arrays: Mapping[str, bytes]
) -> CheckResult:
    """No captured byte stream contains a marker string or any non-degenerate 16-byte excerpt of a known array.

    Arrays shorter than 16 bytes are searched for whole.
    """
    name = "wire-holds-no-plaintext"
    problems = []
    for label, marker in markers.items():
        for n, stream in enumerate(streams):
            if marker in stream:
                problems.append(f"{label} ({marker!r}) in stream {n} at {stream.index(marker)}")
    for label, data in arrays.items():
        if len(data) < 16:  # shorter than a window (e.g. a 3-entry evaluation vector): look for all of it
            hits = [(n, stream.index(data), 0) for n, stream in enumerate(streams) if data in stream]
        else:
            hits = shared_windows(data, streams, step=4, skip_degenerate=True)
        if hits:
            problems.append(f"{label}: {len(hits)} 16-byte excerpts on the wire (stream {hits[0][0]} at {hits[0][1]})")
    total = sum(len(s) for s in streams)
    return _result(name, problems, f"{len(markers)} markers and {len(arrays)} arrays searched in {total} captured bytes")


def zmtp_plain_stream(messages: Iterable[Sequence[bytes]]) -> bytes:
    """A NULL-mechanism ZMTP 3.0 stream carrying ``messages`` (what the wire would show without CURVE)."""
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
    out = [greeting, b"\x04\x06\x05READY"]
    for frames in messages:
        for k, frame in enumerate(frames):
            more = 0x01 if k < len(frames) - 1 else 0
            if len(frame) > 255:
                out.append(bytes([more | 0x02]) + len(frame).to_bytes(8, "big"))
            else:
                out.append(bytes([more, len(frame)]))
            out.append(frame)
    return b"".join(out)


class TcpTap:
    """A bounded TCP forwarder on loopback that records every byte in both directions of every connection."""

    def __init__(self, target: tuple[str, int], max_bytes: int = 64 << 20) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.connections: list[dict[str, bytearray]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="tcp-tap", daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:  # the far end is gone (e.g. a reconnect after the coordinator exited)
                downstream.close()
                continue
            record = {"up": bytearray(), "down": bytearray()}
            self.connections.append(record)
            for args in ((downstream, upstream, record["up"]), (upstream, downstream, record["down"])):
                thread = threading.Thread(target=self._pump, args=args, name="tcp-tap-pump", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, buffer: bytearray) -> None:
        source.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = source.recv(65536)
                except (TimeoutError, socket.timeout):
                    continue
                if not data:
                    break
                if len(buffer) < self.max_bytes:
                    buffer += data[: self.max_bytes - len(buffer)]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def streams(self) -> list[bytes]:
        return [bytes(record[way]) for record in self.connections for way in ("up", "down")]

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._listener.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# --- real daemons on loopback ---------------------------------------------------------------------------


FAST_DEADLINES = {"advertise": 5, "share": 3, "masked_input": 3, "consistency": 3, "unmask": 3}


class AuditFederation:
    """A LocalFederation over scikit-learn's digits (sgd_logistic) whose processes this object owns.

    Every process it starts is stopped by :meth:`stop` (SIGTERM, then SIGKILL after a grace
    period), by its own Popen handle; waits are bounded.
    """

    def __init__(self, root: Path, n_nodes: int, rounds: int, *, transcript: bool = False, seed: int = 0) -> None:
        from securefed.learning.datasets import (  # noqa: PLC0415
            load_bundled,
            train_test_split_stratified,
        )
        from securefed.learning.models import DEFAULT_TRAINING  # noqa: PLC0415
        from securefed.learning.partition import partition  # noqa: PLC0415
        from securefed.localfed import LocalFederation  # noqa: PLC0415

        dataset = load_bundled("digits")
        split = train_test_split_stratified(dataset.X, dataset.y, 0.25, seed)
        self.names = [f"site-{i + 1}" for i in range(n_nodes)]
        parts = partition("iid", split.X_train, split.y_train, n_nodes, seed)
        self.node_data = {name: (split.X_train[idx], split.y_train[idx]) for name, idx in zip(self.names, parts)}
        training = DEFAULT_TRAINING["sgd_logistic"]
        self.task = {
            "name": f"{AUDIT_TASK}-{root.name}",
            "model": "sgd_logistic",
            "features": dataset.n_features,
            "classes": list(dataset.classes),
            "rounds": rounds,
            "local_epochs": training["epochs"],
            "learning_rate": training["learning_rate"],
            "batch_size": training["batch_size"],
            "min_nodes": n_nodes,
            "threshold": 0.6,
            "clip_norm": 100.0,
        }
        self.fed = LocalFederation.create(
            root, self.node_data, list(dataset.feature_names), self.task, deadlines=FAST_DEADLINES, transcript=transcript
        )
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def coordinator_public_key(self) -> bytes:
        from securefed.wire.keys import CurveKeyPair  # noqa: PLC0415

        return CurveKeyPair.load(self.fed.root / "coordinator" / "curve.key").public

    def route_node_through(self, name: str, port: int) -> None:
        """Point one node's config at another local port (e.g. a :class:`TcpTap`)."""
        config = self.fed.node_configs[name]
        text = config.read_text()
        line = f'coordinator = "{self.fed.endpoint}"'
        if line not in text:
            raise RuntimeError(f"{config} has no line {line!r}")
        config.write_text(text.replace(line, f'coordinator = "tcp://127.0.0.1:{port}"'))

    def start_coordinator(self) -> None:
        self.processes["coordinator"] = self.fed.start_coordinator()

    def start_nodes(self) -> None:
        for name in self.names:
            self.processes[name] = self.fed.start_node(name)

    def status(self) -> dict | None:
        import json  # noqa: PLC0415

        try:
            return json.loads(self.fed.status_path.read_text())
        except (OSError, ValueError):
            return None

    def wait_until(self, probe: Callable[[], object], timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.diagnostics()}")

    def coordinator_alive(self) -> bool:
        process = self.processes.get("coordinator")
        return process is not None and process.poll() is None

    def wait_coordinator_exit(self, timeout: float) -> int:
        try:
            return self.processes["coordinator"].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the coordinator did not finish within {timeout:.0f} s\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        parts = [f"status: {self.status()}"]
        for name in ("coordinator", *self.names):
            tail = "\n".join(self.fed.log(name).splitlines()[-15:])
            if tail:
                parts.append(f"--- {name}.log\n{tail}")
        return "\n".join(parts)

    def stop(self, grace: float = 5.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
