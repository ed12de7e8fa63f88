"""Run a function on 2 CPU processes joined by a gloo process group, with a deadline.

:func:`run_ranks` spawns ``world_size`` fresh interpreters (the ``spawn`` start
method: no state leaks from the test process), gives them ``MASTER_ADDR`` and a
free ``MASTER_PORT`` on 127.0.0.1, joins them with gloo and calls
``fn(rank, world_size, *args)`` in each. Each rank's return value comes back
through a file (``torch.save``), so tensors need no shared memory.

A rank that raises fails the test with that rank's traceback. Its peers may
then wait in a collective forever, so they get a few seconds of grace and are
killed; a run that passes ``timeout`` is killed as a whole. A hang fails the
test, it never blocks CI. ``ADAPTIM_DEBUG_CASES=1`` prints each case as a rank
starts it, to find where a run hangs.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: Seconds the peers of a failed rank get to finish before they are killed.
GRACE = 5.0


class RankFailed(RuntimeError):
    """A rank raised, died or ran out of time; the message holds its traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int,
    world_size: int,
    port: int,
    folder: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    if Path("/sys/class/net/lo").exists():  # gloo binds to the loopback, whatever the hostname
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # two ranks share two cores
    out = Path(folder)
    try:
        dist.init_process_group(
            "gloo",
            rank=rank,
            world_size=world_size,
            # A collective whose peer died fails within a minute. (Not shortened to a shorter
            # deadline: under load a rank can take longer than that to start and join, and
            # its peer would give up first; the deadline kills both anyway.)
            timeout=datetime.timedelta(seconds=60.0),
        )
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        torch.save(result, out / f"result-{rank}.pt")
    except BaseException:
        (out / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise SystemExit(1) from None


def run_ranks(
    fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = 120.0
) -> list[Any]:
    """``[fn(0, world_size, *args), fn(1, world_size, *args), ...]``, each run on its own rank.

    ``fn`` must be importable by name (a module-level function), as ``spawn`` requires.
    """
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="adaptim-ranks-") as folder:
        out = Path(folder)
        port = free_port()
        processes = [
            context.Process(
                target=_entry,
                args=(rank, world_size, port, folder, fn, args),
                name=f"rank-{rank}",
            )
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        first_failure: float | None = None
        try:
            while any(p.is_alive() for p in processes):
                now = time.monotonic()
                if any(p.exitcode not in (None, 0) for p in processes):
                    first_failure = first_failure or now
                if now > deadline or (first_failure and now > first_failure + GRACE):
                    break
                time.sleep(0.05)
        finally:
            hung = [p.name for p in processes if p.is_alive()]
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join()
        errors = []
        for rank, process in enumerate(processes):
            error = out / f"error-{rank}.txt"
            if error.exists():
                errors.append(f"rank {rank} raised:\n{error.read_text()}")
            elif process.name in hung:
                errors.append(f"rank {rank} was killed while still running (hung?)")
            elif process.exitcode != 0:
                errors.append(f"rank {rank} died with exit code {process.exitcode}")
        if errors:
            if hung and not first_failure:
                errors.insert(0, f"timed out after {timeout:g} s")
            raise RankFailed("\n".join(errors))
        return [
            torch.load(out / f"result-{rank}.pt", weights_only=False) for rank in range(world_size)
        ]


@dataclass(frozen=True)
class Failure:
    """One case that raised on a rank; the other cases of the run go on."""

    rank: int
    traceback: str


def each_case(rank: int, keys: Iterable[Any], fn: Callable[..., Any]) -> dict[Any, Any]:
    """``{key: fn(*key)}`` on this rank, with a :class:`Failure` for each case that raised.

    Several cases share one pair of processes, which saves starting a pair per
    case. The cases that fail today fail on both ranks at the same point, so the
    process group stays usable for the next case.
    """
    results: dict[Any, Any] = {}
    for key in keys:
        try:
            if os.environ.get("ADAPTIM_DEBUG_CASES"):
                print(f"rank {rank}: {key}", flush=True)
            results[key] = fn(*key)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # DCP's CheckpointException is a BaseException
            results[key] = Failure(rank, traceback.format_exc())
    return results


class RankRuns:
    """Runs of :func:`run_ranks`, each done once per session, failures included."""

    def __init__(self) -> None:
        self._outcomes: dict[tuple[Any, ...], list[Any] | RankFailed] = {}

    def __call__(self, fn: Callable[..., Any], *args: Any, timeout: float = 180.0) -> list[Any]:
        key = (fn.__module__, fn.__qualname__, *args)
        if key not in self._outcomes:
            try:
                self._outcomes[key] = run_ranks(fn, *args, timeout=timeout)
            except RankFailed as error:
                self._outcomes[key] = error
        outcome = self._outcomes[key]
        if isinstance(outcome, RankFailed):
            raise outcome
        return outcome

    def case(self, fn: Callable[..., Any], *args: Any, key: Any) -> list[Any]:
        """Every rank's result for case ``key`` of a run of :func:`each_case`; raises its failure."""
        per_rank = [results[key] for results in self(fn, *args)]
        failures = [r for r in per_rank if isinstance(r, Failure)]
        if failures:
            raise RankFailed("\n".join(f"rank {f.rank} raised:\n{f.traceback}" for f in failures))
        return per_rank
