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

Recovery. A log that fails verification (two daemons once wrote to it, a
disk fault, an edit) cannot be extended: its chain is broken for good.
:func:`recover_log` moves it aside under a timestamped name (the
*archive*) and starts a new chain whose first entry, signed like any other,
is a *recovery entry*: it names the archive, its SHA-256, its head (the
last entry up to which it still verifies, as (seq, hash), or
``"unverifiable"`` and why), the node's recorded head, the problems found
and the operator's reason, and it *carries* the receipts the caller selects
from the archive (the node carries its DP releases, so that archiving, or
later losing the archive, never makes the site forget a release).
:func:`verify_chain` verifies the current chain and walks back across each
recovery boundary: the archive, when present, must still hash to what the
recovery entry recorded and verify up to its recorded head.

A crash during recovery leaves either the old log in place (run it again)
or the new chain with the old head still recorded; verification accepts
the latter like a crash after an append (``extends_head``), because the
recovery entry names that very head.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed._fs import atomic_write
from securefed.crypto.identity import SigningKey, verify
from securefed.errors import InvalidShare, StorageError

__all__ = [
    "GENESIS",
    "RECOVERY",
    "ArchiveCheck",
    "AuditEntry",
    "AuditLog",
    "ChainReport",
    "RecoveryResult",
    "VerificationReport",
    "authentic_entries",
    "expand_carried",
    "recover_log",
    "verify_chain",
    "verify_log",
]

GENESIS = "0" * 64
_DOMAIN = b"securefed/audit/v1"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _entry_hash(seq: int, prev: str, at: float, receipt: dict) -> str:
    return hashlib.sha256(_DOMAIN + _canonical({"seq": seq, "prev": prev, "time": at, "receipt": receipt})).hexdigest()


def _signed_line(identity: SigningKey, seq: int, prev: str, at: float, receipt: dict) -> tuple[bytes, str, str]:
    digest = _entry_hash(seq, prev, at, receipt)
    signature = base64.b64encode(identity.sign(_DOMAIN + bytes.fromhex(digest))).decode()
    line = _canonical({"seq": seq, "prev": prev, "time": at, "receipt": receipt, "hash": digest, "signature": signature})
    return line, digest, signature


#: ``receipt["kind"]`` of the first entry of a chain started by :func:`recover_log`
RECOVERY = "recovery"


def _is_recovery(receipt: dict) -> bool:
    return receipt.get("kind") == RECOVERY


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
        line, digest, signature = _signed_line(self._identity, seq, prev, at, receipt)
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
    #: how many leading entries verify (chain, hash, signature) before the first problem
    valid_prefix: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else 0

    @property
    def last_hash(self) -> str:
        return self.entries[-1].hash if self.entries else GENESIS


def _read(file: Path) -> bytes | None:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read the audit log {file}: {exc.strerror}") from None


def verify_log(path: str | Path, public_key: bytes, head: tuple[int, str] | None = None) -> VerificationReport:
    """Check every line's hash, chain link and signature; compare the end with ``head`` if given."""
    file = Path(path)
    content = _read(file)
    if content is None:
        report = VerificationReport()
        if head is not None and head[0] > 0:
            report.problems.append(f"the log is missing but the node recorded {head[0]} entries")
        return report
    return _verify_bytes(content, public_key, head)


