"""Memory-light states: bf16 with stochastic rounding, and block-wise 8 bits against bitsandbytes.

The references are float32 Adam (adaptim's, which matches torch.optim) and
bitsandbytes 0.50.2's CPU ``Adam8bit``, its ``create_dynamic_map`` and its
block-wise (de)quantisation. bitsandbytes' CPU quantiser is not round to
nearest (a binary search over the code that lands up to a few codes off,
and never on 0.0), so codes are compared by their error, not one by one.
"""

from __future__ import annotations

import copy
import io
import math
import re
from unittest.mock import patch

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch
from _threads import num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _lowmem, _lowmem_codes, _lowmem_native_source, _mkl_sqrt, _rounding

#: The optimizers whose signature offers state_dtype and state_bits.
LOW_MEMORY = [
    name
    for name, cls in adaptim.OPTIMIZERS.items()
    if "state_bits" in cls.__init__.__code__.co_varnames
]


def _bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and above ``x`` in magnitude (truncation and one ulp more)."""
    low_bits = x.view(torch.int32) & -65536
    return low_bits.view(torch.float32), (low_bits + 65536).view(torch.float32)


@given(
    st.lists(
        st.floats(2.0**-100, 2.0**100, width=32) | st.floats(-(2.0**100), -(2.0**-100), width=32),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=25)
def test_stochastic_rounding_is_unbiased(values: list[float], seed: int) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    draws = 4096
    repeated = x.repeat(draws, 1)
    rounded = _rounding.stochastic_round_bf16(repeated, seed)
    low, high = _bf16_neighbours(x)
    as_float = rounded.float()
    assert bool(((as_float == low) | (as_float == high)).all()), "only the two neighbours"
    # Each draw is off by at most one ulp; a rounding with zero mean has a
    # variance of at most ulp²/4, so the mean of the draws lies within
    # 6 standard errors of x but for a chance below 1e-8. Rounding to nearest
    # (or truncation) misses by a fixed fraction of an ulp and fails here.
    ulp = (high - low).double().abs()
    error = as_float.double().mean(dim=0) - x.double()
    bound = 6 * ulp / (2 * math.sqrt(draws))
    assert bool((error.abs() <= bound).all()), (error / ulp).tolist()


def test_stochastic_rounding_keeps_special_values() -> None:
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, -2.5])
    rounded = _rounding.stochastic_round_bf16(x, 0).float()
    assert torch.equal(rounded[:4], x[:4])
    assert math.isnan(rounded[4]) and rounded[5:].tolist() == [1.0, -2.5]


@given(
    st.lists(st.integers(0, 2**20 - 1), min_size=1, max_size=20),
    st.integers(0, 2**32 - 1),
    st.sampled_from([16, 0]),
)
@settings(max_examples=25)
def test_rounding_noise_is_the_mixer_of_index_xor_key(
    indices: list[int], stream: int, shift: int
) -> None:
    """torch's int64 arithmetic computes the 32-bit mixer exactly, as C's uint32 does."""
    noise = _rounding.rounding_noise(max(indices) + 1, stream, shift=shift)
    for i in indices:
        assert int(noise[i]) == (_rounding.mix32(i ^ stream) >> shift) & 0xFFFF


def test_rounding_noise_is_uniform_over_consecutive_elements() -> None:
    """Each of the 16 bits of either half is a fair coin over 2¹⁶ consecutive elements.

    The two halves of one hash (a first moment's and its partner's bits) are
    uncorrelated, and so are the bits of two parameters' keys.
    """
    count = 1 << 16
    bound = 6 / math.sqrt(count)  # 6 standard errors of a correlation of independent draws
    for step in range(3):
        stream = _rounding.stream_key(0, 3, "exp_avg_sq", step)
        assert stream == _rounding.stream_key(0, 3, "exp_avg", step)
        halves = []
        for key in ("exp_avg", "exp_avg_sq"):
            noise = _rounding.rounding_noise(count, stream, shift=_rounding.noise_shift(key))
            bits = (noise.unsqueeze(1) >> torch.arange(16)) & 1
            # a fair bit's mean over 2¹⁶ draws is within 6 standard errors (1/512) of 1/2
            assert float((bits.float().mean(0) - 0.5).abs().max()) < 6 / 512
            halves.append(noise.float())
        correlation = torch.corrcoef(torch.stack(halves))[0, 1]
        assert abs(float(correlation)) < bound
        other = _rounding.rounding_noise(count, _rounding.stream_key(0, 4, "exp_avg_sq", step))
        correlation = torch.corrcoef(torch.stack([halves[0], other.float()]))[0, 1]
        assert abs(float(correlation)) < bound


def test_each_partner_entry_shares_the_hash_of_an_entry_of_its_rule() -> None:
    """Every pair of ``ROUNDING_PARTNERS`` names two entries that one memory-light rule keeps."""
    states = []
    for name in LOW_MEMORY:
        p = torch.nn.Parameter(torch.zeros(8))
        options = {"momentum": 0.9} if name == "rmsprop" else {}
        optimizer = adaptim.OPTIMIZERS[name]([p], state_dtype=torch.bfloat16, **options)
        p.grad = torch.ones(8)
        optimizer.step()
        states.append(set(optimizer.state[p]))
    for partner, first in _rounding.ROUNDING_PARTNERS.items():
        assert any({partner, first} <= keys for keys in states), (partner, first)
        assert _rounding.noise_shift(partner) == 0 and _rounding.noise_shift(first) == 16


def _regression(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 1))
    x = torch.randn(256, 32)
    y = torch.sin(x[:, :4].sum(1, keepdim=True))
    return model, x, y


def _train(name: str, steps: int = 150, **options: object) -> tuple[list[torch.Tensor], float]:
    model, x, y = _regression()
    optimizer = adaptim.OPTIMIZERS[name](model.parameters(), lr=3e-3, **options)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], float(loss.detach())


def _gap(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """‖ours - reference‖ over how far the reference moved from the start."""
    start = [p.detach() for p in _regression()[0].parameters()]
    distance = sum(float((a - b).square().sum()) for a, b in zip(ours, reference, strict=True))
    moved = sum(float((b - s).square().sum()) for b, s in zip(reference, start, strict=True))
    return math.sqrt(distance / moved)


def test_bf16_adam_tracks_fp32_adam_and_is_reproducible() -> None:
    fp32, fp32_loss = _train("adam")
    bf16, bf16_loss = _train("adam", state_dtype=torch.bfloat16)
    again, _ = _train("adam", state_dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(bf16, again, strict=True))
    assert _gap(bf16, fp32) < 0.02
    assert bf16_loss < 1.1 * fp32_loss


def test_bf16_second_moment_decays_as_fp32s_when_gradients_shrink() -> None:
    """β₂·v is within half a bf16 ulp of v: round to nearest keeps v from decaying.

    After the gradients shrink 100-fold, fp32 Adam's mean v decays to 0.243
    by step 600; bf16 rounded to nearest stays at 0.363 (+49%), which this
    test would catch; stochastic rounding follows fp32 (measured 0.243).
    """
    second_moments = []
    for options in ({}, {"state_dtype": torch.bfloat16}):
        generator = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.zeros(4096))
        optimizer = adaptim.Adam([p], lr=1e-3, **options)
        for t in range(600):
            scale = 1.0 if t < 200 else 0.01
            p.grad = scale * (torch.randn(4096, generator=generator) + 1.0)
            optimizer.step()
        second_moments.append(float(optimizer.state[p]["exp_avg_sq"].float().mean()))
    fp32, bf16 = second_moments
    assert abs(bf16 / fp32 - 1) < 0.02, (fp32, bf16)


@pytest.mark.parametrize("name", LOW_MEMORY)
def test_every_low_memory_optimizer_keeps_narrow_state_and_tracks_fp32(name: str) -> None:
    """64×64 = 4096 elements: the smallest tensor that bitsandbytes quantises."""
    p0 = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    grads = [torch.randn(64, 64, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    results = {}
    for label, options in {
        "fp32": {},
        "bf16": {"state_dtype": torch.bfloat16},
        "8bit": {"state_bits": 8},
    }.items():
        p = torch.nn.Parameter(p0.clone())
        optimizer = adaptim.OPTIMIZERS[name]([p], lr=1e-3, **options)
        for g in grads:
            p.grad = g + 0.1 * p.detach()  # a gradient that depends on the weights
            optimizer.step()
        state = optimizer.state[p]
        moments = [k for k, v in state.items() if v.ndim and not k.endswith("_absmax")]
        assert moments
        want = {"fp32": torch.float32, "bf16": torch.bfloat16, "8bit": torch.uint8}[label]
        assert {state[k].dtype for k in moments} == {want}
        results[label] = p.detach()
    moved = float((results["fp32"] - p0).norm())
    for label in ("bf16", "8bit"):
        assert float((results[label] - results["fp32"]).norm()) < 0.1 * moved, label


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"state_dtype": torch.float16}, "Invalid state_dtype: torch.float16; allowed: None"),
        ({"state_dtype": "float64"}, "Invalid state_dtype: 'float64'; allowed: None"),
        ({"state_bits": 4}, "Invalid state_bits: 4; allowed: None or 32"),
        ({"state_bits": True}, "Invalid state_bits: True; allowed"),
        ({"state_dtype": torch.bfloat16, "state_bits": 8}, "choose at most one"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        adaptim.Adam([torch.nn.Parameter(torch.zeros(3))], **options)


def test_low_memory_states_refuse_sparse_gradients() -> None:
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = adaptim.Adagrad(embedding.parameters(), state_dtype=torch.bfloat16)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"state_dtype=torch\.bfloat16 does not support sparse"):
        optimizer.step()


def test_low_memory_states_refuse_complex_parameters_when_they_are_added() -> None:
    with pytest.raises(TypeError, match="state_bits=8 does not support complex parameters"):
        adaptim.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))], state_bits=8)


@pytest.mark.parametrize("options", [{"state_dtype": torch.bfloat16}, {"state_bits": 8}])
def test_state_dict_round_trips_and_moves_between_formats(options: dict[str, object]) -> None:
    model, x, y = _regression()
    optimizer = adaptim.Adam(model.parameters(), lr=1e-3, **options)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    twin_model = copy.deepcopy(model)
    twin = adaptim.Adam(twin_model.parameters(), lr=1e-3, **options)
    twin.load_state_dict(saved)
    loaded = twin.state_dict()["state"]
    for index, entries in saved["state"].items():
        assert loaded[index].keys() == entries.keys()
        for key, value in entries.items():
            assert torch.equal(loaded[index][key], value), key
    # A plain optimizer loads the decoded values; loading those back is exact.
    plain = adaptim.Adam(copy.deepcopy(model).parameters(), lr=1e-3)
    plain.load_state_dict(saved)
    decoded = plain.state_dict()["state"]
    for index, p in enumerate(model.parameters()):
        assert {k: v.dtype for k, v in decoded[index].items() if v.ndim} == {
            "exp_avg": torch.float32,
            "exp_avg_sq": torch.float32,
        }
        expected = optimizer._decoded(p, optimizer.state[p])
        assert torch.equal(decoded[index]["exp_avg_sq"], expected["exp_avg_sq"])
    again = adaptim.Adam(copy.deepcopy(model).parameters(), lr=1e-3, **options)
    again.load_state_dict(plain.state_dict())
    for index, entries in again.state_dict()["state"].items():
        for key, value in entries.items():
            if not key.endswith("_absmax"):  # re-encoding moves a block's max to a code point
                assert torch.equal(value, saved["state"][index][key]), key


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, count: int) -> None:
    x, y = _regression()[1:]
    for _ in range(count):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


@given(
    st.sampled_from([{"state_dtype": torch.bfloat16}, {"state_bits": 8}]),
    st.sampled_from(["adam", "adamw", "rmsprop", "adagrad"]),
    st.integers(0, 6),
    st.integers(1, 4),
    st.sampled_from([{}, {"foreach": False}]),
)
@settings(max_examples=20, deadline=None)
def test_saved_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(
    options: dict[str, object], name: str, before: int, after: int, path: dict[str, object]
) -> None:
    """The rounding bits depend on (parameter, entry, step) only: all of it is in ``state_dict``."""
    cls = adaptim.OPTIMIZERS[name]
    model = _regression()[0]
    optimizer = cls(model.parameters(), lr=3e-3, **options, **path)
    _steps(model, optimizer, before)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    _steps(model, optimizer, after)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_model = _regression(seed=1)[0]
    resumed_model.load_state_dict(saved["model"])
    resumed = cls(resumed_model.parameters(), lr=3e-3, **options, **path)
    resumed.load_state_dict(saved["optimizer"])
    _steps(resumed_model, resumed, after)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for index, entries in optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            assert torch.equal(resumed.state_dict()["state"][index][key], value), key


def test_state_dict_of_torch_optim_loads_into_bf16_states_and_resumes_deterministically() -> None:
    model = _regression()[0]
    reference = torch.optim.Adam(model.parameters(), lr=3e-3)
    _steps(model, reference, 3)
    saved = copy.deepcopy(reference.state_dict())
    finals = []
    for _ in range(2):
        twin = copy.deepcopy(model)
        optimizer = adaptim.Adam(twin.parameters(), lr=3e-3, state_dtype=torch.bfloat16)
        optimizer.load_state_dict(copy.deepcopy(saved))  # (its ``step`` tensors are shared)
        assert all(s["exp_avg"].dtype == torch.bfloat16 for s in optimizer.state.values())
        _steps(twin, optimizer, 3)
        finals.append([p.detach().clone() for p in twin.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))


# -- the native loop against the reference path ----------------------------------------


def _decoded_states(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    return optimizer._decoded(p, optimizer.state[p])  # type: ignore[attr-defined, no-any-return]


def _bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 values apart ``a`` and ``b`` (bf16 values as float32, same sign) are."""
    return ((a.view(torch.int32) >> 16) - (b.view(torch.int32) >> 16)).abs()


