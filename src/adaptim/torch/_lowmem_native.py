"""The native CPU loop for memory-light states: decode, update and encode in registers.

:mod:`._native` compiles a recorded rule into one C loop over every tensor of
a partition. This module renders the same rule for partitions whose state is
kept in bfloat16 or in block-wise 8 bits (:mod:`._lowmem`), so that a step
reads and writes each state value in its own narrow format, once, with no
float32 copy of any tensor:

* **bf16**: an entry is loaded by widening its 16 bits to float32 and stored
  by stochastic rounding with the counter-based bits of
  :func:`._lowmem.rounding_noise`: element ``i`` adds ``h(i xor k) >> 16``
  below bf16's last mantissa bit, where ``k`` is
  :func:`._lowmem.stream_key` of (parameter position, entry, step). The
  bits are exactly those of the reference path.
* **8 bits**: the loop walks each tensor in the quantisation blocks of 256
  values (the engine's work items, :data:`._native.BLOCK`, are a multiple of
  256 and start at multiples of it, so a block never straddles two items).
  A block's codes are decoded as ``code[q]·a`` from its float32 maximum
  ``a``, the rule runs on the 256 values, the new values wait in a 1 KiB
  buffer on the stack, and are encoded once their new maximum is known: the
  nearest code is the number of the 255 midpoints between code points that
  lie below ``x/a`` (a branch-free binary search of 8 comparisons, the
  index ``torch.bucketize`` gives), and a positive second moment never
  takes code 0.0, as in :func:`._lowmem.quantize_blockwise`.

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
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaptim.torch import _lowmem, _native
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


def _table(name: str, values: torch.Tensor) -> str:
    """A static float table, each value as an exact hexadecimal literal."""
    items = ", ".join(
        "INFINITY" if math.isinf(v) else f"{float(v).hex()}f" for v in values.tolist()
    )
    return f"static const float {name}[{values.numel()}] = {{{items}}};"


#: Encoding buckets: ``|x|`` by its exponent and top 7 mantissa bits (a bucket is at
#: most 0.8% of its value wide, under the 1.4% between neighbouring thresholds, so it
#: holds at most one), from 2⁻²³ (below every nonzero threshold) up to 1: 12 KiB of
#: table per code, which stays in the L1 cache beside the streamed tensors.
_LOW_EXPONENT = 127 - 23
_BUCKET_SHIFT = 16
_FIRST = _LOW_EXPONENT << 7
_BUCKETS = (0x3F800000 >> _BUCKET_SHIFT) - _FIRST + 1
#: No threshold inside a bucket: a value of the low 16 bits no ``x`` reaches.
_NONE = 1 << 16


def positive_thresholds(signed: bool) -> np.ndarray:
    """The thresholds above 0; the signed code's negative ones are the mirror of all but the last."""
    thresholds = _lowmem._thresholds(signed).numpy()
    positive = thresholds[thresholds > 0]
    if signed:  # 127 below 0, 128 above (the last lies between the largest point and 1)
        assert np.array_equal(-thresholds[:127][::-1], positive[:127]) and positive.size == 128
    return positive


