"""``securefed analytics``: run a coordinator's analytics task to its end and write its results as JSON.

The task runs through the daemons like any other: this command is the coordinator daemon in the
foreground (:func:`coordinator.daemon.run_coordinator`, the same entry as ``securefed coordinator``)
for a task whose ``[task] model`` is ``analytics``, followed by reading the finished result from the
coordinator's store. A result already stored is never computed again (each run spends the sites'
query budgets): it is written and printed as it is. ``--show`` never starts anything.

This module is imported whenever the ``securefed`` parser is built (``securefed status`` too), so at
module level it holds only argparse, json and the summaries below, which read the result's plain
JSON (no numpy): ``securefed status`` and ``securefed report`` print results with them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_OUT", "ComputationSummary", "add_commands", "result_lines", "summarize_result"]

#: the ``bound`` of a result that has no rounding (counts)
EXACT = "exact (whole counts)"
#: where the results go without ``--out``: in the task's state folder, which the coordinator owns and can write
DEFAULT_OUT = "analytics-results.json"

#: result fields that are bookkeeping, not results (shown elsewhere or not at all)
_BOOKKEEPING = frozenset({"computation", "encoding", "aggregations", "error_bound", "note", "units", "count"})
#: list items a summary shows before "… (n more)"
_ITEMS = 6
#: the longest value a summary shows (the JSON file has everything)
_CHARS = 160


# --- summaries of a stored result (plain JSON in, text out) ------------------------------


@dataclass(frozen=True)
class ComputationSummary:
    """One computation's result in words: what ``analytics``, ``status`` and ``report`` show.

    ``bound`` is the largest error bound per output (:data:`EXACT` for counts, "" for a tree model).
    """

    name: str
    values: str
    bound: str
    aggregations: int | None = None
    survivors: int | None = None

    def line(self) -> str:
        work = []
        if self.aggregations is not None:
            work.append(f"{self.aggregations} aggregation{'s' if self.aggregations != 1 else ''}")
        if self.survivors is not None:
            work.append(f"{self.survivors} node{'s' if self.survivors != 1 else ''} in the sum")
        tail = f" ({', '.join(work)})" if work else ""
        bound = "" if not self.bound else "; exact" if self.bound == EXACT else f"; error bound {self.bound}"
        return f"{self.name}: {self.values}{bound}{tail}"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _scalar(value: object, spec: str = ".6g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    number = _finite(value)
    if number is not None:
        return format(number, spec)
    return " ".join(str(value).split())


def _compact(value: object, spec: str = ".6g") -> str:
    """A number, list or matrix on one line; long lists end in "… (n more)" and long text is cut."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        shown = [_compact(item, spec) for item in value[:_ITEMS]]
        more = f", … ({len(value) - _ITEMS} more)" if len(value) > _ITEMS else ""
        text = "[" + ", ".join(shown) + more + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{key}: {_compact(item, spec)}" for key, item in list(value.items())[:_ITEMS]) + "}"
    else:
        text = _scalar(value, spec)
    return text if len(text) <= _CHARS else text[: _CHARS - 1] + "…"


