"""What each recorded operation is in torch, for the replay (:mod:`._replay`) to emit.

Four spellings per operation: the multi-tensor kernel (``torch._foreach_*``,
with an in-place twin), the per-tensor expression the reference path's ``xp``
evaluates, the same in place on a dead first operand, and the host arithmetic
of Python floats (the reference path's ``float`` values, one per tensor).
"""

from __future__ import annotations

import torch

#: ``torch._foreach_<name>`` exists with an in-place twin for these, first operand a tensor list.
FOREACH = {
    "add": "add",
    "sub": "sub",
    "mul": "mul",
    "div": "div",
    "maximum": "maximum",
    "axpy": "add",
    "addcmul": "addcmul",
    "addcdiv": "addcdiv",  # (made by ._group_record.fuse_addcdiv)
    "lerp": "lerp",
    "neg": "neg",
    "abs": "abs",
    "sqrt": "sqrt",
    "rsqrt": "rsqrt",
    "pow": "pow",
}
COMMUTATIVE = frozenset({"add", "mul", "maximum"})

#: The per-tensor expression of each operation (what the reference path's ``xp`` calls).
PER_TENSOR = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "neg": "-{0}",
    "abs": "torch.abs({0})",
    "sqrt": "torch.sqrt({0})",
    "pow": "{0} ** {1}",
    "gt": "{0} > {1}",
    "ge": "{0} >= {1}",
    "lt": "{0} < {1}",
    "le": "{0} <= {1}",
    "eq": "{0} == {1}",
    "ne": "{0} != {1}",
    "and": "{0} & {1}",
    "or": "{0} | {1}",
    "maximum": "torch.maximum({0}, {1})",
    "where": "torch.where({0}, {1}, {2})",
    "clip": "torch.clamp({0}, {1}, {2})",
    "norm": "torch.linalg.vector_norm({0})",
    "sum": "{0}.sum()",
    "dot": "torch.dot({0}, {1})",  # (1-d: recorded by ._group_fast on flat views)
    "axpy": "torch.add({0}, {1}, alpha={2})",
    "addcmul": "torch.addcmul({0}, {1}, {2}, value={3})",
    "addcdiv": "torch.addcdiv({0}, {1}, {2}, value={3})",
    "lerp": "torch.lerp({0}, {1}, {2})",
    "rsqrt": "torch.rsqrt({0})",
    "matmul": "outer({0}, {1})",  # (``{0} @ {1}``: see outer)
    # not element-wise: the reference path's own functions (``xp`` is its TORCH_OPS)
    "mean_square": "xp.mean_square({0}, {1})",
    "mean": "xp.mean({0}, {1})",
    "minimum": "torch.minimum({0}, {1})",
    "axis_piece": "axis_piece(xp, {0}, {1}, {2})",
    "axis_maxima": "axis_maxima(xp, {0})",
}

#: The same operations in place on the first operand, for a first operand of the
#: result's shape whose value is dead (an element-wise array with a per-tensor scalar).
IN_PLACE = {
    "add": "{0}.add_({1})",
    "sub": "{0}.sub_({1})",
    "mul": "{0}.mul_({1})",
    "div": "{0}.div_({1})",
    "neg": "{0}.neg_()",
    "abs": "{0}.abs_()",
    "sqrt": "{0}.sqrt_()",
    "rsqrt": "{0}.rsqrt_()",
    "clip": "{0}.clamp_({1}, {2})",
    "axpy": "{0}.add_({1}, alpha={2})",
    "addcmul": "{0}.addcmul_({1}, {2}, value={3})",
    "lerp": "{0}.lerp_({1}, {2})",
}

#: Host scalars (a Python float per tensor): the reference path's float arithmetic.
HOST = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "neg": "-{0}",
    "pow": "{0} ** {1}",
    # ``max(low, x)`` as the rule writes it on floats (NaN gives ``low``, as there)
    "clip": "min(max({1}, {0}), {2})",
    "rms": "xp.rms({0}, {1})",
    "eps_of": "xp.eps_of({0})",
}


def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; for a column ``(..., R, 1)`` and a row ``(..., 1, C)`` (Adafactor's
    :math:`R_t C_t`) their broadcast product: the same numbers (one rounded product
    each, as the matrix product with one term), without a BLAS call per tensor."""
    if a.ndim >= 2 and b.ndim >= 2 and a.shape[-1] == 1 and b.shape[-2] == 1:
        return torch.mul(a, b)
    return a @ b