@pytest.mark.slow
@given(
    st.sampled_from(LOW_MEMORY),
    st.just({"state_dtype": torch.bfloat16}),
    st.sampled_from([[(64, 80)], [(5000,), (300,), (40, 130)], [(33000,)]]),
    st.integers(1, 3),
    st.booleans(),
    st.integers(0, 2**31),
)
@settings(max_examples=15, deadline=None)
def test_native_loop_matches_the_reference_path(
    name: str,
    options: dict[str, object],
    shapes: list[tuple[int, ...]],
    steps: int,
    maximize: bool,
    seed: int,
) -> None:
    """The default bf16 step (one native loop over encoded state) against ``foreach=False``.

    Both draw the same rounding bits; the rule's float32 arithmetic differs in
    rounding (``sqrt``, a reciprocal for a division), which moves a stored
    value to the neighbouring bf16 value on a small fraction of elements.
    Measured: the states agreed exactly on every drawn case so far; the bound
    allows 1% of elements one step apart. The result does not depend on the
    thread count. (8 bits: bit for bit, the next test.)
    """
    generator = torch.Generator().manual_seed(seed)
    starts = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(steps)]
    runs = {}
    for label, path, threads in (
        ("native", {}, 1),
        ("two", {}, 2),
        ("reference", {"foreach": False}, 1),
    ):
        params = [torch.nn.Parameter(start.clone()) for start in starts]
        optimizer = adaptim.OPTIMIZERS[name](params, lr=1e-3, maximize=maximize, **options, **path)
        with num_threads(threads):  # (2: each thread an equal share of the 8-bit blocks)
            for step_grads in grads:
                for p, g in zip(params, step_grads, strict=True):
                    p.grad = g.clone()
                optimizer.step()
        status = optimizer.fused_status()[0]
        assert status.startswith("native" if path == {} else "reference"), status
        runs[label] = (params, optimizer)
    (native, fast), (reference, slow) = runs["native"], runs["reference"]
    params, other = runs["two"]
    for p, q in zip(native, params, strict=True):
        assert torch.equal(p, q)
        for key, value in fast.state[p].items():
            assert torch.equal(value, other.state[q][key]), key
    for p, r in zip(native, reference, strict=True):
        off = ((p - r).abs() > 1e-5 * r.abs() + 1e-6).float().mean()
        assert float(off) <= 0.01, float(off)
        for key, value in fast.state[p].items():
            other = slow.state[r][key]
            if value.dtype == torch.uint8:
                apart = (value.int() - other.int()).abs()
            elif value.dtype == torch.bfloat16:
                apart = _bf16_ulps(value.float(), other.float())
            else:  # block maxima, fp32 state of small tensors, step
                assert torch.allclose(value.float(), other.float(), rtol=1e-5, atol=1e-7), key
                continue
            assert int(apart.max()) <= 2, key
            assert float((apart > 0).float().mean()) <= 0.01, key