def _largest(value: object) -> float | None:
    """The largest finite number in a (nested) list, or None when there is none."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        found = [x for x in (_largest(item) for item in value) if x is not None]
        return max(found) if found else None
    return _finite(value)


def _bound(bound: object) -> str:
    """``error_bound`` in words: per output the largest bound (the JSON file has every one)."""
    if isinstance(bound, Mapping):
        parts = []
        for key, value in bound.items():
            largest = _largest(value)
            parts.append(f"{key} ± {'n/a' if largest is None else format(largest, '.2g')}")
        return ", ".join(parts) if parts else "n/a"
    largest = _largest(bound)
    return "n/a" if largest is None else f"± {largest:.2g}"


def _values(kind: str, result: Mapping[str, object]) -> list[str]:
    parts = [] if result.get("count") is None else [f"n = {_scalar(result.get('count'))}"]
    if kind in ("mean", "variance", "covariance"):
        parts.append(f"mean {_compact(result.get('mean'))}")
    if kind == "variance":
        parts += [f"variance {_compact(result.get('variance'))}", f"std {_compact(result.get('std'))}"]
    elif kind in ("covariance", "correlation"):
        parts.append(f"{kind} {_compact(result.get(kind), '.4g')}")
    elif kind == "histogram":
        for histogram in _iterable(result.get("histograms")):
            if isinstance(histogram, Mapping):
                parts.append(
                    f"column {_scalar(histogram.get('column'))}: counts {_compact(histogram.get('counts'))} "
                    f"(below {_scalar(histogram.get('below'))}, above {_scalar(histogram.get('above'))})"
                )
    elif kind == "quantiles":
        parts.append(f"levels {_compact(result.get('levels'))} ({_scalar(result.get('method'))})")
        for column, values in zip(_iterable(result.get("columns")), _iterable(result.get("quantiles"))):
            parts.append(f"column {_scalar(column)}: {_compact(values)}")
    elif kind == "kmeans":
        centres = result.get("centres") or []
        converged = "converged" if result.get("converged") else "not converged"
        parts += [
            f"{len(centres) if isinstance(centres, Sized) else 0} clusters after {_scalar(result.get('iterations'))} iterations ({converged})",
            f"counts {_compact(result.get('counts'))}",
            f"inertia {_scalar(result.get('inertia'))}",
            f"centres {_compact(centres, '.4g')}",
        ]
    elif kind == "linear_regression":
        if result.get("rank_deficient"):
            parts.append("rank deficient: the coefficients are not determined")
        parts += [
            f"intercept {_scalar(result.get('intercept'))}",
            f"coefficients {_compact(result.get('coefficients'))}",
            f"train R² {_scalar(result.get('r2_train'), '.4f')}",
        ]
    elif kind not in ("count", "mean"):  # a kind this version does not know: its plain values
        parts += [f"{key} {_compact(value)}" for key, value in result.items() if key not in _BOOKKEEPING]
    return parts


def _iterable(value: object) -> Iterable[object]:
    """A JSON list's items (nothing for a missing value or a number)."""
    return value if isinstance(value, Iterable) else ()


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summarize_result(result: Mapping[str, object]) -> list[ComputationSummary]:
    """One summary per computation of a stored result (analytics), or one for a tree model."""
    kind = str(result.get("kind", "?"))
    if kind != "analytics":
        trees = result.get("trees")
        return [
            ComputationSummary(
                name=kind,
                values=f"{_scalar(trees)} tree{'s' if trees != 1 else ''}; {_scalar(result.get('describe'))}",
                bound="",  # a model, not an estimate of something
                aggregations=_count(result.get("aggregations")),
            )
        ]
    out = []
    entries = result.get("results")
    for number, entry in enumerate(entries if isinstance(entries, list) else [], start=1):
        if not isinstance(entry, Mapping):
            continue
        name = str(entry.get("computation", "?"))
        if name == "variance" and entry.get("ddof") is not None:
            label = f"variance (ddof {_scalar(entry.get('ddof'))})"
        elif name == "linear_regression" and _finite(entry.get("ridge")):
            label = f"linear_regression (ridge {_scalar(entry.get('ridge'))})"
        else:
            label = name
        raw_encoding = entry.get("encoding")
        encoding = raw_encoding if isinstance(raw_encoding, Mapping) else {}
        exact = name in ("count", "histogram") and entry.get("error_bound") is None
        out.append(
            ComputationSummary(
                name=f"#{number} {label}",
                values="; ".join(_values(name, entry)) or "no values",
                bound=EXACT if exact else _bound(entry.get("error_bound")),
                aggregations=_count(entry.get("aggregations")),
                survivors=_count(encoding.get("survivors")),
            )
        )
    return out


def result_lines(result: Mapping[str, object]) -> list[str]:
    """The result in lines of text, one per computation (a tree task: one)."""
    return [summary.line() for summary in summarize_result(result)]


# --- the command -------------------------------------------------------------------------


def _target(args: argparse.Namespace, state_dir: Path) -> Path | None:
    """Where the JSON goes (None: standard output), checked before anything runs."""
    from securefed.errors import InvalidParameter

    if args.out == "-":
        return None
    target = Path(args.out).expanduser() if args.out else state_dir / DEFAULT_OUT
    if target.is_dir():
        raise InvalidParameter(f"--out {target} is a folder; give a file name such as {target / DEFAULT_OUT}")
    if args.out and not target.parent.is_dir():
        raise InvalidParameter(f"--out {target}: the folder {target.parent} does not exist; create it first")
    return target


