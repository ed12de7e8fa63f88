"""The NumPy front-end: the same algorithms for models written in plain NumPy.

>>> import numpy as np, adaptim.numpy as anp
>>> w = np.zeros(3)
>>> opt = anp.Adam([w], lr=0.1)
>>> opt.step([np.array([1.0, -2.0, 0.5])])   # updates w in place
>>> w.round(3).tolist()
[-0.1, 0.1, -0.1]

Hyperparameter names and defaults are torch's, param groups work as in torch
(a list of dicts with a ``"params"`` key), and ``state_dict()`` uses torch's
layout with parameters numbered in order. Each class drives the very update
rule of :mod:`adaptim.algorithms` that the PyTorch front-end drives.
"""

from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from adaptim import flavors
from adaptim.algorithms import ALGORITHMS, Algorithm, ArrayOps, _state_codes, lerp
from adaptim.algorithms._validation import check_bool, check_loaded_group, state_problem
from adaptim.numpy import _lowmem, _sparse
from adaptim.numpy._sparse import RowSparse

NUMPY_OPS: ArrayOps = ArrayOps(
    name="numpy",
    sqrt=np.sqrt,
    maximum=np.maximum,
    abs=np.abs,
    where=np.where,
    clip=np.clip,
    norm=lambda x: np.sqrt(np.sum(x * x)),
    axpy=lambda a, b, alpha: a + alpha * b,
    addcmul=lambda a, b, c, value: a + value * b * c,
    lerp=lerp,
    rsqrt=lambda x: 1 / np.sqrt(x),
    mean_square=lambda x, axis: np.mean(x * x, axis=axis, keepdims=True),
    mean=lambda x, axis: np.mean(x, axis=axis, keepdims=True),
    eps_of=lambda x: float(np.finfo(x.dtype).eps),
    rms=lambda x, scale: float(np.sqrt(np.sum(x * x))) / (x.size**0.5 * scale),
    amax=lambda x, axes: np.max(x, axis=axes),
    minimum=np.minimum,
    concat=np.concatenate,
    addmm=lambda c, a, b, beta, alpha: beta * c + alpha * (a @ b),
    symmetric_addmm=lambda c, a, b, beta, alpha: a @ b if c is None else beta * c + alpha * (a @ b),
    to_bfloat16=lambda x: x.astype(np.float32),  # NumPy has no bfloat16: the nearest it has
)

NONFINITE_POLICIES = ("ignore", "skip", "raise")

# torch keeps step counters and NAdam's mu_product in float32 by default;
# doing the same keeps both front-ends on the same trajectory.
_SCALAR_DTYPE = np.float32


def _real_view(array: np.ndarray) -> np.ndarray:
    if not np.iscomplexobj(array):
        return array
    if not array.flags.c_contiguous:
        raise ValueError("complex parameters must be C-contiguous arrays to be updated in place")
    # Through a trailing axis of 1, so that 0-d arrays can be viewed too.
    return array.reshape(*array.shape, 1).view(array.real.dtype)


