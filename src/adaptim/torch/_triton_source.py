"""The Triton source of a GPU step: one kernel over every tensor of a partition.

:func:`generate_source` renders a recorded :class:`~adaptim.torch._trace.Structure`
as a Triton kernel, as :mod:`._native_source` renders it as C for the CPU;
:mod:`._triton` compiles, caches and launches it. One launch steps all the
tensors of a partition: program ``b`` reads row ``b`` of a block table
``(tensor, first element, end)``, loads that tensor's data pointers from a
table of pointers (one row per role: ``param``, ``grad``, each element-wise
state buffer), and updates one block of :data:`BLOCK` elements of it in
registers, reading and writing each buffer once, in place.

Each recorded operation becomes the expression of the CUDA kernel the
multi-tensor replay (``torch._foreach_*``) runs for it, so the two agree to
the bit where the compiler rounds alike:

* division and square root correctly rounded, as nvcc's defaults make torch's:
  float32 ``tl.div_rn`` and ``tl.sqrt_rn`` (plain ``/`` and ``tl.sqrt`` are
  approximations there), float64 ``/`` and ``tl.sqrt`` (PTX has only the
  correctly rounded ``div.rn.f64`` and ``sqrt.rn.f64``); ``number / array`` as torch's ``reciprocal() * number``;
* no contraction of a multiply and an add unless the replay's kernel has one:
  the kernel is launched with ``enable_fp_fusion=False``, and the fused
  multiply-adds are written out (``tl.fma``) where ATen's CUDA code, compiled
  with nvcc's default ``--fmad=true``, computes ``a + x * y`` in one expression:
  ``add(alpha=)`` (``a + α·b``), ``addcmul`` (``a + (v·b)·c``) and ``lerp``
  (``a + w·(b - a)``, or ``b - (b - a)·(1 - w)`` when ``|w| ≥ 0.5``, ATen's
  ``Lerp.h``). :data:`FUSED_MULTIPLY_ADD` off writes them as separate
  roundings instead (``benchmarks/cuda_check.py --fma-probe`` measures which
  one gives torch's bits on a GPU);
* ``maximum`` and ``minimum`` propagate NaN, ``clip`` is ``clamp_min`` then ``clamp_max``, a
  comparison is a mask (``1``/``0`` where a rule computes with it);
* scalars computed on the host in double by the rule, as torch computes them,
  and passed as kernel arguments annotated with the parameters' dtype (float32:
  rounded from the Python float as ATen rounds a scalar to its ``opmath`` type;
  float64: exact; an unannotated Python float would arrive as float32).

A rule with per-tensor values (whole-tensor norms, 0-d state: LARS, LAMB,
NovoGrad) becomes several functions launched in turn (:func:`launch_order`);
:mod:`._triton_norms_source` renders them.

What it does not express (Adafactor's and SM3's row and column statistics and
host scalars; ``pow`` to an exponent other than 0 and 2; state created on this
step; half types) :func:`supports` refuses, and the replay runs it.
"""

from __future__ import annotations

import torch

from adaptim.torch._trace import Ref, Structure

#: Elements per program (4 warps: 8 per thread and buffer): the block size of the
#: lead's probe on an H200, which streamed 16M elements at 84-90% of ``copy_``'s
#: bandwidth; 235k elements give ~230 programs, enough to fill the SMs.
BLOCK = 1024

#: Blocks' partial sums a per-tensor program adds per iteration (a tensor of 16M elements
#: has 16k blocks: 128 iterations).
ROWS = 128

#: Whether ``axpy``, ``addcmul`` and ``lerp`` are fused multiply-adds (as nvcc compiles ATen's).
FUSED_MULTIPLY_ADD = True

_TL_TYPES = {torch.float32: "tl.float32", torch.float64: "tl.float64"}
_BINARY = {"add": "+", "sub": "-", "mul": "*"}
_COMPARE = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}
_MASKS = frozenset({*_COMPARE, "and", "or"})
SUPPORTED = frozenset(
    {*_BINARY, "div", *_COMPARE, "and", "or", "neg", "abs", "sqrt", "pow", "maximum", "minimum"}
    | {"where", "clip", "axpy", "addcmul", "lerp"}
)

