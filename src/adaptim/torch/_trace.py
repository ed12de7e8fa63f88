"""Record an update rule as one element-wise expression, and compile it once per shape of that expression.

The fast path never rewrites an algorithm. It runs the same rule function as
the eager path, with *proxies* in place of the arrays: every array operation
is recorded as a node, while the scalar arithmetic of the rule (bias
corrections, ``lr/(1-β₁ᵗ)``, the RAdam switch, branches on ``weight_decay ==
0``) runs in plain Python on the current step's hyperparameters. Every Python
number that meets an array becomes a *slot*: a runtime input, not a constant.

The recorded expression therefore splits in two:

* its **structure** (the operations and how they connect, which branches the
  rule took) is the cache key of a compiled kernel, and
* its **slots** (the scalar values) are passed to that kernel as one small
  float64 tensor on every call.

A learning-rate scheduler changes slots only, so it never triggers a
recompilation; flipping ``weight_decay`` between zero and non-zero, or RAdam
leaving its warm-up, changes the structure and selects (or compiles, once)
another kernel. The kernel is generated as Python source, one function per
structure, and compiled with ``torch.compile``: Inductor fuses the whole update
into a single pass that reads each buffer once and writes the parameter and
the state back in place (C++/OpenMP on CPU, Triton on GPU).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from adaptim.algorithms._spec import ArrayOps

#: In a segmented bucket (LARS, LAMB) every parameter starts at a multiple of
#: CHUNK elements, the rest of its last chunk being padding, so norms per
#: parameter reduce chunk by chunk.
CHUNK = 1024


class Unfusable(Exception):
    """The rule did something the fused kernel cannot express (a reduction, a value read on the host)."""


class MissingState(Unfusable):
    """The rule creates a state entry the buckets do not hold yet (LARS's first ``trust_ratio``)."""


# An argument of a recorded operation: ("node", index), ("slot", index) or ("const", value).
Ref = tuple[str, Any]
Op = tuple[str, tuple[Ref, ...]]


@dataclass
class Recording:
    """The operations a rule performed on its array inputs, in order."""

    inputs: tuple[str, ...]
    #: What ``p.ndim`` answers (LARS/LAMB exclude biases by it); buckets hold one kind.
    ndim: int = 2
    #: Whether the buffers carry segment ids, so a norm can be taken per parameter.
    segmented: bool = False
    ops: list[Op] = field(default_factory=list)
    slots: list[float] = field(default_factory=list)

    def input(self, position: int) -> Proxy:
        return Proxy(self, ("input", position))

    def record(self, name: str, *args: Any) -> Proxy:
        refs = tuple(self._ref(a) for a in args)
        self.ops.append((name, refs))
        return Proxy(self, ("node", len(self.ops) - 1))

    def _ref(self, value: Any) -> Ref:
        if isinstance(value, Proxy):
            if value.recording is not self:
                raise Unfusable("an array from another recording")
            return value.ref
        if isinstance(value, bool):
            raise Unfusable("a bool where a number was expected")
        if isinstance(value, int | float):
            self.slots.append(float(value))
            return ("slot", len(self.slots) - 1)
        if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex():
            self.slots.append(float(value))  # scalar state, e.g. a 0-d tensor from the host
            return ("slot", len(self.slots) - 1)
        raise Unfusable(f"an operand of type {type(value).__name__}")

    def const(self, value: float) -> Proxy:
        """A value baked into the kernel (exponents: a runtime exponent would cost a pow per element)."""
        self.ops.append(("const", (("const", float(value)),)))
        return Proxy(self, ("node", len(self.ops) - 1))


class Proxy:
    """Stands for an array while a rule is recorded; arithmetic records, host reads refuse."""

    __slots__ = ("recording", "ref")
    __array_priority__ = 1000  # win against NumPy scalars on the left

    def __init__(self, recording: Recording, ref: Ref) -> None:
        self.recording = recording
        self.ref = ref

    def _op(self, name: str, *args: Any) -> Proxy:
        return self.recording.record(name, *args)

    def __add__(self, other: Any) -> Proxy:
        return self._op("add", self, other)

    def __radd__(self, other: Any) -> Proxy:
        return self._op("add", other, self)

    def __sub__(self, other: Any) -> Proxy:
        return self._op("sub", self, other)

    def __rsub__(self, other: Any) -> Proxy:
        return self._op("sub", other, self)

    def __mul__(self, other: Any) -> Proxy:
        return self._op("mul", self, other)

    def __rmul__(self, other: Any) -> Proxy:
        return self._op("mul", other, self)

    def __truediv__(self, other: Any) -> Proxy:
        return self._op("div", self, other)

    def __rtruediv__(self, other: Any) -> Proxy:
        return self._op("div", other, self)

    def __neg__(self) -> Proxy:
        return self._op("neg", self)

    def __pow__(self, exponent: Any) -> Proxy:
        if not isinstance(exponent, int | float) or isinstance(exponent, bool):
            raise Unfusable("a non-constant exponent")
        return self._op("pow", self, self.recording.const(exponent))

    def __gt__(self, other: Any) -> Proxy:
        return self._op("gt", self, other)

    def __ge__(self, other: Any) -> Proxy:
        return self._op("ge", self, other)

    def __lt__(self, other: Any) -> Proxy:
        return self._op("lt", self, other)

    def __le__(self, other: Any) -> Proxy:
        return self._op("le", self, other)

    def __and__(self, other: Any) -> Proxy:
        return self._op("and", self, other)

    def __or__(self, other: Any) -> Proxy:
        return self._op("or", self, other)

    @property
    def ndim(self) -> int:
        return self.recording.ndim

    def __bool__(self) -> bool:
        raise Unfusable("a branch on array values")

    def __float__(self) -> float:
        raise Unfusable("an array value read on the host")

    __hash__ = None  # type: ignore[assignment]


def _norm(x: Any) -> Any:
    if not x.recording.segmented:
        raise Unfusable("a norm over a whole parameter, and the buffers have no segments")
    return x.recording.record("norm", x)


def _clip(x: Any, low: float | None, high: float | None) -> Any:
    args = [
        x,
        low if low is not None else float("-inf"),
        high if high is not None else float("inf"),
    ]
    return x.recording.record("clip", *args)


def _binary(name: str) -> Callable[[Any, Any], Any]:
    def record(a: Any, b: Any) -> Any:
        owner = a if isinstance(a, Proxy) else b
        return owner.recording.record(name, a, b)

    return record


def _where(cond: Any, a: Any, b: Any) -> Any:
    return cond.recording.record("where", cond, a, b)


#: The ``xp`` a rule sees while it is recorded.
RECORDING_OPS = ArrayOps(
    name="recording",
    sqrt=lambda x: x.recording.record("sqrt", x),
    maximum=_binary("maximum"),
    abs=lambda x: x.recording.record("abs", x),
    where=_where,
    clip=_clip,
    norm=_norm,
    axpy=lambda a, b, alpha: a + b * alpha,
    addcmul=lambda a, b, c, value: a + (b * c) * value,
    lerp=lambda a, b, weight: a.recording.record("lerp", a, b, weight),
)

# How each recorded operation reads in the generated kernel.
_TEMPLATES: Mapping[str, str] = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "neg": "(-{0})",
    "pow": "({0} ** {1})",
    "gt": "({0} > {1})",
    "ge": "({0} >= {1})",
    "lt": "({0} < {1})",
    "le": "({0} <= {1})",
    "and": "({0} & {1})",
    "or": "({0} | {1})",
    "sqrt": "torch.sqrt({0})",
    "abs": "torch.abs({0})",
    "maximum": "torch.maximum({0}, {1})",
    "where": "torch.where({0}, {1}, {2})",
    "clip": "torch.clamp({0}, {1}, {2})",
    "lerp": "torch.lerp({0}, {1}, {2})",
}


