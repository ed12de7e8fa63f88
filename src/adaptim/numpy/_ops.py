"""How the NumPy front-end computes: the rules' array operations and two state conventions.

:data:`NUMPY_OPS` is the ``xp`` the update rules run on; scalar state is kept
in float32 as torch keeps it, and complex parameters are updated as pairs of
reals (:func:`_real_view`).
"""

from __future__ import annotations

import numpy as np

from adaptim.algorithms import ArrayOps, lerp

NUMPY_OPS: ArrayOps = ArrayOps(
    name="numpy",
    sqrt=np.sqrt,
    maximum=np.maximum,
    abs=np.abs,
    where=np.where,
    clip=np.clip,
    norm=lambda x: np.sqrt(np.sum(x * x)),
    axpy=lambda a, b, alpha: a + alpha * b,
    addcmul=lambda a, b, c, value: a + value * b * c,
    lerp=lerp,
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
