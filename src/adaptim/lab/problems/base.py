"""What a problem is: the typed protocol every built-in and user problem follows.

A :class:`Problem` is a named recipe. From a seed it builds a :class:`Setup`:
the parameters to optimize, the training loss of each step (drawing that
step's minibatch from a stream seeded by the seed), and an evaluation that
returns metrics, the main one among them.

A user's own problem is a function that takes no arguments and returns a
``Problem``; pass it as ``--problem package.module:function``::

    import torch
    from adaptim.lab.problems import BuildContext, Metric, Problem, Setup

    def make_problem() -> Problem:
        def build(seed: int, context: BuildContext) -> Setup:
            g = torch.Generator().manual_seed(seed)
            cpu = {"generator": g, "device": "cpu"}   # draw on the CPU on every device ...
            true_w = torch.tensor([1.0, -2.0, 0.5], device="cpu")
            x = torch.randn(512, 3, **cpu)
            y = x @ true_w
            x_val = torch.randn(256, 3, **cpu)
            y_val = x_val @ true_w
            # ... then move the data and build the parameters on the trial's device.
            x, y, x_val, y_val = (t.to(context.device) for t in (x, y, x_val, y_val))
            w = torch.nn.Parameter(torch.zeros(3, device=context.device))

            def train_loss(step: int) -> torch.Tensor:
                rows = torch.randint(0, 512, (32,), **cpu).to(context.device)
                return ((x[rows] @ w - y[rows]) ** 2).mean()

            def evaluate() -> dict[str, float]:      # test metrics: reported
                return {"mse": ((x @ w - y) ** 2).mean().item()}

            def validate() -> dict[str, float]:      # validation metrics: tuning, curves
                return {"mse": ((x_val @ w - y_val) ** 2).mean().item()}

            return Setup(parameters=[w], train_loss=train_loss, evaluate=evaluate,
                         validate=validate)

        return Problem(
            name="my-regression", description="3-d least squares",
            metric=Metric("mse", "min"), build=build, steps=300, batch_size=32,
        )

**Validation and test.** The lab tunes on validation data and reports on
test data (DeepOBS, AlgoPerf). ``Setup.validate`` returns the validation
metrics (the same names as ``evaluate``'s); the curves, the choice of a
setting and time-to-target use them, while the reported numbers come from
``evaluate`` at the end of the re-runs. A problem without ``validate`` still
works: everything then uses ``evaluate``, and the results say so
(``"tuned_on": "test (no validation split)"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

Goal = Literal["min", "max"]


@dataclass(frozen=True)
class Metric:
    """The main metric of a problem and whether lower (``"min"``) or higher (``"max"``) is better."""

    name: str
    goal: Goal

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is strictly better than ``b``."""
        return a < b if self.goal == "min" else a > b

    @property
    def worst(self) -> float:
        """The score of a diverged run: worse than any real value."""
        return float("inf") if self.goal == "min" else float("-inf")


@dataclass(frozen=True)
class BuildContext:
    """Options from the command line that some problems need."""

    #: A directory with dataset files (for example MNIST's IDX files), or ``None``.
    data_dir: Path | None = None
    #: The torch device the trial runs on (``--device``), resolved: "cpu" or "cuda". It is also
    #: torch's default device during the build. Draw random data and initial values on the CPU
    #: (``device="cpu"``, CPU generators: the same bits on every device), then move the data
    #: and create the parameters here.
    device: str = "cpu"


@dataclass
class Setup:
    """One problem instance, built from a seed.

    ``train_loss(step)`` returns the differentiable loss on the minibatch of
    step ``step`` (1-based). ``evaluate()`` returns the *test* metrics, the
    main one included; ``validate()``, when given, the same metrics on the
    validation data. Both run under ``torch.no_grad()``. 2-D problems also
    give ``position()``, the current point, for trajectory plots.
    """

    parameters: Sequence[torch.Tensor]
    train_loss: Callable[[int], torch.Tensor]
    evaluate: Callable[[], dict[str, float]]
    position: Callable[[], tuple[float, float]] | None = None
    validate: Callable[[], dict[str, float]] | None = None


@dataclass(frozen=True)
class Problem:
    """A named, seeded recipe for a :class:`Setup`, with its default budget."""

    name: str
    description: str
    metric: Metric
    build: Callable[[int, BuildContext], Setup]
    steps: int
    batch_size: int
    #: Evaluate every this many steps (and always at the end); 0 picks about 25 evaluations.
    eval_every: int = 0
    #: Tags for listing, e.g. ("2d",) or ("classification", "image").
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: For 2-D problems: the noise-free function f(u, v), elementwise on tensors; the report
    #: draws its contours under the optimizers' paths.
    landscape: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    #: For 2-D problems: where ``landscape`` is lowest (the report marks it).
    argmin: tuple[float, float] | None = None
    #: A fixed validation value of the main metric that counts as "trained", for AlgoPerf's
    #: time-to-target (:func:`adaptim.lab.curves.time_to_target`); ``None``: no target.
    target: float | None = None
    #: Hyperparameters this problem fixes for every optimizer that has them, e.g. Reddi et
    #: al.'s ``betas=(0.9, 0.99)``; they override the optimizer's default (``--set`` wins) and
    #: show in every trial's ``hparams``.
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def eval_interval(self, steps: int) -> int:
        return self.eval_every or max(1, steps // 25)
