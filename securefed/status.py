"""``securefed status``: whether the coordinator runs, the task's progress, connected nodes, metrics.

Reads the coordinator's store read-only (through :class:`CoordinatorStore` read helpers: no SQL
here), the ``status.json`` the daemon rewrites every second, and the daemon's lock on its state
folder, which tells whether a coordinator process is alive right now (a status file alone cannot:
it stays behind when the daemon dies). It works while the daemon runs.

Fast on purpose (well under 0.3 s): it reads the config's few keys it needs with ``tomllib``
instead of the full loader, and imports nothing heavy (no numpy, scikit-learn, ZeroMQ or
cryptography); ``securefed check`` is what validates a config. Safe in a pipe: ``securefed status |
head -1`` ends quietly.

``securefed status --history`` prints every completed round instead (accuracy, loss, nodes, epsilon,
duration, seconds per secure-aggregation stage, bytes in and out, attempts, refusals): a table, or
with ``--json`` a JSON list and with ``--csv`` a CSV file with a header, for other tools.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from securefed._stdout import write_stdout
from securefed.errors import InvalidParameter

if TYPE_CHECKING:
    from securefed.federation.store import RoundRecord

__all__ = ["print_status", "status_lines", "history_text", "print_history", "STATUS_FILE", "STAGES", "HISTORY_FORMATS"]

#: the coordinator daemon's status file in its state folder, rewritten every second
STATUS_FILE = "status.json"
#: a status file older than this, from a live daemon, means it is stuck
_STALE = 10.0
#: the secure-aggregation stages in protocol order (securefed.secagg.messages.Stage, not imported: it is heavy)
STAGES = ("advertise", "reveal", "share", "masked_input", "consistency", "unmask")
_STAGE_ABBREVIATIONS = {"advertise": "adv", "reveal": "rev", "share": "shr", "masked_input": "inp", "consistency": "con", "unmask": "unm"}
#: what ``securefed status --history`` can print
HISTORY_FORMATS = ("table", "json", "csv")


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
    if pid is None and live and live.get("finished"):
        # the coordinator exits when the task's last round is done: nothing is wrong
        state = f"finished; the coordinator exited after the last round (its last status is {_age(age)} old)"
    elif pid is None:
        state = "NOT RUNNING"
        if live:
            state += f" (its last status is {_age(age)} old)"
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
        shown = "" if len(rounds) <= 10 else f"   (the last 10 of {len(rounds)}; securefed status --history shows all)"
        lines += ["", "round  nodes  accuracy  loss     epsilon  seconds" + shown]
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


# --- the history ------------------------------------------------------------------------


def _read_history(config_path: str | os.PathLike[str]) -> list[RoundRecord]:
    from securefed.federation.store import CoordinatorStore

    state_dir, _ = _read_config(config_path)
    store_path = state_dir / "coordinator.sqlite"
    if not store_path.exists():
        return []
    store = CoordinatorStore(store_path, read_only=True)
    try:
        return store.rounds()
    finally:
        store.close()


def _stage_names(records: list[RoundRecord]) -> list[str]:
    """The known stages in protocol order, then any other stage a record names (sorted)."""
    extra = sorted({name for record in records for name in record.stage_durations} - set(STAGES))
    return [*STAGES, *extra]


def _record_dict(record: RoundRecord) -> dict:
    return {
        "round": record.round,
        "aggregation": record.aggregation,
        "participants": record.participants,
        "survivors": list(record.survivors),
        "accuracy": record.accuracy,
        "loss": record.loss,
        "epsilon": record.epsilon,
        "duration": record.duration,
        "stage_durations": {name: record.stage_durations[name] for name in _stage_names([record]) if name in record.stage_durations},
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "completed_at": record.completed_at,
        "refusals": record.refusals,
        "attempts": record.attempts,
    }


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _history_table(records: list[RoundRecord]) -> str:
    if not records:
        return "no completed rounds yet\n"
    stages = _stage_names(records)
    legend = "/".join(_STAGE_ABBREVIATIONS.get(name, name) for name in stages)
    cells = []
    for record in records:
        timings = "/".join(
            _number(record.stage_durations.get(name), 3) for name in stages
        ) if record.stage_durations else "-"
        cells.append(
            (
                str(record.round),
                f"{len(record.survivors)}/{record.participants}",
                _number(record.accuracy, 4),
                _number(record.loss, 4),
                _number(record.epsilon, 3),
                f"{record.duration:.2f}",
                timings,
                _size(record.bytes_in),
                _size(record.bytes_out),
                str(record.attempts),
                str(record.refusals),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.completed_at)) if record.completed_at else "-",
            )
        )
    header = ("round", "nodes", "accuracy", "loss", "epsilon", "seconds", f"stages (s) {legend}", "in", "out", "tries", "refusals", "completed")
    widths = [max(len(header[i]), *(len(row[i]) for row in cells)) for i in range(len(header))]
    left = {6, 11}  # the stage timings and the time read better left-aligned
    lines = []
    for row in (header, *cells):
        lines.append("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines) + "\n"


def _history_csv(records: list[RoundRecord]) -> str:
    stages = _stage_names(records)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["round", "aggregation", "participants", "survivors", "accuracy", "loss", "epsilon", "duration",
         *(f"stage_{name}" for name in stages), "bytes_in", "bytes_out", "completed_at", "refusals", "attempts"]
    )  # fmt: skip
    blank = lambda value: "" if value is None else value  # noqa: E731 - CSV has no null
    for record in records:
        writer.writerow(
            [record.round, record.aggregation, record.participants, " ".join(record.survivors),
             blank(record.accuracy), blank(record.loss), blank(record.epsilon), record.duration,
             *(blank(record.stage_durations.get(name)) for name in stages),
             blank(record.bytes_in), blank(record.bytes_out), record.completed_at, record.refusals, record.attempts]
        )  # fmt: skip
    return buffer.getvalue()


def history_text(config_path: str | os.PathLike[str], form: str = "table") -> str:
    """What ``securefed status --history`` prints: ``form`` is table, json or csv."""
    if form not in HISTORY_FORMATS:
        raise InvalidParameter(f"history format must be one of {', '.join(HISTORY_FORMATS)}, got {form!r}")
    records = _read_history(config_path)
    if form == "json":
        return json.dumps([_record_dict(record) for record in records], indent=2) + "\n"
    if form == "csv":
        return _history_csv(records)
    return _history_table(records)


def print_history(config_path: str | os.PathLike[str], form: str = "table") -> int:
    """Print the round history; quiet in a closed pipe, like :func:`print_status`."""
    write_stdout(history_text(config_path, form))
    return 0


def print_status(config_path: str | os.PathLike[str]) -> int:
    """Print the status; a reader that goes away early (``| head``) ends it quietly."""
    write_stdout("\n".join(status_lines(config_path)) + "\n")
    return 0
