"""The learning-rate sensitivity figure: every tuning run's final metric against its rate.

Its axis zooms on the good region (:func:`good_window`), so that the chosen rates stay
apart; what lies beyond is drawn on the edge and marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from adaptim.lab.report.data import Style, finite
from adaptim.lab.report.figures import Ids, _figure, _plain, _svg

if TYPE_CHECKING:
    from adaptim.lab.study import ProblemOutcome


def lr_sensitivity(problem: ProblemOutcome, styles: dict[str, Style], ids: Ids) -> str:
    """Final metric of every tuning run against its learning rate, zoomed on the good region.

    Far-off points sit on the axis' edge as hollow triangles, diverged runs as ×: a rate that
    is 5× worse would otherwise squash the chosen rates (the stars) into one flat line.
    """
    metric = problem.problem.metric
    with _figure(6.4, 3.6) as (fig, (ax,)):
        series = []
        for o in problem.outcomes:
            points = sorted(
                (t.spec.hparams["lr"], t.score(metric.name))
                for t in o.tuning
                if "lr" in t.spec.hparams
            )
            series.append((o, points))
        values = finite([v for _, points in series for _, v in points if v is not None])
        stars = [
            (o, o.hparams["lr"], o.summary.mean, o.summary.ci95 or 0.0)
            for o, _ in series
            if o.summary.mean is not None and isinstance(o.hparams.get("lr"), (int, float))
        ]
        low, high, log = good_window(values, [mean for _, _, mean, _ in stars], metric.goal)
        if log:
            ax.set_yscale("log")
        ax.set_ylim(low, high)
        worst = high if metric.goal == "min" else low
        for o, points in series:
            style = styles[o.name]
            scored = [(lr, v) for lr, v in points if v is not None and math.isfinite(v)]
            clipped = [(lr, min(max(v, low), high)) for lr, v in scored]
            ax.plot(*_columns(clipped), color=style.color, ls=style.dash, lw=1.4, gid=ids(style))
            inside = [(lr, v) for lr, v in scored if low <= v <= high]
            ax.plot(
                *_columns(inside), color=style.color, ls="none", marker="o", ms=4, gid=ids(style)
            )
            edges = (
                ([lr for lr, v in scored if v > high], high, "^"),
                ([lr for lr, v in scored if v < low], low, "v"),
                ([lr for lr, v in points if v is None or not math.isfinite(v)], worst, "x"),
            )
            for lrs, edge, marker in edges:
                ax.plot(
                    lrs,
                    [edge] * len(lrs),
                    ls="none",
                    marker=marker,
                    ms=7,
                    mew=1.6,
                    color=style.color,
                    mfc="white" if marker != "x" else style.color,
                    clip_on=False,  # on the edge: half the marker lies outside the axes
                    gid=ids(style),
                )
            ax.plot(
                [], [], color=style.color, ls=style.dash, marker="o", ms=4, label=_plain(o.name)
            )
        for o, lr, mean, ci in stars:
            style = styles[o.name]
            # The 95% CI, cut at the axis: on a log axis a lower end at or below 0 is invalid.
            bottom, top = max(mean - ci, low), min(mean + ci, high)
            ax.errorbar(
                [lr],
                [mean],
                yerr=[[max(mean - bottom, 0.0)], [max(top - mean, 0.0)]],
                color=style.color,
                marker="*",
                ms=12,
                mec="white",
                mew=0.6,
                capsize=3,
                gid=ids(style),
            )
        ax.plot([], [], ls="none", marker="^", mfc="white", mec="0.3", label="beyond the axis")
        ax.plot([], [], ls="none", marker="x", color="0.3", label="diverged")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel(_plain(f"final {metric.name}"))
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        return _svg(fig)


def _columns(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [x for x, _ in points], [y for _, y in points]


def good_window(
    values: Sequence[float], anchors: Sequence[float], goal: str
) -> tuple[float, float, bool]:
    """The y-range of the good region, and whether it is drawn on a log axis.

    From the best value to the median of ``values`` (the better half of the runs), widened to
    hold every ``anchor`` (the chosen settings' means). A log axis when every value is
    positive and they span more than a factor 30; the bounds are then positive as well.
    """
    everything = [*values, *anchors]
    if not everything:
        return 0.0, 1.0, False
    log = min(everything) > 0 and max(everything) / min(everything) > 30
    sign = 1.0 if goal == "min" else -1.0

    def to(v: float) -> float:
        return sign * (math.log10(v) if log else v)

    def back(t: float) -> float:
        return 10 ** (sign * t) if log else sign * t

    best = min(to(v) for v in everything)
    median = float(np.median([to(v) for v in values])) if values else best
    reach = max(median - best, *(to(a) - best for a in anchors), 0.0)
    if reach <= 0:
        reach = max(abs(best) * 0.05, 1e-3 if log else 1e-9)
    low, high = sorted((back(best - 0.08 * reach), back(best + 1.08 * reach)))
    return low, high, log
