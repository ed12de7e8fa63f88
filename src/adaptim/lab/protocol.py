"""The protocol: the same tuning budget for every optimizer, then the winner re-run on fresh seeds.

This follows DeepOBS (Schneider et al. 2019), AlgoPerf (Dahl et al. 2023) and
Schmidt et al. 2021 ("Descending through a Crowded Valley"):

1. **Tune** each optimizer with the same budget (default 8 settings) on the
   tuning seed 0, scored on the problem's *validation* split. The default
   search is a grid of learning rates in log space over the optimizer's
   stated range (:mod:`adaptim.lab.optimizers`). When an optimizer's best
   setting lies at an edge of its grid, the grid grows (:func:`extend_grid`):
   that optimizer gets :data:`EXTENSION` more rates beyond the edge (a decade
   apart at most), and every
   other optimizer on the problem gets as many extra rates too (halfway, in
   log space, between its best rate and its neighbours), so the budget stays
   equal; at most :data:`MAX_EXTENSIONS` rounds. ``--search random`` or
   ``tpe`` use Optuna's samplers over each optimizer's declared search space
   (lr, β₂ or α/ρ, ε, momentum) with the same budget. A diverged run scores
   worst. ``--search lr-find`` runs the learning-rate range test
   (:mod:`adaptim.lab.lr_find`), charged as one trial of the budget, and then
   tuning runs at its suggestions. Each search is a tuner
   (:mod:`adaptim.lab.tuners`, chosen by :func:`make_tuner`). An optimizer
   marked ``tuning_free`` is not tuned at all: it runs at its published
   defaults (:func:`published_defaults`).
2. **Choose** the setting with the best final validation metric.
3. **Re-run** it with ``seeds`` fresh seeds (1, 2, ...), never the tuning
   seed, so the reported numbers (on the *test* split) are not inflated by
   the selection.

The learning-rate schedule (``--schedule``) applies to every trial alike.
Hyperparameters fixed with ``--set`` or by the problem (:attr:`Problem.hparams`)
are not tuned; fixing ``lr`` leaves a single setting to run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from adaptim.lab.errors import LabError
from adaptim.lab.optimizers import VARIANTS, applicable, parse_optimizer
from adaptim.lab.problems.base import Metric, Problem
from adaptim.lab.schedules import SCHEDULES, check_schedule
from adaptim.lab.tuners import (
    LR_FIND_STEPS,
    SEARCHES,
    TUNING_SEED,
    GridTuner,
    LrFindTuner,
    NoTuning,
    OptunaTuner,
    Search,
    Tuner,
    round_lr,
    score_of,
)

# The tuners moved to adaptim.lab.tuners; their names stay importable from here.
__all__ = [
    "EXTENSION",
    "LR_FIND_STEPS",
    "MAX_BUDGET",
    "MAX_EXTENSIONS",
    "MAX_EXTENSION_STEP",
    "MAX_REACH_DECADES",
    "MAX_SEEDS",
    "MAX_STEPS",
    "SEARCHES",
    "TUNING_SEED",
    "GridTuner",
    "LrFindTuner",
    "NoTuning",
    "OptunaTuner",
    "Search",
    "StudyConfig",
    "Tried",
    "Tuner",
    "at_reach_limit",
    "best_setting",
    "edge_side",
    "extend_grid",
    "final_seeds",
    "fixed_hparams",
    "make_tuner",
    "published_defaults",
    "reach",
    "score_of",
]

#: More learning rates than this on one optimizer is a typo, not a study.
MAX_BUDGET = 100
#: More re-run seeds than this is a typo too (Crowded Valley uses 10).
MAX_SEEDS = 1000
#: Steps and seeds are stored in 32-bit integer columns (PostgreSQL's ``integer``).
MAX_STEPS = 2**31 - 1
#: Extra learning rates per optimizer and round when some optimizer's best lies at a grid edge.
EXTENSION = 2
#: At most this many rounds of grid extension per problem.
MAX_EXTENSIONS = 2
#: An extension steps past the edge by the grid's own log step, but at most this
#: factor per new rate: a coarse grid (a budget of 2 over four decades) would
#: otherwise leap four decades a rate (measured: adam-8bit's grid reached lr 1e11
#: and chose lr 1e5 on digits-mlp with ``--budget 2``, its runs staying finite).
MAX_EXTENSION_STEP = 10.0
#: Grid extensions reach at most this many decades beyond the optimizer's declared lr
#: range, on either side (:func:`reach`). A metric that stays finite at any rate (Adam's
#: sign-like steps on a ReLU network) would otherwise be chased round after round; a
#: best rate at this limit is reported as such (the optimum may lie further out). The
#: default grid (8 rates over three decades, two rounds of two) reaches 1.7 decades.
MAX_REACH_DECADES = 2
#: An extension with less room than this factor left before the limit is not made.
_MIN_ROOM = 10**0.1


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
    #: The learning-rate schedule of every trial (adaptim.lab.schedules); part of the key.
    schedule: str = "constant"

    def __post_init__(self) -> None:
        check_schedule(self.schedule)
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise LabError(f"--seeds must be between 1 and {MAX_SEEDS}, got {self.seeds}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise LabError(f"--steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 1 <= self.budget <= MAX_BUDGET:
            raise LabError(f"--budget must be between 1 and {MAX_BUDGET}, got {self.budget}")
        if self.search not in SEARCHES:
            raise LabError(f"unknown --search {self.search!r}; valid: {', '.join(SEARCHES)}")
        if self.search == "lr-find" and self.steps == 1:
            raise LabError("--search lr-find needs --steps 2 or more: a range test is a ramp")
        if self.search == "lr-find" and self.budget < 2:
            raise LabError(
                f"--search lr-find needs --budget 2 or more, got {self.budget}: the range test "
                "is charged as one trial, each run at a suggested lr as one more"
            )
        if not 1 <= self.max_seeds <= MAX_SEEDS:
            raise LabError(f"--max-seeds must be between 1 and {MAX_SEEDS}, got {self.max_seeds}")
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
            # Studies stored before schedules ran a constant learning rate.
            schedule=data.get("schedule", SCHEDULES[0]),
        )


def published_defaults(optimizer: str, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The setting a tuning-free optimizer runs: ``fixed`` and the lr it then uses, explicit."""
    import torch

    from adaptim.lab.optimizers import make_optimizer

    built = make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], fixed)
    return {**fixed, "lr": built.param_groups[0]["lr"]}


