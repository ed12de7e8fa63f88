"""examples/numpy_linear_regression.py runs, and every optimizer in it fits the data."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "numpy_linear_regression.py"


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    """The example's namespace, loaded without running its ``__main__`` block."""
    return runpy.run_path(str(EXAMPLE), run_name="numpy_linear_regression")


@pytest.fixture(scope="module")
def results(example: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return example["main"]()


def test_prints_a_row_per_optimizer(example: dict[str, Any], capsys: Any) -> None:
    example["main"]()
    lines = capsys.readouterr().out.splitlines()
    for name in ("SGD", "AdaGrad", "RMSprop", "Adam"):
        assert any(line.startswith(name) for line in lines), name


def test_compares_the_four_optimizers(results: dict[str, dict[str, Any]]) -> None:
    assert list(results) == ["SGD", "AdaGrad", "RMSprop", "Adam"]


def test_the_hand_written_gradient_is_the_derivative(example: dict[str, Any]) -> None:
    data = example["make_data"]()
    rng = np.random.default_rng(1)
    weights, bias = rng.standard_normal(data.x.shape[1]), np.asarray(0.3)
    _, grad_weights, grad_bias = example["loss_and_gradients"](data, weights, bias)
    h = 1e-6
    for i in range(len(weights)):
        step = np.zeros_like(weights)
        step[i] = h
        plus = example["loss_and_gradients"](data, weights + step, bias)[0]
        minus = example["loss_and_gradients"](data, weights - step, bias)[0]
        assert (plus - minus) / (2 * h) == pytest.approx(grad_weights[i], rel=1e-6, abs=1e-8)
    plus = example["loss_and_gradients"](data, weights, bias + h)[0]
    minus = example["loss_and_gradients"](data, weights, bias - h)[0]
    assert (plus - minus) / (2 * h) == pytest.approx(float(grad_bias), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", ["SGD", "AdaGrad", "RMSprop", "Adam"])
def test_every_optimizer_fits_the_data(
    name: str, example: dict[str, Any], results: dict[str, dict[str, Any]]
) -> None:
    result = results[name]
    floor = example["least_squares_loss"](example["make_data"]())
    assert result["final_loss"] < 0.1 * result["initial_loss"]
    # The noise variance is 0.01; every optimizer gets within 5% of the best linear fit.
    assert result["final_loss"] < 1.05 * floor
    assert result["weight_error"] < 0.05
    assert result["steps_to_target"] is not None


def test_adam_reaches_the_least_squares_fit(
    example: dict[str, Any], results: dict[str, dict[str, Any]]
) -> None:
    floor = example["least_squares_loss"](example["make_data"]())
    assert results["Adam"]["final_loss"] == pytest.approx(floor, rel=1e-6)
