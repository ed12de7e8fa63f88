"""Time ``step()`` in the loop users write: default constructor, a fresh gradient every step.

Usage::

    python benchmarks/step_speed.py                       # every algorithm, the four workloads
    python benchmarks/step_speed.py --workload mlp --algorithms adam rmsprop --repeats 31
    python benchmarks/step_speed.py --json benchmarks/step_speed_cpu.json
    python benchmarks/step_speed.py --table benchmarks/step_speed_cpu.json   # the README's table
    python benchmarks/step_speed.py --threads 1 --clock process   # CPU time: steadier under load
    python benchmarks/step_speed.py --isolate row    # each row in a fresh process
    python benchmarks/step_speed.py --show-placement # each side's physically contiguous pages
    python benchmarks/step_speed.py --dtype bfloat16 --workload mlp medium   # half precision

Workloads (float32, or the ``--dtype`` given: parameters, gradients and state in
float16 or bfloat16, where torch.optim and adaptim both keep the state in the
parameter's dtype; the memory-light rows and SparseAdam/Muon run in float32 only):

* ``small`` (optional: timed only when named): an MLP 256-128-64-10, 42k
  parameters in 6 tensors, a group under the engine's ``AUTO_NATIVE_MIN_NUMEL``
  (where the default runs the exact native loop, or the replay);
* ``mlp``: an MLP 784-256-128-10, 235k parameters in 6 tensors;
* ``medium``: 1.5M parameters in 52 tensors (26 layers of 240x240 and a bias);
* ``large``: 16M parameters in 100 tensors of 160k;
* ``many``: 4M parameters in 1,000 tensors of 4k;
* ``embedding`` (SparseAdam only): an ``nn.Embedding(100_000, 64, sparse=True)``
  table, 6.4M parameters, whose gradient is a batch of 4,096 looked-up rows
  (uncoalesced, with repeats, as autograd hands it over); "of roofline"
  counts the bytes of the rows the batch touches;
* ``matrices`` (Muon only): 1.6M parameters in 6 matrices of 512x512, the only
  rank torch's Muon takes. Muon's step is matrix products (the Newton–Schulz
  iteration, in bfloat16), so "of roofline" says little there;
* ``matrices-large`` (Muon only, optional: timed only when named): 8.4M
  parameters in a 1024x4096 and a 4096x1024 matrix (the iteration transposes
  tall ones), where one step takes about a second per thread.

SparseAdam and Muon run on their own workload only, and the others never on
those two; their torch twins have neither ``foreach`` nor ``fused``, so they
are timed against torch's one implementation ("torch default"), without an
"adaptim foreach" row.

For every algorithm each implementation holds its own copy of the same
parameters, and they are timed *interleaved* (one step of each, in turn,
repeated), so a noisy neighbour slows them all alike; the table reports
medians. Before each timed step the implementation's old gradients are
dropped and it receives newly allocated ones, as with ``zero_grad()`` (its
default ``set_to_none=True``) and ``backward()``.

Where a tensor lies in *physical* memory changes a 16M step's time by up to a
quarter (``page_placement.py``), and memory freed earlier in the process comes
back physically scattered to whoever allocates next. So by default
(``--placement interleaved``) a row's implementations take their memory in
turns, tensor by tensor, in a rotating order: parameters, the gradients'
sources and first gradients, and placeholders that each implementation frees
just before its constructor and first step, so that its state reuses them
(:func:`interleaved_runners`, ``fair_placement.py``). ``--placement
sequential`` builds each implementation in turn instead (the first then takes
what earlier rows freed). Each round's fresh gradients are placed the same way:
every implementation's old ones are dropped, the new ones allocated in turns,
and each receives its values just before its own step (:func:`interleaved_grads`);
``sequential`` has each implementation drop and clone its own. Run as root, each row records the share of every
implementation's parameter, gradient and state pages that lie in physically
contiguous 16 KiB groups (``placement`` in the JSON; ``--show-placement``
prints it), to check that none is systematically placed worse. Implementations:

* ``adaptim``: ``adaptim.X(params)`` with default arguments, the headline;
* ``adaptim foreach``: ``foreach=True`` (the multi-tensor replay, no compiler);
  not for the memory-light states, which have no replay;
* ``adaptim fused`` (``--dtype`` float16 or bfloat16 only): ``fused=True``, the
  native half loop, whether or not the default takes it (float16's does not);
* ``torch for-loop``, ``torch foreach``, ``torch fused``: each that
  torch.optim has; ``vs torch`` is the fastest of them divided by adaptim's time
  (> 1: adaptim is faster). LARS and LAMB are not in torch.optim.
* ``adam-bf16`` and ``adam-8bit`` are ``adaptim.Adam`` with
  ``state_dtype=torch.bfloat16`` or ``state_bits=8``, against torch.optim's
  float32 Adam (their twin) and, for 8 bits, bitsandbytes' ``Adam8bit``
  (``vs bnb``, when bitsandbytes is installed). Their roofline counts their
  own bytes: 20 per parameter for bf16 (12 for parameter and gradient, 2+2
  read and written for the moments), about 16.06 for 8 bits (each moment's
  code read and written, and its block maximum: 4 bytes per 256) on tensors
  of 4096 elements or more, 28 (fp32's) on smaller ones.

``first step`` is the latency of the very first ``step()`` (state creation,
and for adaptim the recording and, where it runs native, building the kernel).
By default the kernel cache starts empty (a temporary ``ADAPTIM_CACHE_DIR``),
so it includes the C compile a user pays once per machine; ``--warm-cache``
uses the normal cache instead. ``of roofline`` is the time the algorithm's
bytes would take at the best bandwidth of three large streaming kernels
measured in the same run (``copy_`` and the in-place ``add_`` and ``mul_``;
see :func:`stream_bandwidths`), divided by the step's time: the fraction of
the memory bandwidth the step reaches. A workload that fits in the cache can
read above 100%. ``of copy`` is the same against ``copy_``'s bandwidth alone
(the reference on a GPU), and ``path`` what adaptim's default ran
(``fused_status()``: ``triton``, the generated GPU kernel of
:mod:`adaptim.torch._triton`; ``native``, the CPU loop; ``foreach``, the
replay). With a cold cache Triton's (``TRITON_CACHE_DIR``) starts empty too, so
a GPU kernel's first step includes its compile.

By default every row runs in this one process, one after another, so each
row inherits what the rows before it did to the process: its heap (where
``malloc`` puts the next tensors), its page tables and the memory the kernel
handed it. A training process runs one optimizer, so ``--isolate workload``
runs each workload, and ``--isolate row`` each algorithm of each workload, in
a fresh Python process (the streaming bandwidth is measured once, here, and
handed to them; with a cold cache each gets its own empty kernel cache, so
every "first step" includes the compile). The JSON's meta records the mode
(``"isolate"``).

Each row records the load average while it ran. With more than one thread
on cores other processes also use, OpenMP's spinning workers (torch's and
adaptim's alike) get descheduled and the wall times measure the scheduler;
the script then says so at the end. Rerun idle, or start it with
``OMP_WAIT_POLICY=passive`` (recorded in the JSON's meta), which applies to
every implementation alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from fair_placement import contiguous_share, interleave, state_tensors

import adaptim
from adaptim.torch import _native

WORKLOADS: dict[str, list[tuple[int, ...]]] = {
    # 42k parameters: a group under the engine's AUTO_NATIVE_MIN_NUMEL (its exact loop)
    "small": [(128, 256), (128,), (64, 128), (64,), (10, 64), (10,)],
    "mlp": [(256, 784), (256,), (128, 256), (128,), (10, 128), (10,)],
    "medium": [(240, 240), (240,)] * 26,
    "large": [(160_000,)] * 100,
    "many": [(4_000,)] * 1_000,
    "embedding": [(100_000, 64)],
    "matrices": [(512, 512)] * 6,
    "matrices-large": [(1024, 4096), (4096, 1024)],
}
#: Workloads timed only when named (``--workload``): not in the default set.
OPTIONAL_WORKLOADS = ("small", "matrices-large")

#: Algorithms that take only some inputs, each timed on the one workload they take.
RESTRICTED_WORKLOADS = {"sparseadam": ("embedding",), "muon": ("matrices", "matrices-large")}
#: Rows of the ``embedding`` table one batch looks up (with repeats).
EMBEDDING_BATCH = 4_096

#: algorithm -> (adaptim/torch class name, settings beyond the defaults, state tensors per
#: parameter; ``None``: factored, one per element of a vector or scalar, none for a matrix)
ALGORITHMS: dict[str, tuple[str, dict[str, Any], int | None]] = {
    "sgd-momentum": ("SGD", {"lr": 1e-3, "momentum": 0.9}, 1),
    "adagrad": ("Adagrad", {}, 1),
    "rmsprop": ("RMSprop", {}, 1),
    "adadelta": ("Adadelta", {}, 2),
    "adam": ("Adam", {}, 2),
    "adamw": ("AdamW", {}, 2),
    "amsgrad": ("Adam", {"amsgrad": True}, 3),
    "adamax": ("Adamax", {}, 2),
    "nadam": ("NAdam", {}, 2),
    "radam": ("RAdam", {}, 2),
    "lars": ("LARS", {}, 1),
    "lamb": ("LAMB", {}, 2),
    # torch.optim's other adaptive methods (issue 16)
    "rprop": ("Rprop", {}, 2),
    "asgd": ("ASGD", {}, 1),
    # factored: a matrix keeps a row and a column (taken as 0 per parameter); vectors keep one
    "adafactor": ("Adafactor", {}, None),
    # optax's: no torch.optim twin, so no ratio; the roofline column still applies
    "lion": ("Lion", {}, 1),
    "adabelief": ("AdaBelief", {}, 2),
    "yogi": ("Yogi", {}, 2),
    "adan": ("Adan", {}, 4),
    # (and a 0-d second moment per tensor: no traffic)
    "novograd": ("NovoGrad", {}, 1),
    # factored like Adafactor, plus a momentum buffer per element (see FACTORED_STATES)
    "sm3": ("SM3", {}, None),
    # memory-light states (issue 16): Adam's rule, its moments in bf16 or 8 bits
    "adam-bf16": ("Adam", {}, 2),
    "adam-8bit": ("Adam", {}, 2),
    # torch.optim's twins that take only some inputs (see RESTRICTED_WORKLOADS)
    "sparseadam": ("SparseAdam", {}, 2),
    "muon": ("Muon", {}, 1),
}

#: Factored algorithms (``None`` above): state tensors per element of a matrix, of a vector.
FACTORED_STATES: dict[str, tuple[int, int]] = {"adafactor": (0, 1), "sm3": (1, 2)}

#: adaptim-only options of the memory-light rows (torch's twin runs without them).
STATE_FORMATS: dict[str, dict[str, Any]] = {
    "adam-bf16": {"state_dtype": torch.bfloat16},
    "adam-8bit": {"state_bits": 8},
}


def runs_on(algorithm: str, workload: str) -> bool:
    """Whether ``algorithm`` is timed on ``workload`` (SparseAdam and Muon: their own only)."""
    own = RESTRICTED_WORKLOADS.get(algorithm)
    if own:
        return workload in own
    return all(workload not in others for others in RESTRICTED_WORKLOADS.values())


#: The parameters' dtype (``--dtype``).
dtype = torch.float32
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_grads(
    workload: str, shapes: list[tuple[int, ...]], generator: torch.Generator
) -> list[torch.Tensor]:
    """One gradient per parameter: dense, or for ``embedding`` a sparse batch of rows."""
    if workload != "embedding":
        return [torch.randn(s, generator=generator).to(dtype) for s in shapes]
    ((rows, dim),) = shapes
    indices = torch.randint(rows, (1, EMBEDDING_BATCH), generator=generator)
    values = torch.randn(EMBEDDING_BATCH, dim, generator=generator)
    return [torch.sparse_coo_tensor(indices, values, (rows, dim))]


def active_elements(workload: str) -> int:
    """The elements a step reads and writes: all of them, or the rows the batch touches."""
    shapes = WORKLOADS[workload]
    if workload != "embedding":
        return sum(torch.Size(s).numel() for s in shapes)
    (grad,) = make_grads(workload, shapes, torch.Generator().manual_seed(0))
    return int(grad.coalesce().values().numel())


def bytes_per_param(states: int, itemsize: int = 4) -> int:
    """Read parameter, gradient and every state tensor; write parameter and state back."""
    return itemsize * ((2 + states) + (1 + states))


def traffic(algorithm: str, workload: str) -> float:
    """The bytes one step must move: :func:`bytes_per_param`, in the state's own format."""
    _, _, states = ALGORITHMS[algorithm]
    if states is None:  # factored: a matrix's rows and columns are taken as no traffic
        in_matrix, in_vector = FACTORED_STATES[algorithm]
        shapes = WORKLOADS[workload]
        numel = sum(torch.Size(s).numel() for s in shapes)
        vectors = sum(torch.Size(s).numel() for s in shapes if len(s) < 2)
        return bytes_per_param(in_matrix) * (numel - vectors) + bytes_per_param(in_vector) * vectors
    if algorithm not in STATE_FORMATS:
        return bytes_per_param(states, dtype.itemsize) * active_elements(workload)
    sizes = [torch.Size(s).numel() for s in WORKLOADS[workload]]
    if algorithm == "adam-bf16":
        return sum(sizes) * (12 + 2 * 2 * states)
    if algorithm == "adam-8bit":  # (bitsandbytes' rule: smaller tensors keep fp32 state)
        quantized = 12 + 2 * states * (1 + 4 / 256)
        return sum(n * (quantized if n >= 4096 else bytes_per_param(states)) for n in sizes)
    raise ValueError(f"no traffic formula for {algorithm!r}")


