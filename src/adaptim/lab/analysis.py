"""Analysis: pure functions from stored trials to summaries and a recommendation.

Statistics: the mean of the final main metric over the re-run seeds with a
two-sided 95% confidence interval from Student's t distribution. Two
optimizers are *statistically tied* when a t-test cannot tell their means
apart at the 5% level: paired over seeds when both ran the same seeds (every
optimizer sees the same data for a seed, so the pairing removes the problem's
seed-to-seed variation), Welch's otherwise. Among tied leaders the recommendation prefers the more *robust*
optimizer: the one whose good learning-rate range (see :func:`robustness`) is
wider.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from adaptim.lab.curves import effective_lr_decay, metric_curve, stall_step, steps_to_target
from adaptim.lab.problems.base import Metric
from adaptim.lab.trial import TrialResult


@dataclass(frozen=True)
class Summary:
    mean: float | None
    ci95: float | None
    n: int
    diverged: int

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": self.ci95, "n": self.n, "diverged": self.diverged}


@dataclass
class OptimizerOutcome:
    """One optimizer on one problem: its tuning sweep, chosen setting and re-runs."""

    name: str
    metric: Metric
    hparams: dict[str, Any]
    tuning: list[TrialResult]
    runs: list[TrialResult]
    summary: Summary = field(init=False)

    def __post_init__(self) -> None:
        # Reported results are on the test split (tuning used validation).
        self.summary = summarize([r.score(self.metric.name, "test") for r in self.runs])


@dataclass(frozen=True)
class Recommendation:
    optimizer: str | None
    hparams: dict[str, Any] | None
    reason: str
    tied_with: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "hparams": self.hparams,
            "reason": self.reason,
            "tied_with": list(self.tied_with),
        }


def summarize(values: Sequence[float | None], total: int | None = None) -> Summary:
    """Mean and 95% CI half-width of the finite values; runs without a value count as diverged."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    total = len(values) if total is None else total
    n = len(finite)
    if n == 0:
        return Summary(None, None, 0, total)
    mean = sum(finite) / n
    if n < 2:
        return Summary(mean, None, n, total - n)
    variance = sum((v - mean) ** 2 for v in finite) / (n - 1)
    half = float(stats.t.ppf(0.975, n - 1)) * math.sqrt(variance / n)
    return Summary(mean, half, n, total - n)


def tied(a: Mapping[int, float], b: Mapping[int, float]) -> bool:
    """Whether two optimizers' final scores (by seed) are indistinguishable at the 5% level.

    Every optimizer sees the same data and batches for a given seed, so when
    both ran the same seeds the test is *paired* (Student's t on the per-seed
    differences): the seed-to-seed variation of the problem cancels out.
    Otherwise Welch's unequal-variance t-test compares the two samples.
    """
    if len(a) < 2 or len(b) < 2:
        return list(a.values()) == list(b.values())
    if a.keys() == b.keys():
        differences = [a[seed] - b[seed] for seed in a]
        if max(differences) == min(differences):
            return differences[0] == 0
        return bool(stats.ttest_1samp(differences, 0.0).pvalue >= 0.05)
    x, y = list(a.values()), list(b.values())
    if max(x) == min(x) and max(y) == min(y):
        return x[0] == y[0]
    return bool(stats.ttest_ind(x, y, equal_var=False).pvalue >= 0.05)


def robustness(metric: Metric, tuning: Sequence[TrialResult]) -> float:
    """Width, in decades of learning rate, of the tuning settings scoring close to the best.

    "Close" means within 2% (relative) of the optimizer's best tuning score,
    and at least within 0.005 absolute for metrics in [0, 1] such as accuracy.
    Diverged runs never count.
    """
    scored = [
        (t.spec.hparams["lr"], t.score(metric.name)) for t in tuning if "lr" in t.spec.hparams
    ]
    finite = [(lr, s) for lr, s in scored if s is not None and math.isfinite(s)]
    if len(finite) < 2:
        return 0.0
    best = min(s for _, s in finite) if metric.goal == "min" else max(s for _, s in finite)
    tolerance = max(0.02 * abs(best), 0.005 if 0 <= best <= 1 else 0.0)
    good = [lr for lr, s in finite if abs(s - best) <= tolerance]
    return math.log10(max(good) / min(good)) if len(good) > 1 else 0.0


def _format(value: float) -> str:
    return f"{value:.4g}"


