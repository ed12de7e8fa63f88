"""The C of :mod:`._adafactor_native`: torch's Adafactor step in three passes, ATen's sums kept.

Every whole-row or whole-tensor norm torch's Adafactor takes
(``param.norm(2)``, ``torch.norm(grad, dim=-1)``, ``update.norm(2)``) is ATen's
last-axis norm kernel: one thread per output, ``ATEN_LANES`` running sums
(8 float32 or 4 float64: the AVX2 ``Vectorized`` this wheel's kernel uses),
each lane summing ``x * x`` rounded then added (no multiply-add), the lanes
added in order, then the elements after the last whole vector: in float32 a
chunk of 4 squared and added in order when 4 or more remain, the rest (and
all of float64's) as multiply-adds (what GCC made of ATen's scalar tail);
then a square root. ``sum_squares`` (:mod:`._aten_sums`, with ``mean``'s
cascade sum) replays that order, its lanes one vector
(GCC's vector extension) whose adds wait on each other; so where two sums are
independent (a kept tensor's parameter and update, four rows of a gradient) they
run in one loop, each its own chain. It was read off the
wheel's results, not its source, so :mod:`._adafactor_native` checks it
against ``torch.linalg.vector_norm`` once per process before using it.
Column sums are summed row after row (:mod:`._column_stats`).

A matrix's update waits on the divider (``(row_var col_var) / mean``, a square
root, a reciprocal: three of its operations an element), so the first
quotient is taken from ``mean``'s reciprocal and one multiply-add correction,
and kept only where the residual proves it the correctly rounded quotient
(see ``update_block``; a row with any element unproven is divided again).
Checked apart from torch on 3e8 random float32 and 1e8 float64 pairs,
powers of two, all-ones significands, subnormal and near-overflow operands
included: never a proven wrong one; about 1 in 60 unproven on float32 data
with such special significands, none on random ones (a 256×784 matrix:
phase 1 about 1.18× faster).

Phases (one C call each, or all in one: ``STEP``): 0, per tensor, the gradient's row and column
statistics folded into ``row_var``/``col_var`` (one item; vectors: nothing)
and the sum of squares of each parameter that is not *kept* (another item);
1, per tensor, the update's sum of squares (vectors: ``variance`` is updated
here), and for a kept tensor (flag ``KEPT``: see :func:`kept`) the
parameter's sum of squares alongside and the step last, from the update kept
in a per-thread buffer; a ``SHARED`` tensor's update first, in blocks on every
thread into its own buffer, then its sum on one thread; 2, the other tensors
in blocks on every thread: ``p = (1 - lr wd) p - alpha / denom * update``, a
shared tensor's update from its buffer, the others' recomputed from the
gradient and the new statistics, bit for bit as in phase 1.
"""

from __future__ import annotations

import torch

from adaptim.torch import _aten_sums

_BODY = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

static inline T lerp_t(T a, T b, T w) { return w < (T)0.5 ? FMA(w, b - a, a) : FMA(w - (T)1, b - a, b); }
static inline T floor_t(T x, T lo) { return x < lo ? lo : x; }

@SUMS@
static inline T norm_of(T sum) { return (T)sqrt((double)sum); }

