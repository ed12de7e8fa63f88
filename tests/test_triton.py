"""The GPU step's Triton kernel, run by Triton's interpreter on the CPU.

:mod:`adaptim.torch._triton` generates one Triton kernel per recorded rule and
launches it once per partition on a GPU. CI has no GPU, so these tests run
the engine's GPU path on CPU tensors: ``TRITON_INTERPRET=1`` makes Triton
execute the same kernels with NumPy, and ``cpu`` is added to
:data:`~adaptim.torch._triton.DEVICES`. The interpreter computes a fused
multiply-add as a product and a sum (two roundings), and torch's CPU square
root is MKL's, so the comparison is to rounding: float64 to 1e-12 relative
(any slip in the rendering would show at 1e-3), float32 to 2e-5, against
torch.optim's for-loop and against adaptim's multi-tensor replay.
(``benchmarks/cuda_check.py`` measures the bits on a GPU.)

Each run draws the tensor sizes (around the block of 1,024 elements, 1 and
0-d), takes a fresh gradient tensor every step, and, where asked, moves the
gradients to new addresses between steps (the kernel reads them through its
pointer table) and rebinds a parameter's storage (``p.data = ...``).
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _triton, _triton_source

SHAPES = st.lists(
    st.one_of(
        st.sampled_from([(), (1,), (1024,), (1025,), (3000,)]),
        st.tuples(st.integers(1, 70), st.integers(1, 70)),
    ),
    min_size=1,
    max_size=4,
)
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}
STEPS = 4


@pytest.fixture(autouse=True)
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The GPU path on CPU tensors, through Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_triton, "DEVICES", frozenset({"cpu", "cuda"}))
    yield


def run(
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype,
    seed: int,
    *,
    move_grads: bool = False,
    rebind_at: int | None = None,
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Parameters and state after :data:`STEPS` steps with fresh gradients."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes]
    optimizer = make(params)
    kept: list[torch.Tensor] = []
    for step in range(STEPS):
        if step == rebind_at:
            params[0].data = params[0].data.clone()  # a new address for the parameter
        for p in params:
            grad = p.detach() * 0.1 + torch.randn(p.shape, generator=generator, dtype=dtype)
            if move_grads:
                kept.append(torch.empty(17 + step, dtype=dtype))  # (the next grad lands elsewhere)
            p.grad = grad
        optimizer.step()
    state = [t for p in params for t in optimizer.state[p].values() if t.ndim > 0]
    return [p.detach().clone() for p in params] + state, optimizer


def assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], dtype: torch.dtype) -> None:
    for a, b in zip(ours, theirs, strict=True):
        scale = b.abs().max().clamp_min(1.0)
        assert float((a - b).abs().max() / scale) <= TOLERANCE[dtype], (a, b)


#: (adaptim and torch.optim class, hyperparameter draws)
TWINS: dict[str, tuple[str, Callable[[st.DrawFn], dict[str, Any]]]] = {}


def twin(name: str, cls: str) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    def register(draw_settings: Callable[..., dict[str, Any]]) -> Any:
        TWINS[name] = (cls, st.composite(draw_settings)())
        return draw_settings

    return register


LR = st.sampled_from([1e-3, 1e-2, 0.1])
DECAY = st.sampled_from([0.0, 0.0, 1e-2])


@twin("adam", "Adam")
def _adam(draw: st.DrawFn) -> dict[str, Any]:
    betas = (draw(st.sampled_from([0.0, 0.9])), draw(st.sampled_from([0.99, 0.999])))
    return {
        "lr": draw(LR),
        "betas": betas,
        "weight_decay": draw(DECAY),
        "maximize": draw(st.booleans()),
    }


@twin("amsgrad", "Adam")
def _amsgrad(draw: st.DrawFn) -> dict[str, Any]:
    return {"lr": draw(LR), "amsgrad": True, "weight_decay": draw(DECAY)}


@twin("adamw", "AdamW")
def _adamw(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(LR),
        "weight_decay": draw(st.sampled_from([0.0, 1e-2])),
        "amsgrad": draw(st.booleans()),
    }


@twin("adagrad", "Adagrad")
def _adagrad(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(LR),
        "lr_decay": draw(st.sampled_from([0.0, 1e-3])),
        "weight_decay": draw(DECAY),
        "initial_accumulator_value": draw(st.sampled_from([0.0, 0.1])),
    }


@twin("rmsprop", "RMSprop")
def _rmsprop(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(LR),
        "alpha": draw(st.sampled_from([0.9, 0.99])),
        "centered": draw(st.booleans()),
        "momentum": draw(st.sampled_from([0.0, 0.9])),
        "weight_decay": draw(DECAY),
    }


@twin("adadelta", "Adadelta")
def _adadelta(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(st.sampled_from([0.1, 1.0])),
        "rho": draw(st.sampled_from([0.9, 0.95])),
        "weight_decay": draw(DECAY),
    }


@twin("adamax", "Adamax")
def _adamax(draw: st.DrawFn) -> dict[str, Any]:
    return {"lr": draw(LR), "weight_decay": draw(DECAY)}


@twin("nadam", "NAdam")
def _nadam(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(LR),
        "weight_decay": draw(DECAY),
        "decoupled_weight_decay": draw(st.booleans()),
        "momentum_decay": draw(st.sampled_from([4e-3, 1e-2])),
    }


@twin("radam", "RAdam")
def _radam(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(LR),
        "weight_decay": draw(DECAY),
        "decoupled_weight_decay": draw(st.booleans()),
    }


@twin("sgd", "SGD")
def _sgd(draw: st.DrawFn) -> dict[str, Any]:
    nesterov = draw(st.booleans())
    return {
        "lr": draw(LR),
        "momentum": draw(st.sampled_from([0.5, 0.9])),
        "nesterov": nesterov,
        "dampening": 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1])),
        "weight_decay": draw(DECAY),
    }


@pytest.mark.parametrize("name", sorted(TWINS))
@settings(max_examples=3)
@given(data=st.data(), shapes=SHAPES, seed=st.integers(0, 2**16), move=st.booleans())
def test_kernel_matches_torch_optim(
    name: str, data: st.DataObject, shapes: list[tuple[int, ...]], seed: int, move: bool
) -> None:
    """``adaptim.X(params, fused=True)`` steps every tensor with the kernel and matches
    torch.optim's for-loop, through fresh gradients at new addresses."""
    cls, draws = TWINS[name]
    hp = data.draw(draws)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    ours, optimizer = run(
        functools.partial(getattr(adaptim, cls), **hp, fused=True),
        shapes,
        dtype,
        seed,
        move_grads=move,
    )
    assert optimizer.fused_status() == [
        f"triton (1 partition): {len(shapes)} of {len(shapes)} tensors"
    ]
    # the table followed every gradient that moved (the kernel read them where they were)
    (partition,) = optimizer._engine.groups[0].partitions
    assert partition.triton is not None and partition.triton.uploads >= 1
    assert partition.triton._grads == tuple(p.grad.data_ptr() for p in partition.params)
    theirs, _ = run(
        functools.partial(getattr(torch.optim, cls), **hp, foreach=False), shapes, dtype, seed
    )
    assert_close(ours, theirs, dtype)


