"""Train a small classifier with adaptim.Adam, and check it follows torch.optim.Adam.

Two interleaved spirals, a 2-64-64-2 MLP, full-batch training. The same run is
repeated with ``torch.optim.Adam`` (its default for-loop implementation and its
foreach one) from the same seed. adaptim's update rule is written once, in
``adaptim.algorithms``, and calls torch's fused multiply-adds where torch.optim
does, so the trajectories agree bit for bit even after hundreds of float32
steps, where training would amplify any difference in the last bit. Then a few
other adaptim optimizers train the same model, drop-in.

Run: ``python examples/demo.py``. It needs only the optimizers (``pip install
adaptim``: torch and numpy), not the lab; ``make demo`` runs the lab's study.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

import adaptim

STEPS = 400


def spirals(
    n_per_class: int = 300, noise: float = 0.15, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals: a classic problem a linear model cannot solve."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.25, 3 * math.pi, n_per_class)
    arms = []
    for label, phase in ((0, 0.0), (1, math.pi)):
        xy = torch.stack([t * torch.cos(t + phase), t * torch.sin(t + phase)], dim=1) / (
            3 * math.pi
        )
        arms.append(
            (
                xy + noise * torch.randn(xy.shape, generator=generator) / 3,
                torch.full((n_per_class,), label),
            )
        )
    x = torch.cat([a[0] for a in arms])
    y = torch.cat([a[1] for a in arms])
    return x, y


def train(
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer], seed: int = 0
) -> tuple[nn.Module, list[float]]:
    x, y = spirals()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
    )
    optimizer = make_optimizer(list(model.parameters()))
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


def accuracy(model: nn.Module) -> float:
    x, y = spirals()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def deviation(a: nn.Module, b: nn.Module) -> float:
    return max(
        ((x - y).abs().max() / y.abs().max()).item()
        for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )


def main() -> dict[str, float]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(
        f"adaptim {adaptim.__version__}, torch {torch.__version__}: {STEPS} full-batch steps on two spirals\n"
    )

    start = time.perf_counter()
    ours, our_losses = train(lambda params: adaptim.Adam(params, lr=1e-2))
    elapsed = time.perf_counter() - start
    theirs, _ = train(lambda params: torch.optim.Adam(params, lr=1e-2, foreach=False))
    foreach, _ = train(lambda params: torch.optim.Adam(params, lr=1e-2, foreach=True))
    for step in (0, 49, 99, 199, STEPS - 1):
        print(f"  step {step + 1:4d}   loss {our_losses[step]:.4f}")
    print(f"\nadaptim.Adam: train accuracy {accuracy(ours):.3f} in {elapsed:.1f} s")
    print(
        f"largest relative parameter difference after {STEPS} float32 steps:\n"
        f"  adaptim.Adam vs torch.optim.Adam (for-loop): {deviation(ours, theirs):.1e}\n"
        f"  torch.optim.Adam foreach vs for-loop:        {deviation(foreach, theirs):.1e}\n"
    )

    results = {"adam": our_losses[-1]}
    others: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
        "sgd (momentum 0.9)": lambda ps: adaptim.SGD(ps, lr=0.1, momentum=0.9),
        "adagrad": lambda ps: adaptim.Adagrad(ps, lr=5e-2),
        "rmsprop": lambda ps: adaptim.RMSprop(ps, lr=3e-3),
        "lamb": lambda ps: adaptim.LAMB(ps, lr=1e-2),
    }
    print("the same model with other adaptim optimizers:")
    for name, make in others.items():
        model, losses = train(make)
        results[name] = losses[-1]
        print(f"  {name:20s} final loss {losses[-1]:.4f}   accuracy {accuracy(model):.3f}")
    return results


if __name__ == "__main__":
    main()