def _verify_bytes(content: bytes, public_key: bytes, head: tuple[int, str] | None) -> VerificationReport:
    report = VerificationReport()
    prev, expected_seq = GENESIS, 1
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
                int(line["seq"]),
                str(line["prev"]),
                float(line["time"]),
                dict(line["receipt"]),
                str(line["hash"]),
                str(line["signature"]),
            )
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"line {number}: not a valid entry (edited or partially written)")
            break
        if entry.seq != expected_seq:
            report.problems.append(
                f"line {number}: sequence number {entry.seq}, expected {expected_seq} (lines removed or reordered)"
            )
        if entry.prev != prev:
            report.problems.append(f"line {number}: does not link to the previous entry (chain broken)")
        if _entry_hash(entry.seq, entry.prev, entry.time, entry.receipt) != entry.hash:
            report.problems.append(f"line {number}: content does not match its hash (entry edited)")
        try:
            verify(public_key, base64.b64decode(entry.signature, validate=True), _DOMAIN + bytes.fromhex(entry.hash))
        except (InvalidShare, ValueError):
            report.problems.append(f"line {number}: signature is not this node's (entry forged or edited)")
        report.entries.append(entry)
        if not report.problems:
            report.valid_prefix = len(report.entries)
        prev, expected_seq = entry.hash, entry.seq + 1
    if head is not None and report.problems == [] and (report.last_seq, report.last_hash) != tuple(head):
        seq, digest = head
        at_head = GENESIS if seq == 0 else next((e.hash for e in report.entries if e.seq == seq), None)
        first = report.entries[0].receipt if report.entries else {}
        if report.last_seq > seq and at_head == digest:
            report.extends_head = True
        elif _is_recovery(first) and first.get("recorded_head") == {"seq": seq, "hash": digest}:
            report.extends_head = True  # a recovery started this chain, and a crash came before it re-recorded the head
        elif report.last_seq < seq:
            report.problems.append(
                f"the log ends at entry {report.last_seq} but the node recorded entry {seq} (entries cut off the end)"
            )
        else:
            report.problems.append(f"entry {seq} is not the one the node recorded (log replaced or rewritten)")
    return report


# --- recovery ------------------------------------------------------------------------------------


def _authentic(content: bytes, public_key: bytes) -> list[AuditEntry]:
    found: list[AuditEntry] = []
    for raw in content.split(b"\n"):
        try:
            line = json.loads(raw)
            entry = AuditEntry(
                int(line["seq"]), str(line["prev"]), float(line["time"]), dict(line["receipt"]),
                str(line["hash"]), str(line["signature"]),
            )  # fmt: skip
            if _entry_hash(entry.seq, entry.prev, entry.time, entry.receipt) != entry.hash:
                continue
            verify(public_key, base64.b64decode(entry.signature, validate=True), _DOMAIN + bytes.fromhex(entry.hash))
        except (ValueError, KeyError, TypeError, RecursionError, InvalidShare):
            continue
        found.append(entry)
    return found


def authentic_entries(path: str | Path, public_key: bytes) -> list[AuditEntry]:
    """Every line of ``path`` whose own hash and signature verify, wherever the chain around it broke.

    What a broken log still proves: each such entry was written by the holder of the identity key,
    as it stands. (Whether entries are missing, only the chain can tell.)
    """
    content = _read(Path(path))
    return [] if content is None else _authentic(content, public_key)


def expand_carried(receipts: Iterable[tuple[float, dict]]) -> list[tuple[float, dict]]:
    """``(time, receipt)`` pairs with every recovery entry's carried receipts put in its place, recursively."""
    out: list[tuple[float, dict]] = []
    for at, receipt in receipts:
        if _is_recovery(receipt):
            carried = receipt.get("carried")
            items = []
            for item in carried if isinstance(carried, list) else []:
                if isinstance(item, dict) and isinstance(item.get("receipt"), dict):
                    try:
                        items.append((float(item.get("time", at)), item["receipt"]))
                    except (TypeError, ValueError):
                        items.append((at, item["receipt"]))
            out.extend(expand_carried(items))
        else:
            out.append((at, receipt))
    return out


@dataclass(frozen=True)
class RecoveryResult:
    archive: Path | None
    entry: AuditEntry
    #: the archive's head as recorded: {"seq", "hash"}, or "unverifiable"
    archive_head: dict | str
    carried: int


