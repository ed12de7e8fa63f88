r"""Mechanic (Cutkosky, Defazio & Mehta 2023): learns the scale of any optimizer's updates.

Cutkosky, Defazio & Mehta, "Mechanic: A Learning Rate Tuner", NeurIPS 2023
(arXiv:2306.00144), Algorithm 1, in the form of optax's
``optax.contrib.mechanize`` (optax 0.2.8), which its authors wrote and which
:class:`Mechanic` matches to rounding.

The wrapped (base) optimizer proposes updates :math:`u_t`; Mechanic keeps the
point :math:`x_{\mathrm{ref}}` where training started and moves the
parameters to

.. math::

    x_{t+1} = x_{\mathrm{ref}} - s_{t+1}\, D_{t+1}, \qquad
    D_{t+1} = D_t - u_t, \qquad
    D_t = \frac{x_{\mathrm{ref}} - x_t}{s_t + \epsilon},

so :math:`D` accumulates the base optimizer's descent and the scale
:math:`s = \sum_i s_i` (one :math:`s_i` per :math:`\beta_i = 1 - 10^{-i}`,
:math:`i = 1 \dots n`: 0.9 ... 0.999999 for the default ``num_betas=6``) is
learned by a parameter-free online learner. With the gradient :math:`g_t`
at :math:`x_t` and a weight decay :math:`\lambda` on the scale,

.. math::

    \tilde g_t &= g_t + \lambda\, s_t\, \frac{\lVert g_t\rVert}{\lVert x_t\rVert + \epsilon}\, x_t \\
    h_t &= \langle \tilde g_t, D_t \rangle \\
    m_{t,i} &= \max(\beta_i\, m_{t-1,i},\; |h_t| + \epsilon) \\
    v_{t,i} &= \beta_i^2\, v_{t-1,i} + h_t^2 \\
    r_{t,i} &= \beta_i\, r_{t-1,i} + \operatorname{clip}(h_t, -m_{t-1,i}, m_{t-1,i})\, s_{t,i} \\
    W_{t,i} &= \frac{s_{\mathrm{init}}}{n}\, m_{t,i} + \max(0, r_{t,i}) \\
    s_{t+1,i} &= \frac{W_{t,i}}{\sqrt{v_{t,i}} + \epsilon}

(norms and inner products over all parameters; :math:`s_{1,i} = s_{\mathrm{init}}`,
:math:`m_0 = v_0 = r_0 = 0`). :math:`D` is the paper's :math:`-\Delta`, so
:math:`h` and the reward enter with optax's signs. The base optimizer sees the
raw gradient :math:`g_t` at :math:`x_t`; only the scale learner sees the decay term.

**Where the references differ.** optax recomputes :math:`D_t` from the
parameters each step with the :math:`+\epsilon` shown above, so :math:`D` is
not stored; in float32 this stalls while the step :math:`s\,u` is below the
parameters' resolution, and from ``s_init = 1e-8`` the parameters never move.
``store_delta=False`` does the same and matches ``optax.contrib.mechanize`` to
rounding. The default ``store_delta=True`` keeps :math:`D` in the state, as
``mechanic-pytorch`` 0.0.1 (the authors' torch package) does by default:
:math:`D_{t+1} = D_t - u_t` exactly (no :math:`s/(s+\epsilon)` shrink), one more
tensor per parameter, and it moves from the first step in any precision; as
:math:`\epsilon \to 0` the two forms agree. Either way the base optimizer
writes :math:`x_t + u_t` into the parameters and :math:`u_t` is read back as
the difference, exact to the parameters' ulp only (in float32, a relative
error of ``ulp(x)/|u|`` per step in what :math:`D` accumulates). Both clip :math:`h_t` in the reward
as optax does; ``mechanic-pytorch`` does not, starts its scales at zero and
takes :math:`\lVert x\rVert` after the base step, so its trajectories differ.
The default ``s_init = 1e-8`` is the paper's and ``mechanic-pytorch``'s;
optax's is 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from adaptim.algorithms import mechanic as rule
from adaptim.algorithms.mechanic import SCALARS
from adaptim.torch import _group_fast, _hooks
from adaptim.torch._base import TORCH_OPS
from adaptim.torch._state_rounding import another_dtype_problem, cannot_step


class Mechanic(torch.optim.Optimizer):
    r"""Wraps ``base``, any ``torch.optim.Optimizer``, and learns the scale of its updates.

    ``param_groups`` *are* the base optimizer's (the same list), so an LR
    scheduler or a change of ``lr`` on the wrapper drives the base; as the
    paper advises, keep the base's schedule and set its peak lr to a constant
    such as 1 (or the base's usual default): Mechanic learns the scale.
    :attr:`scale` is the current :math:`s = \sum_i s_i`. A parameter without
    a gradient is left untouched (as torch.optim does); it joins when it
    has one. A step the base skips (``nonfinite="skip"``) is skipped whole:
    scale and parameters stay as they were. The equations, and how they differ between optax and
    ``mechanic-pytorch``, are in :mod:`adaptim.torch.mechanic`.

    Example::

        optimizer = adaptim.Mechanic(adaptim.Adam(model.parameters(), lr=1e-3))
        loss(model).backward()
        optimizer.step()
        optimizer.zero_grad()

    Args:
        base: the optimizer whose updates are scaled (an instance, built on the parameters).
        weight_decay: :math:`\lambda`, the decay on the scale (not on the weights).
        eps: :math:`\epsilon` of the equations.
        s_init: the initial scale of each :math:`s_i` (and the wealth floor).
        num_betas: :math:`n`, the number of :math:`\beta_i = 1 - 10^{-i}`.
        store_delta: keep :math:`D` in the state (``delta``, one more tensor per
            parameter), as ``mechanic-pytorch`` does by default; ``False`` recomputes it
            from the parameters as optax does, which matches ``optax.contrib.mechanize``
            to rounding but stalls in float32 while :math:`s\,u` is below the
            parameters' resolution (from ``s_init = 1e-8`` it never moves them).
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        weight_decay: float = 1e-2,
        eps: float = 1e-8,
        s_init: float = 1e-8,
        num_betas: int = 6,
        store_delta: bool = True,
    ) -> None:
        if not isinstance(base, torch.optim.Optimizer):
            hint = (
                " (pass an instance built on the parameters: Mechanic(adaptim.Adam(params)))"
                if isinstance(base, type)
                else ""
            )
            raise TypeError(
                f"Invalid base: {base!r}; expected a torch.optim.Optimizer instance{hint}."
            )
        if isinstance(base, Mechanic):
            raise TypeError("Invalid base: a Mechanic optimizer; wrap the inner optimizer once.")
        hparams = rule.checked_hyperparameters(
            weight_decay=weight_decay,
            eps=eps,
            s_init=s_init,
            num_betas=num_betas,
            store_delta=store_delta,
        )
        self.hparams: dict[str, Any] = hparams
        params = [p for group in base.param_groups for p in group["params"]]
        super().__init__(params, dict(self.hparams))
        self.base = base
        # one list for both: a schedule or lr change on the wrapper reaches the base
        self.param_groups = base.param_groups
        #: ``step`` (int) and the per-β tensors of :data:`SCALARS` (empty before the first step)
        self.mechanic_state: dict[str, Any] = {}

    zero_grad = _hooks.zero_grad

    def __getstate__(self) -> dict[str, Any]:
        # torch keeps only defaults, state and param_groups; a pickle or deepcopy of the
        # wrapper needs its base (whose param_groups list it shares) and its scalars too.
        kept = {key: self.__dict__[key] for key in ("base", "hparams", "mechanic_state")}
        return {**super().__getstate__(), **kept}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (and so to this one)."""
        if not hasattr(self, "base"):  # torch.optim.Optimizer.__init__'s own call
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)

    @property
    def scale(self) -> float:
        r"""The current scale :math:`s = \sum_i s_i` (``s_init · num_betas`` before the first step)."""
        if not self.mechanic_state:
            return float(self.hparams["s_init"] * self.hparams["num_betas"])
        return float(self.mechanic_state["s"].sum())

    def effective_lr(self) -> list[torch.Tensor | None]:
        """The base's per-coordinate effective lr times :attr:`scale`, if the base has one."""
        rates = getattr(self.base, "effective_lr", None)
        if not callable(rates):
            raise AttributeError(
                f"{type(self.base).__name__} has no effective_lr(), so Mechanic has none either."
            )
        scale = self.scale
        return [None if rate is None else rate * scale for rate in rates()]

    def fused_status(self) -> list[str]:
        """The base's :meth:`fused_status` (Mechanic's own passes are ``torch._foreach_*`` kernels)."""
        status = getattr(self.base, "fused_status", None)
        if not callable(status):
            raise AttributeError(
                f"{type(self.base).__name__} has no fused_status(), so Mechanic has none either."
            )
        described: list[str] = status()
        return described

    @_hooks.hooked_step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One base step, rescaled: see :mod:`adaptim.torch.mechanic` for the equations."""
        if torch.compiler.is_compiling():
            return self._step_untraced(closure)
        return self._step_now(closure)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _step_untraced(self, closure: Callable[[], Any] | None) -> Any:
        """The step under ``torch.compile``: eager, outside the graph (one graph break).

        The scale learner's state is a handful of numbers updated with
        host-side maxima every step, and the base optimizer's step runs
        in between; traced, each step would add a graph. Eager, the caller's
        graphs stay the same and the result is the eager step's.
        """
        return self._step_now(closure)

    @torch.no_grad()
    def _step_now(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("Mechanic does not support sparse gradients.")
        self._refuse_state_of_another_dtype()
        if not self.mechanic_state:
            self._init_scalars(params)
        for p in params:
            if "x_ref" not in self.state[p]:
                self.state[p]["x_ref"] = p.detach().clone()
        scalars = self.mechanic_state
        eps, weight_decay = self.hparams["eps"], self.hparams["weight_decay"]
        s_sum = scalars["s"].sum()
        dtype, device = s_sum.dtype, s_sum.device
        grads = [p.grad for p in params]
        grad_norm = _global_norm(grads, dtype, device)
        param_norm = _global_norm(params, dtype, device)
        decay = rule.decay_factor(weight_decay, s_sum, grad_norm, param_norm, eps)
        # Multi-tensor kernels over runs of whole tensors (the same per-element
        # arithmetic as a loop, temporaries small enough to stay cached).
        runs = _group_fast._chunks(params)
        before = [p.detach().clone() for p in params]
        descent = self._descents(params, before, s_sum, runs)
        # h = <g + decay·x, D> as <g, D> + decay·<x, D>: two reads, no temporary
        h = _inner(grads, descent, dtype, device)
        if weight_decay != 0:
            h = h + decay * _inner(before, descent, dtype, device)
        skipped = getattr(self.base, "skipped_steps", 0)
        self.base.step()
        if getattr(self.base, "skipped_steps", 0) != skipped:
            # the base refused a non-finite gradient (nonfinite="skip"): h is not
            # finite either, and learning from it would make the scale NaN for good
            return loss
        # (in the lowest-precision dtype of the parameters: exact in every one of them)
        s_new = self._update_scalars(h).sum()
        refs = [self.state[p]["x_ref"] for p in params]
        for run in runs:
            moved = torch._foreach_sub(params[run], before[run])  # u = (x + u) - x
            if self.hparams["store_delta"]:
                torch._foreach_sub_(descent[run], moved)  # the stored D: D_{t+1} = D_t - u
                scaled = torch._foreach_mul(descent[run], s_new)
            else:
                scaled = torch._foreach_sub(descent[run], moved)
                torch._foreach_mul_(scaled, s_new)
            torch._foreach_copy_(params[run], refs[run])
            torch._foreach_sub_(params[run], scaled)  # x_ref - s·D
        return loss

    def _refuse_state_of_another_dtype(self) -> None:
        """Refuse ``x_ref``/``delta`` left in another dtype by ``model.to()``, before any change.

        The inner products :math:`\\langle g, D\\rangle` need the parameter's
        dtype; found there, the refusal came from ATen without the remedy.
        """
        for index, group in enumerate(self.param_groups):
            for position, p in enumerate(group["params"]):
                state = self.state.get(p) if p.grad is not None else None
                other = {k: v.dtype for k, v in (state or {}).items() if v.dtype != p.dtype}
                if other:
                    problem = another_dtype_problem(
                        other, p.dtype, "its inner products take the parameter's dtype"
                    )
                    raise cannot_step("adaptim.Mechanic", index, position, p, problem)

    def _descents(
        self,
        params: list[torch.Tensor],
        before: list[torch.Tensor],
        s_sum: torch.Tensor,
        runs: list[slice],
    ) -> list[torch.Tensor]:
        """:math:`D_t` of every parameter: stored, or optax's ``(x_ref - x_t) / (s_t + eps)``."""
        if self.hparams["store_delta"]:
            return [self._descent(p, x, s_sum) for p, x in zip(params, before, strict=True)]
        refs = [self.state[p]["x_ref"] for p in params]
        descent: list[torch.Tensor] = []
        for run in runs:
            recomputed = torch._foreach_sub(refs[run], before[run])
            torch._foreach_div_(recomputed, s_sum + self.hparams["eps"])
            descent += recomputed
        return descent

    def _descent(self, p: torch.Tensor, x: torch.Tensor, s_sum: torch.Tensor) -> torch.Tensor:
        """:math:`D_t`: stored, or optax's ``(x_ref - x_t) / (s_t + eps)``."""
        state = self.state[p]
        if self.hparams["store_delta"]:
            if "delta" not in state:
                state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            delta: torch.Tensor = state["delta"]
            return delta
        recomputed: torch.Tensor = (state["x_ref"] - x) / (s_sum + self.hparams["eps"])
        return recomputed

    def _init_scalars(self, params: list[torch.Tensor]) -> None:
        # optax's dtype: the lowest-precision floating dtype among the parameters
        dtype = min((p.dtype for p in params), key=lambda d: torch.finfo(d).bits)
        device, n = params[0].device, self.hparams["num_betas"]
        self.mechanic_state = {
            "step": 0,
            "s": torch.full((n,), self.hparams["s_init"], dtype=dtype, device=device),
            **{k: torch.zeros(n, dtype=dtype, device=device) for k in ("r", "m", "v")},
        }

    def _update_scalars(self, h: torch.Tensor) -> torch.Tensor:
        state = self.mechanic_state
        s = state["s"]
        beta = torch.tensor(rule.betas(self.hparams["num_betas"]), dtype=s.dtype, device=s.device)
        learned = rule.learn_scales(
            state, h, beta, s_init=self.hparams["s_init"], eps=self.hparams["eps"], xp=TORCH_OPS
        )
        state.update(step=state["step"] + 1, **learned)
        scales: torch.Tensor = learned["s"]
        return scales

    def state_dict(self) -> dict[str, Any]:
        """``{"base": base.state_dict(), "state": {index: {"x_ref"}}, "mechanic": scalars, ...}``.

        ``param_groups`` is the base's, ``hparams`` Mechanic's own settings.
        """
        base = self.base.state_dict()
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return {
            "state": {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index},
            "param_groups": base["param_groups"],
            "base": base,
            "mechanic": dict(self.mechanic_state),
            "hparams": dict(self.hparams),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (base state, references and scales)."""
        if not isinstance(state_dict, dict) or not {"base", "state", "mechanic"} <= set(state_dict):
            raise ValueError(
                "Invalid state_dict for adaptim.Mechanic: expected a dict with 'base', 'state' "
                "and 'mechanic', as Mechanic.state_dict() returns."
            )
        params = [p for g in self.param_groups for p in g["params"]]
        unknown = [i for i in state_dict["state"] if not 0 <= i < len(params)]
        if unknown:
            raise ValueError(
                f"Invalid state_dict: parameter indices {unknown} do not exist; this optimizer "
                f"has {len(params)} parameters."
            )
        self.base.load_state_dict(state_dict["base"])
        self.state.clear()
        for i, saved in state_dict["state"].items():
            p = params[i]
            self.state[p] = {k: v.to(p.device, p.dtype).clone() for k, v in saved.items()}
        scalars = dict(state_dict["mechanic"])
        if scalars and params:
            for key in SCALARS:
                scalars[key] = scalars[key].to(params[0].device).clone()
        self.mechanic_state = scalars


def _inner(
    a: list[torch.Tensor], b: list[torch.Tensor], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:math:`\\sum_i \\langle a_i, b_i \\rangle` over all tensors (each in its dtype, summed in ``dtype``)."""
    pairs = zip(a, b, strict=True)
    return torch.stack(
        [torch.vdot(x.flatten(), y.flatten()).to(device, dtype) for x, y in pairs]
    ).sum()


def _global_norm(
    tensors: list[torch.Tensor], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    squares = [torch.vdot(t.flatten(), t.flatten()).to(device, dtype) for t in tensors]
    return torch.stack(squares).sum().sqrt()
