"""The PyTorch front-end: one ``torch.optim.Optimizer`` that drives any update rule."""

from __future__ import annotations

import collections
import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import torch

from adaptim import flavors
from adaptim.algorithms import ALGORITHMS, _state_codes
from adaptim.algorithms._spec import Algorithm, ArrayOps
from adaptim.algorithms._validation import (
    as_float,
    check_bool,
    check_loaded_group,
    state_problem,
)
from adaptim.torch import _hooks, _lowmem, _matrices
from adaptim.torch._engine import Engine
from adaptim.torch._hooks import hooked_step

TORCH_OPS = ArrayOps(
    name="torch",
    sqrt=torch.sqrt,
    maximum=torch.maximum,
    abs=torch.abs,
    where=torch.where,
    clip=torch.clamp,
    norm=torch.linalg.vector_norm,
    axpy=lambda a, b, alpha: torch.add(a, b, alpha=alpha),
    addcmul=lambda a, b, c, value: torch.addcmul(a, b, c, value=value),
    lerp=torch.lerp,
    rsqrt=torch.rsqrt,
    # (as torch's Adafactor computes it: the norm along the axis, squared, over n;
    # torch.norm's Python wrapper calls this vector_norm for an axis)
    mean_square=lambda x, axis: (
        torch.linalg.vector_norm(x, dim=axis, keepdim=True).square_().div_(x.shape[axis])
    ),
    mean=lambda x, axis: x.mean(dim=axis, keepdim=True),
    eps_of=lambda x: torch.finfo(x.dtype).eps,
    rms=lambda x, scale: float(torch.linalg.vector_norm(x)) / (x.numel() ** 0.5 * scale),
    amax=lambda x, dims: torch.amax(x, dim=dims),
    minimum=torch.minimum,
    concat=torch.cat,
    addmm=_matrices.addmm,
    symmetric_addmm=_matrices.symmetric_addmm,
    to_bfloat16=lambda x: x.bfloat16(),
)


