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
ATen uses), so the result agrees with the per-tensor reference path to
float32 rounding, not to the bit: where the two values of a state entry
differ in their last float32 bit, the stochastic rounding or the nearest code
can land on the neighbouring bf16 value or code (``tests/test_lowmem.py``
measures how often). Peak memory is the state itself: no temporary larger
than a block per thread.

What this loop does not take stays on the reference path: parameters other
than contiguous float32 on the CPU, rules with whole-tensor norms or 0-d
per-tensor state, a step that creates state, and machines without a C
compiler.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaptim.torch import _lowmem, _native, _native_source, _rounding
from adaptim.torch import _lowmem_codes as _codes
from adaptim.torch import _lowmem_segments as _segments
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


#: The loop over work items when a state is 8-bit: each thread takes an equal share of
#: the quantisation blocks of all tensors (a static schedule of work items gave one of
#: two threads 56% of the MLP's 8-bit elements), walking the items to find its range.
_BALANCED = [
    "  int64_t total = 0;",
    "  for (int64_t b = 0; b < blocks; ++b) total += (block_end[b] - block_begin[b] + QBLOCK - 1) / QBLOCK;",
    "  #pragma omp parallel num_threads(threads)",
    "  {",
    "  const int64_t share = omp_get_num_threads(), me = omp_get_thread_num();",
    "  const int64_t lo = total * me / share, hi = total * (me + 1) / share;",
    "  int64_t seen = 0, count = 0;",
    "  for (int64_t b = 0; b < blocks && seen < hi; seen += count, ++b) {",
    "    count = (block_end[b] - block_begin[b] + QBLOCK - 1) / QBLOCK;",
    "    if (seen + count <= lo) continue;",
    "    const int64_t t = block_tensor[b];",
]

_HEADER = [
    "#include <math.h>",
    "#include <omp.h>",
    "#include <stdint.h>",
    "#include <string.h>",
    "typedef float T;",
    f"enum {{ QBLOCK = {_lowmem.BLOCK} }};",
    "static inline T max_t(T a, T b) { return (a > b || a != a) ? a : b; }",
    "static inline T clip_t(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }",
    "static inline T lerp_t(T a, T b, T w) { return w < (T)0.5 ? fmaf(w, b - a, a)"
    " : fmaf(w - (T)1, b - a, b); }",
    "static inline uint32_t mix32(uint32_t x) {",
    "  x ^= x >> 16; x *= {}u; x ^= x >> 15; x *= {}u; return x ^ (x >> 16);".format(
        *_rounding.MIX_MULTIPLIERS
    ),
    "}",
    "static inline float bf16_load(uint16_t h) {",
    "  const uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f;",
    "}",
    "static inline uint16_t bf16_round(float f, uint32_t noise) {",
    "  uint32_t b; memcpy(&b, &f, 4);",
    "  return f != f ? (uint16_t)0x7FC0 : (uint16_t)((b + noise) >> 16);",
    "}",
]


def rounding_streams(rounded: Sequence[str]) -> list[str]:
    """The hashes a kernel draws per element for the bf16 entries ``rounded``, in order.

    One per :func:`._rounding.rounding_stream`: partners share their entry's.
    """
    return list(dict.fromkeys(map(_rounding.rounding_stream, rounded)))


