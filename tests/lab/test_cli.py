"""``adaptim compare`` end to end: results.json, the store, reuse, kill -9 and resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from adaptim.cli import app

HERE = Path(__file__).parent
TOY = "toyproblems:quadratic"


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def compare(*args: str) -> Any:
    """``adaptim compare`` in this process (``--workers 1`` unless the test asks otherwise), on
    exactly ``--seeds`` re-run seeds unless it asks for adaptive seeding (``--max-seeds``)."""
    workers = [] if "--workers" in args else ["--workers", "1"]
    fixed = []
    if "--seeds" in args and "--max-seeds" not in args:
        fixed = ["--max-seeds", args[args.index("--seeds") + 1]]
    return CliRunner().invoke(app, ["compare", *workers, *fixed, *args])


def trials(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT key, optimizer, seed, phase, created_at FROM trials ORDER BY id"
        ).fetchall()


def stored_at_least(db: Path, count: int) -> bool:
    try:
        return len(trials(db)) >= count
    except sqlite3.OperationalError:  # the study has not created its tables yet
        return False


def test_compare_writes_conforming_results_and_stores_every_trial(tmp_path: Path) -> None:
    result = compare(
        "--problem",
        TOY,
        "--optimizers",
        "sgd,adam",
        "--seeds",
        "2",
        "--budget",
        "3",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    (problem,) = data["problems"]
    assert problem["name"] == "toy-quadratic"
    # The toy problem has one split (no validate()): it decides and is reported.
    assert problem["metric"] == {
        "name": "loss",
        "goal": "min",
        "tuned_on": "test (no validation split)",
        "reported_on": "test",
    }
    assert [o["name"] for o in problem["optimizers"]] == ["sgd", "adam"]
    # Edge hits grow every optimizer's grid by the same number of settings.
    extra = sum(len(r["sgd"]["lrs"]) for r in problem["grid_extensions"])
    assert all(len(r["adam"]["lrs"]) == len(r["sgd"]["lrs"]) for r in problem["grid_extensions"])
    for entry in problem["optimizers"]:
        assert set(entry["hparams"]) == {"lr"}
        assert [run["seed"] for run in entry["runs"]] == [1, 2]
        assert all(set(run["final"]) == {"loss"} for run in entry["runs"])
        assert all(run["validation"] == run["final"] for run in entry["runs"])
        assert entry["summary"]["n"] + entry["summary"]["diverged"] == 2
        assert set(entry["summary"]) >= {"mean", "ci95"}
        assert len(entry["tuning"]) == 3 + extra
        assert all("validation" in t for t in entry["tuning"])
    recommendation = problem["recommendation"]
    assert recommendation["optimizer"] in ("sgd", "adam")
    assert recommendation["hparams"]["lr"] > 0
    assert recommendation["decided_by"] in (
        "uncontested",
        "separated",
        "leading",
        "lr_range",
        "speed",
        "mean",
    )
    assert {c["optimizer"] for c in recommendation["comparisons"]} == {"sgd", "adam"} - {
        recommendation["leader"]
    }
    stored = trials(tmp_path / "adaptim.db")
    # A tie has the tied optimizers' tuned settings (grid extensions included) run again on
    # seed 1 (their chosen one is already there, as a re-run).
    swept = sum(max(len(entry["sweeps"]) - 1, 0) for entry in problem["optimizers"])
    assert len(stored) == 2 * (3 + extra + 2) + swept
    assert len({row[0] for row in stored}) == len(stored)
    with sqlite3.connect(tmp_path / "adaptim.db") as connection:
        (records,) = connection.execute("SELECT COUNT(*) FROM records").fetchone()
    assert records >= len(stored) * 2
    assert "Recommendation:" in result.output


def test_rerunning_the_same_command_reuses_finished_trials(tmp_path: Path) -> None:
    args = (
        "--problem",
        TOY,
        "--optimizers",
        "adam",
        "--seeds",
        "2",
        "--budget",
        "2",
        "--out",
        str(tmp_path),
    )
    assert compare(*args).exit_code == 0
    first = trials(tmp_path / "adaptim.db")
    results = json.loads((tmp_path / "results.json").read_text())
    again = compare(*args)
    assert again.exit_code == 0, again.output
    assert trials(tmp_path / "adaptim.db") == first
    assert json.loads((tmp_path / "results.json").read_text())["problems"] == results["problems"]
    assert "stored" in again.output


def test_settings_fix_hyperparameters_and_skip_tuning(tmp_path: Path) -> None:
    result = compare(
        "--problem", TOY, "--optimizers", "adam,sgd", "--set", "adam.lr=0.05", "--set", "adam.betas=0.8,0.9",
        "--seeds", "1", "--budget", "2", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    adam = json.loads((tmp_path / "results.json").read_text())["problems"][0]["optimizers"][0]
    assert adam["hparams"] == {"lr": 0.05, "betas": [0.8, 0.9]}
    assert len(adam["tuning"]) == 1


def test_workers_give_the_same_results_as_one_process(tmp_path: Path) -> None:
    args = ("--problem", TOY, "--optimizers", "sgd,adam", "--seeds", "2", "--budget", "2")
    assert compare(*args, "--out", str(tmp_path / "one")).exit_code == 0
    pooled = compare(*args, "--out", str(tmp_path / "two"), "--workers", "2")
    assert pooled.exit_code == 0, pooled.output

    def finals(out: str) -> list[Any]:
        data = json.loads((tmp_path / out / "results.json").read_text())
        return [(o["name"], o["hparams"], o["runs"]) for o in data["problems"][0]["optimizers"]]

    strip = [
        [(n, h, [{**r, "wall_time": 0} for r in runs]) for n, h, runs in finals(out)]
        for out in ("one", "two")
    ]
    assert strip[0] == strip[1]


def test_optuna_search_uses_the_same_budget(tmp_path: Path) -> None:
    result = compare(
        "--problem",
        TOY,
        "--optimizers",
        "adam",
        "--search",
        "tpe",
        "--budget",
        "4",
        "--seeds",
        "1",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    adam = json.loads((tmp_path / "results.json").read_text())["problems"][0]["optimizers"][0]
    assert len(adam["tuning"]) == 4
    assert all(1e-4 <= t["hparams"]["lr"] <= 1e-1 for t in adam["tuning"])


def test_a_killed_study_resumes_without_losing_or_duplicating_trials(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TOY_DELAY": "0.03",
    }
    command = [
        sys.executable, "-m", "adaptim.cli", "compare", "--problem", "toyproblems:slow_quadratic",
        "--optimizers", "sgd,adam", "--budget", "3", "--seeds", "2", "--max-seeds", "2",
        "--out", str(tmp_path), "--workers", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    db = tmp_path / "adaptim.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stored_at_least(db, 3):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    survivors = trials(db)
    assert 3 <= len(survivors) < 10, "the kill must land mid-study"
    finished = subprocess.run(
        command, env={**env, "TOY_DELAY": "0"}, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    final = trials(db)
    problem = json.loads((tmp_path / "results.json").read_text())["problems"][0]
    extra = sum(len(r["sgd"]["lrs"]) for r in problem["grid_extensions"])
    swept = sum(max(len(e["sweeps"]) - 1, 0) for e in problem["optimizers"])  # a tie's 2nd seed
    assert len(final) == 2 * (3 + extra + 2) + swept
    assert len({row[0] for row in final}) == len(final)
    assert (
        final[: len(survivors)] == survivors
    )  # the trials stored before the kill were kept, not redone
    assert (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--problem", "quadratic-dep"],
            "unknown problem 'quadratic-dep'; did you mean 'quadratic-deep'?",
        ),
        (
            ["--problem", TOY, "--optimizers", "adma"],
            "unknown optimizer 'adma'; did you mean 'adam'?",
        ),
        (["--problem", TOY, "--optimizers", "rmsprop@kears"], "unknown flavor 'kears'"),
        (
            ["--problem", TOY, "--optimizers", "adam", "--set", "adam.lr"],
            "malformed --set 'adam.lr'",
        ),
        (
            ["--problem", TOY, "--optimizers", "adam", "--set", "sgd.lr=1"],
            "names optimizer 'sgd', which is not being compared",
        ),
        (["--problem", TOY, "--optimizers", "adam", "--set", "adam.lrr=1"], "did you mean 'lr'?"),
        (
            ["--problem", TOY, "--optimizers", "adam", "--set", "adam.lr=fast"],
            "cannot read value 'fast'",
        ),
        (["--problem", TOY, "--optimizers", "adam", "--set", "adam.lr=-1"], "Invalid lr: -1.0"),
        (["--problem", TOY, "--store", "nosuchdb://x"], "bad store URL 'nosuchdb://x'"),
        (["--problem", TOY, "--store", "sqlite:////no/such/dir/x.db"], "does not exist"),
        (
            ["--problem", TOY, "--data-dir", "/no/such/dir"],
            "--data-dir '/no/such/dir' is not a readable directory",
        ),
        (
            ["--problem", "toyproblems:broken"],
            "could not be loaded: RuntimeError: this problem cannot be built",
        ),
        (["--problem", "nosuchmodule:fn"], "could not be loaded"),
        (["--problem", TOY, "--seeds", "0"], "--seeds must be between 1 and 1000, got 0"),
        (["--problem", TOY, "--budget", "1000"], "--budget must be between 1 and 100"),
        (["--problem", TOY, "--optimizers", "adam,adam@torch"], "listed twice"),
        (
            ["--problem", TOY, "--optimizers", "adam", "--set", "adam.eps=inf"],
            "expected a finite number",
        ),
        (["--problem", "toyproblems:no_main_metric"], "lacks its main metric 'loss'"),
        # an accuracy lies in [0, 1]: a margin of 1 or more calls everything equivalent
        (
            ["--problem", "logreg-sparse", "--margin", "5"],
            "--margin 5 is meaningless for problem 'logreg-sparse', whose metric accuracy "
            "lies in [0, 1]: give an absolute margin below 1 (such as 0.01, one point) "
            "or a percentage below 100%",
        ),
        (["--problem", "logreg-sparse", "--margin", "1"], "--margin 1 is meaningless"),
        (["--problem", "logreg-sparse", "--margin", "150%"], "--margin 150% is meaningless"),
        (["--problem", "toyproblems:vector_loss"], "train_loss() must return a scalar tensor"),
        (
            ["--problem", "toyproblems:raising_loss"],
            "failed: ZeroDivisionError: bug in the user's loss",
        ),
    ],
)
def test_bad_input_gets_one_clear_line_and_exit_code_2(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = compare(*args, "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    # stderr holds the error alone: one line (stdout may show a progress bar that had started)
    assert result.stderr.strip().startswith("error:"), result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command", ["compare", "report", "reproduce", "lr-find", "problems", "optimizers"]
)
def test_every_help_names_what_its_options_take(command: str) -> None:
    """NAME, N, DIR, URL... as compare's first options did, never Python's types
    (``--store <str>``, ``--out <path>``, ``--trial-cpus <float>`` were shown)."""
    helped = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert helped.exit_code == 0
    for python_type in ("<str>", "<float>", "<int>", "<list"):
        assert python_type not in helped.output
    # (Typer shows an argument's type beside its name: report's DIRECTORY <path>)
    assert helped.output.count("<path>") == (command == "report")
    if command == "report":  # its text speaks of DIRECTORY
        assert "[DIRECTORY]" in helped.output and "DIRECTORY      <path>" in helped.output


def test_a_margin_over_one_stays_allowed_for_a_loss_and_below_one_for_an_accuracy() -> None:
    from adaptim.lab.problems import resolve_problem
    from adaptim.lab.protocol import StudyConfig
    from adaptim.lab.study import study_policy

    for problem, margin in (
        (TOY, "5"),
        (TOY, "150%"),
        ("logreg-sparse", "0.05"),
        ("logreg-sparse", "5%"),
    ):
        config = StudyConfig(problems=(problem,), optimizers=("adam",), margin=margin)
        assert study_policy(config, {problem: resolve_problem(problem)}).margin is not None


def test_bad_input_never_loses_what_is_stored(tmp_path: Path) -> None:
    assert (
        compare(
            "--problem",
            TOY,
            "--optimizers",
            "adam",
            "--budget",
            "2",
            "--seeds",
            "1",
            "--out",
            str(tmp_path),
        ).exit_code
        == 0
    )
    before = trials(tmp_path / "adaptim.db")
    results = (tmp_path / "results.json").read_text()
    broken = compare(
        "--problem", "toyproblems:broken", "--optimizers", "adam", "--out", str(tmp_path)
    )
    assert broken.exit_code == 2
    assert trials(tmp_path / "adaptim.db") == before
    assert (tmp_path / "results.json").read_text() == results


def test_problems_and_optimizers_list_what_exists() -> None:
    problems = CliRunner().invoke(app, ["problems"])
    assert problems.exit_code == 0
    for name in ("quadratic-deep", "rosenbrock", "mnist-cnn", "mnist1d-gru", "reddi", "wilson"):
        assert name in problems.output
    optimizers = CliRunner().invoke(app, ["optimizers"])
    assert optimizers.exit_code == 0
    for name in ("sgd", "momentum", "nesterov", "amsgrad", "rmsprop-centered", "lamb"):
        assert name in optimizers.output
    for name in ("adam-8bit", "lion", "sm3", "muon", "sparseadam", "prodigy", "mechanic-adam"):
        assert f"\n{name}\n" in optimizers.output
    for listing in (problems, optimizers):  # wrapped lines used to be padded with blanks
        assert [line for line in listing.output.splitlines() if line.endswith(" ")] == []


@pytest.mark.slow
def test_ctrl_c_says_that_rerunning_resumes_and_a_log_shows_progress(tmp_path: Path) -> None:
    from adaptim.lab.console import RESUME_HINT

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TOY_DELAY": "0.1",  # slow enough that Ctrl-C lands mid-study
    }
    command = [
        sys.executable, "-m", "adaptim.cli", "compare", "--problem", "toyproblems:slow_quadratic",
        "--optimizers", "sgd,adam", "--budget", "3", "--seeds", "2", "--max-seeds", "2",
        "--out", str(tmp_path), "--workers", "1",
    ]  # fmt: skip
    # stdout and stderr are pipes, as with `make demo > log 2>&1`
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT, and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    db = tmp_path / "adaptim.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stored_at_least(db, 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == [RESUME_HINT]
    # One plain line per finished trial, each with the count and, once a trial ran, an ETA.
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) >= 3
    assert len(lines) == len(trials(db))
    for number, line in enumerate(lines, 1):
        assert line.startswith(f"[{number}/"), line
        assert "ETA " in line and "slow_quadratic · " in line and " lr=" in line, line


@given(
    trials=st.lists(st.tuples(st.booleans(), st.floats(0.0, 100.0)), max_size=40),
    left=st.integers(0, 1000),
)
def test_the_eta_is_the_pace_of_fresh_trials_times_those_left(
    trials: list[tuple[bool, float]], left: int
) -> None:
    """Stored trials finish at once and set no pace; each fresh one took the time since the
    previous finish."""
    from adaptim.lab.console import TrialClock

    clock, now = TrialClock(now=0.0), 0.0
    for reused, gap in trials:
        now += gap
        clock.finished(reused, now=now)
    fresh = [gap for reused, gap in trials if not reused]
    if not fresh:
        assert clock.remaining(left) is None
    else:
        assert clock.remaining(left) == pytest.approx(sum(fresh) / len(fresh) * left)


def fits(text: str, width: int = 80) -> list[str]:
    """The lines of ``text`` that are too wide or cut by Rich (…); progress lines in a log are
    as long as their trial's name and file paths as long as they are: both are left to wrap."""
    return [
        line
        for line in text.splitlines()
        if (len(line) > width or "…" in line) and not line.startswith(("[", "Results:", "Report:"))
    ]


@pytest.mark.slow
def test_tables_and_listings_read_at_80_columns(tmp_path: Path) -> None:
    names = ("rmsprop-centered", "adam")
    result = CliRunner().invoke(
        app,
        [
            *("compare", "--problem", TOY, "--optimizers", ",".join(names), "--budget", "2"),
            *("--seeds", "2", "--max-seeds", "2", "--workers", "1", "--out", str(tmp_path)),
        ],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    assert fits(result.output) == []
    table = result.output[result.output.index("final loss") :]
    rows = [line for line in table.splitlines() if line.startswith(names)]
    assert sorted(row.split()[0] for row in rows) == sorted(names)  # names never cut
    assert not any(line.rstrip().endswith("±") for line in table.splitlines())
    # no blanks after a table's centred title or its caption (they were noise in a pipe)
    assert [line for line in result.output.splitlines() if line.endswith(" ")] == []
    for command in (["problems"], ["optimizers"]):
        listing = CliRunner().invoke(app, command, env={"COLUMNS": "80"})
        assert listing.exit_code == 0
        assert fits(listing.output) == []
    helped = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "80"})
    assert "<bool>" not in helped.output and "--wide" in helped.output
    assert "quadratic-deep" in helped.output  # the default problems are named
