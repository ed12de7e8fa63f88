"""``adaptim compare``: its options, and the study it runs from them.

Kept apart from :mod:`adaptim.cli` so the command module stays small, as
:mod:`adaptim._lr_find_cli` and :mod:`adaptim._reproduce_cli` are. The options
that ``report`` and ``reproduce`` share with it (``--store``, ``--workers``,
``--wide``) are defined here and imported by :mod:`adaptim.cli`. The study itself
is :mod:`adaptim.lab.study`; this module turns the options into one, runs it
with a progress bar and prints what it found.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from adaptim.lab import console as show
from adaptim.lab.defaults import DEFAULT_OPTIMIZERS, DEFAULT_PROBLEMS
from adaptim.lab.errors import LabError

if TYPE_CHECKING:  # the lab is imported lazily, so that `adaptim --help` is instant
    from adaptim.lab.executors import Executor
    from adaptim.lab.trial import TrialResult

StoreOption = Annotated[
    str | None,
    typer.Option(metavar="URL", help="SQLAlchemy URL of the store (default: SQLite in --out)."),
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
            metavar="MARGIN",
            help="Equivalence margin: an absolute value in the metric's units (0.005) or a "
            "percentage of the leader's mean (2%); below 1 (100%) for accuracies and error "
            "rates. Default: 0.01 for accuracies and error rates, 1% otherwise.",
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
            metavar="METHOD",
            help="grid (lr only, grown at edge hits), or random / tpe (Optuna) over each "
            "optimizer's declared space (see `adaptim optimizers`), or lr-find (the LR range "
            "test, then runs at its suggestions as the budget allows; its steps count).",
        ),
    ] = "grid",
    schedule: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="Learning-rate schedule for every optimizer: constant, cosine, warmup-cosine, step.",
        ),
    ] = "constant",
    out: Annotated[
        Path,
        typer.Option(
            metavar="DIR", help="Output directory for results.json and the default store."
        ),
    ] = Path("adaptim-results"),
    store: StoreOption = None,
    workers: WorkersOption = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Directory with dataset files, e.g. MNIST IDX."),
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
            metavar="NAME",
            help="local (this machine: --workers processes) or ray (each trial a Ray task).",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="With --executor ray: auto or ray://host:port of a running cluster "
            "(default: start a local Ray).",
        ),
    ] = None,
    trial_cpus: Annotated[
        float, typer.Option(metavar="N", help="With --executor ray: CPUs each trial declares.")
    ] = 1.0,
    trial_gpus: Annotated[
        float, typer.Option(metavar="N", help="With --executor ray: GPUs each trial declares.")
    ] = 0.0,
    device: Annotated[
        str,
        typer.Option(
            metavar="DEVICE",
            help="Device of each trial: cpu, cuda, or auto (cuda when there is one; on Ray, "
            "when --trial-gpus is set).",
        ),
    ] = "cpu",
) -> None:
    """Tune and compare optimizers on problems, fairly; store every trial and recommend one.

    Re-running the same command reuses the stored trials, so an interrupted study resumes.
    """
    from adaptim.cli import _fail, _interrupted, console

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
    # Paths stay on one line, however long (a wrapped one does not paste back). (No blank
    # line first: each problem's evidence ends with one.)
    console.print(f"Results: [bold]{escape(str(outcome_path))}[/]", soft_wrap=True)
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
    from adaptim.cli import _workers, _write_report, console
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
    resolved = {spec: resolve_problem(spec) for spec in config.problems}
    study_policy(config, resolved)  # a bad --margin, or one meaningless for a metric
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
