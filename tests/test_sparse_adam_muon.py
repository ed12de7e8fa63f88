"""torch.optim's SparseAdam and Muon (issue 16 point 1) against torch.optim 2.13.

Parity is *bit* parity: parameters and state after 200 steps equal torch's
exactly, in float32 and float64, on configurations hypothesis draws (shapes,
hyperparameters, param groups, the batches). SparseAdam is driven by a real
``nn.Embedding(sparse=True)`` training loop; Muon by random gradients on
matrices of every aspect ratio. ``state_dict`` moves both ways mid-run.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp
from adaptim.lab.optimizers import make_optimizer

STEPS = 200
DTYPES = (torch.float32, torch.float64)


# -- SparseAdam -----------------------------------------------------------------------------
@st.composite
def sparse_adam_settings(draw: st.DrawFn) -> dict[str, Any]:
    settings_: dict[str, Any] = {
        "lr": draw(st.floats(1e-4, 0.3)),
        "betas": (draw(st.floats(0.0, 0.99)), draw(st.floats(0.5, 0.9999))),
        "eps": draw(st.floats(1e-10, 1e-3)),
    }
    if draw(st.booleans()):
        settings_["maximize"] = True
    return settings_


def _embeddings(seed: int, dtype: torch.dtype, sizes: list[tuple[int, int]]) -> torch.nn.ModuleList:
    torch.manual_seed(seed)
    layers = [torch.nn.Embedding(n, d, sparse=True) for n, d in sizes]
    return torch.nn.ModuleList(layers).to(dtype)


def _train_embeddings(
    model: torch.nn.ModuleList,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, ...]],
) -> None:
    """A regression of each embedding's looked-up rows on targets (duplicates and empty batches
    included): the loop users run."""
    for batch in batches:
        optimizer.zero_grad()
        loss = sum(((layer(i) - 0.5) ** 2).sum() for layer, i in zip(model, batch, strict=True))
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        optimizer.step()


def _batches(seed: int, sizes: list[tuple[int, int]], steps: int) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        batch = []
        for n, _dim in sizes:
            count = int(torch.randint(0, 9, (), generator=generator))  # 0: an empty gradient
            batch.append(torch.randint(0, n, (count,), generator=generator))
        out.append(tuple(batch))
    return out


def _groups(model: torch.nn.ModuleList, settings_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"params": layer.parameters(), **s} for layer, s in zip(model, settings_, strict=True)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN where torch has NaN (a large lr may overflow both alike)."""
    return a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _assert_same_state(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer) -> None:
    ours_state, their_state = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert ours_state.keys() == their_state.keys()
    for index, entries in their_state.items():
        assert ours_state[index].keys() == entries.keys()
        for key, value in entries.items():
            mine = ours_state[index][key]
            if isinstance(value, torch.Tensor):
                assert _same(mine, value), (index, key)
            else:  # SparseAdam's step: a Python int in both
                assert type(mine) is type(value) and mine == value, (index, key)


@pytest.mark.slow  # 200 steps x 2 dtypes x 4 examples
@settings(max_examples=4, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 30), st.integers(1, 6)), min_size=2, max_size=2),
    settings_=st.lists(sparse_adam_settings(), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_sparse_adam_is_bit_identical_to_torch(
    sizes: list[tuple[int, int]], settings_: list[dict[str, Any]], seed: int
) -> None:
    batches = _batches(seed, sizes, STEPS)
    for dtype in DTYPES:
        model = _embeddings(seed, dtype, sizes)
        twin = copy.deepcopy(model)
        ours = adaptim.SparseAdam(_groups(model, settings_))
        theirs = torch.optim.SparseAdam(_groups(twin, settings_))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _train_embeddings(model, ours, batches)
        _train_embeddings(twin, theirs, batches)
        for mine, reference in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(mine, reference), f"{dtype}: parameters differ"
        _assert_same_state(ours, theirs)


@pytest.mark.parametrize("direction", ["torch->adaptim", "adaptim->torch"])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16), first=st.integers(1, 30), settings_=sparse_adam_settings())
def test_sparse_adam_state_dict_moves_both_ways(
    direction: str, seed: int, first: int, settings_: dict[str, Any]
) -> None:
    """Save after ``first`` steps on one side, load on the other, continue: same as never moving."""
    sizes = [(12, 3)]
    batches = _batches(seed, sizes, first + 40)
    ours_cls, torch_cls = adaptim.SparseAdam, torch.optim.SparseAdam
    source_cls, target_cls = (
        (torch_cls, ours_cls) if direction == "torch->adaptim" else (ours_cls, torch_cls)
    )
    reference_model = _embeddings(seed, torch.float32, sizes)
    reference = torch_cls(reference_model.parameters(), **settings_)
    _train_embeddings(reference_model, reference, batches)

    model = _embeddings(seed, torch.float32, sizes)
    source = source_cls(model.parameters(), **settings_)
    _train_embeddings(model, source, batches[:first])
    saved = source.state_dict()
    target = target_cls(model.parameters(), **settings_)
    target.load_state_dict(saved)
    assert target.state_dict()["param_groups"] == saved["param_groups"]
    _train_embeddings(model, target, batches[first:])
    assert torch.equal(model[0].weight, reference_model[0].weight)
    _assert_same_state(target, reference)