#: Options drawn for the 8-bit loop, each kept where the optimizer takes it.
_OPTIONS_8BIT = [
    {},
    {"maximize": True},
    {"weight_decay": 1e-2},
    {"amsgrad": True},
    {"centered": True, "momentum": 0.9},
    {"eps": 1e-3, "lr": 0.1},
]


def _steps_on_three_paths(
    name: str,
    options: dict[str, object],
    starts: list[torch.Tensor],
    grads: list[list[torch.Tensor]],
    steps: int,
) -> list[tuple[list[torch.nn.Parameter], torch.optim.Optimizer]]:
    """``steps`` 8-bit steps natively on 1 and 2 threads and on ``foreach=False``."""
    runs = []
    for path, threads in (({}, 1), ({}, 2), ({"foreach": False}, 1)):
        params = [torch.nn.Parameter(start.clone()) for start in starts]
        optimizer = adaptim.OPTIMIZERS[name](
            params, state_bits=8, **{"lr": 1e-3, **options, **path}
        )
        with num_threads(threads):
            for step in range(steps):
                for k, p in enumerate(params):
                    p.grad = grads[k * steps + step][0].clone()
                optimizer.step()
        status = optimizer.fused_status()[0]
        assert status.startswith("native" if path == {} else "reference"), status
        runs.append((params, optimizer))
    return runs


