"""The fused fast path: every parameter of a bucket in one flat buffer, one compiled pass per step.

A *bucket* gathers the parameters of one param group that share a device, a
dtype, a step count and scalar state. Their data, their gradients and each of
their state tensors are moved into one flat buffer per role, and each
parameter (``p.data``), gradient (``p.grad``) and state entry becomes a view
into it. The model, ``state_dict()``, ``effective_lr()`` and user code keep
seeing ordinary tensors; the step sees three to six long contiguous arrays and
runs the update rule over them as one fused kernel (see :mod:`._trace`). There
are no parameter-sized temporaries: the kernel reads each buffer once and
writes the results back in place.

Nothing silently goes stale. Every step checks that the parameters still live
in the bucket (``model.to()``, ``p.data = ...`` or ``load_state_dict()``
replace them) and rebuilds the bucket from the tensors the user now has. A
gradient that autograd allocated afresh (``zero_grad(set_to_none=True)``, the
default) is copied into the flat buffer first, one pass over the gradients;
``zero_grad(set_to_none=False)`` keeps the gradients in place and skips that
copy. Anything the fused kernel does not cover (sparse or complex gradients, a
parameter without a gradient this step, strided layouts, norms over whole
tensors as in LARS and LAMB) takes the eager path for that step, so results
never depend on which path ran beyond rounding.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from adaptim.torch._trace import CHUNK, MissingState, Unfusable, kernel_for, trace

if TYPE_CHECKING:
    from adaptim.torch._base import Optimizer

#: Below this many elements in a param group, ``fused=None`` stays eager. The
#: first fused step compiles (about 5 s with torch's on-disk cache, 15-20 s
#: without, on 2 cores; benchmarks/compile_latency.py); above 2M float32
#: parameters the fused step saves a few milliseconds per step on CPU, so the
#: compilation pays for itself within a few thousand steps.
AUTO_MIN_NUMEL = 1 << 21

#: After this many rebuilds of a group's buckets, ``fused=None`` gives up on it
#: (a model whose set of trained parameters changes every step).
MAX_REBUILDS = 8

_FUSABLE_DEVICES = ("cpu", "cuda")

#: Algorithms whose rule takes norms over each whole parameter (the trust
#: ratio of LARS and LAMB): their buckets carry segment ids, so the kernel
#: reduces per parameter, and they are split by ``p.ndim <= 1`` (the
#: bias-and-norm exclusion).
_PER_PARAMETER_NORMS = ("lars", "lamb")
#: State entries holding one value per parameter (0-d), not one per element.
_PER_PARAMETER_STATE = ("trust_ratio",)
_GRAD = operator.attrgetter("grad")
_DENSE_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


@dataclass
class Bucket:
    params: list[torch.Tensor]
    states: list[dict[str, Any]]
    ptrs: list[int]
    grad_views: list[torch.Tensor]
    flat_param: torch.Tensor
    flat_grad: torch.Tensor
    flat_state: list[torch.Tensor]
    step: float
    #: Per-parameter (0-d) state: one (parameters,) tensor per key, whose
    #: entries are the state's views.
    parameter_keys: tuple[str, ...] = ()
    flat_parameter_state: list[torch.Tensor] = field(default_factory=list)
    #: For norms per parameter: each chunk's parameter, its count of real
    #: elements (the rest is padding), and where each parameter begins.
    segments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    ndim: int = 2
    #: ``step`` and scalar state (NAdam's ``mu_product``) of every parameter, as
    #: 0-d views of one tensor per key: one op updates them all.
    flat_scalars: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class GroupPath:
    """The fast path of one param group: its buckets, or why it has none."""

    buckets: list[Bucket] = field(default_factory=list)
    #: Parameters of the group in no bucket: the eager path steps them.
    uncovered: list[torch.Tensor] = field(default_factory=list)
    stale: bool = True
    rebuilds: int = 0
    #: Storages of the flat buffers this path made: parameters sharing one of
    #: them share it because of an earlier bucket, not because the user tied them.
    owned: set[int] = field(default_factory=set)
    reason: str = "not built yet (the first step with gradients builds it)"


def requested(group: Mapping[str, Any]) -> bool | None:
    """The group's ``fused`` switch: True (always), False (never) or None (automatic)."""
    value = group.get("fused")
    return None if value is None else bool(value)


