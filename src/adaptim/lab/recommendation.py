"""What the analysis concludes, as data: the margin, the policy, and the recommendation.

:func:`adaptim.lab.analysis.recommend` fills these; the report and the
terminal (:mod:`adaptim.lab.report.text`) turn them into sentences, and
``results.json`` carries them as they are.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adaptim.lab import stats
from adaptim.lab.problems.base import Metric
from adaptim.lab.robustness import LrRange


@dataclass(frozen=True)
class Margin:
    """How close two means must be to be called equivalent: absolute, or relative to the leader."""

    value: float
    relative: bool

    def absolute(self, leader_mean: float) -> float:
        return self.value * abs(leader_mean) if self.relative else self.value

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "relative": self.relative}

    @classmethod
    def parse(cls, text: str) -> Margin:
        """``"0.005"`` (absolute, in the metric's units) or ``"2%"`` (of the leader's mean)."""
        relative = text.strip().endswith("%")
        number = float(text.strip().rstrip("%"))
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"a margin must be a positive number, got {text!r}")
        return cls(number / 100 if relative else number, relative)


def is_fraction(metric: Metric) -> bool:
    """Whether ``metric`` is an accuracy or an error rate, with values in [0, 1]."""
    name = metric.name.lower()
    return "acc" in name or "error" in name


def default_margin(metric: Metric) -> Margin:
    """One point absolute for accuracies and error rates (values in [0, 1]); 1% of the
    leader's mean for everything else (losses)."""
    if is_fraction(metric):
        return Margin(0.01, relative=False)
    return Margin(0.01, relative=True)


def margin_problem(margin: Margin, metric: Metric) -> str | None:
    """Why ``margin`` means nothing for ``metric`` (``None`` if it may be used): on values
    in [0, 1], a margin of 1 or more (or 100% of the leader's mean) calls every optimizer
    equivalent. Losses are unbounded: any positive margin is theirs to choose."""
    if is_fraction(metric) and margin.value >= 1:
        return (
            f"whose metric {metric.name} lies in [0, 1]: give an absolute margin below 1 "
            "(such as 0.01, one point) or a percentage below 100%"
        )
    return None


@dataclass(frozen=True)
class Policy:
    """The statistical settings of a study's analysis."""

    margin: Margin | None = None  # None: default_margin(metric)
    #: Seeds of the first look and the most adaptive seeding may reach.
    first_seeds: int = 3
    max_seeds: int = 3
    alpha: float = stats.ALPHA

    def level(self) -> float:
        """The per-look level (see :func:`adaptim.lab.stats.sequential_level`)."""
        return stats.sequential_level(self.first_seeds, self.max_seeds, self.alpha)

    def margin_for(self, metric: Metric) -> Margin:
        return self.margin or default_margin(metric)


# ----------------------------------------------------------------- the recommendation


class Relation(enum.Enum):
    """How an optimizer stands against the leader."""

    BETTER = "leader_better"  # the leader is better, separated at the corrected level
    EQUIVALENT = "equivalent"  # within the margin (TOST)
    INDISTINGUISHABLE = "indistinguishable"  # neither, with this many seeds
    DIVERGED = "diverged"  # diverged on a re-run seed: out of contention


class Criterion(enum.Enum):
    """What decided the choice (or removed a tied optimizer)."""

    UNCONTESTED = "uncontested"  # no other optimizer finished every re-run seed
    SEPARATED = "separated"  # the leader is better than every other clean optimizer
    #: the leader's best mean stands: some optimizer is not distinguishable from it, and
    #: none is shown equivalent, so no secondary criterion can take the choice from it
    LEADING = "leading"
    LR_RANGE = "lr_range"  # among the tied, a wider good lr range by more than one step
    SPEED = "speed"  # equally robust: fewer steps to the target
    MEAN = "mean"  # equally robust and fast: the better mean
    NONE = "none"  # no optimizer finished every re-run seed


@dataclass(frozen=True)
class Comparison:
    """One optimizer against the leader on their common seeds (differences favour the leader:
    positive means the leader is better)."""

    optimizer: str
    relation: Relation
    seeds: int
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    p_holm: float | None
    equivalence_p: float | None
    improvement: float | None
    improvement_low: float | None
    improvement_high: float | None
    seeds_to_separate: int | None

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "relation"}
        return {**data, "relation": self.relation.value}


