"""``securefed report``: one self-contained HTML page showing how a task went.

Theory of operation. Three steps, each testable on its own:

1. **gather** (:func:`gather_report`): the coordinator config (the real loader) and its store, opened
   read-only (safe while the daemon writes), become a :class:`ReportData` of plain numbers and
   strings. No matplotlib here. Round attributes a newer store adds (stage durations, bytes, refusal
   and attempt counts) are read with ``getattr`` and a default, so an older store still reports.
2. **draw** (:func:`draw_plots`): matplotlib, non-interactive Agg backend, imported only here, turns
   the data into small PNGs. A plot with nothing to show is replaced by a one-line note.
3. **render** (:func:`render_html`): the page, with the PNGs inlined as ``data:`` URIs, CSS inline, no
   JavaScript and a Content-Security-Policy that forbids every fetch, so the file can be mailed or
   archived and opened anywhere without reaching out. Every string that comes from the store or the
   config (node names, refusal details: attacker-influenced text) goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefed.errors import InvalidParameter, StorageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

    from coordinator.config import CoordinatorConfig  # for the annotation only (docs/architecture.md)
    from securefed.federation.store import CoordinatorStore

__all__ = [
    "NO_ROUNDS",
    "AbortRow",
    "Plot",
    "RefusalRow",
    "ReportData",
    "RoundRow",
    "collect",
    "draw_plots",
    "gather_report",
    "render_html",
    "write_report",
]

#: what the page says when no round has completed yet
NO_ROUNDS = "No rounds completed yet"
#: how many of the newest refusals and aborted attempts the page lists
RECENT = 20
#: a refusal detail or abort reason longer than this is cut in the tables (the store keeps 2000)
_DETAIL_CHARS = 400

# Okabe-Ito: distinguishable for the common colour-vision deficiencies, and in greyscale print.
_BLUE, _ORANGE, _GREEN, _VERMILLION = "#0072B2", "#E69F00", "#009E73", "#D55E00"
_SKY, _PURPLE, _YELLOW, _GREY = "#56B4E9", "#CC79A7", "#F0E442", "#8C8C8C"
_CYCLE = (_BLUE, _ORANGE, _GREEN, _SKY, _PURPLE, _VERMILLION, _YELLOW)
_STAGE_ORDER = ("advertise", "reveal", "share", "masked_input", "consistency", "unmask")


# --- 1. data ------------------------------------------------------------------


@dataclass(frozen=True)
class RoundRow:
    """One completed round, as the page shows it (``None``: not known or not evaluated)."""

    round: int
    aggregation: int
    participants: int
    survivors: int
    accuracy: float | None
    loss: float | None
    epsilon: float | None
    duration: float
    stage_durations: dict[str, float] = field(default_factory=dict)
    bytes_in: int | None = None
    bytes_out: int | None = None
    completed_at: float | None = None
    refusals: int = 0
    attempts: int = 1


@dataclass(frozen=True)
class RefusalRow:
    at: float | None
    round: int | None
    aggregation: int
    node: str
    reason: str
    detail: str


@dataclass(frozen=True)
class AbortRow:
    started_at: float
    round: int
    aggregation: int
    phase: str
    detail: str


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, as plain values (no store, no matplotlib)."""

    task_name: str
    model_kind: str
    n_features: int
    feature_names: tuple[str, ...] | None
    classes: tuple[int, ...]
    rounds_total: int
    strategy: str
    masking: bool
    min_nodes: int
    roster_size: int
    dp_epsilon: float | None
    dp_delta: float | None
    dp_clip_norm: float | None
    #: "record" (each record, DP-SGD across the sites) or "site" (a site's whole update); None without DP
    dp_unit: str | None
    status: str  # "finished", "running" or "not running"
    status_detail: str
    generated_at: float
    version: str
    config_path: str
    store_path: str
    rounds: tuple[RoundRow, ...]
    #: round -> reason -> refusals during that round's attempts (training and evaluation)
    refusals_by_round: dict[int, dict[str, int]]
    #: round -> aborted attempts of that round
    aborted_by_round: dict[int, int]
    recent_refusals: tuple[RefusalRow, ...]
    recent_aborts: tuple[AbortRow, ...]
    attempt_counts: dict[str, int]
    #: trees and analytics: the rows are compute steps (no accuracy, loss or epsilon) and a result may be stored
    computation: bool = False
    #: a computation's finished result, as the store keeps it (None before the end)
    result: dict | None = None
    #: analytics: the kinds of the task's computations, in order
    computations: tuple[str, ...] = ()

    @property
    def rounds_done(self) -> int:
        return len(self.rounds)

    @property
    def unit(self) -> str:
        """What one row is: a training round, or one secure aggregation (step) of a computation."""
        return "step" if self.computation else "round"

    @property
    def wall_time(self) -> float:
        """Seconds spent in the committed rounds or steps (the sum of their durations)."""
        return sum(r.duration for r in self.rounds)

    @property
    def epsilon_spent(self) -> float | None:
        """The task's epsilon so far: the newest round's (each round records the running total)."""
        spent = [r.epsilon for r in self.rounds if r.epsilon is not None]
        return spent[-1] if spent else None


