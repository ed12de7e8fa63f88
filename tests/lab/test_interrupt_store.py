"""Ctrl-C between storing a trial and reporting it waits until both are done.

Found under load in CI: ``adaptim compare`` interrupted just after a trial was
stored, before its progress line was printed, left a log with one line fewer
than the store had trials (``test_ctrl_c_says_that_rerunning_resumes...``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adaptim.lab import waves


@pytest.fixture(autouse=True)
def python_sigint() -> Iterator[None]:
    """Python's own Ctrl-C handling for each test, whatever an earlier test left (a
    library's handler, SIGINT ignored or blocked); the previous state after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class Spec:
    def __init__(self, name: str) -> None:
        self.name = name

    def key(self) -> str:
        return self.name


class InterruptingStore:
    """Nothing stored yet; ``put`` is where the user's Ctrl-C lands."""

    def __init__(self) -> None:
        self.stored: list[Any] = []

    def get(self, spec: Spec) -> None:
        return None

    def check_writable(self) -> None:
        pass

    def put(self, result: Any) -> None:
        self.stored.append(result)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # (the handler runs at the next bytecode: it has, by now)


class Executor:
    def run(self, specs: list[Spec], context: Any) -> Any:
        return iter(specs)  # each spec stands for its own result


def test_a_trial_stored_when_ctrl_c_lands_is_reported_before_the_interrupt() -> None:
    store, reported = InterruptingStore(), []
    with pytest.raises(KeyboardInterrupt):
        waves.run_wave(
            [Spec("a"), Spec("b")],
            store,  # type: ignore[arg-type]
            Executor(),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            lambda result, reused: reported.append(result.name),
        )
    assert [r.name for r in store.stored] == ["a"]  # the interrupt stopped the wave after "a"
    assert reported == ["a"]  # ... and "a" was reported first
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_deferred_interrupt_is_handled_as_it_would_have_been() -> None:
    events = []
    with pytest.raises(KeyboardInterrupt), waves.interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        events.append("after the signal, inside")
    assert events == ["after the signal, inside"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # an ignored Ctrl-C stays ignored
        with waves.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_nothing_is_held_without_an_interrupt() -> None:
    with waves.interrupts_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
