"""SGD-HD and Adam-HD in the lab: their rate as the trial reports it."""

from __future__ import annotations

import pytest
from toyproblems import quadratic

from adaptim.lab.trial import TrialSpec, run_trial


def _median_rate(optimizer: str, hparams: dict[str, float]) -> float:
    problem = quadratic()
    result = run_trial(TrialSpec(problem.name, optimizer, hparams, 0, 20), problem)
    rates = result.records[-1].effective_lr
    assert rates is not None and rates["p50"] is not None
    return rates["p50"]


def test_heavy_ball_sgd_hd_reports_the_gain_of_its_momentum_like_sgd() -> None:
    """Its momentum is a heavy ball (unlike Schedule-Free's averaging weight): lr/(1 − μ)."""
    fixed = {"lr": 0.01, "momentum": 0.9, "hypergrad_lr": 0.0}
    assert _median_rate("sgd-hd", fixed) == pytest.approx(0.1)
    assert _median_rate("sgd-hd", fixed) == _median_rate("momentum", {"lr": 0.01})


@pytest.mark.parametrize("name", ["sgd-hd", "adam-hd"])
def test_the_reported_rate_follows_alpha(name: str) -> None:
    """At the paper's defaults α moves from α₀; the rate the trial records moves with it."""
    hypergrad_lr = {"sgd-hd": 0.1, "adam-hd": 1e-3}[name]
    still = _median_rate(name, {"hypergrad_lr": 0.0})
    moving = _median_rate(name, {"hypergrad_lr": hypergrad_lr})
    assert moving != pytest.approx(still, rel=1e-3)


def test_a_schedule_rescales_the_learned_rate() -> None:
    """torch's schedulers rescale the group's lr, which for SGD-HD is the current α."""
    problem = quadratic()
    spec = TrialSpec(problem.name, "sgd-hd", {"lr": 0.05}, 0, 20, schedule="cosine")
    constant = TrialSpec(problem.name, "sgd-hd", {"lr": 0.05}, 0, 20)
    decayed, kept = (run_trial(s, problem).records[-1].effective_lr for s in (spec, constant))
    assert decayed is not None and kept is not None
    assert decayed["p50"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    assert kept["p50"] != pytest.approx(0.05)