def _number(value: Any) -> float | None:
    """A finite float, or None (a store can hold NULL; never let NaN or a string reach a plot)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _stage_durations(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    stages = {str(k): _number(v) for k, v in value.items()}
    return {k: v for k, v in stages.items() if v is not None and v >= 0}


def collect(
    store: CoordinatorStore,
    task: Any,
    *,
    roster_size: int,
    status: tuple[str, str],
    config_path: str = "",
    now: float | None = None,
    version: str | None = None,
) -> ReportData:
    """A :class:`ReportData` from an open store and a task definition (no config file, no plotting)."""
    import securefed

    records = store.rounds()
    attempts = store.attempts()
    refusals = store.refusals()
    round_of = {a.aggregation: a.round for a in attempts}

    by_round: dict[int, Counter[str]] = defaultdict(Counter)
    for aggregation, _node, reason, _detail in refusals:
        if aggregation in round_of:
            by_round[round_of[aggregation]][str(reason)] += 1
    attempts_per_round = Counter(a.round for a in attempts)
    aborted = Counter(a.round for a in attempts if a.status == "aborted")

    rows = []
    for record in records:
        number = int(record.round)
        refused = _count(getattr(record, "refusals", None))
        tried = _count(getattr(record, "attempts", None))
        completed = _number(getattr(record, "completed_at", None))
        rows.append(
            RoundRow(
                round=number,
                aggregation=int(record.aggregation),
                participants=int(record.participants),
                survivors=len(record.survivors),
                accuracy=_number(record.accuracy),
                loss=_number(record.loss),
                epsilon=_number(record.epsilon),
                duration=_number(record.duration) or 0.0,
                stage_durations=_stage_durations(getattr(record, "stage_durations", None)),
                bytes_in=_count(getattr(record, "bytes_in", None)),
                bytes_out=_count(getattr(record, "bytes_out", None)),
                completed_at=completed if completed else None,
                refusals=refused if refused is not None else sum(by_round.get(number, Counter()).values()),
                attempts=tried if tried else max(1, attempts_per_round.get(number, 1)),
            )
        )

    recent = tuple(
        RefusalRow(r.at, round_of.get(r.aggregation), r.aggregation, r.node, r.reason, r.detail)
        for r in store.recent_refusals(RECENT)
    )
    aborts = tuple(
        AbortRow(a.started_at, a.round, a.aggregation, a.phase, a.detail)
        for a in reversed([a for a in attempts if a.status == "aborted"][-RECENT:])
    )
    dp = getattr(task, "dp", None)
    computation = bool(getattr(task, "is_computation", False))
    result = store.computation_result() if computation and hasattr(store, "computation_result") else None
    listed = (getattr(task, "model_options", None) or {}).get("computations") if computation else None
    kinds = tuple(str(item.get("kind", "?")) for item in listed if isinstance(item, dict)) if isinstance(listed, list) else ()
    return ReportData(
        task_name=str(task.name),
        model_kind=str(task.model_kind),
        n_features=int(task.n_features),
        feature_names=tuple(task.feature_names) if getattr(task, "feature_names", None) else None,
        classes=tuple(task.classes),
        rounds_total=int(task.rounds),
        strategy=str(getattr(task, "strategy", "")),
        masking=bool(getattr(task, "masking", True)),
        min_nodes=int(getattr(task, "min_nodes", 0)),
        roster_size=int(roster_size),
        dp_epsilon=None if dp is None else float(dp["epsilon"]),
        dp_delta=None if dp is None else float(dp["delta"]),
        dp_clip_norm=None if dp is None else float(dp["clip_norm"]),
        dp_unit=None if dp is None else str(dp["unit"]),
        status=status[0],
        status_detail=status[1],
        generated_at=time.time() if now is None else now,
        version=version or securefed.__version__,
        config_path=config_path,
        store_path=str(store.path),
        rounds=tuple(rows),
        refusals_by_round={r: dict(c) for r, c in sorted(by_round.items())},
        aborted_by_round=dict(sorted(aborted.items())),
        recent_refusals=recent,
        recent_aborts=aborts,
        attempt_counts=store.attempt_counts(),
        computation=computation,
        result=result if isinstance(result, dict) else None,
        computations=kinds,
    )


def coordinator_status(
    state_dir: Path, rounds_done: int, rounds_total: int, computation: bool = False, has_result: bool = False
) -> tuple[str, str]:
    """("finished" | "running" | "not running", a sentence): the daemon's lock and status file.

    The same evidence ``securefed status`` uses: the lock on the state folder says whether a
    coordinator process is alive; ``status.json`` says what it last reported. A computation
    (trees, analytics) has finished when its result is stored; ``rounds_total`` is only its upper
    bound on steps.
    """
    from securefed._fs import lock_holder
    from securefed.status import STATUS_FILE, _age, _read_status_file

    pid = lock_holder(state_dir)
    live = _read_status_file(state_dir / STATUS_FILE)
    age = time.time() - float(live.get("updated_at", 0) or 0)
    where = f"the coordinator (PID {pid}) is still running" if pid is not None else "the coordinator has stopped"
    unit = "step" if computation else "round"
    if computation and has_result:
        return "finished", f"the computation finished after {rounds_done} steps; {where}"
    finished = not computation and (bool(live.get("finished")) or rounds_done >= rounds_total)
    if finished:
        return "finished", f"all {rounds_total} rounds done; {where}"
    if pid is None:
        done = (
            f"{rounds_done} of at most {rounds_total} steps done"
            if computation
            else f"{rounds_done} of {rounds_total} rounds done"
        )
        return "not running", f"no coordinator holds {state_dir}; {done}"
    if not live:
        return "running", f"PID {pid}; no status file yet"
    if age > 10.0:
        return "running", f"PID {pid}, but its status file is {_age(age)} old: it may be stuck"
    current = live.get("current")
    if isinstance(current, dict):
        return "running", (
            f"PID {pid}; {unit} {current.get('round')} {current.get('phase')}, aggregation "
            f"{current.get('aggregation')}, stage {current.get('stage')}"
        )
    return "running", f"PID {pid}; waiting for nodes"


def gather_report(config: CoordinatorConfig, now: float | None = None) -> ReportData:
    """Read the store of a loaded coordinator config read-only.

    ``securefed report`` loads the config (the library never imports the daemon packages,
    docs/architecture.md). Raises :class:`StorageError` when there is no store yet or it cannot be read.
    """
    from securefed.federation.store import CoordinatorStore

    store_path = config.store_path
    if not store_path.exists():
        raise StorageError(
            f"no coordinator state at {store_path}: the coordinator has not run with {config.source} yet "
            "(start it with `securefed coordinator --config ...`), or [coordinator] state_dir points elsewhere"
        )
    store = CoordinatorStore(store_path, read_only=True)
    try:
        rounds_done = len(store.rounds())
        computation = bool(getattr(config.task, "is_computation", False))
        has_result = computation and store.computation_result() is not None
        status = coordinator_status(config.state_dir, rounds_done, config.task.rounds, computation, has_result)
        return collect(
            store,
            config.task,
            roster_size=len(config.nodes),
            status=status,
            config_path=str(config.source or config.store_path),
            now=now,
        )
    finally:
        store.close()


# --- 2. plots -----------------------------------------------------------------


@dataclass(frozen=True)
class Plot:
    """One figure on the page: a PNG, or a note saying why there is nothing to draw."""

    key: str
    title: str
    png: bytes | None
    alt: str
    note: str = ""


def _figure(width: float = 6.4, height: float = 3.2) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


def _round_axis(ax: Axes, rounds: Sequence[int], label: str = "round") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12, min_n_ticks=1))
    if rounds:
        ax.set_xlim(min(rounds) - 0.6, max(rounds) + 0.6)
    ax.grid(True, axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend_below(fig: Figure, ax: Axes) -> None:
    """The legend under the plot, never over the data; every plot keeps the same width."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    # At most two rows; matplotlib fills columns first, so interleave to read left to right.
    columns = len(handles) if len(handles) <= 4 else math.ceil(len(handles) / 2)
    order = [i for j in range(columns) for i in (j, columns + j) if i < len(handles)]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=columns,
               frameon=False, fontsize=8)  # fmt: skip


