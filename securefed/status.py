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
:func:`status_json` is the status itself as one JSON object.

Trees and analytics tasks run as compute *steps* (one secure aggregation each) with no accuracy,
loss or epsilon: for them status counts steps, leaves those columns out, and prints the stored
result with :mod:`securefed.analytics_cli`'s summaries, which read plain JSON (no numpy).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from securefed._stdout import write_stdout
from securefed.errors import ConfigError, InvalidParameter

if TYPE_CHECKING:
    from securefed.federation.store import Refusal, RoundRecord

__all__ = [
    "COMPUTE_KINDS",
    "HISTORY_FORMATS",
    "STAGES",
    "STATUS_FILE",
    "STATUS_FORMATS",
    "history_text",
    "print_history",
    "print_status",
    "status_json",
    "status_lines",
]

#: the coordinator daemon's status file in its state folder, rewritten every second
STATUS_FILE = "status.json"
#: a status file older than this, from a live daemon, means it is stuck
_STALE = 10.0
#: the secure-aggregation stages in protocol order (securefed.secagg.messages.Stage, not imported: it is heavy)
STAGES = ("advertise", "reveal", "share", "masked_input", "consistency", "unmask")
_STAGE_ABBREVIATIONS = {
    "advertise": "adv",
    "reveal": "rev",
    "share": "shr",
    "masked_input": "inp",
    "consistency": "con",
    "unmask": "unm",
}
#: what ``securefed status --history`` can print
HISTORY_FORMATS = ("table", "json", "csv")
#: what ``securefed status`` can print
STATUS_FORMATS = ("text", "json")
#: task models run as compute steps (securefed.federation.computation.COMPUTE_KINDS, not imported: it
#: imports numpy; tests/unit/test_analytics_cli.py checks the two agree)
COMPUTE_KINDS = ("random_forest", "gbdt", "analytics")


def _read_config(config_path: str | os.PathLike[str]) -> tuple[Path, dict]:
    """(state_dir, [task] table) from a coordinator config, paths relative to the file's folder."""
    state_dir, raw = _read_raw(config_path)
    return state_dir, raw["task"]


def _read_raw(config_path: str | os.PathLike[str]) -> tuple[Path, dict]:
    """(state_dir, the whole TOML document) of a coordinator config."""
    import tomllib

    file = Path(config_path).resolve()
    try:
        with file.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist", file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}", file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}", file) from None
    main, task = raw.get("coordinator"), raw.get("task")
    if not isinstance(main, dict) or not isinstance(main.get("state_dir"), str):
        raise ConfigError(
            f"{file}: [coordinator] state_dir is missing; is this a coordinator config?", file, "coordinator.state_dir"
        )
    if not isinstance(task, dict):
        raise ConfigError(f"{file}: the [task] section is missing; is this a coordinator config?", file, "task")
    state_dir = Path(main["state_dir"]).expanduser()
    return (state_dir if state_dir.is_absolute() else file.parent / state_dir), raw


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


@dataclass(frozen=True)
class _Snapshot:
    """Everything ``securefed status`` reads, once: the config's few keys, the lock, status.json, the store."""

    name: object
    model: object
    #: trees and analytics: compute steps, not training rounds
    computation: bool
    #: rounds (training) or the most steps (a computation; from status.json when the config leaves it out)
    total: object
    #: analytics: how many [[computations]] the config lists
    computations: int
    store_path: Path
    pid: int | None
    live: dict
    age: float
    has_store: bool
    rounds: list[RoundRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)
    #: a computation's finished result (None before the end)
    result: dict | None = None

    @property
    def unit(self) -> str:
        return "step" if self.computation else "round"

    @property
    def fresh(self) -> bool:
        return self.pid is not None and bool(self.live) and self.age <= _STALE

    @property
    def finished(self) -> bool:
        return self.result is not None if self.computation else bool(self.live.get("finished"))