@pytest.mark.slow  # (each rule and option set compiles its own kernel, once per machine)
@given(
    st.sampled_from(LOW_MEMORY),
    st.sampled_from(_OPTIONS_8BIT),
    st.integers(4096, 9000),
    st.lists(st.integers(1, 9000), max_size=2),
    st.integers(1, 3),
    st.floats(0.0, 0.5),
    st.integers(0, 2**31),
    st.booleans(),
)
@settings(max_examples=25, deadline=None)
def test_native_8bit_loop_is_the_reference_path_bit_for_bit(
    name: str,
    options: dict[str, object],
    first: int,
    others: list[int],
    steps: int,
    zeros: float,
    seed: int,
    exact_loop: bool,
) -> None:
    """``state_bits=8``'s native loop stores what ``foreach=False`` stores, to the last bit.

    With ``EXACT_8BIT`` (drawn here; off by default, for speed) it does so bit
    for bit; the default loop agrees to float32 rounding, with the same bits
    on 1 and 2 threads.

    The rule's arithmetic is the reference's operation for operation (a
    division by a step's scalar divides, as ATen's ``tensor / float``), and
    ``sqrt`` is ``torch.sqrt``'s (MKL's algorithm in C, where
    :func:`._mkl_sqrt.emulated` found it to give MKL's bits: elsewhere the
    loop takes ``sqrtf``, correctly rounded, and agrees to float32 rounding).
    Gradients hold exact zeros (a zero second moment: MKL's rare lanes), and
    tensors under 4096 elements keep float32 state beside the 8-bit ones.
    Parameters and every state tensor (codes, block maxima, steps) agree on
    1 and 2 threads; the previous loop (``sqrtf``, a reciprocal) differed in
    some parameters on every rule with a square root.
    """
    accepted = adaptim.OPTIMIZERS[name].__init__.__code__.co_varnames
    options = {k: v for k, v in options.items() if k in accepted}
    sizes = [first, *others]
    generator = torch.Generator().manual_seed(seed)
    starts = [torch.randn(size, generator=generator) for size in sizes]
    grads = [
        [torch.randn(size, generator=generator) * (torch.rand(size, generator=generator) >= zeros)]
        for size in sizes
        for _ in range(steps)
    ]
    exact = _mkl_sqrt.emulated(torch.float32) and exact_loop
    with patch.object(_lowmem_native_source, "EXACT_8BIT", exact_loop):
        runs = _steps_on_three_paths(name, options, starts, grads, steps)
    (native, fast), (two, other), (reference, slow) = runs
    for p, q, r in zip(native, two, reference, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(p, r) if exact else torch.allclose(p, r, rtol=1e-5, atol=1e-6)
        for key, value in fast.state[p].items():
            assert torch.equal(value, other.state[q][key]), key
            if exact:
                assert torch.equal(value, slow.state[r][key]), key


@given(st.floats(2.0**-10, 2.0**10, width=32), st.integers(0, 1000))
@settings(max_examples=15, deadline=None)
def test_native_stochastic_rounding_is_unbiased_and_draws_the_reference_bits(
    gradient: float, position: int
) -> None:
    """Adagrad's first sum is ``g²`` exactly in float32; its bf16 roundings average to it.

    2¹⁶ elements share ``g``, so their rounded sums are independent draws of
    one stochastic rounding (the bits differ by element index). Both paths
    must store the very same bf16 tensor: the same counter-based bits.
    """
    count = 1 << 16
    filler = [torch.nn.Parameter(torch.zeros(1)) for _ in range(position % 7)]
    stored = []
    for path in ({}, {"foreach": False}):
        p = torch.nn.Parameter(torch.zeros(count))
        optimizer = adaptim.Adagrad([*filler, p], state_dtype=torch.bfloat16, **path)
        p.grad = torch.full((count,), gradient)
        optimizer.step()
        assert optimizer.fused_status()[0].startswith("native" if not path else "reference")
        stored.append(optimizer.state[p]["sum"])
    assert torch.equal(stored[0], stored[1])
    x = torch.tensor(gradient, dtype=torch.float32) ** 2
    low, high = _bf16_neighbours(x.reshape(1))
    values = stored[0].float()
    assert bool(((values == low) | (values == high)).all())
    ulp = float(high - low)
    bound = 6 * ulp / (2 * math.sqrt(count))
    assert abs(float(values.double().mean()) - float(x)) <= bound


@given(
    st.integers(0x3C000000, 0x43000000).filter(lambda bits: bits & 0xFFFF != 0),
    st.integers(0, 1000),
)
@settings(max_examples=10, deadline=None)
def test_both_moments_round_unbiased_and_independently_from_one_hash(
    bits: int, position: int
) -> None:
    """Adam with ``betas=(0, 0)`` stores ``m = g`` and ``v = g²`` (float32): one hash rounds both.

    ``m`` takes the top 16 bits of each element's hash, ``v`` the low 16.
    Over 2¹⁶ elements sharing ``g`` each stored moment must average to its
    float32 value, the two round-up decisions must be uncorrelated, and the
    native loop must store the reference path's very bits. (``g`` is drawn
    by its bit pattern, never a bf16 value, so ``m`` has two neighbours.)
    """
    count = 1 << 16
    gradient = torch.tensor([bits], dtype=torch.int32).view(torch.float32)
    filler = [torch.nn.Parameter(torch.zeros(1)) for _ in range(position % 7)]
    stored = []
    for path in ({}, {"foreach": False}):
        p = torch.nn.Parameter(torch.zeros(count))
        optimizer = adaptim.Adam([*filler, p], betas=(0.0, 0.0), state_dtype=torch.bfloat16, **path)
        p.grad = gradient.expand(count).clone()
        optimizer.step()
        assert optimizer.fused_status()[0].startswith("native" if not path else "reference")
        stored.append({k: optimizer.state[p][k] for k in ("exp_avg", "exp_avg_sq")})
    ups = []
    for key, exact in (("exp_avg", gradient), ("exp_avg_sq", gradient * gradient)):
        assert torch.equal(stored[0][key], stored[1][key]), key
        low, high = _bf16_neighbours(exact)
        values = stored[0][key].float()
        assert bool(((values == low) | (values == high)).all()), key
        ulp = float(high - low)
        assert abs(float(values.double().mean()) - float(exact)) <= 6 * ulp / (2 * math.sqrt(count))
        ups.append((values == high).float())
    if all(0 < float(up.mean()) < 1 for up in ups):  # (g² may be a bf16 value: never rounded)
        correlation = torch.corrcoef(torch.stack(ups))[0, 1]
        assert abs(float(correlation)) < 6 / math.sqrt(count)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("options", [{"state_dtype": torch.bfloat16}, {"state_bits": 8}])
def test_parameters_the_native_loop_does_not_take_step_on_the_reference_path(
    dtype: torch.dtype, options: dict[str, object]
) -> None:
    """float64 and bf16 parameters: the reference path's result, bit for bit."""
    generator = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(70, 80, generator=generator).to(dtype))
    q = torch.nn.Parameter(p.detach().clone())
    default = adaptim.Adam([p], **options)
    reference = adaptim.Adam([q], foreach=False, **options)
    for _ in range(3):
        g = torch.randn(70, 80, generator=generator).to(dtype)
        p.grad, q.grad = g.clone(), g.clone()
        default.step()
        reference.step()
    assert default.fused_status()[0].startswith("reference")
    assert torch.equal(p, q)
    for key, value in default.state[p].items():
        assert torch.equal(value, reference.state[q][key]), key


