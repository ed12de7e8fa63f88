"""The native loop written on AVX vectors, so that its square root is ``torch.sqrt``'s.

``torch.sqrt`` on CPU is MKL's, not the correctly rounded root
(:mod:`._mkl_sqrt`). Where :func:`._mkl_sqrt.emulated` holds, :mod:`._native`
renders a rule that takes square roots with :class:`VectorSource` instead of
the scalar :class:`._native_source._Source`: the same passes, the same
operations in the same order, but every element-wise value is a vector
(``V``: 16 float32 lanes with AVX-512, 8 float32 or 4 float64 with AVX2; GCC's
vector types) and each ``sqrt`` is MKL's algorithm inlined (the kernel this CPU's MKL
runs, :func:`._mkl_sqrt.emulation`: ``rsqrtps`` and one correction in float32 and a
polynomial in float64 on AMD, ``vrsqrt14`` and FMA on Intel with AVX-512). GCC
does not vectorise a scalar loop that calls such a root, so the loop is written
vectorised: one pass over the data, as before, and no call per element.
:mod:`._fuse`'s element-wise runs take ``sqrt`` the same way (:func:`run_loop`).

The price (one thread, under load, the kernel alone, medians of the fastest
rounds): MKL's root is twelve multiplies and adds where ``vsqrtps`` is one
instruction on the divider, and a division by a step's scalar stays a
division, so against the correctly rounded loop Adam takes 1.08x its time on
16M elements (1.33x in cache), Adagrad 1.16x, RMSprop 1.14x.

Each operation keeps the scalar loop's meaning lane by lane: comparisons give
all-ones masks (converted to ``1``/``0`` where a rule computes with them),
``where``/``maximum``/``clip``/``lerp`` are blends of the scalar branches, the
multiply-adds are ``vfmadd`` (ATen's), and a ``pow`` with a tensor exponent
other than 0 and 2 calls ``pow`` per lane. The elements after the last whole
vector of a range are copied into a padded vector, computed alike, and only
their lanes written back. MKL runs with MXCSR ``0x1f80`` (round to nearest, no flush to
zero) whatever the caller set; the root does the same, changing the register
only when it differs (after ``torch.set_flush_denormal(True)``, say), while
the rest of the loop rounds as the caller's ATen kernels would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adaptim.torch._mkl_sqrt import kernel_source
from adaptim.torch._native_source import _BINARY, _COMPARE, _CTYPES, _Source
from adaptim.torch._trace import Ref, Structure

_MASK_OPS = frozenset({*_COMPARE, "and", "or"})


#: Float32 on AVX-512 (F and DQ): 16 lanes, MKL's root ``mkl_sqrt_16`` (AMD's kernel: two
#: 8-lane ``rsqrtps``, AVX-512 has no 12-bit one; Intel's: ``vrsqrt14``). Zen 4
#: runs a 512-bit operation as two 256-bit halves, but dispatches it as one: the loop
#: with the root inlined is bound by dispatch on 256-bit vectors (measured ~0.1 ns an
#: element slower than 512-bit in cache).
_WIDE_FLOAT = """
typedef __m512 V;
typedef int M __attribute__((vector_size(64)));
typedef unsigned int U __attribute__((vector_size(64)));
typedef __m512d A;
enum { L = 16 };
#define SET1(x) _mm512_set1_ps(x)
#define FMADD(a, b, c) _mm512_fmadd_ps(a, b, c)
#define LOADU _mm512_loadu_ps
#define STOREU _mm512_storeu_ps
static inline V blend(V no, V yes, M m) { return (V)(((M)yes & m) | ((M)no & ~m)); }
static inline V abs_v(V a) { return (V)((M)a & 0x7fffffff); }
static inline V sqrt_c(V a) { return _mm512_sqrt_ps(a); }
static inline V mkl_root(const V x) { return mkl_sqrt_16(x); }
static inline void add_squares(A* acc, V o, int valid) {
  for (int u = valid; u < L; ++u) o[u] = 0;
  const A a = _mm512_cvtps_pd(_mm512_castps512_ps256(o)), b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(o, 1));
  acc[0] += a * a; acc[1] += b * b;
}
"""


def _narrow(dtype: torch.dtype) -> str:
    """``V`` on AVX2 (8 float32 or 4 float64 lanes): :mod:`._mkl_sqrt`'s root."""
    p = "ps" if dtype == torch.float32 else "pd"
    float32 = dtype == torch.float32
    squares = (
        "  const A a = _mm256_cvtps_pd(_mm256_castps256_ps128(o)), b = _mm256_cvtps_pd(_mm256_extractf128_ps(o, 1));\n"
        "  acc[0] += a * a; acc[1] += b * b;"
        if float32
        else "  acc[0] += o * o;"
    )
    return "\n".join(
        [
            f"typedef __m256{'' if float32 else 'd'} V;",
            f"typedef {'int' if float32 else 'long long'} M __attribute__((vector_size(32)));",
            "typedef __m256d A;",
            f"enum {{ L = {8 if float32 else 4} }};",
            f"#define SET1(x) _mm256_set1_{p}(x)",
            f"#define FMADD(a, b, c) _mm256_fmadd_{p}(a, b, c)",
            f"#define LOADU _mm256_loadu_{p}",
            f"#define STOREU _mm256_storeu_{p}",
            f"static inline V blend(V no, V yes, M m) {{ return _mm256_blendv_{p}(no, yes, (V)m); }}",
            f"static inline V abs_v(V a) {{ return _mm256_andnot_{p}(SET1(-0.0), a); }}",
            f"static inline V sqrt_c(V a) {{ return _mm256_sqrt_{p}(a); }}",
            f"static inline V mkl_root(const V x) {{ return mkl_sqrt_{8 if float32 else 4}(x); }}",
            "static inline void add_squares(A* acc, V o, int valid) {",
            "  for (int u = valid; u < L; ++u) o[u] = 0;",
            squares,
            "}",
        ]
    )


