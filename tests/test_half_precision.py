"""float16 and bfloat16 parameters against torch.optim's for-loop implementation, to the bit.

torch's compound kernels (``addcdiv``, ``addcmul``, ``add(alpha=)``, ``lerp``)
compute a half type in float32 and round once; the same formula written with
operators rounds after every operation. The rules call those kernels where
torch.optim's for-loop does (its default on the CPU), so every path adaptim's
step takes must give torch's bits: the per-tensor reference, the multi-tensor
replay, ``fused=True`` and the default choice, on small models and on models of more than
``AUTO_NATIVE_MIN_NUMEL`` elements (where the default runs the native loop, for half
types too: :mod:`adaptim.torch._native_half`), with one thread and with two. That includes the infinities of a float16 step whose
``lr·m`` and ``v`` underflow (torch: ``x/0 = ±inf``; formula order: ``0/0 = NaN``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import test_torch_twins
import torch
from _parity import LAYOUTS, SPECS, Layout, Range, Spec
from _threads import num_threads
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_torch_parity import PHASES, HypothesisSource

import adaptim
import adaptim.numpy as anp
from adaptim.torch._engine import AUTO_NATIVE_MIN_NUMEL
from adaptim.torch._native_half import AUTO_NATIVE_HALF

TWINS: dict[str, Spec] = {**{spec.name: spec for spec in SPECS}, **test_torch_twins.SPECS}
PATHS: dict[str, dict[str, Any]] = {
    "default": {},
    "foreach": {"foreach": True},
    "reference": {"foreach": False},
    "fused": {"fused": True},
}
HALF = (torch.float16, torch.bfloat16)
#: Parameters log-uniform in scale; gradients down to float16's subnormals, where
#: ``(1-β₂)·g²`` underflows to 0 while ``lr·m`` does not in float32.
PARAM_SCALE = Range(1e-3, 1e2, "log")
GRAD_SCALE = Range(1e-7, 1e3, "log")


def _layouts(size: str, source: HypothesisSource) -> list[Layout]:
    if size == "large":  # past the size at which the default path changes
        # (any column count: a tensor's elements, and halves of them, need not be whole
        # steps of ATen's vector loop, whose scalar loop rounds add(alpha=) differently)
        columns = source.integer(200, 300, "columns")
        rows = -(-AUTO_NATIVE_MIN_NUMEL // columns) + source.integer(0, 4, "extra rows")
        return [Layout((rows, columns)), Layout((source.integer(1, 300, "bias"),))]
    count = source.integer(1, 3, "parameters")
    return [LAYOUTS[source.choice(list(LAYOUTS), "layout")](source) for _ in range(count)]


def _tensors(
    layouts: list[Layout], scale: float, dtype: torch.dtype, generator: torch.Generator
) -> list[torch.Tensor]:
    made = []
    for layout in layouts:
        shape = layout.shape[::-1] if layout.transposed else layout.shape
        values = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
        made.append(values.t() if layout.transposed else values)
    return made


def _steps(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]
) -> None:
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        optimizer.step()


def _same_bits(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal to the bit, NaN where torch has NaN (whatever its payload)."""
    if ours.dtype != theirs.dtype or ours.shape != theirs.shape:
        return False
    nan = theirs.isnan()
    if not torch.equal(ours.isnan(), nan):
        return False
    if not ours.is_floating_point():
        return torch.equal(ours, theirs)
    return torch.equal(ours[~nan].view(torch.int16), theirs[~nan].view(torch.int16))


def _run(
    spec: Spec, path: str, hparams: dict[str, Any], start: list[torch.Tensor], grads: Any
) -> dict[str, Any]:
    """adaptim on ``path`` and torch.optim's for-loop, from the same start and gradients."""
    results = {}
    for side, build, switches in (
        ("torch", spec.theirs, {"foreach": False}),
        ("adaptim", spec.ours, PATHS[path]),
    ):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = build(params, **hparams, **switches)
        _steps(optimizer, params, grads)
        results[side] = (params, optimizer)
    return results


def _assert_identical(results: dict[str, Any]) -> None:
    (ours, ours_opt), (theirs, theirs_opt) = results["adaptim"], results["torch"]
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert _same_bits(a.detach(), b.detach()), (
            f"parameter {index}: {(a.double() - b.double()).abs().nan_to_num(math.inf).max()} "
            f"off, NaN {int(a.isnan().sum())} (torch {int(b.isnan().sum())})"
        )
        state, reference = ours_opt.state[a], theirs_opt.state[b]
        assert sorted(state) == sorted(reference)
        for key, value in reference.items():
            if isinstance(value, torch.Tensor):
                assert _same_bits(state[key], value), f"parameter {index}: state {key!r}"


