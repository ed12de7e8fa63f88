r"""Hypergradient descent: SGD and Adam whose learning rate :math:`\alpha` learns itself.

Baydin, Cornish, Martínez Rubio, Schmidt & Wood 2018, "Online Learning Rate
Adaptation with Hypergradient Descent" (ICLR), Algorithms 4 (SGD-HD), 5
(SGDN-HD) and 6 (Adam-HD). Each step first moves :math:`\alpha` by gradient
descent on the loss, using the derivative of the previous update
:math:`u_{t-1}` with respect to :math:`\alpha`:

.. math::

    h_t = \nabla f(\theta_{t-1}) \cdot \nabla_\alpha u_{t-1}, \qquad
    \alpha_t = \alpha_{t-1} - \beta\, h_t

(:math:`\beta` = ``hypergrad_lr``), then takes the base optimizer's step
with :math:`\alpha_t`. The dot product runs over every coordinate of a param
group, so each group keeps one :math:`\alpha`, in its ``lr``: the value a
user reads in ``param_groups[i]["lr"]`` is the current rate, ``lr`` at
construction is :math:`\alpha_0`, and a ``state_dict`` carries it. As
:math:`\nabla_\alpha u_0 = 0`, the first step runs at :math:`\alpha_0`.

What adaptim keeps per tensor is what :math:`\nabla_\alpha u_{t-1}` needs
beyond the base optimizer's own state: SGD-HD stores the previous gradient
(with Nesterov momentum too), heavy-ball SGD-HD reads its momentum buffer,
and Adam-HD recomputes :math:`\hat m_{t-1}/(\sqrt{\hat v_{t-1}}+\epsilon)`
from its moments before updating them (Adam's own state, nothing more).
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
    coupled_weight_decay,
)
from adaptim.algorithms._validation import check_bool, check_range
from adaptim.algorithms.adam import adam_effective_lr, adam_update, validate_adam_like
from adaptim.algorithms.sgd import sgd_update

Gathered = tuple[dict[str, Array], dict[str, PartialSum]]


# -- the hypergradient step on α, shared ------------------------------------------------
def _current_lr(scalars: GroupScalars, hps: list[HParams]) -> GroupScalars:
    """:math:`\\alpha_{t-1}` as a float (a tensor ``lr`` is read once and kept as a number)."""
    return {**scalars, "lr": float(scalars["lr"])}


def descend_lr(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    r""":math:`\alpha_t = \alpha_{t-1} - \beta h_t`, with :math:`h_t` summed over the group in float64."""
    h = sums.get("h", 0.0)
    return {**scalars, "lr": scalars["lr"] - hps[0]["hypergrad_lr"] * h}


def _check_hypergrad_lr(hp: HParams) -> None:
    check_range(hp, "hypergrad_lr", 0.0)


# -- SGD-HD and SGDN-HD -------------------------------------------------------------------
def _keeps_grad(hp: HParams) -> bool:
    """Plain and Nesterov SGD-HD need :math:`g_{t-1}`; heavy ball's direction is its buffer."""
    return hp["momentum"] == 0 or bool(hp["nesterov"])


def sgd_direction(xp: ArrayOps, state: dict[str, Array], momentum: float, nesterov: bool) -> Array:
    r"""The previous step's direction :math:`d_{t-1} = -\nabla_\alpha u_{t-1}`, as it was applied.

    :math:`g_{t-1}` without momentum, :math:`g_{t-1} + \mu v_{t-1}` with
    Nesterov's (computed by the same operation as the step, so the same
    rounding), :math:`v_{t-1}` with heavy-ball momentum; zero before the
    first step.
    """
    if momentum == 0:
        return state["grad_prev"]
    if nesterov:
        return xp.axpy(state["grad_prev"], state["momentum_buffer"], momentum)
    return state["momentum_buffer"]


def sgd_hd_gather(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    **_: Any,
) -> Gathered:
    r"""This tensor's share of :math:`h_t = -g_t \cdot d_{t-1}`; keeps :math:`g_t` for the next step."""
    g = coupled_weight_decay(xp, p, g, weight_decay)
    previous = sgd_direction(xp, state, momentum, nesterov)
    kept = {"grad_prev": g} if "grad_prev" in state else {}
    return kept, {"h": Partial(g, -1.0, previous)}


