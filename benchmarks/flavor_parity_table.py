"""Worst relative error of each flavor against its real reference, per variant and dtype.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/flavor_parity_table.py [--cases N] [--only keras|optax|paper]

The rows are the variants of ``tests/test_flavors_keras.py`` (Keras 3 on the
torch backend), ``tests/test_flavors_optax.py`` (optax, JAX on CPU with x64)
and ``tests/test_flavors_paper.py`` (float64 transcriptions of the papers),
whose machinery this script shares. For each of ``N`` seeded cases (the same
spaces the tests draw from: eps up to 1e-1, :data:`~_flavors.STEPS` steps) it
compares adaptim, built with the flavor, against the reference in float64 and
float32, and prints the worst ``max|a - b| / max(max|b|, tiny)``. The exit
status is 1 when a cell is above the tests' tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _flavors import compare, random_case

MODULES = {
    "keras": "test_flavors_keras",
    "optax": "test_flavors_optax",
    "paper": "test_flavors_paper",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=20, help="random cases per variant")
    parser.add_argument("--only", choices=sorted(MODULES), action="append")
    args = parser.parse_args()
    failed = False
    print("| reference | variant | worst rel. error float64 | worst rel. error float32 |")
    print("|---|---|---|---|")
    for reference in args.only or list(MODULES):
        module = importlib.import_module(MODULES[reference])
        for variant in module.VARIANTS:
            worst = {np.float64: 0.0, np.float32: 0.0}
            for index in range(args.cases):
                case = random_case(random.Random(f"{variant.name} {index}"), variant)
                for dtype in worst:
                    worst[dtype] = max(worst[dtype], compare(variant, case, dtype))
            cells = []
            for dtype, error in worst.items():
                bad = error > module.TOLERANCE[dtype]
                failed |= bad
                cells.append(f"**{error:.2e}**" if bad else f"{error:.2e}")
            print(f"| {reference} | {variant.name} | {cells[0]} | {cells[1]} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
