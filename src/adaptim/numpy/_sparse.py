"""Sparse gradients in the NumPy front-end: SciPy sparse matrices and explicit row sets.

NumPy has no sparse arrays, so the NumPy front-end takes two forms, each meaning
what a sparse ``torch`` gradient means to the torch front-end: the entries it
holds are the ones the step touches (:class:`adaptim.numpy.SparseAdam` updates
only those, SGD and Adagrad run their rule on them), every other entry keeps
its parameter and its state.

* :class:`RowSparse` ``(indices, values)``: whole rows along axis 0, the
  gradient of an embedding lookup (``values[k]`` is the gradient of row
  ``indices[k]``). It is what torch's ``nn.Embedding(sparse=True)`` produces,
  a COO tensor with one sparse dimension; it fits a parameter of any rank >= 1.
* a SciPy sparse matrix or array (COO, CSR, CSC, ...) for a 2-D parameter:
  its stored entries, explicit zeros included, as torch's COO tensor with two
  sparse dimensions. SciPy is not a dependency of adaptim: such a gradient is
  recognised only when ``scipy.sparse`` has been imported, which making one
  implies.

Repeated indices are summed first (torch's ``coalesce``), in the order given.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


class RowSparse(NamedTuple):
    """A gradient that holds some rows of its parameter (along axis 0).

    ``indices``: the rows, a 1-D integer array (repeats are summed);
    ``values``: their gradients, of shape ``(len(indices), *param.shape[1:])``.
    """

    indices: Any
    values: Any


@dataclass(frozen=True)
class SparseGradient:
    """A coalesced sparse gradient: unique sorted ``index`` (one array per axis) and ``values``."""

    index: tuple[np.ndarray, ...]
    values: np.ndarray

    def __neg__(self) -> SparseGradient:
        return SparseGradient(self.index, -self.values)


def is_sparse(g: Any) -> bool:
    """Whether ``g`` is one of the sparse forms (a :class:`RowSparse` or a SciPy sparse matrix)."""
    if isinstance(g, RowSparse):
        return True
    scipy_sparse = sys.modules.get("scipy.sparse")  # never imported here: SciPy is optional
    return scipy_sparse is not None and bool(scipy_sparse.issparse(g))


def _coalesced(
    flat: np.ndarray, values: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Unique sorted flat indices over ``shape``, with the values of repeats summed."""
    unique, inverse = np.unique(flat, return_inverse=True)
    if len(unique) == len(flat):
        order = np.argsort(flat, kind="stable")
        return np.unravel_index(unique, shape), values[order]
    summed = np.zeros((len(unique), *values.shape[1:]), dtype=values.dtype)
    np.add.at(summed, inverse.reshape(-1), values)
    return np.unravel_index(unique, shape), summed


def as_sparse(position: int, p: np.ndarray, g: Any) -> SparseGradient:
    """``g`` (see :func:`is_sparse`) checked against its parameter ``p`` and coalesced."""
    where = f"gradient {position} (parameter of shape {p.shape})"
    if isinstance(g, RowSparse):
        indices = np.asarray(g.indices)
        values = np.asarray(g.values)
        if p.ndim == 0:
            raise ValueError(f"{where}: a RowSparse gradient needs a parameter of rank >= 1.")
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(
                f"{where}: RowSparse indices must be a 1-D integer array; got shape "
                f"{indices.shape} and dtype {indices.dtype}."
            )
        if values.shape != (len(indices), *p.shape[1:]):
            raise ValueError(
                f"{where}: RowSparse values have shape {values.shape}; expected "
                f"{(len(indices), *p.shape[1:])} (one row of the parameter per index)."
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= p.shape[0]):
            raise ValueError(
                f"{where}: RowSparse indices must lie in [0, {p.shape[0]}); got "
                f"{int(indices.min())} to {int(indices.max())}."
            )
        (rows,), values = _coalesced(indices, values.astype(p.dtype, copy=False), p.shape[:1])
        return SparseGradient((rows,), values)
    if p.ndim != 2 or tuple(g.shape) != p.shape:
        raise ValueError(
            f"{where}: a SciPy sparse gradient has shape {tuple(g.shape)}; it must be the "
            "parameter's, and only 2-D parameters take one (use RowSparse for other ranks)."
        )
    coo = g.tocoo()
    flat = np.ravel_multi_index((coo.row, coo.col), p.shape)
    index, values = _coalesced(flat, np.asarray(coo.data).astype(p.dtype, copy=False), p.shape)
    return SparseGradient(index, values)
