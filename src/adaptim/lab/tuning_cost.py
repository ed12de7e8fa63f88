"""The cost of tuning: steps spent finding a setting, against what the setting reached.

AlgoPerf's self-tuning ruleset (Dahl et al. 2023) charges an algorithm for
its tuning: a tuning-free optimizer (Prodigy, Schedule-Free, or
``adam-defaults``) runs once, a tuned one pays for every tuning run first.
Per optimizer, :func:`tuning_costs` counts the steps of its tuning runs and
of ``--search lr-find``'s range test, adds one training run at the chosen
setting (the compute to obtain one trained model), and pairs that with the
mean validation value of the re-runs. :func:`self_tuning` then sets each
tuning-free optimizer against the best tuned one: the share of its metric
reached, at what share of its compute. Kasimbeg et al. 2025 ("How far away
are truly hyperparameter-free learning algorithms?") found such defaults
trailing calibrated baselines; the numbers here say how it goes on the
user's own problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from adaptim.lab.problems.base import Metric
from adaptim.lab.recommendation import Recommendation, Relation, SelfTuning, TuningCost
from adaptim.lab.splits import decision_value

if TYPE_CHECKING:
    from adaptim.lab.analysis import OptimizerOutcome


def tuning_cost(
    metric: Metric, outcome: OptimizerOutcome, values: Mapping[int, float]
) -> TuningCost:
    """One optimizer's cost; ``values``: its re-runs' validation values by seed (a diverged seed
    already replaced by the worst value reached, as :func:`~adaptim.lab.analysis.seed_values`)."""
    range_steps = 0 if outcome.range_test is None else outcome.range_test.steps_done
    spent = range_steps
    best: float | None = None
    curve: list[tuple[int, float | None]] = []
    for trial in outcome.tuning:
        spent += trial.steps_done
        value = decision_value(trial, metric.name)
        if value is not None and (best is None or metric.better(value, best)):
            best = value
        curve.append((spent, best))
    runs = outcome.runs
    return TuningCost(
        optimizer=outcome.name,
        tuning_free=outcome.tuning_free,
        tuning_runs=len(outcome.tuning),
        range_test_steps=range_steps,
        tuning_steps=spent,
        # A diverged run stopped early but gave no trained model: it counts its full budget,
        # so divergence never looks like a saving.
        run_steps=sum(r.spec.steps if r.diverged else r.steps_done for r in runs) / len(runs)
        if runs
        else 0.0,
        value=sum(values.values()) / len(values) if values else None,
        best_so_far=tuple(curve),
        reruns=len(runs),
        diverged_runs=sum(1 for r in runs if r.diverged),
    )


def self_tuning(
    metric: Metric, costs: Sequence[TuningCost], rec: Recommendation
) -> list[SelfTuning]:
    """Each tuning-free optimizer against the tuned optimizer with the best validation mean."""
    tuned = [c for c in costs if not c.tuning_free and c.value is not None]
    if not tuned:
        return []
    # The best mean: largest for an accuracy, smallest for a loss.
    reference = max(tuned, key=lambda c: -_sign(metric) * (c.value or 0.0))
    assert reference.value is not None
    found = []
    for c in costs:
        if not c.tuning_free or c.value is None or reference.value == 0 or not c.total_steps:
            continue
        relation: Relation | None = None
        if rec.leader in (c.optimizer, reference.optimizer):
            other = reference.optimizer if rec.leader == c.optimizer else c.optimizer
            comparison = rec.comparison(other)
            relation = None if comparison is None else comparison.relation
        found.append(
            SelfTuning(
                optimizer=c.optimizer,
                reference=reference.optimizer,
                value=c.value,
                reference_value=reference.value,
                ratio=c.value / reference.value,
                compute=c.total_steps / reference.total_steps,
                relation=relation,
                runs=c.reruns,
                diverged_runs=c.diverged_runs,
            )
        )
    return found


def _sign(metric: Metric) -> float:
    return 1.0 if metric.goal == "min" else -1.0


def with_tuning_costs(
    metric: Metric,
    outcomes: Sequence[OptimizerOutcome],
    values: Mapping[str, Mapping[int, float]],
    rec: Recommendation,
) -> Recommendation:
    """``rec`` with every optimizer's tuning cost and the self-tuning findings filled in."""
    costs = tuple(tuning_cost(metric, o, values.get(o.name, {})) for o in outcomes)
    return replace(rec, costs=costs, self_tuning=tuple(self_tuning(metric, costs, rec)))
