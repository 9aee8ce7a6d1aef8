"""``securefed status``: whether the coordinator runs, the task's progress, connected nodes, metrics.

Reads the coordinator's store read-only (through :class:`CoordinatorStore` read helpers: no SQL
here), the ``status.json`` the daemon rewrites every second, and the daemon's lock on its state
folder, which tells whether a coordinator process is alive right now (a status file alone cannot:
it stays behind when the daemon dies). It works while the daemon runs.

Fast on purpose (well under 0.3 s): it reads the config's few keys it needs with ``tomllib``
instead of the full loader, and imports nothing heavy (no numpy, scikit-learn, ZeroMQ or
cryptography); ``securefed check`` is what validates a config. Safe in a pipe: ``securefed status |
head -1`` ends quietly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from securefed.errors import InvalidParameter

__all__ = ["print_status", "status_lines", "STATUS_FILE"]

#: the coordinator daemon's status file in its state folder, rewritten every second
STATUS_FILE = "status.json"
#: a status file older than this, from a live daemon, means it is stuck
_STALE = 10.0


def _read_config(config_path: str | os.PathLike[str]) -> tuple[Path, dict]:
    """(state_dir, [task] table) from a coordinator config, paths relative to the file's folder."""
    import tomllib

    file = Path(config_path).resolve()
    try:
        with file.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise InvalidParameter(f"config file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameter(f"config file {file} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise InvalidParameter(f"cannot read config file {file}: {exc.strerror}") from None
    main, task = raw.get("coordinator"), raw.get("task")
    if not isinstance(main, dict) or not isinstance(main.get("state_dir"), str):
        raise InvalidParameter(f"{file}: [coordinator] state_dir is missing; is this a coordinator config?")
    if not isinstance(task, dict):
        raise InvalidParameter(f"{file}: the [task] section is missing; is this a coordinator config?")
    state_dir = Path(main["state_dir"]).expanduser()
    return (state_dir if state_dir.is_absolute() else file.parent / state_dir), task


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _read_status_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def status_lines(config_path: str | os.PathLike[str]) -> list[str]:
    """What ``securefed status`` prints, line by line."""
    from securefed._fs import lock_holder
    from securefed.federation.store import CoordinatorStore

    state_dir, task = _read_config(config_path)
    name, model, total = task.get("name", "?"), task.get("model", "?"), task.get("rounds", "?")
    store_path = state_dir / "coordinator.sqlite"
    pid = lock_holder(state_dir)
    live = _read_status_file(state_dir / STATUS_FILE)
    age = time.time() - float(live.get("updated_at", 0) or 0)
    lines = [f"task:        {name} ({model}, {total} rounds)"]

    if not store_path.exists():
        state = f"running (PID {pid}), starting up" if pid is not None else "not running"
        return [*lines, f"coordinator: {state}; no state yet at {store_path}"]
    store = CoordinatorStore(store_path, read_only=True)
    try:
        rounds = store.rounds()
        counts = store.attempt_counts()
        refusals = store.recent_refusals(5)
    finally:
        store.close()

    fresh = pid is not None and live and age <= _STALE
    if pid is None:
        state = "NOT RUNNING"
        if live:
            state += f" (its last status is {_age(age)} old" + ("; the task had finished)" if live.get("finished") else ")")
    elif not live:
        state = f"running (PID {pid}), no status file yet"
    elif age > _STALE:
        state = f"running (PID {pid}) but its status file is {_age(age)} old: it may be stuck"
    else:
        state = f"running (PID {pid}), status {_age(age)} old"
    lines.append(f"coordinator: {state}")

    progress = f"{len(rounds)} of {total} rounds completed; {counts.get('aborted', 0)} aborted attempts retried"
    running = counts.get("running", 0)
    if running and pid is None:
        progress += f"; {running} interrupted attempt(s), marked aborted when the coordinator restarts"
    lines.append(f"progress:    {progress}")

    if live:
        when = "" if fresh else (" (last run)" if pid is None else " (as of its last status)")
        if fresh:
            lines.append(f"listening:   {live.get('listen')}")
            lines.append(f"connected:   {', '.join(live.get('connected_nodes', [])) or 'none'}")
        current = live.get("current")
        if current and fresh:
            lines.append(
                f"now:         round {current.get('round')} {current.get('phase')}, aggregation {current.get('aggregation')}, "
                f"stage {current.get('stage')}, cohort of {len(current.get('cohort') or [])}"
            )
        elif current and pid is None and not live.get("finished"):
            lines.append(
                f"interrupted: round {current.get('round')} {current.get('phase')}, aggregation {current.get('aggregation')} "
                f"(stage {current.get('stage')}) when it stopped; the round runs again after a restart"
            )
        for node, why in sorted((live.get("excluded_nodes") or {}).items()):
            lines.append(f"excluded:    {node}{when} ({str(why)[:200]})")
        refused = live.get("refused_connections", 0)
        lines.append(f"refused:     {refused} connection attempt(s) from unknown CURVE keys{when}")
        dropped = live.get("dropped_messages") or {}
        if dropped:
            listed = ", ".join(f"{reason} {count}" for reason, count in sorted(dropped.items()))
            lines.append(f"dropped:     {sum(dropped.values())} message(s){when}: {listed}"[:300])

    if rounds:
        lines += ["", "round  nodes  accuracy  loss     epsilon  seconds"]
        for record in rounds[-10:]:
            acc = f"{record.accuracy:.4f}" if record.accuracy is not None else "-"
            los = f"{record.loss:.4f}" if record.loss is not None else "-"
            eps = f"{record.epsilon:.3f}" if record.epsilon is not None else "-"
            kept = len(record.survivors)
            lines.append(
                f"{record.round:>5}  {kept:>2}/{record.participants:<2}  {acc:>8}  {los:>7}  {eps:>7}  {record.duration:7.2f}"
            )
    if refusals:
        lines += ["", "recent refusals:"]
        for refusal in refusals:
            lines.append(f"  aggregation {refusal.aggregation}: {refusal.node} refused ({refusal.reason}): {refusal.detail}")
    return lines


def print_status(config_path: str | os.PathLike[str]) -> int:
    """Print the status; a reader that goes away early (``| head``) ends it quietly."""
    text = "\n".join(status_lines(config_path)) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's own flush at exit does not fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    return 0
