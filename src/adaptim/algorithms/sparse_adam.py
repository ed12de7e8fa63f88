"""SparseAdam: Adam restricted to the rows a sparse gradient touches (torch.optim's variant)."""

from __future__ import annotations

import math
from typing import Any, Literal

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import as_float, check_betas, check_range


def sparse_adam_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> UpdateResult:
    r"""One SparseAdam step on the rows a sparse gradient holds (Kingma & Ba 2015,
    "Adam: A Method for Stochastic Optimization", Algorithm 1, masked to the
    materialised entries of the gradient; torch.optim's ``SparseAdam``).

    The front-end calls the rule with ``p``, ``g`` and the moments gathered at
    the gradient's (coalesced) indices; every other row keeps its parameter and
    moments untouched:

    .. math::

        m_t &= m_{t-1} + (1-\beta_1)(g_t - m_{t-1}) \\
        v_t &= v_{t-1} + (1-\beta_2)(g_t^2 - v_{t-1}) \\
        \theta_t &= \theta_{t-1} - \gamma\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{v_t} + \epsilon}

    with ``betas`` :math:`(\beta_1, \beta_2)` (0.9, 0.999), ``eps`` :math:`\epsilon`
    (1e-8) and ``lr`` :math:`\gamma` (1e-3). State: ``step`` (one count per
    parameter, advanced on every step that has a gradient, however few rows it
    touches), ``exp_avg`` and ``exp_avg_sq``.

    Points where implementations differ:

    * Unlike dense Adam, a row's moments decay only on the steps that touch it,
      and the bias correction uses the parameter's step count, not the row's:
      a rarely seen row gets the correction of a much later step. This is
      torch's "masked version of Adam", followed here; TensorFlow Addons'
      ``LazyAdam`` is the same idea. Dense Adam given a sparse gradient
      (adaptim's refuses it) would decay every row's moments instead.
    * ε is added after the square root and the bias correction of the second
      moment is folded into the step size (Algorithm 1's last two lines, the
      "epsilon hat" form), as torch's SparseAdam does (its dense Adam
      corrects :math:`v_t` first).
    * torch refuses dense gradients ("consider Adam instead"); adaptim does the
      same, since the masked update of a dense gradient would be plain Adam with
      other arithmetic.
    """
    beta1, beta2 = betas
    # In place on the rule's own temporaries only (the same arithmetic as the binary
    # operators): each fresh row-sized array costs page faults on the CPU, and
    # torch's SparseAdam, the speed reference, allocates few.
    exp_avg = g - state["exp_avg"]
    exp_avg *= 1 - beta1
    exp_avg += state["exp_avg"]  # the change added to the old value, as torch adds it
    exp_avg_sq = g * g
    exp_avg_sq -= state["exp_avg_sq"]
    exp_avg_sq *= 1 - beta2
    exp_avg_sq += state["exp_avg_sq"]
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    denominator = xp.sqrt(exp_avg_sq)
    denominator += eps
    direction = exp_avg / denominator
    direction *= -step_size
    return p + direction, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def sparse_adam_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    **_: Any,
) -> Array:
    r""":math:`\gamma\sqrt{1-\beta_2^t}/(1-\beta_1^t) / (\sqrt{v_t}+\epsilon)` at the current
    step, for every row (a row the next gradient misses does not move)."""
    beta1, beta2 = betas
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    return step_size / (xp.sqrt(state["exp_avg_sq"]) + eps)


def _validate(hp: HParams) -> None:
    # torch refuses lr = 0 and eps = 0 here (unlike its Adam).
    check_range(hp, "lr", 0.0, low_open=True)
    check_range(hp, "eps", 0.0, low_open=True)
    check_betas(hp)
    as_float("lr", hp["lr"])


def _rows(hp: HParams) -> Literal["rows"]:
    return "rows"


DEFAULTS: dict[str, Any] = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}

SPARSE_ADAM = Algorithm(
    name="sparseadam",
    class_name="SparseAdam",
    title="SparseAdam: Adam on the rows a sparse gradient touches (nn.Embedding(sparse=True))",
    update=sparse_adam_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0, "exp_avg_sq": 0.0},
    effective_lr=sparse_adam_effective_lr,
    sparse=_rows,
    dense_gradients=False,
    complex_params=False,
)
