"""LAMB: Adam with a per-layer trust ratio, for large-batch training."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import check_bool, check_range
from adaptim.algorithms.adam import moments, validate_adam_like
from adaptim.algorithms.lars import trust_ratio


def lamb_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    weight_norm_clip: tuple[float, float] | None,
    exclude_bias_and_norm: bool,
) -> UpdateResult:
    r"""One LAMB step (You et al. 2020, "Large Batch Optimization for Deep Learning", Alg. 2).

    For each parameter tensor (a "layer") :math:`x`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t) \\
        r_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon), \qquad u_t = r_t + \lambda\, x_t \\
        x_{t+1} &= x_t - \gamma\, \frac{\phi(\lVert x_t \rVert)}{\lVert u_t \rVert}\, u_t,
        \qquad \phi(z) = \min(\max(z, \gamma_l), \gamma_u)

    Variant choices, stated exactly:

    * ``weight_norm_clip=(γ_l, γ_u)`` is the paper's clipping of the weight norm
      inside :math:`\phi`; the default ``(0, 10)`` is the bound used by common
      implementations, and ``None`` makes :math:`\phi` the identity.
    * The trust ratio is 1 when :math:`\lVert x_t\rVert = 0` or
      :math:`\lVert u_t\rVert = 0` (a layer without scale takes the Adam step).
    * ``bias_correction=False`` drops :math:`1-\beta^t` (LAMB v1 of the preprint).
    * Weight decay is decoupled, inside :math:`u_t`, as in the paper.
    * ``exclude_bias_and_norm`` (off by default): tensors with at most one
      dimension take the plain Adam step :math:`x - \gamma r_t`, with neither
      trust ratio nor weight decay, as the BERT recipe does.
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = moments(xp, state, g, beta1, beta2)
    first, second = exp_avg, exp_avg_sq
    if bias_correction:
        first = exp_avg / (1 - beta1**step)
        second = exp_avg_sq / (1 - beta2**step)
    update = first / (xp.sqrt(second) + eps)
    new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if exclude_bias_and_norm and p.ndim <= 1:
        return p - lr * update, new_state
    if weight_decay != 0:
        update = update + weight_decay * p
    w_norm = xp.norm(p)
    u_norm = xp.norm(update)
    phi = w_norm if weight_norm_clip is None else xp.clip(w_norm, *weight_norm_clip)
    ratio = trust_ratio(xp, phi, u_norm, (w_norm > 0) & (u_norm > 0))
    new_state["trust_ratio"] = ratio
    return p - (lr * ratio) * update, new_state


def lamb_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    bias_correction: bool,
    **_: Any,
) -> Array:
    """:math:`\\gamma\\,\text{ratio}_t / (\\sqrt{\\hat v_t} + \\epsilon)`, the factor applied to :math:`\\hat m_t`."""
    second = (
        state["exp_avg_sq"] / (1 - betas[1] ** step) if bias_correction else state["exp_avg_sq"]
    )
    ratio = state.get("trust_ratio")
    scale = lr if ratio is None else lr * ratio
    return scale / (xp.sqrt(second) + eps)


def _validate(hp: HParams) -> None:
    validate_adam_like(hp)
    check_bool(hp, "bias_correction")
    check_bool(hp, "exclude_bias_and_norm")
    clip = hp["weight_norm_clip"]
    if clip is None:
        return
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise ValueError(
            f"Invalid weight_norm_clip: {clip!r}; expected None or a pair (low, high) with 0 <= low <= high."
        )
    check_range(hp, "weight_norm_clip", 0.0, label="weight_norm_clip[0]", value=clip[0])
    check_range(
        hp,
        "weight_norm_clip",
        float(clip[0]),
        label="weight_norm_clip[1]",
        value=clip[1],
        finite=False,  # an infinite upper clip means no upper clip
    )


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-6,
    "weight_decay": 0.0,
    "bias_correction": True,
    "weight_norm_clip": (0.0, 10.0),
    "exclude_bias_and_norm": False,
}

LAMB = Algorithm(
    name="lamb",
    class_name="LAMB",
    depends_on_ndim=True,
    title="LAMB: Adam with a per-layer trust ratio ||x|| / ||update|| (large batches)",
    update=lamb_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0, "exp_avg_sq": 0.0, "trust_ratio": None},
    effective_lr=lamb_effective_lr,
)