def sgd_hd_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    **_: Any,
) -> UpdateResult:
    r"""One SGD-HD step (Baydin et al. 2018, Algorithm 4; Nesterov: SGDN-HD, Algorithm 5).

    With gradient :math:`g_t = \nabla f(\theta_{t-1})` (plus :math:`\lambda\theta_{t-1}`
    for L2 weight decay), momentum :math:`\mu` and :math:`v_0 = 0`,
    :math:`\nabla_\alpha u_0 = 0`:

    .. math::

        h_t &= g_t \cdot \nabla_\alpha u_{t-1}, \qquad
            \alpha_t = \alpha_{t-1} - \beta\, h_t \\
        v_t &= \mu\, v_{t-1} + g_t \\
        d_t &= \begin{cases} g_t & \mu = 0 \ \text{(SGD-HD)} \\
            g_t + \mu\, v_t & \text{nesterov (SGDN-HD)} \\
            v_t & \text{heavy ball} \end{cases} \\
        u_t &= -\alpha_t\, d_t, \qquad \nabla_\alpha u_t = -d_t, \qquad
            \theta_t = \theta_{t-1} + u_t

    so :math:`h_t = -g_t\cdot d_{t-1}`, summed over every tensor of the
    param group. The paper gives the plain and Nesterov forms; heavy ball
    (no Nesterov) is the reference implementation's third case. Defaults are
    the paper's: :math:`\alpha_0 = 10^{-3}`, :math:`\beta = 10^{-3}`.

    Against ``gbaydin/hypergradient-descent`` (``SGDHD``, unmaintained): the
    same arithmetic, except that it refuses more than one param group and
    defaults to ``hypergrad_lr=1e-6``; its ``dampening`` is not offered here
    (the paper has none). With ``hypergrad_lr=0`` this is ``torch.optim.SGD``.
    """
    return sgd_update(
        p,
        g,
        state,
        step=0.0,
        xp=xp,
        lr=scalars["lr"],
        momentum=momentum,
        dampening=0.0,
        weight_decay=weight_decay,
        nesterov=nesterov,
    )


def _sgd_hd_init(p: Array, hp: HParams, *, zeros_like: Any, copy: Any) -> dict[str, Any]:
    """:math:`v_0 = 0` and :math:`g_0 = 0`, so that the first hypergradient is 0."""
    state: dict[str, Any] = {}
    if hp["momentum"] != 0:
        state["momentum_buffer"] = zeros_like(p)
    if _keeps_grad(hp):
        state["grad_prev"] = zeros_like(p)
    return state


def _sgd_hd_state(hp: HParams) -> dict[str, float | None]:
    names = (["momentum_buffer"] if hp["momentum"] != 0 else []) + (
        ["grad_prev"] if _keeps_grad(hp) else []
    )
    return dict.fromkeys(names)


def _sgd_hd_effective_lr(
    p: Array, state: dict[str, Array], *, scalars: GroupScalars, **_: Any
) -> Array:
    r""":math:`\alpha_t`, the same for every coordinate."""
    return p * 0 + float(scalars["lr"])


def _validate_sgd_hd(hp: HParams) -> None:
    check_range(hp, "lr", 0.0)
    check_range(hp, "momentum", 0.0, 1.0, high_open=True)
    check_range(hp, "weight_decay", 0.0)
    check_bool(hp, "nesterov")
    if hp["nesterov"] and hp["momentum"] <= 0:
        raise ValueError(
            f"Invalid combination: nesterov=True requires momentum > 0 (got momentum="
            f"{hp['momentum']!r}); SGDN-HD is SGD-HD with Nesterov momentum."
        )
    _check_hypergrad_lr(hp)


# -- Adam-HD --------------------------------------------------------------------------------
def adam_hd_gather(
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
) -> Gathered:
    r"""This tensor's share of :math:`h_t = -g_t\cdot \hat m_{t-1}/(\sqrt{\hat v_{t-1}}+\epsilon)`.

    From the moments before this step's update, with step :math:`t-1`'s
    bias corrections, in the form the step applied them; nothing before the
    first step (:math:`\nabla_\alpha u_0 = 0`).
    """
    previous = float(state["step"])
    if previous == 0:
        return {}, {}
    g = coupled_weight_decay(xp, p, g, weight_decay)
    beta1, beta2 = betas
    denom = xp.sqrt(state["exp_avg_sq"]) / (1 - beta2**previous) ** 0.5 + eps
    return {}, {"h": Partial(g, -1 / (1 - beta1**previous), state["exp_avg"] / denom)}


