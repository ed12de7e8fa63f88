"""A study: the protocol run over problems and optimizers, through an executor, into the store."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import adaptim
from adaptim.lab.analysis import OptimizerOutcome, Recommendation, problem_json, recommend
from adaptim.lab.curves import time_to_target_json
from adaptim.lab.executors import Executor
from adaptim.lab.problems import BuildContext, Problem, resolve_problem
from adaptim.lab.protocol import (
    MAX_EXTENSIONS,
    TUNING_SEED,
    GridTuner,
    StudyConfig,
    Tuner,
    best_setting,
    extend_grid,
    final_seeds,
    fixed_hparams,
    make_tuner,
)
from adaptim.lab.store import Store
from adaptim.lab.trial import TUNED_ON_TEST, Phase, TrialResult, TrialSpec

#: Called once per trial as it completes: the result, and whether it came from the store.
OnTrial = Callable[[TrialResult, bool], None]


@dataclass
class ProblemOutcome:
    problem: Problem
    spec: str
    outcomes: list[OptimizerOutcome]
    recommendation: Recommendation
    #: Rounds of grid extension: per round, each optimizer's side ("below", "above",
    #: "refine") and the learning rates it added.
    extensions: list[dict[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def tuned_on(self) -> str:
        """``"validation"``, or :data:`TUNED_ON_TEST` for a problem without a validation split."""
        trials = [t for o in self.outcomes for t in (*o.tuning, *o.runs)]
        if any(t.info.get("tuned_on") == TUNED_ON_TEST for t in trials):
            return TUNED_ON_TEST
        return "validation"

    def to_json(self) -> dict[str, Any]:
        data = problem_json(
            self.problem.name, self.problem.metric, self.outcomes, self.recommendation
        )
        data["spec"] = self.spec
        data["steps"] = (
            self.outcomes[0].runs[0].spec.steps if self.outcomes and self.outcomes[0].runs else None
        )
        data["metric"]["tuned_on"] = self.tuned_on
        data["metric"]["reported_on"] = "test"
        data["fixed_hparams"] = _plain(dict(self.problem.hparams))
        data["grid_extensions"] = self.extensions
        data["time_to_target"] = time_to_target_json(
            self.problem.metric, self.problem.target, {o.name: o.runs for o in self.outcomes}
        )
        _add_validation(data, self.problem.metric.name, self.outcomes)
        return data


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _add_validation(
    data: dict[str, Any], metric: str, outcomes: Sequence[OptimizerOutcome]
) -> None:
    """Each run's ``validation`` metrics and each tuning entry's ``validation`` value."""
    for entry, outcome in zip(data.get("optimizers", []), outcomes, strict=False):
        for run_json, run in zip(entry.get("runs", []), outcome.runs, strict=False):
            run_json.setdefault("validation", run.validation)
        for tune_json, trial in zip(entry.get("tuning", []), outcome.tuning, strict=False):
            tune_json.setdefault("validation", trial.score(metric, "validation"))


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
        path = out_dir / "results.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False))
        partial.replace(path)  # readers never see a half-written file
        return path


class Study:
    """Runs ``config`` with ``executor``, reusing whatever ``store`` already holds."""

    def __init__(
        self,
        config: StudyConfig,
        store: Store,
        executor: Executor,
        context: BuildContext | None = None,
        on_trial: OnTrial | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.context = context or BuildContext()
        self.on_trial = on_trial or (lambda result, reused: None)
        self.problems = {spec: resolve_problem(spec) for spec in config.problems}
        #: Per problem, the rounds of grid extension so far (see :func:`extend_grid`).
        self.extensions: dict[str, list[dict[str, dict[str, Any]]]] = {
            spec: [] for spec in self.problems
        }

    def steps(self, problem: Problem) -> int:
        return self.config.steps or problem.steps

    def planned_trials(self) -> int:
        """How many trials the study runs (or finds stored), for progress bars.

        Grid extensions are known only once the grid has run: the count grows then.
        """
        extra = sum(
            len(plan["lrs"])
            for rounds in self.extensions.values()
            for round_ in rounds
            for plan in round_.values()
        )
        return extra + sum(
            (1 if "lr" in fixed_hparams(self.config, o, problem) else self.config.budget)
            + self.config.seeds
            for problem in self.problems.values()
            for o in self.config.optimizers
        )

    def run(self) -> StudyOutcome:
        self.extensions = {spec: [] for spec in self.problems}
        tuning = self._tune()
        finals = self._rerun(tuning)
        problems = []
        for spec, problem in self.problems.items():
            outcomes = [
                OptimizerOutcome(
                    name=optimizer,
                    metric=problem.metric,
                    hparams=best_setting(
                        problem.metric,
                        [
                            (t.spec.hparams, t.score(problem.metric.name))
                            for t in tuning[spec, optimizer]
                        ],
                    ),
                    tuning=tuning[spec, optimizer],
                    runs=finals[spec, optimizer],
                )
                for optimizer in self.config.optimizers
            ]
            problems.append(
                ProblemOutcome(
                    problem,
                    spec,
                    outcomes,
                    recommend(problem.metric, outcomes),
                    self.extensions[spec],
                )
            )
        return StudyOutcome(
            self.config, problems, self.store.url, shlex.join(["adaptim", *sys.argv[1:]])
        )

    def _tune(self) -> dict[tuple[str, str], list[TrialResult]]:
        tuners: dict[tuple[str, str], Tuner] = {
            (spec, optimizer): make_tuner(self.config, optimizer, problem)
            for spec, problem in self.problems.items()
            for optimizer in self.config.optimizers
        }
        results: dict[tuple[str, str], list[TrialResult]] = {key: [] for key in tuners}
        while True:
            wave = [
                (key, self._spec(key[0], key[1], hparams, TUNING_SEED, "tune"))
                for key, tuner in tuners.items()
                # One proposal per tuner and wave: a sequential sampler sees every earlier
                # result whatever the number of workers, so the study does not depend on the
                # machine; a wave still spans every problem and optimizer.
                for hparams in tuner.propose(1)
            ]
            if not wave:
                if not self._extend(tuners, results):
                    return results
                continue
            done = {r.spec.key(): r for r in self._execute([s for _, s in wave])}
            for key, spec in wave:
                result = done[spec.key()]
                results[key].append(result)
                tuners[key].observe(spec.hparams, result.score(self.problems[key[0]].metric.name))

    def _extend(
        self,
        tuners: dict[tuple[str, str], Tuner],
        results: dict[tuple[str, str], list[TrialResult]],
    ) -> bool:
        """Grow the grids of the problems where some optimizer's best is at an edge."""
        grown = False
        for spec, problem in self.problems.items():
            grids = {
                o: tuner
                for (p, o), tuner in tuners.items()
                if p == spec and isinstance(tuner, GridTuner)
            }
            if not grids or len(self.extensions[spec]) >= MAX_EXTENSIONS:
                continue
            metric = problem.metric
            plan = extend_grid(
                metric,
                {
                    o: [(t.spec.hparams, t.score(metric.name)) for t in results[spec, o]]
                    for o in grids
                },
                [o for o, tuner in grids.items() if tuner.lr_fixed],
            )
            if not plan:
                continue
            for optimizer, (_, lrs) in plan.items():
                grids[optimizer].extend(lrs)
            self.extensions[spec].append(
                {o: {"side": side, "lrs": lrs} for o, (side, lrs) in plan.items()}
            )
            grown = True
        return grown

    def _spec(
        self, problem: str, optimizer: str, hparams: dict[str, Any], seed: int, phase: Phase
    ) -> TrialSpec:
        data_dir = self.context.data_dir
        return TrialSpec(
            problem,
            optimizer,
            hparams,
            seed,
            self.steps(self.problems[problem]),
            phase,
            data=None if data_dir is None else str(data_dir.resolve()),
            schedule=self.config.schedule,
        )

    def _rerun(
        self, tuning: dict[tuple[str, str], list[TrialResult]]
    ) -> dict[tuple[str, str], list[TrialResult]]:
        plan: dict[tuple[str, str], list[TrialSpec]] = {}
        for (spec, optimizer), tried in tuning.items():
            metric = self.problems[spec].metric
            chosen = best_setting(metric, [(t.spec.hparams, t.score(metric.name)) for t in tried])
            plan[spec, optimizer] = [
                self._spec(spec, optimizer, chosen, seed, "final")
                for seed in final_seeds(self.config)
            ]
        done = {
            r.spec.key(): r for r in self._execute([s for specs in plan.values() for s in specs])
        }
        return {key: [done[s.key()] for s in specs] for key, specs in plan.items()}

    def _execute(self, specs: Sequence[TrialSpec]) -> Iterable[TrialResult]:
        """Stored results first; the rest run through the executor and are stored as each ends."""
        unique = list({s.key(): s for s in specs}.values())
        results: list[TrialResult] = []
        missing = []
        for spec in unique:
            stored = self.store.get(spec)
            if stored is None:
                missing.append(spec)
            else:
                results.append(stored)
                self.on_trial(stored, True)
        for result in self.executor.run(missing, self.context):
            self.store.put(result)
            results.append(result)
            self.on_trial(result, False)
        return results
