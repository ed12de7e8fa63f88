"""Two constructions where adaptive methods provably go wrong.

* ``reddi``: the stochastic convex problem of Reddi, Kale & Kumar, "On the
  Convergence of Adam and Beyond" (ICLR 2018, Section 3 and Theorem 3), on
  which Adam converges to the worst point of the feasible set while AMSGrad
  finds the optimum.
* ``wilson``: the over-parameterized least-squares classification problem of
  Wilson, Roelofs, Stern, Srebro & Recht, "The Marginal Value of Adaptive
  Gradient Methods in Machine Learning" (NeurIPS 2017, Section 3.3), on which
  gradient descent reaches zero test error while AdaGrad, RMSprop and Adam
  classify every test point as the majority class.
"""

from __future__ import annotations

import numpy as np
import torch

from adaptim.lab.problems.base import BuildContext, Metric, Problem, Setup
from adaptim.lab.problems.sampling import numpy_rng, to_device, torch_generator

# ---------------------------------------------------------------- Reddi et al. 2018

#: f_t(x) = C·x with probability p = (1 + δ)/(C + 1), else −x; so E f_t(x) = δ·x.
REDDI_C, REDDI_DELTA = 1000.0, 2.0
REDDI_P = (1 + REDDI_DELTA) / (REDDI_C + 1)
_DRAWS_PER_BLOCK = 4096


def _build_reddi(seed: int, context: BuildContext) -> Setup:
    """Reddi et al.'s stochastic problem; x starts at 0.

    Why these constants. Theorem 3 of Reddi et al. draws f_t(x) = C·x with
    probability p = (1 + δ)/(C + 1) and −x otherwise, on F = [−1, 1]; the
    expected loss is δ·x, minimized at x = −1. The paper's Section 5
    experiment is the instance C = 101, δ = 0.02 (scaled by 10: 1010x with
    probability 0.01, else −10x), run with a decaying step α/√t and
    β = (0.9, 0.99). A problem cannot choose the optimizer's schedule, and
    with a constant learning rate that instance's signal (E g = 0.02 against a
    gradient spread of ~10) leaves AMSGrad needing millions of steps. C = 1000
    and δ = 2 keep Adam's failure (with β₂ = 0.99 its second moment forgets a
    rare large gradient during the ~330 steps to the next one, so the frequent
    −1 gradients win and Adam ends near +1) while AMSGrad, whose running
    maximum remembers it, reaches −1 within 20,000 steps at a constant
    lr = 0.01. With torch's default β₂ = 0.999 the second moment spans the
    gap too, and Adam also converges to −1.

    So the problem fixes, for every optimizer that has them (``Problem.hparams``,
    shown in every trial's hyperparameters; ``--set`` overrides), the paper's
    β = (0.9, 0.99) and one common step size lr = 0.01: the claim is about the
    second-moment rule at the same step size, as in the paper's figures. A
    tuned lr would not test it: over 20,000 steps a small lr leaves Adam near
    its start, and a large one makes its final iterate jump between the
    bounds, so the lr with the lowest final x is an accident of timing.
    Measured at lr = 0.01 on seeds 1–3: Adam 0.88, 0.80, 1.00; AMSGrad
    −0.99, −1.00, −0.95.

    Projection is part of the problem: each ``train_loss`` first clamps x onto
    [−1, 1], which projects the previous optimizer step (projected online
    gradient descent, the paper's Π_F; in one dimension AMSGrad's weighted
    projection is the same clamp), and ``evaluate`` reports the clamped final
    iterate. ``average_regret`` is R_T/T = (1/T) Σ_t f_t(x_t) − f_t(−1).
    """
    x = torch.nn.Parameter(torch.zeros((), device=context.device))
    blocks: dict[int, list[bool]] = {}
    # The regret's sum stays on x's device, in float64 (the rounding of Python floats): reading
    # x every step would wait for a GPU each time.
    regret = torch.zeros((), dtype=torch.float64, device=context.device)
    steps_counted = [0]

    def gradient(step: int) -> float:
        """f_t's slope at step t (1-based): C with probability p, else −1; a pure function of t."""
        block, offset = divmod(step - 1, _DRAWS_PER_BLOCK)
        if block not in blocks:
            blocks.clear()
            generator = torch_generator(seed, "draws", block)
            draws = torch.rand(_DRAWS_PER_BLOCK, generator=generator, device="cpu")
            blocks[block] = (draws < REDDI_P).tolist()
        return REDDI_C if blocks[block][offset] else -1.0

    def train_loss(step: int) -> torch.Tensor:
        with torch.no_grad():
            x.clamp_(-1.0, 1.0)  # project the previous update onto F = [−1, 1]
        slope = gradient(step)
        if step > steps_counted[0]:  # count each step once, however often its loss is evaluated
            regret.add_(x.detach().double().add(1.0).mul(slope))  # f_t(x_t) − f_t(x*), x* = −1
            steps_counted[0] = step
        return slope * x

    def evaluate() -> dict[str, float]:
        feasible = float(x.detach().clamp(-1.0, 1.0))
        return {
            "x": feasible,
            "expected_gap": REDDI_DELTA * (feasible + 1.0),  # E f(x) − E f(x*)
            "average_regret": regret.item() / max(1, steps_counted[0]),
        }

    # The metrics read the iterate, not held-out data: validation and test are the same numbers.
    return Setup([x], train_loss, evaluate, validate=evaluate)


