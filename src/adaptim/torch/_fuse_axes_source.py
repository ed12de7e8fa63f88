"""The C of a fused run with per-axis operands (:mod:`._fuse_axes`), for one dtype.

One function ``adaptim_axes`` walks the matrices of a chunk in work items of
whole rows (one OpenMP region; a thread per item, as :mod:`._fuse`'s blocks).
Within an item it takes groups of rows (or pieces of a long row) of at most
:data:`~._fuse_axes.TILE` elements. Each ``sqrt`` splits the run into
*segments*: one loop over the tile computes what comes before it (writing the
values later segments read into small tile buffers, and the argument of the
square root into another), MKL takes the square roots of the tile in one call,
and the next loop goes on from there. Row maxima are kept per row of the group
(a ``simd`` max reduction, NaN tracked beside it); column maxima in one
partial vector per thread, combined after the region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from adaptim.torch import _fuse
from adaptim.torch._mkl_sqrt import VML_MODE, tile_sqrt_source
from adaptim.torch._trace import Ref, Structure

if TYPE_CHECKING:
    from adaptim.torch._fuse_axes import AxesRun

#: Elements per tile (whole rows of a narrow matrix, a piece of a row of a wide one):
#: the values carried from one ``sqrt`` call to the next. (Measured: 256 as fast as
#: one call per 240-element row, 512 and 1,024 slower.)
TILE = 256
#: Elements per tile of a loop without root tiles (``rounded``): nothing is carried, so
#: a tile is a whole row (up to this) or a group of short rows. (Measured, SM3 on 26 240²
#: matrices, one thread, interleaved: 1,024 and 4,096 took 0.88-0.90x the step time of
#: 256, 16,384 0.96x; on the MLP's matrices no difference.)
ROW_TILE = 1024
#: The comparisons a run takes, as C operators (their results are masks, ``int``).
COMPARISONS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def generate_source(
    structure: Structure,
    run: AxesRun,
    ops: _fuse.Operands,
    dtype: torch.dtype,
    own_sqrt: bool = False,
    rounded: bool = False,
) -> str:
    """The C loop of ``run`` over 2-D tensors of ``dtype``: whole rows (or pieces of long ones) in tiles of :data:`TILE`.

    Square roots: MKL's function (``extra[0]``), or with ``own_sqrt`` the same
    algorithm in C (:func:`._mkl_sqrt.tile_sqrt_source`); each splits the run into
    segments. With ``rounded`` the correctly rounded ``sqrt`` is inlined instead
    (the native loop's default, :data:`._native.EXACT_ROOT` off): the run is then one
    segment, a single vectorised pass over each element.
    """
    suffix = "f" if dtype == torch.float32 else ""
    spans = dict(run.spans)
    names: dict[Ref, str] = {}
    for prefix, refs in (("e", ops.elements), ("p", ops.tensors), ("h", ops.hosts)):
        names.update({ref: f"{prefix}{k}" for k, ref in enumerate(refs)})
    vectors = {ref: f"V{k}" for k, ref in enumerate(ops.vectors)}
    maxima = [i for i in run.fused if spans[i] == "M" and i in ops.outputs]
    outputs = [i for i in ops.outputs if spans[i] != "M"]
    # Segments: a ``sqrt`` ends one (its argument goes to MKL for the tile) and starts the next.
    segment_of: dict[int, int] = {}
    segment = 0
    for index in run.fused:
        segment_of[index] = segment
        segment += structure.ops[index][0] == "sqrt" and not rounded
    is_mask = {i for i in run.fused if structure.ops[i][0] in COMPARISONS}

    def text(ref: Ref, here: int) -> str:
        if ref in names:
            return names[ref]
        if ref[0] == "node":
            node = ref[1]
            if structure.ops[node][0] == "sqrt" and not rounded:
                return f"r{node}[k]"  # (MKL's results for this tile)
            if segment_of[node] == here or structure.ops[node][0] == "axis_piece":
                return f"v{node}"
            return f"c{node}[k]"  # carried over from an earlier segment of this tile
        if ref[0] == "slot":
            return f"s{ref[1]}"
        return _fuse._literal(ref[1])

    carried = sorted(
        {
            a[1]
            for i in run.fused
            for a in structure.ops[i][1]
            if a[0] == "node"
            and a[1] in segment_of
            and segment_of[a[1]] != segment_of[i]
            and structure.ops[a[1]][0] not in ("axis_piece", "sqrt")
        }
    )
    loops: list[str] = []
    for here in range(segment + 1):
        members = [i for i in run.fused if segment_of[i] == here]
        used = {a for i in members for a in structure.ops[i][1]}
        pieces = {
            a[1] for i in members for a in structure.ops[i][1] if a[0] == "node" and a[1] in spans
        } | set(members)
        reductions = [i for i in maxima if segment_of[i] == here]
        pragma = "          #pragma omp simd"
        if reductions:
            pragma += "".join(f" reduction(max:rmv{k}) reduction(|:rnv{k})" for k in reductions)
        body = [
            "        for (int64_t ri = 0; ri < nr; ++ri) {",
            "          const int64_t i = i0 + ri;",
            *[f"          T rmv{m} = rm{m}[ri]; int rnv{m} = rn{m}[ri];" for m in reductions],
            pragma,
            "          for (int64_t jj = 0; jj < w; ++jj) {",
            "          const int64_t j = j0 + jj, x = i * cols + j, k = ri * w + jj;",
        ]
        body += [
            f"          const T {names[r]} = E{names[r][1:]}[x];" for r in ops.elements if r in used
        ]
        for node in sorted(pieces):
            op, args = structure.ops[node]
            if op == "axis_piece":
                at = "i" if args[2][1] == 0 else "rows + j"
                body.append(f"          const T v{node} = {vectors[args[0]]}[{at}];")
        for node in members:
            op, args = structure.ops[node]
            if op == "axis_piece":
                continue
            if op == "axis_maxima":
                if node not in maxima:
                    continue
                value = text(args[0], here)
                body.append(f"          rmv{node} = {value} > rmv{node} ? {value} : rmv{node};")
                body.append(f"          rnv{node} |= {value} != {value};")
                body.append(f"          col{node}[j] = nanmax_t(col{node}[j], {value});")
                continue
            a = [text(x, here) for x in args]
            if op == "sqrt" and rounded:
                body.append(f"          const T v{node} = sqrt{suffix}({a[0]});")
                continue
            if op == "sqrt":
                body.append(f"          q{node}[k] = {a[0]};")
                continue
            if op in COMPARISONS:
                expression = f"{a[0]} {COMPARISONS[op]} {a[1]}"
            elif op == "where":
                expression = f"{a[0]} ? {a[1]} : {a[2]}"
            elif op in ("minimum", "maximum"):
                expression = f"{op[:3]}_t({a[0]}, {a[1]})"
            else:
                expression = _fuse.c_expression(op, a, suffix)
            body.append(
                f"          const {'int' if node in is_mask else 'T'} v{node} = {expression};"
            )
        body += [
            f"          O{k}[x] = v{node};"
            for k, node in enumerate(outputs)
            if segment_of[node] == here
        ]
        body += [f"          c{node}[k] = v{node};" for node in carried if segment_of[node] == here]
        body.append("          }")
        body += [f"          rm{m}[ri] = rmv{m}; rn{m}[ri] = rnv{m};" for m in reductions]
        body.append("        }")
        loops += body
        for node in members:
            if structure.ops[node][0] == "sqrt" and not rounded:
                loops.append(
                    f"        mkl_sqrt_tile(nr * w, q{node}, r{node});"
                    if own_sqrt
                    else f"        vsqrt((int)(nr * w), q{node}, r{node}, {VML_MODE}LL);"
                )
    roots = [i for i in run.fused if structure.ops[i][0] == "sqrt" and not rounded]
    tile = ROW_TILE if rounded else TILE
    slots = sorted({x[1] for i in run.fused for x in structure.ops[i][1] if x[0] == "slot"})
    n_e, n_v, n_p, n_h = len(ops.elements), len(ops.vectors), len(ops.tensors), len(ops.hosts)
    base = n_e + n_v + n_p
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "#include <stdlib.h>",
        "#include <omp.h>",
        "#ifndef __FMA__",
        '#error "ATen fuses multiply-adds only where the CPU has FMA"',
        "#endif",
        f"typedef {_fuse._CTYPES[dtype]} T;",
        "typedef void (*vsqrt_t)(int, const T*, T*, long long);",
        *([tile_sqrt_source(dtype)] if own_sqrt and roots else []),
        f"static inline T lerp_t(T a, T b, T w) {{ return w < (T)0.5 ? fma{suffix}(w, b - a, a)"
        f" : fma{suffix}(w - (T)1, b - a, b); }}",
        "static inline T clip_t(T x, T lo, T hi) { const T y = x < lo ? lo : x; return y > hi ? hi : y; }",
        "static inline T min_t(T a, T b) { return (a != a || b != b) ? (T)NAN : (a < b ? a : b); }",
        "static inline T max_t(T a, T b) { return (a != a || b != b) ? (T)NAN : (a > b ? a : b); }",
        "static inline T nanmax_t(T m, T x) { return (x > m || x != x) ? x : m; }",
        "void adaptim_axes(int64_t n, const int64_t* shape, void* const* arrays, const double* hosts,",
        "                  const double* s, void* const* extra, int threads) {",
        "  const vsqrt_t vsqrt = (vsqrt_t)extra[0];",
        "  (void)vsqrt; (void)hosts;",
        *[f"  const T s{k} = (T)s[{k}];" for k in slots],
        "  int64_t* first = (int64_t*)malloc(sizeof(int64_t) * (size_t)(2 * n + 2));",
        "  int64_t* offset = first + n + 1;",
        "  first[0] = 0; offset[0] = 0;",
        "  int64_t largest = 0;",
        "  for (int64_t t = 0; t < n; ++t) {",
        f"    const int64_t rows = shape[2 * t], cols = shape[2 * t + 1], per = cols < {_fuse.BLOCK} ? {_fuse.BLOCK} / cols : 1;",
        "    first[t + 1] = first[t] + (rows + per - 1) / per;",
        "    offset[t + 1] = offset[t] + cols;",
        "    largest = rows * cols > largest ? rows * cols : largest;",
        "  }",
        "  const int64_t blocks = first[n], width = offset[n];",
        f"  const int team = blocks > 1 && largest >= {_fuse.PARALLEL_MIN_NUMEL} ? threads : 1;",
        f"  T* partial = (T*)malloc(sizeof(T) * (size_t)(team * width * {max(len(maxima), 1)}));",
        "  #pragma omp parallel num_threads(team)",
        "  {",
        f"    T* mine = partial + (int64_t)omp_get_thread_num() * width * {max(len(maxima), 1)};",
        f"    for (int64_t q = 0; q < width * {max(len(maxima), 1)}; ++q) mine[q] = -(T)INFINITY;",
        *[f"    T q{r}[{TILE}], r{r}[{TILE}];" for r in roots],
        *[f"    {'int' if c in is_mask else 'T'} c{c}[{TILE}];" for c in carried],
        *[f"    T rm{m}[{tile}]; int rn{m}[{tile}];" for m in maxima],
        "    #pragma omp for schedule(static)",
        "    for (int64_t b = 0; b < blocks; ++b) {",
        "      int64_t lo = 0, hi = n - 1;",
        "      while (lo < hi) { const int64_t mid = (lo + hi + 1) / 2; if (first[mid] <= b) lo = mid; else hi = mid - 1; }",
        "      const int64_t t = lo, rows = shape[2 * t], cols = shape[2 * t + 1];",
        f"      const int64_t per = cols < {_fuse.BLOCK} ? {_fuse.BLOCK} / cols : 1, begin = (b - first[t]) * per;",
        "      const int64_t end = begin + per < rows ? begin + per : rows;",
        *[f"      const T* E{k} = (const T*)arrays[{k} * n + t];" for k in range(n_e)],
        *[f"      const T* V{k} = (const T*)arrays[{n_e + k} * n + t];" for k in range(n_v)],
        *[f"      const T p{k} = *(const T*)arrays[{n_e + n_v + k} * n + t];" for k in range(n_p)],
        *[f"      const T h{k} = (T)hosts[{k} * n + t];" for k in range(n_h)],
        *[f"      T* O{k} = (T*)arrays[{base + k} * n + t];" for k in range(len(outputs))],
        *[
            f"      T* M{m} = (T*)arrays[{base + len(outputs) + k} * n + t];"
            for k, m in enumerate(maxima)
        ],
        *[f"      T* col{m} = mine + {k} * width + offset[t];" for k, m in enumerate(maxima)],
        f"      const int64_t group = cols < {tile} ? {tile} / cols : 1;",
        "      for (int64_t i0 = begin; i0 < end; i0 += group) {",
        "        const int64_t nr = end - i0 < group ? end - i0 : group;",
        *[
            f"        for (int64_t ri = 0; ri < nr; ++ri) {{ rm{m}[ri] = -(T)INFINITY; rn{m}[ri] = 0; }}"
            for m in maxima
        ],
        f"        for (int64_t j0 = 0; j0 < cols; j0 += {tile}) {{",
        f"        const int64_t w = cols - j0 < {tile} ? cols - j0 : {tile};",
        *loops,
        "        }",
        *[
            f"        for (int64_t ri = 0; ri < nr; ++ri) M{m}[i0 + ri] = rn{m}[ri] ? (T)NAN : rm{m}[ri];"
            for m in maxima
        ],
        "      }",
        "    }",
        "  }",
        "  for (int64_t t = 0; t < n; ++t) {",
        *[
            f"    T* M{m} = (T*)arrays[{base + len(outputs) + k} * n + t];"
            for k, m in enumerate(maxima)
        ],
        "    for (int64_t j = 0; j < shape[2 * t + 1]; ++j) {",
        *[
            f"      T m{m} = -(T)INFINITY;\n"
            f"      for (int u = 0; u < team; ++u) m{m} = nanmax_t(m{m}, partial[(u * {max(len(maxima), 1)} + {k}) * width + offset[t] + j]);\n"
            f"      M{m}[shape[2 * t] + j] = m{m};"
            for k, m in enumerate(maxima)
        ],
        "    }",
        "  }",
        "  free(partial);",
        "  free(first);",
        "}",
    ]
    return "\n".join(lines) + "\n"
