"""The native CPU loop for memory-light states: decode, update and encode in registers.

:mod:`._native` compiles a recorded rule into one C loop over every tensor of
a partition. This module renders the same rule for partitions whose state is
kept in bfloat16 or in block-wise 8 bits (:mod:`._lowmem`), so that a step
reads and writes each state value in its own narrow format, once, with no
float32 copy of any tensor:

* **bf16**: an entry is loaded by widening its 16 bits to float32 and stored
  by stochastic rounding with the counter-based bits of
  :func:`._rounding.rounding_noise`: element ``i`` adds 16 bits of ``h(i
  xor k)`` below bf16's last mantissa bit, where ``k`` is
  :func:`._rounding.stream_key` of (parameter position, entry, step). One
  hash per element serves two entries (``exp_avg`` takes its top half,
  ``exp_avg_sq`` its low half: ``ROUNDING_PARTNERS``), which halves the
  integer work that dominates the loop on a cached (small) model. The bits
  are exactly those of the reference path. Each thread takes one equal
  range of the concatenated elements, as in :mod:`._native`.
* **8 bits**: the loop walks each tensor in the quantisation blocks of 256
  values (the engine's work items, :data:`._native.BLOCK`, are a multiple of
  256 and start at multiples of it, so a block never straddles two items;
  each thread takes an equal share of all the blocks).
  A block's codes are decoded as ``code[q]·a`` from its float32 maximum
  ``a`` into a 1 KiB buffer on the stack (with AVX-512 VBMI by byte
  permutations in registers, not gathers: :func:`._lowmem_codes.decoder`),
  the rule runs on the 256 values and finds their new maximum as it goes,
  the new values wait in another 1 KiB buffer, and are encoded: the
  nearest code is the number of the 255 midpoints between code points that
  lie below ``x/a`` (the index ``torch.bucketize`` gives, found in
  registers by the decade's even grid, :mod:`._lowmem_segments`, or with
  one table look-up by the float's top bits, :mod:`._lowmem_codes`), and a
  positive second moment never takes code 0.0, as in
  :func:`._lowmem.quantize_blockwise`.

The arithmetic of the rule is :mod:`._native`'s (float32, the multiply-adds
ATen uses). With 8 bits it is the per-tensor reference path's (``foreach=False``)
bit for bit: a division by a step's scalar divides, as ATen's ``tensor /
float`` does (not a multiply by the reciprocal), and ``sqrt`` is
``torch.sqrt``'s, MKL's algorithm written in C (:mod:`._mkl_sqrt`, 16 lanes
at a time), taken for the whole block between two passes of the update loop
(where :func:`._mkl_sqrt.emulated` says the C gives MKL's bits; elsewhere
``sqrtf``, correctly rounded, and the loop agrees to float32 rounding). bf16
agrees with the reference path to float32 rounding, not to the bit: where the
two values of a state entry differ in their last float32 bit, the stochastic
rounding can land on the neighbouring bf16 value (``tests/test_lowmem.py``
measures how often). Peak memory is the state itself: no temporary larger
than a block per thread.

What this loop does not take stays on the reference path: parameters other
than contiguous float32 on the CPU, rules with whole-tensor norms or 0-d
per-tensor state, a step that creates state, and machines without a C
compiler.

The C text is written by :mod:`._lowmem_native_source`; this module decides
what the loop takes, compiles and caches kernels, and binds and runs them.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaptim.torch import _lowmem, _lowmem_native_source, _lowmem_vector, _native, _rounding
from adaptim.torch._lowmem_native_source import _BALANCED as _BALANCED
from adaptim.torch._lowmem_native_source import _HEADER as _HEADER
from adaptim.torch._lowmem_native_source import _Source as _Source
from adaptim.torch._lowmem_native_source import generate_source as generate_source
from adaptim.torch._lowmem_native_source import rounding_streams as rounding_streams
from adaptim.torch._trace import Structure

if TYPE_CHECKING:
    from adaptim.torch._engine import Partition
    from adaptim.torch._trace import Traced

#: How an element-wise entry is stored, for the engine's layout: ``element`` (the
#: parameter's dtype, as without a format), ``bf16`` or ``q8``.
ENCODED = frozenset({"bf16", "q8"})

assert _native.BLOCK % _lowmem.BLOCK == 0  # work items never split a quantisation block


def kind_of(
    fmt: _lowmem.StateFormat,
    state: Mapping[str, Any],
    name: str,
    value: torch.Tensor,
    p: torch.Tensor,
) -> str | None:
    """How the entry ``name`` of ``p``'s state is laid out under ``fmt``; ``None``: reference path.

    A plain entry (an 8-bit optimizer's small tensor, or ``state_dtype``
    equal to the parameter's) is ``element`` only where the reference path
    would compute and store it in the parameter's own dtype.
    """
    if value.shape != p.shape or value.stride() != p.stride() or value.device != p.device:
        return None
    if value.dtype == torch.uint8:
        absmax = state.get(name + _lowmem.ABSMAX_SUFFIX)
        blocks = -(-p.numel() // _lowmem.BLOCK)
        ok = (
            fmt.quantizes(p)
            and isinstance(absmax, torch.Tensor)
            and absmax.dtype == torch.float32
            and absmax.shape == (blocks,)
            and absmax.device == p.device
            and absmax.is_contiguous()
        )
        return "q8" if ok else None
    if fmt.dtype == torch.bfloat16:
        return "bf16" if value.dtype == torch.bfloat16 else None
    plain = value.dtype == p.dtype and fmt.working_dtype(p) == p.dtype
    return "element" if plain and not fmt.quantizes(p) else None


def supports(structure: Structure) -> str | None:
    """Why this loop cannot run ``structure``, or ``None``."""
    why = _native.supports(structure)
    if why is not None:
        return why
    if structure.per_tensor_inputs or structure.per_tensor_nodes():
        return "per-tensor values (norms, 0-d state) with an encoded state"
    return None


@dataclass
class Kernel:
    """A loaded native step over encoded state, and its source (``Optimizer.plans()``).

    ``function`` takes :class:`._native.Kernel`'s arguments (called through
    :class:`._partition.NativeLaunch`, the pointer table holding the block
    maxima after the state), then the rounding keys and this step's salt.
    """

    source: str
    function: Any


_lock = threading.Lock()
_KERNELS: dict[tuple[Structure, tuple[tuple[str, str], ...], bool, bool], Kernel] = {}


def stays_in_cache(partition: Partition) -> bool:
    """Whether a step of ``partition`` stays in the caches: under ``PREFETCH_FROM`` blocks.

    The kernel's own test of the same count (``far``) turns on the look-ahead.
    """
    blocks = sum(-(-p.numel() // _lowmem.BLOCK) for p in partition.params)
    return blocks < _lowmem_native_source.PREFETCH_FROM


def kernel_for(structure: Structure, encodings: Mapping[str, str], in_cache: bool = True) -> Kernel:
    """The kernel of ``structure`` with ``encodings``: from memory, from disk, or compiled now.

    ``in_cache``: for partitions whose steps stay in the caches (:func:`stays_in_cache`).
    """
    # (the loop's form is part of the key: a test renders both in one process)
    key = (
        structure,
        tuple(sorted(encodings.items())),
        _lowmem_native_source.EXACT_8BIT,
        _lowmem_vector.VECTOR_UPDATE and in_cache,
    )
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    why = supports(structure)
    if why is not None:
        raise _native.NativeUnavailable(why, structural=True)
    with _lock:
        kernel = _KERNELS.get(key)
        if kernel is None:
            source = generate_source(structure, encodings, in_cache)
            function: Any = _native._load(source)
            # (the plain kernel's arguments, then the rounding keys and salt)
            function.argtypes = [*function.argtypes, ctypes.c_void_p, ctypes.c_uint32]
            kernel = Kernel(source, function)
            _KERNELS[key] = kernel
    return kernel


@dataclass
class Bound:
    """What a partition's steady steps reuse: the structure's kernel and the rounding keys."""

    structure: Structure
    kernel: Kernel
    keys: np.ndarray
    #: The address of ``keys`` (a kernel argument).
    address: int


def _rounding_keys(
    fmt: _lowmem.StateFormat, partition: Partition, groups: list[dict[str, Any]]
) -> np.ndarray:
    """Per hash the kernel draws (:func:`rounding_streams`) and tensor: the entry's salt."""
    rounded = [
        k for k, e in zip(partition.tensor_keys, partition.encodings, strict=True) if e == "bf16"
    ]
    positions = [fmt.position(p, groups) for p in partition.params]
    salts = [
        _rounding.entry_salt(fmt.seed, j, k) for k in rounding_streams(rounded) for j in positions
    ]
    return np.array(salts or [0], dtype=np.uint32)