/* The update of element block [begin, end) of tensor t into u (phase 1 also moves `variance`). */
enum { BUF = 512, MATRIX = 1, KEPT = 2, SHARED = 4 };
/* meta: 4 numbers a tensor: flags, matrices (the leading axes' product), rows, columns */
#define FLAGS(t) meta[4 * (t)]
#define BATCHES(t) meta[4 * (t) + 1]
#define ROWS(t) meta[4 * (t) + 2]
#define COLS(t) meta[4 * (t) + 3]
#define SIZE(t) (BATCHES(t) * ROWS(t) * COLS(t))
static inline void update_block(int64_t t, int64_t begin, int64_t end, const int64_t* meta,
                                void* const* arrays, int64_t n, const double* h, int move, T* u) {
  const T* g = (const T*)arrays[1 * n + t];
  const T sign = h[6] != 0.0 ? (T)-1 : (T)1;
  const T floor2 = (T)h[1];
  if (FLAGS(t) & MATRIX) {
    const int64_t rows = ROWS(t), cols = COLS(t);
    const T* row_var = (const T*)arrays[2 * n + t];
    const T* col_vars = (const T*)arrays[3 * n + t];
    const T* scales = (const T*)arrays[4 * n + t];
    int64_t last = -1;  /* (the matrix whose scale's reciprocal y is) */
    T y = (T)0;
    for (int64_t i = begin; i < end;) {  /* row by row: the columns' loop vectorises */
      const int64_t r = i / cols, j0 = i - r * cols, b = r / rows;  /* (r counts every matrix's rows) */
      const int64_t j1 = cols < j0 + (end - i) ? cols : j0 + (end - i);
      const T rv = row_var[r], scale = scales[b];
      if (b != last) { y = (T)1 / scale; last = b; }
      const T* col_var = col_vars + b * cols;
      T* out = u + (i - begin) - j0;
      const T* gr = g + r * cols;
      /* x / scale without the divider, which this loop waits on (a division, a square root and
         a reciprocal an element): q from scale's reciprocal and one correction, kept where its
         residual r proves it the nearest number to x / scale: RN is monotone and h (half the
         gap from q to its nearer neighbour, times scale: a power of two times scale, exact in
         the normal range) is a number, so |r| < h means |x - scale q| < h. Elsewhere (zeros
         aside: +0 / scale is +0) the row is divided again, as torch does. */
      const int finite = scale > (T)0 && scale <= T_LARGEST;
      int proven = 1;
      for (int64_t j = j0; j < j1; ++j) {
        const T x = rv * col_var[j];
        const T q0 = x * y;
        const T q = FMA(FMA(-scale, q0, x), y, q0);
        const T r = FMA(-scale, q, x);
        UNSIGNED bits;
        T power;  /* 2^floor(log2 |q|) */
        memcpy(&bits, &q, sizeof bits);
        bits &= EXPONENT_BITS;
        memcpy(&power, &bits, sizeof power);
        const T h = ((FABS(q) == power ? (T)0.5 * power : power) * scale) * HALF_EPSILON;
        UNSIGNED zero;  /* (+0 / a positive finite scale is +0, as q is then) */
        memcpy(&zero, &x, sizeof zero);
        proven &= ((zero == 0) & finite) | ((FABS(r) < h) & (h >= T_NORMAL) & (h <= T_LARGEST));
        out[j] = ((T)1 / SQRT(floor_t(q, floor2))) * (sign * gr[j]);
      }
      if (!proven) {
        for (int64_t j = j0; j < j1; ++j) {
          const T v = floor_t((rv * col_var[j]) / scale, floor2);
          out[j] = ((T)1 / SQRT(v)) * (sign * gr[j]);
        }
      }
      i += j1 - j0;
    }
  } else {
    T* variance = (T*)arrays[2 * n + t];
    const T w = (T)h[0];
    for (int64_t i = begin; i < end; ++i) {
      const T gi = sign * g[i];
      T v = variance[i];
      if (move) { v = lerp_t(v, gi * gi, w); variance[i] = v; }
      u[i - begin] = ((T)1 / SQRT(floor_t(v, floor2))) * gi;
    }
  }
}

/* p = (1 - lr wd) p + step u over [begin, end), with torch's host arithmetic in double:
   alpha = max(eps2, |p| / sqrt(N)) rho_t, denom = max(1, |u| / (sqrt(N) d)), step -alpha / denom */
static void apply(int64_t t, int64_t begin, int64_t end, const int64_t* meta, void* const* arrays,
                  const double* norms, int64_t n, const double* h, const T* u) {
  const int64_t size = SIZE(t);
  const double root = pow((double)size, 0.5);
  const double rms = norms[t] / root;
  const double alpha = (rms > h[3] ? rms : h[3]) * h[2];
  const double ratio = norms[n + t] / (root * h[4]);
  const T step = (T)(-alpha / (ratio > 1.0 ? ratio : 1.0)), decay = (T)h[5];
  T* p = (T*)arrays[t] + begin;
  const int64_t count = end - begin;
  if (h[7] != 0.0) {
    for (int64_t i = 0; i < count; ++i) p[i] = FMA(step, u[i], p[i] * decay);
  } else {
    for (int64_t i = 0; i < count; ++i) p[i] = FMA(step, u[i], p[i]);
  }
}

/* Four rows' sums of squares (four independent chains, where one would wait on its adds)
   and their squares added to the column sums `acc`, row after row. */
