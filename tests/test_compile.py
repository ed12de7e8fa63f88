"""``torch.compile`` of adaptim's optimizers: same result as eager, no recompiles after warm-up.

Three shapes of use, each for 100 steps under a learning-rate scheduler (a
new ``lr`` every step, a growing step count), counting with Dynamo's own
counters:

* ``torch.compile(opt.step)`` for the rules with group-wide scalars
  (Prodigy, D-Adaptation, Schedule-Free, DoG, LDoG, the hypergradient rules)
  and Mechanic. Their step runs outside the graph (one graph break, see
  :meth:`adaptim.torch._group.GroupOptimizer._step_untraced`), so the result
  is the eager step's, bit for bit;
* ``torch.compile(opt.step)`` for the classic rules on their other paths
  (``fused=True``, ``foreach=False``, bfloat16 and 8-bit states), traced
  whole: no graph break;
* a fully compiled train step (``zero_grad``, forward, ``backward``,
  ``step``) for a representative set. Dynamo does not trace
  ``Tensor.backward()`` (a graph break for torch.optim too); nothing else
  breaks the graph except the group rules' step.

The element-wise rules' ``torch.compile(opt.step)`` on the default path is
tested in ``tests/test_engine.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from _lr_free import GROUP_CASES, NO_SHRINK, SHAPES, Problem, _draw_dog
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim

STEPS, WARMUP = 100, 10

#: The one graph break of a group rule's step under torch.compile.
UNTRACED = "torch.compiler.disable"
#: Dynamo does not trace backward() (torch.optim's train steps break here too).
BACKWARD = "Tensor.backward()"

#: name -> (class, hyperparameter draw, keeps train/eval): every group rule.
GROUP_RULES = {**GROUP_CASES, "ldog": (adaptim.LDoG, _draw_dog, False)}


@contextmanager
def dynamo_counts() -> Iterator[dict[str, Any]]:
    """Dynamo's counters from a clean start; after :func:`mark_warm`, a recompile raises."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    seen: dict[str, Any] = {}
    with torch._dynamo.config.patch(error_on_recompile=False):
        yield seen
    seen["graphs"] = counters["stats"]["unique_graphs"]
    seen["frames"] = counters["frames"]["ok"]
    # (the scheduler's wrapper of step() is skipped by Dynamo itself, for torch.optim too)
    seen["breaks"] = [r for r in counters["graph_break"] if "lr_scheduler.py" not in r]


def mark_warm(seen: dict[str, Any]) -> None:
    """The end of warm-up: count what was compiled, and make any recompile from now an error."""
    seen["warm"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    seen["warm_frames"] = torch._dynamo.utils.counters["frames"]["ok"]
    torch._dynamo.config.error_on_recompile = True


def assert_no_new_graphs_and_only(seen: dict[str, Any], *allowed: str) -> None:
    """No graph and no frame compiled after warm-up; graph breaks only for the ``allowed`` reasons."""
    assert seen["graphs"] == seen["warm"], f"{seen['graphs'] - seen['warm']} graphs after warm-up"
    assert seen["frames"] == seen["warm_frames"], "frames compiled after warm-up"
    unexpected = [r for r in seen["breaks"] if not any(a in r for a in allowed)]
    assert not unexpected, unexpected


def scheduled(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + 0.05 * s))