def test_sparse_adam_refuses_dense_gradients_and_changes_nothing() -> None:
    layer = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = adaptim.SparseAdam(layer.parameters())
    layer(torch.ones(3)).sum().backward()
    with pytest.raises(RuntimeError, match=r"adaptim\.SparseAdam does not support dense gradients"):
        optimizer.step()
    with pytest.raises(RuntimeError, match=r"SparseAdam does not support dense gradients"):
        torch.optim.SparseAdam(layer.parameters()).step()  # torch's own refusal, same words
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))
    assert not optimizer.state


SPARSE_ADAM_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"lr": 0.0}, r"Invalid lr: 0\.0; allowed: 0 < lr"),
    ({"eps": 0.0}, r"Invalid eps: 0\.0; allowed: 0 < eps"),
    ({"betas": (1.0, 0.999)}, r"Invalid beta1: 1\.0; allowed: 0 <= beta1 < 1"),
    ({"betas": (0.9, -0.1)}, r"Invalid beta2: -0\.1"),
]


@pytest.mark.parametrize(("settings_", "message"), SPARSE_ADAM_REFUSED)
def test_sparse_adam_refuses_what_torch_refuses(settings_: dict[str, Any], message: str) -> None:
    param = torch.zeros(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match=message):
        adaptim.SparseAdam([param], **settings_)
    with pytest.raises(ValueError):
        torch.optim.SparseAdam([param], **settings_)


def test_sparse_adam_refuses_complex_parameters() -> None:
    with pytest.raises(RuntimeError, match=r"SparseAdam does not support complex parameters"):
        adaptim.SparseAdam([torch.zeros(2, dtype=torch.complex64, requires_grad=True)])


def test_sparse_adam_effective_lr_is_adams_step_size_over_the_root_second_moment() -> None:
    layer = torch.nn.Embedding(6, 2, sparse=True).double()
    optimizer = adaptim.SparseAdam(layer.parameters(), lr=0.01)
    assert optimizer.effective_lr() == [None]
    _train_embeddings(torch.nn.ModuleList([layer]), optimizer, _batches(0, [(6, 2)], 5))
    (rate,) = optimizer.effective_lr()
    state = optimizer.state[layer.weight]
    step = state["step"]
    expected = (
        0.01 * (1 - 0.999**step) ** 0.5 / (1 - 0.9**step) / (state["exp_avg_sq"].sqrt() + 1e-8)
    )
    assert rate is not None
    torch.testing.assert_close(rate, expected, rtol=1e-12, atol=0)


# -- Muon -----------------------------------------------------------------------------------
@st.composite
def muon_settings(draw: st.DrawFn) -> dict[str, Any]:
    settings_: dict[str, Any] = {
        "lr": draw(st.floats(1e-4, 0.1)),
        "weight_decay": draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.5)),
        "momentum": draw(st.floats(0.0, 0.99)),
        "nesterov": draw(st.booleans()),
        "ns_steps": draw(st.integers(0, 7)),
        "eps": draw(st.floats(1e-9, 1e-5)),
        "adjust_lr_fn": draw(st.sampled_from([None, "original", "match_rms_adamw"])),
    }
    if draw(st.booleans()):  # other quintics near Jordan's (far ones diverge to NaN)
        factors = [draw(st.floats(0.97, 1.03)) for _ in range(3)]
        default = (3.4445, -4.7750, 2.0315)
        settings_["ns_coefficients"] = tuple(f * d for f, d in zip(factors, default, strict=True))
    return settings_


SHAPES = st.tuples(st.integers(1, 10), st.integers(1, 10))


