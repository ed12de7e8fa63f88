"""The partitions of a param group, and the bound call of a partition's native kernel.

A *partition* (see :mod:`._engine`) holds the parameters of one group that one
recording covers: same device, dtype, step count and state layout. It keeps
what the steady steps reuse: its state lists, the kernel's pointer table and
block table, and :class:`NativeLaunch`, the kernel call with its fixed
arguments bound.
"""

from __future__ import annotations

import ctypes
import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaptim.algorithms._state_codes import ABSMAX_SUFFIX
from adaptim.torch import _hugepages, _lowmem_native, _native, _symbolic, _triton
from adaptim.torch._counters import CounterCheck
from adaptim.torch._trace import HALF_DTYPES

if TYPE_CHECKING:
    from adaptim.algorithms import Algorithm
    from adaptim.torch._base import Optimizer


@dataclass
class Partition:
    """Parameters of one group that one recording covers."""

    params: list[torch.Tensor]
    states: list[dict[str, Any]]
    tensor_keys: tuple[str, ...]
    per_tensor_keys: tuple[str, ...]
    absent_keys: tuple[str, ...]
    state_lists: list[list[torch.Tensor]]
    steps: list[torch.Tensor]
    #: The step count of every parameter of the partition, mirrored on the host.
    step: float
    scalar_state: dict[str, torch.Tensor]
    ndim: int
    ptrs: list[int]
    native_ok: bool
    numel: int
    #: The dtype of the ``step`` counters, when the native kernel may count them.
    step_dtype: torch.dtype | None = None
    #: float16 or bfloat16 parameters: recorded with ``trace(..., half=True)``.
    half: bool = False
    #: The ``per_tensor_keys`` of another shape than 0-d (``Algorithm.entry_shape``'s).
    reduced_keys: tuple[str, ...] = ()
    warned: bool = False
    #: Why the native loop was not used on the last try, for ``fused_status()``.
    native_refused: str | None = None
    #: The native kernel of the last structure (memos keep the same object), and whether
    #: it is the exact loop (:func:`._native.gives_torchs_bits`).
    kernel: tuple[Any, bool, _native.Kernel] | None = None
    #: Where its parameters are in the group's list (with gradients) it was built from;
    #: ``None`` when they are that whole list, in order.
    positions: list[int] | None = None
    #: This step's gradient data pointers, read by ``_usable_grads`` for the native call.
    grad_ptrs: list[int] = field(default_factory=list)
    #: ``(negate, shape, memos)`` of the last recording: the memo list without rebuilding its key.
    memo_lookup: tuple[bool, tuple[Any, ...], list[_symbolic.Memo]] | None = None
    _table: _native.BlockTable | None = None
    _pointers: tuple[np.ndarray, int] | None = None
    _launch: tuple[_native.Kernel | _lowmem_native.Kernel, NativeLaunch] | None = None
    #: How each of ``tensor_keys`` is stored when one is encoded (:mod:`._lowmem_native`), else ().
    encodings: tuple[str, ...] = ()
    #: The encoded loop's kernel and rounding keys (:class:`._lowmem_native.Bound`).
    lowmem: Any = None
    #: Whether a Triton kernel may step it (:data:`._triton.DEVICES`, float32/float64, contiguous).
    device_ok: bool = False
    #: The bound Triton launch of the last structure's kernel (:class:`._triton.TritonLaunch`).
    triton: _triton.TritonLaunch | None = None
    #: Counts ``steps`` in one C call where the kernel does not (:class:`._native.StepCounter`).
    step_counter: Any = None
    #: Adafactor's native passes (:mod:`._adafactor_native`): ``(bound, function)``, ``False``
    #: where they may not step it, ``None`` before the first try.
    adafactor: Any = None

    @property
    def signature(self) -> tuple[Any, ...]:
        """What a recording depends on besides hyperparameters and step."""
        return (
            self.tensor_keys,
            self.per_tensor_keys,
            self.absent_keys,
            tuple(self.scalar_state),
            self.ndim,
            self.reduced_keys,
            self.half,
        )

    def state_current(self, state: Mapping[torch.Tensor, Any], dicts_known: bool = False) -> bool:
        """Whether every state dict and tensor (counters too) is the one this partition recorded.

        ``state`` is the optimizer's; an entry the user deleted raises ``KeyError``.
        ``dicts_known``: the engine has checked that ``state`` maps every
        parameter to the same dict as when this partition was last checked
        (:meth:`Engine.begin_step`), so only the tensors in them are compared
        (looking a parameter up hashes it in Python: the costly half).
        """
        params, recorded, dicts, names, tensors = self._state_check
        return (dicts_known or all(map(operator.is_, map(state.get, params), recorded))) and all(
            map(operator.is_, map(operator.getitem, dicts, names), tensors)
        )

    def counters_hold(self) -> bool:
        """Whether the ``step`` counters still hold one value, and each scalar state entry one
        value (the partition's bucket); the host mirrors ``step`` and ``scalar_state`` then take
        those values (:mod:`._counters`: user code may set them in place, and float32 counters
        stop at 2**24, as torch's do)."""
        for check, key in self._counter_checks:
            value = check.value()
            if value is None:
                return False
            if key is None:
                self.step = value
            elif value != float(self.scalar_state[key]):
                self.scalar_state[key] = self.states[0][key]
        return True

    @functools.cached_property
    def _counter_checks(self) -> list[tuple[CounterCheck, str | None]]:
        checks: list[tuple[CounterCheck, str | None]] = []
        if self.steps:
            checks.append((CounterCheck(self.steps), None))
        for key in self.scalar_state:
            checks.append((CounterCheck([s[key] for s in self.states]), key))
        return checks

    @functools.cached_property
    def _state_check(self) -> tuple[list[Any], list[Any], list[Any], list[str], list[Any]]:
        """What ``state_current`` compares, flat, for one pass per step.

        The parameters that have state with their recorded dicts (a stateless
        rule's empty dicts are not stored, as in torch), then the recorded
        (state dict, key, tensor) triples.
        """
        stateful = [(p, s) for p, s in zip(self.params, self.states, strict=True) if s]
        # (the counters too: their values are mirrored on the host)
        counters = (*(("step",) if self.steps else ()), *self.scalar_state)
        keys = (*self.tensor_keys, *self.per_tensor_keys, *counters)
        dicts = [s for _ in keys for s in self.states]
        names = [k for k in keys for _ in self.states]
        tensors = [t for ts in self.state_lists for t in ts]
        tensors += [s[k] for k in counters for s in self.states]
        return [p for p, _ in stateful], [s for _, s in stateful], dicts, names, tensors

    def block_table(self) -> _native.BlockTable:
        if self._table is None:
            self._table = _native.BlockTable.of([p.numel() for p in self.params])
        return self._table

    def native_pointers(self) -> tuple[np.ndarray, int]:
        """Data pointers by role (params, grads (filled each step), state, 8-bit block maxima, step counters), and the array's address."""
        if self._pointers is None:
            roles = [self.params, self.params, *self.state_lists]
            for key, encoding in zip(self.tensor_keys, self.encodings, strict=False):
                if encoding == "q8":
                    roles.append([s[key + ABSMAX_SUFFIX] for s in self.states])
            if self.step_dtype is not None:
                roles.append(self.steps)
            pointers = np.array([t.data_ptr() for role in roles for t in role], dtype=np.int64)
            self._pointers = (pointers, pointers.ctypes.data)
        return self._pointers

    def launch(self, kernel: _native.Kernel | _lowmem_native.Kernel) -> NativeLaunch:
        """``kernel``'s call on this partition, its fixed arguments bound once."""
        if self._launch is None or self._launch[0] is not kernel:
            self._launch = (kernel, NativeLaunch(kernel, self))
        return self._launch[1]


