"""The protocol: the same tuning budget for every optimizer, then the winner re-run on fresh seeds.

This follows DeepOBS (Schneider et al. 2019), AlgoPerf (Dahl et al. 2023) and
Schmidt et al. 2021 ("Descending through a Crowded Valley"):

1. **Tune** the learning rate of each optimizer with the same budget (default
   8 settings), in log space over the optimizer's stated range
   (:mod:`adaptim.lab.optimizers`), on the tuning seed 0. The default search
   is a grid; ``--search tpe`` or ``random`` use Optuna's samplers over the
   same range with the same budget. A diverged run scores worst.
2. **Choose** the setting with the best final main metric.
3. **Re-run** it with ``seeds`` fresh seeds (1, 2, ...), never the tuning
   seed, so the reported numbers are not inflated by the selection.

Hyperparameters fixed with ``--set`` are not tuned; fixing ``lr`` leaves a
single setting to run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from adaptim.lab.errors import LabError
from adaptim.lab.optimizers import parse_optimizer
from adaptim.lab.problems.base import Metric

TUNING_SEED = 0
#: More learning rates than this on one optimizer is a typo, not a study.
MAX_BUDGET = 100
SEARCHES = ("grid", "tpe", "random")
Search = Literal["grid", "tpe", "random"]


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study; its key names it in the store."""

    problems: tuple[str, ...]
    optimizers: tuple[str, ...]
    seeds: int = 3
    steps: int | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    budget: int = 8
    search: Search = "grid"
    # The analysis' settings (adaptim.lab.analysis): adaptive seeding may add re-run seeds up
    # to max_seeds (never fewer than seeds); margin is the equivalence margin ("0.01", "1%";
    # None: the metric's default).
    max_seeds: int = 10
    margin: str | None = None

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise LabError(f"--seeds must be at least 1, got {self.seeds}")
        if self.steps is not None and self.steps < 1:
            raise LabError(f"--steps must be at least 1, got {self.steps}")
        if not 1 <= self.budget <= MAX_BUDGET:
            raise LabError(f"--budget must be between 1 and {MAX_BUDGET}, got {self.budget}")
        if self.search not in SEARCHES:
            raise LabError(f"unknown --search {self.search!r}; valid: {', '.join(SEARCHES)}")
        if self.max_seeds < 1:
            raise LabError(f"--max-seeds must be at least 1, got {self.max_seeds}")
        if not self.problems:
            raise LabError("no problem to run: give at least one --problem")
        if not self.optimizers:
            raise LabError("no optimizer to compare: give at least one in --optimizers")
        seen: dict[str, str] = {}
        for name in self.optimizers:
            variant, flavor = parse_optimizer(name)
            canonical = f"{variant.name}@{flavor}"
            if canonical in seen:
                raise LabError(f"optimizer {name!r} is listed twice (as {seen[canonical]!r} too)")
            seen[canonical] = name

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = {k: dict(v) for k, v in self.settings.items()}
        plain: dict[str, Any] = json.loads(json.dumps(data))
        return plain

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:32]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StudyConfig:
        return cls(
            problems=tuple(data["problems"]),
            optimizers=tuple(data["optimizers"]),
            seeds=int(data["seeds"]),
            steps=data.get("steps"),
            settings={
                k: {n: tuple(v) if isinstance(v, list) else v for n, v in s.items()}
                for k, s in data["settings"].items()
            },
            budget=int(data["budget"]),
            search=data["search"],
            # Studies stored before adaptive seeding ran exactly their seeds.
            max_seeds=int(data.get("max_seeds", data["seeds"])),
            margin=data.get("margin"),
        )


def score_of(metric: Metric, value: float | None) -> float:
    """A comparable score: the metric, or the worst possible for a diverged run."""
    return metric.worst if value is None or not math.isfinite(value) else value


class Tuner(Protocol):
    """Proposes hyperparameter settings for one optimizer on one problem, then hears how they did."""

    def propose(self, limit: int) -> list[dict[str, Any]]: ...

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None: ...


class GridTuner:
    """All learning rates of the grid at once."""

    def __init__(self, optimizer: str, fixed: Mapping[str, Any], budget: int) -> None:
        variant, _ = parse_optimizer(optimizer)
        lrs = [fixed["lr"]] if "lr" in fixed else variant.lr_grid(budget)
        self.pending = [{**fixed, "lr": lr} for lr in lrs]

    def propose(self, limit: int) -> list[dict[str, Any]]:
        proposals, self.pending = self.pending, []
        return proposals

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None:
        pass


class OptunaTuner:
    """Optuna's TPE or random sampler over the same log-lr range, with the same budget."""

    def __init__(
        self, optimizer: str, fixed: Mapping[str, Any], budget: int, search: Search, metric: Metric
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        variant, _ = parse_optimizer(optimizer)
        sampler = (
            optuna.samplers.TPESampler(seed=TUNING_SEED, n_startup_trials=max(1, budget // 2))
            if search == "tpe"
            else optuna.samplers.RandomSampler(seed=TUNING_SEED)
        )
        self.study = optuna.create_study(
            direction="minimize" if metric.goal == "min" else "maximize", sampler=sampler
        )
        self.fixed = dict(fixed)
        self.range = variant.lr_range
        self.remaining = 1 if "lr" in fixed else budget
        self.metric = metric
        self.asked: list[tuple[float, Any]] = []

    def propose(self, limit: int) -> list[dict[str, Any]]:
        proposals = []
        for _ in range(min(limit, self.remaining)):
            trial = self.study.ask()
            if "lr" in self.fixed:
                lr = self.fixed["lr"]
            else:
                lr = float(f"{trial.suggest_float('lr', *self.range, log=True):.4g}")
            self.asked.append((lr, trial))
            proposals.append({**self.fixed, "lr": lr})
        self.remaining -= len(proposals)
        return proposals

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None:
        match = next((i for i, (lr, _) in enumerate(self.asked) if lr == hparams["lr"]), None)
        if match is not None:
            _, trial = self.asked.pop(match)
            # A diverged run is told as the worst finite value Optuna can rank.
            told = score_of(self.metric, value)
            if not math.isfinite(told):
                told = 1e300 if self.metric.goal == "min" else -1e300
            self.study.tell(trial, told)


def make_tuner(config: StudyConfig, optimizer: str, metric: Metric) -> Tuner:
    fixed = dict(config.settings.get(optimizer, {}))
    if config.search == "grid":
        return GridTuner(optimizer, fixed, config.budget)
    return OptunaTuner(optimizer, fixed, config.budget, config.search, metric)


def final_seeds(config: StudyConfig) -> list[int]:
    return [TUNING_SEED + 1 + i for i in range(config.seeds)]


def best_setting(
    metric: Metric, tried: Sequence[tuple[Mapping[str, Any], float | None]]
) -> dict[str, Any]:
    """The setting with the best score; the first one on ties (the grid's smallest lr)."""
    best = tried[0]
    for candidate in tried[1:]:
        if metric.better(score_of(metric, candidate[1]), score_of(metric, best[1])):
            best = candidate
    return dict(best[0])