@dataclass(frozen=True)
class Structure:
    """Everything a kernel depends on except the slot values."""

    ops: tuple[Op, ...]
    inputs: tuple[str, ...]
    #: (name of the buffer written, reference of its new value)
    outputs: tuple[tuple[str, Ref], ...]
    slot_count: int


def generate_source(structure: Structure, name: str) -> str:
    """The kernel as Python source: buffers in, slots in ``s``, results written in place.

    In a segmented bucket, per-parameter values (norms, ``trust_ratio``) and
    everything computed from them alone stay one value per *chunk*; they are
    spread to the elements only where they meet an element-wise array, and a
    per-parameter result is read from the chunks, never from a full-length
    array (which Inductor would have to materialise).
    """
    lines = [f"def {name}({', '.join(structure.inputs)}, s):"]
    if "chunk_segment" in structure.inputs:
        lines += [
            "    def per_chunk(values):",
            "        return values[:, None].expand(-1, CHUNK).reshape(-1)",
            "    column = torch.arange(CHUNK, device=param.device)[None, :]",
            "    valid = (column < chunk_valid[:, None]).reshape(-1)",
        ]
    chunked: set[int] = set()  # nodes holding one value per chunk

    def text(ref: Ref) -> str:
        kind, value = ref
        if kind == "input":
            return structure.inputs[value]
        if kind == "node":
            return f"v{value}"
        if kind == "slot":
            return f"s[{value}]"
        return repr(value)

    def element(ref: Ref) -> str:
        """``ref`` as one value per element."""
        return f"per_chunk({text(ref)})" if ref[0] == "node" and ref[1] in chunked else text(ref)

    for index, (op, args) in enumerate(structure.ops):
        if op == "const":
            lines.append(f"    v{index} = {args[0][1]!r}")
            continue
        arrays = [a for a in args if a[0] in ("node", "input")]
        if op == "norm":
            x = element(args[0])
            lines.append(
                # One spare slot: a single-parameter bucket would otherwise scatter
                # into a length-1 buffer, which Inductor 2.13 fails to generate.
                f"    v{index} = torch.zeros(segment_starts.shape[0] + 1, dtype={x}.dtype, "
                f"device={x}.device).index_add_(0, chunk_segment, torch.where(valid, {x} * {x}, "
                "0.0).reshape(-1, CHUNK).sum(1)).sqrt()[chunk_segment]"
            )
            chunked.add(index)
            continue
        if op == "gather":
            lines.append(f"    v{index} = {text(args[0])}[chunk_segment]")
            chunked.add(index)
            continue
        if arrays and all(a[0] == "node" and a[1] in chunked for a in arrays):
            render, chunked_result = text, True
        else:
            render, chunked_result = element, False
        if (
            op == "lerp" and args[2][0] == "slot"
        ):  # torch.lerp wants the weight in the array's dtype
            weight = f"{text(args[2])}.to({render(args[0])}.dtype)"
            lines.append(
                f"    v{index} = torch.lerp({render(args[0])}, {render(args[1])}, {weight})"
            )
        else:
            lines.append(f"    v{index} = " + _TEMPLATES[op].format(*(render(a) for a in args)))
        if chunked_result:
            chunked.add(index)
    for buffer, ref in structure.outputs:
        if not buffer.startswith("pstate_"):
            lines.append(f"    {buffer}.copy_({element(ref)})")
        elif ref[0] == "node" and ref[1] in chunked:  # one value per parameter: its first chunk's
            lines.append(f"    {buffer}.copy_({text(ref)}[segment_starts // CHUNK])")
        else:
            first_of_chunks = f"{text(ref)}.reshape(-1, CHUNK)[:, 0]"
            lines.append(f"    {buffer}.copy_({first_of_chunks}[segment_starts // CHUNK])")
    return "\n".join(lines) + "\n"


