"""Shared machinery of the torch.optim parity tests and of ``benchmarks/parity_table.py``.

A *case* is everything random about one comparison: the hyperparameters of
each param group, the layouts of the parameters, the scale and offset of the
gradients and the seed of the gradient sequence. :func:`draw_case` draws one
from a :class:`Source`: Hypothesis in the tests, :class:`RandomSource` in the
benchmark, so both explore the same space. :func:`run` then gives the same
parameters and the same :data:`STEPS` gradients to the adaptim optimizer and
to its ``torch.optim`` counterpart and compares the results.

Relative error
--------------
For one tensor, with ``a`` from adaptim and the reference ``b`` from torch.optim,

    rel(a, b) = max|a - b| / max(max|b|, tiny)

with ``tiny`` the smallest normal number of ``b``'s dtype; complex tensors are
compared as pairs of reals. It is measured for every parameter and for every
state tensor of every parameter; the ``step`` counter must be equal exactly.
NaN and Inf must sit at the same places with the same values, otherwise the
error is infinite.

Hyperparameter ranges
---------------------
torch.optim is the oracle, so the ranges stay where torch itself computes
well and where training makes sense:

* ``lr`` log-uniform in [1e-4, 1e-1] (Adadelta, whose steps carry no scale of
  their own and whose default is 1: [1e-2, 1]).
* ``eps`` log-uniform in [1e-10, 1e-1].
* Momenta below 0.99 and ``beta1`` in [0, 0.99]: heavy-ball momentum >= 1
  diverges, which torch allows but which compares nothing useful.
* ``beta2`` in [0.5, 0.9999], drawn log-uniform in ``1 - beta2``; RAdam thus
  runs both its un-rectified warm-up and its rectified branch (below
  ``beta2 = 0.6`` it only ever runs the warm-up branch).
* RMSprop ``alpha`` in [0.5, 0.999]: centered RMSprop computes
  ``sqrt(v - g_avg^2)``, and as ``alpha -> 0`` both terms tend to ``g^2`` and the
  difference is rounding noise. torch itself breaks down there: with
  ``alpha = 0`` the difference is exactly 0 and the steps are ``g / eps``
  (overflow to Inf and NaN within 200 steps), and in float32 with
  ``alpha <= 1e-2`` it takes the square root of a rounded-negative number
  (NaN). adaptim still agrees with torch bit for bit there, NaN for NaN, but a
  comparison of two NaN runs proves nothing, so :func:`compare` flags a
  non-finite reference and the ranges stay clear of it.
* Gradients are ``scale * (N(0, 1) + offset)`` with ``scale`` log-uniform in
  [1e-3, 1e3] and ``offset`` in [0, 2], so moment estimates see both noise and
  a consistent direction.
* ``nesterov`` requires ``momentum > 0`` and ``dampening = 0`` (torch and adaptim
  refuse anything else), so those combinations are not generated.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import torch

import adaptim

T = TypeVar("T")

#: Steps of every comparison.
STEPS = 200

#: The largest relative error accepted, per dtype.
TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.complex128: 1e-10,
}


# -- drawing ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Real numbers from ``low`` to ``high``, spread evenly over ``scale``.

    ``"log"`` is log-uniform; ``"log1m"`` is log-uniform in ``1 - x``, for decay
    rates such as ``beta2`` whose interesting values crowd towards one.
    """

    low: float
    high: float
    scale: Literal["linear", "log", "log1m"] = "linear"

    def at(self, u: float) -> float:
        """The value at fraction ``u`` in [0, 1] of the way from ``low`` to ``high``."""
        if self.scale == "linear":
            value = self.low + u * (self.high - self.low)
        elif self.scale == "log":
            value = math.exp(_between(math.log(self.low), math.log(self.high), u))
        else:
            value = 1 - math.exp(_between(math.log1p(-self.low), math.log1p(-self.high), u))
        return min(max(value, self.low), self.high)


