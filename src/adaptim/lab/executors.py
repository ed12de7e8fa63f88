"""Executors run trials: in this process, or in a local pool of worker processes.

An executor takes trial specs and yields results as they finish; it knows
nothing of the store or the protocol. A cluster engine (Ray, Dask) plugs in by
implementing the same two methods: ``run`` must yield one ``TrialResult`` per
spec, in any order, and ``close`` releases the workers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from functools import cache
from pathlib import Path
from typing import Protocol

import torch

from adaptim.lab.errors import LabError
from adaptim.lab.problems import BuildContext, Problem, resolve_problem
from adaptim.lab.trial import TrialResult, TrialSpec, run_trial


class Executor(Protocol):
    def run(self, specs: Sequence[TrialSpec], context: BuildContext) -> Iterator[TrialResult]: ...

    def close(self) -> None: ...


@cache
def _problem(spec: str) -> Problem:
    return resolve_problem(spec)


def execute(spec: TrialSpec, context: BuildContext) -> TrialResult:
    """Run one trial, resolving its problem by name (works in any process).

    An exception from the problem's own code becomes a one-line ``LabError``
    naming the trial, so the CLI can report it without a traceback.
    """
    try:
        return run_trial(spec, _problem(spec.problem), context)
    except LabError:
        raise
    except Exception as error:
        lr = spec.hparams.get("lr")
        lr = f"{lr:.3g}" if isinstance(lr, float) else lr
        raise LabError(
            f"trial {spec.problem} / {spec.optimizer} lr={lr} seed {spec.seed} failed: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None


class InProcessExecutor:
    """Runs trials one after another in this process."""

    def run(self, specs: Sequence[TrialSpec], context: BuildContext) -> Iterator[TrialResult]:
        for spec in specs:
            yield execute(spec, context)

    def close(self) -> None:
        pass


def _init_worker(threads: int, path: list[str]) -> None:
    # Each worker gets its share of the cores; more threads would only contend.
    torch.set_num_threads(threads)
    sys.path[:] = path


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class PoolExecutor:
    """Runs trials in ``workers`` local processes, each limited to its share of the cores."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = max(1, available_cores() // workers)
        # "spawn": forking a process that already runs OpenMP threads can deadlock.
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, [str(Path.cwd()), *sys.path]),
        )

    def run(self, specs: Sequence[TrialSpec], context: BuildContext) -> Iterator[TrialResult]:
        pending: set[Future[TrialResult]] = {self.pool.submit(execute, s, context) for s in specs}
        failure: BaseException | None = None
        try:
            while pending and failure is None:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:  # hand over every finished trial before reporting a failure
                    error = future.exception()
                    if error is None:
                        yield future.result()
                    elif failure is None:
                        failure = error
            if failure is not None:
                raise failure
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_executor(workers: int) -> Executor:
    return InProcessExecutor() if workers <= 1 else PoolExecutor(workers)
