"""Rules with scalar state (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) reuse their recording.

The 0-d state tensors enter the memo as leaves (:class:`adaptim.torch._symbolic.SymTensor`),
so later steps recompute the slots and the new scalar state without running the
rule again, and the result stays bit-identical to torch.optim.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
import torch
from _threads import num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _engine

STEPS = 30
#: The 0-d state entries, which both paths compute on the host as torch does.
SCALARS = {"step", "mu_product", "eta", "mu"}

CASES = [
    ("NAdam", {}),
    ("NAdam", {"momentum_decay": 0.1, "weight_decay": 1e-2, "decoupled_weight_decay": True}),
    ("NAdam", {"maximize": True, "weight_decay": 1e-2}),
    ("ASGD", {}),
    # averaging starts within the run: a guard fails once, and a second memo takes over
    ("ASGD", {"t0": 5.0, "lambd": 1e-2, "weight_decay": 1e-3}),
]


def train(optimizer: Any, params: list[torch.nn.Parameter], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize("switch", ["foreach", "fused"])
@settings(max_examples=4, deadline=None)
@given(
    lr=st.floats(1e-4, 1e-1),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2]),
)
def test_recorded_a_few_times_and_identical_to_torch(
    name: str,
    options: dict[str, Any],
    switch: str,
    lr: float,
    seed: int,
    dtype: torch.dtype,
    threads: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    initial = [torch.randn(s, generator=generator, dtype=dtype) for s in [(7, 5), (5,), ()]]
    ours_params = [torch.nn.Parameter(x.clone()) for x in initial]
    theirs_params = [torch.nn.Parameter(x.clone()) for x in initial]
    ours = getattr(adaptim, name)(ours_params, lr=lr, **{switch: True}, **options)
    theirs = getattr(torch.optim, name)(theirs_params, lr=lr, foreach=False, **options)
    with (
        mock.patch.object(_engine, "trace", wraps=_engine.trace) as recorded,
        num_threads(threads),
    ):
        train(ours, ours_params, seed)
    train(theirs, theirs_params, seed)
    # At most one recording per memo: step 1 (ASGD's eta starts at lr), the steady
    # steps, and for ASGD with t0 inside the run, mu leaving 1 (computed, then read).
    assert recorded.call_count <= (4 if name == "ASGD" else 2), recorded.call_count
    expected = "native" if switch == "fused" else "foreach"
    assert ours.fused_status()[0].startswith(expected)
    for p, q in zip(ours_params, theirs_params, strict=True):
        mine, reference = {"param": p, **ours.state[p]}, {"param": q, **theirs.state[q]}
        assert mine.keys() == reference.keys()
        for key, value in reference.items():
            if switch == "foreach" or key in SCALARS:  # the replay and the scalar state: exact
                assert torch.equal(mine[key], value), key
            else:  # the native loop: to rounding (test_engine.py's tolerance)
                assert torch.allclose(mine[key], value, rtol=1e-4, atol=1e-6), key
