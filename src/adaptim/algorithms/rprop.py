"""Rprop: resilient propagation, a per-weight step size adapted from gradient signs."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import as_float, check_lr, check_range


def sign(xp: ArrayOps, x: Array) -> Array:
    """``sign(x)`` as ``torch.sign`` computes it: +1, -1, and +0 for zeros *and* NaN."""
    return xp.where(x > 0, 1.0, xp.where(x < 0, -1.0, 0.0))


def rprop_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    etas: tuple[float, float],
    step_sizes: tuple[float, float],
) -> UpdateResult:
    r"""One Rprop step (Riedmiller & Braun 1993, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm"; the variant without weight-backtracking,
    Rprop⁻ in Igel & Hüsken 2000, Algorithm 2).

    Each weight has its own step length :math:`\Delta`, started at ``lr``; only
    the *sign* of the gradient is used:

    .. math::

        s_t &= \operatorname{sign}(g_t\, g_{t-1}) \\
        \Delta_t &= \operatorname{clip}\Big(\Delta_{t-1} \cdot
            \begin{cases} \eta^+ & s_t > 0 \\ \eta^- & s_t < 0 \\ 1 & s_t = 0 \end{cases},
            \ \Delta_{\min},\ \Delta_{\max}\Big) \\
        \tilde g_t &= \begin{cases} 0 & s_t < 0 \\ g_t & \text{otherwise} \end{cases} \\
        \theta_t &= \theta_{t-1} - \operatorname{sign}(\tilde g_t)\, \Delta_t

    with :math:`(\eta^-, \eta^+)` = ``etas`` (0.5, 1.2) and
    :math:`(\Delta_{\min}, \Delta_{\max})` = ``step_sizes`` (1e-6, 50). After a sign
    change the gradient is forgotten (:math:`\tilde g_t = 0`, stored as ``prev``),
    so the next step neither moves that weight nor adapts its step again.

    Points where implementations differ:

    * torch (followed here) starts :math:`\Delta_0` at ``lr``; the paper calls it
      :math:`\Delta_0` with 0.1 as its suggestion. The original Rprop⁺ also
      *reverts* the previous step on a sign change (weight-backtracking);
      torch, and so adaptim, do not. Neither Keras 3 nor optax ship Rprop.
    * ``torch.sign`` maps NaN to 0, so a NaN gradient leaves :math:`\Delta`
      unchanged and the weight still; adaptim's sign does the same, bit for bit.
    * Rprop is meant for full-batch gradients: mini-batch noise flips signs at
      random and shrinks every :math:`\Delta` towards :math:`\Delta_{\min}`.
    """
    etaminus, etaplus = etas
    low, high = step_sizes
    product = g * state["prev"]
    previous = state["step_size"]
    # torch's factors are the etas stored in the dtype of ``g * prev`` (it overwrites
    # its sign tensor with them: the parameter's, or the wider where the state is
    # another); where() against an array of ones in that dtype rounds them the same
    # way (x**0 is 1 for every x, NaN and infinities included).
    ones = product**0
    factor = xp.where(product > 0, etaplus, xp.where(product < 0, etaminus, ones))
    step_size = xp.clip(previous * factor, low, high)
    g = xp.where(product < 0, 0.0, g)
    return xp.addcmul(p, sign(xp, g), step_size, -1.0), {"prev": g, "step_size": step_size}


def rprop_effective_lr(
    p: Array, state: dict[str, Array], *, step: float, xp: ArrayOps, **_: Any
) -> Array:
    r""":math:`\Delta_t`: the step length of each weight (its direction is the gradient's sign)."""
    return state["step_size"] * 1.0


def check_pair(hp: HParams, name: str) -> tuple[float, float]:
    """``hp[name]`` as a pair of floats, or a ``ValueError`` naming it."""
    value = hp[name]
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r}; expected a pair of numbers.")
    return as_float(name, value[0]), as_float(name, value[1])


def _validate(hp: HParams) -> None:
    check_lr(hp)
    etaminus, etaplus = check_pair(hp, "etas")
    if not 0.0 < etaminus < 1.0 < etaplus or etaplus == float("inf"):
        raise ValueError(
            f"Invalid etas: ({etaminus!r}, {etaplus!r}); allowed: 0 < etaminus < 1 < etaplus "
            "(etaminus shrinks a step after a sign change, etaplus grows it)."
        )
    low, high = check_pair(hp, "step_sizes")
    check_range(hp, "step_sizes", 0.0, label="step_sizes[0] (minimum step)", value=low)
    check_range(hp, "step_sizes", low, label="step_sizes[1] (maximum step)", value=high)


def _state(hp: HParams) -> dict[str, float | None]:
    # torch starts every step size at the group's learning rate. (A float stays
    # as it is: reading a tensor would break the graph under torch.compile.)
    lr = hp["lr"]
    return {"prev": 0.0, "step_size": lr if isinstance(lr, float) else as_float("lr", lr)}


DEFAULTS: dict[str, Any] = {
    "lr": 1e-2,
    "etas": (0.5, 1.2),
    "step_sizes": (1e-6, 50),
}

RPROP = Algorithm(
    name="rprop",
    class_name="Rprop",
    title="Rprop: per-weight step sizes grown or shrunk by the sign of successive gradients",
    update=rprop_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    effective_lr=rprop_effective_lr,
)