def _marker(n: int) -> str | None:
    return "o" if n <= 60 else None


def _accuracy(data: ReportData) -> Plot:
    key, title = "accuracy", "Accuracy per round"
    points = [(r.round, r.accuracy) for r in data.rounds if r.accuracy is not None]
    if not points:
        return Plot(
            key,
            title,
            None,
            "",
            "No accuracy recorded: the rounds were not evaluated (task evaluate = false and no evaluation data).",
        )
    fig = _figure()
    ax = fig.add_subplot()
    # The line joins the evaluated rounds; a round without a marker was not evaluated (the table says so too).
    xs = [r.round for r in data.rounds]
    ax.plot(*zip(*points), color=_BLUE, marker=_marker(len(xs)), markersize=4, linewidth=1.8)
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    low, high = min(y for _, y in points), max(y for _, y in points)
    pad = max(0.02, (high - low) * 0.15)
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    ax.set_ylabel("accuracy")
    _round_axis(ax, xs, data.unit)
    last_round, last = points[-1]
    ax.annotate(
        f"{last:.1%}", (last_round, last), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8, color=_BLUE
    )
    alt = f"Accuracy per round, from {points[0][1]:.1%} in round {points[0][0]} to {last:.1%} in round {last_round}"
    return Plot(key, title, _png(fig), alt)


