"""What ``adaptim`` prints on a terminal or into a log: progress, tables and listings.

Everything here must read at 80 columns: columns that hold names never wrap or
cut, long prose gets its own indented lines instead of a narrow column, and a
number stays next to its ``±``. Nothing heavy is imported at module level, so
``adaptim --help`` stays fast; the lab is imported once work starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.segment import Segments
from rich.table import Column, Table
from rich.text import Text

if TYPE_CHECKING:
    from types import TracebackType

    from adaptim.lab.study import ProblemOutcome
    from adaptim.lab.trial import TrialSpec

#: Columns that ``--wide`` tables take, even on a narrower terminal.
WIDE = 132

#: Shown when the user presses Ctrl-C during a study (the store keeps every finished trial).
RESUME_HINT = (
    "interrupted: every finished trial is stored; re-running the same command resumes from them"
)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TrialClock:
    """The time left, estimated from the trials this run has finished.

    Trials found in the store finish instantly, so they count as done but not
    as evidence of speed: the time between two finished trials is charged to
    the second one, and only the fresh ones set the pace. With parallel
    workers the gaps between finishes already reflect the throughput.
    """

    def __init__(self, now: float | None = None) -> None:
        self.start = time.monotonic() if now is None else now
        self.last = self.start
        self.fresh = 0
        self.fresh_seconds = 0.0

    def finished(self, reused: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not reused:
            self.fresh += 1
            self.fresh_seconds += now - self.last
        self.last = now

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.start

    def remaining(self, left: int) -> float | None:
        """Seconds for ``left`` more trials at this run's pace; None before the first fresh one."""
        if self.fresh == 0:
            return None
        return self.fresh_seconds / self.fresh * max(left, 0)


def trial_label(spec: TrialSpec) -> str:
    from adaptim.lab.report.numbers import lr_text

    lr = spec.hparams.get("lr")
    rate = f" lr={lr_text(lr)}" if isinstance(lr, (int, float)) else ""
    return f"{spec.problem} · {spec.optimizer}{rate} seed {spec.seed}"