def _snapshot(config_path: str | os.PathLike[str]) -> _Snapshot:
    from securefed._fs import lock_holder

    state_dir, raw = _read_raw(config_path)
    task = raw["task"]
    model = task.get("model", "?")
    computation = model in COMPUTE_KINDS
    live = _read_status_file(state_dir / STATUS_FILE)
    total = task.get("rounds", live.get("rounds", "?") if computation else "?")
    listed = raw.get("computations")
    store_path = state_dir / "coordinator.sqlite"
    snapshot = _Snapshot(
        name=task.get("name", "?"),
        model=model,
        computation=computation,
        total=total,
        computations=len(listed) if isinstance(listed, list) else 0,
        store_path=store_path,
        pid=lock_holder(state_dir),
        live=live,
        age=time.time() - float(live.get("updated_at", 0) or 0),
        has_store=store_path.exists(),
    )
    if not snapshot.has_store:
        return snapshot
    from securefed.federation.store import CoordinatorStore

    store = CoordinatorStore(store_path, read_only=True)
    try:
        return replace(
            snapshot,
            rounds=store.rounds(),
            counts=store.attempt_counts(),
            refusals=store.recent_refusals(5),
            result=store.computation_result() if computation else None,
        )
    finally:
        store.close()


def _task_line(snap: _Snapshot) -> str:
    if not snap.computation:
        return f"task:        {snap.name} ({snap.model}, {snap.total} rounds)"
    parts = [f"{snap.computations} computation{'s' if snap.computations != 1 else ''}"] if snap.model == "analytics" else []
    if isinstance(snap.total, int):  # unknown while the config leaves it out and the daemon has not said
        parts.append(f"at most {snap.total} secure aggregations")
    return f"task:        {snap.name} ({snap.model}" + (f": {', '.join(parts)})" if parts else ")")


def _state(snap: _Snapshot) -> str:
    """The coordinator line: running, finished, stopped or stuck."""
    pid, live, age = snap.pid, snap.live, snap.age
    if snap.computation and snap.result is not None:
        where = f"the coordinator (PID {pid}) is still running" if pid is not None else "the coordinator exited"
        return f"finished; {where}" + (f" (its last status is {_age(age)} old)" if live and pid is None else "")
    if pid is None and live and live.get("finished"):
        if snap.computation:  # it stopped at the most steps allowed, without a result
            return f"stopped after {len(snap.rounds)} steps without a result (its last status is {_age(age)} old)"
        # the coordinator exits when the task's last round is done: nothing is wrong
        return f"finished; the coordinator exited after the last round (its last status is {_age(age)} old)"
    if pid is None:
        return "NOT RUNNING" + (f" (its last status is {_age(age)} old)" if live else "")
    if not live:
        return f"running (PID {pid}), no status file yet"
    if age > _STALE:
        return f"running (PID {pid}) but its status file is {_age(age)} old: it may be stuck"
    return f"running (PID {pid}), status {_age(age)} old"


def _progress(snap: _Snapshot) -> str:
    done, counts = len(snap.rounds), snap.counts
    if snap.computation:
        if snap.result is not None:
            progress = f"finished after {done} step{'s' if done != 1 else ''} (secure aggregations)"
        else:
            limit = f" (at most {snap.total})" if isinstance(snap.total, int) else ""
            progress = f"{done} step{'s' if done != 1 else ''} done{limit}"
    else:
        progress = f"{done} of {snap.total} rounds completed"
    progress += f"; {counts.get('aborted', 0)} aborted attempts retried"
    running = counts.get("running", 0)
    if running and snap.pid is None:
        progress += f"; {running} interrupted attempt(s), marked aborted when the coordinator restarts"
    return progress


