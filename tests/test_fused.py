"""The fused fast path equals the eager path, and never surprises its user.

Equality: every algorithm with each of its options on alone, and with as many
on at once as it accepts, runs fused and eager on the same Hypothesis-drawn
cases of :mod:`_parity` (hyperparameters, parameter layouts including 0-d and
non-contiguous ones, param groups, ``lr`` as float or tensor) and must agree to
:data:`_parity.TOLERANCE` in every parameter and state tensor, with the same
state keys, dtypes, shapes, strides and steps.

No surprises: a scheduler changing ``lr`` or betas compiles nothing new; a step
allocates no parameter-sized temporary; ``p.data`` replaced after construction
(``model.to()`` does that), ``load_state_dict`` on the optimizer or the model,
fresh or in-place gradients, parameters without gradients and state_dicts
moving to torch.optim all behave as on the eager path.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import pytest
import torch
from _parity import SPECS, TOLERANCE, Spec, combination_label, draw_case, run
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_torch_parity import PHASES, HypothesisSource

import adaptim
from adaptim import flavors
from adaptim.torch import _fast, _trace

STEPS = 40


def fused_against_eager(spec: Spec) -> Spec:
    """The same optimizer twice: fused (``ours``) against eager (the reference)."""
    return dataclasses.replace(
        spec,
        name=f"{spec.name} fused",
        ours=functools.partial(spec.ours, fused=True),  # type: ignore[arg-type]
        theirs=functools.partial(spec.ours, fused=False),  # type: ignore[arg-type]
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


@pytest.mark.parametrize(("spec", "enabled"), CASES)
@settings(max_examples=2, phases=PHASES)
@given(data=st.data())
def test_fused_equals_eager(spec: Spec, enabled: tuple[str, ...], data: st.DataObject) -> None:
    source = HypothesisSource(data, salt=f"fused {spec.name} {enabled}")
    case = draw_case(fused_against_eager(spec), [enabled, enabled], source, max_params=3)
    dtypes = (torch.float32, torch.float64) if len(enabled) > 1 else (torch.float32,)
    for dtype in dtypes:
        note(f"{dtype}: {case}")
        result = run(case, dtype, steps=STEPS)
        assert not result.problems, "\n".join(result.problems)
        errors = {**result.param_errors, **result.state_errors}
        too_large = {k: e for k, e in errors.items() if not e <= TOLERANCE[dtype]}
        assert not too_large, f"{dtype}: relative error above {TOLERANCE[dtype]:g}: {too_large}"


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


def fused_and_eager(name: str = "Adam", **settings: Any) -> tuple[Any, ...]:
    fused_model, eager_model = make_model(), make_model()
    cls = getattr(adaptim, name)
    return (
        fused_model,
        cls(fused_model.parameters(), fused=True, **settings),
        eager_model,
        cls(eager_model.parameters(), fused=False, **settings),
    )


# -- behaviour ------------------------------------------------------------------------------
def test_fused_path_really_runs_and_trains() -> None:
    fused_model, fused, eager_model, eager = fused_and_eager(lr=1e-2)
    losses = train(fused_model, fused, 30)
    train(eager_model, eager, 30)
    assert fused.fused_status() == ["fused: 4 parameters in 1 bucket(s)"]
    assert eager.fused_status() == ["eager: fused=False"]
    assert losses[-1] < losses[0]
    assert_close(fused_model, eager_model)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_fresh_and_in_place_gradients(set_to_none: bool) -> None:
    fused_model, fused, eager_model, eager = fused_and_eager("RMSprop", lr=1e-2, momentum=0.5)
    train(fused_model, fused, 25, set_to_none=set_to_none)
    train(eager_model, eager, 25, set_to_none=set_to_none)
    assert_close(fused_model, eager_model)
    if not set_to_none:  # the gradients stayed in the flat buffer: no copy per step
        bucket = fused._fast.groups[0].buckets[0]
        assert all(p.grad is v for p, v in zip(bucket.params, bucket.grad_views, strict=True))


def test_scheduler_compiles_nothing_new() -> None:
    """OneCycleLR changes lr and beta1 every step; the kernel stays the same."""
    fused_model, fused, eager_model, eager = fused_and_eager(lr=1e-2)
    schedulers = [
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=40)
        for opt in (fused, eager)
    ]
    train(fused_model, fused, 3)
    before = _trace.compiled_kernel_count()
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(30):
        train(fused_model, fused, 1)
        train(eager_model, eager, 1)
        for scheduler in schedulers:
            scheduler.step()
    assert fused.param_groups[0]["betas"][0] != eager.defaults["betas"][0]  # it did cycle
    assert _trace.compiled_kernel_count() == before
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames


def test_no_parameter_sized_temporaries() -> None:
    """A steady-state fused step allocates a few bytes; the eager step allocates whole tensors."""
    numel = 1 << 18
    params = [torch.nn.Parameter(torch.randn(numel))]
    params[0].grad = torch.randn(numel)
    allocated = {}
    for fused in (True, False):
        optimizer = adaptim.Adam(params, fused=fused, amsgrad=True, weight_decay=0.1)
        for _ in range(3):
            optimizer.step()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as profile:
            optimizer.step()
        allocated[fused] = sum(max(e.self_cpu_memory_usage, 0) for e in profile.key_averages())
    assert allocated[False] > numel * 4  # the measurement sees temporaries where there are some
    assert allocated[True] < 4096, allocated


def test_replaced_parameter_data_is_still_updated() -> None:
    """``model.to()`` and ``p.data = ...`` swap the tensors behind the parameters."""
    fused_model, fused, eager_model, eager = fused_and_eager("NAdam", lr=1e-2)
    train(fused_model, fused, 5)
    train(eager_model, eager, 5)
    for model in (fused_model, eager_model):
        for p in model.parameters():
            p.data = p.data.clone()  # what a device move does to each parameter
    before = [p.detach().clone() for p in fused_model.parameters()]
    train(fused_model, fused, 5, seed=2)
    train(eager_model, eager, 5, seed=2)
    assert all(not torch.equal(a, p) for a, p in zip(before, fused_model.parameters(), strict=True))
    assert_close(fused_model, eager_model)
    assert fused.fused_status() == ["fused: 4 parameters in 1 bucket(s)"]
    assert fused._fast.groups[0].rebuilds == 2


def test_model_load_state_dict_after_construction() -> None:
    fused_model, fused, eager_model, eager = fused_and_eager(lr=1e-2)
    train(fused_model, fused, 5)
    train(eager_model, eager, 5)
    snapshot = {k: torch.randn_like(v) for k, v in fused_model.state_dict().items()}
    fused_model.load_state_dict(snapshot)
    eager_model.load_state_dict(snapshot)
    for key, value in fused_model.state_dict().items():
        assert torch.equal(value, snapshot[key])
    train(fused_model, fused, 5, seed=3)
    train(eager_model, eager, 5, seed=3)
    assert_close(fused_model, eager_model)


def test_optimizer_load_state_dict_from_torch() -> None:
    """A torch.optim checkpoint loaded mid-run replaces the state; the buckets follow.

    (As in torch, the loaded param groups bring their own ``fused`` switch.)
    """
    fused_model, eager_model = make_model(), make_model()
    reference = torch.optim.Adam(eager_model.parameters(), lr=1e-2, amsgrad=True, fused=True)
    fused = adaptim.Adam(fused_model.parameters(), lr=1e-2, amsgrad=True, fused=True)
    train(fused_model, fused, 4)
    train(eager_model, reference, 6, seed=4)
    fused_model.load_state_dict(eager_model.state_dict())
    fused.load_state_dict(copy.deepcopy(reference.state_dict()))  # torch would share tensors
    assert fused.fused_status()[0].startswith("not rebuilt yet")
    train(fused_model, fused, 6, seed=5)
    train(eager_model, reference, 6, seed=5)
    assert fused.fused_status() == ["fused: 4 parameters in 1 bucket(s)"]
    assert_close(fused_model, eager_model)
    # ... and the fused optimizer's own state_dict continues in torch.optim.
    restored_model = make_model()
    restored_model.load_state_dict(fused_model.state_dict())
    restored = torch.optim.Adam(restored_model.parameters(), lr=1e-2, amsgrad=True)
    restored.load_state_dict(copy.deepcopy(fused.state_dict()))
    train(restored_model, restored, 4, seed=6)
    train(fused_model, fused, 4, seed=6)
    assert_close(fused_model, restored_model)


def test_parameters_without_gradients_are_skipped_like_torch() -> None:
    fused_model, fused, eager_model, eager = fused_and_eager("SGD", lr=0.1, momentum=0.9)
    train(fused_model, fused, 4)
    train(eager_model, eager, 4)
    for model in (fused_model, eager_model):
        model[2].weight.requires_grad_(False)  # frozen for a while
    frozen = fused_model[2].weight.detach().clone()
    train(fused_model, fused, 3, seed=7)
    train(eager_model, eager, 3, seed=7)
    assert torch.equal(fused_model[2].weight, frozen)
    for model in (fused_model, eager_model):
        model[2].weight.requires_grad_(True)
    train(fused_model, fused, 4, seed=8)
    train(eager_model, eager, 4, seed=8)
    assert_close(fused_model, eager_model)
    steps = {float(s["step"]) for s in fused.state.values()} if "step" in fused.state else set()
    assert steps == set()  # SGD keeps no step counter; the frozen weight's buffer is untouched


def test_automatic_choice() -> None:
    small = adaptim.Adam(make_model().parameters())
    train_params = [torch.nn.Parameter(torch.randn(_fast.AUTO_MIN_NUMEL))]
    large = adaptim.Adam(train_params)
    for optimizer, params in (
        (small, list(small.param_groups[0]["params"])),
        (large, train_params),
    ):
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer.step()
    assert small.fused_status()[0].startswith("eager: ")
    assert large.fused_status()[0].startswith("fused: ")
    lars_params = [torch.nn.Parameter(torch.randn(_fast.AUTO_MIN_NUMEL))]
    lars = adaptim.LARS(lars_params)
    for _ in range(2):
        lars_params[0].grad = torch.ones_like(lars_params[0])
        lars.step()
    assert lars.fused_status() == ["fused: 1 parameters in 1 bucket(s)"]


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


@pytest.mark.parametrize(("name", "settings"), LARS_LAMB_CASES)
def test_lars_and_lamb_norms_per_parameter(name: str, settings: dict[str, Any]) -> None:
    """Trust ratios need a norm per parameter: the kernel reduces over each one's segment."""
    fused_model, fused, eager_model, eager = fused_and_eager(name, **settings)
    train(fused_model, fused, 20)
    train(eager_model, eager, 20)
    assert fused.fused_status() == ["fused: 4 parameters in 2 bucket(s)"]  # matrices, vectors
    assert_close(fused_model, eager_model, tolerance=1e-5)
    for p, q in zip(fused_model.parameters(), eager_model.parameters(), strict=True):
        assert fused.state[p].keys() == eager.state[q].keys()
        if "trust_ratio" in eager.state[q]:
            ours, theirs = fused.state[p]["trust_ratio"], eager.state[q]["trust_ratio"]
            assert ours.shape == theirs.shape == ()
            assert abs(float(ours) - float(theirs)) <= 1e-5 * abs(float(theirs))


