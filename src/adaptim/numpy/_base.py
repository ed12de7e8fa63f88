"""The NumPy :class:`Optimizer`: construction, param groups, the state's first layout.

It stands on layers of their own modules (see :mod:`adaptim.numpy._core`):
the step (:mod:`adaptim.numpy._step`) and ``state_dict`` saving, loading and
checking (:mod:`adaptim.numpy._state_dict`). Its classes per algorithm are
made in :mod:`adaptim.numpy`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from adaptim import flavors
from adaptim.algorithms import Algorithm
from adaptim.algorithms._validation import check_bool
from adaptim.numpy import _lowmem
from adaptim.numpy._ops import _SCALAR_DTYPE, NONFINITE_POLICIES, NUMPY_OPS, _real_view
from adaptim.numpy._step import StepLayer


class Optimizer(StepLayer):
    """Base of the NumPy optimizers.

    ``params`` is a list of arrays (updated in place) or a list of param-group
    dicts. ``step(grads)`` takes one gradient per parameter, in order, with
    ``None`` for a parameter to leave alone this step.

    ``flavor`` (see :mod:`adaptim.flavors`) takes every hyperparameter not
    passed from that framework's preset, as in the torch front-end; a param
    group may name its own ``flavor``. Without one, the algorithm's default
    flavor applies: torch's, or optax's for the algorithms torch.optim lacks.

    ``state_dtype="bfloat16"`` (stochastic rounding, the state kept as bf16
    bit patterns in ``np.uint16``) or ``state_bits=8`` (block-wise 8-bit
    codes in ``np.uint8`` with float32 block maxima) keeps the element-wise
    state in less memory, on the algorithms of :data:`MEMORY_LIGHT_OPTIMIZERS`;
    the stored values are the torch front-end's (:mod:`adaptim.numpy._lowmem`).
    """

    algorithm: ClassVar[Algorithm]

    def __init__(
        self,
        params: Iterable[np.ndarray] | Iterable[dict[str, Any]],
        *,
        maximize: bool = False,
        nonfinite: str = "ignore",
        flavor: str = flavors.default("torch"),
        state_dtype: Any = None,
        state_bits: int | None = None,
        **hyperparams: Any,
    ) -> None:
        if (state_dtype, state_bits) != (None, None) and self.algorithm.name not in (
            _lowmem.MEMORY_LIGHT
        ):
            from adaptim.numpy import MEMORY_LIGHT_OPTIMIZERS  # (made from this class)

            raise TypeError(
                f"adaptim.numpy.{type(self).__name__} does not take state_dtype or state_bits; "
                "memory-light states are offered by "
                + ", ".join(cls.__name__ for cls in MEMORY_LIGHT_OPTIMIZERS.values())
                + "."
            )
        dtype, bits = _lowmem.check_options(state_dtype, state_bits)
        #: Where the element-wise state is kept narrow; ``None``: the parameter's dtype.
        self.state_format: _lowmem.StateFormat | None = None
        if dtype is not None or bits is not None:
            self.state_format = _lowmem.StateFormat(dtype, bits)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"Invalid nonfinite: {nonfinite!r}; allowed: 'ignore', 'skip', 'raise'."
            )
        self._check_names(hyperparams)
        name = self.algorithm.name
        # not passed: the algorithm's own default (torch's, or optax's where torch has none)
        flavor = self.algorithm.default_flavor if flavors.is_unset(flavor) else flavor
        if flavor != "torch":  # None, torch's default (Muon's adjust_lr_fn): as if not passed,
            # as in the torch front-end, whose signature cannot tell the two apart
            defaults = self.algorithm.defaults
            hyperparams = {
                k: v
                for k, v in hyperparams.items()
                if v is not None or defaults.get(k, 0) is not None
            }
        amsgrad = bool(hyperparams.get("amsgrad", self.algorithm.defaults.get("amsgrad", False)))
        self.defaults: dict[str, Any] = {
            **flavors.resolve(name, flavor, hyperparams, amsgrad=amsgrad),
            "maximize": maximize,
        }
        if flavors.has_flavors(name):
            self.defaults["flavor"] = flavor
        self._validate(self.defaults)  # as torch does, even if every group overrides a default
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        if isinstance(params, np.ndarray):  # (iterating it would make each row a parameter)
            raise TypeError(
                "params must be a list of arrays or of param group dicts, got an array of "
                f"shape {params.shape}: pass [array]"
            )
        groups: list[Any] = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def _check_names(self, names: Iterable[str]) -> None:
        allowed = [*self.algorithm.defaults, "maximize"]
        if flavors.has_flavors(self.algorithm.name):
            allowed.append("flavor")
        for name in names:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(
                    f"{type(self).__name__} got an unknown hyperparameter {name!r}.{hint} "
                    f"Allowed: {', '.join(allowed)}."
                )

    @property
    def params(self) -> list[np.ndarray]:
        """Every parameter, in the order ``step`` expects their gradients."""
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters, with hyperparameters overriding the defaults."""
        raw = param_group.get("params")
        params = [raw] if isinstance(raw, np.ndarray) else list(raw or [])
        if not params:
            raise ValueError("a param group needs a non-empty 'params' list")
        for p in params:
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params must be numpy arrays, got {type(p).__name__}")
            if not (
                np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.complexfloating)
            ):
                raise TypeError(
                    f"params must be floating-point or complex arrays, got dtype {p.dtype}"
                )
            if not p.flags.writeable:
                raise ValueError("params must be writeable arrays: they are updated in place")
            if any(p is q for q in self.params):
                raise ValueError("some parameters appear in more than one parameter group")
            if np.iscomplexobj(p) and not self.algorithm.complex_params:
                raise TypeError(f"{type(self).__name__} does not support complex parameters")
            if np.iscomplexobj(p) and self.state_format is not None:
                raise TypeError(
                    f"adaptim.numpy.{type(self).__name__} with {self.state_format.describe()} "
                    "does not support complex parameters; use the default state."
                )
            rank = self.algorithm.param_ndim
            if rank is not None and p.ndim != rank and not self._any_rank(param_group):
                raise ValueError(
                    f"{type(self).__name__} only supports {rank}-D parameters; got one of "
                    f"shape {p.shape}. Give the others to a second optimizer (such as AdamW)."
                )
        self._check_names(k for k in param_group if k != "params")
        group = {
            **self.defaults,
            **self._group_preset(param_group),
            **param_group,
            "params": params,
        }
        self._validate(group)
        self.param_groups.append(group)
        if self.algorithm.state_at_construction:
            start = len(self.params) - len(params)
            for index, p in enumerate(params, start):
                self._init_state(index, p, group)

    def _any_rank(self, param_group: Mapping[str, Any]) -> bool:
        """Whether the group takes every rank despite ``param_ndim`` (Keras' Muon fallback)."""
        merged = {**self.defaults, **self._group_preset(param_group), **param_group}
        any_rank = self.algorithm.any_rank
        return any_rank is not None and any_rank({k: merged[k] for k in self.algorithm.hparams})

    def _group_preset(self, param_group: Mapping[str, Any]) -> dict[str, Any]:
        """The preset of a group that names another flavor (or AMSGrad) than the defaults."""
        name = self.algorithm.name
        if not flavors.has_flavors(name):
            return {}
        flavor = param_group.get("flavor", self.defaults["flavor"])
        amsgrad = param_group.get("amsgrad", self.defaults.get("amsgrad", False))
        if (flavor, amsgrad) == (self.defaults["flavor"], self.defaults.get("amsgrad", False)):
            return {}
        return flavors.preset(name, flavor, amsgrad=bool(amsgrad))

    def _validate(self, group: Mapping[str, Any]) -> None:
        check_bool(group, "maximize")
        self.algorithm.validate({k: group[k] for k in self.algorithm.hparams})

    def _init_state(self, index: int, p: np.ndarray, group: Mapping[str, Any]) -> dict[str, Any]:
        existing = self.state.get(index)
        if existing:  # the common case on every step: nothing to derive
            return existing
        hp = {k: group[k] for k in self.algorithm.hparams}
        if not (self.algorithm.step or self.algorithm.scalar_state or self.algorithm.state(hp)):
            return {}  # stateless (SGD without momentum): no entry, as in torch
        state = self.state.setdefault(index, {})
        if state:
            return state
        if self.algorithm.step:
            state["step"] = np.zeros((), dtype=_SCALAR_DTYPE)
        for key, value in self.algorithm.scalar_state.items():
            state[key] = np.asarray(value, dtype=_SCALAR_DTYPE)
        shapes = self.algorithm.state_shape(p.shape) if self.algorithm.state_shape else {}
        if shapes and np.iscomplexobj(p):
            raise TypeError(
                f"adaptim.numpy.{type(self).__name__} does not support complex parameters."
            )
        for key, fill in self.algorithm.state(hp).items():
            if key in shapes:  # not element-wise (SM3's accumulators)
                state[key] = np.full(shapes[key], fill or 0.0, dtype=p.dtype)
            elif fill is not None:
                # Complex parameters are updated as pairs of reals: fill both halves.
                state[key] = np.full_like(p, complex(fill, fill) if np.iscomplexobj(p) else fill)
        if self.state_format is not None:
            self.state_format.conform(state, self._elementwise_keys(state), p)
        return state

    def effective_lr(self) -> list[np.ndarray | None]:
        """Per-coordinate effective learning rate of every parameter, as in the torch front-end.

        ``None`` for a parameter that has no state yet.
        """
        rule = self.algorithm.effective_lr
        rates: list[np.ndarray | None] = []
        index = 0
        for group in self.param_groups:
            hp = {k: group[k] for k in self.algorithm.hparams}
            needs_state = self.algorithm.step or any(
                fill is not None for fill in self.algorithm.state(hp).values()
            )
            for p in group["params"]:
                state = self.state.get(index, {})
                index += 1
                if rule is None or (needs_state and not state):
                    rates.append(None)
                    continue
                step = max(float(state.get("step", 1.0)), 1.0)
                if self.state_format is not None:
                    keys = self._elementwise_keys(state)
                    state = {**state, **{k: _lowmem.read(state, k, p) for k in keys}}
                views = {k: _real_view(v) if np.ndim(v) else v for k, v in state.items()}
                rates.append(np.asarray(rule(_real_view(p), views, step=step, xp=NUMPY_OPS, **hp)))
        return rates
