"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for 2-D weight matrices."""

from __future__ import annotations

import math
from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import as_float, check_bool, check_range
from adaptim.algorithms.adafactor import _op  # a backend's optional op, or a clear TypeError

#: Keller Jordan's quintic coefficients (a, b, c), chosen for the steepest slope at zero.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def newton_schulz(
    xp: ArrayOps, m: Array, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Array:
    r"""An approximate orthogonalisation :math:`U S' V^\top` of :math:`M = U S V^\top`.

    With :math:`X_0 = M / \max(\lVert M\rVert_F, \epsilon)` (spectral norm at most 1)
    and, taking the wide orientation so that :math:`X X^\top` is the smaller Gram matrix,

    .. math::

        A_k = X_k X_k^\top, \qquad
        X_{k+1} = a X_k + (b A_k + c A_k^2)\, X_k ,

    each singular value :math:`\sigma` goes through the odd quintic
    :math:`a\sigma + b\sigma^3 + c\sigma^5`. Jordan's coefficients push the slope
    at zero to 3.4445, so five iterations bring every singular value into
    roughly [0.7, 1.2] rather than exactly 1, which does not hurt training.
    The iteration runs in bfloat16 (``xp.to_bfloat16``), as torch's does.
    """
    a, b, c = coefficients
    x = _op(xp, "to_bfloat16")(m)
    tall = m.shape[0] > m.shape[1]
    if tall:
        x = x.T
    x = x / xp.clip(xp.norm(x), eps, math.inf)
    addmm = _op(xp, "addmm")
    for _ in range(steps):
        gram = x @ x.T
        x = addmm(x, addmm(gram, gram, gram, b, c), x, a, 1.0)
    return x.T if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    r"""The learning rate scaled for an :math:`A \times B` matrix, so that the update's RMS
    does not depend on its aspect ratio: :math:`\gamma\sqrt{\max(1, A/B)}` (``"original"``,
    Jordan's, the default) or :math:`0.2\,\gamma\sqrt{\max(A, B)}` (``"match_rms_adamw"``,
    Liu et al. 2025, which matches AdamW's update RMS so AdamW's lr and decay carry over)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (0.2 * math.sqrt(max(rows, cols)))
    return lr * math.sqrt(max(1, rows / cols))


def muon_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    eps: float,
    ns_steps: int,
    adjust_lr_fn: str | None,
) -> UpdateResult:
    r"""One Muon step on a 2-D parameter (Jordan et al. 2024, "Muon: An optimizer for
    hidden layers in neural networks", kellerjordan.github.io/posts/muon; the learning-rate
    adjustment of Liu et al. 2025, "Muon is Scalable for LLM Training", Section 2.2):

    .. math::

        B_t &= \mu B_{t-1} + (1-\mu)\, g_t \\
        \tilde B_t &= \begin{cases} (1-\mu)\, g_t + \mu B_t & \text{nesterov} \\
            B_t & \text{otherwise} \end{cases} \\
        O_t &= \mathrm{NS}^{(a,b,c)}_k(\tilde B_t;\ \epsilon) \\
        \theta_t &= (1 - \gamma\lambda)\,\theta_{t-1} - \mathrm{AdjustLR}(\gamma)\, O_t

    with ``momentum`` :math:`\mu` (0.95), ``nesterov`` (True), ``ns_coefficients``
    :math:`(a, b, c)` (3.4445, -4.7750, 2.0315), ``ns_steps`` :math:`k` (5),
    ``eps`` :math:`\epsilon` (1e-7), decoupled ``weight_decay`` :math:`\lambda`
    (0.1), ``lr`` :math:`\gamma` (1e-3) and ``adjust_lr_fn`` (see
    :func:`adjusted_lr`; ``None`` is ``"original"``). :math:`\mathrm{NS}` is
    :func:`newton_schulz`. State: ``momentum_buffer`` only (no step count).

    Muon is meant for the weight matrices of hidden layers; embeddings, the
    output layer and every non-2-D parameter (biases, norm scales, convolution
    kernels unless reshaped) belong to another optimizer. Points where
    implementations differ:

    * torch (followed here) refuses parameters that are not 2-D at
      construction, so the caller splits the model between two optimizers.
      Keras 3's ``keras.optimizers.Muon`` instead steps every non-2-D
      parameter (and any variable it is told to exclude) with AdamW, inside
      the same optimizer (``adam_beta_1``, ``adam_beta_2``, ``epsilon``,
      ``adam_lr_ratio``); adaptim does not ship that flavor (yet).
    * torch's momentum buffer is an exponential moving average
      (``lerp`` by :math:`1-\mu`), not Jordan's plain sum :math:`\mu B + g`;
      the two differ by the factor :math:`1-\mu`, which the normalisation
      before the iteration removes, up to rounding and ``eps``.
    * torch runs the iteration in bfloat16 whatever the parameter's dtype;
      the NumPy front-end, lacking bfloat16, runs it in float32, so it follows
      torch only to bfloat16's precision (about 3 significant digits per step).
    * The step is not element-wise: it runs on the per-tensor reference path.
    """
    buffer = xp.lerp(state["momentum_buffer"], g, 1 - momentum)
    direction = xp.lerp(g, buffer, momentum) if nesterov else buffer
    orthogonal = newton_schulz(xp, direction, ns_coefficients, ns_steps, eps)
    p = p * (1 - lr * weight_decay)
    rate = adjusted_lr(lr, adjust_lr_fn, tuple(p.shape))
    return xp.axpy(p, orthogonal, -rate), {"momentum_buffer": buffer}


def muon_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    adjust_lr_fn: str | None,
    **_: Any,
) -> Array:
    r""":math:`\mathrm{AdjustLR}(\gamma)` for every entry: the step length along the
    orthogonalised direction, whose singular values are all near 1."""
    return p * 0 + adjusted_lr(lr, adjust_lr_fn, tuple(p.shape))


def _validate(hp: HParams) -> None:
    check_range(hp, "lr", 0.0)
    check_range(hp, "weight_decay", 0.0)
    check_range(hp, "momentum", 0.0)  # torch sets no upper bound
    check_bool(hp, "nesterov")
    coefficients = hp["ns_coefficients"]
    if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
        raise ValueError(
            f"Invalid ns_coefficients: {coefficients!r}; expected three numbers (a, b, c)."
        )
    for name, value in zip("abc", coefficients, strict=True):
        check_range(hp, "ns_coefficients", label=f"ns_coefficients ({name})", value=value)
    check_range(hp, "eps", 0.0)
    steps = hp["ns_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 100:
        raise ValueError(
            f"Invalid ns_steps: {steps!r}; allowed: an integer 0 <= ns_steps < 100 "
            "(torch's limit, for the iteration's cost)."
        )
    if hp["adjust_lr_fn"] not in ADJUST_LR_FNS:
        raise ValueError(
            f"Invalid adjust_lr_fn: {hp['adjust_lr_fn']!r}; allowed: "
            + ", ".join(map(repr, ADJUST_LR_FNS))
            + "."
        )
    as_float("lr", hp["lr"])


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.1,
    "momentum": 0.95,
    "nesterov": True,
    "ns_coefficients": NS_COEFFICIENTS,
    "eps": 1e-7,
    "ns_steps": 5,
    "adjust_lr_fn": None,
}

MUON = Algorithm(
    name="muon",
    class_name="Muon",
    title="Muon: momentum orthogonalised by Newton–Schulz, for 2-D weight matrices",
    update=muon_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"momentum_buffer": 0.0},
    step=False,
    effective_lr=muon_effective_lr,
    recordable=False,
    complex_params=False,
    param_ndim=2,
    sparse_alternative="adaptim.SparseAdam for embeddings, adaptim.Adagrad or adaptim.SGD",
)
