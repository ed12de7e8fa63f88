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

from collections.abc import Iterator
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
    """Dynamo's counters from a clean start; ``"warm"`` is set by :func:`mark_warm`."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    seen: dict[str, Any] = {}
    yield seen
    seen["graphs"] = counters["stats"]["unique_graphs"]
    # (the scheduler's wrapper of step() is skipped by Dynamo itself, for torch.optim too)
    seen["breaks"] = [r for r in counters["graph_break"] if "lr_scheduler.py" not in r]


def mark_warm(seen: dict[str, Any]) -> None:
    seen["warm"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]


def assert_no_new_graphs_and_only(seen: dict[str, Any], *allowed: str) -> None:
    assert seen["graphs"] == seen["warm"], f"{seen['graphs'] - seen['warm']} graphs after warm-up"
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


def _assert_identical(a: Any, b: Any, params_a: list[torch.Tensor], params_b: list[Any]) -> None:
    for x, y in zip(params_a, params_b, strict=True):
        assert torch.equal(x, y)
        for (key, mine), theirs in zip(a.state[x].items(), b.state[y].values(), strict=True):
            assert torch.equal(torch.as_tensor(mine), torch.as_tensor(theirs)), key
    for g, h in zip(a.param_groups, b.param_groups, strict=True):
        assert {k: v for k, v in g.items() if k != "params"} == {
            k: v for k, v in h.items() if k != "params"
        }


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
