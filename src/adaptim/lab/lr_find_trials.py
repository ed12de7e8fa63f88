"""The learning-rate range test on the lab's problems, and as a stored trial of ``--search lr-find``.

The test itself is :mod:`adaptim.lab.lr_find`; here it meets the lab: a
problem built from a seed, a named optimizer (``adam``, ``rmsprop@keras``)
and its ramp (:func:`lab_range`), and a trial the store keeps, so a study
re-run or re-rendered reuses the range test instead of repeating it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Any

import torch

from adaptim.lab.lr_find import (
    DEFAULT_SMOOTHING,
    DEFAULT_STEPS,
    DEFAULT_STOP_FACTOR,
    LrFindResult,
    check_arguments,
    lr_find,
)
from adaptim.lab.problems.base import BuildContext, Problem
from adaptim.lab.store import Store
from adaptim.lab.trial import TrialResult, TrialSpec


def lab_range(optimizer: str) -> tuple[float, float]:
    """The ramp for a lab optimizer: its grid's range widened 1000× below and 100× above.

    For Adam's 1e-4–1e-1 that is fastai's 1e-7–10; each optimizer's range is
    the same per-optimizer prior the grid search uses.
    """
    from adaptim.lab.optimizers import parse_optimizer

    low, high = parse_optimizer(optimizer)[0].lr_range
    return float(f"{low / 1000:.3g}"), float(f"{high * 100:.3g}")


def lr_find_problem(
    problem: Problem,
    optimizer: str,
    hparams: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    context: BuildContext | None = None,
    start_lr: float | None = None,
    end_lr: float | None = None,
    steps: int = DEFAULT_STEPS,
) -> LrFindResult:
    """The range test of lab optimizer ``optimizer`` (``adam``, ``rmsprop@keras``) on ``problem``
    built from ``seed``, its minibatches those of a trial's first steps; ``hparams`` fixed (the
    problem's and ``--set``). The ramp defaults to :func:`lab_range`."""
    from adaptim.lab.optimizers import make_optimizer

    low, high = lab_range(optimizer)
    start_lr = low if start_lr is None else start_lr
    end_lr = high if end_lr is None else end_lr
    check_arguments(start_lr, end_lr, steps, DEFAULT_SMOOTHING, DEFAULT_STOP_FACTOR)
    torch.manual_seed(seed)  # as a trial does: module initialisers draw from it
    setup = problem.build(seed, context or BuildContext())
    opt = make_optimizer(optimizer, setup.parameters, {**(hparams or {}), "lr": start_lr})
    # The problem draws step k's minibatch from train_loss(k): data are the step numbers.
    return lr_find(
        list(setup.parameters),
        setup.train_loss,
        opt,
        itertools.count(1),
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
    )


#: The hyperparameter key that marks a trial as a range test: ``[start_lr, end_lr]``.
RANGE_TEST_KEY = "lr_range_test"


def run_range_test(spec: TrialSpec, problem: Problem, context: BuildContext) -> TrialResult:
    """The range test ``spec`` describes, as a storable trial: the curve in ``info["lr_find"]``.

    ``spec.hparams`` holds the fixed hyperparameters and :data:`RANGE_TEST_KEY`;
    ``spec.steps`` is the length of the ramp. Its step count is what tuning charges.
    """
    from adaptim import __version__

    hparams = dict(spec.hparams)
    start_lr, end_lr = hparams.pop(RANGE_TEST_KEY)
    started = time.perf_counter()
    result = lr_find_problem(
        problem,
        spec.optimizer,
        hparams,
        seed=spec.seed,
        context=context,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=spec.steps,
    )
    return TrialResult(
        spec=spec,
        records=[],
        final={},
        diverged=False,
        wall_time=time.perf_counter() - started,
        steps_done=result.steps,
        info={"adaptim": __version__, "torch": torch.__version__, "lr_find": result.to_json()},
    )


def range_test_of(trial: TrialResult) -> LrFindResult:
    """The range test a stored trial of :func:`run_range_test` holds."""
    return LrFindResult.from_json(trial.info["lr_find"])


def range_test_hparams(optimizer: str, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The ``hparams`` of a range test's :class:`TrialSpec`: ``fixed`` and the ramp."""
    return {**fixed, RANGE_TEST_KEY: list(lab_range(optimizer))}


def stored_range_test(
    store: Store, spec: TrialSpec, problem: Problem, context: BuildContext
) -> TrialResult:
    """The range test ``spec`` from ``store``, or run now and stored."""
    trial = store.get(spec)
    if trial is None:
        trial = run_range_test(spec, problem, context)
        store.put(trial)
    return trial


def suggested_lrs(trial: TrialResult) -> list[float]:
    """The range test's suggestions, best-first; the low end of the optimizer's grid when the
    test recorded too few finite points to suggest anything."""
    from adaptim.lab.optimizers import parse_optimizer

    found = range_test_of(trial)
    return [s.lr for s in found.suggestions] or [
        parse_optimizer(trial.spec.optimizer)[0].lr_range[0]
    ]
