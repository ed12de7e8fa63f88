"""The 2-rank harness fails loudly: a rank that raises, or hangs, fails the test with its story."""

from __future__ import annotations

import time

import pytest
import torch.distributed as dist
from _dist import RankFailed, run_ranks


def raise_on_rank_0(rank: int, world_size: int) -> int:
    if rank == 0:
        raise ValueError("rank 0 gives up")
    dist.barrier()  # waits for rank 0, which never comes
    return rank


def hang_on_rank_1(rank: int, world_size: int) -> int:
    if rank == 1:
        time.sleep(3600)
    return rank


def test_a_rank_that_raises_fails_the_run_with_its_traceback() -> None:
    with pytest.raises(RankFailed, match=r"(?s)rank 0 raised:.*ValueError: rank 0 gives up"):
        run_ranks(raise_on_rank_0, timeout=120)


@pytest.mark.slow
def test_a_hung_rank_is_killed_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(RankFailed, match=r"(?s)timed out after 12 s.*rank 1 was killed"):
        run_ranks(hang_on_rank_1, timeout=12)
    assert time.monotonic() - started < 30