# -- 8 bits against bitsandbytes ---------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_code_is_bitsandbytes_map(signed: bool) -> None:
    assert torch.equal(_lowmem.dynamic_code(signed), bnbf.create_dynamic_map(signed=signed))


@given(st.booleans(), st.integers(0, 2**31))
@settings(max_examples=10)
def test_nearest_code_lookup_equals_a_binary_search(signed: bool, seed: int) -> None:
    """The bucket tables give torch.bucketize's index, at and beside every threshold too."""
    thresholds, code = _lowmem._thresholds(signed), _lowmem.dynamic_code(signed)
    generator = torch.Generator().manual_seed(seed)
    values = torch.cat(
        [
            torch.rand(20000, generator=generator) * 2 - 1,
            torch.randn(20000, generator=generator) * torch.rand(20000, generator=generator) ** 8,
            thresholds,
            code,
            torch.nextafter(thresholds, torch.tensor(2.0)),
            torch.nextafter(thresholds, torch.tensor(-2.0)),
            torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-38, -1e-38]),
        ]
    ).clamp(-1, 1)
    if not signed:
        values = values.abs()
    expected = torch.bucketize(values, thresholds)
    assert torch.equal(_lowmem._nearest_code(values, signed), expected)
    # The native loop's variant (_lowmem_codes.bucket_table): the bucket of the float's
    # top bits gives the positive thresholds below and the low bits of the one inside.
    bits = values.view(torch.int32).long() & 0xFFFFFFFF
    bucket = (((bits & 0x7FFFFFFF) >> 16) - _lowmem_codes._FIRST).clamp(
        0, _lowmem_codes._BUCKETS - 1
    )
    negative, low = bits >> 31, bits & 0xFFFF
    entry = torch.from_numpy(_lowmem_codes.bucket_table(signed)).long()[bucket]
    below, inside = (entry & 255) + (low > entry >> 8), (entry & 255) + (low >= entry >> 8)
    if signed:
        found = torch.where(negative == 1, 127 - inside.clamp(max=127), 127 + below)
    else:
        found = torch.where(negative == 1, 0, below)
    assert torch.equal(found, expected)


