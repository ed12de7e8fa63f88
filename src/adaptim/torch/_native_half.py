"""Native loops for float16 and bfloat16 parameters that give torch's CPU bits.

torch.optim's CPU default for half-precision parameters is its for-loop,
one ATen kernel per operation, each materialising a float16/bfloat16 tensor.
ATen's CPU kernels for these types widen every operand to float32 (the
"opmath" type), compute the whole operation there, with a Python scalar
operand converted once from double to float32, and round the result once to
the half type. The multi-tensor replay of a half recording
(:mod:`._replay`, ``Structure.half``) calls those same kernels, so it is
bit-identical to the for-loop; this module renders the same recording as one
C loop that does, element by element, what each of those kernels does:

* every recorded operation is computed in ``float`` and rounded to the half
  type (:math:`r(x)`, round to nearest even) where torch writes a tensor:
  :math:`v_k = r(f_k(v_{k-1}, \\ldots))`;
* the compound kernels round once: ``add(alpha=)`` is :math:`r(\\mathrm{fma}(\\alpha, b, a))`,
  ``addcmul`` :math:`r(\\mathrm{fma}(v b, c, a))`, ``addcdiv`` :math:`r(a + (v b) / c)`,
  ``lerp`` the fused multiply-add anchored at the nearer end (ATen's
  vectorised forms, which GCC contracts to fused multiply-adds);
* ``sqrt`` is the correctly rounded ``sqrtf`` (ATen's half ``sqrt`` widens and
  calls the float32 instruction, not MKL), then rounded: correctly rounded in
  the half type;
* a division by a slot is a true division (ATen's half kernel does not take the
  reciprocal as its float32 one does); a slot divided by an array is
  ``reciprocal`` then a multiplication, two roundings, as ``Tensor.__rtruediv__``;
* comparisons and ``where`` with a scalar see the scalar rounded to the half
  type, as ATen's comparison kernels cast it to the common dtype.

ATen's loops give the last elements of each of their chunks a scalar form that
differs for some operations (``add(alpha=)``, ``lerp``, ``maximum``); a rule
with one of them walks each tensor in ATen's segments and has two copies of its
loop, one per form, so that each segment runs one (computing both forms and
selecting per element doubled SGD-momentum's arithmetic).

The conversions, round to nearest even, written as integer and float
arithmetic GCC vectorises (its ``_Float16`` conversions stay scalar without
AVX512-FP16, and so do F16C's scalar intrinsics): float32 to
bfloat16 by adding ``0x7fff`` plus the lowest kept bit and truncating (NaN to
``0x7fc0`` as c10's ``round_to_nearest_even``); after each operation in place,
in float32's bits and without a NaN test (every NaN the loop computes keeps the
16 zero low bits of a bfloat16's payload, of the CPU's default NaN, or of a
slot's, made canonical by ``quiet``), and a rounded value is stored as its upper
half: five vector instructions a rounding, no more than AVX512-BF16's
``vcvtneps2bf16``, which reads subnormal inputs as zero (torch keeps them)
and so would need a check of its own; float32 to float16 by fields
(overflow to infinity, NaN to ``0x7e00``), and the rounding after each
operation in the float domain: adding and subtracting :math:`2^{e+13}`
(:math:`e` the exponent, at least float16's least normal one) leaves the float
rounded at float16's spacing by float's own round to nearest even. Where the
compiler targets AVX-512F or F16C, float16's vector-loop segments run first on
explicit vectors with the hardware conversions (:mod:`._native_half_vector`),
the loop above taking the rest and being the fallback elsewhere.
State stays in the parameter's dtype, where torch keeps it. ``tests/test_native_half.py``
checks every emitted operation against its ATen kernel on all 65,536 bit
patterns of the first operand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from adaptim.torch._native_half_vector import (
    F16_VECTOR,
    VECTOR_OPS,
    vector_expression,
    vector_then_scalar,
)
from adaptim.torch._native_source import _COMPARE, _expression, _Source
from adaptim.torch._trace import Ref, Structure

#: Half dtypes the default (``fused=None``) runs native, from its size on: where the
#: loop beats the multi-tensor replay (benchmarks/step_speed.py ``--dtype``, MLP, one
#: thread). bfloat16's conversions are a shift and a rounding add. float16's, with
#: AVX-512's conversion instructions (:mod:`._native_half_vector`), bring the loop to
#: about torch's fused SGD, Adagrad, Adam, AdamW and AMSGrad, not reliably above it
#: (four runs, one thread, loaded machine: 0.88-1.22x on the MLP and 1.5M/52; Adam,
#: AdamW and AMSGrad 0.88-0.99x in one run or another): float16 runs native with
#: ``fused=True`` only, where it is 1.4-3.6x torch's fastest for the algorithms
#: without a fused kernel.
AUTO_NATIVE_HALF = frozenset({torch.bfloat16})

#: Operations whose half form is checked against ATen (tests/test_native_half.py).
HALF_OPS = frozenset(
    {"add", "sub", "mul", "div", "neg", "abs", "sqrt", "maximum", "where", "clip"}
    | {"axpy", "addcmul", "addcdiv", "lerp", "pow", "gt", "lt", "ge", "le", "eq", "ne"}
    | {"and", "or"}
)
#: ``pow`` exponents with a checked form: ``x**0`` (Rprop's ones) and ``x**2``.
HALF_POWERS = frozenset({0.0, 2.0})

_BITS = (
    "typedef uint16_t H;",
    "static inline float bits_float(uint32_t u) { union { uint32_t u; float f; } v; v.u = u; return v.f; }",
    "static inline uint32_t float_bits(float f) { union { float f; uint32_t u; } v; v.f = f; return v.u; }",
    "static inline float quiet(float x) { return x != x ? NAN : x; }  /* a slot's NaN: canonical */",
)

_COMMON = (
    # ``mask ? a : b`` for a loop-invariant all-ones or zero mask, as bits (a ``?:`` between
    # two rounded values kept GCC from vectorising the loop)
    "static inline float pick(uint32_t mask, float a, float b) {",
    "  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));",
    "}",
    # ATen's clamp: max(x, lo), then min(., hi) (lo > hi gives hi); NaN stays NaN
    "static inline float lerp_s(float a, float b, float w) {",
    "  return w < 0.5f ? fmaf(w, b - a, a) : fmaf(-(b - a), 1.0f - w, b);",
    "}",
    "static inline float max_s(float a, float b) { return (a < b || b != b) ? b : a; }",
    "static inline float clamp_h(float x, float lo, float hi) {",
    "  const float y = x < lo ? lo : x;",
    "  return y > hi ? hi : y;",
    "}",
)

#: The storage type and conversions of each half dtype (``T``, the compute type, is float).
HELPERS: dict[torch.dtype, tuple[str, ...]] = {
    # widen: exponent and mantissa moved into place (subnormals: 2^-14 · (1 + m) − 2^-14);
    # narrow: round to nearest even, subnormals by adding 0.5 (whose ulp is float16's least
    # subnormal) so that float's own rounding does it, overflow to infinity, NaN to 0x7e00.
    torch.float16: (
        *_BITS,
        "static inline float widen(H h) {",
        "  const uint32_t magnitude = (uint32_t)(h & 0x7fffu) << 13;",
        "  const uint32_t normal = magnitude + (112u << 23);",
        "  const float tiny = bits_float(magnitude + (113u << 23)) - 0x1p-14f;",
        "  const uint32_t bits = magnitude >= (0x7c00u << 13) ? (magnitude | 0x7f800000u)",
        "                      : (magnitude < (1u << 23) ? float_bits(tiny) : normal);",
        "  return bits_float(bits | ((uint32_t)(h & 0x8000u) << 16));",
        "}",
        "static inline H narrow(float x) {",
        "  const uint32_t all = float_bits(x), sign = (all >> 16) & 0x8000u, u = all & 0x7fffffffu;",
        "  const float magic = bits_float(126u << 23);  /* 0.5: its ulp is float16's least subnormal */",
        "  const uint32_t small = float_bits(bits_float(u) + magic) - float_bits(magic);",
        "  const uint32_t normal = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;",
        "  const uint32_t big = u > 0x7f800000u ? 0x7e00u : 0x7c00u;",
        "  const uint32_t h = u >= (143u << 23) ? big : (u < (113u << 23) ? small : normal);",
        "  return (H)(h | sign);",
        "}",
        # round_h without the 16-bit detour: |x| in [2^e, 2^(e+1)) plus 2^(e+13) has float16's
        # spacing 2^(e-10) as its ulp, so the sum rounds |x| to float16 (even mantissa with
        # even mantissa); below 2^-14, 0.5 (ulp 2^-24, the least subnormal); above 65504
        # (65520 rounds up) infinity; infinity and NaN pass through the sum unchanged
        "static inline float round_h(float x) {",
        "  const uint32_t all = float_bits(x), sign = all & 0x80000000u, u = all ^ sign;",
        "  const uint32_t e = u & 0x7f800000u;",
        "  const float c = bits_float((e > (113u << 23) ? e : (113u << 23)) + (13u << 23));",
        "  const float r = (bits_float(u) + c) - c;",
        "  return bits_float(float_bits(r > 65504.0f ? (float)INFINITY : r) | sign);",
        "}",
        "static inline H narrow_rounded(float x) { return narrow(x); }",
        *_COMMON,
        *F16_VECTOR,
    ),
    torch.bfloat16: (
        *_BITS,
        "static inline float widen(H h) {",
        "  union { uint32_t u; float f; } v; v.u = (uint32_t)h << 16; return v.f;",
        "}",
        "static inline H narrow(float x) {",
        "  union { float f; uint32_t u; } v; v.f = x;",
        "  const uint32_t rounded = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;",
        "  return x != x ? (H)0x7fc0 : (H)rounded;",
        "}",
        # rounded in place, without a NaN test: every NaN the loop computes has 16 zero low
        # bits (its payload is a bfloat16's, or the CPU's default NaN, or a slot's, made
        # canonical at the top: ``quiet``), so the carry never leaves the mantissa
        "static inline float round_h(float x) {",
        "  const uint32_t u = float_bits(x);",
        "  return bits_float((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);",
        "}",
        "static inline H narrow_rounded(float x) { return (H)(float_bits(x) >> 16); }",
        *_COMMON,
    ),
}


def supports(structure: Structure) -> str | None:
    """Why ``structure`` cannot become a half-precision native kernel, or ``None``."""
    if aten_vector_elements() is None:
        capability = torch.backends.cpu.get_cpu_capability()
        return f"ATen's half-precision loops on a {capability} CPU are not modelled"
    unknown = sorted({op for op, _ in structure.ops} - HALF_OPS)
    if unknown:
        return f"no half-precision native form for {', '.join(unknown)}"
    if structure.created:
        return "the rule creates state on this step"
    if structure.per_tensor_nodes() or structure.per_tensor_inputs:
        return "per-tensor values (norms, 0-d state) have no half-precision native form"
    for op, args in structure.ops:
        if op == "pow" and (args[1][0] != "const" or float(args[1][1]) not in HALF_POWERS):
            return "a power other than 0 or 2 has no half-precision native form"
    return None


#: Operations whose ATen half kernel reads a scalar operand rounded to the half type
#: (``mul``, ``div``, ``addcmul``, ``addcdiv`` and ``lerp`` read it in float32).
_SCALAR_ROUNDED = frozenset({"add", "sub", "axpy", "clip", *_COMPARE})


def _round_scalar(text: str, ref: Ref) -> str:
    return f"round_h({text})"


def _form(tail: bool | None, scalar_loop: str, vector_loop: str) -> str:
    """ATen's scalar-loop or vector-loop form; ``None``: chosen per element by ``tail``'s mask."""
    if tail is None:
        return f"pick(tail, {scalar_loop}, {vector_loop})"
    return scalar_loop if tail else vector_loop


def expression(
    op: str,
    a: list[str],
    args: tuple[Ref, ...],
    rounded: Callable[[str, Ref], str] = _round_scalar,
    tail: bool | None = None,
) -> str:
    """One operation in float, as ATen's half kernel computes it before rounding.

    ``a`` are the rendered operands (float values, already rounded to the half
    type where they are arrays). Comparisons give an ``int``; everything else
    is rounded by the caller. ``rounded(text, ref)``: a scalar operand rounded to
    the half type (the kernel hoists it out of the loop). ``tail``: whether the
    element is in ATen's scalar loop (``None``: the C mask ``tail`` says so).
    """
    if op in _SCALAR_ROUNDED:  # ATen casts a scalar operand to the tensor's half type first
        a = [
            rounded(t, ref) if ref[0] in ("slot", "const") else t
            for t, ref in zip(a, args, strict=True)
        ]
    if op in _COMPARE:
        return f"{a[0]} {_COMPARE[op]} {a[1]}"
    if op == "sqrt":  # (not the float32 loop's sqrt, whatever form that one takes)
        return f"sqrtf({a[0]})"
    if op == "div":
        if args[0][0] in ("slot", "const"):  # s / x: reciprocal (rounded), then times s
            return f"round_h(1.0f / {a[1]}) * {a[0]}"
        return f"{a[0]} / {a[1]}"
    if op == "axpy" and args[2][0] in ("slot", "const"):
        # ATen's add(alpha=) for half types (its ufunc kernel in the half type itself):
        # the vector loop is fmadd(b, r(alpha), a) in float; the scalar loop, which takes
        # the last elements of each of its chunks (``tail``), rounds r(alpha)·b first.
        return _form(tail, f"{a[0]} + round_h({a[2]} * {a[1]})", f"fmaf({a[2]}, {a[1]}, {a[0]})")
    if op == "lerp" and args[2][0] in ("slot", "const"):
        # ATen's vector loop anchors at the nearer end as lerp_t; its scalar loop computes
        # b - (b - a)(1 - w) (a fused multiply-add too: the sign of a zero differs)
        return _form(tail, f"lerp_s({a[0]}, {a[1]}, {a[2]})", f"lerp_t({a[0]}, {a[1]}, {a[2]})")
    if op == "maximum":  # max(-0, +0): the vector loop gives the second, the scalar the first
        return _form(tail, f"max_s({a[0]}, {a[1]})", f"max_t({a[0]}, {a[1]})")
    if op == "clip":
        return f"clamp_h({a[0]}, {a[1]}, {a[2]})"
    if op == "addcdiv":
        return f"{a[0]} + ({a[3]} * {a[1]}) / {a[2]}"
    if op == "where":  # a scalar branch is rounded like any result: see the caller
        return f"({a[0]} ? {a[1]} : {a[2]})"
    return _expression(op, a, args, "f")


def aten_vector_elements() -> int | None:
    """Elements of a half type in one step of ATen's vector loop (two vectors), on this CPU."""
    return _VECTOR_ELEMENTS.get(torch.backends.cpu.get_cpu_capability())


