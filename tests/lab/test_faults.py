"""The fault matrix: ``kill -9`` of ``adaptim compare`` at random moments, then a re-run.

With ``--workers 1`` and ``2``, each study is killed twice at a random moment
(after a random number of stored trials, plus a random delay), then finished.
After every kill: ``PRAGMA integrity_check`` is ok, every trial stored before
is still there unchanged, and no process the study started survives (pool
workers and multiprocessing's resource tracker included). At the end the
store holds exactly the trials of an uninterrupted run, each once, with the
same values, and ``results.json`` gives the same results.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adaptim.cli import app

HERE = Path(__file__).parent
PROBLEM = "toyproblems:slow_quadratic"
STUDY = ["--problem", PROBLEM, "--optimizers", "sgd", "--budget", "3", "--seeds", "2"]
STUDY += ["--max-seeds", "2"]
MARK = "ADAPTIM_FAULT_TEST"


def rows(db: Path) -> list[tuple[Any, ...]]:
    try:
        with sqlite3.connect(db) as connection:
            return connection.execute(
                "SELECT key, diverged, final, info, steps_done FROM trials ORDER BY id"
            ).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def marked_processes(token: str) -> list[int]:
    """Live processes (zombies excluded) whose environment carries ``MARK=token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{MARK}={token}".encode() in environment and state != "Z":
            found.append(int(entry.name))
    return found


def survivors_after(token: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := marked_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def results_of(out: Path) -> list[dict[str, Any]]:
    """What a study concluded, without timings."""
    data = json.loads((out / "results.json").read_text())
    return [
        {
            "recommendation": (p["recommendation"]["optimizer"], p["recommendation"]["decided_by"]),
            "optimizers": [
                (o["name"], o["hparams"], [(r["seed"], r["final"]) for r in o["runs"]])
                for o in p["optimizers"]
            ],
        }
        for p in data["problems"]
    ]


def kill_at_random(
    out: Path, workers: int, rng: random.Random, counts: dict[str, int]
) -> tuple[str, list[tuple[Any, ...]]]:
    """Start the study, kill -9 it at a random moment; the token of its processes, and its rows."""
    db = out / "adaptim.db"
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        MARK: token,
        "TOY_DELAY": "0.01",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
    }
    command = [sys.executable, "-m", "adaptim.cli", "compare", *STUDY, "--out", str(out)]
    command += ["--workers", str(workers)]
    before = len(rows(db))
    wanted = before + rng.randint(1, 2)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and len(rows(db)) < wanted:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    counts["kills"] += 1
    return token, rows(db)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_at_random_moments_loses_nothing_and_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_report: None, workers: int
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("TOY_DELAY", "0")
    baseline = tmp_path / "uninterrupted"
    done = CliRunner().invoke(app, ["compare", *STUDY, "--out", str(baseline), "--workers", "1"])
    assert done.exit_code == 0, done.output
    expected = rows(baseline / "adaptim.db")

    rng = random.Random(workers)
    counts = {"kills": 0}
    out = tmp_path / "killed"
    kept: list[tuple[Any, ...]] = []
    for _ in range(2):
        token, stored = kill_at_random(out, workers, rng, counts)
        assert stored[: len(kept)] == kept  # nothing stored before is lost or changed
        kept = stored
        assert survivors_after(token, 5.0) == []  # workers and resource tracker: gone
        with sqlite3.connect(out / "adaptim.db") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert 0 < len(kept) < len(expected), "the kills must land mid-study"

    finished = CliRunner().invoke(app, ["compare", *STUDY, "--out", str(out), "--workers", "1"])
    assert finished.exit_code == 0, finished.output
    final = rows(out / "adaptim.db")
    assert final[: len(kept)] == kept
    assert len({row[0] for row in final}) == len(final)  # no trial twice
    as_keys = {row[0]: row[1:3] for row in final}
    assert as_keys == {row[0]: row[1:3] for row in expected}  # the same trials, the same values
    assert results_of(out) == results_of(baseline)
    assert counts["kills"] == 2