def _traced_scalar(like: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-d tensor of ``like``'s dtype, made by arithmetic in the graph.

    Under torch 2.13's Dynamo, a float that became dynamic (an ``lr`` a
    scheduler changes) passed as a *scalar* bound of ``clamp``, ``where`` or
    ``minimum`` keeps its first compiled value: later values are silently
    ignored. A tensor bound made by arithmetic is read on every call, and a
    factory such as ``torch.full`` recompiles on each new value instead.
    """
    return like.new_zeros(()) + value


#: The ``xp`` of the step under ``torch.compile``: the multiply-adds as formulas,
#: because torch's ``alpha=``/``value=``/scalar ``weight`` arguments take only
#: concrete numbers and would make Dynamo specialise (and recompile) on each new
#: learning rate or beta a scheduler sets.
TRACEABLE_OPS = dataclasses.replace(
    TORCH_OPS,
    name="torch-traceable",
    traced=True,
    axpy=lambda a, b, alpha: a + b * alpha,
    addcmul=lambda a, b, c, value: a + b * c * value,
    lerp=lambda a, b, weight: a + (b - a) * weight,
    clip=lambda x, low, high: torch.clamp(x, _traced_scalar(x, low), _traced_scalar(x, high)),
    rms=lambda x, scale: torch.linalg.vector_norm(x) / (x.numel() ** 0.5 * scale),
    symmetric_addmm=_matrices.plain_symmetric_addmm,
)


NonFinitePolicy = Literal["ignore", "skip", "raise"]
NONFINITE_POLICIES: tuple[str, ...] = ("ignore", "skip", "raise")

# Group keys torch keeps for its own implementation switches. adaptim accepts
# them for drop-in compatibility; the two that change semantics are refused.
_TORCH_SWITCHES = ("foreach", "fused", "capturable", "differentiable")
_GROUP_SWITCHES = frozenset({*_TORCH_SWITCHES, "maximize", "flavor", "params"})

#: Per optimizer class, the hyperparameter names of other algorithms that it
#: does not take: a param group holding one comes from another optimizer.
_FOREIGN_KEYS: dict[type, frozenset[str]] = {}

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, torch.Tensor]]


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps ``step`` and other scalar state in."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def hyperparameter(name: str, value: Any) -> Any:
    """A group value as the update rule wants it: tensors become Python numbers."""
    if isinstance(value, torch.Tensor):
        return as_float(name, value)
    if isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(as_float(name, v) for v in value)
    return value


_IMPLICIT: dict[str, dict[str, Any]] = {}


def implicit_options(cls: type[Optimizer]) -> dict[str, Any]:
    """adaptim-only group keys, each with the value that means torch's behaviour.

    A torch-flavored param group holds such a key only when it differs from
    that value (other flavors keep every option visible), so a default adaptim optimizer's
    ``param_groups`` and ``state_dict()`` have exactly torch.optim's keys:
    distributed checkpoints (DCP, flattened or not) move both ways. Reading a
    group goes through :meth:`Optimizer.group_value`, which fills them in.
    """
    key = f"{cls.__module__}.{cls.__qualname__}.{cls.algorithm.name}"
    found = _IMPLICIT.get(key)
    if found is None:
        algorithm = cls.algorithm
        twin = getattr(torch.optim, algorithm.class_name, None) if algorithm.class_name else None
        found = {}
        if isinstance(twin, type):
            # the keys torch's groups hold (a probe of the rank the twin takes: Muon's 2-D)
            probe = twin([torch.zeros((1,) * (algorithm.param_ndim or 1), requires_grad=True)])
            torch_keys = set(probe.param_groups[0]) - {"params"}
            torch_values = {**algorithm.defaults, "flavor": "torch", "fused": None}
            found = {k: v for k, v in torch_values.items() if k not in torch_keys}
        _IMPLICIT[key] = found
    return found


def _is_implicit(implicit: Mapping[str, Any], key: str, value: Any) -> bool:
    if key not in implicit or isinstance(value, torch.Tensor):
        return False
    expected = implicit[key]
    return value is expected or (type(value) is type(expected) and value == expected)


def _holds_tensor(value: Any) -> bool:
    """Whether a group value may change without being replaced (a tensor, a list)."""
    if isinstance(value, tuple):
        return any(map(_holds_tensor, value))
    return isinstance(value, torch.Tensor | list)


def real_view(tensor: torch.Tensor) -> torch.Tensor:
    """Complex tensors are updated as pairs of reals, exactly as torch.optim does."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


