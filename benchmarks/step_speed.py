"""Time one ``step()`` of every algorithm: adaptim fused and eager against each torch.optim implementation.

Usage::

    python benchmarks/step_speed.py                  # both workloads, CPU (and CUDA if present)
    python benchmarks/step_speed.py --workload a --algorithms adam rmsprop --repeats 15
    python benchmarks/step_speed.py --json step_speed.json

Workloads: (a) 16M float32 parameters in 100 tensors, (b) 4M in 1,000 tensors.

For every algorithm, all implementations hold their own copy of the same
parameters and are timed *interleaved* (one step of each, in turn, repeated),
so a noisy neighbour slows them all alike; the table reports medians. The
implementations:

* ``adaptim fused``: the fused fast path with the gradients already in its flat
  buffer (a loop that calls ``zero_grad(set_to_none=False)``);
* ``adaptim fused, fresh grads``: the same with a newly allocated gradient
  per step (``zero_grad()``'s default), which costs one copy of the gradients;
* ``adaptim eager``: ``fused=False``, one rule call per tensor;
* ``torch for-loop``, ``torch foreach``, ``torch fused``: each that torch.optim has
  (LARS and LAMB are not in torch.optim: fused against eager and the roofline only);
* ``roofline``: one compiled element-wise pass over flat buffers that reads and
  writes exactly the bytes of the algorithm (every state tensor, the parameter
  and the gradient read; parameter and state written) and does nothing else.

Columns: median milliseconds; effective GB/s (the algorithm's bytes divided by
the time); the ratio of the fastest torch implementation's time to this one
(> 1: faster than torch's best); and the fraction of the roofline (roofline
time / this time).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import adaptim

WORKLOADS = {"a": (100, 160_000), "b": (1_000, 4_000)}

#: algorithm -> (adaptim/torch class name, settings, state tensors per parameter)
ALGORITHMS: dict[str, tuple[str, dict[str, Any], int]] = {
    "sgd-momentum": ("SGD", {"lr": 1e-3, "momentum": 0.9}, 1),
    "adagrad": ("Adagrad", {"lr": 1e-2}, 1),
    "rmsprop": ("RMSprop", {"lr": 1e-3}, 1),
    "adadelta": ("Adadelta", {}, 2),
    "adam": ("Adam", {"lr": 1e-3}, 2),
    "adamw": ("AdamW", {"lr": 1e-3}, 2),
    "amsgrad": ("Adam", {"lr": 1e-3, "amsgrad": True}, 3),
    "adamax": ("Adamax", {"lr": 1e-3}, 2),
    "nadam": ("NAdam", {"lr": 1e-3}, 2),
    "radam": ("RAdam", {"lr": 1e-3}, 2),
    # not in torch.optim: compared with adaptim's eager path and the roofline only
    "lars": ("LARS", {"lr": 0.1}, 1),
    "lamb": ("LAMB", {"lr": 1e-3}, 2),
}


def bytes_per_param(states: int, itemsize: int = 4) -> int:
    """Read parameter, gradient and every state tensor; write parameter and state back."""
    return itemsize * ((2 + states) + (1 + states))


@dataclass
class Runner:
    label: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_params(count: int, size: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(size, generator=generator).to(device)) for _ in range(count)
    ]


def attach_grads(params: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return grads


def optimizer_runner(label: str, factory: Callable[[list[torch.Tensor]], Any], count: int,
                     size: int, device: torch.device, fresh_grads: bool = False) -> Runner:  # fmt: skip
    params = make_params(count, size, device)
    grads = attach_grads(params)
    optimizer = factory(params)
    optimizer.step()  # creates the state (and, for the fused path, its buckets and kernel)
    optimizer.step()
    if not fresh_grads:
        return Runner(label, optimizer.step)
    spare = [g.clone() for g in grads]

    def step() -> None:
        for p, g in zip(params, spare, strict=True):  # what autograd hands over after zero_grad()
            p.grad = g
        optimizer.step()

    return Runner(label, step)


def roofline_runner(states: int, count: int, size: int, device: torch.device) -> Runner:
    """One fused pass with the algorithm's memory traffic and next to no arithmetic."""
    numel = count * size
    param, grad = torch.randn(numel, device=device), torch.randn(numel, device=device)
    buffers = [torch.zeros(numel, device=device) for _ in range(states)]

    def touch(param: torch.Tensor, grad: torch.Tensor, *state: torch.Tensor) -> None:
        for buffer in state:
            buffer.add_(grad)
        param.add_(grad)

    kernel = torch.compile(touch, fullgraph=True, dynamic=False)
    kernel(param, grad, *buffers)
    return Runner("roofline", lambda: kernel(param, grad, *buffers))


