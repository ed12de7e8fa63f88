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

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

if TYPE_CHECKING:
    from types import TracebackType

    from adaptim.lab.study import ProblemOutcome
    from adaptim.lab.trial import TrialSpec

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
    ``[12/110] 56s, ETA 1m03s: rosenbrock · adam lr=0.001 seed 1 (0.8s)``, or
    ``[12] 56s: ...`` when the total is not known ahead (``adaptim reproduce``).
    """

    def __init__(self, console: Console, total: int | None) -> None:
        self.console = console
        #: Trials planned; None when the plan is not known ahead (no total, no ETA).
        self.total = total
        self.done = 0
        self.clock = TrialClock()
        self.bar: Progress | None = None
        if console.is_terminal and not console.is_dumb_terminal:
            self.bar = Progress(
                TextColumn("trials"),
                BarColumn(bar_width=16),
                MofNCompleteColumn() if total is not None else TextColumn("{task.completed}"),
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

    def finished(self, spec: TrialSpec, reused: bool, wall_time: float, total: int | None) -> None:
        """One more trial is done; ``total`` is the plan as it stands now (it can grow)."""
        self.done += 1
        self.clock.finished(reused)
        count, eta = f"{self.done}", ""
        if total is not None:
            self.total = max(total, self.done)
            left = self.clock.remaining(self.total - self.done)
            count = f"{self.done}/{self.total}"
            eta = "ETA –" if left is None else f"ETA {duration(left)}"
        tag = "stored" if reused else f"{wall_time:.1f}s"
        label = f"{trial_label(spec)} ({tag})"
        if self.bar is not None:
            task = self.bar.task_ids[0]
            self.bar.update(task, completed=self.done, total=self.total, eta=eta, last=label)
            return
        self.console.print(
            f"[{count}] {duration(self.clock.elapsed())}{', ' + eta if eta else ''}: {label}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def bullets(console: Console, sentences: Iterable[str]) -> None:
    """``  • sentence``, wrapped lines indented under the first word."""
    for sentence in sentences:
        _wrapped(console, Text(sentence), indent=4, first="  • ")


def listing(console: Console, title: str, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Name, then its detail lines indented below: readable at any width.

    ``adaptim problems`` and ``adaptim optimizers`` have one long description per
    row; as a table column it wraps into a narrow strip of 5 to 10 lines.
    """
    _wrapped(console, Text(title, style="bold"), indent=0)
    for name, lines in entries:
        console.print()
        console.print(Text(name, style="bold cyan"), soft_wrap=True)
        for line in lines:
            _wrapped(console, Text(line), indent=4)


def paragraph(console: Console, text: str | Text) -> None:
    """``text`` wrapped to the console's width, no line ending in a blank."""
    _wrapped(console, Text(text) if isinstance(text, str) else text, indent=0)


def _wrapped(console: Console, text: Text, indent: int, first: str | None = None) -> None:
    # Wrapped here rather than by Rich's Padding, Table or print, which leave
    # blanks at the ends of lines (Padding fills each out to the width): noise
    # in a pipe. ``first`` replaces the indent of the first line (a bullet).
    for number, piece in enumerate(text.wrap(console, max(console.width - indent, 20))):
        piece.rstrip()
        lead = first if first is not None and number == 0 else " " * indent
        console.print(Text(lead) + piece, soft_wrap=True)


def print_problem(console: Console, problem: ProblemOutcome, wide: bool = False) -> None:
    """A problem's ranking, its recommendation and the evidence for it.

    The ranking takes the layout that fits the terminal (:mod:`adaptim.lab.tables`);
    ``wide`` asks for every column (the divergence counts, the steps to the target and
    the good-lr range, all also in the report).
    """
    from adaptim._lr_find_cli import print_tuning_costs
    from adaptim.lab.report.data import verdict
    from adaptim.lab.tables import print_ranking

    print_ranking(console, problem, wide)
    print_tuning_costs(console, problem, wide)
    found = verdict(problem)
    headline = Text.from_markup(f"[bold green]Recommendation:[/] {escape(found.headline)}")
    _wrapped(console, headline, indent=0)
    bullets(console, found.evidence)
    console.print()
