"""``--device cpu|cuda|auto``: where each trial runs, part of its identity when not the CPU.

This machine has no GPU: auto must mean the CPU (the very trials of --device cpu), and
cuda must fail at once with one clear line.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from adaptim.cli import app
from adaptim.lab.errors import LabError
from adaptim.lab.executors import execute
from adaptim.lab.problems import BuildContext
from adaptim.lab.trial import TrialSpec

HERE = Path(__file__).parent
STUDY = ["--problem", "toyproblems:quadratic", "--optimizers", "sgd,adam", "--budget", "2"]
STUDY += ["--seeds", "1", "--max-seeds", "1", "--workers", "1"]


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def compare(out: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["compare", *STUDY, "--out", str(out), *extra])


def trials(out: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(out / "adaptim.db") as connection:
        return connection.execute("SELECT key, created_at FROM trials ORDER BY id").fetchall()


def test_no_gpu_here() -> None:
    assert not torch.cuda.is_available(), "these tests describe a machine without CUDA"


def test_auto_without_a_gpu_runs_the_very_trials_of_cpu(tmp_path: Path) -> None:
    cpu = compare(tmp_path, "--device", "cpu")
    assert cpu.exit_code == 0, cpu.output
    first = json.loads((tmp_path / "results.json").read_text())["problems"]
    stored = trials(tmp_path)
    auto = compare(tmp_path, "--device", "auto")
    assert auto.exit_code == 0, auto.output
    assert trials(tmp_path) == stored, "auto re-ran nothing: the same trial keys"
    assert json.loads((tmp_path / "results.json").read_text())["problems"] == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--device", "cuda"],
            "--device cuda: no CUDA device is available here (torch.cuda.is_available() is "
            "False); use --device cpu or auto",
        ),
        (["--device", "tpu"], "--device must be cpu, cuda or auto, got 'tpu'"),
        (
            ["--device", "cuda", "--executor", "ray"],
            "--device cuda on Ray needs --trial-gpus (1: a GPU per trial)",
        ),
    ],
)
def test_an_impossible_device_gets_one_clear_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = compare(tmp_path, *args)
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == f"error: {message}"
    assert not (tmp_path / "adaptim.db").exists() or "trials" not in result.output


@given(seed=st.integers(0, 2**31 - 1), lr=st.floats(1e-5, 1.0))
def test_a_gpu_trial_is_another_trial_and_a_cpu_trial_keeps_its_key(seed: int, lr: float) -> None:
    cpu = TrialSpec("toyproblems:quadratic", "adam", {"lr": lr}, seed, 30)
    assert TrialSpec("toyproblems:quadratic", "adam", {"lr": lr}, seed, 30, device="cpu") == cpu
    gpu = TrialSpec("toyproblems:quadratic", "adam", {"lr": lr}, seed, 30, device="cuda")
    assert gpu.key() != cpu.key()


def test_a_cuda_trial_on_a_worker_without_one_fails_with_one_line() -> None:
    spec = TrialSpec("toyproblems:quadratic", "adam", {"lr": 0.01}, 1, 30, device="cuda")
    with pytest.raises(LabError, match=r"^--device cuda: this worker sees no CUDA device"):
        execute(spec, BuildContext())