#: ATen's CPU capability: the elements its half-type loops take per vector step (32 with
#: AVX-512 and with AVX2, measured: ``add(alpha=)`` of n elements changes form at n // 32 · 32).
_VECTOR_ELEMENTS = {"AVX512": 32, "AVX2": 32}

#: Which elements ATen's loops give to their scalar form: ``TensorIterator::for_each`` runs
#: a tensor of ``n`` elements serially when ``n < GRAIN`` or torch has one thread, else in
#: ``k = min(threads, ceil(n / GRAIN))`` chunks of ``ceil(n / k)``; each chunk runs the
#: vector loop over whole steps of ``VW`` elements and the scalar loop over the rest.
_SEGMENTS = (
    "enum { ATEN_GRAIN = 32768 };",
    "static inline int64_t aten_chunk(int64_t n, int64_t threads) {",
    "  if (n < ATEN_GRAIN || threads <= 1) return n > 0 ? n : 1;",
    "  const int64_t k = threads < (n + ATEN_GRAIN - 1) / ATEN_GRAIN ? threads : (n + ATEN_GRAIN - 1) / ATEN_GRAIN;",
    "  return (n + k - 1) / k;",
    "}",
    "static inline int64_t aten_segment(int64_t i, int64_t end, int64_t n, int64_t chunk, int* tail) {",
    "  const int64_t first = i / chunk * chunk;",
    "  const int64_t last = first + chunk < n ? first + chunk : n;",
    "  const int64_t vector_end = first + (last - first) / VW * VW;",
    "  *tail = i >= vector_end;",
    "  const int64_t to = *tail ? last : vector_end;",
    "  return to < end ? to : end;",
    "}",
)


