"""Memory-light states (bf16, 8 bits, Adafactor's, SM3's) of FSDP2's DTensor parameters, 2 gloo ranks.

Each rank runs the rule on its local shard and keeps the state beside it
(``adaptim.torch._lowmem_shards``). Both ranks see the same batches, so FSDP2's
averaged gradient is each rank's own, exactly, and the sharded run can be
compared with one unsharded run of the same optimizer (on the reference path,
``foreach=False``, which the shards take too):

* ``state_dtype=torch.bfloat16``: bit-identical, since element ``i`` of a
  parameter draws the same rounding bits on whichever rank holds it; its
  full state dict is the unsharded run's state, bit for bit.
* ``state_bits=8``: blocks of 256 start at each local shard's first element.
  Where every shard's size is a multiple of 256 the blocks are the unsharded
  ones and the run is bit-identical; where not, it differs, and by no more
  than 8 bits differ from float32 state (the quantisation error, measured in
  the same run).

* Adafactor: its row and column statistics are summed over the ranks, so it
  agrees with an unsharded run to float32 rounding (:data:`ADAFACTOR_RELATIVE`).
* SM3: its row and column maxima are taken over the ranks (a maximum does not
  depend on the order): bit-identical.

Each time a DCP checkpoint (sharded) and a full state dict, saved half-way
and loaded into a fresh sharded model, continue bit-identically. Full state
dicts also move between sharded and unsharded models, both ways (bf16, SM3:
continuing bit-identically), except 8-bit's, whose block maxima are per
shard: refused, naming the shapes.
Parameters distributed by hand with ``Shard(1)`` and ``Replicate()`` check
the placements FSDP2 does not use: replicas stay equal, and bf16 stays
bit-identical to an unsharded run.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _dist import RankRuns
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

import adaptim

STEPS = 6  # half before the checkpoint, half after
FULL = StateDictOptions(full_state_dict=True)
#: label -> (optimizer, its options, what a refusal names)
OPTIMIZERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "bf16": ("Adam", {"state_dtype": torch.bfloat16}, "state_dtype"),
    "8-bit": ("Adam", {"state_bits": 8}, "state_bits"),
    "Adafactor": ("Adafactor", {}, "adaptim.Adafactor"),
    "SM3": ("SM3", {}, "adaptim.SM3"),
}
#: Those whose sharded runs store an unsharded run's very bits (8-bit: where shards
#: hold whole blocks, below).
EXACT = ("bf16", "SM3")
#: Adafactor's row and column statistics are sums over ranks: float32 rounding apart
#: from an unsharded run (measured: parameters 1.0e-7, full state 2.8e-7 after 6 steps;
#: by hand, Shard(0) 6.4e-8, Shard(1) 3.2e-8 after 3; summing locally only is O(1) off).
ADAFACTOR_RELATIVE = 1e-6
#: Layer widths. "uneven": 100 rows of 48 shard into 2,400 elements (9.375
#: blocks), 45 rows of 100 into 23 and 22 rows, so the second rank's blocks
#: start elsewhere than an unsharded run's. "aligned": shards of 4,096 elements.
WIDTHS = {"uneven": (48, 100, 45, 3), "aligned": (64, 128, 64, 3)}
Params = dict[str, torch.Tensor]


def make(label: str | None, params: Any) -> Any:
    """The optimizer of ``label`` (``None``: Adam with float32 state), lr 1e-2.

    On the reference path (``foreach=False``), which DTensors take anyway: a
    state dict carries the option into the optimizer that loads it.
    """
    name, options, _ = OPTIMIZERS[label] if label else ("Adam", {}, "")
    return getattr(adaptim, name)(params, lr=1e-2, foreach=False, **options)


def mlp(widths: tuple[int, ...], seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def sharded(widths: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = mlp(widths, seed)
    for layer in model[::2]:
        fully_shard(layer)
    return fully_shard(model)


def batches(widths: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)  # the same on every rank
    return [
        (torch.randn(16, widths[0], generator=g), torch.randn(16, widths[-1], generator=g))
        for _ in range(STEPS)
    ]


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: list[Any]) -> None:
    for x, y in data:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def snapshot(model: torch.nn.Module) -> Params:
    return {
        name: getattr(p, "full_tensor", p.detach)().detach().clone()
        for name, p in model.named_parameters()
    }


def rates(model: torch.nn.Module, optimizer: Any) -> Params:
    """``optimizer.effective_lr()`` by parameter name (DTensors gathered)."""
    return {
        name: getattr(rate, "full_tensor", rate.clone)()
        for (name, _), rate in zip(model.named_parameters(), optimizer.effective_lr(), strict=True)
        if rate is not None  # (SM3 has none)
    }


def unsharded(
    widths: tuple[int, ...], data: list[Any], label: str | None
) -> tuple[Params, Params, Params, Any]:
    """Parameters and effective learning rates after all steps; the optimizer's state
    half-way, and the model's and optimizer's full state dicts then."""
    model = mlp(widths)
    optimizer = make(label, model.parameters())
    train(model, optimizer, data[: STEPS // 2])
    half = {
        f"{name}.{key}": value.clone()
        for (name, _), entries in zip(
            model.named_parameters(), optimizer.state_dict()["state"].values(), strict=True
        )
        for key, value in entries.items()
    }
    saved = copy.deepcopy(
        (
            get_model_state_dict(model, options=FULL),
            get_optimizer_state_dict(model, optimizer, options=FULL),
        )
    )
    train(model, optimizer, data[STEPS // 2 :])
    lrs = rates(model, optimizer) if label != "Adafactor" else {}
    return snapshot(model), lrs, half, saved


def fsdp_case(label: str, shape: str, folder: str) -> dict[str, Any]:
    widths = WIDTHS[shape]
    data = batches(widths)
    half = STEPS // 2
    model = sharded(widths)
    optimizer = make(label, model.parameters())
    train(model, optimizer, data[:half])
    target = f"{folder}/{label}-{shape}"
    dcp.save(
        {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
        checkpoint_id=target,
    )
    full = copy.deepcopy(  # (its 0-d step tensors are the optimizer's own, counted on in place)
        (
            get_model_state_dict(model, options=FULL),
            get_optimizer_state_dict(model, optimizer, options=FULL),
        )
    )
    full_state = {
        f"{fqn}.{key}": value.clone()
        for fqn, entries in full[1]["state"].items()
        for key, value in entries.items()
    }
    train(model, optimizer, data[half:])
    results: dict[str, Any] = {"sharded": snapshot(model), "full state": full_state}
    results["rates"] = rates(model, optimizer) if label != "Adafactor" else {}

    for source in ("dcp", "full"):
        resumed = sharded(widths, seed=1)
        resumed_optimizer = make(label, resumed.parameters())
        if source == "dcp":
            state = {
                "model": get_model_state_dict(resumed),
                "optim": get_optimizer_state_dict(resumed, resumed_optimizer),
            }
            dcp.load(state, checkpoint_id=target)
            set_model_state_dict(resumed, state["model"])
            set_optimizer_state_dict(resumed, resumed_optimizer, state["optim"])
        else:
            model_state, optimizer_state = copy.deepcopy(full)  # (loading distributes them)
            set_model_state_dict(resumed, model_state, options=FULL)
            set_optimizer_state_dict(resumed, resumed_optimizer, optimizer_state, options=FULL)
        train(resumed, resumed_optimizer, data[half:])
        results[f"resumed from {source}"] = snapshot(resumed)
    # The full state dict into an unsharded model: bf16 and SM3 continue as an unsharded
    # run; 8-bit block maxima (one row per shard) are refused there ...
    plain = mlp(widths, seed=1)
    plain_optimizer = make(label, plain.parameters())
    model_state, optimizer_state = copy.deepcopy(full)
    set_model_state_dict(plain, model_state, options=FULL)
    try:
        set_optimizer_state_dict(plain, plain_optimizer, optimizer_state, options=FULL)
        train(plain, plain_optimizer, data[half:])
        results["unsharded from full"] = snapshot(plain)
    except ValueError as refusal:
        results["unsharded from full"] = str(refusal)
    reference = unsharded(widths, data, label)
    results["unsharded"], results["unsharded rates"], results["unsharded state"] = reference[:3]
    # ... and the other way round: an unsharded run's full state dict into a sharded model.
    resumed = sharded(widths, seed=1)
    resumed_optimizer = make(label, resumed.parameters())
    model_state, optimizer_state = copy.deepcopy(reference[3])
    set_model_state_dict(resumed, model_state, options=FULL)
    try:
        set_optimizer_state_dict(resumed, resumed_optimizer, optimizer_state, options=FULL)
        train(resumed, resumed_optimizer, data[half:])
        results["sharded from unsharded"] = snapshot(resumed)
    except ValueError as refusal:
        results["sharded from unsharded"] = str(refusal)
    if label == "8-bit":
        results["float32"] = unsharded(widths, data, None)[0]
    return results


def placements_case(label: str) -> dict[str, Any]:
    """The optimizer over tensors distributed by hand as ``Shard(0)``, ``Shard(1)``, ``Replicate()``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    layouts = {"Shard(0)": Shard(0), "Shard(1)": Shard(1), "Replicate()": Replicate()}
    g = torch.Generator().manual_seed(2)
    full = {name: torch.randn(37, 130, generator=g) for name in layouts}
    grads = [{name: torch.randn(37, 130, generator=g) for name in layouts} for _ in range(3)]
    params = {
        name: torch.nn.Parameter(distribute_tensor(full[name].clone(), mesh, [placement]))
        for name, placement in layouts.items()
    }
    plain = {name: torch.nn.Parameter(value.clone()) for name, value in full.items()}
    reference = {name: torch.nn.Parameter(value.clone()) for name, value in full.items()}
    results: dict[str, Any] = {}
    runs = (("distributed", params), ("unsharded", plain), ("float32", reference))
    for kind, tensors in runs:
        optimizer = make(None if kind == "float32" else label, tensors.values())
        for step in grads:
            for name, p in tensors.items():
                grad = step[name].clone()
                p.grad = (
                    distribute_tensor(grad, mesh, p.placements) if kind == "distributed" else grad
                )  # type: ignore[attr-defined]
            optimizer.step()
        results[kind] = {
            name: getattr(p, "full_tensor", p.detach)().detach().clone()
            for name, p in tensors.items()
        }
    results["local replica"] = {"Replicate()": params["Replicate()"].to_local().detach().clone()}
    # A placement other than Shard and Replicate is refused, naming it; nothing changes.
    pending = torch.nn.Parameter(DTensor.from_local(torch.ones(64, 80), mesh, [Partial()]))
    pending.grad = DTensor.from_local(torch.ones(64, 80), mesh, [Partial()])
    optimizer = make(label, [pending])
    try:
        optimizer.step()
        results["refusal"] = "stepped"
    except RuntimeError as refusal:
        results["refusal"] = str(refusal)
    results["refusal changed"] = bool(optimizer.state) or not torch.equal(
        pending.to_local(), torch.ones(64, 80)
    )
    return results


