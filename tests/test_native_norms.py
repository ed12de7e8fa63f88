"""The exact native loop's whole-tensor norms: ``torch.linalg.vector_norm``'s order on this wheel.

:mod:`adaptim.torch._native_norms` replays ATen's order (read off its results), and the
engine runs LARS, LAMB and NovoGrad's small groups natively only where its once-per-process
check holds (``tests/test_engine.py`` holds those groups to the replay's bits, and checks
the fallback where the order differs). Here: the facts the order rests on, with 1 and 2
threads and tensors large enough for ATen to split a reduction across threads.
"""

from __future__ import annotations

import pytest
import torch
from _threads import num_threads

from adaptim.torch import _native_norms

#: Sizes around ATen's lanes and tails, the pass's chunk, ATen's grain (32,768) and beyond.
SIZES = [1, 2, 7, 8, 9, 31, 1023, 1024, 1025, 4099, 32_769, 300_001, 1_000_003]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_norm_order_holds_on_this_wheel(dtype: torch.dtype, threads: int) -> None:
    """The check holds, and the pass's C gives ``vector_norm``'s number on every size: ATen
    sums a whole tensor on one thread whatever the thread count."""
    assert _native_norms.holds(dtype)
    generator = torch.Generator().manual_seed(threads)
    tensors = [torch.randn(n, generator=generator, dtype=dtype) * 3 for n in SIZES]
    with num_threads(threads):
        expected = [torch.linalg.vector_norm(x).item() for x in tensors]
    assert _native_norms.norms(tensors) == expected


def test_float32_norms_accumulate_in_float() -> None:
    """float32's sum of squares is rounded to float as it goes (not summed in double, as
    the large groups' loop does): some norms differ from the double sum's rounded root."""
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=generator) for n in SIZES]
    ours = _native_norms.norms(tensors)
    in_double = [float(torch.linalg.vector_norm(x.double()).float()) for x in tensors]
    assert ours == [torch.linalg.vector_norm(x).item() for x in tensors]
    assert ours != in_double


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_element_is_its_absolute_value(dtype: torch.dtype) -> None:
    """A one-element tensor's norm is its absolute value (ATen's kernel for it squares
    nothing), where squaring would underflow or overflow; two elements square and sum."""
    info = torch.finfo(dtype)
    singles = [torch.tensor(x, dtype=dtype) for x in (info.tiny, -info.max, -2.5)]
    pairs = [torch.full((2,), info.tiny, dtype=dtype)]
    expected = [info.tiny, info.max, 2.5, 0.0]
    assert [torch.linalg.vector_norm(x).item() for x in singles + pairs] == expected
    assert _native_norms.norms(singles + pairs) == expected
    (zero,) = _native_norms.norms([torch.tensor(-0.0, dtype=dtype)])
    assert str(zero) == str(torch.linalg.vector_norm(torch.tensor(-0.0, dtype=dtype)).item())
