"""Fused element-wise runs of the replay (``adaptim.torch._fuse``): faster, and still bit for bit.

The replay compiles each run of element-wise operations between its host and
per-tensor values (Adafactor's tail from :math:`g^2` to the update) into one
native loop, written so that every operation rounds as the ATen kernel it
replaces. These tests hold it to that: the replay with fused runs must equal
the per-tensor reference path (``foreach=False``) **bit for bit** for every
algorithm the engine records, and Adafactor's default step must equal
``torch.optim.Adafactor``'s for-loop bit for bit, with 1 and 2 threads, in
float32 and float64, and must really take the fused loop. Where a chunk
cannot (a non-contiguous gradient, a per-tensor operand of several elements)
the plan's multi-tensor lines run instead, with the same result.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import torch
from _parity import SPECS, Spec, draw_case, run
from _threads import num_threads
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_engine import against_reference, option_sets
from test_factored_fast import assert_same
from test_factored_fast import run as run_loop
from test_torch_parity import PHASES, HypothesisSource

import adaptim
from adaptim.algorithms import ALGORITHMS
from adaptim.torch import _column_stats, _fuse
from adaptim.torch._base import TORCH_OPS
from adaptim.torch._column_stats import column_mean_squares

THREADS = pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])


@contextmanager
def counting_fused_calls(
    min_numel: int | None = None, kind: type[_fuse.FusedRun] = _fuse.FusedRun
) -> Iterator[list[int]]:
    """Count the fused loops of ``kind`` that ran: ``[runs of several operations, lone operations]``.

    ``min_numel`` lowers the size from which chunks fuse.
    """
    calls = [0, 0]
    original = kind.__call__

    def counted(self: _fuse.FusedRun, *args: Any) -> None:
        calls[len(self.run.fused) == 1] += 1
        original(self, *args)

    with mock.patch.object(kind, "__call__", counted):
        if min_numel is None:
            yield calls
        else:
            with mock.patch.object(_fuse, "FUSE_MIN_NUMEL", min_numel):
                yield calls


CASES = [
    pytest.param(spec, enabled, id=f"{spec.name}-{'+'.join(enabled) or 'defaults'}")
    for spec in SPECS
    for enabled in option_sets(spec)[:2]
]


@THREADS
@pytest.mark.parametrize(("spec", "enabled"), CASES)
@settings(max_examples=1, deadline=None, phases=PHASES)
@given(data=st.data())
def test_every_replay_with_fused_runs_equals_the_reference(
    spec: Spec, enabled: tuple[str, ...], threads: int, data: st.DataObject
) -> None:
    """``foreach=True`` with every chunk fused (no size threshold) against ``foreach=False``."""
    source = HypothesisSource(data, salt=f"fused {spec.name} {enabled}")
    case = draw_case(
        against_reference(spec, foreach=True), [enabled, enabled], source, max_params=3
    )
    for dtype in (torch.float32, torch.float64):
        note(f"{dtype}: {case}")
        with warnings.catch_warnings(), num_threads(threads), counting_fused_calls(0):
            warnings.simplefilter("error")
            result = run(case, dtype, steps=12)
        assert not result.problems, "\n".join(result.problems)
        errors = {**result.param_errors, **result.state_errors}
        assert not {k: e for k, e in errors.items() if e != 0.0}, f"{dtype}: {errors}"


#: Each at least ``_fuse.FUSE_MIN_NUMEL`` elements, so each partition's chunks take the loop.
SMALL_SHAPES = st.one_of(
    st.just(()), st.tuples(st.integers(1, 40)), st.tuples(st.integers(1, 9), st.integers(1, 9))
)
RECORDABLE = sorted(name for name, a in ALGORITHMS.items() if a.recordable)


@THREADS
@pytest.mark.parametrize("name", RECORDABLE)
@settings(max_examples=2, deadline=None, phases=PHASES)
@given(
    shapes=st.lists(SMALL_SHAPES, min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_every_algorithm_replays_bit_for_bit_with_fused_runs(
    threads: int, name: str, shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int
) -> None:
    """Every recordable rule (issue 16's included), default hyperparameters, every chunk fused."""
    cls = getattr(adaptim, ALGORITHMS[name].class_name)
    with num_threads(threads), counting_fused_calls(0):
        ours = run_loop(shapes, dtype, seed, lambda p: cls(p, foreach=True), 6)
        reference = run_loop(shapes, dtype, seed, lambda p: cls(p, foreach=False), 6)
    assert_same(ours, reference)


LARGE_SHAPES = st.one_of(
    st.tuples(st.integers(_fuse.FUSE_MIN_NUMEL, 70_000)),
    st.tuples(st.integers(190, 300), st.integers(190, 300)),
    st.tuples(st.just(1), st.integers(_fuse.FUSE_MIN_NUMEL, 50_000)),
    st.tuples(st.integers(_fuse.FUSE_MIN_NUMEL, 50_000), st.just(1)),
)


@THREADS
@settings(max_examples=3, deadline=None, phases=PHASES)
@given(
    shapes=st.lists(LARGE_SHAPES, min_size=1, max_size=3),
    weight_decay=st.sampled_from([0.0, 0.1]),
    maximize=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_default_adafactor_takes_the_fused_loop_and_equals_torch(
    threads: int,
    shapes: list[tuple[int, ...]],
    weight_decay: float,
    maximize: bool,
    dtype: torch.dtype,
    seed: int,
) -> None:
    """``adaptim.Adafactor(params, foreach=True)`` on tensors of tens of thousands of elements,
    as users have (the default takes :mod:`adaptim.torch._adafactor_native`'s passes)."""
    note(f"{shapes} {dtype}")
    options = {"weight_decay": weight_decay, "maximize": maximize, "foreach": True}
    with num_threads(threads):
        with counting_fused_calls() as calls:
            ours = run_loop(shapes, dtype, seed, lambda p: adaptim.Adafactor(p, **options), 4)
        assert calls[0] > 0
        theirs = run_loop(
            shapes,
            dtype,
            seed,
            lambda p: torch.optim.Adafactor(p, **{**options, "foreach": False}),
            4,
        )
    assert_same(ours, theirs)


@THREADS
@pytest.mark.parametrize("layout", ["transposed-grad", "rank-3"])
def test_chunks_the_loop_cannot_take_run_the_multi_tensor_lines(threads: int, layout: str) -> None:
    """A non-contiguous gradient, or a scale per matrix of a rank-3 tensor: same result, no loop
    over the gradient (the update ``p += a u`` still takes its lone loop: ``u`` is contiguous)."""
    shape = (300, 200) if layout == "transposed-grad" else (3, 200, 100)
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(shape, generator=generator)
    grads = [torch.randn(shape[::-1] if layout == "transposed-grad" else shape) for _ in range(3)]
    results = []
    with num_threads(threads), counting_fused_calls() as calls:
        replayed = lambda p: adaptim.Adafactor(p, foreach=True)  # noqa: E731
        for factory in (replayed, torch.optim.Adafactor):
            p = torch.nn.Parameter(start.clone())
            optimizer = factory([p])
            for g in grads:
                p.grad = g.t() if layout == "transposed-grad" else g.clone()
                optimizer.step()
            results.append(p.detach())
    assert calls == [0, len(grads)]
    assert torch.equal(results[0], results[1])


def test_plans_show_the_fused_loop() -> None:
    """``Optimizer.plans()``: the chunk's choice between the loop and the lines, and the C."""
    _, optimizer = run_loop(
        [(40_000,)], torch.float32, 0, lambda p: adaptim.Adafactor(p, foreach=True), 3
    )
    ((source,),) = optimizer.plans()
    assert ".usable(param, " in source and "torch._foreach_rsqrt_(" in source
    assert "void adaptim_fused(" in source and "lerp_t(" in source


@THREADS
@settings(max_examples=15, deadline=None, phases=PHASES)
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 3000), st.integers(1, 300)),
        st.tuples(st.integers(1, 4), st.integers(1, 200), st.integers(1, 150)),
    ),
    scale=st.sampled_from([1e-20, 1.0, 1e15]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_column_mean_squares_equal_torch_norm_along_rows(
    threads: int, shape: tuple[int, ...], scale: float, dtype: torch.dtype, seed: int
) -> None:
    """``torch.linalg.vector_norm(g, dim=-2).square_().div_(R)``, torch's Adafactor's, to the bit."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=generator, dtype=dtype) * scale for _ in range(2)]
    with num_threads(threads), counting_fused_calls(0):
        ours = column_mean_squares(tensors, TORCH_OPS.mean_square)
        expected = [TORCH_OPS.mean_square(x, -2) for x in tensors]
    assert _column_stats._function(dtype) is not None  # (so the native pass ran where it may)
    for a, b in zip(ours, expected, strict=True):
        assert a.shape == b.shape and torch.equal(a, b), (a - b).abs().max()