@pytest.mark.parametrize(
    ("cls", "hp"),
    [
        ("Adam", {"flavor": "optax"}),
        ("RMSprop", {"flavor": "optax", "momentum": 0.9, "centered": True}),
        ("Adagrad", {"flavor": "optax"}),
        ("Lion", {}),
        ("AdaBelief", {}),
        ("Yogi", {}),
        ("Adan", {}),
    ],
)
@settings(max_examples=2)
@given(
    shapes=SHAPES, seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64])
)
def test_kernel_matches_the_replay(
    cls: str, hp: dict[str, Any], shapes: list[tuple[int, ...]], seed: int, dtype: torch.dtype
) -> None:
    """Rules beyond torch's twins (optax's flavors, Lion, AdaBelief, Yogi, Adan) agree
    with the multi-tensor replay, which is bit-identical to the per-tensor rule."""
    make = getattr(adaptim, cls)
    ours, optimizer = run(functools.partial(make, **hp, fused=True), shapes, dtype, seed)
    assert optimizer.fused_status()[0].startswith("triton (1 partition)")
    theirs, _ = run(functools.partial(make, **hp, foreach=True), shapes, dtype, seed)
    assert_close(ours, theirs, dtype)


def _clipped_rule(p: Any, g: Any, state: Any, *, xp: Any, lr: float, **_: Any) -> Any:
    """A step clipped by ``minimum`` and ``maximum`` (numbers on either side)."""
    return p - lr * xp.minimum(0.3, xp.maximum(xp.minimum(g, 0.3), -0.3)), {}


