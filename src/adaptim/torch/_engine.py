"""How a step executes: one recorded rule, three ways to run it, chosen per param group.

The update rule of :mod:`adaptim.algorithms` is the only definition of the
math. Each step the engine records it once per *partition* of a param group
(parameters that share a device, a dtype, a step count and a state layout;
see :mod:`._trace`, and :mod:`._partition` for how they are built) and runs the recording on every tensor of the partition
with one of:

* ``native`` (:mod:`._native`): one compiled C loop over all the tensors,
  each element read once, in one OpenMP region. CPU, float32/float64 (and
  float16/bfloat16: :mod:`._native_half`, without whole-tensor norms), dense
  contiguous tensors.
* ``triton`` (:mod:`._triton`): on a GPU, one Triton kernel generated from
  the recording, launched once per partition over all its tensors through a
  device table of their data pointers. CUDA, float32/float64, dense
  contiguous tensors, rules without whole-tensor norms; not while a CUDA
  graph is captured or Dynamo traces.
* ``foreach`` (:mod:`._replay`): one ``torch._foreach_*`` call per recorded
  operation, in place where liveness allows; any device and dtype, no
  compiler. Bit-identical to the reference path.
* ``reference``: the rule called once per tensor (``Optimizer._update``), the
  readable path, which also takes what the others cannot: sparse and complex
  gradients, tensor subclasses such as FSDP2's DTensor, and rules the tracer
  cannot record.

A partition whose state is kept in bfloat16 or 8 bits (``state_dtype``,
``state_bits``; :mod:`._lowmem`) has no replay: it runs the native loop of
:mod:`._lowmem_native`, which decodes and encodes in registers, unless
``foreach=False`` asks for the reference path or the loop cannot take it.

The choice follows torch's switches. ``foreach=False`` asks for the
per-tensor loop (torch's for-loop implementation); ``foreach=True`` for the
replay; ``fused=True`` for the native kernel where the rule and tensors allow
it, the replay elsewhere (for a rule the native loop cannot express, SM3's per-axis
maxima, the replay whose per-axis loops take the native loop's correctly rounded
square root in one pass: :mod:`._fuse_axes`). With neither set (the default), a group runs native
when it is on the CPU and holds at least :data:`AUTO_NATIVE_MIN_NUMEL`
elements (building a kernel costs a C compile the first time on a machine,
well under a second, then a load from the disk cache); a smaller float32/float64
CPU group runs the native loop with MKL's square root inlined and whole-tensor
norms (LARS, LAMB, NovoGrad) summed in ``torch.linalg.vector_norm``'s order
(:func:`._native.gives_torchs_bits`: a rule without a root, or where the root
is emulated, and without norms, or where that order holds), which gives the
replay's bits and is faster in cache, and the replay elsewhere. A larger group
takes that exact loop too where the emulated root costs nothing against the
CPU's at its size (:func:`._mkl_sqrt.exact_loop_free`: Intel's AVX-512 kernel,
below 512k elements, where it measured 0.81-1.07x the rounded loop's time with
one thread; out of cache it costs a few percent, AMD's at every size) and the
rule has no whole-tensor norms (ATen sums a tensor's norm on one thread: 0.84-0.96x
with two), so ``adaptim.Adam(params)`` on a model of that size is
``torch.optim.Adam``'s for-loop bit for bit; elsewhere the native loop's root is
the correctly rounded one, which agrees to rounding (:data:`._native.EXACT_ROOT`
asks for MKL's at every size and with ``fused=True``, which otherwise keeps the
rounded root: the fastest loop, like torch's own fused kernels, which are not
its for-loop's bits either). A CUDA group of any
size runs its Triton kernel (when ``triton`` is importable; a compile of
about a second the first time, then Triton's disk cache; on a GPU the
replay is launch-bound at every size), and the replay otherwise; for half types only where the native loop is the faster
(:data:`._native_half.AUTO_NATIVE_HALF`: bfloat16). ``Optimizer.fused_status()``
says which path each group took and why; ``Optimizer.plans()`` shows the
generated code.

The engine never owns the user's tensors: parameters, gradients and state
stay where they are, and are read and written in place through their own
storage (no ``p.data``/``p.grad`` rebinding). State stays per parameter with
torch's names and layout, so ``state_dict`` moves to and from torch.optim.

What the engine keeps about each group between steps (its partitions, when
they are stale, what the last step ran) is :mod:`._engine_groups`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from adaptim.algorithms.adafactor import ADAFACTOR
from adaptim.torch import (
    _adafactor_native,
    _fuse_axes,
    _lowmem_native,
    _mkl_sqrt,
    _native,
    _replay,
    _symbolic,
    _triton,
)
from adaptim.torch._engine_groups import _GRAD, _IS_CONTIGUOUS, _IS_NONE, EngineGroups
from adaptim.torch._engine_groups import GroupRun as GroupRun
from adaptim.torch._engine_groups import requested_path as requested_path
from adaptim.torch._native_half import AUTO_NATIVE_HALF
from adaptim.torch._partition import NativeLaunch as NativeLaunch
from adaptim.torch._partition import Partition as Partition
from adaptim.torch._trace import Structure, Traced, Unfusable, trace

#: ``fused=None`` runs the native loop on CPU groups of at least this many elements, with the
#: correctly rounded root (out of cache the exact root costs up to 6% on one thread on Intel,
#: 14% on AMD) unless :func:`._mkl_sqrt.exact_loop_free` says MKL's costs nothing at the
#: group's size; smaller groups run the exact loop where it gives torch's bits, else the replay.
AUTO_NATIVE_MIN_NUMEL = 1 << 16

#: Memos kept per partition layout: each failed guard (RAdam leaving warm-up) adds one.
MAX_MEMOS = 8


class Engine(EngineGroups):
    """Runs the steps of one optimizer's param groups; the reference path takes what is left."""

    # -- the step --------------------------------------------------------------------
    def prepare_group(
        self, index: int, group: dict[str, Any], hp: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Choose what :meth:`run_group` will step, changing no parameter or state value.

        Returns the parameters left to the reference path. ``Optimizer.step``
        prepares every group and checks what is left before any group runs,
        so a step that raises has changed nothing (it may have created the
        zero state of a parameter's first step, which the optimizer removes).
        """
        run = self.groups.get(index)
        if run is None:  # (not ``setdefault``: it would build a GroupRun every step)
            run = self.groups[index] = GroupRun()
        params = list(group["params"])
        # Each gradient is read once a step (``p.grad`` costs ~0.15 us: 0.15 ms on 1,000
        # parameters); the partitions take theirs from this list by position.
        grads = list(map(_GRAD, params))
        if any(map(_IS_NONE, grads)):
            params = [p for p, g in zip(params, grads, strict=True) if g is not None]
            grads = [g for g in grads if g is not None]
        mode = requested_path(group, self.optimizer.defaults)
        run.ready = []
        run.last = ([], len(params), mode)
        run.stepped = 0
        if mode == "reference":
            run.status = "reference: foreach=False"
            return params
        if not self.optimizer.algorithm.recordable:  # its record says so: no attempt, no warning
            run.status = "reference: the rule is not element-wise (Algorithm.recordable=False)"
            return params
        if run.refused is not None:
            run.status = f"reference: {run.refused}"
            return params
        key = tuple(map(id, params))
        if run.stale or key != run.key:
            self._partition(run, group, hp, params, key)
        # described on demand (fused_status): no string work per step
        run.status = "reference: a parameter listed more than once" if run.duplicated else None
        left = list(run.reference)
        state = self.optimizer.state
        # The partitions' dicts are known only if they were checked in the last step.
        dicts_known = self.dicts_known and run.checked == self.completed - 1
        run.checked = self.completed
        for partition in run.partitions:
            usable = self._usable_grads(run, partition, grads, state, dicts_known)
            if usable is None:
                left.extend(partition.params)
            else:
                run.ready.append((partition, usable))
        return left

    def run_group(
        self, index: int, group: dict[str, Any], hp: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Step the partitions :meth:`prepare_group` chose; return those the recorder refused."""
        run = self.groups[index]
        left: list[torch.Tensor] = []
        paths: list[str] = []
        plans: list[Any] = []
        _, count, mode = run.last
        for partition, grads in run.ready:
            path = self._step_partition(run, partition, grads, group, hp, mode, plans)
            if path is None:
                left.extend(partition.params)
            else:
                paths.append(path)
                run.stepped += len(partition.params)
        run.ready = []
        run.last = (paths, count, mode)
        run.last_plans = plans
        return left

    def _step_partition(
        self,
        run: GroupRun,
        partition: Partition,
        grads: list[torch.Tensor],
        group: Mapping[str, Any],
        hp: dict[str, Any],
        mode: str,
        plans: list[Any],
    ) -> str | None:
        algorithm = self.optimizer.algorithm
        step = partition.step + 1 if algorithm.step else 0.0
        try:
            traced = self._record(partition, group, hp, step)
        except Unfusable as why:
            self._refuse(
                run, f"the rule {algorithm.update.__qualname__} cannot be recorded ({why})"
            )
            return None
        if partition.encodings:  # bf16 or 8-bit state: its own native loop, or the reference path
            fmt = self.optimizer.state_format
            assert fmt is not None
            groups = self.optimizer.param_groups
            path = _lowmem_native.run(fmt, groups, partition, traced, grads, plans)
            if path is None:
                return None
        elif (
            algorithm is ADAFACTOR
            and mode in ("auto", "native")
            and not traced.structure.created
            and _adafactor_native.run(partition, grads, group, hp, step)
        ):
            path = "adafactor"
            plans.append(_adafactor_native.plan(partition.params[0].dtype))
        else:
            group_numel = sum(p.numel for p in run.partitions)
            path = self._run(partition, traced, grads, mode, plans, group_numel)
        if algorithm.step:
            if path != "native" or partition.step_dtype is None:  # else the kernel counted them
                counter = partition.step_counter
                if counter is None:
                    counter = partition.step_counter = (
                        _native.StepCounter.of(partition.steps, partition.step_dtype) or False
                    )
                if counter:
                    counter()
                else:
                    torch._foreach_add_(partition.steps, 1.0)
            partition.step = step
        for key, value in traced.scalar_state.items():
            partition.scalar_state[key] = value
            torch._foreach_copy_(
                [s[key] for s in partition.states], [value] * len(partition.states)
            )
        return path

    def _record(
        self, partition: Partition, group: Mapping[str, Any], hp: dict[str, Any], step: float
    ) -> Traced:
        """This step's recording: from a memo when one applies, else by running the rule on proxies."""
        algorithm = self.optimizer.algorithm
        negate = bool(group.get("maximize", False))
        known = self._leaves.get(id(hp))
        if known is None or known[0] is not hp:
            values, shape = _symbolic.leaves_of(hp)
            known = (hp, values, shape)
            self._leaves = {id(hp): known}  # one dict per group: keep the latest only
        _, values, shape = known
        lookup = partition.memo_lookup
        if lookup is not None and lookup[0] is negate and lookup[1] is shape:
            memos = lookup[2]  # the same key as last step (``shape`` is cached with ``hp``)
        else:
            memos = self.memos.setdefault((partition.signature, negate, shape), [])
            partition.memo_lookup = (negate, shape, memos)
        # Scalar state (NAdam's ``mu_product``) is a leaf too: the 0-d tensors themselves.
        scalars = partition.scalar_state
        leaves = [step, *values, *scalars.values()] if scalars else [step, *values]
        for memo in memos:
            try:
                slots = memo.slots(leaves)
            except ArithmeticError:
                slots = None
            if slots is not None:
                if not memo.scalar_names:
                    return Traced(memo.structure, slots, {})
                count = len(slots) - len(memo.scalar_names)
                new = dict(zip(memo.scalar_names, slots[count:], strict=True))
                return Traced(memo.structure, slots[:count], new)
        key = (partition.signature, negate, shape)
        arguments = (
            algorithm.update,
            partition.tensor_keys,
            partition.per_tensor_keys,
            partition.absent_keys,
        )
        reduced = partition.reduced_keys
        if key not in self.unmemoizable and len(memos) < MAX_MEMOS:
            context = _symbolic.Context()
            symbolic, leaf_values, _ = _symbolic.symbolic_hyperparameters(hp, context)
            first = 1 + len(leaf_values)
            symbolic_scalars = {
                name: _symbolic.SymTensor(context, ("leaf", first + i), value)
                for i, (name, value) in enumerate(scalars.items())
            }
            try:
                traced = trace(
                    *arguments,
                    symbolic_scalars,
                    negate_grad=negate,
                    step=_symbolic.Sym(context, ("leaf", 0), step),
                    hyperparams=symbolic,
                    ndim=partition.ndim,
                    reduced_state=reduced,
                    half=partition.half,
                )
            except (_symbolic.NotMemoizable, Unfusable) as why:
                # (a symbolic scalar state meeting an array is refused as an operand: the
                # plain recording below takes real tensors, and decides whether it is fusable)
                if isinstance(why, Unfusable) and not scalars:
                    raise
                self.unmemoizable.add(key)
            else:
                expressions = {}
                for name, value in traced.scalar_state.items():
                    if isinstance(value, _symbolic.SymTensor):
                        expressions[name] = value.expression
                        traced.scalar_state[name] = value.value
                if traced.memoizable:
                    memos.append(
                        _symbolic.make_memo(
                            traced.structure,
                            traced.slot_expressions,
                            context.guards,
                            first + len(scalars),
                            expressions,
                        )
                    )
                else:
                    self.unmemoizable.add(key)
                return traced
        return trace(
            *arguments,
            scalars,
            negate_grad=negate,
            step=step,
            hyperparams=hp,
            ndim=partition.ndim,
            reduced_state=reduced,
            half=partition.half,
        )

    def _run(
        self,
        partition: Partition,
        traced: Traced,
        grads: list[torch.Tensor],
        mode: str,
        plans: list[Any],
        group_numel: int,
    ) -> str:
        structure = traced.structure
        dtype = partition.params[0].dtype
        # (the group's size, not the partition's: a group that splits, say its 8-bit
        # matrices from its fp32 biases, pays the kernel build once anyway)
        auto_half = not partition.half or dtype in AUTO_NATIVE_HALF
        large = group_numel >= AUTO_NATIVE_MIN_NUMEL
        # A smaller group runs the exact loop where it gives torch's bits (the replay's): in
        # cache it costs nothing against the rounded root, and the replay's call per
        # operation made small models 2-5x slower than torch's fused kernels. A larger one
        # too where the emulated root is free at its size (Intel's, below 512k elements), but
        # not SM3's per-axis runs, whose replay with MKL's root takes three passes a tile, nor
        # rules with norms: ATen sums each tensor's norm on one thread, and the exact loop with
        # that order measured 0.84-0.96x the per-block sums on two threads (235k MLP).
        exact = (
            mode == "auto"
            and partition.native_ok  # (on the CPU)
            and not partition.half
            and (
                not large
                or (
                    _mkl_sqrt.exact_loop_free(dtype, group_numel)
                    and not _fuse_axes.has_axes(structure)
                    and not _native.normed(structure)
                )
            )
            and _native.gives_torchs_bits(structure, dtype)
        )
        wants_native = mode == "native" or (mode == "auto" and (exact or (large and auto_half)))
        # On a GPU the replay is launch-bound (a launch per operation and chunk) and
        # the kernel one launch: the default takes it at every size.
        wants_kernel = mode == "native" or (mode == "auto" and auto_half)
        # A step that creates state (SGD's first momentum buffer) is replayed: the
        # new tensors are allocated there, and the next step runs native.
        if (
            wants_kernel
            and partition.device_ok
            and not structure.created
            and all(map(_IS_CONTIGUOUS, grads))
            and _triton.launchable(partition.params[0].device)
        ):
            launch = self._device_launch(partition, structure, mode)
            if launch is not None:
                try:
                    launch(partition.grad_ptrs, traced.slots)
                except _native.NativeUnavailable as why:  # (the first launch: nothing ran)
                    partition.device_ok = False
                    self._unavailable(partition, why, mode)
                else:
                    plans.append(launch.kernel)
                    return "triton"
        if (
            wants_native
            and not structure.created
            and partition.native_ok
            and all(map(_IS_CONTIGUOUS, grads))
        ):
            try:
                known = partition.kernel
                if known is not None and known[0] is structure and known[1] is exact:
                    kernel = known[2]
                else:
                    kernel = _native.kernel_for(structure, dtype, exact=exact or None)
                    partition.kernel = (structure, exact, kernel)
            except _native.NativeUnavailable as why:
                self._unavailable(partition, why, mode)
                if not why.structural:  # (no compiler, or it refused: no retry every step)
                    partition.native_ok = False
            else:
                partition.launch(kernel)(partition.grad_ptrs, traced.slots)
                plans.append(kernel)
                return "native"
        # Where the native loop is wanted but cannot express the rule (SM3's per-axis maxima),
        # the replay's per-axis loops round their square root as the native loop does.
        rounded = (
            wants_native and not exact and not _native.EXACT_ROOT and _fuse_axes.has_axes(structure)
        )
        plan = _replay.plan_for(structure, rounded)
        created = plan.run(partition.params, grads, *partition.state_lists, traced.slots)
        plans.append(plan)
        if structure.created:
            for (key, _), values in zip(structure.created, created, strict=True):
                for state, value in zip(partition.states, values, strict=True):
                    state[key] = value
            self.invalidate()  # the next step records with the new entries
        return "foreach"

    def _device_launch(
        self, partition: Partition, structure: Structure, mode: str
    ) -> _triton.TritonLaunch | None:
        """The partition's Triton launch for ``structure`` (:mod:`._triton`), or ``None``: replay."""
        launch = partition.triton
        if launch is not None and launch.structure is structure:
            return launch
        try:
            kernel = _triton.kernel_for(structure, partition.params[0].dtype)
        except _native.NativeUnavailable as why:
            self._unavailable(partition, why, mode, stacklevel=7)
            return None
        if launch is not None and launch.kernel is kernel:
            # An equal recording that is not memoized (RAdam's, say): the same kernel and
            # tables (rebuilding them each step cost RAdam 7 ms a step on 16M / 100).
            launch.structure = structure
            return launch
        launch = partition.triton = _triton.TritonLaunch(kernel, partition, structure)
        return launch

    def _unavailable(
        self, partition: Partition, why: _native.NativeUnavailable, mode: str, stacklevel: int = 6
    ) -> None:
        """Remember why a partition has no kernel; warn once where ``fused=True`` asked for one."""
        partition.native_refused = str(why)
        if mode == "native" and not why.structural and not partition.warned:
            partition.warned = True
            warnings.warn(
                f"adaptim.{type(self.optimizer).__name__}(fused=True): no native kernel "
                f"for this group ({why}); using the multi-tensor replay.",
                stacklevel=stacklevel,
            )

    def _refuse(self, run: GroupRun, reason: str) -> None:
        run.refused = reason
        run.stale = True
        if reason in self.warned:  # one warning per reason, however many groups it hits
            return
        self.warned.add(reason)
        warnings.warn(
            f"adaptim.{type(self.optimizer).__name__}: {reason}; "
            "the groups it concerns step with the per-tensor reference path "
            "(fused_status() names them).",
            stacklevel=5,
        )
