"""What tuning cost and bought: the range test's figure, and the self-tuning track's.

The sentences and the table are written from the structured
:class:`~adaptim.lab.recommendation.TuningCost` and
:class:`~adaptim.lab.recommendation.SelfTuning` data; the figures use the
drawing helpers of :mod:`.figures` (imported when a figure is drawn).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from adaptim.lab.problems.base import Metric
from adaptim.lab.recommendation import Recommendation, Relation
from adaptim.lab.report.text import number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from adaptim.lab.lr_find import LrFindResult
    from adaptim.lab.report.data import Style
    from adaptim.lab.report.figures import Ids
    from adaptim.lab.report.page import Figure as Figure_
    from adaptim.lab.study import ProblemOutcome

#: Marker and colour of each suggestion in the range test's figure (Okabe & Ito).
SUGGESTION_STYLE = {
    "valley": ("o", "#009E73"),
    "steepest": ("v", "#D55E00"),
    "minimum/10": ("s", "#CC79A7"),
}


def _draw_lr_find(fig: Figure, result: LrFindResult, title: str) -> None:
    ax = fig.axes[0]
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.9, label="loss (minibatch)")
    ax.plot(result.lrs, result.smoothed, color="#0072B2", lw=1.8, label="smoothed loss")
    for s in result.suggestions:
        marker, color = SUGGESTION_STYLE.get(s.name, ("D", "black"))
        ax.axvline(s.lr, color=color, lw=0.8, ls=":")
        ax.plot([s.lr], [s.loss], marker=marker, color=color, ms=8, ls="none",
                label=f"{s.name}: {s.lr:.3g}")  # fmt: skip
    if result.smoothed:
        # The raw loss of the last steps may run far above the smoothed one: follow the latter.
        low, high = min(result.smoothed), max(result.smoothed)
        pad = 0.08 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    from adaptim.lab.report.figures import _plain

    ax.set_title(_plain(title), fontsize=9)
    ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()


def lr_find_svg(result: LrFindResult, title: str) -> str:
    """The range test as inline SVG: loss and smoothed loss against lr, the suggestions marked."""
    from adaptim.lab.report.figures import _figure, _svg

    with _figure(6.4, 3.6) as (fig, _):
        _draw_lr_find(fig, result, title)
        return _svg(fig)


def write_lr_find(result: LrFindResult, title: str, stem: Path) -> tuple[Path, Path]:
    """Write the range test's figure as ``stem.svg`` and ``stem.png``; returns both paths."""
    from adaptim.lab.report.figures import _figure

    svg, png = stem.with_suffix(".svg"), stem.with_suffix(".png")
    with _figure(6.4, 3.6) as (fig, _):
        _draw_lr_find(fig, result, title)
        fig.savefig(svg, format="svg", metadata={"Date": None})
        fig.savefig(png, format="png", dpi=150)
    return svg, png


# ----------------------------------------------------------------- the self-tuning track


def shows_costs(problem: ProblemOutcome) -> bool:
    """Whether the optimizers' tuning costs differ by design: a tuning-free optimizer or the
    range test of ``--search lr-find`` is in the study (a plain grid charges all alike)."""
    return any(o.tuning_free or o.range_test is not None for o in problem.outcomes)


def _share(compute: float) -> str:
    """``1/8`` of the compute, ``85%``, or ``2.5×``."""
    if compute < 1 / 1.5:
        return f"1/{1 / compute:.0f}"
    if compute <= 1:
        return f"{100 * compute:.0f}%"
    return f"{compute:.2g}×"


def self_tuning_sentences(metric: Metric, rec: Recommendation) -> list[str]:
    """One sentence per tuning-free optimizer: what share of the best tuned optimizer's metric
    it reaches, at what share of its compute (tuning included), and their standing."""
    costs = {c.optimizer: c for c in rec.costs}
    out = []
    for f in rec.self_tuning:
        mine, theirs = costs[f.optimizer], costs[f.reference]
        if f.diverged_runs:  # out of contention: a share of the tuned result would flatter it
            out.append(
                f"{f.optimizer} at its defaults diverged on {f.diverged_runs} of {f.runs} "
                f"re-run seeds, so it cannot stand in for tuned {f.reference} here (scoring each "
                f"diverged seed as the worst value reached: {number(f.value)} vs "
                f"{number(f.reference_value)})."
            )
            continue
        if metric.goal == "max":
            reached = (
                f"reaches {100 * f.ratio:.0f}% of tuned {f.reference}'s validation {metric.name}"
            )
        else:
            reached = f"ends at {f.ratio:.3g}× tuned {f.reference}'s validation {metric.name}"
        sentence = (
            f"{f.optimizer} at its defaults {reached} ({number(f.value)} vs "
            f"{number(f.reference_value)}) at {_share(f.compute)} of the compute, tuning included "
            f"({mine.total_steps:,.0f} vs {theirs.total_steps:,.0f} steps)."
        )
        if f.relation is Relation.BETTER:
            winner = f.optimizer if rec.leader == f.optimizer else f"Tuned {f.reference}"
            sentence += f" {winner} is better (separated, paired by seed)."
        elif f.relation is Relation.EQUIVALENT:
            sentence += " The two are equivalent within the margin."
        elif f.relation is Relation.INDISTINGUISHABLE:
            sentence += " The two are not distinguishable with these seeds."
        out.append(sentence)
    return out


