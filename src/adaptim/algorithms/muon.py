"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for 2-D weight matrices."""

from __future__ import annotations

import math
from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import as_float, check_bool, check_choice, check_range
from adaptim.algorithms.adafactor import _op  # a backend's optional op, or a clear TypeError
from adaptim.algorithms.adam import adam_effective_lr, adam_update

#: Keller Jordan's quintic coefficients (a, b, c), chosen for the steepest slope at zero.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
#: ``None`` is torch's default and means ``"original"``; ``"unscaled"`` is Keras' ``rms_rate=None``.
ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "unscaled")
NS_PRECISIONS = ("bfloat16", "param")
#: Which parameters the AdamW fallback steps: none (torch), those that are not 2-D
#: (Keras), or every parameter of the group (Keras' ``exclude_embeddings``/``exclude_layers``).
ADAMW_FOR = (None, "non_matrix", "all")


def newton_schulz(
    xp: ArrayOps,
    m: Array,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    *,
    precision: str = "bfloat16",
    eps_added: bool = False,
) -> Array:
    r"""An approximate orthogonalisation :math:`U S' V^\top` of :math:`M = U S V^\top`.

    With :math:`X_0 = M / \max(\lVert M\rVert_F, \epsilon)` (spectral norm at most 1;
    :math:`M / (\lVert M\rVert_F + \epsilon)` with ``eps_added``, as Keras 3 writes it)
    and, taking the wide orientation so that :math:`X X^\top` is the smaller Gram matrix,

    .. math::

        A_k = X_k X_k^\top, \qquad
        X_{k+1} = a X_k + (b A_k + c A_k^2)\, X_k ,

    each singular value :math:`\sigma` goes through the odd quintic
    :math:`a\sigma + b\sigma^3 + c\sigma^5`. Jordan's coefficients push the slope
    at zero to 3.4445, so five iterations bring every singular value into
    roughly [0.7, 1.2] rather than exactly 1, which does not hurt training.
    ``precision="bfloat16"`` runs the iteration in bfloat16 (``xp.to_bfloat16``),
    as torch's does; ``"param"`` in the parameter's own dtype, as Keras 3's does.
    The two halves, :func:`normalised` and :func:`iterate`, are also called
    apart by the torch front-end, which iterates on a stack of same-shaped
    matrices at once.
    """
    x = iterate(xp, normalised(xp, m, eps, precision, eps_added), coefficients, steps)
    return x.T if m.shape[0] > m.shape[1] else x


def normalised(xp: ArrayOps, m: Array, eps: float, precision: str, eps_added: bool) -> Array:
    r""":math:`X_0` of :func:`newton_schulz`: ``m`` in the iteration's precision, wide
    (:math:`M^\top` for a tall :math:`M`), over its Frobenius norm."""
    x = _op(xp, "to_bfloat16")(m) if precision == "bfloat16" else m
    if m.shape[0] > m.shape[1]:
        x = x.T
    norm = xp.norm(x)
    scale = norm + eps if eps_added else xp.clip(norm, eps, math.inf)
    if precision == "bfloat16":
        x /= scale  # in place on the bfloat16 copy, as torch does (a fresh buffer costs more)
    else:
        x = x / scale  # (x may be the momentum buffer itself)
    return x


def iterate(xp: ArrayOps, x: Array, coefficients: tuple[float, float, float], steps: int) -> Array:
    r"""``steps`` Newton–Schulz steps from a wide :math:`X_0`, or from a stack of them (a
    leading batch axis). :math:`A = X X^\top` and :math:`b A + c A A` are symmetric, which
    ``xp.symmetric_addmm`` may use (the torch front-end computes one triangle on the CPU)."""
    a, b, c = coefficients
    addmm, symmetric_addmm = _op(xp, "addmm"), _op(xp, "symmetric_addmm")
    for _ in range(steps):
        gram = symmetric_addmm(None, x, x.mT if x.ndim > 2 else x.T, 0.0, 1.0)
        x = addmm(x, symmetric_addmm(gram, gram, gram, b, c), x, a, 1.0)
    return x


