"""The tuners: how the protocol proposes settings for one optimizer on one problem.

One per ``--search`` (:mod:`adaptim.lab.protocol` picks it with
:func:`~adaptim.lab.protocol.make_tuner`): :class:`GridTuner` (learning rates
evenly spaced in log space, grown at the edges by the study),
:class:`OptunaTuner` (``random`` and ``tpe``: Optuna's samplers over the
optimizer's declared search space), :class:`LrFindTuner` (the runs at a range
test's suggestions) and :class:`NoTuning` (a tuning-free optimizer). Every
tuner gets the same budget and scores on the tuning seed; each says how many of
its proposals depend on no result still to come (:meth:`Tuner.independent`),
so a study can run them side by side without changing what it finds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from adaptim.lab.optimizers import parse_optimizer
from adaptim.lab.problems.base import Metric

#: The seed every tuning run uses (and Optuna's samplers); the re-runs take 1, 2, ...
TUNING_SEED = 0
SEARCHES = ("grid", "tpe", "random", "lr-find")
Search = Literal["grid", "tpe", "random", "lr-find"]
#: The range test of ``--search lr-find`` takes this many steps (fastai's), at most one trial's.
LR_FIND_STEPS = 100


def score_of(metric: Metric, value: float | None) -> float:
    """A comparable score: the metric, or the worst possible for a diverged run."""
    return metric.worst if value is None or not math.isfinite(value) else value


def round_lr(lr: float) -> float:
    """``lr`` to 3 significant digits, as grids and suggestions are written and compared."""
    return float(f"{lr:.3g}")


class Tuner(Protocol):
    """Proposes hyperparameter settings for one optimizer on one problem, then hears how they did.

    ``independent()`` is how many of its next proposals depend on no result
    still to come: proposing that many together gives exactly the settings
    that proposing them one at a time, each result observed before the next
    proposal, would give. The study proposes that many per wave, so they can
    run side by side on as many workers.
    """

    def propose(self, limit: int) -> list[dict[str, Any]]: ...

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None: ...

    def independent(self) -> int: ...


class GridTuner:
    """All learning rates of the grid at once; :meth:`extend` adds more."""

    def __init__(self, optimizer: str, fixed: Mapping[str, Any], budget: int) -> None:
        variant, _ = parse_optimizer(optimizer)
        self.fixed = dict(fixed)
        self.lr_fixed = "lr" in fixed
        lrs = [fixed["lr"]] if self.lr_fixed else variant.lr_grid(budget)
        self.pending = [{**fixed, "lr": lr} for lr in lrs]

    def propose(self, limit: int) -> list[dict[str, Any]]:
        proposals, self.pending = self.pending, []
        return proposals

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None:
        pass

    def independent(self) -> int:
        return len(self.pending)  # a grid is fixed in advance

    def extend(self, lrs: Sequence[float]) -> None:
        self.pending.extend({**self.fixed, "lr": lr} for lr in lrs)


class OptunaTuner:
    """Optuna's TPE or random sampler over the optimizer's declared space, with the same budget."""

    def __init__(
        self, optimizer: str, fixed: Mapping[str, Any], budget: int, search: Search, metric: Metric
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        variant, _ = parse_optimizer(optimizer)
        #: TPE draws its first proposals at random, from a generator that results do not touch.
        self.startup = max(1, budget // 2) if search == "tpe" else budget
        sampler = (
            optuna.samplers.TPESampler(seed=TUNING_SEED, n_startup_trials=self.startup)
            if search == "tpe"
            else optuna.samplers.RandomSampler(seed=TUNING_SEED)
        )
        self.study = optuna.create_study(
            direction="minimize" if metric.goal == "min" else "maximize", sampler=sampler
        )
        self.fixed = dict(fixed)
        self.space = [d for d in variant.space if not d.fixed_by(fixed)]
        self.remaining = budget if self.space else 1
        self.proposed = 0
        self.metric = metric
        self.asked: list[tuple[dict[str, Any], Any]] = []

    def independent(self) -> int:
        """The random sampler's proposals never depend on results; TPE's first ``startup`` don't.

        Optuna's random sampler draws every proposal from its own seeded generator, and
        TPE samples at random (from such a generator) while fewer than ``startup`` trials
        are complete; asking for those together gives the very settings of asking one at a
        time (``tests/lab/test_waves.py`` checks it on Optuna itself). After them, each TPE
        proposal depends on every earlier result: one at a time.
        """
        if self.remaining == 0:
            return 0
        return max(1, min(self.remaining, self.startup - self.proposed))

    def propose(self, limit: int) -> list[dict[str, Any]]:
        proposals = []
        for _ in range(min(limit, self.remaining)):
            trial = self.study.ask()
            # Each dimension is sampled as a position in [0, 1] of its own scale.
            hparams = {
                **self.fixed,
                **{d.name: d.from_unit(trial.suggest_float(d.name, 0.0, 1.0)) for d in self.space},
            }
            self.asked.append((hparams, trial))
            proposals.append(hparams)
        self.remaining -= len(proposals)
        self.proposed += len(proposals)
        return proposals

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None:
        match = next((i for i, (h, _) in enumerate(self.asked) if h == dict(hparams)), None)
        if match is not None:
            _, trial = self.asked.pop(match)
            # A diverged run is told as the worst finite value Optuna can rank.
            told = score_of(self.metric, value)
            if not math.isfinite(told):
                told = 1e300 if self.metric.goal == "min" else -1e300
            self.study.tell(trial, told)


class NoTuning:
    """A tuning-free optimizer: no tuning run at all (AlgoPerf's self-tuning ruleset)."""

    def propose(self, limit: int) -> list[dict[str, Any]]:
        return []

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None:
        pass

    def independent(self) -> int:
        return 0


class LrFindTuner:
    """``--search lr-find``: the range test, then tuning runs at its suggested rates.

    The study runs the range test (``range_steps`` steps, at most one trial's) and hands its
    suggestions (``valley``, ``steepest``, ``minimum/10``) to :meth:`suggest`. The range
    test is charged as one trial of the budget; the distinct suggestions are run, in that
    order, as far as the rest of the budget goes (``--budget 4`` or more runs all three),
    and the best on validation is chosen like any tuned setting. Running the three rather
    than trusting one: on the built-in problems ``valley`` alone picked Adam rates of about
    1e-3 where the grid's best was 0.1, and the validation value of the three runs catches
    that. An lr fixed with ``--set`` or by the problem needs no range test and is run as is.
    """

    def __init__(self, fixed: Mapping[str, Any], steps: int, budget: int) -> None:
        self.fixed = dict(fixed)
        self.lr_fixed = "lr" in fixed
        self.range_steps = min(LR_FIND_STEPS, steps)
        self.runs = budget - 1
        self.pending: list[dict[str, Any]] = [self.fixed] if self.lr_fixed else []
        self.done = False

    @property
    def needs_range_test(self) -> bool:
        return not self.done and not self.pending

    def suggest(self, lrs: Sequence[float]) -> None:
        """The suggested rates, best-first; the distinct ones the budget allows become runs."""
        distinct = list(dict.fromkeys(round_lr(lr) for lr in lrs))
        self.pending = [{**self.fixed, "lr": lr} for lr in distinct[: self.runs]]

    def propose(self, limit: int) -> list[dict[str, Any]]:
        proposals, self.pending = self.pending, []
        self.done = True
        return proposals

    def observe(self, hparams: Mapping[str, Any], value: float | None) -> None:
        pass

    def independent(self) -> int:
        return len(self.pending)  # the suggestions of one range test