def _muon_run(
    cls: type[torch.optim.Optimizer],
    starts: list[torch.Tensor],
    settings_: list[dict[str, Any]],
    grads: list[list[torch.Tensor]],
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    params = [s.clone().requires_grad_() for s in starts]
    groups = [{"params": [p], **s} for p, s in zip(params, settings_, strict=True)]
    optimizer = cls(groups)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return params, optimizer


@pytest.mark.slow  # 200 steps x 2 dtypes x 2 sides x 3 examples, each step 3k matrix products
@settings(max_examples=3, deadline=None)
@given(
    shapes=st.lists(SHAPES, min_size=2, max_size=2),
    settings_=st.lists(muon_settings(), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_muon_is_bit_identical_to_torch(
    shapes: list[tuple[int, int]], settings_: list[dict[str, Any]], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    for dtype in DTYPES:
        note(f"{dtype}: {shapes} {settings_}")
        starts = [torch.randn(*s, generator=generator, dtype=dtype) for s in shapes]
        grads = [
            [torch.randn(*s, generator=generator, dtype=dtype) for s in shapes]
            for _ in range(STEPS)
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours, ours_opt = _muon_run(adaptim.Muon, starts, settings_, grads)
        theirs, their_opt = _muon_run(torch.optim.Muon, starts, settings_, grads)
        for mine, reference in zip(ours, theirs, strict=True):
            assert _same(mine, reference), f"{dtype}: parameters differ"
        _assert_same_state(ours_opt, their_opt)


@pytest.mark.parametrize("direction", ["torch->adaptim", "adaptim->torch"])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16), first=st.integers(1, 30), shape=SHAPES, hp=muon_settings())
def test_muon_state_dict_moves_both_ways(
    direction: str, seed: int, first: int, shape: tuple[int, int], hp: dict[str, Any]
) -> None:
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(*shape, generator=generator)
    grads = [[torch.randn(*shape, generator=generator)] for _ in range(first + 30)]
    theirs, reference = _muon_run(torch.optim.Muon, [start], [hp], grads)
    source_cls, target_cls = (
        (torch.optim.Muon, adaptim.Muon)
        if direction == "torch->adaptim"
        else (adaptim.Muon, torch.optim.Muon)
    )
    (p,), source = _muon_run(source_cls, [start], [hp], grads[:first])
    target = target_cls([p], **hp)
    saved = source.state_dict()
    target.load_state_dict(saved)
    assert target.state_dict()["param_groups"] == saved["param_groups"]
    for (g,) in grads[first:]:
        p.grad = g.clone()
        target.step()
    assert _same(p, theirs[0])
    _assert_same_state(target, reference)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_muon_refuses_parameters_that_are_not_matrices(shape: tuple[int, ...]) -> None:
    matrix = torch.zeros(2, 2, requires_grad=True)
    other = torch.zeros(shape, requires_grad=True)
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters"):
        torch.optim.Muon([matrix, other])
    message = (
        rf"adaptim\.Muon only supports 2-D parameters; param_groups\[0\]\['params'\]\[1\] "
        rf"has shape {re_shape(shape)}\. Give the others to a second optimizer"
    )
    with pytest.raises(ValueError, match=message):
        adaptim.Muon([matrix, other])
    optimizer = adaptim.Muon([matrix])
    with pytest.raises(ValueError, match=r"only supports 2-D parameters"):
        optimizer.add_param_group({"params": [other]})
    assert len(optimizer.param_groups) == 1
    with pytest.raises(ValueError, match=r"Muon only supports 2-D parameters; got one of shape"):
        anp.Muon([np.zeros((2, 2)), np.zeros(shape)])


def re_shape(shape: tuple[int, ...]) -> str:
    return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_muon_refuses_complex_parameters_and_sparse_gradients() -> None:
    with pytest.raises(RuntimeError, match=r"Muon does not support complex parameters"):
        adaptim.Muon([torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True)])
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 3])).sum().backward()
    with pytest.raises(RuntimeError, match=r"adaptim\.Muon does not support sparse gradients"):
        adaptim.Muon(embedding.parameters()).step()


MUON_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"lr": -1.0}, r"Invalid lr: -1\.0; allowed: 0 <= lr"),
    ({"momentum": -0.5}, r"Invalid momentum: -0\.5; allowed: 0 <= momentum"),
    ({"weight_decay": -0.1}, r"Invalid weight_decay: -0\.1"),
    ({"adjust_lr_fn": "rms"}, r"Invalid adjust_lr_fn: 'rms'; allowed: None, 'original'"),
    ({"ns_steps": 100}, r"Invalid ns_steps: 100; allowed: an integer 0 <= ns_steps < 100"),
    ({"ns_coefficients": (1.0, 2.0)}, r"Invalid ns_coefficients: \(1\.0, 2\.0\); expected three"),
    ({"nesterov": 1}, r"Invalid nesterov: 1; expected True or False"),
]


@pytest.mark.parametrize(("settings_", "message"), MUON_REFUSED)
@pytest.mark.parametrize("module", [adaptim, anp], ids=["torch", "numpy"])
def test_bad_muon_hyperparameters_are_refused(
    module: Any, settings_: dict[str, Any], message: str
) -> None:
    param: Any = torch.zeros(2, 2, requires_grad=True) if module is adaptim else np.zeros((2, 2))
    with pytest.raises((ValueError, TypeError), match=message):
        module.Muon([param], **settings_)