class StudyProgress:
    """A live bar on a terminal; one plain line per finished trial anywhere else.

    A log file (``make demo > log 2>&1``) or a pipe gets lines like
    ``[12/110] 0m56s, ETA 1m03s: rosenbrock · adam lr=0.001 seed 1 (0.8s)``.
    """

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.done = 0
        self.clock = TrialClock()
        self.bar: Progress | None = None
        if console.is_terminal and not console.is_dumb_terminal:
            self.bar = Progress(
                TextColumn("trials"),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                # The label goes last and alone is shortened, so counts and ETA always fit.
                TextColumn(
                    "{task.fields[last]}",
                    table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
                ),
                console=console,
                expand=True,  # the label's column takes what is left (ratio 1), and only it
            )
            self.bar.add_task("trials", total=total, eta="", last="")

    def __enter__(self) -> StudyProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.stop()

    def finished(self, spec: TrialSpec, reused: bool, wall_time: float, total: int) -> None:
        """One more trial is done; ``total`` is the plan as it stands now (it can grow)."""
        self.done += 1
        self.total = max(total, self.done)
        self.clock.finished(reused)
        left = self.clock.remaining(self.total - self.done)
        eta = "ETA –" if left is None else f"ETA {duration(left)}"
        tag = "stored" if reused else f"{wall_time:.1f}s"
        label = f"{trial_label(spec)} ({tag})"
        if self.bar is not None:
            task = self.bar.task_ids[0]
            self.bar.update(task, completed=self.done, total=self.total, eta=eta, last=label)
            return
        self.console.print(
            f"[{self.done}/{self.total}] {duration(self.clock.elapsed())}, {eta}: {label}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def bullets(console: Console, sentences: Iterable[str]) -> None:
    """``  • sentence``, wrapped lines indented under the first word."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for sentence in sentences:
        grid.add_row("  •", Text(sentence))
    console.print(grid)


def listing(console: Console, title: str, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Name, then its detail lines indented below: readable at any width.

    ``adaptim problems`` and ``adaptim optimizers`` have one long description per
    row; as a table column it wraps into a narrow strip of 5 to 10 lines.
    """
    console.print(Text(title, style="bold"))
    for name, lines in entries:
        console.print()
        console.print(Text(name, style="bold cyan"), soft_wrap=True)
        for line in lines:
            console.print(Padding(Text(line), (0, 0, 0, 4), expand=False))


#: How the ranking marks an lr that was not tuned (the report spells it out).
LR_SOURCE_MARKS = {" (defaults)": "†", " (problem)": "‡", " (--set)": "§"}
LR_SOURCE_NOTES = {
    " (defaults)": "a tuning-free optimizer at its published default lr",
    " (problem)": "the lr is fixed by the problem",
    " (--set)": "the lr is fixed with --set",
}


def _marked_lr(lr: str) -> str:
    for source, mark in LR_SOURCE_MARKS.items():
        if lr.endswith(source):
            return lr.removesuffix(source) + mark
    return lr


def print_problem(console: Console, problem: ProblemOutcome, wide: bool = False) -> None:
    """A problem's ranking, its recommendation and the evidence for it.

    Six short columns fit 80; ``wide`` adds the divergence counts, the steps to
    the target and the good-lr range (all also in the report).
    """
    from adaptim.lab.report.data import ranking, verdict
    from adaptim.lab.report.text import on_test

    metric = problem.problem.metric
    goal = "lower" if metric.goal == "min" else "higher"
    found = verdict(problem)
    notes = ["vs leader: validation difference to the leader with its 95% CI"]
    if any(row.lr_at_edge for row in ranking(problem)):
        notes.append("*: the lr is at the edge of the searched range")
    # Where a fixed lr came from, as a mark (the words would widen the column past 80).
    marks = {
        source: mark for source, mark in LR_SOURCE_MARKS.items()
        if any(row.lr.endswith(source) for row in ranking(problem))
    }  # fmt: skip
    notes += [f"{mark}: {LR_SOURCE_NOTES[source]}" for source, mark in marks.items()]
    if wide and found.target is not None:
        source = "the problem's" if found.target_fixed else "reached by every seed of the best two"
        notes.append(
            f"steps to target: median over seeds to validation {metric.name} "
            f"{found.target:.4g} ({source})"
        )
    table = Table(
        title=f"{problem.problem.name}: final {metric.name} ({goal} is better)",
        caption="\n".join(escape(n) for n in notes),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        caption_justify="left",
    )
    # Names and numbers never wrap; the standing may break between its words (never inside
    # the longest); the difference to the leader puts its interval on a line of its own.
    table.add_column("optimizer", no_wrap=True)
    table.add_column("standing", min_width=len("distinguishable"))
    table.add_column("lr", justify="right", no_wrap=True)
    table.add_column(on_test(metric, True), justify="right", no_wrap=True)
    table.add_column("vs leader", justify="right", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    if wide:
        table.add_column("diverged (re-runs, tuning)", justify="right")
        table.add_column("steps to target", justify="right")
        table.add_column("good-lr range", justify="right")
    for row in ranking(problem):
        cells = [
            f"[bold]{escape(row.optimizer)}[/]" if row.recommended else escape(row.optimizer),
            escape(row.status),
            escape(_marked_lr(row.lr)) + ("*" if row.lr_at_edge else ""),
            row.mean if row.ci95 == "–" else f"{row.mean} {row.ci95}",
            escape(row.vs_leader.replace(" [", "\n[", 1)),
            str(row.seeds),
        ]
        if wide:
            cells += [
                f"{row.diverged_reruns}, {row.diverged_tuning}",
                row.steps_to_target,
                escape(row.good_lr),
            ]
        table.add_row(*cells)
    # --wide asks for every column: wider than the terminal rather than cut.
    if wide:
        options = console.options.update_width(max(console.width, WIDE))
        console.print(Segments(console.render(table, options)), soft_wrap=True)
    else:
        console.print(table)
    from adaptim._lr_find_cli import print_tuning_costs

    print_tuning_costs(console, problem)
    console.print(f"[bold green]Recommendation:[/] {escape(found.headline)}", highlight=False)
    bullets(console, found.evidence)
    console.print()
