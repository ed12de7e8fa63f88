"""The effective learning rate a trial records: what each coordinate's step is, per unit gradient.

An optimizer that can say it (``effective_lr()``, the rate of each coordinate
of each parameter) is probed at every evaluation of a trial
(:mod:`adaptim.lab.trial`). The probe scales heavy-ball momentum to its
steady-state gain and leaves out the coordinates an optimizer has not touched
yet, so rates compare like for like across optimizers; see
:class:`EffectiveLrProbe`. The records feed the report's effective-lr figure
and :func:`adaptim.lab.curves.effective_lr_decay`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from adaptim.lab.files import finite_or_none

#: Percentiles of the effective learning rate recorded at each evaluation.
EFFECTIVE_LR_PERCENTILES = (10, 50, 90)

#: At most this many coordinates enter the effective-lr percentiles (a fixed sample).
_EFFECTIVE_LR_SAMPLE = 65_536


class EffectiveLrProbe:
    """The effective learning rate of the coordinates the optimizer has actually touched.

    Per coordinate it is the optimizer's ``effective_lr()`` times, for
    heavy-ball momentum μ (with dampening d), the steady-state gain
    (1 − d)/(1 − μ) of its buffer: SGD with momentum 0.9 and lr 0.01 moves like
    plain SGD with lr 0.1, so the two compare like for like. Adam's first
    moment is an average, with gain 1, and needs no factor.

    Coordinates whose per-coordinate state still holds its initial value
    (a feature that never fired, a never-seen sample's weight) are left out:
    their rate is lr/ε, a number about the initial state rather than the
    optimizer. Plain SGD keeps no per-coordinate state, so all its
    coordinates count (its rate is lr everywhere, so its percentiles are the
    same either way; only ``active`` reads 1). The record gives percentiles
    over the touched coordinates
    (``p10``, ``p50``, ``p90``, from a fixed sample of at most 65,536), the
    share of coordinates touched (``active``), and each parameter tensor's own
    median (``median:<i>``, ``i`` counting the parameters in ``param_groups``
    order, at most :data:`_EFFECTIVE_LR_TENSORS` of them).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, seed: int) -> None:
        self.optimizer = optimizer
        self.sample: torch.Tensor | None = None
        self.seed = seed

    def _rates(self) -> list[torch.Tensor | None] | None:
        rates_of = getattr(self.optimizer, "effective_lr", None)
        if rates_of is None:
            return None
        rates: list[torch.Tensor | None] = rates_of()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        gains = [
            _gain(self.optimizer, group)
            for group in self.optimizer.param_groups
            for _ in group["params"]
        ]
        initial = _initial_state(self.optimizer)
        scaled: list[torch.Tensor | None] = []
        for p, rate, gain in zip(params, rates, gains, strict=True):
            if rate is None:
                scaled.append(None)
                continue
            rate = rate.detach().reshape(-1).to(torch.float64) * gain
            touched = _touched(self.optimizer.state.get(p, {}), initial, p.numel())
            scaled.append(rate if touched is None else torch.where(touched, rate, torch.nan))
        return scaled

    def __call__(self) -> dict[str, float | None] | None:
        rates = self._rates()
        if rates is None or all(r is None for r in rates):
            return None
        result: dict[str, float | None] = {}
        for index, rate in enumerate(rates[:_EFFECTIVE_LR_TENSORS]):
            if rate is not None:
                kept = rate[~rate.isnan()]
                result[f"median:{index}"] = (
                    finite_or_none(float(kept.median())) if kept.numel() else None
                )
        flat = torch.cat([r for r in rates if r is not None])
        if self.sample is None and flat.numel() > _EFFECTIVE_LR_SAMPLE:
            # Drawn on the CPU (the same sample on every device), kept where the rates are.
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            order = torch.randperm(flat.numel(), generator=generator, device="cpu")
            self.sample = order[:_EFFECTIVE_LR_SAMPLE].to(flat.device)
        if self.sample is not None:
            flat = flat[self.sample]
        kept = flat[~flat.isnan()]
        result["active"] = kept.numel() / max(1, flat.numel())
        if kept.numel() == 0:
            return {**result, **{f"p{p}": None for p in EFFECTIVE_LR_PERCENTILES}}
        quantiles = torch.tensor(
            [p / 100 for p in EFFECTIVE_LR_PERCENTILES], dtype=torch.float64, device=kept.device
        )
        values = torch.quantile(kept, quantiles).tolist()
        for p, v in zip(EFFECTIVE_LR_PERCENTILES, values, strict=True):
            result[f"p{p}"] = finite_or_none(v)
        return result


#: Per-tensor medians are recorded for at most this many parameter tensors.
_EFFECTIVE_LR_TENSORS = 64


def _gain(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> float:
    """The momentum gain of a group, or 1 where its "momentum" is an averaging weight.

    A rule with group-wide scalars defines its rate itself; its "momentum"
    (Schedule-Free, D-Adapt SGD) is an averaging weight, not a heavy ball,
    unless it keeps torch's heavy-ball buffer, ``momentum_buffer`` (SGD-HD).
    """
    algorithm = getattr(optimizer, "algorithm", None)
    if getattr(algorithm, "group_pass", None) is None:
        return _momentum_gain(group)
    assert algorithm is not None
    hp = {k: group[k] for k in algorithm.hparams if k in group}
    try:
        heavy_ball = "momentum_buffer" in algorithm.state(hp)
    except (KeyError, TypeError):
        heavy_ball = False
    return _momentum_gain(group) if heavy_ball else 1.0


def _momentum_gain(group: Mapping[str, Any]) -> float:
    """(1 − d)/(1 − μ) for heavy-ball momentum μ with dampening d; 1 without momentum."""
    momentum = float(group.get("momentum", 0.0) or 0.0)
    if not 0.0 < momentum < 1.0:
        return 1.0
    return (1.0 - float(group.get("dampening", 0.0) or 0.0)) / (1.0 - momentum)


def _initial_state(optimizer: torch.optim.Optimizer) -> Mapping[str, float | None]:
    """Each per-coordinate state entry's initial fill (``None``: created from the first gradient)."""
    algorithm = getattr(optimizer, "algorithm", None)
    if algorithm is None or not optimizer.param_groups:
        return {}
    group = optimizer.param_groups[0]
    try:
        return dict(algorithm.state({k: group[k] for k in algorithm.hparams if k in group}))
    except (KeyError, TypeError):
        return {}


def _touched(
    state: Mapping[str, Any], initial: Mapping[str, float | None], numel: int
) -> torch.Tensor | None:
    """Which coordinates have left their initial state; ``None``: no per-coordinate state."""
    touched: torch.Tensor | None = None
    for name, fill in initial.items():
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or value.numel() != numel:
            continue
        moved = value.detach().reshape(-1) != (0.0 if fill is None else fill)
        touched = moved if touched is None else touched | moved
    return touched