#: Helpers the kernels call (ATen's CUDA ``lerp`` and ``clamp``; fused or not).
_HELPERS = """
@triton.jit
def _clamp(x, low, high):
    y = tl.where(x < low, low, x)
    return tl.where(y > high, high, y)


@triton.jit
def _axpy(a, b, alpha, FMA: tl.constexpr):
    if FMA:
        return tl.fma(b, alpha, a)
    else:
        return a + alpha * b


@triton.jit
def _addcmul(a, b, c, value, FMA: tl.constexpr):
    if FMA:
        return tl.fma(value * b, c, a)
    else:
        return a + value * b * c


# (sums as ``tl.reduce(x, 0, _add)`` and zeros as ``tl.full``: ``tl.sum`` and ``tl.zeros`` are
# jit functions of Triton's library, which its interpreter cannot call when triton was
# imported before ``TRITON_INTERPRET`` was set, as in the tests)
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _lerp(a, b, w, FMA: tl.constexpr):
    d = b - a
    if FMA:
        return tl.where(tl.abs(w) < 0.5, tl.fma(w, d, a), tl.fma(-d, 1.0 - w, b))
    else:
        return tl.where(tl.abs(w) < 0.5, a + w * d, b - d * (1.0 - w))
"""


def supports(structure: Structure, dtype: torch.dtype) -> str | None:
    """Why ``structure`` cannot become a Triton kernel for ``dtype``, or ``None`` when it can."""
    if dtype not in _TL_TYPES:
        return f"no GPU kernel for {dtype} (float32 and float64 only)"
    unknown = sorted({op for op, _ in structure.ops} - SUPPORTED - {"norm"})
    if unknown:
        return f"no GPU kernel form for {', '.join(unknown)}"
    if structure.created:
        return "the rule creates state on this step"
    if structure.reduced_inputs:
        return "state that is neither element-wise nor 0-d"
    kinds = structure.kinds()
    for op, args in structure.ops:
        if op == "pow" and (args[1][0] != "const" or float(args[1][1]) not in (0.0, 2.0)):
            return "pow to an exponent other than 0 and 2"
        if op == "norm" and structure.kind_of(args[0], kinds) != "element":
            return "a norm of something other than an element-wise array"
    return None