@dataclass
class Runner:
    label: str
    #: Hands the parameters newly allocated gradients (not timed).
    fresh_grads: Callable[[], None]
    step: Callable[[], None]
    first_step: float
    times: list[float] = field(default_factory=list)
    #: What the step reads and writes (for :func:`placement`): the parameters and optimizer.
    params: list[torch.Tensor] = field(default_factory=list)
    optimizer: Any = None
    #: Per timed step, the gradients' contiguous share (they are new every step).
    grad_shares: list[float] = field(default_factory=list)
    #: What adaptim's step ran (``fused_status()``: ``triton``, ``native``, ``foreach``, ...).
    status: list[str] = field(default_factory=list)
    #: The values each step's gradients take (what ``backward()`` would write).
    sources: list[torch.Tensor] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def optimizer_runner(
    label: str,
    factory: Callable[[list[torch.Tensor]], Any],
    workload: str,
    device: torch.device,
) -> Runner:
    """One implementation, its parameters and gradients allocated now, on their own."""
    generator = torch.Generator().manual_seed(0)
    shapes = WORKLOADS[workload]
    params = [
        torch.nn.Parameter(torch.randn(s, generator=generator).to(device, dtype)) for s in shapes
    ]
    grads = [g.to(device) for g in make_grads(workload, shapes, generator)]
    return started_runner(label, factory, params, grads, device)


