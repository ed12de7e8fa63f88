r"""D-Adaptation: Adam and SGD with the step size ``d`` estimated as they go (AdaGrad: :mod:`.dadapt_adagrad`).

Defazio & Mishchenko 2023, "Learning-Rate-Free Learning by D-Adaptation"
(ICML). Each method keeps a weighted sum :math:`s_k` of the gradients and
lower-bounds the distance :math:`D = \lVert x_0 - x_* \rVert` by a ratio of
sums over *every* coordinate of every param group (one :math:`d` for the
whole optimizer, read in each group's ``d``), as ``dadaptation`` 3.2 does:
the first group's ``betas``, ``momentum`` and ``growth_rate`` apply to all,
and groups must share ``lr`` (0 freezes one; AdaGrad uses the first group's).
"""

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
from adaptim.algorithms.prodigy import shared_lr

Gathered = tuple[dict[str, Array], dict[str, PartialSum]]


def grown(d: float, d_hat: float, growth_rate: float) -> float:
    r""":math:`d_{k+1} = \max(d_k, \min(\hat d_{k+1}, d_k\cdot\text{growth\_rate}))`: never shrinks."""
    return max(d, min(d_hat, d * growth_rate))


# -- D-Adapt Adam ---------------------------------------------------------------------
def adam_prepare(scalars: GroupScalars, hps: list[HParams]) -> GroupScalars:
    hp = hps[0]
    lr = shared_lr(hps, "DAdaptAdam")
    beta1, beta2 = hp["betas"]
    k = scalars["k"]
    correction = 1.0
    if hp["use_bias_correction"]:
        correction = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1))
    dlr = scalars["d"] * lr * correction
    return {**scalars, "k": k + 1, "lr": lr, "dlr": dlr, "beta1": beta1, "beta2": beta2}


def adam_gather(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    lr: float,
    eps: float,
    weight_decay: float,
    decouple: bool,
    layer_scale: float,
    **_: Any,
) -> Gathered:
    if weight_decay != 0 and not decouple:
        g = xp.axpy(g, p, weight_decay)
    if lr == 0:
        return {}, {}
    beta1, beta2, dlr = scalars["beta1"], scalars["beta2"], scalars["dlr"]
    root = beta2**0.5
    s, exp_avg_sq = state["s"], state["exp_avg_sq"]
    numerator = Partial(g, layer_scale * dlr, s / (xp.sqrt(exp_avg_sq) + eps))
    s = xp.axpy(s * root, g, dlr * (1 - root))
    new_state = {
        "exp_avg": xp.axpy(state["exp_avg"] * beta1, g, layer_scale * dlr * (1 - beta1)),
        "exp_avg_sq": xp.addcmul(exp_avg_sq * beta2, g, g, 1 - beta2),
        "s": s,
    }
    return new_state, {"numerator": numerator, "s_l1": Partial(xp.abs(s).sum(), layer_scale)}


def adam_combine(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    root = scalars["beta2"] ** 0.5
    weighted = root * scalars["numerator_weighted"] + (1 - root) * sums.get("numerator", 0.0)
    s_l1 = sums.get("s_l1", 0.0)
    if s_l1 == 0:  # no gradient yet: dadaptation ends the step here
        return None
    d = scalars["d"]
    if scalars["lr"] > 0:
        d = grown(d, weighted / ((1 - root) * s_l1), hps[0]["growth_rate"])
    return {**scalars, "numerator_weighted": weighted, "d": d}


def dadapt_adam_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    eps: float,
    weight_decay: float,
    decouple: bool,
    **_: Any,
) -> UpdateResult:
    r"""One D-Adapt Adam step (Defazio & Mishchenko 2023, Algorithm 4 and Appendix).

    With :math:`\eta_k = d_k\gamma\rho_k` (:math:`\rho_k` Adam's bias
    correction when ``use_bias_correction``), :math:`A_k = \sqrt{v_{k-1}}+\epsilon`
    and :math:`r` the group's ``layer_scale``:

    .. math::

        n_k &= \sqrt{\beta_2}\, n_{k-1} + (1-\sqrt{\beta_2})\,
            r\,\eta_k \langle g_k, s_{k-1}/A_k\rangle \\
        m_k &= \beta_1 m_{k-1} + (1-\beta_1)\, r\,\eta_k\, g_k, \qquad
        v_k = \beta_2 v_{k-1} + (1-\beta_2)\, g_k^2 \\
        s_k &= \sqrt{\beta_2}\, s_{k-1} + (1-\sqrt{\beta_2})\,\eta_k\, g_k, \qquad
        \hat d_{k+1} = \frac{n_k}{(1-\sqrt{\beta_2})\; r\lVert s_k\rVert_1} \\
        x_{k+1} &= x_k - m_k / (\sqrt{v_k} + \epsilon)

    (:math:`m` already carries :math:`\eta`). ``decouple`` shrinks the
    weights by :math:`\lambda\eta_k` (AdamW); otherwise :math:`\lambda x` is
    added to the gradient (the default, as ``dadaptation.DAdaptAdam``).
    """
    dlr = scalars["dlr"]
    denom = xp.sqrt(state["exp_avg_sq"]) + eps
    if weight_decay != 0 and decouple:
        p = xp.axpy(p, p, -weight_decay * dlr)
    return p - state["exp_avg"] / denom, {"step": state["step"] + 1}