def fixed_hparams(config: StudyConfig, optimizer: str, problem: Problem) -> dict[str, Any]:
    """What is not tuned: the problem's own hyperparameters that apply, then ``--set`` on top."""
    return {**applicable(optimizer, problem.hparams), **config.settings.get(optimizer, {})}


def make_tuner(config: StudyConfig, optimizer: str, problem: Problem) -> Tuner:
    fixed = fixed_hparams(config, optimizer, problem)
    if parse_optimizer(optimizer)[0].tuning_free:
        return NoTuning()
    if config.search == "lr-find":
        return LrFindTuner(fixed, config.steps or problem.steps, config.budget)
    if config.search == "grid":
        return GridTuner(optimizer, fixed, config.budget)
    return OptunaTuner(optimizer, fixed, config.budget, config.search, problem.metric)


Tried = Sequence[tuple[Mapping[str, Any], float | None]]


def edge_side(metric: Metric, tried: Tried) -> Literal["below", "above"] | None:
    """Whether the best setting's lr is the smallest (``below``) or largest (``above``) tried.

    Only a strict win counts: when the edge ties with its inner neighbour (a
    plateau, such as every rate reaching zero error), the optimum does not lie
    beyond the edge and the grid is not grown.
    """
    scores: dict[float, float] = {}
    for hparams, value in tried:
        if "lr" in hparams:
            score = score_of(metric, value)
            lr = hparams["lr"]
            if lr not in scores or metric.better(score, scores[lr]):
                scores[lr] = score
    lrs = sorted(scores)
    if len(lrs) < 2:
        return None
    best = best_setting(metric, tried).get("lr")
    if best == lrs[0] and metric.better(scores[lrs[0]], scores[lrs[1]]):
        return "below"
    if best == lrs[-1] and metric.better(scores[lrs[-1]], scores[lrs[-2]]):
        return "above"
    return None


