"""Record an update rule as an expression over arrays, once per step, without touching any data.

The engine never rewrites an algorithm. It runs the same rule function as the
per-tensor reference path, with *proxies* in place of the arrays: every array
operation is recorded as a node, while the scalar arithmetic of the rule (bias
corrections, ``lr/(1-β₁ᵗ)``, the RAdam switch, branches on ``weight_decay ==
0``) runs in plain Python on the current step's hyperparameters. Every Python
number that meets an array becomes a *slot*: a runtime input, not a constant.

The recording therefore splits in two:

* its **structure** (the operations, how they connect, which branches the
  rule took) is the cache key of an execution plan (:mod:`._replay`) or a
  compiled kernel (:mod:`._native`), and
* its **slots** (the scalar values) are passed to that plan on every step.

A learning-rate scheduler changes slots only, so it never selects another
plan; flipping ``weight_decay`` between zero and non-zero, or RAdam leaving its
warm-up, changes the structure and selects (or builds, once) another.

The multiply-adds of :class:`~adaptim.algorithms._spec.ArrayOps` (``axpy``,
``addcmul``, ``lerp``) are recorded as themselves, not as their formulas, so a
plan can call the very torch kernels the reference path calls: the
multi-tensor replay is bit-identical to it. ``addcdiv`` is recorded as itself
for float16 and bfloat16 parameters only (``trace(..., half=True)``), where
torch's kernel keeps float32 inside; for float32 and float64 it is its formula
``a + (value·b)/c``, the same bits, which the native loops already compile.

Not every value is element-wise: each node has a *kind* (:meth:`Structure.kinds`).
Norms give one 0-d value per tensor (LARS/LAMB); Adafactor's row and column means
(``xp.mean_square``, ``xp.mean``) and a rule's own ``xp.per_tensor`` functions
(SM3's per-axis maxima) give *reduced* arrays of another shape; ``xp.rms`` and
``xp.eps_of`` give *host* floats, one per tensor, whose arithmetic the replay
evaluates in Python exactly as the eager rule does. The replay runs those per
tensor and the element-wise rest with multi-tensor kernels.

The rule contract: a rule may use the arithmetic operators, comparisons,
``abs()`` and the functions of ``xp``. Anything else it does with a proxy (a
branch on array values, ``float()`` of an array, an attribute the proxy lacks,
an operation that raises) makes :func:`trace` raise :class:`Unfusable` with the
reason, and the engine steps that group with the per-tensor reference path,
after one warning that names the rule. Tracing never raises anything else.

The proxies and the recording ``xp`` live in :mod:`._recording`; this module
turns a finished recording into a :class:`Structure` and checks its kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from adaptim.torch._recording import HALF_RECORDING_OPS as HALF_RECORDING_OPS
from adaptim.torch._recording import RECORDING_OPS as RECORDING_OPS
from adaptim.torch._recording import Op as Op
from adaptim.torch._recording import Proxy as Proxy
from adaptim.torch._recording import Recording as Recording
from adaptim.torch._recording import Ref as Ref
from adaptim.torch._recording import Unfusable as Unfusable
from adaptim.torch._symbolic import NotMemoizable, Sym, SymTensor

#: Operations whose result holds one value per parameter tensor (norms), not one per element.
PER_TENSOR_OPS = frozenset({"norm", "sum", "dot"})
#: Reductions along one axis, kept as a size-1 axis (Adafactor's row and column means):
#: their results, and what only they and per-tensor values feed, are *reduced* values,
#: replayed tensor by tensor since their shapes differ from one tensor to the next.
REDUCING_OPS = frozenset({"mean_square", "mean", "axis_piece", "axis_maxima"})
#: Scalars read on the host, one Python float per tensor (torch's ``.item()`` arithmetic).
HOST_OPS = frozenset({"rms", "eps_of"})
#: What a rule may do with host scalars: Python's own float arithmetic.
HOST_ARITHMETIC = frozenset({"add", "sub", "mul", "div", "neg", "pow", "clip"})
#: The kinds of value in a recording, from the most to the least data per tensor: the
#: kind of an operation is that of its largest operand.
KINDS = ("element", "reduced", "tensor", "host")

#: Parameter dtypes whose compound kernels compute in float32 and round once.
HALF_DTYPES = frozenset({torch.float16, torch.bfloat16})


@dataclass(frozen=True)
class Structure:
    """Everything a plan depends on except the slot values."""

    ops: tuple[Op, ...]
    inputs: tuple[str, ...]
    #: Inputs holding one value per parameter tensor (0-d state such as ``trust_ratio``).
    per_tensor_inputs: frozenset[str]
    #: (name of the input buffer written, reference of its new value)
    outputs: tuple[tuple[str, Ref], ...]
    #: State entries the rule creates this step (absent before), with their value.
    created: tuple[tuple[str, Ref], ...]
    slot_count: int
    #: Per-tensor inputs of another shape than 0-d (Adafactor's ``(..., R, 1)`` rows).
    reduced_inputs: frozenset[str] = frozenset()
    #: Recorded for float16/bfloat16 tensors (:data:`HALF_RECORDING_OPS`): the replay
    #: then avoids the multi-tensor kernels that round differently in a half type.
    half: bool = False

    def __hash__(self) -> int:
        # Looked up every step: hash the operations once, not on every lookup.
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(
                (
                    self.ops,
                    self.inputs,
                    self.per_tensor_inputs,
                    self.outputs,
                    self.created,
                    self.reduced_inputs,
                    self.half,
                )
            )
            object.__setattr__(self, "_hash", cached)
        return cached

    def kinds(self) -> tuple[str, ...]:
        """The kind of each node (:data:`KINDS`).

        ``element``: the parameter's shape; ``reduced``: one array per tensor of
        another shape (a row or column mean); ``tensor``: a 0-d array per tensor
        (a norm); ``host``: a Python float per tensor. A matrix product is the
        outer product of a column and a row statistic (Adafactor's
        :math:`R_t C_t`), so it has the parameter's shape.
        """
        cached: tuple[str, ...] | None = self.__dict__.get("_kinds")
        if cached is not None:
            return cached
        kinds: list[str] = []
        for op, args in self.ops:
            if op in HOST_OPS:
                kind = "host"
            elif op in REDUCING_OPS:
                kind = "reduced"
            elif op in PER_TENSOR_OPS:
                kind = "tensor"
            elif op == "matmul":
                kind = "element"
            elif op == "per_tensor":  # (function, its result's kind, arrays...)
                kind = args[1][1]
            else:
                found = {self.kind_of(a, kinds) for a in args if a[0] in ("node", "input")}
                kind = next((k for k in KINDS if k in found), "element")
            kinds.append(kind)
        result = tuple(kinds)
        object.__setattr__(self, "_kinds", result)
        return result

    def kind_of(self, ref: Ref, kinds: Sequence[str] | None = None) -> str:
        """The kind of an input or node (``scalar`` for slots and constants)."""
        if ref[0] == "input":
            name = self.inputs[ref[1]]
            if name in self.reduced_inputs:
                return "reduced"
            return "tensor" if name in self.per_tensor_inputs else "element"
        if ref[0] == "node":
            return (self.kinds() if kinds is None else kinds)[ref[1]]
        return "scalar"

    def per_tensor_nodes(self) -> frozenset[int]:
        """Nodes holding one value per tensor (anything but ``element``): norms, and what only they (and slots) feed."""
        return frozenset(i for i, kind in enumerate(self.kinds()) if kind != "element")


@dataclass
class Traced:
    """One recorded step: the structure (cache key), this step's slots and the new scalar state."""

    structure: Structure
    slots: list[float]
    scalar_state: dict[str, Any]
    slot_expressions: list[tuple[Any, ...]] = field(default_factory=list)
    memoizable: bool = False