def _between(start: float, end: float, u: float) -> float:
    return start + u * (end - start)


class Source(Protocol):
    """Where the random choices of a case come from; ``label`` names each for reports."""

    def value(self, values: Range, label: str) -> float: ...

    def integer(self, low: int, high: int, label: str) -> int: ...

    def choice(self, options: Sequence[T], label: str) -> T: ...


class RandomSource:
    """A :class:`Source` backed by :class:`random.Random`, for the benchmark."""

    def __init__(self, seed: int | str) -> None:
        self._random = random.Random(seed)

    def value(self, values: Range, label: str) -> float:
        return values.at(self._random.random())

    def integer(self, low: int, high: int, label: str) -> int:
        return self._random.randint(low, high)

    def choice(self, options: Sequence[T], label: str) -> T:
        return self._random.choice(options)


# -- the algorithms -----------------------------------------------------------------------
HValue = Range | tuple[Range, ...] | bool | float


@dataclass(frozen=True)
class Option:
    """One switch of an optimizer: the hyperparameter values when on and when off."""

    label: str
    on: Mapping[str, HValue]
    off: Mapping[str, HValue]


def flag(name: str, label: str | None = None) -> Option:
    """A boolean argument of the optimizer."""
    return Option(label or name, {name: True}, {name: False})


def switch(name: str, values: Range, label: str | None = None) -> Option:
    """A numeric argument whose zero turns a feature off (momentum, weight decay, ...)."""
    return Option(label or name, {name: values}, {name: 0.0})


Options = tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """An adaptim optimizer, its torch.optim reference and the space of its arguments."""

    name: str
    ours: type[torch.optim.Optimizer] = field(repr=False)
    theirs: type[torch.optim.Optimizer] = field(repr=False)
    #: Hyperparameters drawn in every case.
    hparams: Mapping[str, HValue] = field(repr=False)
    options: tuple[Option, ...] = field(repr=False)
    #: Which combinations of enabled options the optimizer accepts.
    valid: Callable[[Options], bool] = field(default=lambda enabled: True, repr=False)
    #: Hyperparameters torch reads from the constructor only, ignoring a param group's
    #: own value; every group of a case shares the first group's.
    constructor_only: tuple[str, ...] = field(default=(), repr=False)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints falsifying examples with this; the name says it all.
        printer.text(repr(self))

    def combinations(self) -> list[Options]:
        """Every accepted combination of enabled options, each as a tuple of labels."""
        labels = [option.label for option in self.options]
        masks = itertools.product((False, True), repeat=len(labels))
        chosen = [tuple(itertools.compress(labels, mask)) for mask in masks]
        return [enabled for enabled in chosen if self.valid(enabled)]

    def draw_hparams(self, enabled: Options, source: Source) -> dict[str, Any]:
        """Hyperparameters with exactly the options in ``enabled`` switched on."""
        values: dict[str, HValue] = dict(self.hparams)
        for option in self.options:
            values.update(option.on if option.label in enabled else option.off)
        return {name: _draw(value, name, source) for name, value in values.items()}


def _draw(value: HValue, name: str, source: Source) -> Any:
    if isinstance(value, Range):
        return source.value(value, name)
    if isinstance(value, tuple):
        return tuple(_draw(v, f"{name}[{i}]", source) for i, v in enumerate(value))
    return value


def combination_label(enabled: Options) -> str:
    """``"centered+momentum"``, or ``"plain"`` when no option is on."""
    return "+".join(enabled) or "plain"


LR = Range(1e-4, 1e-1, "log")
EPS = Range(1e-10, 1e-1, "log")
WEIGHT_DECAY = Range(1e-4, 1e-1, "log")
MOMENTUM = Range(0.05, 0.99)
BETAS = (Range(0.0, 0.99), Range(0.5, 0.9999, "log1m"))
WD = switch("weight_decay", WEIGHT_DECAY, "wd")
MAXIMIZE = flag("maximize")
DECOUPLED = flag("decoupled_weight_decay", "decoupled_wd")
ADAM_HPARAMS: dict[str, HValue] = {"lr": LR, "betas": BETAS, "eps": EPS}