def reach(optimizer: str) -> tuple[float, float]:
    """The lowest and highest rate grid extensions may try for ``optimizer`` (or ``name@flavor``):
    :data:`MAX_REACH_DECADES` beyond its declared range."""
    low, high = parse_optimizer(optimizer)[0].lr_range
    factor = 10.0**MAX_REACH_DECADES
    return low / factor, high * factor


def at_reach_limit(optimizer: str, lr: float | None) -> bool:
    """Whether ``lr`` lies at (or past) either end of :func:`reach` (``False`` for a name
    the lab does not know: a made-up outcome has no declared range)."""
    if lr is None or optimizer.partition("@")[0] not in VARIANTS:
        return False
    low, high = reach(optimizer)
    return lr <= low * 1.001 or lr >= high / 1.001


def extend_grid(
    metric: Metric,
    tried: Mapping[str, Tried],
    lr_fixed: Sequence[str] = (),
    limits: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, tuple[str, list[float]]]:
    """The next round of learning rates when some optimizer's best lies at an edge of its grid.

    ``tried[optimizer]`` are its settings and validation scores so far. When
    no optimizer (among those whose lr is tuned) has its best at an edge,
    nothing: ``{}``. Otherwise every tuned optimizer gets :data:`EXTENSION`
    new rates, so the extra runs are charged to all alike: one at an edge
    continues its grid past that edge with the grid's own log step, at most
    :data:`MAX_EXTENSION_STEP` a rate (``"below"``/``"above"``); the others refine around their best, halfway
    in log space to each neighbour and then to the next-nearest tried rates
    (``"refine"``). ``limits[optimizer]``, where given (:func:`reach`), bounds how far:
    the new rates shrink their step so the last lands on the limit, and an optimizer
    with (almost) no room left grows no round by itself, and in another's round gets
    its rates between its edge and the next rate in.
    Returns ``{optimizer: (side, new lrs)}``.
    """
    tuned = {o: t for o, t in tried.items() if o not in lr_fixed}
    ratios: dict[str, float] = {}
    capped: dict[str, tuple[float, float]] = {}  # its edge and inner neighbour
    for optimizer, t in tuned.items():
        lrs = sorted({h["lr"] for h, _ in t if "lr" in h})
        side = edge_side(metric, t)
        if side is None:
            continue
        edge, inner = (lrs[0], lrs[1]) if side == "below" else (lrs[-1], lrs[-2])
        step = min(max(edge / inner, 1 / MAX_EXTENSION_STEP), MAX_EXTENSION_STEP)
        limit = (limits or {}).get(optimizer)
        if limit is not None:
            room = edge / limit[0] if side == "below" else limit[1] / edge
            if room < _MIN_ROOM:  # at its limit: flagged instead (at_reach_limit)
                capped[optimizer] = (edge, inner)
                continue
            most = room ** (1 / EXTENSION)  # (the last new rate lands on the limit)
            step = max(step, 1 / most) if side == "below" else min(step, most)
        ratios[optimizer] = step
    if not ratios:
        return {}
    plan: dict[str, tuple[str, list[float]]] = {}
    for optimizer, t in tuned.items():
        lrs = sorted({h["lr"] for h, _ in t if "lr" in h})
        if len(lrs) < 2:
            continue
        if optimizer in ratios:
            side = "below" if ratios[optimizer] < 1 else "above"
            edge = lrs[0] if side == "below" else lrs[-1]
            ratio = ratios[optimizer]
            plan[optimizer] = (side, [round_lr(edge * ratio**k) for k in range(1, EXTENSION + 1)])
            continue
        if optimizer in capped:  # its rates go between the limit and the next rate in
            edge, inner = capped[optimizer]
            fractions = [k / (EXTENSION + 1) for k in range(1, EXTENSION + 1)]
            plan[optimizer] = ("refine", [round_lr(edge * (inner / edge) ** f) for f in fractions])
            continue
        best = best_setting(metric, t)["lr"]
        others = sorted((lr for lr in lrs if lr != best), key=lambda lr: abs(math.log(lr / best)))
        fresh: list[float] = []
        for other in others:
            middle = round_lr(math.sqrt(best * other))
            if middle not in lrs and middle not in fresh:
                fresh.append(middle)
            if len(fresh) == EXTENSION:
                break
        plan[optimizer] = ("refine", fresh)
    return plan


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
