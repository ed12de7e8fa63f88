"""The C source of a native step: one OpenMP function over every tensor of a partition.

:func:`generate_source` renders a recorded :class:`~adaptim.torch._trace.Structure`
as C; :mod:`._native` compiles, caches and calls it. The element-wise pass
gives each thread one contiguous range of the concatenated tensors, of equal
length whatever the tensor sizes; the passes that sum squares for a norm
(LARS, LAMB, NovoGrad) walk fixed blocks instead, so their sums do not depend on
the thread count, or, in ATen's order (``aten_norms``: the exact loop), each
tensor whole on one thread (:mod:`._native_norms`).
"""

from __future__ import annotations

import torch

from adaptim.torch import _native_fragments as _fragments
from adaptim.torch import _native_norms
from adaptim.torch._trace import Ref, Structure

_CTYPES = {torch.float32: "float", torch.float64: "double"}

#: Operations a native kernel can express; anything else stays on the multi-tensor replay.
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMPARE = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}
SUPPORTED = frozenset(
    {*_BINARY, *_COMPARE, "and", "or", "neg", "abs", "sqrt", "pow", "maximum", "minimum"}
    | {"where", "clip"}
    | {"axpy", "addcmul", "lerp"}
)


def supports(structure: Structure) -> str | None:
    """Why ``structure`` cannot become a native kernel, or ``None`` when it can."""
    unknown = sorted({op for op, _ in structure.ops} - SUPPORTED - {"norm"})
    if unknown:
        return f"no native form for {', '.join(unknown)}"
    if structure.created:
        return "the rule creates state on this step"
    if structure.reduced_inputs:
        return "state that is neither element-wise nor 0-d"
    per_tensor = structure.per_tensor_nodes()
    for op, args in structure.ops:
        operand = args[0] if args else ("slot", 0)
        per_tensor_input = (
            operand[0] == "input" and structure.inputs[operand[1]] in structure.per_tensor_inputs
        )
        if op == "norm" and (
            operand[0] not in ("node", "input")
            or per_tensor_input
            or (operand[0] == "node" and operand[1] in per_tensor)
        ):
            return "a norm of something other than an element-wise array"
    return None


def _expression(op: str, a: list[str], args: tuple[Ref, ...], suffix: str) -> str:
    """One operation as a C expression over already-rendered operands."""
    if op in _BINARY:
        return f"{a[0]} {_BINARY[op]} {a[1]}"
    if op in _COMPARE:
        return f"{a[0]} {_COMPARE[op]} {a[1]}"
    if op == "and":
        return f"{a[0]} && {a[1]}"
    if op == "or":
        return f"{a[0]} || {a[1]}"
    if op == "neg":
        return f"-{a[0]}"
    if op == "abs":
        return f"fabs{suffix}({a[0]})"
    if op == "sqrt":
        return f"sqrt{suffix}({a[0]})"
    if op == "pow":
        exponent = float(args[1][1])
        if exponent == 0.0:  # 1 for every x, NaN included (Rprop's ones): no call per element
            return "(T)1"
        return f"{a[0]} * {a[0]}" if exponent == 2.0 else f"pow{suffix}({a[0]}, {a[1]})"
    if op == "maximum":
        return f"max_t({a[0]}, {a[1]})"
    if op == "minimum":
        return f"min_t({a[0]}, {a[1]})"
    if op == "where":
        return f"{a[0]} ? {a[1]} : {a[2]}"
    if op == "clip":
        return f"clip_t({a[0]}, {a[1]}, {a[2]})"
    if op == "axpy":  # ATen's add(alpha=) is a fused multiply-add
        return f"fma{suffix}({a[2]}, {a[1]}, {a[0]})"
    if op == "addcmul":  # ATen: self + (value * t1) * t2, the last two fused
        return f"fma{suffix}({a[3]} * {a[1]}, {a[2]}, {a[0]})"
    return f"lerp_t({a[0]}, {a[1]}, {a[2]})"


