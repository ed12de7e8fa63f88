"""The step of a torch :class:`~adaptim.torch._base.Optimizer`: the eager one and the traced one.

:meth:`StepLayer.step` runs the hooks and then, eagerly, the engine
(:mod:`adaptim.torch._engine`) on what it takes and the per-tensor rule
(:mod:`adaptim.torch._per_tensor`) on the rest, all or nothing: every input
is checked before anything changes. Under ``torch.compile`` it runs
:meth:`StepLayer._step_traceable`, the per-tensor rule with tensor scalars.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch

from adaptim.torch import _hooks, _lowmem_shards
from adaptim.torch._hooks import hooked_step
from adaptim.torch._options import _holds_tensor, hyperparameter
from adaptim.torch._per_tensor import PerTensorLayer
from adaptim.torch._state_rounding import cannot_step

#: Tensors that are not subclasses (a DTensor is one).
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


class StepLayer(PerTensorLayer):
    """``step`` (eager or traced) and ``zero_grad``, and the checks that keep a failed step from changing anything."""

    # -- the step ------------------------------------------------------------------
    @hooked_step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            with torch.no_grad():
                if self.nonfinite == "ignore" or self._gradients_finite():
                    self._step_traceable()
                else:
                    _count_skipped_step(self)
            return loss
        # torch.no_grad() as a decorator costs several microseconds a call; this is the same.
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            self._step_eager()
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        return loss

    zero_grad = _hooks.zero_grad

    def _refuse_dense_gradients(self) -> None:
        """Raise before anything changes if a rule that takes only sparse gradients got a dense one."""
        for index, group in enumerate(self.param_groups):
            for position, p in enumerate(group["params"]):
                if p.grad is not None and not p.grad.is_sparse:
                    name = type(self).__name__
                    raise RuntimeError(
                        f"adaptim.{name} does not support dense gradients "
                        f"(param_groups[{index}]['params'][{position}], shape "
                        f"{tuple(p.shape)}); it takes sparse ones, such as "
                        "nn.Embedding(sparse=True) produces. Consider adaptim.Adam instead. "
                        "Nothing was changed."
                    )

    def _step_eager(self) -> None:
        self._engine.traced = False
        if not self.algorithm.dense_gradients:
            self._refuse_dense_gradients()
        if self.nonfinite != "ignore" and not self._gradients_finite():
            self.skipped_steps += 1
            return
        hyperparams = [self._hyperparams(index, g) for index, g in enumerate(self.param_groups)]
        # All or nothing: every group is prepared and what the engine leaves to
        # the reference path is checked before any parameter or state changes.
        # The engine's partitions are checked when they are built (and their
        # tensors' identity each step), so the common path adds no work.
        known_states = len(self.state)
        engine = self._engine
        engine.begin_step()
        try:
            lefts = [
                engine.prepare_group(index, group, hp)
                for index, (group, hp) in enumerate(
                    zip(self.param_groups, hyperparams, strict=True)
                )
            ]
            for index, (left, hp) in enumerate(zip(lefts, hyperparams, strict=True)):
                if left:
                    self._check_reference_inputs(index, left, hp)
        except BaseException:
            # Only the zero state of first steps was created: drop it, and the
            # partitions that hold it.
            for p in list(self.state)[known_states:]:
                del self.state[p]
            engine.invalidate()
            raise
        for index, (group, hp, left) in enumerate(
            zip(self.param_groups, hyperparams, lefts, strict=True)
        ):
            params = self._update_group(left + engine.run_group(index, group, hp), group, hp)
            if self.algorithm.lazy_state and len(set(map(id, params))) < len(params):
                self._update_listings(params, group, hp)
                continue
            for p in params:
                assert p.grad is not None  # the engine leaves parameters with gradients only
                self._update(p, p.grad, group, hp)
        engine.end_step()

    def _update_listings(
        self, params: list[torch.Tensor], group: Mapping[str, Any], hp: dict[str, Any]
    ) -> None:
        """Step a group that lists a parameter more than once, as torch's for-loop does.

        Each listing steps the parameter again, from the last one's result; an
        entry the rule creates on the first step (:attr:`Algorithm.lazy_state`:
        SGD's momentum buffer) is created anew by every listing, the last kept,
        because torch reads those entries for the whole group before its loop.
        """
        created = [key for key, fill in self.algorithm.state(hp).items() if fill is None]
        absent: dict[int, list[str]] = {}  # per parameter: those entries it lacked at the start
        for p in params:
            state = self.state.get(p, {})  # (no entry for a stateless rule, as in torch)
            if id(p) in absent:
                for key in absent[id(p)]:
                    state.pop(key, None)
            else:
                absent[id(p)] = [key for key in created if state.get(key) is None]
            assert p.grad is not None
            self._update(p, p.grad, group, hp)

    def _update_group(
        self, params: list[torch.Tensor], group: Mapping[str, Any], hp: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Step what a rule's own group-wide execution takes (Muon's stacked matrices); return the rest."""
        return params

    def _check_reference_inputs(
        self, index: int, params: list[torch.Tensor], hp: Mapping[str, Any]
    ) -> None:
        """Raise, naming the parameter, if the per-tensor rule could fail part-way on it.

        A cheap look at each parameter (its gradient's and state tensors'
        shape, dtype and device, the entries the rule reads); only a
        parameter that fails it gets the full check, which finds the message.
        """
        algorithm = self.algorithm
        for p in params:
            refusal = None if type(p) in _PLAIN_TENSORS else self._dtensor_refusal(p)
            if refusal is not None:
                position = next(
                    i for i, q in enumerate(self.param_groups[index]["params"]) if q is p
                )
                raise RuntimeError(
                    f"adaptim.{type(self).__name__}: cannot step "
                    f"param_groups[{index}]['params'][{position}] (shape {tuple(p.shape)}), "
                    f"a DTensor (as FSDP2 shards parameters): {refusal} Nothing was changed."
                )
        entries = algorithm.state(hp)
        elementwise = [k for k, fill in entries.items() if fill is not None]
        created = [k for k, fill in entries.items() if fill is None]  # (Adafactor's row_var)
        scalars = ["step"] if algorithm.step else []
        scalars += algorithm.scalar_state
        get_state = self.state.get
        for p in params:
            grad = p.grad
            assert grad is not None
            if grad.is_sparse:
                self._sparse_mode(p, hp)  # raises where the algorithm refuses them
            # (torch checks a gradient's shape and device when it is set; its
            # dtype may drift when ``p.data`` is replaced.)
            suspect = grad.dtype != p.dtype
            state = get_state(p)
            if self.state_format is not None:  # encoded entries: the full check, always
                suspect = True
            if state and not suspect:
                shape, dtype = p.shape, p.dtype
                for key in elementwise:
                    v = state.get(key)
                    if v is None or v.shape != shape or v.dtype != dtype:
                        suspect = True
                        break
                for key in created:  # made by the rule: in the parameter's dtype
                    v = state.get(key)
                    if isinstance(v, torch.Tensor) and v.ndim and v.dtype != dtype:
                        suspect = True
                for key in scalars:
                    if type(state.get(key)) is not torch.Tensor:
                        suspect = True
            if suspect:
                self._refuse_reference_input(index, p, hp)

    def _dtensor_refusal(self, p: torch.Tensor) -> str | None:
        """Why this optimizer cannot step ``p`` if it is a DTensor (a shard), or ``None``."""
        if not torch.distributed.is_available():
            return None
        from torch.distributed.tensor import DTensor

        if not isinstance(p, DTensor):
            return None
        if self.state_format is not None:
            problem = _lowmem_shards.refusal(p)
            if problem is not None:
                return (
                    f"{self.state_format.describe()} keeps a DTensor's state per local shard, "
                    f"and {problem}; use the default state."
                )
        if self.algorithm.entry_shape is not None or self.algorithm.state_shape is not None:
            problem = _lowmem_shards.refusal(p)  # (Adafactor, SM3: statistics over shards)
            if problem is not None:
                return (
                    f"adaptim.{type(self).__name__} takes its row and column statistics over "
                    f"shards, and {problem}."
                )
        return None

    def _refuse_reference_input(self, index: int, p: torch.Tensor, hp: Mapping[str, Any]) -> None:
        grad = p.grad
        assert grad is not None
        problem = None
        if grad.shape != p.shape:
            problem = f"its gradient has shape {tuple(grad.shape)}"
        elif grad.dtype != p.dtype:
            problem = f"its gradient has dtype {grad.dtype}, the parameter {p.dtype}"
        elif grad.device != p.device:
            problem = f"its gradient is on {grad.device}, the parameter on {p.device}"
        else:
            state = self.state.get(p, {})
            problem = self._state_problem(hp, state, p, exact_keys=False)
            devices = {v.device for v in state.values() if isinstance(v, torch.Tensor) and v.ndim}
            if problem is None and devices - {p.device}:
                problem = f"its state is on {sorted(map(str, devices))}, it on {p.device}"
            if problem is None:
                problem = self._state_dtype_problem(index, p, dict(hp))
        if problem:
            position = next(i for i, q in enumerate(self.param_groups[index]["params"]) if q is p)
            raise cannot_step(f"adaptim.{type(self).__name__}", index, position, p, problem)

    def _step_traceable(self) -> None:
        """The step under ``torch.compile``: the per-tensor rule, with ``step`` and ``lr`` as tensors.

        Dynamo traces this instead of the engine (whose native calls it cannot
        trace). The step count stays a tensor (as torch.optim does when
        compiling), so the graph does not depend on its value and a growing
        step count never recompiles; tensor hyperparameters stay tensors, so
        a scheduler that updates a tensor ``lr`` in place never recompiles.
        Memory-light states (``state_dtype``, ``state_bits``) step eagerly.
        """
        if self.state_format is not None:
            # A memory-light state is rounded with bits drawn from the step number
            # and a hash of the entry's name, and 8-bit codes from block maxima:
            # host arithmetic a graph would bake in per step. It steps eagerly,
            # outside the graph (one graph break), with the eager path's result.
            self._step_eager_untraced()
            return
        # (for fused_status(): on the engine, since Dynamo does not replay an attribute
        # set on the optimizer itself)
        self._engine.traced = True
        if not self.algorithm.dense_gradients:
            self._refuse_dense_gradients()
        for group in self.param_groups:
            hp = {k: self.group_value(group, k) for k in self.algorithm.hparams}
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group, hp, traceable=True)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _step_eager_untraced(self) -> None:
        """The eager step, called from a compiled one: outside the graph (one graph break)."""
        self._step_eager()

    def _hyperparams(self, index: int, group: Mapping[str, Any]) -> dict[str, Any]:
        """The group's hyperparameters as the rule takes them; reused while the values are the same objects."""
        keys = self.algorithm.hparams
        # (absent keys read as None here: an adaptim-only option left implicit)
        present = list(map(group.get, keys))
        cache: dict[int, tuple[list[Any], dict[str, Any]]] = self.__dict__.setdefault(
            "_hp_cache", {}
        )
        cached = cache.get(index)
        if cached is not None and all(map(operator.is_, cached[0], present)):
            return cached[1]
        values = [self.group_value(group, k) for k in keys]
        hp = {k: hyperparameter(k, v) for k, v in zip(keys, values, strict=True)}
        if not any(map(_holds_tensor, values)):
            cache[index] = (present, hp)  # a tensor lr may change in place: never cached
        else:
            cache.pop(index, None)
        return hp

    def _gradients_finite(self) -> bool:
        for index, group in enumerate(self.param_groups):
            for position, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                values = grad.coalesce().values() if grad.is_sparse else grad
                if not bool(torch.isfinite(values).all()):
                    if self.nonfinite == "raise":
                        raise FloatingPointError(
                            f"Non-finite gradient in param_groups[{index}]['params'][{position}] "
                            f"(shape {tuple(p.shape)}); nonfinite='raise'. Use nonfinite='skip' "
                            "to skip such steps instead."
                        )
                    return False
        return True


@torch.compiler.disable  # type: ignore[untyped-decorator]
def _count_skipped_step(optimizer: StepLayer) -> None:
    """``skipped_steps += 1``, run eagerly: Dynamo does not replay an attribute set on an
    optimizer, so traced, the count would stay 0 (the finite check already breaks the graph)."""
    optimizer.skipped_steps += 1
