"""The ``adaptim`` command: ``compare``, ``problems`` and ``optimizers``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adaptim.lab.errors import LabError

if TYPE_CHECKING:  # the lab is imported lazily, so that `adaptim --help` is instant
    from adaptim.lab.study import ProblemOutcome
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


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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
        str, typer.Option(help="Learning-rate search: grid, tpe or random (Optuna).")
    ] = "grid",
    out: Annotated[
        Path, typer.Option(help="Output directory for results.json and the default store.")
    ] = Path("adaptim-results"),
    store: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the store (default: SQLite in --out).")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes; 1 runs in this process, 0 uses one per CPU core.")
    ] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Directory with dataset files, e.g. MNIST IDX.")
    ] = None,
) -> None:
    """Tune and compare optimizers on problems, fairly; store every trial and recommend one."""
    try:
        outcome_path = _compare(
            problems=tuple(problem or DEFAULT_PROBLEMS),
            optimizers=tuple(o.strip() for o in optimizers.split(",") if o.strip()),
            seeds=seeds,
            steps=steps,
            settings=list(set_ or []),
            budget=budget,
            search=search,
            out=out,
            store_url=store,
            workers=workers,
            data_dir=data_dir,
        )
    except LabError as error:
        raise _fail(str(error)) from None
    console.print(f"\nResults: [bold]{outcome_path}[/]")


def _compare(
    *,
    problems: tuple[str, ...],
    optimizers: tuple[str, ...],
    seeds: int,
    steps: int | None,
    settings: list[str],
    budget: int,
    search: str,
    out: Path,
    store_url: str | None,
    workers: int,
    data_dir: Path | None,
) -> Path:
    from adaptim.lab.executors import available_cores, make_executor
    from adaptim.lab.optimizers import parse_settings
    from adaptim.lab.problems import BuildContext
    from adaptim.lab.protocol import StudyConfig
    from adaptim.lab.store import Store, default_url
    from adaptim.lab.study import Study

    if workers < 0:
        raise LabError(f"--workers must be 0 (one per core) or more, got {workers}")
    workers = workers or available_cores()
    if data_dir is not None and not data_dir.is_dir():
        raise LabError(f"--data-dir {str(data_dir)!r} is not a readable directory")
    config = StudyConfig(
        problems=problems,
        optimizers=optimizers,
        seeds=seeds,
        steps=steps,
        settings=parse_settings(settings, optimizers),
        budget=budget,
        search=search,  # type: ignore[arg-type]  # StudyConfig validates it
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LabError(f"cannot create output directory {str(out)!r}: {error.strerror}") from None
    trial_store = Store(store_url or default_url(out))
    executor = make_executor(workers)
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
        study = Study(config, trial_store, executor, BuildContext(data_dir))
        with progress:
            task = progress.add_task("trials", total=study.planned_trials(), last="")

            def on_trial(result: TrialResult, reused: bool) -> None:
                spec = result.spec
                lr = spec.hparams.get("lr")
                tag = "stored" if reused else f"{result.wall_time:.1f}s"
                progress.update(
                    task,
                    advance=1,
                    last=f"{spec.problem} · {spec.optimizer} lr={lr:.3g} seed {spec.seed} ({tag})",
                )

            study.on_trial = on_trial
            outcome = study.run()
        trial_store.save_study(config.key(), config.to_json(), outcome.command)
        path = outcome.write(out)
    finally:
        executor.close()
    for problem in outcome.problems:
        _print_problem(problem)
    return path


def _print_problem(problem: ProblemOutcome) -> None:
    metric = problem.problem.metric
    table = Table(
        title=f"{problem.problem.name}: final {metric.name} ({'lower' if metric.goal == 'min' else 'higher'} is better)"
    )
    for column in (
        "optimizer",
        "chosen lr",
        f"mean {metric.name}",
        "95% CI",
        "seeds",
        "diverged",
        "good-lr range",
    ):
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    from adaptim.lab.analysis import lr_at_edge, robustness

    ordered = sorted(
        problem.outcomes,
        key=lambda o: (
            o.summary.mean is None,
            (o.summary.mean or 0) * (1 if metric.goal == "min" else -1),
        ),
    )
    for o in ordered:
        s = o.summary
        lr = o.hparams.get("lr")
        name = f"[bold]{o.name}[/]" if o.name == problem.recommendation.optimizer else o.name
        table.add_row(
            name,
            (f"{lr:.3g}" + ("*" if lr_at_edge(o) else "")) if isinstance(lr, (int, float)) else "-",
            "-" if s.mean is None else f"{s.mean:.4g}",
            "-" if s.ci95 is None else f"± {s.ci95:.2g}",
            str(s.n),
            str(s.diverged),
            f"{robustness(metric, o.tuning):.1f} dec",
        )
    console.print(table)
    console.print(
        f"[bold green]Recommendation:[/] {problem.recommendation.reason}\n", highlight=False
    )


@app.command()
def problems() -> None:
    """List the built-in problems."""
    from adaptim.lab.problems import PROBLEMS

    table = Table(title="built-in problems (or --problem package.module:function)")
    for column in ("name", "metric", "steps", "batch", "description"):
        table.add_column(column, no_wrap=column != "description")
    for p in PROBLEMS.values():
        table.add_row(
            p.name,
            f"{p.metric.name} ({p.metric.goal})",
            str(p.steps),
            str(p.batch_size),
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
    """List the optimizers and named variants the lab compares, with their lr search ranges."""
    if flavors:
        from adaptim.flavor_docs import render_markdown

        typer.echo(render_markdown(), nl=False)
        return
    from adaptim.lab.optimizers import VARIANTS

    table = Table(title="optimizers (use the name, or name@flavor)")
    for column in ("name", "class", "fixed settings", "lr range", "description"):
        table.add_column(column, no_wrap=column in ("name", "class", "lr range"))
    for v in VARIANTS.values():
        fixed = ", ".join(f"{k}={val}" for k, val in v.fixed.items()) or "-"
        table.add_row(
            v.name,
            f"adaptim.{v.cls.__name__}",
            fixed,
            f"{v.lr_range[0]:g} – {v.lr_range[1]:g}",
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