class _Source:
    """Renders a structure as C: reduction passes for norms, then one element-wise pass."""

    def __init__(
        self,
        structure: Structure,
        dtype: torch.dtype,
        *,
        exact_division: bool = False,
        aten_norms: bool = False,
    ) -> None:
        self.structure = structure
        #: Divide by a per-step scalar as ATen does (element by element), not by its reciprocal.
        self.exact_division = exact_division
        #: Sum each norm as ``torch.linalg.vector_norm`` (:mod:`._native_norms`), not per block.
        self.aten_norms = aten_norms
        self.dtype = dtype
        self.ctype = _CTYPES[dtype]
        self.suffix = "f" if self.ctype == "float" else ""
        self.per_nodes = structure.per_tensor_nodes()
        self.per_slot = {node: k for k, node in enumerate(sorted(self.per_nodes))}
        self.norms = [i for i, (op, _) in enumerate(structure.ops) if op == "norm"]
        self.norm_slot = {node: k for k, node in enumerate(self.norms)}
        self.stage: dict[int, int] = {}
        for index, (op, args) in enumerate(structure.ops):
            level = max((self.stage_of(a) for a in args), default=0)
            self.stage[index] = level + 1 if op == "norm" else level
        self.reciprocals: set[int] = set()

    #: The C type tensors are stored in (:mod:`._native_half`: float16 or bfloat16 bits).
    storage = "T"

    def load(self, element: str) -> str:
        """An element read from storage as a ``T`` (the half loops widen it)."""
        return element

    def prelude(self) -> list[str]:
        """C helpers after ``typedef ... T`` (the half loops' conversions)."""
        return []

    def slot(self, index: int) -> str:
        """The value of slot ``index`` (this step's scalar ``s[index]``) as a ``T``."""
        return f"(T)s[{index}]"

    def function_head(self) -> list[str]:
        """C at the top of the kernel function, before the parallel regions."""
        return []

    def loop_open(self, clause: str) -> list[str]:
        """The loop over elements ``[begin, end)`` of one tensor (``clause``: its reductions)."""
        return [f"    #pragma omp simd{clause}", "    for (int64_t i = begin; i < end; ++i) {"]

    def loop_close(self) -> list[str]:
        """What closes :meth:`loop_open` after the loop's own closing brace."""
        return []

    def stage_of(self, ref: Ref) -> int:
        return self.stage[ref[1]] if ref[0] == "node" else 0

    def is_per_tensor_input(self, ref: Ref) -> bool:
        return (
            ref[0] == "input" and self.structure.inputs[ref[1]] in self.structure.per_tensor_inputs
        )

    def text(self, ref: Ref, context: str) -> str:
        kind, value = ref
        if kind == "input":
            return f"pin{value}" if self.is_per_tensor_input(ref) else f"in{value}"
        if kind == "node":
            if value in self.per_nodes:
                return (
                    f"pv{value}"
                    if context == "element"
                    else f"per[t * NP + {self.per_slot[value]}]"
                )
            return f"v{value}"
        if kind == "slot":
            return f"s{value}"
        return f"(T){float(value)!r}"

    def node(self, index: int, context: str) -> str:
        op, args = self.structure.ops[index]
        if op == "div" and args[1][0] == "slot" and not self.exact_division:
            # (one division per step, not per element: the 8-bit loop's, within its rounding)
            self.reciprocals.add(args[1][1])
            return f"{self.text(args[0], context)} * r{args[1][1]}"
        rendered = [self.text(a, context) for a in args]
        if op == "div" and self.exact_division and self.number_over_array(args):
            return f"((T)1 / {rendered[1]}) * {rendered[0]}"
        return _expression(op, rendered, args, self.suffix)

    @staticmethod
    def number_over_array(args: tuple[Ref, ...]) -> bool:
        """Whether a division is ``number / array``: torch's ``reciprocal(array) * number``."""
        return args[0][0] not in ("node", "input") and args[1][0] in ("node", "input")

    def write(self, name: str, ref: Ref) -> str:
        """The element loop's line storing ``ref`` into the output ``name``."""
        return f"      {name}[i] = {self.text(ref, 'element')};"

    def norm_head(self, norm: int) -> list[str]:
        """Lines before a norm pass's loop: its block's sum of squares."""
        return [f"    double sum{norm} = 0.0;"]

    def square(self, norm: int, operand: str) -> str:
        """The norm pass's line adding an element's square (``operand``: its C text)."""
        return f"      sum{norm} += (double){operand} * (double){operand};"

    def norm_done(self, norm: int) -> list[str]:
        """Lines after a norm pass's loop (none: the sum is ``sum<norm>``)."""
        return []

    def norm_pass(self, norms: list[int]) -> list[str]:
        """The C of one level of ``norms``: each tensor's sums of squares into ``squares``,
        per block (in double, the blocks then added in order, so the sums do not depend
        on the thread count), or with :attr:`aten_norms` :func:`._native_norms.aten_pass`."""
        if self.aten_norms:
            return _native_norms.aten_pass(self, norms)
        operands = [self.structure.ops[i][1][0] for i in norms]
        slots = [f"{self.norm_slot[i]}" for i in norms]
        head = [line for i in norms for line in self.norm_head(i)]
        texts = [self.text(ref, "element") for ref in operands]
        tail = [self.square(i, o) for i, o in zip(norms, texts, strict=True)]
        lines = self.element_loop(self.ancestors(norms), [*tail, "    }"], head, operands)
        lines += [line for i in norms for line in self.norm_done(i)]
        lines += [f"    partial[b * NN + {k}] = sum{i};" for i, k in zip(norms, slots, strict=True)]
        lines += ["  }", "  for (int64_t b = 0; b < blocks; ++b) {"]
        lines += [
            f"    squares[block_tensor[b] * NN + {k}] += partial[b * NN + {k}];" for k in slots
        ]
        return [*lines, "  }"]

    def ancestors(self, roots: list[int]) -> list[int]:
        """Element-wise nodes the roots need, in recording order."""
        needed: set[int] = set()
        stack = list(roots)
        while stack:
            index = stack.pop()
            for arg in self.structure.ops[index][1]:
                if arg[0] == "node" and arg[1] not in self.per_nodes and arg[1] not in needed:
                    needed.add(arg[1])
                    stack.append(arg[1])
        return sorted(needed)

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
        """A parallel loop computing ``nodes`` per element, then ``tail``.

        ``reads`` are the references ``tail`` uses besides ``nodes``. By
        blocks (the norms' passes: their partial sums are per block, so they
        do not depend on the thread count), ``balanced``: each thread
        takes one contiguous range of the concatenated elements, of equal
        length whatever the tensor sizes (a static schedule of blocks hands
        the thread with a large tensor's blocks most of an MLP's work), or
        ``chunked`` (:func:`._native_norms.aten_pass`, whose lines after
        ``tail`` close it): ``head`` per tensor, the pointers at each chunk.
        """
        inputs = self.structure.inputs
        written = {name for name, _ in self.structure.outputs}
        refs = {a for i in nodes for a in self.structure.ops[i][1]} | set(reads)
        at = " + c" if chunked else ""
        if balanced:
            lines = list(_fragments.BALANCED_OPEN)
        elif chunked:
            lines = [*_native_norms.TENSOR_OPEN, *head, _native_norms.CHUNK_OPEN]
        else:
            lines = [
                "  #pragma omp parallel for num_threads(threads) schedule(static)",
                "  for (int64_t b = 0; b < blocks; ++b) {",
                "    const int64_t t = block_tensor[b];",
            ]
        for index, name in enumerate(inputs):
            if name in self.structure.per_tensor_inputs:
                if ("input", index) in refs:
                    lines.append(f"    const T pin{index} = *(const T*)buffers[{index} * n + t];")
                continue
            qualifier = "" if name in written else "const "
            kind = self.storage
            lines.append(
                f"    {qualifier}{kind}* restrict {name} = ({kind}*)buffers[{index} * n + t]{at};"
            )
        for node in sorted(self.per_nodes):
            if ("node", node) in refs:
                lines.append(f"    const T pv{node} = per[t * NP + {self.per_slot[node]}];")
        if chunked:
            lines.append(_native_norms.CHUNK_RANGE)
        elif balanced:
            lines += [*head, *_fragments.BALANCED_RANGE]
        else:
            lines += head
            lines += [
                "    const int64_t begin = block_begin[b];",
                "    const int64_t end = block_end[b];",
            ]
        if self.paged(balanced):
            streams = [
                (name, name in written)
                for index, name in enumerate(inputs)
                if name not in self.structure.per_tensor_inputs
                and (("input", index) in refs or name in written)
            ]
            lines += _fragments.page_ahead(streams, 4 if self.ctype == "float" else 8)
        lines += self.loop_open(self.reduction_clause(head))
        for index, name in enumerate(inputs):
            if name not in self.structure.per_tensor_inputs and ("input", index) in refs:
                lines.append(f"      const T in{index} = {self.load(f'{name}[i]')};")
        for index in nodes:
            op = self.structure.ops[index][0]
            kind = "int" if op in _COMPARE or op in ("and", "or") else "T"
            lines.append(f"      const {kind} v{index} = {self.node(index, 'element')};")
        lines += tail
        return lines + self.loop_close() + self.page_close(balanced)

    def paged(self, balanced: bool) -> bool:
        """Whether the pass walks page by page (:func:`._native_fragments.page_ahead`): the balanced
        element-wise pass, except the half loops' (they keep ATen's segments)."""
        return balanced and _fragments.AHEAD > 0 and self.storage == "T"

    def page_close(self, balanced: bool) -> list[str]:
        """What closes :func:`._native_fragments.page_ahead`'s two blocks, after the element loop."""
        return ["    }", "    }"] if self.paged(balanced) else []

    @staticmethod
    def reduction_clause(head: list[str]) -> str:
        names = [line.split()[1] for line in head if line.strip().startswith("double ")]
        return f" reduction(+:{', '.join(names)})" if names else ""

    def source(self) -> str:
        structure = self.structure
        ctype, suffix = self.ctype, self.suffix
        body: list[str] = []
        top = max(self.stage.values(), default=0)
        for level in range(0, top + 1):
            if level > 0:  # the norms of this level
                body += self.norm_pass([i for i in self.norms if self.stage[i] == level])
            per_level = [i for i in sorted(self.per_nodes) if self.stage[i] == level]
            if per_level:  # per-tensor values: one serial pass over the tensors
                body.append("  for (int64_t t = 0; t < n; ++t) {")
                for index, name in enumerate(structure.inputs):
                    if name in structure.per_tensor_inputs:
                        body.append(
                            f"    const T pin{index} = *(const T*)buffers[{index} * n + t];"
                        )
                for i in per_level:
                    if structure.ops[i][0] == "norm":  # (in ATen's order: the norm itself)
                        square = f"squares[t * NN + {self.norm_slot[i]}]"
                        value = f"(T){square}" if self.aten_norms else f"(T)sqrt({square})"
                    else:
                        value = self.node(i, "tensor")
                    body.append(f"    per[t * NP + {self.per_slot[i]}] = {value};")
                body.append("  }")
        element_nodes = [i for i in range(len(structure.ops)) if i not in self.per_nodes]
        writes = [
            self.write(name, ref)
            for name, ref in structure.outputs
            if name not in structure.per_tensor_inputs
        ]
        body += self.element_loop(
            element_nodes,
            [*writes, "    }"],
            [],
            [ref for _, ref in structure.outputs],
            balanced=True,
        )
        body += ["  }", "  }"]
        per_writes = [
            (name, ref) for name, ref in structure.outputs if name in structure.per_tensor_inputs
        ]
        if per_writes:
            body.append("  for (int64_t t = 0; t < n; ++t) {")
            for name, ref in per_writes:
                index = structure.inputs.index(name)
                body.append(f"    *(T*)buffers[{index} * n + t] = {self.text(ref, 'tensor')};")
            body.append("  }")
        body += _fragments.count_steps(len(structure.inputs))
        if self.norms or self.per_nodes:
            body.append("  free(per); free(squares); free(partial);")
        body.append("}")
        lines = [
            "#include <math.h>",
            "#include <omp.h>",
            "#include <stdint.h>",
            "#include <stdlib.h>",
            f"typedef {ctype} T;",
            *([_native_norms.fragment(self.dtype)] if self.aten_norms and self.norms else []),
            *self.prelude(),
            *_fragments.RANGES,
            # ATen's vectorised maximum/minimum: NaN from either side, the second operand on a
            # tie (+0 vs -0; ATen's scalar tail returns the first there, as max_t always did)
            "static inline T max_t(T a, T b) { return (a > b || a != a) ? a : b; }",
            "static inline T min_t(T a, T b) { return (a < b || a != a) ? a : b; }",
            "static inline T clip_t(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }",
            # ATen's vectorised lerp: a fused multiply-add anchored at the nearer end.
            f"static inline T lerp_t(T a, T b, T w) {{ return w < (T)0.5 ? fma{suffix}(w, b - a, a)"
            f" : fma{suffix}(w - (T)1, b - a, b); }}",
            "void adaptim_step(int64_t n, void* const* buffers, const double* s, int64_t blocks,",
            "                  const int64_t* block_tensor, const int64_t* block_begin,",
            "                  const int64_t* block_end, int threads, int step_kind,",
            "                  const int64_t* offsets) {",
        ]
        lines += [f"  const T s{i} = {self.slot(i)};" for i in range(structure.slot_count)]
        lines += [f"  const T r{i} = (T)(1.0 / s[{i}]);" for i in sorted(self.reciprocals)]
        lines += self.function_head()
        if self.norms or self.per_nodes:
            lines += [
                f"  enum {{ NP = {max(1, len(self.per_slot))}, NN = {max(1, len(self.norms))} }};",
                "  T* per = (T*)malloc(sizeof(T) * (size_t)(n * NP));",
                "  double* squares = (double*)calloc((size_t)(n * NN), sizeof(double));",
                "  double* partial = (double*)calloc((size_t)(blocks * NN), sizeof(double));",
            ]
        return "\n".join(lines + body) + "\n"


def generate_source(structure: Structure, dtype: torch.dtype, aten_norms: bool = False) -> str:
    """The C source of ``structure`` for tensors of ``dtype`` (``Optimizer.plans()`` shows it).

    Element-wise rules become one loop. A rule with norms over whole tensors
    (LARS, LAMB, NovoGrad) becomes a loop per level of norms, each summing squares per
    block (in double, then per tensor in block order, so the result does not
    depend on the thread count) or, with ``aten_norms``, each tensor whole in
    ``torch.linalg.vector_norm``'s order (:mod:`._native_norms`), a serial pass
    computing the per-tensor values (norms, trust ratios), and the final
    element-wise loop, which recomputes what it needs rather than storing
    parameter-sized temporaries.
    """
    return _Source(structure, dtype, exact_division=True, aten_norms=aten_norms).source()
