"""``step()`` and ``zero_grad()`` with torch.optim's hooks and profiler labels, minus their fixed cost.

``torch.optim.Optimizer`` wraps every ``step`` in a function that opens a
profiler range (``Optimizer.step#Adam.step``) and runs the registered step
hooks, and ``zero_grad`` opens a range too. Opening a range costs tens of
microseconds per call whether or not a profiler is listening: on the CPU this
is a tenth of a small model's whole step. torch keeps a flag that says whether
a profiler is running (``torch.autograd.profiler._is_profiler_enabled``, which
torch's own code reads for the same reason); the wrappers here open the range
only then. Everything else is torch's contract unchanged: the same hooks in the
same order (global pre-hooks, the optimizer's pre-hooks, which may replace the
arguments, the step, ``_optimizer_step_code`` for the profiler's Python
tracer, the optimizer's post-hooks, the global post-hooks), and the same
range names when profiling.

A subclass that defines its own ``step`` gets torch's wrapper, as a subclass
of a torch optimizer does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from itertools import chain
from typing import Any, TypeVar

import torch
from torch.autograd import profiler
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

Step = TypeVar("Step", bound=Callable[..., Any])


def hooked_step(func: Step) -> Step:
    """``func`` with the step hooks, and the profiler range while a profiler runs."""

    @functools.wraps(func)
    def step(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        if profiler._is_profiler_enabled:
            with profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
                return _with_hooks(func, self, args, kwargs)
        return _with_hooks(func, self, args, kwargs)

    # torch.optim.Optimizer wraps a step that is not marked (its ``_patch_step_function``).
    step.hooked = True  # type: ignore[attr-defined]
    return step  # type: ignore[return-value]


def _with_hooks(
    func: Callable[..., Any], self: torch.optim.Optimizer, args: Any, kwargs: Any
) -> Any:
    pre_hooks = self._optimizer_step_pre_hooks
    if _global_optimizer_pre_hooks or pre_hooks:
        for pre_hook in chain(_global_optimizer_pre_hooks.values(), pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(
                        f"{func} must return None or a tuple of (new_args, new_kwargs), "
                        f"but got {result}."
                    )
    out = func(*args, **kwargs)
    self._optimizer_step_code()
    post_hooks = self._optimizer_step_post_hooks
    if post_hooks or _global_optimizer_post_hooks:
        for post_hook in chain(post_hooks.values(), _global_optimizer_post_hooks.values()):
            post_hook(self, args, kwargs)
    return out


def zero_grad(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
    """Reset the gradients, as ``torch.optim.Optimizer.zero_grad`` does.

    With ``set_to_none=True`` (the default) and no profiler running this is
    torch's loop without its profiler range; otherwise it is torch's method.
    """
    if not set_to_none or profiler._is_profiler_enabled:
        torch.optim.Optimizer.zero_grad(self, set_to_none)
        return
    for group in self.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad = None
