"""Schedule-Free AdamW and SGD: no learning-rate schedule, an online average instead."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    GroupPass,
    GroupScalars,
    HParams,
    UpdateResult,
)
from adaptim.algorithms._validation import check_betas, check_range


def schedule_free_prepare(scalars: GroupScalars, hps: list[HParams]) -> GroupScalars:
    r"""The group's weights for step :math:`k+1` (warm-up, :math:`r`, ``weight_lr_power``).

    .. math::

        \gamma_k &= \gamma \min(1, (k+1)/T_\text{warmup}), \qquad
        \gamma_{\max} = \max_{j \le k} \gamma_j \\
        w_k &= (k+1)^r\, \gamma_{\max}^{\,p}, \qquad
        c_{k+1} = w_k \big/ \textstyle\sum_{j \le k} w_j

    :math:`c_{k+1} = 0` while the weights sum to 0 (a zero learning rate),
    as the reference does.
    """
    hp = hps[0]
    k = scalars["k"]
    warmup = hp["warmup_steps"]
    lr = hp["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
    lr_max = max(lr, scalars["lr_max"])
    weight = (k + 1) ** hp["r"] * lr_max ** hp["weight_lr_power"]
    weight_sum = scalars["weight_sum"] + weight
    return {
        **scalars,
        "k": k + 1,
        "scheduled_lr": lr,
        "lr_max": lr_max,
        "weight_sum": weight_sum,
        "ckp1": weight / weight_sum if weight_sum != 0 else 0.0,
    }


def _average_and_step(
    xp: ArrayOps, y: Array, z: Array, direction: Array, beta: float, scalars: GroupScalars
) -> tuple[Array, Array]:
    """Both sequences after one step along ``direction`` (the y and z lines of the update)."""
    lr, ckp1 = scalars["scheduled_lr"], scalars["ckp1"]
    y = xp.axpy(xp.lerp(y, z, ckp1), direction, lr * (beta * (1 - ckp1) - 1))
    return y, xp.axpy(z, direction, -lr)


def schedulefree_adamw_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    **_: Any,
) -> UpdateResult:
    r"""One Schedule-Free AdamW step (Defazio et al. 2024, "The Road Less Scheduled", Alg. 1).

    The parameter holds :math:`y` while training; :math:`z` is the base
    (AdamW-preconditioned SGD) sequence and :math:`x` the average evaluated:

    .. math::

        v_k &= \beta_2 v_{k-1} + (1-\beta_2)\, g_k^2, \qquad
        \hat g_k = g_k \big/ \big(\sqrt{v_k/(1-\beta_2^{k})} + \epsilon\big)
            + \lambda\, y_k \\
        y_{k+1} &= (1-c_{k+1})\, y_k + c_{k+1} z_k
            + \gamma_k\,(\beta_1 (1 - c_{k+1}) - 1)\, \hat g_k \\
        z_{k+1} &= z_k - \gamma_k\, \hat g_k

    which keeps :math:`y = (1-\beta_1) z + \beta_1 x` with
    :math:`x_{k+1} = (1-c_{k+1}) x_k + c_{k+1} z_{k+1}` (weights
    :math:`c_{k+1}`, warm-up and :math:`\gamma_k`: see
    :func:`schedule_free_prepare`). As in ``schedulefree`` 1.4.1
    (``AdamWScheduleFree``): weight decay is evaluated at :math:`y` and added
    after the preconditioning, the bias correction covers :math:`v` only (the
    average replaces :math:`m`), and ``eval()`` moves the parameters to
    :math:`x = y + (1 - 1/\beta_1)(z - y)`, ``train()`` back.
    """
    beta1, beta2 = betas
    exp_avg_sq = xp.addcmul(state["exp_avg_sq"] * beta2, g, g, 1 - beta2)
    direction = g / (xp.sqrt(exp_avg_sq / (1 - beta2 ** scalars["k"])) + eps)
    if weight_decay != 0:
        direction = xp.axpy(direction, p, weight_decay)
    y, z = _average_and_step(xp, p, state["z"], direction, beta1, scalars)
    return y, {"z": z, "exp_avg_sq": exp_avg_sq}


def schedulefree_sgd_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    momentum: float,
    weight_decay: float,
    **_: Any,
) -> UpdateResult:
    r"""One Schedule-Free SGD step (Defazio et al. 2024, "The Road Less Scheduled", Alg. 1 with SGD).

    .. math::

        \hat g_k &= g_k + \lambda\, y_k \\
        y_{k+1} &= (1-c_{k+1})\, y_k + c_{k+1} z_k
            + \gamma_k\,(\beta (1 - c_{k+1}) - 1)\, \hat g_k, \qquad
        z_{k+1} = z_k - \gamma_k\, \hat g_k

    with ``momentum`` :math:`\beta` as the interpolation :math:`y = (1-\beta)z
    + \beta x`; the same weights, warm-up and ``train()``/``eval()`` as
    :func:`schedulefree_adamw_update` (``schedulefree`` 1.4.1, ``SGDScheduleFree``).
    """
    if weight_decay != 0:
        g = xp.axpy(g, p, weight_decay)
    y, z = _average_and_step(xp, p, state["z"], g, momentum, scalars)
    return y, {"z": z}


def _interpolation(hp: HParams) -> float:
    return float(hp["betas"][0]) if "betas" in hp else float(hp["momentum"])


def switch_mode(
    p: Array, state: dict[str, Array], *, train: bool, xp: ArrayOps, **hp: Any
) -> Array:
    r"""``train``: :math:`y = x + (1-\beta)(z - x)`; else :math:`x = y + (1-1/\beta)(z - y)`."""
    z = state.get("z")
    if z is None:  # no step yet: x = y = z
        return p
    beta = _interpolation(hp)
    return xp.lerp(p, z, 1 - beta if train else 1 - 1 / beta)


def schedulefree_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    betas: tuple[float, float] | None = None,
    eps: float = 0.0,
    **_: Any,
) -> Array:
    r""":math:`\gamma_k / (\sqrt{\hat v_k} + \epsilon)` (SGD: :math:`\gamma_k`), the step of the base sequence :math:`z`."""
    lr = scalars["scheduled_lr"]
    if betas is None:
        return p * 0 + lr
    bias2 = 1 - betas[1] ** max(scalars["k"], 1)
    return lr / (xp.sqrt(state["exp_avg_sq"] / bias2) + eps)


def _check_common(hp: HParams) -> None:
    check_range(hp, "lr", 0.0)
    check_range(hp, "weight_decay", 0.0)
    check_range(hp, "r", 0.0)
    check_range(hp, "weight_lr_power", 0.0)
    steps = hp["warmup_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Invalid warmup_steps: {steps!r}; expected an integer >= 0.")


def _validate_adamw(hp: HParams) -> None:
    _check_common(hp)
    check_betas(hp)
    # eval() divides by beta1: x = y + (1 - 1/beta1)(z - y).
    check_range(
        hp, "betas", 0.0, 1.0, low_open=True, high_open=True, label="beta1", value=hp["betas"][0]
    )
    check_range(hp, "eps", 0.0)


def _validate_sgd(hp: HParams) -> None:
    _check_common(hp)
    check_range(hp, "momentum", 0.0, 1.0, low_open=True, high_open=True)


def _scalars(hp: HParams) -> GroupScalars:
    # The reference's initial values; lr_max = -1 is "no step yet".
    return {"k": 0, "train_mode": False, "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0}


_SCHEDULE = {"warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0}

ADAMW_DEFAULTS: dict[str, Any] = {
    "lr": 0.0025,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    **_SCHEDULE,
}
SGD_DEFAULTS: dict[str, Any] = {"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, **_SCHEDULE}

SCHEDULEFREE_ADAMW = Algorithm(
    name="schedulefree-adamw",
    class_name="ScheduleFreeAdamW",
    title="Schedule-Free AdamW: no schedule, an online average of the AdamW iterates",
    update=schedulefree_adamw_update,
    hparams=tuple(ADAMW_DEFAULTS),
    defaults=ADAMW_DEFAULTS,
    validate=_validate_adamw,
    state=lambda hp: {"z": None, "exp_avg_sq": None},
    step=False,
    effective_lr=schedulefree_effective_lr,
    group_pass=GroupPass(
        scope="group",
        scalars=_scalars,
        prepare=schedule_free_prepare,
        init=lambda p, hp, *, zeros_like, copy: {"z": copy(p), "exp_avg_sq": zeros_like(p)},
        switch_mode=switch_mode,
    ),
)

SCHEDULEFREE_SGD = Algorithm(
    name="schedulefree-sgd",
    class_name="ScheduleFreeSGD",
    title="Schedule-Free SGD: no schedule, an online average of the SGD iterates",
    update=schedulefree_sgd_update,
    hparams=tuple(SGD_DEFAULTS),
    defaults=SGD_DEFAULTS,
    validate=_validate_sgd,
    state=lambda hp: {"z": None},
    step=False,
    effective_lr=schedulefree_effective_lr,
    group_pass=GroupPass(
        scope="group",
        scalars=_scalars,
        prepare=schedule_free_prepare,
        init=lambda p, hp, *, zeros_like, copy: {"z": copy(p)},
        switch_mode=switch_mode,
    ),
)
