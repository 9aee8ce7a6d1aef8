"""The per-round history (issue 12): RoundRecord's new fields, their migration, and what the coordinator measures.

An old store (the ``rounds`` table as the first release wrote it) must gain the new columns in
place when opened for writing, and read with defaults when opened read-only (``securefed status``
must never change a file). The coordinator measures each stage's wall time and the bytes of a
round's aggregations; a socket that counts no bytes gives ``None``.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefed.errors import InvalidParameter
from securefed.federation.store import CoordinatorStore, RoundRecord
from securefed.secagg.messages import Stage
from securefed.status import STAGES
from securefed.wire.codec import encode
from tests.inprocess import InProcessFederation

#: the contract with the HTML report's author: these attribute names, in this order
CONTRACT = (
    "round", "aggregation", "participants", "survivors", "accuracy", "loss", "epsilon", "duration",
    "stage_durations", "bytes_in", "bytes_out", "completed_at", "refusals", "attempts",
)  # fmt: skip

#: the coordinator store's schema before issue 12 (tables the history reads)
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (round INTEGER PRIMARY KEY, weights BLOB NOT NULL, sha256 TEXT NOT NULL, strategy_state BLOB);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY, aggregation INTEGER NOT NULL, participants INTEGER NOT NULL, survivors TEXT NOT NULL,
    total_weight REAL, accuracy REAL, loss REAL, eval_samples INTEGER, eval_participants INTEGER, epsilon REAL,
    duration REAL NOT NULL, completed_at REAL NOT NULL
);
CREATE TABLE attempts (
    aggregation INTEGER PRIMARY KEY, round INTEGER NOT NULL, phase TEXT NOT NULL, status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', started_at REAL NOT NULL
);
CREATE TABLE refusals (aggregation INTEGER NOT NULL, node TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL);
INSERT INTO attempts VALUES (1, 1, 'train', 'completed', '', 10.0);
INSERT INTO attempts VALUES (2, 1, 'evaluate', 'completed', '', 11.0);
INSERT INTO attempts VALUES (3, 2, 'train', 'aborted', 'site-2 refused', 12.0);
INSERT INTO attempts VALUES (4, 2, 'train', 'completed', '', 13.0);
INSERT INTO refusals VALUES (3, 'site-2', 'weaker-than-policy', 'x', 12.5);
INSERT INTO rounds VALUES (1, 1, 3, '["a", "b", "c"]', 30.0, 0.8, 0.5, 90, 3, NULL, 1.5, 1000.0);
INSERT INTO rounds VALUES (2, 4, 3, '["a", "c"]', 20.0, NULL, NULL, NULL, NULL, 0.7, 2.5, 2000.0);
"""


def _old_store(path: Path) -> Path:
    db = sqlite3.connect(path)
    try:
        db.executescript(OLD_SCHEMA)
        db.commit()
    finally:
        db.close()
    return path


def _round_columns(path: Path) -> set[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[1] for row in db.execute("PRAGMA table_info(rounds)")}
    finally:
        db.close()


def test_round_record_keeps_the_attribute_names_the_report_relies_on() -> None:
    assert tuple(RoundRecord.__dataclass_fields__) == CONTRACT


def test_the_stage_names_status_knows_are_the_protocols() -> None:
    assert STAGES == tuple(stage.value for stage in Stage)


# --- migration ------------------------------------------------------------------------------


def test_an_old_store_reads_read_only_with_defaults_and_is_not_changed(tmp_path: Path) -> None:
    path = _old_store(tmp_path / "coordinator.sqlite")
    before = _round_columns(path)
    store = CoordinatorStore(path, read_only=True)
    try:
        first, second = store.rounds()
        latest = store.latest_round()
    finally:
        store.close()
    assert _round_columns(path) == before  # a reader never alters the file
    assert (first.round, first.survivors, first.accuracy, first.epsilon, first.duration) == (1, ("a", "b", "c"), 0.8, None, 1.5)
    assert first.stage_durations == {} and first.bytes_in is None and first.bytes_out is None
    assert first.completed_at == 1000.0
    # what the other tables tell is told: round 1 took a training and an evaluation attempt, round 2 a
    # refused attempt and a completed one
    assert (first.attempts, first.refusals) == (2, 0)
    assert (second.attempts, second.refusals, second.epsilon) == (2, 1, 0.7)
    assert latest == second


