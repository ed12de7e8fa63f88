"""How the NumPy front-end computes: the rules' array operations and two state conventions.

:data:`NUMPY_OPS` is the ``xp`` the update rules run on; scalar state is kept
in float32 as torch keeps it, and complex parameters are updated as pairs of
reals (:func:`_real_view`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from adaptim.algorithms import ArrayOps, addcdiv, lerp


def _in_float32(formula: Callable[..., Any]) -> Callable[..., Any]:
    """``formula`` computed in float32 and rounded once for float16 arrays, as torch's
    compound kernels (``addcdiv``, ``addcmul``, ``add(alpha=)``, ``lerp``) compute
    half types; other dtypes as written. It keeps ``lr·m/√v`` from underflowing to
    0/0 = NaN where torch gives ±inf. (NumPy still rounds a float16 ``x * 0.9`` with
    the scalar in float16, where torch keeps it in float32, so float16 agrees with
    torch to float16's rounding, not to the bit.)"""

    def compute(first: Any, *rest: Any) -> Any:
        if getattr(first, "dtype", None) != np.float16:
            return formula(first, *rest)
        wide = [x.astype(np.float32) if isinstance(x, np.ndarray | np.generic) else x for x in rest]
        return formula(
            np.float32(first) if np.ndim(first) == 0 else first.astype(np.float32), *wide
        ).astype(np.float16)

    return compute


NUMPY_OPS: ArrayOps = ArrayOps(
    name="numpy",
    sqrt=np.sqrt,
    maximum=np.maximum,
    abs=np.abs,
    where=np.where,
    clip=np.clip,
    norm=lambda x: np.sqrt(np.sum(x * x)),
    axpy=_in_float32(lambda a, b, alpha: a + alpha * b),
    addcmul=_in_float32(lambda a, b, c, value: a + value * b * c),
    addcdiv=_in_float32(addcdiv),
    lerp=_in_float32(lerp),
    rsqrt=lambda x: 1 / np.sqrt(x),
    mean_square=lambda x, axis: np.mean(x * x, axis=axis, keepdims=True),
    mean=lambda x, axis: np.mean(x, axis=axis, keepdims=True),
    eps_of=lambda x: float(np.finfo(x.dtype).eps),
    rms=lambda x, scale: float(np.sqrt(np.sum(x * x))) / (x.size**0.5 * scale),
    amax=lambda x, axes: np.max(x, axis=axes),
    minimum=np.minimum,
    concat=np.concatenate,
    addmm=lambda c, a, b, beta, alpha: beta * c + alpha * (a @ b),
    symmetric_addmm=lambda c, a, b, beta, alpha: a @ b if c is None else beta * c + alpha * (a @ b),
    to_bfloat16=lambda x: x.astype(np.float32),  # NumPy has no bfloat16: the nearest it has
)

NONFINITE_POLICIES = ("ignore", "skip", "raise")

# torch keeps step counters and NAdam's mu_product in float32 by default;
# doing the same keeps both front-ends on the same trajectory.
_SCALAR_DTYPE = np.float32


def _real_view(array: np.ndarray) -> np.ndarray:
    if not np.iscomplexobj(array):
        return array
    if not array.flags.c_contiguous:
        raise ValueError("complex parameters must be C-contiguous arrays to be updated in place")
    # Through a trailing axis of 1, so that 0-d arrays can be viewed too.
    return array.reshape(*array.shape, 1).view(array.real.dtype)
