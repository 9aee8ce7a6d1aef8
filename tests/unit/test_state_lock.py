"""One daemon per state folder (issue 12, item 2): a second start fails at once and names the holder's PID.

Two copies of one node on the same ``state_dir`` (systemd plus a manual start) interleaved their writes and
broke the site's audit log for good. Every daemon now holds an exclusive ``flock`` on
``<state_dir>/daemon.lock`` for its whole life, with its PID in the file; the kernel drops it however the
process ends. These tests use real processes: a holder in a child process, and the real node and coordinator
daemons (``python -m securefed.cli ...``) started twice on one folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from securefed._fs import LOCK_FILE, StateLock, lock_holder
from securefed.errors import SecureFedError, StorageError
from securefed.localfed import LocalFederation

#: a daemon needs this long at most to import, load its data and lock its folder on a busy machine
START_TIMEOUT = 60.0


def _holder(folder: Path) -> subprocess.Popen:
    """A child process that takes the lock, says so, and waits."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from securefed._fs import StateLock
        lock = StateLock.acquire({str(folder)!r}, "node")
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(20)


def test_a_second_holder_fails_at_once_naming_the_first_ones_pid(tmp_path: Path) -> None:
    child = _holder(tmp_path)
    try:
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(child.pid)
        assert lock_holder(tmp_path) == child.pid
        started = time.monotonic()
        with pytest.raises(StorageError) as refused:
            StateLock.acquire(tmp_path, "node")
        assert time.monotonic() - started < 2.0  # at once, not after a wait
        message = str(refused.value)
        assert f"PID {child.pid}" in message and str(tmp_path) in message and "only one daemon" in message, message
        assert isinstance(refused.value, SecureFedError)
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(child.pid)  # the failed attempt wrote nothing
    finally:
        child.kill()  # kill -9: the kernel drops the lock with the process
        child.wait()
    assert lock_holder(tmp_path) is None  # a stale PID in the file is not a running daemon
    with StateLock.acquire(tmp_path, "node") as lock:
        assert lock.held and lock_holder(tmp_path) == os.getpid()
    assert lock_holder(tmp_path) is None and not lock.held
    lock.release()  # a second release does nothing


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with StateLock.acquire(tmp_path / "state", "coordinator"):
        with pytest.raises(StorageError, match=f"PID {os.getpid()}"):
            StateLock.acquire(tmp_path / "state", "coordinator")
    StateLock.acquire(tmp_path / "state", "coordinator").release()


def test_lock_holder_of_a_folder_never_locked_is_none(tmp_path: Path) -> None:
    assert lock_holder(tmp_path) is None
    (tmp_path / LOCK_FILE).write_text("12345\n")  # left by a daemon long gone
    assert lock_holder(tmp_path) is None


# --- the real daemons ---------------------------------------------------------------------------------


@pytest.fixture
def federation(tmp_path: Path) -> LocalFederation:
    rng = np.random.default_rng(0)
    data = {}
    for name in ("site-1", "site-2", "site-3"):
        X = rng.uniform(0.0, 1.0, size=(40, 4))
        data[name] = (X, (X[:, 0] > 0.5).astype(int))
    task = {"name": "lock-test", "model": "sgd_logistic", "features": 4, "classes": [0, 1], "rounds": 1, "min_nodes": 3}
    return LocalFederation.create(tmp_path, data, ["a", "b", "c", "d"], task)


def _second_start(federation: LocalFederation, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "securefed.cli", *args], capture_output=True, text=True, timeout=START_TIMEOUT, env=env
    )


def test_a_second_node_daemon_on_the_same_state_dir_fails_at_once(federation: LocalFederation) -> None:
    state = federation.root / "site-1" / "state"
    first = federation.start_node("site-1")  # no coordinator: it keeps trying to connect, holding its folder
    try:
        _wait(lambda: lock_holder(state) == first.pid or first.poll() is not None, START_TIMEOUT, "the node to lock")
        assert first.poll() is None, federation.log("site-1")
        second = _second_start(federation, ["node", "--config", str(federation.node_configs["site-1"])])
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and "in use by another node" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None and lock_holder(state) == first.pid  # the first one is undisturbed
        # the commands that change the state folder are refused too while the daemon runs
        recover = _second_start(federation, ["node", "audit", "--config", str(federation.node_configs["site-1"]), "--recover"])
        assert recover.returncode == 2 and f"PID {first.pid}" in recover.stderr, recover.stderr
    finally:
        assert _stop(first) == 0, federation.log("site-1")
    assert lock_holder(state) is None
    assert not (state / "audit.log").exists() or (state / "audit.log").read_bytes().count(b"\n") == 0


def test_a_second_coordinator_on_the_same_state_dir_fails_at_once(federation: LocalFederation) -> None:
    state = federation.root / "coordinator" / "state"
    other = federation.coordinator_config.with_name("other.toml")  # another port, the same state_dir
    text = federation.coordinator_config.read_text()
    other.write_text(text.replace(federation.endpoint, "tcp://127.0.0.1:1"))
    first = federation.start_coordinator()
    try:
        _wait(lambda: lock_holder(state) == first.pid or first.poll() is not None, START_TIMEOUT, "the coordinator to lock")
        assert first.poll() is None, federation.log("coordinator")
        second = _second_start(federation, ["coordinator", "--config", str(other)])
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and "in use by another coordinator" in second.stderr, second.stderr
        _wait(lambda: federation.status_path.exists(), START_TIMEOUT, "the status file")
        status = _second_start(federation, ["status", "--config", str(federation.coordinator_config)])
        assert f"coordinator: running (PID {first.pid})" in status.stdout, status.stdout
    finally:
        assert _stop(first) == 0, federation.log("coordinator")
    status = _second_start(federation, ["status", "--config", str(federation.coordinator_config)])
    assert "coordinator: NOT RUNNING" in status.stdout, status.stdout
