"""Statistics kept per axis of a tensor, concatenated: one value per row, one per column, ...

A tensor of shape :math:`(n_1, \\dots, n_k)` has a *per-axis vector* of length
:math:`\\sum_a n_a`: the values of axis 1 first (one per index), then those of axis
2, and so on (SM3's accumulators, Anil et al. 2019). Two operations connect it to
the tensor:

* :func:`axis_piece` — the values of one axis, shaped to broadcast against the
  tensor (a column :math:`(n_1, 1)` for axis 0 of a matrix, a row :math:`(1, n_2)`
  for axis 1);
* :func:`axis_maxima` — for every axis :math:`a`, the maximum of the tensor over all
  the other axes, concatenated in the same layout.

These are the definitions every backend uses. The engine's recorder has its own
``xp.axis_piece``/``xp.axis_maxima`` that record them as operations, so that a fused
loop over a matrix can read ``piece[i]`` and ``piece[j]`` and keep the row and column
maxima in the same pass (:mod:`adaptim.torch._fuse_axes`).
"""

from __future__ import annotations

from adaptim.algorithms._spec import Array, ArrayOps


def axis_piece(xp: ArrayOps, vector: Array, like: Array, axis: int) -> Array:
    """The values of ``axis`` in the per-axis ``vector`` of ``like``, broadcastable to ``like``."""
    if xp.axis_piece is not None:
        return xp.axis_piece(vector, like, axis)
    shape = tuple(like.shape)
    start = sum(shape[:axis])
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return vector[start : start + shape[axis]].reshape(view)


def axis_maxima(xp: ArrayOps, x: Array) -> Array:
    """:math:`\\max_{i:\\, i_a = j} x(i)` for every axis :math:`a` and index :math:`j`, concatenated."""
    if xp.axis_maxima is not None:
        return xp.axis_maxima(x)
    assert xp.amax is not None and xp.concat is not None, f"{xp.name} lacks amax/concat"
    axes = range(x.ndim)
    return xp.concat([xp.amax(x, tuple(b for b in axes if b != a)).reshape(-1) for a in axes])
