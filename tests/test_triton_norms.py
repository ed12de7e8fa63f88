"""Rules with per-tensor norms and 0-d state (LARS, LAMB, NovoGrad) through the GPU step's
Triton kernels, run by Triton's interpreter on the CPU (``tests/test_triton.py`` explains how).

A step of such a rule is three launches (:func:`adaptim.torch._triton_source.launch_order`):
each block's sums of squares, each tensor's norms and per-tensor values (its blocks' sums
added in block order), then the element-wise update. The oracle is adaptim's per-tensor
reference path (``foreach=False``), which calls ``torch.linalg.vector_norm`` per tensor:
after :data:`STEPS` steps float32 within 1e-5 and float64 within 1e-12 (the kernels sum
squares in float64, torch in the parameters' dtype). The draws cover sizes around the
block of 1,024 elements, 0-d and 1-element tensors, a parameter of norm 0 and a gradient of
norm 0 (the trust ratio's fallbacks), weight decay on and off, two param groups, and a
parameter rebound between steps. The kernels compile for sm_90 in the last test; they
have not run on a GPU here.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _triton, _triton_source

STEPS = 20
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
SHAPES = st.lists(
    st.sampled_from([(), (1,), (1023,), (1024,), (1025,), (2049,), (7, 5)]),
    min_size=2,
    max_size=3,
)
DECAY = st.sampled_from([0.0, 1e-2])


@pytest.fixture(autouse=True)
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The GPU path on CPU tensors, through Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_triton, "DEVICES", frozenset({"cpu", "cuda"}))
    yield


def _lars(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(st.sampled_from([0.1, 1.0])),
        "momentum": draw(st.sampled_from([0.0, 0.9])),
        "weight_decay": draw(DECAY),
        "trust_clip": draw(st.booleans()),
    }


def _lamb(draw: st.DrawFn) -> dict[str, Any]:
    return {"lr": draw(st.sampled_from([1e-3, 1e-2])), "weight_decay": draw(DECAY)}


def _novograd(draw: st.DrawFn) -> dict[str, Any]:
    flavor = draw(st.sampled_from(["optax", "paper"]))
    return {
        "lr": draw(st.sampled_from([1e-3, 1e-2])),
        "weight_decay": draw(DECAY),
        "flavor": flavor,
    }


RULES: dict[str, Callable[[st.DrawFn], dict[str, Any]]] = {
    "LARS": _lars,
    "LAMB": _lamb,
    "NovoGrad": _novograd,
}


def run(
    make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype,
    seed: int,
    *,
    zero_param: int,
    zero_grad: int,
    rebind_at: int | None,
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Parameters and every state tensor after :data:`STEPS` steps with fresh gradients.

    Parameter ``zero_param`` starts at 0 (a weight norm of 0); ``zero_grad``'s gradient
    is always 0 (gradient and update norms of 0); the first half of the parameters is
    one group, the rest another with its own ``lr`` and weight decay.
    """
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes]
    with torch.no_grad():
        params[zero_param].zero_()
    half = len(params) // 2
    optimizer = make([{"params": params[:half]}, {"params": params[half:], "lr": 3e-3}])
    for step in range(STEPS):
        if step == rebind_at:
            params[0].data = params[0].data.clone()  # a new address for the parameter
        for p in params:
            p.grad = p.detach() * 0.1 + torch.randn(p.shape, generator=generator, dtype=dtype)
        params[zero_grad].grad = torch.zeros_like(params[zero_grad])
        optimizer.step()
    state = [t for p in params for t in optimizer.state[p].values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in params] + [t.clone() for t in state], optimizer


@pytest.mark.parametrize("name", sorted(RULES))
@settings(max_examples=3, deadline=None)
@given(
    data=st.data(),
    shapes=SHAPES,
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    rebind=st.booleans(),
)
def test_norm_kernels_match_the_reference_path(
    name: str,
    data: st.DataObject,
    shapes: list[tuple[int, ...]],
    seed: int,
    dtype: torch.dtype,
    rebind: bool,
) -> None:
    """``fused=True`` steps every tensor with the kernels and matches ``foreach=False``,
    parameters and state (momentum, moments, the 0-d trust ratios and second moments)."""
    hp = data.draw(st.composite(RULES[name])())
    where = st.integers(0, len(shapes) - 1)
    places = {
        "zero_param": data.draw(where),
        "zero_grad": data.draw(where),
        "rebind_at": data.draw(st.integers(1, STEPS - 2)) if rebind else None,
    }
    cls = getattr(adaptim, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no fallback warning: the kernels took every step)
        ours, optimizer = run(lambda g: cls(g, **hp, fused=True), shapes, dtype, seed, **places)
    for status in optimizer.fused_status():
        assert status.startswith("triton (") and "foreach" not in status, status
    theirs, _ = run(lambda g: cls(g, **hp, foreach=False), shapes, dtype, seed, **places)
    for a, b in zip(ours, theirs, strict=True):
        # (the paper's NovoGrad divides a zero gradient by its zero norm: NaN in both)
        assert torch.equal(a.isnan(), b.isnan()), (a, b)
        a, b = a.nan_to_num(), b.nan_to_num()
        scale = b.abs().max().clamp_min(1.0)
        assert float((a - b).abs().max() / scale) <= TOLERANCE[dtype], (a, b)


