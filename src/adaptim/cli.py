"""The ``adaptim`` command: ``compare``, ``report``, ``reproduce``, ``problems`` and ``optimizers``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adaptim.lab.errors import LabError

if TYPE_CHECKING:  # the lab is imported lazily, so that `adaptim --help` is instant
    from adaptim.lab.executors import Executor
    from adaptim.lab.study import ProblemOutcome, StudyOutcome
    from adaptim.lab.trial import TrialResult

app = typer.Typer(
    name="adaptim",
    help="Adaptive optimizers done right, and a lab that compares them fairly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

DEFAULT_PROBLEMS = ("quadratic-deep", "logreg-sparse", "digits-mlp")

StoreOption = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL of the store (default: SQLite in --out).")
]
WorkersOption = Annotated[
    int, typer.Option(help="Worker processes; 1 runs in this process, 0 uses one per CPU core.")
]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def compare(
    problem: Annotated[
        list[str] | None,
        typer.Option(
            "--problem", "-p", help="Problem name or package.module:function; repeatable."
        ),
    ] = None,
    optimizers: Annotated[
        str,
        typer.Option(
            "--optimizers", "-o", help="Comma-separated optimizer names (name or name@flavor)."
        ),
    ] = ",".join(("sgd", "momentum", "adagrad", "rmsprop", "adam")),
    seeds: Annotated[
        int, typer.Option(help="Seeds for re-running each optimizer's chosen setting.")
    ] = 3,
    max_seeds: Annotated[
        int,
        typer.Option(
            help="Adaptive seeding: while the leader is not distinguishable from another "
            "optimizer, both (and every such one) get one more seed, up to this many. "
            "Equal to --seeds turns it off."
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
        int | None, typer.Option(help="Step budget per trial (default: the problem's).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Fix a hyperparameter instead of tuning it: OPTIMIZER.PARAM=VALUE; repeatable.",
        ),
    ] = None,
    budget: Annotated[
        int, typer.Option(help="Tuning budget: learning rates tried per optimizer.")
    ] = 8,
    search: Annotated[
        str,
        typer.Option(
            help="grid (lr only, grown at edge hits), or random / tpe (Optuna) over each "
            "optimizer's declared space (see `adaptim optimizers`)."
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
    """Tune and compare optimizers on problems, fairly; store every trial and recommend one."""
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
            cluster=(executor, ray_address, trial_cpus, trial_gpus),
            device=device,
        )
    except LabError as error:
        raise _fail(str(error)) from None
    console.print(f"\nResults: [bold]{outcome_path}[/]")
    console.print(f"Report:  [bold]{outcome_path.with_name('report.html')}[/]")


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
    cluster: tuple[str, str | None, float, float] = ("local", None, 1.0, 0.0),
    device: str = "cpu",
) -> Path:
    from adaptim.lab.claims import Claims
    from adaptim.lab.executors import make_executor
    from adaptim.lab.optimizers import parse_settings
    from adaptim.lab.problems import BuildContext
    from adaptim.lab.protocol import StudyConfig
    from adaptim.lab.store import Store, default_url
    from adaptim.lab.study import Study

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
    _make_out(out)
    trial_store = Store(store_url or default_url(out))
    executor = _executor(cluster) or make_executor(workers)
    # Other `adaptim compare` processes on this store and study split the trials with this one.
    claims = Claims(trial_store)
    started = time.time()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=False,
    )
    try:
        study = Study(config, trial_store, executor, BuildContext(data_dir, device), claims=claims)
        study.policy()  # a bad --margin fails before any trial runs
        with progress:
            task = progress.add_task("trials", total=study.planned_trials(), last="")

            def on_trial(result: TrialResult, reused: bool) -> None:
                spec = result.spec
                lr = spec.hparams.get("lr")
                tag = "stored" if reused else f"{result.wall_time:.1f}s"
                done = progress.tasks[0].completed + 1
                progress.update(
                    task,
                    advance=1,
                    # Grid extensions grow the plan; adaptive seeding and a tie's second-seed
                    # sweep add trials beyond it.
                    total=max(done, study.planned_trials()),
                    last=f"{spec.problem} · {spec.optimizer} lr={lr:.3g} seed {spec.seed} ({tag})",
                )

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
        _print_problem(problem)
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
    from adaptim.lab.executors import available_cores

    if workers < 0:
        raise LabError(f"--workers must be 0 (one per core) or more, got {workers}")
    return workers or available_cores()


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


def _print_problem(problem: ProblemOutcome) -> None:
    from adaptim.lab.report.data import ranking, verdict

    metric = problem.problem.metric
    goal = "lower" if metric.goal == "min" else "higher"
    found = verdict(problem)
    caption = None
    if found.target is not None:
        source = (
            "the problem's target"
            if found.target_fixed
            else "reached by every seed of the best two"
        )
        caption = (
            f"steps to target: median over seeds to validation {metric.name} "
            f"{found.target:.4g} ({source})"
        )
    table = Table(
        title=f"{problem.problem.name}: final {metric.name} ({goal} is better)",
        caption=None if caption is None else escape(caption),
    )
    for column in (
        "optimizer",
        "standing",
        "chosen lr",
        f"test {metric.name}",
        "seeds",
        "diverged · tuning",
        "vs leader (95% CI)",
        "steps to target",
        "good-lr range",
    ):
        table.add_column(column, justify="left" if column in ("optimizer", "standing") else "right")
    for row in ranking(problem):
        table.add_row(
            f"[bold]{escape(row.optimizer)}[/]" if row.recommended else escape(row.optimizer),
            escape(row.status),
            row.lr + ("*" if row.lr_at_edge else ""),
            f"{row.mean} {row.ci95}" if row.ci95 != "–" else row.mean,
            str(row.seeds),
            f"{row.diverged_reruns} · {row.diverged_tuning}",
            escape(row.vs_leader),
            row.steps_to_target,
            escape(row.good_lr_steps),
        )
    console.print(table)
    console.print(f"[bold green]Recommendation:[/] {escape(found.headline)}", highlight=False)
    for sentence in found.evidence:
        console.print(f"  • {escape(sentence)}", highlight=False)
    console.print()


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
) -> None:
    """Re-render the HTML report of a stored study, without running anything."""
    try:
        path = _report(directory, store, study, out, data_dir)
    except LabError as error:
        raise _fail(str(error)) from None
    console.print(f"Report: [bold]{path}[/]")


def _report(
    given: Path | None,
    store_url: str | None,
    key: str | None,
    out: Path | None,
    data_dir: Path | None,
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
    outcome = load_study(trial_store, study_key, command, data_dir)
    # A store elsewhere must not overwrite the report of adaptim-results' own study.
    target = out or (
        directory / "report.html" if given or store_url is None else Path("report.html")
    )
    if not target.parent.is_dir():
        raise LabError(f"cannot write the report: directory {str(target.parent)!r} does not exist")
    path = _write_report(outcome, target, study_key)
    for problem in outcome.problems:
        _print_problem(problem)
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
    console.print(f"\nResults: [bold]{path}[/]")
    if strict and not all(v.holds for v in verdicts):
        raise typer.Exit(code=1)


@app.command()
def problems() -> None:
    """List the built-in problems."""
    from adaptim.lab.problems import PROBLEMS

    table = Table(title="built-in problems (or --problem package.module:function)")
    for column in ("name", "metric", "target", "steps", "batch", "fixes", "description"):
        table.add_column(column, no_wrap=column not in ("description", "fixes"))
    for p in PROBLEMS.values():
        table.add_row(
            p.name,
            f"{p.metric.name} ({p.metric.goal})",
            "-" if p.target is None else f"{p.target:g}",
            str(p.steps),
            str(p.batch_size),
            ", ".join(f"{k}={v}" for k, v in p.hparams.items()) or "-",
            p.description,
        )
    console.print(table)


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
    from adaptim.lab.optimizers import VARIANTS

    table = Table(title="optimizers (use the name, or name@flavor)")
    for column in (
        "name",
        "class",
        "fixed settings",
        "lr range (grid)",
        "search space",
        "description",
    ):
        table.add_column(column, no_wrap=column in ("name", "class", "lr range (grid)"))
    for v in VARIANTS.values():
        fixed = ", ".join(f"{k}={val}" for k, val in v.fixed.items()) or "-"
        table.add_row(
            v.name,
            f"adaptim.{v.cls.__name__}",
            fixed,
            f"{v.lr_range[0]:g} – {v.lr_range[1]:g}",
            "; ".join(d.describe() for d in v.space),
            v.description,
        )
    console.print(table)


def main() -> None:
    try:
        app()
    except LabError as error:  # pragma: no cover - commands convert their own
        errors.print(f"error: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
