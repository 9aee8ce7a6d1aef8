"""Audit checks for the secure-aggregation side of securefed, as plain functions that return a result.

Theory of operation. Every check here takes what an auditor can observe (a coordinator
transcript, bytes captured on the wire, the behaviour of a real node under a scripted attack)
and returns a :class:`CheckResult` instead of asserting. The audit tests assert the result and
record it in the report; the mutation canaries (``test_canaries_secagg.py``) run the *same*
functions on a deliberately broken variant of the implementation and require at least one of
them to fail. A check that cannot fail proves nothing, so every statistical check also comes
with a power control in its test (the same function on plaintext must fail).

The adversary is the one the nodes defend against: an actively malicious coordinator working
with up to c colluding nodes, c from the node's own policy (default max(1, ceil(N/5)) for a
roster of N). Scripted attacks run the real state machines (``tests/secagg_harness.py``) at the
parameters the default policy accepts (2t > N + c for the complete graph); where an attack uses
colluders it uses exactly c of them, the most the policy promises to withstand.

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

In-memory rounds are deterministic: the state machines take their randomness as a parameter, and
:func:`recorded_round` and the attacks give every party a seeded stream
(:func:`tests.secagg_harness.entropy_for`), so round keys, self-mask seeds, graph randomness,
Shamir coefficients and AEAD nonces are fixed by the seed and the checks never flake. Checks over
the real daemons use the daemons' own randomness; with about 150 p-values per run of the audit
suite's secure-aggregation side, the family-wise false-alarm rate is below 2e-4.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
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
from securefed.crypto.shamir import PRIME, SHARE_SIZE, Share
from securefed.errors import InvalidShare, ProtocolAborted, SecureFedError
from securefed.federation.messages import Envelope, RoundStart
from securefed.federation.spec import parse_spec, round_context
from securefed.secagg.bounds import default_colluders, smallest_safe_threshold
from securefed.secagg.client import ClientProtocol
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.graph import NeighbourGraph, propose_parameters
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    Deadline,
    KeyList,
    MaskedInput,
    PeerGone,
    SeedReveal,
    SeedRevealList,
    Send,
    ShareKeys,
    ShareRelay,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.transcript import (
    advertise_transcript,
    consistency_transcript,
    graph_seed,
    round_binding,
    seed_commitment,
    share_associated_data_for,
    share_key,
)
from securefed.wire.codec import encode
from securefed.wire.transcript import read_transcript
from tests.fakes import FakeNodeSocket as _FakeNodeSocket
from tests.secagg_harness import (
    HonestRound,
    assert_no_double_reveal,
    entropy_for,
    exact_sum,
    make_config,
    make_identities,
)

ALPHA = 1e-6
AUDIT_TASK = "privacy-audit"
#: nonce || AES-GCM(share of s_sk || share of b) || tag
SHARE_CIPHERTEXT_SIZE = aead.NONCE_SIZE + 2 * SHARE_SIZE + aead.TAG_SIZE
#: The coordinator's own identity key: valid Ed25519, but in nobody's roster.
COORDINATOR_IDENTITY = SigningKey.generate()
#: The security level of the default ClientPolicy for sparse graphs (failure probability 2^-40).
SECURITY_BITS = 40


# --- the auditor's own bounds (computed here, independently of securefed.secagg.bounds) ---------------


def auditor_colluders(roster_size: int) -> int:
    """The default adversary a node defends against: max(1, ceil(N / 5)) colluders."""
    return max(1, -(-roster_size // 5))


def auditor_safe_threshold(n: int, degree: int | None, colluders: int | None = None) -> int:
    """The smallest t that stops ``colluders`` (default: the policy's) in a split view, from first principles.

    Complete graph: the coordinator shows honest group A one survivor list and honest group B
    another; both groups plus the c colluders must reach t, and |A| + |B| <= N - c, so the
    attack needs 2(t - c) <= N - c: safe iff 2t > N + c. Sparse graph of degree k (even): the
    same inside a target's closed neighbourhood of k + 1 nodes holding X colluders, X
    hypergeometric (k of the other n - 1 nodes, c of them corrupt); safe iff a union bound over
    the n targets of P[X >= 2t - (k + 1)] is at most 2^-40. Returns k + 2 if no t is safe.
    """
    c = auditor_colluders(n) if colluders is None else colluders
    if degree is None:
        return (n + c) // 2 + 1
    corrupt = min(c, n - 1)
    total = math.comb(n - 1, degree)
    for t in range(1, degree + 2):
        need = max(0, 2 * t - (degree + 1))
        tail = sum(math.comb(corrupt, x) * math.comb(n - 1 - corrupt, degree - x) for x in range(need, min(corrupt, degree) + 1))
        if Fraction(n * tail, total) <= Fraction(1, 1 << SECURITY_BITS):
            return t
    return degree + 2


def _degree(n: int, neighbours: int | None) -> int | None:
    """The graph degree a round of n nodes with ``neighbours`` really uses (k rounded up to even; None = complete)."""
    return make_config(n, 1, neighbours=neighbours).degree


def _int_seed(seed: bytes | int) -> int:
    return seed if isinstance(seed, int) else int.from_bytes(hashlib.sha256(seed).digest()[:8], "big")


@functools.lru_cache(maxsize=8)
def _identities(n: int, seed: int = 0) -> dict[int, SigningKey]:
    return make_identities(n, seed)


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
    """Everything the coordinator saw: records, plus per-aggregation cohort ids, round context and
    round parameters (the :class:`RoundConfig` every node of that aggregation bound into its keys)."""

    records: list[Record]
    cohorts: dict[int, dict[str, int]] = field(default_factory=dict)
    contexts: dict[int, bytes] = field(default_factory=dict)
    task: str = AUDIT_TASK
    configs: dict[int, RoundConfig] = field(default_factory=dict)

    def of(self, message_type: type, direction: str | None = None) -> list[Record]:
        return [r for r in self.records if isinstance(r.body, message_type) and (direction is None or r.direction == direction)]

    def node_id(self, aggregation: int, name: str) -> int:
        return self.cohorts[aggregation][name]


def transcript_from_file(path: str | Path) -> Transcript:
    """Read a daemon's ``transcript_file``; cohorts, contexts and round parameters are recomputed from its
    RoundStarts (as each node computes them) and the length of the masked inputs."""
    records = []
    transcript = Transcript(records)
    starts: dict[int, RoundStart] = {}
    for raw in read_transcript(path):
        envelope = raw.envelope  # every recorded message already passed the strict codec once
        records.append(Record(raw.direction, raw.node, envelope, raw.frames))
        body = envelope.body
        transcript.task = envelope.task
        if isinstance(body, RoundStart) and raw.direction == "sent":
            transcript.cohorts[envelope.aggregation] = {name: i for i, name in body.cohort}
            transcript.contexts[envelope.aggregation] = round_context(body.spec, body.cohort, body.model)
            starts.setdefault(envelope.aggregation, body)
    for record in transcript.of(MaskedInput, "received"):
        aggregation = record.aggregation
        start = starts.get(aggregation)
        if start is None or aggregation in transcript.configs:
            continue
        spec = parse_spec(start.spec)
        transcript.configs[aggregation] = RoundConfig(
            transcript.task, aggregation, len(start.cohort), spec.threshold, int(record.body.vector.size),
            transcript.contexts[aggregation], spec.neighbours,
        )  # fmt: skip
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
        configs={config.round_id: config},
    )


@dataclass
class RecordedRound:
    round: HonestRound
    transcript: Transcript
    inputs: dict[int, np.ndarray]
    where: str = "in-memory"  # how the audit report labels checks on this round

    @property
    def result(self):
        return self.round.server.result


def default_policy_threshold(n: int, neighbours: int | None = None) -> int:
    """The smallest threshold the default ClientPolicy accepts for n nodes (roster n) with this graph, by the
    library's own bound (k + 2 if none is safe). The split-view check holds it to :func:`auditor_safe_threshold`."""
    return smallest_safe_threshold(n, _degree(n, neighbours), default_colluders(n))


def recorded_round(
    inputs: Mapping[int, np.ndarray],
    *,
    t: int | None = None,
    neighbours: int | None = None,
    seed: bytes = b"audit",
    silent: Mapping | None = None,
) -> RecordedRound:
    """One honest round of the real client and server machines, with the coordinator's view recorded.

    ``inputs`` maps ids 1..n to uint32 vectors; ``neighbours`` None is the complete graph, k the
    SecAgg+ graph; ``t`` None is the smallest threshold the nodes' default policy accepts (the
    nodes run that policy); ``silent`` maps a node to the stage from which it stops answering.
    ``seed`` fixes identities and every party's randomness.
    """
    inputs = {node: _as_u32(vector) for node, vector in inputs.items()}
    n, d = len(inputs), len(next(iter(inputs.values())))
    if t is None:
        t = default_policy_threshold(n, neighbours)
    r = HonestRound(n, t, d=d, neighbours=neighbours, task=AUDIT_TASK, inputs=inputs, silent=silent, seed=_int_seed(seed))
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
    return _result(
        name, problems, f"{len(found)} relayed ciphertexts ({len(unique)} distinct), {SHARE_CIPHERTEXT_SIZE} bytes each"
    )


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
        config = transcript.configs.get(aggregation)
        if config is None:
            problems.append(f"{where}: no round parameters for aggregation {aggregation} (cannot rebuild the binding)")
            continue
        binding = round_binding(config)
        infos = [
            kdf_info(purpose, transcript.task, aggregation, sender, recipient, ctx)
            for purpose in ("share-encryption", "pairwise-mask")
            for ctx in (context, binding, b"")
        ]
        ads = [
            share_associated_data_for(config, sender, recipient),
            aead.share_associated_data(transcript.task, aggregation, sender, recipient, context),
            b"",
        ]
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
    return _result(
        name, problems, f"256 seed bits x 2 code paths, mask bits changed {min(distances)}..{max(distances)} of {bits}"
    )


def check_share_ciphertext_bound_to_address() -> CheckResult:
    """A share sealed under the associated data the node uses for (round, u -> v) opens under exactly that and no other.

    The associated data is the node's own (``securefed.secagg.client.share_associated_data_for``,
    looked up when the check runs); the round is a SecAgg+ round so that every public parameter
    of the binding (task, round, context, n, t, k, d) can be varied on its own.
    """
    name = "share-ciphertext-bound-to-address"
    key = hashlib.sha256(b"securefed/audit/aead-key").digest()
    config = make_config(9, 4, neighbours=4, task=AUDIT_TASK, round_id=7, context=hashlib.sha256(b"model A").digest())

    def address(cfg: RoundConfig, sender: int, recipient: int) -> bytes:
        return client_module.share_associated_data_for(cfg, sender, recipient)

    sealed = aead.seal(key, bytes(range(70)), address(config, 1, 2))
    problems = []
    try:
        aead.open_sealed(key, sealed, address(config, 1, 2))
    except InvalidShare:
        problems.append("the ciphertext does not open at its own address (positive control)")
    other = functools.partial(dataclasses.replace, config)
    variants = {
        "reversed direction": (config, 2, 1),
        "other recipient": (config, 1, 3),
        "other sender": (config, 3, 2),
        "other round": (other(round_id=8), 1, 2),
        "other task": (other(task="another-task"), 1, 2),
        "other model context": (other(context=hashlib.sha256(b"model B").digest()), 1, 2),
        "other cohort size": (other(cohort_size=10), 1, 2),
        "other threshold": (other(threshold=5), 1, 2),
        "other neighbour count": (other(neighbours=6), 1, 2),
        "other vector length": (other(vector_length=5), 1, 2),
    }
    for label, (cfg, sender, recipient) in variants.items():
        try:
            aead.open_sealed(key, sealed, address(cfg, sender, recipient))
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


def _why(error: BaseException) -> str:
    """An error as the report shows it: its type and reason code (or, for an abort, its stage)."""
    code = getattr(error, "reason", None) or getattr(error, "stage", None) or ""
    return f"{type(error).__name__}({code})"


def _refused(r: HonestRound, node: int, message: object) -> tuple[bool, str]:
    """Deliver a tampered message; the node must raise one of securefed's errors, abort and answer nothing."""
    before = r.errors.get(node)
    replies = r.deliver(node, message)
    error = r.errors.get(node)
    if error is None or error is before:
        return False, f"node {node} accepted {type(message).__name__} and answered {[type(m).__name__ for m in replies]}"
    if not r.clients[node].aborted or replies:
        return False, f"node {node} raised {type(error).__name__} but did not end ABORTED and silent"
    return True, f"node {node}: {_why(error)}"


def _refused_at_key_list_or(r: HonestRound, node: int, replies: Sequence[object], then: object) -> tuple[bool, str]:
    """The node already refused the (tampered) key list it was given, or it refuses ``then`` now.

    Answering a key list with the graph-randomness reveal is allowed: it holds no secret of the node,
    and nothing is dealt before the graph is fixed and the neighbours' signatures are checked.
    """
    error = r.errors.get(node)
    if error is not None:
        if not r.clients[node].aborted or replies:
            return False, f"node {node} raised {type(error).__name__} on the key list but did not end ABORTED and silent"
        return True, f"node {node}: {_why(error)} on the key list"
    if any(not isinstance(m, SeedReveal) for m in replies):
        return False, f"node {node} answered the key list with {[type(m).__name__ for m in replies]}"
    return _refused(r, node, then)


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


def _reveal_list(replies: Iterable[object]) -> SeedRevealList:
    """The reveal list a coordinator builds from the SeedReveal messages it collected."""
    return SeedRevealList(tuple(sorted((m.sender, m.value) for m in replies if isinstance(m, SeedReveal))))


def _flip(value: bytes) -> bytes:
    return value[:-1] + bytes([value[-1] ^ 1])


def _run_to_end(r: HonestRound, outbox: list[object]) -> ProtocolAborted | None:
    """Run the rest of the round honestly from ``outbox`` (node messages for the coordinator); the abort, if any."""
    try:
        for _ in range(len(Stage) + 1):
            if r.server.state.value in ("done", "aborted"):
                break
            outbox = r.to_clients(r.to_server(outbox))
    except ProtocolAborted as exc:
        return exc
    return None


def _round_outcome(r: HonestRound, abort: ProtocolAborted | None) -> tuple[bool, str]:
    """How the round ended: a completed round must carry the exact sum of its survivors' inputs."""
    result = r.server.result
    if result is None:
        return True, f"the round then aborted ({_why(abort) if abort else r.server.state.value})"
    if not np.array_equal(result.sum, exact_sum(r.inputs, result.survivors)):
        return False, f"the round completed with a WRONG sum (survivors {result.survivors})"
    named = f", excluded {dict(result.excluded)}" if result.excluded else ""
    return True, f"the round then completed with the exact sum of {len(result.survivors)} survivors{named}"


def _shares_not_taken(
    r: HonestRound, node: int, relay: ShareRelay, dealers: Iterable[int]
) -> tuple[tuple[bool, str], list[object]]:
    """Deliver a tampered ShareRelay. The holder may refuse the round; if it goes on, every dealer whose share it
    cannot vouch for must be in its ``bad_dealers`` (and is then never revealed: see :func:`_never_revealed`).

    Holders no longer abort over a bad dealer (that would give one corrupt dealer a veto over every round).
    """
    before = r.errors.get(node)
    replies = r.deliver(node, relay)
    client = r.clients[node]
    error = r.errors.get(node)
    if error is not None and error is not before:
        ok = client.aborted and not replies
        return (ok, f"node {node}: {_why(error)}" + ("" if ok else " but it did not end ABORTED and silent")), []
    taken = sorted(set(dealers) - client.bad_dealers)
    if taken:
        return (False, f"node {node} took the shares of {taken} from a tampered relay"), replies
    return (
        True,
        f"node {node} took no share of {sorted(dealers)} (bad dealers {sorted(client.bad_dealers)}) and went on",
    ), replies


def _never_revealed(r: HonestRound, node: int, dealers: Iterable[int]) -> list[tuple[bool, str]]:
    """The node released no share of ``dealers`` (neither in its UnmaskShares nor in its own record)."""
    sent = {owner for m in r.unmask_outputs.get(node, ()) for owner, _ in (*m.b_shares, *m.s_shares)}
    leaked = (sent | set(r.clients[node].revealed)) & set(dealers)
    return [(False, f"node {node} revealed shares of {sorted(leaked)} that it could not vouch for")] if leaked else []


def attack_double_reveal() -> CheckResult:
    """The coordinator lists survivor 3 as dropped too, asking nodes 1 and 5 for s_3 while 2 and 4 reveal b_3."""
    r = HonestRound(5, task=AUDIT_TASK)
    sends = r.run_until(UnmaskRequest)
    refusals = []
    for send in sends:
        if send.to in (1, 5):
            refusals.append(_refused(r, send.to, dataclasses.replace(send.message, dropped=(3,))))
        elif send.to in (2, 4):
            r.deliver(send.to, send.message)  # honest requests: b_3 leaves these nodes legitimately
    return _attack_result("refuses-double-reveal-request", r, refusals)


def attack_split_survivor_view() -> CheckResult:
    """Coordinator + 1 colluder (node 1: the default policy's c for a roster of 5, so t = 4 by 2t > N + c).

    U3 with node 5 goes to {2, 4, 5}, U3 without it to {3}. The colluder signs both views, so the first
    group holds t valid signatures over its view and legitimately reveals b_5. Node 3 can be shown only
    its own and the colluder's signature over its view, padded with the others' (made over the other
    view), and is asked for s_5: it must refuse, so the adversary never holds t s-shares of node 5.
    """
    colluder, group_a, group_b = 1, (2, 4, 5), (3,)
    r = HonestRound(5, task=AUDIT_TASK, policy=ClientPolicy())
    r.run_until(ConsistencyRequest)
    full, split = (1, 2, 3, 4, 5), (1, 2, 3, 4)
    signatures = {}
    for node in (*group_a, *group_b):
        (reply,) = r.deliver(node, ConsistencyRequest(split if node in group_b else full))
        signatures[node] = reply.signature
    seed = r.graph_seed()
    colluding = {view: r.identities[colluder].sign(consistency_transcript(r.config, seed, view)) for view in (full, split)}
    for node in group_a:  # t valid signatures over the full view: b_5 leaves these nodes legitimately
        valid = sorted([(colluder, colluding[full]), *((s, signatures[s]) for s in group_a)])
        r.deliver(node, UnmaskRequest(full, (), tuple(valid)))
    padded = sorted([(colluder, colluding[split]), *((s, signatures[s]) for s in (2, 3, 4))])
    refusals = [_refused(r, 3, UnmaskRequest(split, (5,), tuple(padded)))]
    not_set_up = [node for node in group_a if r.clients[node].revealed.get(5) != "b"]
    if not_set_up:
        refusals.append((False, f"set-up failed: nodes {not_set_up} did not reveal b_5 for the view with t signatures"))
    # The ideal-world check: the adversary's s-shares of node 5 are the colluder's own plus what honest nodes released.
    s_holders = {colluder} | {node for node in group_a + group_b if r.clients[node].revealed.get(5) == "s"}
    if len(s_holders) >= r.config.threshold:
        refusals.append((False, f"the adversary holds {len(s_holders)} >= t s-shares of node 5 (from {sorted(s_holders)})"))
    return _attack_result("refuses-inconsistent-survivor-lists", r, refusals)


def attack_key_substitution() -> CheckResult:
    """The coordinator swaps node 2's round keys for its own in node 1's key list (re-signed with its own identity);
    in a second round it swaps node 4's own keys in node 4's key list (validly signed by node 4: the worst case).

    Node 1 may answer the key list with its graph-randomness reveal, but must refuse once the graph is
    fixed and it checks its neighbours' signatures, before it deals a share; node 4 must refuse at once.
    """
    fake_c, fake_s = AgreementKeyPair.generate().public_bytes, AgreementKeyPair.generate().public_bytes
    peer = HonestRound(5, task=AUDIT_TASK)
    key_list = peer.sends_to(peer.run_until(KeyList), 1)
    commitment = {e.sender: e.seed_commitment for e in key_list.entries}
    forged = COORDINATOR_IDENTITY.sign(advertise_transcript(peer.config, 2, fake_c, fake_s, commitment[2]))
    lists = {node: key_list for node in peer.config.ids}
    lists[1] = _replace_entry(key_list, 2, c_pk=fake_c, s_pk=fake_s, signature=forged)
    replies = {node: peer.deliver(node, message) for node, message in lists.items()}
    reveal_list = _reveal_list(m for out in replies.values() for m in out)
    refusals = [_refused_at_key_list_or(peer, 1, replies[1], reveal_list)]

    own = HonestRound(5, task=AUDIT_TASK, seed=1)
    key_list = own.sends_to(own.run_until(KeyList), 4)
    commitment = {e.sender: e.seed_commitment for e in key_list.entries}
    signature = own.identities[4].sign(advertise_transcript(own.config, 4, fake_c, fake_s, commitment[4]))
    refusals.append(_refused(own, 4, _replace_entry(key_list, 4, c_pk=fake_c, s_pk=fake_s, signature=signature)))
    return _attack_result("refuses-key-substitution", [peer, own], refusals)


def attack_forged_consistency_signatures() -> CheckResult:
    """Split view (U3 without node 5 to nodes 3 and 4), and the coordinator forges nodes 1 and 2's consistency
    signatures over the smaller U3 (one with its own key, one garbled) to make up t = 4 for node 3."""
    r = HonestRound(5, task=AUDIT_TASK)
    r.run_until(ConsistencyRequest)
    full, split = (1, 2, 3, 4, 5), (1, 2, 3, 4)
    signatures = {}
    for node in r.config.ids:
        (reply,) = r.deliver(node, ConsistencyRequest(split if node in (3, 4) else full))
        signatures[node] = reply.signature
    transcript = consistency_transcript(r.config, r.graph_seed(), split)
    forged = {1: COORDINATOR_IDENTITY.sign(transcript), 2: bytes(reversed(signatures[2]))}
    request = UnmaskRequest(split, (5,), ((1, forged[1]), (2, forged[2]), (3, signatures[3]), (4, signatures[4])))
    return _attack_result("refuses-forged-consistency-signatures", r, [_refused(r, 3, request)])


def attack_different_models() -> CheckResult:
    """Nodes 1-3 are handed model A and nodes 4-5 model B; the coordinator sends all five one key list, then one
    reveal list built from everyone's reveals. Every node must refuse before it deals a share."""
    other = dataclasses.replace(
        make_config(5, default_policy_threshold(5), task=AUDIT_TASK), context=hashlib.sha256(b"another model").digest()
    )
    r = HonestRound(5, task=AUDIT_TASK, configs={4: other, 5: other})
    adverts = r.start()
    mixed = KeyList(tuple(sorted(adverts, key=lambda a: a.sender)))
    replies = {node: r.deliver(node, mixed) for node in r.config.ids}
    reveal_list = _reveal_list(m for out in replies.values() for m in out)
    refusals = [_refused_at_key_list_or(r, node, replies[node], reveal_list) for node in r.config.ids]
    return _attack_result("refuses-different-models", r, refusals)


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
    """Round 1 completes; in round 2 (same identities, roster, model) the coordinator replays a round-1 message to node 1.

    A replayed key list, reveal list or unmask request must be refused. A replayed share relay is not
    refused outright (a holder never aborts over a dealer's bad shares): node 1 must take none of its
    shares, never reveal a share of those dealers, and the round must not produce a wrong sum.
    """
    identities = make_identities(5, seed=11)
    first = HonestRound(5, task=AUDIT_TASK, identities=identities, seed=11)
    first.run()
    second = HonestRound(5, task=AUDIT_TASK, identities=identities, seed=11, round_id=2)
    wanted = {"key-list": KeyList, "seed-reveals": SeedRevealList, "share-relay": ShareRelay, "unmask-request": UnmaskRequest}[
        kind
    ]
    old = next(send.message for send in first.server_log if send.to == 1 and isinstance(send.message, wanted))
    if wanted is KeyList:
        second.start()
        refusals = [_refused(second, 1, old)]
    elif wanted is ShareRelay:
        sends = second.run_until(ShareRelay)
        dealers = [sender for sender, _ in old.ciphertexts]
        outcome, outbox = _shares_not_taken(second, 1, old, dealers)
        outbox += second.to_clients([send for send in sends if send.to != 1])
        abort = _run_to_end(second, outbox)
        refusals = [outcome, *_never_revealed(second, 1, dealers), _round_outcome(second, abort)]
    else:
        second.run_until(wanted)
        refusals = [_refused(second, 1, old)]
    return _attack_result(f"refuses-replay-{kind}", [first, second], refusals)


def attack_readdressed_ciphertexts() -> CheckResult:
    """Node 2's ciphertext (and commitment) for node 1 is relayed to node 3, and node 1's own ciphertext and
    commitment for node 2 are reflected back to it as if from node 2. Neither holder may take the share
    (refuse, or mark node 2 a bad dealer), and neither may ever reveal a share of node 2."""
    r = HonestRound(5, task=AUDIT_TASK)
    sends = r.run_until(ShareRelay)
    for_1, for_3 = r.sends_to(sends, 1), r.sends_to(sends, 3)
    to_1 = (dict(for_1.ciphertexts)[2], dict(for_1.commitments)[2])
    own = next(m for m in r.client_log if isinstance(m, ShareKeys) and m.sender == 1)
    own_to_2 = (dict(own.ciphertexts)[2], dict(own.commitments)[2])

    def swap(relay: ShareRelay, replacement: tuple[bytes, bytes]) -> ShareRelay:
        return ShareRelay(
            tuple((s, replacement[0] if s == 2 else c) for s, c in relay.ciphertexts),
            tuple((s, replacement[1] if s == 2 else m) for s, m in relay.commitments),
        )

    outcomes, outbox = [], []
    for node, relay in ((3, swap(for_3, to_1)), (1, swap(for_1, own_to_2))):
        outcome, replies = _shares_not_taken(r, node, relay, [2])
        outcomes.append(outcome)
        outbox += replies
    outbox += r.to_clients([send for send in sends if send.to not in (1, 3)])
    abort = _run_to_end(r, outbox)
    outcomes += [*_never_revealed(r, 1, [2]), *_never_revealed(r, 3, [2]), _round_outcome(r, abort)]
    return _attack_result("refuses-readdressed-ciphertexts", r, outcomes)


# --- (a) the round parameters of the split-view attack ---------------------------------------------------

#: (n, neighbours, threshold) that a node defending against no colluder accepts (t > n/2) but that the
#: default adversary (c = max(1, ceil(n/5)) colluders, roster of n) breaks with a split view.
SPLIT_VIEW_PARAMETERS: tuple[tuple[int, int | None, int], ...] = (
    (10, None, 6),
    (9, None, 5),
    (11, None, 6),
    (12, 2, 2),
    (1000, 54, 39),
)


@functools.lru_cache(maxsize=8)
def _roster(n: int) -> dict[int, bytes]:
    return {node: key.public_bytes for node, key in _identities(n).items()}


def _node_start(n: int, neighbours: int | None, t: int) -> tuple[ClientProtocol, SecureFedError | None, list[object]]:
    """Node 1 with the default ClientPolicy (its roster: n members) is offered (n, k, t): what it sends, or its refusal."""
    config = make_config(n, t, neighbours=neighbours, task=AUDIT_TASK)
    client = ClientProtocol(config, 1, _identities(n)[1], _roster(n), None)
    try:
        return client, None, client.start()
    except SecureFedError as exc:
        return client, exc, []


def attack_split_view_parameters() -> CheckResult:
    """Each round of ``SPLIT_VIEW_PARAMETERS`` is refused by a node with the default policy before it advertises.

    The auditor computes its own floor (:func:`auditor_safe_threshold`: 2t > N + c, or the sparse
    split-view bound at 2^-40). The node must refuse the attack's threshold and the one just below
    the floor; the library's stated smallest safe threshold may be stricter than the floor (it also
    guards the sparse graph against isolating a node) but never weaker, and is exactly the floor for
    the complete graph, where the bound is exact. The node must accept that threshold where one
    exists (and refuse the whole range where none does), and accept what ``propose_parameters``
    proposes for the default adversary.
    """
    name = "refuses-split-view-parameters"
    problems, seen = [], []
    for n, k, t in SPLIT_VIEW_PARAMETERS:
        degree = _degree(n, k)
        floor, stated = auditor_safe_threshold(n, degree), default_policy_threshold(n, k)
        pool = n if degree is None else degree + 1
        label = f"n={n}" + ("" if degree is None else f", k={degree}") + f", c={auditor_colluders(n)}"
        if t >= floor:
            problems.append(f"{label}: t={t} is not below the auditor's floor {floor} (bad test vector)")
        if stated < floor or (degree is None and stated != floor):
            problems.append(f"{label}: the library's smallest safe threshold {stated} disagrees with the auditor's {floor}")
        refused = sorted({t, floor - 1, min(stated, pool + 1) - 1} - {0})
        for offered in refused:
            client, error, sent = _node_start(n, k, offered)
            if error is None or getattr(error, "reason", None) != "weaker-than-policy" or sent or not client.aborted:
                problems.append(f"{label}: t={offered} accepted ({len(sent)} messages sent, error {error!r})")
        if stated <= pool:
            _, error, sent = _node_start(n, k, stated)
            if error is not None or [type(m) for m in sent] != [AdvertiseKeys]:
                problems.append(f"{label}: the safe t={stated} was refused ({error})")
            seen.append(f"{label}: t in {refused} refused, t={stated} accepted")
        else:
            seen.append(f"{label}: t in {refused} refused (no threshold is safe for this graph)")
    for n in (10, 1000):
        proposal = propose_parameters(n, 0.05)
        _, error, sent = _node_start(n, proposal.neighbours, proposal.threshold)
        if error is not None or not sent:
            problems.append(
                f"n={n}: the coordinator's own proposal k={proposal.neighbours}, t={proposal.threshold} was refused ({error})"
            )
        seen.append(f"proposal for n={n} (k={proposal.neighbours}, t={proposal.threshold}) accepted")
    return _result(name, problems, "; ".join(seen))


# --- (b) the graph seed cannot be steered --------------------------------------------------------------


def _colluder_advert(config: RoundConfig, identity: SigningKey, sender: int, value: bytes) -> AdvertiseKeys:
    """A colluding node's advertisement: valid round keys and a commitment to graph randomness the adversary chose."""
    material = hashlib.sha256(b"securefed/audit/colluder-keys/%d" % sender).digest()
    c_pk = AgreementKeyPair.from_private_bytes(material).public_bytes
    s_pk = AgreementKeyPair.from_private_bytes(hashlib.sha256(material).digest()).public_bytes
    commitment = seed_commitment(config, sender, value)
    return AdvertiseKeys(
        sender, c_pk, s_pk, commitment, identity.sign(advertise_transcript(config, sender, c_pk, s_pk, commitment))
    )


def attack_colluder_key_list() -> CheckResult:
    """The coordinator shows target node 1 a key list of only itself and its c colluders (c = the default
    policy's bound, validly signed, their graph randomness chosen by the adversary) and a matching reveal list.

    Complete graph (n = 10, t = 7): 1 + c entries are fewer than t; the target must refuse the key list.
    Sparse graph (n = 1000, k = 54, t safe for c = 200): 1 + c entries pass the count, but the graph is
    drawn over the whole cohort from a seed that includes the target's own reveal, so only the colluders
    that happen to be its neighbours are live; the target must refuse (too few live neighbours) before
    it deals a share. A graph drawn over the key list would make every neighbour a colluder.
    """
    name = "refuses-colluder-only-key-list"
    problems, seen = [], []
    for n, k in ((10, None), (1000, 54)):
        t, c, degree = default_policy_threshold(n, k), auditor_colluders(n), _degree(n, k)
        config = make_config(n, t, neighbours=k, task=AUDIT_TASK)
        identities = _identities(n)
        colluders = tuple(range(n - c + 1, n + 1))
        label = f"n={n}" + ("" if degree is None else f", k={degree}") + f", t={t}, {c} colluders"
        target = ClientProtocol(
            config, 1, identities[1], _roster(n), np.zeros(config.vector_length, dtype=np.uint32),
            entropy=entropy_for(b"audit/colluder-key-list", f"{n}/target"),
        )  # fmt: skip
        (advert,) = target.start()
        values = {j: hashlib.sha256(b"securefed/audit/colluder-graph-value/%d" % j).digest() for j in colluders}
        adverts = [advert, *(_colluder_advert(config, identities[j], j, values[j]) for j in colluders)]
        live = None
        try:
            (reveal,) = target.receive(KeyList(tuple(sorted(adverts, key=lambda a: a.sender))))
            reveals = tuple(sorted([(1, reveal.value), *values.items()]))
            graph = NeighbourGraph.build(config.ids, config.degree, graph_seed(config, reveals))
            live = graph.neighbours(1) & {1, *colluders}
            dealt = target.receive(SeedRevealList(reveals))
        except ProtocolAborted as exc:
            where = "the key list" if live is None else f"the reveal list ({len(live)} live neighbours)"
            if exc.stage != "advertise" or not target.aborted:
                problems.append(f"{label}: refused {where} with {_why(exc)}, not for too few peers")
            seen.append(f"{label}: refused {where}, {_why(exc)}")
            continue
        except SecureFedError as exc:
            problems.append(f"{label}: refused for another reason ({_why(exc)}: {exc}); the attack was not delivered")
            continue
        holders = {h for m in dealt if isinstance(m, ShareKeys) for h, _ in m.commitments} - {1}
        problems.append(
            f"{label}: the target dealt shares to {len(holders)} holders, {len(holders & set(colluders))} of them colluders"
        )
    return _result(name, problems, "; ".join(seen))


def check_graph_randomness_hidden(run: RecordedRound | None = None) -> CheckResult:
    """Nothing the coordinator receives before it sends the key list reveals any node's graph randomness.

    Over an honest SecAgg+ round (9 nodes, k = 4): no reveal arrives before the key list is sent; no
    message or wire frame before it holds any 16-byte excerpt of a value revealed later; the graph seed
    cannot be computed from the advertisements' fields; and each reveal opens its commitment under the
    protocol's commitment scheme (so the commitment, not the value, went into the advertisement).
    """
    name = "graph-randomness-hidden-until-key-list"
    if run is None:
        run = recorded_round(structured_inputs(64, 9), neighbours=4, seed=b"audit/graph-randomness")
    config = run.round.config
    records = run.transcript.records
    cut = next((i for i, r in enumerate(records) if r.direction == "sent" and isinstance(r.body, KeyList)), None)
    reveals = {r.body.sender: r.body.value for r in run.transcript.of(SeedReveal, "received")}
    problems: list[str] = []
    if cut is None or not reveals:
        return _result(name, ["no key list or no reveal in the transcript (nothing to test)"], "")
    early = records[:cut]
    if any(isinstance(r.body, SeedReveal) for r in early):
        problems.append("graph randomness reached the coordinator before it sent the key list")
    haystacks, where = [], []
    for i, record in enumerate(early):
        for blob in (*record.frames, *_blobs(record.body)):
            haystacks.append(blob)
            where.append(f"record {i} ({type(record.body).__name__} from {record.node})")
    for node, value in sorted(reveals.items()):
        hits = shared_windows(value, haystacks, window=16, step=4)
        if hits:
            problems.append(f"node {node}'s graph randomness is in {where[hits[0][0]]}, before the key list")
    adverts = {r.body.sender: r.body for r in early if isinstance(r.body, AdvertiseKeys)}
    actual = graph_seed(config, tuple(sorted(reveals.items())))
    for field_name in ("c_pk", "s_pk", "seed_commitment"):
        guess = graph_seed(config, tuple(sorted((s, getattr(a, field_name)) for s, a in adverts.items())))
        if guess == actual:
            problems.append(f"the graph seed follows from the advertisements' {field_name} fields, before the key list")
    unopened = [
        node
        for node, value in reveals.items()
        if node not in adverts or seed_commitment(config, node, value) != adverts[node].seed_commitment
    ]
    if unopened:
        problems.append(f"the reveals of {sorted(unopened)} do not open the commitments in their advertisements")
    return _result(name, problems, f"{len(reveals)} reveals, none visible in the {cut} messages before the key list")


def attack_withheld_or_altered_reveal() -> CheckResult:
    """The graph seed is all the key list's reveals or nothing.

    A malicious coordinator withholds node 3's reveal from the list it sends node 1, alters node 4's in
    the list it sends node 2, and (in a round where node 5 never advertised) adds a reveal for node 5 to
    the list it sends node 1: each node must refuse. With an honest coordinator, a node that withholds
    its reveal, or reveals a value that does not open its commitment, aborts the round at the reveal
    stage, named as the culprit, before anyone deals a share.
    """
    outcomes = []
    r = HonestRound(5, task=AUDIT_TASK)
    honest = r.sends_to(r.run_until(SeedRevealList), 1)
    outcomes.append(_refused(r, 1, SeedRevealList(tuple(p for p in honest.reveals if p[0] != 3))))
    outcomes.append(_refused(r, 2, SeedRevealList(tuple((s, _flip(v) if s == 4 else v) for s, v in honest.reveals))))

    extra = HonestRound(5, task=AUDIT_TASK, silent={5: Stage.ADVERTISE}, seed=1)
    listed = extra.sends_to(extra.run_until(SeedRevealList), 1)
    outcomes.append(_refused(extra, 1, SeedRevealList((*listed.reveals, (5, hashlib.sha256(b"not in the key list").digest())))))

    def aborted_naming(round_: HonestRound, culprit: int, run: Callable[[], object], what: str) -> tuple[bool, str]:
        try:
            run()
        except ProtocolAborted as exc:
            dealt = [m for m in round_.client_log if isinstance(m, ShareKeys)]
            ok = exc.stage == "reveal" and tuple(exc.culprits) == (culprit,) and not dealt
            return ok, f"{what}: aborted at {exc.stage}, culprits {tuple(exc.culprits)}, {len(dealt)} shares dealt"
        return False, f"{what}: the round went on ({round_.server.state.value})"

    silent = HonestRound(5, task=AUDIT_TASK, silent={3: Stage.REVEAL}, seed=2)
    outcomes.append(aborted_naming(silent, 3, silent.run, "node 3 withholds its reveal"))

    bad = HonestRound(5, task=AUDIT_TASK, seed=3)
    replies = bad.to_clients(bad.run_until(KeyList))
    tampered = [SeedReveal(m.sender, _flip(m.value)) if m.sender == 2 else m for m in replies]
    outcomes.append(
        aborted_naming(bad, 2, lambda: bad.to_server(tampered), "node 2 reveals a value its commitment does not open")
    )
    reasons = [getattr(error, "reason", None) for _, error in bad.server_rejections]
    if "bad-reveal" not in reasons:
        outcomes.append((False, f"the coordinator did not refuse node 2's reveal as bad-reveal ({reasons})"))
    return _attack_result("refuses-withheld-or-altered-reveal", [r, extra, silent, bad], outcomes)


# --- (c) robust, identifiable reconstruction --------------------------------------------------------------


def _off_by_one(raw: bytes) -> bytes:
    share = Share.from_bytes(raw)
    return Share(share.x, (share.y + 1) % PRIME).to_bytes()


def attack_wrong_share_revealed() -> CheckResult:
    """A corrupt holder (a colluder; the coordinator is honest here) reveals a share its dealer never dealt.

    Every revealed share is checked against its dealer's signed commitment: the holder must be named
    and all its shares dropped. (n=5, t=4) all survive, the liar alters a b-share: 4 good shares of
    every secret remain, so the round completes with the exact sum. (n=7, t=5) node 7 drops, the liar
    alters its s-share of node 7: 5 good shares remain, exact sum. (n=5, t=4) node 5 drops, the liar
    alters its s-share of node 5: only 3 good shares remain, so the round aborts naming the liar.
    """
    name = "excludes-holder-revealing-wrong-share"
    problems, seen, rounds = [], [], []
    for n, dropped, liar, kind, owner in ((5, None, 2, "b", 4), (7, 7, 3, "s", 7), (5, 5, 2, "s", 5)):
        r = HonestRound(n, task=AUDIT_TASK, silent={dropped: Stage.MASKED_INPUT} if dropped else None, seed=30 + n)
        rounds.append(r)
        replies = r.to_clients(r.run_until(UnmaskRequest))
        field_name = f"{kind}_shares"
        tampered = [
            dataclasses.replace(
                m, **{field_name: tuple((o, _off_by_one(raw) if o == owner else raw) for o, raw in getattr(m, field_name))}
            )
            if isinstance(m, UnmaskShares) and m.sender == liar
            else m
            for m in replies
        ]
        label = (
            f"n={n}, t={r.config.threshold}"
            + (f", node {dropped} dropped" if dropped else "")
            + f", liar {liar} ({kind}-share of {owner})"
        )
        good = n - (1 if dropped else 0) - 1
        try:
            r.to_server(tampered)
        except ProtocolAborted as exc:
            if good >= r.config.threshold or exc.stage != "unmask" or tuple(exc.culprits) != (liar,):
                problems.append(f"{label}: aborted at {exc.stage} naming {tuple(exc.culprits)}")
            seen.append(f"{label}: aborted naming {tuple(exc.culprits)}")
            continue
        result = r.server.result
        if result is None:
            problems.append(f"{label}: no result and no abort ({r.server.state.value})")
            continue
        survivors = tuple(i for i in r.config.ids if i != dropped)
        if set(result.excluded) != {liar}:
            problems.append(f"{label}: excluded {dict(result.excluded)}, not exactly the liar")
        if result.survivors != survivors or not np.array_equal(result.sum, exact_sum(r.inputs, survivors)):
            problems.append(f"{label}: the sum is not the exact sum of {survivors}")
        seen.append(f"{label}: excluded {sorted(result.excluded)}, exact sum")
    problems += [detail for each in rounds for ok, detail in [no_double_reveal(each)] if not ok]
    return _result(name, problems, "; ".join(seen))


def _off_polynomial(holder: int) -> Callable[..., list[Share]]:
    """A dealer's sharing with the share for ``holder`` moved off the polynomial (it then commits to that share)."""
    real = client_module.split_at

    def split_at(secret: bytes, xs: Iterable[int], t: int, *, entropy: Callable[[int], bytes] | None = None) -> list[Share]:
        return [Share(s.x, (s.y + 1) % PRIME) if s.x == holder else s for s in real(secret, xs, t, entropy=entropy)]

    return split_at


def attack_inconsistent_dealer() -> CheckResult:
    """A corrupt dealer (node 3) deals holder 5 shares off its polynomial, and signs commitments to exactly what it dealt.

    No holder can tell (each share matches its commitment), but the coordinator decodes each secret from
    all its shares: the round must abort at unmask naming the dealer, and only the dealer. With n = 5,
    t = 4 the error is detected; with n = 7, t = 5 it is corrected and located, and still blamed on the dealer.
    """
    name = "identifiable-abort-names-bad-dealer"
    dealer, holder = 3, 5
    problems, seen, rounds = [], [], []
    for n in (5, 7):
        r = HonestRound(n, task=AUDIT_TASK, seed=40 + n)
        rounds.append(r)
        outbox = []
        for send in r.run_until(SeedRevealList):
            if send.to == dealer:
                with mock.patch.object(client_module, "split_at", _off_polynomial(holder)):
                    outbox += r.deliver(send.to, send.message)
            else:
                outbox += r.deliver(send.to, send.message)
        abort = _run_to_end(r, outbox)
        label = f"n={n}, t={r.config.threshold}"
        if dealer in r.clients[holder].bad_dealers:
            problems.append(f"{label}: set-up failed: holder {holder} saw a share that does not match its commitment")
        if abort is None or abort.stage != "unmask" or tuple(abort.culprits) != (dealer,):
            state = "no abort" if abort is None else f"aborted at {abort.stage} naming {tuple(abort.culprits)}"
            problems.append(f"{label}: {state}, result {'present' if r.server.result is not None else 'none'}")
        else:
            seen.append(f"{label}: aborted at unmask naming {tuple(abort.culprits)}")
    problems += [detail for each in rounds for ok, detail in [no_double_reveal(each)] if not ok]
    return _result(name, problems, "; ".join(seen))


def attack_dealer_share_mismatch() -> CheckResult:
    """A corrupt dealer (node 3) signs commitments to its real shares but encrypts other shares for holder 5.

    Holder 5 must see the mismatch, mark node 3 a bad dealer, go on, and never reveal a share of it:
    revealing it would get the honest holder excluded (a dealer could frame any holder). The round
    must then complete with the exact sum and name nobody. The adversary runs the dealer's node, so
    it uses that node's own round keys to seal the substituted shares.
    """
    name = "holder-never-reveals-uncommitted-share"
    dealer, holder = 3, 5
    r = HonestRound(5, task=AUDIT_TASK, seed=51)
    replies = r.to_clients(r.run_until(SeedRevealList))
    corrupt = r.clients[dealer]
    key = share_key(r.config, corrupt._c_keys, corrupt._entries[holder].c_pk, dealer, holder)
    payload = Share(holder, 12345).to_bytes() + Share(holder, 67890).to_bytes()
    forged = aead.seal(key, payload, share_associated_data_for(r.config, dealer, holder), nonce=bytes(range(12)))
    replies = [
        dataclasses.replace(m, ciphertexts=tuple((h, forged if h == holder else c) for h, c in m.ciphertexts))
        if isinstance(m, ShareKeys) and m.sender == dealer
        else m
        for m in replies
    ]
    abort = _run_to_end(r, replies)
    outcomes = []
    if dealer not in r.clients[holder].bad_dealers:
        outcomes.append((False, f"holder {holder} took node {dealer}'s shares that fail its commitment"))
    if r.clients[holder].aborted:
        outcomes.append((False, f"holder {holder} aborted ({r.clients[holder].abort_reason}) instead of going on"))
    outcomes += _never_revealed(r, holder, [dealer])
    ok, detail = _round_outcome(r, abort)
    result = r.server.result
    if result is None:
        outcomes.append((False, detail))
    elif result.excluded:
        outcomes.append((False, f"the coordinator named {dict(result.excluded)}"))
    else:
        outcomes.append((ok, f"holder {holder} marked node {dealer} bad and revealed none of its shares; {detail}, nobody named"))
    return _attack_result(name, r, outcomes)


# --- real Node objects -----------------------------------------------------------------------------------


def _node_fixture(names: Sequence[str]):
    from securefed.federation.spec import RoundSpec
    from securefed.learning.data import LocalDataset
    from securefed.learning.models import make_adapter

    keys = {name: SigningKey.generate() for name in names}
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 4))
    dataset = LocalDataset(X, (X[:, 0] > 0).astype(np.int64), None)
    model = make_adapter("sgd_logistic", 4, (0, 1)).initial_parameters()

    def spec(masking: bool = True, threshold: int = 3, round_number: int = 1) -> dict:
        return RoundSpec(
            task=AUDIT_TASK, round=round_number, phase="train", model_kind="sgd_logistic", model_options={}, n_features=4,
            classes=(0, 1), epochs=1, learning_rate=0.1, batch_size=8, clip_norm=10.0, fractional_bits=16,
            weight_cap=100, threshold=threshold, neighbours=None, masking=masking, dp=None,
        ).to_json()  # fmt: skip

    return keys, {n: k.public_bytes for n, k in keys.items()}, dataset, model, spec


