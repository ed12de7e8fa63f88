"""Time ``step()`` of the learning-rate-free optimizers against their reference packages.

Usage::

    python benchmarks/lr_free_speed.py                          # every optimizer, four workloads
    python benchmarks/lr_free_speed.py --optimizers prodigy dadapt-adam --workloads mlp large
    python benchmarks/lr_free_speed.py --repeats 31 --json lr_free_speed.json

The workloads, the runner (default constructor, newly allocated gradients
before every timed step) and the interleaved timing are those of
``benchmarks/step_speed.py``, imported from it. For every optimizer and
workload three implementations hold their own copy of the same parameters
and take turns, one step each, in a fresh random order every round:

* ``adaptim``: ``adaptim.X(params)`` with defaults (the multi-tensor replay);
* ``adaptim reference``: the per-tensor reference path (``foreach=False``);
* the reference package's class with its defaults (``schedulefree`` 1.4.1,
  ``prodigyopt`` 1.1.2, ``dadaptation`` 3.2, ``dog-optimizer`` 1.0.3), or, for
  SGD-HD and Adam-HD, ``torch.optim.SGD``/``Adam`` (default: for-loop on CPU),
  which costs the same minus the hypergradient.

``vs ref`` is the reference's median time divided by adaptim's (> 1: adaptim
is faster); ``vs path`` the same against adaptim's own per-tensor path. Each
step is timed twice: wall-clock, and CPU time of this process
(``time.process_time``), which a loaded machine distorts less (a descheduled
step does not count; with ``OMP_NUM_THREADS=1`` it is the step's own work).
Medians of the repeats; only ratios measured in the same run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_speed import WORKLOADS, Runner, optimizer_runner

import adaptim

Factory = Callable[[list[torch.Tensor]], Any]


def _train(optimizer: Any) -> Any:
    optimizer.train()
    return optimizer


def _reference_package(name: str) -> tuple[str, Factory]:
    """The label and constructor of the implementation adaptim is compared with."""
    import dadaptation
    import dog
    import prodigyopt
    import schedulefree

    packages: dict[str, tuple[str, Factory]] = {
        "schedulefree-adamw": (
            "schedulefree",
            lambda p: _train(schedulefree.AdamWScheduleFree(p)),
        ),
        "schedulefree-sgd": ("schedulefree", lambda p: _train(schedulefree.SGDScheduleFree(p))),
        "prodigy": ("prodigyopt", lambda p: prodigyopt.Prodigy(p)),
        "dadapt-adam": ("dadaptation", lambda p: dadaptation.DAdaptAdam(p)),
        "dadapt-sgd": ("dadaptation", lambda p: dadaptation.DAdaptSGD(p)),
        "dadapt-adagrad": ("dadaptation", lambda p: dadaptation.DAdaptAdaGrad(p)),
        "dog": ("dog-optimizer", lambda p: dog.DoG(p)),
        "ldog": ("dog-optimizer", lambda p: dog.LDoG(p)),
        "sgd-hd": ("torch.optim.SGD", lambda p: torch.optim.SGD(p, lr=1e-3)),
        "adam-hd": ("torch.optim.Adam", lambda p: torch.optim.Adam(p)),
        "mechanic": ("adaptim.Adam", lambda p: adaptim.Adam(p)),
    }
    return packages[name]


CLASSES = {
    "schedulefree-adamw": "ScheduleFreeAdamW",
    "schedulefree-sgd": "ScheduleFreeSGD",
    "prodigy": "Prodigy",
    "dadapt-adam": "DAdaptAdam",
    "dadapt-sgd": "DAdaptSGD",
    "dadapt-adagrad": "DAdaptAdaGrad",
    "dog": "DoG",
    "ldog": "LDoG",
    "sgd-hd": "SGDHD",
    "adam-hd": "AdamHD",
}


def _adaptim(name: str, reference_path: bool) -> Factory:
    if name == "mechanic":
        switch = {"foreach": False} if reference_path else {}
        return lambda p: adaptim.Mechanic(adaptim.Adam(p, **switch))
    cls = getattr(adaptim, CLASSES[name])

    def build(params: list[torch.Tensor]) -> Any:
        group: dict[str, Any] = {"params": params}
        if reference_path:
            group["foreach"] = False
        optimizer = cls([group])
        return _train(optimizer) if hasattr(optimizer, "train") else optimizer

    return build


def measure(runners: list[Runner], repeats: int) -> dict[str, list[float]]:
    """Interleaved as in step_speed.py (a fresh order every round); CPU times returned, wall in ``times``."""
    order = random.Random(0)
    cpu: dict[str, list[float]] = {r.label: [] for r in runners}
    for _ in range(repeats):
        for runner in order.sample(runners, len(runners)):
            runner.fresh_grads()
            start, start_cpu = time.perf_counter(), time.process_time()
            runner.step()
            cpu[runner.label].append(time.process_time() - start_cpu)
            runner.times.append(time.perf_counter() - start)
    return cpu


def run(name: str, workload: str, repeats: int) -> dict[str, Any]:
    shapes = WORKLOADS[workload]
    device = torch.device("cpu")
    label, theirs = _reference_package(name)
    runners: list[Runner] = [
        optimizer_runner("adaptim", _adaptim(name, False), shapes, device),
        optimizer_runner("adaptim reference", _adaptim(name, True), shapes, device),
        optimizer_runner(label, theirs, shapes, device),
    ]
    cpu = {k: statistics.median(v) for k, v in measure(runners, repeats).items()}
    times = {r.label: statistics.median(r.times) for r in runners}
    ours = times["adaptim"]
    return {
        "optimizer": name,
        "workload": workload,
        "reference": label,
        "adaptim_ms": 1e3 * ours,
        "adaptim_reference_ms": 1e3 * times["adaptim reference"],
        "reference_ms": 1e3 * times[label],
        "vs_ref": times[label] / ours,
        "vs_reference_path": times["adaptim reference"] / ours,
        "cpu_ms": {k: 1e3 * v for k, v in cpu.items()},
        "cpu_vs_ref": cpu[label] / cpu["adaptim"],
        "cpu_vs_reference_path": cpu["adaptim reference"] / cpu["adaptim"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=[*CLASSES, "mechanic"])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    print(
        f"{'optimizer':<20}{'workload':<9}{'adaptim ms':>11}{'ref path ms':>12}"
        f"{'reference':>19}{'ref ms':>9}{'vs ref':>8}{'vs path':>8}{'cpu vs ref':>11}"
        f"{'cpu vs path':>12}"
    )
    for name in args.optimizers:
        for workload in args.workloads:
            row = run(name, workload, args.repeats)
            rows.append(row)
            print(
                f"{name:<20}{workload:<9}{row['adaptim_ms']:>11.2f}"
                f"{row['adaptim_reference_ms']:>12.2f}{row['reference']:>19}"
                f"{row['reference_ms']:>9.2f}{row['vs_ref']:>8.2f}{row['vs_reference_path']:>8.2f}"
                f"{row['cpu_vs_ref']:>11.2f}{row['cpu_vs_reference_path']:>12.2f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"torch": torch.__version__, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