# -- the rules with group-wide scalars ---------------------------------------------------------
def _two_groups(name: str, params: list[torch.Tensor], hp: dict[str, Any]) -> Any:
    cls, _, train_eval = GROUP_RULES[name]
    half = max(1, len(params) // 2)
    groups: list[dict[str, Any]] = [{"params": params[:half]}]
    if params[half:]:
        groups.append({"params": params[half:], "weight_decay": 0.0})
    optimizer = cls(groups, **hp)
    if train_eval:
        optimizer.train()
    return optimizer


def _same(a: Any, b: Any) -> bool:
    """Bit for bit (NaN equal to NaN: a drawn setting may diverge, identically in both runs)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return a.dtype == b.dtype and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _assert_identical(a: Any, b: Any, params_a: list[torch.Tensor], params_b: list[Any]) -> None:
    for x, y in zip(params_a, params_b, strict=True):
        assert _same(x, y)
        assert a.state[x].keys() == b.state[y].keys()
        for key, value in a.state[x].items():
            assert _same(value, b.state[y][key]), key
    for g, h in zip(a.param_groups, b.param_groups, strict=True):
        assert g.keys() == h.keys()
        for key in g.keys() - {"params"}:
            assert _same(g[key], h[key]), key


GROUP_PARAMS = [
    pytest.param(name, marks=() if name in ("prodigy", "schedulefree-adamw") else pytest.mark.slow)
    for name in GROUP_RULES
]


@pytest.mark.parametrize("name", GROUP_PARAMS)
@settings(max_examples=2, deadline=None, phases=NO_SHRINK)
@given(data=st.data())
def test_group_rule_compiled_step_is_the_eager_step(name: str, data: st.DataObject) -> None:
    """``torch.compile(opt.step)`` of a rule with group scalars: the eager step, bit for bit, in
    the same graphs for 100 steps (``d``, ``weight_sum``, ``eta`` change every step)."""
    hp = GROUP_RULES[name][1](data)
    problem = Problem.draw(
        data.draw(SHAPES, "shapes"), torch.float32, data.draw(st.integers(0, 99))
    )
    runs = []
    with dynamo_counts() as seen:
        for compiled in (True, False):
            params = problem.params()
            optimizer = _two_groups(name, params, hp)
            scheduler = scheduled(optimizer)
            step = torch.compile(optimizer.step) if compiled else optimizer.step
            for index in range(STEPS):
                problem.set_grads(params)
                step()
                scheduler.step()
                if compiled and index == WARMUP - 1:
                    mark_warm(seen)
            runs.append((optimizer, params))
    assert_no_new_graphs_and_only(seen, UNTRACED)
    (compiled_opt, compiled_params), (eager_opt, eager_params) = runs
    _assert_identical(compiled_opt, eager_opt, compiled_params, eager_params)


# -- models: the classic rules' other paths, Mechanic, Muon, and whole train steps -------------
def make_model(seed: int = 0, bias: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 5, bias=bias), torch.nn.Tanh(), torch.nn.Linear(5, 2, bias=bias)
    )


def relative_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest difference of a parameter of ``a`` from ``b``'s, relative to ``b``'s largest."""
    with torch.no_grad():
        return max(
            float((x - y).abs().max()) / max(float(y.abs().max()), 1e-12)
            for x, y in zip(a.parameters(), b.parameters(), strict=True)
        )


Build = Callable[[torch.nn.Module], torch.optim.Optimizer]


def compiled_and_eager(
    build: Build, eager_build: Build | None = None, *, whole_step: bool = False, bias: bool = True
) -> tuple[dict[str, Any], torch.nn.Module, torch.nn.Module]:
    """100 steps of ``build``'s optimizer compiled (its ``step``, or the ``whole_step``) and of
    ``eager_build``'s (default: the same) eagerly, under a scheduler; returns counts and models."""
    models = [make_model(bias=bias), make_model(bias=bias)]
    optimizers = [build(models[0]), (eager_build or build)(models[1])]
    schedulers = [scheduled(optimizer) for optimizer in optimizers]

    def train_step(model: torch.nn.Module, optimizer: Any, x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        return loss

    compiled_step = torch.compile(optimizers[0].step)
    compiled_train_step = torch.compile(train_step)
    generator = torch.Generator().manual_seed(0)
    with dynamo_counts() as seen:
        for index in range(STEPS):
            x = torch.randn(16, 6, generator=generator)
            if whole_step:
                compiled_train_step(models[0], optimizers[0], x)
            else:
                optimizers[0].zero_grad()
                models[0](x).square().mean().backward()
                compiled_step()
            train_step(models[1], optimizers[1], x)
            for scheduler in schedulers:
                scheduler.step()
            if index == WARMUP - 1:
                mark_warm(seen)
    return seen, models[0], models[1]


def _params(model: torch.nn.Module) -> Any:
    return model.parameters()


#: (name, settings, traced): traced steps are one graph, the others run eagerly outside it.
PATHS = [
    pytest.param("Adam", {"fused": True}, True, id="adam-fused"),
    pytest.param("AdamW", {"foreach": False}, True, marks=pytest.mark.slow, id="adamw-foreach"),
    pytest.param("LAMB", {"fused": True}, True, marks=pytest.mark.slow, id="lamb-fused"),
    pytest.param("Adam", {"state_dtype": torch.bfloat16}, False, id="adam-bfloat16-state"),
    pytest.param("AdamW", {"state_bits": 8}, False, marks=pytest.mark.slow, id="adamw-8bit"),
]


@pytest.mark.parametrize(("name", "settings", "traced"), PATHS)
def test_compiled_step_on_every_path(name: str, settings: dict[str, Any], traced: bool) -> None:
    """``torch.compile(opt.step)`` on the native, per-tensor and memory-light paths.

    Traced steps agree with eager to 1e-5 of the largest weight after 100
    steps: Inductor fuses each formula into one loop and may contract
    multiply-adds, a float32 rounding or two per operation, which the
    updates carry forward. Memory-light states step eagerly, bit for bit.
    """
    cls = getattr(adaptim, name)
    seen, compiled, eager = compiled_and_eager(lambda m: cls(m.parameters(), lr=1e-2, **settings))
    if traced:
        assert_no_new_graphs_and_only(seen)
        assert relative_difference(compiled, eager) <= 1e-5
    else:
        assert_no_new_graphs_and_only(seen, UNTRACED)
        assert relative_difference(compiled, eager) == 0


@pytest.mark.slow
def test_compiled_mechanic_is_the_eager_step() -> None:
    """Mechanic around adaptim's traced Adam and around torch.optim.SGD: eager, bit for bit."""
    for base in (adaptim.Adam, torch.optim.SGD):
        seen, compiled, eager = compiled_and_eager(
            lambda m, base=base: adaptim.Mechanic(base(m.parameters(), lr=1e-2))
        )
        assert_no_new_graphs_and_only(seen, UNTRACED)
        assert relative_difference(compiled, eager) == 0


@pytest.mark.slow
def test_compiled_muon_matches_eager() -> None:
    """Muon's Newton–Schulz iteration runs in bfloat16 (8 bits of mantissa, 2⁻⁸ = 4e-3 per
    rounding), where Inductor's fused loops keep float32 between operations and round once:
    compiled and eager agree to bfloat16's precision, not float32's (2.6e-3 of the largest
    weight after 100 steps). A step that missed the scheduler's ``lr`` would be far off:
    torch.optim.Muon, compiled, ends 0.75 away from its eager run here (torch 2.13)."""
    seen, compiled, eager = compiled_and_eager(
        lambda m: adaptim.Muon(m.parameters(), lr=1e-2), bias=False
    )
    assert_no_new_graphs_and_only(seen)
    assert relative_difference(compiled, eager) <= 1e-2


def _train_step_case(name: str, build: Build, fast: bool = False) -> Any:
    return pytest.param(build, id=name, marks=() if fast else pytest.mark.slow)


TRAIN_STEPS = [
    _train_step_case("adam", lambda m: adaptim.Adam(m.parameters(), lr=1e-2), fast=True),
    _train_step_case("adamw", lambda m: adaptim.AdamW(m.parameters(), lr=1e-2)),
    _train_step_case("sgd-momentum", lambda m: adaptim.SGD(m.parameters(), lr=1e-2, momentum=0.9)),
    _train_step_case("prodigy", lambda m: adaptim.Prodigy(m.parameters()), fast=True),
    _train_step_case(
        "schedulefree-adamw",
        lambda m: adaptim.ScheduleFreeAdamW(m.parameters(), lr=1e-2, warmup_steps=5),
    ),
    _train_step_case("adafactor", lambda m: adaptim.Adafactor(m.parameters(), lr=1e-2)),
    _train_step_case("lion", lambda m: adaptim.Lion(m.parameters(), lr=1e-3)),
]


@pytest.mark.parametrize("build", TRAIN_STEPS)
def test_compiled_train_step_matches_eager(build: Build) -> None:
    """A compiled ``zero_grad``, forward, ``backward``, ``step``: no new graph after warm-up,
    100 steps within 1e-4 of eager. The forward and backward are compiled too and round
    differently (1e-7 apart for the element-wise rules after 100 steps); Prodigy's ``d``, a
    ratio of sums over every weight, carries that into every step (6e-6)."""

    def started(model: torch.nn.Module) -> torch.optim.Optimizer:
        optimizer = build(model)
        if isinstance(optimizer, adaptim.ScheduleFreeAdamW):
            optimizer.train()
        return optimizer

    seen, compiled, eager = compiled_and_eager(started, whole_step=True)
    assert_no_new_graphs_and_only(seen, BACKWARD, UNTRACED)
    assert relative_difference(compiled, eager) <= 1e-4
