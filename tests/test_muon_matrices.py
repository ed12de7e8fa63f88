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
from hypothesis import example, given, note, settings
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
        mock.patch.object(_matrices, "_step_chunk", wraps=_matrices._step_chunk) as chunks,
    ):
        _run_both(shapes, hp, dtype, seed)
    if min(sides) >= _matrices.STACK_MIN_SIDE and hp["ns_steps"] > 0:
        stacks = [c for c in chunks.call_args_list if len(c.args[-1]) > 1]
        assert len(stacks) >= STEPS, "no stack was iterated"


@settings(max_examples=3, deadline=None)
@given(
    rows=st.integers(512, 600),
    cols=st.integers(512, 640),
    tall=st.booleans(),
    hp=muon_settings(),
    seed=st.integers(0, 2**16),
)
# an Intel Xeon with AMX: panels of 1024 rows differed from torch though a check agreed
@example(rows=1024, cols=1024, tall=False, hp={"ns_steps": 5}, seed=0)
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
    if _matrices.onednn_amx():  # (no panels where oneDNN multiplies on AMX tiles)
        assert panels.call_count == 0
    else:
        assert panels.call_count >= 2 * STEPS, "the panel path did not run"


@pytest.mark.slow  # a compile
def test_compiled_step_never_recompiles_and_follows_the_eager_step() -> None:
    """``torch.compile(opt.step)`` under a scheduler: whole graphs, none new after warm-up.

    (Compiled, the multiply-adds are plain formulas, so it follows the eager step to
    bfloat16's precision in the iteration, not to the bit.)
    """
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    generator = torch.Generator().manual_seed(0)
    starts = [torch.randn(s, generator=generator) for s in ((6, 5), (6, 5), (3, 6))]
    params = [s.clone().requires_grad_() for s in starts]
    references = [s.clone().requires_grad_() for s in starts]
    compiled, reference = adaptim.Muon(params, lr=1e-2), adaptim.Muon(references, lr=1e-2)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.05 * s))
        for opt in (compiled, reference)
    ]
    step = torch.compile(compiled.step)
    graphs = None
    for index in range(30):
        for p, q in zip(params, references, strict=True):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        step()
        reference.step()
        for scheduler in schedulers:
            scheduler.step()
        if index == 4:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs
    breaks = [reason for reason in counters["graph_break"] if "lr_scheduler.py" not in reason]
    assert not breaks, breaks
    # Each step moves an entry by about lr·|O| ~ 1e-2, known to bfloat16's precision
    # (2^-8): 30 steps may part by ~1e-3; a wrong step would part by ~1e-2 per step.
    for p, q in zip(params, references, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3)
