"""The C source of :mod:`._lowmem_native`'s loop: a rule rendered over bf16 and 8-bit state.

:class:`_Source` extends :mod:`._native`'s renderer with the loads and stores
of encoded entries: bf16 widening and stochastic rounding (one counter-based
hash per element and stream, :func:`rounding_streams`), and for 8-bit state
the walk over quantisation blocks, each decoded into a stack buffer, updated
and re-encoded with its new block maximum (:mod:`._lowmem_codes`,
:mod:`._lowmem_segments`), every stream's lines asked for a few blocks ahead
on steps too large for the caches (:data:`PREFETCH_BLOCKS`). An 8-bit rule's ``sqrt`` is ``torch.sqrt``'s (MKL's
algorithm, :data:`_ROOT_BLOCK`) and its division by a step's scalar a true
division, so that the loop stores the reference path's bits; the root splits
the block's update into passes (:meth:`_Source.segment`). The default loop's
update is written on vectors where the compiler targets AVX-512, its divisions
off the divider (:mod:`._lowmem_vector`).

Kept apart from :mod:`._lowmem_native`, which decides what the loop can take,
compiles and caches the kernels, and binds and launches them per partition:
this module only writes C text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from adaptim.torch import _lowmem, _mkl_sqrt, _native, _rounding
from adaptim.torch import _lowmem_codes as _codes
from adaptim.torch import _lowmem_segments as _segments
from adaptim.torch import _lowmem_vector as _vector
from adaptim.torch import _native_fragments as _fragments
from adaptim.torch._trace import Ref, Structure

#: How many quantisation blocks ahead the 8-bit loop asks for its streams (into L2,
#: ``prefetcht1``). A block is three short passes (decode, update, encode), and the
#: hardware prefetcher alone left the loop waiting on memory: on 16M elements, one
#: thread, it took ~1.0 ns an element more than in cache. Kernel alone, paired runs
#: on the same tensors, one thread, loaded (Xeon, KVM): 16M 0.87x the time without
#: (2 blocks ahead 0.92x, 8 0.89x, 16 0.96x; the codes alone 0.98x), 262k (in
#: cache) 1.02x.
PREFETCH_BLOCKS = 4
#: From how many blocks in a step (all threads) the loop looks ahead: 1M elements, ~16 MiB
#: of streams. Below, the tensors stay in the outer caches between steps and the requests
#: only cost (262k elements: 1.01-1.03x the time with them).
PREFETCH_FROM = 4096

#: The loop over work items when a state is 8-bit: each thread takes an equal share of
#: the quantisation blocks of all tensors (a static schedule of work items gave one of
#: two threads 56% of the MLP's 8-bit elements), walking the items to find its range.
_BALANCED = [
    "  int64_t total = 0;",
    "  for (int64_t b = 0; b < blocks; ++b) total += (block_end[b] - block_begin[b] + QBLOCK - 1) / QBLOCK;",
    f"  const int far = total >= {PREFETCH_FROM};  /* (streams past the caches: look ahead) */",
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
    # (ATen's lerp, anchored at the nearer end; the choices written as selects of the
    # operands so that, with a loop-invariant weight, the compiler splits the loop
    # instead of computing both ends for every element)
    "static inline T lerp_t(T a, T b, T w) { const int near_a = w < (T)0.5;"
    " return fmaf(near_a ? w : w - (T)1, b - a, near_a ? a : b); }",
    "static inline uint32_t mix32(uint32_t x) {",
    "  x ^= x >> 16; x *= {}u; x ^= x >> 15; x *= {}u; return x ^ (x >> 16);".format(
        *_rounding.MIX_MULTIPLIERS
    ),
    "}",
    "static inline float bf16_load(uint16_t h) {",
    "  const uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f;",
    "}",
    # (the 8-bit loop's look-ahead: one request per cache line, into L2)
    "static inline void prefetch_r(const void* p, int bytes) {",
    "  for (int k = 0; k < bytes; k += 64) __builtin_prefetch((const char*)p + k, 0, 2);",
    "}",
    "static inline void prefetch_w(const void* p, int bytes) {",
    "  for (int k = 0; k < bytes; k += 64) __builtin_prefetch((const char*)p + k, 1, 2);",
    "}",
    "static inline uint16_t bf16_round(float f, uint32_t noise) {",
    "  uint32_t b; memcpy(&b, &f, 4);",
    "  return f != f ? (uint16_t)0x7FC0 : (uint16_t)((b + noise) >> 16);",
    "}",
]


#: Whether the 8-bit loop computes the reference path's bits (:class:`_Source`): MKL's root
#: and true divisions, which cost it 16-23% of its time against ``sqrtf`` (whose square root
#: unit works beside the multiply and add pipes the loop fills) and a reciprocal. Off by
#: default: 8-bit moments are approximate by design (checked against bitsandbytes within
#: the quantisation error), the loop is compute-bound, and that price took it below
#: torch's float32 Adam (two threads, idle: MLP 0.96x -> 0.76x, 1.5M 1.21x -> 0.94x). Off,
#: the loop agrees with the reference path to float32 rounding.
EXACT_8BIT = False

#: MKL's float32 root (:mod:`._mkl_sqrt`) over a block, 16 lanes at a time
#: (``mkl_sqrt_16``); otherwise ``mkl_sqrt_tile`` itself. MKL's MXCSR (no flush to zero) for the call.
_ROOT_BLOCK = r"""
#if defined(__AVX512F__) && defined(__AVX512DQ__)
static void root_block(int64_t n, const T* q, T* r) {
  const unsigned int csr = _mm_getcsr(), mode = (csr & 0x3fu) | 0x1f80u;
  if (csr != mode) _mm_setcsr(mode);
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) _mm512_storeu_ps(r + k, mkl_sqrt_16(_mm512_loadu_ps(q + k)));
  if (k < n) {  /* (lanes past the end take 1.0, as mkl_sqrt_tile's) */
    const __mmask16 live = (__mmask16)((1u << (n - k)) - 1u);
    const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), live, q + k);
    _mm512_mask_storeu_ps(r + k, live, mkl_sqrt_16(x));
  }
  if (csr != mode) _mm_setcsr(csr);
}
#else
#define root_block mkl_sqrt_tile
#endif
"""


def _prefetches(inputs: Sequence[str], kinds: Sequence[str], written: set[str]) -> list[str]:
    """C lines: ask for every streamed input's span :data:`PREFETCH_BLOCKS` blocks ahead."""
    ahead = f"c + {PREFETCH_BLOCKS} * QBLOCK"
    width = {"element": "sizeof(T)", "bf16": "2", "q8": "1"}
    lines = [f"      if (far && {ahead} < end) {{"]
    for name, kind in zip(inputs, kinds, strict=True):
        lines.append(
            f"        prefetch_{'w' if name in written else 'r'}({name} + {ahead},"
            f" QBLOCK * {width[kind]});"
        )
    return [*lines, "      }"]


