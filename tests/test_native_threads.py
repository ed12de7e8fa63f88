"""The native loop: torch.optim's bits, and every element once whatever the thread count.

The element-wise pass gives each thread one contiguous range of the
concatenated tensors (:func:`adaptim.torch._native.generate_source`), cut in
the middle of tensors, rounded to 16 elements. Each element is computed
alone, so any thread count must give the one-thread result bit for bit; a
skipped or repeated element, or a range cut at the wrong offset, would not.

The loop runs every group of :data:`~adaptim.torch._engine.AUTO_NATIVE_MIN_NUMEL`
elements by default, so ``adaptim.X(params)`` there must equal
``torch.optim.X(params)`` (its CPU default, the for-loop) bit for bit:
``torch.sqrt``'s root (MKL's, :mod:`adaptim.torch._mkl_sqrt`), divisions by a
step's scalar element by element, ``number / tensor`` as torch's reciprocal
times the number.
"""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
from _threads import num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _mkl_sqrt, _native, _native_fragments, _native_norms
from adaptim.torch._engine import AUTO_NATIVE_MIN_NUMEL

#: Tensor sizes around the rounding (16), a block (16,384) and ATen's grain (32,768).
SIZES = st.one_of(st.integers(1, 40), st.integers(16_000, 17_000), st.integers(30_000, 70_000))


def run(
    name: str,
    sizes: list[int],
    threads: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    **switches: bool,
) -> list[torch.Tensor]:
    """Parameters and state after three steps of ``adaptim.<name>`` on ``threads`` threads."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=generator, dtype=dtype)) for n in sizes]
    optimizer = getattr(adaptim, name)(params, lr=1e-2, **switches)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
        with num_threads(threads):
            optimizer.step()
    if switches.get("fused"):
        assert optimizer.fused_status()[0].startswith("native (1 partition)")
    return [t for p in params for t in (p.detach(), *optimizer.state[p].values())]


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad"])
@settings(max_examples=6, deadline=None)
@given(
    sizes=st.lists(SIZES, min_size=1, max_size=5),
    threads=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    exact_root=st.booleans(),
)
def test_any_thread_count_equals_one_thread(
    name: str, sizes: list[int], threads: int, seed: int, exact_root: bool
) -> None:
    """Any thread count gives one thread's bits; those are the reference's with
    ``EXACT_ROOT`` (``torch.sqrt``'s root), and agree to rounding without it."""
    with patch.object(_native, "EXACT_ROOT", exact_root):
        one = run(name, sizes, 1, seed, fused=True)
        many = run(name, sizes, threads, seed, fused=True)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)
    reference = run(name, sizes, 1, seed, foreach=False)
    for a, b in zip(many, reference, strict=True):
        if exact_root and _mkl_sqrt.emulated(a.dtype):  # (the C root is MKL's on this CPU)
            assert torch.equal(a, b)
        else:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


BETAS = st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.9, 0.99, 0.999]))
COMMON = {
    "lr": st.sampled_from([1e-3, 1e-2, 0.1]),
    "weight_decay": st.sampled_from([0.0, 1e-2]),
    "maximize": st.booleans(),
}
#: The torch.optim twins the native loop runs by default, with the options they share.
OPTIONS = {
    "Adam": {
        **COMMON,
        "betas": BETAS,
        "eps": st.sampled_from([1e-8, 1e-3]),
        "amsgrad": st.booleans(),
    },
    "AdamW": {**COMMON, "betas": BETAS, "amsgrad": st.booleans()},
    "RMSprop": {
        **COMMON,
        "alpha": st.sampled_from([0.9, 0.99]),
        "centered": st.booleans(),
        "momentum": st.sampled_from([0.0, 0.9]),
    },
    "Adagrad": {
        **COMMON,
        "lr_decay": st.sampled_from([0.0, 0.1]),
        "initial_accumulator_value": st.sampled_from([0.0, 0.1]),
    },
    "Adadelta": {**COMMON, "rho": st.sampled_from([0.9, 0.95]), "lr": st.sampled_from([0.1, 1.0])},
    "NAdam": {**COMMON, "betas": BETAS, "decoupled_weight_decay": st.booleans()},
    "RAdam": {**COMMON, "betas": BETAS, "decoupled_weight_decay": st.booleans()},
    "Adamax": {**COMMON, "betas": BETAS},
    "SGD": {**COMMON, "momentum": st.sampled_from([0.0, 0.9]), "nesterov": st.booleans()},
}