def test_fused_must_be_a_bool_or_none() -> None:
    with pytest.raises(TypeError, match=r"Invalid fused: 'yes'; allowed: None \(automatic\)"):
        adaptim.Adam(make_model().parameters(), fused="yes")  # type: ignore[arg-type]


def test_complex_and_sparse_gradients_take_the_eager_path() -> None:
    torch.manual_seed(0)
    real = torch.nn.Parameter(torch.randn(4, 3))
    complex_param = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    optimizer = adaptim.Adagrad([real, complex_param], fused=True)
    reference = adaptim.Adagrad(
        [
            torch.nn.Parameter(real.detach().clone()),
            torch.nn.Parameter(complex_param.detach().clone()),
        ],
        fused=False,
    )
    for step in range(5):
        for opt in (optimizer, reference):
            ps = opt.param_groups[0]["params"]
            generator = torch.Generator().manual_seed(step)
            ps[0].grad = torch.randn(4, 3, generator=generator)
            ps[1].grad = torch.randn(3, dtype=torch.complex64, generator=generator)
            opt.step()
    assert optimizer.fused_status() == ["fused: 1 parameters in 1 bucket(s)"]
    for a, b in zip(
        optimizer.param_groups[0]["params"], reference.param_groups[0]["params"], strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_failed_compilation_falls_back_to_eager_or_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """No C++ compiler, say: automatic mode warns and steps eagerly; fused=True says so."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_fast, "kernel_for", broken)
    monkeypatch.setattr(_fast, "AUTO_MIN_NUMEL", 0)
    auto_model, eager_model = make_model(), make_model()
    auto = adaptim.Adam(auto_model.parameters(), lr=1e-2)
    eager = adaptim.Adam(eager_model.parameters(), lr=1e-2, fused=False)
    with pytest.warns(UserWarning, match="fused path off, eager instead: torch.compile failed"):
        train(auto_model, auto, 4)
    train(eager_model, eager, 4)
    assert auto.fused_status()[0].startswith("eager for good: torch.compile failed")
    assert_close(auto_model, eager_model, tolerance=0.0)
    forced_model = make_model()
    forced = adaptim.Adam(forced_model.parameters(), lr=1e-2, fused=True)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        train(forced_model, forced, 3)


def test_parameters_sharing_storage_are_not_separated() -> None:
    """Two parameters viewing one tensor must keep viewing it: they stay on the eager path."""
    base = torch.zeros(8)
    tied = [torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[4:])]
    own = torch.nn.Parameter(torch.zeros(3))
    optimizer = adaptim.SGD([*tied, own], lr=0.5, momentum=0.9, fused=True)
    for _ in range(3):
        for p in (*tied, own):
            p.grad = torch.ones_like(p)
        optimizer.step()
    assert tied[0].untyped_storage().data_ptr() == tied[1].untyped_storage().data_ptr()
    assert optimizer.fused_status() == ["fused: 1 parameters in 1 bucket(s)"]
    for p in (*tied, own):
        assert torch.allclose(p.detach(), torch.full_like(p, -0.5 * (1 + 1.9 + 2.71)))


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
def test_every_flavor_runs_fused(name: str, flavor: str, extras: dict[str, Any]) -> None:
    """Keras, TF1, optax and paper variants take the fused path and equal their eager run."""
    cls = adaptim.OPTIMIZERS[name]
    fused_model, eager_model = make_model(), make_model()
    fused = cls(fused_model.parameters(), flavor=flavor, fused=True, **extras)
    eager = cls(eager_model.parameters(), flavor=flavor, fused=False, **extras)
    train(fused_model, fused, 25)
    train(eager_model, eager, 25)
    assert fused.fused_status() == ["fused: 4 parameters in 1 bucket(s)"]
    assert_close(fused_model, eager_model, tolerance=1e-4)


@pytest.mark.parametrize("name", ["LARS", "LAMB"])
def test_norms_per_parameter_across_chunks(name: str) -> None:
    """Parameters spanning several chunks, exactly one, and a partial one (padding masked)."""
    shapes = [(50, 50), (1024,), (7,), (3, 700)]
    generator = torch.Generator().manual_seed(0)
    initial = [torch.randn(s, generator=generator) for s in shapes]
    fused_params = [torch.nn.Parameter(x.clone()) for x in initial]
    eager_params = [torch.nn.Parameter(x.clone()) for x in initial]
    cls = getattr(adaptim, name)
    fused = cls(fused_params, lr=1e-2, weight_decay=1e-3, fused=True)
    eager = cls(eager_params, lr=1e-2, weight_decay=1e-3, fused=False)
    for step in range(12):
        grads = [torch.randn(s, generator=generator) * (step + 1) for s in shapes]
        for ps, opt in ((fused_params, fused), (eager_params, eager)):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    assert fused.fused_status()[0].startswith("fused: 4 parameters")
    for p, q in zip(fused_params, eager_params, strict=True):
        scale = float(q.detach().abs().max())
        assert float((p.detach() - q.detach()).abs().max()) <= 1e-5 * scale
        ratio, expected = float(fused.state[p]["trust_ratio"]), float(eager.state[q]["trust_ratio"])
        assert abs(ratio - expected) <= 1e-5 * abs(expected)
