"""A hash-chained, signed, append-only log of per-round receipts kept at each site.

Theory of operation. Each line of the log (JSON) is one receipt of what the
node did in one aggregation: task, round, aggregation id, model hash, the
survivor set it signed, the DP parameters and epsilon charged, which peers'
shares it revealed and of which kind, and how the aggregation ended. A
line carries ``seq`` (1, 2, ...), ``prev`` (the previous line's hash), its
own ``hash`` (SHA-256 over the canonical JSON of seq, prev, time and
receipt) and an Ed25519 ``signature`` of that hash by the node's identity
key. Editing, reordering, inserting or deleting any line breaks the chain
or a signature. Cutting lines off the *end* cannot be seen from the chain
alone, so the node also keeps the newest (seq, hash) in its state database
and :func:`verify_log` compares against it.

Lines are appended with ``fsync``. A crash between appending a line and
checkpointing the head leaves the log one valid entry *past* the head;
verification accepts that (``extends_head``) and the owner re-records the
head. A power loss mid-write can leave a partial, unterminated last line;
verification sets it aside (``partial_tail``) and the next append replaces it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed.crypto.identity import SigningKey, verify
from securefed.errors import InvalidShare

__all__ = ["AuditLog", "AuditEntry", "VerificationReport", "verify_log", "GENESIS"]

GENESIS = "0" * 64
_DOMAIN = b"securefed/audit/v1"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _entry_hash(seq: int, prev: str, at: float, receipt: dict) -> str:
    return hashlib.sha256(_DOMAIN + _canonical({"seq": seq, "prev": prev, "time": at, "receipt": receipt})).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    prev: str
    time: float
    receipt: dict
    hash: str
    signature: str


class AuditLog:
    """Appends signed receipts; ``on_append(seq, hash)`` lets the owner checkpoint the head durably."""

    def __init__(
        self,
        path: str | Path,
        identity: SigningKey,
        on_append: Callable[[int, str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._identity = identity
        self._on_append = on_append
        report = verify_log(self.path, identity.public_bytes)
        self._seq = report.last_seq
        self._head = report.last_hash
        self._partial_tail = report.partial_tail

    def append(self, receipt: dict) -> AuditEntry:
        if self._partial_tail:
            with open(self.path, "r+b") as handle:  # drop the cut-short line before appending
                handle.truncate(self.path.stat().st_size - self._partial_tail)
            self._partial_tail = 0
        seq, prev = self._seq + 1, self._head
        at = round(time.time(), 3)
        digest = _entry_hash(seq, prev, at, receipt)
        signature = base64.b64encode(self._identity.sign(_DOMAIN + bytes.fromhex(digest))).decode()
        line = _canonical({"seq": seq, "prev": prev, "time": at, "receipt": receipt, "hash": digest, "signature": signature})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seq, self._head = seq, digest
        if self._on_append is not None:
            self._on_append(seq, digest)
        return AuditEntry(seq, prev, at, receipt, digest, signature)


@dataclass
class VerificationReport:
    entries: list[AuditEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: the log runs past the recorded head by valid entries: a crash hit between appending a
    #: receipt and checkpointing the head. Not tampering; the owner re-records the head.
    extends_head: bool = False
    #: bytes of an unterminated, unparseable last line (a write cut short), set aside
    partial_tail: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else 0

    @property
    def last_hash(self) -> str:
        return self.entries[-1].hash if self.entries else GENESIS


def verify_log(path: str | Path, public_key: bytes, head: tuple[int, str] | None = None) -> VerificationReport:
    """Check every line's hash, chain link and signature; compare the end with ``head`` if given."""
    report = VerificationReport()
    file = Path(path)
    if not file.exists():
        if head is not None and head[0] > 0:
            report.problems.append(f"the log is missing but the node recorded {head[0]} entries")
        return report
    prev, expected_seq = GENESIS, 1
    content = file.read_bytes()
    chunks = content.split(b"\n")
    for number, raw in enumerate(chunks, start=1):
        if not raw:
            continue
        if number == len(chunks):  # no newline after it: a write that was cut short
            try:
                json.loads(raw)
            except ValueError:
                report.partial_tail = len(raw)
                break
        try:
            line = json.loads(raw)
            entry = AuditEntry(
                int(line["seq"]), str(line["prev"]), float(line["time"]), dict(line["receipt"]),
                str(line["hash"]), str(line["signature"]),
            )
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"line {number}: not a valid entry (edited or partially written)")
            break
        if entry.seq != expected_seq:
            report.problems.append(f"line {number}: sequence number {entry.seq}, expected {expected_seq} (lines removed or reordered)")
        if entry.prev != prev:
            report.problems.append(f"line {number}: does not link to the previous entry (chain broken)")
        if _entry_hash(entry.seq, entry.prev, entry.time, entry.receipt) != entry.hash:
            report.problems.append(f"line {number}: content does not match its hash (entry edited)")
        try:
            verify(public_key, base64.b64decode(entry.signature, validate=True), _DOMAIN + bytes.fromhex(entry.hash))
        except (InvalidShare, ValueError):
            report.problems.append(f"line {number}: signature is not this node's (entry forged or edited)")
        report.entries.append(entry)
        prev, expected_seq = entry.hash, entry.seq + 1
    if head is not None and report.problems == [] and (report.last_seq, report.last_hash) != tuple(head):
        seq, digest = head
        at_head = GENESIS if seq == 0 else next((e.hash for e in report.entries if e.seq == seq), None)
        if report.last_seq > seq and at_head == digest:
            report.extends_head = True
        elif report.last_seq < seq:
            report.problems.append(
                f"the log ends at entry {report.last_seq} but the node recorded entry {seq} (entries cut off the end)"
            )
        else:
            report.problems.append(f"entry {seq} is not the one the node recorded (log replaced or rewritten)")
    return report
