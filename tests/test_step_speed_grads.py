"""``benchmarks/step_speed.py`` hands every implementation fresh gradients each round.

The default loop drops the old gradients (``zero_grad()``) and ``backward()``
allocates new ones. With ``--placement interleaved`` each round's gradients of
all implementations are allocated together, in turns, and each receives its
values just before its own step: these tests check that every timed step sees
new tensors holding its sources' values (dense and sparse), never the previous
round's tensors and never the sources themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"
sys.path.insert(0, str(SCRIPT.parent))

import step_speed  # noqa: E402


def fake_runners(count: int, sparse: bool) -> tuple[list[step_speed.Runner], list[list[dict]]]:
    seen: list[list[dict]] = [[] for _ in range(count)]
    runners = []
    for k in range(count):
        params = [torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(7))]
        sources = [torch.randn(5, 3), torch.randn(7)]
        if sparse:
            sources[0] = torch.sparse_coo_tensor(torch.tensor([[0, 3]]), torch.randn(2, 3), (5, 3))

        def step(k: int = k, params: list[torch.Tensor] = params) -> None:
            seen[k].append(
                {
                    "ptrs": [p.grad.data_ptr() if not p.grad.is_sparse else None for p in params],
                    "ids": [id(p.grad) for p in params],
                    "values": [p.grad.to_dense().clone() for p in params],
                }
            )

        runners.append(
            step_speed.Runner(f"r{k}", lambda: None, step, 0.0, params=params, sources=sources)
        )
    return runners, seen


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("interleaved", [True, False])
def test_every_step_sees_fresh_gradients_with_its_sources_values(
    sparse: bool, interleaved: bool
) -> None:
    runners, seen = fake_runners(3, sparse)
    if not interleaved:  # each runner clones its own (the sequential build's closure)
        for r in runners:

            def fresh(r: step_speed.Runner = r) -> None:
                for p, s in zip(r.params, r.sources, strict=True):
                    p.grad = None
                    p.grad = s.clone()

            r.fresh_grads = fresh
    step_speed.measure(runners, 4, torch.device("cpu"), interleaved)
    for r, steps in zip(runners, seen, strict=True):
        assert len(steps) == 4
        for record in steps:
            for value, source in zip(record["values"], r.sources, strict=True):
                torch.testing.assert_close(value, source.to_dense(), rtol=0, atol=0)
        for p, source in zip(r.params, r.sources, strict=True):
            assert p.grad is not source


def test_interleaved_grads_drops_all_before_allocating_in_turns() -> None:
    runners, _ = fake_runners(3, sparse=False)
    old = [[torch.ones_like(p) for p in r.params] for r in runners]
    for r, grads in zip(runners, old, strict=True):
        for p, g in zip(r.params, grads, strict=True):
            p.grad = g
    writes = step_speed.interleaved_grads(runners, start=1)
    assert all(p.grad is None for r in runners for p in r.params)  # all dropped first
    writes[2]()
    assert all(p.grad is not None for p in runners[2].params)
    assert all(p.grad is None for p in runners[0].params)  # the others get theirs later
    for p, g, s in zip(runners[2].params, old[2], runners[2].sources, strict=True):
        assert p.grad is not g
        assert torch.equal(p.grad, s)
