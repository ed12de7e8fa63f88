"""Problems on a device that isn't the CPU: the same bits, everything on ``BuildContext.device``.

This machine has no GPU. ``torch.device("meta")`` as torch's default device
stands in for CUDA: a tensor made without an explicit device lands there, and
meta tensors refuse to mix with CPU ones, as CUDA tensors do. So a build under
a meta default device with ``BuildContext(device="cpu")`` must draw exactly the
data and initial weights of a plain CPU build (nothing drawn on the default
device), and a build with ``BuildContext(device="meta")`` must put every tensor
it holds on meta and train on it (nothing left behind on the CPU).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from devicecheck import reachable_tensors
from hypothesis import given, settings
from hypothesis import strategies as st
from test_waves import without_wall_times

from adaptim.lab.errors import LabError
from adaptim.lab.executors import InProcessExecutor
from adaptim.lab.problems import PROBLEMS, BuildContext, Metric, Problem, Setup, resolve_problem
from adaptim.lab.protocol import StudyConfig
from adaptim.lab.store import Store
from adaptim.lab.study import Study
from adaptim.lab.trial import TrialResult, TrialSpec, run_trial

README = Path(__file__).parents[2] / "README.md"
#: Steps at which the meta build trains: the first two, and one in a later epoch of every problem.
STEPS = (1, 2, 1000)


@pytest.fixture(scope="module")
def readme_problem(tmp_path_factory: pytest.TempPathFactory) -> Problem:
    """The README's own ``my_pkg/problems.py``, loaded as users load it: ``module:function``."""
    text = README.read_text()
    code = re.search(r"```python\n(# my_pkg/problems\.py\n.*?)```", text, re.S)
    assert code is not None, "the README's example problem moved"
    root = tmp_path_factory.mktemp("user")
    (root / "my_pkg").mkdir()
    (root / "my_pkg" / "__init__.py").write_text("")
    (root / "my_pkg" / "problems.py").write_text(code.group(1))
    sys.path.insert(0, str(root))
    try:
        return resolve_problem("my_pkg.problems:make_problem")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("my_pkg.problems", None)
        sys.modules.pop("my_pkg", None)


def problem_named(name: str, readme_problem: Problem) -> Problem:
    return readme_problem if name == "README" else PROBLEMS[name]


def check_builds(problem: Problem, seed: int) -> None:
    plain = reachable_tensors(problem.build(seed, BuildContext()))
    with torch.device("meta"):
        foreign = reachable_tensors(problem.build(seed, BuildContext(device="cpu")))
        meta = problem.build(seed, BuildContext(device="meta"))
        held = reachable_tensors(meta)
        losses = [meta.train_loss(step) for step in STEPS]
        sum(losses).backward()  # type: ignore[union-attr]
    assert len(plain) >= 2, "the walk found the parameters and the data"
    assert [path for path, _ in foreign] == [path for path, _ in plain]
    for (path, expected), (_, got) in zip(plain, foreign, strict=True):
        assert got.device.type == "cpu", f"{path} was made on the default device"
        assert got.dtype == expected.dtype and got.shape == expected.shape, path
        assert torch.equal(got, expected), f"{path} differs under a meta default device"
    assert [(p, t.shape, t.dtype) for p, t in held] == [(p, t.shape, t.dtype) for p, t in plain]
    stray = [path for path, tensor in held if tensor.device.type != "meta"]
    assert not stray, f"left on the CPU: {stray}"
    assert all(loss.device.type == "meta" for loss in losses)
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in meta.parameters)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*PROBLEMS, "README"])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_a_build_draws_on_the_cpu_and_moves_to_the_context_device(
    name: str, seed: int, readme_problem: Problem
) -> None:
    check_builds(problem_named(name, readme_problem), seed)


def comparable(result: TrialResult) -> tuple[object, ...]:
    records = [
        (r.step, r.train_loss, r.metrics, r.effective_lr, r.position) for r in result.records
    ]
    return records, result.final, result.validation, result.diverged, result.steps_done


@pytest.mark.slow
@pytest.mark.parametrize("name", [*PROBLEMS, "README"])
def test_a_trial_under_a_foreign_default_device_runs_on_its_own(
    name: str, readme_problem: Problem
) -> None:
    problem = problem_named(name, readme_problem)
    spec = TrialSpec(problem.name, "adam", {"lr": 0.01}, 3, 4)
    plain = run_trial(spec, problem)
    with torch.device("meta"):
        foreign = run_trial(spec, problem)
    assert comparable(foreign) == comparable(plain)


def _cpu_parameter(seed: int, context: BuildContext) -> Setup:
    w = torch.nn.Parameter(torch.zeros(3, device="cpu"))  # ignores context.device
    return Setup([w], lambda step: (w**2).sum(), lambda: {"loss": 0.0})


def test_a_parameter_off_the_trials_device_is_one_clear_line() -> None:
    problem = Problem("stubborn", "keeps w on the CPU", Metric("loss", "min"), _cpu_parameter, 3, 1)
    spec = TrialSpec("stubborn", "sgd", {"lr": 0.1}, 0, 3, device="meta")
    with pytest.raises(LabError) as raised:
        run_trial(spec, problem)
    assert str(raised.value) == (
        "problem 'stubborn': parameter 0 is on cpu, but the trial runs on --device meta; "
        "build the parameters on context.device"
    )


@pytest.mark.slow
@pytest.mark.parametrize("search", ["grid", "lr-find"])
def test_a_study_under_a_foreign_default_device_runs_as_on_the_cpu(
    search: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials and ``--search lr-find``'s range test set their own device (here the CPU)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = StudyConfig(
        problems=("linreg",), optimizers=("sgd", "adam"), budget=4, seeds=1, max_seeds=1,
        steps=30, search=search,  # type: ignore[arg-type]
    )  # fmt: skip

    def run() -> str:
        outcome = Study(config, Store("sqlite://"), InProcessExecutor()).run()
        return json.dumps(without_wall_times(outcome.to_json()["problems"]), sort_keys=True)

    plain = run()
    with torch.device("meta"):
        assert run() == plain
