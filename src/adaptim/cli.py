"""The ``adaptim`` command: ``compare``, ``report``, ``reproduce``, ``problems`` and ``optimizers``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
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
from adaptim.lab.defaults import DEFAULT_OPTIMIZERS, DEFAULT_PROBLEMS
from adaptim.lab.errors import LabError

if TYPE_CHECKING:  # the lab is imported lazily, so that `adaptim --help` is instant
    from adaptim.lab.executors import Executor
    from adaptim.lab.study import StudyOutcome
    from adaptim.lab.trial import TrialResult


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

StoreOption = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL of the store (default: SQLite in --out).")
]
WorkersOption = Annotated[
    int,
    typer.Option(
        metavar="N", help="Worker processes; 1 runs in this process, 0 uses one per CPU core."
    ),
]
WideOption = Annotated[
    bool,
    typer.Option(
        "--wide",
        help="Tables with every column (divergences, steps to target, good-lr range); "
        "printed wider than the terminal if need be.",
    ),
]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _interrupted() -> typer.Exit:
    """Ctrl-C: the store keeps every finished trial, so the same command picks up from there."""
    errors.print(show.RESUME_HINT, highlight=False, soft_wrap=True)
    return typer.Exit(code=130)


@app.command()
def compare(
    problem: Annotated[
        list[str] | None,
        typer.Option(
            "--problem",
            "-p",
            metavar="NAME",
            help="Problem name (see `adaptim problems`) or package.module:function; repeatable. "
            f"Default: {', '.join(DEFAULT_PROBLEMS)}.",
        ),
    ] = None,
    optimizers: Annotated[
        str,
        typer.Option(
            "--optimizers",
            "-o",
            metavar="NAMES",
            help="Comma-separated optimizer names, name or name@flavor (see `adaptim optimizers`).",
        ),
    ] = ",".join(DEFAULT_OPTIMIZERS),
    seeds: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Number of seeds each optimizer's chosen setting is re-run with "
            "(the numbers compared).",
        ),
    ] = 3,
    max_seeds: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Most seeds per optimizer with adaptive seeding: while the leader is not "
            "distinguishable from another optimizer, both (and every such one) get one more "
            "seed. Equal to --seeds turns it off.",
        ),
    ] = 10,
    margin: Annotated[
        str | None,
        typer.Option(
            help="Equivalence margin: an absolute value in the metric's units (0.005) or a "
            "percentage of the leader's mean (2%). Default: 0.01 for accuracies and error "
            "rates, 1% otherwise."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(metavar="N", help="Optimizer steps per trial (default: the problem's)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME.PARAM=VALUE",
            help="Fix a hyperparameter instead of tuning it: OPTIMIZER.PARAM=VALUE; repeatable.",
        ),
    ] = None,
    budget: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Tuning budget: number of settings (learning rates on the grid) tried per "
            "optimizer and problem, on one seed.",
        ),
    ] = 8,
    search: Annotated[
        str,
        typer.Option(
            help="grid (lr only, grown at edge hits), or random / tpe (Optuna) over each "
            "optimizer's declared space (see `adaptim optimizers`), or lr-find (the LR range "
            "test, then runs at its suggestions as the budget allows; its steps count)."
        ),
    ] = "grid",
    schedule: Annotated[
        str,
        typer.Option(
            help="Learning-rate schedule for every optimizer: constant, cosine, warmup-cosine, step."
        ),
    ] = "constant",
    out: Annotated[
        Path, typer.Option(help="Output directory for results.json and the default store.")
    ] = Path("adaptim-results"),
    store: StoreOption = None,
    workers: WorkersOption = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Directory with dataset files, e.g. MNIST IDX.")
    ] = None,
    wide: WideOption = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Overwrite results.json and report.html in --out when they are another study's.",
        ),
    ] = False,
    executor: Annotated[
        str,
        typer.Option(
            help="local (this machine: --workers processes) or ray (each trial a Ray task)."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --executor ray: auto or ray://host:port of a running cluster "
            "(default: start a local Ray)."
        ),
    ] = None,
    trial_cpus: Annotated[
        float, typer.Option(help="With --executor ray: CPUs each trial declares.")
    ] = 1.0,
    trial_gpus: Annotated[
        float, typer.Option(help="With --executor ray: GPUs each trial declares.")
    ] = 0.0,
    device: Annotated[
        str,
        typer.Option(
            help="Device of each trial: cpu, cuda, or auto (cuda when there is one; on Ray, "
            "when --trial-gpus is set)."
        ),
    ] = "cpu",
) -> None:
    """Tune and compare optimizers on problems, fairly; store every trial and recommend one.

    Re-running the same command reuses the stored trials, so an interrupted study resumes.
    """
    try:
        outcome_path = _compare(
            problems=tuple(problem or DEFAULT_PROBLEMS),
            optimizers=tuple(o.strip() for o in optimizers.split(",") if o.strip()),
            seeds=seeds,
            max_seeds=max_seeds,
            margin=margin,
            steps=steps,
            settings=list(set_ or []),
            budget=budget,
            search=search,
            schedule=schedule,
            out=out,
            store_url=store,
            workers=workers,
            data_dir=data_dir,
            wide=wide,
            replace=replace,
            cluster=(executor, ray_address, trial_cpus, trial_gpus),
            device=device,
        )
    except LabError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        raise _interrupted() from None
    # Paths stay on one line, however long (a wrapped one does not paste back).
    console.print(f"\nResults: [bold]{escape(str(outcome_path))}[/]", soft_wrap=True)
    console.print(
        f"Report:  [bold]{escape(str(outcome_path.with_name('report.html')))}[/]", soft_wrap=True
    )


def _compare(
    *,
    problems: tuple[str, ...],
    optimizers: tuple[str, ...],
    seeds: int,
    max_seeds: int,
    margin: str | None,
    steps: int | None,
    settings: list[str],
    budget: int,
    search: str,
    schedule: str,
    out: Path,
    store_url: str | None,
    workers: int,
    data_dir: Path | None,
    wide: bool,
    replace: bool = False,
    cluster: tuple[str, str | None, float, float] = ("local", None, 1.0, 0.0),
    device: str = "cpu",
) -> Path:
    from adaptim.lab.claims import Claims
    from adaptim.lab.executors import make_executor
    from adaptim.lab.files import check_results_owner, check_writable_dir
    from adaptim.lab.optimizers import parse_settings
    from adaptim.lab.problems import BuildContext, resolve_problem
    from adaptim.lab.protocol import StudyConfig
    from adaptim.lab.store import Store, default_url
    from adaptim.lab.study import Study, study_policy

    workers = _workers(workers)
    if data_dir is not None and not data_dir.is_dir():
        raise LabError(f"--data-dir {str(data_dir)!r} is not a readable directory")
    config = StudyConfig(
        problems=problems,
        optimizers=optimizers,
        seeds=seeds,
        max_seeds=max_seeds,
        margin=margin,
        steps=steps,
        settings=parse_settings(settings, optimizers),
        budget=budget,
        search=search,  # type: ignore[arg-type]  # StudyConfig validates it
        schedule=schedule,
    )
    device = _device(device, cluster)
    # Everything is validated before anything touches the disk.
    study_policy(config)  # a bad --margin
    resolved = {spec: resolve_problem(spec) for spec in config.problems}
    check_writable_dir(out, "--out")
    if not replace:
        check_results_owner(out / "results.json", config.key(), "--out", "--replace")
    trial_store = Store(store_url or default_url(out))
    if not trial_store.persistent:
        console.print(
            f"note: the store {trial_store.url!r} is in memory: no trial outlives this run",
            markup=False,
            highlight=False,
        )
    executor = _executor(cluster) or make_executor(workers)
    # Other `adaptim compare` processes on this store and study split the trials with this one.
    claims = Claims(trial_store)
    started = time.time()
    try:
        study = Study(
            config,
            trial_store,
            executor,
            BuildContext(data_dir, device),
            problems=resolved,
            claims=claims,
        )
        study.policy()  # a bad --margin fails before any trial runs
        with show.StudyProgress(console, study.planned_trials()) as progress:

            def on_trial(result: TrialResult, reused: bool) -> None:
                # Grid extensions grow the plan; adaptive seeding and a tie's second-seed
                # sweep add trials beyond it.
                progress.finished(result.spec, reused, result.wall_time, study.planned_trials())

            study.on_trial = on_trial
            outcome = study.run()
        trial_store.save_study(config.key(), config.to_json(), outcome.command)
        # The study ends once: whichever worker completes it writes its files.
        finisher = claims.finish(
            config.key(),
            started,
            str(out.resolve()),
            lambda: (outcome.write(out), _write_report(outcome, out / "report.html", config.key())),
        )
        path = out / "results.json" if finisher is None else Path(finisher[1]) / "results.json"
        if finisher is not None:
            console.print(
                f"Another worker ({finisher[0]}) completed this study and wrote its files."
            )
    finally:
        claims.close()
        executor.close()
    for problem in outcome.problems:
        show.print_problem(console, problem, wide)
    return path


def _executor(cluster: tuple[str, str | None, float, float]) -> Executor | None:
    """``--executor ray`` and its options; ``None`` for the local executors."""
    name, address, cpus, gpus = cluster
    if name not in ("local", "ray"):
        raise LabError(f"--executor must be local or ray, got {name!r}")
    if name == "local":
        if address is not None:
            raise LabError("--ray-address needs --executor ray")
        return None
    from adaptim.lab.ray_executor import RayExecutor

    return RayExecutor(address, cpus, gpus)


def _device(device: str, cluster: tuple[str, str | None, float, float]) -> str:
    """``--device``, resolved where the trials will run: "cpu" or "cuda"."""
    if device not in ("cpu", "cuda", "auto"):
        raise LabError(f"--device must be cpu, cuda or auto, got {device!r}")
    if cluster[0] == "ray":  # the GPUs are the Ray workers', one per trial with --trial-gpus 1
        gpus = cluster[3] > 0
        if device == "cuda" and not gpus:
            raise LabError("--device cuda on Ray needs --trial-gpus (1: a GPU per trial)")
    else:
        import torch

        gpus = torch.cuda.is_available()
        if device == "cuda" and not gpus:
            raise LabError(
                "--device cuda: no CUDA device is available here (torch.cuda.is_available() "
                "is False); use --device cpu or auto"
            )
    return "cuda" if device == "cuda" or (device == "auto" and gpus) else "cpu"


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
            help="Output directory of `adaptim compare` (its store and results.json); "
            "default adaptim-results, unless --store is given."
        ),
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the store (default: SQLite in DIRECTORY).")
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study key (or a prefix) when the store holds several studies."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the page (default: DIRECTORY/report.html; "
            "with --store and no DIRECTORY, ./report.html)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="The --data-dir the study ran with, if any.")
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
        Path, typer.Option(help="Directory for reproduce.json and the default store.")
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
