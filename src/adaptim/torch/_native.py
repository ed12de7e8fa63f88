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
    if structure.per_tensor_inputs or any(op == "norm" for op, _ in structure.ops):
        return "the rule takes norms over whole tensors"
    unknown = sorted({op for op, _ in structure.ops} - SUPPORTED)
    if unknown:
        return f"no native form for {', '.join(unknown)}"
    if structure.created:
        return "the rule creates state on this step"
    return None


def generate_source(structure: Structure, dtype: torch.dtype) -> str:
    """The C source of ``structure`` for tensors of ``dtype`` (``Optimizer.plans()`` shows it)."""
    ctype = _CTYPES[dtype]
    suffix = "f" if ctype == "float" else ""
    inputs = structure.inputs
    written = {name for name, _ in structure.outputs}
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
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
    reciprocals: set[int] = set()
    reciprocal_line = len(lines)
    lines += [
        "  #pragma omp parallel for num_threads(threads) schedule(static)",
        "  for (int64_t b = 0; b < blocks; ++b) {",
        "    const int64_t t = block_tensor[b];",
    ]
    for index, name in enumerate(inputs):
        qualifier = "" if name in written else "const "
        lines.append(f"    {qualifier}T* restrict {name} = (T*)buffers[{index} * n + t];")
    lines += ["    const int64_t end = block_end[b];", "    #pragma omp simd"]
    lines.append("    for (int64_t i = block_begin[b]; i < end; ++i) {")
    used = {a for _, args in structure.ops for a in args if a[0] == "input"}
    used |= {ref for _, ref in structure.outputs if ref[0] == "input"}
    for index, name in enumerate(inputs):
        if ("input", index) in used:
            lines.append(f"      const T in{index} = {name}[i];")

    def text(ref: Ref) -> str:
        kind, value = ref
        if kind == "input":
            return f"in{value}"
        if kind == "node":
            return f"v{value}"
        if kind == "slot":
            return f"s{value}"
        return f"(T){float(value)!r}"

    for index, (op, args) in enumerate(structure.ops):
        a = [text(x) for x in args]
        boolean = op in _COMPARE or op in ("and", "or")
        if op == "div" and args[1][0] == "slot":  # one division per step, not per element
            expression = f"{a[0]} * r{args[1][1]}"
            reciprocals.add(args[1][1])
        elif op in _BINARY:
            expression = f"{a[0]} {_BINARY[op]} {a[1]}"
        elif op in _COMPARE:
            expression = f"{a[0]} {_COMPARE[op]} {a[1]}"
        elif op == "and":
            expression = f"{a[0]} && {a[1]}"
        elif op == "or":
            expression = f"{a[0]} || {a[1]}"
        elif op == "neg":
            expression = f"-{a[0]}"
        elif op == "abs":
            expression = f"fabs{suffix}({a[0]})"
        elif op == "sqrt":
            expression = f"sqrt{suffix}({a[0]})"
        elif op == "pow":
            exponent = float(args[1][1])
            expression = f"{a[0]} * {a[0]}" if exponent == 2.0 else f"pow{suffix}({a[0]}, {a[1]})"
        elif op == "maximum":
            expression = f"max_t({a[0]}, {a[1]})"
        elif op == "where":
            expression = f"{a[0]} ? {a[1]} : {a[2]}"
        elif op == "clip":
            expression = f"clip_t({a[0]}, {a[1]}, {a[2]})"
        elif op == "axpy":  # ATen's add(alpha=) is a fused multiply-add
            expression = f"fma{suffix}({a[2]}, {a[1]}, {a[0]})"
        elif op == "addcmul":  # ATen: self + (value * t1) * t2, the last two fused
            expression = f"fma{suffix}({a[3]} * {a[1]}, {a[2]}, {a[0]})"
        else:  # lerp
            expression = f"lerp_t({a[0]}, {a[1]}, {a[2]})"
        ctype_of = "int" if boolean else "T"
        lines.append(f"      const {ctype_of} v{index} = {expression};")
    for name, ref in structure.outputs:
        lines.append(f"      {name}[i] = {text(ref)};")
    lines[reciprocal_line:reciprocal_line] = [
        f"  const T r{i} = (T)(1.0 / s[{i}]);" for i in sorted(reciprocals)
    ]
    # Every parameter's ``step`` counter (0-d float32 or float64), after the update.
    steps = len(inputs)
    lines += [
        "    }",
        "  }",
        f"  if (step_kind == 1) for (int64_t t = 0; t < n; ++t) *(float*)buffers[{steps} * n + t] += 1.0f;",
        f"  if (step_kind == 2) for (int64_t t = 0; t < n; ++t) *(double*)buffers[{steps} * n + t] += 1.0;",
        "}",
    ]
    return "\n".join(lines) + "\n"


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
        pointers: np.ndarray,
        count: int,
        slots: Sequence[float],
        table: BlockTable,
        step_dtype: torch.dtype | None,
    ) -> None:
        """Step ``count`` tensors whose data pointers ``pointers`` lists role by role.

        The roles are the structure's inputs (``param``, ``grad``, each state
        buffer), then, when ``step_dtype`` is given, the 0-d ``step`` counters,
        which the kernel increments after the update.
        """
        values = np.asarray(slots, dtype=np.float64)
        self.function(
            count,
            pointers.ctypes.data,
            values.ctypes.data,
            table.blocks,
            table.tensor.ctypes.data,
            table.begin.ctypes.data,
            table.end.ctypes.data,
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


def kernel_for(structure: Structure, dtype: torch.dtype) -> Kernel:
    """The native kernel of ``structure`` for ``dtype``: from memory, from disk, or compiled now."""
    key = (structure, dtype)
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    if dtype not in _CTYPES:
        raise NativeUnavailable(f"no native kernel for {dtype}", structural=True)
    why = supports(structure)
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
