#!/usr/bin/env python3
"""Render a ``securefed report`` page in headless Chromium, take a screenshot and check the page.

Usage::

    .venv/bin/python scripts/render_report.py report.html [--screenshot report.png]
    .venv/bin/python scripts/render_report.py coordinator.toml [--html report.html] [--screenshot report.png]

Given a coordinator config it first writes the report (``securefed report``). Then Chromium (Debian
package ``chromium``) loads the file twice, each time with a fresh profile: once for ``--dump-dom``
(with a net log) and once for ``--screenshot``. Checked:

- the DOM has the page's headings (the title, and either the plots, the round table and the
  refusal lists, or the "no rounds yet" notice);
- every ``<img>`` is a ``data:`` URI that decodes as PNG or SVG; nothing else in the page points
  outside it (no script, link, iframe, object; no src/href/url() but ``data:`` or ``#``), and the
  page carries its Content-Security-Policy;
- the net log shows no request the page started (Chromium's own background requests are told
  apart by their network isolation key; DNS is disabled anyway);
- the screenshot is a PNG of the requested width, tall enough that the page's end is in it (the
  window grows until it is; the uniform margin below the page is trimmed when Pillow is there).

Exit 0 when all hold; 1 with one line per failed check; 2 when it cannot run (no Chromium, a bad
file).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # No name resolves: whatever the page (or the browser) tried to fetch could not leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
LINK_ATTRIBUTES = ("src", "href", "srcset", "poster", "action", "formaction", "data", "background", "xlink:href")
FORBIDDEN_TAGS = ("script", "link", "iframe", "frame", "object", "embed", "base", "audio", "video", "source")
TIMEOUT = 120.0


class Usage(Exception):
    """The script cannot run (exit 2)."""


class PageParser(HTMLParser):
    """Headings, images, tables and anything that could make the page fetch something."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[str, str | None, str]] = []  # (tag, id, text)
        self.images: list[dict[str, str | None]] = []
        self.table_rows: dict[str, int] = {}
        self.forbidden: list[str] = []
        self.external: list[str] = []
        self.csp: str | None = None
        self.style_text: list[str] = []
        self._heading: list | None = None
        self._table: str | None = None
        self._in_tbody = False
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in FORBIDDEN_TAGS:
            self.forbidden.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.forbidden.append(f"<{tag} {name}=...> (an event handler)")
            if name in LINK_ATTRIBUTES and value is not None and tag != "img":
                if not (value.startswith("data:") or value.startswith("#")):
                    self.external.append(f"<{tag} {name}={value[:80]!r}>")
            if name == "style" and value and "url(" in value.replace(" ", "").lower():
                self.style_text.append(value)
        if tag == "meta" and (attributes.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp = attributes.get("content")
        if tag in ("h1", "h2", "h3"):
            self._heading = [tag, attributes.get("id"), ""]
        if tag == "img":
            self.images.append({"id": attributes.get("id"), "src": attributes.get("src"), "alt": attributes.get("alt")})
        if tag == "table":
            self._table = attributes.get("id") or "?"
            self.table_rows[self._table] = 0
        if tag == "tbody":
            self._in_tbody = True
        if tag == "tr" and self._table is not None and self._in_tbody:
            self.table_rows[self._table] += 1
        if tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if self._heading is not None and tag == self._heading[0]:
            self.headings.append((self._heading[0], self._heading[1], " ".join(self._heading[2].split())))
            self._heading = None
        if tag == "table":
            self._table = None
        if tag == "tbody":
            self._in_tbody = False
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading[2] += data
        if self._in_style:
            self.style_text.append(data)


def check_image(src: str | None) -> str | None:
    """None if ``src`` is an inline PNG or SVG that decodes; else what is wrong."""
    if not src:
        return "an <img> without src"
    if src.startswith("data:image/png;base64,"):
        try:
            raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            return "an inline PNG that is not valid base64"
        return None if raw.startswith(PNG_MAGIC) else "an inline image labelled PNG that is not a PNG"
    if src.startswith("data:image/svg+xml"):
        return None
    return f"an <img> that is not inline: {src[:80]!r}"


def check_dom(dom: str) -> tuple[list[str], PageParser]:
    """Problems with the page as Chromium built it (empty list: fine)."""
    page = PageParser()
    page.feed(dom)
    page.close()
    problems = []
    titles = [text for tag, _id, text in page.headings if tag == "h1"]
    if len(titles) != 1 or not titles[0].startswith("securefed report:"):
        problems.append(f"expected one <h1> 'securefed report: <task>', found {titles}")
    ids = {heading_id for _tag, heading_id, _text in page.headings}
    texts = [text for _tag, _id, text in page.headings]
    if "no-rounds" in ids:
        expected = ["refusals-heading", "aborts-heading"]
    else:
        expected = ["plots", "rounds-heading", "refusals-heading", "aborts-heading"]
        if page.table_rows.get("rounds", 0) < 1:
            problems.append("the round table (table#rounds) has no rows")
        if not page.images:
            problems.append("the page has rounds but no plot images")
    missing = [heading for heading in expected if heading not in ids]
    if missing:
        problems.append(f"missing headings {missing}; the page has {texts}")
    for image in page.images:
        wrong = check_image(image["src"])
        if wrong:
            problems.append(f"{wrong} (img id {image['id']})")
        elif not image["alt"]:
            problems.append(f"img {image['id']} has no alt text")
    problems += [f"the page has {item}" for item in sorted(set(page.forbidden))]
    problems += [f"the page points outside itself: {item}" for item in page.external]
    for text in page.style_text:
        lowered = text.replace(" ", "").lower()
        start = 0
        while (at := lowered.find("url(", start)) >= 0:
            target = lowered[at + 4 :].lstrip("'\"")
            if not target.startswith("data:"):
                problems.append(f"CSS fetches {text[at : at + 60]!r}")
            start = at + 4
    if page.csp is None or "default-src 'none'" not in page.csp:
        problems.append(f"no Content-Security-Policy with default-src 'none' (found {page.csp!r})")
    return problems, page


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for (its isolation key is the file:// origin), per Chromium's net log."""
    try:
        log = json.loads(netlog.read_text())
    except (OSError, ValueError):
        # Chromium may leave the log unterminated when it exits fast; close it and try again.
        try:
            text = netlog.read_text().rstrip().rstrip(",")
            log = json.loads(text + ("]}" if not text.endswith("}") else ""))
        except (OSError, ValueError):
            return []
    event_types = {value: name for name, value in log.get("constants", {}).get("logEventTypes", {}).items()}
    urls = []
    for event in log.get("events", []):
        if event_types.get(event.get("type")) != "URL_REQUEST_START_JOB":
            continue
        params = event.get("params", {})
        url = str(params.get("url", ""))
        if "file://" in str(params.get("network_isolation_key", "")) and not url.startswith(("file:", "data:")):
            urls.append(url)
    return urls


def chromium(binary: str, url: str, extra: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="render-report-profile-") as profile:
        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
        try:
            result = subprocess.run(command, capture_output=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Usage(f"chromium did not finish within {TIMEOUT:.0f} s: {' '.join(command)}") from None
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise Usage(f"chromium exited {result.returncode}: {' | '.join(tail)}")
    return result


def estimate_height(page: PageParser) -> int:
    """Enough window for the whole page at 1280 px wide (the screenshot grows if not)."""
    figures = len(page.images) + sum(1 for _t, i, _x in page.headings if i == "no-rounds")
    rows = sum(page.table_rows.values())
    return int(900 + 400 * math.ceil(figures / 2) + 30 * rows + 400)


def trim(png: Path, margin: int = 24) -> tuple[int, int, bool]:
    """(width, height, end visible): crop the uniform background below the page, if Pillow is there."""
    try:
        from PIL import Image
    except ImportError:
        raw = png.read_bytes()
        return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big"), True
    with Image.open(png) as image:
        image.load()
        rgb = image.convert("RGB")
    width, height = rgb.size
    background = rgb.getpixel((width - 1, height - 1))
    row = height - 1
    while row > 0:
        strip = rgb.crop((0, row, width, row + 1))
        if strip.getextrema() != tuple((c, c) for c in background):
            break
        row -= 1
    blank = height - 1 - row
    if blank < margin:
        return width, height, False
    rgb.crop((0, 0, width, row + 1 + margin)).save(png)
    return width, row + 1 + margin, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a report .html, or a coordinator .toml to write the report from")
    parser.add_argument("--html", default=None, help="with a config: where to write the report (default: beside the screenshot)")
    parser.add_argument("--screenshot", default=None, help="PNG to write (default: the report's name with .png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument(
        "--height", type=int, default=None, help="window height (default: estimated from the page, grown until it fits)"
    )
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if not os.access(args.chromium, os.X_OK):
        raise Usage(f"no Chromium at {args.chromium}: apt-get install chromium, or pass --chromium PATH")
    source = Path(args.source).expanduser().resolve()
    if not source.is_file():
        raise Usage(f"{source} does not exist")
    if source.suffix == ".toml":
        report = Path(args.html or (Path(args.screenshot).with_suffix(".html") if args.screenshot else "report.html")).resolve()
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from coordinator.config import load_coordinator_config
        from securefed.errors import SecureFedError
        from securefed.report import write_report

        try:
            data, size = write_report(load_coordinator_config(source), report)
        except SecureFedError as exc:
            raise Usage(str(exc)) from None
        print(f"wrote {report} ({size / 1024:.0f} KiB, {data.rounds_done} of {data.rounds_total} rounds)")
    else:
        report = source
    screenshot = Path(args.screenshot or report.with_suffix(".png")).resolve()
    url = report.as_uri()

    problems: list[str] = []
    html_text = report.read_text(encoding="utf-8", errors="replace")
    source_problems, _ = check_dom(html_text)
    problems += [f"report file: {p}" for p in source_problems]

    with tempfile.TemporaryDirectory(prefix="render-report-") as work:
        netlog = Path(work) / "netlog.json"
        dom = chromium(args.chromium, url, [f"--log-net-log={netlog}", "--dump-dom"]).stdout.decode("utf-8", errors="replace")
        if not netlog.exists():
            raise Usage(f"chromium wrote no net log at {netlog}: cannot tell whether the page fetched anything")
        problems += [f"the page requested {u}" for u in page_requests(netlog)]
    dom_problems, page = check_dom(dom)
    problems += [f"rendered DOM: {p}" for p in dom_problems]

    height = args.height or estimate_height(page)
    for _ in range(4):
        if screenshot.exists():
            screenshot.unlink()
        chromium(args.chromium, url, [f"--screenshot={screenshot}", f"--window-size={args.width},{height}"])
        if not screenshot.exists() or not screenshot.read_bytes().startswith(PNG_MAGIC):
            raise Usage(f"chromium wrote no PNG screenshot at {screenshot}")
        width, shot_height, whole = trim(screenshot)
        if whole or args.height:
            break
        height *= 2
    if width != args.width:
        problems.append(f"the screenshot is {width} px wide, not {args.width}")
    if not whole:
        problems.append(f"the page is taller than the {height} px window: its end is not in the screenshot")

    if problems:
        for problem in problems:
            print(f"FAIL: {problem}", file=sys.stderr)
        return 1
    print(
        f"ok: {report}: {len(page.images)} inline plot(s), {page.table_rows.get('rounds', 0)} round row(s), "
        f"no external references or requests; screenshot {screenshot} ({width}x{shot_height})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
