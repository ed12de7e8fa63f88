"""What the report shows, as plain data: pure functions from a study's outcome.

Nothing here draws or writes HTML; :mod:`.figures` and :mod:`.page` do. The
statistics come from :mod:`adaptim.lab.analysis`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptim.lab import stats
from adaptim.lab.analysis import OptimizerOutcome, speed_target, target_times
from adaptim.lab.curves import TargetTimes
from adaptim.lab.protocol import TUNING_SEED
from adaptim.lab.report import numbers, text, tuning
from adaptim.lab.robustness import lr_range, reference_value
from adaptim.lab.splits import has_validation, reported_value

if TYPE_CHECKING:
    from adaptim.lab.study import ProblemOutcome, StudyOutcome

#: Okabe & Ito's colour-blind-safe palette (yellow last: it is faint on white).
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)
#: Line styles that tell optimizers apart once the palette runs out.
DASHES = ("-", "--", ":", "-.")

#: τ values of the performance profile (time within τ × the fastest).
PROFILE_TAUS = tuple(1 + i * 0.05 for i in range(61))  # 1 to 4


@dataclass(frozen=True)
class Style:
    color: str
    dash: str
    index: int


def styles(outcome: StudyOutcome) -> dict[str, Style]:
    """One fixed colour (and line style) per optimizer, the same in every figure."""
    names = list(outcome.config.optimizers)
    return {
        name: Style(PALETTE[i % len(PALETTE)], DASHES[i // len(PALETTE) % len(DASHES)], i)
        for i, name in enumerate(names)
    }


@dataclass(frozen=True)
class Row:
    """One line of a problem's ranking table."""

    optimizer: str
    recommended: bool
    tied: bool
    #: Its standing against the leader: recommended, worse, equivalent, not distinguishable...
    status: str
    lr: str
    lr_at_edge: bool
    #: At the edge grid extension reaches (``**``): the best may lie further out.
    lr_at_limit: bool
    #: Test mean over the re-run seeds and the half-width of its 95% CI.
    mean: str
    ci95: str
    seeds: int
    diverged_reruns: int
    diverged_tuning: str
    #: Validation difference to the leader (this one minus the leader) with its paired 95% CI.
    vs_leader: str
    #: P(leader beats this one), Agarwal et al. 2021.
    improvement: str
    steps_to_target: str
    seconds_to_target: str
    good_lr: str
    #: The same without the learning rates it spans (for the terminal).
    good_lr_steps: str


def ranked(problem: ProblemOutcome) -> list[OptimizerOutcome]:
    """The recommendation first, then the leader and the tied ones, then the others by test mean;
    optimizers with diverged re-runs last."""
    sign = 1.0 if problem.problem.metric.goal == "min" else -1.0
    rec = problem.recommendation
    return sorted(
        problem.outcomes,
        key=lambda o: (
            o.name != rec.optimizer,
            o.name != rec.leader,
            o.name not in rec.contenders,
            o.summary.mean is None,
            o.summary.diverged > 0,
            sign * (o.summary.mean or 0.0),
        ),
    )


def race(problem: ProblemOutcome) -> tuple[float | None, dict[str, TargetTimes]]:
    """The problem's time-to-target: its validation target (the problem's fixed one, else the
    one every seed of the best two reaches) and each optimizer's per-seed times with their medians."""
    metric = problem.problem.metric
    target = speed_target(metric, problem.outcomes, problem.problem.target)
    return target, target_times(metric, problem.outcomes, target)


def ranking(problem: ProblemOutcome) -> list[Row]:
    metric = problem.problem.metric
    target, times = race(problem)
    rec = problem.recommendation
    reference = reference_value(metric, [o.tuning for o in problem.outcomes])
    rows = []
    for o in ranked(problem):
        found = times.get(o.name)
        steps = None if found is None else found.median_steps
        seconds = None if found is None else found.median_wall_time
        lr = o.hparams.get("lr")
        comparison = rec.comparison(o.name)
        good = lr_range(metric, [*o.tuning, *o.sweeps], reference, o.lr_fixed)
        rows.append(
            Row(
                optimizer=o.name,
                recommended=o.name == rec.optimizer,
                tied=o.name in rec.tied_with,
                status=text.status(rec, o.name),
                lr=(numbers.lr_text(lr) if isinstance(lr, (int, float)) else "–")
                + (
                    ""
                    if not o.lr_fixed
                    else " (defaults)"
                    if o.tuning_free
                    else " (problem)"
                    if "lr" in problem.problem.hparams
                    else " (--set)"
                ),
                lr_at_edge=o.lr_at_edge,
                lr_at_limit=o.lr_at_limit,
                mean=numbers.with_ci(o.summary.mean, o.summary.ci95)[0],
                ci95=numbers.with_ci(o.summary.mean, o.summary.ci95)[1],
                seeds=o.summary.n,
                diverged_reruns=o.summary.diverged,
                diverged_tuning=f"{sum(t.diverged for t in o.tuning)}/{len(o.tuning)}",
                vs_leader=(
                    "leader"
                    if o.name == rec.leader
                    else "–"
                    if comparison is None
                    else text.difference_text(metric, comparison)
                ),
                improvement=(
                    "–"
                    if comparison is None or comparison.improvement is None
                    else f"{comparison.improvement:.2f}"
                ),
                steps_to_target="–" if target is None else text.steps_text(steps),
                seconds_to_target="–" if seconds is None else f"{seconds:.2g}",
                good_lr=text.range_text(good),
                good_lr_steps=text.range_text(good, with_span=False),
            )
        )
    return rows


