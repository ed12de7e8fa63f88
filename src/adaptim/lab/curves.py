"""Curves: a metric over training, averaged over seeds, and what can be read off it.

Pure functions on stored trials: the mean curve with its spread, the step at
which a target is reached, each seed's time to the problem's fixed
validation target (AlgoPerf's time-to-result), where a curve stalls, how far
the effective learning rate decayed, and AlgoPerf's performance profile
across problems. The curves are validation curves (see :mod:`adaptim.lab.trial`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class TargetTimes:
    """Time-to-target of one optimizer: per seed, and the median over seeds.

    ``None`` for a seed that never reached the target (AlgoPerf counts it as
    infinite time); the median is ``None`` when half the seeds or more never
    reached it.
    """

    steps: list[int | None]
    wall_time: list[float | None]

    @property
    def median_steps(self) -> float | None:
        return _median_or_none(self.steps)

    @property
    def median_wall_time(self) -> float | None:
        return _median_or_none(self.wall_time)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "wall_time": self.wall_time,
            "median_steps": self.median_steps,
            "median_wall_time": self.median_wall_time,
        }


def _median_or_none(values: Sequence[float | None]) -> float | None:
    if not values:
        return None
    ordered = sorted(math.inf if v is None else float(v) for v in values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return median if math.isfinite(median) else None


def run_time_to_target(metric: Metric, run: TrialResult, target: float) -> tuple[int, float] | None:
    """The first recorded (step, training wall time) at which the run's validation metric
    reaches ``target``; ``None`` if it never does.

    As AlgoPerf defines time-to-result: the target is fixed per problem and
    checked on the validation split at each evaluation; the time is the
    training time up to that evaluation (evaluation itself excluded). It is
    resolved to the problem's evaluation interval. A run that diverged after
    reaching the target keeps its time.
    """
    for record in run.records:
        value = record.metrics.get(metric.name)
        if value is not None and (value == target or metric.better(value, target)):
            return record.step, record.wall_time
    return None


def time_to_target(metric: Metric, runs: Sequence[TrialResult], target: float) -> TargetTimes:
    """Per-seed times to ``target`` (in steps and in seconds of training) of ``runs``."""
    reached = [run_time_to_target(metric, run, target) for run in runs]
    return TargetTimes(
        steps=[r[0] if r else None for r in reached],
        wall_time=[r[1] if r else None for r in reached],
    )


def time_to_target_json(
    metric: Metric, target: float | None, runs: Mapping[str, Sequence[TrialResult]]
) -> dict[str, Any]:
    """``results.json``'s ``time_to_target`` of a problem: its fixed target and, per optimizer,
    the per-seed steps and wall times of its re-runs with their medians."""
    if target is None:
        return {"target": None, "split": "validation", "optimizers": {}}
    return {
        "target": target,
        "metric": metric.name,
        "split": "validation",
        "optimizers": {
            name: time_to_target(metric, seeds, target).to_json() for name, seeds in runs.items()
        },
    }