def worker(rank: int, world_size: int) -> dict[Any, Any]:
    from _dist import each_case

    with tempfile.TemporaryDirectory() as local:
        holder = [local]  # DCP needs one folder for all ranks: rank 0's
        torch.distributed.broadcast_object_list(holder, src=0)
        keys: list[tuple[str, ...]] = [*CASES]
        keys += [("placements", label) for label in OPTIMIZERS]

        def run(first: str, second: str) -> Any:
            if first == "placements":
                return placements_case(second)
            return fsdp_case(first, second, holder[0])

        results = each_case(rank, keys, run)
        torch.distributed.barrier()  # rank 0's folder outlives every rank's use of it
    return results


def error(a: Params, b: Params) -> float:
    """The largest ``max|a - b| / max|b|`` over the tensors."""
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)


def assert_equal(a: Params, b: Params, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name in a:
        assert a[name].dtype == b[name].dtype, f"{what}: {name}"
        assert torch.equal(a[name], b[name]), f"{what}: {name} differs by {error(a, b):.3g}"


def assert_within_quantisation(sharded: Params, unsharded: Params, float32: Params) -> None:
    """The sharded 8-bit run is as far from float32 state as the unsharded one (to 1.5x), and
    differs from it (other blocks), by at most twice that quantisation error.

    Measured (Adam, lr 1e-2): FSDP2 MLP after 6 steps, sharded 0.0183 and unsharded 0.0188
    from float32, 0.0153 apart; by hand, ``Shard(0)``/``Shard(1)`` after 3 steps,
    2.7e-4/2.0e-4 and 2.9e-4/3.1e-4 from float32, 3.7e-4/3.6e-4 apart.
    """
    quantisation = error(unsharded, float32)
    assert error(sharded, float32) <= 1.5 * quantisation, (error(sharded, float32), quantisation)
    shift = error(sharded, unsharded)
    assert 0 < shift <= 2 * quantisation, (shift, quantisation)


def assert_close(actual: Params, expected: Params, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    assert error(actual, expected) <= ADAFACTOR_RELATIVE, f"{what}: {error(actual, expected)}"


CASES = [("bf16", "uneven"), ("bf16", "aligned"), ("8-bit", "uneven"), ("8-bit", "aligned")]
CASES += [("Adafactor", "uneven"), ("SM3", "uneven")]


@pytest.mark.slow  # two processes
@pytest.mark.parametrize(("label", "shape"), CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_fsdp2_memory_light_state(rank_runs: RankRuns, label: str, shape: str) -> None:
    first, second = rank_runs.case(worker, key=(label, shape))
    for key in ("sharded", "resumed from dcp", "resumed from full"):
        assert_equal(second[key], first[key], f"{key}: rank 1 vs rank 0")
        if key != "sharded":  # a checkpoint continues as the run that was not interrupted
            assert_equal(first[key], first["sharded"], key)
    if label == "Adafactor":  # statistics summed over ranks: float32 rounding apart
        assert_close(first["sharded"], first["unsharded"], "sharded vs unsharded")
        assert_close(first["full state"], first["unsharded state"], "full state dict")
        assert_close(first["unsharded from full"], first["unsharded"], "unsharded, from full")
        assert_close(first["sharded from unsharded"], first["unsharded"], "sharded, from full")
    elif label in EXACT or shape == "aligned":  # bf16: the rounding bits; 8-bit: the blocks
        assert_equal(first["sharded"], first["unsharded"], "sharded vs unsharded")
        assert_equal(first["rates"], first["unsharded rates"], "effective_lr()")
    else:  # other blocks: 8-bit's own error, and no more
        assert_within_quantisation(first["sharded"], first["unsharded"], first["float32"])
    if label in EXACT:
        assert_equal(first["full state"], first["unsharded state"], "full state dict")
        assert_equal(first["unsharded from full"], first["unsharded"], "unsharded, from full")
        assert_equal(first["sharded from unsharded"], first["unsharded"], "sharded, from full")
    elif label == "8-bit":  # blocks per shard, whether or not they are the unsharded ones
        for key in ("sharded from unsharded", "unsharded from full"):
            assert "loads into the same sharding" in first[key], first[key]


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("label", list(OPTIMIZERS))
def test_shard_and_replicate_placements(rank_runs: RankRuns, label: str) -> None:
    first, second = rank_runs.case(worker, key=("placements", label))
    assert_equal(second["distributed"], first["distributed"], "rank 1 vs rank 0")
    replica = first["local replica"]["Replicate()"]
    assert torch.equal(replica, second["local replica"]["Replicate()"]), "replicas drifted apart"
    assert torch.equal(replica, first["distributed"]["Replicate()"])
    assert "Partial" in first["refusal"] and "Nothing was changed" in first["refusal"]
    assert OPTIMIZERS[label][2] in first["refusal"], first["refusal"]
    assert not first["refusal changed"]
    if label == "Adafactor":
        assert_close(first["distributed"], first["unsharded"], "distributed vs unsharded")
    elif label in EXACT:
        assert_equal(first["distributed"], first["unsharded"], "distributed vs unsharded")
    else:  # Shard(0) of 37 rows of 130 starts the second block at element 2,470
        assert torch.equal(first["distributed"]["Replicate()"], first["unsharded"]["Replicate()"])
        assert_within_quantisation(first["distributed"], first["unsharded"], first["float32"])
