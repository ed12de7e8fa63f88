"""A study: the protocol run over problems and optimizers, through an executor, into the store.

:class:`Study` writes each problem's protocol as a pipeline of waves (tune,
grow the grid, re-run on fresh seeds with adaptive seeding, sweep a tie's
learning rates on a second seed); :mod:`adaptim.lab.waves` runs the waves,
and :mod:`adaptim.lab.outcomes` holds what comes out (:class:`ProblemOutcome`,
:class:`StudyOutcome`, importable from here too).
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from adaptim.lab.analysis import Margin, OptimizerOutcome, Policy, Relation, recommend
from adaptim.lab.claims import Claims
from adaptim.lab.errors import LabError
from adaptim.lab.executors import Executor
from adaptim.lab.optimizers import parse_optimizer
from adaptim.lab.outcomes import ProblemOutcome, StudyOutcome
from adaptim.lab.problems import BuildContext, Problem, resolve_problem
from adaptim.lab.protocol import (
    MAX_EXTENSIONS,
    TUNING_SEED,
    GridTuner,
    LrFindTuner,
    StudyConfig,
    Tuner,
    best_setting,
    extend_grid,
    final_seeds,
    fixed_hparams,
    make_tuner,
    published_defaults,
    reach,
)
from adaptim.lab.recommendation import margin_problem
from adaptim.lab.redact import redact_command
from adaptim.lab.store import Store
from adaptim.lab.trial import Phase, TrialResult, TrialSpec
from adaptim.lab.waves import OnTrial, Pipeline, Runs, drive, run_wave

# The outcome records moved to adaptim.lab.outcomes, the wave runner to adaptim.lab.waves;
# their names stay importable from here.
__all__ = [
    "OnTrial",
    "Pipeline",
    "ProblemOutcome",
    "Runs",
    "Study",
    "StudyOutcome",
    "study_policy",
]


def study_policy(config: StudyConfig, problems: Mapping[str, Problem] | None = None) -> Policy:
    """The analysis settings of ``config`` (margin, adaptive seeding); a bad margin is
    refused, and so is one that means nothing for one of ``problems``' metrics."""
    margin = None
    if config.margin is not None:
        try:
            margin = Margin.parse(config.margin)
        except ValueError:
            raise LabError(
                f"--margin must be a positive number or percentage (0.01, 1%), "
                f"got {config.margin!r}"
            ) from None
        for spec, problem in (problems or {}).items():
            why = margin_problem(margin, problem.metric)
            if why is not None:
                raise LabError(
                    f"--margin {config.margin} is meaningless for problem {spec!r}, {why}"
                )
    return Policy(margin, config.seeds, max(config.seeds, config.max_seeds))