class _Source(_native._Source):
    """Renders a structure whose state inputs are bf16 or 8-bit (``encodings``, by input name)."""

    def __init__(self, structure: Structure, encodings: Mapping[str, str]) -> None:
        super().__init__(structure, torch.float32)
        self.encodings = encodings

    def signed(self, name: str) -> bool:
        return name.removeprefix("state_") not in _lowmem.NONNEGATIVE_STATE

    def suffix_of(self, name: str) -> str:
        """The code an 8-bit entry uses: ``S`` (signed) or ``U`` (non-negative)."""
        return "S" if self.signed(name) else "U"

    def source(self) -> str:
        structure = self.structure
        inputs = structure.inputs
        kinds = [self.encodings.get(name, "element") for name in inputs]
        written = {name for name, _ in structure.outputs}
        refs = {a for _, args in structure.ops for a in args}
        refs |= {ref for _, ref in structure.outputs}
        quantized = [n for n, k in zip(inputs, kinds, strict=True) if k == "q8"]
        rounded = [n for n, k in zip(inputs, kinds, strict=True) if k == "bf16"]
        streams = rounding_streams([n.removeprefix("state_") for n in rounded])
        # 8 bits: each thread an equal share of all tensors' quantisation blocks; else
        # each thread one equal range of the concatenated elements (as _native's)
        body = list(_BALANCED) if quantized else list(_native_source.BALANCED_OPEN)
        ctypes_of = {"element": "T", "bf16": "uint16_t", "q8": "uint8_t"}
        for index, (name, kind) in enumerate(zip(inputs, kinds, strict=True)):
            ctype = ctypes_of[kind]
            qualifier = "" if name in written else "const "
            body.append(
                f"    {qualifier}{ctype}* restrict {name} = ({ctype}*)buffers[{index} * n + t];"
            )
        for j, name in enumerate(quantized):
            body.append(
                f"    float* restrict amax_{name} = (float*)buffers[{len(inputs) + j} * n + t];"
            )
        for j, stream in enumerate(streams):
            body.append(f"    const uint32_t key_{stream} = keys[{j} * n + t] ^ salt;")
        if quantized:
            body.append("    const int64_t end = block_end[b];")
        else:
            body += _native_source.BALANCED_RANGE
        indent = "    "
        begin, stop = "begin", "end"
        if quantized:  # one quantisation block at a time, of this thread's share
            body.append(
                "    const int64_t until = hi - seen < count ? block_begin[b] + (hi - seen) * QBLOCK"
                " : end;"
            )
            body.append(
                "    for (int64_t c = block_begin[b] + (lo > seen ? lo - seen : 0) * QBLOCK;"
                " c < until; c += QBLOCK) {"
            )
            body.append("      const int64_t cend = c + QBLOCK < end ? c + QBLOCK : end;")
            for index, name in enumerate(inputs):
                if name not in quantized:
                    continue
                if ("input", index) in refs:
                    body.append(f"      T dec_{name}[QBLOCK];")
                    body.append(
                        f"      decode_{self.suffix_of(name)}({name} + c, cend - c, "
                        f"amax_{name}[c / QBLOCK], dec_{name});"
                    )
                if name in written:
                    body.append(f"      T new_{name}[QBLOCK];")
                    body.append(f"      uint32_t top_{name} = 0;")
            indent, begin, stop = "      ", "c", "cend"
        tops = [f"top_{name}" for name in quantized if name in written]
        reduction = f" reduction(max:{', '.join(tops)})" if tops else ""
        body.append(f"{indent}#pragma omp simd{reduction}")
        body.append(f"{indent}for (int64_t i = {begin}; i < {stop}; ++i) {{")
        inner = indent + "  "
        for index, (name, kind) in enumerate(zip(inputs, kinds, strict=True)):
            if ("input", index) not in refs:
                continue
            if kind == "bf16":
                value = f"bf16_load({name}[i])"
            elif kind == "q8":
                value = f"dec_{name}[i - c]"
            else:
                value = f"{name}[i]"
            body.append(f"{inner}const T in{index} = {value};")
        for index, (op, _) in enumerate(structure.ops):
            kind = "int" if op in _native._COMPARE or op in ("and", "or") else "T"
            body.append(f"{inner}const {kind} v{index} = {self.node(index, 'element')};")
        # One hash per element and stream: its top half rounds one entry, its low
        # half the entry's partner (``_state_codes.ROUNDING_PARTNERS``).
        hashed = {
            _rounding.rounding_stream(name.removeprefix("state_"))
            for name, _ in structure.outputs
            if self.encodings.get(name) == "bf16"
        }
        for stream in streams:
            if stream in hashed:
                body.append(
                    f"{inner}const uint32_t h_{stream} = mix32((uint32_t)i ^ key_{stream});"
                )
        for name, ref in structure.outputs:
            value = self.text(ref, "element")
            kind = self.encodings.get(name, "element")
            if kind == "bf16":
                key = name.removeprefix("state_")
                stream = _rounding.rounding_stream(key)
                noise = (
                    f"h_{stream} >> 16" if _rounding.noise_shift(key) else f"h_{stream} & 0xFFFFu"
                )
                body.append(f"{inner}{name}[i] = bf16_round({value}, {noise});")
            elif kind == "q8":  # (and the block's largest magnitude, as its bits)
                body.append(f"{inner}const T o_{name} = {value};")
                body.append(f"{inner}new_{name}[i - c] = o_{name};")
                body.append(
                    f"{inner}{{ uint32_t u; memcpy(&u, &o_{name}, 4); u &= 0x7FFFFFFFu;"
                    f" top_{name} = u > top_{name} ? u : top_{name}; }}"
                )
            else:
                body.append(f"{inner}{name}[i] = {value};")
        body.append(f"{indent}}}")
        if quantized:
            for name in quantized:
                if name in written:
                    body.append(
                        f"      quantize_{self.suffix_of(name)}(new_{name}, cend - c, top_{name}, "
                        f"{name} + c, "
                        f"&amax_{name}[c / QBLOCK]);"
                    )
            body.append("    }")
            body.append("  }")  # (the loop over work items)
        body += ["  }"] if quantized else ["  }", "  }"]  # (the parallel region)
        # (the step counters' pointers follow the block maxima's)
        body += [*_native_source.count_steps(len(inputs) + len(quantized)), "}"]
        lines = [*_HEADER, *_native_source._RANGES]
        if quantized:
            lines += _codes.VBMI_HEADER
        for suffix, signed in (("S", True), ("U", False)):
            if any(self.signed(n) == signed for n in quantized):
                lines += _segments.code_functions(suffix, signed)
        lines += [
            "void adaptim_step(int64_t n, void* const* buffers, const double* s, int64_t blocks,",
            "                  const int64_t* block_tensor, const int64_t* block_begin,",
            "                  const int64_t* block_end, int threads, int step_kind,",
            "                  const int64_t* offsets, const uint32_t* keys, uint32_t salt) {",
        ]
        lines += [f"  const T s{i} = (T)s[{i}];" for i in range(structure.slot_count)]
        lines += [f"  const T r{i} = (T)(1.0 / s[{i}]);" for i in sorted(self.reciprocals)]
        return "\n".join(lines + body) + "\n"


def generate_source(structure: Structure, encodings: Mapping[str, str]) -> str:
    """The C source of ``structure`` with the state inputs stored as ``encodings`` says."""
    return _Source(structure, encodings).source()


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
_KERNELS: dict[tuple[Structure, tuple[tuple[str, str], ...]], Kernel] = {}


def kernel_for(structure: Structure, encodings: Mapping[str, str]) -> Kernel:
    """The kernel of ``structure`` with ``encodings``: from memory, from disk, or compiled now."""
    key = (structure, tuple(sorted(encodings.items())))
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    why = supports(structure)
    if why is not None:
        raise _native.NativeUnavailable(why, structural=True)
    with _lock:
        kernel = _KERNELS.get(key)
        if kernel is None:
            source = generate_source(structure, encodings)
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
        kernel = kernel_for(structure, {n: e for n, e in names.items() if e in ENCODED})
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
