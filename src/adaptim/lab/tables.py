"""Tables that fit the terminal they are printed on, without cutting a cell.

Rich fits a table that is too wide by cropping its ``no_wrap`` columns, and a
cropped number or name reads as a different one (``-0.01`` for ``-0.011``, ``s``
for ``seeds``). So each table here comes in layouts, from the most spread out to
the most compact, and :func:`print_fitted` prints the first one whose natural
width fits: a wide terminal gets every column on one line, 80 columns get the
same information stacked (a standing above its number, an interval under its
mean) and abbreviated, with a legend in the caption. When even the most compact
layout is too wide, it is printed at its own width: the terminal wraps the
lines, but nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.segment import Segment, Segments
from rich.table import Table

if TYPE_CHECKING:
    from adaptim.lab.report.data import Row
    from adaptim.lab.study import ProblemOutcome


def compact_table(title: str, caption: str = "") -> Table:
    """A table with a rule under its header and no frame: two columns between cells."""
    return Table(
        title=title,
        caption=caption or None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        caption_justify="left",
    )


def natural_width(console: Console, table: Table) -> int:
    """The columns ``table`` takes with every cell on as few lines as its words allow."""
    # Measured against an unlimited width: against the console's, Rich clamps to it.
    return console.measure(table, options=console.options.update_width(UNLIMITED)).maximum


#: A width no table reaches.
UNLIMITED = 1_000_000


def needed_width(console: Console, table: Table) -> int:
    """The fewest columns ``table`` takes without cutting a cell: ``no_wrap`` columns at their
    full width, the others wrapped between words (Rich narrows those first)."""
    options = console.options.update_width(UNLIMITED)
    width = natural_width(console, table)
    for column in table.columns:
        if not column.no_wrap:
            sizes = [Measurement.get(console, options, c) for c in (column.header, *column.cells)]
            longest_word = max(column.min_width or 0, *(s.minimum for s in sizes))
            width -= max(s.maximum for s in sizes) - min(
                longest_word, max(s.maximum for s in sizes)
            )
    return width


def fits(console: Console, table: Table) -> bool:
    """Whether ``table`` shows every cell whole at the console's width."""
    return needed_width(console, table) <= console.width


def print_fitted(console: Console, layouts: Sequence[Table], at_least: int = 0) -> Table:
    """Print the first of ``layouts`` that fits; the last one at its own width if none does.

    ``at_least`` prints at that many columns even on a narrower console (``--wide``).
    """
    chosen = next((t for t in layouts if fits(console, t)), layouts[-1])
    width = max(console.width, at_least)
    if not fits(console, chosen):
        width = max(width, natural_width(console, chosen))
    # Wider than the terminal rather than cut: the terminal wraps, a log keeps it whole.
    options = console.options.update_width(width)
    segments: list[Segment] = []
    for line in console.render_lines(chosen, options, pad=False):
        segments += [*_trimmed(line), Segment.line()]
    console.print(Segments(segments), soft_wrap=True, end="")
    return chosen


def _trimmed(line: list[Segment]) -> list[Segment]:
    """``line`` without the blanks Rich leaves after a centred title or a caption's last
    word (noise in a pipe or a diff)."""
    while line and not line[-1].control and not line[-1].text.rstrip():
        line = line[:-1]
    if line and not line[-1].control:
        *line, last = line
        line = [*line, Segment(last.text.rstrip(), last.style)]
    return line


# -- the ranking of ``adaptim compare`` and ``adaptim report`` -----------------------------

#: How the ranking marks an lr that was not tuned (the report spells it out).
LR_SOURCE_MARKS = {" (defaults)": "†", " (problem)": "‡", " (--set)": "§"}
LR_SOURCE_NOTES = {
    " (defaults)": "a tuning-free optimizer at its published default lr",
    " (problem)": "the lr is fixed by the problem",
    " (--set)": "the lr is fixed with --set",
}

#: Columns a wide terminal gets beyond the six, in the order they are added while they fit.
EXTRAS = ("to target", "diverged", "good lr")


@dataclass(frozen=True)
class Layout:
    """How the ranking spends its width."""

    #: The difference's interval on a line under it, instead of beside it.
    stack_ci: bool = False
    #: The standing on the line above the difference, in one column, instead of its own column.
    merge_standing: bool = False
    #: Which of :data:`EXTRAS` are shown.
    extras: tuple[str, ...] = ()


#: From the most spread out to the most compact.
LAYOUTS = (
    Layout(),
    Layout(stack_ci=True),
    Layout(merge_standing=True),
    Layout(stack_ci=True, merge_standing=True),
)


def marked_lr(row: Row) -> str:
    lr = row.lr
    for source, mark in LR_SOURCE_MARKS.items():
        if lr.endswith(source):
            lr = lr.removesuffix(source) + mark
    return lr + ("**" if row.lr_at_limit else "*" if row.lr_at_edge else "")


