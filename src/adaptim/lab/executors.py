"""Executors run trials: in this process, or in a local pool of worker processes.

An executor takes trial specs and yields results as they finish; it knows
nothing of the store or the protocol. A cluster engine (Ray, Dask) plugs in by
implementing the same two methods: ``run`` must yield one ``TrialResult`` per
spec, in any order, and ``close`` releases the workers.

Pool workers never outlive the process that started them: on Linux the
kernel kills them when it dies (``PR_SET_PDEATHSIG``), and on every system a
watcher thread in each worker exits it once its parent is gone. A ``kill -9``
of ``adaptim compare`` therefore leaves no worker behind, and with the
workers gone, multiprocessing's resource tracker (which exits when the last
process holding its pipe does) goes too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
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
    except (Exception, SystemExit) as error:  # sys.exit() in a user's problem too
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


#: More worker processes than this is a typo (each holds a copy of torch, ~300 MB).
MAX_WORKERS = 256

#: How often a worker checks that its parent is alive, in seconds (the portable fallback).
_PARENT_POLL = 0.5

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _init_worker(threads: int, path: list[str], parent: int, pdeathsig: bool) -> None:
    _exit_with_parent(parent, pdeathsig)
    # Each worker gets its share of the cores; more threads would only contend.
    torch.set_num_threads(threads)
    sys.path[:] = path


def _exit_with_parent(parent: int, pdeathsig: bool) -> None:
    """End this worker when process ``parent`` dies, however it dies (``kill -9`` included).

    Linux's ``PR_SET_PDEATHSIG`` has the kernel send SIGKILL at once. It fires when the
    *thread* that started the worker ends, so it is used only when that is the parent's main
    thread (``pdeathsig``). Since the parent may also have died before it was set, and other
    systems lack it, a daemon thread polls as well: a worker whose parent is gone is
    re-parented, so its parent pid changes.
    """
    if pdeathsig and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)
        os._exit(1)  # no clean-up: the parent that would receive results is gone

    threading.Thread(target=watch, name="adaptim-parent-watch", daemon=True).start()


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class PoolExecutor:
    """Runs trials in ``workers`` local processes, each limited to its share of the cores."""

    def __init__(self, workers: int) -> None:
        check_workers(workers)
        self.workers = workers
        self.threads = max(1, available_cores() // workers)
        # "spawn": forking a process that already runs OpenMP threads can deadlock.
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(
                self.threads,
                [str(Path.cwd()), *sys.path],
                os.getpid(),
                # Workers are started by the thread that submits trials: this one.
                threading.current_thread() is threading.main_thread(),
            ),
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


def check_workers(workers: int) -> None:
    """``--workers`` must be 1 to :data:`MAX_WORKERS` (0, one per core, is resolved before)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise LabError(
            f"--workers must be between 0 (one per core) and {MAX_WORKERS}, got {workers}"
        )


def make_executor(workers: int) -> Executor:
    check_workers(workers)
    return InProcessExecutor() if workers == 1 else PoolExecutor(workers)
