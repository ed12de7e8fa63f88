"""What a study found, as data: per optimizer, per problem, per study, and its ``results.json``.

An :class:`OptimizerOutcome` holds one optimizer's tuning runs, chosen
setting and re-runs on one problem, with the :class:`Summary` (mean and 95%
Student-t interval) of its re-runs' *test* values, which the report shows. A
:class:`ProblemOutcome` gathers a problem's optimizers with their
recommendation and grid extensions, and a :class:`StudyOutcome` the problems
of a study (:mod:`adaptim.lab.study`), which it writes as ``results.json``
(:func:`outcome_json` and :func:`problem_json` give the entries). The
decisions taken from them (comparisons, ties, the recommendation) are
:mod:`adaptim.lab.analysis`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy import stats as scipy_stats

import adaptim
from adaptim.lab.curves import time_to_target_json
from adaptim.lab.errors import LabError
from adaptim.lab.files import finite_json, write_atomically
from adaptim.lab.problems.base import Metric, Problem
from adaptim.lab.protocol import StudyConfig, at_reach_limit
from adaptim.lab.recommendation import Recommendation
from adaptim.lab.robustness import lr_at_edge
from adaptim.lab.splits import decision_value, reported_value, splits_json, validation_of
from adaptim.lab.trial import TrialResult


@dataclass(frozen=True)
class Summary:
    """Mean and 95% CI half-width (Student's t) of the finite values; the others diverged."""

    mean: float | None
    ci95: float | None
    n: int
    diverged: int

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": self.ci95, "n": self.n, "diverged": self.diverged}


def summarize(values: Sequence[float | None], total: int | None = None) -> Summary:
    """Mean and 95% CI half-width of the finite values; runs without a value count as diverged."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    total = len(values) if total is None else total
    n = len(finite)
    if n == 0:
        return Summary(None, None, 0, total)
    mean = sum(finite) / n
    if n < 2:
        return Summary(mean, None, n, total - n)
    variance = sum((v - mean) ** 2 for v in finite) / (n - 1)
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * math.sqrt(variance / n)
    return Summary(mean, half, n, total - n)


@dataclass
class OptimizerOutcome:
    """One optimizer on one problem: its tuning sweep, chosen setting and re-runs."""

    name: str
    metric: Metric
    hparams: dict[str, Any]
    tuning: list[TrialResult]
    runs: list[TrialResult]
    #: The learning rate was fixed with ``--set`` or by the problem: no range was searched.
    lr_fixed: bool = False
    #: The tuned settings again on another seed, when a tie needs the good-lr range.
    sweeps: list[TrialResult] = field(default_factory=list)
    #: Run at its published defaults, never tuned (AlgoPerf's self-tuning track).
    tuning_free: bool = False
    #: The range test of ``--search lr-find`` (:mod:`adaptim.lab.lr_find_trials`), if any:
    #: its steps are part of the tuning cost.
    range_test: TrialResult | None = None
    #: Test values of the re-runs (what the report shows).
    summary: Summary = field(init=False)

    def __post_init__(self) -> None:
        self.summary = summarize([reported_value(r, self.metric.name) for r in self.runs])

    @property
    def diverged_runs(self) -> int:
        return sum(r.diverged for r in self.runs)

    @property
    def lr_at_edge(self) -> bool:
        # A range test's suggestions are not a grid: no edge to be at.
        return (
            not self.lr_fixed
            and self.range_test is None
            and lr_at_edge(self.tuning, self.hparams.get("lr"))
        )

    @property
    def lr_at_limit(self) -> bool:
        """At an edge that grid extension does not pass (:func:`~adaptim.lab.protocol.reach`):
        the optimum may lie further out than the lab looks."""
        return self.lr_at_edge and at_reach_limit(self.name, self.hparams.get("lr"))


def outcome_json(metric: Metric, outcome: OptimizerOutcome) -> dict[str, Any]:
    """One optimizer's entry of ``results.json``."""
    return {
        "name": outcome.name,
        "hparams": outcome.hparams,
        "lr_fixed": outcome.lr_fixed,
        "runs": [
            {
                "seed": r.spec.seed,
                "final": r.final,
                "validation": validation_of(r),
                "diverged": r.diverged,
                "wall_time": r.wall_time,
            }
            for r in outcome.runs
        ],
        "summary": outcome.summary.to_json(),
        "tuning": [
            {
                "hparams": dict(t.spec.hparams),
                "score": decision_value(t, metric.name),
                "validation": decision_value(t, metric.name),
                "diverged": t.diverged,
            }
            for t in outcome.tuning
        ],
        "lr_at_edge": outcome.lr_at_edge,
        "lr_at_limit": outcome.lr_at_limit,
        "tuning_free": outcome.tuning_free,
        # --search lr-find's range test: its curve, suggestions and why it stopped.
        "range_test": None if outcome.range_test is None else outcome.range_test.info["lr_find"],
        "sweeps": [
            {
                "hparams": dict(t.spec.hparams),
                "seed": t.spec.seed,
                "score": decision_value(t, metric.name),
                "diverged": t.diverged,
            }
            for t in outcome.sweeps
        ],
    }


def problem_json(
    name: str, metric: Metric, outcomes: Sequence[OptimizerOutcome], rec: Recommendation
) -> dict[str, Any]:
    return {
        "name": name,
        "metric": {
            "name": metric.name,
            "goal": metric.goal,
            **splits_json(r for o in outcomes for r in o.runs),
        },
        "optimizers": [outcome_json(metric, o) for o in outcomes],
        "recommendation": rec.to_json(),
    }


@dataclass
class ProblemOutcome:
    problem: Problem
    spec: str
    outcomes: list[OptimizerOutcome]
    recommendation: Recommendation
    #: Rounds of grid extension: per round, each optimizer's side ("below", "above",
    #: "refine") and the learning rates it added.
    extensions: list[dict[str, dict[str, Any]]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = problem_json(
            self.problem.name, self.problem.metric, self.outcomes, self.recommendation
        )
        data["spec"] = self.spec
        data["steps"] = (
            self.outcomes[0].runs[0].spec.steps if self.outcomes and self.outcomes[0].runs else None
        )
        data["fixed_hparams"] = _plain(dict(self.problem.hparams))
        data["grid_extensions"] = self.extensions
        data["time_to_target"] = time_to_target_json(
            self.problem.metric, self.problem.target, {o.name: o.runs for o in self.outcomes}
        )
        return data


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


@dataclass
class StudyOutcome:
    config: StudyConfig
    problems: list[ProblemOutcome]
    store_url: str
    command: str

    def to_json(self) -> dict[str, Any]:
        return {
            "adaptim": adaptim.__version__,
            "torch": torch.__version__,
            "command": self.command,
            "store": self.store_url,
            "config": self.config.to_json(),
            "problems": [p.to_json() for p in self.problems],
        }

    def write(self, out_dir: Path) -> Path:
        """``results.json``, atomically (readers and other writers never see half a file)."""
        path = out_dir / "results.json"
        text = json.dumps(finite_json(self.to_json()), indent=2, allow_nan=False)
        try:
            return write_atomically(path, text)
        except OSError as error:
            raise LabError(f"cannot write {str(path)!r}: {error.strerror}") from None
