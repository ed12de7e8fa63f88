"""What ``fused_status()`` and ``plans()`` say after steps taken under ``torch.compile``.

A compiled ``opt.step`` runs the per-tensor rule inside Dynamo's graph (see
``README.md``, "Schedulers and ``torch.compile``"), not the engine, so the
engine never records a path. ``fused_status()`` must still say what ran, not
"not stepped yet" after a hundred steps; and an eager step afterwards reports
its own path again.
"""

from __future__ import annotations

import pytest
import torch

import adaptim
from adaptim.torch import _mkl_sqrt


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _backward(model: torch.nn.Module, generator: torch.Generator) -> None:
    model(torch.randn(8, 6, generator=generator)).square().mean().backward()


@pytest.mark.slow  # a torch.compile (about 10 s on a quiet machine, 60 s under load)
@pytest.mark.parametrize("switches", [{}, {"fused": True}], ids=["default", "fused"])
def test_status_after_compiled_steps_names_the_traced_path(switches: dict[str, bool]) -> None:
    torch._dynamo.reset()
    model = _model()
    optimizer = adaptim.Adam([{"params": [model[0].weight]}, {"params": []}], lr=1e-2, **switches)
    optimizer.add_param_group({"params": [model[0].bias, *model[2].parameters()]})
    step = torch.compile(optimizer.step)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        optimizer.zero_grad()
        _backward(model, generator)
        step()
    status = optimizer.fused_status()
    assert len(status) == 3
    assert all(s.startswith("traced (torch.compile)") for s in status), status
    assert optimizer.plans() == [[], [], []]  # no replay function or C source ran

    optimizer.zero_grad()  # an eager step again: its own path
    _backward(model, generator)
    optimizer.step()
    status = optimizer.fused_status()
    # (the default on this small model: the exact native loop where MKL's root is emulated)
    expected = "native" if switches or _mkl_sqrt.emulated(torch.float32) else "foreach"
    assert status[0].startswith(expected) and status[2].startswith(expected), status


@pytest.mark.slow
def test_compiled_step_counts_the_steps_it_skips() -> None:
    """``nonfinite="skip"`` under ``torch.compile``: the step is skipped *and* counted."""
    torch._dynamo.reset()
    model = _model()
    optimizer = adaptim.Adam(model.parameters(), lr=1e-2, nonfinite="skip")
    step = torch.compile(optimizer.step)
    generator = torch.Generator().manual_seed(1)
    for index in range(4):
        optimizer.zero_grad()
        _backward(model, generator)
        if index in (1, 2):
            model[0].weight.grad[0, 0] = float("nan")
        before = [p.detach().clone() for p in model.parameters()]
        step()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert unchanged == (index in (1, 2))
    assert optimizer.skipped_steps == 2
    assert optimizer.state[model[0].weight]["step"].item() == 2


@pytest.mark.slow
def test_memory_light_states_under_compile_report_the_engine_path() -> None:
    """Memory-light states step eagerly inside a compiled ``step`` (one graph break): the
    status is the engine's, not "traced"."""
    torch._dynamo.reset()
    model = _model()
    optimizer = adaptim.Adam(model.parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    step = torch.compile(optimizer.step)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        optimizer.zero_grad()
        _backward(model, generator)
        step()
    (status,) = optimizer.fused_status()
    assert status.split(" ")[0] in ("native", "foreach"), status
    assert status.endswith("4 of 4 tensors"), status
