"""The report: its summary sentences, escaping of user names, and re-rendering from the store."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from adaptim.cli import app
from adaptim.lab.analysis import OptimizerOutcome, recommend
from adaptim.lab.problems.base import BuildContext, Metric, Problem, Setup
from adaptim.lab.report import data, page
from adaptim.lab.study import ProblemOutcome
from adaptim.lab.trial import Record, TrialResult, TrialSpec

HERE = Path(__file__).parent
ACCURACY = Metric("accuracy", "max")


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def _unused_build(seed: int, context: BuildContext) -> Setup:  # pragma: no cover
    raise AssertionError("the report never builds a problem")


PROBLEM = Problem("toy", "a toy", ACCURACY, _unused_build, steps=100, batch_size=1)


def run(
    optimizer: str,
    lr: float,
    seed: int,
    curve: list[float] | None,
    effective_lr: list[float] | None = None,
) -> TrialResult:
    """A trial whose accuracy follows ``curve`` at steps 0, 10, 20, ... (``None``: diverged)."""
    spec = TrialSpec("toy", optimizer, {"lr": lr}, seed, 100, "tune" if seed == 0 else "final")
    if curve is None:
        return TrialResult(
            spec, [Record(0, None, {"accuracy": 0.1}, 0.0)], {"accuracy": None}, True, 0.1, 3
        )
    records = [
        Record(
            10 * i,
            1.0 - value,
            {"accuracy": value},
            0.01 * i,
            None
            if effective_lr is None or i == 0
            else {"p10": effective_lr[i] / 2, "p50": effective_lr[i], "p90": effective_lr[i] * 2},
        )
        for i, value in enumerate(curve)
    ]
    return TrialResult(spec, records, {"accuracy": curve[-1]}, False, 0.01 * len(curve), 100)


def outcome(
    name: str,
    curves: list[list[float] | None],
    sweep: dict[float, float | None],
    effective_lr: list[float] | None = None,
) -> OptimizerOutcome:
    best = max(
        (lr for lr, v in sweep.items() if v is not None),
        key=lambda lr: sweep[lr] or 0.0,
        default=1e-3,
    )
    tuning = [run(name, lr, 0, None if v is None else [0.1, v]) for lr, v in sweep.items()]
    runs = [run(name, best, seed + 1, c, effective_lr) for seed, c in enumerate(curves)]
    return OptimizerOutcome(name, ACCURACY, {"lr": best}, tuning, runs)


def problem_outcome(*outcomes: OptimizerOutcome) -> ProblemOutcome:
    return ProblemOutcome(PROBLEM, "toy", list(outcomes), recommend(ACCURACY, outcomes))


def rising(final: float, at: int, jitter: float = 0.0) -> list[float]:
    """0.1 at step 0, then linear up to ``final`` at step 10·at, flat after (11 points)."""
    return [0.1 + (final - 0.1) * min(i, at) / at + (jitter if i else 0.0) for i in range(11)]


def test_clear_winner_headline_states_the_evidence_and_speed() -> None:
    adam = outcome(
        "adam", [rising(0.95, 3, d) for d in (0.0, 0.004, -0.004)], {1e-3: 0.95, 1e-2: 0.94}
    )
    sgd = outcome(
        "sgd", [rising(0.80, 8, d) for d in (0.0, 0.004, -0.004)], {1e-1: 0.80, 1.0: None}
    )
    found = data.verdict(problem_outcome(sgd, adam))
    # The mean to the precision of its CI (two significant digits of the half-width).
    assert found.headline.startswith("adam, lr 0.001: highest mean accuracy 0.9500 ± 0.0099")
    assert "(3 seeds), better than every other optimizer (paired by seed" in found.headline
    better = found.evidence[0]
    assert better.startswith("adam is better than sgd: sgd − adam = -0.15 [")
    assert "P(adam beats sgd) = 1.00" in better and "Holm-adjusted p = " in better
    speed = next(s for s in found.evidence if "fewer steps" in s)
    # No fixed target: sgd's worst seed, 0.796, is the target (every seed of the best two
    # reaches it): adam passes it at step 30 on every seed, sgd at step 80.
    assert (
        "adam reaches accuracy 0.796 (reached by every seed of the best two) at step 30 "
        "(median over seeds)" in speed
    )
    assert "62% fewer steps than sgd (step 80)" in speed
    rows = data.ranking(problem_outcome(sgd, adam))
    assert [r.optimizer for r in rows] == ["adam", "sgd"]
    assert rows[0].recommended and rows[0].steps_to_target == "30"
    assert rows[1].diverged_tuning == "1/2"


def test_statistical_tie_is_said_and_broken_by_robustness() -> None:
    narrow = outcome(
        "rmsprop", [rising(v, 3) for v in (0.921, 0.90, 0.93)], {1e-4: 0.5, 1e-3: 0.92, 1e-2: 0.3}
    )
    wide = outcome(
        "adam", [rising(v, 3) for v in (0.920, 0.901, 0.929)], {1e-4: 0.91, 1e-3: 0.92, 1e-2: 0.915}
    )
    found = data.verdict(problem_outcome(narrow, wide))
    assert found.headline.startswith("adam, lr 0.001: a tied-best mean accuracy")
    assert "chosen among the tied for its wider good learning-rate range" in found.headline
    tie = found.evidence[0]
    assert tie.startswith("adam is equivalent to rmsprop within ±0.01: adam − rmsprop = -0.0003 [")
    assert "TOST p = 0.0024" in tie
    assert found.evidence[1].startswith("Tied: rmsprop, adam.")
    assert "rmsprop 0 steps (0.001), adam 2 steps (0.0001–0.01)" in found.evidence[2]
    assert "more than one step narrower: rmsprop" in found.evidence[2]
    rows = data.ranking(problem_outcome(narrow, wide))
    assert [r.optimizer for r in rows] == ["adam", "rmsprop"]
    assert rows[1].tied and rows[1].status == "leader, tied" and rows[1].vs_leader == "leader"
    assert rows[0].vs_leader.startswith("-0.0003 [")  # the paired CI behind "tied"


def test_equally_robust_tie_is_broken_by_speed() -> None:
    slow = outcome("rmsprop", [rising(v, 8) for v in (0.921, 0.90, 0.93)], {1e-3: 0.92})
    fast = outcome("adam", [rising(v, 2) for v in (0.920, 0.901, 0.929)], {1e-3: 0.92})
    problem = problem_outcome(slow, fast)
    assert problem.recommendation.optimizer == "adam"
    found = data.verdict(problem)
    assert "chosen among the tied as the fastest to the target" in found.headline
    assert (
        "within one step of each other (rmsprop 0 steps (0.001), adam 0 steps (0.001))"
        in (found.evidence[2])
    )
    assert found.evidence[3] == (
        "Median steps over the seeds to reach accuracy 0.9 (reached by every seed of the best "
        "two): "
        "rmsprop step 80, adam step 20; the fastest wins."
    )


def test_every_optimizer_diverging_gives_an_honest_no_recommendation() -> None:
    adam = outcome("adam", [None, None], {1e-3: None})
    sgd = outcome("sgd", [None, None], {1e-1: None})
    problem = problem_outcome(adam, sgd)
    found = data.verdict(problem)
    assert found.headline.startswith("No recommendation: every optimizer diverged")
    assert "(adam 2/2, sgd 2/2)" in found.headline and "smaller learning rates" in found.headline
    assert found.evidence == [] and found.target is None
    assert all(r.steps_to_target == "–" for r in data.ranking(problem))


def test_a_stall_is_explained_by_the_decaying_effective_learning_rate() -> None:
    # Recorded from step 10 on: 10⁻² at step 10 down to 10⁻⁶ at step 100.
    decaying = [10 ** (-2 - 4 * (i - 1) / 9) for i in range(11)]
    adam = outcome("adam", [rising(0.95, 8, d) for d in (0.0, 0.004, -0.004)], {1e-3: 0.95})
    adagrad = outcome(
        "adagrad",
        [rising(0.6, 3, d) for d in (0.0, 0.004, -0.004)],
        {1e-2: 0.6},
        effective_lr=decaying,
    )
    found = data.verdict(problem_outcome(adagrad, adam))
    stall = next(s for s in found.evidence if "stalls" in s)
    assert stall.startswith("adagrad stalls after step 30 at accuracy 0.6")
    assert "median effective learning rate decays 10000× (from step 10 to step 100)" in stall


def hostile_section(name: str) -> page.ProblemSection:
    row = data.Row(
        name,
        True,
        False,
        name,
        "0.1",
        False,
        False,
        "1",
        "± 0.1",
        3,
        0,
        "0/8",
        name,
        "–",
        "5",
        "0.1",
        name,
        name,
    )
    verdict = data.Verdict(f"{name}, lr 0.1: lowest mean", [f"{name} is fast"], 1.0)
    return page.ProblemSection(
        name, name, name, "min", verdict, [row], [page.Figure(name, name, "<svg></svg>")]
    )


def test_every_user_name_in_the_page_is_escaped() -> None:
    name = "<script>alert(1)</script>"
    html = page.render(
        sections=[hostile_section(name)],
        styles={name: data.Style("#000000", "-", 0)},
        profile=None,
        footer=data.Footer(name, name, name, name, name),
        protocol="p",
        config=[(name, name)],
        improvements=data.Improvements([name, "b"], {(name, "b"): name, ("b", name): name}, 2),
    )
    assert "Probability of improvement" in html
    assert name not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the page's own toggles


def compare(out: Path, *args: str) -> Any:
    return CliRunner().invoke(
        app,
        [
            "compare",
            "--workers",
            "1",
            "--optimizers",
            "sgd,adam",
            "--seeds",
            "2",
            "--budget",
            "2",
            "--out",
            str(out),
            *args,
        ],
    )


def test_compare_report_escapes_a_hostile_problem_and_metric(tmp_path: Path) -> None:
    result = compare(tmp_path, "--problem", "toyproblems:hostile")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    for raw in ("<script>alert(1)</script>", "<img src=x", "<iframe", "<b>markup</b>"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # matplotlib's SVG text is escaped too, and "$x$" stays literal, not mathtext.
    assert "&lt;img src=x onerror=alert(2)&gt; $x$ &amp; co" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)


def test_report_rerenders_from_the_store_without_running(tmp_path: Path) -> None:
    assert compare(tmp_path, "--problem", "toyproblems:quadratic").exit_code == 0
    first = (tmp_path / "report.html").read_text()
    (tmp_path / "report.html").unlink()
    with sqlite3.connect(tmp_path / "adaptim.db") as db:
        trials = db.execute("SELECT count(*) FROM trials").fetchone()
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--trust-problem-module"])
    assert result.exit_code == 0, result.output
    assert "Recommendation:" in result.output
    assert (tmp_path / "report.html").read_text() == first  # the same page, byte for byte
    with sqlite3.connect(tmp_path / "adaptim.db") as db:
        assert db.execute("SELECT count(*) FROM trials").fetchone() == trials

    # --store with the URL works from anywhere; a second study makes --study necessary.
    url = f"sqlite:///{tmp_path / 'adaptim.db'}"
    other = tmp_path / "elsewhere.html"
    rendered = CliRunner().invoke(
        app, ["report", "--store", url, "--out", str(other), "--trust-problem-module"]
    )
    assert rendered.exit_code == 0
    second = compare(tmp_path, "--problem", "toyproblems:quadratic", "--seeds", "1", "--replace")
    assert second.exit_code == 0
    ambiguous = CliRunner().invoke(
        app, ["report", "--store", url, "--out", str(other), "--trust-problem-module"]
    )
    assert ambiguous.exit_code == 2 and "pick one with --study" in ambiguous.output


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such directory" in missing.output
    empty = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert empty.exit_code == 2 and "has no store" in empty.output
    assert compare(tmp_path, "--problem", "toyproblems:quadratic").exit_code == 0
    with sqlite3.connect(tmp_path / "adaptim.db") as db:
        db.execute("DELETE FROM records WHERE trial_id = (SELECT max(id) FROM trials)")
        db.execute("DELETE FROM trials WHERE id = (SELECT max(id) FROM trials)")
    incomplete = CliRunner().invoke(app, ["report", str(tmp_path), "--trust-problem-module"])
    assert incomplete.exit_code == 2
    assert "the store lacks 1 trial(s) of this study" in incomplete.output
    unknown = CliRunner().invoke(
        app, ["report", str(tmp_path), "--study", "ffff", "--trust-problem-module"]
    )
    assert unknown.exit_code == 2 and "no study in the store" in unknown.output


def test_probability_of_improvement_across_problems_is_stratified_by_problem() -> None:
    from adaptim.lab.protocol import StudyConfig
    from adaptim.lab.study import StudyOutcome

    adam = outcome("adam", [rising(0.95, 3, d) for d in (0.0, 0.004, -0.004)], {1e-3: 0.95})
    sgd = outcome("sgd", [rising(0.80, 8, d) for d in (0.0, 0.004, -0.004)], {1e-1: 0.80})
    diverging = outcome("sgd", [rising(0.99, 8), None, rising(0.99, 8)], {1e-1: 0.99})
    config = StudyConfig(problems=("toy", "toy2"), optimizers=("adam", "sgd"))
    single = StudyOutcome(config, [problem_outcome(adam, sgd)], "sqlite://", "adaptim compare")
    assert data.improvements(single) is None
    both = StudyOutcome(
        config,
        [problem_outcome(adam, sgd), problem_outcome(adam, diverging)],
        "sqlite://",
        "adaptim compare",
    )
    found = data.improvements(both)
    assert found is not None and found.problems == 2
    # Problem 1: adam wins every pair (1.0). Problem 2: sgd's two 0.99 runs beat adam's three,
    # its diverged run scores as the worst value reached (adam's 0.946): it loses to adam's
    # 0.95 and 0.954 and ties with 0.946, so 2.5 of 9 pairs go to adam.
    assert found.cells["adam", "sgd"].startswith(f"{(1.0 + 2.5 / 9) / 2:.2f} [")
    assert found.cells["sgd", "adam"].startswith(f"{(0.0 + 6.5 / 9) / 2:.2f} [")


@given(
    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30),
    anchors=st.lists(st.floats(-1e6, 1e6), max_size=5),
    goal=st.sampled_from(["min", "max"]),
)
def test_the_lr_axis_holds_the_best_run_and_every_chosen_rate(
    values: list[float], anchors: list[float], goal: str
) -> None:
    from adaptim.lab.report.lr_figure import good_window

    low, high, log = good_window(values, anchors, goal)
    assert low < high
    best = min(values + anchors) if goal == "min" else max(values + anchors)
    for inside in [best, *anchors]:
        assert low <= inside <= high
    if log:  # a log axis never gets a bound at or below zero
        assert low > 0
    # The better half of the runs is in view.
    better = sorted(values, reverse=goal == "max")[: (len(values) + 1) // 2]
    assert all(low <= v <= high for v in better)


@given(st.floats(1e-12, 1e12) | st.floats(-1e12, -1e-12))
def test_learning_rates_print_three_significant_digits(value: float) -> None:
    from adaptim.lab.report.numbers import lr_text

    shown = lr_text(value)
    assert float(shown) == pytest.approx(value, rel=5e-3)
    mantissa = shown.lstrip("-").split("e")[0]
    digits = mantissa.replace(".", "").lstrip("0")
    if "." not in mantissa:  # 1000: the zeros hold places, they are not digits shown
        digits = digits.rstrip("0")
    assert 1 <= len(digits) <= 3, shown
    if "." in shown and "e" not in shown:
        assert not shown.endswith("0"), shown


@given(st.floats(-1e5, 1e5), st.floats(1e-4, 1e5))
def test_a_mean_shows_the_precision_its_ci_supports(mean: float, ci95: float) -> None:
    from adaptim.lab.report.numbers import with_ci

    shown_mean, shown_ci = with_ci(mean, ci95)
    decimals = len(shown_ci.split(".")[1]) if "." in shown_ci else 0
    assert (len(shown_mean.split(".")[1]) if "." in shown_mean else 0) == decimals
    assert float(shown_mean) == pytest.approx(mean, abs=10.0**-decimals)
    # Two significant digits of the CI's half-width, unless the mean would show more than five.
    digits = len(shown_mean.lstrip("-").replace(".", "").lstrip("0"))
    assert digits <= 5 or decimals == 0
    if digits < 5:
        assert float(shown_ci.removeprefix("± ")) == pytest.approx(ci95, rel=0.05)
