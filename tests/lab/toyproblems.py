"""Small user problems for the lab tests, loaded as ``toyproblems:<function>``."""

from __future__ import annotations

import os
import time

import torch

from adaptim.lab.problems.base import BuildContext, Metric, Problem, Setup


def _quadratic(seed: int, context: BuildContext, delay: float = 0.0) -> Setup:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 5.0, 5)
    target = torch.randn(5, generator=generator)
    x = torch.nn.Parameter(torch.zeros(5))

    def train_loss(step: int) -> torch.Tensor:
        if delay:
            time.sleep(delay)
        noise = 0.1 * torch.randn(5, generator=generator)
        return 0.5 * (scales * (x - target + noise) ** 2).sum()

    def evaluate() -> dict[str, float]:
        return {"loss": 0.5 * (scales * (x - target) ** 2).sum().item()}

    return Setup(parameters=[x], train_loss=train_loss, evaluate=evaluate)


def quadratic() -> Problem:
    return Problem(
        "toy-quadratic",
        "5-d noisy quadratic",
        Metric("loss", "min"),
        _quadratic,
        steps=30,
        batch_size=1,
    )


def slow_quadratic() -> Problem:
    delay = float(os.environ.get("TOY_DELAY", "0.02"))
    return Problem(
        "toy-slow",
        "the quadratic, slowed down so a test can kill a study mid-way",
        Metric("loss", "min"),
        lambda seed, context: _quadratic(seed, context, delay),
        steps=30,
        batch_size=1,
    )


def logged_quadratic() -> Problem:
    """The quadratic, appending a line to ``$TOY_BUILD_LOG`` whenever a trial builds it."""

    def build(seed: int, context: BuildContext) -> Setup:
        with open(os.environ["TOY_BUILD_LOG"], "a") as log:
            log.write(f"built seed {seed}\n")
        return _quadratic(seed, context)

    return Problem("toy-logged", "the quadratic, logging its builds", Metric("loss", "min"),
                   build, steps=30, batch_size=1)  # fmt: skip


def broken() -> Problem:
    raise RuntimeError("this problem cannot be built")


def _renamed_metric(seed: int, context: BuildContext) -> Setup:
    setup = _quadratic(seed, context)
    return Setup(setup.parameters, setup.train_loss, lambda: {"LOSS": setup.evaluate()["loss"]})


def no_main_metric() -> Problem:
    return Problem(
        "toy-nometric",
        "evaluate() lacks the main metric",
        Metric("loss", "min"),
        _renamed_metric,
        5,
        1,
    )


def _vector_loss(seed: int, context: BuildContext) -> Setup:
    setup = _quadratic(seed, context)
    return Setup(setup.parameters, lambda step: setup.parameters[0] ** 2, setup.evaluate)


def vector_loss() -> Problem:
    return Problem(
        "toy-vector", "train_loss() returns a vector", Metric("loss", "min"), _vector_loss, 5, 1
    )


def _raising(seed: int, context: BuildContext) -> Setup:
    setup = _quadratic(seed, context)

    def train_loss(step: int) -> torch.Tensor:
        raise ZeroDivisionError("bug in the user's loss")

    return Setup(setup.parameters, train_loss, setup.evaluate)


def raising_loss() -> Problem:
    return Problem("toy-raising", "train_loss() raises", Metric("loss", "min"), _raising, 5, 1)


HOSTILE = "<script>alert(1)</script>"


def _hostile(seed: int, context: BuildContext) -> Setup:
    setup = _quadratic(seed, context)
    return Setup(
        setup.parameters, setup.train_loss, lambda: {HOSTILE_METRIC: setup.evaluate()["loss"]}
    )


HOSTILE_METRIC = "<img src=x onerror=alert(2)> $x$ & co"


def hostile() -> Problem:
    """Names that would run script if the report did not escape them."""
    return Problem(
        HOSTILE,
        "a description with <b>markup</b> & an <iframe src=x>",
        Metric(HOSTILE_METRIC, "min"),
        _hostile,
        steps=20,
        batch_size=1,
    )


def _disagreeing(seed: int, context: BuildContext) -> Setup:
    """x moves from 0 toward 1 by gradient steps; validation wants x = 1, test wants x = 0."""
    x = torch.nn.Parameter(torch.zeros(()))
    return Setup(
        parameters=[x],
        train_loss=lambda step: 0.5 * (x - 1) ** 2,
        evaluate=lambda: {"gap": float(x) ** 2},
        validate=lambda: {"gap": (float(x) - 1) ** 2},
    )


def disagreeing_splits() -> Problem:
    """A problem whose validation and test metrics prefer opposite learning rates."""
    return Problem(
        "toy-disagree",
        "validation prefers a large lr, test a small one",
        Metric("gap", "min"),
        _disagreeing,
        steps=3,
        batch_size=1,
        target=0.01,
    )
