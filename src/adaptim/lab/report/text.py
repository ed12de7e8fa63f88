"""The sentences of a recommendation, written from the analysis' structured data.

The page and the terminal both print these; nothing parses them back.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaptim.lab.analysis import (
    Comparison,
    Criterion,
    OptimizerOutcome,
    Recommendation,
    Relation,
)
from adaptim.lab.curves import effective_lr_decay, metric_curve, stall_step
from adaptim.lab.problems.base import Metric
from adaptim.lab.protocol import MAX_REACH_DECADES
from adaptim.lab.report.numbers import ci_decimals, lr_text, with_ci
from adaptim.lab.report.numbers import number as number  # callers import it from here
from adaptim.lab.robustness import GOOD_SHARE, LrRange
from adaptim.lab.splits import has_validation

#: A stall is worth a sentence when it ends short of the recommendation by at least this share
#: of the stalled optimizer's own progress.
STALL_GAP = 0.05


def seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def steps_text(steps: float | None) -> str:
    """A median number of steps (``30``, ``25.5``), or ``never``."""
    return "never" if steps is None else f"{steps:g}"


def target_text(metric: Metric, rec: Recommendation) -> str:
    """``accuracy 0.96 (the problem's validation target)``: what time-to-target races to."""
    assert rec.target is not None
    source = (
        "the problem's validation target"
        if rec.target_fixed
        else "reached by every seed of the best two"
    )
    return f"{metric.name} {number(rec.target)} ({source})"


def raw_difference(metric: Metric, c: Comparison) -> tuple[float, float | None, float | None]:
    """The comparison as ``other - leader`` in the metric's own units, with its CI."""
    if c.difference is None:
        raise ValueError("no common seed")
    if metric.goal == "min":
        return c.difference, c.low, c.high
    return (
        -c.difference,
        None if c.high is None else -c.high,
        None if c.low is None else -c.low,
    )


def difference_text(metric: Metric, c: Comparison) -> str:
    """``-0.012 [-0.03, 0.006]``: the other minus the leader, with its paired 95% CI."""
    if c.difference is None:
        return "–"
    mean, low, high = raw_difference(metric, c)
    if low is None or high is None:
        return f"{mean:+.3g}"
    decimals = ci_decimals((high - low) / 2, mean, low, high)
    if decimals is None:
        return f"{mean:+.3g} [{low:+.2g}, {high:+.2g}]"
    # All three to the precision the interval supports: "+1.601 [+1.580, +1.622]", never
    # "+1.6 [+1.6, +1.6]".
    return f"{mean:+.{decimals}f} [{low:+.{decimals}f}, {high:+.{decimals}f}]"


def margin_text(rec: Recommendation) -> str:
    assert rec.margin is not None and rec.margin_absolute is not None
    if rec.margin.relative:
        return f"±{rec.margin_absolute:.3g} ({100 * rec.margin.value:g}% of the leader's mean)"
    return f"±{rec.margin_absolute:.3g}"


def level_text(rec: Recommendation) -> str:
    """The per-look level, e.g. "1.2% per-look" (lowered for adaptive seeding) or "5%"."""
    per_look = " per-look" if rec.level < 0.05 else ""
    return f"{100 * rec.level:.2g}%{per_look}"


def status(rec: Recommendation, name: str) -> str:
    """A one-word standing for the ranking table."""
    if name == rec.optimizer:
        return "recommended"
    if name == rec.leader:
        return "leader, tied"
    c = rec.comparison(name)
    if c is None:
        return "diverged" if name in rec.diverged else "–"
    return {
        Relation.BETTER: "worse",
        Relation.EQUIVALENT: "equivalent",
        Relation.INDISTINGUISHABLE: "not distinguishable",
        Relation.DIVERGED: "diverged",
    }[c.relation]


def on_test(metric: Metric, split: bool) -> str:
    """The metric's name as reported: "test loss" when a validation split decided."""
    return f"test {metric.name}" if split and not metric.name.startswith("test") else metric.name


def headline(metric: Metric, rec: Recommendation, outcomes: Sequence[OptimizerOutcome]) -> str:
    if rec.optimizer is None:
        names = ", ".join(f"{o.name} {o.diverged_runs}/{len(o.runs)}" for o in outcomes)
        return (
            "No recommendation: every optimizer diverged on at least one re-run seed "
            f"({names}). Try smaller learning rates with --set NAME.lr=..., or check the problem."
        )
    chosen = next(o for o in outcomes if o.name == rec.optimizer)
    lr = chosen.hparams.get("lr")
    setting = f", lr {lr_text(lr)}" if isinstance(lr, (int, float)) else ""
    s = chosen.summary
    mean, spread = with_ci(s.mean, s.ci95)
    value = f"{mean}{'' if spread == '–' else ' ' + spread} ({seeds(s.n)})"
    split = has_validation(r for o in outcomes for r in o.runs)
    goal = "lowest" if metric.goal == "min" else "highest"
    rank = {
        Criterion.UNCONTESTED: "mean",
        Criterion.SEPARATED: f"{goal} mean",
        Criterion.LEADING: f"{goal} mean",
    }.get(rec.decided_by, "a tied-best mean")
    unresolved = [c.optimizer for c in rec.comparisons if c.relation is Relation.INDISTINGUISHABLE]
    why = {
        Criterion.UNCONTESTED: (
            "the only optimizer compared"
            if not rec.comparisons
            else "the only optimizer that finished every re-run seed"
        ),
        Criterion.SEPARATED: "better than every other optimizer (paired by seed, Holm-adjusted)",
        Criterion.LEADING: (
            f"not separated from {', '.join(unresolved)} with these seeds but not shown "
            "equivalent either, so the better mean stands"
        ),
        Criterion.LR_RANGE: "chosen among the tied for its wider good learning-rate range",
        Criterion.SPEED: "chosen among the tied as the fastest to the target",
        Criterion.MEAN: "chosen among the tied for the better mean",
    }[rec.decided_by]
    if split:  # the rank is on validation, the number on test
        return f"{chosen.name}{setting}: {rank} on validation, {why}; {on_test(metric, split)} {value}."
    return f"{chosen.name}{setting}: {rank} {metric.name} {value}, {why}."


def comparison_sentence(metric: Metric, rec: Recommendation, c: Comparison) -> str:
    leader = rec.leader
    diff = difference_text(metric, c)
    poi = (
        ""
        if c.improvement is None
        else f"; P({leader} beats {c.optimizer}) = {c.improvement:.2f} "
        f"[{c.improvement_low:.2f}, {c.improvement_high:.2f}]"
    )
    paired = f"{c.optimizer} − {leader} = {diff} (paired by seed, {seeds(c.seeds)}{poi})"
    if c.relation is Relation.DIVERGED:
        return (
            f"{c.optimizer} diverged on a re-run seed, so it can be neither recommended nor "
            f"tied-best; scoring its diverged seeds as the worst value reached, {paired}."
        )
    if c.relation is Relation.BETTER:
        small = (
            f", by less than the equivalence margin {margin_text(rec)}"
            if c.difference is not None and abs(c.difference) < (rec.margin_absolute or 0.0)
            else ""
        )
        return (
            f"{leader} is better than {c.optimizer}{small}: {paired}, "
            f"Holm-adjusted p = {c.p_holm:.2g}."
        )
    if c.relation is Relation.EQUIVALENT:
        return (
            f"{c.optimizer} is equivalent to {leader} within {margin_text(rec)}: {paired}, "
            f"TOST p = {c.equivalence_p:.2g}."
        )
    if c.seeds_to_separate is None:
        more = "no number of seeds would separate them at the observed difference"
    else:
        more = (
            f"about {c.seeds_to_separate} seeds would separate them "
            "(80% power at the observed difference)"
        )
    test = (
        ""
        if c.p_holm is None
        else f", Holm-adjusted p = {c.p_holm:.2g} above the {level_text(rec)} level"
    )
    return (
        f"{c.optimizer} and {leader} are not distinguishable with {seeds(c.seeds)}: "
        f"{paired}{test}; {more}."
    )


def range_text(r: LrRange, with_span: bool = True) -> str:
    """``3 steps (0.001–0.1)``, or "lr fixed" (with --set or by the problem)."""
    if r.fixed:
        return "lr fixed"
    if r.steps is None or r.low is None or r.high is None:
        return "–"
    steps = f"{r.steps} step{'s' if r.steps != 1 else ''}"
    if not with_span:
        return steps
    span = lr_text(r.low) if r.low == r.high else f"{lr_text(r.low)}–{lr_text(r.high)}"
    return f"{steps} ({span})"


def tie_sentences(metric: Metric, rec: Recommendation) -> list[str]:
    """How the tie among the contenders was broken, criterion by criterion."""
    if len(rec.contenders) < 2:
        return []
    names = ", ".join(rec.contenders)
    out = [
        f"Tied: {names}. Ties are broken by the good learning-rate range, then speed, then the mean."
    ]
    ranges = rec.lr_ranges
    fixed = [n for n in rec.contenders if ranges[n].fixed]
    listing = ", ".join(f"{n} {range_text(ranges[n])}" for n in rec.contenders)
    measured = min(ranges[n].seeds for n in rec.contenders)
    good = (
        f"rates that get {100 * (1 - GOOD_SHARE):g}% of the way from the initial value to the "
        f"best, in contiguous grid steps, on {seeds(measured)}"
    )
    if fixed:
        out.append(
            f"Good learning-rate range not compared: the lr of {', '.join(fixed)} was fixed "
            f"with --set or by the problem, or is a tuning-free optimizer's default ({listing})."
        )
    else:
        cut = [n for n, c in rec.eliminated.items() if c is Criterion.LR_RANGE]
        if cut:
            out.append(
                f"Good learning-rate range ({good}): {listing}; more than one step narrower: "
                f"{', '.join(cut)}."
            )
        else:
            out.append(
                f"Good learning-rate ranges ({good}) within one step of each other ({listing}): "
                "equally robust."
            )
    racers = [n for n in rec.contenders if rec.eliminated.get(n) is not Criterion.LR_RANGE]
    if rec.decided_by in (Criterion.SPEED, Criterion.MEAN) and rec.target is not None:
        times = ", ".join(
            f"{n} {'never' if rec.speeds.get(n) is None else f'step {steps_text(rec.speeds[n])}'}"
            for n in racers
        )
        verdict = (
            "the fastest wins"
            if rec.decided_by is Criterion.SPEED
            else "equally fast, so the better mean wins"
        )
        out.append(
            f"Median steps over the seeds to reach {target_text(metric, rec)}: {times}; {verdict}."
        )
    elif rec.decided_by is Criterion.MEAN:
        out.append("No speed target, so the better mean wins.")
    return out


def evidence(
    metric: Metric, rec: Recommendation, outcomes: Sequence[OptimizerOutcome]
) -> list[str]:
    """The points below the headline: comparisons, the tie-break, speed, stalls, edges."""
    if rec.optimizer is None:
        return _edges(rec)
    out = [comparison_sentence(metric, rec, c) for c in rec.comparisons]
    out += tie_sentences(metric, rec)
    if len(rec.contenders) < 2:
        out += _speed(rec, metric)
    out += _stalls(metric, rec, outcomes)
    out += _edges(rec)
    return out


def _edges(rec: Recommendation) -> list[str]:
    if not rec.at_edge:
        return []
    out = [
        f"The chosen lr is at the edge of the searched range for {', '.join(rec.at_edge)}: "
        "the best rate may lie outside the range (try one beyond it with --set NAME.lr=...)."
    ]
    if rec.at_limit:
        out.append(
            f"For {', '.join(rec.at_limit)} that edge is as far as the lab extends a grid "
            f"({MAX_REACH_DECADES} decades beyond the range `adaptim optimizers` declares): "
            "the optimum may lie further out than the lab looked."
        )
    return out


def _speed(rec: Recommendation, metric: Metric) -> list[str]:
    """AlgoPerf's time-to-target of the recommendation against the fastest other optimizer:
    median steps over the re-run seeds to the validation target."""
    if rec.target is None or rec.optimizer is None:
        return []
    times = rec.speeds
    mine = times.get(rec.optimizer)
    others = [n for n in times if n != rec.optimizer]
    reached = sorted((t, n) for n in others if (t := times[n]) is not None)
    never = [n for n in others if times[n] is None]
    goal = target_text(metric, rec)
    out = []
    if mine is not None and reached:
        fastest_other, rival = reached[0]
        if mine < fastest_other:
            saving = 100 * (1 - mine / fastest_other)
            out.append(
                f"{rec.optimizer} reaches {goal} at step {steps_text(mine)} (median over seeds), "
                f"{saving:.0f}% fewer steps than {rival} (step {steps_text(fastest_other)})."
            )
        elif mine == fastest_other:
            out.append(
                f"{rec.optimizer} and {rival} reach {goal} at step {steps_text(mine)} "
                "(median over seeds)."
            )
        else:
            out.append(
                f"{rival} reaches {goal} first (step {steps_text(fastest_other)}; "
                f"{rec.optimizer} at step {steps_text(mine)}; medians over seeds)."
            )
    elif mine is not None:
        out.append(
            f"{rec.optimizer} reaches {goal} at step {steps_text(mine)} (median over seeds)."
        )
    else:
        out.append(f"{rec.optimizer} does not reach {goal} on most seeds.")
    if never:
        out.append(f"Not reached on most seeds: {', '.join(never)}.")
    return out


def _stalls(metric: Metric, rec: Recommendation, outcomes: Sequence[OptimizerOutcome]) -> list[str]:
    chosen = next(o for o in outcomes if o.name == rec.optimizer)
    out = []
    for o in outcomes:
        if o is chosen or o.name in rec.tied_with or o.summary.mean is None:
            continue
        curve = metric_curve(metric, o.runs)
        stall = stall_step(metric, curve)
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
        out.append(
            f"{o.name} stalls after step {stall} at {metric.name} {number(o.summary.mean)}{because}."
        )
    return out
