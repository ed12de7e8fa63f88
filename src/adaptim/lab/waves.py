"""How a study's trials run: one wave at a time, each trial found in the store or run.

A study (:class:`adaptim.lab.study.Study`) writes each problem's protocol as a
generator, a :data:`Pipeline`: it yields the trials it needs next and is sent
their results. :func:`drive` runs the problems' pipelines side by side, so a
wave holds every trial that is already determined; :func:`run_wave` takes a
wave's trials from the store, runs the rest through the executor (shared
with other processes of the study through :mod:`adaptim.lab.claims`) and
stores each as it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence

from adaptim.lab.claims import Claims
from adaptim.lab.executors import Executor
from adaptim.lab.problems import BuildContext
from adaptim.lab.store import Store
from adaptim.lab.trial import TrialResult, TrialSpec

#: Called once per trial as it completes: the result, and whether it came from the store.
OnTrial = Callable[[TrialResult, bool], None]
#: Trials per (problem, optimizer).
Runs = dict[tuple[str, str], list[TrialResult]]
#: One problem's protocol: yields the trials it needs next, is sent them (by key) back.
Pipeline = Generator[list[TrialSpec], dict[str, TrialResult], tuple[Runs, Runs, Runs]]


def drive(
    pipelines: Mapping[str, Pipeline], execute: Callable[[list[TrialSpec]], Iterable[TrialResult]]
) -> tuple[Runs, Runs, Runs]:
    """Run the problems' pipelines side by side, one wave of trials at a time.

    A wave holds every trial some problem asks for next, so a problem whose tuning is
    done runs its re-runs in the same wave as another problem's grid extension: workers
    get every trial that is already determined. Each problem sees only its own
    results, in the order one problem alone would, so the results do not change.
    """
    found: list[Runs] = [{}, {}, {}]
    asked: dict[str, list[TrialSpec]] = {}

    def advance(spec: str, done: dict[str, TrialResult] | None) -> None:
        try:
            asked[spec] = pipelines[spec].send(done)  # type: ignore[arg-type]
        except StopIteration as end:
            asked.pop(spec, None)
            for into, runs in zip(found, end.value, strict=True):
                into.update(runs)

    for spec in pipelines:
        advance(spec, None)
    while asked:
        done = {r.spec.key(): r for r in execute([s for w in asked.values() for s in w])}
        for spec in list(asked):
            advance(spec, done)
    tuning, finals, sweeps = found
    return tuning, finals, sweeps


def run_wave(
    specs: Sequence[TrialSpec],
    store: Store,
    executor: Executor,
    context: BuildContext,
    on_trial: OnTrial,
    claims: Claims | None = None,
) -> list[TrialResult]:
    """Stored results first; the rest run through the executor and are stored as each ends."""
    unique = list({s.key(): s for s in specs}.values())
    results: list[TrialResult] = []
    missing = []
    for spec in unique:
        stored = store.get(spec)
        if stored is None:
            missing.append(spec)
        else:
            results.append(stored)
            on_trial(stored, True)
    if missing:  # a read-only store fails now, not after the trials have run
        store.check_writable()
    for result, reused in _run_missing(missing, executor, context, store, claims):
        with interrupts_deferred():  # stored means reported: Ctrl-C waits for both
            if not reused:
                store.put(result)
            results.append(result)
            on_trial(result, reused)
    return results


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done.

    Storing a trial and reporting it (the progress line a log reads) belong
    together: interrupted between the two, the store held a trial that the log
    never showed. The signal is then handled as it would have been, after the
    block. Only the main thread receives signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _run_missing(
    specs: list[TrialSpec],
    executor: Executor,
    context: BuildContext,
    store: Store,
    claims: Claims | None,
) -> Iterable[tuple[TrialResult, bool]]:
    """``(result, reused)``: run here, or (with claims) by another worker of the study."""
    if claims is None:
        return ((r, False) for r in executor.run(specs, context))
    # As many trials claimed at a time as the executor runs at once.
    capacity = max(1, int(getattr(executor, "workers", 1)))
    return claims.share(specs, lambda batch: executor.run(batch, context), store, capacity)
