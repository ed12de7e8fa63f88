"""DDP with gradients as bucket views, and ZeRO with parameters as bucket views (2 gloo ranks).

Both wrappers own the memory of the tensors the optimizer sees: DDP's reducer
writes each gradient into a slice of its all-reduce bucket, and ZeRO keeps the
parameters as views of its broadcast buckets. An optimizer that moved either
into buffers of its own would leave the wrapper writing, or broadcasting,
memory the model no longer reads: the ranks would silently diverge.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _cases import (
    ALGORITHMS,
    PATHS,
    assert_params_match,
    batches,
    cases,
    make_optimizer,
    optimizer_class,
    snapshot,
    tiny_model,
    train,
)
from _dist import RankRuns, each_case
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP

STEPS = 4
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def ddp(name: str, path: str, library: str, data: Batches) -> tuple[torch.nn.Module, list[str]]:
    model = DDP(tiny_model(), gradient_as_bucket_view=True)
    moved = train(model, make_optimizer(library, name, path, model.parameters()), data)
    return model.module, moved


def zero(name: str, path: str, library: str, data: Batches) -> tuple[torch.nn.Module, list[str]]:
    model = DDP(tiny_model())
    optimizer = ZeroRedundancyOptimizer(
        model.parameters(),
        optimizer_class=optimizer_class(library, name),
        parameters_as_bucket_view=True,
        **ALGORITHMS[name],
        **(PATHS[path] if library == "adaptim" else {}),
    )
    moved = train(model, optimizer, data)
    return model.module, moved


WRAPPERS = {"ddp": ddp, "zero": zero}


def worker(rank: int, world_size: int, path: str) -> dict[Any, Any]:
    """Every wrapper and algorithm on one path, torch.optim and adaptim, on this rank."""
    data = batches(STEPS, seed=1 + rank)  # each rank its own data: the all-reduce matters

    def run(wrapper: str, name: str) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for library in ("torch", "adaptim"):
            model, moved = WRAPPERS[wrapper](name, path, library, data)
            results[library] = snapshot(model)
            results[f"{library} moved"] = moved
        return results

    return each_case(rank, [(w, n) for w in WRAPPERS for n in ALGORITHMS], run)


def check_ranks(per_rank: list[dict[str, Any]], path: str) -> None:
    first, second = per_rank
    # torch.optim itself keeps the ranks equal: the set-up is sound.
    assert_params_match(second["torch"], first["torch"], "default", "torch.optim rank 1 vs 0")
    assert_params_match(second["adaptim"], first["adaptim"], "default", "adaptim rank 1 vs 0")
    assert_params_match(first["adaptim"], first["torch"], path)


@pytest.mark.parametrize(("name", "path"), cases(slow_fused=True))
def test_ddp_gradient_as_bucket_view(rank_runs: RankRuns, name: str, path: str) -> None:
    check_ranks(rank_runs.case(worker, path, key=("ddp", name)), path)


@pytest.mark.parametrize(("name", "path"), cases(slow_fused=True))
def test_ddp_step_keeps_bucket_view_gradients(rank_runs: RankRuns, name: str, path: str) -> None:
    for results in rank_runs.case(worker, path, key=("ddp", name)):
        assert results["torch moved"] == []
        assert results["adaptim moved"] == []


@pytest.mark.parametrize(("name", "path"), cases(slow_fused=True))
def test_zero_parameters_as_bucket_view(rank_runs: RankRuns, name: str, path: str) -> None:
    per_rank = rank_runs.case(worker, path, key=("zero", name))
    check_ranks(per_rank, path)
    for results in per_rank:
        assert results["adaptim moved"] == []