def attack_node_round_start(kind: str, policy: object | None = None) -> CheckResult:
    """A real ``Node`` (default site policy unless ``policy``) is sent a RoundStart it must refuse.

    ``kind``:

    * ``"unmasked"``: the coordinator asks for ``masking = false``; the node must refuse before
      training and never send its plain update;
    * ``"replayed"``: the same aggregation id again after the node joined it; the node must refuse
      and advertise no second set of keys;
    * ``"small-cohort"``: a cohort of 2 to a site whose minimum is 3; the node must refuse, and
      (as the node module promises) before it trains on its data;
    * ``"weak-threshold"``: a cohort of 10 with t = 6 (a majority, but 2t > N + c needs 7 against
      the default c = 2): the split-view parameters; the node must refuse before it trains.

    Rounds the node should join use the safe threshold (t = 3 for a roster of 3). Training is
    observed (not changed) by wrapping ``ModelAdapter.fit_local``.
    """
    import tempfile

    from securefed.federation.messages import Refusal
    from securefed.federation.node import Node, NodeState
    from securefed.learning.models import ModelAdapter

    names = [f"site-{i}" for i in range(1, (10 if kind == "weak-threshold" else 3) + 1)]
    keys, roster, dataset, model, spec = _node_fixture(names)
    cohort = tuple((i, name) for i, name in enumerate(names, start=1))
    starts = {
        "unmasked": [RoundStart(1, cohort, spec(False), model)],
        "replayed": [RoundStart(1, cohort, spec(True), model)] * 2,
        "small-cohort": [RoundStart(1, cohort[:2], spec(True, threshold=2), model)],
        "weak-threshold": [RoundStart(1, cohort, spec(True, threshold=6), model)],
    }[kind]
    expected = {"unmasked": "masking-required", "replayed": "replay"}.get(kind, "weaker-than-policy")
    trainings = []
    real_fit = ModelAdapter.fit_local

    def observed_fit(self, *args, **kwargs):
        trainings.append(1)
        return real_fit(self, *args, **kwargs)

    with tempfile.TemporaryDirectory() as folder, mock.patch.object(ModelAdapter, "fit_local", observed_fit):
        state = NodeState(Path(folder) / "node.sqlite")
        sock = _FakeNodeSocket()
        try:
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