def cost_rows(metric: Metric, rec: Recommendation) -> tuple[list[str], list[list[str]]]:
    """The cost-of-tuning table as text cells, cheapest first: its header and its rows."""
    head = [
        "optimizer",
        "tuning",
        "tuning runs",
        "range test steps",
        "tuning steps",
        "total steps",
        f"validation {metric.name}",
    ]
    rows = []
    for c in sorted(rec.costs, key=lambda c: c.total_steps):
        rows.append([
            c.optimizer,
            "none (defaults)" if c.tuning_free
            else f"range test + {c.tuning_runs} runs" if c.range_test_steps else "search",
            str(c.tuning_runs),
            f"{c.range_test_steps:,}" if c.range_test_steps else "–",
            f"{c.tuning_steps:,}",
            f"{c.total_steps:,.0f}",
            "–" if c.value is None else number(c.value),
        ])  # fmt: skip
    return head, rows


#: What the cost table's columns count.
COST_NOTE = (
    "tuning steps: every tuning run and range test; total: that plus one run at the chosen "
    "setting, the compute to get one trained model. The validation value is the mean over the "
    "re-run seeds (a diverged seed counts as the worst value reached)."
)


def cost_table(metric: Metric, rec: Recommendation) -> str:
    """The tuning cost of every optimizer as an HTML table (escaped)."""
    head, rows = cost_rows(metric, rec)
    body = "".join("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in r) + "</tr>" for r in rows)
    heads = "".join(f"<th>{escape(h)}</th>" for h in head)
    return (
        f'<div class="table-box"><table><thead><tr>{heads}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
        f'<p class="note">{escape(COST_NOTE)}</p>'
    )


def cost_svg(problem: ProblemOutcome, styles: Mapping[str, Style], ids: Ids) -> str:
    """Best validation value found so far against the steps spent, tuning included."""
    from adaptim.lab.report.figures import _figure, _plain, _svg

    metric = problem.problem.metric
    costs = {c.optimizer: c for c in problem.recommendation.costs}
    with _figure(6.4, 3.6) as (fig, (ax,)):
        for o in problem.outcomes:
            c, style = costs[o.name], styles[o.name]
            points = [(s, v) for s, v in c.best_so_far if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.step(xs, ys, where="post", color=style.color, ls=style.dash, lw=1.4,
                        marker="o", ms=3.5, alpha=0.7, gid=ids(style))  # fmt: skip
            if c.value is not None:
                ax.plot([c.total_steps], [c.value], marker="D" if c.tuning_free else "*",
                        ms=9 if c.tuning_free else 14, color=style.color, mec="white", ls="none", label=_plain(o.name),
                        gid=ids(style))  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("steps spent, tuning included (log scale)")
        ax.set_ylabel(_plain(f"validation {metric.name}"))
        ax.legend(loc="best", fontsize=8, frameon=False)
        fig.tight_layout()
        return _svg(fig)


def cost_figure(problem: ProblemOutcome, styles: Mapping[str, Style], ids: Ids) -> Figure_:
    """The report's figure of the self-tuning track, with the cost table under it."""
    from adaptim.lab.report.page import Figure as PageFigure

    metric = problem.problem.metric
    return PageFigure(
        "Cost of tuning",
        f"Validation {metric.name} against the steps spent to get it, tuning runs and range "
        "tests included (AlgoPerf's self-tuning view). A line is the best value a tuned "
        "optimizer had found after each tuning run (on the tuning seed); ★ is the chosen "
        "setting's mean over the re-run seeds at its total cost (tuning plus one run), ◆ a "
        "tuning-free optimizer at its defaults (one run, nothing else). "
        + ("Higher" if metric.goal == "max" else "Lower")
        + " and further left is better: what tuning bought is the value gained per step spent.",
        cost_svg(problem, styles, ids) + cost_table(metric, problem.recommendation),
    )


def range_test_figures(problem: ProblemOutcome) -> list[Figure_]:
    """One figure per range test the study ran (``--search lr-find``)."""
    from adaptim.lab.lr_find_trials import range_test_of
    from adaptim.lab.report.page import Figure as PageFigure

    out = []
    for o in problem.outcomes:
        if o.range_test is None:
            continue
        result = range_test_of(o.range_test)
        chosen = o.hparams.get("lr")
        out.append(
            PageFigure(
                f"Range test: {o.name}",
                "Training loss while the learning rate grows exponentially on the tuning seed "
                "(grey: each minibatch; blue: its bias-corrected moving average), until the "
                "average passed 4× its minimum. Its suggestions were run as tuning runs, as far "
                "as the budget went, and the best on validation was chosen"
                + (f" (lr {chosen:.3g})" if isinstance(chosen, float) else "")
                + "; the range test's steps count in the cost of tuning.",
                lr_find_svg(result, f"{problem.problem.name} · {o.name}"),
            )
        )
    return out