def helpers(dtype: torch.dtype) -> list[str]:
    """The vector type ``V``, its mask type ``M`` and the operations the loop needs on them."""
    scalar = _CTYPES[dtype]
    pick = _narrow(dtype)
    if dtype == torch.float32:
        pick = f"#if defined(__AVX512F__) && defined(__AVX512DQ__)\n{_WIDE_FLOAT}\n#else\n{pick}\n#endif"
    return [
        "#include <immintrin.h>",
        '#if !defined(__AVX2__) || !defined(__FMA__)\n#error "the vector loop needs AVX2 and FMA"\n#endif',
        kernel_source(dtype),
        pick,
        "static inline V value_of(M m) { return blend(SET1(0), SET1(1), m); }",
        "static inline M truth(V a) { return (M)(a != SET1(0)); }",
        "static inline V max_v(V a, V b) { return blend(b, a, (M)(a > b) | (M)(a != a)); }",
        "static inline V min_v(V a, V b) { return blend(b, a, (M)(a < b) | (M)(a != a)); }",
        "static inline V clip_v(V x, V lo, V hi) { return blend(blend(x, hi, (M)(x > hi)), lo, (M)(x < lo)); }",
        # ATen's clamp (``clamp_min`` then ``clamp_max``: a NaN bound ignored) and rsqrt (1/sqrt)
        "static inline V clamp_v(V x, V lo, V hi) { const V y = blend(x, lo, (M)(x < lo)); return blend(y, hi, (M)(y > hi)); }",
        "static inline V rsqrt_v(V a) { return SET1(1) / sqrt_c(a); }",
        "static inline V lerp_v(V a, V b, V w) {",
        "  const V d = b - a;",
        "  return blend(FMADD(w - SET1(1), d, b), FMADD(w, d, a), (M)(w < SET1(0.5)));",
        "}",
        "static inline V pow_v(V a, V b) {",
        f"  V r; for (int u = 0; u < L; ++u) r[u] = pow{'f' if scalar == 'float' else ''}(a[u], b[u]); return r;",
        "}",
        "/* MKL's root under MKL's MXCSR (0x1f80: nearest, no flush to zero), `plain` when already so */",
        "static inline V root_v(V x, int plain) {",
        "  if (__builtin_expect(plain, 1)) return mkl_root(x);",
        "  const unsigned int csr = _mm_getcsr();",
        "  _mm_setcsr((csr & 0x3fu) | 0x1f80u);",
        "  const V r = mkl_root(x);",
        "  _mm_setcsr(csr);",
        "  return r;",
        "}",
        "static inline int mxcsr_plain(void) { return (_mm_getcsr() & ~0x3fu) == 0x1f80u; }",
        f"static inline {scalar} root_1({scalar} x) {{ return root_v(SET1(x), mxcsr_plain())[0]; }}",
        "static inline double sum_lanes(const A* acc) {  /* (the squares of a norm pass) */",
        "  double sum = 0.0;",
        "  for (int u = 0; u < (int)(sizeof(A) / 8); ++u) sum += acc[0][u];",
        "  for (int u = 0; u < (int)(sizeof(A) / 8); ++u) sum += acc[1][u];",
        "  return sum;",
        "}",
    ]