def recommend(metric: Metric, outcomes: Sequence[OptimizerOutcome]) -> Recommendation:
    """Which optimizer and setting to use, and why, from the re-run seeds."""
    alive = [o for o in outcomes if o.summary.mean is not None]
    if not alive:
        names = ", ".join(o.name for o in outcomes)
        return Recommendation(
            None,
            None,
            f"No recommendation: every optimizer diverged on every re-run seed ({names}). "
            "Try smaller learning rates with --set NAME.lr=..., or check the problem.",
        )

    def mean(o: OptimizerOutcome) -> float:
        assert o.summary.mean is not None
        return o.summary.mean

    # An optimizer that diverged on some seed never leads one that did not:
    # its mean covers only the seeds it survived.
    sign = -1.0 if metric.goal == "max" else 1.0
    ranked = sorted(alive, key=lambda o: (o.summary.diverged > 0, sign * mean(o)))
    leader = ranked[0]

    def finals(o: OptimizerOutcome) -> dict[int, float]:
        return {r.spec.seed: v for r in o.runs if (v := r.score(metric.name)) is not None}

    ties = [o for o in ranked[1:] if tied(finals(leader), finals(o))]
    chosen = leader
    how = ""
    if ties:
        contenders = [leader, *ties]
        widths = {o.name: robustness(metric, o.tuning) for o in contenders}
        target = speed_target(metric, contenders)
        speeds = {
            o.name: (
                None
                if target is None
                else steps_to_target(metric, metric_curve(metric, o.runs), target)
            )
            for o in contenders
        }

        def slowness(o: OptimizerOutcome) -> float:
            steps = speeds[o.name]
            return math.inf if steps is None else float(steps)

        # Robustness first, then speed to the target, then the better mean.
        chosen = max(contenders, key=lambda o: (widths[o.name], -slowness(o), -contenders.index(o)))
        rivals = ", ".join(f"{o.name} ({_describe(o)})" for o in contenders if o is not chosen)
        equally_fast = len({slowness(o) for o in contenders}) == 1
        if len(set(widths.values())) == 1 and not equally_fast:
            why = (
                f"equally robust ({widths[chosen.name]:.1f} decades of good lr each), "
                f"so the faster one wins: it reaches {metric.name} {_format(target or 0.0)} "
                f"at step {speeds[chosen.name]}"
                + "".join(
                    f" vs {'never' if speeds[o.name] is None else f'step {speeds[o.name]}'}"
                    f" for {o.name}"
                    for o in contenders
                    if o is not chosen
                )
            )
        elif len(set(widths.values())) == 1:
            why = f"equally robust ({widths[chosen.name]:.1f} decades of good lr each), so the better mean wins"
        else:
            why = (
                f"chosen for the widest good learning-rate range ({widths[chosen.name]:.1f} decades"
                + "".join(
                    f" vs {widths[o.name]:.1f} for {o.name}" for o in contenders if o is not chosen
                )
                + ")"
            )
        how = f" It is statistically tied with {rivals}; {why}."
    worst_div = [o.name for o in outcomes if o.summary.diverged]
    diverged = f" Diverged re-runs: {', '.join(worst_div)}." if worst_div else ""
    edge = [o.name for o in outcomes if o.summary.mean is not None and lr_at_edge(o)]
    if edge:
        diverged += (
            f" The chosen lr is at the edge of the searched range for {', '.join(edge)}:"
            " their best may lie outside it (try a value beyond it with --set NAME.lr=...)."
        )
    lr = chosen.hparams.get("lr")
    setting = f", lr {_format(lr)}" if isinstance(lr, (int, float)) else ""
    goal = "lowest" if metric.goal == "min" else "highest"
    reason = (
        f"{chosen.name}{setting}: {goal if chosen is leader else 'a tied-best'} mean {metric.name} "
        f"{_describe(chosen)}.{how}{diverged}"
    )
    tied_with = tuple(o.name for o in [leader, *ties] if o is not chosen) if ties else ()
    return Recommendation(chosen.name, dict(chosen.hparams), reason, tied_with)


def _describe(outcome: OptimizerOutcome) -> str:
    s = outcome.summary
    assert s.mean is not None
    spread = f" ± {s.ci95:.2g}" if s.ci95 is not None else ""
    seeds = f"{s.n} seed{'s' if s.n != 1 else ''}"
    return f"{_format(s.mean)}{spread}, {seeds}"


def lr_at_edge(outcome: OptimizerOutcome) -> bool:
    """Whether the chosen lr is the smallest or largest one tried: the best may lie outside the range."""
    tried = [t.spec.hparams["lr"] for t in outcome.tuning if "lr" in t.spec.hparams]
    chosen = outcome.hparams.get("lr")
    return len(set(tried)) > 1 and chosen in (min(tried), max(tried))


