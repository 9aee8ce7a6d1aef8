"""``securefed status``: the task, its progress, connected nodes and the latest metrics.

Reads the coordinator's SQLite store read-only and the status file the
daemon rewrites every second, so it works while the daemon runs.
"""

from __future__ import annotations

import json
import sqlite3
import time

from securefed.errors import InvalidParameter

__all__ = ["print_status"]


def print_status(config_path: str) -> int:
    from coordinator.config import load_coordinator_config
    from coordinator.daemon import STATUS_FILE
    from securefed.federation.store import CoordinatorStore

    config = load_coordinator_config(config_path)
    if not config.store_path.exists():
        raise InvalidParameter(f"no coordinator state at {config.store_path}; has the coordinator run yet?")
    db = CoordinatorStore.open_readonly(config.store_path)
    try:
        rounds = db.execute(
            "SELECT round, participants, survivors, accuracy, loss, epsilon, duration FROM rounds ORDER BY round"
        ).fetchall()
        refusals = db.execute(
            "SELECT aggregation, node, reason, detail FROM refusals ORDER BY rowid DESC LIMIT 5"
        ).fetchall()
        aborted = db.execute("SELECT COUNT(*) FROM attempts WHERE status = 'aborted'").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise InvalidParameter(f"cannot read {config.store_path}: {exc}") from None
    finally:
        db.close()
    status_path = config.state_dir / STATUS_FILE
    live = json.loads(status_path.read_text()) if status_path.exists() else {}
    age = time.time() - live.get("updated_at", 0)
    print(f"task:       {config.task.name} ({config.task.model_kind}, {config.task.rounds} rounds)")
    print(f"progress:   {len(rounds)} of {config.task.rounds} rounds completed; {aborted} aborted attempts retried")
    if live and age < 10:
        print(f"listening:  {live.get('listen')}")
        print(f"connected:  {', '.join(live.get('connected_nodes', [])) or 'none'}")
        for name, why in sorted(live.get("excluded_nodes", {}).items()):
            print(f"left out:   {name} ({why[:200]})")
        current = live.get("current")
        if current:
            print(
                f"now:        round {current['round']} {current['phase']}, aggregation {current['aggregation']}, "
                f"stage {current['stage']}, cohort of {len(current['cohort'])}"
            )
    else:
        print("daemon:     not running (no fresh status file)")
    if rounds:
        print("\nround  nodes  accuracy  loss     epsilon  seconds")
        for number, participants, survivors, accuracy, loss, epsilon, duration in rounds[-10:]:
            kept = len(json.loads(survivors))
            acc = f"{accuracy:.4f}" if accuracy is not None else "-"
            los = f"{loss:.4f}" if loss is not None else "-"
            eps = f"{epsilon:.3f}" if epsilon is not None else "-"
            print(f"{number:>5}  {kept:>2}/{participants:<2}  {acc:>8}  {los:>7}  {eps:>7}  {duration:7.2f}")
    if refusals:
        print("\nrecent refusals:")
        for aggregation, node, reason, detail in refusals:
            print(f"  aggregation {aggregation}: {node} refused ({reason}): {detail}")
    return 0
