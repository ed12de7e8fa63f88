"""The step of a NumPy :class:`~adaptim.numpy.Optimizer`: its checks and the per-parameter rule.

:meth:`StepLayer.step` checks every gradient and every state first (all or
nothing), then runs the algorithm's rule on each parameter; sparse gradients
(:mod:`adaptim.numpy._sparse`) update the rows they touch where the rule allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adaptim.numpy import _lowmem, _sparse
from adaptim.numpy._ops import _SCALAR_DTYPE, NUMPY_OPS, _real_view
from adaptim.numpy._state_dict import StateDictLayer


class StepLayer(StateDictLayer):
    """``step``, the checks of its gradients, and the per-parameter update."""

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
        if g.dtype.kind not in "biufc" or (g.dtype.kind == "c" and p.dtype.kind != "c"):
            # astype would drop an imaginary part with only a ComplexWarning, or fail
            # with NumPy's own message that names neither the gradient nor the rule.
            raise TypeError(
                f"gradient {index} has dtype {g.dtype}, but its parameter has dtype {p.dtype}; "
                "allowed: a real (bool, integer or floating) gradient"
                + (" or a complex one" if p.dtype.kind == "c" else "")
                + ", converted to the parameter's dtype"
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