def trace(
    update: Callable[..., tuple[Any, dict[str, Any]]],
    tensor_state: Sequence[str],
    per_tensor_state: Sequence[str],
    absent_state: Sequence[str],
    scalar_state: Mapping[str, Any],
    *,
    negate_grad: bool,
    step: float | Sym,
    hyperparams: Mapping[str, Any],
    ndim: int,
    reduced_state: Sequence[str] = (),
    half: bool = False,
) -> Traced:
    """Run ``update`` on proxies; return what a plan must do and the new scalar state.

    The inputs are named ``param``, ``grad`` and ``state_<key>`` for each state
    entry present (``per_tensor_state`` ones hold a 0-d value per parameter).
    ``absent_state`` entries reach the rule as ``None`` (SGD's momentum
    buffer before the first step). Scalar state (NAdam's ``mu_product``) stays
    a real 0-d tensor, computed on the host exactly as in the reference path.
    ``reduced_state`` names the ``per_tensor_state`` entries that are not 0-d
    (Adafactor's row and column statistics). ``half``: the parameters are float16
    or bfloat16 (:data:`HALF_RECORDING_OPS`).
    Any failure of the rule on proxies becomes :class:`Unfusable`.
    """
    present = (*tensor_state, *per_tensor_state)
    inputs = ("param", "grad", *(f"state_{k}" for k in present))
    recording = Recording(inputs=inputs, ndim=ndim)
    grad = recording.input(1)
    if negate_grad:
        grad = -grad
    state: dict[str, Any] = {k: recording.input(2 + i) for i, k in enumerate(present)}
    state.update(dict.fromkeys(absent_state))
    state.update(scalar_state)
    try:
        new_param, new_state = update(
            recording.input(0),
            grad,
            state,
            step=step,
            xp=HALF_RECORDING_OPS if half else RECORDING_OPS,
            **hyperparams,
        )
    except (Unfusable, NotMemoizable):
        raise
    except Exception as error:  # the contract: never raise from inside the tracer
        raise Unfusable(f"{type(error).__name__}: {error}") from None
    outputs: list[tuple[str, Ref]] = []
    created: list[tuple[str, Ref]] = []
    new_scalars: dict[str, Any] = {}
    for key, value in new_state.items():
        if key in scalar_state:
            new_scalars[key] = value
        elif key in present:
            outputs.append((f"state_{key}", _array_ref(recording, value)))
        else:
            created.append((key, _array_ref(recording, value)))
    outputs.append(("param", _array_ref(recording, new_param)))
    # A buffer that comes back unchanged needs no write.
    writes = tuple((b, r) for b, r in outputs if r != ("input", inputs.index(b)))
    structure = Structure(
        ops=tuple(recording.ops),
        inputs=inputs,
        per_tensor_inputs=frozenset(f"state_{k}" for k in per_tensor_state),
        outputs=writes,
        created=tuple(created),
        slot_count=len(recording.slots),
        reduced_inputs=frozenset(f"state_{k}" for k in reduced_state),
        half=half,
    )
    _check_kinds(structure, ndim)
    return Traced(
        structure,
        recording.slots,
        new_scalars,
        recording.slot_expressions,
        # (new scalar state from symbolic leaves: the memo recomputes it too)
        recording.memoizable and all(type(v) is SymTensor for v in new_scalars.values()),
    )


