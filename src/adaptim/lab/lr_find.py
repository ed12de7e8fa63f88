"""The learning-rate range test (Smith 2017; the conventions of fastai's ``lr_find``).

Train for a few steps while the learning rate grows exponentially from
``start_lr`` to ``end_lr``,

    lr_i = start_lr · (end_lr / start_lr)^(i / (n − 1)),    i = 0 … n − 1,

and record the training loss ℓ_i of each step. The raw minibatch loss is
noisy, so it is smoothed with a bias-corrected exponential moving average
(as Adam corrects its moments):

    a_i = β a_(i−1) + (1 − β) ℓ_i,   a_(−1) = 0,    s_i = a_i / (1 − β^(i+1)).

The test stops as soon as s_i exceeds ``stop_factor`` (4) times the smallest
smoothed loss so far, or the loss is not finite: past that point the run
only measures divergence. The parameters, buffers, gradients and optimizer
state are restored afterwards, bit for bit, whether the test ends normally
or raises.

**Suggestions** are read off the smoothed curve without its first tenth of
the planned steps (the average is still warming up and tiny rates teach
nothing) and its last five points (the climb to the stop), as fastai does:

* ``valley`` (fastai's default): the longest run of points, in lr order,
  along which the smoothed loss keeps falling; the suggestion lies a third
  plus a sixth of the way into it, where the loss falls steadily and is far
  from the blow-up;
* ``steepest``: where the smoothed loss falls fastest against log lr
  (fastai's ``steep``; Smith 2017, §3.3, takes rates from where the loss
  starts falling to where it stops);
* ``minimum/10``: a tenth of the lr at the smoothed loss's minimum (the
  minimum is already too fast; Howard & Gugger 2020, ch. 5).

References: L. N. Smith, "Cyclical Learning Rates for Training Neural
Networks", WACV 2017; J. Howard and S. Gugger, "Deep Learning for Coders with
fastai and PyTorch", 2020.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: fastai's defaults: 100 steps from 1e-7 to 10, smoothing 0.98, stop at 4× the minimum.
DEFAULT_STEPS = 100
DEFAULT_START_LR = 1e-7
DEFAULT_END_LR = 10.0
DEFAULT_SMOOTHING = 0.98
DEFAULT_STOP_FACTOR = 4.0
#: Points dropped at the end before suggesting (the climb to the stop).
SKIP_END = 5

RULES = {
    "valley": "a third plus a sixth of the way into the longest run of points along which the "
    "smoothed loss keeps falling (fastai's default)",
    "steepest": "where the smoothed loss falls fastest against log lr (fastai's steep)",
    "minimum/10": "a tenth of the lr at the smoothed loss's minimum",
}


@dataclass(frozen=True)
class Suggestion:
    """One suggested learning rate, the smoothed loss at that lr, and the rule behind it."""

    name: str
    lr: float
    loss: float
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "loss": self.loss, "rule": self.rule}


@dataclass(frozen=True)
class LrFindResult:
    """What a range test measured: per step its lr, raw and smoothed loss; the suggestions."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestions: tuple[Suggestion, ...]
    #: Why it ended: ``"completed"``, ``"diverged"`` (past ``stop_factor`` × the minimum),
    #: ``"non-finite"`` (the loss was NaN or infinite) or ``"data exhausted"``.
    stop: str
    #: The steps it was planned to take (``len(lrs)`` when it completed).
    planned: int

    @property
    def steps(self) -> int:
        """Training steps taken, the one whose loss was not finite included."""
        return len(self.lrs) + (self.stop == "non-finite")

    def suggestion(self, name: str = "valley") -> Suggestion:
        """The suggestion of rule ``name`` (``valley``, ``steepest`` or ``minimum/10``)."""
        for s in self.suggestions:
            if s.name == name:
                return s
        if name not in RULES:
            raise ValueError(f"Invalid suggestion name: {name!r}; allowed: {', '.join(RULES)}")
        raise ValueError(
            f"no {name!r} suggestion: the range test recorded only {len(self.lrs)} finite "
            f"point(s) before it stopped ({self.stop}); lower start_lr"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "lrs": list(self.lrs),
            "losses": list(self.losses),
            "smoothed": list(self.smoothed),
            "suggestions": [s.to_json() for s in self.suggestions],
            "stop": self.stop,
            "planned": self.planned,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LrFindResult:
        return cls(
            tuple(data["lrs"]),
            tuple(data["losses"]),
            tuple(data["smoothed"]),
            tuple(Suggestion(**s) for s in data["suggestions"]),
            data["stop"],
            int(data["planned"]),
        )


def ramp(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """The exponential ramp: ``steps`` rates from ``start_lr`` to ``end_lr``, even in log space."""
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    """The bias-corrected exponential moving average s_i of the module's docstring."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: Sequence[float], smoothed: Sequence[float], planned: int) -> list[Suggestion]:
    """The three suggestions from the smoothed curve (see the module); none from < 2 points."""
    points = list(zip(lrs, smoothed, strict=True))
    trimmed = points[planned // 10 : len(points) - SKIP_END]
    if len(trimmed) < 2:  # a short test: read the whole curve rather than nothing
        trimmed = points
    if len(trimmed) < 2:
        return []
    lrs, losses = [lr for lr, _ in trimmed], [s for _, s in trimmed]
    valley = _valley(losses)
    logs = [math.log(lr) for lr in lrs]
    slopes = [(losses[i + 1] - losses[i]) / (logs[i + 1] - logs[i]) for i in range(len(lrs) - 1)]
    steepest = min(range(len(slopes)), key=slopes.__getitem__)
    lowest = min(range(len(losses)), key=losses.__getitem__)
    picks = (("valley", valley, 1.0), ("steepest", steepest, 1.0), ("minimum/10", lowest, 0.1))
    return [
        Suggestion(name, lr, _loss_at(lr, points), RULES[name])
        for name, i, scale in picks
        for lr in [lrs[i] * scale]
    ]


def _loss_at(lr: float, points: Sequence[tuple[float, float]]) -> float:
    """The smoothed loss at ``lr``, linear in log lr between recorded points (clamped)."""
    if lr <= points[0][0]:
        return points[0][1]
    for (lr0, s0), (lr1, s1) in itertools.pairwise(points):
        if lr <= lr1:
            t = math.log(lr / lr0) / math.log(lr1 / lr0)
            return s0 + t * (s1 - s0)
    return points[-1][1]


def _valley(losses: Sequence[float]) -> int:
    """Index a third plus a sixth into the longest strictly falling subsequence of ``losses``."""
    n = len(losses)
    length = [1] * n  # longest falling subsequence ending at i
    first = list(range(n))  # where that subsequence starts
    for i in range(n):
        for j in range(i):
            if losses[i] < losses[j] and length[j] + 1 > length[i]:
                length[i], first[i] = length[j] + 1, first[j]
    end = max(range(n), key=lambda i: (length[i], -i))
    span = end - first[end]
    return first[end] + span // 3 + span // 6


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid {name}: {value!r}; expected a positive number")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid {name}: {value!r}; expected a positive finite number")
    return float(value)


def check_arguments(
    start_lr: float, end_lr: float, steps: int, smoothing: float, stop_factor: float
) -> None:
    """Raise ``ValueError`` (``TypeError`` for a non-number) naming the first bad argument."""
    _positive("start_lr", start_lr)
    if _positive("end_lr", end_lr) <= start_lr:
        raise ValueError(f"Invalid end_lr: {end_lr!r}; it must exceed start_lr ({start_lr!r})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"Invalid steps: {steps!r}; expected an integer of at least 2")
    if isinstance(smoothing, bool) or not (
        isinstance(smoothing, (int, float)) and 0 <= smoothing < 1
    ):
        raise ValueError(f"Invalid smoothing: {smoothing!r}; expected a number in [0, 1)")
    if _positive("stop_factor", stop_factor) <= 1:
        raise ValueError(f"Invalid stop_factor: {stop_factor!r}; expected a number above 1")


def _build_optimizer(
    optimizer: torch.optim.Optimizer | Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    params: list[torch.Tensor],
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if not callable(optimizer):
        raise TypeError(
            f"Invalid optimizer: {optimizer!r}; expected a torch.optim.Optimizer, an optimizer "
            "class (adaptim.Adam) or a function from a list of parameters to an optimizer"
        )
    built = optimizer(params)
    if not isinstance(built, torch.optim.Optimizer):
        raise TypeError(
            f"Invalid optimizer: calling {optimizer!r} on the parameters returned a "
            f"{type(built).__name__}, not a torch.optim.Optimizer"
        )
    return built


class _Snapshot:
    """A bit-exact copy of the model's tensors, their gradients and the optimizer's state."""

    def __init__(
        self, model: torch.nn.Module | None, params: list[torch.Tensor], optimizer: Any
    ) -> None:
        self.model = model
        self.params = params
        self.optimizer = optimizer
        self.tensors = (
            {k: v.detach().clone() for k, v in model.state_dict().items()}
            if model is not None
            else [p.detach().clone() for p in params]
        )
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        self.state = None if optimizer is None else copy.deepcopy(optimizer.state_dict())

    def restore(self) -> None:
        with torch.no_grad():
            if isinstance(self.tensors, dict):
                assert self.model is not None
                self.model.load_state_dict(self.tensors)
            else:
                for p, saved in zip(self.params, self.tensors, strict=True):
                    p.copy_(saved)
        for p, grad in zip(self.params, self.grads, strict=True):
            p.grad = grad
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self.state)


def _batches(data: Iterable[Any] | None) -> Iterator[tuple[Any, ...]]:
    """The arguments of each loss call: ``()`` forever, or the next batch, the data cycled."""
    if data is None:
        while True:
            yield ()
    while True:
        empty = True
        for batch in data:
            empty = False
            yield (batch,)
        if empty:
            return


def lr_find(
    model: torch.nn.Module | Iterable[torch.Tensor],
    loss: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer | Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    data: Iterable[Any] | None = None,
    *,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int = DEFAULT_STEPS,
    smoothing: float = DEFAULT_SMOOTHING,
    stop_factor: float = DEFAULT_STOP_FACTOR,
) -> LrFindResult:
    """Run the learning-rate range test on ``model`` and return the curve and the suggestions.

    ``model``: a ``torch.nn.Module`` (its trainable parameters are trained;
    parameters and buffers are restored afterwards) or the parameter tensors
    themselves. ``loss``: returns the scalar training loss of one step;
    called as ``loss(batch)`` with the next item of ``data`` when ``data`` is
    given (re-iterated when it runs out, like epochs), else as ``loss()``
    (a closure that draws its own minibatch). ``optimizer``: an optimizer
    over those parameters (its state is restored afterwards), or a class or
    function that builds one from the list of parameters
    (``adaptim.Adam``, ``functools.partial(adaptim.SGD, momentum=0.9)``).
    Every param group gets the ramp's learning rate. The stop rule assumes a
    positive loss; random number generators (dropout) are not rewound, and
    an iterator given as ``data`` stays consumed.

    Example::

        result = adaptim.lr_find(model, lambda b: F.cross_entropy(model(b[0]), b[1]),
                                 adaptim.Adam, loader)
        result.suggestion("valley").lr
    """
    check_arguments(start_lr, end_lr, steps, smoothing, stop_factor)
    if not callable(loss):
        raise TypeError(f"Invalid loss: {loss!r}; expected a function returning a scalar tensor")
    module = model if isinstance(model, torch.nn.Module) else None
    params: list[torch.Tensor]
    if module is not None:
        params = [p for p in module.parameters() if p.requires_grad]
    elif isinstance(model, torch.Tensor) or not isinstance(model, Iterable):
        raise TypeError(
            f"Invalid model: {type(model).__name__}; expected a torch.nn.Module or an iterable "
            "of parameter tensors"
        )
    else:
        params = list(model)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError(
            "Invalid model: it has no parameters that require gradients"
            if not params
            else "Invalid model: every parameter must be a tensor with requires_grad=True"
        )
    given = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    snapshot = _Snapshot(module, params, given)
    opt = _build_optimizer(optimizer, params)
    lrs: list[float] = []
    losses: list[float] = []
    stop = "completed"
    best = math.inf
    average = 0.0
    try:
        batches = _batches(data)
        for i, lr in enumerate(ramp(start_lr, end_lr, steps)):
            arguments = next(batches, None)
            if arguments is None:
                stop = "data exhausted"
                break
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            value = loss(*arguments)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                kind = (
                    f"a tensor of shape {tuple(value.shape)}"
                    if isinstance(value, torch.Tensor)
                    else f"a {type(value).__name__}"
                )
                raise TypeError(f"Invalid loss: it must return a scalar tensor, got {kind}")
            number = float(value.item())
            if not math.isfinite(number):
                stop = "non-finite"
                break
            value.backward()  # type: ignore[no-untyped-call]
            opt.step()
            lrs.append(lr)
            losses.append(number)
            average = smoothing * average + (1 - smoothing) * number
            smoothed = average / (1 - smoothing ** (i + 1))
            best = min(best, smoothed)
            if smoothed > stop_factor * best:
                stop = "diverged"
                break
    finally:
        snapshot.restore()
    curve = smooth(losses, smoothing)
    return LrFindResult(
        tuple(lrs), tuple(losses), tuple(curve), tuple(suggest(lrs, curve, steps)), stop, steps
    )