def _archive_path(path: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    candidate = path.with_name(f"{path.name}.failed-{stamp}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.failed-{stamp}-{number}")
    return candidate


def _keep_as(path: Path, archive: Path) -> None:
    """Make ``archive`` a durable second name of ``path`` (a hard link, or a copy where links fail)."""
    try:
        os.link(path, archive)
    except OSError:
        shutil.copy2(path, archive)
        fd = os.open(archive, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_log(
    path: str | Path,
    identity: SigningKey,
    recorded_head: tuple[int, str] | None,
    reason: str,
    carry: Callable[[list[tuple[float, dict]]], list[tuple[float, dict]]],
    on_append: Callable[[int, str], None] | None = None,
    extra: dict | None = None,
) -> RecoveryResult:
    """Archive the log at ``path`` and start a new chain whose first, signed entry names the archive.

    The caller must hold the state folder's lock (no daemon may be appending). ``carry`` selects,
    from the ``(time, receipt)`` pairs of the archive's authentic entries (recovery entries already
    expanded), the receipts the new chain must carry. ``on_append(1, hash)`` re-records the node's
    head. ``extra`` adds fields to the recovery entry (e.g. the task). The archive is never altered.
    """
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the folder of the audit log {file}: {exc.strerror}") from None
    now = time.time()
    content = _read(file)
    public_key = identity.public_bytes
    recorded: dict[str, int | str] | None = None
    recorded_seq = 0
    if recorded_head is not None:
        recorded_seq = int(recorded_head[0])
        recorded = {"seq": recorded_seq, "hash": str(recorded_head[1])}
    archive: Path | None = None
    if content is None:
        report = verify_log(file, public_key, recorded_head)
        head: dict | str = "unverifiable"
        why = "the log file was missing" + (f" (the node had recorded entry {recorded_seq})" if recorded_seq > 0 else "")
        authentic: list[AuditEntry] = []
    else:
        report = _verify_bytes(content, public_key, recorded_head)
        authentic = _authentic(content, public_key)
        archive = _archive_path(file, now)
        if report.valid_prefix:
            last = report.entries[report.valid_prefix - 1]
            head, why = (
                {"seq": last.seq, "hash": last.hash},
                (f"the chain verifies from entry 1 to entry {last.seq}" + ("" if report.ok else f"; then: {report.problems[0]}")),
            )
        else:
            head = "unverifiable"
            first = report.problems[0] if report.problems else "the log holds no entries"
            why = f"no entry verifies from the start of the chain: {first}"
    carried = carry(expand_carried((entry.time, entry.receipt) for entry in authentic))
    receipt = {
        "kind": RECOVERY,
        "outcome": "recovered",
        **(extra or {}),
        "reason": reason,
        "archive": None if archive is None else archive.name,
        "archive_sha256": None if content is None else hashlib.sha256(content).hexdigest(),
        "archive_head": head,
        "archive_head_why": why,
        "archive_entries": len(authentic),
        "recorded_head": recorded,
        "problems": report.problems[:10],
        "carried": [{"time": at, "receipt": item} for at, item in carried],
    }
    at = round(now, 3)
    line, digest, signature = _signed_line(identity, 1, GENESIS, at, receipt)
    try:
        if archive is not None:
            _keep_as(file, archive)
        atomic_write(file, line + b"\n", mode=0o600)
    except OSError as exc:
        raise StorageError(f"cannot archive the audit log {file}: {exc.strerror}") from None
    if on_append is not None:
        on_append(1, digest)
    return RecoveryResult(archive, AuditEntry(1, GENESIS, at, receipt, digest, signature), head, len(carried))


@dataclass
class ArchiveCheck:
    """One recovery boundary: the recovery entry that starts a chain, and what it says of the archive."""

    recovery: AuditEntry
    name: str | None
    path: Path | None
    present: bool
    #: the archive's head as the recovery entry states it: {"seq", "hash"} or "unverifiable" when
    #: readable, anything else when not (then ``problems`` says so)
    head: object
    #: the archive changed after it was archived, or no longer verifies up to its recorded head
    problems: list[str] = field(default_factory=list)
    #: what the recovery recorded, and what is merely absent
    notes: list[str] = field(default_factory=list)
    #: the archive's authentic entries (its receipts count, e.g. for the privacy ledger)
    entries: list[AuditEntry] = field(default_factory=list)
    report: VerificationReport | None = None


@dataclass
class ChainReport:
    """The current chain and every recovery boundary behind it, newest first."""

    current: VerificationReport
    archives: list[ArchiveCheck] = field(default_factory=list)
    #: boundary problems (a malformed recovery entry, an archive altered after archiving)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.current.ok and not self.problems

    def receipts(self) -> list[tuple[float, dict]]:
        """Every receipt the site's logs prove: the current chain's, each present archive's authentic
        entries, and every receipt a recovery entry carries (expanded)."""
        pairs = [(entry.time, entry.receipt) for entry in self.current.entries]
        for archive in self.archives:
            pairs += [(entry.time, entry.receipt) for entry in archive.entries]
        return expand_carried(pairs)


def _check_archive(folder: Path, recovery: AuditEntry, public_key: bytes) -> ArchiveCheck:
    receipt = recovery.receipt
    name, head = receipt.get("archive"), receipt.get("archive_head")
    check = ArchiveCheck(recovery, name if isinstance(name, str) else None, None, False, head)
    valid_head = head == "unverifiable" or (
        isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)
    )
    if not valid_head or not isinstance(receipt.get("carried", []), list):
        check.problems.append("the recovery entry does not name the archived log's head in a readable form")
        return check
    if name is None:
        check.notes.append(f"no archive: {receipt.get('archive_head_why', 'the log was missing at recovery')}")
        return check
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
        check.problems.append(f"the recovery entry names the archive {name!r}, which is not a file name")
        return check
    check.path = folder / name
    content = _read(check.path)
    if content is None:
        check.notes.append(
            f"archive {name} is not present here; the {len(receipt.get('carried', []))} receipt(s) the recovery "
            "entry carries from it still count"
        )
        return check
    check.present = True
    check.entries = _authentic(content, public_key)
    check.report = _verify_bytes(content, public_key, None)
    if hashlib.sha256(content).hexdigest() != receipt.get("archive_sha256"):
        check.problems.append(f"archive {name} was changed after it was archived (its SHA-256 differs from the recorded one)")
    if isinstance(head, dict):
        prefix = check.report.entries[: check.report.valid_prefix]
        at = next((entry for entry in prefix if entry.seq == head["seq"]), None)
        if at is None or at.hash != head["hash"]:
            check.problems.append(f"archive {name} no longer verifies up to its recorded head (entry {head['seq']})")
        else:
            check.notes.append(f"archive {name} verifies up to its recorded head, entry {head['seq']}")
    else:
        check.notes.append(f"archive {name}: head unverifiable at recovery ({receipt.get('archive_head_why', '?')})")
    if check.report.problems:
        check.notes.append(f"archive {name} beyond its head, as recorded at recovery: {check.report.problems[0]}")
    return check


def verify_chain(path: str | Path, public_key: bytes, head: tuple[int, str] | None = None) -> ChainReport:
    """:func:`verify_log` on the current chain, then across every recovery boundary behind it."""
    file = Path(path)
    report = ChainReport(verify_log(file, public_key, head))
    chain, seen = report.current, {file.name}
    while True:
        for entry in chain.entries[1:]:
            if _is_recovery(entry.receipt):
                report.problems.append(f"entry {entry.seq} is a recovery entry in the middle of a chain")
        if not chain.entries or not _is_recovery(chain.entries[0].receipt) or chain.valid_prefix == 0:
            return report
        check = _check_archive(file.parent, chain.entries[0], public_key)
        report.archives.append(check)
        report.problems += check.problems
        if not check.present or check.report is None or check.name is None or check.name in seen:
            return report
        seen.add(check.name)
        chain = check.report