def runners_for(algorithm: str, workload: str, device: torch.device) -> list[Runner]:
    name, settings, states = ALGORITHMS[algorithm]
    count, size = WORKLOADS[workload]
    ours = getattr(adaptim, name)
    runners = [
        roofline_runner(states, count, size, device),
        optimizer_runner(
            "adaptim fused", lambda p: ours(p, **settings, fused=True), count, size, device
        ),
        optimizer_runner(
            "adaptim fused, fresh grads",
            lambda p: ours(p, **settings, fused=True),
            count,
            size,
            device,
            fresh_grads=True,
        ),
        optimizer_runner(
            "adaptim eager", lambda p: ours(p, **settings, fused=False), count, size, device
        ),
    ]
    theirs = getattr(torch.optim, name, None)
    if theirs is None:
        return runners
    runners.append(optimizer_runner("torch for-loop", lambda p: theirs(p, **settings, foreach=False),
                                    count, size, device))  # fmt: skip
    runners.append(optimizer_runner("torch foreach", lambda p: theirs(p, **settings, foreach=True),
                                    count, size, device))  # fmt: skip
    try:
        theirs([torch.nn.Parameter(torch.zeros(1, device=device))], fused=True)
    except (TypeError, RuntimeError, ValueError):
        pass  # torch has no fused kernel for this algorithm (or this device)
    else:
        runners.append(optimizer_runner("torch fused", lambda p: theirs(p, **settings, fused=True),
                                        count, size, device))  # fmt: skip
    return runners


def measure(runners: list[Runner], repeats: int, device: torch.device) -> None:
    for _ in range(repeats):
        for runner in runners:
            synchronize(device)
            start = time.perf_counter()
            runner.step()
            synchronize(device)
            runner.times.append(time.perf_counter() - start)


def report(
    algorithm: str, workload: str, device: torch.device, runners: list[Runner]
) -> list[dict[str, Any]]:
    _, _, states = ALGORITHMS[algorithm]
    count, size = WORKLOADS[workload]
    traffic = bytes_per_param(states) * count * size
    medians = {r.label: statistics.median(r.times) for r in runners}
    torch_times = [t for label, t in medians.items() if label.startswith("torch")]
    torch_best = min(torch_times) if torch_times else None
    roof = medians["roofline"]
    rows = []
    for label, seconds in medians.items():
        rows.append({
            "device": device.type, "workload": workload, "algorithm": algorithm,
            "implementation": label, "ms": seconds * 1e3, "gb_per_s": traffic / seconds / 1e9,
            "vs_best_torch": None if torch_best is None else torch_best / seconds, "of_roofline": roof / seconds,
        })  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'algorithm':<13} {'implementation':<27} {'ms':>8} {'GB/s':>7} {'vs torch best':>13} {'of roofline':>11}"
    current = None
    for row in rows:
        key = (row["device"], row["workload"])
        if key != current:
            current = key
            count, size = WORKLOADS[row["workload"]]
            print(
                f"\n## {row['device']}, workload ({row['workload']}): {count * size / 1e6:g}M float32 params in {count} tensors"
            )
            print(header)
        ratio = "—" if row["vs_best_torch"] is None else f"{row['vs_best_torch']:.2f}x"
        print(
            f"{row['algorithm']:<13} {row['implementation']:<27} {row['ms']:8.2f} {row['gb_per_s']:7.1f} "
            f"{ratio:>13} {row['of_roofline']:11.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workload", choices=sorted(WORKLOADS), nargs="+", default=sorted(WORKLOADS)
    )
    parser.add_argument(
        "--algorithms", choices=sorted(ALGORITHMS), nargs="+", default=list(ALGORITHMS)
    )
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--json", default="step_speed.json", help="where to write the rows")
    args = parser.parse_args()
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows: list[dict[str, Any]] = []
    for device in devices:
        for workload in args.workload:
            for algorithm in args.algorithms:
                runners = runners_for(algorithm, workload, device)
                measure(runners, args.repeats, device)
                new = report(algorithm, workload, device, runners)
                print_table(new)
                rows.extend(new)
                del runners
                gc.collect()
    meta = {
        "torch": torch.__version__, "adaptim": adaptim.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(), "repeats": args.repeats,
    }  # fmt: skip
    with open(args.json, "w") as handle:
        json.dump({"meta": meta, "rows": rows}, handle, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
