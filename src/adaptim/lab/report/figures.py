"""The report's figures, drawn with matplotlib (Agg) as inline SVG.

Every artist of an optimizer carries an id ``opt<i>-<n>``, so the page can
show and hide that optimizer in every figure at once. Text is written as SVG
``<text>`` (escaped by matplotlib); user text passes through :func:`_plain`
so that a ``$`` in a name is a dollar sign, not mathtext.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a window, never a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from adaptim.lab.curves import Curve, mean_curve, metric_curve
from adaptim.lab.report.data import PROFILE_TAUS, Style, finite
from adaptim.lab.trial import Record

if TYPE_CHECKING:
    from adaptim.lab.study import ProblemOutcome

RC: Any = {  # matplotlib types its keys as a Literal of every rc name
    "svg.fonttype": "none",  # text stays text: small, searchable, selectable
    "font.size": 10,
    "legend.fontsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 96,
    "svg.hashsalt": "adaptim",  # the same study renders the same page, byte for byte
}


def _plain(text: str) -> str:
    return text.replace("$", r"\$")


class Ids:
    """Unique SVG ids per optimizer across the whole page, and their hover titles."""

    def __init__(self, names: dict[int, str]) -> None:
        self.counter = itertools.count()
        self.names = names

    def __call__(self, style: Style) -> str:
        return f"opt{style.index}-{next(self.counter)}"

    def titled(self, svg: str) -> str:
        """``svg`` with each optimizer's groups titled by its name: the browser shows it on hover."""

        def title(match: re.Match[str]) -> str:
            name = html.escape(self.names.get(int(match.group(1)), ""))
            return f"{match.group(0)}<title>{name}</title>"

        return re.sub(r'<g id="opt(\d+)-\d+b?">', title, svg)


@contextmanager
def _figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1
) -> Iterator[tuple[Figure, list[Axes]]]:
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
        try:
            yield fig, list(axes.flat)
        finally:
            plt.close(fig)


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # laid out by tight_layout
    text = buffer.getvalue()
    # Inline in HTML: drop the XML prolog, the DOCTYPE and the metadata block.
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return text


