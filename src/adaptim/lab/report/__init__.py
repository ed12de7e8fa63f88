"""The lab report: one self-contained HTML page that shows which optimizer to use and why.

:func:`build_report` turns a study's outcome into the page; :func:`write_report`
writes it atomically next to ``results.json``; :func:`load_study` rebuilds the
outcome from the store alone, so ``adaptim report DIR`` re-renders without
re-running anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adaptim.lab.curves import performance_profile
from adaptim.lab.files import write_atomically
from adaptim.lab.report import data, figures, lr_figure, page, tuning
from adaptim.lab.report.stored import load_study

if TYPE_CHECKING:
    from adaptim.lab.study import ProblemOutcome, StudyOutcome

PROTOCOL = (
    "Every optimizer's learning rate was tuned with the same budget, in log space over the "
    "range where that optimizer's good rates lie, on tuning seed 0 and scored on validation; "
    "when some optimizer's best rate was at an edge of its grid, every optimizer's grid grew "
    "by the same number of rates (past the edge for that one, around the best for the others), "
    "at most twice. The learning-rate schedule applies to every optimizer alike. Hyperparameters "
    "a problem fixes (such as Reddi et al.'s betas) are not tuned. The best setting was then "
    "re-run on fresh seeds; only those re-runs give the means, confidence intervals and curves "
    "(tuning runs appear only in the learning-rate sensitivity figure). Choices, ties and "
    "equivalence are decided on the validation values of the re-runs; the means and intervals "
    "shown are test values. An optimizer with a diverged re-run can be neither recommended nor "
    "tied-best, and inside every comparison its diverged seeds score as the worst value any "
    "optimizer reached. The leader (best validation mean among the rest) is compared with each "
    "other optimizer, paired by seed: it is better when a paired t-test, Holm-adjusted over all "
    "these claims, rejects at the per-look level; otherwise the two are equivalent when the two "
    "one-sided tests (TOST) put the difference inside the margin, and not distinguishable "
    "otherwise, with the seeds a paired t-test would need at 80% power. While the leader is not "
    "distinguishable from some optimizer, one more seed is run by the leader and every such "
    "optimizer alike, up to the maximum; the per-look level is lowered from 5% so that the "
    "chance of a false separation over all looks stays at 5%. Ties (the leader and the "
    "optimizers shown equivalent to it; one merely not distinguishable is not tied, and the "
    "leader's better mean stands against it) are broken by the width of "
    "the good learning-rate range in grid steps, measured on two seeds (the tied optimizers rerun "
    "their tuned settings on seed 1; widths within one step are equal; not compared "
    "when an lr was fixed), then by time-to-target as AlgoPerf defines it (each seed's first "
    "evaluation step at which its validation metric reaches the problem's fixed target, median "
    "over the seeds), then by the mean."
)


def _problem_section(
    problem: ProblemOutcome, styles: dict[str, data.Style], ids: figures.Ids
) -> page.ProblemSection:
    metric = problem.problem.metric
    section = page.ProblemSection(
        name=problem.problem.name,
        description=problem.problem.description,
        metric=metric.name,
        goal=metric.goal,
        verdict=data.verdict(problem),
        rows=data.ranking(problem),
        splits=data.split_note(problem),
    )
    section.figures.append(
        page.Figure(
            "Learning curves",
            f"{metric.name} and the training loss during training: the line is the mean over the "
            "re-run seeds, the band spans the best and worst seed. Left against steps, right "
            "against training wall time (evaluation excluded).",
            figures.learning_curves(problem, styles, ids),
        )
    )
    section.figures.append(
        page.Figure(
            "Learning-rate sensitivity",
            f"Final {metric.name} of every tuning run against its learning rate (log scale); "
            "× marks a diverged run, ★ the chosen rate re-run on fresh seeds (mean and 95% CI). "
            "The axis zooms on the good region: a △ on its edge is a run beyond it. "
            "A wide, flat curve means a forgiving optimizer.",
            lr_figure.lr_sensitivity(problem, styles, ids),
        )
    )
    section.figures.append(
        page.Figure(
            "Effective learning rate",
            "The step size each coordinate actually gets (the lr times the optimizer's "
            "per-coordinate scaling): median over coordinates, band from the 10th to the 90th "
            "percentile, mean over seeds. AdaGrad's only shrinks as it sums squared gradients; "
            "RMSprop and Adam follow a moving average and can recover.",
            figures.effective_lr(problem, styles, ids),
        )
    )
    if tuning.shows_costs(problem):  # a tuning-free optimizer or --search lr-find
        section.figures.append(tuning.cost_figure(problem, styles, ids))
        section.figures += tuning.range_test_figures(problem)
    if data.is_2d(problem):
        section.figures.append(
            page.Figure(
                "Trajectories",
                "Each optimizer's path from the start (▲) on the contours of the function "
                "(darker is higher, lines labelled with the function's value; first re-run seed, "
                "one point per evaluation, ■ the end, ★ the minimum).",
                figures.trajectories(problem, styles, ids, problem.problem.landscape),
            )
        )
    return section


def build_report(outcome: StudyOutcome, study_key: str) -> str:
    """The report of ``outcome`` as one HTML page."""
    styles = data.styles(outcome)
    ids = figures.Ids({style.index: name for name, style in styles.items()})
    sections = [_problem_section(p, styles, ids) for p in outcome.problems]
    profile = None
    if len(outcome.problems) > 1:
        shares = performance_profile(data.times_to_target(outcome), data.PROFILE_TAUS)
        profile = page.Figure(
            "Performance profile",
            "For each optimizer, the share of problems on which it reaches the problem's target "
            "within τ times the steps of the fastest optimizer there (AlgoPerf). Higher and "
            "further left is better; a line that stays low never reached some targets. Equal "
            "lines are drawn a hair apart, so that none hides another.",
            figures.performance_profile(shares, styles, ids),
        )
    for figure in [*(f for s in sections for f in s.figures), *([profile] if profile else [])]:
        figure.svg = ids.titled(figure.svg)
    return page.render(
        sections=sections,
        styles=styles,
        profile=profile,
        improvements=data.improvements(outcome),
        footer=data.footer(outcome, study_key),
        protocol=PROTOCOL,
        config=data.config_lines(outcome),
    )


def write_report(outcome: StudyOutcome, path: Path, study_key: str) -> Path:
    """Write the report to ``path`` atomically: a reader never sees half a page."""
    return write_atomically(path, build_report(outcome, study_key))


__all__ = ["build_report", "load_study", "write_report"]
