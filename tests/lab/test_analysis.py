"""The recommendation logic: a clear winner, a statistical tie broken by robustness, all diverged."""

from __future__ import annotations

import math

import pytest

from adaptim.lab.analysis import OptimizerOutcome, recommend, robustness, summarize, tied
from adaptim.lab.problems.base import Metric
from adaptim.lab.trial import TrialResult, TrialSpec

ACCURACY = Metric("accuracy", "max")
LOSS = Metric("loss", "min")


def result(
    optimizer: str, lr: float, value: float | None, seed: int = 0, metric: str = "accuracy"
) -> TrialResult:
    spec = TrialSpec("toy", optimizer, {"lr": lr}, seed, 10, "tune" if seed == 0 else "final")
    return TrialResult(spec, [], {metric: value}, value is None, 1.0, 10)


def outcome(
    name: str,
    finals: list[float | None],
    sweep: dict[float, float | None],
    metric: Metric = ACCURACY,
) -> OptimizerOutcome:
    best_lr = max(
        (lr for lr, v in sweep.items() if v is not None),
        key=lambda lr: sweep[lr] or 0.0,
        default=1e-3,
    )
    return OptimizerOutcome(
        name=name,
        metric=metric,
        hparams={"lr": best_lr},
        tuning=[result(name, lr, v, metric=metric.name) for lr, v in sweep.items()],
        runs=[
            result(name, best_lr, v, seed=i + 1, metric=metric.name) for i, v in enumerate(finals)
        ],
    )


def test_summary_uses_student_t_interval() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == pytest.approx(2.0)
    # t(0.975, 2) = 4.302652..., sd = 1, n = 3
    assert s.ci95 == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert (s.n, s.diverged) == (3, 0)


def test_summary_counts_diverged_runs_and_handles_one_seed() -> None:
    s = summarize([0.5, None, float("nan")])
    assert (s.mean, s.ci95, s.n, s.diverged) == (0.5, None, 1, 2)
    assert summarize([None, None]).mean is None


def test_tied_detects_overlapping_and_separated_samples() -> None:
    assert tied({1: 0.90, 2: 0.91, 3: 0.92}, {1: 0.905, 2: 0.90, 3: 0.925})
    assert not tied({1: 0.90, 2: 0.91, 3: 0.92}, {1: 0.50, 2: 0.51, 3: 0.52})


def test_tied_pairs_scores_by_seed() -> None:
    # Seeds differ a lot (different data), but b beats a by 0.01 on every seed:
    # unpaired these overlap, paired the difference is clear.
    a = {1: 0.70, 2: 0.80, 3: 0.90, 4: 0.75}
    b = {seed: value + 0.01 + 0.001 * seed for seed, value in a.items()}
    assert not tied(a, b)
    assert tied({1: 0.7, 2: 0.8, 3: 0.9, 4: 0.75}, {11: 0.71, 12: 0.81, 13: 0.91, 14: 0.76})


def test_clear_winner_is_recommended_with_its_evidence() -> None:
    adam = outcome("adam", [0.95, 0.96, 0.955], {1e-3: 0.95, 1e-2: 0.90})
    sgd = outcome("sgd", [0.80, 0.81, 0.79], {1e-1: 0.80, 1.0: None})
    rec = recommend(ACCURACY, [sgd, adam])
    assert rec.optimizer == "adam"
    assert rec.hparams == {"lr": 1e-3}
    assert "highest mean accuracy 0.955" in rec.reason
    assert "3 seeds" in rec.reason
    assert rec.tied_with == ()


def test_statistical_tie_is_broken_by_the_wider_good_lr_range() -> None:
    # rmsprop has the (insignificantly) higher mean, but only one good lr;
    # adam is good over two decades of lr.
    rmsprop = outcome("rmsprop", [0.921, 0.90, 0.93], {1e-4: 0.5, 1e-3: 0.92, 1e-2: 0.3})
    adam = outcome("adam", [0.915, 0.905, 0.925], {1e-4: 0.91, 1e-3: 0.92, 1e-2: 0.915})
    rec = recommend(ACCURACY, [rmsprop, adam])
    assert rec.optimizer == "adam"
    assert rec.tied_with == ("rmsprop",)
    assert "statistically tied" in rec.reason
    assert "2.0 decades" in rec.reason


def test_every_optimizer_diverging_gives_an_honest_no_recommendation() -> None:
    a = outcome("adam", [None, None], {1e-3: None}, LOSS)
    b = outcome("sgd", [None, None], {1e-1: None}, LOSS)
    rec = recommend(LOSS, [a, b])
    assert rec.optimizer is None and rec.hparams is None
    assert rec.reason.startswith("No recommendation: every optimizer diverged")
    assert "adam, sgd" in rec.reason


def test_lower_is_better_metrics_pick_the_minimum() -> None:
    a = outcome("adam", [0.10, 0.11, 0.12], {1e-3: 0.1}, LOSS)
    b = outcome("sgd", [0.50, 0.52, 0.51], {1e-1: 0.5}, LOSS)
    rec = recommend(LOSS, [b, a])
    assert rec.optimizer == "adam"
    assert "lowest mean loss" in rec.reason


def test_robustness_ignores_diverged_settings() -> None:
    sweep = [
        result("adam", lr, v) for lr, v in {1e-4: 0.9, 1e-3: 0.91, 1e-2: None, 1e-1: 0.2}.items()
    ]
    assert robustness(ACCURACY, sweep) == pytest.approx(1.0)


def test_an_optimizer_that_diverged_on_a_seed_never_leads_a_clean_one() -> None:
    risky = outcome("risky", [0.10, None, None], {1e-1: 0.1}, LOSS)
    safe = outcome("safe", [0.20, 0.21, 0.19], {1e-2: 0.2}, LOSS)
    rec = recommend(LOSS, [risky, safe])
    assert rec.optimizer == "safe"
    assert "Diverged re-runs: risky" in rec.reason


def test_trial_keys_ignore_int_float_spelling_and_include_the_data_dir() -> None:
    a = TrialSpec("p", "adam", {"lr": 1, "betas": (0.9, 0.99)}, 0, 10)
    b = TrialSpec("p", "adam", {"lr": 1.0, "betas": [0.9, 0.99]}, 0, 10)
    assert a.key() == b.key()
    assert TrialSpec("p", "adam", {"lr": 1.0}, 0, 10, data="/data/a").key() != a.key()
