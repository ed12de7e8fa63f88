"""The native loop's state in huge pages: the same numbers, the same tensors, nothing shared moved.

:func:`adaptim.torch._hugepages.adopt` moves a partition's element-wise state
into one mapping advised for 2 MiB pages when its native kernel is first
bound. The tests set ``ADAPTIM_HUGEPAGES=1`` (the move is off by default)
and lower :data:`~adaptim.torch._hugepages.MIN_BYTES` so that small tensors
move too, and check what a user could observe: every parameter and state
value equals the run where nothing moves, bit for bit, with 1 and 2
threads, and agrees with torch.optim; each state tensor keeps its identity and
owns a storage of its own size (``torch.save`` writes its bytes only); a state
tensor another tensor views, or one in shared memory, stays where it is.
"""

from __future__ import annotations

import io
import sys

import pytest
import torch
from _threads import num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _hugepages

#: Algorithms with one, two and three element-wise state tensors, and their settings.
ALGORITHMS = {
    "SGD": {"lr": 1e-2, "momentum": 0.9},
    "Adagrad": {"lr": 1e-2},
    "AdamW": {"lr": 1e-2},
    "Adam": {"lr": 1e-2, "amsgrad": True},
    "Adamax": {"lr": 1e-2},
}

#: Whether this platform can advise huge pages (Linux); elsewhere nothing moves.
ADVISES = sys.platform.startswith("linux")


def run(
    name: str, sizes: list[int], threads: int, seed: int, cls: object = adaptim, **switches: bool
) -> tuple[list[torch.Tensor], list[torch.nn.Parameter], torch.optim.Optimizer]:
    """Parameters and state after three steps on ``threads`` threads (``cls``: the library)."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in sizes]
    optimizer = getattr(cls, name)(params, **ALGORITHMS[name], **switches)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        with num_threads(threads):
            optimizer.step()
    values = [t for p in params for t in (p.detach(), *optimizer.state[p].values())]
    return values, params, optimizer


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@settings(max_examples=4, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40_000), min_size=1, max_size=6),
    threads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_moved_state_gives_the_same_steps(
    name: str, sizes: list[int], threads: int, seed: int
) -> None:
    kept, _, _ = run(name, sizes, threads, seed, fused=True)  # (small: nothing moves)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_hugepages, "MIN_BYTES", 0)
        patch.setenv("ADAPTIM_HUGEPAGES", "1")
        moved, params, optimizer = run(name, sizes, threads, seed, fused=True)
    assert optimizer.fused_status()[0].startswith("native (1 partition)")
    for a, b in zip(kept, moved, strict=True):
        assert torch.equal(a, b)
    theirs, _, _ = run(name, sizes, 1, seed, cls=torch.optim, foreach=False)
    for a, b in zip(moved, theirs, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    state = [t for p in params for t in optimizer.state[p].values() if t.ndim > 0]
    for t in state:  # each its own storage of its own size
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    # Moved: a storage over the mapping (not resizable, unlike torch's own allocations).
    assert [not t.untyped_storage().resizable() for t in state] == [ADVISES] * len(state)


def test_moved_state_keeps_its_identity_and_saves_its_own_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_hugepages, "MIN_BYTES", 0)
    monkeypatch.setenv("ADAPTIM_HUGEPAGES", "1")
    params = [torch.nn.Parameter(torch.randn(n)) for n in (3_000, 5_000)]
    optimizer = adaptim.Adam(params, fused=True)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    exp_avg = optimizer.state[params[0]]["exp_avg"]
    before = exp_avg.clone()
    optimizer.step()
    assert optimizer.state[params[0]]["exp_avg"] is exp_avg
    assert not torch.equal(exp_avg, before)  # the step wrote the tensor the user holds
    buffer = io.BytesIO()
    torch.save(exp_avg, buffer)
    assert len(buffer.getvalue()) < 3_000 * 4 + 2_000  # not the other tensors of the mapping
    loaded = torch.load(io.BytesIO(buffer.getvalue()))
    assert torch.equal(loaded, exp_avg)


@pytest.mark.parametrize("shared", ["view", "shared_memory"])
def test_state_others_can_see_stays_in_place(shared: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state tensor viewed by another tensor, or in shared memory, is updated where it is."""
    monkeypatch.setattr(_hugepages, "MIN_BYTES", 0)
    monkeypatch.setenv("ADAPTIM_HUGEPAGES", "1")
    generator = torch.Generator().manual_seed(0)
    sizes = (2_000, 3_000)
    grads = [[torch.randn(n, generator=generator) for n in sizes] for _ in range(3)]
    start = [torch.randn(n, generator=generator) for n in sizes]
    results = []
    for library in (torch.optim, adaptim):
        params = [torch.nn.Parameter(s.clone()) for s in start]
        optimizer = library.Adam(params, **({"fused": True} if library is adaptim else {}))
        for p, g in zip(params, grads[0], strict=True):
            p.grad = g.clone()
        optimizer.step()
        results.append((params, optimizer))
    (_, reference), (params, optimizer) = results
    optimizer.load_state_dict(reference.state_dict())
    optimizer.param_groups[0]["fused"] = True  # (torch's groups say ``fused=None``)
    held = optimizer.state[params[1]]["exp_avg"]
    if shared == "view":
        seen = held[:100]
    else:
        held.share_memory_()
        seen = held
    where, loaded = held.data_ptr(), held.clone()
    for step in grads[1:]:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        optimizer.step()
    assert optimizer.fused_status()[0].startswith("native")
    assert held.data_ptr() == where
    assert held is optimizer.state[params[1]]["exp_avg"]
    assert not torch.equal(held, loaded)  # stepped in place, and what shares it sees the steps
    assert torch.equal(seen, held[: seen.numel()])


def test_nothing_moves_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hugepages, "MIN_BYTES", 0)
    monkeypatch.delenv("ADAPTIM_HUGEPAGES", raising=False)
    _, params, optimizer = run("Adam", [5_000, 7_000], 1, 0, fused=True)
    state = [t for p in params for t in optimizer.state[p].values() if t.ndim > 0]
    assert all(t.untyped_storage().resizable() for t in state)  # torch's own allocations