@dataclass
class Traced:
    """One recorded step: the structure (cache key) and this step's slot values."""

    structure: Structure
    slots: list[float]
    scalar_state: dict[str, Any]


def trace(
    update: Callable[..., tuple[Any, dict[str, Any]]],
    tensor_state: Sequence[str],
    scalar_state: Mapping[str, Any],
    *,
    negate_grad: bool,
    step: float,
    hyperparams: Mapping[str, Any],
    parameter_state: Sequence[str] = (),
    segmented: bool = False,
    ndim: int = 2,
) -> Traced:
    """Run ``update`` on proxies; return what the kernel must do and the new scalar state.

    The buffers are named ``param``, ``grad``, ``state_<key>`` (one value per
    element) and ``pstate_<key>`` (one value per parameter, LARS's and LAMB's
    ``trust_ratio``), then ``chunk_segment``, ``chunk_valid`` and
    ``segment_starts`` when ``segmented`` (see :data:`CHUNK`). Scalar state (NAdam's ``mu_product``) stays a real 0-d
    tensor computed on the host, exactly as in the eager path.
    """
    inputs = (
        "param",
        "grad",
        *(f"state_{k}" for k in tensor_state),
        *(f"pstate_{k}" for k in parameter_state),
        *(("chunk_segment", "chunk_valid", "segment_starts") if segmented else ()),
    )
    recording = Recording(inputs=inputs, ndim=ndim, segmented=segmented)
    param = recording.input(0)
    grad = recording.input(1)
    if negate_grad:
        grad = -grad
    state: dict[str, Any] = {k: recording.input(2 + i) for i, k in enumerate(tensor_state)}
    first = 2 + len(tensor_state)
    for i, key in enumerate(parameter_state):
        state[key] = recording.record("gather", recording.input(first + i))
    state.update(scalar_state)
    new_param, new_state = update(param, grad, state, step=step, xp=RECORDING_OPS, **hyperparams)
    outputs: list[tuple[str, Ref]] = []
    new_scalars: dict[str, Any] = {}
    for key, value in new_state.items():
        if key in scalar_state:
            new_scalars[key] = value
        elif key in tensor_state:
            outputs.append((f"state_{key}", _array_ref(recording, value)))
        elif key in parameter_state:
            outputs.append((f"pstate_{key}", _array_ref(recording, value)))
        else:
            raise MissingState(f"a state entry {key!r} the buffers do not hold")
    outputs.append(("param", _array_ref(recording, new_param)))
    # A buffer that comes back unchanged needs no write.
    writes = tuple((b, r) for b, r in outputs if r != ("input", inputs.index(b)))
    structure = Structure(tuple(recording.ops), inputs, writes, len(recording.slots))
    return Traced(structure, recording.slots, new_scalars)


