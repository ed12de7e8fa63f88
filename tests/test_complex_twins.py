"""Complex parameters: adaptim's torch twins against torch.optim, to the bit (issue 10).

torch.optim steps a complex parameter as a pair of reals (``view_as_real``) in
every optimizer but SGD, which adds the complex tensors as they are; Adam,
AdamW, Adagrad, RMSprop, Adadelta and Adamax fold the coupled weight decay
into the gradient in complex arithmetic before taking the view. A complex
``a + α·b`` rounds twice where the real kernel rounds once, so each twin
follows torch's choice (``Algorithm.complex_arithmetic``): parameters and
state must be bit-identical to torch's default (for-loop) implementation.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import adaptim

TWINS = [
    cls.__name__
    for cls in adaptim.OPTIMIZERS.values()
    if hasattr(torch.optim, cls.__name__) and cls.algorithm.complex_params
]
#: Options of each twin drawn besides ``weight_decay`` and ``maximize``.
OPTIONS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "SGD": {"momentum": st.sampled_from([0.0, 0.9]), "dampening": st.sampled_from([0.0, 0.3])},
    "Adam": {"amsgrad": st.booleans()},
    "AdamW": {"amsgrad": st.booleans()},
    "RMSprop": {"centered": st.booleans(), "momentum": st.sampled_from([0.0, 0.5])},
    "NAdam": {"decoupled_weight_decay": st.booleans()},
    "RAdam": {"decoupled_weight_decay": st.booleans()},
}
NO_WEIGHT_DECAY = {"Rprop"}
SHAPES = st.lists(st.integers(1, 9), min_size=0, max_size=2).map(tuple)


@st.composite
def settings_for(draw: st.DrawFn, name: str) -> dict[str, Any]:
    options = {key: draw(values) for key, values in OPTIONS.get(name, {}).items()}
    options["maximize"] = draw(st.booleans())
    if name not in NO_WEIGHT_DECAY:
        options["weight_decay"] = draw(st.sampled_from([0.0, 0.1, 0.37]))
    if name == "SGD":
        options["lr"] = draw(st.sampled_from([0.01, 0.3]))
        options["nesterov"] = options["momentum"] > 0 and options["dampening"] == 0
    return options


def _run(cls: Any, starts: list[torch.Tensor], grads: list[list[torch.Tensor]], **options: Any):
    params = [s.clone().requires_grad_() for s in starts]
    optimizer = cls(params, **options)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("name", TWINS)
@settings(max_examples=8, deadline=None)
@given(
    data=st.data(),
    shapes=st.lists(SHAPES, min_size=1, max_size=3),
    dtype=st.sampled_from([torch.complex64, torch.complex128]),
    seed=st.integers(0, 2**16),
)
def test_complex_parameters_are_bit_identical_to_torch(
    name: str,
    data: st.DataObject,
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype,
    seed: int,
) -> None:
    options = data.draw(settings_for(name), label="options")
    note(f"{name} {options} {shapes} {dtype}")
    generator = torch.Generator().manual_seed(seed)
    starts = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=generator, dtype=dtype) for s in shapes] for _ in range(4)]
    ours, mine = _run(getattr(adaptim, name), starts, grads, **options)
    theirs, reference = _run(getattr(torch.optim, name), starts, grads, **options)
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q), f"max difference {(p - q).abs().max()}"
    for p, q in zip(ours, theirs, strict=True):
        state, expected = mine.state[p], reference.state[q]
        assert set(state) == set(expected)
        for key, value in expected.items():
            assert state[key].dtype == value.dtype, key
            assert torch.equal(state[key], value), key