class _Source:
    """Renders one structure as a Triton kernel named ``adaptim_step`` (an element-wise
    rule; :class:`._triton_norms_source.NormSource` adds the passes of per-tensor values)."""

    def __init__(self, structure: Structure, dtype: torch.dtype) -> None:
        self.structure = structure
        self.dtype = dtype
        self.tl_type = _TL_TYPES[dtype]
        #: The mask nodes the function being rendered computes (a mask read back from
        #: the per-tensor buffer is a number there).
        self.masks: set[int] = set()
        self.per_nodes = structure.per_tensor_nodes()
        self.tensorwise = bool(self.per_nodes or structure.per_tensor_inputs)
        #: Each per-tensor value's column in the per-tensor buffer (``per[t * NP + column]``).
        self.per_slot: dict[Ref, int] = {}

    def text(self, ref: Ref) -> str:
        kind, value = ref
        if kind == "input":
            per_tensor = self.structure.inputs[value] in self.structure.per_tensor_inputs
            return f"pin{value}" if per_tensor else f"in{value}"
        if kind == "node":
            return f"v{value}"
        if kind == "slot":
            return f"s{value}"
        return f"tl.full([], {float(value)!r}, {self.tl_type})"

    def value(self, ref: Ref) -> str:
        """``ref`` as a number (a mask is ``1``/``0``, as a comparison in the replay)."""
        text = self.text(ref)
        if ref[0] == "node" and ref[1] in self.masks:
            return f"{text}.to({self.tl_type})"
        return text

    def mask(self, ref: Ref) -> str:
        """``ref`` as a condition (a number: whether it is non-zero)."""
        text = self.text(ref)
        return text if ref[0] == "node" and ref[1] in self.masks else f"({text} != 0)"

    def divide(self, a: str, b: str) -> str:
        """``a / b`` correctly rounded: ``div_rn`` in float32, where ``/`` is an approximation;
        float64 has only the correctly rounded one (PTX ``div.rn.f64``), which ``div_rn`` refuses."""
        return f"tl.div_rn({a}, {b})" if self.dtype == torch.float32 else f"{a} / {b}"

    def node(self, index: int) -> str:
        op, args = self.structure.ops[index]
        if op in ("and", "or"):
            return f"{self.mask(args[0])} {'&' if op == 'and' else '|'} {self.mask(args[1])}"
        if op == "where":
            return f"tl.where({self.mask(args[0])}, {self.value(args[1])}, {self.value(args[2])})"
        a = [self.value(x) for x in args]
        arrays = [x[0] in ("input", "node") for x in args]
        if op in _BINARY:
            return f"{a[0]} {_BINARY[op]} {a[1]}"
        if op in _COMPARE:
            return f"{a[0]} {_COMPARE[op]} {a[1]}"
        if op == "div":
            if not arrays[0] and arrays[1]:  # torch: ``number / x`` is ``reciprocal(x) * number``
                return f"{self.divide(f'tl.full([], 1.0, {self.tl_type})', a[1])} * {a[0]}"
            return self.divide(a[0], a[1])
        if op == "norm":  # (the tensor's sum of squares, summed from the blocks' in double)
            return f"tl.sqrt(tl.reduce(sum{index}, 0, _add)).to({self.tl_type})"
        fma = "FMA"
        simple = {
            "neg": "-{0}",
            "abs": "tl.abs({0})",
            "sqrt": "tl.sqrt_rn({0})" if self.dtype == torch.float32 else "tl.sqrt({0})",
            "maximum": "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
            "minimum": "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
            "clip": "_clamp({0}, {1}, {2})",
            "axpy": f"_axpy({{0}}, {{1}}, {{2}}, {fma})",
            "addcmul": f"_addcmul({{0}}, {{1}}, {{2}}, {{3}}, {fma})",
            "lerp": f"_lerp({{0}}, {{1}}, {{2}}, {fma})",
        }
        if op in simple:
            return simple[op].format(*a)
        if float(args[1][1]) == 0.0:  # (pow) 1 for every x, NaN included
            shape = "[]" if index in self.per_nodes else "[BLOCK]"
            return f"tl.full({shape}, 1.0, {self.tl_type})"
        return f"{a[0]} * {a[0]}"

    def head(self, name: str) -> list[str]:
        """The ``def`` of function ``name`` and its scalars."""
        slot_count = self.structure.slot_count
        # (annotated: Triton passes an unannotated Python float as float32)
        scalar_args = "".join(f"s{i}: {self.tl_type}, " for i in range(slot_count))
        buffers = " spans, partial, per," if self.tensorwise else ""
        lines = [
            "",
            "",
            "@triton.jit(do_not_specialize=['count'])",
            f"def {name}(",
            f"    table, count, blocks,{buffers}",
            f"    {scalar_args}BLOCK: tl.constexpr, FMA: tl.constexpr,",
            "):",
        ]
        # (a no-op when compiled; the interpreter hands over the Python float, which
        # Triton would otherwise take as a float32 constant)
        return lines + [f"    s{i} = tl.full([], s{i}, {self.tl_type})" for i in range(slot_count)]

    def pointer(self, role: int) -> str:
        """The line loading tensor ``t``'s data pointer for input ``role`` from the table."""
        name = self.structure.inputs[role]
        return (
            f"    {name} = tl.load(table + {role} * count + t).to(tl.pointer_type({self.tl_type}))"
        )

    def per_value(self, ref: Ref) -> str:
        """The per-tensor buffer's element of ``ref`` for tensor ``t``."""
        return f"per + t * {len(self.per_slot)} + {self.per_slot[ref]}"

    def block(self, name: str, nodes: list[int], reads: set[Ref], written: set[str]) -> list[str]:
        """Function ``name`` over one block of one tensor, up to computing ``nodes``:
        it loads what they and ``reads`` use, and the pointers of the ``written`` inputs."""
        structure = self.structure
        refs = {a for i in nodes for a in structure.ops[i][1]} | reads
        lines = [
            *self.head(name),
            "    # one block of one tensor: (tensor, first element, end) from the block table",
            "    b = tl.program_id(0).to(tl.int64)",
            "    t = tl.load(blocks + 3 * b)",
            "    first = tl.load(blocks + 3 * b + 1)",
            "    end = tl.load(blocks + 3 * b + 2)",
            "    offsets = first + tl.arange(0, BLOCK)",
            "    inside = offsets < end",
        ]
        elements = [
            role
            for role, name in enumerate(structure.inputs)
            if name not in structure.per_tensor_inputs
        ]
        used = [role for role in elements if ("input", role) in refs]
        lines += [
            self.pointer(role)
            for role in elements
            if role in used or structure.inputs[role] in written
        ]
        lines += [
            f"    in{role} = tl.load({structure.inputs[role]} + offsets, mask=inside)"
            for role in used
        ]
        lines += [
            f"    {self.text(ref)} = tl.load({self.per_value(ref)})"
            for ref in self.per_slot
            if ref in refs
        ]
        self.masks = {i for i in nodes if structure.ops[i][0] in _MASKS}
        return lines + [f"    v{index} = {self.node(index)}" for index in nodes]

    def launch_order(self) -> list[tuple[str, str]]:
        """The functions of a step, in launch order, each with its grid: ``blocks`` (one
        program per block) or ``tensors`` (one per tensor)."""
        return [("adaptim_step", "blocks")]

    def passes(self) -> list[str]:
        """The functions launched before ``adaptim_step`` (none for an element-wise rule)."""
        return []

    def source(self) -> str:
        structure = self.structure
        lines = ["import triton", "import triton.language as tl", _HELPERS, *self.passes()]
        nodes = [i for i in range(len(structure.ops)) if i not in self.per_nodes]
        outputs = [
            (name, ref)
            for name, ref in structure.outputs
            if name not in structure.per_tensor_inputs
        ]
        reads = {ref for _, ref in outputs}
        lines += self.block("adaptim_step", nodes, reads, {name for name, _ in outputs})
        lines += [
            f"    tl.store({name} + offsets, {self.value(ref)}, mask=inside)"
            for name, ref in outputs
        ]
        return "\n".join(lines) + "\n"


