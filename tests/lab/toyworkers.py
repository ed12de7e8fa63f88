"""A toy problem that logs which process ran each trial: ``toyworkers:counted``.

Every trial appends ``pid seed`` to the file named by ``TOY_RUNS`` when it starts
and sleeps ``TOY_DELAY`` seconds a step, so the tests of many workers see who ran
what and can kill a worker mid-trial.
"""

from __future__ import annotations

import os

from toyproblems import _quadratic

from adaptim.lab.problems.base import BuildContext, Metric, Problem, Setup


def _logged(seed: int, context: BuildContext) -> Setup:
    log = os.environ.get("TOY_RUNS")
    if log:
        with open(log, "a") as file:  # one short line per write: appends do not interleave
            file.write(f"{os.getpid()} {seed}\n")
    return _quadratic(seed, context, float(os.environ.get("TOY_DELAY", "0")))


def counted() -> Problem:
    return Problem(
        "toy-counted",
        "the toy quadratic, logging the process that runs each trial",
        Metric("loss", "min"),
        _logged,
        steps=30,
        batch_size=1,
    )