def _log_scale_if_wide(ax: Axes, values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        return True
    return False


def _focus(ax: Axes, late: Sequence[float], everything: Sequence[float]) -> None:
    """Zoom a linear axis on the values after the first steps, when the start dwarfs them.

    A loss that drops from 450 to 85 in 30 steps would otherwise flatten the
    part of the curves where optimizers differ; the start runs off the top.
    """
    if not late or not everything:
        return
    low, high = min(late), max(late)
    span = max(high - low, 1e-12)
    if max(everything) - min(everything) > 3 * span:
        ax.set_ylim(low - 0.08 * span, high + 0.08 * span)


def _band(
    ax: Axes,
    x: Sequence[float],
    curve: Curve,
    style: Style,
    gid: str,
    label: str,
) -> None:
    if not curve.steps:
        return
    # Light: the min-max band of several seeds can cover most of the panel, and the means
    # must stay readable through the bands of the others.
    ax.fill_between(x, curve.low, curve.high, color=style.color, alpha=0.08, lw=0, gid=gid + "b")
    ax.plot(x, curve.mean, color=style.color, ls=style.dash, lw=1.6, label=label, gid=gid)


def learning_curves(problem: ProblemOutcome, styles: dict[str, Style], ids: Ids) -> str:
    """Main metric and training loss against steps and against wall time: mean, min–max band."""
    metric = problem.problem.metric
    panels: list[tuple[str, Callable[[Record], float | None]]] = [
        (f"{metric.name} (evaluation)", lambda r: r.metrics.get(metric.name)),
        ("training loss (minibatch)", lambda r: r.train_loss),
    ]
    with _figure(10, 6.4, 2, 2) as (fig, flat):
        axes = [flat[:2], flat[2:]]
        for row, (ylabel, value_of) in enumerate(panels):
            values: list[float] = []
            late: list[float] = []
            for o in problem.outcomes:
                curve = metric_curve(metric, o.runs) if row == 0 else mean_curve(o.runs, value_of)
                style = styles[o.name]
                values += finite(curve.low + curve.high)
                first = 0.1 * max(curve.steps, default=0)
                late += finite(
                    [v for s, v in zip(curve.steps, curve.mean, strict=True) if s > first]
                )
                xs: tuple[Sequence[float], ...] = (curve.steps, curve.wall_time)
                for col, x in enumerate(xs):
                    _band(axes[row][col], x, curve, style, ids(style), _plain(o.name))
            for col in range(2):
                ax = axes[row][col]
                ax.set_ylabel(_plain(ylabel))
                if not _log_scale_if_wide(ax, values):
                    _focus(ax, late, values)
                ax.set_xlabel("step" if col == 0 else "training wall time (s)")
        top = 1.0
        if any(metric_curve(metric, o.runs).steps for o in problem.outcomes):
            # Above the panels: inside one, "best" still lands on some optimizer's curve.
            handles, labels = axes[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False)
            top = 0.94
        else:
            for ax in flat:
                ax.text(
                    0.5,
                    0.5,
                    "every re-run diverged: no curve to draw",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
        fig.tight_layout(rect=(0, 0, 1, top))
        return _svg(fig)


def effective_lr(problem: ProblemOutcome, styles: dict[str, Style], ids: Ids) -> str:
    """The per-coordinate effective learning rate over training: median line, p10–p90 band."""

    def percentile(name: str) -> Callable[[Record], float | None]:
        def value(record: Record) -> float | None:
            v = (record.effective_lr or {}).get(name)
            return math.log10(v) if v is not None and v > 0 else None

        return value

    with _figure(6.4, 3.6) as (fig, (ax,)):
        drawn = False
        for o in problem.outcomes:
            style = styles[o.name]
            median = mean_curve(o.runs, percentile("p50"))
            low = mean_curve(o.runs, percentile("p10"))
            high = mean_curve(o.runs, percentile("p90"))
            if not median.steps:
                continue
            drawn = True
            ax.plot(
                median.steps,
                [10**v for v in median.mean],
                color=style.color,
                ls=style.dash,
                lw=1.6,
                label=_plain(o.name),
                gid=ids(style),
            )
            if low.steps == high.steps and low.steps:
                ax.fill_between(
                    low.steps,
                    [10**v for v in low.mean],
                    [10**v for v in high.mean],
                    color=style.color,
                    alpha=0.1,
                    lw=0,
                    gid=ids(style),
                )
        if not drawn:
            ax.text(
                0.5,
                0.5,
                "no effective learning rate recorded (diverged runs have none)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        else:
            ax.set_yscale("log")
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_xlabel("step")
        ax.set_ylabel("effective learning rate")
        fig.tight_layout()
        return _svg(fig)


def trajectories(
    problem: ProblemOutcome,
    styles: dict[str, Style],
    ids: Ids,
    landscape: Callable[[Any, Any], Any] | None,
) -> str:
    """Each optimizer's path (first re-run seed) on the contours of the 2-D function."""
    paths = {}
    for o in problem.outcomes:
        run = o.runs[0] if o.runs else None
        if run is None:
            continue
        points = [r.position for r in run.records if r.position is not None]
        points = [p for p in points if all(math.isfinite(c) for c in p)]
        if points:
            paths[o.name] = np.array(points)
    with _figure(6.4, 4.6) as (fig, (ax,)):
        if not paths:
            ax.text(0.5, 0.5, "no positions recorded", ha="center", transform=ax.transAxes)
            return _svg(fig)
        everything = np.concatenate(list(paths.values()))
        # Robust limits: a path that ran off to infinity must not flatten the picture.
        low = np.percentile(everything, 2, axis=0)
        high = np.percentile(everything, 98, axis=0)
        start = everything[0]
        argmin = problem.problem.argmin
        anchors = np.array([start, *([argmin] if argmin is not None else [])])
        low, high = np.minimum(low, anchors.min(axis=0)), np.maximum(high, anchors.max(axis=0))
        pad = np.maximum((high - low) * 0.15, 0.25)
        low, high = low - pad, high + pad
        if landscape is not None:
            import torch

            u = torch.linspace(float(low[0]), float(high[0]), 160, dtype=torch.float64)
            v = torch.linspace(float(low[1]), float(high[1]), 160, dtype=torch.float64)
            grid_u, grid_v = torch.meshgrid(u, v, indexing="xy")
            with torch.no_grad():
                z = landscape(grid_u, grid_v).numpy()
            floor = float(np.nanmin(z))
            shifted = np.log10(z - floor + 1e-3)
            ax.contourf(
                grid_u.numpy(),
                grid_v.numpy(),
                shifted,
                levels=18,
                cmap="Greys",
                alpha=0.45,
                rasterized=True,  # a picture, not thousands of SVG paths
            )
            # Few lines, each labelled with f: 18 of them crowd into a dotted-looking band.
            lines = ax.contour(
                grid_u.numpy(), grid_v.numpy(), shifted, levels=6, colors="0.35", linewidths=0.6
            )
            ax.clabel(lines, fontsize=8, fmt=lambda t: f"{10**t + floor - 1e-3:.2g}")
        for name, path in paths.items():
            style = styles[name]
            ax.plot(
                path[:, 0],
                path[:, 1],
                color=style.color,
                ls=style.dash,
                lw=1.8,
                marker="o",
                ms=2.5,
                label=_plain(name),
                gid=ids(style),
            )
            ax.plot(
                path[-1, 0],
                path[-1, 1],
                marker="s",
                ms=6,
                color=style.color,
                mec="white",
                gid=ids(style),
            )
        ax.plot(start[0], start[1], marker="^", ms=9, color="black", ls="none", label="start")
        if argmin is not None:
            ax.plot(*argmin, marker="*", ms=14, color="gold", mec="black", ls="none",
                    label=f"minimum ({argmin[0]:.3g}, {argmin[1]:.3g})")  # fmt: skip
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_xlabel("u")
        ax.set_ylabel("v")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        return _svg(fig)


def performance_profile(profile: dict[str, list[float]], styles: dict[str, Style], ids: Ids) -> str:
    """AlgoPerf's performance profile: share of problems solved within τ × the fastest.

    Identical profiles are common (every optimizer solves the one problem): each line is
    shifted by a hair and carries its own markers, staggered, so none hides another. τ is on
    a log axis, as AlgoPerf draws it.
    """
    markers = "osD^vP"
    with _figure(6.4, 3.6) as (fig, (ax,)):
        count = len(profile)
        for i, (name, shares) in enumerate(profile.items()):
            style = styles[name]
            offset = (i - (count - 1) / 2) * PROFILE_OFFSET
            ax.step(
                PROFILE_TAUS,
                [share + offset for share in shares],
                where="post",
                color=style.color,
                ls=style.dash,
                lw=1.8,
                marker=markers[i % len(markers)],
                ms=5,
                markevery=(2 * i % 10, 10),
                label=_plain(name),
                gid=ids(style),
            )
        ax.set_xscale("log")
        ticks = [1, 1.5, 2, 3, 4]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlim(PROFILE_TAUS[0], PROFILE_TAUS[-1])
        ax.set_ylim(-0.06, 1.06)
        ax.set_xlabel("τ: steps to target ÷ the fastest optimizer's, per problem (log scale)")
        ax.set_ylabel("share of problems")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
        return _svg(fig)


#: How far apart identical profile lines are drawn (in share of problems).
PROFILE_OFFSET = 0.012
