"""The engine: every path equals the per-tensor rule, and never takes the user's tensors.

Equality: every algorithm with each of its options on alone, and with as many
on at once as it accepts, runs on the Hypothesis-drawn cases of :mod:`_parity`
(hyperparameters, parameter layouts including 0-d and non-contiguous ones,
param groups, ``lr`` as float or tensor) with 1 and with 2 threads:

* the multi-tensor replay (``foreach=True``) and the native loop with
  ``_native.EXACT_ROOT`` (``fused=True``: MKL's square root inlined, divisions
  as ATen's) must equal the per-tensor reference (``foreach=False``) **bit for
  bit**, state included; the default native loop (the CPU's correctly rounded
  square root) must agree to :data:`_parity.TOLERANCE`. Each example draws
  which native loop it runs.

No surprises: parameters and gradients keep their storage and identity, a
scheduler adds no kernel, ``model.to()``, replaced state, ``load_state_dict``,
parameters without gradients, two optimizers on the same parameters and
``torch.compile`` all behave as on the reference path, and a rule the tracer
cannot record falls back with one warning that names it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import warnings
from collections.abc import Callable
from typing import Any
from unittest.mock import patch

import pytest
import torch
from _parity import SPECS, TOLERANCE, Spec, combination_label, draw_case, run
from _threads import num_threads
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_torch_parity import PHASES, HypothesisSource

import adaptim
from adaptim import flavors
from adaptim.algorithms import ALGORITHMS
from adaptim.torch import _aten_sums, _engine, _mkl_sqrt, _native, _native_norms, _replay

STEPS = 40


THREADS = pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])


def against_reference(spec: Spec, **switches: Any) -> Spec:
    """The same optimizer twice: with ``switches`` (``ours``) against ``foreach=False``."""
    label = ",".join(f"{k}={v}" for k, v in switches.items())
    return dataclasses.replace(
        spec,
        name=f"{spec.name} {label}",
        ours=functools.partial(spec.ours, **switches),  # type: ignore[arg-type]
        theirs=functools.partial(spec.ours, foreach=False),  # type: ignore[arg-type]
    )


def option_sets(spec: Spec) -> list[tuple[str, ...]]:
    """No option, each option alone, and the largest accepted sets of options."""
    combinations = spec.combinations()
    largest = max(len(c) for c in combinations)
    return [c for c in combinations if len(c) <= 1 or len(c) == largest]


CASES = [
    pytest.param(spec, enabled, id=f"{spec.name}-{combination_label(enabled)}")
    for spec in SPECS
    for enabled in option_sets(spec)
]


@THREADS
@pytest.mark.parametrize(("spec", "enabled"), CASES)
@settings(max_examples=2, phases=PHASES)
@given(data=st.data())
def test_native_and_replay_equal_the_reference(
    spec: Spec, enabled: tuple[str, ...], threads: int, data: st.DataObject
) -> None:
    source = HypothesisSource(data, salt=f"engine {spec.name} {enabled}")
    dtypes = (torch.float32, torch.float64) if len(enabled) > 1 else (torch.float32,)
    paths: list[dict[str, Any]] = [{"fused": True}, {}]  # ({}: the default, on small groups)
    if threads == 1:  # the replay's element-wise ATen kernels round alike on any thread count
        paths.insert(0, {"foreach": True})  # (LARS/LAMB norms: their own 2-thread test)
    exact_root = data.draw(st.booleans(), label="EXACT_ROOT")
    for switches in paths:
        case = draw_case(
            against_reference(spec, **switches), [enabled, enabled], source, max_params=3
        )
        for dtype in dtypes:
            note(f"{switches} {dtype}: {case}")
            with (
                warnings.catch_warnings(),
                num_threads(threads),
                patch.object(_native, "EXACT_ROOT", exact_root),
            ):
                warnings.simplefilter("error")  # no fallback warning on the supported paths
                result = run(case, dtype, steps=STEPS)
            assert not result.problems, "\n".join(result.problems)
            errors = {**result.param_errors, **result.state_errors}
            # EXACT_ROOT gives torch.sqrt's bits where the C root is MKL's algorithm
            # the default's small groups: the exact loop where it gives torch's bits, else the
            # replay (EXACT_ROOT concerns fused=True and large groups only)
            exact = (exact_root and _mkl_sqrt.emulated(dtype)) or "fused" not in switches
            limit = 0.0 if exact else TOLERANCE[dtype]
            too_large = {k: e for k, e in errors.items() if not e <= limit}
            assert not too_large, f"{switches} {dtype}: relative error above {limit:g}: {too_large}"


# -- helpers for the behavioural tests ------------------------------------------------------
def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    set_to_none: bool = True,
    seed: int = 1,
) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 6, generator=generator)
        y = torch.randn(16, 2, generator=generator)
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def assert_close(a: torch.nn.Module, b: torch.nn.Module, tolerance: float = 1e-5) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        x, y = x.detach(), y.detach()
        scale = max(float(y.abs().max()), 1e-12)
        assert float((x - y).abs().max()) / scale <= tolerance, name


def path_and_reference(
    name: str = "Adam", *, path: str = "native", **settings: Any
) -> tuple[Any, ...]:
    switches = {"fused": True} if path == "native" else {"foreach": True}
    model, reference_model = make_model(), make_model()
    cls = getattr(adaptim, name)
    return (
        model,
        cls(model.parameters(), **switches, **settings),
        reference_model,
        cls(reference_model.parameters(), foreach=False, **settings),
    )


# -- behaviour ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["native", "foreach"])
def test_each_path_really_runs_and_trains(path: str) -> None:
    model, optimizer, reference_model, reference = path_and_reference(lr=1e-2, path=path)
    losses = train(model, optimizer, 30)
    train(reference_model, reference, 30)
    assert optimizer.fused_status() == [f"{path} (1 partition): 4 of 4 tensors"]
    assert reference.fused_status() == ["reference: foreach=False"]
    assert losses[-1] < losses[0]
    assert_close(model, reference_model, tolerance=1e-5 if path == "native" else 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_path_by_size(dtype: torch.dtype) -> None:
    """``fused=None``: a group under AUTO_NATIVE_MIN_NUMEL runs the exact native loop where
    it gives torch's bits (the replay's, so the same numbers as ``foreach=True``), else the
    replay; a larger group the native loop (the exact one too where it is free at that size,
    ``_mkl_sqrt.exact_loop_free``; ``tests/test_native_threads.py``)."""
    model, replay_model = make_model().to(dtype), make_model().to(dtype)
    small = adaptim.Adam(model.parameters(), lr=1e-2)
    replay = adaptim.Adam(replay_model.parameters(), lr=1e-2, foreach=True)
    large_params = [torch.nn.Parameter(torch.randn(_engine.AUTO_NATIVE_MIN_NUMEL, dtype=dtype))]
    large = adaptim.Adam(large_params)
    for optimizer in (small, replay):
        generator = torch.Generator().manual_seed(1)
        for _ in range(10):
            for p in optimizer.param_groups[0]["params"]:
                p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                optimizer.step()
    large_params[0].grad = torch.ones_like(large_params[0])
    large.step()
    assert_close(model, replay_model, tolerance=0.0)
    path = "native" if _mkl_sqrt.emulated(dtype) else "foreach"
    assert small.fused_status() == [f"{path} (1 partition): 4 of 4 tensors"]
    assert large.fused_status() == ["native (1 partition): 1 of 1 tensors"]


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_no_compiler_is_asked_for_once_then_the_small_group_replays(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Without a C compiler a small group's default (the exact loop) falls back to the replay
    quietly, and does not look for a compiler (and write the kernel's C) every step."""
    looked: list[None] = []

    def no_compiler() -> None:
        looked.append(None)

    # (the process's checks of the root and its step counter compile their own C once and
    # are remembered: taken first, they neither count here nor stay off for later tests)
    for dtype in (torch.float32, torch.float64):
        _mkl_sqrt.emulated(dtype)
    _native._counter()
    monkeypatch.setattr(_native, "_KERNELS", {})
    monkeypatch.setattr(_native, "_FAILED", {})
    monkeypatch.setattr(_native, "compiler", no_compiler)
    model, reference_model = make_model(), make_model()
    settings = {"lr": 1e-2, "momentum": 0.9} if name == "SGD" else {"lr": 1e-2}
    optimizer = getattr(adaptim, name)(model.parameters(), **settings)
    reference = getattr(adaptim, name)(reference_model.parameters(), foreach=False, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, optimizer, 6)
    train(reference_model, reference, 6)
    assert optimizer.fused_status() == ["foreach (1 partition): 4 of 4 tensors"]
    assert len(looked) == 1
    assert_close(model, reference_model, tolerance=0.0)