def _nesterov_valid(enabled: Options) -> bool:
    return "nesterov" not in enabled or ("momentum" in enabled and "dampening" not in enabled)


SPECS: tuple[Spec, ...] = (
    Spec(
        "SGD", adaptim.SGD, torch.optim.SGD,
        {"lr": LR},
        (
            switch("momentum", MOMENTUM), switch("dampening", Range(0.05, 1.0)),
            flag("nesterov"), WD, MAXIMIZE,
        ),
        valid=_nesterov_valid,
    ),
    Spec(
        "Adagrad", adaptim.Adagrad, torch.optim.Adagrad,
        {"lr": LR, "eps": EPS},
        (
            switch("lr_decay", Range(1e-4, 1e-1, "log")),
            switch("initial_accumulator_value", Range(1e-3, 1.0, "log"), "init_acc"),
            WD, MAXIMIZE,
        ),
        # torch.optim.Adagrad fills ``sum`` from its constructor argument, even
        # for groups that set their own value; adaptim uses the group's value.
        constructor_only=("initial_accumulator_value",),
    ),
    Spec(
        "RMSprop", adaptim.RMSprop, torch.optim.RMSprop,
        {"lr": LR, "alpha": Range(0.5, 0.999, "log1m"), "eps": EPS},
        (flag("centered"), switch("momentum", MOMENTUM), WD, MAXIMIZE),
    ),
    Spec(
        "Adadelta", adaptim.Adadelta, torch.optim.Adadelta,
        {"lr": Range(1e-2, 1.0, "log"), "rho": Range(0.0, 0.999, "log1m"), "eps": EPS},
        (WD, MAXIMIZE),
    ),
    Spec(
        "Adam", adaptim.Adam, torch.optim.Adam,
        ADAM_HPARAMS,
        (flag("amsgrad"), WD, DECOUPLED, MAXIMIZE),
    ),
    Spec(
        "AdamW", adaptim.AdamW, torch.optim.AdamW,
        ADAM_HPARAMS,
        (flag("amsgrad"), WD, MAXIMIZE),
    ),
    Spec(
        "Adamax", adaptim.Adamax, torch.optim.Adamax,
        ADAM_HPARAMS,
        (WD, MAXIMIZE),
    ),
    Spec(
        "NAdam", adaptim.NAdam, torch.optim.NAdam,
        {**ADAM_HPARAMS, "momentum_decay": Range(1e-4, 1e-1, "log")},
        (WD, DECOUPLED, MAXIMIZE),
    ),
    Spec(
        "RAdam", adaptim.RAdam, torch.optim.RAdam,
        ADAM_HPARAMS,
        (WD, DECOUPLED, MAXIMIZE),
    ),
)  # fmt: skip


# -- cases --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """The shape of a parameter; ``transposed`` ones are non-contiguous (stored as ``.t()``)."""

    shape: tuple[int, ...]
    transposed: bool = False


#: Kinds of parameter layouts, each with a function drawing one.
LAYOUTS: dict[str, Callable[[Source], Layout]] = {
    "scalar": lambda s: Layout(()),
    "vector": lambda s: Layout((s.integer(1, 64, "length"),)),
    "matrix": lambda s: Layout((s.integer(1, 8, "rows"), s.integer(1, 8, "columns"))),
    "transposed": lambda s: Layout((s.integer(2, 8, "rows"), s.integer(2, 8, "columns")), True),
    "3-d": lambda s: Layout(tuple(s.integer(1, 4, "size") for _ in range(3))),
}

#: How ``lr`` is passed: a float, a 0-d tensor or a 1-element 1-d tensor.
LR_FORMS = ("float", "0-d tensor", "1-element tensor")