def test_an_old_store_gains_the_new_columns_in_place_once(tmp_path: Path) -> None:
    path = _old_store(tmp_path / "coordinator.sqlite")
    store = CoordinatorStore(path)
    try:
        migrated = store.rounds()
    finally:
        store.close()
    assert {"stage_durations", "bytes_in", "bytes_out", "refusals", "attempts"} <= _round_columns(path)
    assert [(r.attempts, r.refusals, r.stage_durations, r.bytes_in) for r in migrated] == [(2, 0, {}, None), (2, 1, {}, None)]
    for _ in range(2):  # opening again changes nothing (idempotent), and new rounds carry every field
        store = CoordinatorStore(path)
        try:
            assert store.rounds() == migrated
        finally:
            store.close()
    store = CoordinatorStore(path)
    try:
        aggregation = store.next_aggregation(3, "train")
        store.commit_round(3, np.ones(3), None, aggregation, ["a"], 3, 10.0, None, 0.75,
                           stage_durations={"advertise": 0.25, "unmask": 0.5}, bytes_in=10, bytes_out=20)  # fmt: skip
        third = store.rounds()[-1]
    finally:
        store.close()
    assert (third.round, third.stage_durations, third.bytes_in, third.bytes_out, third.attempts) == (
        3, {"advertise": 0.25, "unmask": 0.5}, 10, 20, 1,
    )  # fmt: skip


# --- round trip through commit_round and record_evaluation ------------------------------------------------


