"""The torch front-end of rules with group-wide scalars (Prodigy, D-Adaptation, Schedule-Free, DoG, HD).

These rules step with :func:`adaptim.algorithms._group.step_scope`: a gather
pass over every tensor, a reduction to a few scalars, then the element-wise
update. How the passes run over the tensors follows torch's switches, as
for the element-wise rules (:mod:`adaptim.torch._engine`):

* by default (and ``foreach=True``, ``fused=True``), each pass is recorded
  once per partition and replayed with ``torch._foreach_*`` kernels
  (:mod:`adaptim.torch._group_fast`), bit-identical to the per-tensor path;
  there is no native kernel for these rules, so ``fused=True`` replays too;
* ``foreach=False``, for rules the recorder cannot
  take (``Algorithm.recordable=False``: LDoG) and for tensors it does not
  cover (sparse, complex, non-contiguous, subclasses, Prodigy's
  ``slice_p > 1``), the rule runs once per tensor.

Under ``torch.compile`` the step runs outside the graph (one graph break,
no recompiles; see :meth:`GroupOptimizer._step_untraced`).

:meth:`GroupOptimizer.fused_status` says which path each group took and why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from adaptim.algorithms import ALGORITHMS, LR_FREE
from adaptim.algorithms import _group as shared
from adaptim.algorithms._spec import PartialSum
from adaptim.algorithms._validation import check_loaded_group
from adaptim.torch import _group_fast
from adaptim.torch._base import (
    _GROUP_SWITCHES,
    TORCH_OPS,
    NonFinitePolicy,
    Optimizer,
    ParamsT,
    hyperparameter,
)
from adaptim.torch._engine import requested_path
from adaptim.torch._hooks import hooked_step
from adaptim.torch._state_rounding import another_dtype_problem, cannot_step


def _share(part: PartialSum) -> torch.Tensor:
    if isinstance(part, tuple):
        return torch.stack([_share(p) for p in part]).sum()
    value = part.a if part.b is None else torch.dot(part.a.reshape(-1), part.b.reshape(-1))
    return value.to(torch.float64) * part.scale


def _totals(partials: list[list[torch.Tensor]]) -> list[float]:
    sums = [
        torch.stack([v.to(values[0].device) for v in values]).sum()
        if values
        else torch.zeros((), dtype=torch.float64)
        for values in partials
    ]
    if not sums:
        return []
    device = sums[0].device
    totals: list[float] = torch.stack([v.to(device) for v in sums]).tolist()  # one sync
    return totals


BACKEND = shared.Backend(
    xp=TORCH_OPS,
    zeros_like=lambda t: torch.zeros_like(t, memory_format=torch.preserve_format),
    copy=lambda t: t.detach().clone(memory_format=torch.preserve_format),
    assign=lambda target, value: target.copy_(value),
    own=lambda value: value,
    share=_share,
    totals=_totals,
)


class GroupOptimizer(Optimizer):
    """Base of the torch optimizers whose rule reads group-wide scalars.

    The scalars (``d``, ``k``, ...) are kept in ``param_groups`` under the
    reference package's names, so a ``state_dict`` moves between adaptim and
    that package both ways.
    """

    def __init__(
        self, params: ParamsT, defaults: dict[str, Any], *, nonfinite: NonFinitePolicy
    ) -> None:
        super().__init__(params, defaults, nonfinite=nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.__dict__.pop("_fast_refused", None)
        self.__dict__.pop("_fast_layouts", None)
        *earlier, group = self.param_groups
        for key, value in shared.new_group_scalars(
            self.algorithm, self._hp(group), earlier
        ).items():
            group.setdefault(key, value)

    def _hp(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {k: hyperparameter(k, self.group_value(group, k)) for k in self.algorithm.hparams}

    @hooked_step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        if torch.compiler.is_compiling():
            return self._step_untraced(closure)
        return self._step_now(closure)

    def _step_now(self, closure: Callable[[], Any] | None) -> Any:
        rule = shared.group_pass(self.algorithm)
        if rule.switch_mode is not None:
            for index, group in enumerate(self.param_groups):
                if not group["train_mode"]:
                    raise shared.eval_mode_error(f"adaptim.{type(self).__name__}", index)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # (as Optimizer.step: torch.no_grad() as a decorator costs microseconds a call)
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            self._step_scopes()
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        return loss

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _step_untraced(self, closure: Callable[[], Any] | None) -> Any:
        """The step under ``torch.compile``: the eager step, outside the graph (one graph break).

        The rule's group scalars (``d``, ``weight_sum``, ``eta``, ...) are
        decided on the host from sums over every tensor (``max``, ``min``,
        "stop if the denominator is 0", refusals), and are kept in
        ``param_groups`` as Python numbers, as the reference packages keep
        them. Traced, each step's new values would be guarded on (a
        recompile every step, until Dynamo's recompile limit); run here, the
        caller's graphs stay the same every step and the result is the eager
        multi-tensor path's, bit for bit. Nothing of the step is traced, not
        even the reads of ``param_groups`` (a guard on the whole group dict,
        whose ``k`` grows), and a ``closure`` runs eagerly as well.
        """
        return self._step_now(closure)

    def _step_scopes(self) -> None:
        if self.nonfinite != "ignore" and not self._gradients_finite():
            self.skipped_steps += 1
            return
        hps = [self._hyperparams(index, g) for index, g in enumerate(self.param_groups)]
        status: dict[int, str] = {}
        plans: dict[int, list[Any]] = {}
        layouts: dict[tuple[int, ...], _group_fast.Layout] = self.__dict__.setdefault(
            "_fast_layouts", {}
        )
        scopes = shared.scopes(self.algorithm, len(self.param_groups))
        current = {}
        try:
            for scope in scopes:  # all or nothing: every scope is checked before one steps
                layout = layouts.get(tuple(scope))
                params = [p for _, _, p in self._members(scope)]
                current[tuple(scope)] = layout is not None and layout.current(params, self.state)
                if not current[tuple(scope)]:  # (else its tensors and state are as last step)
                    self._check_state_dtypes(scope, hps)
        except BaseException:
            self._forget_empty_states()
            raise
        for scope in scopes:
            groups = [self.param_groups[i] for i in scope]
            why = self._reference_reason(scope)
            layout = layouts.pop(tuple(scope), None)
            if why is None:
                fallback = functools.partial(self._per_tensor, scope, hps)
                if current[tuple(scope)]:
                    work: list[shared.Work] = []  # every state exists: nothing to create
                    executor: Any = _group_fast.FastScope(self, [], hps, fallback, layout)
                else:
                    members = [
                        _group_fast.Member(i, p, self.state[p])
                        for i in scope
                        for p in self.param_groups[i]["params"]
                        if p.grad is not None
                    ]
                    work = [shared.Work(m.p, m.p.grad, m.state, hps[m.group]) for m in members]
                    executor = _group_fast.FastScope(self, members, hps, fallback)
            else:
                executor = self._per_tensor(scope, hps)
                work = executor.work
            try:
                shared.step_scope(
                    self.algorithm, groups, [hps[i] for i in scope], work, BACKEND, executor
                )
            except BaseException:  # refused before any change: forget the empty first states
                self._forget_empty_states()
                raise
            if why is None and executor.reference is None and executor.layout is not None:
                layouts[tuple(scope)] = executor.layout
            for i in scope:
                status[i] = executor.status if why is None else why
                plans[i] = getattr(executor, "plans", [])
        self._status, self._last_plans = status, plans

    def _check_state_dtypes(self, scope: list[int], hps: list[dict[str, Any]]) -> None:
        """Refuse, before anything changes, state of another dtype that the rule cannot take.

        ``model.to()`` after the state was made leaves it in its dtype (as
        torch.optim leaves it). Some rules step with it (Prodigy from float32
        state to float64 parameters), others stop inside ATen (Schedule-Free's
        ``lerp``, the inner products of D-Adaptation and HD), after the tensors
        and groups before had stepped. Which ones depends on the rule and the
        dtypes, so the step runs once on a copy of each tensor's first element
        (same dtypes and ops, a few bytes) to find out, once per scope and set
        of dtypes. (A copy whose numbers end the step early, as a zero denominator
        does, or that a rule refuses for its values, answers nothing: the step runs.)
        """
        found: list[tuple[int, int, torch.Tensor, dict[str, torch.dtype]]] = []
        for i in scope:
            for position, p in enumerate(self.param_groups[i]["params"]):
                state = self.state.get(p) if p.grad is not None else None
                other = {
                    key: value.dtype
                    for key, value in (state or {}).items()
                    if isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and value.dtype != p.dtype
                }
                if other:
                    found.append((i, position, p, other))
        if not found:
            return
        key = (tuple(scope), frozenset((p.dtype, k, d) for *_, p, o in found for k, d in o.items()))
        taken: set[Any] = self.__dict__.setdefault("_state_dtypes_taken", set())
        if key in taken:
            return
        # (built outside the try: what _work refuses, a sparse gradient, keeps its message)
        work = [
            self._first_elements(self._work(i, j, p, hps[i])) for i, j, p in self._members(scope)
        ]
        try:
            shared.step_scope(
                self.algorithm,
                [dict(self.param_groups[i]) for i in scope],  # (the kept scalars land here)
                [hps[i] for i in scope],
                work,
                BACKEND,
            )
        except ValueError:
            # (a refusal of the copy's values, such as LDoG's all-zero first gradient of a
            # tensor whose first element only is 0: no answer, the step itself decides)
            return
        except (RuntimeError, TypeError) as error:
            index, position, p, other = found[0]
            problem = another_dtype_problem(other, p.dtype, error)
            raise cannot_step(
                f"adaptim.{type(self).__name__}", index, position, p, problem
            ) from None
        taken.add(key)

    def _forget_empty_states(self) -> None:
        for p in [p for p, state in self.state.items() if not state]:
            del self.state[p]

    def _members(self, scope: list[int]) -> list[tuple[int, int, torch.Tensor]]:
        """(group index, position, parameter) of the scope's tensors with gradients."""
        return [
            (i, position, p)
            for i in scope
            for position, p in enumerate(self.param_groups[i]["params"])
            if p.grad is not None
        ]

    @staticmethod
    def _first_elements(item: shared.Work) -> shared.Work:
        """A copy of ``item``'s first element: its parameter, gradient and state, same dtypes."""

        def first(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            return (value.reshape(-1)[:1] if value.ndim else value).detach().clone()

        state = {k: first(v) for k, v in item.state.items()}
        return shared.Work(first(item.p), first(item.grad), state, item.hp)

    def _reference_reason(self, scope: list[int]) -> str | None:
        """Why the groups of ``scope`` step per tensor now (``None``: the multi-tensor path)."""
        if any(requested_path(self.param_groups[i], self.defaults) == "reference" for i in scope):
            return "reference: foreach=False"
        if not self.algorithm.recordable:
            return "reference: the rule is not element-wise (Algorithm.recordable=False)"
        refused: str | None = self.__dict__.get("_fast_refused")
        return refused

    def _per_tensor(self, scope: list[int], hps: list[dict[str, Any]]) -> shared.PerTensor:
        work = [
            self._work(i, position, p, hps[i])
            for i in scope
            for position, p in enumerate(self.param_groups[i]["params"])
            if p.grad is not None
        ]
        return shared.PerTensor(self.algorithm, work, BACKEND)

    def _refuse_fast(self, reason: str) -> None:
        """The recorder refused this rule's setting: step per tensor until the state is reloaded."""
        self._fast_refused = reason

    def _work(self, index: int, position: int, p: torch.Tensor, hp: dict[str, Any]) -> shared.Work:
        grad = p.grad
        assert grad is not None
        where = f"adaptim.{type(self).__name__}: param_groups[{index}]['params'][{position}]"
        if grad.is_sparse:
            raise RuntimeError(f"{where} has a sparse gradient; this optimizer takes dense ones.")
        if p.is_complex():
            raise RuntimeError(f"{where} is complex; this optimizer takes real parameters only.")
        if self.param_groups[index].get("maximize", False):
            grad = -grad
        return shared.Work(p, grad, self.state[p], hp)

    def fused_status(self) -> list[str]:
        """For each param group, the path its last step took (``foreach`` or ``reference``) and why."""
        status: dict[int, str] = self.__dict__.get("_status", {})
        return [status.get(i, "not stepped yet") for i in range(len(self.param_groups))]

    def plans(self) -> list[list[str]]:
        """For each param group, the replay functions its last step ran."""
        plans: dict[int, list[Any]] = self.__dict__.get("_last_plans", {})
        return [[plan.source for plan in plans.get(i, [])] for i in range(len(self.param_groups))]

    @torch.no_grad()
    def effective_lr(self) -> list[torch.Tensor | None]:
        """The per-coordinate effective learning rate of every parameter (see the rule's ``effective_lr``)."""
        rule = self.algorithm.effective_lr
        rates: list[torch.Tensor | None] = []
        for group in self.param_groups:
            hp = self._hp(group)
            scalars = shared.kept_scalars(self.algorithm, group, hp)
            for p in group["params"]:
                state = self.state.get(p)
                if rule is None or not state:
                    rates.append(None)
                    continue
                rates.append(rule(p, state, scalars=scalars, xp=TORCH_OPS, **hp))
        return rates

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict saved by adaptim or by the reference package, checked first."""
        self._check_state_dict(state_dict)
        torch.optim.Optimizer.load_state_dict(self, state_dict)
        self.__dict__.pop("_fast_refused", None)
        self.__dict__.pop("_fast_layouts", None)

    def _check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        name = f"adaptim.{type(self).__name__}"
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                f"Invalid state_dict for {name}: expected a mapping with 'state' and "
                "'param_groups', as Optimizer.state_dict() returns."
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Invalid state_dict for {name}: it has {len(saved_groups)} param groups; "
                f"this optimizer has {len(self.param_groups)}."
            )
        own = {*self.algorithm.hparams, *self.defaults, *self.param_groups[0]}
        everyone = [*ALGORITHMS.values(), *LR_FREE.values()]
        foreign = {k for a in everyone for k in a.hparams} - own - _GROUP_SWITCHES
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            where = f"Invalid state_dict for {name}, param_groups[{index}]"
            merged = {**self.defaults, **{k: v for k, v in saved.items() if k != "params"}}
            validate = functools.partial(self._validate_group, merged)
            check_loaded_group(where, name, saved, len(group["params"]), foreign, validate)
            hp = self._hp(merged)
            for position, saved_id in enumerate(saved["params"]):
                entries = state_dict["state"].get(saved_id)
                problem = entries and shared.state_entry_problem(self.algorithm, hp, entries)
                if problem:
                    raise ValueError(f"{where}, parameter {position}: {problem}.")


class TrainEvalMixin:
    """``train()`` and ``eval()`` for rules whose parameters hold another point in training."""

    param_groups: list[dict[str, Any]]
    state: Any
    algorithm: ClassVar[Any]

    @torch.no_grad()
    def train(self) -> None:
        """Put the parameters at the point the gradients are taken at (y); call before training."""
        self._switch(train=True)

    @torch.no_grad()
    def eval(self) -> None:
        """Put the parameters at the averaged point (x); call before evaluating or saving."""
        self._switch(train=False)

    def _switch(self, *, train: bool) -> None:
        switch = shared.group_pass(self.algorithm).switch_mode
        assert switch is not None
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            hp = {k: hyperparameter(k, group[k]) for k in self.algorithm.hparams}
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    p.copy_(switch(p, state, train=train, xp=TORCH_OPS, **hp))
            group["train_mode"] = train
