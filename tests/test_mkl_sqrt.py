"""Which of MKL's square-root kernels this CPU runs, and that the C reproduces it.

MKL picks its kernel by CPU (``EXHAynn`` with AVX2 on AMD, ``Z0HAynn`` with
AVX-512 on Intel; :mod:`adaptim.torch._mkl_sqrt`), and the kernel decides the
bits of ``torch.sqrt``. Where torch has MKL, one of the emulations must match
it: on a CPU where MKL dispatches a kernel the C does not know, this fails
(the loops would silently fall back to calling MKL, slower).
"""

from __future__ import annotations

import pytest
import torch

from adaptim.torch import _mkl_sqrt

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
INTEGER = {torch.float32: torch.int32, torch.float64: torch.int64}


@DTYPES
def test_one_emulation_gives_torch_sqrts_bits_where_torch_has_mkl(dtype: torch.dtype) -> None:
    """Each candidate's C against ``torch.sqrt`` (the per-process probe): exactly one matches
    where MKL's root is found; none, and ``emulated`` is false, where it is not."""
    found = [kernel for kernel in _mkl_sqrt.KERNELS if _mkl_sqrt.matches(dtype, kernel)]
    if _mkl_sqrt.vml_sqrt(dtype) is None:
        assert found == [] and not _mkl_sqrt.emulated(dtype)
        return
    assert len(found) == 1, f"MKL's root here is none of {_mkl_sqrt.KERNELS}'s C: {found}"
    assert _mkl_sqrt.emulation(dtype) == found[0] and _mkl_sqrt.emulated(dtype)
    assert _mkl_sqrt.kernel_source(dtype) == _mkl_sqrt.kernel_source(dtype, found[0])


@DTYPES
def test_the_emulations_differ_where_both_build(dtype: torch.dtype) -> None:
    """The probe can tell the kernels apart: on its own values, the two C roots that build
    here give different bits (else a sample could not say which one MKL runs)."""
    values = _mkl_sqrt._probe_values(dtype, 1 << 15)
    roots = []
    for kernel in _mkl_sqrt.KERNELS:
        function = _mkl_sqrt.tile_sqrt(dtype, kernel)
        if function is not None:
            got = torch.empty_like(values)
            function(values.numel(), values.data_ptr(), got.data_ptr())
            roots.append(got.view(INTEGER[dtype]))
    for k, a in enumerate(roots):
        for b in roots[k + 1 :]:
            assert not torch.equal(a, b)


@DTYPES
def test_the_chosen_root_on_mkls_rare_values(dtype: torch.dtype) -> None:
    """Zeros, subnormals, negatives, infinities, NaN with payloads and signs, the top binade:
    the C root (the chosen kernel's) against ``torch.sqrt``, at every length up to 40."""
    if not _mkl_sqrt.emulated(dtype):  # (no MKL here: the first test says so)
        assert _mkl_sqrt.vml_sqrt(dtype) is None or _mkl_sqrt.tile_sqrt(dtype) is None
        return
    info = torch.finfo(dtype)
    integer = INTEGER[dtype]
    # signalling and quiet NaN, payloads, both signs (MKL's: x quieted)
    nans = (
        [0x7F800001, 0x7FC00155, 0xFFC00000, 0xFF800005]
        if dtype == torch.float32
        else [0x7FF0000000000001, 0x7FF8000000000155, 0xFFF8000000000000, 0xFFF0000000000005]
    )
    width = 32 if dtype == torch.float32 else 64
    payloads = torch.tensor([n - (1 << width) if n >> (width - 1) else n for n in nans])
    values = torch.cat(
        [
            torch.tensor(
                [0.0, -0.0, float("inf"), -float("inf"), -1.0, -info.tiny / 3, info.tiny / 3],
                dtype=dtype,
            ),
            torch.tensor([info.max, info.max / 3, info.tiny, info.tiny * 1.5], dtype=dtype),
            torch.tensor([1, 2, 3, 7], dtype=integer).view(dtype),  # (the smallest subnormals)
            payloads.to(integer).view(dtype),
            torch.linspace(1, 4, 13, dtype=dtype),
        ]
    )
    function = _mkl_sqrt.tile_sqrt(dtype)
    assert function is not None
    expected = torch.sqrt(values).view(integer)
    for length in range(1, values.numel() + 1):
        got = torch.empty(length, dtype=dtype)
        function(length, values.data_ptr(), got.data_ptr())
        assert torch.equal(got.view(integer), expected[:length]), length