_NODE_MESSAGES = (AdvertiseKeys, SeedReveal, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)


def attack_rerun_after_release() -> CheckResult:
    """Three real Nodes complete a training aggregation (a real ServerProtocol drives it) and so release their
    unmasking shares. Then the coordinator starts the same (task, round) again for site-1 under a new
    aggregation id with another model, and then a later round from the very model site-1 already trained
    on: rerun-and-subtract would give a victim's update as the difference of two sums. Site-1 must refuse
    both with reason "rerun", before it trains or advertises; a genuinely new round it must still join.
    """
    import tempfile

    from securefed.federation.messages import Refusal
    from securefed.federation.node import Node, NodeState
    from securefed.learning.models import ModelAdapter
    from securefed.secagg.server import ServerProtocol

    name = "refuses-rerun-after-release"
    names = ["site-1", "site-2", "site-3"]
    keys, roster, dataset, model, spec = _node_fixture(names)
    other_model = model + 0.25
    cohort = tuple((i, n) for i, n in enumerate(names, start=1))
    by_id = dict(cohort)
    trainings: list[int] = []
    real_fit = ModelAdapter.fit_local

    def observed_fit(self, *args, **kwargs):
        trainings.append(1)
        return real_fit(self, *args, **kwargs)

    problems, seen = [], []
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(ModelAdapter, "fit_local", observed_fit):
        states = {n: NodeState(Path(folder) / f"{n}.sqlite") for n in names}
        sockets = {n: _FakeNodeSocket() for n in names}
        try:
            nodes = {n: Node(n, AUDIT_TASK, sockets[n], keys[n], roster, dataset, states[n]) for n in names}
            for i, n in cohort:
                sockets[n].inbox.append(Envelope(AUDIT_TASK, 5, RoundStart(i, cohort, spec(round_number=1), model)))
                nodes[n].step(0)
            if any(nodes[n].current is None for n in names):
                problems.append("set-up failed: a node did not join the first aggregation")
            else:
                server = ServerProtocol(nodes["site-1"].current.client.config, {i: roster[n] for i, n in cohort})
                cursor = dict.fromkeys(names, 0)
                for _ in range(4 * len(Stage)):
                    for n in names:
                        fresh, cursor[n] = sockets[n].sent[cursor[n] :], len(sockets[n].sent)
                        for envelope in fresh:
                            if envelope.aggregation == 5 and isinstance(envelope.body, _NODE_MESSAGES):
                                for send in server.receive(envelope.body):
                                    sockets[by_id[send.to]].inbox.append(Envelope(AUDIT_TASK, 5, send.message))
                    if server.result is not None:
                        break
                    for node in nodes.values():
                        node.step(0)
                released = [n for n in names if any(isinstance(e.body, UnmaskShares) for e in sockets[n].sent)]
                if server.result is None or released != names:
                    problems.append(f"set-up failed: aggregation 5 ended {server.state.value}, unmasking shares from {released}")
                else:
                    seen.append("aggregation 5 completed, all three released their unmasking shares")
            attempts = (
                (6, 1, other_model, "rerun", "same round, another model"),
                (7, 2, model, "rerun", "a later round, the model site-1 already trained on"),
                (8, 2, other_model, None, "a new round and model (control)"),
            )
            sock = sockets["site-1"]
            for aggregation, round_number, start_model, expected, what in attempts:
                before, trained = len(sock.sent), len(trainings)
                sock.inbox.append(
                    Envelope(AUDIT_TASK, aggregation, RoundStart(1, cohort, spec(round_number=round_number), start_model))
                )
                nodes["site-1"].step(0)
                answer = [e.body for e in sock.sent[before:] if e.aggregation == aggregation]
                reasons = [b.reason for b in answer if isinstance(b, Refusal)]
                advertised = any(isinstance(b, AdvertiseKeys) for b in answer)
                if expected is None:
                    if reasons or not advertised:
                        problems.append(f"{what}: not joined (refusals {reasons})")
                    else:
                        seen.append(f"{what}: joined")
                elif reasons != [expected] or advertised or len(trainings) != trained:
                    problems.append(
                        f"{what}: refusals {reasons}, advertised {advertised}, trained {len(trainings) - trained} time(s)"
                    )
                else:
                    seen.append(f"{what}: refused ({expected}) before training")
        finally:
            for state in states.values():
                state.close()
    return _result(name, problems, "; ".join(seen))


