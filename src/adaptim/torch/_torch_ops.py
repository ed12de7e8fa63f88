"""The array operations the update rules run on in the torch front-end.

:data:`TORCH_OPS` is the ``xp`` of the eager step; :data:`TRACEABLE_OPS` the
one of the step under ``torch.compile``, where arguments that take only
concrete numbers are spelled as formulas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import torch

from adaptim.algorithms._spec import ArrayOps, addcdiv
from adaptim.torch import _matrices


def _traced_scalar(like: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-d tensor of ``like``'s dtype, made by arithmetic in the graph.

    Under torch 2.13's Dynamo, a float that became dynamic (an ``lr`` a
    scheduler changes) passed as a *scalar* bound of ``clamp``, ``where`` or
    ``minimum`` keeps its first compiled value: later values are silently
    ignored. A tensor bound made by arithmetic is read on every call, and a
    factory such as ``torch.full`` recompiles on each new value instead.
    """
    return like.new_zeros(()) + value


def _with_numbers(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor | float, torch.Tensor | float], torch.Tensor]:
    """``op`` (``torch.maximum``, ``torch.minimum``: tensors only) taking a number on either side.

    The number becomes a 0-d tensor of the other side's dtype, as the native
    loop and the replay read a constant (and made by arithmetic, so a
    hyperparameter stays live under ``torch.compile``: :func:`_traced_scalar`).
    """

    def applied(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
        if not isinstance(a, torch.Tensor):
            if not isinstance(b, torch.Tensor):
                raise TypeError(f"{op.__name__}: one side must be an array, got {a!r} and {b!r}")
            a = _traced_scalar(b, a)
        elif not isinstance(b, torch.Tensor):
            b = _traced_scalar(a, b)
        return op(a, b)

    return applied


TORCH_OPS = ArrayOps(
    name="torch",
    sqrt=torch.sqrt,
    maximum=_with_numbers(torch.maximum),
    abs=torch.abs,
    where=torch.where,
    clip=torch.clamp,
    norm=torch.linalg.vector_norm,
    axpy=lambda a, b, alpha: torch.add(a, b, alpha=alpha),
    addcmul=lambda a, b, c, value: torch.addcmul(a, b, c, value=value),
    addcdiv=lambda a, b, c, value: torch.addcdiv(a, b, c, value=value),
    lerp=torch.lerp,
    rsqrt=torch.rsqrt,
    # (as torch's Adafactor computes it: the norm along the axis, squared, over n;
    # torch.norm's Python wrapper calls this vector_norm for an axis)
    mean_square=lambda x, axis: (
        torch.linalg.vector_norm(x, dim=axis, keepdim=True).square_().div_(x.shape[axis])
    ),
    mean=lambda x, axis: x.mean(dim=axis, keepdim=True),
    eps_of=lambda x: torch.finfo(x.dtype).eps,
    rms=lambda x, scale: float(torch.linalg.vector_norm(x)) / (x.numel() ** 0.5 * scale),
    amax=lambda x, dims: torch.amax(x, dim=dims),
    minimum=_with_numbers(torch.minimum),
    concat=torch.cat,
    addmm=_matrices.addmm,
    symmetric_addmm=_matrices.symmetric_addmm,
    to_bfloat16=lambda x: x.bfloat16(),
)


def _host_number(value: Any) -> Any:
    """A number the traced rule multiplies a tensor by, as a 0-d float64 CPU tensor.

    On CUDA, Inductor bakes a dynamic float (a scheduled ``lr``, which Dynamo
    passes as a symbolic float) that multiplies a tensor into the kernel and
    guards on its value: a recompile for each new learning rate. A 0-d CPU
    tensor made from it by arithmetic is read on every call, as the step
    counter is. Every number goes this way (under Dynamo a symbolic float
    does not always show as ``torch.SymFloat``: SGD's ``-lr`` did not); in
    the multiply it is rounded to the tensor's dtype, as ATen rounds a Python
    scalar, so the bits are the same.
    """
    if isinstance(value, torch.Tensor):
        return value
    return torch.zeros((), dtype=torch.float64).add(cast(float, value))


#: The ``xp`` of the step under ``torch.compile``: the multiply-adds as formulas,
#: because torch's ``alpha=``/``value=``/scalar ``weight`` arguments take only
#: concrete numbers and would make Dynamo specialise (and recompile) on each new
#: learning rate or beta a scheduler sets.
TRACEABLE_OPS = dataclasses.replace(
    TORCH_OPS,
    name="torch-traceable",
    traced=True,
    axpy=lambda a, b, alpha: a + b * _host_number(alpha),
    addcmul=lambda a, b, c, value: a + b * c * _host_number(value),
    addcdiv=lambda a, b, c, value: addcdiv(a, b, c, _host_number(value)),
    lerp=lambda a, b, weight: a + (b - a) * _host_number(weight),
    clip=lambda x, low, high: torch.clamp(x, _traced_scalar(x, low), _traced_scalar(x, high)),
    rms=lambda x, scale: torch.linalg.vector_norm(x) / (x.numel() ** 0.5 * scale),
    symmetric_addmm=_matrices.plain_symmetric_addmm,
)
