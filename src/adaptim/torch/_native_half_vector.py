"""float16's native loop on explicit vectors: the hardware conversions GCC does not use.

:mod:`._native_half` renders a half recording as a C loop GCC vectorises by
itself. For bfloat16 that is enough (its conversions are a shift and a rounding
add); float16's conversions written as integer and float arithmetic cost about
ten vector instructions a rounding, and GCC 12 vectorises neither F16C's scalar
``_cvtss_sh``/``_cvtsh_ss`` nor ``_Float16`` (without AVX512-FP16), nor a call to
an OpenMP ``declare simd`` variant without spilling every register around it.
So where the compiler targets AVX-512F (16 lanes) or F16C with FMA (8 lanes),
the loop over ATen's vector-loop segments runs on the vector type ``V`` first:

* a load widens with ``vcvtph2ps`` (exact);
* each materialised rounding :math:`r(x)` is ``vcvtps2ph`` with round to nearest
  even, then ``vcvtph2ps``: two instructions, exact IEEE conversions (subnormals,
  overflow to infinity above 65519.99..., a NaN stays a NaN);
* a store narrows with ``vcvtps2ph``.

The operations are the scalar loop's, lane by lane (``-ffp-contract=off`` holds
for vector arithmetic too): ``+ - * /`` are GCC's vector operators, and each
helper of the scalar loop has a vector twin (:data:`_VECTOR_NAMES`) that selects
with the same comparisons. The remaining elements (fewer than one vector) run
the scalar loop. Rules with comparisons, ``where`` or logical operations (their
``int`` results) keep the scalar loop alone: :data:`VECTOR_OPS`.
"""

from __future__ import annotations

import re

#: The vector type, its conversions and the scalar helpers' twins, per instruction set
#: (``HALF_VECTOR``: its lanes; undefined where neither is targeted: the scalar loop).
F16_VECTOR = (
    "#if defined(__AVX512F__) || (defined(__F16C__) && defined(__FMA__) && defined(__AVX__))",
    "#include <immintrin.h>",
    "#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)",
    "#endif",
    "#if defined(__AVX512F__)",
    "#define HALF_VECTOR 16",
    "typedef __m512 V;",
    "static inline V splat(float x) { return _mm512_set1_ps(x); }",
    "static inline V widen_v(const H* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }",
    "static inline void narrow_v(H* p, V x) { _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(x, RNE)); }",
    "static inline V round_v(V x) { return _mm512_cvtph_ps(_mm512_cvtps_ph(x, RNE)); }",
    "static inline V fma_v(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }",
    "static inline V sqrt_v(V x) { return _mm512_sqrt_ps(x); }",
    "static inline V abs_v(V x) { return _mm512_abs_ps(x); }",
    "#define LT(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)",
    "#define GT(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)",
    "#define GT_OR_NAN(a, b) (_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) | _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q))",
    "#define SELECT(mask, yes, no) _mm512_mask_blend_ps(mask, no, yes)",
    "#elif defined(__F16C__) && defined(__FMA__) && defined(__AVX__)",
    "#define HALF_VECTOR 8",
    "typedef __m256 V;",
    "static inline V splat(float x) { return _mm256_set1_ps(x); }",
    "static inline V widen_v(const H* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }",
    "static inline void narrow_v(H* p, V x) { _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph(x, RNE)); }",
    "static inline V round_v(V x) { return _mm256_cvtph_ps(_mm256_cvtps_ph(x, RNE)); }",
    "static inline V fma_v(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }",
    "static inline V sqrt_v(V x) { return _mm256_sqrt_ps(x); }",
    "static inline V abs_v(V x) { return _mm256_andnot_ps(splat(-0.0f), x); }",
    "#define LT(a, b) _mm256_cmp_ps(a, b, _CMP_LT_OQ)",
    "#define GT(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)",
    "#define GT_OR_NAN(a, b) _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ), _mm256_cmp_ps(a, a, _CMP_UNORD_Q))",
    "#define SELECT(mask, yes, no) _mm256_blendv_ps(no, yes, mask)",
    "#endif",
    "#ifdef HALF_VECTOR",
    # max_t: a where a > b or a is NaN, else b (max(-0, +0) is the second)
    "static inline V max_v(V a, V b) { return SELECT(GT_OR_NAN(a, b), a, b); }",
    # lerp_t, anchored at the nearer end: fma(w, b - a, a) or fma(w - 1, b - a, b), as one
    # fma (with a loop-invariant weight the compiler hoists the test and the weight's choice)
    "static inline V lerp_v(V a, V b, V w) {",
    "  return fma_v(SELECT(LT(w, splat(0.5f)), w, w - splat(1.0f)), b - a,",
    "               SELECT(LT(w, splat(0.5f)), a, b));",
    "}",
    # clamp_h: max(x, lo), then min(., hi)
    "static inline V clamp_v(V x, V lo, V hi) {",
    "  const V y = SELECT(LT(x, lo), lo, x);",
    "  return SELECT(GT(y, hi), hi, y);",
    "}",
    "#endif",
)

#: The operations of a rule the vector loop renders.
VECTOR_OPS = frozenset(
    {"add", "sub", "mul", "div", "neg", "abs", "sqrt", "maximum", "clip", "pow"}
    | {"axpy", "addcmul", "addcdiv", "lerp"}
)
#: The scalar loop's helpers and their vector twins.
_VECTOR_NAMES = {
    "fmaf": "fma_v",
    "sqrtf": "sqrt_v",
    "fabsf": "abs_v",
    "lerp_t": "lerp_v",
    "max_t": "max_v",
    "clamp_h": "clamp_v",
    "round_h": "round_v",
}
_VECTOR_CALL = re.compile(r"\b(" + "|".join(_VECTOR_NAMES) + r")\(")
_SCALAR_LOOP = re.compile(r"for \(int64_t i = (\w+); i < (\w+); \+\+i\) \{")


def vector_expression(scalar: str) -> str:
    """A rendered operation (its operands already vectors) with the helpers' vector twins."""
    if scalar == "(T)1":  # x ** 0
        return "splat(1.0f)"
    return _VECTOR_CALL.sub(lambda match: _VECTOR_NAMES[match.group(1)] + "(", scalar)


def vector_then_scalar(vector_body: list[str], scalar_loop: list[str]) -> list[str]:
    """The loop ``scalar_loop`` (its ``#pragma omp simd``, ``for`` line, body and closing
    brace) preceded by ``vector_body`` (the same rule on ``V``, after its ``for`` line) over
    whole vectors where the compiler has them; the scalar loop takes the rest."""
    found = _SCALAR_LOOP.search(scalar_loop[1])
    assert found is not None, scalar_loop[1]
    low, high = found.groups()
    return [
        f"    int64_t vector_end = {low};",
        "#ifdef HALF_VECTOR",
        f"    for (int64_t i = {low}; i + HALF_VECTOR <= {high}; i += HALF_VECTOR) {{",
        *[line.replace("const T ", "const V ", 1) for line in vector_body[1:]],
        f"    vector_end = {low} + ({high} - {low}) / HALF_VECTOR * HALF_VECTOR;",
        "#endif",
        scalar_loop[0],
        scalar_loop[1].replace(f"i = {low};", "i = vector_end;", 1),
        *scalar_loop[2:],
    ]
