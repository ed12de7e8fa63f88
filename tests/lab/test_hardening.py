"""Hostile input and damaged files: one clear line and exit code 2, and nothing stored is touched.

Each test reproduces a defect of issue 12 ("Hardening") the way a user met it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import adaptim
from adaptim.cli import app
from adaptim.lab.files import write_atomically
from adaptim.lab.ownership import APPLICATION_ID

HERE = Path(__file__).parent
TOY = "toyproblems:quadratic"
# Tests about what surrounds the report render a stand-in page (the ``fast_report`` fixture);
# the diverged study and the closed-stdout test render the real one.
TINY = ["--optimizers", "sgd", "--budget", "2", "--seeds", "1", "--max-seeds", "1"]


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def run(*args: str) -> Any:
    workers = [] if "--workers" in args else ["--workers", "1"]
    first, *rest = args
    return CliRunner().invoke(app, [first, *workers, *rest] if first == "compare" else list(args))


def one_line_error(result: Any, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def study(out: Path, *extra: str) -> Any:
    result = run("compare", "--problem", TOY, *TINY, "--steps", "3", "--out", str(out), *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_a_non_finite_position_is_stored_as_a_diverged_trial_and_a_rerun_works(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args = ["compare", "--problem", "rosenbrock", "--optimizers", "adam", "--set", "adam.lr=1e308"]
    args += ["--steps", "3", "--budget", "1", "--seeds", "1", "--max-seeds", "1"]
    first = run(*args, "--out", str(tmp_path))
    assert first.exit_code == 0, first.output
    with sqlite3.connect(tmp_path / "adaptim.db") as db:
        stored = db.execute("SELECT key, diverged FROM trials ORDER BY id").fetchall()
        positions = [json.loads(p) for (p,) in db.execute("SELECT position FROM records")]
    assert stored and all(diverged for _, diverged in stored)
    assert None in positions  # the iterate that left the plane, as null
    request.getfixturevalue("fast_report")  # the real report rendered once, diverged runs and all
    again = run(*args, "--out", str(tmp_path))
    assert again.exit_code == 0, again.output
    with sqlite3.connect(tmp_path / "adaptim.db") as db:
        assert db.execute("SELECT key, diverged FROM trials ORDER BY id").fetchall() == stored
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["problems"][0]["recommendation"]["diverged"] == ["adam"]


def test_a_store_is_marked_and_an_unmarked_older_store_is_adopted(
    tmp_path: Path, fast_report: None
) -> None:
    study(tmp_path)
    db = tmp_path / "adaptim.db"
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert connection.execute("SELECT value FROM adaptim_meta").fetchall() == [("1",)]
        connection.execute("PRAGMA application_id = 0")  # as stores were before the marks
        connection.execute("DROP TABLE adaptim_meta")
        before = connection.execute("SELECT key FROM trials").fetchall()
    study(tmp_path)
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert connection.execute("SELECT key FROM trials").fetchall() == before


def _foreign_trials(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE trials (id INTEGER PRIMARY KEY, patient TEXT)")
        connection.execute("INSERT INTO trials (patient) VALUES ('Ada')")
    connection.close()


def _foreign_id(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA application_id = 1234")
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()


def _other_tables(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    connection.close()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_foreign_trials, "its table 'trials' is not adaptim's"),
        (_foreign_id, "its application_id is 0x4d2"),
        (_other_tables, "it holds tables adaptim does not make (photos)"),
    ],
)
def test_another_applications_database_is_refused_without_a_write(
    tmp_path: Path, make: Any, expected: str
) -> None:
    foreign = tmp_path / "theirs.db"
    make(foreign)
    before = digest(foreign)
    url = f"sqlite:///{foreign}"
    out = tmp_path / "out"
    one_line_error(
        run("compare", "--problem", TOY, *TINY, "--store", url, "--out", str(out)), expected
    )
    one_line_error(run("report", "--store", url), expected)
    assert digest(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "theirs.db"]  # no -wal/-shm


def test_a_damaged_or_non_database_store_gets_one_line(tmp_path: Path, fast_report: None) -> None:
    study(tmp_path)
    db = tmp_path / "adaptim.db"
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[page : 3 * page] = os.urandom(2 * page)  # two pages overwritten, header intact
    db.write_bytes(bytes(data))
    again = run("compare", "--problem", TOY, *TINY, "--steps", "3", "--out", str(tmp_path))
    one_line_error(again, "store")
    one_line_error(run("report", str(tmp_path)), "store")
    db.write_text("not a database at all\n" * 100)
    one_line_error(run("report", str(tmp_path)), "file is not a database")


def test_a_read_only_store_fails_before_any_trial_is_computed(
    tmp_path: Path, fast_report: None
) -> None:
    study(tmp_path)
    read_only = f"sqlite:///file:{tmp_path / 'adaptim.db'}?mode=ro&uri=true"
    out = tmp_path / "elsewhere"
    # The finished study renders and re-runs from a read-only store (nothing to write).
    assert run("compare", "--problem", TOY, *TINY, "--steps", "3", "--store", read_only,
               "--out", str(out)).exit_code == 0  # fmt: skip
    log = tmp_path / "built.log"
    os.environ["TOY_BUILD_LOG"] = str(log)
    try:
        more = run("compare", "--problem", "toyproblems:logged_quadratic", *TINY, "--steps", "3",
                   "--store", read_only, "--out", str(tmp_path / "more"))  # fmt: skip
    finally:
        del os.environ["TOY_BUILD_LOG"]
    one_line_error(more, "attempt to write a readonly database")
    assert not log.exists()  # no trial was built, let alone run


def test_a_read_only_out_directory_gets_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere chmod forbids; sysfs refuses new files
        out = Path("/sys")
    else:
        out = tmp_path / "locked"
        out.mkdir()
        out.chmod(0o555)
    result = run("compare", "--problem", TOY, *TINY, "--steps", "3", "--out", str(out))
    one_line_error(result, "is not a writable directory")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "sgd.lr=1" + "0" * 400], "too large for a float"),
        (["--set", "sgd.lr=1e400"], "expected a finite number"),
        (["--workers", "9" * 23], "--workers must be between 0 (one per core) and 256"),
        (["--seeds", "9" * 23], "--seeds must be between 1 and 1000"),
        (["--max-seeds", "9" * 23], "--max-seeds must be between 1 and 1000"),
        (["--steps", "9" * 23], "--steps must be between 1 and 2147483647"),
        (["--budget", "9" * 23], "--budget must be between 1 and 100"),
        (["--margin", "1e400"], "--margin must be a positive number"),
        (["--problem", "sys:exit"], "could not be loaded: SystemExit (raised by exit())"),
        (["--problem", "os:getcwd"], "returned a 'str' object, not a Problem"),
    ],
)
def test_overflowing_and_exiting_input_gets_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    problem = [] if "--problem" in args else ["--problem", TOY]
    out = tmp_path / "out"
    result = run("compare", *problem, *TINY, *args, "--out", str(out))
    one_line_error(result, expected)
    assert not out.exists()  # refused before anything touched the disk


def test_a_module_that_exits_on_import_gets_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run("compare", "--problem", "exits_on_import:make", *TINY, "--out", str(tmp_path))
    one_line_error(result, "could not be loaded: SystemExit: 0")


def test_an_overflowing_learning_rate_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="Invalid lr: an integer of 401 digits; too large"):
        adaptim.Adam([torch.zeros(2, requires_grad=True)], lr=10**400)


def test_an_unknown_problem_leaves_nothing_on_disk(tmp_path: Path) -> None:
    out = tmp_path / "never"
    one_line_error(run("compare", "--problem", "rosenbrok", "--out", str(out)), "rosenbrock")
    assert not out.exists()


def test_another_studys_results_are_refused_unless_replaced(
    tmp_path: Path, fast_report: None
) -> None:
    study(tmp_path)
    results = (tmp_path / "results.json").read_text()
    report = (tmp_path / "report.html").read_text()
    study(tmp_path)  # the same study may rewrite its own results
    other = ["--problem", TOY, *TINY, "--steps", "4", "--out", str(tmp_path)]
    one_line_error(run("compare", *other), "holds another study's results (results.json)")
    assert (tmp_path / "results.json").read_text() == results
    assert (tmp_path / "report.html").read_text() == report
    assert run("compare", *other, "--replace").exit_code == 0
    assert json.loads((tmp_path / "results.json").read_text())["config"]["steps"] == 4


def test_concurrent_writers_and_a_reader_never_meet_half_a_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_atomically(target, json.dumps({"writer": -1}))
    failures: list[BaseException] = []
    seen: list[str] = []
    stop = threading.Event()

    def write(writer: int) -> None:
        try:
            for i in range(300):
                write_atomically(target, json.dumps({"writer": writer, "i": i, "pad": "x" * 5000}))
        except BaseException as error:  # pragma: no cover - what the test looks for
            failures.append(error)

    def read() -> None:
        while not stop.is_set():
            seen.append(target.read_text())

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert failures == []
    assert all(isinstance(json.loads(text), dict) for text in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp left


def test_report_runs_no_module_named_by_a_store_unless_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_report: None
) -> None:
    marker = tmp_path / "ran"
    module = tmp_path / "planted.py"
    module.write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from toyproblems import quadratic as make\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = run("compare", "--problem", "planted:make", *TINY, "--steps", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    marker.unlink()
    sys.modules.pop("planted", None)
    one_line_error(run("report", str(out)), "pass --trust-problem-module if you trust")
    assert not marker.exists()
    assert run("report", str(out), "--trust-problem-module").exit_code == 0
    assert marker.exists()


def test_an_in_memory_store_says_that_it_keeps_nothing(tmp_path: Path, fast_report: None) -> None:
    result = study(tmp_path, "--store", "sqlite://")
    assert "is in memory: no trial outlives this run" in result.stdout
    assert not (tmp_path / "adaptim.db").exists()


@pytest.mark.slow
def test_a_closed_stdout_silences_the_command_and_the_study_still_finishes(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    # `true` exits at once, so every line the command prints meets a closed pipe.
    command = (
        f"{sys.executable} -m adaptim.cli compare --problem {TOY} --optimizers sgd --budget 1 "
        f"--seeds 1 --max-seeds 1 --steps 3 --workers 1 --out {tmp_path} | true; "
        "echo ${PIPESTATUS[0]} >&2"
    )
    done = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stderr == "0\n", done.stderr  # no message, no "Exception ignored" at exit
    assert (tmp_path / "results.json").exists() and (tmp_path / "report.html").exists()
