"""Adafactor: second moments factored into row and column statistics (sublinear memory)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import (
    as_float,
    check_bool,
    check_lr,
    check_range,
    check_weight_decay,
)


def _op(xp: ArrayOps, name: str) -> Callable[..., Array]:
    """A reduction of ``xp`` that element-wise backends (the recorder) lack."""
    function: Callable[..., Array] | None = getattr(xp, name)
    if function is None:
        raise TypeError(f"the {xp.name!r} array backend has no {name}()")
    return function


def second_moment(
    xp: ArrayOps,
    state: dict[str, Array],
    g: Array,
    weight: float,
    eps1: float,
    eps1_in_square: bool,
) -> tuple[Array, dict[str, Array]]:
    r"""The estimate :math:`\hat V_t` of :math:`E[g^2]` and the new state.

    For a matrix (and each trailing matrix of a higher-rank tensor),
    :math:`R_t` = ``row_var`` and :math:`C_t` = ``col_var`` are moving averages
    of the row and column means of :math:`g^2`, and
    :math:`\hat V_t = R_t C_t / \operatorname{mean}(R_t)`, their rank-1 outer
    product. Vectors and scalars keep the full average ``variance``. The
    first step (``weight`` = 1) starts from the new means, as torch's lerp
    from zeros does. ``eps1_in_square`` adds :math:`\epsilon_1` to
    :math:`g^2` (the paper's :math:`G_t^2 + \epsilon_1 1_n 1_m^\top`, whose
    row and column means are the means of :math:`g^2` plus :math:`\epsilon_1`);
    otherwise (torch) the mean of :math:`R_t` is floored at :math:`\epsilon_1`.
    """
    mean_square = _op(xp, "mean_square")
    if g.ndim > 1:
        row_mean, col_mean = mean_square(g, -1), mean_square(g, -2)
        if eps1_in_square:  # (+ 0.0 leaves the non-negative means as they are)
            row_mean, col_mean = row_mean + eps1, col_mean + eps1
        old_row, old_col = state["row_var"], state["col_var"]
        row_var = row_mean if old_row is None else xp.lerp(old_row, row_mean, weight)
        col_var = col_mean if old_col is None else xp.lerp(old_col, col_mean, weight)
        scale = _op(xp, "mean")(row_var, -2)
        if not eps1_in_square:
            scale = xp.clip(scale, eps1, math.inf)
        return (row_var @ col_var) / scale, {"row_var": row_var, "col_var": col_var}
    square = g * g + eps1 if eps1_in_square else g * g
    old = state["variance"]
    variance = square if old is None else xp.lerp(old, square, weight)
    return variance, {"variance": variance}


def _at_least(xp: ArrayOps, x: Any, low: float) -> Any:
    """``max(low, x)``: on the host for a float (torch's float64 arithmetic), else ``clip``."""
    return max(low, x) if isinstance(x, float) else xp.clip(x, low, math.inf)


def relative_step(xp: ArrayOps, p: Array, *, step: float, lr: float, eps2: float) -> Any:
    r""":math:`\alpha_t = \max(\epsilon_2, \operatorname{RMS}(\theta))\,\rho_t` with
    :math:`\rho_t = \min(\gamma, 1/\sqrt t)`.

    Eagerly the RMS is read on the host and the arithmetic is torch's float64;
    under ``torch.compile`` (``xp.traced``) the scalars stay 0-d arrays, so no
    host read breaks the graph; the engine's recorder replays the host
    arithmetic per tensor.
    """
    rms = _op(xp, "rms")(p, 1.0)
    if xp.traced:
        return xp.clip(rms, eps2, math.inf) * xp.clip(step**-0.5, 0.0, lr)
    return _at_least(xp, rms, eps2) * min(lr, 1 / step**0.5)


def adafactor_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    beta2_decay: float,
    eps: tuple[float | None, float],
    d: float,
    weight_decay: float,
    eps1_in_square: bool,
    rms_after_decay: bool,
) -> UpdateResult:
    r"""One Adafactor step, torch's variant by default (Shazeer & Stern 2018, "Adafactor: Adaptive
    Learning Rates with Sublinear Memory Cost", Algorithms 4 and 5 with Section 7's schedule;
    no first moment).

    .. math::

        \hat\beta_{2,t} &= 1 - t^{c}, \qquad
        \rho_t = \min(\gamma,\ 1/\sqrt t), \qquad
        \alpha_t = \max(\epsilon_2,\ \operatorname{RMS}(\theta_{t-1}))\,\rho_t \\
        \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1} \\
        R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\operatorname{mean}_{\text{cols}}(g_t^2),
        \quad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\operatorname{mean}_{\text{rows}}(g_t^2) \\
        \hat V_t &= R_t C_t / \max(\operatorname{mean}(R_t), \epsilon_1)
            \quad\text{(matrices; vectors: } \hat V_t = \hat\beta_{2,t}\hat V_{t-1}
            + (1-\hat\beta_{2,t}) g_t^2) \\
        U_t &= g_t / \sqrt{\max(\hat V_t, \epsilon_1^2)} \\
        \theta_t &= \theta_{t-1} - \frac{\alpha_t}{\max(1,\ \operatorname{RMS}(U_t)/d)}\, U_t

    with ``beta2_decay`` :math:`c` (-0.8), ``eps`` = :math:`(\epsilon_1, \epsilon_2)`
    (``None`` for :math:`\epsilon_1` means the dtype's machine epsilon; 1e-3),
    clipping threshold ``d`` (1) and decoupled weight decay :math:`\lambda`
    (applied after :math:`\alpha_t` is measured; ``rms_after_decay`` swaps the two).
    Tensors of rank > 2 are factored over their last two axes. State: ``step``
    and ``row_var``/``col_var`` (shapes ``(..., R, 1)`` and ``(..., 1, C)``) or
    ``variance`` for vectors and scalars: about :math:`R + C` numbers for an
    :math:`R \times C` matrix instead of Adam's :math:`2RC`.

    Where frameworks differ (see :mod:`adaptim.flavors`):

    * ``torch`` (the default; ``torch.optim.Adafactor``): the equations
      above. ``lr`` is the cap of the relative step :math:`\rho_t`, and the
      step is relative: :math:`\alpha_t` scales with the parameter's RMS
      (the paper's "parameter scaling", always on). :math:`\epsilon_1`
      (the dtype's machine epsilon) is no offset: :math:`\hat V` is floored
      at :math:`\epsilon_1^2` and :math:`\operatorname{mean}(R_t)` at
      :math:`\epsilon_1`. Weight decay comes after :math:`\alpha_t` has
      measured :math:`\operatorname{RMS}(\theta_{t-1})`.
    * ``paper`` (Shazeer & Stern 2018, Algorithms 4 and 5, with Section 7's
      relative step :math:`\rho_t = \min(10^{-2}, 1/\sqrt t)`,
      :math:`\hat\beta_{2,t} = 1 - t^{-0.8}` and :math:`d = 1`):
      ``eps1_in_square=True`` adds :math:`\epsilon_1` = 1e-30 to
      :math:`g^2` before the row and column averages
      (:math:`G_t^2 + \epsilon_1 1_n 1_m^\top`) and drops both floors:
      :math:`\hat V_t = R_t C_t / \operatorname{mean}(R_t)`,
      :math:`U_t = g_t / \sqrt{\hat V_t}`. The paper sums rows and columns
      where adaptim averages them; the ratio :math:`\hat V_t` is the same.
      The paper has no weight decay. This is ``optax.adafactor`` with
      ``min_dim_size_to_factor=1`` and the schedule :math:`\rho_t` as its
      learning rate, except that optax factors the two *largest* axes of
      a tensor of rank > 2 (adaptim, torch and Keras the last two), and
      optax evaluates :math:`t^{-0.8}` in float32 even for float64 arrays.
    * ``keras`` (Keras 3 ``keras.optimizers.Adafactor``): the paper's
      arithmetic (``epsilon_1`` = :math:`\epsilon_1` = 1e-30 added to
      :math:`g^2`, ``epsilon_2`` = :math:`\epsilon_2`, ``clip_threshold`` =
      :math:`d`, ``beta_2_decay`` = :math:`c`), ``lr`` 1e-3, and weight decay
      from Keras' base optimizer, :math:`\theta \leftarrow (1 - \gamma\lambda)\theta`,
      applied *before* the step, so :math:`\alpha_t` measures the decayed
      :math:`\theta` (``rms_after_decay=True``). Keras' ``relative_step``
      has no counterpart: Keras 3.15 applies
      :math:`\rho_t = \min(\gamma, 1/\sqrt t)` whether it is on or off
      (a second ``min`` after the one it guards). Keras' ``ops.mean``
      reduces float64 arrays in float32, so its float64 runs carry
      float32's rounding (about 1e-7 relative after 100 steps).
      Keras keeps a full-size ``velocity`` next to its factored ``r`` and
      ``c``; adaptim keeps torch's factored state in every flavor.

    Tensors of rank > 2 are factored over their last two axes in every
    flavor but optax's. The engine records this rule like any other: the
    row and column means, :math:`\operatorname{mean}(R_t)` and the RMS reads
    replay once per tensor, the element-wise tail (:math:`R_t C_t` onwards)
    in place with torch's multi-tensor kernels, bit for bit as here. On the
    CPU the ``torch`` flavor's tensors take three native passes
    instead (``adaptim.torch._adafactor_native``), their norms summed in
    ATen's order, again bit for bit.
    """
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = _op(xp, "eps_of")(p)
    if weight_decay != 0 and rms_after_decay:
        p = p * (1 - lr * weight_decay)
    alpha = relative_step(xp, p, step=step, lr=lr, eps2=eps2)
    if weight_decay != 0 and not rms_after_decay:
        p = p * (1 - lr * weight_decay)
    estimate, new_state = second_moment(xp, state, g, step**beta2_decay, eps1, eps1_in_square)
    if not eps1_in_square:
        estimate = xp.clip(estimate, eps1 * eps1, math.inf)
    update = _op(xp, "rsqrt")(estimate) * g
    denom = _at_least(xp, _op(xp, "rms")(update, d), 1.0)
    return xp.axpy(p, update, -alpha / denom), new_state