@settings(max_examples=2)
@given(
    shapes=SHAPES, seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64])
)
def test_minimum_renders(shapes: list[tuple[int, ...]], seed: int, dtype: torch.dtype) -> None:
    """``xp.minimum`` has a Triton form: the kernel, not the replay, and the replay's values."""
    import dataclasses

    from adaptim.algorithms import ALGORITHMS

    class Clipped(adaptim.Optimizer):
        algorithm = dataclasses.replace(ALGORITHMS["sgd"], name="clipped", update=_clipped_rule)

        def __init__(self, params: Any, **switches: Any) -> None:
            defaults = {**ALGORITHMS["sgd"].defaults, "lr": 0.1, "maximize": False}
            super().__init__(params, {**defaults, **switches})

    ours, optimizer = run(functools.partial(Clipped, fused=True), shapes, dtype, seed)
    assert optimizer.fused_status()[0].startswith("triton (1 partition)")
    assert "tl.minimum(" in optimizer.plans()[0][0]
    theirs, _ = run(functools.partial(Clipped, foreach=True), shapes, dtype, seed)
    assert_close(ours, theirs, dtype)


@settings(max_examples=4)
@given(shapes=SHAPES, seed=st.integers(0, 2**16), rebind_at=st.integers(1, STEPS - 2))
def test_a_parameter_at_a_new_address(
    shapes: list[tuple[int, ...]], seed: int, rebind_at: int
) -> None:
    """``p.data = ...`` between steps: that step runs the reference path (the engine sees
    the new address), the next one the kernel with rebuilt tables."""
    ours, optimizer = run(
        functools.partial(adaptim.Adam, lr=0.1, fused=True),
        shapes,
        torch.float64,
        seed,
        rebind_at=rebind_at,
    )
    assert optimizer.fused_status()[0].startswith("triton")
    theirs, _ = run(
        functools.partial(torch.optim.Adam, lr=0.1, foreach=False),
        shapes,
        torch.float64,
        seed,
        rebind_at=rebind_at,
    )
    assert_close(ours, theirs, torch.float64)


def test_default_takes_the_kernel_at_every_size() -> None:
    """``adaptim.Adam(params)``: the kernel for a group of 64k elements and of 100 (on a
    GPU the replay is launch-bound at any size; the CPU loop's 64k threshold does not
    apply), the replay with ``foreach=True``, and ``plans()`` shows the Triton source."""
    big = [torch.nn.Parameter(torch.zeros(1 << 16))]
    small = [torch.nn.Parameter(torch.zeros(100))]
    optimizers = [adaptim.Adam(big), adaptim.Adam(small), adaptim.Adam(big, foreach=True)]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        optimizer.step()
    assert [o.fused_status()[0].split(" ")[0] for o in optimizers] == [
        "triton",
        "triton",
        "foreach",
    ]
    source = optimizers[0].plans()[0][0]
    assert "@triton.jit" in source and "tl.sqrt_rn" in source and "tl.div_rn" in source


