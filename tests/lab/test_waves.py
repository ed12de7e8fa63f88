"""Waves of the protocol: every trial that depends on no pending result is in the current wave.

A worker can only take a trial of the current wave, so the larger the wave the
more workers help; but a wave may only hold proposals that proposing one at a
time (each result observed first) would give. Checked on Optuna itself: its
random sampler, and TPE's random start, propose the same settings together as
one at a time; TPE's first model-based proposal does not, and stays alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptim.lab.executors import InProcessExecutor
from adaptim.lab.problems import Metric
from adaptim.lab.protocol import OptunaTuner, StudyConfig
from adaptim.lab.store import Store
from adaptim.lab.study import Study

HERE = Path(__file__).parent
LOSS = Metric("loss", "min")


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def fake_value(hparams: dict[str, Any], salt: int) -> float | None:
    """A made-up result: a fixed function of the setting (sometimes diverged)."""
    digest = hashlib.sha256(f"{salt}{sorted(hparams.items())}".encode()).digest()
    return None if digest[0] < 20 else digest[1] / 255


def proposals(tuner: OptunaTuner, salt: int, together: bool) -> list[list[dict[str, Any]]]:
    """Each wave's proposals: one at a time, or as many as ``independent()`` allows."""
    waves = []
    while wave := tuner.propose(tuner.independent() if together else 1):
        for hparams in wave:
            tuner.observe(hparams, fake_value(hparams, salt))
        waves.append(wave)
    return waves


@settings(max_examples=25, deadline=None)
@given(
    search=st.sampled_from(["random", "tpe"]),
    optimizer=st.sampled_from(["adam", "rmsprop", "momentum", "sgd", "adagrad"]),
    budget=st.integers(1, 12),
    salt=st.integers(0, 2**16),
)
def test_waves_propose_exactly_the_settings_of_one_at_a_time(
    search: str, optimizer: str, budget: int, salt: int
) -> None:
    alone = proposals(OptunaTuner(optimizer, {}, budget, search, LOSS), salt, together=False)  # type: ignore[arg-type]
    waves = proposals(OptunaTuner(optimizer, {}, budget, search, LOSS), salt, together=True)  # type: ignore[arg-type]
    assert [h for wave in waves for h in wave] == [h for wave in alone for h in wave]
    startup = budget if search == "random" else max(1, budget // 2)
    assert [len(w) for w in waves] == [startup] + [1] * (budget - startup)


def test_tpe_after_its_random_start_depends_on_the_results() -> None:
    """Why TPE's model-based proposals stay one a wave: asked early, they differ."""
    tuner, early = (OptunaTuner("adam", {}, 8, "tpe", LOSS) for _ in range(2))
    alone = [h for wave in proposals(tuner, 7, together=False) for h in wave]
    asked_together = early.propose(5)  # one beyond the random start, before any result
    assert asked_together[:4] == alone[:4] and asked_together[4] != alone[4]


def without_wall_times(data: Any) -> Any:
    """``data`` without the measured times, the one thing a re-run may change."""
    if isinstance(data, dict):
        return {k: without_wall_times(v) for k, v in data.items() if "wall_time" not in k}
    if isinstance(data, list):
        return [without_wall_times(v) for v in data]
    return data


def study_results(search: str, one_at_a_time: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    if one_at_a_time:  # the protocol before waves held every determined proposal
        monkeypatch.setattr(OptunaTuner, "independent", lambda self: min(1, self.remaining))
    config = StudyConfig(
        problems=("toyproblems:quadratic",),
        optimizers=("sgd", "adam", "rmsprop"),
        budget=4,
        seeds=2,
        max_seeds=2,
        search=search,  # type: ignore[arg-type]
    )
    waves: list[int] = []
    study = Study(config, Store("sqlite://"), InProcessExecutor())
    execute = study._execute
    monkeypatch.setattr(study, "_execute", lambda specs: waves.append(len(specs)) or execute(specs))
    data = study.run().to_json()
    monkeypatch.undo()
    return json.dumps(without_wall_times(data["problems"]), sort_keys=True), waves


@pytest.mark.slow
@pytest.mark.parametrize("search", ["random", "tpe"])
def test_a_study_in_waves_gives_the_results_of_one_proposal_a_wave(
    search: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, narrow = study_results(search, True, monkeypatch)
    after, wide = study_results(search, False, monkeypatch)
    assert after == before
    assert sum(wide) == sum(narrow)
    # Random: the whole budget of all three optimizers in the first wave, not one each.
    assert wide[0] == (12 if search == "random" else 6) and narrow[0] == 3
    assert len(wide) < len(narrow)


def run_study(problems: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    config = StudyConfig(
        problems=problems, optimizers=("sgd", "adam"), budget=3, seeds=2, max_seeds=3, steps=40
    )
    waves: list[set[tuple[str, str]]] = []
    study = Study(config, Store("sqlite://"), InProcessExecutor())
    execute = study._execute
    monkeypatch.setattr(
        study,
        "_execute",
        lambda specs: waves.append({(s.problem, s.phase) for s in specs}) or execute(specs),
    )
    data = without_wall_times(study.run().to_json()["problems"])
    return {p["spec"]: json.dumps(p, sort_keys=True) for p in data}, waves


@pytest.mark.slow
def test_each_problem_runs_as_alone_and_a_finished_tuning_shares_waves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two problems side by side: each gets exactly its results alone, in as many waves as
    the longer one alone, and a problem done tuning re-runs while the other still tunes."""
    # reddi fixes its lr (one tuning trial, no grid to extend); linreg's grid extends.
    pair = ("linreg", "reddi")
    together, waves = run_study(pair, monkeypatch)
    alone = [run_study((spec,), monkeypatch) for spec in pair]
    assert together == {**alone[0][0], **alone[1][0]}
    assert len(waves) == max(len(w) for _, w in alone)
    assert {("reddi", "final"), ("linreg", "tune")} <= waves[1], "re-runs beside tuning"
