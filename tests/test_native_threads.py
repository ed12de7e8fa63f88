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
from adaptim.torch import _native

#: Tensor sizes around the rounding (16), a block (16,384) and ATen's grain (32,768).
SIZES = st.one_of(st.integers(1, 40), st.integers(16_000, 17_000), st.integers(30_000, 70_000))


def run(
    name: str, sizes: list[int], threads: int, seed: int, **switches: bool
) -> list[torch.Tensor]:
    """Parameters and state after three steps of ``adaptim.<name>`` on ``threads`` threads."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in sizes]
    optimizer = getattr(adaptim, name)(params, lr=1e-2, **switches)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
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
