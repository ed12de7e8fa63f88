"""Mechanic in the lab: a trial end to end, its measured state, and Adam's hyperparameters."""

from __future__ import annotations

import math

import pytest
import torch
from toyproblems import quadratic

import adaptim
from adaptim.lab.errors import LabError
from adaptim.lab.optimizers import make_optimizer, parse_settings, state_bytes_per_parameter
from adaptim.lab.trial import TrialSpec, run_trial


def test_trial_runs_and_learns_a_scale() -> None:
    problem = quadratic()
    result = run_trial(TrialSpec(problem.name, "mechanic-adam", {}, 0, 60), problem)
    assert not result.diverged
    assert math.isfinite(result.final["loss"])
    first = result.records[1].effective_lr  # (records[0] is before the first step)
    last = result.records[-1].effective_lr
    assert first is not None and last is not None
    assert last["p50"] is not None and first["p50"] is not None
    assert last["p50"] > first["p50"]  # the scale grows from s_init


def test_state_is_mechanics_and_adams() -> None:
    """x_ref and D (8 bytes per float32 parameter) on top of Adam's 8."""
    assert state_bytes_per_parameter("mechanic-adam") == pytest.approx(16, abs=0.01)


def test_hyperparameters_are_adams() -> None:
    optimizer = make_optimizer(
        "mechanic-adam", [torch.zeros(2, requires_grad=True)], {"beta2": 0.99}
    )
    assert isinstance(optimizer, adaptim.Mechanic)
    assert isinstance(optimizer.base, adaptim.Adam)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    assert parse_settings(["mechanic-adam.eps=1e-6"], ["mechanic-adam"]) == {
        "mechanic-adam": {"eps": 1e-6}
    }
    with pytest.raises(LabError, match="s_init"):
        parse_settings(["mechanic-adam.s_init=1e-6"], ["mechanic-adam"])
