"""Check the CUDA path where a GPU is present: equality with the reference path and torch.optim.

Usage::

    python benchmarks/cuda_check.py [--steps 30] [--json cuda_check.json]

CI has no GPU; this script is what a session runs on a lent GPU machine.
For every algorithm (float32 and float64, a 3-layer MLP's shapes plus a
0-d and a non-contiguous parameter, fresh gradients every step):

* ``default == reference``: ``adaptim.X(params)`` (on CUDA the multi-tensor
  replay) against ``foreach=False`` (the per-tensor rule), bit for bit;
* ``vs torch``: the largest relative difference from torch.optim's default
  (``foreach`` on CUDA) and, where torch has it, its ``fused=True``;
* ``compiled`` (for :data:`COMPILED`): ``torch.compile(opt.step)`` for 25 steps with a scheduled
  learning rate: the number of compiles after warm-up and the largest relative
  difference from eager.

It prints one line per check and exits 1 if a check that must hold fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import torch

import adaptim

#: name -> (adaptim class, settings beyond the defaults, torch.optim twin or None)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("SGD", {"lr": 1e-2}),
    "sgd-nesterov": ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    "adagrad": ("Adagrad", {"lr_decay": 1e-3, "weight_decay": 1e-3}),
    "rmsprop": ("RMSprop", {}),
    "rmsprop-centered": ("RMSprop", {"centered": True, "momentum": 0.9}),
    "adadelta": ("Adadelta", {}),
    "adam": ("Adam", {}),
    "amsgrad": ("Adam", {"amsgrad": True, "weight_decay": 1e-2}),
    "adamw": ("AdamW", {}),
    "adamax": ("Adamax", {}),
    "nadam": ("NAdam", {}),
    "nadam-decoupled": ("NAdam", {"decoupled_weight_decay": True, "weight_decay": 1e-2}),
    "radam": ("RAdam", {}),
    "lars": ("LARS", {}),
    "lamb": ("LAMB", {}),
}

COMPILED = ("adam", "rmsprop-centered", "nadam", "lamb")

SHAPES: list[tuple[int, ...]] = [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,), ()]


def make_params(dtype: torch.dtype, device: torch.device) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=generator, dtype=dtype) for s in SHAPES]
    # one non-contiguous parameter (a transposed view's storage)
    params.append(torch.randn(40, 30, generator=generator, dtype=dtype).t())
    return [torch.nn.Parameter(p.to(device)) for p in params]


def run(
    factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    dtype: torch.dtype,
    device: torch.device,
    steps: int,
    compiled: bool = False,
) -> tuple[list[torch.Tensor], int]:
    params = make_params(dtype, device)
    optimizer = factory(params)
    step = optimizer.step
    if compiled:
        step = torch.compile(optimizer.step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1 + 0.05 * t))
    generator = torch.Generator(device=device).manual_seed(1)
    compiles_after_warmup = 0
    for t in range(steps):
        for p in params:
            # a gradient that depends on the parameter, freshly allocated as after zero_grad()
            noise = torch.randn(p.shape, generator=generator, device=device, dtype=dtype)
            p.grad = p.detach() * 0.1 + noise
        if compiled and t == 3:
            torch._dynamo.utils.counters.clear()
        step()
        scheduler.step()
    if compiled:
        compiles_after_warmup = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return [p.detach().clone() for p in params], compiles_after_warmup


def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        scale = y.abs().max().clamp_min(1e-30)
        worst = max(worst, float(((x - y).abs().max() / scale).item()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default="cuda_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    print(
        f"torch {torch.__version__} on {device}: "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
    )
    rows: list[dict[str, Any]] = []
    failures = 0
    for name, (cls_name, settings) in CASES.items():
        ours = getattr(adaptim, cls_name)
        theirs = getattr(torch.optim, cls_name, None)
        for dtype in (torch.float32, torch.float64):
            row: dict[str, Any] = {"case": name, "dtype": str(dtype).removeprefix("torch.")}
            default, _ = run(functools.partial(ours, **settings), dtype, device, args.steps)
            reference, _ = run(
                functools.partial(ours, **settings, foreach=False), dtype, device, args.steps
            )
            row["default_equals_reference"] = all(
                torch.equal(a, b) for a, b in zip(default, reference, strict=True)
            )
            failures += not row["default_equals_reference"]
            if theirs is not None:
                torch_default, _ = run(
                    functools.partial(theirs, **settings), dtype, device, args.steps
                )
                row["vs_torch_default"] = max_rel(default, torch_default)
                try:
                    torch_fused, _ = run(
                        functools.partial(theirs, **settings, fused=True), dtype, device, args.steps
                    )
                    row["vs_torch_fused"] = max_rel(default, torch_fused)
                except (RuntimeError, TypeError, ValueError):
                    pass
            if dtype == torch.float32 and name in COMPILED and not args.no_compile:
                try:
                    compiled, compiles = run(
                        functools.partial(ours, **settings), dtype, device, 25, compiled=True
                    )
                    eager, _ = run(functools.partial(ours, **settings), dtype, device, 25)
                    row["compiled_vs_eager"] = max_rel(compiled, eager)
                    row["compiles_after_warmup"] = compiles
                    failures += compiles != 0 or row["compiled_vs_eager"] > 1e-5
                except Exception as error:  # report, keep checking the others
                    row["compile_error"] = f"{type(error).__name__}: {str(error)[:300]}"
                    failures += 1
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"{failures} failed checks")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