def test_native_8bit_in_register_path_equals_the_portable_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The AVX-512 decoder and encoder (where the CPU has them) store what the plain C stores.

    The same kernel is built a second time with its in-register path switched
    off; parameters and every state tensor must agree bit for bit, full
    blocks and a tensor's partial last block alike.
    """
    from adaptim.torch import _lowmem_native

    generate = _lowmem_native.generate_source
    finals = []
    for portable in (False, True):
        monkeypatch.setattr(_lowmem_native, "_KERNELS", {})
        if portable:
            monkeypatch.setattr(
                _lowmem_native,
                "generate_source",
                lambda *a: generate(*a).replace("#define ADAPTIM_VBMI 1", ""),
            )
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in (9000, 4133)]
        optimizer = adaptim.Adam(params, lr=1e-2, state_bits=8)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.numel(), generator=generator)
            optimizer.step()
        assert optimizer.fused_status()[0].startswith("native")
        finals.append([(p.detach(), optimizer.state[p]) for p in params])
    for (p, state), (q, other) in zip(*finals, strict=True):
        assert torch.equal(p, q)
        for key, value in state.items():
            assert torch.equal(value, other[key]), key


@given(
    st.floats(2.0**-60, 2.0**60, width=32),
    st.lists(st.integers(-3, 3), min_size=1, max_size=4),
    st.integers(0, 2**31),
)
@settings(max_examples=10, deadline=None)
def test_native_encoder_gives_the_nearest_code_at_and_beside_every_threshold(
    scale: float, offsets: list[int], seed: int
) -> None:
    """The native loop's codes are the reference's, bit for bit, on values placed at thresholds.

    Adam with ``betas=(0, 0)`` stores ``m = g`` and ``v = g²`` exactly, so
    its second (native) step encodes chosen values: every threshold times
    the block maximum, a few float32 steps either side, and random values,
    against :func:`_lowmem.quantize_blockwise` of the same tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    a = torch.tensor(scale, dtype=torch.float32)
    points = torch.cat([_lowmem._thresholds(True), _lowmem._thresholds(False).sqrt()]) * a
    for step in offsets:  # (each offset moves every value |step| floats up or down)
        for _ in range(abs(step)):
            points = torch.nextafter(points, points * (2.0 if step > 0 else -2.0))
    noise = (torch.rand(4000, generator=generator) * 2 - 1) * a
    values = torch.cat([points, noise])
    values = values[torch.randperm(values.numel(), generator=generator)]
    values = torch.cat([values, torch.zeros(-values.numel() % 255)]).view(-1, 255)
    grad = torch.cat([a.expand(values.shape[0], 1), values.clamp(-a, a)], dim=1).reshape(-1)
    p = torch.nn.Parameter(torch.zeros_like(grad))
    optimizer = adaptim.Adam([p], lr=0.0, betas=(0.0, 0.0), state_bits=8)
    for g in (torch.zeros_like(grad), grad):
        p.grad = g.clone()
        optimizer.step()
    assert optimizer.fused_status()[0].startswith("native")
    state = optimizer.state[p]
    for key, target, signed in (("exp_avg", grad, True), ("exp_avg_sq", grad * grad, False)):
        codes, absmax = _lowmem.quantize_blockwise(target, signed)
        assert torch.equal(state[key + _lowmem.ABSMAX_SUFFIX], absmax), key
        assert torch.equal(state[key], codes), key


