"""The PyTorch front-end: one ``torch.optim.Optimizer`` that drives any update rule.

:class:`Optimizer` holds construction, param groups and their validation, the
state's first layout and what a user reads back (``fused_status``, ``plans``,
``effective_lr``). It stands on layers of their own modules (see
:mod:`adaptim.torch._core`): the step (:mod:`adaptim.torch._step`), the
per-tensor rule (:mod:`adaptim.torch._per_tensor`), sparse gradients
(:mod:`adaptim.torch._sparse`) and ``state_dict`` loading and checking
(:mod:`adaptim.torch._state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from adaptim import flavors
from adaptim.algorithms._spec import Algorithm
from adaptim.algorithms._validation import check_bool
from adaptim.torch import _lowmem, _lowmem_shards
from adaptim.torch._engine import Engine

# (the names other modules and tests import from here)
from adaptim.torch._options import _GROUP_SWITCHES as _GROUP_SWITCHES
from adaptim.torch._options import NONFINITE_POLICIES as NONFINITE_POLICIES
from adaptim.torch._options import NonFinitePolicy as NonFinitePolicy
from adaptim.torch._options import ParamsT as ParamsT
from adaptim.torch._options import _is_implicit, real_view, scalar_dtype
from adaptim.torch._options import hyperparameter as hyperparameter
from adaptim.torch._options import implicit_options as implicit_options
from adaptim.torch._params import check_params
from adaptim.torch._step import StepLayer
from adaptim.torch._torch_ops import TORCH_OPS as TORCH_OPS
from adaptim.torch._torch_ops import TRACEABLE_OPS as TRACEABLE_OPS

#: ``fused_status()`` after a step under ``torch.compile``: the rule ran per tensor in the graph.
TRACED_STATUS = "traced (torch.compile): the per-tensor rule inside the compiled graph"
#: Constructor options that apply to the whole optimizer: a param group cannot change them.
_OPTIMIZER_WIDE = ("state_dtype", "state_bits", "nonfinite")


class Optimizer(StepLayer):
    """Base of every adaptim optimizer: validation, state layout and the step loop.

    Subclasses name their :class:`~adaptim.algorithms._spec.Algorithm`; the
    update itself lives there, once, for both front-ends.

    ``nonfinite`` decides what a NaN or Inf gradient does: ``"ignore"`` (the
    default, as torch) lets it through, ``"skip"`` skips the whole step and
    leaves parameters and state untouched (counted in ``skipped_steps``),
    ``"raise"`` raises ``FloatingPointError`` naming the parameter.

    ``fused`` and ``foreach`` (param-group keys, as in torch) pick how a step
    executes (:mod:`adaptim.torch._engine`): by default a CPU group runs one
    native compiled loop over all its tensors (below 64k elements only where it
    gives torch's bits: MKL's square root inlined, or a rule without a root),
    a CUDA group one generated Triton kernel (:mod:`adaptim.torch._triton`),
    and anything else the multi-tensor replay (``torch._foreach_*``), which is
    bit-identical to the per-tensor rule; ``fused=True`` asks for the native
    loop or the Triton kernel, ``fused=False`` or ``foreach=True`` for the replay, ``foreach=False``
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
        self._wide_options = {
            "state_dtype": state_dtype,
            "state_bits": state_bits,
            "nonfinite": nonfinite,
        }
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
        if isinstance(param_group, dict):  # torch's checks, naming the parameter
            check_params(param_group, len(self.param_groups), self.param_groups)
        for option in _OPTIMIZER_WIDE:  # (torch keeps unknown keys: these would do nothing)
            if not isinstance(param_group, dict) or option not in param_group:
                continue
            value = param_group[option]
            if option == "state_dtype":
                value = _lowmem.check_options(value, None)[0]
            elif option == "state_bits":
                value = _lowmem.check_options(None, value)[1]
            if value != self._wide_options[option]:  # (ZeroRedundancyOptimizer repeats them)
                raise ValueError(
                    f"Invalid param group: {option!r} applies to the whole optimizer, "
                    f"adaptim.{type(self).__name__}(params, {option}=...), not to one group; "
                    "give parameters that need another its own optimizer."
                )
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

    #: Instance settings a pickle or ``copy.deepcopy`` of the optimizer keeps; torch's
    #: ``__getstate__`` keeps only ``defaults``, ``state`` and ``param_groups``.
    _PICKLED: ClassVar[tuple[str, ...]] = ("nonfinite", "skipped_steps", "state_format")

    def __getstate__(self) -> dict[str, Any]:
        kept = {key: self.__dict__[key] for key in self._PICKLED if key in self.__dict__}
        return {**super().__getstate__(), **kept}

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
        # pickled before low-memory states, or before pickles kept these settings
        for key, value in (("state_format", None), ("nonfinite", "ignore"), ("skipped_steps", 0)):
            self.__dict__.setdefault(key, value)
        self._engine = Engine(self)

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
                whole = torch.full(shapes[key], fill or 0.0, dtype=p.dtype, device=p.device)
                state[key] = _lowmem_shards.replicated(p, whole)  # (SM3's, on every rank)
            elif fill is not None:
                # Complex parameters are updated as pairs of reals: fill both halves.
                start: complex = complex(fill, fill) if p.is_complex() else fill
                state[key] = torch.full_like(p, start, memory_format=torch.preserve_format)
        if self.state_format is not None:  # (complex parameters were refused when added)
            self.state_format.conform(state, self._elementwise_keys(state), p)
        return state

    # -- what a user reads back ----------------------------------------------------
    def fused_status(self) -> list[str]:
        """For each param group, the path its last step took (native, foreach, reference) and why."""
        if self._engine.traced:
            return [TRACED_STATUS] * len(self.param_groups)
        return [self._engine.describe(index) for index in range(len(self.param_groups))]

    def plans(self) -> list[list[str]]:
        """For each param group, the code its last step ran: replay functions and native C sources
        (none after a step under ``torch.compile``, whose code is Inductor's)."""
        if self._engine.traced:
            return [[] for _ in self.param_groups]
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
                target = p
                if self.state_format is not None:  # decoded: a DTensor's local shard
                    state = {**state, **self._decoded(p, state)}
                    target = _lowmem_shards.local(p)
                views = {
                    k: real_view(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()
                }
                rate = rule(real_view(target), views, step=step, xp=TORCH_OPS, **hp)
                rates.append(_lowmem_shards.like(p, rate) if target is not p else rate)
        return rates
