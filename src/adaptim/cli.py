"""The ``adaptim`` command: compare, report, reproduce, problems, optimizers and lr-find.

``compare`` is :mod:`adaptim._compare_cli`, ``lr-find`` :mod:`adaptim._lr_find_cli`, and the
terminal side of ``reproduce`` :mod:`adaptim._reproduce_cli`; this module holds the app, the
other commands and :func:`main`, the last line of defence.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from typer import _click as click
from typer.core import TyperGroup, TyperOption
from typer.exceptions import TyperException

from adaptim.lab import console as show
from adaptim.lab.errors import LabError

if TYPE_CHECKING:  # the lab is imported lazily, so that `adaptim --help` is instant
    from adaptim.lab.study import StudyOutcome


class _Group(TyperGroup):
    """Usage errors as one line, like every other error; boolean flags shown as flags.

    Typer draws them in a box over several lines, after the usage; here they read
    ``error: Invalid value for '--seeds': ... (see 'adaptim compare --help')`` and exit 2.
    """

    def get_help_option(self, ctx: click.Context) -> TyperOption | None:
        return _as_flag(super().get_help_option(ctx))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _as_flag(command.get_help_option(ctx))
            for param in command.params:
                if isinstance(param, TyperOption) and param.is_flag:
                    _as_flag(param)
        return command

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except TyperException as error:
            context = getattr(error, "ctx", None)
            if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
                typer.echo(context.get_help())  # `adaptim` alone shows the help
                code = error.exit_code
            else:
                where = f" (see '{context.command_path} --help')" if context is not None else ""
                message = " ".join(error.format_message().split())
                errors.print(
                    f"error: {message}{where}", markup=False, highlight=False, soft_wrap=True
                )
                code = 2 if context is not None else error.exit_code
        except typer.Abort:
            errors.print("error: aborted", markup=False, highlight=False)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _as_flag(option: TyperOption | None) -> TyperOption | None:
    if option is not None:
        option.metavar = ""  # rich help prints the metavar in place of the type
    return option


app = typer.Typer(
    cls=_Group,
    name="adaptim",
    help="Adaptive optimizers done right, and a lab that compares them fairly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _interrupted() -> typer.Exit:
    """Ctrl-C: the store keeps every finished trial, so the same command picks up from there."""
    errors.print(show.RESUME_HINT, highlight=False, soft_wrap=True)
    return typer.Exit(code=130)


# `compare` lives in its own module (with the options report and reproduce share); registered
# here, first, so that it heads the command list.
from adaptim._compare_cli import StoreOption, WideOption, WorkersOption, compare  # noqa: E402

app.command()(compare)


def _workers(workers: int) -> int:
    """``--workers``: 0 means one per core."""
    from adaptim.lab.executors import available_cores, check_workers

    if workers < 0:
        raise LabError(f"--workers must be 0 (one per core) or more, got {workers}")
    workers = workers or available_cores()
    check_workers(workers)
    return workers


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LabError(f"cannot create output directory {str(out)!r}: {error.strerror}") from None


def _write_report(outcome: StudyOutcome, path: Path, study_key: str) -> Path:
    from adaptim.lab.report import write_report

    try:
        return write_report(outcome, path, study_key)
    except OSError as error:
        raise LabError(f"cannot write the report {str(path)!r}: {error.strerror}") from None


@app.command()
def report(
    directory: Annotated[
        Path | None,
        typer.Argument(
            metavar="DIRECTORY",
            help="Output directory of `adaptim compare` (its store and results.json); "
            "default adaptim-results, unless --store is given.",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="SQLAlchemy URL of the store (default: SQLite in DIRECTORY)."
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            metavar="KEY", help="Study key (or a prefix) when the store holds several studies."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Where to write the page (default: DIRECTORY/report.html; "
            "with --store and no DIRECTORY, ./report.html).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="The --data-dir the study ran with, if any.")
    ] = None,
    wide: WideOption = False,
    trust_problem_module: Annotated[
        bool,
        typer.Option(
            "--trust-problem-module",
            help="Import and call the study's own module:function problems (this runs their "
            "code); without it a store is read as data only.",
        ),
    ] = False,
) -> None:
    """Re-render the HTML report of a stored study, without running anything."""
    try:
        path = _report(directory, store, study, out, data_dir, wide, trust_problem_module)
    except LabError as error:
        raise _fail(str(error)) from None
    console.print(f"Report: [bold]{escape(str(path))}[/]", soft_wrap=True)


def _report(
    given: Path | None,
    store_url: str | None,
    key: str | None,
    out: Path | None,
    data_dir: Path | None,
    wide: bool,
    trust_problem_module: bool = False,
) -> Path:
    from adaptim.lab.report import load_study
    from adaptim.lab.report.stored import choose_study
    from adaptim.lab.store import Store, default_url

    directory = given or Path("adaptim-results")
    if store_url is None:
        if not directory.is_dir():
            raise LabError(f"no such directory {str(directory)!r}; give the --out of a compare run")
        if not (directory / "adaptim.db").is_file():
            raise LabError(
                f"{str(directory)!r} has no store (adaptim.db); pass --store URL if it lives elsewhere"
            )
    trial_store = Store(store_url or default_url(directory))
    # Without --study, the directory's results.json names the study it shows.
    results = directory / "results.json" if given or store_url is None else None
    study_key, command = choose_study(trial_store, key, results)
    outcome = load_study(trial_store, study_key, command, data_dir, trust_problem_module)
    # A store elsewhere must not overwrite the report of adaptim-results' own study.
    target = out or (
        directory / "report.html" if given or store_url is None else Path("report.html")
    )
    if not target.parent.is_dir():
        raise LabError(f"cannot write the report: directory {str(target.parent)!r} does not exist")
    path = _write_report(outcome, target, study_key)
    for problem in outcome.problems:
        show.print_problem(console, problem, wide)
    return path


@app.command()
def reproduce(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="The reduced version for CI: cheap claims, budget 4, 2 seeds."
        ),
    ] = False,
    out: Annotated[
        Path,
        typer.Option(metavar="DIR", help="Directory for reproduce.json and the default store."),
    ] = Path("adaptim-reproduce"),
    store: StoreOption = None,
    workers: WorkersOption = 0,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit with code 1 when a claim does not hold.")
    ] = False,
) -> None:
    """Run every published claim the lab carries through the protocol and say which hold."""
    try:
        from adaptim._reproduce_cli import run_and_print

        _make_out(out)
        verdicts, path = run_and_print(console, quick, out, store, _workers(workers))
    except LabError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise _interrupted() from None
    console.print(f"\nResults: [bold]{escape(str(path))}[/]", soft_wrap=True)
    if strict and not all(v.holds for v in verdicts):
        raise typer.Exit(code=1)


@app.command()
def problems() -> None:
    """List the built-in problems."""
    from adaptim.lab.problems import PROBLEMS

    entries = []
    for p in PROBLEMS.values():
        target = "" if p.target is None else f", target {p.target:g}"
        fixes = ", ".join(f"{k}={v}" for k, v in p.hparams.items())
        lines = [
            p.description,
            f"{p.metric.name} ({p.metric.goal}){target}; {p.steps} steps of batch {p.batch_size}"
            + (f"; fixes {fixes}" if fixes else ""),
        ]
        entries.append((p.name, lines))
    show.listing(console, "Built-in problems (or --problem package.module:function)", entries)


@app.command()
def optimizers(
    flavors: Annotated[
        bool,
        typer.Option(
            "--flavors",
            help="Show, per algorithm, the equations of each framework flavor (Markdown).",
        ),
    ] = False,
) -> None:
    """List the optimizers and named variants the lab compares, with their search spaces."""
    if flavors:
        from adaptim.flavor_docs import render_markdown

        typer.echo(render_markdown(), nl=False)
        return
    from adaptim.lab.optimizers import VARIANTS, state_bytes_per_parameter

    entries = []
    for v in VARIANTS.values():
        fixed = ", ".join(f"{k}={val}" for k, val in v.fixed.items())
        # (the lab's own wrappers, such as adaptim.lab.adapters.MuonWithAdamW, by full path)
        where = "adaptim" if v.cls.__module__.startswith("adaptim.torch") else v.cls.__module__
        path = f"{where}.{v.cls.__name__}"
        lines = [
            v.description,
            f"{path}({fixed})" if fixed else path,
            "tuning-free: runs at its defaults, zero tuning runs"
            if v.tuning_free
            else f"grid: lr {v.lr_range[0]:g}–{v.lr_range[1]:g}; random and tpe search: "
            + "; ".join(d.describe() for d in v.space),
            # measured on a float32 parameter after one step (see state_bytes_per_parameter)
            f"state: {state_bytes_per_parameter(v.name):.3g} bytes per parameter",
        ]
        entries.append((v.name, lines))
    show.listing(console, "Optimizers (use the name, or name@flavor)", entries)


from adaptim._lr_find_cli import lr_find as _lr_find  # noqa: E402  (after `app` exists)

app.command("lr-find")(_lr_find)


def main() -> None:
    """The command, with a last line of defence: one line on stderr, never a traceback.

    Commands turn the user's mistakes into :class:`LabError` themselves (exit 2). What
    escapes them is the environment (memory, disk, a database the store could not wrap: exit
    2) or a bug in adaptim (exit 1; ``ADAPTIM_TRACEBACK=1`` shows where). A closed stdout
    (``adaptim compare | head -1``) only silences the output: the study still finishes and
    writes its files, quietly.
    """
    sys.stdout = _PipeTolerant(sys.stdout)
    try:
        app()
    except LabError as error:  # pragma: no cover - commands convert their own
        _last_line(str(error), 2)
    except (MemoryError, OverflowError, OSError) as error:
        _last_line(f"{type(error).__name__}: {_first_line(error)}", 2)
    except Exception as error:
        if os.environ.get("ADAPTIM_TRACEBACK"):
            raise
        _last_line(
            f"internal error, {type(error).__name__}: {_first_line(error)} (a bug in adaptim; "
            "set ADAPTIM_TRACEBACK=1 to see where)",
            1,
        )


class _PipeTolerant:
    """stdout that goes quiet, instead of raising ``BrokenPipeError``, once its reader is gone."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self._closed = True
        # What is still buffered is flushed at exit: let it go to /dev/null, not to the pipe.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _last_line(message: str, code: int) -> None:
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
