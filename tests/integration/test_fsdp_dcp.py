"""FSDP2 (DTensor parameters) and distributed checkpoints (DCP), on 2 gloo ranks.

FSDP2's ``fully_shard`` gives each rank a shard of every parameter as a
DTensor whose local tensor lives in FSDP's own storage; the optimizer steps
those shards. ``torch.distributed.checkpoint.state_dict`` turns model and
optimizer into sharded or full state dicts, and DCP saves and loads them,
optionally with ``flatten_optimizer_state_dict``. A checkpoint written with
torch.optim must resume with adaptim, and the other way round, exactly as it
resumes with torch.optim.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _cases import (
    ALGORITHMS,
    assert_params_match,
    batches,
    cases,
    make_optimizer,
    saver_cases,
    snapshot,
    tiny_model,
    train,
)
from _dist import RankRuns, each_case
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

STEPS = 4  # half before the state dict or checkpoint, half after
SHARDED = StateDictOptions()
FULL = StateDictOptions(full_state_dict=True)  # on every rank (cpu_offload: rank 0 only)
Params = dict[str, torch.Tensor]


def sharded_model(seed: int = 0) -> torch.nn.Module:
    model = tiny_model(seed)
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    return model


def full_state(osd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{"fqn.state_name": tensor}`` of a full optimizer state dict."""
    return {
        f"{fqn}.{key}": value.detach().clone()
        for fqn, entries in osd["state"].items()
        for key, value in entries.items()
    }


def sharded_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    options: StateDictOptions = SHARDED,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of the model's and optimizer's state dicts (sharded by default), to load later."""
    return copy.deepcopy(
        (
            get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options),
        )
    )


def fsdp(name: str, path: str, data: list[Any]) -> dict[str, Any]:
    """torch.optim straight through; adaptim straight through, and resumed from state dicts.

    adaptim resumes from its own sharded and full state dicts, and from torch.optim's sharded one.
    """
    half = len(data) // 2
    model = sharded_model()
    optimizer = make_optimizer("torch", name, path, model.parameters())
    train(model, optimizer, data[:half])
    reference_state = full_state(get_optimizer_state_dict(model, optimizer, options=FULL))
    saved = {"torch's sharded": sharded_state(model, optimizer)}
    train(model, optimizer, data[half:])
    results: dict[str, Any] = {"torch": snapshot(model), "torch state": reference_state}

    model = sharded_model()
    optimizer = make_optimizer("adaptim", name, path, model.parameters())
    results["adaptim moved"] = train(model, optimizer, data[:half])
    results["adaptim state"] = full_state(get_optimizer_state_dict(model, optimizer, options=FULL))
    saved["sharded"] = sharded_state(model, optimizer)
    saved["full"] = sharded_state(model, optimizer, FULL)
    train(model, optimizer, data[half:])
    results["adaptim"] = snapshot(model)
    for kind, (model_state, optimizer_state) in saved.items():
        options = FULL if kind == "full" else SHARDED
        resumed = sharded_model(seed=1)
        resumed_optimizer = make_optimizer("adaptim", name, path, resumed.parameters())
        set_model_state_dict(resumed, model_state, options=options)
        set_optimizer_state_dict(resumed, resumed_optimizer, optimizer_state, options=options)
        train(resumed, resumed_optimizer, data[half:])
        results[f"adaptim resumed from {kind}"] = snapshot(resumed)
    return results


def checkpoint(
    name: str, path: str, flatten: bool, saver: str, data: list[Any], folder: str
) -> Params:
    """``saver`` trains half the steps and saves with DCP; the other library resumes."""
    loader = "adaptim" if saver == "torch" else "torch"
    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    half = len(data) // 2
    target = f"{folder}/{name}-{path}-{flatten}-{saver}"

    model = DDP(tiny_model())
    optimizer = make_optimizer(saver, name, path, model.parameters())
    train(model, optimizer, data[:half])
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer, options=options),
    }
    dcp.save(state, checkpoint_id=target)

    model = DDP(tiny_model(seed=1))
    optimizer = make_optimizer(loader, name, path, model.parameters())
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, optimizer, options=options),
    }
    dcp.load(state, checkpoint_id=target)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"], options=options)
    train(model, optimizer, data[half:])
    return snapshot(model.module)


DIRECTIONS = ("torch", "adaptim")  # who saves; the other library loads
FLATTEN = (False, True)


def worker(rank: int, world_size: int, path: str) -> dict[Any, Any]:
    data = batches(STEPS, seed=1 + rank)
    with tempfile.TemporaryDirectory() as local:
        # DCP needs one folder for all ranks: rank 0's.
        holder = [local]
        torch.distributed.broadcast_object_list(holder, src=0)
        folder = holder[0]
        keys: list[tuple[Any, ...]] = [("fsdp", name) for name in ALGORITHMS]
        keys += [("dcp", n, f, s) for n in ALGORITHMS for f in FLATTEN for s in DIRECTIONS]
        straight = {}

        def run(kind: str, name: str, *args: Any) -> Any:
            if kind == "fsdp":
                return fsdp(name, path, data)
            if name not in straight:  # the uninterrupted torch.optim run of DDP
                model = DDP(tiny_model())
                train(model, make_optimizer("torch", name, path, model.parameters()), data)
                straight[name] = snapshot(model.module)
            return {"torch": straight[name], "resumed": checkpoint(name, path, *args, data, folder)}

        results = each_case(rank, keys, run)
        torch.distributed.barrier()  # rank 0's folder outlives every rank's use of it
    return results


@pytest.mark.parametrize(("name", "path"), cases(slow_fused=True))
def test_fsdp2_fully_shard(rank_runs: RankRuns, name: str, path: str) -> None:
    first, second = rank_runs.case(worker, path, key=("fsdp", name))
    resumed = [f"adaptim resumed from {kind}" for kind in ("sharded", "full", "torch's sharded")]
    for key in ("torch", "adaptim", *resumed):
        assert_params_match(second[key], first[key], "default", f"{key}: rank 1 vs 0")
    assert first["adaptim moved"] == second["adaptim moved"] == []
    assert_params_match(first["adaptim state"], first["torch state"], path, "optimizer state")
    for key in ("adaptim", *resumed):
        assert_params_match(first[key], first["torch"], path, key)


@pytest.mark.parametrize(
    ("name", "path", "flatten", "saver"), saver_cases(FLATTEN, slow_fused=True)
)
def test_dcp_resumes_across_libraries(
    rank_runs: RankRuns, name: str, path: str, flatten: bool, saver: str
) -> None:
    first, second = rank_runs.case(worker, path, key=("dcp", name, flatten, saver))
    assert_params_match(second["resumed"], first["resumed"], "default", "rank 1 vs 0")
    assert_params_match(first["resumed"], first["torch"], path)