static inline void four_rows(const T* x, int64_t cols, T* acc, T* sums) {
  const T *x0 = x, *x1 = x + cols, *x2 = x + 2 * cols, *x3 = x + 3 * cols;
  const int64_t whole = cols - cols % ATEN_LANES;
  Lanes a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
  for (int64_t j = 0; j < whole; j += ATEN_LANES) {
    const Lanes v0 = load_v(x0 + j), v1 = load_v(x1 + j), v2 = load_v(x2 + j), v3 = load_v(x3 + j);
    const Lanes s0 = v0 * v0, s1 = v1 * v1, s2 = v2 * v2, s3 = v3 * v3;
    a0 = a0 + s0; a1 = a1 + s1; a2 = a2 + s2; a3 = a3 + s3;
    store_v(acc + j, (((load_v(acc + j) + s0) + s1) + s2) + s3);
  }
  for (int64_t j = whole; j < cols; ++j) {
    const T s0 = x0[j] * x0[j], s1 = x1[j] * x1[j], s2 = x2[j] * x2[j], s3 = x3[j] * x3[j];
    acc[j] = (((acc[j] + s0) + s1) + s2) + s3;
  }
  const int64_t r = cols - whole;
  sums[0] = finish(a0, x0 + whole, r); sums[1] = finish(a1, x1 + whole, r);
  sums[2] = finish(a2, x2 + whole, r); sums[3] = finish(a3, x3 + whole, r);
}

/* torch's mean(row_var, -2).clamp_(eps1) of each trailing matrix, for up to MEAN_ROWS rows
   (past them ATen sums on several threads: the driver calls torch) */
static inline void scales_of(int64_t t, const int64_t* meta, void* const* arrays, int64_t n, const double* h) {
  const int64_t rows = ROWS(t);
  if (rows > MEAN_ROWS) return;
  const T* row_var = (const T*)arrays[2 * n + t];
  T* scales = (T*)arrays[4 * n + t];
  for (int64_t b = 0; b < BATCHES(t); ++b)
    scales[b] = floor_t(cascade_sum(row_var + b * rows, rows) / (T)rows, (T)h[8]);
}

static void gradient_stats(int64_t t, const int64_t* meta, void* const* arrays, int64_t n, const double* h) {
  const int64_t rows = ROWS(t), cols = COLS(t);
  const T w = (T)h[0];
  T* acc = (T*)malloc(sizeof(T) * (size_t)cols);
  for (int64_t b = 0; b < BATCHES(t); ++b) {  /* each trailing matrix of a higher-rank tensor */
    const T* g = (const T*)arrays[1 * n + t] + b * rows * cols;
    T* row_var = (T*)arrays[2 * n + t] + b * rows;
    T* col_var = (T*)arrays[3 * n + t] + b * cols;
    for (int64_t j = 0; j < cols; ++j) acc[j] = (T)0;
    T sums[4];
    for (int64_t r = 0; r < rows;) {
      const T* row = g + r * cols;
      int k = 1;
      if (rows - r >= 4) {
        four_rows(row, cols, acc, sums);
        k = 4;
      } else {
        sums[0] = sum_squares(row, cols);
        for (int64_t j = 0; j < cols; ++j) acc[j] = acc[j] + row[j] * row[j];
      }
      for (int q = 0; q < k; ++q, ++r) {
        const T norm = norm_of(sums[q]);
        row_var[r] = lerp_t(row_var[r], (norm * norm) / (T)cols, w);
      }
    }
    if (cols == 1) acc[0] = sum_squares(g, rows);  /* (an N x 1 column is ATen's last-axis sum) */
    for (int64_t j = 0; j < cols; ++j) {
      const T norm = norm_of(acc[j]);
      col_var[j] = lerp_t(col_var[j], (norm * norm) / (T)rows, w);
    }
  }
  free(acc);
}

/* Two sums of squares at once (independent chains): the update's and its parameter's. */
static inline void add_two(Lanes* acc_u, const T* u, Lanes* acc_p, const T* p, int64_t n) {
  Lanes a = *acc_u, c = *acc_p;
  for (int64_t d = 0; d < n; d += ATEN_LANES) {
    const Lanes v = load_v(u + d), q = load_v(p + d);
    a = a + v * v; c = c + q * q;
  }
  *acc_u = a; *acc_p = c;
}

/* Work blocks of BLOCK elements over the tensors whose flags & mask are `want`: first[t] is
   tensor t's first block, first[n] the count (malloc'd); `locate` finds a block's tensor. */
enum { BLOCK = BUF * 32 };
static int64_t* blocks_of(int64_t n, const int64_t* meta, int64_t mask, int64_t want) {
  int64_t* first = (int64_t*)malloc(sizeof(int64_t) * (size_t)(n + 1));
  first[0] = 0;
  for (int64_t t = 0; t < n; ++t)
    first[t + 1] = first[t] + ((FLAGS(t) & mask) == want ? (SIZE(t) + BLOCK - 1) / BLOCK : 0);
  return first;
}
static inline int64_t locate(const int64_t* first, int64_t n, int64_t b) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) { const int64_t mid = (lo + hi + 1) / 2; if (first[mid] <= b) lo = mid; else hi = mid - 1; }
  return lo;
}