@dataclass(frozen=True)
class Recommendation:
    """Which optimizer to use, the evidence and what decided it; the report writes the words."""

    optimizer: str | None
    hparams: dict[str, Any] | None
    decided_by: Criterion
    leader: str | None = None
    #: Every other optimizer against the leader.
    comparisons: tuple[Comparison, ...] = ()
    #: The tie: the leader and every optimizer shown equivalent to it (TOST). A merely
    #: not-distinguishable optimizer is not tied: absence of a difference is not evidence
    #: of equivalence, so a secondary criterion may not pick it over the better mean.
    contenders: tuple[str, ...] = ()
    #: Tied optimizers removed by a tie-break criterion, and which one.
    eliminated: Mapping[str, Criterion] = field(default_factory=dict)
    lr_ranges: Mapping[str, LrRange] = field(default_factory=dict)
    #: Median steps over the re-run seeds to the validation target (``None``: the median seed
    #: never reached it), per optimizer with re-runs.
    speeds: Mapping[str, float | None] = field(default_factory=dict)
    #: The validation target of that race, ``None`` when there is nothing to race.
    target: float | None = None
    #: The target is the problem's fixed one (AlgoPerf); otherwise one that every seed
    #: of the best two reaches (:func:`adaptim.lab.analysis.speed_target`).
    target_fixed: bool = False
    margin: Margin | None = None
    margin_absolute: float | None = None
    level: float = stats.ALPHA
    diverged: tuple[str, ...] = ()
    at_edge: tuple[str, ...] = ()
    #: Of ``at_edge``, those at the limit grid extension reaches (MAX_REACH_DECADES).
    at_limit: tuple[str, ...] = ()
    lr_fixed: tuple[str, ...] = ()
    #: Per optimizer, the steps its tuning cost and the value it reached.
    costs: tuple[TuningCost, ...] = ()
    #: Each tuning-free optimizer against the best tuned one (AlgoPerf's self-tuning track).
    self_tuning: tuple[SelfTuning, ...] = ()

    @property
    def tied_with(self) -> tuple[str, ...]:
        return tuple(c for c in self.contenders if c != self.optimizer)

    def comparison(self, name: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.optimizer == name), None)

    @property
    def settled(self) -> bool:
        """No optimizer is still merely not distinguishable from the leader."""
        return all(c.relation is not Relation.INDISTINGUISHABLE for c in self.comparisons)

    def to_json(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "hparams": self.hparams,
            "decided_by": self.decided_by.value,
            "leader": self.leader,
            "tied_with": list(self.tied_with),
            "contenders": list(self.contenders),
            "comparisons": [c.to_json() for c in self.comparisons],
            "eliminated": {k: v.value for k, v in self.eliminated.items()},
            "lr_ranges": {k: v.to_json() for k, v in self.lr_ranges.items()},
            "speeds": dict(self.speeds),
            "target": self.target,
            "target_fixed": self.target_fixed,
            "margin": None if self.margin is None else self.margin.to_json(),
            "margin_absolute": self.margin_absolute,
            "level": self.level,
            "diverged": list(self.diverged),
            "lr_at_edge": list(self.at_edge),
            "lr_at_limit": list(self.at_limit),
            "lr_fixed": list(self.lr_fixed),
            "tuning_costs": [c.to_json() for c in self.costs],
            "self_tuning": [f.to_json() for f in self.self_tuning],
        }


# ----------------------------------------------------------------- the cost of tuning


@dataclass(frozen=True)
class TuningCost:
    """What one optimizer's setting cost to find, and what it reached (AlgoPerf's self-tuning
    view: tuning runs are compute too). Filled by :func:`adaptim.lab.tuning_cost.tuning_costs`."""

    optimizer: str
    tuning_free: bool
    #: Tuning runs (a tie's second-seed sweep is not counted: it measures robustness).
    tuning_runs: int
    #: Steps of ``--search lr-find``'s range test (0 without one).
    range_test_steps: int
    #: Steps of every tuning run and the range test together.
    tuning_steps: int
    #: Steps of one training run at the chosen setting (mean over the re-runs).
    run_steps: float
    #: Mean validation value over the re-run seeds (a diverged seed as the worst value reached).
    value: float | None
    #: The best validation value found so far after each tuning run, at the steps spent so
    #: far (the range test included): what tuning bought, step by step.
    best_so_far: tuple[tuple[int, float | None], ...] = ()
    #: Re-runs at the chosen setting, and how many of them diverged.
    reruns: int = 0
    diverged_runs: int = 0

    @property
    def total_steps(self) -> float:
        """The compute to get one trained model: tuning, then one run at the chosen setting."""
        return self.tuning_steps + self.run_steps

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.__dict__.items() if k != "best_so_far"},
            "total_steps": self.total_steps,
            "best_so_far": [list(p) for p in self.best_so_far],
        }


@dataclass(frozen=True)
class SelfTuning:
    """A tuning-free optimizer at its defaults against the best tuned one (by validation mean)."""

    optimizer: str
    reference: str
    value: float
    reference_value: float
    #: ``value / reference_value``: the share of the tuned optimizer's metric reached (for a
    #: loss, above 1 is worse).
    ratio: float
    #: ``total_steps / reference's total_steps``: the share of its compute, tuning included.
    compute: float
    #: Their standing when one of the two is the leader (paired by seed), else ``None``.
    relation: Relation | None = None
    #: The tuning-free optimizer's re-runs and how many diverged: a diverged one is out of
    #: contention, and no share of the tuned optimizer's result is claimed for it.
    runs: int = 0
    diverged_runs: int = 0

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "relation"}
        return {**data, "relation": None if self.relation is None else self.relation.value}