def _source(structure: Structure, dtype: torch.dtype) -> _Source:
    if structure.per_tensor_inputs or structure.per_tensor_nodes():
        from adaptim.torch._triton_norms_source import NormSource  # (it extends _Source)

        return NormSource(structure, dtype)
    return _Source(structure, dtype)


def generate_source(structure: Structure, dtype: torch.dtype) -> str:
    """The Triton source of ``structure`` for tensors of ``dtype`` (``Optimizer.plans()`` shows it).

    Each function's arguments: the pointer table (``count`` pointers per role,
    role by role in ``structure.inputs`` order), ``count``, the block table
    (``int64`` triples); for a rule with per-tensor values, the span table
    (each tensor's first and end row of the block table, ``int64`` pairs), the
    blocks' partial sums of squares (``float64``, one row of ``NN`` per block)
    and the per-tensor values (the parameters' dtype, one row per tensor);
    then the slots as scalars of the parameters' dtype, and the constants
    ``BLOCK`` and ``FMA``. :func:`launch_order` names the functions to launch.
    """
    return _source(structure, dtype).source()


def launch_order(structure: Structure, dtype: torch.dtype) -> list[tuple[str, str]]:
    """The functions of :func:`generate_source`'s module in launch order, each with its grid:
    ``blocks`` (a program per row of the block table) or ``tensors`` (a program per tensor)."""
    return _source(structure, dtype).launch_order()


def buffer_columns(structure: Structure) -> tuple[int, int]:
    """Columns of the partial sums (one per norm) and of the per-tensor buffer (one per
    per-tensor value the passes hand on); ``(0, 0)`` for an element-wise rule."""
    source = _source(structure, torch.float32)
    if not source.tensorwise:
        return 0, 0
    norms = sum(op == "norm" for op, _ in structure.ops)
    return norms, max(1, len(source.per_slot))
