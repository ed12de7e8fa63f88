"""Check the CUDA path where a GPU is present: equality with the reference path and torch.optim.

Usage::

    python benchmarks/cuda_check.py [--steps 30] [--json cuda_check.json]

CI has no GPU; this script is what a session runs on a lent GPU machine.
For every algorithm (float32 and float64, a 3-layer MLP's shapes plus a
0-d and a non-contiguous parameter, fresh gradients every step, and the
first parameter rebound to new storage half-way, ``p.data = p.data.clone()``):

* ``path``: what the default ran (``fused_status()``): the generated Triton
  kernel (:mod:`adaptim.torch._triton`) for the contiguous tensors, the
  multi-tensor replay for the transposed one; a torch twin of
  :data:`KERNEL_CASES` that did not run the kernel fails;
* ``default vs replay``: ``adaptim.X(params)`` against ``foreach=True`` (the
  multi-tensor replay): the largest relative difference and the number of
  elements whose bits differ; more than :data:`TOLERANCE` fails;
* ``replay vs reference``: ``foreach=True`` against ``foreach=False`` (the
  per-tensor rule), the same two numbers (reported: on CUDA ATen's
  ``addcdiv`` and ``_foreach_addcdiv_`` round differently);
* ``vs torch``: the largest relative difference from torch.optim's default
  (``foreach`` on CUDA) and, where torch has it, its ``fused=True``; more
  than :data:`TOLERANCE` fails;
* ``first step``: the default's first ``step()`` in ms (a new kernel: Triton's
  compile, or its disk cache);
* with ``--fma-probe``: float32 runs of the default with
  :data:`adaptim.torch._triton_source.FUSED_MULTIPLY_ADD` on and off, and how
  many elements of each differ in their bits from the replay (which is closer
  to ATen's CUDA kernels);
* ``compiled`` (for :data:`COMPILED`): ``torch.compile(opt.step)`` for 25 steps with a scheduled
  learning rate: the number of compiles after warm-up and the largest relative
  difference from eager.

It prints one line per check and exits 1 if a check that must hold fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import adaptim
from adaptim.torch import _triton, _triton_source

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
    "lars-decay": ("LARS", {"weight_decay": 1e-2, "trust_clip": True}),
    "lamb": ("LAMB", {}),
    "lamb-decay": ("LAMB", {"weight_decay": 1e-2}),
    "novograd": ("NovoGrad", {"weight_decay": 1e-2}),
}

COMPILED = ("sgd-nesterov", "rmsprop", "adam", "rmsprop-centered", "nadam", "lamb")

#: Cases whose default must run the Triton kernel: every one (LARS, LAMB and NovoGrad's
#: norms and 0-d state included: their passes ran in Triton's interpreter and compiled for
#: sm_90, and have not yet run on a GPU).
KERNEL_CASES = tuple(CASES)

#: The largest relative difference (from the replay, from torch) taken for rounding.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}

SHAPES: list[tuple[int, ...]] = [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,), ()]


def make_params(dtype: torch.dtype, device: torch.device) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=generator, dtype=dtype) for s in SHAPES]
    # one non-contiguous parameter (a transposed view's storage)
    params.append(torch.randn(40, 30, generator=generator, dtype=dtype).t())
    return [torch.nn.Parameter(p.to(device)) for p in params]


#: What the last :func:`run` observed: the optimizer's ``fused_status()`` and first step (ms).
LAST: dict[str, Any] = {}


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
    LAST.clear()
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
        if t == steps // 2 and not compiled:
            params[0].data = params[0].data.clone()  # new storage: the kernel's tables follow
        start = time.perf_counter()
        step()
        if t == 0:
            torch.cuda.synchronize() if device.type == "cuda" else None
            LAST["first_step_ms"] = (time.perf_counter() - start) * 1e3
        scheduler.step()
    status = getattr(optimizer, "fused_status", None)
    if status is not None and not compiled:
        LAST["status"] = status()
    if compiled:
        compiles_after_warmup = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    return [p.detach().clone() for p in params], compiles_after_warmup


def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        scale = y.abs().max().clamp_min(1e-30)
        worst = max(worst, float(((x - y).abs().max() / scale).item()))
    return worst


def bits_differ(a: list[torch.Tensor], b: list[torch.Tensor]) -> int:
    """How many elements differ in their bits (NaNs equal)."""
    return sum(
        int((~((x == y) | (x.isnan() & y.isnan()))).sum()) for x, y in zip(a, b, strict=True)
    )


def fma_probe(device: torch.device, steps: int) -> list[dict[str, Any]]:
    """float32, each torch twin: the kernel's bits with and without its fused multiply-adds,
    against the replay's (``torch._foreach_*``: ATen's CUDA kernels)."""
    rows = []
    for name in KERNEL_CASES:
        cls_name, settings = CASES[name]
        ours = getattr(adaptim, cls_name)
        replay, _ = run(
            functools.partial(ours, **settings, foreach=True), torch.float32, device, steps
        )
        row: dict[str, Any] = {"fma_probe": name}
        for fma in (True, False):
            _triton_source.FUSED_MULTIPLY_ADD = fma
            try:
                kernel, _ = run(functools.partial(ours, **settings), torch.float32, device, steps)
            finally:
                _triton_source.FUSED_MULTIPLY_ADD = True
            row[f"fma_{fma}_bits_differ"] = bits_differ(kernel, replay)
            row[f"fma_{fma}_max_rel"] = max_rel(kernel, replay)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default="cuda_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--fma-probe", action="store_true", help="also: the kernel's bits with and without FMA"
    )
    parser.add_argument(
        "--interpret",
        action="store_true",
        help="a dry run without a GPU: --device cpu through Triton's interpreter",
    )
    args = parser.parse_args()
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
        _triton.DEVICES = frozenset({"cpu", "cuda"})
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
            tolerance = TOLERANCE[dtype]
            default, _ = run(functools.partial(ours, **settings), dtype, device, args.steps)
            row["path"], row["first_step_ms"] = LAST["status"], LAST["first_step_ms"]
            if name in KERNEL_CASES and device.type in _triton.DEVICES:
                ran = any("triton" in s for s in row["path"])
                row["kernel_ran"] = ran
                failures += not ran
            replay, _ = run(
                functools.partial(ours, **settings, foreach=True), dtype, device, args.steps
            )
            reference, _ = run(
                functools.partial(ours, **settings, foreach=False), dtype, device, args.steps
            )
            row["default_vs_replay"] = max_rel(default, replay)
            row["default_vs_replay_bits_differ"] = bits_differ(default, replay)
            row["replay_vs_reference"] = max_rel(replay, reference)
            row["replay_vs_reference_bits_differ"] = bits_differ(replay, reference)
            failures += row["default_vs_replay"] > tolerance
            if theirs is not None:
                torch_default, _ = run(
                    functools.partial(theirs, **settings), dtype, device, args.steps
                )
                row["vs_torch_default"] = max_rel(default, torch_default)
                row["replay_vs_torch_default"] = max_rel(replay, torch_default)
                failures += row["vs_torch_default"] > tolerance
                try:
                    torch_fused, _ = run(
                        functools.partial(theirs, **settings, fused=True), dtype, device, args.steps
                    )
                    row["vs_torch_fused"] = max_rel(default, torch_fused)
                    row["vs_torch_fused_bits_differ"] = bits_differ(default, torch_fused)
                    failures += row["vs_torch_fused"] > tolerance
                except (RuntimeError, TypeError, ValueError):
                    pass
            if (
                row.get("default_vs_replay", 0) > tolerance
                or row.get("vs_torch_default", 0) > tolerance
            ):
                print(f"FAIL {name} {row['dtype']}: beyond {tolerance:g}", flush=True)
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
    if args.fma_probe:
        rows += fma_probe(device, args.steps)
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"{failures} failed checks")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