class HalfSource(_Source):
    """:class:`._native_source._Source` with half storage and one rounding per operation.

    A rule with an ``add(alpha=)``, a ``lerp`` or a ``maximum`` walks each tensor in ATen's segments
    (:data:`_SEGMENTS`), so that every element takes the form ATen's loop
    gives it there.
    """

    storage = "H"

    def __init__(self, structure: Structure, dtype: torch.dtype) -> None:
        super().__init__(structure, torch.float32)  # T, the compute type, is float
        self.dtype = dtype
        self.rounded_slots: set[int] = set()
        #: Whether the loop being rendered is ATen's scalar loop (the forms of its tail).
        self.tail = False
        self.segmented = any(
            op == "maximum" or (op in ("axpy", "lerp") and args[2][0] in ("slot", "const"))
            for op, args in structure.ops
        )
        #: Whether ATen's vector-loop form runs as explicit vectors where the compiler has them.
        self.vectorise = dtype == torch.float16 and {op for op, _ in structure.ops} <= VECTOR_OPS
        #: Whether the text being rendered is the vector loop's (values of type ``V``).
        self.vector = False

    def function_head(self) -> list[str]:
        # The slots some kernels read rounded to the half type, rounded once here (a call
        # on a loop invariant inside the loop keeps GCC from vectorising it); torch's
        # thread count (``at::get_num_threads``), read outside any parallel region.
        lines = [f"  const T h{i} = round_h(s{i});" for i in sorted(self.rounded_slots)]
        if self.vectorise:  # the slots as vectors, for the vector loop's operands
            lines += [
                "#ifdef HALF_VECTOR",
                *[f"  const V vs{i} = splat(s{i});" for i in range(self.structure.slot_count)],
                *[f"  const V vh{i} = splat(h{i});" for i in sorted(self.rounded_slots)],
                "#endif",
            ]
        if self.segmented:
            lines.append("  const int64_t aten_threads = omp_get_max_threads();")
        return lines

    def rounded(self, text: str, ref: Ref) -> str:
        if ref[0] == "slot":
            self.rounded_slots.add(int(ref[1]))
            return f"vh{ref[1]}" if self.vector else f"h{ref[1]}"
        # a constant: rounded here as ATen would (double to float, then to the half type)
        value = torch.tensor(float(ref[1]), dtype=torch.float32).to(self.dtype).item()
        return f"splat((T){value!r})" if self.vector else f"(T){value!r}"

    def text(self, ref: Ref, context: str) -> str:
        if self.vector and ref[0] == "slot":
            return f"vs{ref[1]}"
        if self.vector and ref[0] == "const":
            return f"splat({super().text(ref, context)})"
        return super().text(ref, context)

    def slot(self, index: int) -> str:
        return f"quiet((T)s[{index}])"

    def loop_open(self, clause: str) -> list[str]:
        if not self.segmented:
            return super().loop_open(clause)
        return [
            "    const int64_t numel = offsets[t + 1] - offsets[t];",
            "    const int64_t chunk = aten_chunk(numel, aten_threads);",
            "    for (int64_t from = begin, to = begin; from < end; from = to) {",
            "    int scalar_loop;",
            "    to = aten_segment(from, end, numel, chunk, &scalar_loop);",
            f"    #pragma omp simd{clause}",
            "    for (int64_t i = from; i < to; ++i) {",
        ]

    def loop_close(self) -> list[str]:
        return ["    }"] if self.segmented else []

    def element_loop(
        self,
        nodes: list[int],
        tail: list[str],
        head: list[str],
        reads: list[Ref],
        *,
        balanced: bool = False,
        chunked: bool = False,
    ) -> list[str]:
        """The loop of :class:`._native_source._Source`; segmented, one copy per form.

        Each segment is wholly in ATen's vector loop or wholly in its scalar
        loop, so the rule is rendered twice, each copy with its loop's forms,
        and the segment runs one (computing both and selecting per element
        doubled SGD's arithmetic).
        """
        self.tail = False
        vector = super().element_loop(nodes, tail, head, reads, balanced=balanced, chunked=chunked)
        if not self.segmented:
            start = next(k for k, line in enumerate(vector) if "#pragma omp simd" in line)
            return [*vector[:start], *self.vector_loop(vector, nodes, head, reads, balanced)]
        self.tail = True
        scalar = super().element_loop(nodes, tail, head, reads, balanced=balanced, chunked=chunked)
        self.tail = False
        start = next(k for k, line in enumerate(vector) if "#pragma omp simd" in line)
        stop = len(vector) - len(self.loop_close())
        assert scalar[:start] == vector[:start]
        return [
            *vector[:start],
            "    if (scalar_loop) {",
            *scalar[start:stop],
            "    } else {",
            *self.vector_loop(vector, nodes, head, reads, balanced),
            "    }",
            *vector[stop:],
        ]

    def vector_loop(
        self,
        rendered: list[str],
        nodes: list[int],
        head: list[str],
        reads: list[Ref],
        balanced: bool,
    ) -> list[str]:
        """ATen's vector-loop form (``rendered``, from its ``#pragma omp simd`` on, one
        element a step); for float16 with every operation in :data:`VECTOR_OPS`, the same
        rule first on whole vectors (:mod:`._native_half_vector`), this loop taking the rest."""
        start = next(k for k, line in enumerate(rendered) if "#pragma omp simd" in line)
        stop = len(rendered) - len(self.loop_close())
        if not self.vectorise:
            return rendered[start:stop]
        self.vector = True
        writes = [
            self.write(name, ref)
            for name, ref in self.structure.outputs
            if name not in self.structure.per_tensor_inputs
        ]
        vector = super().element_loop(nodes, [*writes, "    }"], head, reads, balanced=balanced)
        self.vector = False
        assert vector[:start] == rendered[:start]
        return vector_then_scalar(vector[start + 1 : stop], rendered[start:stop])

    def load(self, element: str) -> str:
        return f"widen_v(&{element})" if self.vector else f"widen({element})"

    def write(self, name: str, ref: Ref) -> str:
        if self.vector:
            return f"      narrow_v(&{name}[i], {self.text(ref, 'element')});"
        # (a node or a parameter-sized input is a half value already: no rounding to do)
        narrow = "narrow_rounded" if ref[0] in ("node", "input") else "narrow"
        return f"      {name}[i] = {narrow}({self.text(ref, 'element')});"

    def prelude(self) -> list[str]:
        width = aten_vector_elements()
        assert width is not None  # (supports() refused this CPU)
        return [*HELPERS[self.dtype], f"enum {{ VW = {width} }};", *_SEGMENTS]

    def node(self, index: int, context: str) -> str:
        op, args = self.structure.ops[index]
        rendered = [self.text(a, context) for a in args]
        value = expression(op, rendered, args, self.rounded, self.tail)
        if op in _COMPARE or op in ("and", "or"):
            return value
        if self.vector:  # the vector forms of the helpers; pow's ones as a vector
            return f"round_v({vector_expression(value)})"
        return f"round_h({value})"


def generate_source(structure: Structure, dtype: torch.dtype) -> str:
    """The C source of a half recording for ``dtype`` parameters (``Optimizer.plans()`` shows it)."""
    return HalfSource(structure, dtype).source()
