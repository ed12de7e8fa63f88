"""Linear regression from scratch in NumPy, trained with four adaptim.numpy optimizers.

Synthetic data from a fixed seed, ``y = X w* + b* + noise``, the mean squared
error and its gradient written by hand, and full-batch training with SGD,
AdaGrad, RMSprop and Adam. The table shows the final loss of each optimizer,
next to the best loss any linear model reaches on these data (the exact least
squares fit, about the noise variance), how far each one ended from the true
weights, and how many steps it took to come within 10% of that best loss. The
features have unequal scales, which slows plain SGD down.

Run: ``python examples/numpy_linear_regression.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import adaptim.numpy as anp

SEED = 0
SAMPLES = 500
FEATURES = 10
NOISE = 0.1
STEPS = 500
TARGET = 1.1  # "converged": within 10% of the lowest possible loss

# A reasonable learning rate for each optimizer on this problem.
OPTIMIZERS: dict[str, tuple[type[anp.Optimizer], float]] = {
    "SGD": (anp.SGD, 0.05),
    "AdaGrad": (anp.Adagrad, 0.5),
    "RMSprop": (anp.RMSprop, 0.01),
    "Adam": (anp.Adam, 0.05),
}


@dataclass(frozen=True)
class Data:
    x: np.ndarray
    y: np.ndarray
    true_weights: np.ndarray
    true_bias: float


def make_data(seed: int = SEED) -> Data:
    """Features with unequal scales (what adaptive methods are for), targets with noise."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.3, 3.0, FEATURES)
    x = rng.standard_normal((SAMPLES, FEATURES)) * scales
    true_weights = rng.standard_normal(FEATURES)
    true_bias = 0.5
    y = x @ true_weights + true_bias + NOISE * rng.standard_normal(SAMPLES)
    return Data(x, y, true_weights, true_bias)


def loss_and_gradients(
    data: Data, weights: np.ndarray, bias: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """The mean squared error ``mean((X w + b - y)^2)`` and its gradients in ``w`` and ``b``."""
    residual = data.x @ weights + bias - data.y
    loss = float(np.mean(residual**2))
    grad_weights = 2.0 * data.x.T @ residual / len(residual)
    grad_bias = np.asarray(2.0 * np.mean(residual))
    return loss, grad_weights, grad_bias


def least_squares_loss(data: Data) -> float:
    """The lowest loss a linear model reaches on these data: the exact least squares fit."""
    design = np.column_stack([data.x, np.ones(len(data.y))])
    solution, *_ = np.linalg.lstsq(design, data.y, rcond=None)
    return float(np.mean((design @ solution - data.y) ** 2))


def train(data: Data, optimizer: type[anp.Optimizer], lr: float, target: float) -> dict[str, Any]:
    """Train from zeros; ``target`` is the loss at which training counts as converged."""
    weights = np.zeros(FEATURES)
    bias = np.zeros(())
    opt = optimizer([weights, bias], lr=lr)  # updates weights and bias in place
    losses = []
    for _ in range(STEPS):
        loss, grad_weights, grad_bias = loss_and_gradients(data, weights, bias)
        losses.append(loss)
        opt.step([grad_weights, grad_bias])
    losses.append(loss_and_gradients(data, weights, bias)[0])
    reached = [step for step, loss in enumerate(losses) if loss <= target]
    return {
        "lr": lr,
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "weight_error": float(np.linalg.norm(weights - data.true_weights)),
        "bias_error": abs(float(bias) - data.true_bias),
        "steps_to_target": reached[0] if reached else None,
        "losses": losses,
    }


def main() -> dict[str, dict[str, Any]]:
    data = make_data()
    floor = least_squares_loss(data)
    target = TARGET * floor
    results = {name: train(data, cls, lr, target) for name, (cls, lr) in OPTIMIZERS.items()}
    print(f"Linear regression, {SAMPLES} samples, {FEATURES} features, {STEPS} full-batch steps")
    print(f"lowest possible loss (least squares): {floor:.5f}\n")
    print(
        f"{'optimizer':<10} {'lr':>5} {'initial loss':>13} {'final loss':>11} {'|w - w*|':>9} "
        f"{f'steps to {TARGET:g}x lowest':>22}"
    )
    for name, r in results.items():
        steps = "never" if r["steps_to_target"] is None else r["steps_to_target"]
        print(
            f"{name:<10} {r['lr']:>5g} {r['initial_loss']:>13.4f} {r['final_loss']:>11.5f} "
            f"{r['weight_error']:>9.4f} {steps:>22}"
        )
    return results


if __name__ == "__main__":
    main()
