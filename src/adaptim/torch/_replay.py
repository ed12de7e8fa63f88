"""Replay a recorded rule over lists of tensors with torch's multi-tensor (``_foreach_*``) kernels.

This is the engine's portable path: no compiler, any device, any dtype. A
:class:`~adaptim.torch._trace.Structure` becomes a small Python function, one
``torch._foreach_*`` call per recorded operation, generated once per structure
and cached. Each call runs the *same* ATen kernel the per-tensor reference
path runs for that operation, so the replay is bit-identical to it (and to
torch.optim's for-loop implementation where the rule follows it).

The function works in place wherever liveness allows, as torch's hand-written
foreach implementations do: an operation writes into its first operand when
that value is not read again and its buffer may be written (a temporary, or a
state/parameter buffer the rule overwrites anyway, once its old value is
dead). Gradients are never written. What cannot be done in place allocates a
temporary list; results that end in a temporary are copied into their buffer
at the end. ``Optimizer.plans()`` shows the generated source.

On the CPU two things leave ATen's per-operation kernels, still to the bit:
each run of element-wise operations between host or per-tensor values
becomes one native loop over the chunk's tensors where the chunk allows it
(:mod:`._fuse`; the multi-tensor lines are generated next to it, for the
chunks that do not), and column mean squares (Adafactor's ``C_t``) one native
pass (:mod:`._column_stats`).

The source is written by :mod:`._replay_source`; this module compiles it once
per structure, caches the plan and runs it chunk by chunk.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from adaptim.algorithms._axes import axis_maxima, axis_piece
from adaptim.torch import _fuse, _fuse_axes
from adaptim.torch._column_stats import column_mean_squares
from adaptim.torch._replay_ops import outer
from adaptim.torch._replay_source import _Emitter as _Emitter
from adaptim.torch._replay_source import _is_array as _is_array
from adaptim.torch._trace import Structure


@dataclass(frozen=True)
class Plan:
    """A generated multi-tensor step: ``run(*buffers, slots)`` returns the created state lists."""

    source: str
    run: Callable[..., tuple[list[torch.Tensor], ...]]


#: Plans with per-tensor work (host reads, reductions) run over chunks of about this
#: many elements: one chunk's temporaries are freed before the next chunk's are
#: allocated, so the allocator hands the same memory back (no fresh pages to fault
#: in) and a chunk's passes stay in cache (2 MiB per float32 array), as in torch's
#: for-loop implementation. Each fused loop opens one parallel region per chunk:
#: 1 << 17 gave 16M elements in 100 tensors one chunk per tensor and 200 regions a
#: step, 1 << 19 gives 50, 1.28x faster with 2 threads and as fast with 1 (the
#: other workloads of ``benchmarks/step_speed.py`` as fast either way).
CHUNK_NUMEL = 1 << 19


def _chunks(numels: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of consecutive tensors of at least :data:`CHUNK_NUMEL` elements."""
    ranges, start, total = [], 0, 0
    for index, numel in enumerate(numels):
        total += numel
        if total >= CHUNK_NUMEL:
            ranges.append((start, index + 1))
            start, total = index + 1, 0
    if start < len(numels):
        ranges.append((start, len(numels)))
    return ranges


def _chunked(
    function: Callable[..., tuple[list[torch.Tensor], ...]],
) -> Callable[..., tuple[list[torch.Tensor], ...]]:
    """``function`` over chunks of the tensor lists; the created state lists joined back."""

    def run(*args: Any) -> tuple[list[torch.Tensor], ...]:
        *lists, slots = args
        params = lists[0]
        if len(params) == 1 or sum(map(torch.Tensor.numel, params)) < 2 * CHUNK_NUMEL:
            return function(*args)
        created: tuple[list[torch.Tensor], ...] = ()
        for start, end in _chunks([p.numel() for p in params]):
            part = function(*(values[start:end] for values in lists), slots)
            # (a chunk that took a fused loop holds lists, one on the multi-tensor lines tuples)
            created = (
                tuple([*a, *b] for a, b in zip(created, part, strict=True)) if created else part
            )
        return created

    return run


_lock = threading.Lock()
_counter = itertools.count()
_PLANS: dict[tuple[Structure, bool], Plan] = {}


def plan_for(structure: Structure, rounded: bool = False) -> Plan:
    """The replay function of ``structure``, generated on first use and shared by every optimizer.

    ``rounded``: its per-axis loops take the correctly rounded square root in one pass
    (the native path's default; :mod:`._fuse_axes`), else ``torch.sqrt``'s bits.
    """
    cached = (structure, rounded)
    plan = _PLANS.get(cached)
    if plan is not None:
        return plan
    with _lock:
        plan = _PLANS.get(cached)
        if plan is None:
            name = f"adaptim_foreach_step_{next(_counter)}"
            emitter = _Emitter(structure, rounded)
            body = emitter.emit()
            source = f"def {name}({', '.join(structure.inputs)}, s):\n{body}\n"
            from adaptim.torch._base import TORCH_OPS  # (imports the engine, which imports this)

            namespace: dict[str, Any] = {
                "torch": torch,
                "xp": TORCH_OPS,
                "inf": math.inf,
                "column_mean_squares": column_mean_squares,
                "outer": outer,
                "axis_piece": axis_piece,
                "axis_maxima": axis_maxima,
            }
            namespace.update(emitter.functions)
            exec(compile(source, f"<{name}>", "exec"), namespace)
            for key, fused in emitter.functions.items():  # (shown by Optimizer.plans())
                if isinstance(fused, _fuse.FusedRun):
                    loop = fused.source(torch.float32).rstrip("\n").replace("\n", "\n# ")
                    source += f"\n# {key}: the fused native loop (float32)\n# {loop}\n"
            function = namespace[name]
            # (per-axis runs keep their reduced values in registers: no temporaries to reuse)
            inside = {
                i
                for f in emitter.functions.values()
                if isinstance(f, _fuse_axes.FusedAxesRun)
                for i in range(f.run.start, f.run.stop)
            }
            kinds = structure.kinds()
            if any(kinds[i] in ("host", "reduced") for i in range(len(kinds)) if i not in inside):
                function = _chunked(function)
            plan = Plan(source=source, run=function)
            _PLANS[cached] = plan
    return plan