#: Every option of the rules with whole-tensor norms, for their small groups' default loop.
NORM_RULES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "LARS": {
        "lr": st.sampled_from([0.1, 1.0]),
        "momentum": st.sampled_from([0.0, 0.9]),
        "weight_decay": st.sampled_from([0.0, 1e-3]),
        "trust_coefficient": st.sampled_from([1e-3, 0.05]),
        "eps": st.sampled_from([1e-8, 1e-3]),
        "trust_clip": st.booleans(),
        "exclude_bias_and_norm": st.booleans(),
        "maximize": st.booleans(),
    },
    "LAMB": {
        "lr": st.sampled_from([1e-3, 1e-2]),
        "betas": st.tuples(st.sampled_from([0.0, 0.9]), st.sampled_from([0.99, 0.999])),
        "eps": st.sampled_from([1e-6, 1e-3]),
        "weight_decay": st.sampled_from([0.0, 1e-2]),
        "bias_correction": st.booleans(),
        "weight_norm_clip": st.sampled_from([(0.0, 10.0), None, (0.5, 2.0)]),
        "exclude_bias_and_norm": st.booleans(),
        "maximize": st.booleans(),
    },
    "NovoGrad": {
        "lr": st.sampled_from([1e-3, 1e-2]),
        "betas": st.tuples(st.sampled_from([0.9, 0.95]), st.sampled_from([0.25, 0.98])),
        "eps": st.sampled_from([1e-6, 0.0]),
        "eps_root": st.sampled_from([0.0, 1e-8]),
        "weight_decay": st.sampled_from([0.0, 1e-2]),
        "eps_in_first_step": st.booleans(),
        "maximize": st.booleans(),
    },
}
#: Shapes around every tail (0-d, 1 to 40 elements: ATen's 8 or 4 lanes, the loop's 16),
#: small odd matrices (a trust ratio where ``exclude_bias_and_norm`` skips vectors), and a
#: few thousand elements (several of the norm pass's chunks).
NORM_SHAPES = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 40)),
    st.tuples(st.integers(2, 9), st.integers(2, 40)),
    st.tuples(st.integers(1_000, 5_000)),
)


