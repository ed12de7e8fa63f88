"""Analysis: pure functions from stored trials to summaries and a *structured* recommendation.

The rules, in the order :func:`recommend` applies them (every comparison
uses the re-run seeds' values on the split that decides, validation; the
means and intervals the report shows use test):

1. **Divergence disqualifies.** An optimizer with any diverged re-run can be
   neither recommended nor tied-best. Inside every comparison a diverged
   seed scores as the worst finite value any optimizer reached on the
   problem, so its mean cannot hide behind the seeds it survived.
2. **The leader** is the optimizer without a diverged re-run whose mean is
   best.
3. **Each other optimizer is compared with the leader, paired by seed**
   (every optimizer sees the same data for a seed): the mean difference with
   its Student-t 95% CI, a two-sided paired t-test, Holm-adjusted over all
   the "leader better than X" claims made at once, and the probability of
   improvement P(leader beats X) of Agarwal et al. 2021 with a bootstrap
   interval. The leader is **better** than X when the Holm-adjusted p-value
   is at most the per-look level (5%, lowered by :func:`~adaptim.lab.stats.
   sequential_level` when adaptive seeding looked at the data several times).
   Otherwise X is **equivalent** when the TOST p-value for ``|difference| <
   margin`` is at most that level, and **not distinguishable** with this
   many seeds when neither holds (with the seeds a paired t-test would need
   to separate them at 80% power, from the observed difference and SD).
4. **Ties** (the leader and every optimizer shown *equivalent* to it) are
   broken by the width of the good learning-rate range in
   grid steps (:mod:`adaptim.lab.robustness`, on the tuning seed and the
   ``sweeps`` the study runs on a second seed; widths within one step are
   equal, and a range is not compared when an lr was fixed with ``--set``),
   then by the time to the speed target, then by the mean. An optimizer
   that is only *not distinguishable* is not tied: a secondary criterion
   may pick among optimizers whose primary metric was shown equal within
   the margin, never one whose difference is merely unresolved (a faster
   but possibly worse optimizer would otherwise win on speed). The leader
   then stays the choice (``Criterion.LEADING``) and the report gives the
   seeds that would settle it.

**Time-to-target** is AlgoPerf's (Dahl et al. 2023): the problem's fixed
validation target (:attr:`~adaptim.lab.problems.base.Problem.target`), each
re-run seed's first evaluation step at which its validation metric reaches
it, and the median over seeds (a seed that never reaches it counts as
infinite time). A problem without a fixed target races to the second-best
of the optimizers' worst final validation values instead (every seed of the
best two reaches it).

The records these rules read (:class:`OptimizerOutcome`, :class:`Summary`)
and their ``results.json`` form live in :mod:`adaptim.lab.outcomes`; they
stay importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from adaptim.lab import stats
from adaptim.lab.curves import TargetTimes, time_to_target
from adaptim.lab.outcomes import OptimizerOutcome, Summary, outcome_json, problem_json, summarize
from adaptim.lab.problems.base import Metric
from adaptim.lab.recommendation import (
    Comparison,
    Criterion,
    Margin,
    Policy,
    Recommendation,
    Relation,
    default_margin,
)
from adaptim.lab.robustness import WIDTH_SLACK, LrRange, lr_range, reference_value
from adaptim.lab.splits import decision_value
from adaptim.lab.tuning_cost import with_tuning_costs

__all__ = [
    "Comparison",
    "Criterion",
    "Margin",
    "OptimizerOutcome",
    "Policy",
    "Recommendation",
    "Relation",
    "Summary",
    "default_margin",
    "outcome_json",
    "problem_json",
    "recommend",
    "summarize",
]


def seed_values(
    metric: Metric, outcomes: Sequence[OptimizerOutcome]
) -> dict[str, dict[int, float]]:
    """Each optimizer's decision value by re-run seed, a diverged seed as the worst finite value
    any optimizer reached on the problem (empty when none finished)."""
    raw = {o.name: {r.spec.seed: decision_value(r, metric.name) for r in o.runs} for o in outcomes}
    finite = [v for by_seed in raw.values() for v in by_seed.values() if v is not None]
    if not finite:
        return {name: {} for name in raw}
    worst = max(finite) if metric.goal == "min" else min(finite)
    return {
        name: {s: worst if v is None else v for s, v in by_seed.items()}
        for name, by_seed in raw.items()
    }


def _mean(values: Mapping[int, float]) -> float:
    return sum(values.values()) / len(values)


def compare_to_leader(
    metric: Metric,
    leader: Mapping[int, float],
    others: Mapping[str, Mapping[int, float]],
    diverged: set[str],
    margin: float,
    level: float,
) -> list[Comparison]:
    """The leader against each other optimizer (see the module's rule 3)."""
    sign = 1.0 if metric.goal == "max" else -1.0
    partial: list[tuple[str, stats.PairedDifference | None, stats.Improvement | None]] = []
    for name, values in others.items():
        seeds = sorted(set(leader) & set(values))
        if not seeds:
            partial.append((name, None, None))
            continue
        paired = stats.paired_difference(
            [sign * leader[s] for s in seeds], [sign * values[s] for s in seeds]
        )
        improvement = stats.probability_of_improvement(
            [[sign * v for v in leader.values()]], [[sign * v for v in values.values()]]
        )
        partial.append((name, paired, improvement))
    # The family of "leader better than X" claims: every comparison with a test.
    tested = {i: d.p_value for i, (_, d, _) in enumerate(partial) if d and d.p_value is not None}
    adjusted = dict(zip(tested, stats.holm(list(tested.values())), strict=True))
    comparisons = []
    for i, (name, diff, poi) in enumerate(partial):
        p_holm = adjusted.get(i)
        tost = None if diff is None else stats.equivalence_p(diff, margin)
        if name in diverged:
            relation = Relation.DIVERGED
        elif diff is not None and p_holm is not None and p_holm <= level and diff.mean > 0:
            relation = Relation.BETTER
        elif tost is not None and tost <= level:
            relation = Relation.EQUIVALENT
        else:
            relation = Relation.INDISTINGUISHABLE
        comparisons.append(
            Comparison(
                optimizer=name,
                relation=relation,
                seeds=0 if diff is None else diff.n,
                difference=None if diff is None else diff.mean,
                low=None if diff is None else diff.low,
                high=None if diff is None else diff.high,
                p_value=None if diff is None else diff.p_value,
                p_holm=p_holm,
                equivalence_p=tost,
                improvement=None if poi is None else poi.probability,
                improvement_low=None if poi is None else poi.low,
                improvement_high=None if poi is None else poi.high,
                seeds_to_separate=(
                    None
                    if diff is None or relation is not Relation.INDISTINGUISHABLE
                    else stats.seeds_to_separate(diff.mean, diff.sd)
                ),
            )
        )
    return comparisons


def recommend(
    metric: Metric,
    outcomes: Sequence[OptimizerOutcome],
    policy: Policy | None = None,
    target: float | None = None,
) -> Recommendation:
    """Which optimizer and setting to use, and the evidence, from the re-run seeds.

    ``target`` is the problem's fixed validation target for time-to-target
    (``Problem.target``); without one, the second-best final validation mean.
    The recommendation also carries what each optimizer's tuning cost
    (:mod:`adaptim.lab.tuning_cost`).
    """
    rec = _recommend(metric, outcomes, policy, target)
    return with_tuning_costs(metric, outcomes, seed_values(metric, outcomes), rec)


def _recommend(
    metric: Metric,
    outcomes: Sequence[OptimizerOutcome],
    policy: Policy | None,
    target: float | None,
) -> Recommendation:
    policy = policy or Policy()
    values = seed_values(metric, outcomes)
    diverged = tuple(o.name for o in outcomes if o.diverged_runs)
    at_edge = tuple(o.name for o in outcomes if o.lr_at_edge)
    at_limit = tuple(o.name for o in outcomes if o.lr_at_limit)
    lr_fixed = tuple(o.name for o in outcomes if o.lr_fixed)
    clean = [o for o in outcomes if o.runs and not o.diverged_runs and values[o.name]]
    if not clean:
        return Recommendation(
            None,
            None,
            Criterion.NONE,
            diverged=diverged,
            at_edge=at_edge,
            at_limit=at_limit,
            lr_fixed=lr_fixed,
        )
    race = speed_target(metric, outcomes, target)
    times = target_times(metric, outcomes, race)
    speeds = {name: t.median_steps for name, t in times.items()}
    sign = 1.0 if metric.goal == "max" else -1.0
    leader = max(clean, key=lambda o: sign * _mean(values[o.name]))
    margin = policy.margin_for(metric)
    margin_absolute = margin.absolute(_mean(values[leader.name]))
    level = policy.level()
    others = {o.name: values[o.name] for o in outcomes if o is not leader and values[o.name]}
    comparisons = compare_to_leader(
        metric, values[leader.name], others, set(diverged), margin_absolute, level
    )
    tied = {c.optimizer for c in comparisons if c.relation is Relation.EQUIVALENT}
    unresolved = any(c.relation is Relation.INDISTINGUISHABLE for c in comparisons)
    contenders = [leader, *(o for o in clean if o.name in tied)]
    if len(clean) == 1:
        standing = Criterion.UNCONTESTED
    else:
        standing = Criterion.LEADING if unresolved else Criterion.SEPARATED
    untied = Recommendation(
        leader.name,
        dict(leader.hparams),
        standing,
        leader=leader.name,
        comparisons=tuple(comparisons),
        contenders=tuple(o.name for o in contenders),
        margin=margin,
        margin_absolute=margin_absolute,
        level=level,
        diverged=diverged,
        at_edge=at_edge,
        at_limit=at_limit,
        lr_fixed=lr_fixed,
        speeds=speeds,
        target=race,
        target_fixed=race is not None and target is not None,
    )
    if len(contenders) == 1:
        return untied
    chosen, decided, eliminated, ranges = break_tie(
        metric, contenders, outcomes, {o.name: _mean(values[o.name]) for o in contenders}, speeds
    )
    return replace(
        untied,
        optimizer=chosen.name,
        hparams=dict(chosen.hparams),
        decided_by=decided,
        eliminated=eliminated,
        lr_ranges=ranges,
    )


def break_tie(
    metric: Metric,
    contenders: Sequence[OptimizerOutcome],
    outcomes: Sequence[OptimizerOutcome],
    means: Mapping[str, float],
    speeds: Mapping[str, float | None],
) -> tuple[OptimizerOutcome, Criterion, dict[str, Criterion], dict[str, LrRange]]:
    """Robustness first (unless an lr was fixed), then speed to the target (``speeds``: the
    median steps of each optimizer, ``None`` when it does not reach it), then the mean."""
    reference = reference_value(metric, [o.tuning for o in outcomes])
    ranges = {
        o.name: lr_range(metric, [*o.tuning, *o.sweeps], reference, o.lr_fixed) for o in contenders
    }
    eliminated: dict[str, Criterion] = {}
    remaining = list(contenders)

    def keep(criterion: Criterion, survivors: list[OptimizerOutcome]) -> None:
        for o in remaining:
            if o not in survivors:
                eliminated[o.name] = criterion
        remaining[:] = survivors

    if not any(r.fixed for r in ranges.values()):
        widest = max(ranges[o.name].steps or 0 for o in remaining)
        keep(
            Criterion.LR_RANGE,
            [o for o in remaining if (ranges[o.name].steps or 0) >= widest - WIDTH_SLACK],
        )
    if len(remaining) > 1:

        def slowness(o: OptimizerOutcome) -> float:
            steps = speeds.get(o.name)
            return math.inf if steps is None else float(steps)

        fastest = min(slowness(o) for o in remaining)
        if math.isfinite(fastest):
            keep(Criterion.SPEED, [o for o in remaining if slowness(o) == fastest])
    sign = 1.0 if metric.goal == "max" else -1.0
    if len(remaining) > 1:
        best = max(remaining, key=lambda o: sign * means[o.name])
        keep(Criterion.MEAN, [best])
    chosen = remaining[0]
    decided = eliminated[max(eliminated, key=lambda n: list(Criterion).index(eliminated[n]))]
    return chosen, decided, eliminated, ranges


# ----------------------------------------------------------------- speed


def speed_target(
    metric: Metric, outcomes: Sequence[OptimizerOutcome], fixed: float | None = None
) -> float | None:
    """The validation target of the time-to-target comparison.

    The problem's fixed target (``fixed``, AlgoPerf's way) when it has one.
    Otherwise, among the optimizers without a diverged re-run, the second-best
    of their worst final validation values: every seed of the best two
    reaches it, so the leader's head start is measured against a value each
    of the runner-up's seeds does reach (a mean would be missed by about half
    of them, and their median time would be "never"). ``None`` when fewer than
    two optimizers finished every seed, as there is nothing to race.
    """
    if fixed is not None:
        return fixed
    sign = 1.0 if metric.goal == "min" else -1.0
    worst = []
    for o in outcomes:
        found = [decision_value(r, metric.name) for r in o.runs]
        finite = [v for v in found if v is not None]
        if finite and len(finite) == len(found):
            worst.append(max(sign * v for v in finite))
    if len(worst) < 2:
        return None
    return sign * sorted(worst)[1]


def target_times(
    metric: Metric, outcomes: Sequence[OptimizerOutcome], target: float | None
) -> dict[str, TargetTimes]:
    """Each optimizer's per-seed times to ``target`` on its re-runs' validation curves (AlgoPerf),
    with their medians; empty without a target."""
    if target is None:
        return {}
    return {o.name: time_to_target(metric, o.runs, target) for o in outcomes if o.runs}