def descend(
    xp: ArrayOps, p: Array, orthogonal: Array, lr: float, weight_decay: float, rate: float
) -> Array:
    r""":math:`(1 - \gamma\lambda)\,\theta - \mathrm{AdjustLR}(\gamma)\, O` (``rate`` is the adjusted rate)."""
    return xp.axpy(p * (1 - lr * weight_decay), orthogonal, -rate)


def adjusted_lr(
    lr: float, adjust_lr_fn: str | None, shape: tuple[int, ...], rms_rate: float = 0.2
) -> float:
    r"""The learning rate scaled for an :math:`A \times B` matrix, so that the update's RMS
    does not depend on its aspect ratio: :math:`\gamma\sqrt{\max(1, A/B)}` (``"original"``,
    Jordan's, the default), :math:`r\,\gamma\sqrt{\max(A, B)}` (``"match_rms_adamw"``,
    Liu et al. 2025, with ``rms_rate`` :math:`r` = 0.2 matching AdamW's update RMS so
    AdamW's lr and decay carry over) or :math:`\gamma` (``"unscaled"``)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (rms_rate * math.sqrt(max(rows, cols)))
    if adjust_lr_fn == "unscaled":
        return lr
    return lr * math.sqrt(max(1, rows / cols))


def uses_adamw(shape: tuple[int, ...], adamw_for: str | None) -> bool:
    """Whether the AdamW fallback steps a parameter of ``shape`` (see :data:`ADAMW_FOR`)."""
    return adamw_for == "all" or (adamw_for == "non_matrix" and len(shape) != 2)


def momentum_direction(
    xp: ArrayOps, buffer: Array, g: Array, momentum: float, nesterov: bool, average: bool
) -> tuple[Array, Array]:
    r"""The new momentum buffer and the direction to orthogonalise.

    ``average`` (torch): :math:`B_t = \mu B_{t-1} + (1-\mu) g_t`, Nesterov
    :math:`(1-\mu) g_t + \mu B_t`; otherwise (Jordan's and Keras 3's sum):
    :math:`B_t = \mu B_{t-1} + g_t`, Nesterov :math:`g_t + \mu B_t`. The two
    differ by the factor :math:`1-\mu`, which the normalisation before the
    iteration removes, up to rounding and ``eps``.
    """
    if average:
        buffer = xp.lerp(buffer, g, 1 - momentum)
        return buffer, xp.lerp(g, buffer, momentum) if nesterov else buffer
    buffer = xp.axpy(g, buffer, momentum)
    return buffer, xp.axpy(g, buffer, momentum) if nesterov else buffer


def _adamw_fallback(
    p: Array, g: Array, state: dict[str, Array], xp: ArrayOps, hp: HParams
) -> UpdateResult:
    r"""Keras 3's AdamW step for the parameters Muon does not take (see :func:`muon_update`)."""
    previous = state.get("step")
    count = 1.0 if previous is None else float(previous) + 1
    p = p * (1 - hp["lr"] * hp["adam_weight_decay"])  # the base lr: Keras ignores the ratio here
    zeros = g * 0
    moments = {k: zeros if state.get(k) is None else state[k] for k in ("exp_avg", "exp_avg_sq")}
    p, new_state = adam_update(
        p, g, moments, step=count, xp=xp, lr=hp["lr"] * hp["adam_lr_ratio"],
        betas=hp["adam_betas"], eps=hp["adam_eps"], weight_decay=0.0, amsgrad=False,
        decoupled_weight_decay=True, epsilon_hat=True,
    )  # fmt: skip
    # a 0-d count in the parameter's dtype (the norm of no elements is exactly 0)
    new_state["step"] = xp.norm(g.reshape(-1)[:0]) + count
    return p, new_state


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
    momentum_average: bool = True,
    ns_precision: str = "bfloat16",
    eps_added: bool = False,
    rms_rate: float = 0.2,
    adamw_for: str | None = None,
    **adamw: Any,
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
    kernels unless reshaped) belong to another optimizer. Where torch 2.13's
    ``torch.optim.Muon`` (the default) and Keras 3.15's ``keras.optimizers.Muon``
    (``flavor="keras"``) differ, each point is an option:

    * ``adamw_for`` (torch ``None``, Keras ``"non_matrix"``): torch refuses
      parameters that are not 2-D at construction, so the caller splits the
      model between two optimizers. Keras steps every parameter that is not
      2-D with AdamW inside the same optimizer; ``"all"`` sends a whole param
      group to AdamW, which is how adaptim, having no variable names, expresses
      Keras' ``exclude_embeddings`` (a path containing "embedding") and
      ``exclude_layers`` (regular expressions on the path): put those
      parameters in a group of their own. The fallback is Keras' AdamW in the
      "epsilon hat" form (:func:`~adaptim.algorithms.adam.adam_update`):

      .. math::

          \theta &\leftarrow (1 - \gamma\lambda_A)\,\theta \\
          m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
          v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
          \theta_t &= \theta - \rho\gamma\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
              \frac{m_t}{\sqrt{v_t} + \hat\epsilon}

      with ``adam_betas`` :math:`(\beta_1, \beta_2)` (0.9, 0.999), ``adam_eps``
      :math:`\hat\epsilon` (1e-7), ``adam_weight_decay`` :math:`\lambda_A`
      (0.004, applied with the base :math:`\gamma`, as Keras does) and
      ``adam_lr_ratio`` :math:`\rho` (1). Such a parameter's state is
      torch's AdamW layout: ``step`` (0-d, the parameter's dtype; Keras counts
      the optimizer's iterations instead, the same when every parameter
      gets a gradient on every step), ``exp_avg`` and ``exp_avg_sq``.
      With ``adamw_for`` set, every entry is created on a parameter's first step.
    * ``momentum_average`` (torch ``True``, Keras ``False``): see
      :func:`momentum_direction`; Keras and Jordan keep the plain sum
      :math:`\mu B + g`.
    * ``ns_precision`` (torch ``"bfloat16"``, Keras ``"param"``): the dtype of
      the iteration. The NumPy front-end, lacking bfloat16, runs torch's in
      float32, so it follows torch only to bfloat16's precision (about 3
      significant digits per step), and Keras' exactly.
    * ``eps_added`` (torch ``False``, Keras ``True``): the normalisation
      divides by :math:`\max(\lVert M\rVert_F, \epsilon)` or by
      :math:`\lVert M\rVert_F + \epsilon` (Keras hard-codes :math:`\epsilon` =
      1e-7, torch's default ``eps``).
    * ``adjust_lr_fn`` (torch ``None`` = ``"original"``, Keras
      ``"match_rms_adamw"``) and ``rms_rate`` (0.2, Liu et al.'s constant,
      which torch hard-codes; Keras' ``rms_rate``, whose ``None`` is
      ``adjust_lr_fn="unscaled"``).
    * ``weight_decay``: torch 0.1, Keras 0.004; both decoupled,
      :math:`(1-\gamma\lambda)\theta` before the step, with the unadjusted
      :math:`\gamma`.

    The step is not element-wise: it runs on the per-tensor reference path.
    """
    if uses_adamw(tuple(p.shape), adamw_for):
        return _adamw_fallback(p, g, state, xp, {"lr": lr, **adamw})
    previous = state.get("momentum_buffer")
    buffer, direction = momentum_direction(
        xp, g * 0 if previous is None else previous, g, momentum, nesterov, momentum_average
    )
    orthogonal = newton_schulz(
        xp, direction, ns_coefficients, ns_steps, eps, precision=ns_precision, eps_added=eps_added
    )
    rate = adjusted_lr(lr, adjust_lr_fn, tuple(p.shape), rms_rate)
    return descend(xp, p, orthogonal, lr, weight_decay, rate), {"momentum_buffer": buffer}


def muon_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    adjust_lr_fn: str | None,
    rms_rate: float = 0.2,
    adamw_for: str | None = None,
    **adamw: Any,
) -> Array:
    r""":math:`\mathrm{AdjustLR}(\gamma)` for every entry: the step length along the
    orthogonalised direction, whose singular values are all near 1; for a parameter
    the AdamW fallback steps, AdamW's :math:`\rho\gamma\sqrt{1-\beta_2^t}/(1-\beta_1^t)
    /(\sqrt{v_t}+\hat\epsilon)` (``None`` before its first step)."""
    if not uses_adamw(tuple(p.shape), adamw_for):
        return p * 0 + adjusted_lr(lr, adjust_lr_fn, tuple(p.shape), rms_rate)
    if state.get("exp_avg_sq") is None:
        return None
    return adam_effective_lr(
        p, state, step=float(state["step"]), xp=xp, lr=lr * adamw["adam_lr_ratio"],
        betas=adamw["adam_betas"], eps=adamw["adam_eps"], epsilon_hat=True,
    )  # fmt: skip


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
    check_bool(hp, "momentum_average")
    check_choice(hp, "ns_precision", NS_PRECISIONS)
    check_bool(hp, "eps_added")
    check_range(hp, "rms_rate", 0.0)
    if hp["adamw_for"] not in ADAMW_FOR:
        raise ValueError(
            f"Invalid adamw_for: {hp['adamw_for']!r}; allowed: "
            + ", ".join(map(repr, ADAMW_FOR))
            + "."
        )
    betas = hp["adam_betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid adam_betas: {betas!r}; expected a pair (beta1, beta2).")
    for index, beta in enumerate(betas):
        label = f"adam_betas (beta{index + 1})"
        check_range(hp, "adam_betas", 0.0, 1.0, high_open=True, label=label, value=beta)
    check_range(hp, "adam_eps", 0.0)
    check_range(hp, "adam_weight_decay", 0.0)
    check_range(hp, "adam_lr_ratio", 0.0)


def _state(hp: HParams) -> dict[str, float | None]:
    if hp["adamw_for"] is None:
        return {"momentum_buffer": 0.0}  # torch's layout, created at the first step
    # Muon's or AdamW's entries, whichever the parameter's shape calls for: made by the rule.
    return {"momentum_buffer": None, "step": None, "exp_avg": None, "exp_avg_sq": None}


def _takes_any_rank(hp: HParams) -> bool:
    return hp["adamw_for"] is not None


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.1,
    "momentum": 0.95,
    "nesterov": True,
    "ns_coefficients": NS_COEFFICIENTS,
    "eps": 1e-7,
    "ns_steps": 5,
    "adjust_lr_fn": None,
    # -- options where Keras 3 differs (torch's values; see muon_update) --
    "momentum_average": True,
    "ns_precision": "bfloat16",
    "eps_added": False,
    "rms_rate": 0.2,
    "adamw_for": None,
    # -- the AdamW fallback (Keras' defaults; unused while adamw_for is None) --
    "adam_betas": (0.9, 0.999),
    "adam_eps": 1e-7,
    "adam_weight_decay": 0.004,
    "adam_lr_ratio": 1.0,
}

MUON = Algorithm(
    name="muon",
    class_name="Muon",
    title="Muon: momentum orthogonalised by Newton–Schulz, for 2-D weight matrices",
    update=muon_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    step=False,
    effective_lr=muon_effective_lr,
    recordable=False,
    complex_params=False,
    param_ndim=2,
    any_rank=_takes_any_rank,
    sparse_alternative="adaptim.SparseAdam for embeddings, adaptim.Adagrad or adaptim.SGD",
)
