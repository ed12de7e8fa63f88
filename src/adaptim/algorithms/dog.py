r"""DoG and LDoG: SGD whose step size is the distance travelled over the root of the summed squared gradients.

Ivgi, Hinder & Carmon 2023, "DoG is SGD's Best Friend: A Parameter-Free
Dynamic Step Size Schedule" (ICML 2023, arXiv:2302.12022). Checked against
the authors' package ``dog-optimizer`` 1.0.3 (``dog.DoG``, ``dog.LDoG``).
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
    coupled_weight_decay,
)
from adaptim.algorithms._validation import check_range

_EQUATIONS = r"""

    With :math:`x_0` the parameters at the first step, :math:`g_t` the
    gradient (plus :math:`\lambda x_t` when ``weight_decay`` :math:`\lambda > 0`)
    and :math:`c` the ``lr``:

    .. math::

        \bar r_0 &= r_\epsilon = \text{reps\_rel}\,(1 + \lVert x_0 \rVert), \qquad
        \bar r_t = \max\big(\bar r_{t-1},\ \lVert x_t - x_0 \rVert\big) \\
        G_t &= \epsilon + \textstyle\sum_{i \le t} \lVert g_i \rVert^2 \\
        \eta_t &= c\, \bar r_t / \sqrt{G_t}, \qquad x_{t+1} = x_t - \eta_t\, g_t

    ``init_eta``, when given, replaces :math:`\eta_0` (and ``reps_rel`` is set
    to 0, so :math:`\bar r_0 = 0`), as in the reference. The paper's
    guarantees are for the *averaged* iterate: evaluate a
    :class:`adaptim.torch.PolynomialAverager` of the model (polynomial decay,
    :math:`\gamma = 8`), which the authors call crucial for good results.
    ``reps_rel`` 1e-6 is their default, 1e-4 for models with batch norm.

    As in ``dog-optimizer`` 1.0.3, :math:`\epsilon` is added once to
    :math:`G` (on the first step), weight decay is L2 added to the gradient
    before it enters :math:`G`, and a first step with :math:`G_0 = 0` (all
    gradients zero and ``eps=0``) is refused. Differences: the reference adds
    :math:`\lambda x` to ``p.grad`` in place (the caller's gradient changes);
    adaptim leaves the caller's gradient alone. The reference starts every
    group on the optimizer's first step; adaptim starts a tensor on the first
    step it has a gradient (the reference fails on a missing gradient).
"""


def _first(scalars: GroupScalars) -> bool:
    return scalars["rbar"] is None


def dog_gather(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    weight_decay: float,
    **_: Any,
) -> tuple[dict[str, Array], dict[str, PartialSum]]:
    r"""This tensor's share of :math:`\lVert g_t\rVert^2` and of :math:`\lVert x_0\rVert^2` (first step) or :math:`\lVert x_t - x_0\rVert^2`."""
    g = coupled_weight_decay(xp, p, g, weight_decay)
    sums: dict[str, PartialSum] = {"grad_sq": Partial(g, 1.0, g)}
    if _first(scalars):
        sums["start_sq"] = Partial(p, 1.0, p)
    else:
        moved = p - state["init_buffer"]
        sums["moved_sq"] = Partial(moved, 1.0, moved)
    return {}, sums


def _refuse_zero_g(owner: str, eps: float) -> ValueError:
    return ValueError(
        f"Invalid eps: {eps!r} with all-zero first gradients; {owner} divides by "
        "sqrt(eps + sum of squared gradients), which is 0 here. Use eps > 0 (default 1e-8)."
    )


def dog_combine(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    r"""The new :math:`\bar r_t`, :math:`G_t` and :math:`\eta_t` of the group."""
    if "grad_sq" not in sums:  # no tensor has a gradient: nothing moves, nothing starts
        return None
    hp = hps[0]
    if _first(scalars):
        rbar = hp["reps_rel"] * (1 + math.sqrt(sums["start_sq"]))
        total = sums["grad_sq"] + hp["eps"]
        if not total > 0:
            raise _refuse_zero_g("DoG", hp["eps"])
    else:
        rbar = max(scalars["rbar"], math.sqrt(sums["moved_sq"]))
        total = scalars["G"] + sums["grad_sq"]
    eta = hp["lr"] * rbar / math.sqrt(total)
    if _first(scalars) and hp["init_eta"] is not None:
        eta = float(hp["init_eta"])
    return {**scalars, "rbar": rbar, "G": total, "eta": eta}


def dog_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    weight_decay: float,
    **_: Any,
) -> UpdateResult:
    g = coupled_weight_decay(xp, p, g, weight_decay)
    return xp.axpy(p, g, -scalars["eta"]), {}


dog_update.__doc__ = (
    "One DoG step (Ivgi, Hinder & Carmon 2023, Alg. 1): one step size for the whole "
    "param group, the norms taken over all its tensors as one vector." + _EQUATIONS
)


def ldog_gather(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    weight_decay: float,
    eps: float,
    **_: Any,
) -> tuple[dict[str, Array], dict[str, PartialSum]]:
    """Counts the tensors whose first :math:`G` would be 0, so the step is refused before anything moves."""
    if "rbar" in state or eps > 0:
        return {}, {}
    g = coupled_weight_decay(xp, p, g, weight_decay)
    return {}, {"zero_g": Partial(((g**2).sum() <= 0) * 1.0)}


def ldog_combine(
    scalars: GroupScalars, sums: dict[str, float], hps: list[HParams]
) -> GroupScalars | None:
    if sums.get("zero_g", 0.0) > 0:
        raise _refuse_zero_g("LDoG", hps[0]["eps"])
    return scalars


def ldog_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    scalars: GroupScalars,
    xp: ArrayOps,
    reps_rel: float,
    lr: float,
    weight_decay: float,
    eps: float,
    init_eta: float | None,
    **_: Any,
) -> UpdateResult:
    g = coupled_weight_decay(xp, p, g, weight_decay)
    grad_sq = (g**2).sum()
    first = "rbar" not in state
    if first:
        rbar = reps_rel * (1 + xp.norm(p))
        total = grad_sq + eps
    else:
        rbar = xp.maximum(state["rbar"], xp.norm(p - state["init_buffer"]))
        total = state["G"] + grad_sq
    eta = lr * rbar / xp.sqrt(total)
    if first and init_eta is not None:
        eta = eta * 0 + init_eta
    return xp.axpy(p, g, -eta), {"rbar": rbar, "G": total, "eta": eta}


