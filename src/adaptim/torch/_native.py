"""Compile a recorded rule into one native CPU loop over every tensor of a param group.

torch's fused CPU kernels (Adam, AdamW, Adagrad, SGD) read each buffer once,
but open one parallel region per tensor. This module generates, for a
:class:`~adaptim.torch._trace.Structure`, one C function that walks *all* the
tensors of a group in fixed-size blocks inside a single OpenMP region: each
element is read once (parameter, gradient, state), the whole update is
computed in registers, and the parameter and state are written back in place.
Nothing is copied and nothing is owned: the function receives the data
pointers of the tensors exactly where the user, autograd, DDP's buckets or
ZeRO's bucket views put them.

The C source is compiled once per structure and dtype with the system C
compiler (the same one ``torch.compile`` needs on CPU) into a shared library
cached on disk (``$ADAPTIM_CACHE_DIR``, default ``~/.cache/adaptim``), keyed by
a hash of the source, the flags, the compiler and the CPU, so a second process
loads it in milliseconds. It links against the OpenMP runtime torch itself has
loaded, so the process keeps one thread pool. The arithmetic is the rule's,
in the parameter's dtype, with the multiply-adds that ATen's vectorised
kernels use (``lerp``, ``addcmul`` and ``add(alpha=)`` as fused
multiply-adds, as measured against them) and a division by a per-step
scalar done as a multiplication by its reciprocal (computed once, in
double). Results agree with the reference path to rounding, not to the bit:
the loop's ``sqrt`` is correctly rounded, while ATen's vectorised float32
``sqrt`` is not (it agrees with the correctly rounded value on about 80% of
elements).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adaptim.torch._trace import Ref, Structure

#: Elements per work item: large enough to amortise the loop set-up, small
#: enough that a group of a few large tensors still splits across threads.
BLOCK = 16_384

_CTYPES = {torch.float32: "float", torch.float64: "double"}
_FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    "-ffp-contract=off",
    "-std=c11",
)

#: Operations a native kernel can express; anything else stays on the multi-tensor replay.
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMPARE = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}
SUPPORTED = frozenset(
    {*_BINARY, *_COMPARE, "and", "or", "neg", "abs", "sqrt", "pow", "maximum", "where", "clip"}
    | {"axpy", "addcmul", "lerp"}
)


class NativeUnavailable(Exception):
    """No native kernel here (no compiler, a structure or dtype it cannot express); say why."""

    def __init__(self, reason: str, *, structural: bool = False) -> None:
        super().__init__(reason)
        #: The rule or dtype, not this machine, rules it out (no warning: the replay is the plan).
        self.structural = structural


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
        return f"{a[0]} * {a[0]}" if exponent == 2.0 else f"pow{suffix}({a[0]}, {a[1]})"
    if op == "maximum":
        return f"max_t({a[0]}, {a[1]})"
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

    def __init__(self, structure: Structure, dtype: torch.dtype) -> None:
        self.structure = structure
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
        if op == "div" and args[1][0] == "slot":  # one division per step, not per element
            self.reciprocals.add(args[1][1])
            return f"{self.text(args[0], context)} * r{args[1][1]}"
        rendered = [self.text(a, context) for a in args]
        return _expression(op, rendered, args, self.suffix)

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
        self, nodes: list[int], tail: list[str], head: list[str], reads: list[Ref]
    ) -> list[str]:
        """A parallel loop over blocks computing ``nodes`` per element, then ``tail``.

        ``reads`` are the references ``tail`` uses besides ``nodes``.
        """
        inputs = self.structure.inputs
        written = {name for name, _ in self.structure.outputs}
        refs = {a for i in nodes for a in self.structure.ops[i][1]} | set(reads)
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
            lines.append(f"    {qualifier}T* restrict {name} = (T*)buffers[{index} * n + t];")
        for node in sorted(self.per_nodes):
            if ("node", node) in refs:
                lines.append(f"    const T pv{node} = per[t * NP + {self.per_slot[node]}];")
        lines += head
        lines += ["    const int64_t end = block_end[b];"]
        lines.append(f"    #pragma omp simd{self.reduction_clause(head)}")
        lines.append("    for (int64_t i = block_begin[b]; i < end; ++i) {")
        for index, name in enumerate(inputs):
            if name not in self.structure.per_tensor_inputs and ("input", index) in refs:
                lines.append(f"      const T in{index} = {name}[i];")
        for index in nodes:
            op = self.structure.ops[index][0]
            kind = "int" if op in _COMPARE or op in ("and", "or") else "T"
            lines.append(f"      const {kind} v{index} = {self.node(index, 'element')};")
        lines += tail
        return lines

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
            if level > 0:  # the norms of this level: sums of squares per block, then per tensor
                norms = [i for i in self.norms if self.stage[i] == level]
                operands = [self.text(structure.ops[i][1][0], "element") for i in norms]
                nodes = self.ancestors(norms)
                head = [f"    double sum{i} = 0.0;" for i in norms]
                tail = [
                    f"      sum{i} += (double){o} * (double){o};"
                    for i, o in zip(norms, operands, strict=True)
                ]
                reads = [structure.ops[i][1][0] for i in norms]
                body += self.element_loop(nodes, [*tail, "    }"], head, reads)
                body += [f"    partial[b * NN + {self.norm_slot[i]}] = sum{i};" for i in norms]
                body += ["  }", "  for (int64_t b = 0; b < blocks; ++b) {"]
                body += [
                    f"    squares[block_tensor[b] * NN + {self.norm_slot[i]}] += partial[b * NN + {self.norm_slot[i]}];"
                    for i in norms
                ]
                body += ["  }"]
            per_level = [i for i in sorted(self.per_nodes) if self.stage[i] == level]
            if per_level:  # per-tensor values: one serial pass over the tensors
                body.append("  for (int64_t t = 0; t < n; ++t) {")
                for index, name in enumerate(structure.inputs):
                    if name in structure.per_tensor_inputs:
                        body.append(
                            f"    const T pin{index} = *(const T*)buffers[{index} * n + t];"
                        )
                for i in per_level:
                    if structure.ops[i][0] == "norm":
                        value = f"(T)sqrt(squares[t * NN + {self.norm_slot[i]}])"
                    else:
                        value = self.node(i, "tensor")
                    body.append(f"    per[t * NP + {self.per_slot[i]}] = {value};")
                body.append("  }")
        element_nodes = [i for i in range(len(structure.ops)) if i not in self.per_nodes]
        writes = [
            f"      {name}[i] = {self.text(ref, 'element')};"
            for name, ref in structure.outputs
            if name not in structure.per_tensor_inputs
        ]
        body += self.element_loop(
            element_nodes, [*writes, "    }"], [], [ref for _, ref in structure.outputs]
        )
        body.append("  }")
        per_writes = [
            (name, ref) for name, ref in structure.outputs if name in structure.per_tensor_inputs
        ]
        if per_writes:
            body.append("  for (int64_t t = 0; t < n; ++t) {")
            for name, ref in per_writes:
                index = structure.inputs.index(name)
                body.append(f"    *(T*)buffers[{index} * n + t] = {self.text(ref, 'tensor')};")
            body.append("  }")
        steps = len(structure.inputs)
        body += [
            f"  if (step_kind == 1) for (int64_t t = 0; t < n; ++t) *(float*)buffers[{steps} * n + t] += 1.0f;",
            f"  if (step_kind == 2) for (int64_t t = 0; t < n; ++t) *(double*)buffers[{steps} * n + t] += 1.0;",
        ]
        if self.norms or self.per_nodes:
            body.append("  free(per); free(squares); free(partial);")
        body.append("}")
        lines = [
            "#include <math.h>",
            "#include <stdint.h>",
            "#include <stdlib.h>",
            f"typedef {ctype} T;",
            "static inline T max_t(T a, T b) { return (a > b || a != a) ? a : b; }",
            "static inline T clip_t(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }",
            # ATen's vectorised lerp: a fused multiply-add anchored at the nearer end.
            f"static inline T lerp_t(T a, T b, T w) {{ return w < (T)0.5 ? fma{suffix}(w, b - a, a)"
            f" : fma{suffix}(w - (T)1, b - a, b); }}",
            "void adaptim_step(int64_t n, void* const* buffers, const double* s, int64_t blocks,",
            "                  const int64_t* block_tensor, const int64_t* block_begin,",
            "                  const int64_t* block_end, int threads, int step_kind) {",
        ]
        lines += [f"  const T s{i} = (T)s[{i}];" for i in range(structure.slot_count)]
        lines += [f"  const T r{i} = (T)(1.0 / s[{i}]);" for i in sorted(self.reciprocals)]
        if self.norms or self.per_nodes:
            lines += [
                f"  enum {{ NP = {max(1, len(self.per_slot))}, NN = {max(1, len(self.norms))} }};",
                "  T* per = (T*)malloc(sizeof(T) * (size_t)(n * NP));",
                "  double* squares = (double*)calloc((size_t)(n * NN), sizeof(double));",
                "  double* partial = (double*)calloc((size_t)(blocks * NN), sizeof(double));",
            ]
        return "\n".join(lines + body) + "\n"


def generate_source(structure: Structure, dtype: torch.dtype) -> str:
    """The C source of ``structure`` for tensors of ``dtype`` (``Optimizer.plans()`` shows it).

    Element-wise rules become one loop. A rule with norms over whole tensors
    (LARS, LAMB) becomes a loop per level of norms, each summing squares per
    block (in double, then per tensor in block order, so the result does not
    depend on the thread count), a serial pass computing the per-tensor values
    (norms, trust ratios), and the final element-wise loop, which recomputes
    what it needs rather than storing parameter-sized temporaries.
    """
    return _Source(structure, dtype).source()


#: ``step_kind`` of the kernel: how the step counters it increments are stored.
STEP_KINDS = {None: 0, torch.float32: 1, torch.float64: 2}


@dataclass
class Kernel:
    """A loaded native step and its source."""

    source: str
    function: Callable[..., None]
    buffers: int

    def __call__(
        self,
        pointers: int,
        count: int,
        slots: Sequence[float],
        table: BlockTable,
        step_dtype: torch.dtype | None,
    ) -> None:
        """Step ``count`` tensors whose data pointers the array at address ``pointers`` lists role by role.

        The roles are the structure's inputs (``param``, ``grad``, each state
        buffer), then, when ``step_dtype`` is given, the 0-d ``step`` counters,
        which the kernel increments after the update.
        """
        self.function(
            count,
            pointers,
            (ctypes.c_double * len(slots))(*slots),
            *table.arguments,
            torch.get_num_threads(),
            STEP_KINDS[step_dtype],
        )


@dataclass(frozen=True)
class BlockTable:
    """The work items of one list of tensor sizes: (tensor, first element, end element)."""

    blocks: int
    tensor: np.ndarray
    begin: np.ndarray
    end: np.ndarray

    @functools.cached_property
    def arguments(self) -> tuple[int, int, int, int]:
        """The kernel's arguments for this table (the count, then the arrays' addresses)."""
        return (self.blocks, self.tensor.ctypes.data, self.begin.ctypes.data, self.end.ctypes.data)

    @classmethod
    def of(cls, sizes: Sequence[int]) -> BlockTable:
        counts = np.array([max(1, -(-n // BLOCK)) for n in sizes], dtype=np.int64)
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        local = np.arange(len(tensor), dtype=np.int64) - np.repeat(first, counts)
        begin = local * BLOCK
        end = np.minimum(begin + BLOCK, np.asarray(sizes, dtype=np.int64)[tensor])
        return cls(len(tensor), tensor, begin, end)


_lock = threading.Lock()
_KERNELS: dict[tuple[Structure, torch.dtype], Kernel] = {}
_FAILED: dict[str, str] = {}


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    configured = os.environ.get("CC")
    if configured:
        return shutil.which(configured) or configured
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def cache_dir() -> Path:
    configured = os.environ.get("ADAPTIM_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "adaptim"
    return base / "kernels"


def _cpu_fingerprint() -> str:
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


#: Structures ``supports`` refused, with the reason.
_UNSUPPORTED: dict[Structure, str] = {}


def kernel_for(structure: Structure, dtype: torch.dtype) -> Kernel:
    """The native kernel of ``structure`` for ``dtype``: from memory, from disk, or compiled now."""
    key = (structure, dtype)
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    if dtype not in _CTYPES:
        raise NativeUnavailable(f"no native kernel for {dtype}", structural=True)
    why = _UNSUPPORTED.get(structure)  # (asked on every step of such a group: remember)
    if why is None:
        why = supports(structure)
        if why is not None:
            _UNSUPPORTED[structure] = why
    if why is not None:
        raise NativeUnavailable(why, structural=True)
    with _lock:
        kernel = _KERNELS.get(key)
        if kernel is None:
            source = generate_source(structure, dtype)
            kernel = Kernel(source, _load(source), len(structure.inputs))
            _KERNELS[key] = kernel
    return kernel


def _load(source: str) -> Callable[..., None]:
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")
    identity = "\n".join([source, " ".join(_FLAGS), cc, _cpu_fingerprint()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    if digest in _FAILED:
        raise NativeUnavailable(_FAILED[digest])
    directory = cache_dir()
    library = directory / f"step_{digest}.so"
    if not library.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory) as scratch:
                c_file = Path(scratch) / "step.c"
                c_file.write_text(source)
                built = Path(scratch) / "step.so"
                done = subprocess.run(
                    [cc, *_FLAGS, str(c_file), "-o", str(built), "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                if done.returncode != 0:
                    raise NativeUnavailable(
                        f"the C compiler failed ({cc}): {done.stderr.strip()[:300]}"
                    )
                os.replace(built, library)  # atomic: concurrent processes never load half a file
        except (OSError, subprocess.SubprocessError) as error:
            _FAILED[digest] = f"could not build a native kernel: {error}"
            raise NativeUnavailable(_FAILED[digest]) from None
        except NativeUnavailable as error:
            _FAILED[digest] = str(error)
            raise
    function = ctypes.CDLL(str(library)).adaptim_step
    function.restype = None
    function.argtypes = [
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    return function


def kernel_count() -> int:
    """How many native kernels this process has loaded (tests check schedulers add none)."""
    return len(_KERNELS)
