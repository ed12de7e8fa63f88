"""``model.to(dtype)`` after the optimizer made its state, for every optimizer adaptim has.

torch.optim keeps such state in its old dtype: its element-wise twins step
with it (in-place updates round to the state's dtype), and a rule that calls
``lerp`` refuses. adaptim must do one of the two for every optimizer (every
class of :mod:`adaptim.torch` and every setting ``adaptim optimizers`` lists):
step as torch's twin does, or refuse before anything changes, naming the
parameter, the dtypes and the remedy. It used to step the groups before the
offending tensor and then raise ATen's message from inside the rule
(Schedule-Free, SGD-HD, Adam-HD; D-Adapt and Mechanic with ATen's message).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import adaptim
import adaptim.torch as at
from adaptim.lab.optimizers import VARIANTS, make_optimizer

#: Every optimizer class adaptim.torch exports (the base class is not one to use).
CLASSES = sorted(
    name
    for name in at.__all__
    if isinstance(getattr(at, name), type)
    and issubclass(getattr(at, name), torch.optim.Optimizer)
    and name != "Optimizer"
)
DTYPES = [torch.float64, torch.bfloat16]  # (the state was made in float32)


def _class_builder(name: str) -> Callable[[list[dict[str, Any]]], torch.optim.Optimizer]:
    if name == "Mechanic":
        return lambda groups: at.Mechanic(adaptim.SGD(groups, lr=0.1))
    cls = getattr(at, name)
    return lambda groups: cls(groups)


def _variant_builder(name: str) -> Callable[[list[dict[str, Any]]], torch.optim.Optimizer]:
    variant = VARIANTS[name]
    hparams = {} if variant.tuning_free else {"lr": variant.lr_range[0]}
    # (the lab hands a flat list: one group, the moved tensors after the kept ones)
    return lambda groups: make_optimizer(  # type: ignore[return-value]
        name, [p for g in groups for p in g["params"]], hparams
    )


def _snapshot(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> Any:
    return copy.deepcopy(([p.detach() for p in params], optimizer.state_dict()))


def _same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


def _run(
    build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    dtype: torch.dtype,
    *,
    bias: bool = True,
    sparse: bool = False,
) -> tuple[list[torch.Tensor], torch.optim.Optimizer, Exception | None, Any]:
    """Two steps, the second layer moved to ``dtype``, one more step: (params, optimizer,
    the step's error or None, the snapshot taken before it)."""
    torch.manual_seed(0)
    kept, moved = torch.nn.Linear(4, 3, bias=bias), torch.nn.Linear(4, 3, bias=bias)
    params = [*kept.parameters(), *moved.parameters()]
    optimizer = build([{"params": list(kept.parameters())}, {"params": list(moved.parameters())}])
    if any("train_mode" in group for group in optimizer.param_groups):
        optimizer.train()  # type: ignore[attr-defined]  # (Schedule-Free)

    def backward() -> None:
        optimizer.zero_grad()
        x = torch.randn(5, 4)
        kept(x).square().mean().backward()
        moved(x.to(moved.weight.dtype)).square().mean().backward()
        if sparse:
            for p in params:
                assert p.grad is not None
                p.grad = p.grad.to_sparse(1)

    for _ in range(2):
        backward()
        optimizer.step()
    moved.to(dtype)
    backward()
    before = _snapshot(optimizer, params)
    error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            optimizer.step()
        except Exception as raised:  # (judged by the caller)
            error = raised
    return params, optimizer, error, before


def _check(
    build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    dtype: torch.dtype,
    twin: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
    **options: Any,
) -> None:
    params, optimizer, error, before = _run(build, dtype, **options)
    if twin is not None:
        their_params, _, their_error, _ = _run(twin, dtype, **options)
        assert (error is None) == (their_error is None), (error, their_error)
    if error is None:
        for p in params:
            assert bool(torch.isfinite(p).all())
        if twin is not None:
            tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
            for p, q in zip(params, their_params, strict=True):
                assert torch.allclose(p, q, rtol=tolerance, atol=tolerance)
        return
    message = str(error)
    assert type(error) is RuntimeError, message
    assert "cannot step param_groups[" in message, message
    assert "another dtype" in message and str(dtype) in message, message
    assert "load_state_dict(optimizer.state_dict())" in message, message
    assert message.endswith("Nothing was changed."), message
    _same(_snapshot(optimizer, params), before)
    # The remedy the message gives works.
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.step()
    for p in params:
        assert bool(torch.isfinite(p).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CLASSES)
def test_every_class_steps_or_refuses_before_anything_changes(
    name: str, dtype: torch.dtype
) -> None:
    twin = None
    if hasattr(torch.optim, name) and name not in ("Muon",):
        cls = getattr(torch.optim, name)
        twin = lambda groups: cls(groups)  # noqa: E731
    _check(
        _class_builder(name),
        dtype,
        twin,
        bias=name != "Muon",  # (matrices only)
        sparse=name == "SparseAdam",
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_lab_optimizer_steps_or_refuses_before_anything_changes(
    name: str, dtype: torch.dtype
) -> None:
    _check(_variant_builder(name), dtype)


def test_the_dtype_check_keeps_another_refusals_own_message() -> None:
    """A sparse gradient beside state of another dtype: the rule's own refusal, not a
    dtype one (the check's copy of the step must not swallow it)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    optimizer = at.ScheduleFreeSGD(layer.parameters())
    optimizer.train()
    for _ in range(2):
        optimizer.zero_grad()
        layer(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
    layer.to(torch.float64)
    optimizer.zero_grad()
    layer(torch.randn(5, 4, dtype=torch.float64)).square().mean().backward()
    assert layer.weight.grad is not None
    layer.weight.grad = layer.weight.grad.to_sparse()
    with pytest.raises(RuntimeError, match="has a sparse gradient") as raised:
        optimizer.step()
    assert "another dtype" not in str(raised.value)