def outcome_json(metric: Metric, outcome: OptimizerOutcome) -> dict[str, Any]:
    """One optimizer's entry of ``results.json``."""
    return {
        "name": outcome.name,
        "hparams": outcome.hparams,
        "runs": [
            {
                "seed": r.spec.seed,
                "final": r.final,
                "diverged": r.diverged,
                "wall_time": r.wall_time,
            }
            for r in outcome.runs
        ],
        "summary": outcome.summary.to_json(),
        "tuning": [
            {"hparams": dict(t.spec.hparams), "score": t.score(metric.name), "diverged": t.diverged}
            for t in outcome.tuning
        ],
        "robustness_decades": robustness(metric, outcome.tuning),
        "lr_at_edge": lr_at_edge(outcome),
    }


def problem_json(
    name: str, metric: Metric, outcomes: Sequence[OptimizerOutcome], rec: Recommendation
) -> dict[str, Any]:
    return {
        "name": name,
        "metric": {"name": metric.name, "goal": metric.goal},
        "optimizers": [outcome_json(metric, o) for o in outcomes],
        "recommendation": rec.to_json(),
    }


# ---------------------------------------------------------------- speed and stalls


def speed_target(metric: Metric, outcomes: Sequence[OptimizerOutcome]) -> float | None:
    """The target of the time-to-target comparison: the second-best final mean.

    The best two optimizers both reach it, so the leader's head start is
    measured against a value the runner-up does reach (AlgoPerf fixes its
    targets the same way, from what a good baseline achieves). ``None`` when
    fewer than two optimizers finished every seed: there is nothing to race.
    """
    sign = 1.0 if metric.goal == "min" else -1.0
    means = sorted(
        sign * o.summary.mean
        for o in outcomes
        if o.summary.mean is not None and o.summary.diverged == 0
    )
    if len(means) < 2:
        return None
    return sign * means[1]


#: A stall is worth a sentence when it ends short of the recommendation by at least this share
#: of the stalled optimizer's own progress.
STALL_GAP = 0.05


def evidence(
    metric: Metric, outcomes: Sequence[OptimizerOutcome], rec: Recommendation
) -> list[str]:
    """Sentences that back the recommendation: how fast it gets there, and who stalls and why."""
    chosen = next((o for o in outcomes if o.name == rec.optimizer), None)
    if chosen is None:
        return []
    sentences = []
    curves = {o.name: metric_curve(metric, o.runs) for o in outcomes}
    target = speed_target(metric, outcomes)
    if target is not None:
        times = {o.name: steps_to_target(metric, curves[o.name], target) for o in outcomes}
        mine = times[chosen.name]
        others = [o for o in outcomes if o is not chosen and o.summary.mean is not None]
        reached = sorted(
            ((t, o.name) for o in others if (t := times[o.name]) is not None),
        )
        never = [o.name for o in outcomes if o is not chosen and times[o.name] is None]
        goal = f"{metric.name} {_format(target)} (the second-best final mean)"
        if mine is not None and reached:
            fastest_other, rival = reached[0]
            if mine < fastest_other:
                saving = 100 * (1 - mine / fastest_other)
                sentences.append(
                    f"{chosen.name} reaches {goal} at step {mine}, "
                    f"{saving:.0f}% fewer steps than {rival} (step {fastest_other})."
                )
            elif mine == fastest_other:
                sentences.append(f"{chosen.name} and {rival} reach {goal} at step {mine}.")
            else:
                sentences.append(
                    f"{rival} reaches {goal} first (step {fastest_other}; "
                    f"{chosen.name} at step {mine})."
                )
        elif mine is not None:
            sentences.append(f"{chosen.name} reaches {goal} at step {mine}.")
        if never:
            sentences.append(f"Never reached on average: {', '.join(never)}.")
    for o in outcomes:
        if o is chosen or o.name in rec.tied_with or o.summary.mean is None:
            continue
        stall = stall_step(metric, curves[o.name])
        curve = curves[o.name]
        if stall is None or chosen.summary.mean is None or not curve.mean:
            continue
        # Only a stall that costs something: it ends clearly short of the recommendation.
        gap = chosen.summary.mean - o.summary.mean
        if metric.goal == "min":
            gap = -gap
        if gap < STALL_GAP * abs(curve.mean[-1] - curve.mean[0]):
            continue
        decay = effective_lr_decay(o.runs)
        because = ""
        if decay is not None and decay[0] >= 10:
            because = (
                f" as its median effective learning rate decays {decay[0]:.0f}×"
                f" (from step {decay[1]} to step {decay[2]})"
            )
        sentences.append(
            f"{o.name} stalls after step {stall} at {metric.name} "
            f"{_format(o.summary.mean)}{because}."
        )
    return sentences
