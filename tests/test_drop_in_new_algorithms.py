"""The algorithms of issue 16 and the learning-rate-free ones, in ordinary training loops.

Each loop is what users write around an optimizer (mixed precision with a
``GradScaler`` that skips an overflowing step, gradients accumulated in place,
a layer frozen and thawed with a group added mid-run, OneCycleLR with
ReduceLROnPlateau, a checkpoint taken mid-run with ``torch.save`` and loaded
with ``weights_only=True``, a deep copy mid-run). Default constructor
arguments throughout.

- Where a reference exists (torch.optim's ``SparseAdam`` and ``Muon``;
  ``prodigyopt``, ``dadaptation``, ``dog-optimizer``, ``schedulefree``), the
  same loop runs with both and must end bit-identical; the adaptim run's
  checkpoint passes through the reference's class and back.
- The optax family and the memory-light states, whose references are not
  torch optimizers, are held to themselves: a run resumed from a checkpoint
  or a deep copy ends bit-identical to the uninterrupted run, and a step the
  ``GradScaler`` skips leaves everything as if it had not been taken.
  (Their parity with optax and bitsandbytes is in ``test_optax_family.py``
  and ``test_lowmem.py``.)
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import dadaptation
import dog
import numpy as np
import prodigyopt
import pytest
import schedulefree
import torch
from _loops import OWN_LR_LOOPS, Factory, loss
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp

REFERENCES: dict[str, Any] = {
    "Muon": torch.optim.Muon,
    "Prodigy": prodigyopt.Prodigy,
    "DAdaptAdam": dadaptation.DAdaptAdam,
    "DAdaptSGD": dadaptation.DAdaptSGD,
    "DAdaptAdaGrad": dadaptation.DAdaptAdaGrad,
    "DoG": dog.DoG,
    "LDoG": dog.LDoG,
    "ScheduleFreeAdamW": schedulefree.AdamWScheduleFree,
    "ScheduleFreeSGD": schedulefree.SGDScheduleFree,
}


def _factory(cls: Any) -> Factory:
    def make(params: Any) -> torch.optim.Optimizer:
        opt = cls(params)
        if hasattr(opt, "train"):
            opt.train()  # Schedule-Free: before training, as its README says
        return opt

    return make


def _through_bytes(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


def _model(seed: int, width: int, bias: bool) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(5, width, bias=bias), torch.nn.Tanh(), torch.nn.Linear(width, 3, bias=bias)
    )


def _final(make: Factory, loop: Any, seed: int, width: int, bias: bool) -> list[torch.Tensor]:
    model = _model(seed, width, bias)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
    loop(make, model, x, y)
    return [p.detach() for p in model.parameters()]


def _assert_identical(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0, equal_nan=True)


# dog-optimizer 1.0.3 cannot step with a frozen parameter (it reads p.grad of every
# parameter); adaptim's DoG can (tests/test_dog.py), but has nothing to match here.
CASES = [
    (name, loop)
    for name in REFERENCES
    for loop in OWN_LR_LOOPS
    if not (name in ("DoG", "LDoG") and loop == "freeze-add-group")
]


@pytest.mark.parametrize(("name", "loop"), CASES)
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 9))
def test_the_loop_ends_where_the_reference_ends(
    name: str, loop: str, seed: int, width: int
) -> None:
    bias = name != "Muon"  # Muon takes matrices only, as torch's
    theirs = _final(_factory(REFERENCES[name]), OWN_LR_LOOPS[loop], seed, width, bias)
    ours = _final(_factory(getattr(adaptim, name)), OWN_LR_LOOPS[loop], seed, width, bias)
    _assert_identical(ours, theirs)


@pytest.mark.parametrize("loop", list(OWN_LR_LOOPS))
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 9))
def test_8bit_states_of_small_tensors_end_where_torch_optim_ends(
    name: str, loop: str, seed: int, width: int
) -> None:
    # tensors under 4,096 elements keep fp32 states, as bitsandbytes does
    def eight_bit(params: Any) -> torch.optim.Optimizer:
        return getattr(adaptim, name)(params, state_bits=8)

    theirs = _final(_factory(getattr(torch.optim, name)), OWN_LR_LOOPS[loop], seed, width, True)
    _assert_identical(_final(eight_bit, OWN_LR_LOOPS[loop], seed, width, True), theirs)


def _resumed(
    make: Factory, resume: Callable[[Any, Any], tuple[Any, Any]], seed: int, width: int, bias: bool
) -> list[torch.Tensor]:
    model = _model(seed, width, bias)
    opt = make(model.parameters())
    g = torch.Generator().manual_seed(seed)
    for i in range(6):
        x, y = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
        opt.zero_grad()
        loss(model, x, y).backward()
        opt.step()
        if i == 2:
            model, opt = resume(model, opt)
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("name", list(REFERENCES))
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 9))
def test_a_checkpoint_moves_through_the_reference_mid_run(name: str, seed: int, width: int) -> None:
    ours, theirs = _factory(getattr(adaptim, name)), _factory(REFERENCES[name])
    bias = name != "Muon"

    def via_reference(model: Any, opt: Any) -> tuple[Any, Any]:
        ref = theirs(model.parameters())
        ref.load_state_dict(_through_bytes(opt.state_dict()))
        again = ours(model.parameters())
        again.load_state_dict(_through_bytes(ref.state_dict()))
        return model, again

    def deep_copy(model: Any, opt: Any) -> tuple[Any, Any]:
        return copy.deepcopy((model, opt))

    uninterrupted = _final_plain(theirs, seed, width, bias)
    _assert_identical(_resumed(ours, via_reference, seed, width, bias), uninterrupted)
    _assert_identical(_resumed(ours, deep_copy, seed, width, bias), uninterrupted)


def _final_plain(make: Factory, seed: int, width: int, bias: bool) -> list[torch.Tensor]:
    return _resumed(make, lambda model, opt: (model, opt), seed, width, bias)


# --- the optax family and the memory-light states, held to themselves ---------------

SELF_HELD: dict[str, Factory] = {
    "Lion": adaptim.Lion,
    "AdaBelief": adaptim.AdaBelief,
    "Yogi": adaptim.Yogi,
    "Adan": adaptim.Adan,
    "NovoGrad": adaptim.NovoGrad,
    "SM3": adaptim.SM3,
    "Adafactor": adaptim.Adafactor,
    "Mechanic": lambda params: adaptim.Mechanic(adaptim.Adam(params)),
    "AdamW-8bit": lambda params: adaptim.AdamW(params, state_bits=8),
    "Adam-bf16": lambda params: adaptim.Adam(params, state_dtype=torch.bfloat16),
    "Lion-8bit": lambda params: adaptim.Lion(params, state_bits=8),
    "Yogi-bf16": lambda params: adaptim.Yogi(params, state_dtype=torch.bfloat16),
}


def _wide_run(make: Factory, seed: int, skip_with_scaler: bool, resume: str) -> list[torch.Tensor]:
    # 80 x 64 weights: above the 4,096 elements below which 8-bit states stay fp32
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(80, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))
    opt = make(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    g = torch.Generator().manual_seed(seed)
    for i in range(5):
        x, y = torch.randn(8, 80, generator=g), torch.randn(8, 3, generator=g)
        opt.zero_grad()
        if skip_with_scaler:  # scales by powers of two: exact, so only the skip shows
            scaler.scale(loss(model, x, y) * (1e38 if i == 2 else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
        elif i != 2:
            loss(model, x, y).backward()
            opt.step()
        if i == 1 and resume == "checkpoint":
            fresh = make(model.parameters())
            fresh.load_state_dict(_through_bytes(opt.state_dict()))
            opt = fresh
        elif i == 1 and resume == "deepcopy":
            model, opt = copy.deepcopy((model, opt))
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("name", list(SELF_HELD))
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_checkpoints_and_skipped_steps_leave_no_trace(name: str, seed: int) -> None:
    make = SELF_HELD[name]
    plain = _wide_run(make, seed, skip_with_scaler=False, resume="none")
    _assert_identical(_wide_run(make, seed, skip_with_scaler=True, resume="none"), plain)
    _assert_identical(_wide_run(make, seed, skip_with_scaler=False, resume="checkpoint"), plain)
    _assert_identical(_wide_run(make, seed, skip_with_scaler=False, resume="deepcopy"), plain)


# --- defects found by this hunt, each with the case that failed -----------------------


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40))
def test_sparse_adam_after_model_double_steps_as_torch(seed: int, rows: int) -> None:
    # The state made in float32 stays float32 after model.double(), as torch's;
    # adaptim wrote float64 rows into it and raised from index_copy_.
    def run(cls: Any) -> torch.Tensor:
        torch.manual_seed(seed)
        emb = torch.nn.Embedding(rows, 4, sparse=True)
        opt = cls(emb.parameters())
        g = torch.Generator().manual_seed(seed)
        for i in range(4):
            if i == 2:
                emb.double()
            opt.zero_grad()
            emb(torch.randint(0, rows, (6,), generator=g)).square().sum().backward()
            opt.step()
        return emb.weight.detach()

    _assert_identical([run(adaptim.SparseAdam)], [run(torch.optim.SparseAdam)])


@pytest.mark.parametrize("name", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_a_group_added_in_train_mode_trains_and_evaluates(name: str) -> None:
    # The new group started in eval mode, so the next step() refused.
    def run(cls: Any) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        torch.manual_seed(0)
        first, second = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
        opt = cls(first.parameters())
        opt.train()
        opt.add_param_group({"params": list(second.parameters())})
        for _ in range(3):
            opt.zero_grad()
            second(first(torch.ones(2, 4))).square().sum().backward()
            opt.step()
        return opt, [p.detach() for m in (first, second) for p in m.parameters()]

    ours, params = run(getattr(adaptim, name))
    # the reference steps such a group too (it reads group 0's mode only)
    _assert_identical(params, run(REFERENCES[name])[1])
    assert [group["train_mode"] for group in ours.param_groups] == [True, True]
    ours.eval()  # and eval() moves the new group to its average as well
    assert [group["train_mode"] for group in ours.param_groups] == [False, False]

    numpy_opt = getattr(anp, name)([np.zeros(3)])
    numpy_opt.train()
    numpy_opt.add_param_group({"params": [np.zeros(2)]})
    numpy_opt.step([np.ones(3), np.ones(2)])
    assert [group["train_mode"] for group in numpy_opt.param_groups] == [True, True]


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bad=st.sampled_from([float("inf"), float("nan")]))
def test_mechanic_skips_whole_the_step_its_base_skips(seed: int, bad: float) -> None:
    # The base skipped the step (nonfinite="skip"), but Mechanic learned from the
    # non-finite h: scale and parameters NaN from then on.
    rng = np.random.default_rng(seed)
    start, grads = rng.standard_normal((2, 3)), rng.standard_normal((3, 2, 3))
    poisoned = [grads[0], np.full((2, 3), bad), grads[1], grads[2]]

    def torch_run(sequence: list[np.ndarray]) -> np.ndarray:
        w = torch.nn.Parameter(torch.tensor(start))
        opt = adaptim.Mechanic(adaptim.Adam([w], nonfinite="skip"))
        for g in sequence:
            w.grad = torch.tensor(g)
            opt.step()
        return w.detach().numpy()

    def numpy_run(sequence: list[np.ndarray]) -> np.ndarray:
        w = start.copy()
        opt = anp.Mechanic(anp.Adam([w], nonfinite="skip"))
        for g in sequence:
            opt.step([g])
        return w

    for run in (torch_run, numpy_run):
        np.testing.assert_array_equal(run(poisoned), run(list(grads)))


def test_mechanic_says_how_its_base_steps() -> None:
    w = torch.nn.Parameter(torch.zeros(80, 64))
    opt = adaptim.Mechanic(adaptim.Adam([w]))
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.fused_status() == opt.base.fused_status()
    with pytest.raises(AttributeError, match="Adam has no fused_status"):
        adaptim.Mechanic(torch.optim.Adam([w])).fused_status()