def _array_ref(recording: Recording, value: Any) -> Ref:
    if not isinstance(value, Proxy) or value.recording is not recording:
        raise Unfusable("a result that is not an element-wise array")
    return value.ref


#: ``cpp.dynamic_threads``: see kernel_for. The thresholds keep Inductor from
#: materialising an intermediate that feeds both a reduction and the update
#: (LAMB's update direction, whose norm scales it): recomputing it costs
#: arithmetic, materialising it a parameter-sized temporary and two passes.
_INDUCTOR_OPTIONS: dict[str, Any] = {
    "cpp.dynamic_threads": True,
    "realize_cpu_opcount_threshold": 10_000,
    "realize_cpu_acc_reads_threshold": 10_000,
    "realize_reads_threshold": 10_000,
}

_counter = itertools.count()
_lock = threading.Lock()
#: Compiled kernels by (structure, dtype, device type). Shared by all optimizers
#: of the process: two models with the same update share a kernel. The buffer
#: length is symbolic (``dynamic=True``), so buckets of any size share it too.
_KERNELS: dict[tuple[Any, ...], Callable[..., None]] = {}


def kernel_for(structure: Structure, example: torch.Tensor) -> Callable[..., None]:
    """The compiled kernel of ``structure`` for buffers like ``example``, compiled on first use."""
    key = (structure, example.dtype, example.device.type)
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    with _lock:
        kernel = _KERNELS.get(key)
        if kernel is None:
            # One fresh function (a fresh code object) per structure keeps
            # torch.compile's per-function recompilation limit out of play.
            name = f"adaptim_fused_step_{next(_counter)}"
            namespace: dict[str, Any] = {"torch": torch, "CHUNK": CHUNK}
            exec(compile(generate_source(structure, name), f"<{name}>", "exec"), namespace)
            # With a symbolic length, Inductor decides whether to parallelise from
            # the first length it sees, and its on-disk cache keeps that choice for
            # every later process: a kernel first compiled for a tiny bucket would
            # stay single-threaded on a big one (measured: AdamW 30% slower).
            # dynamic_threads always emits the OpenMP region and lets the runtime
            # use torch's current thread count.
            kernel = torch.compile(
                namespace[name],
                fullgraph=True,
                dynamic=True,
                options=_INDUCTOR_OPTIONS,
            )
            _KERNELS[key] = kernel
    return kernel


def compiled_kernel_count() -> int:
    """How many distinct kernels this process has compiled (tests check schedulers add none)."""
    return len(_KERNELS)