def ranking_notes(problem: ProblemOutcome, rows: Sequence[Row], layout: Layout) -> list[str]:
    """The caption: what the abbreviated headers and the marks mean."""
    from adaptim.lab.protocol import MAX_REACH_DECADES
    from adaptim.lab.report.data import race

    metric = problem.problem.metric
    notes = ["vs leader: the validation difference to the leader with its 95% CI"]
    if len({row.seeds for row in rows}) > 1:
        notes.append(
            "seeds: re-runs at the chosen lr; more where the leader was not yet separated "
            "from it (adaptive seeding, up to --max-seeds)"
        )
    if any(row.lr_at_edge and not row.lr_at_limit for row in rows):
        notes.append("*: the lr is at the edge of the searched range")
    if any(row.lr_at_limit for row in rows):
        notes.append(
            f"**: at the edge, {MAX_REACH_DECADES} decades beyond the declared range, as far "
            "as grids grow: the best lr may lie further out"
        )
    # Where a fixed lr came from, as a mark (the words would widen the column past 80).
    notes += [
        f"{mark}: {LR_SOURCE_NOTES[source]}"
        for source, mark in LR_SOURCE_MARKS.items()
        if any(row.lr.endswith(source) for row in rows)
    ]
    target = race(problem)[0]
    if "to target" in layout.extras and target is not None:
        source = (
            "the problem's"
            if problem.problem.target is not None
            else "reached by every seed of the best two"
        )
        notes.append(
            f"to target: median steps over the seeds to validation {metric.name} "
            f"{target:.4g} ({source})"
        )
    if "diverged" in layout.extras:
        notes.append("diverged: re-run seeds, then tuning runs (of all) that diverged")
    if "good lr" in layout.extras:
        notes.append(
            "good lr: the contiguous grid steps of learning rates that get 98% of the way from "
            "the initial value to the best, and their range"
        )
    return notes


def ranking_table(problem: ProblemOutcome, rows: Sequence[Row], layout: Layout) -> Table:
    """A problem's ranking in ``layout``. Names, numbers and marks never wrap."""
    from adaptim.lab.report.text import on_test
    from adaptim.lab.splits import has_validation

    metric = problem.problem.metric
    goal = "lower" if metric.goal == "min" else "higher"
    table = compact_table(
        f"{problem.problem.name}: final {metric.name} ({goal} is better)",
        "\n".join(escape(n) for n in ranking_notes(problem, rows, layout)),
    )
    table.add_column("optimizer", no_wrap=True)
    if not layout.merge_standing:
        # May break between its words ("not / distinguishable"), never inside one.
        table.add_column("standing", min_width=len("distinguishable"))
    table.add_column("lr", justify="right", no_wrap=True)
    # "test accuracy" when a validation split decided; a single split is just "loss".
    split = has_validation(r for o in problem.outcomes for r in o.runs)
    table.add_column(on_test(metric, split), justify="right", no_wrap=True)
    # Merged, the standing goes on the line above the difference.
    versus = "standing, vs leader" if layout.merge_standing else "vs leader"
    table.add_column(versus, justify="right", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    for extra in layout.extras:
        table.add_column(extra, justify="right", no_wrap=True)
    for row in rows:
        versus = row.vs_leader.replace(" [", "\n[", 1) if layout.stack_ci else row.vs_leader
        if layout.merge_standing and row.vs_leader != "leader":
            versus = f"{row.status}\n{versus}"
        elif layout.merge_standing:
            versus = row.status if row.status == "leader, tied" else f"{row.status}, leader"
        cells = [
            f"[bold]{escape(row.optimizer)}[/]" if row.recommended else escape(row.optimizer),
            *([] if layout.merge_standing else [escape(row.status)]),
            escape(marked_lr(row)),
            row.mean if row.ci95 == "–" else f"{row.mean} {row.ci95}",
            escape(versus),
            str(row.seeds),
        ]
        extra_cells = {
            "to target": row.steps_to_target,
            "diverged": f"{row.diverged_reruns}, {row.diverged_tuning}",
            "good lr": escape(row.good_lr),
        }
        table.add_row(*cells, *(extra_cells[e] for e in layout.extras))
    return table


def print_ranking(console: Console, problem: ProblemOutcome, wide: bool = False) -> Layout:
    """The ranking in the most spread-out layout that fits, with every extra column that still
    fits; ``wide`` asks for every column, printed wider than the terminal if need be."""
    from adaptim.lab.report.data import ranking

    rows = ranking(problem)

    def table(layout: Layout) -> Table:
        return ranking_table(problem, rows, layout)

    if wide:
        layout = Layout(extras=EXTRAS)
        print_fitted(console, [table(layout)])
        return layout
    layout = next((lay for lay in LAYOUTS if fits(console, table(lay))), LAYOUTS[-1])
    layout = _with_extras(console, layout, table)
    print_fitted(console, [table(layout)])
    return layout


def _with_extras(console: Console, layout: Layout, table: Callable[[Layout], Table]) -> Layout:
    """``layout`` with each of :data:`EXTRAS` that still fits (a wide terminal uses its room)."""
    for extra in EXTRAS:
        wider = replace(layout, extras=(*layout.extras, extra))
        if fits(console, table(wider)):
            layout = wider
    return layout