def _loss(data: ReportData) -> Plot:
    key, title = "loss", "Loss per round"
    points = [(r.round, r.loss) for r in data.rounds if r.loss is not None]
    if not points:
        return Plot(key, title, None, "", "No loss recorded: the rounds were not evaluated.")
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r.round for r in data.rounds]
    ax.plot(*zip(*points), color=_VERMILLION, marker=_marker(len(xs)), markersize=4, linewidth=1.8)
    ax.set_ylabel("mean loss")
    _round_axis(ax, xs, data.unit)
    alt = f"Loss per round, from {points[0][1]:.3f} in round {points[0][0]} to {points[-1][1]:.3f} in round {points[-1][0]}"
    return Plot(key, title, _png(fig), alt)


def _epsilon(data: ReportData) -> Plot:
    key, title = "epsilon", "Privacy budget spent (cumulative ε)"
    points = [(r.round, r.epsilon) for r in data.rounds if r.epsilon is not None]
    if data.dp_epsilon is None and not points:
        return Plot(key, title, None, "", "Differential privacy is off for this task: no ε is spent or accounted.")
    if not points:
        return Plot(key, title, None, "", "No ε recorded yet.")
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r.round for r in data.rounds]
    ys = [r.epsilon if r.epsilon is not None else math.nan for r in data.rounds]
    ax.plot(xs, ys, color=_GREEN, marker=_marker(len(xs)), markersize=4, linewidth=1.8, label="ε spent")
    ax.fill_between(xs, ys, color=_GREEN, alpha=0.12, linewidth=0)
    top = max(y for _, y in points)
    if data.dp_epsilon is not None:
        ax.axhline(data.dp_epsilon, color=_VERMILLION, linestyle="--", linewidth=1.5, label=f"budget ε = {data.dp_epsilon:g}")
        top = max(top, data.dp_epsilon)
    ax.set_ylim(0, top * 1.12)
    ax.set_ylabel("ε (cumulative)")
    _round_axis(ax, xs, data.unit)
    _legend_below(fig, ax)
    delta = f" at δ = {data.dp_delta:g}" if data.dp_delta is not None else ""
    budget = f" of a budget of {data.dp_epsilon:g}" if data.dp_epsilon is not None else ""
    return Plot(key, title, _png(fig), f"Cumulative epsilon spent per round: {points[-1][1]:.3f}{budget}{delta}")


def _stage_keys(rows: Iterable[RoundRow]) -> list[str]:
    seen = {stage for row in rows for stage in row.stage_durations}
    return [s for s in _STAGE_ORDER if s in seen] + sorted(seen - set(_STAGE_ORDER))


def _durations(data: ReportData) -> Plot:
    key, title = "duration", f"{data.unit.capitalize()} duration"
    rows = data.rounds
    unit, scale = _time_unit(max((r.duration for r in rows), default=0.0))
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r.round for r in rows]
    stages = _stage_keys(rows)
    if stages:
        bottom = [0.0] * len(rows)
        for index, stage in enumerate(stages):
            heights = [r.stage_durations.get(stage, 0.0) / scale for r in rows]
            ax.bar(xs, heights, bottom=bottom, width=0.8, color=_CYCLE[index % len(_CYCLE)], label=stage.replace("_", " "))
            bottom = [b + h for b, h in zip(bottom, heights)]
        # Time outside the stages (decoding, the model update, the commit): shown when it is visible.
        rest = [max(0.0, r.duration / scale - b) if r.stage_durations else 0.0 for r, b in zip(rows, bottom)]
        unknown = [0.0 if r.stage_durations else r.duration / scale for r in rows]
        if any(v > 0.02 * r.duration / scale for v, r in zip(rest, rows)):
            ax.bar(xs, rest, bottom=bottom, width=0.8, color="#cfcfcf", label="outside the stages")
        if any(unknown):
            ax.bar(xs, unknown, width=0.8, color=_GREY, hatch="//", edgecolor="white", label="stages not recorded")
        _legend_below(fig, ax)
        alt = f"{data.unit.capitalize()} duration per {data.unit}, stacked by secure-aggregation stage"
    else:
        ax.bar(xs, [r.duration / scale for r in rows], width=0.8, color=_BLUE)
        alt = f"{data.unit.capitalize()} duration per {data.unit} (the store does not record per-stage times)"
    ax.set_ylabel(f"duration ({unit})")
    _round_axis(ax, xs, data.unit)
    return Plot(key, title, _png(fig), alt)


def _time_unit(longest: float) -> tuple[str, float]:
    if longest >= 7200:
        return "h", 3600.0
    if longest >= 180:
        return "min", 60.0
    if longest < 1.0:
        return "ms", 0.001
    return "s", 1.0