ldog_update.__doc__ = (
    "One LDoG step (layer-wise DoG; Ivgi, Hinder & Carmon 2023, Sec. 4): every tensor "
    "its own :math:`\\bar r`, :math:`G` and :math:`\\eta`, kept in its state (in its dtype, "
    "as the reference computes them)." + _EQUATIONS
)


def _init(p: Array, hp: HParams, *, zeros_like: Any, copy: Any) -> dict[str, Any]:
    """:math:`x_0`, under the reference's name."""
    return {"init_buffer": copy(p)}


def dog_effective_lr(
    p: Array, state: dict[str, Array], *, scalars: GroupScalars, **_: Any
) -> Array:
    """The last step's :math:`\\eta` for every coordinate (0 before the first step)."""
    return p * 0 + (scalars["eta"] or 0.0)


def ldog_effective_lr(p: Array, state: dict[str, Array], **_: Any) -> Array:
    return p * 0 + state["eta"] if "eta" in state else p * 0


def _validate(hp: HParams) -> None:
    check_range(hp, "lr", 0.0, low_open=True)
    check_range(hp, "weight_decay", 0.0)
    check_range(hp, "eps", 0.0)
    if hp["init_eta"] is None:
        check_range(hp, "reps_rel", 0.0, low_open=True)
    else:
        check_range(hp, "init_eta", 0.0, low_open=True)
        check_range(hp, "reps_rel", 0.0)


DEFAULTS: dict[str, Any] = {
    "reps_rel": 1e-6,
    "lr": 1.0,
    "weight_decay": 0.0,
    "eps": 1e-8,
    "init_eta": None,
}

DOG = Algorithm(
    name="dog",
    class_name="DoG",
    title="DoG: SGD with step size max distance from the start over √(Σ‖g‖²)",
    update=dog_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"init_buffer": None},
    step=False,
    effective_lr=dog_effective_lr,
    group_pass=GroupPass(
        scope="group",
        scalars=lambda hp: {"rbar": None, "G": None, "eta": None},
        prepare=lambda scalars, hps: scalars,
        init=_init,
        reductions=(Reduction(dog_gather, dog_combine),),
    ),
)

LDOG = Algorithm(
    name="ldog",
    class_name="LDoG",
    title="LDoG: layer-wise DoG, one step size per tensor",
    update=ldog_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: dict.fromkeys(("init_buffer", "rbar", "G", "eta")),
    step=False,
    effective_lr=ldog_effective_lr,
    # Its step size is one 0-d tensor per parameter, the alpha of an axpy: foreach kernels
    # take a Python scalar there, so a replay would loop per tensor anyway.
    recordable=False,
    group_pass=GroupPass(
        scope="group",
        scalars=lambda hp: {},
        prepare=lambda scalars, hps: scalars,
        init=_init,
        reductions=(Reduction(ldog_gather, ldog_combine),),
    ),
)
