"""Mechanic for the NumPy front-end: learns the scale of any :class:`adaptim.numpy.Optimizer`'s updates.

The same method as :class:`adaptim.Mechanic` (equations and the references'
differences: :mod:`adaptim.torch.mechanic`); the scale learner is
:mod:`adaptim.algorithms.mechanic`, shared by both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adaptim.algorithms import mechanic as rule
from adaptim.algorithms.mechanic import SCALARS
from adaptim.numpy import NUMPY_OPS, Optimizer


class Mechanic:
    r"""Wraps ``base``, an :class:`adaptim.numpy.Optimizer`, and learns the scale of its updates.

    ``step(grads)`` takes the base's gradients (one per parameter, ``None``
    to leave one alone), lets the base step, then moves each parameter to
    :math:`x_{\mathrm{ref}} - s\,D` with the learned scale :attr:`scale`.
    ``param_groups`` are the base's, so changing ``lr`` there drives it.
    Arguments and defaults are those of :class:`adaptim.Mechanic`; in float64 the
    two front-ends agree to rounding (``tests/test_mechanic.py``).

    Example::

        optimizer = adaptim.numpy.Mechanic(adaptim.numpy.Adam([w, b], lr=1e-3))
        optimizer.step([grad_w, grad_b])
    """

    def __init__(
        self,
        base: Optimizer,
        weight_decay: float = 1e-2,
        eps: float = 1e-8,
        s_init: float = 1e-8,
        num_betas: int = 6,
        store_delta: bool = True,
    ) -> None:
        if not isinstance(base, Optimizer):
            raise TypeError(
                f"Invalid base: {base!r}; expected an adaptim.numpy optimizer instance "
                "(Mechanic(adaptim.numpy.Adam(params)))."
            )
        self.hparams = rule.checked_hyperparameters(
            weight_decay=weight_decay,
            eps=eps,
            s_init=s_init,
            num_betas=num_betas,
            store_delta=store_delta,
        )
        self.base = base
        #: Per parameter index: ``x_ref`` and, with ``store_delta``, ``delta`` (D).
        self.state: dict[int, dict[str, np.ndarray]] = {}
        #: ``step`` (int) and the per-β arrays of ``s``, ``r``, ``m``, ``v`` (empty before step 1).
        self.mechanic_state: dict[str, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @property
    def params(self) -> list[np.ndarray]:
        return self.base.params

    @property
    def scale(self) -> float:
        r"""The current scale :math:`s = \sum_i s_i` (``s_init · num_betas`` before the first step)."""
        if not self.mechanic_state:
            return float(self.hparams["s_init"] * self.hparams["num_betas"])
        return float(self.mechanic_state["s"].sum())

    def effective_lr(self) -> list[np.ndarray | None]:
        """The base's per-coordinate effective lr times :attr:`scale`."""
        scale = self.scale
        return [None if rate is None else rate * scale for rate in self.base.effective_lr()]

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        """One base step, rescaled."""
        params = self.base.params
        if len(grads) != len(params):
            raise ValueError(f"step() got {len(grads)} gradients for {len(params)} parameters")
        active = [i for i, g in enumerate(grads) if g is not None]
        if not active:
            return
        xs = [params[i] for i in active]
        gs = [np.asarray(grads[i], dtype=params[i].dtype) for i in active]
        if not self.mechanic_state:
            self._init_scalars(xs)
        for i in active:
            if "x_ref" not in self.state.setdefault(i, {}):
                self.state[i]["x_ref"] = params[i].copy()
        hp, scalars = self.hparams, self.mechanic_state
        eps = hp["eps"]
        s_sum = scalars["s"].sum()
        dtype = s_sum.dtype
        grad_norm = np.sqrt(sum(np.vdot(g, g) for g in gs)).astype(dtype)
        param_norm = np.sqrt(sum(np.vdot(x, x) for x in xs)).astype(dtype)
        decay = rule.decay_factor(hp["weight_decay"], s_sum, grad_norm, param_norm, eps)
        before = [x.copy() for x in xs]
        descent = [self._descent(i, x, s_sum) for i, x in zip(active, before, strict=True)]
        h = sum(
            (
                np.vdot(g + decay.astype(g.dtype) * x, d).astype(dtype)
                for g, x, d in zip(gs, before, descent, strict=True)
            ),
            start=np.zeros((), dtype=dtype),
        )
        skipped = getattr(self.base, "skipped_steps", 0)
        self.base.step(grads)
        if getattr(self.base, "skipped_steps", 0) != skipped:
            return  # a non-finite step the base skipped (nonfinite="skip"): h is not finite
        beta = np.array(rule.betas(hp["num_betas"]), dtype=dtype)
        learned = rule.learn_scales(scalars, h, beta, s_init=hp["s_init"], eps=eps, xp=NUMPY_OPS)
        scalars.update(step=scalars["step"] + 1, **learned)
        s_new = learned["s"].sum()
        for i, x, d in zip(active, before, descent, strict=True):
            p = params[i]
            if hp["store_delta"]:
                d -= p - x  # the stored D, updated in place: D_{t+1} = D_t - u
            else:
                d = d - (p - x)
            p[...] = self.state[i]["x_ref"] - s_new.astype(p.dtype) * d

    def _descent(self, index: int, x: np.ndarray, s_sum: np.ndarray) -> np.ndarray:
        state = self.state[index]
        if self.hparams["store_delta"]:
            if "delta" not in state:
                state["delta"] = np.zeros_like(x)
            return state["delta"]
        recomputed: np.ndarray = (state["x_ref"] - x) / (s_sum + self.hparams["eps"])
        return recomputed

    def _init_scalars(self, params: list[np.ndarray]) -> None:
        # optax's dtype: the lowest-precision floating dtype among the parameters
        dtype = min((p.dtype for p in params), key=lambda d: d.itemsize)
        n = self.hparams["num_betas"]
        self.mechanic_state = {
            "step": 0,
            "s": np.full(n, self.hparams["s_init"], dtype=dtype),
            **{k: np.zeros(n, dtype=dtype) for k in ("r", "m", "v")},
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"base": base.state_dict(), "state": {index: {"x_ref", ...}}, "mechanic": ..., "hparams": ...}``."""
        return {
            "base": self.base.state_dict(),
            "state": {i: {k: v.copy() for k, v in s.items()} for i, s in self.state.items()},
            "mechanic": {
                k: v.copy() if isinstance(v, np.ndarray) else v
                for k, v in self.mechanic_state.items()
            },
            "hparams": dict(self.hparams),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state_dict, Mapping) or not {"base", "state", "mechanic"} <= set(
            state_dict
        ):
            raise ValueError(
                "Invalid state_dict for adaptim.numpy.Mechanic: expected a mapping with 'base', "
                "'state' and 'mechanic', as Mechanic.state_dict() returns."
            )
        params = self.base.params
        unknown = [i for i in state_dict["state"] if not 0 <= i < len(params)]
        if unknown:
            raise ValueError(
                f"Invalid state_dict: parameter indices {unknown} do not exist; this optimizer "
                f"has {len(params)} parameters."
            )
        self.base.load_state_dict(state_dict["base"])
        self.state = {
            i: {k: np.array(v, dtype=params[i].dtype) for k, v in saved.items()}
            for i, saved in state_dict["state"].items()
        }
        scalars = dict(state_dict["mechanic"])
        for key in SCALARS:
            if key in scalars:
                scalars[key] = np.array(scalars[key])
        self.mechanic_state = scalars
