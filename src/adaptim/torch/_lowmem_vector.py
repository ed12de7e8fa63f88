"""The 8-bit loop's update pass on AVX-512 vectors, its divisions off the divider.

In the cache the default 8-bit loop (:mod:`._lowmem_native_source`, not
``EXACT_8BIT``) is bound by the one divider that ``vsqrtps`` and ``vdivps``
share (on this Intel Xeon 8.6 and 7.0 ns per 16 lanes, ~0.97 ns an element for
Adam's root and division), as nearly by ports 0 and 5 (the codec). The scalar
C cannot say "divide without the divider" (GCC vectorises ``a / b`` into
``vdivps``), so where the compiler targets AVX-512 F, DQ and VL
(``ADAPTIM_UPDATE_VECTORS``) the block's update is written on 16-lane
vectors (:class:`._native_vector.VectorSource`'s operations) and a division
of two arrays is :data:`DIVISION`'s ``div_v``: ``vrcp14ps``, one Newton step
and Markstein's correction ``q0 + (a - d·q0)·r``, with ``vdivps`` for the
lanes whose remainder ``a - d·q0`` is zero, subnormal, infinite or NaN, or
whose estimate is zero or subnormal (one ``vfpclassps`` each): zeros,
infinities and NaN among the operands, quotients that overflow, tiny
numerators (whose remainder could be rounded) and exact quotients all land
there, so the fast lanes' remainder is exact (a range check on both
operands did the same with six operations instead of two, and cost ~2% of
Adam's kernel more). With a reciprocal that close (one Newton step: about
half an ulp off) Markstein's correction is the correctly rounded quotient on
almost every pair, never more than an ulp away: none of 84M random bit
patterns (every exponent, NaN, infinities, subnormals) differed from
``vdivps``, 2 of 168M pairs with operands in ``[2⁻⁶³, 2⁶³)`` did (divisors
with nearly all-ones significands; ``1 / (2 - 2⁻²³)`` is one), and a second
Newton step removed those and the gain with it. So it serves only the non-exact loop, which already takes ``sqrtf``
where the reference takes MKL's root. The rest is the scalar loop's
arithmetic operation for operation (``sqrtf`` is ``vsqrtps``, a division by
a step's scalar a multiply by its reciprocal): its parameters, codes and block
maxima are the scalar loop's wherever ``div_v`` is the true quotient
(``tests/test_lowmem_vector.py``). Other CPUs compile the scalar loop.

Only rules that divide by an array and select nothing take it (:func:`suits`:
Adam, AdamW, Adagrad, RMSprop, Adadelta, NAdam, AdaBelief, Adan; the blends
of ``maximum`` and ``where`` cost more on vectors than GCC's), and only steps
that stay in the caches (partitions under
:data:`._lowmem_native_source.PREFETCH_FROM` blocks: their own kernel, and the
larger ones the scalar loop's very C); out of them the loop waits on memory,
and the dozen more operations per vector cost: on 16M elements it took
1.02-1.06x the scalar update's time, and a kernel holding both updates behind
a branch on the step's size took 1.01x the scalar kernel's on its scalar side. Measured (this Xeon, one
thread, the kernel alone against the scalar update interleaved,
``benchmarks/lowmem_kernel_parts.py --probes scalar-update``, loaded): the
scalar update 1.015-1.03x this one's time at 262k elements with the range check
(load 4-6), and the remainder's classes took another 2.0-2.3% off; 1.011-1.014x
at load 3 (Adagrad 1.14x, RMSprop and NAdam 1.09x, AdaBelief 1.02x, Adan 0.97x).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from adaptim.torch import _native_vector
from adaptim.torch._native_source import _COMPARE
from adaptim.torch._trace import Structure

#: Whether the non-exact 8-bit loop renders its update on vectors where the compiler
#: targets AVX-512 (off: the scalar loop everywhere; tests build both).
VECTOR_UPDATE = True

#: C after the header of a kernel that may take the vector update: the vector helpers,
#: ``div_v`` and the per-lane block maximum ``top_lanes`` (the scalar loop's ``top``:
#: the largest magnitude's bits, NaN above infinity; lanes past ``valid`` ignored).
DIVISION = r"""
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define ADAPTIM_UPDATE_VECTORS 1
@HELPERS
static inline V div_v(const V a, const V d) {
  const V r0 = _mm512_rcp14_ps(d);
  const V r = FMADD(_mm512_fnmadd_ps(d, r0, SET1(1)), r0, r0);
  const V q0 = a * r;
  const V rem = _mm512_fnmadd_ps(d, q0, a);
  const V q = FMADD(rem, r, q0);
  /* vdivps where the remainder may be inexact or the chain broke: a remainder that is zero,
     subnormal, infinite or NaN (vfpclassps 0xBF), or an estimate that is zero or subnormal
     (0x26: |d| past 2^126) */
  const __mmask16 slow = _mm512_fpclass_ps_mask(rem, 0xBF) | _mm512_fpclass_ps_mask(r0, 0x26);
  if (__builtin_expect(slow == 0, 1)) return q;
  return _mm512_mask_div_ps(q, slow, a, d);
}
static inline __m512i top_lanes(__m512i top, const V o, int valid) {
  const __mmask16 live = (__mmask16)((1u << valid) - 1u);
  const __m512i u = _mm512_maskz_and_epi32(live, (__m512i)o, _mm512_set1_epi32(0x7FFFFFFF));
  return _mm512_max_epu32(top, u);
}
#endif
"""


#: Operations the vectors render as compares and blends, dearer than the scalar loop's
#: vectorised selects: a rule with any keeps the scalar update (Adamax's ``maximum``
#: took 1.11x the scalar update's time on vectors, Yogi's ``where`` 1.08x).
_SELECTS = frozenset({"maximum", "minimum", "where", "clip", "and", "or", *_COMPARE})


def suits(structure: Structure) -> bool:
    """Whether ``structure``'s update gains on vectors: it divides by an array, and selects nothing.

    Measured per rule (one thread, 262k elements, loaded): the scalar update took
    1.14x the vector one's time for Adagrad, 1.12x RMSprop, 1.09x Adadelta and NAdam,
    1.02x Adam, 0.99-1.0x AdaBelief and Adan; Lion and RAdam (no such division) 1.0x.
    """
    ops = structure.ops
    divides = any(op == "div" and args[1][0] in ("node", "input") for op, args in ops)
    return divides and not any(op in _SELECTS for op, _ in ops)


def header() -> str:
    """:data:`DIVISION` with the vector helpers (float32, 16 lanes) in place."""
    return DIVISION.replace("@HELPERS", "\n".join(_native_vector.helpers(torch.float32)))


class _Vectors(_native_vector.VectorSource):
    """The rule's operations on vectors as the non-exact 8-bit loop computes them."""

    def __init__(self, structure: Structure) -> None:
        super().__init__(structure, torch.float32)

    def node(self, index: int, context: str) -> str:
        op, args = self.structure.ops[index]
        # (a division by the step's scalar: the scalar loop's multiply by its reciprocal)
        if op == "div" and args[1][0] == "slot":
            self.reciprocals.add(args[1][1])
            return f"{self.value(args[0])} * SET1(r{args[1][1]})"
        if op == "div":  # (a number over an array too: the scalar loop divides it)
            return f"div_v({self.value(args[0])}, {self.value(args[1])})"
        if op == "sqrt":
            return f"sqrt_c({self.value(args[0])})"
        return super().node(index, context)