@dataclass(frozen=True)
class Verdict:
    """The summary of one problem: the recommendation in one sentence, then its evidence."""

    headline: str
    evidence: list[str]
    #: The validation target of time-to-target, and whether the problem fixes it.
    target: float | None
    target_fixed: bool = False


def verdict(problem: ProblemOutcome) -> Verdict:
    """The headline and the points behind it, written from the structured recommendation."""
    metric = problem.problem.metric
    rec = problem.recommendation
    return Verdict(
        text.headline(metric, rec, problem.outcomes),
        text.evidence(metric, rec, problem.outcomes) + tuning.self_tuning_sentences(metric, rec),
        race(problem)[0],
        problem.problem.target is not None,
    )


def split_note(problem: ProblemOutcome) -> str:
    """Which split decided the ranking and which one the numbers come from."""
    if has_validation(r for o in problem.outcomes for r in o.runs):
        return (
            "Choices, ties and equivalence are decided on the validation split; "
            "the numbers shown are on the test split."
        )
    return (
        "This problem has a single evaluation split: it both decides and is reported, so the "
        "reported numbers are not independent of the choice."
    )


@dataclass(frozen=True)
class Improvements:
    """P(row optimizer beats column optimizer) across problems, with 95% intervals."""

    names: list[str]
    cells: dict[tuple[str, str], str]
    problems: int


def improvements(outcome: StudyOutcome) -> Improvements | None:
    """Agarwal et al.'s probability of improvement over all problems (test values; a diverged
    run scores as the worst value reached on its problem), with stratified-bootstrap
    intervals. ``None`` with a single problem (its comparisons say it all)."""
    if len(outcome.problems) < 2:
        return None
    names = list(outcome.config.optimizers)
    scores: list[dict[str, list[float]]] = []
    for problem in outcome.problems:
        metric = problem.problem.metric
        sign = 1.0 if metric.goal == "max" else -1.0
        raw = {o.name: [reported_value(r, metric.name) for r in o.runs] for o in problem.outcomes}
        finite = [sign * v for values in raw.values() for v in values if v is not None]
        if not finite or any(not values for values in raw.values()):
            continue
        worst = min(finite)
        scores.append(
            {n: [worst if v is None else sign * v for v in values] for n, values in raw.items()}
        )
    if len(scores) < 2:
        return None
    cells = {}
    for x in names:
        for y in names:
            if x != y:
                found = stats.probability_of_improvement(
                    [per[x] for per in scores], [per[y] for per in scores]
                )
                cells[x, y] = f"{found.probability:.2f} [{found.low:.2f}, {found.high:.2f}]"
    return Improvements(names, cells, len(scores))


def times_to_target(outcome: StudyOutcome) -> dict[str, dict[str, float | None]]:
    """Median steps each optimizer needs to reach each problem's validation target, for the
    performance profile."""
    times: dict[str, dict[str, float | None]] = {}
    for problem in outcome.problems:
        _, found = race(problem)
        times[problem.problem.name] = {
            o.name: None if o.name not in found else found[o.name].median_steps
            for o in problem.outcomes
        }
    return times


def is_2d(problem: ProblemOutcome) -> bool:
    return any(
        rec.position is not None for o in problem.outcomes for r in o.runs for rec in r.records
    )


@dataclass(frozen=True)
class Footer:
    command: str
    versions: str
    seeds: str
    store: str
    study: str


def footer(outcome: StudyOutcome, study_key: str) -> Footer:
    found: set[tuple[str, str]] = set()
    for problem in outcome.problems:
        for o in problem.outcomes:
            for trial in [*o.tuning, *o.runs]:
                found.add((str(trial.info.get("adaptim", "?")), str(trial.info.get("torch", "?"))))
    versions = "; ".join(f"adaptim {a}, torch {t}" for a, t in sorted(found)) or "unknown"
    used = sorted({r.spec.seed for p in outcome.problems for o in p.outcomes for r in o.runs})
    reruns = ", ".join(str(s) for s in used) or "none"
    return Footer(
        command=outcome.command,
        versions=versions,
        seeds=f"tuning seed {TUNING_SEED}; re-run seeds {reruns}",
        store=_without_password(outcome.store_url),
        study=study_key,
    )


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def config_lines(outcome: StudyOutcome) -> list[tuple[str, str]]:
    c = outcome.config
    settings: dict[str, Any] = {k: dict(v) for k, v in c.settings.items()}
    return [
        ("problems", ", ".join(p.problem.name for p in outcome.problems)),
        ("optimizers", ", ".join(c.optimizers)),
        (
            "learning-rate search",
            f"{c.search}, {c.budget} values per optimizer"
            + (
                ", grids extended alike when a best rate is at an edge"
                if c.search == "grid"
                else ""
            ),
        ),
        ("learning-rate schedule", c.schedule),
        ("steps", "each problem's default" if c.steps is None else str(c.steps)),
        (
            "re-run seeds",
            f"{c.seeds}"
            + (
                f", adaptively up to {c.max_seeds} while the leader is not separated"
                if c.max_seeds > c.seeds
                else ""
            ),
        ),
        (
            "equivalence margin",
            c.margin
            or "per metric: 0.01 for accuracies and errors, 1% of the leader's mean otherwise",
        ),
        ("fixed settings", ", ".join(f"{k}: {v}" for k, v in settings.items()) or "none"),
    ]


def finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]