def _check_case(name: str, size: str, threads: int, data: st.DataObject) -> None:
    spec = TWINS[name]
    source = HypothesisSource(data, salt=f"half {name} {size} {threads}")
    options = source.choice(spec.combinations(), "options")
    hparams = spec.draw_hparams(options, source)
    dtype = source.choice(HALF, "dtype")
    layouts = _layouts(size, source)
    generator = torch.Generator().manual_seed(source.integer(0, 2**32 - 1, "seed"))
    start = _tensors(layouts, source.value(PARAM_SCALE, "param scale"), dtype, generator)
    grad_scale = source.value(GRAD_SCALE, "grad scale")
    steps = 5 if size == "small" else 3
    grads = [_tensors(layouts, grad_scale, dtype, generator) for _ in range(steps)]
    note(f"{dtype}, {hparams}, {layouts}, grad scale {grad_scale}")
    with num_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("error")  # no engine fallback warning either
        for path in PATHS:
            note(path)
            results = _run(spec, path, hparams, start, grads)
            _assert_identical(results)
            if size == "large" and path in ("default", "fused"):
                # the half step runs native wherever float32's does (SGD without momentum
                # runs the replay by default in both; Adafactor's statistics never native)
                status = results["adaptim"][1].fused_status()
                single = [torch.nn.Parameter(t.float()) for t in start]
                reference = spec.ours(single, **hparams, **PATHS[path])
                _steps(reference, single, [[g.float() for g in step] for step in grads])
                if path == "default" and dtype not in AUTO_NATIVE_HALF:  # (the replay)
                    assert all(s.startswith("foreach") for s in status), status
                else:
                    # (float32's Adafactor takes _adafactor_native's passes, half types the replay)
                    paths = [
                        s.split(" (not native")[0].replace("adafactor (", "foreach (")
                        for s in reference.fused_status()
                    ]
                    assert [s.split(" (not native")[0] for s in status] == paths
                assert name == "Adafactor" or path == "default" or status[0].startswith("native")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", TWINS)
@settings(max_examples=2, phases=PHASES, deadline=None)
@given(data=st.data())
def test_half_parameters_match_torch_bit_for_bit(
    name: str, threads: int, data: st.DataObject
) -> None:
    _check_case(name, "small", threads, data)


@pytest.mark.slow  # (a few seconds with two threads on a loaded 2-core machine)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", TWINS)
@settings(max_examples=1, phases=PHASES, deadline=None)
@given(data=st.data())
def test_half_models_past_the_native_size_match_torch(
    name: str, threads: int, data: st.DataObject
) -> None:
    """At 64k+ elements the default and ``fused=True`` run the native half loop: torch's bits."""
    _check_case(name, "large", threads, data)


@pytest.mark.parametrize("dtype", HALF)
@settings(max_examples=4, phases=PHASES, deadline=None)
@given(
    lr=st.floats(1e-4, 1e-1),
    betas=st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
    eps=st.floats(1e-10, 1e-2),
    seed=st.integers(0, 2**32 - 1),
)
def test_sparse_adam_half_embeddings_match_torch(
    dtype: torch.dtype, lr: float, betas: tuple[float, float], eps: float, seed: int
) -> None:
    """SparseAdam on a half-precision embedding's sparse gradients, default path."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(40, 6, generator=generator, dtype=torch.float64).to(dtype)
    rows = [torch.randint(0, 40, (12,), generator=generator) for _ in range(4)]
    scales = [torch.randn(12, 6, generator=generator, dtype=torch.float64) for _ in rows]
    results = []
    for cls in (torch.optim.SparseAdam, adaptim.SparseAdam):
        embedding = torch.nn.Embedding(40, 6, sparse=True, dtype=dtype)
        with torch.no_grad():
            embedding.weight.copy_(weight)
        optimizer = cls(embedding.parameters(), lr=lr, betas=betas, eps=eps)
        for index, scale in zip(rows, scales, strict=True):
            optimizer.zero_grad()
            (embedding(index).double() * scale).sum().backward()
            optimizer.step()
        results.append(embedding.weight.detach())
    assert _same_bits(results[1], results[0])


def test_float16_adam_step_that_underflows_gives_torch_infinity() -> None:
    """The step of issue 10's defect A: torch gives -inf, the formula order 0/0 = NaN."""
    for path in PATHS.values():
        for cls in (adaptim.Adam, torch.optim.Adam):
            p = torch.nn.Parameter(torch.tensor([0.01], dtype=torch.float16))
            p.grad = torch.tensor([1.0967e-05], dtype=torch.float16)
            cls([p], **(path if cls is adaptim.Adam else {"foreach": False})).step()
            assert p.item() == -math.inf
    array = np.array([0.01], dtype=np.float16)
    with np.errstate(divide="ignore"):
        anp.Adam([array]).step([np.array([1.0967e-05], dtype=np.float16)])
    assert array[0] == -np.inf


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam"])
@settings(max_examples=3, phases=PHASES, deadline=None)
@given(data=st.data())
def test_numpy_float16_has_no_nan_where_torch_has_none(name: str, data: st.DataObject) -> None:
    """NumPy rounds ``x * 0.9`` in float16 where torch keeps the scalar in float32, so
    it follows torch to float16's rounding only; but its compound operations compute
    in float32 as torch's do, so an underflowing step gives ±inf, never NaN."""
    spec = TWINS[name]
    source = HypothesisSource(data, salt=f"numpy half {name}")
    options = source.choice([o for o in spec.combinations() if "maximize" not in o], "options")
    hparams = spec.draw_hparams(options, source)
    layouts = _layouts("small", source)
    generator = torch.Generator().manual_seed(source.integer(0, 2**32 - 1, "seed"))
    start = _tensors(layouts, source.value(PARAM_SCALE, "param scale"), torch.float16, generator)
    grad_scale = source.value(GRAD_SCALE, "grad scale")
    grads = [_tensors(layouts, grad_scale, torch.float16, generator) for _ in range(4)]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    _steps(spec.theirs(theirs, **hparams, foreach=False), theirs, grads)
    ours = [t.numpy().copy() for t in start]
    optimizer = getattr(anp, name)(ours, **hparams)
    with np.errstate(all="ignore"):  # (x/0, as torch computes it without a warning)
        for step in grads:
            optimizer.step([g.numpy() for g in step])
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == np.float16
        assert not (np.isnan(a) & ~b.detach().isnan().numpy()).any()