/* meta: see FLAGS; arrays: p, g, row_var or
   variance, col_var, scale (n each); h: weight, floor^2, rho, eps2, d, decay, maximize, decay?, eps1;
   norms: 2n doubles (the parameter's norm, the update's); scratch: the updates kept in phase 1,
   `threads` times the largest KEPT tensor, then each SHARED tensor's in turn (the driver's
   `Bound.scratch`: kept from step to step, as fresh memory costs a page fault per 4 KiB). */
static void pass(int64_t n, int64_t phase, const int64_t* meta, void* const* arrays,
                 const double* h, double* norms, int threads, T* scratch) {
  int64_t total = 0, largest = 0;  /* (largest: the largest kept tensor) */
  for (int64_t t = 0; t < n; ++t) {
    total += SIZE(t);
    if ((FLAGS(t) & KEPT) && SIZE(t) > largest) largest = SIZE(t);
  }
  const int many = total >= PARALLEL_MIN;
  /* where each SHARED tensor's update lies in scratch */
  int64_t* shared = (int64_t*)malloc(sizeof(int64_t) * (size_t)n);
  for (int64_t t = 0, at = largest * threads; t < n; ++t) {
    shared[t] = at;
    if (FLAGS(t) & SHARED) at += SIZE(t);
  }
  if (phase == 3) {  /* (the one-time check of the summation orders: each norm and mean) */
    for (int64_t t = 0; t < n; ++t) {
      norms[t] = (double)norm_of(sum_squares((const T*)arrays[t], SIZE(t)));
      norms[n + t] = (double)(cascade_sum((const T*)arrays[t], SIZE(t)) / (T)SIZE(t));
    }
  } else if (phase == 0) {
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if(many)
    for (int64_t item = 0; item < 2 * n; ++item) {
      const int64_t t = item / 2;
      const int64_t size = SIZE(t);
      if (item % 2 == 0) {
        if (!(FLAGS(t) & KEPT)) norms[t] = (double)norm_of(sum_squares((const T*)arrays[t], size));
      } else if (FLAGS(t) & MATRIX) {
        gradient_stats(t, meta, arrays, n, h);
        scales_of(t, meta, arrays, n, h);
      }
    }
  } else if (phase == 1) {
    int64_t* first = blocks_of(n, meta, SHARED, SHARED);
    #pragma omp parallel num_threads(threads) if(many)
    {
      /* a SHARED tensor's update, in blocks on every thread (its norm waits for all of it) */
      #pragma omp for schedule(static)
      for (int64_t b = 0; b < first[n]; ++b) {
        const int64_t t = locate(first, n, b), size = SIZE(t);
        const int64_t start = (b - first[t]) * BLOCK;
        const int64_t stop = start + BLOCK < size ? start + BLOCK : size;
        for (int64_t begin = start; begin < stop; begin += BUF) {
          const int64_t end = begin + BUF < stop ? begin + BUF : stop;
          update_block(t, begin, end, meta, arrays, n, h, 1, scratch + shared[t] + begin);
        }
      }
      T* kept = scratch + largest * omp_get_thread_num();  /* a kept tensor's update */
      #pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < n; ++t) {
        const int64_t size = SIZE(t);
        if (FLAGS(t) & SHARED) {
          norms[n + t] = (double)norm_of(sum_squares(scratch + shared[t], size));
          continue;
        }
        const int keep = (FLAGS(t) & KEPT) != 0;
        const T* p = (const T*)arrays[t];
        Lanes acc_u = {0}, acc_p = {0};
        T buffer[BUF];
        for (int64_t begin = 0; begin < size; begin += BUF) {
          const int64_t end = begin + BUF < size ? begin + BUF : size;
          const int64_t whole = (end - begin) - (end - begin) % ATEN_LANES;
          T* u = keep ? kept + begin : buffer;
          update_block(t, begin, end, meta, arrays, n, h, 1, u);
          /* (a kept tensor's parameter is read here, and is still in cache for its step) */
          if (keep) add_two(&acc_u, u, &acc_p, p + begin, whole);
          else add_vectors(&acc_u, u, whole);
          if (end == size) {
            norms[n + t] = (double)norm_of(finish(acc_u, u + whole, end - begin - whole));
            if (keep) norms[t] = (double)norm_of(finish(acc_p, p + begin + whole, end - begin - whole));
          }
        }
        if (keep) apply(t, 0, size, meta, arrays, norms, n, h, kept);
      }
    }
    free(first);
  } else {
    /* the tensors phase 1 did not step, in blocks: a SHARED one from its update, the others'
       recomputed */
    int64_t* first = blocks_of(n, meta, KEPT, 0);
    #pragma omp parallel for num_threads(threads) schedule(static) if(many && first[n] > 1)
    for (int64_t b = 0; b < first[n]; ++b) {
      const int64_t t = locate(first, n, b), size = SIZE(t);
      const int64_t start = (b - first[t]) * BLOCK;
      const int64_t stop = start + BLOCK < size ? start + BLOCK : size;
      if (FLAGS(t) & SHARED) {
        apply(t, start, stop, meta, arrays, norms, n, h, scratch + shared[t] + start);
        continue;
      }
      T u[BUF];
      for (int64_t begin = start; begin < stop; begin += BUF) {
        const int64_t end = begin + BUF < stop ? begin + BUF : stop;
        update_block(t, begin, end, meta, arrays, n, h, 0, u);
        apply(t, begin, end, meta, arrays, norms, n, h, u);
      }
    }
    free(first);
  }
  free(shared);
}

