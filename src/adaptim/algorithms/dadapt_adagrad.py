r"""D-Adapt AdaGrad: AdaGrad (dual averaging) with the step size ``d`` estimated as it goes.

Defazio & Mishchenko 2023, "Learning-Rate-Free Learning by D-Adaptation";
the shared conventions (one ``d`` for all groups, the first group's
settings) are those of :mod:`adaptim.algorithms.dadaptation`.
"""

from __future__ import annotations

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
from adaptim.algorithms.dadaptation import D_DEFAULTS, Gathered, grown, validate_momentum


def adagrad_prepare(scalars: GroupScalars, hps: list[HParams]) -> GroupScalars:
    hp = hps[0]  # the first group's lr, without dadaptation's check of the others
    return {
        **scalars,
        "k": scalars["k"] + 1,
        "lr": hp["lr"],
        "dlr": scalars["d"] * hp["lr"],
        "ck": 1 - hp["momentum"],
    }


def adagrad_gather(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    eps: float,
    weight_decay: float,
    **_: Any,
) -> Gathered:
    if weight_decay != 0:
        g = xp.axpy(g, p, weight_decay)
    sk, alphak = state["sk"], state["alphak"]
    old_weighted = (sk * sk / (xp.sqrt(alphak) + eps)).sum()
    old_l1 = xp.abs(sk).sum()
    alphak = alphak + g * g
    root = xp.sqrt(alphak) + eps
    sk = xp.axpy(sk, g, scalars["dlr"])
    sums: dict[str, PartialSum] = {
        "g_sq": Partial((g * g / root).sum()),
        # per tensor, new minus old in float64, as the reference does
        "s_sq_change": (Partial((sk * sk / root).sum()), Partial(old_weighted, -1.0)),
        "s_l1_change": (Partial(xp.abs(sk).sum()), Partial(old_l1, -1.0)),
    }
    return {"alphak": alphak, "sk": sk}, sums


def adagrad_combine(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    weighted = scalars["sksq_weighted"] + sums.get("s_sq_change", 0.0)
    s_l1 = scalars["skl1"] + sums.get("s_l1_change", 0.0)
    if s_l1 == 0:
        return None
    dlr = scalars["dlr"]
    g_sq = scalars["gsq_weighted"] + dlr * dlr * sums.get("g_sq", 0.0)
    d = scalars["d"]
    if scalars["lr"] > 0:
        d = grown(d, (weighted - g_sq) / s_l1, hps[0]["growth_rate"])
    return {**scalars, "sksq_weighted": weighted, "skl1": s_l1, "gsq_weighted": g_sq, "d": d}


def dadapt_adagrad_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    eps: float,
    **_: Any,
) -> UpdateResult:
    r"""One D-Adapt AdaGrad step (Defazio & Mishchenko 2023, Algorithm 3, dual averaging).

    With :math:`\eta_k = d_k\gamma`, :math:`\alpha_0 = 10^{-6}` and
    :math:`c = 1 - \text{momentum}`:

    .. math::

        \alpha_{k} &= \alpha_{k-1} + g_k^2, \qquad s_k = s_{k-1} + \eta_k g_k,
        \qquad A_k = \sqrt{\alpha_k} + \epsilon \\
        \hat d_{k+1} &= \frac{\sum s_k^2/A_k \;-\; \sum_{j\le k} \eta_j^2 \sum g_j^2/A_j}
            {\lVert s_k\rVert_1} \\
        x_{k+1} &= (1-c)\, x_k + c\,(x_0 - s_k / A_k)

    (sums over every coordinate of every group; the first sum is kept as
    running per-tensor changes, as ``dadaptation.DAdaptAdaGrad``). Weight
    decay :math:`\lambda x_k` is added to the gradient. Sparse gradients
    (which the reference treats separately) are refused.
    """
    z = state["x0"] - state["sk"] / (xp.sqrt(state["alphak"]) + eps)
    ck = scalars["ck"]
    if ck == 1:
        return z, {}
    return xp.axpy(p * (1 - ck), z, ck), {}


def _dadapt_adagrad_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    lr: float,
    eps: float,
    **_: Any,
) -> Array:
    r""":math:`d\gamma / (\sqrt{\alpha} + \epsilon)`, AdaGrad's rate with the estimated scale."""
    return scalars["d"] * lr / (xp.sqrt(state["alphak"]) + eps)


ADAGRAD_DEFAULTS: dict[str, Any] = {
    "lr": 1.0,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "eps": 1e-6,
    **D_DEFAULTS,
}


DADAPT_ADAGRAD = Algorithm(
    name="dadapt-adagrad",
    class_name="DAdaptAdaGrad",
    title="D-Adapt AdaGrad: AdaGrad (dual averaging) with its step size d estimated as it goes",
    update=dadapt_adagrad_update,
    hparams=tuple(ADAGRAD_DEFAULTS),
    defaults=ADAGRAD_DEFAULTS,
    validate=validate_momentum,
    state=lambda hp: dict.fromkeys(("alphak", "sk", "x0")),
    step=False,
    effective_lr=_dadapt_adagrad_effective_lr,
    group_pass=GroupPass(
        scope="optimizer",
        scalars=lambda hp: {
            "d": hp["d0"],
            "k": 0,
            "gsq_weighted": 0.0,
            "sksq_weighted": 0.0,
            "skl1": 0.0,
        },
        prepare=adagrad_prepare,
        init=lambda p, hp, *, zeros_like, copy: {
            "alphak": zeros_like(p) + 1e-6,
            "sk": zeros_like(p),
            "x0": copy(p),
        },
        reductions=(Reduction(adagrad_gather, adagrad_combine),),
    ),
)