def _live_lines(snap: _Snapshot) -> list[str]:
    live, pid, fresh, unit = snap.live, snap.pid, snap.fresh, snap.unit
    if not live:
        return []
    lines = []
    when = "" if fresh else (" (last run)" if pid is None else " (as of its last status)")
    if fresh:
        lines.append(f"listening:   {live.get('listen')}")
        lines.append(f"connected:   {', '.join(live.get('connected_nodes', [])) or 'none'}")
    current = live.get("current")
    if current and fresh:
        lines.append(
            f"now:         {unit} {current.get('round')} {current.get('phase')}, aggregation {current.get('aggregation')}, "
            f"stage {current.get('stage')}, cohort of {len(current.get('cohort') or [])}"
        )
    elif current and pid is None and not live.get("finished") and not snap.finished:
        lines.append(
            f"interrupted: {unit} {current.get('round')} {current.get('phase')}, aggregation {current.get('aggregation')} "
            f"(stage {current.get('stage')}) when it stopped; the {unit} runs again after a restart"
        )
    for node, why in sorted((live.get("excluded_nodes") or {}).items()):
        lines.append(f"excluded:    {node}{when} ({str(why)[:200]})")
    refused = live.get("refused_connections", 0)
    lines.append(f"refused:     {refused} connection attempt(s) from unknown CURVE keys{when}")
    dropped = live.get("dropped_messages") or {}
    if dropped:
        listed = ", ".join(f"{reason} {count}" for reason, count in sorted(dropped.items()))
        lines.append(f"dropped:     {sum(dropped.values())} message(s){when}: {listed}"[:300])
    return lines


def _recent_lines(snap: _Snapshot) -> list[str]:
    rounds = snap.rounds
    if not rounds:
        return []
    shown = "" if len(rounds) <= 10 else f"   (the last 10 of {len(rounds)}; securefed status --history shows all)"
    lines = [""]
    if snap.computation:  # a compute step has no accuracy, loss or epsilon
        lines.append(" step  nodes  seconds" + shown)
        for record in rounds[-10:]:
            lines.append(f"{record.round:>5}  {len(record.survivors):>2}/{record.participants:<2}  {record.duration:7.2f}")
        return lines
    lines.append("round  nodes  accuracy  loss     epsilon  seconds" + shown)
    for record in rounds[-10:]:
        acc = f"{record.accuracy:.4f}" if record.accuracy is not None else "-"
        los = f"{record.loss:.4f}" if record.loss is not None else "-"
        eps = f"{record.epsilon:.3f}" if record.epsilon is not None else "-"
        kept = len(record.survivors)
        lines.append(
            f"{record.round:>5}  {kept:>2}/{record.participants:<2}  {acc:>8}  {los:>7}  {eps:>7}  {record.duration:7.2f}"
        )
    return lines


def _result_lines(snap: _Snapshot) -> list[str]:
    if not snap.computation:
        return []
    if snap.result is None:
        return ["", "result:      not yet (the task has not finished)"] if snap.has_store else []
    from securefed.analytics_cli import result_lines

    return ["", "result:", *(f"  {line}" for line in result_lines(snap.result))]


def status_lines(config_path: str | os.PathLike[str]) -> list[str]:
    """What ``securefed status`` prints, line by line."""
    snap = _snapshot(config_path)
    lines = [_task_line(snap)]
    if not snap.has_store:
        state = f"running (PID {snap.pid}), starting up" if snap.pid is not None else "not running"
        return [*lines, f"coordinator: {state}; no state yet at {snap.store_path}"]
    lines.append(f"coordinator: {_state(snap)}")
    lines.append(f"progress:    {_progress(snap)}")
    lines += _live_lines(snap)
    lines += _result_lines(snap)
    lines += _recent_lines(snap)
    if snap.refusals:
        lines += ["", "recent refusals:"]
        for refusal in snap.refusals:
            lines.append(f"  aggregation {refusal.aggregation}: {refusal.node} refused ({refusal.reason}): {refusal.detail}")
    return lines


