"""--search lr-find's budget accounting and the self-tuning track (tuning-free variants)."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from adaptim._lr_find_cli import print_tuning_costs
from adaptim.lab import lr_find_trials
from adaptim.lab.errors import LabError
from adaptim.lab.executors import InProcessExecutor
from adaptim.lab.optimizers import VARIANTS
from adaptim.lab.problems import resolve_problem
from adaptim.lab.protocol import LrFindTuner, NoTuning, StudyConfig, make_tuner
from adaptim.lab.report import build_report
from adaptim.lab.store import Store
from adaptim.lab.study import Study, StudyOutcome

STEPS = 40


def _study(tmp_path, search: str, optimizers: tuple[str, ...]) -> StudyOutcome:  # type: ignore[no-untyped-def]
    config = StudyConfig(
        problems=("linreg",),
        optimizers=optimizers,
        seeds=2,
        max_seeds=2,
        steps=STEPS,
        budget=3,
        search=search,  # type: ignore[arg-type]
    )
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    return Study(config, store, InProcessExecutor()).run()


@pytest.fixture(scope="module")
def lr_find_study(tmp_path_factory):  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("lrfind")
    return directory, _study(directory, "lr-find", ("adam", "adam-defaults"))


@pytest.mark.slow
def test_lr_find_search_charges_the_range_test_and_runs_its_suggestions(lr_find_study) -> None:  # type: ignore[no-untyped-def]
    _, outcome = lr_find_study
    problem = outcome.problems[0]
    adam, defaults = problem.outcomes
    assert adam.range_test is not None
    found = lr_find_trials.range_test_of(adam.range_test)
    assert adam.range_test.steps_done == found.steps <= STEPS  # at most one trial's steps
    # --budget 3: the range test is one trial, the first two distinct suggestions two more.
    suggested = list(dict.fromkeys(float(f"{s.lr:.3g}") for s in found.suggestions))
    assert [t.spec.hparams["lr"] for t in adam.tuning] == suggested[:2]
    scores = {t.spec.hparams["lr"]: t.validation["mse"] for t in adam.tuning}
    assert adam.hparams["lr"] == min(scores, key=scores.__getitem__)
    assert not adam.lr_at_edge  # suggestions are not a grid
    costs = {c.optimizer: c for c in problem.recommendation.costs}
    spent = adam.range_test.steps_done + sum(t.steps_done for t in adam.tuning)
    assert costs["adam"].tuning_steps == spent <= 3 * STEPS  # within --budget 3 trials
    assert costs["adam"].range_test_steps == adam.range_test.steps_done
    assert costs["adam"].total_steps == spent + STEPS
    # The tuning-free baseline: no tuning run, Adam's published lr, the same re-run seeds.
    assert defaults.tuning == [] and defaults.range_test is None
    assert defaults.hparams == {"lr": 1e-3} and defaults.lr_fixed
    assert [r.spec.seed for r in defaults.runs] == [r.spec.seed for r in adam.runs]
    assert costs["adam-defaults"].tuning_steps == 0
    assert costs["adam-defaults"].total_steps == STEPS


@pytest.mark.slow
def test_self_tuning_finding_and_its_sentence(lr_find_study) -> None:  # type: ignore[no-untyped-def]
    _, outcome = lr_find_study
    problem = outcome.problems[0]
    rec = problem.recommendation
    (finding,) = rec.self_tuning
    costs = {c.optimizer: c for c in rec.costs}
    assert (finding.optimizer, finding.reference) == ("adam-defaults", "adam")
    assert finding.compute == pytest.approx(
        costs["adam-defaults"].total_steps / costs["adam"].total_steps
    )
    assert finding.ratio == pytest.approx(finding.value / finding.reference_value)
    means = {o.name: sum(r.validation["mse"] for r in o.runs) / 2 for o in problem.outcomes}
    assert finding.value == pytest.approx(means["adam-defaults"])
    saved = json.loads(json.dumps(problem.to_json()))
    adam_json, defaults_json = saved["optimizers"]
    assert [s["name"] for s in adam_json["range_test"]["suggestions"]] == [
        "valley",
        "steepest",
        "minimum/10",
    ]
    assert defaults_json["tuning_free"] and defaults_json["range_test"] is None
    data = saved["recommendation"]
    assert data["self_tuning"][0]["reference"] == "adam"
    assert {c["optimizer"] for c in data["tuning_costs"]} == {"adam", "adam-defaults"}
    html = build_report(outcome, "key")
    assert "Cost of tuning" in html and "none (defaults)" in html
    assert "range test + 2 runs" in html and "Range test: adam" in html
    assert "adam-defaults at its defaults ends at" in html
    console = Console(record=True, width=160)
    print_tuning_costs(console, problem)
    terminal = console.export_text()
    assert "linreg: the cost of tuning" in terminal and "none (defaults)" in terminal
    assert f"{costs['adam'].total_steps:,.0f}" in terminal
    assert "tuned adam&#x27;s validation mse" in html and "tuning included" in html


@pytest.mark.slow
def test_a_rerun_reuses_the_stored_range_test(lr_find_study, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def refuse(*args: object) -> None:
        raise AssertionError("the stored range test should have been reused")

    monkeypatch.setattr(lr_find_trials, "run_range_test", refuse)
    again = _study(lr_find_study[0], "lr-find", ("adam", "adam-defaults")).problems[0]
    assert again.outcomes[0].range_test is not None


@pytest.mark.slow
def test_grid_costs_count_every_tuning_run_and_no_cost_figure_without_self_tuning(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    outcome = _study(tmp_path, "grid", ("adam",))
    problem = outcome.problems[0]
    for o, c in zip(problem.outcomes, problem.recommendation.costs, strict=True):
        assert c.tuning_runs == len(o.tuning) >= 3
        assert c.tuning_steps == sum(t.steps_done for t in o.tuning)
        assert [s for s, _ in c.best_so_far][-1] == c.tuning_steps
    assert problem.recommendation.self_tuning == ()
    assert "Cost of tuning" not in build_report(outcome, "key")


def test_tuners_of_the_self_tuning_track() -> None:
    problem = resolve_problem("linreg")
    assert VARIANTS["adam-defaults"].tuning_free and not VARIANTS["adam"].tuning_free
    for search in ("grid", "lr-find", "tpe"):
        config = StudyConfig(("linreg",), ("adam-defaults",), search=search)  # type: ignore[arg-type]
        assert isinstance(make_tuner(config, "adam-defaults", problem), NoTuning)
    config = StudyConfig(("linreg",), ("adam",), search="lr-find", settings={"adam": {"lr": 0.01}})
    tuner = make_tuner(config, "adam", problem)
    assert isinstance(tuner, LrFindTuner) and not tuner.needs_range_test
    assert tuner.propose(1) == [{"lr": 0.01}] and tuner.propose(1) == []
    assert not tuner.needs_range_test
    tuner = LrFindTuner({"eps": 1e-6}, steps=500, budget=3)
    assert tuner.needs_range_test and tuner.range_steps == 100
    tuner.suggest([0.0012345, 0.00123, 0.25, 0.01])  # distinct at 3 digits, budget − 1 of them
    assert tuner.propose(1) == [{"eps": 1e-6, "lr": 0.00123}, {"eps": 1e-6, "lr": 0.25}]
    assert not tuner.needs_range_test and tuner.propose(1) == []
    with pytest.raises(LabError, match="--search lr-find needs --budget 2 or more, got 1"):
        StudyConfig(("linreg",), ("adam",), search="lr-find", budget=1)
    with pytest.raises(LabError, match="--search lr-find needs --steps 2 or more"):
        StudyConfig(("linreg",), ("adam",), search="lr-find", steps=1)
