"""One trial: a problem × optimizer × hyperparameters × seed × step budget, run to the end.

A trial streams records at regular intervals: step, training loss, the
*validation* metrics (the problem's ``validate()``; its ``evaluate()`` when it
has no validation split), training wall time (evaluation excluded) and the
effective learning rate (:mod:`adaptim.lab.effective_lr`). At the end it
evaluates the *test* metrics once: ``TrialResult.final``. Tuning and
time-to-target read validation (``TrialResult.validation`` and the records);
reported results read test. A diverged run (non-finite loss or main metric)
stops early and is marked; it never raises. The learning-rate schedule
(:mod:`adaptim.lab.schedules`) is part of the trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from adaptim import __version__
from adaptim.lab.effective_lr import EFFECTIVE_LR_PERCENTILES as EFFECTIVE_LR_PERCENTILES
from adaptim.lab.effective_lr import EffectiveLrProbe
from adaptim.lab.errors import LabError
from adaptim.lab.files import finite_or_none
from adaptim.lab.optimizers import make_optimizer
from adaptim.lab.problems.base import BuildContext, Problem, Setup
from adaptim.lab.schedules import make_scheduler

Phase = Literal["tune", "final"]
Split = Literal["validation", "test"]

#: Bumped when what a trial measures changes, so stale stored trials are not reused:
#: 2 = records and ``validation`` on the validation split, ``final`` on test, masked
#: effective learning rate with momentum's 1/(1 − μ).
TRIAL_VERSION = 2


@dataclass(frozen=True)
class TrialSpec:
    """What to run. ``key()`` identifies it in the store, so a re-run reuses it."""

    problem: str
    optimizer: str
    hparams: Mapping[str, Any]
    seed: int
    steps: int
    phase: Phase = "tune"
    #: The resolved ``--data-dir`` the problem reads, if any: other data, other trial.
    data: str | None = None
    #: The learning-rate schedule (:data:`adaptim.lab.schedules.SCHEDULES`).
    schedule: str = "constant"
    #: The torch device it runs on (``--device``): another device, other rounding, other trial.
    device: str = "cpu"

    def key(self) -> str:
        identity: dict[str, Any] = {
            "problem": self.problem,
            "optimizer": self.optimizer,
            "hparams": {k: _jsonable(v) for k, v in sorted(self.hparams.items())},
            "seed": self.seed,
            "steps": self.steps,
            "schedule": self.schedule,
            "version": TRIAL_VERSION,
        }
        if self.data is not None:
            identity["data"] = self.data
        if self.device != "cpu":  # CPU trials keep the keys they had before devices existed
            identity["device"] = self.device
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Record:
    step: int
    train_loss: float | None
    metrics: dict[str, float | None]
    wall_time: float
    effective_lr: dict[str, float | None] | None = None
    position: tuple[float, float] | None = None


@dataclass
class TrialResult:
    """What a trial measured.

    ``final`` holds the test metrics at the end, ``validation`` the
    validation metrics at the end (equal to ``final`` for a problem without a
    validation split; ``info["tuned_on"]`` then says so), and ``records`` the
    validation curve.
    """

    spec: TrialSpec
    records: list[Record]
    final: dict[str, float | None]
    diverged: bool
    wall_time: float
    steps_done: int
    info: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.validation:  # a single-split trial, or one stored before validation existed
            self.validation = dict(self.final)

    def score(self, metric: str, split: Split = "validation") -> float | None:
        """The final ``metric`` on ``split`` (validation by default), ``None`` for a diverged run."""
        if split not in ("validation", "test"):
            raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
        if self.diverged:
            return None
        return (self.validation if split == "validation" else self.final).get(metric)


def _jsonable(value: Any) -> Any:
    # 1 and 1.0 are the same setting, so they must give the same key.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def _finite_position(position: tuple[float, float] | None) -> tuple[float, float] | None:
    """The iterate of a 2-D problem, or ``None`` once it has left the finite plane."""
    if position is None:
        return None
    x, y = float(position[0]), float(position[1])
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def _metric_value(problem: str, name: str, value: Any) -> float | None:
    try:
        return finite_or_none(float(value))
    except (TypeError, ValueError):
        raise LabError(
            f"problem {problem!r}: metric {name!r} from evaluate() is {type(value).__name__} "
            f"{value!r:.60}, not a number"
        ) from None


def _switch(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """``optimizer.eval()``/``train()`` where it has them: Schedule-Free evaluates another point."""
    method = getattr(optimizer, mode, None)
    if callable(method):
        method()


def run_trial(
    spec: TrialSpec, problem: Problem, context: BuildContext | None = None
) -> TrialResult:
    """Train ``problem`` with the optimizer of ``spec`` and collect its records.

    The trial runs on ``spec.device``: it is torch's default device while the
    trial runs (whatever the caller's default is) and ``context.device`` of the
    build, whose parameters must land there.
    """
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise LabError(
            "--device cuda: this worker sees no CUDA device (torch.cuda.is_available() is "
            "False); use --device cpu or auto, or --trial-gpus 1 on Ray"
        )
    context = dataclasses.replace(context or BuildContext(), device=spec.device)
    if torch.get_default_device() == torch.device(spec.device):
        # The usual CPU case: torch.device() would intercept every torch call for nothing.
        return _run_trial(spec, problem, context)
    with torch.device(spec.device):
        return _run_trial(spec, problem, context)


def _build(spec: TrialSpec, problem: Problem, context: BuildContext) -> Setup:
    """``problem``'s setup for ``spec``, its parameters checked to be on the trial's device."""
    torch.manual_seed(spec.seed)  # module initialisers draw from the global generator
    try:
        setup = problem.build(spec.seed, context)
    except RuntimeError as exc:
        if spec.device == "cpu" or "generator" not in str(exc).lower():
            raise
        raise LabError(
            f"problem {problem.name!r} could not be built on --device {spec.device}: "
            f"{str(exc).strip().splitlines()[0]} (draw with a CPU generator and device='cpu', "
            "then move the tensors to context.device)"
        ) from exc
    wanted = torch.device(spec.device)
    for index, parameter in enumerate(setup.parameters):
        if parameter.device.type != wanted.type:
            raise LabError(
                f"problem {problem.name!r}: parameter {index} is on {parameter.device}, but the "
                f"trial runs on --device {spec.device}; build the parameters on context.device"
            )
    return setup


def _run_trial(spec: TrialSpec, problem: Problem, context: BuildContext) -> TrialResult:
    setup = _build(spec, problem, context)
    optimizer = make_optimizer(spec.optimizer, setup.parameters, spec.hparams)
    scheduler = make_scheduler(spec.schedule, optimizer, spec.steps)
    probe = EffectiveLrProbe(optimizer, spec.seed)
    interval = problem.eval_interval(spec.steps)
    main = problem.metric.name
    validate = setup.validate or setup.evaluate
    records: list[Record] = []
    train_time = 0.0
    diverged = False
    step = 0
    last_loss: float | None = None

    def measure(evaluate: Any) -> dict[str, float | None]:
        with torch.no_grad():
            return {k: _metric_value(problem.name, k, v) for k, v in evaluate().items()}

    def record(at: int) -> dict[str, float | None]:
        _switch(optimizer, "eval")
        metrics = measure(validate)
        _switch(optimizer, "train")
        position = _finite_position(setup.position()) if setup.position is not None else None
        # Before the first step the state says nothing about the effective rate.
        rates = probe() if at > 0 else None
        records.append(Record(at, last_loss, metrics, train_time, rates, position))
        return metrics

    if main not in record(0):
        raise LabError(
            f"problem {problem.name!r}: {'validate' if setup.validate else 'evaluate'}() returned "
            f"{sorted(records[0].metrics)}, which lacks its main metric {main!r}"
        )
    for step in range(1, spec.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = setup.train_loss(step)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            kind = (
                f"a tensor of shape {tuple(loss.shape)}"
                if isinstance(loss, torch.Tensor)
                else type(loss).__name__
            )
            raise LabError(
                f"problem {problem.name!r}: train_loss() must return a scalar tensor, got {kind}"
            )
        last_loss = loss.item()
        if not math.isfinite(last_loss):
            diverged = True
            train_time += time.perf_counter() - start
            last_loss = None
            break
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        train_time += time.perf_counter() - start
        if step % interval == 0 or step == spec.steps:
            metrics = record(step)
            if metrics.get(main) is None:
                diverged = True
                break
    empty: dict[str, float | None] = {k: None for k in records[0].metrics}
    validation = dict(records[-1].metrics) if records and not diverged else dict(empty)
    if diverged:
        final = dict(empty)
        if not records or records[-1].step != step:
            records.append(Record(step, last_loss, dict(empty), train_time, None, None))
    else:
        _switch(optimizer, "eval")  # the model is left at the point evaluated
        final = measure(setup.evaluate) if setup.validate is not None else dict(validation)
    return TrialResult(
        spec=spec,
        records=records,
        final=final,
        diverged=diverged,
        wall_time=train_time,
        steps_done=step,
        info={
            "adaptim": __version__,
            "torch": torch.__version__,
            "tuned_on": "validation" if setup.validate is not None else TUNED_ON_TEST,
        },
        validation=validation,
    )


#: ``info["tuned_on"]`` of a trial whose problem has no validation split.
TUNED_ON_TEST = "test (no validation split)"
