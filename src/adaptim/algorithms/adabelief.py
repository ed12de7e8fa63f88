"""AdaBelief: Adam with the moving variance of the gradient around its own average."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import check_betas, check_bool, check_eps, check_lr, check_range


def adabelief_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    eps_root: float,
    nesterov: bool,
) -> UpdateResult:
    r"""One AdaBelief step (Zhuang et al. 2020, "AdaBelief Optimizer: Adapting Stepsizes by the
    Belief in Observed Gradients", NeurIPS, Algorithm 2).

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        s_t &= \beta_2 s_{t-1} + (1-\beta_2)\,(g_t - m_t)^2 + \bar\epsilon \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat s_t = s_t / (1-\beta_2^t) \\
        \theta_t &= \theta_{t-1} - \gamma\, \hat m_t / (\sqrt{\hat s_t} + \epsilon)

    Adam's :math:`g_t^2` becomes the squared deviation of the gradient from
    its prediction :math:`m_t`: the step is large where the gradient is what
    the average expected. ``eps_root`` (:math:`\bar\epsilon`) is added to
    :math:`s_t` every step and stays in the state (``exp_avg_var``), as in
    optax and the authors' code. ``nesterov=True`` (optax's option) replaces
    :math:`\hat m_t` by
    :math:`\beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1)\, g_t/(1-\beta_1^t)`.

    Where frameworks differ (see :mod:`adaptim.flavors`):

    * ``optax`` (the default; ``optax.adabelief``): :math:`\epsilon` =
      :math:`\bar\epsilon` = 1e-16; optax has no default learning rate, adaptim's is
      the paper's 1e-3.
    * ``paper``: Algorithm 2 adds the same :math:`\epsilon` in both places;
      the flavor sets both to 1e-8 (optax's docstring gives the paper's values as
      ``eps=1e-8, eps_root=0``; pass ``eps_root`` to choose).

    Neither has weight decay; torch.optim has no AdaBelief.
    """
    beta1, beta2 = betas
    exp_avg = xp.lerp(state["exp_avg"], g, 1 - beta1)
    deviation = g - exp_avg
    exp_avg_var = xp.addcmul(state["exp_avg_var"] * beta2, deviation, deviation, 1 - beta2)
    if eps_root != 0:
        exp_avg_var = exp_avg_var + eps_root
    bias1 = 1 - beta1**step
    if nesterov:
        first = beta1 / (1 - beta1 ** (step + 1)) * exp_avg + (1 - beta1) / bias1 * g
    else:
        first = exp_avg / bias1
    denom = xp.sqrt(exp_avg_var / (1 - beta2**step)) + eps
    return p - lr * first / denom, {"exp_avg": exp_avg, "exp_avg_var": exp_avg_var}


def adabelief_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    **_: Any,
) -> Array:
    r""":math:`\gamma / (\sqrt{\hat s_t} + \epsilon)`, the factor applied to :math:`\hat m_t`."""
    return lr / (xp.sqrt(state["exp_avg_var"] / (1 - betas[1] ** step)) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_betas(hp)
    check_eps(hp)
    check_range(hp, "eps_root", 0.0)
    check_bool(hp, "nesterov")


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-16,
    "eps_root": 1e-16,
    "nesterov": False,
}

ADABELIEF = Algorithm(
    name="adabelief",
    class_name="AdaBelief",
    default_flavor="optax",
    title="AdaBelief: Adam scaled by the gradient's variance around its moving average",
    update=adabelief_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0, "exp_avg_var": 0.0},
    effective_lr=adabelief_effective_lr,
)
