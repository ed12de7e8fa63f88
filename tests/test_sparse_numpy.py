"""Sparse gradients in the NumPy front-end against the torch front-end and torch.optim.

``adaptim.numpy.SparseAdam`` (and SGD and Adagrad, which take sparse gradients
in torch too) gets each step's gradient as a ``RowSparse(indices, values)``
pair or a SciPy sparse matrix (COO or CSR, explicit zeros and repeated
entries included); the torch side gets the same data as a torch COO tensor,
uncoalesced, as ``nn.Embedding(sparse=True)`` hands it over (one sparse
dimension for row sets, two for SciPy's entries). Both must end on the same
parameters and state to rounding (:data:`TOLERANCE`, relative, the NumPy
front-end's usual): NumPy has no fused multiply-add where torch's kernels
use one, and torch's ``coalesce`` sums repeated indices in the order of an
unstable sort (measured: 1 ulp here and there, e.g. 3e-8 in float32 after
one step, 1e-17 in float64).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp

# A test dependency CI installs (the lab extra): a missing SciPy must fail, not skip.
sparse = importlib.import_module("scipy.sparse")

STEPS = 30
DTYPES = (np.float32, np.float64)
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def _row_gradient(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: type, repeats: bool
) -> tuple[Any, torch.Tensor]:
    """Rows (maybe none, maybe repeated), as the numpy and the torch front-ends take them."""
    if repeats:
        indices = rng.integers(0, shape[0], int(rng.integers(0, 2 * shape[0] + 1)))
    else:
        indices = rng.permutation(shape[0])[: int(rng.integers(0, shape[0] + 1))]
    count = len(indices)
    values = rng.standard_normal((count, *shape[1:])).astype(dtype)
    theirs = torch.sparse_coo_tensor(
        torch.from_numpy(indices)[None], torch.from_numpy(values), shape
    )
    return anp.RowSparse(indices, values), theirs


def _scipy_gradient(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: type, fmt: str, repeats: bool
) -> tuple[Any, torch.Tensor]:
    """Entries (maybe repeated) and an explicit zero, as a SciPy matrix and a torch COO tensor."""
    size = shape[0] * shape[1]
    if repeats:
        flat = rng.integers(0, size, int(rng.integers(1, size + 2)))
    else:
        flat = rng.permutation(size)[: int(rng.integers(1, size + 1))]
    rows, cols = np.unravel_index(flat, shape)
    count = len(flat)
    data = rng.standard_normal(count).astype(dtype)
    data[0] = 0.0  # stored, so its entry is touched (its moments decay), as in torch
    matrix = sparse.coo_matrix((data, (rows, cols)), shape=shape)
    if fmt == "csr":
        matrix = matrix.tocsr()  # (CSR sums repeats itself, in its own order)
        coo = matrix.tocoo()
        rows, cols, data = coo.row, coo.col, coo.data
    theirs = torch.sparse_coo_tensor(
        torch.from_numpy(np.vstack([rows, cols]).astype(np.int64)), torch.from_numpy(data), shape
    )
    return matrix, theirs


FORMS = st.sampled_from(["rows", "coo", "csr"])
ROW_SHAPES = st.sampled_from([(7,), (5, 3), (6, 2, 2), (1, 4)])
MATRIX_SHAPES = st.sampled_from([(5, 3), (1, 4), (8, 2)])


def _same(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> bool:
    """max|a - b| within ``tolerance`` of max(1, max|b|)."""
    scale = max(1.0, float(np.abs(theirs).max(initial=0.0)))
    return float(np.abs(ours - theirs).max(initial=0.0)) <= tolerance * scale


def _run(
    name: str,
    form: str,
    shape: tuple[int, ...],
    hp: dict[str, Any],
    seed: int,
    dtype: type,
    repeats: bool,
) -> None:
    tolerance = TOLERANCE[dtype]
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(shape).astype(dtype)
    mine = start.copy()
    ours = getattr(anp, name)([mine], **hp)
    param = torch.tensor(start, requires_grad=True)
    twin = getattr(adaptim, name)([param], **hp)
    reference = torch.tensor(start, requires_grad=True)
    original = getattr(torch.optim, name)([reference], **hp)
    for _ in range(STEPS):
        if form == "rows":
            grad, theirs = _row_gradient(rng, shape, dtype, repeats)
        else:
            grad, theirs = _scipy_gradient(rng, shape, dtype, form, repeats)
        ours.step([grad])
        param.grad = theirs.clone()
        twin.step()
        reference.grad = theirs.clone()
        original.step()
    assert _same(mine, param.detach().numpy(), tolerance), "numpy and torch front-ends differ"
    assert _same(mine, reference.detach().numpy(), tolerance), f"differs from torch.optim.{name}"
    for key, value in twin.state[param].items():
        if isinstance(value, torch.Tensor) and value.ndim:
            assert _same(ours.state[0][key], value.numpy(), tolerance), key
        else:
            assert float(ours.state[0][key]) == float(value), key


@pytest.mark.slow  # 12 examples x 2 dtypes x 30 steps x 3 optimizers
@settings(max_examples=12, deadline=None)
@given(
    form=FORMS,
    row_shape=ROW_SHAPES,
    matrix_shape=MATRIX_SHAPES,
    lr=st.floats(1e-4, 1e-1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-3]),
    maximize=st.booleans(),
    repeats=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_numpy_sparse_adam_matches_the_torch_front_end_and_torch(
    form: str,
    row_shape: tuple[int, ...],
    matrix_shape: tuple[int, ...],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    maximize: bool,
    repeats: bool,
    seed: int,
) -> None:
    shape = row_shape if form == "rows" else matrix_shape
    hp = {"lr": lr, "betas": (beta1, beta2), "eps": eps, "maximize": maximize}
    for dtype in DTYPES:
        note(f"{dtype.__name__} {form} {shape} {hp}")
        _run("SparseAdam", form, shape, hp, seed, dtype, repeats)


@settings(max_examples=6, deadline=None)
@given(
    name=st.sampled_from(["SGD", "Adagrad"]),
    form=FORMS,
    row_shape=ROW_SHAPES,
    matrix_shape=MATRIX_SHAPES,
    repeats=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_numpy_sgd_and_adagrad_take_sparse_gradients_as_torch_does(
    name: str,
    form: str,
    row_shape: tuple[int, ...],
    matrix_shape: tuple[int, ...],
    repeats: bool,
    seed: int,
) -> None:
    shape = row_shape if form == "rows" else matrix_shape
    hp = {"lr": 0.05, "lr_decay": 0.01} if name == "Adagrad" else {"lr": 0.05}
    for dtype in DTYPES:
        _run(name, form, shape, hp, seed, dtype, repeats)


def test_numpy_sparse_adam_refuses_dense_gradients_and_changes_nothing() -> None:
    w = np.ones((4, 2))
    optimizer = anp.SparseAdam([w])
    with pytest.raises(RuntimeError, match=r"does not support dense gradients.*Nothing was"):
        optimizer.step([np.ones((4, 2))])
    assert np.array_equal(w, np.ones((4, 2))) and not optimizer.state


@pytest.mark.parametrize(
    ("grad", "message"),
    [
        (anp.RowSparse(np.array([4]), np.ones((1, 2))), r"indices must lie in \[0, 4\)"),
        (anp.RowSparse(np.array([1]), np.ones((1, 3))), r"values have shape \(1, 3\); expected"),
        (anp.RowSparse(np.array([0.5]), np.ones((1, 2))), r"1-D integer array"),
        (sparse.coo_matrix(np.ones((2, 4))), r"SciPy sparse gradient has shape \(2, 4\)"),
    ],
)
def test_malformed_sparse_gradients_are_refused(grad: Any, message: str) -> None:
    w = np.zeros((4, 2))
    with pytest.raises(ValueError, match=message):
        anp.SparseAdam([w]).step([grad])
    assert not w.any()


def test_sparse_gradients_are_refused_where_torch_refuses_them() -> None:
    grad = anp.RowSparse(np.array([0]), np.ones((1, 2)))
    with pytest.raises(RuntimeError, match=r"adaptim.numpy.Adam does not support sparse gradients"):
        anp.Adam([np.zeros((3, 2))]).step([grad])
    with pytest.raises(RuntimeError, match=r"weight_decay"):  # torch's Adagrad refuses it too
        anp.Adagrad([np.zeros((3, 2))], weight_decay=0.1).step([grad])
    with pytest.raises(RuntimeError, match=r"sparse gradients of complex parameters"):
        anp.SGD([np.zeros((3, 2), dtype=complex)], lr=0.1).step([grad])
    with pytest.raises(TypeError, match=r"SparseAdam does not support complex parameters"):
        anp.SparseAdam([np.zeros((3, 2), dtype=complex)])