def _bind(
    fmt: _lowmem.StateFormat,
    groups: list[dict[str, Any]],
    partition: Partition,
    structure: Structure,
) -> Bound | None:
    """The kernel of ``structure`` on ``partition``; ``None`` (and why, on the partition) if none."""
    if structure.created:
        partition.native_refused = "the rule creates state on this step"
        return None
    if partition.params[0].dtype != torch.float32 or not partition.native_ok:
        partition.native_refused = "encoded state needs contiguous float32 CPU parameters"
        return None
    names = {
        f"state_{k}": e for k, e in zip(partition.tensor_keys, partition.encodings, strict=True)
    }
    try:
        encoded = {n: e for n, e in names.items() if e in ENCODED}
        kernel = kernel_for(structure, encoded, stays_in_cache(partition))
    except _native.NativeUnavailable as why:
        partition.native_refused = str(why)
        return None
    keys = _rounding_keys(fmt, partition, groups)
    return Bound(structure, kernel, keys, keys.ctypes.data)


def run(
    fmt: _lowmem.StateFormat,
    groups: list[dict[str, Any]],
    partition: Partition,
    traced: Traced,
    grads: list[torch.Tensor],
    plans: list[Any],
) -> str | None:
    """Step an encoded partition natively; ``None`` when the reference path must (says why).

    The gradients' pointers are ``partition.grad_ptrs`` (the engine's). A
    small model's step is mostly this call's fixed cost, so what does not
    change between steps is bound once (:class:`Bound`, and the partition's
    :class:`._partition.NativeLaunch`), and the kernel counts the ``step``
    tensors itself where the partition allows (``step_dtype``).
    """
    bound: Bound | None = partition.lowmem
    if bound is None or bound.structure is not traced.structure:
        bound = partition.lowmem = _bind(fmt, groups, partition, traced.structure)
        if bound is None:
            return None
    if not all(map(torch.Tensor.is_contiguous, grads)):
        partition.native_refused = "a gradient is not contiguous"
        return None
    salt = _rounding.step_salt(int(partition.step + 1))
    partition.launch(bound.kernel)(partition.grad_ptrs, traced.slots, bound.address, salt)
    plans.append(bound.kernel)
    return "native"