GRAD_SCALE = Range(1e-3, 1e3, "log")
GRAD_OFFSET = Range(0.0, 2.0)


@dataclass(frozen=True)
class Group:
    """One param group: its hyperparameters and the layouts of its parameters."""

    options: Options
    hparams: Mapping[str, Any]
    lr_form: str
    layouts: tuple[Layout, ...]

    def arguments(self, dtype: torch.dtype) -> dict[str, Any]:
        """The hyperparameters as passed to an optimizer; a tensor ``lr`` has the
        parameters' real dtype (a float32 ``lr`` would round a float64 run's steps)."""
        lr = self.hparams["lr"]
        real = dtype.to_real()
        if self.lr_form == "0-d tensor":
            lr = torch.tensor(lr, dtype=real)
        elif self.lr_form == "1-element tensor":
            lr = torch.tensor([lr], dtype=real)
        return {**self.hparams, "lr": lr}


@dataclass(frozen=True)
class Case:
    """Everything random about one comparison."""

    spec: Spec
    groups: tuple[Group, ...]
    grad_scale: float
    grad_offset: float
    seed: int


def draw_case(
    spec: Spec, options_per_group: Sequence[Options], source: Source, *, max_params: int = 3
) -> Case:
    """A case with one param group per entry of ``options_per_group``.

    Later groups take the first group's value of the spec's ``constructor_only``
    hyperparameters.
    """
    groups = []
    for index, enabled in enumerate(options_per_group):
        hparams = spec.draw_hparams(enabled, source)
        if groups:
            hparams.update({name: groups[0].hparams[name] for name in spec.constructor_only})
        lr_form = source.choice(LR_FORMS, f"group {index} lr form")
        count = source.integer(1, max_params, f"group {index} parameters")
        kinds = [source.choice(list(LAYOUTS), "layout") for _ in range(count)]
        layouts = tuple(LAYOUTS[kind](source) for kind in kinds)
        groups.append(Group(enabled, hparams, lr_form, layouts))
    return Case(
        spec,
        tuple(groups),
        grad_scale=source.value(GRAD_SCALE, "grad scale"),
        grad_offset=source.value(GRAD_OFFSET, "grad offset"),
        seed=source.integer(0, 2**32 - 1, "seed"),
    )


def _random(
    layout: Layout,
    generator: torch.Generator,
    dtype: torch.dtype,
    scale: float = 1.0,
    offset: float = 0.0,
) -> torch.Tensor:
    """``scale * (N(0, 1) + offset)`` laid out as ``layout``.

    The numbers are drawn in double precision and then rounded, so every dtype
    sees the same sequence.
    """
    wide = torch.complex128 if dtype.is_complex else torch.float64
    shape = layout.shape[::-1] if layout.transposed else layout.shape
    values = torch.randn(shape, generator=generator, dtype=wide)
    if offset:
        values += offset * (1 + 1j) if dtype.is_complex else offset
    values = (values * scale).to(dtype)
    return values.t() if layout.transposed else values


# -- running and comparing ----------------------------------------------------------------
@dataclass
class Comparison:
    """Relative errors by tensor name, and the problems that no error measures: differing
    state keys, dtypes, shapes, strides or steps, and a non-finite torch result."""

    param_errors: dict[str, float] = field(default_factory=dict)
    state_errors: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def worst_param(self) -> float:
        return max(self.param_errors.values(), default=0.0)

    @property
    def worst_state(self) -> float:
        return max(self.state_errors.values(), default=0.0)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """``max|a - b| / max(max|b|, tiny)`` with ``theirs`` as the reference ``b``."""
    tiny = torch.finfo(theirs.dtype).tiny
    a, b = (torch.view_as_real(t) if t.is_complex() else t for t in (ours, theirs))
    a, b = a.detach().double(), b.detach().double()
    finite = b.isfinite()
    same_nonfinite = torch.equal(a.isfinite(), finite) and torch.equal(
        a[~finite].nan_to_num(), b[~finite].nan_to_num()
    )
    if not same_nonfinite:
        return math.inf
    if not finite.any():
        return 0.0
    a, b = a[finite], b[finite]
    return (a - b).abs().max().item() / max(b.abs().max().item(), tiny)