class Study:
    """Runs ``config`` with ``executor``, reusing whatever ``store`` already holds.

    ``problems`` gives the problems already resolved (by spec); the others are
    resolved by name here.
    """

    def __init__(
        self,
        config: StudyConfig,
        store: Store,
        executor: Executor,
        context: BuildContext | None = None,
        on_trial: OnTrial | None = None,
        problems: Mapping[str, Problem] | None = None,
        claims: Claims | None = None,
    ) -> None:
        self.config = config
        #: With claims, processes running this study on one store split its trials.
        self.claims = claims
        self.store = store
        self.executor = executor
        self.context = context or BuildContext()
        self.on_trial = on_trial or (lambda result, reused: None)
        given = problems or {}
        self.problems = {
            spec: given[spec] if spec in given else resolve_problem(spec)
            for spec in config.problems
        }
        #: Per problem, the rounds of grid extension so far (see :func:`extend_grid`).
        self.extensions: dict[str, list[dict[str, dict[str, Any]]]] = {
            spec: [] for spec in self.problems
        }
        #: The range tests of ``--search lr-find``, per (problem, optimizer).
        self.range_tests: dict[tuple[str, str], TrialResult] = {}

    def steps(self, problem: Problem) -> int:
        return self.config.steps or problem.steps

    def planned_trials(self) -> int:
        """How many trials the study runs (or finds stored), for progress bars.

        Grid extensions are known only once the grid has run, and adaptive seeding and a
        tie's second-seed sweep only once the re-runs have: the count grows then.
        """
        extra = sum(
            len(plan["lrs"])
            for rounds in self.extensions.values()
            for round_ in rounds
            for plan in round_.values()
        )
        return extra + sum(
            self._tuning_runs(o, problem) + self.config.seeds
            for problem in self.problems.values()
            for o in self.config.optimizers
        )

    def _tuning_runs(self, optimizer: str, problem: Problem) -> int:
        if parse_optimizer(optimizer)[0].tuning_free:
            return 0
        if "lr" in fixed_hparams(self.config, optimizer, problem):
            return 1
        if self.config.search == "lr-find":  # the range test's suggestions, as budget allows
            return min(3, self.config.budget - 1)
        return self.config.budget

    def policy(self) -> Policy:
        """The analysis settings of this study (margin, adaptive seeding)."""
        return study_policy(self.config, self.problems)

    def run(self) -> StudyOutcome:
        policy = self.policy()
        self.extensions = {spec: [] for spec in self.problems}
        tuning, finals, sweeps = self._drive(
            {spec: self._pipeline(spec, policy) for spec in self.problems}
        )
        problems = []
        for spec, problem in self.problems.items():
            outcomes = self._outcomes(spec, tuning, finals, sweeps)
            problems.append(
                ProblemOutcome(
                    problem,
                    spec,
                    outcomes,
                    recommend(problem.metric, outcomes, policy, problem.target),
                    self.extensions[spec],
                )
            )
        return StudyOutcome(
            self.config, problems, self.store.url, redact_command(["adaptim", *sys.argv[1:]])
        )

    def _outcomes(
        self,
        spec: str,
        tuning: dict[tuple[str, str], list[TrialResult]],
        finals: dict[tuple[str, str], list[TrialResult]],
        sweeps: dict[tuple[str, str], list[TrialResult]] | None = None,
    ) -> list[OptimizerOutcome]:
        metric = self.problems[spec].metric
        return [
            OptimizerOutcome(
                name=optimizer,
                metric=metric,
                hparams=self._chosen(spec, optimizer, tuning[spec, optimizer]),
                tuning=tuning[spec, optimizer],
                runs=finals[spec, optimizer],
                # Fixed with --set or by the problem (Problem.hparams), or never tuned: no
                # range was searched.
                lr_fixed="lr" in fixed_hparams(self.config, optimizer, self.problems[spec])
                or parse_optimizer(optimizer)[0].tuning_free,
                sweeps=(sweeps or {}).get((spec, optimizer), []),
                tuning_free=parse_optimizer(optimizer)[0].tuning_free,
                range_test=self.range_tests.get((spec, optimizer)),
            )
            for optimizer in self.config.optimizers
        ]

    def _chosen(self, spec: str, optimizer: str, tried: list[TrialResult]) -> dict[str, Any]:
        if not tried:  # a tuning-free optimizer: its published defaults
            fixed = fixed_hparams(self.config, optimizer, self.problems[spec])
            return published_defaults(optimizer, fixed)
        metric = self.problems[spec].metric
        return best_setting(metric, [(t.spec.hparams, t.score(metric.name)) for t in tried])

    def _drive(self, pipelines: Mapping[str, Pipeline]) -> tuple[Runs, Runs, Runs]:
        """Run the problems' pipelines side by side, one wave at a time (see :func:`drive`)."""
        return drive(pipelines, self._execute)

    def _pipeline(self, spec: str, policy: Policy) -> Pipeline:
        """One problem's protocol: tune, re-run, sweep; yields each wave, is sent its results."""
        tuning = yield from self._tune(spec)
        finals = yield from self._rerun(spec, tuning, policy)
        sweeps = yield from self._sweep(spec, tuning, finals, policy)
        return tuning, finals, sweeps

    def _tune(self, spec: str) -> Generator[list[TrialSpec], dict[str, TrialResult], Runs]:
        problem = self.problems[spec]
        tuners: dict[tuple[str, str], Tuner] = {
            (spec, optimizer): make_tuner(self.config, optimizer, problem)
            for optimizer in self.config.optimizers
        }
        results: Runs = {key: [] for key in tuners}
        for key, tuner in tuners.items():
            if isinstance(tuner, LrFindTuner) and tuner.needs_range_test:
                self._range_test(key, tuner)
        while True:
            wave = [
                (key, self._spec(spec, key[1], hparams, TUNING_SEED, "tune"))
                for key, tuner in tuners.items()
                # As many proposals per tuner and wave as depend on no result still to come
                # (a whole grid, a random search, TPE's random start; then TPE one at a
                # time): a sequential sampler sees every earlier result whatever the number
                # of workers, so the study does not depend on the machine, and workers get
                # every trial that is already determined.
                for hparams in tuner.propose(tuner.independent())
            ]
            if not wave:
                if not self._extend(spec, tuners, results):
                    return results
                continue
            done = yield [s for _, s in wave]
            for key, trial in wave:
                result = done[trial.key()]
                results[key].append(result)
                tuners[key].observe(trial.hparams, result.score(problem.metric.name))

    def _extend(self, spec: str, tuners: dict[tuple[str, str], Tuner], results: Runs) -> bool:
        """Grow the grids of ``spec`` when some optimizer's best is at an edge."""
        grids = {o: tuner for (_, o), tuner in tuners.items() if isinstance(tuner, GridTuner)}
        if not grids or len(self.extensions[spec]) >= MAX_EXTENSIONS:
            return False
        metric = self.problems[spec].metric
        plan = extend_grid(
            metric,
            {o: [(t.spec.hparams, t.score(metric.name)) for t in results[spec, o]] for o in grids},
            [o for o, tuner in grids.items() if tuner.lr_fixed],
            {o: reach(o) for o in grids},
        )
        if not plan:
            return False
        for optimizer, (_, lrs) in plan.items():
            grids[optimizer].extend(lrs)
        self.extensions[spec].append(
            {o: {"side": side, "lrs": lrs} for o, (side, lrs) in plan.items()}
        )
        return True

    def _range_test(self, key: tuple[str, str], tuner: LrFindTuner) -> None:
        """Run (or find stored) the range test of ``--search lr-find``; pass on its suggestions.

        It runs in this process: seconds, once per problem and optimizer.
        """
        from adaptim.lab import lr_find_trials

        hparams = lr_find_trials.range_test_hparams(key[1], tuner.fixed)
        spec = self._spec(key[0], key[1], hparams, TUNING_SEED, "tune")
        spec = replace(spec, steps=tuner.range_steps, schedule="constant")
        with torch.device(spec.device):  # as a trial runs: the optimizer's state on its device
            trial = lr_find_trials.stored_range_test(
                self.store, spec, self.problems[key[0]], self.context
            )
        self.range_tests[key] = trial
        tuner.suggest(lr_find_trials.suggested_lrs(trial))

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
            device=self.context.device,
        )

    def _rerun(
        self, spec: str, tuning: Runs, policy: Policy
    ) -> Generator[list[TrialSpec], dict[str, TrialResult], Runs]:
        """The chosen settings on the re-run seeds, with adaptive seeding.

        Every optimizer first runs ``seeds`` fresh seeds (1, 2, ...). Then, per
        problem, while some optimizer without a diverged re-run is *not
        distinguishable* from the leader (neither separated nor equivalent,
        :func:`~adaptim.lab.analysis.recommend`), the next seed is run by every
        optimizer in contention: the leader and each not-distinguishable one,
        all brought to the same seeds, so the extra runs are charged equally
        and every comparison stays paired. Optimizers already separated,
        equivalent or diverged get no more seeds. It stops at ``max_seeds``.
        The analysis tests at the per-look level that keeps the chance of a
        false separation over all these looks at 5%.
        """
        runs: Runs = {key: [] for key in tuning}
        wanted = {key: len(final_seeds(self.config)) for key in tuning}
        while True:
            plan = {
                key: [
                    self._spec(
                        key[0], key[1], self._chosen(key[0], key[1], tuning[key]), seed, "final"
                    )
                    for seed in range(TUNING_SEED + 1 + len(runs[key]), TUNING_SEED + 1 + n)
                ]
                for key, n in wanted.items()
            }
            specs = [s for specs in plan.values() for s in specs]
            if not specs:
                return runs
            done = yield specs
            for key, more in plan.items():
                runs[key] += [done[s.key()] for s in more]
            self._more_seeds(spec, tuning, runs, policy, wanted)

    def _more_seeds(
        self,
        spec: str,
        tuning: dict[tuple[str, str], list[TrialResult]],
        runs: dict[tuple[str, str], list[TrialResult]],
        policy: Policy,
        wanted: dict[tuple[str, str], int],
    ) -> None:
        """Raise ``wanted`` for the optimizers of ``spec`` still in contention (see _rerun)."""
        rec = recommend(self.problems[spec].metric, self._outcomes(spec, tuning, runs), policy)
        if rec.leader is None:
            return
        contention = [rec.leader] + [
            c.optimizer for c in rec.comparisons if c.relation is Relation.INDISTINGUISHABLE
        ]
        if len(contention) == 1:
            return
        most = max(len(runs[spec, name]) for name in contention)
        target = min(most + 1, policy.max_seeds)
        for name in contention:
            wanted[spec, name] = max(wanted[spec, name], target)

    def _sweep(
        self, spec: str, tuning: Runs, runs: Runs, policy: Policy
    ) -> Generator[list[TrialSpec], dict[str, TrialResult], Runs]:
        """A second seed for the good-lr ranges of tied optimizers.

        When the re-runs leave a tie that the good learning-rate range may
        break (no contender's lr fixed with ``--set``), every tied optimizer
        runs its tuned settings again on re-run seed 1 (its chosen setting is
        already there), so each range is measured on two seeds; charged
        equally to all the tied optimizers.
        """
        sweeps: Runs = {key: [] for key in tuning}
        rec = recommend(self.problems[spec].metric, self._outcomes(spec, tuning, runs), policy)
        if len(rec.contenders) < 2 or set(rec.contenders) & set(rec.lr_fixed):
            return sweeps
        plan = {
            (spec, name): [
                self._spec(spec, name, dict(t.spec.hparams), TUNING_SEED + 1, "tune")
                for t in tuning[spec, name]
            ]
            for name in rec.contenders
        }
        done = yield [s for specs in plan.values() for s in specs]
        for key, specs in plan.items():
            sweeps[key] = [done[s.key()] for s in specs]
        return sweeps

    def _execute(self, specs: Sequence[TrialSpec]) -> Iterable[TrialResult]:
        """Stored results first; the rest run through the executor and are stored as each ends."""
        return run_wave(specs, self.store, self.executor, self.context, self.on_trial, self.claims)
