"""SM3: AdaGrad with one accumulator per row and per column instead of one per element."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._axes import axis_maxima, axis_piece
from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import check_eps, check_lr, check_range


def cover_maxima(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The accumulator of a tensor of two or more axes: one value per index of each axis, concatenated."""
    return {"accumulator": (sum(shape),)} if len(shape) >= 2 else {}


def _minimum(a: Array, b: Array, xp: ArrayOps) -> Array:
    if xp.minimum is not None:  # one pass over the broadcast result instead of two
        return xp.minimum(a, b)
    return -xp.maximum(-a, -b)


def _cover_minimum(xp: ArrayOps, accumulator: Array, like: Array) -> Array:
    r""":math:`\min_a \mu^{(a)}(i_a)` broadcast to ``like``'s shape (the axes' pieces of ``accumulator``)."""
    smallest = axis_piece(xp, accumulator, like, 0)
    for axis in range(1, like.ndim):
        smallest = _minimum(smallest, axis_piece(xp, accumulator, like, axis), xp)
    return smallest


def sm3_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    momentum: float,
    eps: float,
) -> UpdateResult:
    r"""One SM3 step (Anil et al. 2019, "Memory-Efficient Adaptive Optimization", NeurIPS,
    Algorithm SM3-II), with momentum as in optax and the authors' code.

    For a tensor with axes :math:`1..k` (:math:`k \ge 2`), one accumulator
    :math:`\mu^{(a)}` per axis holds a value per index of that axis (a matrix:
    one per row and one per column). With :math:`i = (i_1, \dots, i_k)`:

    .. math::

        \nu_t(i) &= \min_a \mu^{(a)}_{t-1}(i_a) + g_t(i)^2 \\
        \mu^{(a)}_t(j) &= \max_{i:\, i_a = j} \nu_t(i) \\
        u_t(i) &= g_t(i) / \sqrt{\nu_t(i) + \epsilon}
            \quad (0 \text{ where } \nu_t(i) = 0) \\
        b_t &= \beta\, b_{t-1} + (1-\beta)\, u_t, \qquad
        \theta_t = \theta_{t-1} - \gamma\, b_t

    Vectors and scalars keep one accumulator per element (plain AdaGrad).
    The state is ``accumulator`` (the per-axis vectors concatenated, of
    length :math:`\sum_a n_a`, for two or more axes; the parameter's shape
    otherwise) and ``momentum_buffer`` (:math:`b`, absent when ``momentum=0``):
    for an :math:`n \times m` matrix, :math:`n + m` values instead of AdaGrad's
    :math:`nm`. :math:`\nu_t` upper-bounds AdaGrad's sum of squares, so the
    steps are at most AdaGrad's.

    Where frameworks differ (see :mod:`adaptim.flavors`):

    * ``optax`` (the default; ``optax.sm3``): momentum 0.9, ε = 1e-8 inside
      the root; optax has no default learning rate, adaptim's is 1e-2, and
      optax refuses scalar (0-d) parameters, which adaptim treats as vectors.
    * ``paper``: SM3-II has neither momentum nor ε (``momentum=0, eps=0``).

    Not element-wise: the accumulator's pieces and maxima are the per-axis
    operations of :mod:`adaptim.algorithms._axes`, which the engine records as
    such (a matrix's step is then one fused pass that reads ``row[i]`` and
    ``column[j]`` and keeps both maxima). Complex parameters are refused, as in optax. torch.optim
    has no SM3; there is no ``effective_lr`` (it depends on the next gradient).
    """
    square = g * g
    accumulator = state["accumulator"]
    if p.ndim < 2:
        covered = square + accumulator
        new_accumulator = covered
    else:
        covered = square + _cover_minimum(xp, accumulator, g)
        new_accumulator = axis_maxima(xp, covered)
    positive = covered > 0
    safe = xp.where(positive, covered, 1.0)
    direction = xp.where(positive, g / xp.sqrt(safe + eps), 0.0)
    new_state = {"accumulator": new_accumulator}
    if momentum != 0:
        direction = xp.lerp(state["momentum_buffer"], direction, 1 - momentum)
        new_state["momentum_buffer"] = direction
    return p - lr * direction, new_state


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "momentum", 0.0, 1.0, high_open=True)
    check_eps(hp)


def _state(hp: HParams) -> dict[str, float | None]:
    state: dict[str, float | None] = {"accumulator": 0.0}
    if hp["momentum"] != 0:
        state["momentum_buffer"] = 0.0
    return state


DEFAULTS: dict[str, Any] = {"lr": 1e-2, "momentum": 0.9, "eps": 1e-8}

SM3 = Algorithm(
    name="sm3",
    class_name="SM3",
    default_flavor="optax",
    depends_on_ndim=True,  # vectors are element-wise; matrices keep per-axis maxima
    title="SM3: AdaGrad with per-row and per-column accumulators (memory-light)",
    update=sm3_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    state_shape=cover_maxima,
    step=False,  # no bias correction or schedule: no step counter (optax keeps none)
)
