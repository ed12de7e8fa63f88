"""What the CLI prints fits an 80-column terminal and reads in a log, with nothing cut.

Rich fits a table that is too wide by cropping its unwrappable columns without a mark
(``-0.01`` for ``-0.011``, ``s`` for ``seeds``), so these tests look for every cell of
every row, whole, in the lines of its row, not only for long lines and ``…``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from adaptim.cli import app
from adaptim.lab import reproduce
from adaptim.lab.console import print_problem
from adaptim.lab.report import load_study
from adaptim.lab.report.data import ranking
from adaptim.lab.report.stored import choose_study
from adaptim.lab.report.tuning import cost_rows, shows_costs
from adaptim.lab.reproduce import DEEPOBS, WILSON, Claim
from adaptim.lab.store import Store, default_url
from adaptim.lab.study import StudyOutcome
from adaptim.lab.tables import LR_SOURCE_MARKS, marked_lr

HERE = Path(__file__).parent
TOY = "toyproblems:quadratic"
#: The longest optimizer name the lab has, a tuning-free one (its lr gets a mark), and Adam.
OPTIMIZERS = ("schedulefree-adamw", "rmsprop-centered", "adam")
ANSI = re.compile(r"\x1b\[")


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, StudyOutcome]]:
    """A real small study (digits: a validation split, so the column reads "test accuracy"),
    run as a user runs it, its output going to a pipe at 80 columns; then read back."""
    out = tmp_path_factory.mktemp("terminal")
    args = [
        *("compare", "--problem", "digits-mlp", "--optimizers", ",".join(OPTIMIZERS)),
        *("--budget", "2", "--seeds", "2", "--max-seeds", "2", "--steps", "100"),
        *("--workers", "1", "--out", str(out)),
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    store = Store(default_url(out))
    key, command = choose_study(store, None, out / "results.json")
    yield result.output, out, load_study(store, key, command, None, False)


def too_wide(text: str, width: int, path: Path | None = None) -> list[str]:
    """Lines wider than ``width`` or shortened by Rich; a line with a file path under ``path``
    stays whole on purpose (a wrapped path does not paste back)."""
    return [
        line
        for line in text.splitlines()
        if (cell_len(line) > width and (path is None or str(path) not in line)) or "…" in line
    ]


def block(text: str, first: str) -> str:
    """The lines of the table row that starts with ``first``: its line and those under it
    that start with a space (the row's wrapped cells)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first + " "))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" ") and lines[end].strip():
        end += 1
    return "\n".join(lines[start:end])


def assert_ranking_whole(text: str, study: StudyOutcome) -> None:
    """Every cell of the ranking in the lines of its row; wrapped cells only between words."""
    (problem,) = study.problems
    for row in ranking(problem):
        lines = block(text, row.optimizer)
        cells = [marked_lr(row), row.mean, *row.vs_leader.split(" ["), str(row.seeds)]
        if row.ci95 != "–":
            cells.append(row.ci95)
        for cell in cells:
            assert cell.strip("[]") in lines, (cell, lines)
        words = re.findall(r"[\w-]+", lines)
        assert all(word in words for word in re.findall(r"[\w-]+", row.status)), lines
    if shows_costs(problem):
        _, rows = cost_rows(problem.problem.metric, problem.recommendation)
        costs = text[text.index("the cost of tuning") :]
        for cells in rows:
            lines = block(costs, cells[0])
            for cell in (cells[4], cells[5], cells[6]):
                assert cell in lines, (cell, lines)
            assert all(word in lines.split() for word in cells[1].split())


def render(study: StudyOutcome, width: int, wide: bool = False) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    for problem in study.problems:
        print_problem(console, problem, wide)
    return console.export_text()


@pytest.mark.slow  # the study: ~10 s on 2 quiet cores, shared with the next test
def test_compare_in_a_log_at_80_columns_cuts_nothing(study: tuple[str, Path, StudyOutcome]) -> None:
    output, out, outcome = study
    assert not ANSI.search(output) and "\r" not in output  # a log gets no escapes, no redraws
    progress = [line for line in output.splitlines() if line.startswith("[")]
    assert progress and all(
        re.match(r"\[\d+/\d+\] \S+, ETA \S+: digits-mlp · ", p) for p in progress
    )
    assert too_wide(output, 80, out) == []
    assert_ranking_whole(output, outcome)
    # An 18-letter name and intervals: the standing goes above the difference to fit.
    assert "standing, vs leader" in output
    # The tuning-free optimizer's lr carries its mark, and the caption says what it means.
    assert any(mark in output for mark in LR_SOURCE_MARKS.values())
    assert "a tuning-free optimizer at its published default lr" in output


@pytest.mark.slow
@pytest.mark.parametrize("width", [60, 80, 100, 120, 160])
def test_the_ranking_takes_the_layout_that_fits(
    study: tuple[str, Path, StudyOutcome], width: int
) -> None:
    _, _, outcome = study
    text = render(outcome, width)
    assert_ranking_whole(text, outcome)
    if width >= 80:
        assert too_wide(text, width) == []
    ranking_text = text[: text.index("vs leader: ")]
    header = next(line for line in ranking_text.splitlines() if line.startswith("optimizer"))
    if width >= 120:
        # The room is used: the standing has its own column and every row is one line.
        assert header.split()[:2] == ["optimizer", "standing"] and "seeds" in header
        rows = [line for line in ranking_text.splitlines() if line.strip()][3:]
        assert len(rows) == len(OPTIMIZERS)
    if width >= 160:
        assert {"target", "diverged"} <= set(header.split())


@pytest.mark.slow
def test_wide_shows_every_column_rather_than_cut(study: tuple[str, Path, StudyOutcome]) -> None:
    _, _, outcome = study
    text = render(outcome, 80, wide=True)
    assert_ranking_whole(text, outcome)
    assert "…" not in text
    header = next(line for line in text.splitlines() if line.startswith("optimizer"))
    assert {"standing", "seeds", "target", "diverged", "good"} <= set(header.split())
    assert cell_len(header.rstrip()) > 80
    for row in ranking(outcome.problems[0]):
        assert row.good_lr in block(text, row.optimizer)


def test_reproduce_in_a_log_at_80_columns_cuts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long claims and sources (the lab's own) on a toy problem, output to a pipe."""
    toy = [
        Claim("tuned SGD reaches the quadratic's noise floor", DEEPOBS, TOY, ("sgd",), "sgd",
              0.0, 0.5, quick=True),
        Claim(
            "Adam predicts the majority class: test error = share of negatives ≈ 0.53", WILSON,
            TOY, ("sgd", "adam"), "adam", 100.0, 1.0, quick=True, note="a known deviation, "
            "explained in a sentence long enough to wrap at eighty columns",
        ),
    ]  # fmt: skip
    monkeypatch.setattr(reproduce, "claims", lambda: toy)
    args = ["reproduce", "--quick", "--out", str(tmp_path), "--workers", "1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    output = result.output
    assert not ANSI.search(output) and "\r" not in output
    # No total is known ahead: a count and the trial, one line each.
    progress = output[: output.index("published claims")].splitlines()
    assert progress and all(re.match(r"\[\d+\] \S+: toyproblems:quadratic · ", p) for p in progress)
    assert too_wide(output, 80, tmp_path) == []
    data = json.loads((tmp_path / "reproduce.json").read_text())
    words = output.split()
    for claim in data["claims"]:
        assert all(word in words for word in claim["claim"].split())
        assert f"{claim['problem']} · {claim['subject']}" in output
        assert f"{claim['published']:g} ± {claim['tolerance']:g}" in output
    for source in (DEEPOBS, WILSON):  # listed once each, under the table
        assert all(word in words for word in source.split())
    assert "holds" in output and "does not" in output and "1 of 2 claims hold." in output


def test_lr_find_at_80_columns_cuts_nothing(tmp_path: Path) -> None:
    args = ["lr-find", "--problem", TOY, "--steps", "40", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert not ANSI.search(result.output) and too_wide(result.output, 80, tmp_path) == []
    data = json.loads(next(tmp_path.glob("lr-find-*.json")).read_text())
    assert data["suggestions"]
    for suggestion in data["suggestions"]:
        assert suggestion["name"] in result.output
    for path in (*tmp_path.glob("*.svg"), *tmp_path.glob("*.png")):
        assert str(path) in result.output.splitlines()[-2] + result.output.splitlines()[-1]