def _participation(data: ReportData) -> Plot:
    from matplotlib.ticker import MaxNLocator

    key, title = "participation", f"Participants per {data.unit}"
    rows = data.rounds
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r.round for r in rows]
    ax.bar(xs, [r.survivors for r in rows], width=0.8, color=_SKY, label="survivors (in the sum)")
    # The cohort as a black tick across each bar (a step line when the bars are too thin for ticks).
    few = len(xs) <= 60
    ax.plot(xs, [r.participants for r in rows], color="#222222", marker="_" if few else None, markersize=14,
            markeredgewidth=2.2, linestyle="none" if few else "-", drawstyle="default" if few else "steps-mid",
            linewidth=1.2, label="cohort (invited)")  # fmt: skip
    # The node list and min_nodes are often the same number: one line then, not two drawn over each other.
    if data.roster_size and data.roster_size == data.min_nodes:
        ax.axhline(data.roster_size, color=_ORANGE, linestyle="--", linewidth=1.4, zorder=1.5,
                   label=f"node list = min_nodes ({data.roster_size})")  # fmt: skip
    else:
        if data.roster_size:
            ax.axhline(
                data.roster_size, color=_GREY, linestyle="--", linewidth=1.4, zorder=1.5, label=f"node list ({data.roster_size})"
            )
        if data.min_nodes:
            ax.axhline(
                data.min_nodes, color=_ORANGE, linestyle=":", linewidth=1.8, zorder=1.5, label=f"min_nodes ({data.min_nodes})"
            )
    top = max([data.roster_size, data.min_nodes, *(r.participants for r in rows)])
    ax.set_ylim(0, top * 1.15 + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("nodes")
    _round_axis(ax, xs, data.unit)
    _legend_below(fig, ax)
    full = sum(1 for r in rows if r.survivors == r.participants)
    return Plot(
        key,
        title,
        _png(fig),
        f"Survivors and cohort size per {data.unit}; {full} of {len(rows)} {data.unit}s kept every invited node",
    )


def _refusals(data: ReportData) -> Plot:
    from matplotlib.ticker import MaxNLocator

    key, title = "refusals", f"Refusals and aborted attempts per {data.unit}"
    if not data.refusals_by_round and not data.aborted_by_round:
        return Plot(key, title, None, "", "No refusals and no aborted attempts: every attempt completed.")
    fig = _figure()
    ax = fig.add_subplot()
    rounds = sorted(set(data.refusals_by_round) | set(data.aborted_by_round) | {r.round for r in data.rounds})
    reasons: Counter[str] = Counter()
    for counts in data.refusals_by_round.values():
        reasons.update(counts)
    ordered = [reason for reason, _ in reasons.most_common()]
    shown = ordered[:6]  # more reasons than colours: the rest share one bar segment
    width = 0.4
    bottom = [0] * len(rounds)
    for index, reason in enumerate(shown):
        heights = [data.refusals_by_round.get(r, {}).get(reason, 0) for r in rounds]
        ax.bar([r - width / 2 for r in rounds], heights, bottom=bottom, width=width, color=_CYCLE[index % len(_CYCLE)],
               label=f"refused: {_plain(_short(reason, 32))}")  # fmt: skip
        bottom = [b + h for b, h in zip(bottom, heights)]
    if len(ordered) > len(shown):
        heights = [sum(v for k, v in data.refusals_by_round.get(r, {}).items() if k not in shown) for r in rounds]
        ax.bar(
            [r - width / 2 for r in rounds], heights, bottom=bottom, width=width, color="#cfcfcf", label="refused: other reasons"
        )
    ax.bar([r + width / 2 for r in rounds], [data.aborted_by_round.get(r, 0) for r in rounds], width=width,
           color="white", edgecolor="#333333", hatch="xx", label="aborted attempts")  # fmt: skip
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("count")
    _round_axis(ax, rounds, data.unit)
    ax.set_ylim(0, None)
    _legend_below(fig, ax)
    total = sum(reasons.values())
    aborted = sum(data.aborted_by_round.values())
    return Plot(key, title, _png(fig), f"{total} refusals and {aborted} aborted attempts, per {data.unit}")


def _plain(text: str) -> str:
    """Text from a node, safe as a matplotlib label: a ``$`` would start mathtext (and can fail to parse)."""
    return text.replace("$", r"\$")


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _traffic(data: ReportData) -> Plot:
    key, title = "traffic", f"Coordinator traffic per {data.unit}"
    rows = [r for r in data.rounds if r.bytes_in is not None or r.bytes_out is not None]
    if not rows:
        return Plot(key, title, None, "", "Bytes in and out are not recorded by this coordinator's store.")
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r.round for r in data.rounds]
    width = 0.4
    largest = max(max(r.bytes_in or 0, r.bytes_out or 0) for r in rows)
    unit, scale = _byte_unit(largest)
    received = [(r.bytes_in or 0) / scale for r in rows]
    sent = [(r.bytes_out or 0) / scale for r in rows]
    ax.bar([r.round - width / 2 for r in rows], received, width=width, color=_BLUE, label="in (from nodes)")
    ax.bar([r.round + width / 2 for r in rows], sent, width=width, color=_ORANGE, label="out (to nodes)")
    ax.set_ylabel(f"bytes ({unit})")
    _round_axis(ax, xs, data.unit)
    _legend_below(fig, ax)
    return Plot(key, title, _png(fig), f"Bytes received from and sent to the nodes per {data.unit}")