def started_runner(
    label: str,
    factory: Callable[[list[torch.Tensor]], Any],
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    device: torch.device,
    release: Callable[[], None] = lambda: None,
) -> Runner:
    """Build the optimizer over ``params`` and take its first two steps (the first timed).

    ``release`` runs just before the constructor: it frees the placeholders
    whose memory the state is meant to take (:func:`interleaved_runners`).
    """
    release()  # (before the constructor: some, like Adagrad's, create their state there)
    optimizer = factory(params)

    def fresh_grads() -> None:
        for p in params:  # zero_grad() (set_to_none): the old gradients are freed first,
            p.grad = None
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()  # then backward() allocates new ones
        synchronize(device)

    if any(p.grad is None for p in params):
        fresh_grads()
    start = time.perf_counter()
    optimizer.step()
    synchronize(device)
    first = time.perf_counter() - start
    fresh_grads()
    optimizer.step()  # SGD's momentum buffer: the second step is the first steady one
    status = optimizer.fused_status() if hasattr(optimizer, "fused_status") else []
    return Runner(
        label,
        fresh_grads,
        optimizer.step,
        first,
        params=params,
        optimizer=optimizer,
        status=status,
        sources=grads,
    )


def stream_bandwidths(device: torch.device, repeats: int) -> dict[str, float]:
    """Bytes per second of three large streaming kernels: ``copy_`` (read one
    tensor, write another) and the in-place ``add_`` and ``mul_`` (read and
    write the same memory, as an optimizer step does).

    A ``copy_`` also reads each target line before writing it (write-allocate)
    on most CPUs, traffic its byte count leaves out, so a step that updates in
    place can beat it; the roofline is the fastest of the three.
    """
    numel = 1 << 25
    source, target = torch.randn(numel, device=device), torch.randn(numel, device=device)
    kernels = {
        "copy_": (lambda: target.copy_(source), 2),
        "add_": (lambda: target.add_(source), 3),
        "mul_": (lambda: target.mul_(1.0), 2),
    }
    rates = {}
    for name, (kernel, tensors) in kernels.items():
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            kernel()
            synchronize(device)
            times.append(time.perf_counter() - start)
        rates[name] = tensors * numel * 4 / statistics.median(times)
    return rates


