"""The protocol's decisions on constructed cases: tuning on validation, grid edges, schedules,
search spaces, time-to-target and the effective learning rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptim
from adaptim.lab.curves import run_time_to_target, time_to_target
from adaptim.lab.effective_lr import EffectiveLrProbe
from adaptim.lab.executors import InProcessExecutor
from adaptim.lab.optimizers import VARIANTS, make_optimizer
from adaptim.lab.problems import PROBLEMS, BuildContext, Metric
from adaptim.lab.protocol import (
    EXTENSION,
    MAX_REACH_DECADES,
    OptunaTuner,
    StudyConfig,
    at_reach_limit,
    edge_side,
    extend_grid,
    fixed_hparams,
    reach,
)
from adaptim.lab.schedules import make_scheduler
from adaptim.lab.store import Store
from adaptim.lab.study import Study
from adaptim.lab.trial import Record, TrialResult, TrialSpec, run_trial

HERE = Path(__file__).parent
LOSS = Metric("loss", "min")


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def run_study(tmp_path: Path, **config: Any) -> Any:
    study = Study(
        StudyConfig(**config), Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), InProcessExecutor()
    )
    return study.run()


# ---------------------------------------------------------------- validation and test


def test_tuning_picks_by_validation_and_reports_test(tmp_path: Path) -> None:
    outcome = run_study(
        tmp_path,
        problems=("toyproblems:disagreeing_splits",),
        optimizers=("sgd",),
        seeds=2,
        budget=5,
    )
    (problem,) = outcome.problems
    (sgd,) = problem.outcomes
    by_validation = min(sgd.tuning, key=lambda t: t.score("gap", "validation") or math.inf)
    by_test = min(sgd.tuning, key=lambda t: t.score("gap", "test") or math.inf)
    assert by_validation.spec.hparams != by_test.spec.hparams  # the splits disagree...
    assert sgd.hparams == by_validation.spec.hparams  # ...and validation decides
    data = problem.to_json()
    assert data["metric"]["tuned_on"] == "validation"
    assert data["metric"]["reported_on"] == "test"
    (entry,) = data["optimizers"]
    for run_json, run in zip(entry["runs"], sgd.runs, strict=True):
        assert run_json["final"] == run.final and run_json["validation"] == run.validation
        assert run.final["gap"] != run.validation["gap"]
    # The reported summary is the test metric of the re-runs.
    assert entry["summary"]["mean"] == pytest.approx(
        sum(r.final["gap"] for r in sgd.runs) / len(sgd.runs)
    )
    assert all(t["validation"] is not None for t in entry["tuning"])
    # Time-to-target: the problem's fixed validation target, per seed, with the median.
    reached = data["time_to_target"]
    assert reached["target"] == 0.01 and reached["split"] == "validation"
    times = reached["optimizers"]["sgd"]
    assert len(times["steps"]) == len(times["wall_time"]) == 2
    assert data["fixed_hparams"] == {} and isinstance(data["grid_extensions"], list)


def test_score_defaults_to_validation_and_refuses_other_splits() -> None:
    spec = TrialSpec("p", "sgd", {"lr": 0.1}, 0, 1)
    result = TrialResult(spec, [], {"m": 1.0}, False, 0.0, 1, validation={"m": 2.0})
    assert result.score("m") == 2.0 and result.score("m", "test") == 1.0
    with pytest.raises(ValueError, match="split"):
        result.score("m", "train")  # type: ignore[arg-type]
    single = TrialResult(spec, [], {"m": 1.0}, False, 0.0, 1)
    assert single.validation == single.final


def test_old_stored_trials_without_validation_still_load(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    spec = TrialSpec("p", "sgd", {"lr": 0.1}, 0, 1)
    store.put(TrialResult(spec, [Record(0, None, {"m": 1.0}, 0.0)], {"m": 1.0}, False, 0.0, 1))
    from sqlalchemy import update

    from adaptim.lab.store import TrialRow

    with store._session() as session:  # a row as written before validation existed
        session.execute(update(TrialRow).values(info={"adaptim": "old"}))
    loaded = store.get(spec)
    assert loaded is not None and loaded.validation == loaded.final == {"m": 1.0}


# ---------------------------------------------------------------- grid edges


def tried(pairs: list[tuple[float, float | None]]) -> list[tuple[dict[str, Any], float | None]]:
    return [({"lr": lr}, value) for lr, value in pairs]


def test_an_edge_hit_extends_that_side_and_charges_everyone_alike() -> None:
    grid = [0.001, 0.01, 0.1, 1.0]
    at_top = tried([(lr, 1 / lr) for lr in grid])  # best (lowest) at the largest lr
    inside = tried([(lr, abs(math.log10(lr / 0.01))) for lr in grid])  # best at 0.01
    assert edge_side(LOSS, at_top) == "above" and edge_side(LOSS, inside) is None
    plan = extend_grid(LOSS, {"rmsprop": at_top, "adam": inside})
    assert plan["rmsprop"] == ("above", [10.0, 100.0])
    side, lrs = plan["adam"]
    assert side == "refine" and len(lrs) == EXTENSION
    assert {round(math.log10(lr), 2) for lr in lrs} == {-2.5, -1.5}  # halfway to each neighbour
    assert extend_grid(LOSS, {"adam": inside}) == {}  # no edge hit: nothing extra for anyone


def test_a_coarse_grid_extends_a_decade_a_rate_at_most() -> None:
    """A budget of 2 over four decades: the extension does not leap four decades a rate."""
    coarse = tried([(1e-4, 2.0), (1.0, 1.0)])  # best at the top
    assert extend_grid(LOSS, {"adam": coarse}) == {"adam": ("above", [10.0, 100.0])}
    coarse_low = tried([(1e-4, 1.0), (1.0, 2.0)])  # best at the bottom
    assert extend_grid(LOSS, {"adam": coarse_low}) == {"adam": ("below", [1e-5, 1e-6])}


def test_an_extension_stops_at_its_reach_beyond_the_declared_range() -> None:
    """Rounds of extension reach at most MAX_REACH_DECADES beyond the declared lr range:
    a coarse grid (or a metric that stays finite at any rate) no longer grows without end."""
    assert MAX_REACH_DECADES == 2
    low, high = VARIANTS["adam"].lr_range
    assert reach("adam") == reach("adam@keras") == (low / 100, high * 100) == (1e-6, 10.0)
    limits = {"adam": reach("adam"), "sgd": reach("sgd")}
    # Room for two decade steps: as before.
    grid = tried([(1e-4, 2.0), (1e-1, 1.0)])
    assert extend_grid(LOSS, {"adam": grid}, limits=limits) == {"adam": ("above", [1.0, 10.0])}
    # One decade of room left: the two new rates split it, the last on the limit.
    grid = tried([(1e-3, 2.0), (1.0, 1.0)])
    assert extend_grid(LOSS, {"adam": grid}, limits=limits) == {"adam": ("above", [3.16, 10.0])}
    grid = tried([(1e-5, 1.0), (1e-3, 2.0)])
    assert extend_grid(LOSS, {"adam": grid}, limits=limits) == {"adam": ("below", [3.16e-6, 1e-6])}
    # At the limit: no round for it alone; beside another one at an edge it refines (and
    # pays alike), and the lr is flagged as at the limit of the reach.
    capped = tried([(1.0, 2.0), (10.0, 1.0)])
    assert extend_grid(LOSS, {"adam": capped}, limits=limits) == {}
    other = tried([(0.01, 2.0), (0.1, 1.0)])
    plan = extend_grid(LOSS, {"adam": capped, "sgd": other}, limits=limits)
    assert plan["sgd"][0] == "above" and plan["adam"][0] == "refine"
    assert plan["adam"][1] == [4.64, 2.15]  # between the limit and the next rate in
    assert at_reach_limit("adam", 10.0) and at_reach_limit("adam", 1e-6)
    assert not at_reach_limit("adam", 1.0) and not at_reach_limit("not-an-optimizer", 10.0)


def test_a_diverged_top_extends_below_and_a_fixed_lr_is_left_alone() -> None:
    diverged_above = tried([(0.1, 1.0), (1.0, None), (10.0, None)])
    assert edge_side(LOSS, diverged_above) == "below"
    plan = extend_grid(
        LOSS, {"sgd": diverged_above, "adam": tried([(0.01, 1.0)])}, lr_fixed=["adam"]
    )
    assert plan == {"sgd": ("below", [0.01, 0.001])}


def test_a_study_extends_its_grid_at_an_edge_and_every_optimizer_pays(tmp_path: Path) -> None:
    # On the toy quadratic, plain SGD's best rate is at the top of a narrow grid.
    outcome = run_study(
        tmp_path,
        problems=("toyproblems:quadratic",),
        optimizers=("sgd", "adam"),
        seeds=1,
        budget=3,
        settings={},
    )
    (problem,) = outcome.problems
    assert problem.extensions, "the constructed case must hit an edge"
    counts = {o.name: len(o.tuning) for o in problem.outcomes}
    assert counts["sgd"] == counts["adam"] == 3 + EXTENSION * len(problem.extensions)


# ---------------------------------------------------------------- schedules


def test_schedule_is_in_the_trial_key_and_the_study_key() -> None:
    constant = TrialSpec("p", "sgd", {"lr": 0.1}, 0, 10)
    cosine = TrialSpec("p", "sgd", {"lr": 0.1}, 0, 10, schedule="cosine")
    assert constant.key() != cosine.key()
    base = StudyConfig(problems=("linreg",), optimizers=("sgd",))
    other = StudyConfig(problems=("linreg",), optimizers=("sgd",), schedule="cosine")
    assert base.key() != other.key()
    assert StudyConfig.from_json(other.to_json()) == other
    old = base.to_json()
    del old["schedule"]  # a study stored before schedules existed
    assert StudyConfig.from_json(old).schedule == "constant"


@pytest.mark.parametrize(
    ("name", "factor_at"),
    [
        ("constant", {1: 1.0, 50: 1.0, 100: 1.0}),
        ("cosine", {0: 1.0, 50: 0.5, 100: 0.0}),
        ("warmup-cosine", {0: 1 / 6, 5: 1.0, 100: 0.0}),
        ("step", {49: 1.0, 50: 0.1, 75: 0.01}),
    ],
)
def test_schedules_shape_the_learning_rate(name: str, factor_at: dict[int, float]) -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = adaptim.SGD([p], lr=1.0)
    scheduler = make_scheduler(name, optimizer, 100)
    seen = {0: optimizer.param_groups[0]["lr"]}
    for step in range(1, 101):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seen[step] = optimizer.param_groups[0]["lr"]
    for step, factor in factor_at.items():
        assert seen[step] == pytest.approx(factor, abs=1e-9), (step, seen[step])


def test_a_bad_schedule_is_one_clear_error() -> None:
    from adaptim.lab.errors import LabError

    with pytest.raises(LabError, match="unknown --schedule 'linear'"):
        StudyConfig(problems=("linreg",), optimizers=("sgd",), schedule="linear")


def test_a_cosine_trial_ends_with_a_zero_learning_rate() -> None:
    spec = TrialSpec("linreg", "sgd", {"lr": 0.1}, 0, 50, schedule="cosine")
    constant = run_trial(TrialSpec("linreg", "sgd", {"lr": 0.1}, 0, 50), PROBLEMS["linreg"])
    result = run_trial(spec, PROBLEMS["linreg"])
    last = result.records[-1].effective_lr
    assert last is not None and last["p50"] == pytest.approx(0.0, abs=1e-12)
    assert constant.records[-1].effective_lr["p50"] == pytest.approx(0.1)  # type: ignore[index]


# ---------------------------------------------------------------- search spaces


def test_every_variant_declares_a_space_that_starts_with_its_lr_range() -> None:
    for variant in VARIANTS.values():
        first = variant.space[0]
        assert (first.name, first.low, first.high) == ("lr", *variant.lr_range)
        for dimension in variant.space:
            for u in (0.0, 0.5, 1.0):
                value = dimension.from_unit(u)
                assert dimension.low <= value * (1 + 1e-3) and value <= dimension.high * (1 + 1e-3)
    names = {v.name: [d.name for d in v.space] for v in VARIANTS.values()}
    assert names["adam"] == ["lr", "beta2", "eps"]
    assert names["rmsprop"] == ["lr", "alpha", "eps"]
    assert names["momentum"] == ["lr", "momentum"]


def test_random_search_samples_the_declared_space_and_respects_fixed_values() -> None:
    tuner = OptunaTuner("adam", {"betas": (0.9, 0.99)}, 4, "random", LOSS)
    proposals = tuner.propose(4)
    assert len(proposals) == 4
    for hparams in proposals:
        assert set(hparams) == {"lr", "eps", "betas"}  # beta2 is fixed through betas
        optimizer = make_optimizer("adam", [torch.zeros(1, requires_grad=True)], hparams)
        assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    free = OptunaTuner("adam", {}, 2, "random", LOSS).propose(2)
    optimizer = make_optimizer("adam", [torch.zeros(1, requires_grad=True)], free[0])
    beta1, beta2 = optimizer.param_groups[0]["betas"]
    assert beta1 == 0.9 and 0.9 <= beta2 <= 0.9999 and beta2 == free[0]["beta2"]


def test_a_problem_fixes_its_hyperparameters_for_the_optimizers_that_have_them() -> None:
    config = StudyConfig(problems=("reddi",), optimizers=("adam", "sgd"))
    reddi = PROBLEMS["reddi"]
    assert fixed_hparams(config, "adam", reddi) == {"betas": (0.9, 0.99), "lr": 0.01}
    assert fixed_hparams(config, "sgd", reddi) == {"lr": 0.01}
    mine = StudyConfig(problems=("reddi",), optimizers=("adam",), settings={"adam": {"lr": 0.1}})
    assert fixed_hparams(mine, "adam", reddi)["lr"] == 0.1  # --set wins


# ---------------------------------------------------------------- time to target


def trial_with(values: list[float | None], diverged: bool = False) -> TrialResult:
    records = [Record(10 * i, None, {"loss": v}, wall_time=0.5 * i) for i, v in enumerate(values)]
    spec = TrialSpec("p", "sgd", {"lr": 0.1}, 0, 10 * len(values))
    return TrialResult(spec, records, {"loss": values[-1]}, diverged, 1.0, 1)


def test_time_to_target_is_per_seed_with_a_median_that_counts_misses_as_infinite() -> None:
    fast, slow, never = trial_with([5, 3, 1, 0.5]), trial_with([5, 4, 3, 1]), trial_with([5, 4])
    assert run_time_to_target(LOSS, fast, 1.0) == (20, 1.0)
    times = time_to_target(LOSS, [fast, slow, never], 1.0)
    assert times.steps == [20, 30, None] and times.wall_time == [1.0, 1.5, None]
    assert times.median_steps == 30 and times.median_wall_time == 1.5
    assert time_to_target(LOSS, [fast, never, never], 1.0).median_steps is None


# ---------------------------------------------------------------- effective learning rate


def test_effective_lr_masks_untouched_coordinates_and_reports_tensor_medians() -> None:
    used, unused = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))
    optimizer = adaptim.Adagrad([used, unused], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (used[:2].sum() + 0 * unused.sum()).backward()  # coordinates 2, 3 and unused never move
        optimizer.step()
    rates = EffectiveLrProbe(optimizer, 0)()
    assert rates is not None
    expected = 0.1 / (math.sqrt(3) + 1e-10)
    assert rates["p10"] == pytest.approx(expected) and rates["p90"] == pytest.approx(expected)
    assert rates["median:0"] == pytest.approx(expected) and rates["median:1"] is None
    assert rates["active"] == pytest.approx(2 / 7)


def test_effective_lr_counts_momentum_so_sgd_and_momentum_compare_alike() -> None:
    def probe(**kwargs: Any) -> dict[str, float | None]:
        p = torch.nn.Parameter(torch.ones(5))
        optimizer = adaptim.SGD([p], **kwargs)
        p.sum().backward()
        optimizer.step()
        rates = EffectiveLrProbe(optimizer, 0)()
        assert rates is not None
        return rates

    assert probe(lr=0.1)["p50"] == pytest.approx(0.1)
    assert probe(lr=0.01, momentum=0.9)["p50"] == pytest.approx(0.1)
    assert probe(lr=0.01, momentum=0.9, dampening=0.5)["p50"] == pytest.approx(0.05)


def test_wilson_adaptive_effective_lr_ignores_never_seen_samples() -> None:
    spec = TrialSpec("wilson", "adam", {"lr": 0.01}, 0, 20)
    result = run_trial(spec, PROBLEMS["wilson"], BuildContext())
    last = result.records[-1].effective_lr
    assert last is not None and last["active"] is not None and last["active"] < 0.5
    assert last["p90"] is not None and last["p90"] < 1e3  # not lr/eps = 1e6


def test_a_plateau_at_the_edge_is_not_an_edge_hit() -> None:
    plateau = tried([(0.01, 0.0), (0.1, 0.0), (1.0, 0.0)])  # every rate reaches zero error
    assert edge_side(LOSS, plateau) is None
    assert extend_grid(LOSS, {"sgd": plateau}) == {}