def bucket_table(signed: bool) -> np.ndarray:
    """Per bucket of magnitudes: the positive thresholds below it, and the low bits of the one inside.

    A bucket holds the magnitudes ``u`` whose top 16 bits (sign cleared) are
    the same, ``[lo, hi)``. ``base`` counts the positive thresholds below
    ``lo``; at most one, ``t``, lies inside, with the bucket's top bits, so
    comparing ``u`` with ``t`` is comparing their low 16 bits. An entry is
    ``base | low(t) << 8``, with ``low(t) = 2¹⁶`` (above any) where none lies
    inside. Then, with ``lt = base + (low(u) > low(t))`` thresholds below
    ``u`` and ``le = base + (low(u) ≥ low(t))`` at or below it, the nearest
    code of ``x`` is ``lt`` (unsigned code, ``x ≥ 0``), ``127 + lt``
    (signed, ``x ≥ 0``: the 127 negative thresholds lie below), or
    ``127 - min(le, 127)`` (signed, ``x = -u``: the negative thresholds below
    ``-u`` are the mirrors of those at or above ``u``). Bucket 0 reaches down
    to 0 and the last up past 1: neither holds a threshold.
    """
    positive = positive_thresholds(signed)
    starts = ((np.arange(_BUCKETS, dtype=np.int64) + _FIRST) << _BUCKET_SHIFT).astype(np.int32)
    lo = starts.view(np.float32).copy()
    lo[0] = 0.0
    hi = np.append(lo[1:], np.float32(2.0))
    base = np.searchsorted(positive, lo, side="left")
    inside = np.searchsorted(positive, hi, side="left") - base
    assert int(inside.max()) <= 1 and inside[0] == 0 and inside[-1] == 0
    low = (np.append(positive, np.float32(1.0))[base].view(np.int32) & 0xFFFF).astype(np.int64)
    return (base + (np.where(inside == 1, low, _NONE) << 8)).astype(np.int32)


def _int_table(name: str, values: np.ndarray) -> str:
    return (
        f"static const int32_t {name}[{values.size}] = {{{', '.join(map(str, values.tolist()))}}};"
    )


def _quantizer(suffix: str, signed: bool) -> list[str]:
    """``quantize_<suffix>``: a block's new maximum and its codes (nearest, as the reference).

    ``x/a`` lies in [-1, 1] (a is the largest magnitude), so no clamp is needed.
    """
    if signed:
        position = [
            "      const int32_t le = (e & 255) + (low >= t), m = le < 127 ? le : 127;",
            "      const int32_t pos = 127 + lt - neg * (lt + m);",
        ]
    else:  # (-0.0 is the only negative value a non-negative entry can hold: code 0)
        position = [
            "      int32_t pos = lt * (neg ^ 1);",
            "      pos += (x > 0.0f) & (pos == 0);  /* never 0.0 */",
        ]
    return [
        f"static inline void quantize_{suffix}(const float* restrict v, int64_t m,",
        "                                    uint8_t* restrict q, float* restrict absmax) {",
        # (the largest magnitude as the largest integer of the sign-cleared bits:
        # the same order for floats, and a vectorised reduction without branches)
        "  uint32_t top = 0;",
        "  #pragma omp simd reduction(max:top)",
        "  for (int64_t j = 0; j < m; ++j) {",
        "      uint32_t u; memcpy(&u, &v[j], 4); u &= 0x7FFFFFFFu; top = u > top ? u : top;",
        "  }",
        "  float a; memcpy(&a, &top, 4);",
        "  *absmax = a;",
        "  const float d = a > 0.0f ? a : 1.0f;",
        "  #pragma omp simd",
        "  for (int64_t j = 0; j < m; ++j) {",
        "      const float x = v[j] / d;",
        "      uint32_t bits; memcpy(&bits, &x, 4);",
        f"      int32_t b = (int32_t)((bits & 0x7FFFFFFFu) >> {_BUCKET_SHIFT}) - {_FIRST};",
        f"      b = b < 0 ? 0 : (b > {_BUCKETS - 1} ? {_BUCKETS - 1} : b);",
        "      const int32_t neg = (int32_t)(bits >> 31), low = (int32_t)(bits & 0xFFFFu);",
        f"      const int32_t e = BUCKET_{suffix}[b], t = e >> 8;",
        "      const int32_t lt = (e & 255) + (low > t);",
        *position,
        "      q[j] = (uint8_t)pos;",
        "  }",
        "}",
    ]