class NativeLaunch:
    """One partition's native kernel call with everything but this step's values bound.

    The same call as :meth:`_native.Kernel.__call__`. Per step only the
    gradient pointers (written into the partition's pointer table through a
    ctypes view), the slots (written into a persistent array when they
    change) and the thread count vary: a small model's step is mostly this
    fixed cost, and the fewer objects and libraries it touches the less it
    costs when the caches are cold, as between two steps of a training loop.
    """

    __slots__ = ("_bound", "_grads", "_keep", "_slot_address", "_slots", "_table", "_values")

    def __init__(
        self, kernel: _native.Kernel | _lowmem_native.Kernel, partition: Partition
    ) -> None:
        # Before the pointers are taken, float state may move (encoded state stays put).
        if isinstance(kernel, _native.Kernel) and partition._pointers is None:
            elements = partition.state_lists[: len(partition.tensor_keys)]
            _hugepages.adopt([t for role in elements for t in role])
        pointers, address = partition.native_pointers()
        count = len(partition.params)
        width = pointers.itemsize
        self._keep = pointers  # the views below point into it
        # (``Any``: typeshed's ctypes arrays take lists of their C type only.)
        self._grads: Any = (ctypes.c_int64 * count).from_address(address + width * count)
        self._slots: Any = None
        self._slot_address = 0
        self._values: list[float] | None = None
        self._table = table = partition.block_table()
        self._bound = (
            kernel.function,
            count,
            address,
            table.arguments,
            _native.STEP_KINDS[partition.step_dtype],
            table.offsets.ctypes.data,
        )

    def __call__(self, grad_ptrs: list[int], slots: list[float], *extra: int) -> None:
        """Step; ``extra`` are the encoded kernel's last arguments (rounding keys and salt)."""
        function, count, address, table, step_kind, offsets = self._bound
        self._grads[:] = grad_ptrs
        if slots != self._values:
            if self._slots is None or len(self._slots) < len(slots):
                self._slots = (ctypes.c_double * max(1, len(slots)))()
                self._slot_address = ctypes.addressof(self._slots)
            self._slots[: len(slots)] = slots
            self._values = slots
        function(
            count,
            address,
            self._slot_address,
            *table,
            self._table.threads(torch.get_num_threads()),
            step_kind,
            offsets,
            *extra,
        )


