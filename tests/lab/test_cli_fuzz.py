"""Property-based fuzzing of ``adaptim compare``: every option's value and ``--set`` strings.

The property, for any command line: exit 0, or exit 2 with exactly one line
on stderr; never a traceback (no exception escapes the command); and the
data already in the store is never changed (every row there before is there
after, identical). Each example runs in this process against a copy of one
finished study's output directory; a few hostile inputs also run as real
processes, through the console entry point's last line of defence.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from adaptim.cli import app

HERE = Path(__file__).parent
TOY = "toyproblems:quadratic"
TABLES = ("studies", "trials", "records", "adaptim_meta")


def content(db: Path) -> dict[str, set[tuple[Any, ...]]]:
    with sqlite3.connect(db) as connection:
        return {t: set(connection.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, stand_in_report: None) -> Iterator[Path]:
    """The output directory of a finished study ("momentum", which no example compares)."""
    out = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(HERE))
        done = CliRunner().invoke(
            app,
            ["compare", "--problem", TOY, "--optimizers", "momentum", "--budget", "2",
             "--seeds", "1", "--max-seeds", "1", "--steps", "3", "--workers", "1",
             "--out", str(out)],
        )  # fmt: skip
    assert done.exit_code == 0, done.output
    yield out


def numbers(valid: st.SearchStrategy[int], low: int, high: int) -> st.SearchStrategy[str]:
    """Valid small values, and values outside [low, high] or not integers at all."""
    outside = st.integers(max_value=low - 1) | st.integers(min_value=high + 1)
    junk = st.sampled_from(["", "x", "1.5", "1e3", " 1", "nan", "9" * 23, "-" + "9" * 23])
    return st.one_of(valid.map(str), outside.map(str), junk)


# Hostile text never holds ":", so it is never imported as a module:function.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters=":\x00"), max_size=20)

OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--problem": st.sampled_from(
        [
            TOY,
            "rosenbrock",
            "rosenbrok",
            "",
            ":",
            "sys:exit",
            "os:getcwd",
            "toyproblems:broken",
            "nosuch.module:fn",
            "toyproblems:",
            "toyproblems:1x",
        ]
    )
    | TEXT,
    "--optimizers": st.sampled_from(
        ["sgd", "adam", "sgd,adam", "rmsprop@keras", "", ",", "adma", "sgd,sgd", "rmsprop@kears"]
    )
    | TEXT,
    "--seeds": numbers(st.integers(1, 2), 1, 1000),
    "--max-seeds": numbers(st.integers(1, 2), 1, 1000),
    "--budget": numbers(st.integers(1, 2), 1, 100),
    "--steps": numbers(st.integers(1, 3), 1, 2**31 - 1),
    "--workers": st.sampled_from(["1", "-1", "257", "x", "", "9" * 23]),
    "--margin": st.sampled_from(["0.01", "1%", "-1", "0", "abc", "nan", "inf", "1e400", "%"])
    | TEXT,
    "--search": st.sampled_from(["grid", "random", "tpe", "gird", ""]),
    "--schedule": st.sampled_from(["constant", "cosine", "step", "cosin", ""]),
    "--store": st.sampled_from(
        ["sqlite://", "nosuchdb://x", "sqlite:////no/such/dir/x.db", "://", "sqlite:///"]
    ),
    "--data-dir": st.sampled_from(["/no/such/dir", "{out}/results.json", "{out}"]),
    "--out": st.sampled_from(["{out}", "{out}/fresh", "{out}/results.json", "/sys/adaptim"]),
}
SETTINGS = st.sampled_from(
    [
        "sgd.lr=0.1",
        "sgd.lr=1" + "0" * 400,
        "sgd.lr=nan",
        "sgd.lr=inf",
        "sgd.lr=-1",
        "sgd.momentum=2",
        "adam.betas=(0.9, 2)",
        "adam.betas=[0.9]",
        "sgd.lr",
        "=",
        "sgd.=1",
        ".lr=1",
        "sgd.lr=1e-400",
        "adam.amsgrad=maybe",
        "adam.eps=0",
    ]
) | TEXT.map(lambda t: "sgd." + t)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    # One example in four changes no option, so valid studies run too.
    chosen = draw(
        st.just([])
        | st.lists(st.sampled_from(sorted(OPTIONS)), unique=True, max_size=4)
        | st.lists(st.sampled_from(sorted(OPTIONS)), unique=True, max_size=4)
        | st.lists(st.sampled_from(sorted(OPTIONS)), unique=True, max_size=4)
    )
    args = {name: draw(OPTIONS[name]) for name in chosen}
    # Defaults that keep a valid example tiny; drawn values replace them.
    line = {"--problem": TOY, "--optimizers": "sgd", "--budget": "1", "--seeds": "1",
            "--max-seeds": "1", "--steps": "2", "--workers": "1", "--out": "{out}", **args}  # fmt: skip
    flat = [part for name, value in line.items() for part in (name, value)]
    for setting in draw(st.just([]) | st.lists(SETTINGS, max_size=2)):
        flat += ["--set", setting]
    if draw(st.integers(0, 3)):  # the finished study's results are replaced only when asked
        flat.append("--replace")
    return flat


def check(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


@settings(
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(line=command_lines())
def test_any_command_line_exits_cleanly_and_keeps_what_is_stored(
    line: list[str], finished: Path, fast_report: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out"
        shutil.copytree(finished, out)
        before = content(out / "adaptim.db")
        results = (out / "results.json").read_text()
        argv = ["compare", *(part.replace("{out}", str(out)) for part in line)]
        result = CliRunner().invoke(app, argv)
        event(f"exit code {result.exit_code}")  # --hypothesis-show-statistics counts them
        check(result)
        after = content(out / "adaptim.db")
        for table in TABLES:
            assert before[table] <= after[table], table  # nothing stored was changed or lost
        if "--replace" not in line and "{out}" in line:
            assert (out / "results.json").read_text() == results


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--workers", "9" * 23],
        ["report", "{out}"],
    ],
)
def test_a_real_process_gets_one_line_too(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "adaptim.db").write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    argv = [part.replace("{out}", str(tmp_path)) for part in args]
    done = subprocess.run(
        [sys.executable, "-c", "from adaptim._launcher import main; main()", *argv,
         "--out", str(tmp_path / "out")] if args[0] == "compare" else
        [sys.executable, "-c", "from adaptim._launcher import main; main()", *argv],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