def test_without_triton_fused_warns_once_and_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    """No triton: ``fused=True`` warns once and replays; the default replays silently."""
    monkeypatch.setattr(_triton, "unavailable", lambda: "triton is not importable (test)")
    monkeypatch.setattr(_triton, "_KERNELS", {})
    params = [torch.nn.Parameter(torch.randn(1 << 16))]
    optimizer = adaptim.Adam(params, fused=True)
    with pytest.warns(UserWarning, match="triton is not importable"):
        for _ in range(2):
            params[0].grad = torch.randn(1 << 16)
            optimizer.step()
    assert optimizer.fused_status()[0].startswith("foreach")
    quiet = adaptim.Adam(params)
    params[0].grad = torch.randn(1 << 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.step()


def test_non_contiguous_parameters_take_the_replay() -> None:
    """A transposed parameter has no pointer-table form: it gets a partition of its own,
    replayed, and the contiguous ones keep the kernel."""
    p = torch.nn.Parameter(torch.randn(30, 40).t())
    q = torch.nn.Parameter(torch.randn(300))
    optimizer = adaptim.Adam([p, q], fused=True)
    p.grad, q.grad = torch.randn(40, 30), torch.randn(300)
    optimizer.step()
    assert sorted(optimizer.fused_status()[0].split(", ")) == [
        "foreach (1 partition)",
        "triton (1 partition): 2 of 2 tensors",
    ]


def test_the_source_is_one_kernel_with_correctly_rounded_division() -> None:
    """The rendering: one ``adaptim_step``, ``div_rn``/``sqrt_rn``, fused multiply-adds by the switch."""
    params = [torch.nn.Parameter(torch.randn(10))]
    optimizer = adaptim.RMSprop(params, centered=True, fused=True)
    params[0].grad = torch.randn(10)
    optimizer.step()
    source = optimizer.plans()[0][0]
    assert source.count("def adaptim_step(") == 1
    assert " / " not in source.split("def adaptim_step(")[1]
    assert _triton_source.FUSED_MULTIPLY_ADD and os.environ["TRITON_INTERPRET"] == "1"


def test_a_kernel_triton_refuses_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that fails at its first launch (Triton's compile) changes nothing: that
    step and the next replay, after one warning."""
    generate = _triton_source.generate_source

    def broken(structure: Any, dtype: torch.dtype) -> str:
        return generate(structure, dtype).replace("tl.arange(0, BLOCK)", "tl.no_such_function()")

    monkeypatch.setattr(_triton_source, "generate_source", broken)
    monkeypatch.setattr(_triton, "_KERNELS", {})
    generator = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(3000, generator=generator))]
    theirs = [torch.nn.Parameter(ours[0].detach().clone())]
    optimizers = [adaptim.Adam(ours, fused=True), torch.optim.Adam(theirs, foreach=False)]
    with pytest.warns(UserWarning, match="Triton could not compile"):
        for _ in range(3):
            grad = torch.randn(3000, generator=generator)
            for params, optimizer in zip((ours, theirs), optimizers, strict=True):
                params[0].grad = grad.clone()
                optimizer.step()
    assert optimizers[0].fused_status()[0].startswith("foreach")
    assert_close([ours[0].detach()], [theirs[0].detach()], torch.float32)


@pytest.mark.parametrize(("cls", "dtype"), [("Adam", torch.float32), ("RMSprop", torch.float64)])
def test_the_kernel_compiles_for_a_gpu(
    cls: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated source compiles for an H100/H200 (sm_90) without a GPU (Triton's own
    ptxas), with correctly rounded division and root, no approximation, and no fused
    multiply-add but the ones the rule's ``addcmul``/``lerp``/``axpy`` ask for."""
    triton = importlib.import_module("triton")  # (the test extra: missing must fail)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = [torch.nn.Parameter(torch.randn(100, dtype=dtype))]
    optimizer = getattr(adaptim, cls)(params, fused=True)
    for _ in range(2):
        params[0].grad = torch.randn(100, dtype=dtype)
        optimizer.step()
    (partition,) = optimizer._engine.groups[0].partitions
    assert partition.triton is not None
    structure = partition.triton.structure
    monkeypatch.delenv("TRITON_INTERPRET")
    function = _triton._load(_triton_source.generate_source(structure, dtype)).adaptim_step
    scalar = "fp32" if dtype == torch.float32 else "fp64"
    signature = {"table": "*i64", "count": "i32", "blocks": "*i64"}
    signature |= {f"s{i}": scalar for i in range(structure.slot_count)}
    signature |= {"BLOCK": "constexpr", "FMA": "constexpr"}
    compiled = triton.compile(
        ASTSource(function, signature, constexprs={"BLOCK": 1024, "FMA": True}),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": 4, "enable_fp_fusion": False},
    )
    ptx = compiled.asm["ptx"]
    assert "div.rn" in ptx and "sqrt.rn" in ptx and "approx" not in ptx
    # (``lerp`` computes both of ATen's sides, one multiply-add each, and selects)
    fused = sum({"axpy": 1, "addcmul": 1, "lerp": 2}.get(op, 0) for op, _ in structure.ops)
    per_thread = 1024 // (4 * 32)  # elements each thread computes
    assert ptx.count("fma.rn") == fused * per_thread


def test_steps_inside_another_default_device() -> None:
    """The lab runs a trial inside ``with torch.device(...)`` and users call
    ``torch.set_default_device``: the kernel's host tables must still be made on
    the CPU (on the H200 a ``cuda`` default made ``pin_memory`` refuse them)."""
    params = [torch.nn.Parameter(torch.randn(300)), torch.nn.Parameter(torch.randn(7, 5))]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours, theirs = adaptim.Adam(params), torch.optim.Adam(reference, foreach=False)
    for step in range(3):
        for p, q in zip(params, reference, strict=True):
            g = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            p.grad, q.grad = g, g.clone()
        if step == 0:  # (the state is created as torch.optim creates it: the default device)
            ours.step()
        else:
            with torch.device("meta"):  # a factory without a device lands there
                ours.step()
        theirs.step()
    assert ours.fused_status()[0].startswith("triton")
    for p, q in zip(params, reference, strict=True):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=1e-7)