def test_commit_and_evaluation_record_the_whole_history(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite")
    try:
        store.save_initial_model(np.zeros(3))
        refused = store.next_aggregation(1, "train")
        store.record_refusal(refused, "site-2", "too-many-rounds", "round 1 exceeds 0")
        store.record_refusal(refused, "site-3", "too-many-rounds", "round 1 exceeds 0")
        store.finish_attempt(refused, "aborted", "refused")
        aggregation = store.next_aggregation(1, "train")
        stages = {stage: 0.1 * (i + 1) for i, stage in enumerate(STAGES)}
        store.commit_round(1, np.ones(3), None, aggregation, ["site-1", "site-3"], 3, 20.0, 0.4, 2.0,
                           stage_durations=stages, bytes_in=1000, bytes_out=5000)  # fmt: skip
        trained = store.rounds()[0]
        assert (trained.attempts, trained.refusals, trained.accuracy) == (2, 2, None)
        assert list(trained.stage_durations) == list(STAGES)  # stage order is kept
        evaluation = store.next_aggregation(1, "evaluate")
        store.record_evaluation(1, evaluation, 0.9, 0.25, 100, 2, bytes_in=1200, bytes_out=5100)
        (record,) = store.rounds()
        assert store.refusal_counts() == {"too-many-rounds": 2}
    finally:
        store.close()
    assert record == RoundRecord(
        round=1, aggregation=aggregation, participants=3, survivors=("site-1", "site-3"), accuracy=0.9, loss=0.25,
        epsilon=0.4, duration=2.0, stage_durations=stages, bytes_in=1200, bytes_out=5100,
        completed_at=record.completed_at, refusals=2, attempts=3,
    )  # fmt: skip
    assert record.completed_at > 1e9


def test_an_evaluation_without_byte_counts_keeps_the_training_ones(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite")
    try:
        aggregation = store.next_aggregation(1, "train")
        store.commit_round(1, np.ones(2), None, aggregation, ["a"], 1, 1.0, None, 1.0, bytes_in=7, bytes_out=9)
        store.record_evaluation(1, store.next_aggregation(1, "evaluate"), 0.5, 1.0, 10, 1)
        (record,) = store.rounds()
    finally:
        store.close()
    assert (record.bytes_in, record.bytes_out, record.attempts) == (7, 9, 2)


@pytest.mark.parametrize("count", [-1, 1.5, True, "10"])
def test_a_byte_count_must_be_a_non_negative_integer(tmp_path: Path, count: object) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite")
    try:
        aggregation = store.next_aggregation(1, "train")
        with pytest.raises(InvalidParameter, match="byte count"):
            store.commit_round(1, np.ones(2), None, aggregation, ["a"], 1, 1.0, None, 1.0, bytes_in=count)
        assert store.rounds() == []  # nothing of the round was committed
    finally:
        store.close()


def test_history_fields_round_trip(tmp_path: Path) -> None:
    """Whatever stage timings and byte counts the coordinator hands over, the history gives back."""
    path = tmp_path / "coordinator.sqlite"
    store = CoordinatorStore(path)
    rounds = itertools.count(1)

    @given(
        stages=st.dictionaries(
            st.text(min_size=1, max_size=20), st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=8
        ),
        counts=st.tuples(st.none() | st.integers(0, 2**62), st.none() | st.integers(0, 2**62)),
        duration=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    )
    def check(stages: dict, counts: tuple, duration: float) -> None:
        number = next(rounds)
        aggregation = store.next_aggregation(number, "train")
        store.commit_round(number, np.ones(2), None, aggregation, ["a"], 1, 1.0, None, duration,
                           stage_durations=stages, bytes_in=counts[0], bytes_out=counts[1])  # fmt: skip
        reader = CoordinatorStore(path, read_only=True)
        try:
            record = reader.latest_round()
        finally:
            reader.close()
        assert record.round == number and record.attempts == 1
        assert record.stage_durations == stages and list(record.stage_durations) == list(stages)
        assert (record.bytes_in, record.bytes_out, record.duration) == (*counts, duration)

    try:
        check()
    finally:
        store.close()


def test_a_damaged_stage_record_is_a_storage_error(tmp_path: Path) -> None:
    from securefed.errors import StorageError

    path = tmp_path / "coordinator.sqlite"
    store = CoordinatorStore(path)
    try:
        store.commit_round(1, np.ones(2), None, store.next_aggregation(1, "train"), ["a"], 1, 1.0, None, 1.0)
    finally:
        store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE rounds SET stage_durations = '[1, 2]'")
    db.commit()
    db.close()
    reader = CoordinatorStore(path, read_only=True)
    try:
        with pytest.raises(StorageError, match="round history is unreadable"):
            reader.rounds()
    finally:
        reader.close()


# --- what the coordinator measures ------------------------------------------------------------------------


class _Counting:
    """A socket that counts the bytes of what passes through it, as the ZeroMQ one does."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.bytes_received = 0
        self.bytes_sent = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def poll(self, timeout_ms: int) -> list:
        received = self._inner.poll(timeout_ms)
        self.bytes_received += sum(len(frame) for _, envelope in received for frame in encode(envelope))
        return received

    def send(self, node: str, envelope) -> bool:
        sent = self._inner.send(node, envelope)
        if sent:
            self.bytes_sent += sum(len(frame) for frame in encode(envelope))
        return sent


class _CountingFederation(InProcessFederation):
    def _new_coordinator(self):
        self.hub_socket = _Counting(self.hub.coordinator_socket())
        from securefed.federation.coordinator import Coordinator

        return Coordinator(self.task, self.entries, self.hub_socket, self.store, clock=self.clock)


def test_the_coordinator_records_stage_times_bytes_and_attempts(tmp_path: Path) -> None:
    federation = _CountingFederation(tmp_path, ["site-1", "site-2", "site-3"], rounds=2, evaluate=True)
    try:
        federation.run_until(lambda f: f.coordinator.finished)
        records = federation.store.rounds()
        socket = federation.hub_socket
    finally:
        federation.close()
    assert [r.round for r in records] == [1, 2]
    for record in records:
        # one training and one evaluation aggregation each; the training's stages in protocol order,
        # which together make up its whole duration (one clock)
        assert (record.attempts, record.refusals) == (2, 0), record
        assert list(record.stage_durations) == list(STAGES), record
        assert sum(record.stage_durations.values()) == pytest.approx(record.duration), record
        assert record.duration > 0 and record.accuracy is not None
        assert record.bytes_in > 0 and record.bytes_out > record.bytes_in  # the model goes out to every node
    # Every byte of the two rounds is in their history, save the few outside any aggregation (greetings
    # between rounds, and the result announcements sent after each commit).
    assert sum(r.bytes_out for r in records) <= socket.bytes_sent
    assert sum(r.bytes_in for r in records) <= socket.bytes_received
    assert sum(r.bytes_out for r in records) > 0.9 * socket.bytes_sent


def test_a_socket_that_counts_no_bytes_leaves_them_unknown(tmp_path: Path) -> None:
    federation = InProcessFederation(tmp_path, ["site-1", "site-2", "site-3"], rounds=1)
    try:
        federation.run_until(lambda f: f.coordinator.finished)
        (record,) = federation.store.rounds()
    finally:
        federation.close()
    assert record.bytes_in is None and record.bytes_out is None
    assert list(record.stage_durations) == list(STAGES) and record.attempts == 1


def test_history_json_of_the_in_process_run_is_plain_json(tmp_path: Path) -> None:
    """The --json form carries every field, and only JSON types."""
    from securefed.status import _record_dict

    federation = InProcessFederation(tmp_path, ["site-1", "site-2", "site-3"], rounds=1)
    try:
        federation.run_until(lambda f: f.coordinator.finished)
        (record,) = federation.store.rounds()
    finally:
        federation.close()
    data = json.loads(json.dumps(_record_dict(record)))
    assert tuple(data) == CONTRACT
    assert data["survivors"] == sorted(data["survivors"]) and data["stage_durations"] == record.stage_durations
