"""``securefed report`` (issue 12): one self-contained HTML page of a task's history.

The store is written through :class:`CoordinatorStore` as the coordinator writes it (rounds committed,
evaluations recorded, a refusal and an aborted attempt), the config is a real coordinator config read
by the real loader, and the command runs through ``securefed.cli.main``. The page is parsed back with
:mod:`html.parser`: plots must be inline images that decode, the round table must hold the store's
numbers, and text from the store or config (a node name, a refusal detail: attacker-influenced) must
come back as text, never as markup.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import textwrap
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.config import load_coordinator_config
from securefed.cli import main
from securefed.federation.store import CoordinatorStore
from securefed.report import (
    NO_ROUNDS,
    RECENT,
    RefusalRow,
    ReportData,
    RoundRow,
    collect,
    draw_plots,
    gather_report,
    render_html,
)

HOSTILE_NODE = '<script>alert("node")</script>'
HOSTILE_REASON = "weaker-than-policy<i>"
HOSTILE_DETAIL = '<img src=x onerror=alert(1)> & "quoted" </td></tr></table><script>steal()</script>'
HOSTILE_ABORT = "too few nodes: <b>2</b> of 3 </td><script>x()</script>"
HOSTILE_TASK = "readmission <script>t()</script>"

#: every element the page may contain: anything else means some text became markup
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "footer", "h1", "h2", "p", "dl", "dt", "dd",
    "span", "code", "div", "figure", "figcaption", "img", "ul", "li", "strong", "table", "thead", "tbody",
    "tr", "th", "td",
}  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headings: dict[str, str] = {}  # id -> text
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._heading: list | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_body_rows = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag in ("h1", "h2"):
            self._heading = [attributes.get("id") or tag, ""]
        elif tag == "table":
            self._table = attributes.get("id")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body_rows = True
        elif tag == "tr" and self._in_body_rows:
            self.tables[self._table].append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2") and self._heading is not None:
            self.headings[self._heading[0]] = self._heading[1]
            self._heading = None
        elif tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body_rows = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._heading is not None:
            self._heading[1] += data
        if self._cell is not None:
            self._cell.append(data)

    def images(self) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag == "img"]

    def column(self, table: str, header_index: int) -> list[str]:
        return [row[header_index] for row in self.tables[table]]


def _config(tmp_path: Path, task_name: str = "readmission", rounds: int = 5, dp: bool = True) -> Path:
    from securefed.crypto.identity import SigningKey
    from securefed.wire.keys import CurveKeyPair

    nodes = []
    for name in ("site-a", "site-b", "site-c", "site-d"):
        curve, identity = CurveKeyPair.generate(), SigningKey.generate()
        nodes.append(
            f'[[nodes]]\nname = "{name}"\ncurve_public_key = "{curve.public.decode()}"\n'
            f'identity_public_key = "{base64.b64encode(identity.public_bytes).decode()}"\n'
        )
    dp_table = "[task.dp]\nepsilon = 4.0\ndelta = 1e-6\nclip_norm = 0.5\n" if dp else ""
    config = tmp_path / "coordinator.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [coordinator]
            listen = "tcp://127.0.0.1:7700"
            state_dir = "state"
            curve_secret_key_file = "curve.key"

            [task]
            name = "{task_name}"
            model = "sgd_logistic"
            features = 4
            classes = [0, 1]
            rounds = {rounds}
            min_nodes = 3
            """
        )
        + dp_table
        + "\n"
        + "\n".join(nodes)
    )
    return config


def _history(tmp_path: Path) -> Path:
    """Three rounds as the coordinator stores them: round 2 not evaluated, after a refusal and an abort."""
    store = CoordinatorStore(tmp_path / "state" / "coordinator.sqlite")
    try:
        store.save_initial_model(np.zeros(5))
        # round 1: three of four nodes survive; evaluated
        agg = store.next_aggregation(1, "train")
        store.commit_round(1, np.ones(5), None, agg, ["site-a", "site-b", "site-c"], 4, 3.0, 1.5, 2.0)
        agg = store.next_aggregation(1, "evaluate")
        store.record_evaluation(1, agg, 0.8125, 0.5, 100, 3)
        # round 2: a hostile refusal aborts the first attempt; the retry completes; no evaluation
        agg = store.next_aggregation(2, "train")
        store.record_refusal(agg, HOSTILE_NODE, HOSTILE_REASON, HOSTILE_DETAIL)
        store.finish_attempt(agg, "aborted", HOSTILE_ABORT)
        agg = store.next_aggregation(2, "train")
        store.commit_round(2, np.ones(5), None, agg, ["site-a", "site-b", "site-c", "site-d"], 4, 4.0, 2.25, 3.5)
        # round 3
        agg = store.next_aggregation(3, "train")
        store.commit_round(3, np.ones(5), None, agg, ["site-a", "site-b", "site-c", "site-d"], 4, 4.0, 3.0, 1.25)
        agg = store.next_aggregation(3, "evaluate")
        store.record_evaluation(3, agg, 0.875, 0.375, 100, 4)
    finally:
        store.close()
    return tmp_path / "state" / "coordinator.sqlite"