def adam_hd_update(
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
    r"""One Adam-HD step (Baydin et al. 2018, Algorithm 6).

    With :math:`g_t = \nabla f(\theta_{t-1})` (plus :math:`\lambda\theta_{t-1}`
    for L2 weight decay), :math:`m_0 = v_0 = 0` and :math:`\nabla_\alpha u_0 = 0`:

    .. math::

        h_t &= g_t \cdot \nabla_\alpha u_{t-1}, \qquad
            \alpha_t = \alpha_{t-1} - \beta\, h_t \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
            v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t) \\
        u_t &= -\alpha_t\, \hat m_t / (\sqrt{\hat v_t} + \epsilon), \qquad
            \nabla_\alpha u_t = -\hat m_t / (\sqrt{\hat v_t} + \epsilon), \qquad
            \theta_t = \theta_{t-1} + u_t

    with :math:`h_t` summed over every tensor of the param group, and
    :math:`t` each tensor's own ``step`` (as in ``torch.optim.Adam``). The
    step is adaptim's Adam (torch's arithmetic), so with ``hypergrad_lr=0``
    this is ``torch.optim.Adam``, and the state (``step``, ``exp_avg``,
    ``exp_avg_sq``) is Adam's. Defaults are the paper's:
    :math:`\alpha_0 = 10^{-3}`, :math:`\beta = 10^{-7}` (it used
    :math:`10^{-8}` for the VGG net on CIFAR-10).

    Against ``gbaydin/hypergradient-descent`` (``AdamHD``, unmaintained):
    it adds :math:`\epsilon` to :math:`\sqrt{v}` before the bias correction
    (Kingma & Ba's "epsilon hat" form) in the step and in :math:`h`, and it
    moves ``lr`` after each *tensor's* share of :math:`h` (so later tensors
    of a step see a different :math:`\alpha`); here :math:`\epsilon` is added
    after the correction, as in the paper and torch, and :math:`\alpha` moves
    once per step, as in the paper. Its default ``hypergrad_lr`` is 1e-8.
    """
    step = state["step"] + 1
    new_p, new_state = adam_update(
        p,
        g,
        state,
        step=float(step),
        xp=xp,
        lr=scalars["lr"],
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=False,
        decoupled_weight_decay=False,
    )
    return new_p, {**new_state, "step": step}


def _adam_hd_effective_lr(
    p: Array, state: dict[str, Array], *, scalars: GroupScalars, xp: ArrayOps, **hp: Any
) -> Array:
    r""":math:`\alpha_t / (\sqrt{\hat v_t} + \epsilon)`, the factor applied to :math:`\hat m_t` (as Adam's)."""
    step = max(float(state["step"]), 1.0)
    return adam_effective_lr(p, state, step=step, xp=xp, **{**hp, "lr": float(scalars["lr"])})


def _validate_adam_hd(hp: HParams) -> None:
    validate_adam_like(hp)
    _check_hypergrad_lr(hp)


# -- records ----------------------------------------------------------------------------------
SGD_HD_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "nesterov": False,
    "hypergrad_lr": 1e-3,
}
ADAM_HD_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "hypergrad_lr": 1e-7,
}


def _group_lr(hp: HParams) -> GroupScalars:
    """The one kept scalar: :math:`\\alpha` itself, in the group's ``lr``."""
    return {"lr": hp["lr"]}


SGD_HD = Algorithm(
    name="sgd-hd",
    class_name="SGDHD",
    title="SGD-HD: SGD whose learning rate follows its hypergradient",
    update=sgd_hd_update,
    hparams=tuple(SGD_HD_DEFAULTS),
    defaults=SGD_HD_DEFAULTS,
    validate=_validate_sgd_hd,
    state=_sgd_hd_state,
    step=False,
    effective_lr=_sgd_hd_effective_lr,
    group_pass=GroupPass(
        scope="group",
        scalars=_group_lr,
        prepare=_current_lr,
        init=_sgd_hd_init,
        reductions=(Reduction(sgd_hd_gather, descend_lr),),
    ),
)

ADAM_HD = Algorithm(
    name="adam-hd",
    class_name="AdamHD",
    title="Adam-HD: Adam whose learning rate follows its hypergradient",
    update=adam_hd_update,
    hparams=tuple(ADAM_HD_DEFAULTS),
    defaults=ADAM_HD_DEFAULTS,
    validate=_validate_adam_hd,
    state=lambda hp: dict.fromkeys(("step", "exp_avg", "exp_avg_sq")),
    step=False,
    effective_lr=_adam_hd_effective_lr,
    group_pass=GroupPass(
        scope="group",
        scalars=_group_lr,
        prepare=_current_lr,
        init=lambda p, hp, *, zeros_like, copy: {
            "step": 0,
            "exp_avg": zeros_like(p),
            "exp_avg_sq": zeros_like(p),
        },
        reductions=(Reduction(adam_hd_gather, descend_lr),),
    ),
)
