"""A study: the protocol run over problems and optimizers, through an executor, into the store."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import adaptim
from adaptim.lab.analysis import OptimizerOutcome, Recommendation, problem_json, recommend
from adaptim.lab.executors import Executor
from adaptim.lab.problems import BuildContext, Problem, resolve_problem
from adaptim.lab.protocol import (
    TUNING_SEED,
    StudyConfig,
    Tuner,
    best_setting,
    final_seeds,
    make_tuner,
)
from adaptim.lab.store import Store
from adaptim.lab.trial import Phase, TrialResult, TrialSpec

#: Called once per trial as it completes: the result, and whether it came from the store.
OnTrial = Callable[[TrialResult, bool], None]


@dataclass
class ProblemOutcome:
    problem: Problem
    spec: str
    outcomes: list[OptimizerOutcome]
    recommendation: Recommendation

    def to_json(self) -> dict[str, Any]:
        data = problem_json(
            self.problem.name, self.problem.metric, self.outcomes, self.recommendation
        )
        data["spec"] = self.spec
        data["steps"] = (
            self.outcomes[0].runs[0].spec.steps if self.outcomes and self.outcomes[0].runs else None
        )
        return data


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

    def steps(self, problem: Problem) -> int:
        return self.config.steps or problem.steps

    def planned_trials(self) -> int:
        """How many trials the study runs (or finds stored), for progress bars."""
        per_problem = sum(
            (1 if "lr" in self.config.settings.get(o, {}) else self.config.budget)
            + self.config.seeds
            for o in self.config.optimizers
        )
        return per_problem * len(self.problems)

    def run(self) -> StudyOutcome:
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
                ProblemOutcome(problem, spec, outcomes, recommend(problem.metric, outcomes))
            )
        return StudyOutcome(
            self.config, problems, self.store.url, shlex.join(["adaptim", *sys.argv[1:]])
        )

    def _tune(self) -> dict[tuple[str, str], list[TrialResult]]:
        tuners: dict[tuple[str, str], Tuner] = {
            (spec, optimizer): make_tuner(self.config, optimizer, problem.metric)
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
                return results
            done = {r.spec.key(): r for r in self._execute([s for _, s in wave])}
            for key, spec in wave:
                result = done[spec.key()]
                results[key].append(result)
                tuners[key].observe(spec.hparams, result.score(self.problems[key[0]].metric.name))

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