def _dadapt_adam_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    lr: float,
    eps: float,
    **_: Any,
) -> Array:
    r""":math:`d\gamma / (\sqrt{v} + \epsilon)` (without bias correction): the factor on the moving average of the gradients."""
    return scalars["d"] * lr / (xp.sqrt(state["exp_avg_sq"]) + eps)


# -- D-Adapt SGD ----------------------------------------------------------------------
def sgd_prepare(scalars: GroupScalars, hps: list[HParams]) -> GroupScalars:
    hp = hps[0]
    return {
        **scalars,
        "k": scalars["k"] + 1,
        "first": scalars["k"] == 0,
        "lr": shared_lr(hps, "DAdaptSGD"),
        "decay": hp["weight_decay"],  # the first group's, for every group (as dadaptation)
        "ck": 1 - hp["momentum"],
    }


def sgd_first_gather(
    p: Array, g: Array, state: dict[str, Array], *, scalars: GroupScalars, lr: float, **_: Any
) -> Gathered:
    """On the first step, the squared norm of the raw gradient (without weight decay, as dadaptation)."""
    if not scalars["first"] or lr == 0:
        return {}, {}
    return {}, {"g_sq": Partial((g * g).sum())}


def sgd_first_combine(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    g0_norm = math.sqrt(sums.get("g_sq", 0.0)) if scalars["first"] else scalars["g0_norm"]
    if g0_norm == 0:  # dadaptation divides by zero here; the step does nothing instead
        return None
    return {**scalars, "g0_norm": g0_norm, "dlr": scalars["d"] * scalars["lr"] / g0_norm}


def sgd_gather(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    lr: float,
    **_: Any,
) -> Gathered:
    if lr == 0:
        return {}, {}
    if scalars["decay"] != 0:
        g = xp.axpy(g, p, scalars["decay"])
    dlr = scalars["dlr"]
    numerator = Partial(g, dlr, state["s"])
    s = xp.axpy(state["s"], g, dlr)
    return {"s": s}, {"numerator": numerator, "s_sq": Partial((s * s).sum())}


def sgd_combine(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    s_sq = sums.get("s_sq", 0.0)
    if s_sq == 0:
        return None
    weighted = scalars["numerator_weighted"] + sums.get("numerator", 0.0)
    d = grown(scalars["d"], 2 * weighted / math.sqrt(s_sq), hps[0]["growth_rate"])
    return {**scalars, "numerator_weighted": weighted, "d": d}


def dadapt_sgd_update(
    p: Array, g: Array, state: dict[str, Array], *, scalars: GroupScalars, xp: ArrayOps, **_: Any
) -> UpdateResult:
    r"""One D-Adapt SGD step (Defazio & Mishchenko 2023, Algorithm 1 with momentum as averaging).

    With :math:`\eta_k = d_k\gamma/\lVert g_0\rVert` (:math:`g_0` the first
    gradient, over all groups) and :math:`c = 1 - \text{momentum}`:

    .. math::

        n_k &= n_{k-1} + \eta_k\langle g_k, s_{k-1}\rangle, \qquad
        s_k = s_{k-1} + \eta_k g_k, \qquad
        \hat d_{k+1} = 2 n_k / \lVert s_k \rVert_2 \\
        z_{k+1} &= x_0 - s_k, \qquad x_{k+1} = (1-c)\, x_k + c\, z_{k+1}

    Weight decay :math:`\lambda x_k` is added to the gradient (the first
    group's :math:`\lambda` for all groups, and not in :math:`g_0`, as
    ``dadaptation.DAdaptSGD``). Where the reference divides by a zero first
    gradient, the step here changes nothing and the next one starts over.
    """
    z = state["x0"] - state["s"]
    ck = scalars["ck"]
    return xp.axpy(p * (1 - ck), z, ck), {"z": z}


def _dadapt_sgd_effective_lr(
    p: Array, state: dict[str, Array], *, scalars: GroupScalars, lr: float, **_: Any
) -> Array:
    r""":math:`d\gamma/\lVert g_0\rVert`, the weight of each gradient in :math:`s`."""
    norm = scalars["g0_norm"]
    return p * 0 + (scalars["d"] * lr / norm if norm else 0.0)


# -- records ----------------------------------------------------------------------------
def check_d_options(hp: HParams) -> None:
    check_range(hp, "lr", 0.0)
    check_range(hp, "weight_decay", 0.0)
    check_range(hp, "d0", 0.0, low_open=True)
    check_range(hp, "growth_rate", 1.0, finite=False)


def _validate_adam(hp: HParams) -> None:
    check_d_options(hp)
    check_betas(hp)
    check_range(hp, "eps", 0.0, low_open=True)
    check_bool(hp, "decouple")
    check_bool(hp, "use_bias_correction")
    check_range(hp, "layer_scale", 0.0)


def validate_momentum(hp: HParams) -> None:
    check_d_options(hp)
    check_range(hp, "momentum", 0.0, 1.0, high_open=True)
    if "eps" in hp:
        check_range(hp, "eps", 0.0, low_open=True)


D_DEFAULTS = {"d0": 1e-6, "growth_rate": math.inf}
ADAM_DEFAULTS: dict[str, Any] = {
    "lr": 1.0,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decouple": False,
    "use_bias_correction": False,
    "layer_scale": 1.0,
    **D_DEFAULTS,
}
SGD_DEFAULTS: dict[str, Any] = {"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, **D_DEFAULTS}


def _copy_fields(p: Array, zeros_like: Any, copy: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: copy(p) if name in ("z", "x0") else zeros_like(p) for name in names}


DADAPT_ADAM = Algorithm(
    name="dadapt-adam",
    class_name="DAdaptAdam",
    title="D-Adapt Adam: Adam with its step size d estimated as it goes",
    update=dadapt_adam_update,
    hparams=tuple(ADAM_DEFAULTS),
    defaults=ADAM_DEFAULTS,
    validate=_validate_adam,
    state=lambda hp: dict.fromkeys(("step", "s", "exp_avg", "exp_avg_sq")),
    step=False,
    effective_lr=_dadapt_adam_effective_lr,
    group_pass=GroupPass(
        scope="optimizer",
        scalars=lambda hp: {"d": hp["d0"], "k": 0, "numerator_weighted": 0.0},
        prepare=adam_prepare,
        init=lambda p, hp, *, zeros_like, copy: {
            "step": 0,
            **_copy_fields(p, zeros_like, copy, ("s", "exp_avg", "exp_avg_sq")),
        },
        reductions=(Reduction(adam_gather, adam_combine),),
    ),
)

DADAPT_SGD = Algorithm(
    name="dadapt-sgd",
    class_name="DAdaptSGD",
    title="D-Adapt SGD: SGD with its step size d estimated as it goes",
    update=dadapt_sgd_update,
    hparams=tuple(SGD_DEFAULTS),
    defaults=SGD_DEFAULTS,
    validate=validate_momentum,
    state=lambda hp: dict.fromkeys(("z", "s", "x0")),
    step=False,
    effective_lr=_dadapt_sgd_effective_lr,
    group_pass=GroupPass(
        scope="optimizer",
        scalars=lambda hp: {"d": hp["d0"], "k": 0, "numerator_weighted": 0.0, "g0_norm": 0.0},
        prepare=sgd_prepare,
        init=lambda p, hp, *, zeros_like, copy: _copy_fields(p, zeros_like, copy, ("z", "s", "x0")),
        reductions=(
            Reduction(sgd_first_gather, sgd_first_combine),
            Reduction(sgd_gather, sgd_combine),
        ),
    ),
)
