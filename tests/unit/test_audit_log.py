"""The site audit log: every receipt chained and signed; any edit, reorder, removal or truncation shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.audit.log import GENESIS, AuditLog, verify_log
from securefed.crypto.identity import SigningKey

KEY = SigningKey.generate()


def _receipt(i: int) -> dict:
    return {
        "task": "t",
        "round": i,
        "aggregation": i,
        "signed_survivors": [1, 2, 3],
        "revealed_b_shares_of": [1, 2, 3],
        "revealed_s_shares_of": [4],
        "outcome": "completed",
    }


def _write(tmp_path: Path, count: int = 5) -> tuple[Path, list[int | str]]:
    heads: list = []
    log = AuditLog(tmp_path / "audit.log", KEY, on_append=lambda seq, digest: heads.append((seq, digest)))
    for i in range(1, count + 1):
        log.append(_receipt(i))
    return tmp_path / "audit.log", heads


def test_an_untouched_log_verifies_and_chains_from_genesis(tmp_path: Path) -> None:
    path, heads = _write(tmp_path)
    report = verify_log(path, KEY.public_bytes, heads[-1])
    assert report.ok, report.problems
    assert [entry.seq for entry in report.entries] == [1, 2, 3, 4, 5]
    assert report.entries[0].prev == GENESIS
    assert all(later.prev == earlier.hash for earlier, later in zip(report.entries, report.entries[1:]))
    assert report.entries[2].receipt == _receipt(3)


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, 2)
    heads: list = []
    AuditLog(path, KEY, on_append=lambda seq, digest: heads.append((seq, digest))).append(_receipt(3))
    report = verify_log(path, KEY.public_bytes, heads[-1])
    assert report.ok and report.last_seq == 3


@settings(max_examples=60)
@given(st.data())
def test_changing_any_byte_of_any_entry_is_detected(tmp_path_factory, data) -> None:
    folder = tmp_path_factory.mktemp("log")
    path, heads = _write(folder, 4)
    raw = bytearray(path.read_bytes())
    position = data.draw(st.integers(0, 10**9)) % len(raw)  # the log's length varies with its timestamps
    if raw[position] == ord("\n"):
        position = max(0, position - 1)
    raw[position] = (raw[position] + data.draw(st.integers(1, 255))) % 256
    path.write_bytes(bytes(raw))
    assert not verify_log(path, KEY.public_bytes, heads[-1]).ok


def test_removing_reordering_or_truncating_entries_is_detected(tmp_path: Path) -> None:
    path, heads = _write(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    for tampered in (lines[:2] + lines[3:], [lines[1], lines[0], *lines[2:]]):
        path.write_bytes(b"".join(tampered))
        assert not verify_log(path, KEY.public_bytes, heads[-1]).ok
    path.write_bytes(b"".join(lines[:-1]))  # cut the last entry: only the head checkpoint can tell
    assert verify_log(path, KEY.public_bytes).ok
    report = verify_log(path, KEY.public_bytes, heads[-1])
    assert not report.ok and "cut off" in report.problems[0]


def test_a_consistently_rewritten_entry_fails_the_signature(tmp_path: Path) -> None:
    """An attacker who recomputes hashes after an edit still cannot sign as the node."""
    from securefed.audit.log import _entry_hash

    path, _ = _write(tmp_path, 1)
    line = json.loads(path.read_bytes())
    line["receipt"]["revealed_s_shares_of"] = [1, 2, 3, 4]
    line["hash"] = _entry_hash(line["seq"], line["prev"], line["time"], line["receipt"])
    path.write_text(json.dumps(line) + "\n")
    report = verify_log(path, KEY.public_bytes)
    assert not report.ok and any("signature" in problem for problem in report.problems)


def test_another_nodes_key_does_not_verify(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, 2)
    assert not verify_log(path, SigningKey.generate().public_bytes).ok


def test_a_missing_log_with_a_recorded_head_is_reported(tmp_path: Path) -> None:
    assert verify_log(tmp_path / "none.log", KEY.public_bytes).ok
    assert not verify_log(tmp_path / "none.log", KEY.public_bytes, (3, "ab" * 32)).ok


@pytest.mark.parametrize("junk", [b"not json\n", b'{"seq": 1}\n'])
def test_garbage_lines_are_reported_not_raised(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(junk)
    report = verify_log(path, KEY.public_bytes)
    assert not report.ok


def test_a_log_one_entry_past_its_recorded_head_is_a_crash_not_tampering(tmp_path: Path) -> None:
    """kill -9 between appending a receipt and checkpointing the head: accepted, and flagged."""
    path, heads = _write(tmp_path, 3)
    report = verify_log(path, KEY.public_bytes, heads[-2])
    assert report.ok and report.extends_head and report.last_seq == 3
    forged_head = (2, "ab" * 32)
    assert not verify_log(path, KEY.public_bytes, forged_head).ok


def test_a_cut_short_last_line_is_set_aside_and_replaced_by_the_next_append(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"seq":3,"prev":"')  # a write interrupted by a power loss
    report = verify_log(path, KEY.public_bytes)
    assert report.ok and report.partial_tail > 0 and report.last_seq == 2
    heads: list = []
    AuditLog(path, KEY, on_append=lambda seq, digest: heads.append((seq, digest))).append(_receipt(3))
    final = verify_log(path, KEY.public_bytes, heads[-1])
    assert final.ok and final.partial_tail == 0 and [e.seq for e in final.entries] == [1, 2, 3]