@settings(max_examples=4, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=SHAPES,
    dtype=st.sampled_from([np.float64, np.float32]),
    hp=muon_settings(),
)
def test_numpy_muon_follows_torch_to_bfloat16_precision(
    seed: int, shape: tuple[int, int], dtype: type, hp: dict[str, Any]
) -> None:
    """NumPy has no bfloat16: its Newton–Schulz runs in float32, torch's in bfloat16, so the
    steps agree to bfloat16's precision (2^-8 relative per product); after 10 steps the
    parameters differ by under 10% of the distance travelled."""
    hp = {**hp, "ns_coefficients": (3.4445, -4.7750, 2.0315), "ns_steps": 5}
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(*shape, generator=generator, dtype=torch.float64)
    grads = [torch.randn(*shape, generator=generator, dtype=torch.float64) for _ in range(10)]
    p = start.clone().to(getattr(torch, np.dtype(dtype).name)).requires_grad_()
    reference = torch.optim.Muon([p], **hp)
    w = start.numpy().astype(dtype)
    ours = anp.Muon([w], **hp)
    for grad in grads:
        p.grad = grad.to(p.dtype)
        reference.step()
        ours.step([grad.numpy().astype(dtype)])
    expected = p.detach().double().numpy()
    travelled = np.max(np.abs(expected - start.numpy()))
    assert np.max(np.abs(w - expected)) <= 0.1 * travelled + 1e-6
    assert ours.state_dict()["state"][0].keys() == {"momentum_buffer"}


def test_muon_effective_lr_is_the_adjusted_rate() -> None:
    p = torch.zeros(6, 2, requires_grad=True)
    optimizer = adaptim.Muon([p], lr=0.02)
    assert optimizer.effective_lr() == [None]
    p.grad = torch.ones(6, 2)
    optimizer.step()
    (rate,) = optimizer.effective_lr()
    assert rate is not None
    torch.testing.assert_close(rate, torch.full((6, 2), 0.02 * 3**0.5))


# -- the lab --------------------------------------------------------------------------------
def test_lab_muon_steps_matrices_with_muon_and_the_rest_with_adamw() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 4)
    y = torch.sin(x.sum(1, keepdim=True))
    optimizer = make_optimizer("muon", model.parameters(), {"lr": 3e-2})
    assert [p.ndim for g in optimizer.param_groups for p in g["params"]] == [2, 2]
    fallback = optimizer.fallback  # type: ignore[attr-defined]
    assert isinstance(fallback, adaptim.AdamW)
    assert [p.ndim for g in fallback.param_groups for p in g["params"]] == [1, 1]

    def loss() -> torch.Tensor:
        return ((model(x) - y) ** 2).mean()

    start = loss().item()
    for _ in range(100):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.5 * start
    assert all(optimizer.state[p] for p in optimizer.param_groups[0]["params"])
    assert all(fallback.state[p] for p in fallback.param_groups[0]["params"])
    saved = copy.deepcopy(optimizer.state_dict())
    optimizer.load_state_dict(saved)  # the lab's lr finder round-trips it


def test_lab_sparse_adam_skips_rows_without_gradient() -> None:
    """On a dense gradient the lab's SparseAdam moves only the rows with a nonzero gradient."""
    weight = torch.ones(4, 3, requires_grad=True)
    optimizer = make_optimizer("sparseadam", [weight], {"lr": 0.1})
    weight.grad = torch.zeros(4, 3)
    weight.grad[1] = torch.tensor([1.0, -2.0, 0.5])
    optimizer.step()
    assert torch.equal(weight[[0, 2, 3]], torch.ones(3, 3))
    torch.testing.assert_close(weight[1], torch.tensor([0.9, 1.1, 0.9]))


@pytest.mark.slow  # Dynamo's start-up
def test_sparse_adam_under_torch_compile_steps_eagerly_and_identically() -> None:
    """Sparse tensors do not trace: the compiled step falls back to the eager one."""
    model = _embeddings(0, torch.float32, [(6, 2)])
    twin = copy.deepcopy(model)
    ours = adaptim.SparseAdam(model.parameters(), lr=0.05)
    theirs = torch.optim.SparseAdam(twin.parameters(), lr=0.05)
    compiled = torch.compile(ours.step)
    for batch in _batches(0, [(6, 2)], 5):
        for layers, optimizer, step in ((model, ours, compiled), (twin, theirs, theirs.step)):
            optimizer.zero_grad()
            ((layers[0](batch[0]) - 0.5) ** 2).sum().backward()
            step()
    assert torch.equal(model[0].weight, twin[0].weight)
    _assert_same_state(ours, theirs)