def _step_dtype(states: list[dict[str, Any]]) -> torch.dtype | None:
    """The dtype the native kernel counts steps in, if every counter is a CPU 0-d float of it."""
    steps = [s["step"] for s in states]
    dtype = steps[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return None
    ok = all(t.dtype == dtype and t.ndim == 0 and t.device.type == "cpu" for t in steps)
    return dtype if ok else None


def _declared_shape(algorithm: Algorithm, name: str, shape: tuple[int, ...]) -> Any:
    """The shape ``Algorithm.entry_shape`` or ``state_shape`` gives state ``name``, if any."""
    if algorithm.entry_shape is not None:
        return algorithm.entry_shape(name, shape)
    if algorithm.state_shape is not None:
        return algorithm.state_shape(shape).get(name)
    return None


def _reduced_entry(algorithm: Algorithm, name: str, p: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether state ``name`` is a statistic of another shape (Adafactor's ``(..., R, 1)``
    rows, SM3's per-axis maxima).

    Asked of a parameter shape with no size-1 axis, so that a 1×N matrix's
    column statistic, shaped like the matrix, still counts as one.
    """
    probe = tuple(range(2, 2 + p.ndim))
    declared = _declared_shape(algorithm, name, probe)
    return (
        declared is not None
        and tuple(declared) != probe
        and value.shape == tuple(_declared_shape(algorithm, name, tuple(p.shape)))
        and value.dtype == p.dtype
        and value.device == p.device
    )


def _plain_dense(p: torch.Tensor) -> bool:
    return (
        type(p) in (torch.Tensor, torch.nn.Parameter)
        and p.layout == torch.strided
        and p.is_floating_point()
        and p.numel() > 0
    )


def build_partitions(
    optimizer: Optimizer,
    group: Mapping[str, Any],
    hp: Mapping[str, Any],
    params: list[torch.Tensor],
) -> tuple[list[Partition], list[torch.Tensor]]:
    """Split a group's parameters into partitions, and those the reference path must take."""
    algorithm = optimizer.algorithm
    entries = algorithm.state(hp)
    fmt = optimizer.state_format
    reference: list[torch.Tensor] = []
    buckets: dict[tuple[Any, ...], list[torch.Tensor]] = {}
    states_of: dict[torch.Tensor, dict[str, Any]] = {}
    for p in params:
        grad = p.grad
        assert grad is not None
        if not _plain_dense(p) or grad.is_sparse or p.is_complex():
            reference.append(p)
            continue
        state = optimizer._init_state(p, group)
        layout = []
        for name in entries:
            value = state.get(name)
            if value is None:
                layout.append((name, "absent"))
            elif not isinstance(value, torch.Tensor) or value.is_sparse:
                layout = []
                break
            elif fmt is not None and value.ndim > 0:  # as the low-memory format stores it
                kind = _lowmem_native.kind_of(fmt, state, name, value, p)
                if kind is None:
                    layout = []
                    break
                layout.append((name, kind))
            elif _reduced_entry(algorithm, name, p, value):
                layout.append((name, "reduced"))
            elif value.shape == p.shape and value.dtype == p.dtype and value.stride() == p.stride():
                layout.append((name, "element"))
            elif value.ndim == 0:
                layout.append((name, "tensor"))
            else:
                layout = []
                break
        if entries and not layout:
            reference.append(p)
            continue
        bucket_key = (
            p.device,
            p.dtype,
            float(state["step"]) if algorithm.step else 0.0,
            tuple(float(state[k]) for k in algorithm.scalar_state),
            tuple(layout),
            p.ndim if algorithm.depends_on_ndim else 2,  # (SM3 records one piece per axis)
            # (a transposed view has no kernel form: alone, it leaves the others theirs)
            p.is_contiguous(),
        )
        buckets.setdefault(bucket_key, []).append(p)
        states_of[p] = state
    partitions = []
    for (device, dtype, step, _, layout, ndim, _), members in buckets.items():
        states = [states_of[p] for p in members]  # {} for stateless rules, as in torch
        tensor_keys = tuple(n for n, kind in layout if kind in ("element", "bf16", "q8"))
        kinds = tuple(kind for _, kind in layout if kind in ("element", "bf16", "q8"))
        encodings = kinds if _lowmem_native.ENCODED.intersection(kinds) else ()
        per_tensor_keys = tuple(n for n, kind in layout if kind in ("tensor", "reduced"))
        partitions.append(
            Partition(
                params=members,
                states=states,
                tensor_keys=tensor_keys,
                per_tensor_keys=per_tensor_keys,
                absent_keys=tuple(n for n, kind in layout if kind == "absent"),
                state_lists=[[s[k] for s in states] for k in (*tensor_keys, *per_tensor_keys)],
                steps=[s["step"] for s in states] if algorithm.step else [],
                step=step,
                scalar_state={k: states[0][k] for k in algorithm.scalar_state},
                ndim=ndim,
                ptrs=[p.data_ptr() for p in members],
                native_ok=device.type == "cpu"
                and device.type not in _triton.DEVICES
                and (dtype in (torch.float32, torch.float64) or dtype in HALF_DTYPES)
                and all(p.is_contiguous() for p in members),
                device_ok=device.type in _triton.DEVICES
                and dtype in (torch.float32, torch.float64)
                and all(p.is_contiguous() for p in members),
                numel=sum(p.numel() for p in members),
                step_dtype=_step_dtype(states) if algorithm.step else None,
                half=dtype in HALF_DTYPES,
                encodings=encodings,
                reduced_keys=tuple(n for n, kind in layout if kind == "reduced"),
            )
        )
    return partitions, reference
