"""LARS: layer-wise adaptive rate scaling for large-batch SGD."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import (
    check_bool,
    check_eps,
    check_lr,
    check_range,
    check_weight_decay,
)


def trust_ratio(xp: ArrayOps, numerator: Array, denominator: Array, usable: Array) -> Array:
    """``numerator / denominator`` where ``usable``, else 1.

    A zero weight norm (a freshly zeroed layer) or a zero gradient or update
    norm has no meaningful layer scale, so the layer falls back to the plain
    step. Kept as a 0-d array: no host synchronisation on a GPU.
    """
    safe = xp.where(usable, denominator, 1.0)
    return xp.where(usable, numerator / safe, 1.0)


def lars_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    trust_clip: bool,
    exclude_bias_and_norm: bool,
) -> UpdateResult:
    r"""One LARS step (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks", Alg. 1).

    For each parameter tensor (a "layer") :math:`w` with gradient :math:`g`:

    .. math::

        \lambda_t &= \eta\, \frac{\lVert w_t \rVert}{\lVert g_t \rVert + \beta \lVert w_t \rVert + \epsilon}
            \quad (\lambda_t = 1 \text{ if } \lVert w_t\rVert = 0 \text{ or } \lVert g_t\rVert = 0) \\
        \lambda_t &\leftarrow \min(\lambda_t, 1) \quad \text{(only with ``trust_clip``)} \\
        v_{t+1} &= m\, v_t + \gamma\, \lambda_t\, (g_t + \beta\, w_t), \qquad v_0 = 0 \\
        w_{t+1} &= w_t - v_{t+1}

    with global learning rate :math:`\gamma` (``lr``), trust coefficient
    :math:`\eta`, weight decay :math:`\beta` and momentum :math:`m`. The
    learning rate sits inside the momentum buffer, as in the paper.

    Variant choices, stated exactly:

    * ``eps`` is added to the denominator of the trust ratio (the paper has none).
    * ``trust_clip`` (off by default, not in the paper) caps the local rate at
      the global one, as NVIDIA's LARC "clip" mode does.
    * ``exclude_bias_and_norm`` (off by default, not in the paper): tensors with
      at most one dimension (biases, normalisation scales) take a plain
      momentum-SGD step, with neither trust ratio nor weight decay, as the
      SimCLR and BYOL recipes do. Param groups give finer control.
    """
    new_state: dict[str, Array] = {}
    if exclude_bias_and_norm and p.ndim <= 1:
        update = lr * g
    else:
        w_norm = xp.norm(p)
        g_norm = xp.norm(g)
        ratio = trust_ratio(
            xp,
            trust_coefficient * w_norm,
            g_norm + weight_decay * w_norm + eps,
            (w_norm > 0) & (g_norm > 0),
        )
        g = g + weight_decay * p if weight_decay != 0 else g
        if trust_clip:
            ratio = xp.clip(ratio, 0.0, 1.0)
        update = (lr * ratio) * g
        new_state["trust_ratio"] = ratio
    if momentum != 0:
        update = state["momentum_buffer"] * momentum + update
        new_state["momentum_buffer"] = update
    return p - update, new_state


def lars_effective_lr(
    p: Array, state: dict[str, Array], *, step: float, xp: ArrayOps, lr: float, **_: Any
) -> Array:
    r""":math:`\gamma\,\lambda_t` of the last step, the same for every coordinate of a layer."""
    ratio = state.get("trust_ratio")
    return p * 0 + (lr if ratio is None else lr * ratio)


def _state(hp: HParams) -> dict[str, float | None]:
    # The trust ratio of the last step is kept (0-d) for the effective-rate diagnostic.
    state: dict[str, float | None] = {"trust_ratio": None}
    if hp["momentum"] != 0:
        state["momentum_buffer"] = 0.0
    return state


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "momentum", 0.0)
    check_weight_decay(hp)
    check_range(hp, "trust_coefficient", 0.0, low_open=True)
    check_eps(hp)
    check_bool(hp, "trust_clip")
    check_bool(hp, "exclude_bias_and_norm")


DEFAULTS: dict[str, Any] = {
    "lr": 1.0,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "trust_coefficient": 1e-3,
    "eps": 1e-8,
    "trust_clip": False,
    "exclude_bias_and_norm": False,
}

LARS = Algorithm(
    name="lars",
    class_name="LARS",
    depends_on_ndim=True,
    title="LARS: momentum SGD with a per-layer trust ratio ||w|| / ||g|| (large batches)",
    update=lars_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    step=False,
    effective_lr=lars_effective_lr,
)
