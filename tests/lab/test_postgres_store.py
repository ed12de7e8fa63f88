# ruff: noqa: F811  (the store fixtures are imported, then named as arguments)
"""The store on SQLite and on a real PostgreSQL server: storing, reuse, kill -9 and resume,
and several ``adaptim compare`` processes sharing one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from stores import postgres_server, postgres_url, store_url  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from adaptim.cli import app

HERE = Path(__file__).parent
STUDY = ["--optimizers", "sgd,adam", "--budget", "3", "--seeds", "2", "--max-seeds", "2"]


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def command(out: Path, store: str, problem: str = "toyworkers:counted") -> list[str]:
    return [
        sys.executable, "-m", "adaptim.cli", "compare", "--problem", problem, *STUDY,
        "--workers", "1", "--out", str(out), "--store", store,
    ]  # fmt: skip


def compare_here(out: Path, store: str) -> Any:
    """The same command in this process: no interpreter start-up to pay."""
    return CliRunner().invoke(app, command(out, store)[3:])


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def stored(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT key, created_at FROM trials ORDER BY id"))
            return [tuple(r) for r in rows]
    except SQLAlchemyError:  # the study has not created its tables yet
        return []
    finally:
        engine.dispose()


def runs(out: Path) -> list[Any]:
    """Each optimizer's chosen setting and re-runs, wall time aside."""
    data = json.loads((out / "results.json").read_text())
    return [
        (o["name"], o["hparams"], [{**r, "wall_time": 0} for r in o["runs"]], len(o["tuning"]))
        for o in data["problems"][0]["optimizers"]
    ]


def planned(out: Path) -> int:
    problem = json.loads((out / "results.json").read_text())["problems"][0]
    extra = sum(len(r["sgd"]["lrs"]) for r in problem["grid_extensions"])
    swept = sum(max(len(e["sweeps"]) - 1, 0) for e in problem["optimizers"])
    return 2 * (3 + extra + 2) + swept


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The study in one process on the default store: the results every store must give."""
    out = tmp_path_factory.mktemp("reference")
    url = f"sqlite:///{out / 'adaptim.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(HERE))
        done = compare_here(out, url)
    assert done.exit_code == 0, done.output
    return out, len(stored(url))


def test_a_study_stores_every_trial_once_and_reruns_reuse_them(
    store_url: str, tmp_path: Path, reference: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "runs.log"
    monkeypatch.setenv("TOY_RUNS", str(log))
    first = compare_here(tmp_path, store_url)
    assert first.exit_code == 0, first.output
    rows = stored(store_url)
    assert len(rows) == planned(tmp_path) == reference[1]
    assert len({key for key, _ in rows}) == len(rows)
    assert runs(tmp_path) == runs(reference[0])
    again = compare_here(tmp_path, store_url)
    assert again.exit_code == 0, again.output
    assert stored(store_url) == rows
    assert len(log.read_text().splitlines()) == len(rows), "the re-run ran nothing"


@pytest.mark.slow
def test_a_killed_study_resumes_without_losing_or_duplicating_trials(
    store_url: str, tmp_path: Path, reference: tuple[Path, int]
) -> None:
    cmd = command(tmp_path, store_url)
    process = subprocess.Popen(
        cmd, env=environment(TOY_DELAY="0.03"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300  # generous: a loaded machine starts Python slowly
    while time.monotonic() < deadline and len(stored(store_url)) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    survivors = stored(store_url)
    assert 3 <= len(survivors) < reference[1], "the kill must land mid-study"
    # The dead worker's claim is taken over at once (its pid is gone), not after the timeout.
    finished = compare_here(tmp_path, store_url)
    assert finished.exit_code == 0, finished.output
    final = stored(store_url)
    assert len(final) == reference[1]
    assert len({key for key, _ in final}) == len(final)
    assert final[: len(survivors)] == survivors  # kept, not redone
    assert runs(tmp_path) == runs(reference[0])


@pytest.mark.slow
def test_two_workers_split_one_study_and_it_ends_once(
    store_url: str, tmp_path: Path, reference: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "runs.log"
    monkeypatch.setenv("TOY_RUNS", str(log))
    monkeypatch.setenv("TOY_DELAY", "0.02")
    outs = [tmp_path / "a", tmp_path / "b"]
    # One worker in another process, one in this one (the same code; no second start-up).
    other = subprocess.Popen(
        command(outs[0], store_url), env=environment(), stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300  # its start-up (imports) takes a while
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    here = compare_here(outs[1], store_url)
    stdout, _ = other.communicate(timeout=300)
    assert (other.returncode, here.exit_code) == (0, 0), (stdout, here.output)
    rows = stored(store_url)
    assert len(rows) == reference[1]
    assert len({key for key, _ in rows}) == len(rows)
    ran = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert sum(ran.values()) == len(rows), "every trial ran exactly once"
    assert sorted(ran) == sorted([str(other.pid), str(os.getpid())]), "both workers ran trials"
    # Whichever worker completed the study wrote results.json; the other said so.
    written = [out for out in outs if (out / "results.json").exists()]
    assert len(written) == 1
    assert runs(written[0]) == runs(reference[0])
    assert sum("Another worker" in output for output in (stdout, here.output)) == 1
