"""The report in real headless Chromium: it renders, runs no script it should not, loads nothing.

Uses Debian's ``chromium`` (``make test`` installs it when missing) driven by
Playwright, which launches that executable and downloads no browser. Without
Chromium it fails and says what to install (never skipped: a skipped test
checks nothing). The screenshot is kept in ``$ADAPTIM_ARTIFACTS`` (default
``tests/artifacts/``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adaptim.cli import app

HERE = Path(__file__).parent
HOSTILE = "<script>alert(1)</script>"


def chromium() -> str:
    path = os.environ.get("ADAPTIM_CHROMIUM") or shutil.which("chromium")
    reason = None
    if path is None:
        reason = (
            "Debian's chromium is not installed (make test installs it: apt-get install chromium)"
        )
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing (pip install -e '.[test]')"
    if reason is not None:  # `make test` installs both; a skipped browser test checks nothing
        pytest.fail(f"the browser test needs Debian's chromium and playwright: {reason}")
    assert path is not None
    return path


def artifacts() -> Path:
    folder = Path(os.environ.get("ADAPTIM_ARTIFACTS", HERE.parent / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Per figure: each optimizer's drawing (its <g id="opt...">) against its axes' background
# (matplotlib's <g id="axes_N"> holds both), as [id, left, right, top, bottom margins, width,
# height, then the line's own top, bottom and left] in CSS pixels; a negative margin is a part
# outside the axes.
PARTS = """figures => figures.map(f => [
    f.querySelector('figcaption b').textContent,
    [...f.querySelectorAll("svg g[id^='axes_']")].flatMap(axes => {
        const area = axes.querySelector("g[id^='patch'] path").getBoundingClientRect();
        return [...axes.querySelectorAll("g[id^='opt']")].map(g => {
            const r = g.getBoundingClientRect();
            const line = (g.querySelector('path') || g).getBoundingClientRect();
            return [g.id, r.left - area.left, area.right - r.right, r.top - area.top,
                    area.bottom - r.bottom, r.width, r.height, line.top, line.bottom, line.left];
        });
    }),
])"""

#: A marker drawn on an axis' edge (a point beyond it, a diverged run) sticks out by half its size.
EDGE_PX = 12


def check_visible_parts(page: Any) -> None:
    """Every optimizer's line shows in the profile; nothing leaves the axes where it must not."""
    by_title: dict[str, list[list[list[Any]]]] = {}
    for title, parts in page.eval_on_selector_all("figure.plot", PARTS):
        by_title.setdefault(title.rstrip("."), []).append(parts)
    (profile,) = by_title["Performance profile"]
    lines = [part for part in profile if part[5] > 0]
    assert len({part[0].split("-")[0] for part in lines}) == 3  # sgd, adagrad, adam
    # No line lies exactly on another, markers aside: equal profiles are drawn a hair apart.
    assert len({tuple(round(v, 1) for v in part[7:]) for part in lines}) == len(lines)
    for figure in [*by_title["Performance profile"], *by_title["Learning-rate sensitivity"]]:
        assert figure, "no optimizer drawn"
        for part in figure:
            if part[5] == 0 and part[6] == 0:
                continue  # an empty group: nothing of that kind (say, no diverged run)
            assert min(part[1:5]) > -EDGE_PX, f"{part[0]} leaves its axes: {part}"


def test_report_opens_in_headless_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    monkeypatch.syspath_prepend(str(HERE))
    # Two problems (one 2-D, one with hostile names): every kind of figure, the profile too.
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--workers",
            "1",
            "--problem",
            "beale",
            "--problem",
            "toyproblems:hostile",
            "--optimizers",
            "sgd,adagrad,adam",
            "--seeds",
            "2",
            "--budget",
            "2",
            "--steps",
            "40",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = tmp_path / "report.html"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            problems: list[str] = []
            requests: list[str] = []
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            start = time.perf_counter()
            page.goto(report.as_uri(), wait_until="load")
            opened = time.perf_counter() - start
            page.screenshot(path=str(artifacts() / "report.png"), full_page=True)

            assert problems == []
            assert requests == [report.as_uri()], "the report must load nothing but itself"
            figures = page.eval_on_selector_all(
                "figure.plot svg",
                """svgs => svgs.map(svg => {
                    const box = svg.getBoundingClientRect();
                    return [box.width, box.height, svg.querySelectorAll('path').length];
                })""",
            )
            # beale: curves, lr sensitivity, effective lr, trajectories; hostile: three; profile.
            assert len(figures) == 8
            for width, height, paths in figures:
                assert width > 100 and height > 100 and paths > 10
            check_visible_parts(page)
            text = page.inner_text("body")
            assert "Which optimizer should you use?" in text
            # beale has a validation split (the rank is on it, the number on test); the hostile
            # toy problem has one split.
            assert "mean on validation" in text and "test loss" in text
            assert HOSTILE in text  # shown as text, never run (no dialog above)
            assert "Reproduce" in text and "adaptim" in text

            # On a narrow window (800 px) the page never scrolls sideways: a table wider
            # than the page scrolls inside its own box, and no figure runs past the edge.
            page.set_viewport_size({"width": 800, "height": 900})
            page.wait_for_timeout(100)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"the page scrolls sideways by {overflow} px at 800 px"
            past_edge = page.eval_on_selector_all(
                "figure, table, .verdict, p",
                """els => els.filter(e => !e.closest('.table-box'))
                    .filter(e => e.getBoundingClientRect().right > innerWidth + 1)
                    .map(e => e.tagName + ' ' + Math.round(e.getBoundingClientRect().right))""",
            )
            assert past_edge == []
            page.screenshot(path=str(artifacts() / "report-800.png"), full_page=True)
            page.set_viewport_size({"width": 1100, "height": 900})

            # Unticking an optimizer hides it in every figure.
            page.uncheck(".toggles input[data-index='2']")
            hidden = page.eval_on_selector_all(
                "[id^='opt2-']", "els => els.every(e => getComputedStyle(e).display === 'none')"
            )
            assert hidden
        finally:
            browser.close()
    assert opened < 5, f"the report took {opened:.1f} s to open"
