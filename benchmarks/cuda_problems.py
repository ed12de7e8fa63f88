"""Check the built-in problems on a GPU: the CPU's data and initial weights, then a short trial.

Usage::

    python benchmarks/cuda_problems.py [--device cuda] [--steps 50] [--seed 1]

CI has no GPU (its tests stand a ``meta`` default device in for one:
tests/lab/test_problem_devices.py); this is what a session runs on a lent GPU
machine. For every built-in problem it builds the problem on the CPU and, as a
trial does, under ``torch.device(DEVICE)`` with ``BuildContext(device=DEVICE)``,
and checks that every tensor the GPU build holds is on the device and equals
the CPU build's bit for bit (the data, the initial weights, the first batch
order). Then it runs a short Adam trial on each device and prints both final
main metrics (they differ by the GPU's rounding only) and the training times.
Last, a user problem that draws with a CPU generator on the default device
must fail with the lab's one line. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "lab"))
from devicecheck import reachable_tensors  # the tests' walk over a Setup

from adaptim.lab.errors import LabError
from adaptim.lab.problems import PROBLEMS, BuildContext, Metric, Problem, Setup
from adaptim.lab.trial import TrialSpec, run_trial


def check_problem(name: str, problem: Problem, device: str, seed: int, steps: int) -> bool:
    cpu = reachable_tensors(problem.build(seed, BuildContext()))
    with torch.device(device):
        there = reachable_tensors(problem.build(seed, BuildContext(device=device)))
    on_device = all(t.device.type == device for _, t in there)
    same = [p for p, _ in cpu] == [p for p, _ in there] and all(
        torch.equal(a.detach().cpu(), b) for (_, a), (_, b) in zip(there, cpu, strict=True)
    )
    metric = problem.metric.name
    finals = []
    for where in ("cpu", device):
        spec = TrialSpec(name, "adam", {"lr": 1e-3}, seed, steps, device=where)
        result = run_trial(spec, problem)
        finals.append((result.final.get(metric), result.wall_time))
    (cpu_value, cpu_time), (value, time) = finals
    print(
        f"{name:22s} tensors {len(there):3d} on {device}: {on_device!s:5} same bits: {same!s:5} "
        f"{metric} cpu {cpu_value} {device} {value} (train s: cpu {cpu_time:.2f}, "
        f"{device} {time:.2f})",
        flush=True,
    )
    return on_device and same


def _old_style(seed: int, context: BuildContext) -> Setup:
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(3, generator=g))  # the default device: fails on a GPU
    return Setup([w], lambda step: (w**2).sum(), lambda: {"loss": 0.0})


def check_old_style_user_problem(device: str) -> bool:
    problem = Problem("old-style", "CPU generator, default device", Metric("loss", "min"),
                      _old_style, 3, 1)  # fmt: skip
    try:
        run_trial(TrialSpec("old-style", "sgd", {"lr": 0.1}, 0, 3, device=device), problem)
    except LabError as error:
        print(f"old-style user problem: {error}")
        return "could not be built on --device" in str(error)
    print("old-style user problem: built without an error")
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here")
    ok = [check_problem(n, p, args.device, args.seed, args.steps) for n, p in PROBLEMS.items()]
    ok.append(check_old_style_user_problem(args.device))
    print(f"{sum(ok)} of {len(ok)} checks hold")
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