def adafactor_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    eps: tuple[float | None, float],
    eps1_in_square: bool,
    **_: Any,
) -> Array:
    r""":math:`\alpha_t / \sqrt{\hat V_t}` for the next step (torch floors :math:`\hat V_t`
    at :math:`\epsilon_1^2`), before update clipping (which depends on the next gradient
    and can only shrink it), and before any weight decay."""
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = _op(xp, "eps_of")(p)
    alpha = relative_step(xp, p, step=step + 1, lr=lr, eps2=eps2)
    if "variance" in state:
        estimate = state["variance"]
    else:
        scale = _op(xp, "mean")(state["row_var"], -2)
        if not eps1_in_square:
            scale = xp.clip(scale, eps1, math.inf)
        estimate = (state["row_var"] @ state["col_var"]) / scale
    if not eps1_in_square:
        estimate = xp.clip(estimate, eps1 * eps1, math.inf)
    return alpha * _op(xp, "rsqrt")(estimate)


def factored_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape of ``row_var``/``col_var``/``variance`` for a parameter of ``shape``."""
    if len(shape) < 2:
        return shape if key == "variance" else None
    if key == "row_var":
        return (*shape[:-1], 1)
    if key == "col_var":
        return (*shape[:-2], 1, shape[-1])
    return None


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "beta2_decay", high=0.0)
    eps = hp["eps"]
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"Invalid eps: {eps!r}; expected a pair (eps1 or None, eps2).")
    if eps[0] is not None:
        check_range(hp, "eps", 0.0, label="eps[0] (eps1)", value=eps[0])
    check_range(hp, "eps", 0.0, label="eps[1] (eps2)", value=eps[1])
    check_range(hp, "d", 1.0)
    check_weight_decay(hp)
    check_bool(hp, "eps1_in_square")
    check_bool(hp, "rms_after_decay")
    as_float("lr", hp["lr"])


DEFAULTS: dict[str, Any] = {
    "lr": 1e-2,
    "beta2_decay": -0.8,
    "eps": (None, 1e-3),
    "d": 1.0,
    "weight_decay": 0.0,
    # where frameworks differ (see the update's docstring and adaptim.flavors)
    "eps1_in_square": False,
    "rms_after_decay": False,
}

ADAFACTOR = Algorithm(
    name="adafactor",
    class_name="Adafactor",
    title="Adafactor: relative steps from row and column second moments (no first moment)",
    update=adafactor_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    # Which entries exist depends on the parameter's rank; the rule creates them.
    state=lambda hp: {"row_var": None, "col_var": None, "variance": None},
    effective_lr=adafactor_effective_lr,
    depends_on_ndim=True,  # vectors keep `variance`, matrices are factored
    entry_shape=factored_shape,
    complex_params=False,
)