Factory = Callable[[list[torch.Tensor]], Any]


def runner_factories(algorithm: str, device: torch.device) -> list[tuple[str, Factory]]:
    """Each implementation timed in ``algorithm``'s row: its label and constructor."""
    name, settings, _ = ALGORITHMS[algorithm]
    ours = getattr(adaptim, name)
    formats = STATE_FORMATS.get(algorithm, {})
    runners: list[tuple[str, Factory]] = [("adaptim", lambda p: ours(p, **settings, **formats))]
    if algorithm == "adam-8bit":
        try:
            import bitsandbytes  # optional: only this row needs it
        except ImportError:
            pass
        else:
            runners.append(("bnb Adam8bit", bitsandbytes.optim.Adam8bit))
    theirs = getattr(torch.optim, name, None)
    if algorithm in RESTRICTED_WORKLOADS:  # no foreach or fused switch on either side
        assert theirs is not None
        return [*runners, ("torch default", lambda p: theirs(p))]
    if not formats:
        runners.append(("adaptim foreach", lambda p: ours(p, **settings, foreach=True)))
    if dtype != torch.float32 and not formats:  # the half native loop, default or not
        runners.append(("adaptim fused", lambda p: ours(p, **settings, fused=True)))
    if theirs is None:
        return runners
    for label, switch in (
        ("torch for-loop", {"foreach": False}),
        ("torch foreach", {"foreach": True}),
        ("torch fused", {"fused": True}),
    ):
        probe = torch.nn.Parameter(torch.zeros(1, device=device))
        probe.grad = torch.zeros_like(probe)
        try:  # some refuse at construction, others (fused Adagrad on CUDA) at the first step
            theirs([probe], **switch).step()
        except (TypeError, RuntimeError, ValueError):
            continue  # torch has no such implementation of this algorithm (or on this device)
        runners.append((label, lambda p, s=switch: theirs(p, **settings, **s)))
    return runners


#: Elements a state placeholder has beyond its parameter's: the allocator (glibc's
#: ``posix_memalign``) asks for a little more than the tensor's bytes, and a freed
#: block of exactly the tensor's size would be passed over.
SLACK = 64


def runners_for(
    algorithm: str, workload: str, device: torch.device, placement: str = "interleaved"
) -> list[Runner]:
    """The row's implementations, ready to time, their tensors placed as ``placement`` says.

    ``"sequential"``: each built in turn, allocating everything it needs, the
    way one training process would (in a row, the first takes the memory
    freed before it). ``"interleaved"``: :func:`interleaved_runners`.
    """
    factories = runner_factories(algorithm, device)
    if placement == "sequential":
        return [optimizer_runner(label, f, workload, device) for label, f in factories]
    return interleaved_runners(algorithm, workload, device, factories)