def compile_supported() -> str | None:
    """Why torch.compile cannot run here, or None when it can."""
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported
    except ImportError as error:  # pragma: no cover - stripped builds
        return f"torch._dynamo is unavailable ({error})"
    if not is_dynamo_supported():
        return "torch.compile does not support this Python version"
    return None


def _layout_ok(p: torch.Tensor) -> bool:
    return any(p.is_contiguous(memory_format=f) for f in _DENSE_FORMATS)


def _state_ok(
    p: torch.Tensor, state: Mapping[str, Any], keys: Sequence[str], parameter_keys: Sequence[str]
) -> bool:
    for key in keys:
        value = state.get(key)
        if not isinstance(value, torch.Tensor) or value.is_sparse or value.shape != p.shape:
            return False
    for key in parameter_keys:
        value = state.get(key)
        if value is not None and not (isinstance(value, torch.Tensor) and value.ndim == 0):
            return False
    return True


def with_grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters that have a gradient this step, in order."""
    return [p for p in params if p.grad is not None]


def _strided_view(flat: torch.Tensor, like: torch.Tensor, offset: int) -> torch.Tensor:
    return torch.as_strided(flat, like.size(), like.stride(), offset)


class FastPath:
    """Buckets and fused steps for one optimizer; the eager path handles whatever is left."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.groups: dict[int, GroupPath] = {}

    def invalidate(self) -> None:
        """Forget every bucket (after ``load_state_dict``); the next step rebuilds them."""
        for path in self.groups.values():
            path.stale = True
            path.buckets = []
            if not path.reason.startswith("eager for good"):
                path.reason = "not rebuilt yet (the next step with gradients rebuilds it)"

    # -- the step ------------------------------------------------------------------
    def step_group(
        self, index: int, group: dict[str, Any], hp: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Run the fused step on what it can; return the parameters left to the eager path."""
        mode = requested(group)
        path = self.groups.setdefault(index, GroupPath())
        if mode is False or (mode is None and path.reason.startswith("eager for good")):
            path.reason = "eager: fused=False" if mode is False else path.reason
            return with_grads(group["params"])
        if path.stale and not self._build(group, path, hp, mode):
            return with_grads(group["params"])
        left = with_grads(path.uncovered)
        for bucket in path.buckets:
            if not self._step_bucket(bucket, group, hp, path):
                left.extend(with_grads(bucket.params))
        return left

    def _step_bucket(
        self, bucket: Bucket, group: Mapping[str, Any], hp: dict[str, Any], path: GroupPath
    ) -> bool:
        params = bucket.params
        if list(map(torch.Tensor.data_ptr, params)) != bucket.ptrs:
            path.stale = True  # model.to(), p.data = ..., or state replaced: rebuild next step
            return False
        grads = list(map(_GRAD, params))
        if not all(map(operator.is_, grads, bucket.grad_views)):
            fresh_views, fresh = [], []
            for g, view in zip(grads, bucket.grad_views, strict=True):
                if g is view:
                    continue
                if g is None or g.is_sparse or g.is_complex():
                    path.stale = True  # this bucket's steps will differ after an eager step
                    return False
                fresh_views.append(view)
                fresh.append(g)
            torch._foreach_copy_(fresh_views, fresh)
        algorithm = self.optimizer.algorithm
        step = bucket.step + 1 if algorithm.step else 0.0
        first = bucket.states[0]
        try:
            traced = trace(
                algorithm.update,
                tuple(k for k in algorithm.state(hp) if k not in _PER_PARAMETER_STATE),
                {k: first[k] for k in algorithm.scalar_state},
                negate_grad=bool(group.get("maximize", False)),
                step=step,
                hyperparams=hp,
                parameter_state=bucket.parameter_keys,
                segmented=bucket.segments is not None,
                ndim=bucket.ndim,
            )
        except MissingState:
            path.stale = True  # an eager step creates the entry; the next step rebuilds
            return False
        except Unfusable as why:
            self._give_up(path, group, f"the rule needs {why}")
            return False
        slots = torch.tensor(traced.slots, dtype=torch.float64)
        if bucket.flat_param.device.type != "cpu":
            slots = slots.to(bucket.flat_param.device, non_blocking=True)
        try:
            kernel = kernel_for(traced.structure, bucket.flat_param)
            kernel(
                bucket.flat_param,
                bucket.flat_grad,
                *bucket.flat_state,
                *bucket.flat_parameter_state,
                *(bucket.segments or ()),
                slots,
            )
        except Exception as error:
            # Compilation runs before the kernel touches any buffer, so falling
            # back leaves nothing half-updated (no C++ compiler, say).
            if requested(group):
                raise
            reason = f"torch.compile failed ({type(error).__name__}: {str(error)[:200]})"
            warnings.warn(f"adaptim: fused path off, eager instead: {reason}", stacklevel=4)
            self._give_up(path, group, reason)
            return False
        if algorithm.step:
            bucket.flat_scalars["step"].add_(1.0)
            bucket.step = step
        for key, value in traced.scalar_state.items():
            bucket.flat_scalars[key].copy_(value)
        return True

    def _give_up(self, path: GroupPath, group: Mapping[str, Any], reason: str) -> None:
        path.buckets = []
        path.stale = True
        name = type(self.optimizer).__name__
        if requested(group):
            raise RuntimeError(f"adaptim.{name}(fused=True) cannot fuse this group: {reason}.")
        path.reason = f"eager for good: {reason}"

    # -- buckets -------------------------------------------------------------------
    def _build(
        self, group: dict[str, Any], path: GroupPath, hp: Mapping[str, Any], mode: bool | None
    ) -> bool:
        optimizer = self.optimizer
        algorithm = optimizer.algorithm
        why_not = compile_supported()
        if why_not is not None:
            self._give_up(path, group, why_not)
            return False
        if path.rebuilds >= MAX_REBUILDS and mode is None:
            self._give_up(path, group, f"its buckets were rebuilt {MAX_REBUILDS} times")
            return False
        tensor_keys = tuple(k for k in algorithm.state(hp) if k not in _PER_PARAMETER_STATE)
        parameter_keys = tuple(k for k in algorithm.state(hp) if k in _PER_PARAMETER_STATE)
        segmented = algorithm.name in _PER_PARAMETER_NORMS
        params = [p for p in group["params"] if p.grad is not None]
        numel = sum(p.numel() for p in params)
        if mode is None and numel < AUTO_MIN_NUMEL:
            path.reason = f"eager: {numel} elements < {AUTO_MIN_NUMEL} (fused=None threshold)"
            return False
        storages: dict[int, int] = {}
        for p in group["params"]:
            ptr = p.untyped_storage().data_ptr()
            if ptr not in path.owned:
                storages[ptr] = storages.get(ptr, 0) + 1
        partitions: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        for p in params:
            state = optimizer.state.get(p, {})
            grad = p.grad
            assert grad is not None
            if (
                p.device.type not in _FUSABLE_DEVICES
                or not p.is_floating_point()
                or grad.is_sparse
                or not _layout_ok(p)
                or storages.get(p.untyped_storage().data_ptr(), 1) > 1
                or p.numel() == 0
                or not _state_ok(p, state, tensor_keys, parameter_keys)
                or (algorithm.step and "step" not in state)
            ):
                continue
            key = (
                p.device,
                p.dtype,
                float(state["step"]) if algorithm.step else 0.0,
                tuple(float(state[k]) for k in algorithm.scalar_state),
                tuple(k for k in parameter_keys if k in state),
                (1 if p.ndim <= 1 else 2) if segmented else 2,
            )
            partitions.setdefault(key, []).append(p)
        if not partitions:
            path.reason = (
                "eager: no parameter can be fused yet (the first step creates the state; "
                "sparse or complex gradients, strided layouts and parameters sharing "
                "storage always step eagerly)"
            )
            return False
        path.buckets = [
            self._bucket(members, key[2], tensor_keys, key[4], key[5], segmented)
            for key, members in partitions.items()
        ]
        path.owned = {b.flat_param.untyped_storage().data_ptr() for b in path.buckets}
        covered = {id(p) for bucket in path.buckets for p in bucket.params}
        path.uncovered = [p for p in group["params"] if id(p) not in covered]
        path.stale = False
        path.rebuilds += 1
        path.reason = f"fused: {sum(len(b.params) for b in path.buckets)} parameters in {len(path.buckets)} bucket(s)"
        return True

    def _bucket(
        self,
        params: list[torch.Tensor],
        step: float,
        keys: Sequence[str],
        parameter_keys: tuple[str, ...],
        ndim: int,
        segmented: bool,
    ) -> Bucket:
        optimizer = self.optimizer
        states = [optimizer.state[p] for p in params]
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            # Norms per parameter reduce chunk by chunk: each parameter starts a chunk.
            total += -(-p.numel() // CHUNK) * CHUNK if segmented else p.numel()
        like = params[0]

        def flatten(sources: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
            # One role at a time, so building needs one extra buffer at most. The
            # padding of a segmented bucket starts at zero and is masked out of norms.
            make = torch.zeros if segmented else torch.empty
            flat = make(total, dtype=like.dtype, device=like.device)
            views = []
            for p, source, offset in zip(params, sources, offsets, strict=True):
                view = _strided_view(flat, p, offset)
                view.copy_(source)
                views.append(view)
            return flat, views

        with torch.no_grad():
            flat_param, param_views = flatten(params)
            for p, view in zip(params, param_views, strict=True):
                p.data = view
            grads = [p.grad for p in params]
            flat_grad, grad_views = flatten(grads)  # type: ignore[arg-type]
            for p, view in zip(params, grad_views, strict=True):
                p.grad = view
            flat_state = []
            for key in keys:
                flat, views = flatten([s[key] for s in states])
                for state, view in zip(states, views, strict=True):
                    state[key] = view
                flat_state.append(flat)
        scalar_keys = (["step"] if optimizer.algorithm.step else []) + list(
            optimizer.algorithm.scalar_state
        )
        flat_scalars = {key: _stack_into_views(states, key) for key in scalar_keys}
        flat_parameter_state = [
            _stack_into_views(states, key, like.dtype, like.device) for key in parameter_keys
        ]
        segments = None
        if segmented:
            chunks = [-(-p.numel() // CHUNK) for p in params]
            chunk_segment = torch.repeat_interleave(torch.arange(len(params)), torch.tensor(chunks))
            valid = [
                min(CHUNK, p.numel() - c * CHUNK)
                for p, n in zip(params, chunks, strict=True)
                for c in range(n)
            ]
            segments = (
                chunk_segment.to(like.device),
                torch.tensor(valid, dtype=torch.int64, device=like.device),
                torch.tensor(offsets, dtype=torch.int64, device=like.device),
            )
        return Bucket(
            params=params,
            states=states,
            ptrs=[p.data_ptr() for p in params],
            grad_views=grad_views,
            flat_param=flat_param,
            flat_grad=flat_grad,
            flat_state=flat_state,
            step=step,
            parameter_keys=parameter_keys,
            flat_parameter_state=flat_parameter_state,
            segments=segments,
            ndim=ndim,
            flat_scalars=flat_scalars,
        )


def _stack_into_views(
    states: list[dict[str, Any]],
    key: str,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """One tensor holding every parameter's 0-d ``key``; the states keep views of it."""
    flat = torch.stack([s[key].detach() for s in states]).to(dtype=dtype, device=device)
    for index, state in enumerate(states):
        state[key] = flat[index]
    return flat
