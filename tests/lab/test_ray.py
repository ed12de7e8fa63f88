"""``adaptim compare --executor ray`` on a real local Ray instance (one for the module).

The study on Ray must give exactly the in-process executor's results, and a Ray
worker killed mid-trial must cost a retry, never a lost or duplicated trial.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from adaptim.cli import app

HERE = Path(__file__).parent
STUDY = ["--optimizers", "sgd,adam", "--budget", "3", "--seeds", "2", "--max-seeds", "2"]


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture(scope="module")
def ray_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray with 2 CPUs on 127.0.0.1; its workers log each trial they start here."""
    log = tmp_path_factory.mktemp("ray") / "runs.log"
    saved = {k: os.environ.get(k) for k in ("TOY_RUNS", "TOY_DELAY")}
    # Ray's processes take the environment they start with: the toy problem's log and pace.
    os.environ.update(TOY_RUNS=str(log), TOY_DELAY="0.03")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=100 * 1024**2,
    )
    try:
        yield log
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def compare(out: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        app, ["compare", "--problem", "toyworkers:counted", *STUDY, "--out", str(out), *extra]
    )


def runs(out: Path) -> list[Any]:
    data = json.loads((out / "results.json").read_text())
    return [
        (o["name"], o["hparams"], [{**r, "wall_time": 0} for r in o["runs"]], o["tuning"])
        for o in data["problems"][0]["optimizers"]
    ]


def stored_keys(out: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{out / 'adaptim.db'}")
    with engine.connect() as connection:
        keys = [r[0] for r in connection.execute(text("SELECT key FROM trials"))]
    engine.dispose()
    return keys


def kill_first_worker(log: Path, offset: int, killed: list[int]) -> None:
    """SIGKILL the Ray worker of the first trial logged after ``offset``, mid-trial."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = log.read_text()[offset:].splitlines() if log.exists() else []
        if lines:
            pid = int(lines[0].split()[0])
            time.sleep(0.2)  # into the trial's 30 steps of 0.03 s
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_study_on_ray_survives_a_killed_worker_with_the_in_process_results(
    ray_log: Path, tmp_path: Path
) -> None:
    offset = len(ray_log.read_text()) if ray_log.exists() else 0
    killed: list[int] = []
    killer = threading.Thread(target=kill_first_worker, args=(ray_log, offset, killed))
    killer.start()
    on_ray = compare(tmp_path / "ray", "--executor", "ray")
    killer.join()
    assert on_ray.exit_code == 0, on_ray.output
    started = [line.split()[0] for line in ray_log.read_text()[offset:].splitlines()]
    assert killed and str(killed[0]) in started, "a worker was killed mid-trial"
    assert str(os.getpid()) not in started, "every trial ran in a Ray worker"
    keys = stored_keys(tmp_path / "ray")
    assert len(set(keys)) == len(keys)  # nothing duplicated
    assert len(started) == len(keys) + 1  # the killed trial ran again, once

    # The reference: the same study in this process, without Ray.
    os.environ.pop("TOY_RUNS")
    os.environ.pop("TOY_DELAY")
    here = compare(tmp_path / "here", "--workers", "1")
    assert here.exit_code == 0, here.output
    assert sorted(stored_keys(tmp_path / "here")) == sorted(keys)  # nothing lost
    assert runs(tmp_path / "ray") == runs(tmp_path / "here")


def test_trial_resources_beyond_the_cluster_are_refused(ray_log: Path, tmp_path: Path) -> None:
    result = compare(tmp_path, "--executor", "ray", "--trial-cpus", "4")
    assert result.exit_code == 2
    assert "no Ray node can run a trial with --trial-cpus 4 --trial-gpus 0" in result.output
    assert "the cluster has 2 CPUs and 0 GPUs" in result.output


def test_without_ray_installed_the_executor_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = compare(tmp_path, "--executor", "ray")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --executor ray needs Ray: pip install 'adaptim[ray]'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "dask"], "--executor must be local or ray, got 'dask'"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    ],
)
def test_bad_executor_options_get_one_clear_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = compare(tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.output