def _metadata(tensor: torch.Tensor) -> tuple[torch.dtype, tuple[int, ...], tuple[int, ...]]:
    return tensor.dtype, tuple(tensor.shape), tensor.stride()


def compare(
    ours: torch.optim.Optimizer,
    theirs: torch.optim.Optimizer,
    ours_params: Sequence[torch.Tensor],
    theirs_params: Sequence[torch.Tensor],
) -> Comparison:
    """Compare parameters and every state entry, matching parameters by position."""
    result = Comparison()
    for index, (mine, reference) in enumerate(zip(ours_params, theirs_params, strict=True)):
        name = f"param {index} {tuple(reference.shape)}"
        result.param_errors[name] = relative_error(mine, reference)
        if not reference.isfinite().all():
            result.problems.append(f"{name}: torch's result is not finite; the case is ill-posed")
        state, expected = ours.state.get(mine, {}), theirs.state.get(reference, {})
        if set(state) != set(expected):
            result.problems.append(f"{name}: state keys {sorted(state)} != {sorted(expected)}")
            continue
        for key, want in expected.items():
            got = state[key]
            where = f"{name} state[{key!r}]"
            if not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)):
                if got != want:
                    result.problems.append(f"{where}: {got!r} != {want!r}")
                continue
            if _metadata(got) != _metadata(want):
                result.problems.append(
                    f"{where}: dtype, shape, stride {_metadata(got)} != {_metadata(want)}"
                )
            elif key == "step":
                if not torch.equal(got, want):
                    result.problems.append(f"{where}: {got.item()} != {want.item()}")
            else:
                result.state_errors[where] = relative_error(got, want)
    return result


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy with the same strides (a transposed tensor stays transposed)."""
    return tensor.detach().clone(memory_format=torch.preserve_format)


def _optimizer(
    cls: type[torch.optim.Optimizer],
    groups: Sequence[Group],
    params: Sequence[list[torch.Tensor]],
    dtype: torch.dtype,
) -> torch.optim.Optimizer:
    """The first group's hyperparameters go to the constructor, as in ``Adam(params, lr=...)``;
    later groups state their own."""
    first, *rest = zip(groups, params, strict=True)
    param_groups = [{"params": first[1]}]
    param_groups += [{"params": ps, **group.arguments(dtype)} for group, ps in rest]
    return cls(param_groups, **first[0].arguments(dtype))


def run(case: Case, dtype: torch.dtype, steps: int = STEPS) -> Comparison:
    """Run both optimizers for ``steps`` steps on the same gradients and compare them."""
    generator = torch.Generator().manual_seed(case.seed)
    layouts = [layout for group in case.groups for layout in group.layouts]
    theirs_groups = [[_random(lay, generator, dtype) for lay in g.layouts] for g in case.groups]
    ours_groups = [[_copy(p) for p in ps] for ps in theirs_groups]
    theirs_params = [p.requires_grad_() for ps in theirs_groups for p in ps]
    ours_params = [p.requires_grad_() for ps in ours_groups for p in ps]
    theirs = _optimizer(case.spec.theirs, case.groups, theirs_groups, dtype)
    ours = _optimizer(case.spec.ours, case.groups, ours_groups, dtype)
    for _ in range(steps):
        for layout, mine, reference in zip(layouts, ours_params, theirs_params, strict=True):
            grad = _random(layout, generator, dtype, case.grad_scale, case.grad_offset)
            reference.grad = grad
            mine.grad = _copy(grad)
        theirs.step()
        ours.step()
    return compare(ours, theirs, ours_params, theirs_params)
