"""`securefed report`: one self-contained HTML page with plots of a task's history.

Only argparse at module level: ``securefed status`` builds the same parser and must stay fast, so
the report's code (and matplotlib) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_report(args: argparse.Namespace) -> int:
    from coordinator.config import load_coordinator_config
    from securefed.report import write_report

    data, size = write_report(load_coordinator_config(args.config), args.out)
    if args.out != "-":
        if data.computation:
            finished = "result stored" if data.result is not None else f"at most {data.rounds_total}, no result yet"
            progress = f"{data.model_kind}, {data.rounds_done} steps ({finished})"
        else:
            progress = f"{data.rounds_done} of {data.rounds_total} rounds"
        print(
            f"wrote {args.out} ({size / 1024:.0f} KiB): task {data.task_name}, {progress}, coordinator {data.status}",
            file=sys.stderr,
        )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``securefed report``."""
    report = sub.add_parser(
        "report",
        help="write one self-contained HTML page with plots of a task's rounds or steps (accuracy, epsilon, timing, refusals, results)",
        description=(
            "Read a coordinator's store (read-only; safe while the daemon runs) and write one HTML file with "
            "its plots inlined: no scripts, no external requests. Needs matplotlib."
        ),
    )
    report.add_argument("--config", required=True, help="coordinator TOML config")
    report.add_argument("--out", required=True, help="the HTML file to write (replaced atomically); - for stdout")
    report.set_defaults(func=_cmd_report)
