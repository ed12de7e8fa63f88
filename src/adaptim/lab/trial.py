"""One trial: a problem × optimizer × hyperparameters × seed × step budget, run to the end.

A trial streams records at regular intervals: step, training loss, the
evaluation metrics, training wall time (evaluation excluded) and percentiles
of the effective per-coordinate learning rate (``Optimizer.effective_lr``).
A diverged run (non-finite loss or main metric) stops early and is marked;
it never raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from adaptim import __version__
from adaptim.lab.errors import LabError
from adaptim.lab.optimizers import make_optimizer
from adaptim.lab.problems.base import BuildContext, Problem

Phase = Literal["tune", "final"]

#: Percentiles of the effective learning rate recorded at each evaluation.
EFFECTIVE_LR_PERCENTILES = (10, 50, 90)

#: At most this many coordinates enter the effective-lr percentiles (a fixed sample).
_EFFECTIVE_LR_SAMPLE = 65_536


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

    def key(self) -> str:
        identity: dict[str, Any] = {
            "problem": self.problem,
            "optimizer": self.optimizer,
            "hparams": {k: _jsonable(v) for k, v in sorted(self.hparams.items())},
            "seed": self.seed,
            "steps": self.steps,
        }
        if self.data is not None:
            identity["data"] = self.data
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
    spec: TrialSpec
    records: list[Record]
    final: dict[str, float | None]
    diverged: bool
    wall_time: float
    steps_done: int
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, metric: str) -> float | None:
        """The final main metric, or ``None`` for a diverged run."""
        return None if self.diverged else self.final.get(metric)


def _jsonable(value: Any) -> Any:
    # 1 and 1.0 are the same setting, so they must give the same key.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _metric_value(problem: str, name: str, value: Any) -> float | None:
    try:
        return _finite_or_none(float(value))
    except (TypeError, ValueError):
        raise LabError(
            f"problem {problem!r}: metric {name!r} from evaluate() is {type(value).__name__} "
            f"{value!r:.60}, not a number"
        ) from None


class _EffectiveLrProbe:
    """Percentiles of the effective learning rate over a fixed sample of coordinates."""

    def __init__(self, optimizer: torch.optim.Optimizer, seed: int) -> None:
        self.optimizer = optimizer
        self.sample: torch.Tensor | None = None
        self.seed = seed

    def __call__(self) -> dict[str, float | None] | None:
        rates_of = getattr(self.optimizer, "effective_lr", None)
        if rates_of is None:
            return None
        rates = [r.reshape(-1) for r in rates_of() if r is not None]
        if not rates:
            return None
        flat = torch.cat(rates).to(torch.float64)
        if self.sample is None and flat.numel() > _EFFECTIVE_LR_SAMPLE:
            generator = torch.Generator().manual_seed(self.seed)
            self.sample = torch.randperm(flat.numel(), generator=generator)[:_EFFECTIVE_LR_SAMPLE]
        if self.sample is not None:
            flat = flat[self.sample]
        quantiles = torch.tensor([p / 100 for p in EFFECTIVE_LR_PERCENTILES], dtype=torch.float64)
        values = torch.quantile(flat, quantiles).tolist()
        return {
            f"p{p}": _finite_or_none(v)
            for p, v in zip(EFFECTIVE_LR_PERCENTILES, values, strict=True)
        }


def run_trial(
    spec: TrialSpec, problem: Problem, context: BuildContext | None = None
) -> TrialResult:
    """Train ``problem`` with the optimizer of ``spec`` and collect its records."""
    torch.manual_seed(spec.seed)  # module initialisers draw from the global generator
    setup = problem.build(spec.seed, context or BuildContext())
    optimizer = make_optimizer(spec.optimizer, setup.parameters, spec.hparams)
    probe = _EffectiveLrProbe(optimizer, spec.seed)
    interval = problem.eval_interval(spec.steps)
    main = problem.metric.name
    records: list[Record] = []
    train_time = 0.0
    diverged = False
    step = 0
    last_loss: float | None = None

    def record(at: int) -> dict[str, float | None]:
        with torch.no_grad():
            metrics = {k: _metric_value(problem.name, k, v) for k, v in setup.evaluate().items()}
        position = setup.position() if setup.position is not None else None
        # Before the first step the state says nothing about the effective rate.
        rates = probe() if at > 0 else None
        records.append(Record(at, last_loss, metrics, train_time, rates, position))
        return metrics

    if main not in record(0):
        raise LabError(
            f"problem {problem.name!r}: evaluate() returned {sorted(records[0].metrics)}, "
            f"which lacks its main metric {main!r}"
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
        train_time += time.perf_counter() - start
        if step % interval == 0 or step == spec.steps:
            metrics = record(step)
            if metrics.get(main) is None:
                diverged = True
                break
    final = (
        records[-1].metrics if records and not diverged else {k: None for k in records[0].metrics}
    )
    if diverged and (not records or records[-1].step != step):
        records.append(Record(step, last_loss, dict(final), train_time, None, None))
    return TrialResult(
        spec=spec,
        records=records,
        final=dict(final),
        diverged=diverged,
        wall_time=train_time,
        steps_done=step,
        info={"adaptim": __version__, "torch": torch.__version__},
    )