class Optimizer:
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

    def _elementwise_keys(self, state: Mapping[str, Any]) -> list[str]:
        """The state entries a memory-light format encodes (also 0-d ones once encoded)."""
        return _state_codes.encodable_keys(
            state, self.algorithm, lambda v: np.ndim(v) > 0 or _lowmem.is_encoded(v)
        )

    def _state_problem(
        self, hp: Mapping[str, Any], state: Mapping[str, Any], p: np.ndarray, *, exact_keys: bool
    ) -> str | None:
        """:func:`state_problem`, with encoded entries (8-bit codes and maxima, bf16) checked as one."""
        plain, problem = _lowmem.plain_layout(state)
        return problem or state_problem(
            self.algorithm, hp, plain, p.shape, np.iscomplexobj(p), exact_keys=exact_keys
        )

    def step(self, grads: Sequence[Any]) -> None:
        """Update every parameter in place from its gradient.

        A gradient is an array of the parameter's shape, ``None`` (leave the
        parameter alone), or, for the algorithms that take sparse gradients
        (SGD, Adagrad, SparseAdam), a :class:`RowSparse` or a SciPy sparse
        matrix (see :mod:`adaptim.numpy._sparse`).
        """
        params = self.params
        if len(grads) != len(params):
            raise ValueError(f"step() got {len(grads)} gradients for {len(params)} parameters")
        checked = [
            self._checked_gradient(i, p, g)
            for i, (p, g) in enumerate(zip(params, grads, strict=True))
        ]
        if self.nonfinite != "ignore":
            for index, g in enumerate(checked):
                values = g.values if isinstance(g, _sparse.SparseGradient) else g
                if values is not None and not np.isfinite(values).all():
                    if self.nonfinite == "raise":
                        raise FloatingPointError(
                            f"Non-finite gradient for parameter {index} (shape {values.shape}); "
                            "nonfinite='raise'. Use nonfinite='skip' to skip such steps instead."
                        )
                    self.skipped_steps += 1
                    return
        # All or nothing: every parameter's state is checked before any changes
        # (a cheap look first; the full check only finds the message).
        hps = [{k: group[k] for k in self.algorithm.hparams} for group in self.param_groups]
        scalars = ["step"] if self.algorithm.step else []
        scalars += self.algorithm.scalar_state
        index = 0
        for hp, group in zip(hps, self.param_groups, strict=True):
            state_keys = [k for k, fill in self.algorithm.state(hp).items() if fill is not None]
            for p in group["params"]:
                state = self.state.get(index)
                if isinstance(checked[index], _sparse.SparseGradient):
                    self._sparse_mode(p, hp)  # raises where these settings refuse them
                if checked[index] is not None and state:
                    shape = p.shape
                    suspect = False
                    for key in state_keys:
                        if getattr(state.get(key), "shape", None) != shape:
                            suspect = True
                    for key in scalars:
                        if getattr(state.get(key), "shape", None) != ():
                            suspect = True
                    problem = suspect and self._state_problem(hp, state, p, exact_keys=False)
                    if problem:
                        raise ValueError(
                            f"cannot step parameter {index} (shape {p.shape}): {problem}. "
                            "Nothing was changed."
                        )
                index += 1
        index = 0
        for hp, group in zip(hps, self.param_groups, strict=True):
            for p in group["params"]:
                g = checked[index]
                if g is not None:
                    self._update(index, p, -g if group["maximize"] else g, group, hp)
                index += 1

    def _checked_gradient(
        self, index: int, p: np.ndarray, g: Any
    ) -> np.ndarray | _sparse.SparseGradient | None:
        """A dense gradient as :meth:`_checked_grad` checks it, or a sparse one coalesced."""
        name = f"adaptim.numpy.{type(self).__name__}"
        if g is not None and _sparse.is_sparse(g):
            if self.algorithm.sparse is None:
                raise RuntimeError(
                    f"{name} does not support sparse gradients (gradient {index}); use "
                    f"{self.algorithm.sparse_alternative.replace('adaptim.', 'adaptim.numpy.')}."
                )
            if np.iscomplexobj(p):
                raise RuntimeError(
                    f"{name} does not support sparse gradients of complex parameters."
                )
            return _sparse.as_sparse(index, p, g)
        if g is not None and not self.algorithm.dense_gradients:
            raise RuntimeError(
                f"{name} does not support dense gradients (gradient {index}, shape "
                f"{np.shape(g)}); it takes sparse ones: adaptim.numpy.RowSparse(indices, values) "
                "or a SciPy sparse matrix. Consider adaptim.numpy.Adam instead. Nothing was changed."
            )
        return self._checked_grad(index, p, g)

    def _sparse_mode(self, p: np.ndarray, hp: Mapping[str, Any]) -> str:
        if self.state_format is not None:
            raise RuntimeError(
                f"adaptim.numpy.{type(self).__name__}: {self.state_format.describe()} does not "
                "support sparse gradients; use the default state (state_dtype=None, "
                "state_bits=None)."
            )
        assert self.algorithm.sparse is not None  # (refused in _checked_gradient)
        return self.algorithm.sparse(hp)

    @staticmethod
    def _checked_grad(index: int, p: np.ndarray, g: Any) -> np.ndarray | None:
        if g is None:
            return None
        if _sparse.is_sparse(g):
            raise RuntimeError(f"gradient {index}: this optimizer does not take sparse gradients.")
        g = np.asarray(g)
        if g.shape != p.shape:
            raise ValueError(
                f"gradient {index} has shape {g.shape}, but its parameter has shape {p.shape}"
            )
        checked: np.ndarray = g.astype(p.dtype, copy=False)
        return checked

    def _update(
        self,
        index: int,
        p: np.ndarray,
        g: np.ndarray | _sparse.SparseGradient,
        group: Mapping[str, Any],
        hp: dict[str, Any],
    ) -> None:
        algorithm = self.algorithm
        state = self._init_state(index, p, group)
        step = 0.0
        if algorithm.step:
            step = float(state["step"] + _SCALAR_DTYPE(1))  # stored once the update succeeded
        entries = [*algorithm.state(hp), *algorithm.scalar_state]
        if self.state_format is not None:
            assert not isinstance(g, _sparse.SparseGradient)  # (refused by _sparse_mode)
            _lowmem.update_decoded(
                self.state_format, algorithm, p, g, state, entries, step, hp, NUMPY_OPS, index
            )
            if algorithm.step:
                state["step"] = state["step"] + _SCALAR_DTYPE(1)
            return
        if isinstance(g, _sparse.SparseGradient):
            if self._sparse_mode(p, hp) == "rows":
                # The rule is element-wise: on the touched entries alone it is the
                # same arithmetic as the dense update, at the cost of their number.
                tensors = {k: state[k] for k in entries}
                new_p, new_state = algorithm.update(
                    p[g.index], g.values, {k: v[g.index] for k, v in tensors.items()},
                    step=step, xp=NUMPY_OPS, **hp,
                )  # fmt: skip
                p[g.index] = new_p
                for key, value in new_state.items():
                    tensors[key][g.index] = value
                if algorithm.step:
                    state["step"] = state["step"] + _SCALAR_DTYPE(1)
                return
            dense = np.zeros_like(p)
            dense[g.index] = g.values
            g = dense
        views = {k: None if state.get(k) is None else _real_view(state[k]) for k in entries}
        target = _real_view(p)
        new_p, new_state = algorithm.update(
            target, _real_view(g), views, step=step, xp=NUMPY_OPS, **hp
        )
        target[...] = new_p
        if algorithm.step:
            state["step"] = state["step"] + _SCALAR_DTYPE(1)
        for key, value in new_state.items():
            current = views[key]
            if current is None:
                stored = np.array(value, dtype=target.dtype)
                if np.iscomplexobj(p) and stored.shape == target.shape:
                    stored = stored.view(p.dtype).reshape(p.shape)
                state[key] = stored
            elif key in algorithm.scalar_state:
                state[key] = np.asarray(value, dtype=_SCALAR_DTYPE)
            else:
                current[...] = value

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

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the state and hyperparameters, parameters numbered in order (torch's layout)."""
        groups = []
        index = 0
        for group in self.param_groups:
            ids = list(range(index, index + len(group["params"])))
            index += len(ids)
            groups.append(
                {**copy.deepcopy({k: v for k, v in group.items() if k != "params"}), "params": ids}
            )
        return {"state": copy.deepcopy(self.state), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``, checked as the torch front-end checks it.

        Group sizes, the hyperparameters (with construction's messages), the
        algorithm (no other algorithm's hyperparameters or state entries) and
        every state entry's shape and kind are checked before anything changes.
        """
        where = f"Invalid state_dict for adaptim.numpy.{type(self).__name__}"
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{where}: it has {len(saved_groups)} param groups; this optimizer has "
                f"{len(self.param_groups)}."
            )
        own = {*self.algorithm.hparams, *self.defaults, "params", "maximize", "flavor"}
        foreign = {k for a in ALGORITHMS.values() for k in a.hparams} - own
        params = self.params
        new_state: dict[int, dict[str, Any]] = {}
        index = 0
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            at = f"{where}, param_groups[{number}]"
            merged = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            owner = f"adaptim.numpy.{type(self).__name__}"
            check_loaded_group(
                at,
                owner,
                saved,
                len(group["params"]),
                foreign,
                functools.partial(self._validate, merged),
            )
            hp = {k: merged[k] for k in self.algorithm.hparams}
            for saved_id in saved["params"]:
                p = params[index]
                entries = state_dict["state"].get(saved_id)
                if entries is not None:
                    arrays = {k: _lowmem.as_stored(v) for k, v in entries.items() if v is not None}
                    problem = self._state_problem(hp, arrays, p, exact_keys=True)
                    if problem:
                        raise ValueError(
                            f"{at}, parameter {index} (state id {saved_id!r}, shape "
                            f"{p.shape}): {problem}."
                        )
                    # (floating entries in the parameter's dtype, as torch loads them;
                    # encoded entries and block maxima as saved, then in this format)
                    new_state[index] = {
                        k: a.astype(p.dtype)
                        if a.ndim
                        and not (_lowmem.is_encoded(a) or k.endswith(_lowmem.ABSMAX_SUFFIX))
                        else a
                        for k, a in arrays.items()
                    }
                    _lowmem.decoded_or_plain(
                        self.state_format, new_state[index], self._elementwise_keys(arrays), p
                    )
                index += 1
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self.state = new_state


def _front_end(algorithm: Algorithm, class_name: str) -> type[Optimizer]:
    doc = (
        f"{algorithm.title}.\n\n"
        f"NumPy twin of :class:`adaptim.{class_name}`: the same hyperparameters "
        f"({', '.join(algorithm.hparams)}, maximize, nonfinite"
        + (", flavor" if flavors.has_flavors(algorithm.name) else "")
        + ") with the same defaults.\n\n"
        + (_lowmem.CLASS_DOC if algorithm.name in _lowmem.MEMORY_LIGHT else "")
        + (algorithm.update.__doc__ or "")
    )
    return type(
        class_name, (Optimizer,), {"algorithm": algorithm, "__doc__": doc, "__module__": __name__}
    )


OPTIMIZERS: dict[str, type[Optimizer]] = {
    name: _front_end(algorithm, algorithm.class_name) for name, algorithm in ALGORITHMS.items()
}
#: The optimizers that take ``state_dtype`` and ``state_bits`` (as in the torch front-end).
MEMORY_LIGHT_OPTIMIZERS: dict[str, type[Optimizer]] = {
    name: cls for name, cls in OPTIMIZERS.items() if name in _lowmem.MEMORY_LIGHT
}

SGD = OPTIMIZERS["sgd"]
Adagrad = OPTIMIZERS["adagrad"]
RMSprop = OPTIMIZERS["rmsprop"]
Adadelta = OPTIMIZERS["adadelta"]
Adam = OPTIMIZERS["adam"]
AdamW = OPTIMIZERS["adamw"]
Adamax = OPTIMIZERS["adamax"]
NAdam = OPTIMIZERS["nadam"]
RAdam = OPTIMIZERS["radam"]
LARS = OPTIMIZERS["lars"]
LAMB = OPTIMIZERS["lamb"]
# -- issue 16 (twins)
Rprop = OPTIMIZERS["rprop"]
ASGD = OPTIMIZERS["asgd"]
Adafactor = OPTIMIZERS["adafactor"]

__all__ = [
    "LAMB",
    "LARS",
    # learning-rate-free optimizers (issue 14)
    "LR_FREE_OPTIMIZERS",
    "MEMORY_LIGHT_OPTIMIZERS",
    "NUMPY_OPS",
    "OPTIMIZERS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptSGD",
    "DoG",
    "LDoG",
    "NAdam",
    "Optimizer",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
]

# -- learning-rate-free optimizers (issue 14): rules with group-wide scalars ---------
from adaptim.algorithms import LR_FREE  # noqa: E402
from adaptim.numpy._group import front_end as _group_front_end  # noqa: E402

#: The learning-rate-free optimizers (kept apart from OPTIMIZERS, as in adaptim.algorithms).
LR_FREE_OPTIMIZERS: dict[str, type[Optimizer]] = {
    name: _group_front_end(a) for name, a in LR_FREE.items()
}
ScheduleFreeAdamW = LR_FREE_OPTIMIZERS["schedulefree-adamw"]
ScheduleFreeSGD = LR_FREE_OPTIMIZERS["schedulefree-sgd"]
Prodigy = LR_FREE_OPTIMIZERS["prodigy"]
DAdaptAdam = LR_FREE_OPTIMIZERS["dadapt-adam"]
DAdaptSGD = LR_FREE_OPTIMIZERS["dadapt-sgd"]
DAdaptAdaGrad = LR_FREE_OPTIMIZERS["dadapt-adagrad"]
DoG = LR_FREE_OPTIMIZERS["dog"]
LDoG = LR_FREE_OPTIMIZERS["ldog"]
# hypergradient descent (issue 14)
SGDHD = LR_FREE_OPTIMIZERS["sgd-hd"]
AdamHD = LR_FREE_OPTIMIZERS["adam-hd"]
__all__ += ["SGDHD", "AdamHD"]

# -- issue 16 (twins)
__all__ += ["ASGD", "Adafactor", "Rprop"]

# -- the optax family (issue 16 point 2) ------------------------------------------------
Lion = OPTIMIZERS["lion"]
AdaBelief = OPTIMIZERS["adabelief"]
Yogi = OPTIMIZERS["yogi"]
Adan = OPTIMIZERS["adan"]
NovoGrad = OPTIMIZERS["novograd"]
SM3 = OPTIMIZERS["sm3"]

__all__ += ["SM3", "AdaBelief", "Adan", "Lion", "NovoGrad", "Yogi"]

# -- torch.optim's Muon and SparseAdam (issue 16 point 1); SparseAdam's sparse
# gradients are RowSparse pairs or SciPy sparse matrices (adaptim.numpy._sparse).
from adaptim.algorithms import MUON, SPARSE_ADAM  # noqa: E402

#: Rules that take only some inputs (Muon: matrices; SparseAdam: sparse gradients),
#: kept apart from OPTIMIZERS.
RESTRICTED_OPTIMIZERS: dict[str, type[Optimizer]] = {
    a.name: _front_end(a, a.class_name) for a in (MUON, SPARSE_ADAM)
}
Muon = RESTRICTED_OPTIMIZERS["muon"]
SparseAdam = RESTRICTED_OPTIMIZERS["sparseadam"]
__all__ += ["RESTRICTED_OPTIMIZERS", "Muon", "RowSparse", "SparseAdam"]

# -- Mechanic (issue 14): a wrapper that learns the scale of any of these optimizers
from adaptim.numpy.mechanic import Mechanic  # noqa: E402

__all__ += ["Mechanic"]

# DoG's averaging of the iterates (issue 14)
from adaptim.numpy.averaging import PolynomialAverager  # noqa: E402

__all__ += ["PolynomialAverager"]