@pytest.mark.parametrize("name", sorted(NORM_RULES))
@settings(max_examples=8, deadline=None)
@given(
    data=st.data(),
    shapes=st.lists(NORM_SHAPES, min_size=1, max_size=5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_default_small_group_with_norms_keeps_torchs_bits(
    name: str,
    data: st.DataObject,
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype,
    threads: int,
    scale: float,
    seed: int,
) -> None:
    """LARS, LAMB and NovoGrad: a small group runs the exact native loop by default, its
    norms summed in ATen's order, so bit for bit the replay (``foreach=True``) and the
    per-tensor reference (``foreach=False``), parameters and state, over 24 steps."""
    options = {key: data.draw(strategy, label=key) for key, strategy in NORM_RULES[name].items()}
    generator = torch.Generator().manual_seed(seed)
    start = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    steps = [[torch.randn(s, generator=generator, dtype=dtype) * scale for s in shapes]]
    steps += [[torch.randn(s, generator=generator, dtype=dtype) for s in shapes] for _ in range(23)]
    runs = []
    for switches in ({}, {"foreach": True}, {"foreach": False}):
        params = [torch.nn.Parameter(x.clone()) for x in start]
        optimizer = getattr(adaptim, name)(params, **options, **switches)
        for grads in steps:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            with num_threads(threads):
                optimizer.step()
        runs.append((params, optimizer))
    (ours, default), *others = runs
    (status,) = default.fused_status()
    assert status.startswith("native (") and "foreach" not in status, status
    for params, optimizer in others:
        for p, q in zip(ours, params, strict=True):
            assert torch.equal(p, q), f"max difference {float((p - q).abs().max())}"
            for key, value in optimizer.state[q].items():
                assert torch.equal(default.state[p][key], value), key


def test_the_norm_order_check_decides_the_small_groups_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where ATen's norm order holds, a small group of a rule with norms runs the exact loop
    (``plans()`` shows its norm pass in that order); where it does not (the check's C given
    twice ATen's lanes here), the once-per-process check says so and the group replays:
    torch's bits either way."""

    def run() -> list[adaptim.Optimizer]:
        default = []
        for name in NORM_RULES:
            models = [make_model(), make_model()]
            default.append(getattr(adaptim, name)(models[0].parameters()))
            reference = getattr(adaptim, name)(models[1].parameters(), foreach=False)
            train(models[0], default[-1], 3)
            train(models[1], reference, 3)
            for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
                assert torch.equal(p, q), name
        return default

    for optimizer in run():
        (status,) = optimizer.fused_status()
        assert status.startswith("native (") and "foreach" not in status, status
        assert any("norm_chunk(&acc" in plan for plan in optimizer.plans()[0])
    monkeypatch.setattr(
        _aten_sums,
        "ORDERS",
        {k: (fma, 2 * lanes, c) for k, (fma, lanes, c) in _aten_sums.ORDERS.items()},
    )
    monkeypatch.setattr(_native_norms, "_HOLDS", {})
    assert not _native_norms.holds(torch.float32) and not _native_norms.holds(torch.float64)
    for optimizer in run():
        (status,) = optimizer.fused_status()
        assert status.startswith("foreach (") and "native" not in status, status


def test_default_small_group_without_the_exact_root_replays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where MKL's root is not emulated, a small group whose rule takes a root replays (torch's
    bits) and one whose rule takes none still runs native (its loop is ATen's arithmetic)."""
    monkeypatch.setattr(_mkl_sqrt, "emulated", lambda dtype: False)
    rooted = adaptim.Adam(make_model().parameters())
    plain = adaptim.SGD(make_model().parameters(), lr=0.1, momentum=0.9)
    for optimizer in (rooted, plain):
        for _ in range(2):  # (SGD's first step creates its momentum on the replay)
            for p in optimizer.param_groups[0]["params"]:
                p.grad = torch.ones_like(p)
            optimizer.step()
    assert rooted.fused_status() == ["foreach (1 partition): 4 of 4 tensors"]
    assert plain.fused_status() == ["native (1 partition): 4 of 4 tensors"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_path_by_the_groups_size_when_it_splits(dtype: torch.dtype) -> None:
    """A group of the native loop's size splits (an 8-bit matrix, small fp32 / 0-d tensors,
    another dtype): every partition runs native, not only those of that size alone."""
    big = torch.nn.Parameter(torch.randn(_engine.AUTO_NATIVE_MIN_NUMEL, dtype=torch.float32))
    small = [torch.nn.Parameter(torch.randn(n, dtype=dtype)) for n in (10, 300)]
    for options in ({"state_bits": 8}, {}):
        optimizer = adaptim.Adam([big, *small], **options)
        for _ in range(2):  # (the first step creates the state on the replay)
            for p in (big, *small):
                p.grad = torch.randn_like(p)
            optimizer.step()
        (status,) = optimizer.fused_status()
        assert status.startswith("native (") and status.endswith("3 of 3 tensors"), status
        assert "foreach" not in status and "reference" not in status, status


@pytest.mark.parametrize("path", ["native", "foreach"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_parameters_and_gradients_are_never_taken(path: str, set_to_none: bool) -> None:
    """Storage, identity and gradients stay the user's; a saved parameter holds only itself."""
    model, optimizer, reference_model, reference = path_and_reference(
        "RMSprop", lr=1e-2, momentum=0.5, path=path
    )
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    train(model, optimizer, 3, set_to_none=set_to_none)
    train(reference_model, reference, 3, set_to_none=set_to_none)
    grads = [p.grad for p in model.parameters()]
    train(model, optimizer, 3, set_to_none=set_to_none)
    train(reference_model, reference, 3, set_to_none=set_to_none)
    assert [p.untyped_storage().data_ptr() for p in model.parameters()] == storages
    if not set_to_none:  # the optimizer left the user's gradient tensors where they were
        assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    weight = next(model.parameters())
    buffer = io.BytesIO()
    torch.save(weight, buffer)
    assert len(buffer.getvalue()) < weight.numel() * 4 + 2048  # not a whole flat buffer
    assert_close(model, reference_model, tolerance=1e-5 if path == "native" else 0.0)


@pytest.mark.parametrize("path", ["native", "foreach"])
def test_bucket_views_are_updated_in_place(path: str) -> None:
    """Parameters viewing one buffer (DDP, ZeRO bucket views) stay views and are updated there."""
    base = torch.zeros(10)
    views = [torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[4:])]
    switches = {"fused": True} if path == "native" else {"foreach": True}
    optimizer = adaptim.SGD(views, lr=0.5, momentum=0.9, **switches)
    for _ in range(3):
        for p in views:
            p.grad = torch.ones_like(p)
        optimizer.step()
    assert all(p.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() for p in views)
    assert torch.allclose(base, torch.full_like(base, -0.5 * (1 + 1.9 + 2.71)))


def test_scheduler_builds_nothing_new() -> None:
    """OneCycleLR changes lr and beta1 every step: no new kernel, no new replay function."""
    model, optimizer, reference_model, reference = path_and_reference(lr=1e-2)
    schedulers = [
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=40)
        for opt in (optimizer, reference)
    ]
    train(model, optimizer, 3)
    kernels, plans = _native.kernel_count(), len(_replay._PLANS)
    for _ in range(30):
        train(model, optimizer, 1)
        train(reference_model, reference, 1)
        for scheduler in schedulers:
            scheduler.step()
    assert optimizer.param_groups[0]["betas"][0] != reference.defaults["betas"][0]  # it cycled
    assert (_native.kernel_count(), len(_replay._PLANS)) == (kernels, plans)


def test_native_step_allocates_no_parameter_sized_temporaries() -> None:
    numel = 1 << 18
    params = [torch.nn.Parameter(torch.randn(numel))]
    params[0].grad = torch.randn(numel)
    allocated = {}
    for switch in ("fused", "foreach"):
        optimizer = adaptim.Adam(params, amsgrad=True, weight_decay=0.1, **{switch: True})
        for _ in range(3):
            optimizer.step()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as profile:
            optimizer.step()
        allocated[switch] = sum(max(e.self_cpu_memory_usage, 0) for e in profile.key_averages())
    # (the measurement sees temporaries where there are some: at least one parameter-sized)
    assert allocated["foreach"] >= numel * 4
    assert allocated["fused"] < 4096, allocated


@pytest.mark.parametrize("path", ["native", "foreach"])
def test_model_to_and_replaced_data_are_followed(path: str) -> None:
    """``model.to(dtype)`` before the first step and ``p.data = ...`` later both keep working."""
    model, optimizer, reference_model, reference = path_and_reference("NAdam", lr=1e-2, path=path)
    model.to(torch.float64)
    reference_model.to(torch.float64)

    def train64(m: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(5):
            x = torch.randn(16, 6, generator=generator, dtype=torch.float64)
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()

    train64(model, optimizer, 1)
    train64(reference_model, reference, 1)
    assert all(s["exp_avg"].dtype == torch.float64 for s in optimizer.state.values())
    for m in (model, reference_model):
        for p in m.parameters():
            p.data = p.data.clone()
    train64(model, optimizer, 2)
    train64(reference_model, reference, 2)
    assert_close(model, reference_model, tolerance=1e-12 if path == "native" else 0.0)


@pytest.mark.parametrize("path", ["native", "foreach"])
def test_replaced_state_and_load_state_dict_are_followed(path: str) -> None:
    model, optimizer, reference_model, reference = path_and_reference("Adam", lr=1e-2, path=path)
    train(model, optimizer, 4)
    train(reference_model, reference, 4)
    for opt in (optimizer, reference):  # what checkpoint code that moves state does
        for state in opt.state.values():
            state["exp_avg"] = state["exp_avg"].clone()
    train(model, optimizer, 3, seed=2)
    train(reference_model, reference, 3, seed=2)
    assert_close(model, reference_model, tolerance=1e-5 if path == "native" else 0.0)
    for opt in (optimizer, reference):  # a whole entry replaced, another deleted (restarts)
        first, second = list(opt.state)[:2]
        opt.state[first] = {k: v.clone() for k, v in opt.state[first].items()}
        del opt.state[second]
    train(model, optimizer, 3, seed=4)
    train(reference_model, reference, 3, seed=4)
    assert_close(model, reference_model, tolerance=1e-5 if path == "native" else 0.0)
    saved = copy.deepcopy(reference.state_dict())  # load_state_dict keeps same-dtype tensors
    optimizer.load_state_dict(saved)
    model.load_state_dict(reference_model.state_dict())
    train(model, optimizer, 3, seed=3)
    train(reference_model, reference, 3, seed=3)
    assert_close(model, reference_model, tolerance=1e-5 if path == "native" else 0.0)


def _halve_first_entry(opt: torch.optim.Optimizer) -> None:
    """Replace one parameter's whole state entry (same keys, new tensors, new values)."""
    first = next(iter(opt.state))
    opt.state[first] = {k: v * 0.5 if v.ndim else v.clone() for k, v in opt.state[first].items()}


def _halve_first_tensor(opt: torch.optim.Optimizer) -> None:
    state = next(iter(opt.state.values()))
    state["exp_avg_sq"] = state["exp_avg_sq"] * 0.5


def _halve_entry_during_a_reference_step(opt: torch.optim.Optimizer) -> None:
    """A step on the per-tensor path while an entry is replaced; then back to the default."""
    group = opt.param_groups[0]
    switches = group["fused"], group["foreach"]
    group["fused"], group["foreach"] = None, False
    _halve_first_entry(opt)
    opt.step()  # (the test then steps with the gradients of the last batch again)
    group["fused"], group["foreach"] = switches


def _move_parameter(opt: torch.optim.Optimizer) -> None:
    for p in opt.param_groups[0]["params"][:2]:
        p.data = p.data.clone()


def _schedule_lr(opt: torch.optim.Optimizer) -> None:
    opt.param_groups[0]["lr"] *= 0.3


def _two_groups(opt: torch.optim.Optimizer) -> None:
    params = opt.param_groups[0]["params"]
    opt.param_groups[0]["params"] = params[:2]
    opt.add_param_group({"params": params[2:], "lr": 3e-2})


STEADY_CHANGES = {
    "whole-entry-replaced": _halve_first_entry,
    "state-tensor-replaced": _halve_first_tensor,
    "entry-replaced-on-a-reference-step": _halve_entry_during_a_reference_step,
    "parameter-data-replaced": _move_parameter,
    "lr-scheduled": _schedule_lr,
    "new-param-group": _two_groups,
}


@pytest.mark.parametrize("change", list(STEADY_CHANGES))
@pytest.mark.parametrize("path", ["native", "foreach"])
def test_steady_steps_notice_every_change(path: str, change: str) -> None:
    """The steady-state shortcuts (state mapping compared once per step, bound kernel
    arguments, cached memo lookups) still follow each change a user or a library makes
    between two steps: the results equal the per-tensor path's, state included."""
    model, optimizer, reference_model, reference = path_and_reference("Adam", lr=1e-2, path=path)
    for opt in (optimizer, reference):
        opt.param_groups[0].setdefault("fused", None)
        opt.param_groups[0].setdefault("foreach", None)
    train(model, optimizer, 4)
    train(reference_model, reference, 4)
    for opt in (optimizer, reference):
        STEADY_CHANGES[change](opt)
    train(model, optimizer, 4, seed=2)
    train(reference_model, reference, 4, seed=2)
    tolerance = 1e-5 if path == "native" else 0.0
    assert_close(model, reference_model, tolerance=tolerance)
    for ours, theirs in zip(optimizer.state.values(), reference.state.values(), strict=True):
        for key, value in theirs.items():
            scale = max(float(value.abs().max()), 1e-12)
            assert float((ours[key] - value).abs().max()) / scale <= tolerance, key
    assert optimizer.fused_status()[0].startswith(path)


def test_state_dict_moves_to_and_from_torch() -> None:
    model, optimizer, _, _ = path_and_reference("AdamW", lr=1e-2)
    train(model, optimizer, 3)
    theirs_model = make_model()
    theirs_model.load_state_dict(model.state_dict())
    theirs = torch.optim.AdamW(theirs_model.parameters(), lr=1e-2)
    theirs.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    back = adaptim.AdamW(model.parameters(), lr=1e-2, fused=True)
    back.load_state_dict(copy.deepcopy(theirs.state_dict()))
    train(model, back, 5, seed=4)
    train(theirs_model, theirs, 5, seed=4)
    assert_close(model, theirs_model)


def test_parameters_without_gradients_are_skipped_like_torch() -> None:
    model, optimizer, reference_model, reference = path_and_reference("Adam", lr=1e-2)
    for step in range(6):
        for m, opt in ((model, optimizer), (reference_model, reference)):
            opt.zero_grad()
            m(torch.ones(2, 6)).sum().backward()
            if step % 2:
                m[2].weight.grad = None  # type: ignore[index]
            opt.step()
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        assert float(optimizer.state[p]["step"]) == float(reference.state[q]["step"])
    assert_close(model, reference_model)


def test_two_optimizers_on_the_same_parameters() -> None:
    model, reference_model = make_model(), make_model()
    first = adaptim.Adam(model.parameters(), lr=1e-2, fused=True)
    second = adaptim.SGD(model.parameters(), lr=1e-2, momentum=0.9, fused=True)
    first_ref = adaptim.Adam(reference_model.parameters(), lr=1e-2, foreach=False)
    second_ref = adaptim.SGD(reference_model.parameters(), lr=1e-2, momentum=0.9, foreach=False)
    for _ in range(5):
        for m, opts in ((model, (first, second)), (reference_model, (first_ref, second_ref))):
            for opt in opts:
                opt.zero_grad()
                m(torch.ones(3, 6)).square().sum().backward()
                opt.step()
    assert first.fused_status()[0].startswith("native")
    assert second.fused_status()[0].startswith("native")
    assert_close(model, reference_model)


def test_complex_and_sparse_gradients_take_the_reference_path() -> None:
    torch.manual_seed(0)
    real = torch.nn.Parameter(torch.randn(4, 3))
    complex_param = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    optimizer = adaptim.Adagrad([real, complex_param], fused=True)
    reference = adaptim.Adagrad(
        [
            torch.nn.Parameter(real.detach().clone()),
            torch.nn.Parameter(complex_param.detach().clone()),
        ],
        foreach=False,
    )
    for step in range(5):
        for opt in (optimizer, reference):
            ps = opt.param_groups[0]["params"]
            generator = torch.Generator().manual_seed(step)
            ps[0].grad = torch.randn(4, 3, generator=generator)
            ps[1].grad = torch.randn(3, dtype=torch.complex64, generator=generator)
            opt.step()
    assert optimizer.fused_status() == ["native (1 partition): 1 of 2 tensors"]
    for a, b in zip(
        optimizer.param_groups[0]["params"], reference.param_groups[0]["params"], strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_no_compiler_falls_back_to_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """No C compiler: the default quietly replays; ``fused=True`` warns once and replays."""
    monkeypatch.setattr(_native, "_KERNELS", {})
    monkeypatch.setattr(_native, "_FAILED", {})
    monkeypatch.setattr(_native, "compiler", lambda: None)
    monkeypatch.setattr(_engine, "AUTO_NATIVE_MIN_NUMEL", 0)
    auto_model, reference_model = make_model(), make_model()
    auto = adaptim.Adam(auto_model.parameters(), lr=1e-2)
    reference = adaptim.Adam(reference_model.parameters(), lr=1e-2, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(auto_model, auto, 4)
    train(reference_model, reference, 4)
    assert auto.fused_status() == ["foreach (1 partition): 4 of 4 tensors"]
    assert_close(auto_model, reference_model, tolerance=0.0)
    forced_model = make_model()
    forced = adaptim.Adam(forced_model.parameters(), lr=1e-2, fused=True)
    with pytest.warns(UserWarning, match=r"fused=True\): no native kernel .*no C compiler"):
        train(forced_model, forced, 3)
    assert_close(forced_model, make_model_trained(3))


def make_model_trained(steps: int) -> torch.nn.Module:
    model = make_model()
    train(model, adaptim.Adam(model.parameters(), lr=1e-2, foreach=False), steps)
    return model


def test_plans_show_the_generated_code() -> None:
    model, optimizer, _, _ = path_and_reference("Adam", lr=1e-2)
    train(model, optimizer, 2)
    (native_source,) = optimizer.plans()[0]
    assert "void adaptim_step(" in native_source and "#pragma omp parallel" in native_source
    replayed = adaptim.Adam(make_model().parameters(), foreach=True)
    train(make_model(), replayed, 1)
    assert replayed.plans() == [[]]  # its own model had no gradients
    model = make_model()
    replayed = adaptim.Adam(model.parameters(), foreach=True)
    train(model, replayed, 1)
    (replay_source,) = replayed.plans()[0]
    assert "torch._foreach_lerp_(state_exp_avg, grad, s[0])" in replay_source


# -- the rule contract -----------------------------------------------------------------------
def _sign_rule(p: Any, g: Any, state: Any, *, step: float, xp: Any, lr: float, **_: Any) -> Any:
    """signSGD written with a comparison, ``abs`` and ``where``: all recordable."""
    direction = xp.where(g == 0, 0.0, g / abs(g))
    return p - lr * direction, {}


def _unrecordable_rule(
    p: Any, g: Any, state: Any, *, step: float, xp: Any, lr: float, **_: Any
) -> Any:
    """Reads a value on the host: the tracer cannot record it."""
    scale = 1.0 / (1.0 + float(g.abs().max()))
    return p - lr * scale * g, {}


def _optimizer_class(rule: Any, name: str) -> type[adaptim.Optimizer]:
    algorithm = dataclasses.replace(ALGORITHMS["sgd"], name=name, update=rule)

    class Custom(adaptim.Optimizer):
        def __init__(self, params: Any, lr: float = 0.1, **switches: Any) -> None:
            defaults = {**ALGORITHMS["sgd"].defaults, "lr": lr, "maximize": False}
            defaults.update(switches)
            super().__init__(params, defaults)

    Custom.algorithm = algorithm
    return Custom


def _clipped_rule(p: Any, g: Any, state: Any, *, step: float, xp: Any, lr: float, **_: Any) -> Any:
    """A step clipped to [-0.3, 0.3] by ``minimum`` and ``maximum``, numbers on either side."""
    return p - lr * xp.minimum(0.3, xp.maximum(xp.minimum(g, 0.3), -0.3)), {}


@pytest.mark.parametrize("switch", ["fused", "foreach"])
@pytest.mark.parametrize(
    ("rule", "name"), [(_sign_rule, "signsgd"), (_clipped_rule, "clipped")], ids=["sign", "minimum"]
)
def test_comparisons_abs_and_minimum_take_the_fast_paths(
    switch: str, rule: Callable[..., Any], name: str
) -> None:
    """Comparisons, ``abs`` and ``xp.minimum`` (which used to send a rule to the replay) are
    recorded, and the native loop and the replay give the reference path's bits."""
    cls = _optimizer_class(rule, name)
    model, reference_model = make_model(), make_model()
    ours = cls(model.parameters(), **{switch: True})
    theirs = cls(reference_model.parameters(), foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, ours, 5)
    train(reference_model, theirs, 5)
    assert ours.fused_status()[0].startswith("native" if switch == "fused" else "foreach")
    assert_close(model, reference_model, tolerance=0.0)


def test_an_unrecordable_rule_falls_back_with_one_warning() -> None:
    cls = _optimizer_class(_unrecordable_rule, "hostread")
    model, reference_model = make_model(), make_model()
    ours = cls(model.parameters(), fused=True)
    theirs = cls(reference_model.parameters(), foreach=False)
    with pytest.warns(UserWarning, match="_unrecordable_rule cannot be recorded") as caught:
        train(model, ours, 6)
    assert len(caught) == 1
    train(reference_model, theirs, 6)
    assert ours.fused_status()[0].startswith("reference: the rule _unrecordable_rule")
    assert_close(model, reference_model, tolerance=0.0)


# -- LARS and LAMB: norms per tensor -----------------------------------------------------------
LARS_LAMB_CASES = [
    pytest.param("LARS", {"lr": 0.1}, id="LARS-plain"),
    pytest.param("LARS", {"lr": 0.1, "momentum": 0.0}, id="LARS-no-momentum"),
    pytest.param(
        "LARS",
        {"lr": 0.1, "trust_clip": True, "weight_decay": 1e-3, "exclude_bias_and_norm": True},
        id="LARS-options",
    ),
    pytest.param("LAMB", {"lr": 1e-2}, id="LAMB-plain"),
    pytest.param(
        "LAMB",
        {
            "lr": 1e-2, "weight_decay": 1e-2, "exclude_bias_and_norm": True,
            "weight_norm_clip": None, "bias_correction": False, "maximize": True,
        },
        id="LAMB-options",
    ),
]  # fmt: skip


@THREADS
@pytest.mark.parametrize(("name", "settings"), LARS_LAMB_CASES)
@pytest.mark.parametrize("switch", ["fused", "foreach"])
def test_lars_and_lamb_norms_per_tensor(
    name: str, settings: dict[str, Any], switch: str, threads: int
) -> None:
    """Trust ratios need a norm per tensor: single-chunk biases, odd sizes, several threads."""
    shapes = [(50, 50), (1024,), (7,), (3, 700), (2048, 8)]
    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(s, generator=generator) for s in shapes]
    ours_params = [torch.nn.Parameter(x.clone()) for x in initial]
    reference_params = [torch.nn.Parameter(x.clone()) for x in initial]
    cls = getattr(adaptim, name)
    ours = cls(ours_params, **{switch: True}, **settings)
    reference = cls(reference_params, foreach=False, **settings)
    for step in range(12):
        grads = [torch.randn(s, generator=generator) * (step + 1) for s in shapes]
        for ps, opt in ((ours_params, ours), (reference_params, reference)):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            with num_threads(threads):
                opt.step()
    status = ours.fused_status()[0]
    expected = "native (2 partitions)" if switch == "fused" else "foreach (2 partitions)"
    assert status.startswith(expected), status  # vectors and matrices apart
    for p, q in zip(ours_params, reference_params, strict=True):
        assert ours.state[p].keys() == reference.state[q].keys()
        for key, value in [("param", q), *reference.state[q].items()]:
            mine = p if key == "param" else ours.state[p][key]
            if switch == "foreach":  # the replay is bit-identical, whatever the thread count
                assert torch.equal(mine, value), key
            else:  # norms summed per block in double: rounding only, thread-independent
                assert torch.allclose(mine, value, rtol=1e-5, atol=1e-7), key


#: Options switched on beside a flavor's preset, so momentum, centring, AMSGrad
#: and weight decay run in every framework's variant too.
FLAVOR_EXTRAS: dict[str, dict[str, Any]] = {
    "adagrad": {"weight_decay": 1e-2, "lr_decay": 1e-3},
    "rmsprop": {"momentum": 0.5, "centered": True, "weight_decay": 1e-2},
    "adadelta": {"weight_decay": 1e-2},
    "adam": {"amsgrad": True, "weight_decay": 1e-2},
    "adamw": {"amsgrad": True},
    "adamax": {"weight_decay": 1e-2},
    "nadam": {"weight_decay": 1e-2},
    "radam": {"weight_decay": 1e-2},
}

FLAVOR_CASES = [
    pytest.param(name, flavor, extras, id=f"{name}-{flavor}-{'options' if extras else 'preset'}")
    for name in FLAVOR_EXTRAS
    for flavor in flavors.available(name)
    if flavor != "torch"
    for extras in ({}, FLAVOR_EXTRAS[name])
    if flavor in flavors.available(name, amsgrad=bool(extras.get("amsgrad")))
]


@pytest.mark.parametrize(("name", "flavor", "extras"), FLAVOR_CASES)
def test_every_flavor_runs_native(name: str, flavor: str, extras: dict[str, Any]) -> None:
    """Keras, TF1, optax and paper variants take the native loop and equal their reference run."""
    cls = adaptim.OPTIMIZERS[name]
    model, reference_model = make_model(), make_model()
    ours = cls(model.parameters(), flavor=flavor, fused=True, **extras)
    reference = cls(reference_model.parameters(), flavor=flavor, foreach=False, **extras)
    train(model, ours, 25)
    train(reference_model, reference, 25)
    assert ours.fused_status() == ["native (1 partition): 4 of 4 tensors"]
    assert_close(model, reference_model, tolerance=1e-4)


def test_fused_must_be_a_bool_or_none() -> None:
    with pytest.raises(TypeError, match=r"Invalid fused: 'yes'; allowed: None \(automatic\)"):
        adaptim.Adam(make_model().parameters(), fused="yes")  # type: ignore[arg-type]


# -- torch.compile ---------------------------------------------------------------------------
COMPILE_CASES = [
    pytest.param(name, {}, marks=() if name in ("adam", "sgd") else pytest.mark.slow)
    for name in sorted(adaptim.OPTIMIZERS)
] + [
    # the step-dependent branches each rule has in some setting: the paper's Adan
    # initialisation (steps 1 and 2 differ), ASGD averaging from step 10, NAdam
    # without its schedule, RAdam with the paper's threshold
    pytest.param("adan", {"flavor": "paper"}, marks=pytest.mark.slow),
    pytest.param("asgd", {"t0": 10.0, "lambd": 1e-2}, marks=pytest.mark.slow),
    pytest.param("nadam", {"momentum_schedule": False}, marks=pytest.mark.slow),
    pytest.param("radam", {"flavor": "paper"}, marks=pytest.mark.slow),
    pytest.param("adafactor", {"weight_decay": 0.1}, marks=pytest.mark.slow),
    # Keras' Adafactor: eps1 added to g², weight decay before RMS(θ) is measured
    pytest.param("adafactor", {"flavor": "keras", "weight_decay": 0.1}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "options"), COMPILE_CASES)
def test_compiled_step_matches_and_never_recompiles(name: str, options: dict[str, Any]) -> None:
    """``torch.compile(opt.step)`` under a scheduler: 100 steps in whole graphs (no graph
    break: a host read or a branch on the step count would split the step and sync),
    and no new graph after warm-up."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    settings = {"momentum": 0.9} if name in ("sgd", "lars") else {}
    settings.update(options)
    cls = adaptim.OPTIMIZERS[name]
    model, reference_model = make_model(), make_model()
    compiled = cls(model.parameters(), lr=1e-2, **settings)
    reference = cls(reference_model.parameters(), lr=1e-2, foreach=False, **settings)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.05 * s))
        for opt in (compiled, reference)
    ]
    step = torch.compile(compiled.step)
    generator = torch.Generator().manual_seed(0)
    graphs = None
    # (after warm-up a recompile raises: counting graphs alone would miss the ones past
    # Dynamo's recompile limit, which runs them eagerly instead)
    with torch._dynamo.config.patch(error_on_recompile=False):
        for index in range(100):
            x = torch.randn(16, 6, generator=generator)
            for m, opt, run_step in (
                (model, compiled, step),
                (reference_model, reference, reference.step),
            ):
                opt.zero_grad()
                m(x).square().mean().backward()
                run_step()
            for scheduler in schedulers:
                scheduler.step()
            if index == 9:
                graphs = counters["stats"]["unique_graphs"]
                torch._dynamo.config.error_on_recompile = True
    assert counters["stats"]["unique_graphs"] == graphs
    # (the scheduler's wrapper of step() is skipped by Dynamo itself, for torch.optim too)
    breaks = [reason for reason in counters["graph_break"] if "lr_scheduler.py" not in reason]
    assert not breaks, breaks
    assert_close(model, reference_model, tolerance=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_counter_counts_as_foreach_add(dtype: torch.dtype) -> None:
    """The C counter of the replay and GPU paths adds 1 in the counters' dtype, as
    ``torch._foreach_add_(steps, 1.0)`` does, past float32's last exact integer too."""
    starts = [0.0, 7.0, 2.0**24 - 2, 2.0**24 + 1, 1e30]
    ours = [torch.tensor(v, dtype=dtype) for v in starts]
    theirs = [t.clone() for t in ours]
    counter = _native.StepCounter.of(ours, dtype)
    assert counter is not None
    for _ in range(5):
        counter()
        torch._foreach_add_(theirs, 1.0)
    assert [t.item() for t in ours] == [t.item() for t in theirs]
    assert ours[0].item() == 5.0 and ours[1].item() == 12.0
