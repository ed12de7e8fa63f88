"""ATen's summation orders, in C, as this wheel's CPU kernels sum (read off their results).

Included by :mod:`._adafactor_source` and, for LARS, LAMB and NovoGrad's whole-tensor
norms, by the native loop's exact mode (:mod:`._native_norms`), each after ``typedef ...
T`` and :func:`header` (``FMA``, ``ATEN_LANES``, ``TAIL_CHUNK``). Both check the orders
against torch once per process (:mod:`._adafactor_native`, :func:`._native_norms.holds`):

* ``sum_squares`` (and ``add_vectors``/``finish``, to carry a sum across blocks):
  the last-axis norm kernel's sum of squares (``linalg.vector_norm``,
  ``norm(dim=-1)``): ``ATEN_LANES`` running sums of ``x * x`` rounded then added,
  the lanes added in order, then the tail (float32: a chunk of 4 squared and
  added if 4 or more remain, the rest as multiply-adds);
* ``cascade_sum``: SumKernel's cascade sum of a contiguous run (``sum``, ``mean``
  on one thread, up to ATen's ``GRAIN_SIZE`` elements on more).

The lane vector is ``Lanes`` (not ``V``: the native vector loop's own type).
"""

import torch

#: Per dtype: the multiply-add of ATen's scalar tail, ``ATEN_LANES`` (the AVX2
#: ``Vectorized`` this wheel's kernels use: 8 float32 or 4 float64) and ``TAIL_CHUNK``
#: (float32's tail squares a chunk of 4 before its multiply-adds; float64's has none).
ORDERS = {torch.float32: ("fmaf", 8, 4), torch.float64: ("fma", 4, 0)}


def header(dtype: torch.dtype) -> str:
    """The ``#define``s :data:`SQUARES` and :data:`SUMS` read, for ``dtype``'s order."""
    fma, lanes, chunk = ORDERS[dtype]
    return f"#define FMA {fma}\n#define ATEN_LANES {lanes}\n#define TAIL_CHUNK {chunk}\n"


SQUARES = r"""/* ATen's last-axis sum of squares, carried across calls: `acc` takes whole vectors only.
   One vector of ATEN_LANES sums (GCC's vector extension: lane-wise, no reassociation), so
   the compiler keeps it in a register: written as a loop over lanes, GCC transposes it
   into permutes and scalar adds at half the speed. */
typedef T Lanes __attribute__((vector_size(sizeof(T) * ATEN_LANES)));
static inline Lanes load_v(const T* x) { Lanes v; memcpy(&v, x, sizeof v); return v; }
static inline void store_v(T* x, Lanes v) { memcpy(x, &v, sizeof v); }
static inline void add_vectors(Lanes* acc, const T* x, int64_t n) {
  Lanes a = *acc;
  for (int64_t d = 0; d < n; d += ATEN_LANES) { const Lanes v = load_v(x + d); a = a + v * v; }
  *acc = a;
}
static inline T finish(Lanes acc, const T* tail, int64_t r) {
  T b = acc[0];
  for (int k = 1; k < ATEN_LANES; ++k) b = b + acc[k];
  int64_t d = 0;
  if (TAIL_CHUNK > 0 && r >= TAIL_CHUNK) {
    for (; d < TAIL_CHUNK; ++d) { const T sq = tail[d] * tail[d]; b = b + sq; }
  }
  for (; d < r; ++d) b = FMA(tail[d], tail[d], b);
  return b;
}
static inline T sum_squares(const T* x, int64_t n) {
  Lanes acc = {0};
  const int64_t whole = n - n % ATEN_LANES;
  add_vectors(&acc, x, whole);
  return finish(acc, x + whole, n - whole);
}
"""

CASCADE = r"""/* ATen's sum of a contiguous run of n numbers (its cascade sum, the order of `mean`):
   items (vectors of ATEN_LANES, or single numbers when n < ATEN_LANES) in groups of 4
   summed column-wise into 4 levels of partial sums, each level taking the one below every
   2^power groups; the items past the last group into the first sum, the 4 sums in order;
   then the numbers past the last vector, then the vector's lanes. */
static inline int64_t ceil_log2(int64_t x) {
  int64_t bits = 0;
  if (x <= 2) return 1;
  for (uint64_t y = (uint64_t)(x - 1); y; y >>= 1) ++bits;
  return bits;
}
#define CASCADE(NAME, A, LOAD)                                                              \
  static A NAME(const T* x, int64_t items) {                                               \
    const A zero = {0};                                                                     \
    const int64_t groups = items / 4, power = ceil_log2(groups) / 4 > 4 ? ceil_log2(groups) / 4 : 4; \
    const int64_t step = (int64_t)1 << power, mask = step - 1;                              \
    A acc[4][4];                                                                            \
    for (int l = 0; l < 4; ++l) for (int k = 0; k < 4; ++k) acc[l][k] = zero;               \
    int64_t i = 0;                                                                          \
    while (i + step <= groups) {                                                            \
      for (int64_t j = 0; j < step; ++j, ++i)                                               \
        for (int k = 0; k < 4; ++k) acc[0][k] = acc[0][k] + LOAD(x, 4 * i + k);             \
      for (int l = 1; l < 4; ++l) {                                                         \
        for (int k = 0; k < 4; ++k) { acc[l][k] = acc[l][k] + acc[l - 1][k]; acc[l - 1][k] = zero; } \
        if ((i & (mask << (l * power))) != 0) break;                                        \
      }                                                                                     \
    }                                                                                       \
    for (; i < groups; ++i)                                                                 \
      for (int k = 0; k < 4; ++k) acc[0][k] = acc[0][k] + LOAD(x, 4 * i + k);               \
    for (int l = 1; l < 4; ++l) for (int k = 0; k < 4; ++k) acc[0][k] = acc[0][k] + acc[l][k]; \
    for (int64_t r = 4 * groups; r < items; ++r) acc[0][0] = acc[0][0] + LOAD(x, r);          \
    return ((acc[0][0] + acc[0][1]) + acc[0][2]) + acc[0][3];                               \
  }
#define LOAD_NUMBER(x, i) ((x)[i])
#define LOAD_VECTOR(x, i) load_v((x) + (i) * ATEN_LANES)
CASCADE(cascade_numbers, T, LOAD_NUMBER)
CASCADE(cascade_vectors, Lanes, LOAD_VECTOR)
static T cascade_sum(const T* x, int64_t n) {
  if (n < ATEN_LANES) return cascade_numbers(x, n);
  const int64_t vectors = n / ATEN_LANES;
  const Lanes lanes = cascade_vectors(x, vectors);
  T b = (T)0;
  for (int64_t r = vectors * ATEN_LANES; r < n; ++r) b = b + x[r];
  for (int k = 0; k < ATEN_LANES; ++k) b = b + lanes[k];
  return b;
}
"""

#: Both orders (:mod:`._adafactor_source`).
SUMS = SQUARES + CASCADE