def _byte_unit(largest: float) -> tuple[str, float]:
    for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if largest >= 2 * scale:
            return unit, scale
    return "B", 1.0


def draw_plots(data: ReportData) -> list[Plot]:
    """The page's figures, in page order (none when no round has completed but the refusal plot).

    A computation's steps have no accuracy, loss or epsilon: those plots are left out, not noted.
    """
    try:
        import matplotlib
    except ImportError:
        raise InvalidParameter("securefed report draws its plots with matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # never an interactive backend: this runs on servers
    from matplotlib import rc_context

    style: dict[RcKeyType, Any] = {
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
        "hatch.linewidth": 0.6,
    }
    with rc_context(style):
        if not data.rounds:
            return [_refusals(data)]
        if data.computation:
            return [_participation(data), _durations(data), _refusals(data), _traffic(data)]
        return [
            _accuracy(data),
            _loss(data),
            _epsilon(data),
            _participation(data),
            _durations(data),
            _refusals(data),
            _traffic(data),
        ]


# --- 3. HTML ------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 1320px; padding: 24px 28px 48px; background: #fafafa; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #555; margin: 0 0 16px; }
.status { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; font-size: 13px; }
.status-finished { background: #d8f0e4; color: #0b5a36; }
.status-running { background: #dbeaf7; color: #0b3f6b; }
.status-not-running { background: #f7e1d7; color: #7a2a07; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0;
           background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 14px 18px; }
dl.facts dt { color: #555; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 18px; }
figure { margin: 0; background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 10px 12px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
figure img { display: block; width: 100%; max-width: 640px; height: auto; }
ul.notes { color: #444; margin: 14px 0 0; padding-left: 22px; }
ul.notes li { margin: 3px 0; }
table { border-collapse: collapse; background: #fff; font-size: 13px; width: 100%; }
th, td { border: 1px solid #e0e0e0; padding: 4px 8px; vertical-align: top; }
th { background: #f0f0f0; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { overflow-wrap: anywhere; max-width: 640px; }
td.reason { white-space: nowrap; }
tr:nth-child(even) td { background: #fbfbfb; }
.empty { background: #fff8e1; border: 1px solid #f0d98a; border-radius: 6px; padding: 14px 18px; font-size: 16px; }
footer { margin-top: 36px; color: #777; font-size: 12px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "–"
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _bytes(value: int | None) -> str:
    if value is None:
        return "–"
    unit, scale = _byte_unit(value)
    return f"{value} B" if scale == 1.0 else f"{value / scale:.1f} {unit}"


def _seconds(value: float) -> str:
    if value >= 180:
        return f"{value / 60:.1f} min"
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _listing(items: Sequence[object], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _facts(data: ReportData) -> str:
    features = f"{data.n_features}"
    if data.feature_names:
        features += f" ({_listing(data.feature_names, 6)})"
    classes = f"{len(data.classes)} ({_listing(data.classes, 12)})" if data.classes else "none: a numeric target"
    if data.dp_epsilon is None:
        dp = "off"
        spent = None
    else:
        unit = "each record (DP-SGD across the sites)" if data.dp_unit == "record" else "each site's whole update"
        dp = f"protects {unit}: budget ε = {data.dp_epsilon:g} at δ = {data.dp_delta:g}, clip norm {data.dp_clip_norm:g}"
        spent_value = data.epsilon_spent
        spent = (
            "none yet"
            if spent_value is None
            else (f"{spent_value:.3f} of {data.dp_epsilon:g} ({spent_value / data.dp_epsilon:.0%}) at δ = {data.dp_delta:g}")
        )
    counts = data.attempt_counts
    attempts = (
        f"{sum(counts.values())} in all: {counts.get('completed', 0)} completed, {counts.get('aborted', 0)} aborted, "
        f"{counts.get('running', 0)} running"
    )
    status = ("Coordinator", f'<span class="status status-{_e(data.status.replace(" ", "-"))}">{_e(data.status)}</span> '
                             f"{_e(data.status_detail)}")  # fmt: skip
    if data.computation:
        finished = "finished" if data.result is not None else f"at most {data.rounds_total}"
        facts = [
            status,
            ("Steps", _e(f"{data.rounds_done} secure aggregations done ({finished})")),
            ("Computation", _e(_computation_kind(data))),
            ("Features", _e(features)),
        ]
        if data.model_kind != "analytics":
            facts.append(("Classes", _e(classes)))
        facts += [
            ("Nodes", _e(f"{data.roster_size} in the node list, at least {data.min_nodes} per step")),
            ("Secure aggregation", "on" if data.masking else "off (plain sum: the coordinator sees each vector)"),
            ("Differential privacy", _e(dp)),
        ]
    else:
        facts = [
            status,
            ("Rounds", _e(f"{data.rounds_done} of {data.rounds_total} done")),
            ("Model", _e(f"{data.model_kind}, strategy {data.strategy}")),
            ("Features", _e(features)),
            ("Classes", _e(classes)),
            ("Nodes", _e(f"{data.roster_size} in the node list, at least {data.min_nodes} per round")),
            ("Secure aggregation", "on" if data.masking else "off (plain sum: the coordinator sees each update)"),
            ("Differential privacy", _e(dp)),
        ]
    if spent is not None:
        facts.append(("ε spent", _e(spent)))
    facts += [
        ("Attempts", _e(attempts)),
        ("Config", f"<code>{_e(data.config_path)}</code>"),
        ("Store", f"<code>{_e(data.store_path)}</code>"),
        ("Generated", _e(f"{_when(data.generated_at)} by securefed {data.version}")),
    ]
    body = "\n".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return f'<dl class="facts">\n{body}\n</dl>'


def _computation_kind(data: ReportData) -> str:
    if data.model_kind == "analytics":
        count = len(data.computations)
        return f"analytics: {count} computation{'s' if count != 1 else ''} ({_listing(data.computations, 10)})"
    return f"{data.model_kind} (histogram trees)"


def _plots_html(plots: Sequence[Plot]) -> str:
    """The drawn plots in a grid; the ones with nothing to draw as a short list under it."""
    figures, notes = [], []
    for plot in plots:
        if plot.png is None:
            notes.append(f'<li id="note-{_e(plot.key)}"><strong>{_e(plot.title)}</strong>: {_e(plot.note)}</li>')
            continue
        uri = "data:image/png;base64," + base64.b64encode(plot.png).decode("ascii")
        figures.append(
            f'<figure id="figure-{_e(plot.key)}"><figcaption>{_e(plot.title)}</figcaption>'
            f'<img id="plot-{_e(plot.key)}" src="{uri}" alt="{_e(plot.alt)}"></figure>'
        )
    html_parts = []
    if figures:
        html_parts.append('<div class="plots">\n' + "\n".join(figures) + "\n</div>")
    if notes:
        html_parts.append('<ul class="notes">\n' + "\n".join(notes) + "\n</ul>")
    return "\n".join(html_parts)


def _table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[tuple[str, str]]]) -> str:
    """``rows`` of (css class, already escaped cell HTML)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f'<td class="{c}">{v}</td>' for c, v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _rounds_table(data: ReportData) -> str:
    stages = _stage_keys(data.rounds)
    traffic = any(r.bytes_in is not None or r.bytes_out is not None for r in data.rounds)
    quality = not data.computation  # a compute step has no accuracy, loss or epsilon
    headers = ["Step" if data.computation else "Round", "Completed", "Survivors / cohort"]
    headers += ["Accuracy", "Loss", "ε spent"] if quality else []
    headers += ["Duration", "Attempts", "Refusals"]
    if stages:
        headers.append("Slowest stage")
    if traffic:
        headers += ["Bytes in", "Bytes out"]
    rows = []
    for r in data.rounds:
        row = [
            ("num", _e(r.round)),
            ("num", _e(_when(r.completed_at))),
            ("num", _e(f"{r.survivors} / {r.participants}")),
        ]
        if quality:
            row += [("num", _e(_fmt(r.accuracy, ".4f"))), ("num", _e(_fmt(r.loss, ".4f"))), ("num", _e(_fmt(r.epsilon, ".3f")))]
        row += [
            ("num", _e(_seconds(r.duration))),
            ("num", _e(r.attempts)),
            ("num", _e(r.refusals)),
        ]
        if stages:
            slowest = max(r.stage_durations.items(), key=lambda item: item[1], default=None)
            row.append(("text", _e("–" if slowest is None else f"{slowest[0]} {_seconds(slowest[1])}")))
        if traffic:
            row += [("num", _e(_bytes(r.bytes_in))), ("num", _e(_bytes(r.bytes_out)))]
        rows.append(row)
    return _table("rounds", headers, rows)


def _results_html(data: ReportData) -> str:
    """A computation's result: per analytics computation its values and error bound; a tree model's summary."""
    from securefed.analytics_cli import EXACT, summarize_result

    if data.result is None:
        return (
            f'<p id="no-results" class="empty">Not finished: {data.rounds_done} step{"s" if data.rounds_done != 1 else ""} '
            f"done (at most {data.rounds_total}). The result appears here once the computation finishes.</p>"
        )
    aggregations = data.result.get("aggregations")
    total = _e(
        f"{aggregations if isinstance(aggregations, int) else data.rounds_done} secure aggregations; wall time "
        f"{_seconds(data.wall_time)} (the sum of the steps' durations)"
    )
    summaries = summarize_result(data.result)
    if data.result.get("kind") == "analytics":
        rows = [
            [
                ("text", _e(s.name)),
                ("text", _e(s.values)),
                ("text", _e("exact" if s.bound == EXACT else s.bound)),
                ("num", _e("–" if s.aggregations is None else s.aggregations)),
                ("num", _e("–" if s.survivors is None else s.survivors)),
            ]
            for s in summaries
        ]
        table = _table("results", ["Computation", "Result", "Largest error bound", "Aggregations", "Nodes in the sum"], rows)
        how = "Every value, with every error bound and the encoding, is in the JSON that <code>securefed analytics --show</code> writes."
    else:
        trees = data.result.get("trees")
        rows = [[
            ("text", _e(data.result.get("kind", data.model_kind))),
            ("num", _e(trees if isinstance(trees, int) else "–")),
            ("text", _e(data.result.get("describe", "–"))),
            ("num", _e(aggregations if isinstance(aggregations, int) else "–")),
            ("num", _e(_seconds(data.wall_time))),
        ]]  # fmt: skip
        table = _table("results", ["Model", "Trees", "Summary", "Secure aggregations", "Wall time"], rows)
        how = "<code>securefed model export</code> writes the model from the coordinator's store."
    return f'{table}\n<p id="results-total">{total}. {how}</p>'


def _refusals_table(data: ReportData) -> str:
    if not data.recent_refusals:
        return f'<p id="no-refusals">No node has refused a {data.unit}.</p>'
    rows = [
        [
            ("num", _e(_when(r.at))),
            ("num", _e("–" if r.round is None else r.round)),
            ("num", _e(r.aggregation)),
            ("text", _e(r.node)),
            ("reason", _e(_short(r.reason, 60))),
            ("text", _e(_short(r.detail, _DETAIL_CHARS))),
        ]
        for r in data.recent_refusals
    ]
    return _table("refusals", ["When", data.unit.capitalize(), "Aggregation", "Node", "Reason", "Detail"], rows)


def _aborts_table(data: ReportData) -> str:
    if not data.recent_aborts:
        return '<p id="no-aborts">No attempt was aborted.</p>'
    rows = [
        [
            ("num", _e(_when(a.started_at))),
            ("num", _e(a.round)),
            ("num", _e(a.aggregation)),
            ("text", _e(a.phase)),
            ("text", _e(_short(a.detail, _DETAIL_CHARS))),
        ]
        for a in data.recent_aborts
    ]
    return _table("aborts", ["Started", data.unit.capitalize(), "Aggregation", "Phase", "Why"], rows)


def _progress(data: ReportData) -> str:
    if data.computation:
        return f"{data.rounds_done} step{'s' if data.rounds_done != 1 else ''} (at most {data.rounds_total})"
    return f"{data.rounds_done} of {data.rounds_total} rounds"


def render_html(data: ReportData, plots: Sequence[Plot]) -> str:
    """The whole page: no script, no external resource (the CSP forbids both)."""
    title = f"securefed report: {data.task_name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Defence in depth: even if some text escaped escaping, nothing could run or load.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(data.model_kind)} · {_e(_progress(data))} · {_e(data.status)}</p>',
        _facts(data),
        "</header>",
    ]
    if data.computation:
        parts += ['<h2 id="results-heading">Results</h2>', _results_html(data)]
    if not data.rounds:
        parts.append(
            f'<h2 id="no-rounds">{NO_ROUNDS}</h2>'
            f'<p class="empty">{NO_ROUNDS}: the coordinator has recorded no completed round in '
            f"<code>{_e(data.store_path)}</code>. Plots and the round table appear once the first round is aggregated.</p>"
        )
        if data.refusals_by_round or data.aborted_by_round:
            parts += ['<h2 id="attempts">Attempts so far</h2>', _plots_html(plots)]
    else:
        rows = "Steps (one secure aggregation each)" if data.computation else "Rounds"
        parts += ['<h2 id="plots">Plots</h2>', _plots_html(plots), f'<h2 id="rounds-heading">{rows}</h2>', _rounds_table(data)]
    parts += [
        f'<h2 id="refusals-heading">Recent refusals (newest first, up to {RECENT})</h2>',
        _refusals_table(data),
        f'<h2 id="aborts-heading">Recent aborted attempts (newest first, up to {RECENT})</h2>',
        _aborts_table(data),
        f"<footer>Generated {_e(_when(data.generated_at))} by securefed {_e(data.version)} from "
        f"<code>{_e(data.store_path)}</code>. Times are this machine's local time.</footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(config: CoordinatorConfig, out: str | Path) -> tuple[ReportData, int]:
    """Gather, draw, render and write the page atomically; (data, bytes written). ``out`` "-" is stdout."""
    import sys

    from securefed._fs import atomic_write

    target = None if str(out) == "-" else Path(out).expanduser()
    if target is not None:
        if target.is_dir():
            raise InvalidParameter(f"--out {target} is a folder; give a file name such as {target / 'report.html'}")
        if not target.parent.is_dir():
            raise InvalidParameter(f"--out {target}: the folder {target.parent} does not exist; create it first")
    data = gather_report(config)
    page = render_html(data, draw_plots(data)).encode("utf-8")
    if target is None:
        sys.stdout.buffer.write(page)
        sys.stdout.flush()
    else:
        try:
            atomic_write(target, page)
        except OSError as exc:
            raise InvalidParameter(f"cannot write {target}: {exc.strerror}") from None
    return data, len(page)
