"""``adaptim lr-find``, and the cost-of-tuning table ``adaptim compare`` prints.

Kept apart from :mod:`adaptim.cli` so the command module stays small; the
test itself is :mod:`adaptim.lab.lr_find`, the figures and the table's cells
:mod:`adaptim.lab.report.tuning`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from adaptim.lab.console import paragraph
from adaptim.lab.errors import LabError
from adaptim.lab.tables import compact_table, print_fitted

if TYPE_CHECKING:
    from rich.console import Console

    from adaptim.lab.lr_find import LrFindResult
    from adaptim.lab.study import ProblemOutcome

STOPS = {
    "completed": "ran every step of the ramp without blowing up (try a larger --end-lr)",
    "diverged": "stopped when the smoothed loss passed 4× its minimum",
    "non-finite": "stopped at a non-finite loss",
    "data exhausted": "stopped: the data ran out",
}


def lr_find(
    problem: Annotated[
        str,
        typer.Option(
            "--problem", "-p", metavar="NAME", help="Problem name or package.module:function."
        ),
    ],
    optimizer: Annotated[
        str,
        typer.Option(
            "--optimizer", "-o", metavar="NAME", help="Optimizer name (name or name@flavor)."
        ),
    ] = "adam",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="PARAM=VALUE",
            help="Fix a hyperparameter: PARAM=VALUE (e.g. momentum=0.8; or OPTIMIZER.PARAM=VALUE).",
        ),
    ] = None,
    start_lr: Annotated[
        float | None,
        typer.Option(
            metavar="LR", help="First lr of the ramp (default: 1000× below the optimizer's grid)."
        ),
    ] = None,
    end_lr: Annotated[
        float | None,
        typer.Option(
            metavar="LR", help="Last lr of the ramp (default: 100× above the optimizer's grid)."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(metavar="N", help="Steps of the ramp.")] = 100,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed the problem is built from.")] = 0,
    out: Annotated[
        Path,
        typer.Option(
            metavar="DIR", help="Output directory for the figure (SVG, PNG) and the JSON."
        ),
    ] = Path("adaptim-results"),
    data_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Directory with dataset files, e.g. MNIST IDX."),
    ] = None,
) -> None:
    """The learning-rate range test (Smith 2017): suggested learning rates and their figure."""
    from adaptim.cli import _fail, _make_out, console

    try:
        started = time.perf_counter()
        result, title = _run(problem, optimizer, list(set_ or []), start_lr, end_lr, steps, seed,
                             data_dir)  # fmt: skip
        elapsed = time.perf_counter() - started
        _make_out(out)
        stem = out / ("lr-find-" + re.sub(r"[^A-Za-z0-9._-]+", "_", f"{problem}-{optimizer}"))
        from adaptim.lab.report.numbers import lr_text
        from adaptim.lab.report.tuning import write_lr_find

        try:
            svg, png = write_lr_find(result, title, stem)
            data = {"problem": problem, "optimizer": optimizer, "seed": seed, **result.to_json()}
            stem.with_suffix(".json").write_text(json.dumps(data, indent=2, allow_nan=False))
        except OSError as error:
            raise LabError(f"cannot write to {str(out)!r}: {error.strerror}") from None
    except (LabError, ValueError) as error:
        message = str(error)
        for name in ("start_lr", "end_lr", "steps"):  # lr_find's argument is this option
            message = message.replace(f"Invalid {name}:", f"Invalid --{name.replace('_', '-')}:")
        raise _fail(message) from None
    table = compact_table(f"{escape(title)}: suggested learning rates")
    table.leading = 1  # the rules wrap over lines: a blank line tells the rows apart
    for column in ("suggestion", "lr", "smoothed loss", "rule"):
        right = column in ("lr", "smoothed loss")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "rule")
    for s in result.suggestions:
        table.add_row(s.name, lr_text(s.lr), f"{s.loss:.4g}", escape(s.rule))
    print_fitted(console, [table])
    last = f"{result.lrs[-1]:.3g}" if result.lrs else "–"
    paragraph(  # (Rich's own wrapping leaves a blank at the end of a wrapped line)
        console,
        f"{result.steps} of {result.planned} steps in {elapsed:.1f}s; {STOPS[result.stop]} "
        f"(last finite lr {last}).",
    )
    if not result.suggestions:
        console.print("[red]No suggestion:[/] too few finite points; lower --start-lr.")
    # A path stays on one line (a wrapped one does not paste back).
    console.print(f"Figure: [bold]{escape(str(svg))}[/]", soft_wrap=True)
    console.print(f"        [bold]{escape(str(png))}[/]", soft_wrap=True)


def _run(
    problem_spec: str,
    optimizer: str,
    settings: list[str],
    start_lr: float | None,
    end_lr: float | None,
    steps: int,
    seed: int,
    data_dir: Path | None,
) -> tuple[LrFindResult, str]:
    from adaptim.lab.lr_find_trials import lr_find_problem
    from adaptim.lab.optimizers import applicable, parse_optimizer, parse_settings
    from adaptim.lab.problems import BuildContext, resolve_problem

    parse_optimizer(optimizer)
    problem = resolve_problem(problem_spec)
    if data_dir is not None and not data_dir.is_dir():
        raise LabError(f"--data-dir {str(data_dir)!r} is not a readable directory")
    fixed = parse_settings([_qualified(item, optimizer) for item in settings], [optimizer])
    hparams = {**applicable(optimizer, problem.hparams), **fixed.get(optimizer, {})}
    if "lr" in hparams:
        raise LabError("--set lr=... makes no sense here: the range test sweeps the lr")
    result = lr_find_problem(
        problem,
        optimizer,
        hparams,
        seed=seed,
        context=BuildContext(data_dir),
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
    )
    return result, f"{problem.name} · {optimizer}"


def _qualified(item: str, optimizer: str) -> str:
    """``--set PARAM=VALUE`` as compare's ``OPTIMIZER.PARAM=VALUE``, which is taken too when it
    names ``optimizer``; anything else is refused quoting ``item`` as typed."""
    target, equals, raw = item.partition("=")
    named, dot, _ = target.strip().rpartition(".")
    if equals and raw.strip() and target.strip() and (not dot or named == optimizer):
        return item if dot else f"{optimizer}.{item}"
    raise LabError(
        f"malformed --set {item!r}: expected PARAM=VALUE, a hyperparameter of {optimizer} "
        "(the optimizer given to --optimizer), for example eps=1e-6"
    )


def print_tuning_costs(console: Console, problem: ProblemOutcome, wide: bool = False) -> None:
    """The cost-of-tuning table, when a tuning-free optimizer or ``--search lr-find`` is in;
    ``wide`` shows every column, wider than the terminal if need be."""
    from adaptim.lab.report.tuning import COST_NOTE, cost_rows, shows_costs

    if not shows_costs(problem):
        return
    head, rows = cost_rows(problem.problem.metric, problem.recommendation)

    def table(keep: Sequence[int]) -> Table:
        table = compact_table(f"{escape(problem.problem.name)}: the cost of tuning", COST_NOTE)
        for i in keep:
            table.add_column(escape(head[i]), justify="left" if i < 2 else "right", no_wrap=i != 1)
        for row in rows:
            table.add_row(*(escape(row[i]) for i in keep))
        return table

    # Every column where they fit; at 80 columns the optimizer, how it was tuned, the steps
    # and the value (the run counts and the range test's steps are also in the report).
    every = table(range(len(head)))
    print_fitted(console, [every] if wide else [every, table([0, 1, 4, 5, 6])])
