# ruff: noqa: F811  (the store fixtures are imported, then named as arguments)
"""Several ``adaptim reproduce`` processes on one store split the trials and write one report.

The same guarantees as ``adaptim compare`` workers (:mod:`adaptim.lab.claims`):
no trial run twice or lost, the verdicts of one process alone, ``reproduce.json``
written by exactly one worker; on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from stores import postgres_server, postgres_url, store_url  # noqa: F401  (fixtures)
from toyclaims import TOY_CLAIMS
from typer.testing import CliRunner

from adaptim.cli import app
from adaptim.lab import reproduce

HERE = Path(__file__).parent


def arguments(out: Path, store: str) -> list[str]:
    return ["reproduce", "--quick", "--workers", "1", "--out", str(out), "--store", store]


def reproduce_here(out: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A worker in this process (the same code as the subprocess; no second start-up)."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setattr(reproduce, "claims", lambda: list(TOY_CLAIMS))
    return CliRunner().invoke(app, arguments(out, store), env={"COLUMNS": "200"})


def stored_keys(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT key FROM trials"))]
    finally:
        engine.dispose()


def verdicts(out: Path) -> list[Any]:
    return json.loads((out / "reproduce.json").read_text())["claims"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], int]:
    """One worker alone: the verdicts and the number of trials every shared run must give."""
    out = tmp_path_factory.mktemp("reference")
    url = f"sqlite:///{out / 'adaptim.db'}"
    with pytest.MonkeyPatch.context() as patch:
        done = reproduce_here(out, url, patch)
    assert done.exit_code == 0, done.output
    return verdicts(out), len(stored_keys(url))


@pytest.mark.slow
def test_two_reproduce_workers_split_the_trials_and_write_one_report(
    store_url: str,
    tmp_path: Path,
    reference: tuple[list[Any], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "runs.log"
    monkeypatch.setenv("TOY_RUNS", str(log))
    monkeypatch.setenv("TOY_DELAY", "0.01")
    outs = [tmp_path / "a", tmp_path / "b"]
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    other = subprocess.Popen(
        [sys.executable, "-m", "toyclaims", *arguments(outs[0], store_url)],
        env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300  # its start-up (imports) takes a while
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    here = reproduce_here(outs[1], store_url, monkeypatch)
    stdout, _ = other.communicate(timeout=300)
    assert (other.returncode, here.exit_code) == (0, 0), (stdout, here.output)
    keys = stored_keys(store_url)
    assert len(keys) == reference[1] and len(set(keys)) == len(keys), "none lost, none twice"
    ran = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert sum(ran.values()) == len(keys), "every trial ran exactly once"
    assert sorted(ran) == sorted([str(other.pid), str(os.getpid())]), "both workers ran trials"
    written = [out for out in outs if (out / "reproduce.json").exists()]
    assert len(written) == 1, "the report is written once"
    assert verdicts(written[0]) == reference[0]
    assert sum("Another worker" in output for output in (stdout, here.output)) == 1
    # Both print the same verdicts and name the one report.
    for output in (stdout, here.output):
        assert "2 of 3 claims hold." in output
        assert str(written[0] / "reproduce.json") in " ".join(output.split()).replace(" ", "")