def _report(config: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(["report", "--config", str(config), "--out", str(out)])
    return code, capsys.readouterr().err


def _assert_only_safe_markup(page: Page) -> None:
    for tag, attrs in page.tags:
        assert tag in ALLOWED_TAGS, f"unexpected <{tag}>: text became markup"
        assert not any(name.startswith("on") for name in attrs), f"<{tag}> has an event handler"
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:image/"), f"<{tag} {name}={value!r}>"


def _decode_png(src: str) -> tuple[int, int]:
    from PIL import Image

    assert src.startswith("data:image/png;base64,")
    raw = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert raw.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(raw)) as image:
        image.load()  # decodes every pixel: a truncated or corrupt PNG fails here
        return image.size


# --- the command, end to end ----------------------------------------------------


def test_report_has_inline_plots_and_the_rounds_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _config(tmp_path)
    _history(tmp_path)
    out = tmp_path / "report.html"
    code, err = _report(config, out, capsys)
    assert code == 0, err
    assert "3 of 5 rounds" in err

    text = out.read_text(encoding="utf-8")
    page = Page(text)
    _assert_only_safe_markup(page)
    assert page.headings["h1"] == "securefed report: readmission"
    assert {"plots", "rounds-heading", "refusals-heading", "aborts-heading"} <= set(page.headings)

    images = {attrs["id"]: attrs for attrs in page.images()}
    assert {"plot-accuracy", "plot-loss", "plot-epsilon", "plot-participation", "plot-duration", "plot-refusals"} <= set(images)
    for attrs in images.values():
        width, height = _decode_png(attrs["src"])
        assert width >= 300 and height >= 150
        assert attrs["alt"]

    rounds = page.tables["rounds"]
    assert [row[0] for row in rounds] == ["1", "2", "3"]
    assert page.column("rounds", 2) == ["3 / 4", "4 / 4", "4 / 4"]  # survivors / cohort
    assert page.column("rounds", 3) == ["0.8125", "–", "0.8750"]  # accuracy; round 2 never evaluated
    assert page.column("rounds", 4) == ["0.5000", "–", "0.3750"]  # loss
    assert page.column("rounds", 5) == ["1.500", "2.250", "3.000"]  # cumulative epsilon
    assert page.column("rounds", 6) == ["2.00 s", "3.50 s", "1.25 s"]
    assert page.column("rounds", 7) == ["2", "2", "2"]  # attempts: train + evaluate, abort + retry, train + evaluate
    assert page.column("rounds", 8) == ["0", "1", "0"]  # refusals

    data = gather_report(load_coordinator_config(config))  # what the refusal plot is drawn from
    assert data.refusals_by_round == {2: {HOSTILE_REASON: 1}}
    assert data.aborted_by_round == {2: 1}
    assert data.attempt_counts == {"completed": 5, "aborted": 1}

    joined = "".join(page.text)
    assert "3.000 of 4 (75%) at δ = 1e-06" in joined  # epsilon spent of the budget
    assert "not running" in joined  # no daemon holds the state folder and the task is not done
    assert "3 of 5 done" in joined


