"""The native loop's split across threads: every element once, whatever the sizes.

The element-wise pass gives each thread one contiguous range of the
concatenated tensors (:func:`adaptim.torch._native.generate_source`), cut in
the middle of tensors, rounded to 16 elements. Each element is computed
alone, so any thread count must give the one-thread result bit for bit; a
skipped or repeated element, or a range cut at the wrong offset, would not.
"""

from __future__ import annotations

import pytest
import torch
from _threads import num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _native, _native_source

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
)
def test_any_thread_count_equals_one_thread(
    name: str, sizes: list[int], threads: int, seed: int
) -> None:
    one = run(name, sizes, 1, seed, fused=True)
    many = run(name, sizes, threads, seed, fused=True)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)
    reference = run(name, sizes, 1, seed, foreach=False)
    for a, b in zip(many, reference, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


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
        patch.setattr(_native_source, "AHEAD", 0)  # the plain loop: one pass, no prefetch
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