def rounding_streams(rounded: Sequence[str]) -> list[str]:
    """The hashes a kernel draws per element for the bf16 entries ``rounded``, in order.

    One per :func:`._rounding.rounding_stream`: partners share their entry's.
    """
    return list(dict.fromkeys(map(_rounding.rounding_stream, rounded)))


class _Source(_native._Source):
    """Renders a structure whose state inputs are bf16 or 8-bit (``encodings``, by input name)."""

    def __init__(
        self, structure: Structure, encodings: Mapping[str, str], in_cache: bool = True
    ) -> None:
        super().__init__(structure, torch.float32)
        self.encodings = encodings
        #: Whether the steps stay in the caches (under :data:`PREFETCH_FROM` blocks): only then
        #: may the update be written on vectors (:mod:`._lowmem_vector`).
        self.in_cache = in_cache
        quantized = "q8" in encodings.values() and EXACT_8BIT
        #: 8 bits: a division by a step's scalar divides (ATen's ``tensor / float``), not
        #: multiplies by its reciprocal, and ``sqrt`` is MKL's (``torch.sqrt``'s bits)
        #: where this process found :mod:`._mkl_sqrt`'s C to give them.
        self.exact = quantized
        roots = any(op == "sqrt" for op, _ in structure.ops)
        self.own_root = quantized and roots and _mkl_sqrt.emulated(torch.float32)

    def node(self, index: int, context: str) -> str:
        op, args = self.structure.ops[index]
        if self.exact and op == "div" and args[1][0] == "slot":
            return f"{self.text(args[0], context)} / s{args[1][1]}"
        return super().node(index, context)

    def root_depths(self) -> dict[int, int]:
        """Per node, how many square roots lie on its deepest path (its own included)."""
        depth: dict[int, int] = {}
        for index, (op, args) in enumerate(self.structure.ops):
            level = max((depth[a[1]] for a in args if a[0] == "node"), default=0)
            depth[index] = level + 1 if op == "sqrt" else level
        return depth

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
        body = list(_BALANCED) if quantized else list(_fragments.BALANCED_OPEN)
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
            body += _fragments.BALANCED_RANGE
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
            body += _prefetches(inputs, kinds, written)
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
        # (an 8-bit loop with MKL's root: one pass per depth of square roots, see _segment)
        depth = self.root_depths() if quantized and self.own_root else {}
        passes = []
        for segment in range(max(depth.values(), default=0) + 1):
            passes += self.segment(segment, depth, indent, (begin, stop), streams)
        # (the non-exact 8-bit update on AVX-512 vectors where compiled so: _lowmem_vector)
        vector = bool(quantized) and not self.exact and not rounded and _vector.VECTOR_UPDATE
        vector = vector and self.in_cache and _vector.suits(structure)
        if vector:
            passes = _vector.beside(passes, structure, self.encodings, indent, self.reciprocals)
        body += passes
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
        body += [*_fragments.count_steps(len(inputs) + len(quantized)), "}"]
        lines = [*_HEADER, *_fragments.RANGES]
        if quantized:
            lines += _codes.VBMI_HEADER
        if vector:
            lines.append(_vector.header())
        if depth:
            lines += [_mkl_sqrt.tile_sqrt_source(torch.float32), _ROOT_BLOCK]
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

    def segment(
        self,
        here: int,
        depth: Mapping[int, int],
        indent: str,
        bounds: tuple[str, str],
        streams: list[str],
    ) -> list[str]:
        """Pass ``here`` of the element loop: the nodes ``depth`` puts at or below it.

        Without own square roots (``depth`` empty) there is one pass, the whole
        rule. With them, pass ``d`` stores the arguments of the roots of depth
        ``d + 1``, whose roots :func:`._mkl_sqrt.tile_sqrt_source` then takes
        for the block (MKL's algorithm is a handful of whole-vector operations
        the compiler would not emit from scalar C); a later pass reloads its
        inputs and recomputes what it needs, or reads an 8-bit entry's new
        values back from its block buffer. Each output is stored by the first
        pass that has it.
        """
        structure = self.structure
        inputs = structure.inputs
        last = max(depth.values(), default=0)

        def ready(ref: Ref) -> int:
            return depth.get(ref[1], 0) if ref[0] == "node" else 0

        stored = [(name, ref) for name, ref in structure.outputs if ready(ref) == here]
        # (8-bit entries stored by an earlier pass: their block buffers hold the values)
        kept = {
            ref[1]: name
            for name, ref in structure.outputs
            if ref[0] == "node" and self.encodings.get(name) == "q8" and ready(ref) < here
        }
        roots = [k for k, (op, _) in enumerate(structure.ops) if op == "sqrt" and depth]
        # (a root's argument: an 8-bit entry's block buffer, or stored for it in ``sq``)
        argument: dict[int, str] = {}
        for k in (k for k in roots if depth[k] == here + 1):
            ref = structure.ops[k][1][0]
            owner = [n for n, r in structure.outputs if r == ref and n in self.encodings]
            queued = owner and self.encodings[owner[0]] == "q8"
            argument[k] = f"new_{owner[0]}" if queued else f"sq{k}"
        body = [f"{indent}T {a}[QBLOCK];" for a in argument.values() if a.startswith("sq")]
        body += [f"{indent}T root{k}[QBLOCK];" for k in argument]
        tops = [f"top_{name}" for name, _ in stored if self.encodings.get(name) == "q8"]
        reduction = f" reduction(max:{', '.join(tops)})" if tops else ""
        body.append(f"{indent}#pragma omp simd{reduction}")
        body.append(f"{indent}for (int64_t i = {bounds[0]}; i < {bounds[1]}; ++i) {{")
        inner = indent + "  "
        refs = {a for _, args in structure.ops for a in args} | {r for _, r in structure.outputs}
        for index, name in enumerate(inputs):
            if ("input", index) not in refs:
                continue
            kind = self.encodings.get(name, "element")
            if kind == "bf16":
                value = f"bf16_load({name}[i])"
            elif kind == "q8":
                value = f"dec_{name}[i - c]"
            else:
                value = f"{name}[i]"
            body.append(f"{inner}const T in{index} = {value};")
        for index, (op, _) in enumerate(structure.ops):
            if depth.get(index, 0) > here:
                continue
            if index in kept:
                value = f"new_{kept[index]}[i - c]"
            elif index in roots:
                value = f"root{index}[i - c]"
            else:
                value = self.node(index, "element")
            kind = "int" if op in _native._COMPARE or op in ("and", "or") else "T"
            body.append(f"{inner}const {kind} v{index} = {value};")
        for k, name in argument.items():
            if name.startswith("sq"):
                body.append(
                    f"{inner}{name}[i - c] = {self.text(structure.ops[k][1][0], 'element')};"
                )
        # One hash per element and stream: its top half rounds one entry, its low
        # half the entry's partner (``_state_codes.ROUNDING_PARTNERS``).
        hashed = {
            _rounding.rounding_stream(name.removeprefix("state_"))
            for name, _ in stored
            if self.encodings.get(name) == "bf16"
        }
        for stream in streams:
            if stream in hashed:
                body.append(
                    f"{inner}const uint32_t h_{stream} = mix32((uint32_t)i ^ key_{stream});"
                )
        for name, ref in stored:
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
        if here < last:
            body += [f"{indent}root_block(cend - c, {a}, root{k});" for k, a in argument.items()]
        return body


def generate_source(
    structure: Structure, encodings: Mapping[str, str], in_cache: bool = True
) -> str:
    """The C source of ``structure`` with the state inputs stored as ``encodings`` says.

    ``in_cache``: for steps under :data:`PREFETCH_FROM` blocks (the vector update's).
    """
    return _Source(structure, encodings, in_cache).source()