def test_store_and_config_text_is_escaped_never_markup(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _config(tmp_path, task_name=HOSTILE_TASK)
    _history(tmp_path)
    out = tmp_path / "report.html"
    code, err = _report(config, out, capsys)
    assert code == 0, err

    text = out.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    page = Page(text)
    _assert_only_safe_markup(page)
    assert page.headings["h1"] == f"securefed report: {HOSTILE_TASK}"  # shown as text, intact
    [refusal] = page.tables["refusals"]
    assert refusal[1:] == ["2", "3", HOSTILE_NODE, HOSTILE_REASON, HOSTILE_DETAIL]
    [abort] = page.tables["aborts"]
    assert abort[1:] == ["2", "3", "train", HOSTILE_ABORT]
    # The page could not run or load anything even if some text escaped escaping.
    csp = [attrs for tag, attrs in page.tags if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]


def test_an_empty_store_gives_a_page_that_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _config(tmp_path, dp=False)
    CoordinatorStore(tmp_path / "state" / "coordinator.sqlite").close()  # the daemon started; no round yet
    out = tmp_path / "report.html"
    code, err = _report(config, out, capsys)
    assert code == 0, err
    page = Page(out.read_text(encoding="utf-8"))
    _assert_only_safe_markup(page)
    assert page.headings["no-rounds"] == NO_ROUNDS
    assert "rounds" not in page.tables and page.images() == []
    assert "0 of 5 done" in "".join(page.text)


def test_a_missing_config_or_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.html"
    code, err = _report(tmp_path / "nowhere.toml", out, capsys)
    assert code == 2 and err.startswith("error: ") and "nowhere.toml" in err and "does not exist" in err
    assert "Traceback" not in err

    config = _config(tmp_path)  # a good config, but the coordinator never ran: no store
    code, err = _report(config, out, capsys)
    assert code == 2 and "no coordinator state at" in err and "securefed coordinator --config" in err
    assert not out.exists()

    _history(tmp_path)
    code, err = _report(config, tmp_path / "no-such-folder" / "report.html", capsys)
    assert code == 2 and "does not exist; create it first" in err


def test_the_report_command_keeps_the_cli_light() -> None:
    """``securefed status`` builds the same parser: registering ``report`` must not import matplotlib."""
    probe = (
        "import sys; from securefed import cli; cli.build_parser(); "
        "print(sorted(m for m in ('matplotlib', 'numpy', 'securefed.report') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- the data and the page, without a store ---------------------------------------


def _record(number: int, **extra) -> SimpleNamespace:
    """A round record as the store returns it; without ``extra`` it has only the attributes of the first release."""
    return SimpleNamespace(
        round=number, aggregation=number, participants=4, survivors=("a", "b", "c"),
        accuracy=None, loss=None, epsilon=None, duration=1.5, **extra,
    )  # fmt: skip


class _Store:
    """Duck-typed read side of CoordinatorStore."""

    path = Path("/nowhere/coordinator.sqlite")

    def __init__(self, records: list) -> None:
        self._records = records

    def rounds(self) -> list:
        return self._records

    def attempts(self) -> list:
        return [
            SimpleNamespace(aggregation=r.round, round=r.round, phase="train", status="completed", detail="", started_at=0.0)
            for r in self._records
        ]

    def refusals(self) -> list:
        return []

    def recent_refusals(self, limit: int) -> list:
        return []

    def attempt_counts(self) -> dict:
        return {"completed": len(self._records)}


TASK = SimpleNamespace(name="t", model_kind="mlp", n_features=3, feature_names=None, classes=(0, 1), rounds=4,
                       strategy="fedavg", masking=True, min_nodes=3, dp=None)  # fmt: skip


def test_rounds_from_before_and_after_the_store_records_stages_and_bytes() -> None:
    old = collect(_Store([_record(1)]), TASK, roster_size=4, status=("running", "PID 1"))
    [row] = old.rounds
    assert (row.stage_durations, row.bytes_in, row.bytes_out, row.completed_at, row.refusals, row.attempts) == (
        {},
        None,
        None,
        None,
        0,
        1,
    )

    new = collect(
        _Store([_record(1, stage_durations={"advertise": 0.5, "unmask": 0.25}, bytes_in=2048, bytes_out=None,
                        completed_at=1.7e9, refusals=2, attempts=3)]),
        TASK, roster_size=4, status=("running", "PID 1"),
    )  # fmt: skip
    [row] = new.rounds
    assert (row.stage_durations, row.bytes_in, row.bytes_out, row.completed_at, row.refusals, row.attempts) == (
        {"advertise": 0.5, "unmask": 0.25}, 2048, None, 1.7e9, 2, 3,
    )  # fmt: skip


def _data(rounds: tuple[RoundRow, ...], refusals: tuple[RefusalRow, ...] = ()) -> ReportData:
    return ReportData(
        task_name="t", model_kind="mlp", n_features=3, feature_names=("a", "b", "c"), classes=(0, 1), rounds_total=4,
        strategy="fedavg", masking=True, min_nodes=3, roster_size=5, dp_epsilon=None, dp_delta=None, dp_clip_norm=None, dp_unit=None,
        status="running", status_detail="PID 1", generated_at=1.7e9, version="0", config_path="c.toml",
        store_path="s.sqlite", rounds=rounds, refusals_by_round={}, aborted_by_round={}, recent_refusals=refusals,
        recent_aborts=(), attempt_counts={},
    )  # fmt: skip


def test_stage_durations_and_traffic_are_drawn_when_known_and_unknowns_are_noted() -> None:
    rounds = (
        RoundRow(1, 1, 5, 5, None, None, None, 4.0, {"advertise": 1.0, "masked_input": 2.5}, 3 << 20, 5 << 20, 1.7e9),
        RoundRow(2, 2, 5, 4, None, None, None, 3.0, {}, None, None, 1.7e9),  # stages and bytes not recorded
    )
    plots = {plot.key: plot for plot in draw_plots(_data(rounds))}
    for key in ("duration", "traffic", "participation"):
        assert plots[key].png is not None and plots[key].png.startswith(PNG_MAGIC)
    for key in ("accuracy", "loss", "epsilon", "refusals"):
        assert plots[key].png is None and plots[key].note  # nothing to draw: said in one line
    page = Page(render_html(_data(rounds), list(plots.values())))
    _assert_only_safe_markup(page)
    assert page.column("rounds", 9) == ["masked_input 2.50 s", "–"]  # slowest stage
    assert page.column("rounds", 10) == ["3.0 MiB", "–"]  # bytes in
    assert page.column("rounds", 11) == ["5.0 MiB", "–"]  # bytes out
    assert {tag for tag, _ in page.tags} >= {"li"} and "No accuracy recorded" in "".join(page.text)


def test_a_refusal_reason_is_drawn_as_text_not_mathtext() -> None:
    """A reason comes from a node; ``$`` in a matplotlib label would start mathtext, which can fail to parse."""
    rounds = (RoundRow(1, 1, 3, 3, 0.5, 1.0, None, 1.0),)
    data = replace(_data(rounds), refusals_by_round={1: {r"$\frac{$": 2, "cost $5": 1}}, aborted_by_round={1: 1})
    [plot] = [plot for plot in draw_plots(data) if plot.key == "refusals"]
    assert plot.png is not None and plot.png.startswith(PNG_MAGIC)


text_from_a_peer = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(node=text_from_a_peer, reason=text_from_a_peer, detail=text_from_a_peer)
def test_any_refusal_text_comes_back_as_the_same_text(node: str, reason: str, detail: str) -> None:
    rows = (RoundRow(1, 1, 3, 3, 0.5, 1.0, None, 1.0),)
    refusals = tuple(RefusalRow(1.7e9, 1, 1, node, reason, detail) for _ in range(2))
    page = Page(render_html(_data(rows, refusals), []))
    _assert_only_safe_markup(page)
    table = page.tables["refusals"]
    assert len(table) == 2 <= RECENT

    def shown(text: str) -> str:  # what the page does to long or multi-line text: whitespace collapsed
        return " ".join(text.split())

    for row in table:
        assert [" ".join(cell.split()) for cell in row[3:]] == [shown(node), shown(reason), shown(detail)]


def test_the_browser_check_accepts_a_report_and_catches_an_external_fetch() -> None:
    """scripts/render_report.py's DOM check (run here without a browser) agrees with the page's layout."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "render_report.py"
    spec = importlib.util.spec_from_file_location("render_report", script)
    render_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_report)

    rounds = (RoundRow(1, 1, 3, 3, 0.5, 1.0, None, 1.0),)
    plots = draw_plots(_data(rounds))
    page = render_html(_data(rounds), plots)
    problems, _ = render_report.check_dom(page)
    assert problems == []
    empty, _ = render_report.check_dom(render_html(_data(()), []))
    assert empty == []

    leaky = page.replace(
        "<footer>", '<img src="https://example.org/t.png" alt="t"><link rel="stylesheet" href="//x/a.css"><footer>'
    )
    problems, _ = render_report.check_dom(leaky)
    assert any("not inline" in p for p in problems) and any("<link>" in p for p in problems)
