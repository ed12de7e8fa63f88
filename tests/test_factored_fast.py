"""Adafactor on the engine's fast path: the per-tensor rule replayed in place, bit for bit.

Adafactor's row and column statistics are not element-wise, so the engine's
replay (``foreach=True``; the other flavors and rank 3 by default) takes them (and the host reads of its relative step and update clipping)
tensor by tensor, and the element-wise tail (:math:`R_t C_t` onwards) with
torch's multi-tensor kernels in place. Every path a user can ask for (the
default, ``foreach=True``, ``fused=True``, which has no native form and
replays) must equal the per-tensor reference (``foreach=False``) **bit for
bit**, parameters and state, on Hypothesis-drawn shapes (0-d, vectors,
matrices, 1×N, N×1, rank 3), flavors, hyperparameters, weight decay,
``maximize``, float32 and float64, with 1 and 2 threads; the default also
equals ``torch.optim.Adafactor`` itself. What the recorder cannot replay
falls back to the reference path instead of raising.
"""

from __future__ import annotations

import warnings
from typing import Any
from unittest import mock

import pytest
import torch
from _threads import num_threads
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_torch_parity import PHASES

import adaptim
from adaptim.algorithms.adafactor import ADAFACTOR
from adaptim.torch import _replay, _trace

STEPS = 6
SIZES = st.integers(1, 7)
SHAPES = st.one_of(
    st.just(()),
    st.tuples(SIZES),
    st.tuples(SIZES, SIZES),
    st.tuples(st.just(1), SIZES),
    st.tuples(SIZES, st.just(1)),
    st.tuples(st.integers(1, 3), SIZES, SIZES),
)
PATHS = ({}, {"foreach": True}, {"fused": True})


@st.composite
def configurations(draw: st.DrawFn) -> dict[str, Any]:
    flavor = draw(st.sampled_from(["torch", "paper", "keras"]))
    options: dict[str, Any] = {"flavor": flavor, "maximize": draw(st.booleans())}
    if flavor != "paper":  # (the paper has no weight decay)
        options["weight_decay"] = draw(st.sampled_from([0.0, 0.05]))
    if draw(st.booleans()):
        lr = draw(st.floats(1e-4, 0.5))
        options["lr"] = torch.tensor(lr) if draw(st.booleans()) else lr  # (torch takes both)
        options["d"] = draw(st.floats(1.0, 3.0))
        options["beta2_decay"] = draw(st.floats(-1.0, -0.3))
    if flavor == "torch" and draw(st.booleans()):
        options["eps"] = (draw(st.sampled_from([None, 1e-30, 1e-8])), 1e-3)
    return options


