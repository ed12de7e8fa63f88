"""How much the lab's harness costs over a bare PyTorch training loop on the same problem.

The bare loop builds the same setup from the same seed (datasets are cached
after the warm-up, in both), runs the same steps with the same optimizer
(adaptim.Adam, so only the harness differs) and evaluates once at the end. The harness (``run_trial``) adds the periodic
evaluations, the effective-learning-rate percentiles and the bookkeeping.
Both run interleaved in one process, several times; the medians are compared.
A bare loop with torch.optim.Adam is timed too, for reference.

Run: ``python benchmarks/harness_overhead.py [--problem NAME ...] [--repeats N] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import adaptim
from adaptim.lab.problems import BuildContext, resolve_problem
from adaptim.lab.trial import TrialSpec, run_trial


def bare_loop(
    problem_name: str, steps: int, make: Callable[..., torch.optim.Optimizer], lr: float
) -> float:
    problem = resolve_problem(problem_name)
    start = time.perf_counter()  # from the build on, as the harness is timed
    torch.manual_seed(0)
    setup = problem.build(0, BuildContext())
    optimizer = make(setup.parameters, lr=lr)
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = setup.train_loss(step)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        setup.evaluate()
    return time.perf_counter() - start


def harness(problem_name: str, steps: int, lr: float) -> float:
    problem = resolve_problem(problem_name)
    spec = TrialSpec(problem_name, "adam", {"lr": lr}, 0, steps)
    start = time.perf_counter()
    run_trial(spec, problem)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", action="append", help="problem name (repeatable)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.problem or ["quadratic-deep", "logreg-sparse", "digits-mlp", "mnist1d-mlp"]
    rows = []
    print(
        "| problem | steps | bare loop (ms) | harness (ms) | overhead | bare loop, torch.optim.Adam (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for name in names:
        steps = resolve_problem(name).steps
        lr = 1e-3
        harness(name, min(steps, 20), lr)  # warm-up: imports, data caches
        bare, ours, reference = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(name, steps, adaptim.Adam, lr))
            ours.append(harness(name, steps, lr))
            reference.append(bare_loop(name, steps, torch.optim.Adam, lr))
        b, h, r = (statistics.median(x) for x in (bare, ours, reference))
        rows.append(
            {
                "problem": name,
                "steps": steps,
                "bare_s": b,
                "harness_s": h,
                "torch_bare_s": r,
                "overhead": h / b - 1,
            }
        )
        print(
            f"| {name} | {steps} | {b * 1e3:.0f} | {h * 1e3:.0f} | {100 * (h / b - 1):+.1f}% | {r * 1e3:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
