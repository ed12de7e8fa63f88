"""The default native loop with torch's square root (exact) against the correctly rounded one.

For every rooted algorithm and workload of ``step_speed.py``, two ``adaptim.X(params)``
with default arguments step side by side in this process, alternated in a random order
each round, with fresh gradients every step (``step_speed.measure``) and their memory
taken in turns (``step_speed.interleaved_runners``): one whose native loop inlines MKL's
root (``_native.EXACT_ROOT`` on during its steps: ``kernel_for(..., exact=True)``'s
kernel), one with the CPU's ``vsqrtps`` (off: the large default before it became a property
of the emulation). Each row prints both medians and ``exact / rounded`` (> 1: the exact
loop is slower), at each thread count. Algorithms whose loop has no root (the two loops
are the same C) are left out.

``--loops N ...`` times the two loops alone instead, without the step around them: each
kernel called on the same buffers (100 tensors of N elements, ``native_floor``'s captured
launch; ``--dtype float64`` too), for Adagrad, RMSprop and Adam.

Run: ``python benchmarks/exact_root_speed.py [--workload mlp medium large many]
[--threads 1 2] [--repeats 31] [--algorithms adam ...]`` or ``... --loops 2350 5000 160000
[--dtype float64]``. Ratios on a shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _launches  # (sibling modules)
import native_floor
import step_speed

import adaptim
from adaptim.torch import _mkl_sqrt, _native

#: step_speed's float32 rows with a native loop of their own (not Adafactor's or SM3's
#: per-axis passes, nor the memory-light states' loops).
CANDIDATES = [
    a
    for a in step_speed.ALGORITHMS
    if a not in step_speed.STATE_FORMATS
    and a not in step_speed.RESTRICTED_WORKLOADS
    and a not in ("adafactor", "sm3")
]


#: No size at which the default takes the exact loop on a large group: the rounded runner's.
_NEVER_FREE = dict.fromkeys(_mkl_sqrt.EXACT_LOOP_FREE_BELOW, 0)


class Rooted:
    """An optimizer whose steps compile and run the loop with ``EXACT_ROOT`` = ``exact`` (and,
    not exact, none of the sizes where the default would take the exact loop anyway)."""

    def __init__(self, optimizer: Any, exact: bool) -> None:
        self.optimizer, self.exact = optimizer, exact
        self.free = _mkl_sqrt.EXACT_LOOP_FREE_BELOW if exact else _NEVER_FREE

    def step(self) -> None:  # (the same two swaps either way: no cost of one's own)
        before = _native.EXACT_ROOT, _mkl_sqrt.EXACT_LOOP_FREE_BELOW
        _native.EXACT_ROOT, _mkl_sqrt.EXACT_LOOP_FREE_BELOW = self.exact, self.free
        try:
            self.optimizer.step()
        finally:
            _native.EXACT_ROOT, _mkl_sqrt.EXACT_LOOP_FREE_BELOW = before

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def factories(algorithm: str) -> list[tuple[str, step_speed.Factory]]:
    name, settings, _ = step_speed.ALGORITHMS[algorithm]
    ours = getattr(adaptim, name)
    return [
        (label, lambda p, e=exact: Rooted(ours(p, **settings), e))
        for label, exact in (("exact", True), ("rounded", False))
    ]


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def row(algorithm: str, workload: str, repeats: int) -> dict[str, Any] | None:
    cpu = torch.device("cpu")
    runners = step_speed.interleaved_runners(algorithm, workload, cpu, factories(algorithm))
    step_speed.measure(runners, 8, cpu)  # (RAdam's root starts at step 6)
    plans = {r.label: r.optimizer.plans() for r in runners}
    if plans["exact"] == plans["rounded"]:
        return None  # no root in the loop (or no native loop): nothing to compare
    status = runners[0].optimizer.fused_status()
    # at least ``repeats`` rounds, more where a step is short: about 3 s per loop
    took = statistics.median(runners[0].times)
    for r in runners:
        r.times.clear()
    step_speed.measure(runners, max(repeats, min(1001, int(3 / took))), cpu)
    ms = {r.label: statistics.median(r.times) * 1e3 for r in runners}
    return {
        "algorithm": algorithm,
        "workload": workload,
        "threads": torch.get_num_threads(),
        "ms": ms,
        "ratio": ms["exact"] / ms["rounded"],
        "rounds": len(runners[0].times),
        "path": status,
    }


def loops_alone(name: str, numel: int, threads: int, repeats: int) -> float:
    """Exact / rounded of ``name``'s two kernels called on the same 100 tensors of ``numel``."""
    kernels, kept = {}, []
    for exact in (True, False):
        before, _native.EXACT_ROOT = _native.EXACT_ROOT, exact
        try:
            launch, params, source = native_floor.captured_launch(name, numel, 100)
        finally:
            _native.EXACT_ROOT = before
        kernels["exact" if exact else "rounded"] = _native._load(source)
        kept.append(params)
    # (both kernels on the last launch's buffers, alive in ``kept`` while they run)
    runners = {k: _launches.caller(launch, f) for k, f in kernels.items()}
    medians = _launches.interleaved_medians(runners, threads, repeats, wall=threads > 1)
    kept.clear()
    return medians["exact"] / medians["rounded"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workload", nargs="+", default=["mlp", "medium", "large", "many"],
        choices=list(step_speed.WORKLOADS),
    )  # fmt: skip
    parser.add_argument("--algorithms", nargs="+", choices=CANDIDATES, default=CANDIDATES)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--loops", type=int, nargs="+", help="time the loops alone: N per tensor")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    os.environ.setdefault("ADAPTIM_CACHE_DIR", tempfile.mkdtemp(prefix="adaptim-bench-"))
    print("emulation:", {str(d): _mkl_sqrt.emulation(d) for d in (torch.float32, torch.float64)})
    step_speed.dtype = getattr(torch, args.dtype)
    if args.loops:
        torch.set_default_dtype(step_speed.dtype)  # (native_floor's tensors)
        for numel, threads in ((n, t) for n in args.loops for t in args.threads):
            torch.set_num_threads(threads)
            for name in ("adagrad", "rmsprop", "adam"):
                ratio = loops_alone(name, numel, threads, args.repeats)
                print(
                    f"{name:8s} {numel * 100:9d} {args.dtype}, {threads} thread(s): loops alone "
                    f"exact/rounded {ratio:.3f}  (load average {load()})",
                    flush=True,
                )
        return
    ratios: dict[tuple[str, int], list[float]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for workload in args.workload:
            print(f"\n## {workload}, {threads} thread(s); load average {load()}")
            for algorithm in args.algorithms:
                if not step_speed.runs_on(algorithm, workload):
                    continue
                result = row(algorithm, workload, args.repeats)
                if result is None:
                    continue
                ms = result["ms"]
                ratios.setdefault((workload, threads), []).append(result["ratio"])
                print(
                    f"{algorithm:10s} exact {ms['exact']:8.3f} ms  rounded {ms['rounded']:8.3f} ms"
                    f"  exact/rounded {result['ratio']:.3f}  ({result['rounds']} rounds; {result['path'][0]})",
                    flush=True,
                )
            print(f"(load average {load()})")
    print("\nmedian exact/rounded over the algorithms:")
    for (workload, threads), values in ratios.items():
        print(
            f"  {workload:7s} {threads} thread(s): {statistics.median(values):.3f} "
            f"(min {min(values):.3f}, max {max(values):.3f})"
        )


if __name__ == "__main__":
    main()
