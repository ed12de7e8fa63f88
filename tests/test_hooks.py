"""``step()`` and ``zero_grad()`` keep torch.optim's hooks and profiler labels (adaptim.torch._hooks)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import adaptim


def pair(cls_name: str = "Adam") -> list[tuple[str, torch.optim.Optimizer, torch.nn.Parameter]]:
    """The same one-parameter problem under adaptim and under torch.optim."""
    out = []
    for label, module in (("adaptim", adaptim), ("torch", torch.optim)):
        p = torch.nn.Parameter(torch.arange(4.0))
        out.append((label, getattr(module, cls_name)([p], lr=0.1), p))
    return out


def test_hooks_run_in_torchs_order_and_may_replace_the_arguments() -> None:
    logs: dict[str, list[str]] = {}
    for label, optimizer, p in pair():
        log = logs.setdefault(label, [])
        calls = 0

        def closure(p: torch.nn.Parameter = p) -> torch.Tensor:
            nonlocal calls
            calls += 1
            loss = (p**2).sum()
            loss.backward()
            return loss

        def pre(opt: Any, args: Any, kwargs: Any, log: list[str] = log) -> Any:
            log.append("pre")
            return (args, {"closure": closure})  # the hook supplies the closure

        def post(opt: Any, args: Any, kwargs: Any, log: list[str] = log) -> None:
            log.append(f"post:{sorted(kwargs)}")

        global_pre = register_optimizer_step_pre_hook(
            lambda opt, a, k, log=log: log.append("global-pre")
        )
        global_post = register_optimizer_step_post_hook(
            lambda opt, a, k, log=log: log.append("global-post")
        )
        handles = [optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post)]
        try:
            loss = optimizer.step()
        finally:
            for handle in [global_pre, global_post, *handles]:
                handle.remove()
        assert calls == 1 and loss is not None
        optimizer.step()  # hooks removed: nothing more is logged
    assert (
        logs["adaptim"] == logs["torch"] == ["global-pre", "pre", "post:['closure']", "global-post"]
    )
    (_, _, ours), (_, _, theirs) = pair()
    assert torch.equal(ours, theirs)


def test_a_pre_hook_returning_something_else_is_refused_like_torch() -> None:
    messages = []
    for _, optimizer, p in pair():
        p.grad = torch.ones_like(p)
        optimizer.register_step_pre_hook(lambda opt, a, k: "nonsense")
        with pytest.raises(RuntimeError) as error:
            optimizer.step()
        messages.append(str(error.value).split("must return", 1)[1])
    assert messages[0] == messages[1]


def test_profiler_sees_the_same_ranges_as_for_torch() -> None:
    for label, optimizer, p in pair():
        p.grad = torch.ones_like(p)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            optimizer.step()
            optimizer.zero_grad()
        names = {event.name for event in prof.events()}
        cls = type(optimizer).__name__
        assert f"Optimizer.step#{cls}.step" in names, label
        assert f"Optimizer.zero_grad#{cls}.zero_grad" in names, label


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_matches_torch(set_to_none: bool) -> None:
    grads = []
    for _, optimizer, p in pair():
        p.grad = torch.ones_like(p)
        optimizer.zero_grad(set_to_none=set_to_none)
        grads.append(p.grad)
    if set_to_none:
        assert grads == [None, None]
    else:
        assert all(g is not None and torch.equal(g, torch.zeros(4)) for g in grads)


def test_scheduler_sees_the_step_and_grad_mode_is_restored() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = adaptim.SGD([p], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would raise
        for _ in range(3):
            (p**2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 8)
    assert torch.is_grad_enabled()
    p.grad = torch.full_like(p, float("nan"))
    with torch.no_grad():
        optimizer.step()
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_a_step_that_raises_restores_grad_mode() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    optimizer = adaptim.Adam([p])
    optimizer.step()
    optimizer.state[p]["exp_avg"] = torch.zeros(5)  # a state that cannot be stepped
    with pytest.raises(RuntimeError, match="Nothing was changed"):
        optimizer.step()
    assert torch.is_grad_enabled()


def test_a_subclass_step_is_hooked_once_as_in_torch() -> None:
    counts = {}
    for label, base in (("adaptim", adaptim.SGD), ("torch", torch.optim.SGD)):

        class Sub(base):  # type: ignore[misc, valid-type]
            def step(self, closure: Any = None) -> Any:
                return super().step(closure)

        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        optimizer = Sub([p], lr=0.1)
        seen: list[int] = []
        optimizer.register_step_post_hook(lambda opt, a, k, seen=seen: seen.append(1))
        optimizer.step()
        counts[label] = len(seen)
    assert counts["adaptim"] == counts["torch"]