def interleaved_runners(
    algorithm: str, workload: str, device: torch.device, factories: list[tuple[str, Factory]]
) -> list[Runner]:
    """Every implementation's tensors allocated tensor by tensor, in a rotating order.

    Parameters, gradients (the source each step clones, and the first clone)
    and placeholders for the state (touched, so the pages are theirs) are taken in turns (``fair_placement.
    interleave``), so each implementation gets the same mix of scattered and
    orderly physical pages; each frees its placeholders just before its first
    step, where its optimizer allocates its state into them.
    """
    shapes = WORKLOADS[workload]
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(s, generator=generator) for s in shapes]  # (optimizer_runner's)
    gradients = make_grads(workload, shapes, generator)
    owners, count = len(factories), len(shapes)
    # who goes first at the first tensor, fixed per row and spread over the rows (it
    # matters where a workload has few tensors: one, for the embedding table)
    start = zlib.crc32(f"{algorithm}/{workload}".encode()) % owners
    params = interleave(
        owners,
        count,
        lambda _, i: torch.nn.Parameter(values[i].to(device, dtype, copy=True)),
        start,
    )
    grads = interleave(owners, count, lambda _, i: gradients[i].clone().to(device), start)
    clones = interleave(owners, count, lambda k, i: grads[k][i].clone(), start)
    for own, first in zip(params, clones, strict=True):
        for p, g in zip(own, first, strict=True):
            p.grad = g
    del clones
    _, _, states = ALGORITHMS[algorithm]
    per_param = max(states or 1, 1)
    reserves = interleave(
        owners,
        count * per_param,
        lambda k, j: torch.zeros(
            params[k][j // per_param].numel() + SLACK, dtype=dtype, device=device
        ),
        start,
    )
    runners = []
    for k, (label, factory) in enumerate(factories):
        runners.append(
            started_runner(label, factory, params[k], grads[k], device, reserves[k].clear)
        )
    return runners


def placement(runners: list[Runner]) -> dict[str, dict[str, float | None]]:
    """Per implementation, the share of its parameters', gradients' (the mean over
    every :data:`GRAD_SAMPLES`-th round) and state's pages in physically contiguous 16 KiB groups
    (``fair_placement.contiguous_share``).
    """
    return {
        r.label: {
            "params": contiguous_share(r.params),
            "grads": statistics.mean(r.grad_shares) if r.grad_shares else None,
            "state": contiguous_share(state_tensors(r.optimizer, r.params)),
        }
        for r in runners
    }


#: What a timed step reads (``--clock``): wall time, or the process's CPU time.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}
clock = time.perf_counter


#: The gradients' placement is read every this many rounds.
GRAD_SAMPLES = 5


def interleaved_grads(runners: list[Runner], start: int) -> list[Callable[[], None]]:
    """Drop every implementation's gradients, then allocate new ones in turns.

    As with the parameters (:func:`interleaved_runners`), tensor by tensor in a
    rotating order, so that no implementation's gradients always take the pages
    another's just freed. Returns, per runner, what writes the gradients' values
    (as ``backward()`` would, just before that runner's step, so that a small
    model's gradients are as warm in the cache as after a real backward).
    Sparse gradients (the embedding workload) are cloned there instead.
    """
    for runner in runners:
        for p in runner.params:
            p.grad = None
    count = len(runners[0].params)

    def allocate(k: int, i: int) -> torch.Tensor | None:
        source = runners[k].sources[i]
        return None if source.is_sparse else torch.empty_like(source)

    fresh = interleave(len(runners), count, allocate, start)

    def writer(runner: Runner, grads: list[torch.Tensor | None]) -> Callable[[], None]:
        def write() -> None:
            for p, g, source in zip(runner.params, grads, runner.sources, strict=True):
                p.grad = source.clone() if g is None else g.copy_(source)

        return write

    return [writer(r, g) for r, g in zip(runners, fresh, strict=True)]


def measure(
    runners: list[Runner], repeats: int, device: torch.device, interleaved: bool = True
) -> None:
    """Time ``repeats`` steps of every runner, each after it received fresh gradients.

    ``interleaved``: each round's gradients of all runners are allocated together
    in turns (:func:`interleaved_grads`); else each runner drops and clones its
    own just before its step.
    """
    order = random.Random(0)
    for index in range(repeats):
        writes = (
            {id(r): w for r, w in zip(runners, interleaved_grads(runners, index), strict=True)}
            if interleaved and runners
            else {}
        )
        # A fresh order every round: whoever runs right after whom (caches, the
        # thread pool's state) must not favour one implementation.
        for runner in order.sample(runners, len(runners)):
            if writes:
                writes[id(runner)]()
            else:
                runner.fresh_grads()
            synchronize(device)
            start = clock()
            runner.step()
            synchronize(device)
            runner.times.append(clock() - start)
            if index % GRAD_SAMPLES == 0:  # (reading the page map of 1,000 tensors: ~20 ms)
                share = contiguous_share(p.grad for p in runner.params if p.grad is not None)
                if share is not None:
                    runner.grad_shares.append(share)


def report(
    algorithm: str,
    workload: str,
    device: torch.device,
    runners: list[Runner],
    bandwidth: float,
    copy_bandwidth: float | None = None,
) -> dict[str, Any]:
    moved = traffic(algorithm, workload)
    medians = {r.label: statistics.median(r.times) for r in runners}
    firsts = {r.label: r.first_step for r in runners}
    torch_times = {k: v for k, v in medians.items() if k.startswith("torch")}
    best = min(torch_times, key=torch_times.__getitem__) if torch_times else None
    ours = medians["adaptim"]
    return {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "workload": workload,
        "algorithm": algorithm,
        "ms": {k: v * 1e3 for k, v in medians.items()},
        "first_step_ms": {k: v * 1e3 for k, v in firsts.items()},
        "torch_best": best,
        "vs_torch": None if best is None else torch_times[best] / ours,
        "foreach_vs_torch": None
        if best is None or "adaptim foreach" not in medians
        else torch_times[best] / medians["adaptim foreach"],
        "vs_bnb": medians["bnb Adam8bit"] / ours if "bnb Adam8bit" in medians else None,
        "fused_vs_torch": None
        if best is None or "adaptim fused" not in medians
        else torch_times[best] / medians["adaptim fused"],
        "of_roofline": moved / bandwidth / ours,
        # the same against ``copy_`` alone (on a GPU the fastest of the three)
        "of_copy": None if copy_bandwidth is None else moved / copy_bandwidth / ours,
        "adaptim_path": next(r.status for r in runners if r.label == "adaptim"),
    }


def print_row(row: dict[str, Any], header: bool) -> None:
    if header:
        shapes = WORKLOADS[row["workload"]]
        numel = sum(torch.Size(s).numel() for s in shapes)
        print(
            f"\n## {row['device']}, {row['workload']}: {numel / 1e6:.3g}M {row['dtype']} params in "
            f"{len(shapes)} tensors, fresh gradients every step, {torch.get_num_threads()} threads"
        )
        print(
            f"{'algorithm':<13} {'adaptim ms':>10} {'torch best':>22} {'vs torch':>9} "
            f"{'foreach vs':>10} {'1st step ms':>11} {'torch 1st':>9} {'of roofline':>11} "
            f"{'of copy':>7} path"
        )
    ms = row["ms"]
    best = row["torch_best"]
    torch_text = "—" if best is None else f"{ms[best]:.3f} ({best.split()[1]})"
    ratio = "—" if row["vs_torch"] is None else f"{row['vs_torch']:.2f}x"
    foreach = "—" if row["foreach_vs_torch"] is None else f"{row['foreach_vs_torch']:.2f}x"
    torch_first = "—" if best is None else f"{row['first_step_ms'][best]:.1f}"
    if row.get("vs_bnb") is not None:
        print(f"{'':<13} bitsandbytes Adam8bit {ms['bnb Adam8bit']:.3f} ms: {row['vs_bnb']:.2f}x")
    if row.get("fused_vs_torch") is not None:
        fused = ms["adaptim fused"]
        print(f"{'':<13} adaptim fused=True {fused:.3f} ms: {row['fused_vs_torch']:.2f}x")
    of_copy = "—" if row.get("of_copy") is None else f"{row['of_copy']:.0%}"
    path = ",".join(sorted({s.split(" ")[0] for s in row.get("adaptim_path", [])}))
    print(
        f"{row['algorithm']:<13} {ms['adaptim']:10.3f} {torch_text:>22} {ratio:>9} {foreach:>10} "
        f"{row['first_step_ms']['adaptim']:11.1f} {torch_first:>9} {row['of_roofline']:11.0%} "
        f"{of_copy:>7} {path}"
    )


def print_placement(row: dict[str, Any]) -> None:
    """One line: each implementation's contiguous share (parameters/gradients/state)."""
    shares = []
    for label, parts in row.get("placement", {}).items():
        if all(v is None for v in parts.values()):
            continue  # (not root, or not on the CPU)
        text = "/".join("-" if v is None else f"{v:.0%}" for v in parts.values())
        shares.append(f"{label} {text}")
    if shares:
        print(f"{'':<13} contiguous 16K groups, params/grads/state: " + ", ".join(shares))


def warn_if_busy(rows: list[dict[str, Any]]) -> None:
    """Say when other processes shared the cores with more than one thread.

    OpenMP's workers spin between parallel regions (libgomp's default); with
    more runnable threads than cores, each region waits for a descheduled
    worker, and the wall times measure the scheduler more than the step (16M
    Adafactor at a load of 8 on 2 cores: 0.85-1.4 s a step instead of 20-30 ms,
    its ratio against torch anywhere from 0.7x to 1.8x between runs).
    ``OMP_WAIT_POLICY=passive`` (set before Python starts, for every
    implementation alike) makes the workers sleep instead.
    """
    cpus = os.cpu_count() or 1
    # (the load average counts this process's own threads: busy is more than the cores)
    busy = [r for r in rows if r["load_average"] > cpus + 0.5]
    if torch.get_num_threads() > 1 and busy and os.environ.get("OMP_WAIT_POLICY") != "passive":
        print(
            f"\nwarning: {len(busy)} of {len(rows)} rows ran with a load average up to "
            f"{max(r['load_average'] for r in busy):.1f} on {cpus} cores and "
            f"{torch.get_num_threads()} threads: OpenMP's spinning workers were descheduled, "
            "so those wall times and ratios are unreliable (rerun idle, or with "
            "OMP_WAIT_POLICY=passive)"
        )


WORKLOAD_TITLES = {
    "small": "MLP 42k / 6",
    "mlp": "MLP 235k / 6",
    "medium": "1.5M / 52",
    "large": "16M / 100",
    "many": "4M / 1,000",
    "embedding": "Embedding 6.4M, 4k rows",
    "matrices": "6 × 512²",
}


def markdown_table(path: str) -> str:
    """The README's table from a JSON file this script wrote (``--table FILE``)."""
    with open(path) as handle:
        rows = json.load(handle)["rows"]
    lines = [
        "| workload | algorithm | adaptim (default) ms | torch's fastest ms | **vs torch** "
        "| foreach path vs torch | adaptim 1st step ms (cold) | of roofline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms, best = row["ms"], row["torch_best"]
        torch_text = "—" if best is None else f"{ms[best]:.3f} ({best.split()[1]})"
        ratio = "—" if row["vs_torch"] is None else f"**{row['vs_torch']:.2f}×**"
        foreach = "—" if row["foreach_vs_torch"] is None else f"{row['foreach_vs_torch']:.2f}×"
        name = row["algorithm"]
        if row.get("vs_bnb") is not None:
            name += f" (bnb Adam8bit {ms['bnb Adam8bit']:.3f} ms: **{row['vs_bnb']:.2f}×**)"
        lines.append(
            f"| {WORKLOAD_TITLES.get(row['workload'], row['workload'])} | {name} "
            f"| {ms['adaptim']:.3f} | {torch_text} | {ratio} | {foreach} "
            f"| {row['first_step_ms']['adaptim']:.0f} | {row['of_roofline']:.0%} |"
        )
    return "\n".join(lines)


def time_row(
    algorithm: str,
    workload: str,
    device: torch.device,
    rates: dict[str, float],
    repeats: int,
    placement_mode: str = "interleaved",
) -> dict[str, Any]:
    """One row of the table, timed in this process."""
    bandwidth = max(rates.values())
    runners = runners_for(algorithm, workload, device, placement_mode)
    load = os.getloadavg()[0]
    measure(runners, repeats, device, placement_mode == "interleaved")
    row = report(algorithm, workload, device, runners, bandwidth, rates["copy_"])
    row["placement"] = placement(runners)
    row["load_average"] = max(load, os.getloadavg()[0])
    row["copy_gb_per_s"] = rates["copy_"] / 1e9
    row["roofline_gb_per_s"] = bandwidth / 1e9
    del runners
    gc.collect()
    return row


def isolated_rows(
    args: argparse.Namespace,
    device: torch.device,
    workload: str,
    algorithms: list[str],
    rates: dict[str, float],
) -> Iterator[dict[str, Any]]:
    """The rows of ``workload``, each row (or the whole workload) timed by a fresh process.

    The child is this script with the same settings, told the bandwidths
    measured here; it writes its rows to a JSON file and prints nothing.
    """
    batches = [[a] for a in algorithms] if args.isolate == "row" else [algorithms]
    for batch in batches:
        if not batch:
            continue
        with tempfile.TemporaryDirectory(prefix="step-speed-") as scratch:
            output = os.path.join(scratch, "rows.json")
            command = [
                sys.executable, os.path.abspath(__file__), "--isolate", "none",
                "--workload", workload, "--algorithms", *batch, "--device", device.type,
                "--repeats", str(args.repeats), "--clock", args.clock, "--dtype", args.dtype,
                "--threads", str(torch.get_num_threads()), "--placement", args.placement,
                "--bandwidths", json.dumps(rates), "--json", output,
                "--exact-root", args.exact_root,
            ]  # fmt: skip
            environment = dict(os.environ)
            if args.warm_cache:
                command.append("--warm-cache")
            else:  # cold for this process too: its own empty kernel caches
                environment["ADAPTIM_CACHE_DIR"] = os.path.join(scratch, "cache")
                environment["TRITON_CACHE_DIR"] = os.path.join(scratch, "cache", "triton")
            subprocess.run(command, env=environment, check=True)
            with open(output) as handle:
                yield from json.load(handle)["rows"]


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--repeats 0`` left no median to take)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; allowed: a whole number, at least 1"
        )
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked before anything is measured or written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workload",
        choices=list(WORKLOADS),
        nargs="+",
        default=[w for w in WORKLOADS if w not in OPTIONAL_WORKLOADS],
    )
    parser.add_argument(
        "--algorithms", choices=list(ALGORITHMS), nargs="+", default=list(ALGORITHMS)
    )
    parser.add_argument("--repeats", type=at_least_one, default=21)
    parser.add_argument("--threads", type=at_least_one, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="process: CPU time, less sensitive to other load with 1 thread "
        "(with more it adds up every thread's time, spinning included)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="the parameters' dtype (half types: the algorithms with a torch.optim twin)",
    )
    parser.add_argument("--warm-cache", action="store_true", help="keep adaptim's kernel cache")
    parser.add_argument(
        "--exact-root",
        choices=["default", "on", "off"],
        default="default",
        help="the native loop's square root (adaptim.torch._native.EXACT_ROOT): torch.sqrt's "
        "bits where MKL's root is emulated on this CPU (on), the correctly rounded one (off), "
        "or adaptim's default",
    )
    parser.add_argument("--json", default="step_speed.json", help="where to write the rows")
    parser.add_argument("--table", metavar="FILE", help="print the markdown table of FILE and stop")
    parser.add_argument(
        "--isolate",
        choices=["none", "workload", "row"],
        default="none",
        help="run each workload, or each row, in a fresh process (default: all in this one)",
    )
    parser.add_argument(
        "--placement",
        choices=["interleaved", "sequential"],
        default="interleaved",
        help="how a row's implementations take memory: tensor by tensor in turns, so each "
        "gets the same mix of physical pages (default), or each in turn, all at once",
    )
    parser.add_argument(
        "--show-placement",
        action="store_true",
        help="print each implementation's share of physically contiguous pages (as root)",
    )
    # (set by --isolate for its children: the bandwidths the parent measured, as JSON)
    parser.add_argument("--bandwidths", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not args.table and not torch.cuda.is_available():
        # (it timed nothing and wrote an empty table)
        parser.error(
            "argument --device: invalid choice: 'cuda' (CUDA is not available on this "
            "machine; allowed here: 'cpu' or 'all', which times the CPU only)"
        )
    return args


def cpu_model() -> str:
    """The CPU's vendor, family, model and name from ``/proc/cpuinfo`` (the platform's name
    elsewhere): which machine a table was measured on."""
    try:
        with open("/proc/cpuinfo") as info:
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in info)
            )
    except OSError:
        return platform.processor()
    keys = ("vendor_id", "cpu family", "model", "model name")
    return " / ".join(fields.get(k, "?") for k in keys)