class VectorSource(_Source):
    """:class:`._native_source._Source` with element-wise values as vectors and MKL's root."""

    def __init__(self, structure: Structure, dtype: torch.dtype, aten_norms: bool = False) -> None:
        super().__init__(structure, dtype, exact_division=True, aten_norms=aten_norms)
        self.masks = {i for i, (op, _) in enumerate(structure.ops) if op in _MASK_OPS}

    def text(self, ref: Ref, context: str) -> str:
        scalar = super().text(ref, "tensor" if context == "vector" else context)
        if context != "vector":
            return scalar
        kind, value = ref
        if kind == "node" and value not in self.per_nodes:
            return f"v{value}"
        if kind == "input" and not self.is_per_tensor_input(ref):
            return f"in{value}"
        if kind == "node":  # (a per-tensor value, read once per tensor)
            return f"SET1(pv{value})"
        return f"SET1({scalar})"

    def node(self, index: int, context: str) -> str:
        op, args = self.structure.ops[index]
        if context != "element":
            if op == "sqrt":  # a per-tensor root: MKL's too (ATen calls it for 0-d tensors)
                return f"root_1({self.text(args[0], context)})"
            return super().node(index, context)
        if op in ("and", "or"):
            sign = "&" if op == "and" else "|"
            return f"{self.mask(args[0])} {sign} {self.mask(args[1])}"
        if op == "where":
            return f"blend({self.value(args[2])}, {self.value(args[1])}, {self.mask(args[0])})"
        a = [self.value(x) for x in args]
        if op == "div" and self.number_over_array(args):
            return f"(SET1(1) / {a[1]}) * {a[0]}"
        if op in _BINARY:
            return f"{a[0]} {_BINARY[op]} {a[1]}"
        if op in _COMPARE:
            return f"(M)({a[0]} {_COMPARE[op]} {a[1]})"
        simple = {
            "neg": "-{0}",
            "abs": "abs_v({0})",
            "sqrt": "root_v({0}, plain)",
            "maximum": "max_v({0}, {1})",
            "minimum": "min_v({0}, {1})",
            "clip": "clip_v({0}, {1}, {2})",
            "axpy": "FMADD({2}, {1}, {0})",  # ATen's add(alpha=)
            "addcmul": "FMADD({3} * {1}, {2}, {0})",  # ATen: self + (value * t1) * t2
            "lerp": "lerp_v({0}, {1}, {2})",
        }
        if op == "lerp" and args[2][0] not in ("node", "input"):  # a weight per step: one side
            w, scalar = a[2], self.text(args[2], "tensor")
            return (
                f"({scalar} < (T)0.5 ? FMADD({w}, {a[1]} - {a[0]}, {a[0]})"
                f" : FMADD({w} - SET1(1), {a[1]} - {a[0]}, {a[1]}))"
            )
        if op in simple:
            return simple[op].format(*a)
        exponent = float(args[1][1])  # (pow)
        if exponent == 0.0:
            return "SET1(1)"
        return f"{a[0]} * {a[0]}" if exponent == 2.0 else f"pow_v({a[0]}, {a[1]})"

    def value(self, ref: Ref) -> str:
        """``ref`` as a vector of values (a mask becomes ``1``/``0``, as C's comparisons)."""
        text = self.text(ref, "vector")
        return f"value_of({text})" if ref[0] == "node" and ref[1] in self.masks else text

    def mask(self, ref: Ref) -> str:
        """``ref`` as a mask (a value: whether it is non-zero, as C's conditions)."""
        text = self.text(ref, "vector")
        return text if ref[0] == "node" and ref[1] in self.masks else f"truth({text})"

    def write(self, name: str, ref: Ref) -> str:
        return f"@STORE({name}, {self.value(ref)})"

    def norm_head(self, norm: int) -> list[str]:
        return [f"    double sum{norm} = 0.0;", f"    A acc{norm}[2] = {{{{0}}}};"]

    def square(self, norm: int, operand: str) -> str:
        return f"        add_squares(acc{norm}, {operand}, @VALID);"

    def norm_done(self, norm: int) -> list[str]:
        return [f"    sum{norm} = sum_lanes(acc{norm});"]

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
        """The scalar loop's pass (see there) as a :func:`vector_pass`.

        ``tail`` holds :meth:`write`'s and :meth:`square`'s lines, then the
        loop's closing brace.
        """
        scalar = super().element_loop(nodes, [], head, reads, balanced=balanced, chunked=chunked)
        opening = scalar[: next(k for k, s in enumerate(scalar) if "#pragma omp simd" in s)]
        structure = self.structure
        refs = {a for i in nodes for a in structure.ops[i][1]} | set(reads)
        loads = [
            (f"in{index}", name)
            for index, name in enumerate(structure.inputs)
            if name not in structure.per_tensor_inputs and ("input", index) in refs
        ]
        lines = [
            f"const {'M' if i in self.masks else 'V'} v{i} = {self.node(i, 'element')};"
            for i in nodes
        ]
        stores = [line for line in tail if line.startswith("@STORE(")]
        lines += [line.strip() for line in tail if line.strip() != "}" and line not in stores]
        writes = [tuple(line[len("@STORE(") : -1].split(", ", 1)) for line in stores]
        vectors = vector_pass(loads, lines, writes)  # type: ignore[arg-type]
        return opening + vectors + self.page_close(balanced)

    def source(self) -> str:
        """The scalar loop's C with the vector helpers after its header."""
        text = super().source()
        marker = "void adaptim_step("
        at = text.index(marker)
        return text[:at] + "\n".join(helpers(self.dtype)) + "\n" + text[at:]