_HEADER = [
    "#include <math.h>",
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
        *_lowmem.MIX_MULTIPLIERS
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


class _Source(_native._Source):
    """Renders a structure whose state inputs are bf16 or 8-bit (``encodings``, by input name)."""

    def __init__(self, structure: Structure, encodings: Mapping[str, str]) -> None:
        super().__init__(structure, torch.float32)
        self.encodings = encodings

    def signed(self, name: str) -> bool:
        return name.removeprefix("state_") not in _lowmem.NONNEGATIVE_STATE

    def source(self) -> str:
        structure = self.structure
        inputs = structure.inputs
        kinds = [self.encodings.get(name, "element") for name in inputs]
        written = {name for name, _ in structure.outputs}
        refs = {a for _, args in structure.ops for a in args}
        refs |= {ref for _, ref in structure.outputs}
        quantized = [n for n, k in zip(inputs, kinds, strict=True) if k == "q8"]
        rounded = [n for n, k in zip(inputs, kinds, strict=True) if k == "bf16"]
        body = [
            "  #pragma omp parallel for num_threads(threads) schedule(static)",
            "  for (int64_t b = 0; b < blocks; ++b) {",
            "    const int64_t t = block_tensor[b];",
        ]
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
        for j, name in enumerate(rounded):
            body.append(f"    const uint32_t key_{name} = keys[{j} * n + t] ^ salt;")
        body.append("    const int64_t end = block_end[b];")
        indent = "    "
        begin, stop = "block_begin[b]", "end"
        if quantized:  # one quantisation block at a time
            body.append("    for (int64_t c = block_begin[b]; c < end; c += QBLOCK) {")
            body.append("      const int64_t cend = c + QBLOCK < end ? c + QBLOCK : end;")
            for name in quantized:
                body.append(f"      const T a_{name} = amax_{name}[c / QBLOCK];")
                if name in written:
                    body.append(f"      T new_{name}[QBLOCK];")
            indent, begin, stop = "      ", "c", "cend"
        body.append(f"{indent}#pragma omp simd")
        body.append(f"{indent}for (int64_t i = {begin}; i < {stop}; ++i) {{")
        inner = indent + "  "
        for index, (name, kind) in enumerate(zip(inputs, kinds, strict=True)):
            if ("input", index) not in refs:
                continue
            if kind == "bf16":
                value = f"bf16_load({name}[i])"
            elif kind == "q8":
                value = f"CODE_{'S' if self.signed(name) else 'U'}[{name}[i]] * a_{name}"
            else:
                value = f"{name}[i]"
            body.append(f"{inner}const T in{index} = {value};")
        for index, (op, _) in enumerate(structure.ops):
            kind = "int" if op in _native._COMPARE or op in ("and", "or") else "T"
            body.append(f"{inner}const {kind} v{index} = {self.node(index, 'element')};")
        for name, ref in structure.outputs:
            value = self.text(ref, "element")
            kind = self.encodings.get(name, "element")
            if kind == "bf16":
                body.append(
                    f"{inner}{name}[i] = bf16_round({value}, mix32((uint32_t)i ^ key_{name}) >> 16);"
                )
            elif kind == "q8":
                body.append(f"{inner}new_{name}[i - c] = {value};")
            else:
                body.append(f"{inner}{name}[i] = {value};")
        body.append(f"{indent}}}")
        if quantized:
            for name in quantized:
                if name in written:
                    suffix = "S" if self.signed(name) else "U"
                    body.append(
                        f"      quantize_{suffix}(new_{name}, cend - c, {name} + c, "
                        f"&amax_{name}[c / QBLOCK]);"
                    )
            body.append("    }")
        body += ["  }", "}"]
        lines = list(_HEADER)
        for suffix, signed in (("S", True), ("U", False)):
            if any(self.signed(n) == signed for n in quantized):
                lines.append(_table(f"CODE_{suffix}", _lowmem.dynamic_code(signed)))
                lines.append(_int_table(f"BUCKET_{suffix}", bucket_table(signed)))
                lines += _quantizer(suffix, signed)
        lines += [
            "void adaptim_step(int64_t n, void* const* buffers, const double* s, int64_t blocks,",
            "                  const int64_t* block_tensor, const int64_t* block_begin,",
            "                  const int64_t* block_end, int threads, const uint32_t* keys,",
            "                  uint32_t salt) {",
        ]
        lines += [f"  const T s{i} = (T)s[{i}];" for i in range(structure.slot_count)]
        lines += [f"  const T r{i} = (T)(1.0 / s[{i}]);" for i in sorted(self.reciprocals)]
        return "\n".join(lines + body) + "\n"


def generate_source(structure: Structure, encodings: Mapping[str, str]) -> str:
    """The C source of ``structure`` with the state inputs stored as ``encodings`` says."""
    return _Source(structure, encodings).source()


@dataclass
class Kernel:
    """A loaded native step over encoded state, and its source (``Optimizer.plans()``)."""

    source: str
    function: Any

    def __call__(
        self,
        pointers: int,
        count: int,
        slots: Sequence[float],
        table: _native.BlockTable,
        keys: int,
        salt: int,
    ) -> None:
        self.function(
            count,
            pointers,
            (ctypes.c_double * len(slots))(*slots),
            *table.arguments,
            torch.get_num_threads(),
            keys,
            salt,
        )


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
            # (the plain kernel's arguments up to ``threads``, then the rounding keys and salt)
            function.argtypes = [*function.argtypes[:8], ctypes.c_void_p, ctypes.c_uint32]
            kernel = Kernel(source, function)
            _KERNELS[key] = kernel
    return kernel


@dataclass
class Buffers:
    """A partition's pointer array (grads filled each step) and its rounding keys."""

    pointers: np.ndarray
    keys: np.ndarray


def _buffers(
    fmt: _lowmem.StateFormat, partition: Partition, groups: list[dict[str, Any]]
) -> Buffers:
    keys = list(partition.tensor_keys)
    quantized = [k for k, e in zip(keys, partition.encodings, strict=True) if e == "q8"]
    rounded = [k for k, e in zip(keys, partition.encodings, strict=True) if e == "bf16"]
    roles = [partition.params, partition.params, *partition.state_lists[: len(keys)]]
    roles += [[s[k + _lowmem.ABSMAX_SUFFIX] for s in partition.states] for k in quantized]
    pointers = np.array([t.data_ptr() for role in roles for t in role], dtype=np.int64)
    positions = [fmt.position(p, groups) for p in partition.params]
    salts = [_lowmem.entry_salt(fmt.seed, j, k) for k in rounded for j in positions]
    return Buffers(pointers, np.array(salts or [0], dtype=np.uint32))


def run(
    fmt: _lowmem.StateFormat,
    groups: list[dict[str, Any]],
    partition: Partition,
    traced: Traced,
    grads: list[torch.Tensor],
    plans: list[Any],
) -> str | None:
    """Step an encoded partition natively; ``None`` when the reference path must (says why)."""
    structure = traced.structure
    params = partition.params
    if structure.created:
        partition.native_refused = "the rule creates state on this step"
        return None
    if params[0].dtype != torch.float32 or not partition.native_ok:
        partition.native_refused = "encoded state needs contiguous float32 CPU parameters"
        return None
    if not all(g.is_contiguous() for g in grads):
        partition.native_refused = "a gradient is not contiguous"
        return None
    names = {
        f"state_{k}": e for k, e in zip(partition.tensor_keys, partition.encodings, strict=True)
    }
    try:
        kernel = kernel_for(structure, {n: e for n, e in names.items() if e in ENCODED})
    except _native.NativeUnavailable as why:
        partition.native_refused = str(why)
        return None
    buffers = partition.lowmem
    if buffers is None:
        buffers = partition.lowmem = _buffers(fmt, partition, groups)
    count = len(params)
    buffers.pointers[count : 2 * count] = [g.data_ptr() for g in grads]
    step = int(partition.step + 1)
    kernel(
        buffers.pointers.ctypes.data,
        count,
        traced.slots,
        partition.block_table(),
        buffers.keys.ctypes.data,
        _lowmem.step_salt(step),
    )
    plans.append(kernel)
    return "native"