def main() -> None:
    args = parse_args()
    if args.table:
        print(markdown_table(args.table))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock, dtype
    if args.exact_root != "default":
        _native.EXACT_ROOT = args.exact_root == "on"
    clock = CLOCKS[args.clock]
    dtype = DTYPES[args.dtype]
    if not args.warm_cache and not args.bandwidths:  # (a child has its own from the parent)
        os.environ["ADAPTIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="adaptim-bench-")
        # Triton's own cache too: a GPU kernel's first step includes its compile
        os.environ["TRITON_CACHE_DIR"] = os.path.join(os.environ["ADAPTIM_CACHE_DIR"], "triton")
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows: list[dict[str, Any]] = []
    for device in devices:
        if args.bandwidths:  # a child of --isolate: the parent measured them
            rates = json.loads(args.bandwidths)
        else:
            rates = stream_bandwidths(device, 15)
            measured = ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in rates.items())
            print(f"\n{device.type}: streaming bandwidth (GB/s) {measured}")
        for workload in args.workload:
            chosen = [a for a in args.algorithms if runs_on(a, workload)]
            if dtype != torch.float32:  # (their formats and inputs are float32 ones)
                chosen = [
                    a for a in chosen if a not in STATE_FORMATS and a not in RESTRICTED_WORKLOADS
                ]
            if args.isolate == "none":
                timed = (
                    time_row(a, workload, device, rates, args.repeats, args.placement)
                    for a in chosen
                )
            else:
                timed = isolated_rows(args, device, workload, chosen, rates)
            for index, row in enumerate(timed):
                if not args.bandwidths:
                    print_row(row, header=index == 0)
                    if args.show_placement:
                        print_placement(row)
                rows.append(row)
    meta = {
        "torch": torch.__version__, "adaptim": adaptim.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(), "dtype": args.dtype,
        "processor": platform.processor(), "repeats": args.repeats,
        "cold_kernel_cache": not args.warm_cache, "cpus": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu": cpu_model(),
        # the native loop's root: torch.sqrt's bits or the correctly rounded one, by dtype
        "exact_root": args.exact_root,
        "exact_root_taken": _native.EXACT_ROOT,
        # "none": every row in one process, after the rows before it; else a fresh one per
        # "workload" or "row"
        "isolate": args.isolate,
        # "interleaved": a row's implementations take memory in turns, tensor by tensor;
        # "sequential": each in turn, all at once (see runners_for)
        "placement": args.placement,
    }  # fmt: skip
    if args.bandwidths:  # a child: the parent reports
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle)
        return
    warn_if_busy(rows)
    with open(args.json, "w") as handle:
        json.dump({"meta": meta, "rows": rows}, handle, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