/* One phase, or (phase STEP) the whole step: the phases with work, in turn (one call a step
   where no matrix needs torch's mean between phases 0 and 1). */
enum { STEP = 4 };
void adaptim_adafactor(int64_t n, int64_t phase, const int64_t* meta, void* const* arrays,
                       const double* h, double* norms, int threads, T* scratch) {
  if (phase != STEP) {
    pass(n, phase, meta, arrays, h, norms, threads, scratch);
    return;
  }
  int first = 0, large = 0;
  for (int64_t t = 0; t < n; ++t) {
    first |= (FLAGS(t) & MATRIX) || !(FLAGS(t) & KEPT);
    large |= !(FLAGS(t) & KEPT);
  }
  if (first) pass(n, 0, meta, arrays, h, norms, threads, scratch);
  pass(n, 1, meta, arrays, h, norms, threads, scratch);
  if (large) pass(n, 2, meta, arrays, h, norms, threads, scratch);
}
"""

#: Tensors of at most this many elements are stepped in phase 1, from their update kept
#: in a buffer per thread (L2-sized: 1 MiB of float32), instead of recomputed in phase 2.
KEEP = 1 << 18


#: Matrices of at most this many rows take ``mean(row_var)`` in C: ATen sums more than
#: its ``GRAIN_SIZE`` on several threads (another order), so past it torch computes it.
MEAN_ROWS = 32_768


def kept(numel: int, total: int, threads: int) -> str:
    """How phase 1 takes a tensor of ``numel`` elements, in a partition of ``total``.

    ``"kept"``: on one thread (its norms are sequential sums), stepped from its update
    kept in that thread's buffer. A tensor larger than a thread's share of the partition
    would leave the other threads idle so: ``"shared"``, its update is computed on every
    thread into a buffer of its own, its norm summed on one while the others take other
    tensors, and phase 2 steps it on every thread. Past ``KEEP`` elements (no buffer):
    ``"blocks"``, the update's norm on one thread and the step recomputing it in phase 2.
    """
    if numel > KEEP:
        return "blocks"
    return "kept" if numel * threads <= total else "shared"


_TYPES = {torch.float32: ("float", "sqrtf"), torch.float64: ("double", "sqrt")}
#: The integer of a number's bits, its exponent field, half the gap above 1, the least normal
#: number, the largest finite one.
_BITS = {
    torch.float32: (
        "unsigned int",
        "0x7f800000u",
        "0x1p-24f",
        "0x1p-126f",
        "0x1.fffffep127f",
        "fabsf",
    ),
    torch.float64: (
        "unsigned long long",
        "0x7ff0000000000000ull",
        "0x1p-53",
        "0x1p-1022",
        "0x1.fffffffffffffp1023",
        "fabs",
    ),
}


def source(dtype: torch.dtype, parallel_min: int) -> str:
    """The C for ``dtype`` (float32 or float64)."""
    ctype, sqrt = _TYPES[dtype]
    unsigned, exponent, half_epsilon, normal, largest, fabs = _BITS[dtype]
    head = (
        f"typedef {ctype} T;\n{_aten_sums.header(dtype)}#define SQRT {sqrt}\n"
        f"typedef {unsigned} UNSIGNED;\n#define EXPONENT_BITS {exponent}\n#define FABS {fabs}\n"
        f"#define HALF_EPSILON {half_epsilon}\n#define T_NORMAL {normal}\n"
        f"#define T_LARGEST {largest}\n"
        f"#define PARALLEL_MIN {parallel_min}\n#define KEEP {KEEP}\n#define MEAN_ROWS {MEAN_ROWS}\n"
    )
    return head + _BODY.replace("@SUMS@", _aten_sums.SUMS)