def update_pass(
    structure: Structure,
    encodings: Mapping[str, str],
    indent: str,
) -> tuple[list[str], set[int]]:
    """C of one block's update on vectors, and the slots whose reciprocals it uses.

    Reads the block's decoded 8-bit entries from ``dec_<name>`` and the
    other inputs at ``c``; writes 8-bit outputs to ``new_<name>`` with their
    maxima in ``top_<name>``, the others at ``c``.
    """
    stored = structure.outputs
    vectors = _Vectors(structure)
    refs = {a for _, args in structure.ops for a in args} | {r for _, r in structure.outputs}

    def base(name: str) -> str:
        return f"dec_{name}" if encodings.get(name) == "q8" else f"{name}_c"

    loads = [
        (f"in{index}", base(name))
        for index, name in enumerate(structure.inputs)
        if ("input", index) in refs
    ]
    lines = [
        f"const {'M' if i in vectors.masks else 'V'} v{i} = {vectors.node(i, 'element')};"
        for i in range(len(structure.ops))
    ]
    stores = []
    quantized = [name for name, _ in stored if encodings.get(name) == "q8"]
    for name, ref in stored:
        if name in quantized:
            lines.append(f"const V o_{name} = {vectors.value(ref)};")
            lines.append(f"topv_{name} = top_lanes(topv_{name}, o_{name}, @VALID);")
            stores.append((f"new_{name}", f"o_{name}"))
        else:
            stores.append((f"{name}_c", vectors.value(ref)))
    deeper = indent + "  "
    out = [f"{indent}{{"]
    plain = {name for _, name in loads} | {name for name, _ in stores}
    for name in sorted(n.removesuffix("_c") for n in plain if n.endswith("_c")):
        qualifier = "" if any(name == n for n, _ in stored) else "const "
        out.append(f"{deeper}{qualifier}T* restrict {name}_c = {name} + c;")
    out += [f"{deeper}__m512i topv_{name} = _mm512_setzero_si512();" for name in quantized]
    out.append(f"{deeper}const int64_t begin = 0, end = cend - c;")
    out += _native_vector.vector_pass(loads, lines, stores, deeper)
    out += [f"{deeper}top_{name} = _mm512_reduce_max_epu32(topv_{name});" for name in quantized]
    out.append(f"{indent}}}")
    return out, vectors.reciprocals


def beside(
    scalar: list[str],
    structure: Structure,
    encodings: Mapping[str, str],
    indent: str,
    reciprocals: set[int],
) -> list[str]:
    """The block's update: :func:`update_pass` where compiled for AVX-512, else ``scalar``.

    Adds the slots whose reciprocals the vector update takes to ``reciprocals``.
    """
    lines, used = update_pass(structure, encodings, indent)
    reciprocals |= used
    return ["#ifdef ADAPTIM_UPDATE_VECTORS", *lines, "#else", *scalar, "#endif"]