REDDI = Problem(
    name="reddi",
    description=(
        f"Reddi et al. 2018 stochastic counterexample on [-1, 1]: f_t(x) = {REDDI_C:g}x w.p. "
        f"{REDDI_P:.4f}, else -x; optimum x = -1; fixes lr=0.01, β=(0.9, 0.99): Adam drifts to +1"
    ),
    metric=Metric("x", "min"),
    build=_build_reddi,
    steps=20_000,
    batch_size=1,
    tags=("synthetic", "convex", "counterexample"),
    target=-0.9,
    hparams={"betas": (0.9, 0.99), "lr": 0.01},
)

# ---------------------------------------------------------------- Wilson et al. 2017

WILSON_TRAIN, WILSON_VAL, WILSON_TEST = 100, 100, 200
#: P(y = +1): the majority class, which adaptive methods predict for every test point.
WILSON_P = 0.55


def wilson_features(labels: np.ndarray, first_block: int, dim: int) -> np.ndarray:
    """Wilson et al.'s features: x₁ = y, x₂ = x₃ = 1, then the sample's own block of 5 columns.

    Sample i (counting from ``first_block``) owns columns 3 + 5i .. 3 + 5i + 4
    (0-based); the first of them is 1, and all five are 1 when y = −1. Every
    other entry is 0.
    """
    features = np.zeros((len(labels), dim), dtype=np.float64)
    features[:, 0] = labels
    features[:, 1:3] = 1.0
    for row, label in enumerate(labels):
        start = 3 + 5 * (first_block + row)
        features[row, start : start + (1 if label > 0 else 5)] = 1.0
    return features


def _wilson_labels(rng: np.random.Generator, n: int, *, majority_positive: bool) -> np.ndarray:
    while True:
        labels = np.where(rng.random(n) < WILSON_P, 1.0, -1.0)
        if not majority_positive or labels.sum() > 0:
            return labels


def _build_wilson(seed: int, context: BuildContext) -> Setup:
    """Wilson et al.'s problem with 100 training, 100 validation and 200 test samples, in float64.

    The construction (Wilson et al. 2017, Section 3.3): labels y ∈ {−1, +1}
    are +1 with probability p > 1/2; sample i has x₁ = y, x₂ = x₃ = 1, and a
    block of 5 columns of its own holding one 1 (y = +1) or five 1s
    (y = −1). The loss is least squares, ½·mean((xᵀw − y)²), from w = 0, on
    the full batch (the paper's lemma is about the deterministic methods).

    For AdaGrad, RMSprop and Adam every gradient on the way is a multiple of
    Xᵀy, so the iterates stay proportional to sign(Xᵀy) and converge to
    w = ¼·sign(Xᵀy), which fits the training set exactly. A new sample's own
    block was never seen (its weights stay 0), so its score is
    w₁y + w₂ + w₃ = ¼(y + 2) > 0: every test point is called positive and the
    test error is the fraction of negatives, about 1 − p = 0.45. Gradient
    descent stays in the row space of X and converges to the minimum-norm
    interpolant, whose weight on x₁ dominates: zero test error. Every sample
    owns a block, held-out samples included, so the dimension is
    6·(100 + 100 + 200).

    Everything is float64, so that rounding decides as little as possible.
    It does not remove every artefact: the lemma's invariant (XᵀX·sign(Xᵀy)
    = 4·Xᵀy here, exactly) keeps the adaptive iterates on the line of
    sign(Xᵀy) only in exact arithmetic, and an AdaGrad lr of 3 (the top of
    its grid) oscillates so violently at first that it amplifies rounding
    errors off that line; it then interpolates elsewhere and reaches zero
    held-out error, in float64 as in float32. Every smaller AdaGrad rate of
    the grid, and every Adam and RMSprop rate, behaves as the paper says
    (measured on seed 0: validation error 0.43, the share of negatives).
    """
    rng = numpy_rng(seed, "data")
    dim = 6 * (WILSON_TRAIN + WILSON_VAL + WILSON_TEST)
    # The lemma needs more positives than negatives in the training set: draw until so.
    y_train = _wilson_labels(rng, WILSON_TRAIN, majority_positive=True)
    y_test = _wilson_labels(rng, WILSON_TEST, majority_positive=False)
    y_val = _wilson_labels(rng, WILSON_VAL, majority_positive=False)
    x_train, x_test, x_val, targets, test_labels, val_labels = to_device(
        context.device,
        torch.from_numpy(wilson_features(y_train, 0, dim)),
        torch.from_numpy(wilson_features(y_test, WILSON_TRAIN, dim)),
        torch.from_numpy(wilson_features(y_val, WILSON_TRAIN + WILSON_TEST, dim)),
        *(torch.from_numpy(y) for y in (y_train, y_test, y_val)),
    )
    w = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64, device=context.device))

    def train_loss(step: int) -> torch.Tensor:
        return 0.5 * ((x_train @ w - targets) ** 2).mean()

    def error(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((x @ w) * y <= 0).float().mean())

    def metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            return {
                "error": error(x, y),
                "train_error": error(x_train, targets),
                "train_loss": train_loss(0).item(),
            }

    return Setup(
        [w],
        train_loss,
        lambda: metrics(x_test, test_labels),
        validate=lambda: metrics(x_val, val_labels),
    )


WILSON = Problem(
    name="wilson",
    description=(
        "Wilson et al. 2017 least-squares classification, 100 samples in 2,400 dims, full batch: "
        "GD generalizes perfectly, adaptive methods predict the majority class"
    ),
    metric=Metric("error", "min"),
    build=_build_wilson,
    steps=500,
    batch_size=WILSON_TRAIN,
    tags=("synthetic", "convex", "counterexample"),
    target=0.05,
)
