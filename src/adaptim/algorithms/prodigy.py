"""Prodigy: Adam whose step size ``d`` is estimated from the distance travelled."""

from __future__ import annotations

import math
from typing import Any

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    GroupPass,
    GroupScalars,
    HParams,
    Partial,
    PartialSum,
    Reduction,
    UpdateResult,
)
from adaptim.algorithms._validation import check_betas, check_bool, check_range


def shared_lr(hps: list[HParams], owner: str) -> float:
    """The one learning rate of all groups (0 freezes a group), as prodigyopt and dadaptation require."""
    lr = max(float(hp["lr"]) for hp in hps)
    for index, hp in enumerate(hps):
        if hp["lr"] not in (lr, 0.0):
            raise ValueError(
                f"Invalid lr: {hp['lr']!r} in param group {index}, {lr!r} in another; {owner} "
                "estimates one step size for all groups, so every group's lr must be the same "
                "or 0 (a frozen group). Scale groups with their own optimizers instead."
            )
    return lr


def _beta3(hp: HParams) -> float:
    return math.sqrt(hp["betas"][1]) if hp["beta3"] is None else float(hp["beta3"])


def prodigy_prepare(scalars: GroupScalars, hps: list[HParams]) -> GroupScalars:
    r""":math:`d_k\gamma_k` with Adam's bias correction (optional), and the numerator decayed by :math:`\beta_3`."""
    hp = hps[0]
    lr = shared_lr(hps, "Prodigy")
    beta1, beta2 = hp["betas"]
    k = scalars["k"]
    correction = 1.0
    if hp["use_bias_correction"]:
        correction = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1))
    return {
        **scalars,
        "k": k + 1,
        "lr": lr,
        "dlr": scalars["d"] * lr * correction,
        "beta3": _beta3(hp),
        "d_numerator": scalars["d_numerator"] * _beta3(hp),
    }


def _sliced(a: Array, slice_p: int) -> Array:
    return a.reshape(-1)[::slice_p]


def prodigy_gather(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    decouple: bool,
    safeguard_warmup: bool,
    d0: float,
    slice_p: int,
    **_: Any,
) -> tuple[dict[str, Array], dict[str, PartialSum]]:
    """The moment updates and this tensor's share of the numerator and denominator of :math:`\\hat d`."""
    if lr == 0:  # a frozen group adds nothing and keeps its moments
        return {}, {}
    beta1, beta2 = betas
    d, dlr = scalars["d"], scalars["dlr"]
    if weight_decay != 0 and not decouple:
        g = xp.axpy(g, p, weight_decay)
    grad = _sliced(g, slice_p)
    numerator = Partial(grad, (d / d0) * dlr, state["p0"] - _sliced(p, slice_p))
    new_state = {"exp_avg_sq": xp.addcmul(state["exp_avg_sq"] * beta2, g, g, d * d * (1 - beta2))}
    if beta1 > 0:
        new_state["exp_avg"] = xp.axpy(state["exp_avg"] * beta1, g, d * (1 - beta1))
    weight = (d / d0) * (d if safeguard_warmup else dlr)
    s = xp.axpy(state["s"] * scalars["beta3"], grad, weight)
    new_state["s"] = s
    return new_state, {"numerator": numerator, "denominator": Partial(xp.abs(s).sum())}


def prodigy_combine(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    r"""The new estimate: :math:`\hat d = d_\text{coef}\, r_k / \lVert s_k \rVert_1`, grown at most by ``growth_rate``."""
    denominator = sums.get("denominator", 0.0)
    if denominator == 0:  # no gradient yet: prodigyopt ends the step here
        return None
    d, d_max = scalars["d"], scalars["d_max"]
    numerator = scalars["d_numerator"] + sums.get("numerator", 0.0)
    d_hat = hps[0]["d_coef"] * numerator / denominator
    if d == hps[-1]["d0"]:  # prodigyopt reads the last group's d0 here
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * hps[0]["growth_rate"])
    return {**scalars, "d_numerator": numerator, "d": d, "d_max": d_max}