@given(
    st.integers(1, 3000),
    st.floats(1e-6, 1e3),
    st.floats(0.5, 8.0),
    st.booleans(),
    st.integers(0, 2**31),
)
@settings(max_examples=30)
def test_blockwise_quantisation_matches_bitsandbytes(
    numel: int, scale: float, spread: float, signed: bool, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=generator) * scale
    x = x * torch.rand(numel, generator=generator) ** spread  # many small values per block
    if not signed:
        x = x.abs()
    codes, absmax = _lowmem.quantize_blockwise(x, signed)
    code = bnbf.create_dynamic_map(signed=signed)
    bnb_codes, bnb_state = bnbf.quantize_blockwise(x, code=code, blocksize=256)
    assert torch.equal(absmax, bnb_state.absmax)
    # the same layout: bitsandbytes decodes our codes as we do
    ours = _lowmem.dequantize_blockwise(codes, absmax, signed)
    assert torch.equal(ours, bnbf.dequantize_blockwise(codes, bnb_state))
    theirs = bnbf.dequantize_blockwise(bnb_codes, bnb_state)
    # Nearest code, except that a positive unsigned value never becomes 0.
    ours_error, bnb_error = (ours - x).abs(), (theirs - x).abs()
    assert bool((ours_error <= bnb_error + 1e-7 * absmax.repeat_interleave(256)[:numel]).all())
    if not signed:
        assert bool((ours[x > 0] > 0).all())


