"""Muon's matrix products on the CPU (``adaptim.torch._matrices``) against torch.optim.Muon.

The default step iterates same-shaped matrices of a param group as one stack
(``bmm``/``baddbmm``), computes half of each symmetric product in row panels on
one thread for matrices of 512 rows or more, and writes into a workspace kept
between steps. Each must leave parameters and state bit-identical to
``torch.optim.Muon``: drawn shapes (wide, tall, square, several of a shape),
hyperparameters, dtypes, and 1 and 2 threads.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
import torch
from _threads import num_threads
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_sparse_adam_muon import _assert_same_state, _same, muon_settings

import adaptim
from adaptim.torch import _matrices

STEPS = 3
SIDES = st.integers(2, 24)


def _run_both(
    shapes: list[tuple[int, int]], hp: dict[str, Any], dtype: torch.dtype, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    starts = [torch.randn(*s, generator=generator, dtype=dtype) for s in shapes]
    grads = [
        [torch.randn(*s, generator=generator, dtype=dtype) for s in shapes] for _ in range(STEPS)
    ]
    # one param group holding every matrix, as a model's hidden layers are given
    params = [s.clone().requires_grad_() for s in starts]
    references = [s.clone().requires_grad_() for s in starts]
    mine, theirs = adaptim.Muon(params, **hp), torch.optim.Muon(references, **hp)
    for step_grads in grads:
        for p, q, g in zip(params, references, step_grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        mine.step()
        theirs.step()
    for p, q in zip(params, references, strict=True):
        assert _same(p, q), f"{tuple(p.shape)}: max difference {(p - q).abs().max()}"
    _assert_same_state(mine, theirs)


@pytest.mark.slow  # about 5 s a thread count under load
@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@settings(max_examples=6, deadline=None)
@given(
    sides=st.tuples(st.integers(64, 96), st.integers(64, 96)) | st.tuples(SIDES, SIDES),
    copies=st.integers(2, 4),
    others=st.lists(st.tuples(SIDES, SIDES), max_size=2),
    hp=muon_settings(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_stacked_matrices_are_bit_identical_to_torch(
    threads: int,
    sides: tuple[int, int],
    copies: int,
    others: list[tuple[int, int]],
    hp: dict[str, Any],
    dtype: torch.dtype,
    seed: int,
) -> None:
    """Same-shaped matrices (and their transposes) share one stacked iteration."""
    rows, cols = sides
    shapes = [(rows, cols)] * copies + [(cols, rows)] * copies + others
    note(f"{shapes} {hp} {dtype}")
    with (
        num_threads(threads),
        mock.patch.object(_matrices, "_stacked", wraps=_matrices._stacked) as stacked,
    ):
        _run_both(shapes, hp, dtype, seed)
    if min(sides) >= _matrices.STACK_MIN_SIDE and hp["ns_steps"] > 0:
        assert stacked.call_count >= STEPS, "no stack was iterated"


@settings(max_examples=3, deadline=None)
@given(
    rows=st.integers(512, 600),
    cols=st.integers(512, 640),
    tall=st.booleans(),
    hp=muon_settings(),
    seed=st.integers(0, 2**16),
)
def test_symmetric_products_by_panels_are_bit_identical_to_torch(
    rows: int, cols: int, tall: bool, hp: dict[str, Any], seed: int
) -> None:
    """Matrices of 512 rows or more on one thread: half of each Gram product, mirrored."""
    shape = (rows, cols) if not tall else (cols, rows)
    hp = {**hp, "ns_steps": max(hp["ns_steps"], 1)}  # (at least one product to cut)
    note(f"{shape} {hp}")
    with (
        num_threads(1),
        mock.patch.object(_matrices, "_by_panels", wraps=_matrices._by_panels) as panels,
    ):
        _run_both([shape, shape], hp, torch.float32, seed)
    assert panels.call_count >= 2 * STEPS, "the panel path did not run"
