"""What the integration tests share: the optimizers, adaptim's paths, a tiny model, the verdict.

Every test runs a training loop twice, the same way, once with
``torch.optim.X`` and once with ``adaptim.X``, and compares the final
parameters: bit-identical (``torch.equal``) on adaptim's default path, which
follows torch.optim's for-loop implementation operation for operation, and
within :data:`RELATIVE` (``max|a - b| / max|b|`` per tensor) on the fused
(native) path, which rounds differently.

Each test is parametrized by :func:`cases` over algorithm × path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
import torch

import adaptim

#: Hyperparameters per algorithm, the same for torch.optim and adaptim; each
#: leaves torch's defaults where it can but makes every option it sets matter.
ALGORITHMS: dict[str, dict[str, Any]] = {
    "Adam": {"lr": 1e-2},
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "SGD": {"lr": 5e-2, "momentum": 0.9},
    "RMSprop": {"lr": 1e-2},
    "Adagrad": {"lr": 5e-2},
}

#: adaptim's paths: the default constructor, and the compiled fused path.
PATHS: dict[str, dict[str, Any]] = {"default": {}, "fused": {"fused": True}}

#: The largest relative error accepted off the default path. The native loop's
#: float32 ``sqrt`` is correctly rounded and ATen's vectorised one (MKL's) is not
#: (they agree on ~83% of elements), so RMSprop and Adam drift apart by an ulp here
#: and there; on the HF Trainer's tiny Llama RMSprop reaches 1.5e-6 after its
#: steps (embedding rows whose ``g/√v`` is ±1), everything else stays under 1e-6.
#: (With ``adaptim.torch._native.EXACT_ROOT`` every case here is within 1e-6.)
RELATIVE = 5e-6


def cases(
    names: Iterable[str] = tuple(ALGORITHMS),
    slow_fused: bool = False,
) -> list[Any]:
    """``(name, path)`` parameters.

    ``slow_fused`` marks the fused ones ``slow`` (in the 2-process tests, the
    fused path compiles its kernels in both processes).
    """
    params = []
    for name in names:
        for path in PATHS:
            marks = [pytest.mark.slow] if path == "fused" and slow_fused else []
            params.append(pytest.param(name, path, id=f"{name}-{path}", marks=marks))
    return params


def saver_cases(flatten: Sequence[bool | None] = (None,), slow_fused: bool = False) -> list[Any]:
    """:func:`cases` × who saves (``"torch"`` or ``"adaptim"``; the other loads) [× flatten]."""
    params = []
    for case in cases(slow_fused=slow_fused):
        name, path = case.values
        for flat in flatten:
            for saver in ("torch", "adaptim"):
                marks = list(case.marks)
                values = (name, path, saver) if flat is None else (name, path, flat, saver)
                layout = "" if flat is None else ("-flat" if flat else "-nested")
                label = f"{case.id}{layout}-{saver}-saves"
                params.append(pytest.param(*values, id=label, marks=marks))
    return params


def make_optimizer(
    library: str, name: str, path: str, params: Iterable[Any], **overrides: Any
) -> torch.optim.Optimizer:
    """``torch.optim.<name>`` (``library="torch"``) or ``adaptim.<name>`` on ``path``."""
    arguments = {**ALGORITHMS[name], **overrides}
    if library == "torch":
        return getattr(torch.optim, name)(params, **arguments)  # type: ignore[no-any-return]
    return getattr(adaptim, name)(params, **arguments, **PATHS[path])  # type: ignore[no-any-return]


def optimizer_class(library: str, name: str) -> type[torch.optim.Optimizer]:
    return getattr(torch.optim if library == "torch" else adaptim, name)  # type: ignore[no-any-return]


def tiny_model(seed: int = 0, width: int = 8) -> torch.nn.Sequential:
    """An MLP of a few hundred parameters: two weights, two biases."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, 3)
    )


def batches(
    steps: int, seed: int = 1, size: int = 16, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` regression batches for :func:`tiny_model`, the same for every run of a seed."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 6, generator=g, dtype=dtype),
            torch.randn(size, 3, generator=g, dtype=dtype),
        )
        for _ in range(steps)
    ]


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[str]:
    """The default loop: ``zero_grad()`` (fresh gradients), ``backward()``, ``step()``.

    Returns what each ``step()`` moved that it must leave in place: a parameter
    whose memory changed, or a gradient replaced by another tensor.
    """
    moved = []
    for index, (x, y) in enumerate(data):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        before = [(name, address(p), p.grad) for name, p in model.named_parameters()]
        optimizer.step()
        for name, where, grad in before:
            p = model.get_parameter(name)
            if address(p) != where:
                moved.append(f"step {index} moved parameter {name}")
            if p.grad is not grad:
                moved.append(f"step {index} replaced the gradient of {name}")
    return moved


def address(tensor: torch.Tensor) -> int:
    """Where a tensor's elements live (a DTensor's: its local shard's)."""
    local = getattr(tensor, "_local_tensor", tensor)
    return int(local.data_ptr())


def snapshot(params: Mapping[str, torch.Tensor] | torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of named parameters (DTensors gathered to full tensors)."""
    named = params.named_parameters() if isinstance(params, torch.nn.Module) else params.items()
    out = {}
    for name, p in named:
        tensor = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = tensor.detach().clone()
    return out


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, b = actual.detach().double(), expected.detach().double()
    tiny = torch.finfo(expected.dtype).tiny
    return (a - b).abs().max().item() / max(b.abs().max().item(), tiny)


def assert_params_match(
    actual: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    path: str,
    what: str = "adaptim against torch.optim",
) -> None:
    """Bit-identical on the default path, within :data:`RELATIVE` on the fused one."""
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual)} != {sorted(expected)}"
    for name, a in actual.items():
        b = expected[name]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{what}: {name} {a.dtype} {a.shape}"
        assert torch.isfinite(b).all(), f"{what}: {name} is not finite in the reference"
        if path == "default":
            assert torch.equal(a, b), f"{what}: {name} differs by {relative_error(a, b):.3g}"
        else:
            error = relative_error(a, b)
            assert error <= RELATIVE, f"{what}: {name} differs by {error:.3g} > {RELATIVE:g}"