def test_launches_and_buffers() -> None:
    """LAMB: three launches a step, a block's partial sums in float64 per norm, the
    per-tensor values handed on in the parameters' dtype; the same tables every step."""
    params = [torch.nn.Parameter(torch.randn(3000)), torch.nn.Parameter(torch.randn(5, 4))]
    optimizer = adaptim.LAMB(params, fused=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape)
        optimizer.step()
    launches = [
        partition.triton
        for partition in optimizer._engine.groups[0].partitions
        if partition.triton is not None
    ]
    assert len(launches) == 2  # (LAMB's partitions are per number of dimensions)
    launch = launches[0]
    assert [name for name, _ in _triton_source.launch_order(launch.structure, torch.float32)] == [
        "adaptim_squares_1",
        "adaptim_tensors_1",
        "adaptim_step",
    ]
    spans, partial, per = launch.buffers
    assert spans.tolist() == [0, 3]  # (3,000 elements: three blocks)
    assert partial.dtype == torch.float64 and partial.numel() == 3 * 2  # (two norms)
    assert per.dtype == torch.float32


def test_a_rule_the_kernels_refuse_stays_on_the_replay_silently() -> None:
    """Adafactor's factored statistics and host scalars have no kernel form: the replay,
    without a warning (the refusal is structural). (Keras's flavor: the torch flavor's
    CPU tensors, which the interpreter runs on, take the CPU's own Adafactor passes.)"""
    params = [torch.nn.Parameter(torch.randn(50, 40))]
    optimizer = adaptim.Adafactor(params, fused=True, flavor="keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):  # (the first step creates the state: replayed anyway)
            params[0].grad = torch.randn(50, 40)
            optimizer.step()
    status = optimizer.fused_status()[0]
    assert status.startswith("foreach") and "no GPU kernel form" in status


@pytest.mark.parametrize(
    ("cls", "hp", "dtype", "shape"),
    [
        ("LARS", {"weight_decay": 1e-2, "trust_clip": True}, torch.float32, (100,)),
        ("LARS", {}, torch.float64, ()),
        ("LAMB", {"weight_decay": 1e-2}, torch.float32, (100,)),
        ("LAMB", {}, torch.float64, (100,)),
        ("NovoGrad", {"weight_decay": 1e-2}, torch.float32, (100,)),
    ],
)
def test_the_norm_kernels_compile_for_a_gpu(
    cls: str,
    hp: dict[str, Any],
    dtype: torch.dtype,
    shape: tuple[int, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every function of a step compiles for an H100/H200 (sm_90) without a GPU (Triton's
    own ptxas): no approximate division or root anywhere, the norms' root in float64
    (``sqrt.rn.f64``), and the element-wise step's fused multiply-adds only the rule's.
    (A 0-d parameter: its trust ratio is stored by the element-wise step.)"""
    triton = importlib.import_module("triton")  # (the test extra: missing must fail)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype))]
    optimizer = getattr(adaptim, cls)(params, **hp, fused=True)
    for _ in range(2):
        params[0].grad = torch.randn(shape, dtype=dtype)
        optimizer.step()
    (partition,) = optimizer._engine.groups[0].partitions
    assert partition.triton is not None
    structure = partition.triton.structure
    monkeypatch.delenv("TRITON_INTERPRET")
    module = _triton._load(_triton_source.generate_source(structure, dtype))
    scalar = "fp32" if dtype == torch.float32 else "fp64"
    signature = {"table": "*i64", "count": "i32", "blocks": "*i64", "spans": "*i64"}
    signature |= {"partial": "*fp64", "per": f"*{scalar}"}
    signature |= {f"s{i}": scalar for i in range(structure.slot_count)}
    signature |= {"BLOCK": "constexpr", "FMA": "constexpr"}
    ptx = {}
    for name, _ in _triton_source.launch_order(structure, dtype):
        compiled = triton.compile(
            ASTSource(getattr(module, name), signature, constexprs={"BLOCK": 1024, "FMA": True}),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": 4, "enable_fp_fusion": False},
        )
        ptx[name] = compiled.asm["ptx"]
    assert list(ptx) == ["adaptim_squares_1", "adaptim_tensors_1", "adaptim_step"]
    assert not any("approx" in text for text in ptx.values())
    assert "sqrt.rn.f64" in ptx["adaptim_tensors_1"]
    kinds = structure.kinds()
    fused = sum(
        {"axpy": 1, "addcmul": 1, "lerp": 2}.get(op, 0)
        for (op, _), kind in zip(structure.ops, kinds, strict=True)
        if kind == "element"
    )
    per_thread = 1024 // (4 * 32)  # elements each thread computes
    assert ptx["adaptim_step"].count("fma.rn") == fused * per_thread


def test_a_0d_parameter_keeps_its_group_off_the_reference_path() -> None:
    """A 0-d parameter's 0-d trust ratio is element-wise state as far as the partition can
    tell: LARS's recording accepts it (was: the whole group on the per-tensor path)."""
    shapes = [(), (300,), (7, 5)]
    kept = {}
    for foreach in (True, False):
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
        optimizer = adaptim.LARS(params, weight_decay=1e-2, foreach=foreach)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=generator)
                optimizer.step()
        kept[foreach] = [p.detach() for p in params] + [optimizer.state[params[0]]["trust_ratio"]]
        if foreach:
            assert optimizer.fused_status() == ["foreach (3 partitions): 3 of 3 tensors"]
    for a, b in zip(kept[True], kept[False], strict=True):
        assert torch.equal(a, b)