#: name -> (promise, attack). The name is the audit-report check name.
ATTACKS: dict[str, tuple[str, Callable[[], CheckResult]]] = {
    "refuses-double-reveal-request": (
        "a node never reveals both the b-share and the s-share of one peer",
        attack_double_reveal,
    ),
    "refuses-inconsistent-survivor-lists": (
        "nodes shown different survivor sets (coordinator + c colluders) cannot be made to release both shares of a peer",
        attack_split_survivor_view,
    ),
    "refuses-key-substitution": (
        "peers' round keys are used only under the node's own roster, and its own keys only unchanged",
        attack_key_substitution,
    ),
    "refuses-forged-consistency-signatures": (
        "unmasking needs t valid consistency signatures, checked against the node's own roster",
        attack_forged_consistency_signatures,
    ),
    "refuses-different-models": (
        "nodes handed different models (round contexts) do not accept each other's keys or graph randomness",
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
    "refuses-replay-seed-reveals": (
        "messages from an earlier round are refused (round id bound into the graph commitments)",
        lambda: attack_replay("seed-reveals"),
    ),
    "refuses-replay-share-relay": (
        "shares replayed from an earlier round are never taken nor revealed (round id bound into keys and commitments)",
        lambda: attack_replay("share-relay"),
    ),
    "refuses-replay-unmask-request": (
        "messages from an earlier round are refused (round id bound into signatures and keys)",
        lambda: attack_replay("unmask-request"),
    ),
    "refuses-readdressed-ciphertexts": (
        "a relayed share is taken only for its own sender -> recipient; a re-addressed one is never used or revealed",
        attack_readdressed_ciphertexts,
    ),
    "refuses-split-view-parameters": (
        "a node refuses every round whose threshold does not stop its policy's colluders (2t > N + c, or the sparse "
        "bound at 2^-40), before it advertises, and accepts the safe ones",
        attack_split_view_parameters,
    ),
    "refuses-colluder-only-key-list": (
        "a key list of the target and its colluders leaves the target too few live neighbours: the graph is drawn "
        "over the cohort, so the coordinator cannot choose who holds the target's shares",
        attack_colluder_key_list,
    ),
    "graph-randomness-hidden-until-key-list": (
        "the coordinator learns no node's graph randomness before it has fixed the key list (it cannot grind the graph)",
        check_graph_randomness_hidden,
    ),
    "refuses-withheld-or-altered-reveal": (
        "a withheld or altered reveal makes nodes refuse, or aborts the round naming the node, before any share is dealt",
        attack_withheld_or_altered_reveal,
    ),
    "excludes-holder-revealing-wrong-share": (
        "a holder that reveals a share its dealer never committed to is named and excluded; the sum stays exact",
        attack_wrong_share_revealed,
    ),
    "identifiable-abort-names-bad-dealer": (
        "a dealer whose committed shares are inconsistent causes an abort that names it, and only it",
        attack_inconsistent_dealer,
    ),
    "holder-never-reveals-uncommitted-share": (
        "a holder never reveals a share that fails its dealer's commitment, so a dealer cannot frame an honest holder",
        attack_dealer_share_mismatch,
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
    "refuses-weak-threshold-round-start": (
        "a site refuses the split-view parameters (n = 10, t = 6 against c = 2) before it trains on its data",
        lambda: attack_node_round_start("weak-threshold"),
    ),
    "refuses-rerun-after-release": (
        "a site that released its unmasking shares never contributes again to that (task, round) nor from that model",
        attack_rerun_after_release,
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
    return _result(
        name, problems, f"{len(streams)} streams, {len(boxes)} MESSAGE boxes, {len(pooled)} bytes, chi-square p = {p:.3f}"
    )


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
            except TimeoutError:
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
                except TimeoutError:
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


FAST_DEADLINES = {"advertise": 5, "reveal": 3, "share": 3, "masked_input": 3, "consistency": 3, "unmask": 3}


class AuditFederation:
    """A LocalFederation over scikit-learn's digits (sgd_logistic) whose processes this object owns.

    Every process it starts is stopped by :meth:`stop` (SIGTERM, then SIGKILL after a grace
    period), by its own Popen handle; waits are bounded.
    """

    def __init__(self, root: Path, n_nodes: int, rounds: int, *, transcript: bool = False, seed: int = 0) -> None:
        from securefed.learning.datasets import (
            load_bundled,
            train_test_split_stratified,
        )
        from securefed.learning.models import DEFAULT_TRAINING
        from securefed.learning.partition import partition
        from securefed.localfed import LocalFederation

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
        from securefed.wire.keys import CurveKeyPair

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
        import json

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