def prodigy_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decouple: bool,
    **_: Any,
) -> UpdateResult:
    r"""One Prodigy step (Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", Alg. 4).

    With :math:`d_k` the current estimate of the distance to the solution,
    :math:`\eta_k = d_k\,\gamma\,\rho_k` (:math:`\rho_k` Adam's bias
    correction when ``use_bias_correction``, else 1) and :math:`x_0` the
    starting point:

    .. math::

        m_k &= \beta_1 m_{k-1} + (1-\beta_1)\, d_k\, g_k, \qquad
        v_k = \beta_2 v_{k-1} + (1-\beta_2)\, d_k^2\, g_k^2 \\
        r_k &= \beta_3 r_{k-1} + \tfrac{d_k}{d_0}\,\eta_k\,\langle g_k, x_0 - x_k\rangle,
        \qquad
        s_k = \beta_3 s_{k-1} + \tfrac{d_k}{d_0}\,\eta_k\, g_k \\
        \hat d_{k+1} &= d_\text{coef}\; r_k / \lVert s_k \rVert_1, \qquad
        d_{k+1} = \min\big(\max_{j \le k+1} \hat d_j,\; d_k \cdot \text{growth\_rate}\big) \\
        x_{k+1} &= x_k - \eta_k\, m_k \big/ \big(\sqrt{v_k} + d_{k+1}\,\epsilon\big)

    :math:`\beta_3 = \sqrt{\beta_2}` by default. Sums run over every
    coordinate of every param group: :math:`d` is one scalar for the whole
    optimizer, read in every group's ``d``. As in ``prodigyopt`` 1.1.2:

    * ``safeguard_warmup`` puts :math:`d_k` instead of :math:`\eta_k` into
      :math:`s_k` (no lr or bias correction in the denominator);
    * ``slice_p`` keeps :math:`x_0` and :math:`s` on every ``slice_p``-th
      coordinate only (less memory, a noisier :math:`\hat d`);
    * ``decouple`` (default) shrinks the weights by :math:`\lambda\eta_k`,
      otherwise :math:`\lambda x_k` is added to the gradient;
    * on the first step :math:`d` jumps to :math:`\hat d` if larger, whatever
      ``growth_rate``; a step whose :math:`\lVert s\rVert_1 = 0` (all
      gradients zero) updates the moments and stops, moving nothing;
    * with ``beta1 = 0`` there is no ``exp_avg`` and the step is
      :math:`\eta_k d_{k+1} g_k / (\sqrt{v_k} + d_{k+1}\epsilon)`;
    * groups must share ``lr`` (0 freezes one); the per-tensor ``.item()``
      of the reference is one reduction per step here, same result.
    """
    beta1 = betas[0]
    d, dlr = scalars["d"], scalars["dlr"]
    denom = xp.sqrt(state["exp_avg_sq"]) + d * eps
    if weight_decay != 0 and not decouple:
        g = xp.axpy(g, p, weight_decay)
    if weight_decay != 0 and decouple:
        p = xp.axpy(p, p, -weight_decay * dlr)
    new_state: dict[str, Any] = {"step": state["step"] + 1}
    if beta1 > 0:
        return p + (-dlr * state["exp_avg"]) / denom, new_state
    return p + (-dlr * d * g) / denom, new_state


def prodigy_init(p: Array, hp: HParams, *, zeros_like: Any, copy: Any) -> dict[str, Any]:
    """The reference's first state: ``x_0`` sliced (a 0-d zero for an all-zero tensor), zero moments."""
    sliced = _sliced(p, hp["slice_p"])
    state: dict[str, Any] = {
        "step": 0,
        "s": zeros_like(sliced),
        "p0": copy(sliced) if p.any() else zeros_like(p.sum()),
    }
    if hp["betas"][0] > 0:
        state["exp_avg"] = zeros_like(p)
    state["exp_avg_sq"] = zeros_like(p)
    return state


def prodigy_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    use_bias_correction: bool,
    **_: Any,
) -> Array:
    r""":math:`d^2\gamma\rho_k / (\sqrt{v} + d\epsilon)`: the factor applied to the moving average of the raw gradients (:math:`m/d`)."""
    d, k = scalars["d"], max(scalars["k"], 1)
    correction = 1.0
    if use_bias_correction:
        correction = (1 - betas[1] ** k) ** 0.5 / (1 - betas[0] ** k)
    return d * d * lr * correction / (xp.sqrt(state["exp_avg_sq"]) + d * eps)


def _validate(hp: HParams) -> None:
    check_range(hp, "lr", 0.0)
    check_betas(hp)
    if hp["beta3"] is not None:
        check_range(hp, "beta3", 0.0, 1.0, high_open=True)
    check_range(hp, "eps", 0.0, low_open=True)
    check_range(hp, "weight_decay", 0.0)
    for name in ("decouple", "use_bias_correction", "safeguard_warmup"):
        check_bool(hp, name)
    check_range(hp, "d0", 0.0, low_open=True)
    check_range(hp, "d_coef", 0.0, low_open=True)
    check_range(hp, "growth_rate", 1.0, finite=False)
    slice_p = hp["slice_p"]
    if isinstance(slice_p, bool) or not isinstance(slice_p, int) or slice_p < 1:
        raise ValueError(f"Invalid slice_p: {slice_p!r}; expected an integer >= 1.")


DEFAULTS: dict[str, Any] = {
    "lr": 1.0,
    "betas": (0.9, 0.999),
    "beta3": None,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decouple": True,
    "use_bias_correction": False,
    "safeguard_warmup": False,
    "d0": 1e-6,
    "d_coef": 1.0,
    "growth_rate": math.inf,
    "slice_p": 1,
}

PRODIGY = Algorithm(
    name="prodigy",
    class_name="Prodigy",
    title="Prodigy: Adam with its step size d estimated from the distance travelled",
    update=prodigy_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: dict.fromkeys(("step", "s", "p0", "exp_avg", "exp_avg_sq")),
    step=False,
    effective_lr=prodigy_effective_lr,
    group_pass=GroupPass(
        scope="optimizer",
        scalars=lambda hp: {"d": hp["d0"], "d_max": hp["d0"], "d_numerator": 0.0, "k": 0},
        prepare=prodigy_prepare,
        init=prodigy_init,
        reductions=(Reduction(prodigy_gather, prodigy_combine),),
    ),
)