def _array_ref(recording: Recording, value: Any) -> Ref:
    if not isinstance(value, Proxy) or value.recording is not recording:
        raise Unfusable("a result that is not an array of the recording")
    return value.ref


def _check_kinds(structure: Structure, ndim: int) -> None:
    """Refuse what a plan could not replay: host scalars beyond float arithmetic, shape changes.

    A 0-d parameter's 0-d state is element-wise state as far as the partition can tell;
    where the rule computes it per tensor (LARS's trust ratio), the shape is the same.
    """
    kinds = structure.kinds()
    for (op, args), kind in zip(structure.ops, kinds, strict=True):
        if kind == "host" and op not in HOST_OPS and op not in HOST_ARITHMETIC:
            raise Unfusable(f"{op}() of a scalar read on the host")
        if op == "matmul" and any(
            structure.kind_of(a, kinds) in ("element", "host", "scalar") for a in args
        ):
            raise Unfusable("a matrix product of anything but row and column statistics")
    for name, ref in (*structure.outputs, *structure.created):
        kind = structure.kind_of(ref, kinds)
        if kind in ("host", "scalar"):
            raise Unfusable(f"{name} set to a scalar")
        if name in structure.inputs:
            wanted = structure.kind_of(("input", structure.inputs.index(name)), kinds)
            if kind != wanted and not (ndim == 0 and (wanted, kind) == ("element", "tensor")):
                raise Unfusable(f"{name} changes its shape ({wanted} to {kind})")
