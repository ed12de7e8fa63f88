"""How forgiving an optimizer is: the width of its good learning-rate range, in grid steps.

A tuned learning rate is **good** when its final value (on the split that
decides, validation) gets at least ``1 - GOOD_SHARE`` (98%) of the way from
the reference value (the metric before training, step 0) to the optimizer's
best value in the sweep. Measured this way, a loss with a high floor (the
noisy quadratic's ~84) does not make every learning rate "good", as a rule
relative to the best value alone would.

The **width** is the number of contiguous steps between tried learning
rates (sorted) that are all good, around the best one: one good rate alone is
0 steps. Steps are the grid's own: the log distance from the lowest to the
highest good rate divided by the widest gap between neighbouring tried rates
(the grid's log step), rounded. On a plain grid this is the count of gaps; the
rates a grid extension adds halfway between an optimizer's best and its
neighbours (:func:`adaptim.lab.protocol.extend_grid`) then count as half
steps, so refining around the best does not widen a range. A diverged rate is never good and breaks the run. Each rate's value
is the mean over the seeds it was tuned on; the width records the fewest
seeds behind any rate it spans. Widths are integers, so two optimizers whose
widths differ by at most one step are equally robust (:data:`WIDTH_SLACK`):
the tie-break falls through to speed, not to rounding.

An optimizer whose learning rate was fixed with ``--set`` has no range; it is
marked ``fixed`` and this criterion is not used for it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adaptim.lab.problems.base import Metric
from adaptim.lab.splits import decision_value
from adaptim.lab.trial import TrialResult

#: A learning rate is good when its excess over the best is at most this share of the
#: distance between the reference (initial) value and the best.
GOOD_SHARE = 0.02
#: Widths that differ by at most this many grid steps count as equal.
WIDTH_SLACK = 1


@dataclass(frozen=True)
class LrRange:
    """The good learning-rate range of one optimizer."""

    #: Contiguous grid steps of good rates; ``None`` when the lr was fixed with ``--set``.
    steps: int | None
    low: float | None
    high: float | None
    #: The fewest seeds behind the value of any rate in the range.
    seeds: int
    fixed: bool = False

    @property
    def decades(self) -> float | None:
        if self.low is None or self.high is None:
            return None
        return math.log10(self.high / self.low)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "low": self.low,
            "high": self.high,
            "decades": self.decades,
            "seeds": self.seeds,
            "fixed": self.fixed,
        }


def reference_value(metric: Metric, tuning: Sequence[Sequence[TrialResult]]) -> float | None:
    """The metric before training (step 0 of a tuning run): every rate starts from it.

    Without recorded curves, the worst finite final value of any tuning run.
    """
    for trials in tuning:
        for t in trials:
            if t.records and t.records[0].step == 0:
                value = t.records[0].metrics.get(metric.name)
                if value is not None and math.isfinite(value):
                    return value
    finals = [v for trials in tuning for t in trials if (v := decision_value(t, metric.name))]
    if not finals:
        return None
    return max(finals) if metric.goal == "min" else min(finals)


def lr_range(
    metric: Metric, tuning: Sequence[TrialResult], reference: float | None, fixed: bool = False
) -> LrRange:
    """The contiguous good range around the best tuned learning rate (see the module)."""
    if fixed:
        return LrRange(None, None, None, 0, fixed=True)
    by_lr: dict[float, list[float | None]] = {}
    for t in tuning:
        if "lr" in t.spec.hparams:
            by_lr.setdefault(float(t.spec.hparams["lr"]), []).append(decision_value(t, metric.name))
    lrs = sorted(by_lr)
    means = [_mean_or_none(by_lr[lr]) for lr in lrs]
    finite = [(i, m) for i, m in enumerate(means) if m is not None]
    if not finite:
        return LrRange(0, None, None, 0)
    sign = 1.0 if metric.goal == "min" else -1.0
    best_index, best = min(finite, key=lambda im: sign * im[1])
    spread = abs(reference - best) if reference is not None else 0.0

    def good(i: int) -> bool:
        m = means[i]
        return m is not None and sign * (m - best) <= GOOD_SHARE * spread

    low = high = best_index
    while low > 0 and good(low - 1):
        low -= 1
    while high < len(lrs) - 1 and good(high + 1):
        high += 1
    seeds = min(len(by_lr[lrs[i]]) for i in range(low, high + 1))
    gap = max((math.log(b / a) for a, b in itertools.pairwise(lrs)), default=0.0)
    steps = round(math.log(lrs[high] / lrs[low]) / gap) if gap > 0 else 0
    return LrRange(steps, lrs[low], lrs[high], seeds)


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or ``None`` when some seed diverged (a rate that diverges is not good)."""
    finite = [v for v in values if v is not None]
    return None if len(finite) < len(values) else sum(finite) / len(finite)


def lr_at_edge(tuning: Sequence[TrialResult], chosen: float | None) -> bool:
    """Whether the chosen lr is the smallest or largest one tried: the best may lie outside."""
    tried = [t.spec.hparams["lr"] for t in tuning if "lr" in t.spec.hparams]
    return len(set(tried)) > 1 and chosen in (min(tried), max(tried))