def run(
    shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int, factory: Any, steps: int = STEPS
) -> tuple[list[torch.Tensor], Any]:
    """``steps`` of a training loop with fresh gradients, as after ``zero_grad()`` + ``backward()``."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes]
    optimizer = factory(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
        optimizer.step()
    return params, optimizer


def assert_same(
    ours: tuple[list[torch.Tensor], Any], theirs: tuple[list[torch.Tensor], Any]
) -> None:
    (params, optimizer), (reference_params, reference) = ours, theirs
    for p, q in zip(params, reference_params, strict=True):
        assert torch.equal(p, q), f"{tuple(p.shape)}: max difference {(p - q).abs().max()}"
        state, expected = optimizer.state[p], reference.state[q]
        assert sorted(k for k, v in state.items() if v is not None) == sorted(
            k for k, v in expected.items() if v is not None
        )
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(state[key], value), f"{tuple(p.shape)} state {key}"


@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@settings(max_examples=12, deadline=None, phases=PHASES)
@given(
    shapes=st.lists(SHAPES, min_size=1, max_size=4),
    options=configurations(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_every_path_equals_the_reference_bit_for_bit(
    threads: int,
    shapes: list[tuple[int, ...]],
    options: dict[str, Any],
    dtype: torch.dtype,
    seed: int,
) -> None:
    note(f"{shapes} {options} {dtype}")
    with num_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: every tensor takes the replay
        reference = run(
            shapes, dtype, seed, lambda p: adaptim.Adafactor(p, foreach=False, **options)
        )
        for switches in PATHS:
            ours = run(
                shapes, dtype, seed, lambda p, s=switches: adaptim.Adafactor(p, **options, **s)
            )
            status = ours[1].fused_status()[0]
            # (the default and fused=True: the torch flavor takes the native passes of
            # _adafactor_native, the other flavors the replay)
            taken = "adafactor" in status or "foreach" in status
            assert taken and f"{len(shapes)} of {len(shapes)}" in status, (
                switches,
                status,
            )
            assert_same(ours, reference)


@settings(max_examples=6, deadline=None, phases=PHASES)
@given(
    shapes=st.lists(SHAPES, min_size=1, max_size=4),
    weight_decay=st.sampled_from([0.0, 0.1]),
    maximize=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_default_step_equals_torch_adafactor(
    shapes: list[tuple[int, ...]],
    weight_decay: float,
    maximize: bool,
    dtype: torch.dtype,
    seed: int,
) -> None:
    """The default ``adaptim.Adafactor(params)`` against ``torch.optim.Adafactor``.

    Bit for bit against torch's for-loop. torch's foreach implementation
    scales the update and adds it in two roundings where its for-loop uses
    one fused ``add(alpha=)``, so it differs from its own for-loop in the
    last bits: within a few ulps of the dtype there.
    """
    options = {"weight_decay": weight_decay, "maximize": maximize}
    ours = run(shapes, dtype, seed, lambda p: adaptim.Adafactor(p, **options))
    assert not ours[1].fused_status()[0].startswith("reference")
    assert_same(ours, run(shapes, dtype, seed, lambda p: torch.optim.Adafactor(p, **options)))
    theirs, _ = run(
        shapes, dtype, seed, lambda p: torch.optim.Adafactor(p, foreach=True, **options)
    )
    tolerance = 8 * torch.finfo(dtype).eps
    for p, q in zip(ours[0], theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=tolerance, atol=tolerance)


def test_plans_show_the_per_tensor_reductions_and_the_in_place_tail() -> None:
    """``plans()``: the row/column means once per tensor, no full-size temporary but R·C."""
    _, optimizer = run(
        [(5, 4)], torch.float32, 0, lambda p: adaptim.Adafactor(p, foreach=True), steps=3
    )
    ((source,),) = optimizer.plans()
    assert "xp.mean_square(x0, -1)" in source
    assert "column_mean_squares(grad, xp.mean_square)" in source  # (one native pass: _column_stats)
    assert "outer(" in source and "torch._foreach_rsqrt_(" in source
    # the update is applied in place with each tensor's own host-computed step size
    assert "for x0, x1, x2 in zip(param, " in source and ".add_(x1, alpha=x2)" in source


def _outer_of_elements(p: Any, g: Any, state: dict[str, Any], **_: Any) -> Any:
    return p - 0.1 * (g @ g), state


def _branch_on_host_scalar(p: Any, g: Any, state: dict[str, Any], *, xp: Any, **_: Any) -> Any:
    return p - xp.sqrt(xp.rms(g, 1.0)), state


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (_outer_of_elements, "matrix product"),
        (_branch_on_host_scalar, r"sqrt\(\) of a scalar read on the host"),
    ],
)
def test_what_the_replay_cannot_express_is_refused_not_raised(rule: Any, reason: str) -> None:
    """The rule contract: the recorder refuses (the engine then falls back), it never crashes."""
    with pytest.raises(_trace.Unfusable, match=reason):
        _trace.trace(rule, (), (), (), {}, negate_grad=False, step=1.0, hyperparams={}, ndim=2)


def test_the_rule_records_on_every_kind_of_parameter() -> None:
    """No rank of parameter sends Adafactor to the reference path (its record says recordable)."""
    assert ADAFACTOR.recordable
    _, optimizer = run([(), (3,), (1, 4), (4, 1), (2, 3, 4)], torch.float32, 1, adaptim.Adafactor)
    # (one partition per rank, each in the native passes of _adafactor_native)
    assert optimizer.fused_status() == ["adafactor (4 partitions): 5 of 5 tensors"]
    _, replayed = run(
        [(), (3,), (1, 4), (4, 1), (2, 3, 4)],
        torch.float32,
        1,
        lambda p: adaptim.Adafactor(p, foreach=True),
    )
    assert replayed.fused_status() == ["foreach (4 partitions): 5 of 5 tensors"]


@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@settings(max_examples=2, deadline=None, phases=PHASES)
@given(
    rows=st.lists(st.integers(200, 700), min_size=3, max_size=3),
    vector=st.integers(150_000, 400_000),
    flavor=st.sampled_from(["torch", "keras"]),
    seed=st.integers(0, 2**16),
)
def test_large_groups_run_in_chunks_and_still_equal_the_reference(
    threads: int, rows: list[int], vector: int, flavor: str, seed: int
) -> None:
    """Groups of more than twice ``_replay.CHUNK_NUMEL`` elements replay chunk by chunk
    (the chunk size lowered, so that small groups make several chunks)."""
    shapes = [(rows[0], rows[1]), (rows[2], 600), (2, rows[1], 300), (vector,), (vector,), (7,)]
    chunk = 1 << 17
    assert sum(torch.Size(s).numel() for s in shapes) > 2 * chunk
    options = {"flavor": flavor, "weight_decay": 0.01}
    with num_threads(threads), mock.patch.object(_replay, "CHUNK_NUMEL", chunk):
        ours = run(shapes, torch.float32, seed, lambda p: adaptim.Adafactor(p, **options), steps=3)
        reference = run(
            shapes,
            torch.float32,
            seed,
            lambda p: adaptim.Adafactor(p, foreach=False, **options),
            steps=3,
        )
    assert not ours[1].fused_status()[0].startswith("reference")
    assert_same(ours, reference)


@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@settings(max_examples=6, deadline=None, phases=PHASES)
@given(
    shapes=st.lists(SHAPES, min_size=1, max_size=4),
    options=st.fixed_dictionaries(
        {
            "flavor": st.sampled_from(["optax", "paper"]),
            "lr": st.floats(1e-4, 0.5),
            "maximize": st.booleans(),
        }
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_sm3_matrices_take_the_replay_bit_for_bit(
    threads: int,
    shapes: list[tuple[int, ...]],
    options: dict[str, Any],
    dtype: torch.dtype,
    seed: int,
) -> None:
    """SM3's per-axis maxima (``xp.per_tensor``): the replay equals ``foreach=False``.

    (``fused=True`` runs SM3's vectors in the native loop, which agrees to rounding:
    ``tests/test_engine.py``; its matrices replay, as here.)
    """
    note(f"{shapes} {options} {dtype}")
    with num_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = run(shapes, dtype, seed, lambda p: adaptim.SM3(p, foreach=False, **options))
        for switches in PATHS[:2]:
            ours = run(shapes, dtype, seed, lambda p, s=switches: adaptim.SM3(p, **options, **s))
            status = ours[1].fused_status()[0]
            assert f"{len(shapes)} of {len(shapes)} tensors" in status, (switches, status)
            assert_same(ours, reference)
