"""Curves: a metric over training, averaged over seeds, and what can be read off it.

Pure functions on stored trials: the mean curve with its spread, the step at
which a target is reached, where a curve stalls, how far the effective
learning rate decayed, and AlgoPerf's performance profile across problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from adaptim.lab.problems.base import Metric
from adaptim.lab.trial import Record, TrialResult


@dataclass(frozen=True)
class Curve:
    """The mean of a metric over seeds at each recorded step (seeds that diverged left out)."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    wall_time: list[float]


def mean_curve(runs: Sequence[TrialResult], value_of: Callable[[Record], float | None]) -> Curve:
    """Mean, min and max over the runs that did not diverge, at the steps every one of them recorded.

    ``value_of`` picks the value of a record (a metric, the training loss);
    steps where some run has no finite value are left out.
    """
    alive = [r for r in runs if not r.diverged and r.records]
    if not alive:
        return Curve([], [], [], [], [])
    by_step = [{rec.step: rec for rec in r.records} for r in alive]
    common = sorted(set.intersection(*(set(b) for b in by_step)))
    curve = Curve([], [], [], [], [])
    for step in common:
        values = [value_of(b[step]) for b in by_step]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if len(finite) != len(values):
            continue
        curve.steps.append(step)
        curve.mean.append(sum(finite) / len(finite))
        curve.low.append(min(finite))
        curve.high.append(max(finite))
        curve.wall_time.append(sum(b[step].wall_time for b in by_step) / len(by_step))
    return curve


def metric_curve(metric: Metric, runs: Sequence[TrialResult]) -> Curve:
    return mean_curve(runs, lambda record: record.metrics.get(metric.name))


def steps_to_target(metric: Metric, curve: Curve, target: float) -> int | None:
    """The first step at which the mean curve reaches ``target`` (``None``: never)."""
    for step, value in zip(curve.steps, curve.mean, strict=True):
        if value == target or metric.better(value, target):
            return step
    return None


def effective_lr_decay(runs: Sequence[TrialResult]) -> tuple[float, int, int] | None:
    """How much the median effective learning rate fell: (factor, step of its peak, last step).

    Geometric mean over seeds of the p50 recorded at each step. ``None`` when
    the optimizer reports no effective rate.
    """
    curve = mean_curve(
        runs,
        lambda r: math.log(p50) if r.effective_lr and (p50 := r.effective_lr.get("p50")) else None,
    )
    if len(curve.steps) < 2:
        return None
    peak = max(range(len(curve.mean)), key=lambda i: curve.mean[i])
    factor = math.exp(curve.mean[peak] - curve.mean[-1])
    return factor, curve.steps[peak], curve.steps[-1]


def stall_step(metric: Metric, curve: Curve, share: float = 0.05) -> int | None:
    """The step after which the mean curve gains less than ``share`` of its total improvement.

    ``None`` when it never stalls before its last quarter (it was still learning).
    """
    if len(curve.steps) < 4:
        return None
    total = abs(curve.mean[-1] - curve.mean[0])
    if total == 0:
        return None
    for step, value in zip(curve.steps, curve.mean, strict=True):
        if abs(curve.mean[-1] - value) < share * total:
            return step if step <= 0.75 * curve.steps[-1] else None
    return None


def performance_profile(
    times: Mapping[str, Mapping[str, float | None]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """AlgoPerf's performance profile: for each optimizer and τ, the share of problems it solves
    within τ times the fastest optimizer's time on that problem.

    ``times[problem][optimizer]`` is the time to reach that problem's target
    (``None`` when never reached, which counts as never within any τ).
    Dolan & Moré 2002; Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms".
    """
    optimizers = sorted({o for per_problem in times.values() for o in per_problem})
    profile: dict[str, list[float]] = {o: [] for o in optimizers}
    for tau in taus:
        for o in optimizers:
            solved = 0
            for per_problem in times.values():
                reached = [t for t in per_problem.values() if t is not None]
                mine = per_problem.get(o)
                if reached and mine is not None and mine <= tau * min(reached):
                    solved += 1
            profile[o].append(solved / len(times) if times else 0.0)
    return profile