def status_json(config_path: str | os.PathLike[str]) -> dict:
    """``securefed status`` as one JSON object, for other tools (``history_text(..., "json")`` has the rows)."""
    snap = _snapshot(config_path)
    live = snap.live
    out = {
        "task": snap.name,
        "model": snap.model,
        "computation": snap.computation,
        "unit": snap.unit,
        "total": snap.total if isinstance(snap.total, int) else None,
        "completed": len(snap.rounds),
        "finished": snap.finished,
        "coordinator": {
            "pid": snap.pid,
            "state": _state(snap) if snap.has_store else "no state yet",
            "status_age": round(snap.age, 3) if live else None,
        },
        "store": str(snap.store_path) if snap.has_store else None,
        "attempts": dict(snap.counts),
        "connected_nodes": list(live.get("connected_nodes", [])) if snap.fresh else [],
    }
    if snap.computation:
        from securefed.analytics_cli import summarize_result

        out["result"] = snap.result
        out["summary"] = [summary.line() for summary in summarize_result(snap.result)] if snap.result else []
    return out


# --- the history ------------------------------------------------------------------------


def _read_history(config_path: str | os.PathLike[str]) -> tuple[list[RoundRecord], bool]:
    """(every completed round or step, whether the task is a computation)."""
    from securefed.federation.store import CoordinatorStore

    state_dir, raw = _read_raw(config_path)
    computation = raw["task"].get("model") in COMPUTE_KINDS
    store_path = state_dir / "coordinator.sqlite"
    if not store_path.exists():
        return [], computation
    store = CoordinatorStore(store_path, read_only=True)
    try:
        return store.rounds(), computation
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
        "stage_durations": {
            name: record.stage_durations[name] for name in _stage_names([record]) if name in record.stage_durations
        },
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


def _history_table(records: list[RoundRecord], computation: bool = False) -> str:
    """One row per round; a computation's steps have no accuracy, loss or epsilon, so those columns go."""
    if not records:
        return f"no completed {'steps' if computation else 'rounds'} yet\n"
    stages = _stage_names(records)
    legend = "/".join(_STAGE_ABBREVIATIONS.get(name, name) for name in stages)
    cells = []
    for record in records:
        timings = "/".join(_number(record.stage_durations.get(name), 3) for name in stages) if record.stage_durations else "-"
        quality = () if computation else (_number(record.accuracy, 4), _number(record.loss, 4), _number(record.epsilon, 3))
        cells.append(
            (
                str(record.round),
                f"{len(record.survivors)}/{record.participants}",
                *quality,
                f"{record.duration:.2f}",
                timings,
                _size(record.bytes_in),
                _size(record.bytes_out),
                str(record.attempts),
                str(record.refusals),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.completed_at)) if record.completed_at else "-",
            )
        )
    quality_header = () if computation else ("accuracy", "loss", "epsilon")
    header = ("step" if computation else "round", "nodes", *quality_header, "seconds", f"stages (s) {legend}", "in", "out",
              "tries", "refusals", "completed")  # fmt: skip
    widths = [max(len(header[i]), *(len(row[i]) for row in cells)) for i in range(len(header))]
    timings_at = header.index("seconds") + 1
    left = {timings_at, len(header) - 1}  # the stage timings and the time read better left-aligned
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
    records, computation = _read_history(config_path)
    if form == "json":
        return json.dumps([_record_dict(record) for record in records], indent=2) + "\n"
    if form == "csv":
        return _history_csv(records)
    return _history_table(records, computation)


def print_history(config_path: str | os.PathLike[str], form: str = "table") -> int:
    """Print the round history; quiet in a closed pipe, like :func:`print_status`."""
    write_stdout(history_text(config_path, form))
    return 0


def print_status(config_path: str | os.PathLike[str], form: str = "text") -> int:
    """Print the status (``form`` text or json); a reader that goes away early (``| head``) ends it quietly."""
    if form not in STATUS_FORMATS:
        raise InvalidParameter(f"status format must be one of {', '.join(STATUS_FORMATS)}, got {form!r}")
    if form == "json":
        write_stdout(json.dumps(status_json(config_path), indent=2) + "\n")
    else:
        write_stdout("\n".join(status_lines(config_path)) + "\n")
    return 0
