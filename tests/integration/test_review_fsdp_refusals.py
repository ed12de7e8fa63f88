"""What FSDP2 parameters (DTensors) cannot take is refused clearly, and nothing changes.

SM3 keeps one vector of row and column maxima concatenated, which no DTensor placement
describes: the first step used to end in DTensor's own error ("got mixed torch.Tensor
and DTensor"), naming no parameter or option. The refusal names both, and the step
changes no parameter and no state. (Memory-light states and Adafactor step on shards:
``test_fsdp_lowmem.py``.)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _cases import batches, tiny_model
from _dist import RankRuns

import adaptim

#: label -> (class, arguments, what the refusal must name)
REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "SM3": ("SM3", {}, "adaptim.SM3"),
}


def worker(rank: int, world_size: int) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    outcomes: dict[str, Any] = {}
    for label, (name, arguments, _) in REFUSED.items():
        model = tiny_model(width=16)
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
        optimizer = getattr(adaptim, name)(model.parameters(), **arguments)
        before = [p.full_tensor().clone() for p in model.parameters()]
        x, y = batches(1, seed=1 + rank)[0]
        torch.nn.functional.mse_loss(model(x), y).backward()
        try:
            optimizer.step()
            outcomes[label] = ("stepped", "")
        except Exception as error:  # the message is what is checked
            outcomes[label] = (type(error).__name__, str(error))
        after = [p.full_tensor() for p in model.parameters()]
        unchanged = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        outcomes[f"{label} unchanged"] = unchanged and not optimizer.state
    return outcomes


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("label", list(REFUSED))
def test_dtensor_parameters_are_refused_clearly(rank_runs: RankRuns, label: str) -> None:
    _, _, named = REFUSED[label]
    for outcome in rank_runs(worker):
        kind, message = outcome[label]
        assert kind == "RuntimeError", (kind, message)
        assert named in message and "DTensor" in message and "param_groups[0]" in message
        assert "Nothing was changed" in message
        assert outcome[f"{label} unchanged"]