@st.composite
def twin_cases(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    name = draw(st.sampled_from(sorted(OPTIONS)))
    options = {key: draw(strategy) for key, strategy in OPTIONS[name].items()}
    if name == "SGD" and options["nesterov"] and not options["momentum"]:
        options["momentum"] = 0.9  # (torch: Nesterov needs momentum)
    return name, options


def stepped_both(
    name: str,
    options: dict[str, object],
    start: list[torch.Tensor],
    grads: list[list[torch.Tensor]],
    threads: int,
) -> list[tuple[list[torch.nn.Parameter], torch.optim.Optimizer]]:
    """``adaptim.X`` and ``torch.optim.X`` from the same ``start``, stepped on ``grads`` (fresh
    copies each step) with ``threads`` threads: each one's parameters and optimizer."""
    results = []
    for module in (adaptim, torch.optim):
        params = [torch.nn.Parameter(x.clone()) for x in start]
        optimizer = getattr(module, name)(params, **options)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            with num_threads(threads):
                optimizer.step()
        results.append((params, optimizer))
    return results


@pytest.mark.slow
@settings(max_examples=16, deadline=None)
@given(
    case=twin_cases(),
    extra=st.lists(st.integers(1, 3_000), max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_default_step_equals_torch_optim_bit_for_bit(
    case: tuple[str, dict[str, object]],
    extra: list[int],
    dtype: torch.dtype,
    threads: int,
    seed: int,
) -> None:
    """With ``EXACT_ROOT``, ``adaptim.X(params, **options)`` on a group the native
    loop takes = ``torch.optim.X``'s for-loop, bit for bit.

    Seven steps (RAdam rectifies from its sixth with beta2 of 0.999); the
    correctly rounded square roots alone differ on 17% of float32 elements.
    """
    name, options = case
    generator = torch.Generator().manual_seed(seed)
    sizes = [AUTO_NATIVE_MIN_NUMEL + 5, *extra]  # (a group above the default's threshold)
    start = [torch.randn(n, generator=generator, dtype=dtype) for n in sizes]
    grads = [[torch.randn(n, generator=generator, dtype=dtype) for n in sizes] for _ in range(7)]
    with patch.object(_native, "EXACT_ROOT", True):
        results = stepped_both(name, options, start, grads, threads)
    (ours, adaptim_optimizer), (theirs, torch_optimizer) = results
    assert adaptim_optimizer.fused_status()[0].startswith("native ("), (
        adaptim_optimizer.fused_status()
    )
    # torch.sqrt's bits where the C root is MKL's algorithm; elsewhere (another MKL kernel)
    # the loop's correctly rounded root agrees to rounding
    same = torch.equal if _mkl_sqrt.emulated(dtype) else close
    for p, q in zip(ours, theirs, strict=True):
        assert same(p, q), f"{name} {options}: {int((p != q).sum())} of {p.numel()} differ"
        for key, value in torch_optimizer.state[q].items():
            assert same(adaptim_optimizer.state[p][key], value), key


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("sizes", "available", "expected"),
    [([100, 200], 8, 1), ([32_768, 32_768], 8, 2), ([235_146], 2, 2), ([235_146], 1, 1)],
)
def test_threads_follow_atens_grain(sizes: list[int], available: int, expected: int) -> None:
    """One thread per 32,768 elements at most: a small group is not worth waking a thread for."""
    assert _native.BlockTable.of(sizes).threads(available) == expected


#: Sizes around the page loop's pages (1,024 float32 or 512 float64 elements) and the
#: prefetch distance (two pages).
PAGED = st.one_of(st.integers(1, 40), st.integers(500, 3_200), st.integers(30_000, 70_000))


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad"])
@settings(max_examples=4, deadline=None)
@given(
    sizes=st.lists(PAGED, min_size=1, max_size=4),
    threads=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_page_ahead_prefetch_changes_no_value(
    name: str, sizes: list[int], threads: int, dtype: torch.dtype, seed: int
) -> None:
    """The loop that walks page by page and prefetches ahead gives the plain loop's bits."""
    paged = run(name, sizes, threads, seed, dtype, fused=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_native_fragments, "AHEAD", 0)  # the plain loop: one pass, no prefetch
        patch.setattr(_native, "_KERNELS", {})
        plain = run(name, sizes, threads, seed, dtype, fused=True)
        (source,) = adaptim_plans(name, dtype)
        assert "__builtin_prefetch" not in source
    assert "__builtin_prefetch" in adaptim_plans(name, dtype)[0]
    for a, b in zip(paged, plain, strict=True):
        assert torch.equal(a, b)


def adaptim_plans(name: str, dtype: torch.dtype) -> list[str]:
    """The C source of ``adaptim.<name>``'s native loop on one small tensor of ``dtype``."""
    param = torch.nn.Parameter(torch.ones(8, dtype=dtype))
    param.grad = torch.ones_like(param)
    optimizer = getattr(adaptim, name)([param], fused=True)
    optimizer.step()
    optimizer.step()
    return optimizer.plans()[0]


#: Rows of 1,000 elements: a group past AUTO_NATIVE_MIN_NUMEL, below Intel's free limit.
FREE_ROWS = st.integers(-(-AUTO_NATIVE_MIN_NUMEL // 1_000), (1 << 19) // 1_000 - 1)


def stepped_like_torch(
    case: tuple[str, dict[str, object]], rows: int, dtype: torch.dtype, threads: int, seed: int
) -> tuple[list[str], bool]:
    """Seven default steps of ``adaptim.X`` and ``torch.optim.X`` on a ``rows`` x 1,000 matrix
    and a bias: the native kernel's C, and whether parameters and state are the same bits."""
    name, options = case
    generator = torch.Generator().manual_seed(seed)
    start = [torch.randn(s, generator=generator, dtype=dtype) for s in ((rows, 1_000), (7,))]
    grads = [[torch.randn_like(x) for x in start] for _ in range(7)]
    (ours, mine), (theirs, reference) = stepped_both(name, options, start, grads, threads)
    assert mine.fused_status() == ["native (1 partition): 2 of 2 tensors"], mine.fused_status()
    same = all(
        torch.equal(a, b)
        and all(torch.equal(mine.state[a][k], v) for k, v in reference.state[b].items())
        for a, b in zip(ours, theirs, strict=True)
    )
    return mine.plans()[0], same


@settings(max_examples=10, deadline=None)
@given(
    case=twin_cases(),
    rows=FREE_ROWS,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_the_default_keeps_torchs_bits_where_the_exact_loop_is_free(
    case: tuple[str, dict[str, object]], rows: int, dtype: torch.dtype, threads: int, seed: int
) -> None:
    """``adaptim.X(params)`` by default on a group of 64k to 512k elements: where this CPU's
    emulated MKL root costs nothing there (``_mkl_sqrt.EXACT_LOOP_FREE_BELOW``: Intel's
    ``Z0HAynn``), the exact loop, ``torch.optim.X``'s for-loop bit for bit; elsewhere (AMD's
    ``EXHAynn``, or no emulation) the correctly rounded root, as before."""
    (source,), same = stepped_like_torch(case, rows, dtype, threads, seed)
    rooted = "sqrt" in source
    if _mkl_sqrt.exact_loop_free(dtype, rows * 1_000 + 7):
        assert same, case
    elif rooted:
        assert "mkl_root" not in source  # (the rounded loop's sqrt: agrees to rounding)


def test_where_the_exact_loop_is_not_free_the_default_keeps_the_rounded_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the emulated kernel marked not free (as AMD's), a 300,007-element default group runs
    the loop with ``vsqrtps`` again; above the limit too; and below 64k the exact one."""
    kernel = _mkl_sqrt.emulation(torch.float32)
    case = ("Adam", {"lr": 1e-2})
    if kernel is not None:  # (no emulation here: the rounded loop at every size, below)
        (source,), same = stepped_like_torch(case, 300, torch.float32, 2, 0)
        assert "mkl_root" in source and same
        monkeypatch.setitem(_mkl_sqrt.EXACT_LOOP_FREE_BELOW, kernel, 0)
    for rows in (300, (1 << 19) // 1_000 + 1):
        (source,), _ = stepped_like_torch(case, rows, torch.float32, 2, 0)
        assert "mkl_root" not in source and "sqrt" in source
    (source,), same = stepped_like_torch(case, 60, torch.float32, 1, 0)
    assert ("mkl_root" in source and same) is (kernel is not None)


@pytest.mark.parametrize("name", ["LARS", "LAMB", "NovoGrad"])
def test_rules_with_norms_keep_the_per_block_sums_past_64k(name: str) -> None:
    """Where the exact loop is free (Intel, 64k-512k), a rule with whole-tensor norms still
    runs the large groups' loop: its norms summed per block on every thread (ATen's order
    sums a tensor's norm on one thread: 0.84-0.96x with two), the small groups' ATen order
    only below 64k elements."""
    sources = []
    for rows in (300, 60):
        params = [torch.nn.Parameter(torch.randn(rows, 1_000)), torch.nn.Parameter(torch.randn(7))]
        optimizer = getattr(adaptim, name)(params)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            with num_threads(2):
                optimizer.step()
        assert optimizer.fused_status()[0].startswith("native"), optimizer.fused_status()
        sources.append("\n".join(optimizer.plans()[0]))
    large, small = sources
    assert "norm_chunk(" not in large and "mkl_root" not in large
    if _native_norms.holds(torch.float32) and _mkl_sqrt.emulated(torch.float32):
        assert "norm_chunk(" in small