class Optimizer(torch.optim.Optimizer):
    """Base of every adaptim optimizer: validation, state layout and the step loop.

    Subclasses name their :class:`~adaptim.algorithms._spec.Algorithm`; the
    update itself lives there, once, for both front-ends.

    ``nonfinite`` decides what a NaN or Inf gradient does: ``"ignore"`` (the
    default, as torch) lets it through, ``"skip"`` skips the whole step and
    leaves parameters and state untouched (counted in ``skipped_steps``),
    ``"raise"`` raises ``FloatingPointError`` naming the parameter.

    ``fused`` and ``foreach`` (param-group keys, as in torch) pick how a step
    executes (:mod:`adaptim.torch._engine`): by default a CPU group of at least
    64k elements runs one native compiled loop over all its tensors, and
    anything else the multi-tensor replay (``torch._foreach_*``), which is
    bit-identical to the per-tensor rule; ``fused=True`` asks for the native
    loop, ``fused=False`` or ``foreach=True`` for the replay, ``foreach=False``
    for the per-tensor loop (torch's for-loop). Parameters, gradients and
    state are never moved or rebound. :meth:`fused_status` says which path
    each group took and why; :meth:`plans` shows the generated code.

    ``flavor`` (where the algorithm has flavors, see :mod:`adaptim.flavors`)
    fills every hyperparameter the caller did not pass from that framework's
    preset, and is kept in ``param_groups``. A param group may name its own
    ``flavor``; its preset then fills what the group does not set.

    ``state_dtype=torch.bfloat16`` (bf16 with stochastic rounding) or
    ``state_bits=8`` (block-wise 8-bit quantisation) keeps the element-wise
    state in less memory, on the optimizers whose signature has them; see
    :mod:`adaptim.torch._lowmem`. On the CPU such an optimizer steps in a
    native loop over the encoded state (:mod:`adaptim.torch._lowmem_native`),
    and its ``state_dict`` loads into one of any state format.
    """

    algorithm: ClassVar[Algorithm]

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        *,
        nonfinite: NonFinitePolicy = "ignore",
        fused: bool | None = None,
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
    ) -> None:
        state_dtype, state_bits = _lowmem.check_options(state_dtype, state_bits)
        #: Where the element-wise state is kept narrow: ``None`` (the parameter's dtype).
        self.state_format: _lowmem.StateFormat | None = None
        if state_dtype is not None or state_bits is not None:
            self.state_format = _lowmem.StateFormat(state_dtype, state_bits)
        # torch's signature has no ``fused`` for every algorithm; adaptim's fast path does.
        defaults.setdefault("fused", fused)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"Invalid nonfinite: {nonfinite!r}; allowed: "
                + ", ".join(repr(p) for p in NONFINITE_POLICIES)
                + "."
            )
        self.nonfinite: NonFinitePolicy = nonfinite
        self.skipped_steps = 0
        self._engine = Engine(self)
        name = self.algorithm.name
        if flavors.has_flavors(name):
            flavor = flavors.check_flavor(flavor)
            amsgrad = bool(defaults.get("amsgrad", False))
            defaults = {
                **flavors.resolve(name, flavor, defaults, amsgrad=amsgrad),
                "flavor": flavor,
            }
        self._validate_group(defaults)  # as torch does, even if every group overrides a default
        if defaults.get("flavor", "torch") == "torch":  # other flavors keep every option visible
            implicit = implicit_options(type(self))
            defaults = {k: v for k, v in defaults.items() if not _is_implicit(implicit, k, v)}
        super().__init__(params, defaults)

    # -- groups and validation -------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        name = self.algorithm.name
        if flavors.has_flavors(name) and isinstance(param_group, dict):
            own = (self.defaults.get("flavor", "torch"), self.defaults.get("amsgrad", False))
            flavor = param_group.get("flavor", own[0])
            amsgrad = param_group.get("amsgrad", own[1])
            if (flavor, amsgrad) != own:
                flavors.check_flavor(flavor)
                param_group = flavors.resolve(name, flavor, param_group, amsgrad=bool(amsgrad))
                param_group["flavor"] = flavor
        implicit = implicit_options(type(self))
        explicit_fused = isinstance(param_group, dict) and "fused" in param_group
        flavor = self.defaults.get("flavor", "torch")
        if isinstance(param_group, dict) and param_group.get("flavor", flavor) == "torch":
            param_group = {k: v for k, v in param_group.items() if not _is_implicit(implicit, k, v)}
        super().add_param_group(param_group)  # fills the group from ``defaults``
        if "fused" in implicit and not explicit_fused:
            # torch's twin has no ``fused`` key (RMSprop, NAdam, ...): the
            # optimizer-wide switch stays in ``defaults``, not in every group.
            self.param_groups[-1].pop("fused", None)
        if "_engine" in self.__dict__:
            self._engine.invalidate()
        group = self.param_groups[-1]
        try:
            self._validate_group(group)
            if not self.algorithm.complex_params and any(p.is_complex() for p in group["params"]):
                raise RuntimeError(
                    f"adaptim.{type(self).__name__} does not support complex parameters; "
                    "split them into real and imaginary parts (torch.view_as_real)."
                )
            rank = self.algorithm.param_ndim
            any_rank = self.algorithm.any_rank
            if any_rank is not None and any_rank(
                {k: self.group_value(group, k) for k in self.algorithm.hparams}
            ):
                rank = None  # (Keras' Muon: the others go to its AdamW fallback)
            for position, p in enumerate(group["params"] if rank is not None else ()):
                if p.ndim != rank:
                    raise ValueError(
                        f"adaptim.{type(self).__name__} only supports {rank}-D parameters; "
                        f"param_groups[{len(self.param_groups) - 1}]['params'][{position}] has "
                        f"shape {tuple(p.shape)}. Give the others to a second optimizer "
                        "(such as adaptim.AdamW), as torch.optim requires."
                    )
            if self.state_format is not None and any(p.is_complex() for p in group["params"]):
                raise TypeError(
                    f"adaptim.{type(self).__name__}: {self.state_format.describe()} does not "
                    "support complex parameters; split them into real and imaginary parts "
                    "(torch.view_as_real)."
                )
        except Exception:
            self.param_groups.pop()
            raise
        if self.algorithm.state_at_construction:  # as torch's Adagrad does
            for p in group["params"]:
                self._init_state(p, group)

    def group_value(self, group: Mapping[str, Any], key: str) -> Any:
        """``group[key]``, or torch's value for an adaptim-only option the group leaves implicit."""
        if key in group:
            return group[key]
        return implicit_options(type(self))[key]

    def _validate_group(self, group: Mapping[str, Any]) -> None:
        name = type(self).__name__
        for switch in ("capturable", "differentiable"):
            if group.get(switch):
                twin = f"torch.optim.{name}" if hasattr(torch.optim, name) else "torch.optim"
                raise ValueError(
                    f"Invalid {switch}: True; adaptim.{name} does not support {switch}=True. "
                    f"Use {twin} for CUDA-graph capture or differentiating through steps."
                )
        if "maximize" in group:  # (torch's Muon has no such switch)
            check_bool(group, "maximize")
        if group.get("fused") is not None:
            if not isinstance(group["fused"], bool):
                raise TypeError(
                    f"Invalid fused: {group['fused']!r}; allowed: None (automatic), True or False."
                )
            if group["fused"] and group.get("foreach"):
                raise ValueError("Invalid fused: True with foreach=True; choose at most one.")
        self.algorithm.validate({k: self.group_value(group, k) for k in self.algorithm.hparams})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # (torch's __setstate__ adds ``differentiable`` to the defaults; groups of
        # a twin without that switch, such as Adafactor, must not get it.)
        own = dict(state["defaults"] if "defaults" in state else self.__dict__.get("defaults", {}))
        super().__setstate__(state)
        # A state_dict from torch.optim lacks adaptim-only keys; fill them in.
        for group in self.param_groups:
            for key, value in own.items():
                group.setdefault(key, value)
        self.__dict__.pop("_fast", None)  # pickled by an adaptim with flat buffers
        self.__dict__.setdefault("state_format", None)  # pickled before low-memory states
        self._engine = Engine(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict saved by adaptim or by the matching ``torch.optim`` class.

        Everything is checked before anything changes: a state_dict of
        another optimizer (its param groups hold another algorithm's
        hyperparameters, or its state other entries), state entries of the
        wrong shape or kind, and hyperparameters that construction would
        refuse raise with the same message, prefixed with where they are.

        torch casts every floating state entry but ``step`` to its parameter's
        dtype. Scalar bookkeeping such as NAdam's ``mu_product`` keeps its
        saved dtype here instead, so a resumed run continues bit for bit.
        """
        hooks = self._optimizer_load_state_dict_pre_hooks
        if hooks:  # check what torch would load: run the pre-hooks first, once
            state_dict = state_dict.copy()
            for hook in list(hooks.values()):
                state_dict = hook(self, state_dict) or state_dict
        self._check_state_dict(state_dict)
        self._optimizer_load_state_dict_pre_hooks = collections.OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
        self._engine.invalidate()  # the state tensors are new
        scalars = ("step", *self.algorithm.scalar_state)
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            state = self.state.get(p)
            if not state:
                continue
            for key in scalars:
                value = saved_state.get(saved_id, {}).get(key)
                if isinstance(value, torch.Tensor):
                    if key != "step":
                        state[key] = value.detach().clone()
                    elif not value.is_floating_point():  # an integer count: as torch keeps it
                        state[key] = value.to(scalar_dtype())
                elif value is not None:  # a plain number, as old torch versions saved
                    state[key] = torch.tensor(float(value), dtype=scalar_dtype())
            _lowmem.conform_loaded(
                self.state_format, p, state, saved_state.get(saved_id, {}), self._elementwise_keys
            )

    def _elementwise_keys(self, state: Mapping[str, Any]) -> list[str]:
        """The state entries a low-memory format encodes: the rule's element-wise ones
        (also 0-d ones once a step has encoded them, beside a 0-d parameter)."""
        return _state_codes.encodable_keys(
            state,
            self.algorithm,
            lambda v: (
                isinstance(v, torch.Tensor)
                and (v.ndim > 0 or v.dtype in (torch.bfloat16, torch.uint8))
            ),
        )

    def _check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Raise, naming where and what was expected, unless ``state_dict`` fits this optimizer."""
        name = f"adaptim.{type(self).__name__}"
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                f"Invalid state_dict for {name}: expected a mapping with 'state' and "
                "'param_groups', as Optimizer.state_dict() returns."
            )
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Invalid state_dict for {name}: it has {len(saved_groups)} param groups; "
                f"this optimizer has {len(self.param_groups)}."
            )
        foreign = _FOREIGN_KEYS.get(type(self))
        if foreign is None:
            own = {*self.algorithm.hparams, *implicit_options(type(self)), *self.defaults}
            everyone = {k for a in ALGORITHMS.values() for k in a.hparams}
            foreign = _FOREIGN_KEYS.setdefault(
                type(self), frozenset(everyone - own - _GROUP_SWITCHES)
            )
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            where = f"Invalid state_dict for {name}, param_groups[{index}]"
            merged = {**self.defaults, **{k: v for k, v in saved.items() if k != "params"}}
            check_loaded_group(
                where,
                name,
                saved,
                len(group["params"]),
                foreign,
                functools.partial(self._validate_group, merged),
            )
            hp = {k: self.group_value(merged, k) for k in self.algorithm.hparams}
            for position, (saved_id, p) in enumerate(
                zip(saved["params"], group["params"], strict=True)
            ):
                entries = saved_state.get(saved_id)
                if entries is None:
                    continue
                problem = (
                    "expected a mapping of state entries"
                    if not isinstance(entries, Mapping)
                    else self._state_problem(hp, entries, p, exact_keys=True)
                )
                if problem:
                    raise ValueError(
                        f"{where}, parameter {position} (state id {saved_id!r}, shape "
                        f"{tuple(p.shape)}): {problem}."
                    )

    def _state_problem(
        self, hp: Mapping[str, Any], state: Mapping[str, Any], p: torch.Tensor, *, exact_keys: bool
    ) -> str | None:
        """:func:`state_problem`, with 8-bit entries (codes and block maxima) checked as one."""
        plain, problem = _lowmem.plain_layout(state)
        return problem or state_problem(
            self.algorithm, hp, plain, tuple(p.shape), p.is_complex(), exact_keys=exact_keys
        )

    # -- state -------------------------------------------------------------------
    def _init_state(self, p: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        existing: dict[str, Any] | None = self.state.get(p)
        if existing:  # the common case on every step: nothing to derive
            return existing
        hp = {k: self.group_value(group, k) for k in self.algorithm.hparams}
        if not (self.algorithm.step or self.algorithm.scalar_state or self.algorithm.state(hp)):
            return {}  # stateless (SGD without momentum): no entry, as in torch
        state: dict[str, Any] = self.state[p]
        if state:
            return state
        if self.algorithm.step:
            state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        for key, initial in self.algorithm.scalar_state.items():
            state[key] = torch.tensor(initial, dtype=scalar_dtype())
        shapes = self.algorithm.state_shape(tuple(p.shape)) if self.algorithm.state_shape else {}
        if shapes and p.is_complex():
            raise TypeError(f"adaptim.{type(self).__name__} does not support complex parameters.")
        for key, fill in self.algorithm.state(hp).items():
            if key in shapes:  # not element-wise (SM3's accumulators)
                state[key] = torch.full(shapes[key], fill or 0.0, dtype=p.dtype, device=p.device)
            elif fill is not None:
                # Complex parameters are updated as pairs of reals: fill both halves.
                start: complex = complex(fill, fill) if p.is_complex() else fill
                state[key] = torch.full_like(p, start, memory_format=torch.preserve_format)
        if self.state_format is not None:  # (complex parameters were refused when added)
            self.state_format.conform(state, self._elementwise_keys(state), p)
        return state

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
                    self.skipped_steps += 1
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
            for p in self._update_group(left + engine.run_group(index, group, hp), group, hp):
                assert p.grad is not None  # the engine leaves parameters with gradients only
                self._update(p, p.grad, group, hp)
        engine.end_step()

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
        elementwise = [k for k, fill in algorithm.state(hp).items() if fill is not None]
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
                for key in scalars:
                    if type(state.get(key)) is not torch.Tensor:
                        suspect = True
            if suspect:
                self._refuse_reference_input(index, p, hp)

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
        if problem:
            position = next(i for i, q in enumerate(self.param_groups[index]["params"]) if q is p)
            raise RuntimeError(
                f"adaptim.{type(self).__name__}: cannot step "
                f"param_groups[{index}]['params'][{position}] (shape {tuple(p.shape)}): "
                f"{problem}. Nothing was changed."
            )

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

    def fused_status(self) -> list[str]:
        """For each param group, the path its last step took (native, foreach, reference) and why."""
        return [self._engine.describe(index) for index in range(len(self.param_groups))]

    def plans(self) -> list[list[str]]:
        """For each param group, the code its last step ran: replay functions and native C sources."""
        return [self._engine.plans(index) for index in range(len(self.param_groups))]

    @torch.no_grad()
    def effective_lr(self) -> list[torch.Tensor | None]:
        """The per-coordinate effective learning rate of every parameter, in ``param_groups`` order.

        It is the factor the optimizer multiplies its search direction by,
        computed from the current state: ``lr`` for SGD, ``lr/(√sum+ε)`` for
        AdaGrad, ``lr/(√v+ε)`` for RMSprop, ``lr/(√v̂+ε)`` on the bias-corrected
        momentum for Adam, ``lr·trust_ratio`` for LARS (see each algorithm's
        ``*_effective_lr``). Its spread over coordinates and its drift over
        time show *why* optimizers differ: AdaGrad's only shrinks, RMSprop's
        follows the recent gradients. ``None`` for a parameter that has no
        state yet. Complex parameters give the rate of their real view.
        """
        rule = self.algorithm.effective_lr
        rates: list[torch.Tensor | None] = []
        for group in self.param_groups:
            hp = {k: hyperparameter(k, self.group_value(group, k)) for k in self.algorithm.hparams}
            needs_state = self.algorithm.step or any(
                fill is not None for fill in self.algorithm.state(hp).values()
            )
            for p in group["params"]:
                state = self.state.get(p, {})
                if rule is None or (needs_state and not state):
                    rates.append(None)
                    continue
                step = max(float(state.get("step", 1.0)), 1.0)
                if self.state_format is not None:
                    state = {**state, **self._decoded(p, state)}
                views = {
                    k: real_view(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()
                }
                rates.append(rule(real_view(p), views, step=step, xp=TORCH_OPS, **hp))
        return rates

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

    def _update(
        self,
        p: torch.Tensor,
        grad: torch.Tensor,
        group: Mapping[str, Any],
        hp: dict[str, Any],
        *,
        traceable: bool = False,
    ) -> None:
        algorithm = self.algorithm
        if group.get("maximize", False):
            grad = -grad
        state = self._init_state(p, group)
        step: float | torch.Tensor = 0.0
        if algorithm.step:
            if traceable:
                state["step"] += 1
                # Compiled: a float64 tensor, so the graph does not depend on its value
                # and scalar terms such as RAdam's rho_t keep the eager path's precision.
                step = state["step"].double()
            else:  # counted once the update has succeeded
                step = float(state["step"] + 1)
        entries = [*algorithm.state(hp), *algorithm.scalar_state]
        if self.state_format is not None:
            if grad.is_sparse:
                self._sparse_mode(p, hp)  # raises
            xp = TRACEABLE_OPS if traceable else TORCH_OPS
            decoded = self._decoded(p, state)
            position = self.state_format.position(p, self.param_groups)
            _lowmem.update_decoded(
                self.state_format,
                algorithm,
                p,
                grad,
                state,
                entries,
                decoded,
                step,
                hp,
                xp,
                position,
            )
            if algorithm.step and not traceable:
                state["step"] += 1
            return
        if grad.is_sparse:
            mode = self._sparse_mode(p, hp)
            if mode == "rows":
                self._update_rows(p, grad, state, entries, float(step), hp)
                if algorithm.step:
                    state["step"] += 1
                return
            grad = grad.to_dense()
        inputs = {k: _dense_or_none(state.get(k)) for k in entries}
        views = {k: None if v is None else real_view(v) for k, v in inputs.items()}
        target = real_view(p)
        new_p, new_state = algorithm.update(
            target,
            real_view(grad),
            views,
            step=step,
            xp=TRACEABLE_OPS if traceable else TORCH_OPS,
            **hp,
        )
        target.copy_(new_p)
        if algorithm.step and not traceable:
            state["step"] += 1
        for key, value in new_state.items():
            current = views[key]
            if current is None:
                stored = value.detach().clone()
                if p.is_complex() and stored.shape == target.shape:
                    stored = torch.view_as_complex(stored)
                state[key] = stored
            else:
                current.copy_(value)
                state[key] = inputs[key]

    def _decoded(self, p: torch.Tensor, state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The encoded element-wise entries of ``state``, decoded to the working dtype."""
        fmt = self.state_format
        assert fmt is not None
        decoded = {k: fmt.read(state, k, p) for k in self._elementwise_keys(state)}
        return {k: v for k, v in decoded.items() if v is not None}

    def _sparse_mode(self, p: torch.Tensor, hp: Mapping[str, Any]) -> str:
        name = type(self).__name__
        if self.state_format is not None:
            raise RuntimeError(
                f"adaptim.{name}: {self.state_format.describe()} does not support sparse "
                "gradients; use the default state (state_dtype=None, state_bits=None)."
            )
        if self.algorithm.sparse is None:
            raise RuntimeError(
                f"adaptim.{name} does not support sparse gradients; "
                f"use {self.algorithm.sparse_alternative}, or torch.optim.SparseAdam."
            )
        if p.is_complex():
            raise RuntimeError(
                f"adaptim.{name} does not support sparse gradients of complex parameters."
            )
        return self.algorithm.sparse(hp)

    def _update_rows(
        self,
        p: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        entries: list[str],
        step: float,
        hp: dict[str, Any],
    ) -> None:
        # The rule is element-wise, so running it on the touched rows alone is
        # the same arithmetic as the dense update, at the cost of nnz.
        grad = grad.coalesce()  # duplicate indices must be summed first
        rows = tuple(grad.indices())
        values = grad.values()
        tensors = {k: state[k] for k in entries}
        if not rows:  # no sparse axis (a 0-d gradient): one value, the whole tensor, or none
            if len(values):
                new_p, new_state = self.algorithm.update(
                    p, values[0], dict(tensors), step=step, xp=TORCH_OPS, **hp
                )
                p.copy_(new_p)
                for key, value in new_state.items():
                    tensors[key].copy_(value)
            return
        if len(rows) == 1:  # whole rows (nn.Embedding's): index_select is ~15x a gather
            (index,) = rows
            new_p, new_state = self.algorithm.update(
                p.index_select(0, index), values,
                {k: v.index_select(0, index) for k, v in tensors.items()},
                step=step, xp=TORCH_OPS, **hp,
            )  # fmt: skip
            p.index_copy_(0, index, new_p)
            for key, value in new_state.items():
                tensors[key].index_copy_(0, index, value)
            return
        new_p, new_state = self.algorithm.update(
            p[rows], values, {k: v[rows] for k, v in tensors.items()}, step=step, xp=TORCH_OPS, **hp
        )
        p.index_put_(rows, new_p)
        for key, value in new_state.items():
            tensors[key].index_put_(rows, value)


def _dense_or_none(value: Any) -> Any:
    # torch's sparse-gradient SGD may leave a sparse momentum buffer in a state_dict.
    if isinstance(value, torch.Tensor) and value.is_sparse:
        return value.to_dense()
    return value