def _stored(store_path: Path) -> tuple[dict | None, int]:
    """(the finished result or None, steps committed) from the store, read-only; (None, 0) without a store."""
    from securefed.federation.store import CoordinatorStore

    if not store_path.exists():
        return None, 0
    store = CoordinatorStore(store_path, read_only=True)
    try:
        return store.computation_result(), len(store.rounds())
    finally:
        store.close()


def _write(result: dict, target: Path | None) -> str:
    """Write the result as pretty JSON (atomically: a reader never sees half a file); where it went."""
    from securefed._fs import atomic_write
    from securefed.errors import InvalidParameter

    text = json.dumps(result, indent=2, sort_keys=True, allow_nan=False) + "\n"
    if target is None:
        from securefed._stdout import write_stdout

        write_stdout(text)
        return "standard output"
    try:
        atomic_write(target, text.encode("utf-8"))
    except OSError as exc:
        raise InvalidParameter(f"cannot write {target}: {exc.strerror}") from None
    return str(target)


def _cmd_analytics(args: argparse.Namespace) -> int:
    from coordinator.config import load_coordinator_config
    from securefed.errors import InvalidParameter

    config = load_coordinator_config(args.config)
    task = config.task
    if task.model_kind != "analytics":
        hint = (
            "run it with `securefed coordinator --config ...` and follow it with `securefed status`"
            if task.is_computation
            else "train it with `securefed coordinator --config ...`"
        )
        raise InvalidParameter(
            f'{config.source or args.config}: [task] model is {task.model_kind!r}, not "analytics"; '
            f"securefed analytics runs analytics tasks only ([[computations]] tables, docs/analytics.md); {hint}"
        )
    target = _target(args, config.state_dir)
    # With --out -, stdout carries the JSON alone; the words go to stderr.
    say = (lambda text: print(text, file=sys.stderr)) if target is None else print
    result, steps = _stored(config.store_path)
    if result is not None:
        how = f"already finished (stored in {config.store_path}); nothing was run"
    elif args.show:
        say(
            f"analytics task {task.name}: not finished: {steps} step{'s' if steps != 1 else ''} done "
            f"(at most {task.rounds}); nothing written"
        )
        return 1
    else:
        from securefed._fs import lock_holder

        pid = lock_holder(config.state_dir)
        if pid is not None:
            raise InvalidParameter(
                f"a coordinator (PID {pid}) is already running this task in {config.state_dir}; let it finish, "
                f"then write its results with `securefed analytics --config {args.config} --show`"
            )
        from coordinator.daemon import run_coordinator

        print(f"analytics task {task.name}: running the coordinator until the task finishes (Ctrl-C stops it; "
              f"running this again resumes)", file=sys.stderr)  # fmt: skip
        code = run_coordinator(config.source or args.config)
        result, steps = _stored(config.store_path)
        if result is None:
            print(
                f"analytics task {task.name}: the coordinator stopped before the task finished: {steps} "
                f"step{'s' if steps != 1 else ''} done; run this command again to resume",
                file=sys.stderr,
            )
            return code or 1
        count = result.get("aggregations", steps)
        how = f"finished now after {count} secure aggregation{'' if count == 1 else 's'}"
    where = _write(result, target)
    lines = [f"analytics task {task.name}: {how}", *(f"  {line}" for line in result_lines(result)), f"wrote {where}"]
    say("\n".join(lines))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``securefed analytics``."""
    parser = sub.add_parser(
        "analytics",
        help="run a coordinator's analytics task and write its results as JSON",
        description=(
            'Run the coordinator daemon of an analytics task ([task] model = "analytics") in the foreground '
            "until the task finishes, then write the results as JSON and print a summary. A result already "
            "stored is written and printed without running anything. Exit status: 0 with a result, 1 when "
            "the task has not finished, 2 on an error."
        ),
    )
    parser.add_argument("--config", required=True, help="coordinator TOML config whose [task] model is analytics")
    parser.add_argument(
        "--out",
        default=None,
        help=f"the JSON file to write (replaced atomically; default: {DEFAULT_OUT} in the config's state_dir); - for stdout",
    )
    parser.add_argument(
        "--show",
        action="store_true",
        help="run nothing: write and print the stored result, or say how far the task got",
    )
    parser.set_defaults(func=_cmd_analytics)
