"""``flavor="tf1"`` against the real ``tf.compat.v1.train`` optimizers of TensorFlow.

TensorFlow is too heavy for the test extra (``tensorflow-cpu`` is a ~250 MB
wheel and adds seconds to every import), so this comparison is a script, run
by hand in an environment that has it next to torch:

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install -c constraints.txt torch==2.13.0
    /tmp/tfvenv/bin/pip install -c constraints.txt tensorflow-cpu "hypothesis>=6.100"
    /tmp/tfvenv/bin/pip install --no-deps -e .
    /tmp/tfvenv/bin/python benchmarks/tf1_parity.py [--cases N]

It draws cases from the spaces of ``tests/_flavors.py`` (eps up to 1e-1,
:data:`~_flavors.STEPS` steps), runs TF1's AdagradOptimizer, RMSPropOptimizer
(plain, centered, momentum, both), AdamOptimizer and AdadeltaOptimizer eagerly
on ``tf.Variable`` and adaptim with ``flavor="tf1"`` on the same parameters and
gradients, and prints the worst relative error per optimizer in float64
(tolerance 1e-10) and float32 (1e-4). The momentum variants alternate the
learning rate (``lr``, ``lr/2``, ...), which shows where ``lr`` enters the
momentum buffer. TF1 converts every hyperparameter to a float32 tensor before
casting it to the variable's dtype, so the drawn values are rounded to float32
first (otherwise float64 runs differ by ~1e-7 from that rounding alone). The
exit status is 1 when a cell is above its tolerance.

Result with TensorFlow 2.21.0 (tensorflow-cpu, beside torch 2.13.0), 20 cases
each, worst relative error float64 / float32: AdagradOptimizer 2.0e-16 /
1.5e-07; RMSPropOptimizer 5.5e-16 / 1.4e-07, centered 4.5e-16 / 3.5e-07,
momentum 5.4e-16 / 1.8e-07, centered momentum 5.6e-16 / 2.1e-07;
AdamOptimizer 2.2e-06 / 2.0e-06 (TF1's float32 beta powers, see below);
AdadeltaOptimizer 5.7e-16 / 8.7e-07. With ``flavor="torch"`` instead, the
RMSProp rows are off by 0.19 to 2.0 and Adam by 3e-2.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tensorflow as tf
from _flavors import (
    BETA1,
    BETA2,
    DECAY,
    EPS,
    LR,
    MOMENTUM,
    Arrays,
    Variant,
    compare,
    lr_factor,
    random_case,
)
from _parity import Range

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
# AdamOptimizer keeps beta1**t and beta2**t in float32 variables (non-slot
# variables created from the Python floats, multiplied by beta each step and
# cast to the parameter's dtype when used), so its float64 runs carry float32
# rounding of the bias corrections: up to a few 1e-6 relative after 100
# steps, whatever the formula (torch's formula is off by more than 1e-3).
TOLERANCE_FLOAT64 = {"AdamOptimizer": 1e-5}
train = tf.compat.v1.train


def run_tf1(make: Callable[[Mapping[str, Any], Any], Any], scheduled: bool = False) -> Any:
    """A reference that runs ``make(hparams, learning_rate)`` of ``tf.compat.v1.train``."""

    def reference(
        params0: Arrays, grads: Sequence[Arrays], hp: Mapping[str, Any], dtype: np.dtype
    ) -> Arrays:
        variables = [tf.Variable(p) for p in params0]
        step = [0]
        lr: Any = (lambda: hp["lr"] * lr_factor(step[0])) if scheduled else hp["lr"]
        optimizer = make(hp, lr)
        for step[0], step_grads in enumerate(grads):
            optimizer.apply_gradients(
                zip([tf.constant(g) for g in step_grads], variables, strict=True)
            )
        return [v.numpy() for v in variables]

    return reference


def _rmsprop(name: str, centered: bool, momentum: bool) -> Variant:
    space = {"lr": LR, "alpha": DECAY, "eps": EPS}
    if momentum:
        space["momentum"] = MOMENTUM
    if centered:
        space["eps"] = Range(1e-4, 1e-1, "log")

    def ours(hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"flavor": "tf1", "centered": centered, **hp}

    def make(hp: Mapping[str, Any], lr: Any) -> Any:
        return train.RMSPropOptimizer(
            lr,
            decay=hp["alpha"],
            momentum=hp.get("momentum", 0.0),
            epsilon=hp["eps"],
            centered=centered,
        )

    return Variant(name, "rmsprop", ours, run_tf1(make, momentum), space, scheduled=momentum)


VARIANTS = [
    Variant(
        "AdagradOptimizer",
        "adagrad",
        lambda hp: {"flavor": "tf1", **hp},
        run_tf1(
            lambda hp, lr: train.AdagradOptimizer(
                lr, initial_accumulator_value=hp["initial_accumulator_value"]
            )
        ),
        {"lr": LR, "initial_accumulator_value": Range(1e-2, 1.0, "log")},
    ),
    _rmsprop("RMSPropOptimizer", centered=False, momentum=False),
    _rmsprop("RMSPropOptimizer centered", centered=True, momentum=False),
    _rmsprop("RMSPropOptimizer momentum", centered=False, momentum=True),
    _rmsprop("RMSPropOptimizer centered momentum", centered=True, momentum=True),
    Variant(
        "AdamOptimizer",
        "adam",
        lambda hp: {
            "flavor": "tf1",
            "lr": hp["lr"],
            "betas": (hp["beta1"], hp["beta2"]),
            "eps": hp["eps"],
        },
        run_tf1(
            lambda hp, lr: train.AdamOptimizer(
                lr, beta1=hp["beta1"], beta2=hp["beta2"], epsilon=hp["eps"]
            )
        ),
        {"lr": LR, "beta1": BETA1, "beta2": BETA2, "eps": EPS},
    ),
    Variant(
        "AdadeltaOptimizer",
        "adadelta",
        lambda hp: {"flavor": "tf1", **hp},
        run_tf1(lambda hp, lr: train.AdadeltaOptimizer(lr, rho=hp["rho"], epsilon=hp["eps"])),
        {"lr": Range(1e-2, 1.0, "log"), "rho": DECAY, "eps": EPS},
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=20, help="random cases per optimizer")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}")
    print("| tf.compat.v1.train | worst rel. error float64 | worst rel. error float32 |")
    print("|---|---|---|")
    failed = False
    for variant in VARIANTS:
        worst = {np.float64: 0.0, np.float32: 0.0}
        for index in range(args.cases):
            case = random_case(random.Random(f"tf1 {variant.name} {index}"), variant)
            # TF1 casts every hyperparameter through a float32 tensor; drawing values
            # that float32 represents exactly lets float64 compare the formulas alone.
            case.hparams.update({k: float(np.float32(v)) for k, v in case.hparams.items()})
            for dtype in worst:
                worst[dtype] = max(worst[dtype], compare(variant, case, dtype))
        cells = []
        for dtype, error in worst.items():
            limit = TOLERANCE[dtype]
            if dtype == np.float64:
                limit = TOLERANCE_FLOAT64.get(variant.name, limit)
            bad = error > limit
            failed |= bad
            cells.append(f"**{error:.2e}**" if bad else f"{error:.2e}")
        print(f"| {variant.name} | {cells[0]} | {cells[1]} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