@pytest.mark.slow
@given(
    st.sampled_from([(64, 64), (4096,), (48, 300), (5, 7)]),
    st.floats(1e-4, 3e-2),
    st.floats(0.5, 0.95),
    st.floats(0.9, 0.9999),
    st.sampled_from([1e-8, 1e-6]),
    st.integers(0, 2**31),
)
@settings(max_examples=8)
def test_adam_8bit_matches_bitsandbytes_within_quantisation_error(
    shape: tuple[int, ...], lr: float, beta1: float, beta2: float, eps: float, seed: int
) -> None:
    """Both quantise the moments; their gap is measured against fp32 Adam's own gap.

    A tensor under 4096 elements keeps fp32 state in both, and then the two
    follow fp32 Adam to float32 rounding.
    """
    generator = torch.Generator().manual_seed(seed)
    p0 = torch.randn(shape, generator=generator)
    grads = [torch.randn(shape, generator=generator) * torch.rand(()) for _ in range(60)]
    finals = {}
    for label, make in {
        "fp32": lambda ps: adaptim.Adam(ps, lr=lr, betas=(beta1, beta2), eps=eps),
        "ours": lambda ps: adaptim.Adam(ps, lr=lr, betas=(beta1, beta2), eps=eps, state_bits=8),
        "bnb": lambda ps: bnb.optim.Adam8bit(ps, lr=lr, betas=(beta1, beta2), eps=eps),
    }.items():
        p = torch.nn.Parameter(p0.clone())
        optimizer = make([p])
        for g in grads:
            p.grad = g + 0.5 * p.detach()
            optimizer.step()
        finals[label] = p.detach()
    moved = float((finals["fp32"] - p0).norm())
    to_bnb = float((finals["ours"] - finals["bnb"]).norm()) / moved
    if math.prod(shape) < _lowmem.MIN_8BIT_NUMEL:
        # (bitsandbytes' 32-bit formula rounds differently: a few float32 ulps of p)
        assert torch.allclose(finals["ours"], finals["bnb"], rtol=0, atol=2e-6)
        assert torch.equal(finals["ours"], finals["fp32"])
        return
    bnb_to_fp32 = float((finals["bnb"] - finals["fp32"]).norm()) / moved
    ours_to_fp32 = float((finals["ours"] - finals["fp32"]).norm()) / moved
    # Measured (see the notes): both stay within a few % of fp32 Adam's path.
    assert ours_to_fp32 < 0.08 and bnb_to_fp32 < 0.08, (ours_to_fp32, bnb_to_fp32)
    assert to_bnb < ours_to_fp32 + bnb_to_fp32 + 1e-3


@settings(max_examples=8, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    options=st.sampled_from([{}, {"state_bits": 8}, {"state_dtype": torch.bfloat16}]),
    rows=st.sampled_from([3, 64]),
)
def test_fused_status_counts_only_the_tensors_its_paths_stepped(
    dtype: torch.dtype, options: dict[str, object], rows: int
) -> None:
    """``fused_status()`` reads "PATHS: X of N tensors": X must be those the named paths took.

    An 8-bit partition of bf16 parameters falls back to the reference path at its
    step; the status said "reference: 1 of 4 tensors" while all 4 went there (on a
    GPU, "triton (1 partition): 2 of 2 tensors" with the 8-bit one on the reference
    path). The reference path's calls are counted here.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(300, rows), torch.nn.Tanh(), torch.nn.Linear(rows, 3)
    ).to(dtype)
    optimizer = adaptim.Adam(model.parameters(), **options)
    on_reference: list[torch.Tensor] = []
    update = optimizer._update

    def counted(p: torch.Tensor, *args: object, **kwargs: object) -> None:
        on_reference.append(p)
        update(p, *args, **kwargs)  # type: ignore[arg-type]

    with patch.object(optimizer, "_update", counted):
        for _ in range(2):
            on_reference.clear()
            optimizer.zero_grad()
            model(torch.randn(4, 300, dtype=dtype)).sum().backward()
            optimizer.step()
    status = optimizer.fused_status()[0]
    stepped, total = map(int, re.search(r"(\d+) of (\d+) tensors", status).groups())  # type: ignore[union-attr]
    assert total == 4
    assert stepped == total - len(on_reference), status