def generate_source(structure: Structure, dtype: torch.dtype, aten_norms: bool = False) -> str:
    """The C source of ``structure`` for ``dtype`` as :class:`VectorSource` renders it
    (``aten_norms``: whole-tensor norms in ATen's order, :mod:`._native_norms`)."""
    return VectorSource(structure, dtype, aten_norms).source()


def vector_pass(
    loads: Sequence[tuple[str, str]],
    lines: Sequence[str],
    stores: Sequence[tuple[str, str]],
    indent: str = "    ",
) -> list[str]:
    """C computing ``lines`` on the vectors of elements ``[begin, end)``, then the padded rest.

    ``loads``: (vector, array) read at element ``i``; ``stores``: (array, C
    value) written there. ``@VALID`` in ``lines`` is how many lanes are
    elements. The elements after the last whole vector are copied into
    vectors padded with ones, computed alike, and only their lanes written back.
    """

    def block(at: dict[str, str], valid: str, inner: str) -> list[str]:
        text = [f"{inner}const V {v} = LOADU({at[a]});" for v, a in loads]
        text += [inner + line.replace("@VALID", valid) for line in lines]
        text += [f"{inner}STOREU({at['out ' + a]}, {value});" for a, value in stores]
        return text

    deeper = indent + "  "
    out = [f"{indent}const int plain = mxcsr_plain();", f"{indent}int64_t i = begin;"]
    out.append(f"{indent}for (; i + L <= end; i += L) {{  /* (plain: MKL's MXCSR already) */")
    at = {a: f"{a} + i" for _, a in loads} | {f"out {a}": f"{a} + i" for a, _ in stores}
    out += block(at, "L", deeper)
    out += [f"{indent}}}", f"{indent}if (i < end) {{", f"{deeper}const int rest = (int)(end - i);"]
    for k, (_, array) in enumerate(loads):
        out.append(f"{deeper}T pad{k}[L];")
        out.append(
            f"{deeper}for (int u = 0; u < L; ++u) pad{k}[u] = u < rest ? {array}[i + u] : (T)1;"
        )
    out += [f"{deeper}T out{k}[L];" for k in range(len(stores))]
    at = {a: f"pad{k}" for k, (_, a) in enumerate(loads)}
    at |= {f"out {a}": f"out{k}" for k, (a, _) in enumerate(stores)}
    out += block(at, "rest", deeper)
    out += [
        f"{deeper}for (int u = 0; u < rest; ++u) {a}[i + u] = out{k}[u];"
        for k, (a, _) in enumerate(stores)
    ]
    out.append(f"{indent}}}")
    return out


#: The operations of :mod:`._fuse`'s runs on vectors (the arithmetic ones: C's operators).
_RUN_FORMS = {
    "neg": "-{0}",
    "rsqrt": "rsqrt_v({0})",
    "sqrt": "root_v({0}, plain)",
    "lerp": "lerp_v({0}, {1}, {2})",
    "axpy": "FMADD({2}, {1}, {0})",
    "clip": "clamp_v({0}, {1}, {2})",
}


def run_loop(
    ops: Sequence[tuple[int, str, list[str]]],
    loads: Sequence[tuple[str, str]],
    stores: Sequence[tuple[str, str]],
) -> list[str]:
    """A fused run's loop (:mod:`._fuse`) as a :func:`vector_pass`: MKL's root inlined.

    ``ops``: (node, operation, operands' C texts); an operand that is not a
    loaded vector (``loads``) or a node ``v<k>`` is a scalar and is broadcast.
    """
    vectors = {name for name, _ in loads} | {f"v{index}" for index, _, _ in ops}
    lines = []
    for index, op, operands in ops:
        a = [x if x in vectors else f"SET1({x})" for x in operands]
        symbol = _BINARY.get(op)
        expression = f"{a[0]} {symbol} {a[1]}" if symbol else _RUN_FORMS[op].format(*a)
        lines.append(f"const V v{index} = {expression};")
    return vector_pass(loads, lines, stores)
