"""Memory-light states on the NumPy front-end, against the torch front-end's reference path.

The reference is ``adaptim``'s torch optimizer with the same option and
``foreach=False`` (its per-tensor path, :mod:`adaptim.torch._lowmem`). Both
take the code, thresholds and rounding bits from
:mod:`adaptim.algorithms._state_codes`; the encoders are compared bit for
bit on the same float32 values. Whole runs are not bit-identical, because the
rule's float32 arithmetic differs between the two front-ends before anything
is encoded: torch's CPU ``lerp``, ``addcmul`` and ``add(alpha=)`` are fused
multiply-adds (NumPy rounds twice) and its float32 ``sqrt`` is not correctly
rounded (1 ulp off on about 15% of values); unencoded NumPy and torch states
differ in the last bit the same way (``tests/test_numpy_frontend.py`` holds
them to 1e-5). A last-bit difference moves a stored value to its neighbour
only where it lies at a rounding boundary, so the encoded states agree but
for a few values in 10⁵.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adaptim
import adaptim.numpy as anp
from adaptim.algorithms import _state_codes
from adaptim.lab.optimizers import state_bytes_per_parameter
from adaptim.numpy import _lowmem
from adaptim.torch import _lowmem as torch_lowmem
from adaptim.torch import _rounding as torch_rounding

NAMES = sorted(anp.MEMORY_LIGHT_OPTIMIZERS)
#: (NumPy options, torch options) of each format.
FORMATS = {
    "bf16": ({"state_dtype": "bfloat16"}, {"state_dtype": torch.bfloat16}),
    "8bit": ({"state_bits": 8}, {"state_bits": 8}),
}
FORMATS_STORED = {"bf16": np.uint16, "8bit": np.uint8}


def as_numpy(value: Any) -> np.ndarray:
    """A torch state entry as the NumPy front-end keeps it (bf16 as its bit patterns)."""
    if value.dtype == torch.bfloat16:
        return np.asarray(value.view(torch.int16).numpy().view(np.uint16))
    return np.asarray(value.numpy())


def as_torch(value: np.ndarray) -> torch.Tensor:
    """A NumPy state entry as the torch front-end keeps it."""
    if value.dtype == np.uint16:
        return torch.from_numpy(value.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(value))


def test_memory_light_optimizers_are_the_torch_front_ends() -> None:
    torch_side = {
        name
        for name, cls in adaptim.OPTIMIZERS.items()
        if "state_bits" in cls.__init__.__code__.co_varnames
    }
    assert set(anp.MEMORY_LIGHT_OPTIMIZERS) == torch_side


# -- the encoders, bit for bit -------------------------------------------------------------

FLOATS32 = hnp.arrays(
    np.float32,
    st.integers(1, 700),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@given(
    hnp.arrays(np.float32, st.integers(1, 700), elements=st.floats(width=32)),
    st.integers(0, 2**32 - 1),
    st.sampled_from([16, 0]),
)
@settings(max_examples=60, deadline=None)
def test_stochastic_rounding_draws_torchs_bits(x: np.ndarray, stream: int, shift: int) -> None:
    """Every float32 (NaN, ±inf, subnormals, ±0 included) rounds to torch's bf16 pattern.

    With either half of the hash (``shift``: a first moment's or its partner's bits).
    """
    ours = _lowmem.stochastic_round_bf16(x, stream, shift)
    theirs = torch_rounding.stochastic_round_bf16(torch.from_numpy(x.copy()), stream, shift)
    np.testing.assert_array_equal(ours, as_numpy(theirs))
    finite = np.isfinite(x)
    decoded = _lowmem.bf16_to_float32(ours)
    np.testing.assert_array_equal(decoded[finite], theirs.float().numpy()[finite])


@given(FLOATS32, st.booleans(), st.floats(1e-30, 1e30))
@settings(max_examples=60, deadline=None)
def test_blockwise_codes_are_torchs(x: np.ndarray, signed: bool, scale: float) -> None:
    """Codes, block maxima and decoded values equal the torch reference path's."""
    with np.errstate(over="ignore"):  # (scaled past float32's range: clipped below)
        x = (x if signed else np.abs(x)) * np.float32(scale)
    x = np.nan_to_num(x, posinf=1e30, neginf=-1e30)
    codes, absmax = _lowmem.quantize_blockwise(x, signed)
    torch_codes, torch_absmax = torch_lowmem.quantize_blockwise(torch.from_numpy(x), signed)
    np.testing.assert_array_equal(codes, torch_codes.numpy())
    np.testing.assert_array_equal(absmax, torch_absmax.numpy())
    np.testing.assert_array_equal(
        _lowmem.dequantize_blockwise(codes, absmax, signed),
        torch_lowmem.dequantize_blockwise(torch_codes, torch_absmax, signed).numpy(),
    )


@pytest.mark.parametrize("signed", [True, False])
def test_values_at_and_beside_every_threshold_take_torchs_codes(signed: bool) -> None:
    """The nearest-code ties: a value equal to a threshold takes the lower code, as bucketize."""
    thresholds = _state_codes.thresholds(signed)
    values = np.concatenate(
        [thresholds, np.nextafter(thresholds, 2), np.nextafter(thresholds, -2), [1.0, 0.0]]
    ).astype(np.float32)
    if signed:
        values = np.concatenate([values, -values])
    codes, _ = _lowmem.quantize_blockwise(values, signed)
    torch_codes, _ = torch_lowmem.quantize_blockwise(torch.from_numpy(values), signed)
    np.testing.assert_array_equal(codes, torch_codes.numpy())


# -- whole runs against the torch reference path ------------------------------------------


def run_both(
    name: str, fmt: str, shapes: list[tuple[int, ...]], steps: int, seed: int, **hp: Any
) -> tuple[tuple[list[np.ndarray], Any], tuple[list[torch.Tensor], Any]]:
    rng = np.random.default_rng(seed)
    starts = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    grads = [
        [rng.standard_normal(shape).astype(np.float32) for shape in shapes] for _ in range(steps)
    ]
    numpy_options, torch_options = FORMATS[fmt]
    params = [start.copy() for start in starts]
    ours = anp.OPTIMIZERS[name](params, **hp, **numpy_options)
    tensors = [torch.from_numpy(start.copy()) for start in starts]
    groups = [{"params": tensors, "foreach": False}]
    theirs = adaptim.OPTIMIZERS[name](groups, **hp, **torch_options)
    for step_grads in grads:
        ours.step(step_grads)
        for p, g in zip(tensors, step_grads, strict=True):
            p.grad = torch.from_numpy(g.copy())
        theirs.step()
    return (params, ours), (tensors, theirs)


@pytest.mark.slow
@given(
    st.sampled_from(NAMES),
    st.sampled_from(sorted(FORMATS)),
    st.sampled_from([[(64, 80)], [(5000,), (300,), (40, 130)], [(4096,), (3, 7)]]),
    st.floats(1e-4, 1e-2),
    st.booleans(),
    st.integers(0, 2**31),
)
@settings(max_examples=20, deadline=None)
def test_numpy_stores_what_the_torch_reference_path_stores(
    name: str,
    fmt: str,
    shapes: list[tuple[int, ...]],
    lr: float,
    maximize: bool,
    seed: int,
) -> None:
    """20 steps in float32: the same entries, dtypes and layout; stored values equal but for a few.

    Measured (see the module docstring for why any differ): 0 to 4 bf16
    values in 10⁵ one or a few bf16 steps apart, 0 to 2 codes in 10⁵ one code
    apart; block maxima, small tensors' float32 state and parameters to float32
    rounding. The bounds allow 0.1% of stored values to differ.
    """
    (params, ours), (tensors, theirs) = run_both(
        name, fmt, shapes, 20, seed, lr=lr, maximize=maximize
    )
    ours_state, theirs_state = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert ours_state.keys() == theirs_state.keys()
    for index, (p, t) in enumerate(zip(params, tensors, strict=True)):
        expected = t.numpy()
        off = np.abs(p - expected) > 1e-5 * np.abs(expected) + 1e-6
        assert off.mean() <= 0.01, (index, off.mean())
        assert ours_state[index].keys() == theirs_state[index].keys()
        for key, value in theirs_state[index].items():
            mine, reference = np.asarray(ours_state[index][key]), as_numpy(value)
            assert mine.dtype == reference.dtype and mine.shape == reference.shape, key
            if mine.dtype in (np.uint8, np.uint16):
                differ = mine != reference
                assert differ.mean() <= 1e-3, (key, int(differ.sum()))
                if mine.dtype == np.uint8:  # codes: the neighbouring one at most
                    assert np.abs(mine.astype(int) - reference.astype(int)).max() <= 1, key
            else:  # step, block maxima, float32 state of small tensors
                scale = max(float(np.abs(reference).max()), 1e-30)
                assert float(np.abs(mine - reference).max()) <= 1e-5 * scale, key


# -- state_dict -----------------------------------------------------------------------------


def train(optimizer: anp.Optimizer, params: list[np.ndarray], steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        optimizer.step([rng.standard_normal(p.shape).astype(p.dtype) for p in params])


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["state"].keys() == b["state"].keys()
    for index, entries in a["state"].items():
        assert entries.keys() == b["state"][index].keys()
        for key, value in entries.items():
            np.testing.assert_array_equal(value, b["state"][index][key], strict=True)


@given(
    st.sampled_from(NAMES),
    st.sampled_from(sorted(FORMATS)),
    st.integers(0, 5),
    st.integers(1, 4),
)
@settings(max_examples=20, deadline=None)
def test_saved_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(
    name: str, fmt: str, before: int, after: int
) -> None:
    """The rounding bits depend on (parameter, entry, step) only: all of it is in ``state_dict``."""
    options = FORMATS[fmt][0]
    shapes = [(70, 60), (30,)]
    params = [np.linspace(-1, 1, np.prod(s), dtype=np.float32).reshape(s) for s in shapes]
    optimizer = anp.OPTIMIZERS[name](params, lr=1e-2, **options)
    train(optimizer, params, before, seed=0)
    saved = pickle.dumps((params, optimizer.state_dict()))
    train(optimizer, params, after, seed=1)
    resumed_params, state_dict = pickle.loads(saved)
    resumed = anp.OPTIMIZERS[name](resumed_params, **options)  # groups come from the state_dict
    resumed.load_state_dict(state_dict)
    train(resumed, resumed_params, after, seed=1)
    for p, q in zip(params, resumed_params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert_same_state(resumed.state_dict(), optimizer.state_dict())


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_state_dicts_move_between_numpy_and_torch(fmt: str) -> None:
    """Encoded entries load unchanged both ways (bf16 patterns as ``np.uint16``), and step on."""
    (params, ours), (_, theirs) = run_both("adamw", fmt, [(80, 60), (50,)], 3, seed=7)
    from_torch = theirs.state_dict()
    from_torch["state"] = {
        i: {k: as_numpy(v) for k, v in entries.items()}
        for i, entries in from_torch["state"].items()
    }
    loaded = anp.AdamW([p.copy() for p in params], **FORMATS[fmt][0])
    loaded.load_state_dict(copy.deepcopy(from_torch))
    assert_same_state(loaded.state_dict(), from_torch)
    unconverted = anp.AdamW([p.copy() for p in params], **FORMATS[fmt][0])
    unconverted.load_state_dict(theirs.state_dict())  # tensors, bf16 ones too
    assert_same_state(unconverted.state_dict(), from_torch)
    to_torch = ours.state_dict()
    to_torch["state"] = {
        i: {k: as_torch(v) for k, v in entries.items()} for i, entries in to_torch["state"].items()
    }
    back = adaptim.AdamW([torch.from_numpy(p.copy()) for p in params], **FORMATS[fmt][1])
    back.load_state_dict(to_torch)
    for index, entries in back.state_dict()["state"].items():
        for key, value in entries.items():
            np.testing.assert_array_equal(as_numpy(value), ours.state_dict()["state"][index][key])
    train(loaded, loaded.params, 2, seed=3)  # and it steps on in its format
    assert loaded.state_dict()["state"][0]["exp_avg"].dtype == FORMATS_STORED[fmt]


def test_encoded_states_convert_on_load_like_torchs() -> None:
    """A plain optimizer decodes; bf16 values load exactly as float32 or ml_dtypes arrays."""
    params = [np.linspace(-1, 1, 5000, dtype=np.float32)]
    bf16 = anp.Adam(params, state_dtype="bfloat16")
    train(bf16, params, 3, seed=0)
    saved = bf16.state_dict()
    plain = anp.Adam([params[0].copy()])
    plain.load_state_dict(saved)
    decoded = plain.state_dict()["state"][0]
    assert decoded["exp_avg"].dtype == np.float32
    np.testing.assert_array_equal(
        decoded["exp_avg"], _lowmem.bf16_to_float32(saved["state"][0]["exp_avg"])
    )
    # the rates read the decoded state: the same as from the plain copy
    np.testing.assert_array_equal(bf16.effective_lr()[0], plain.effective_lr()[0])
    again = anp.Adam([params[0].copy()], state_dtype="bfloat16")
    again.load_state_dict(plain.state_dict())  # bf16 values in float32: rounding keeps them
    assert_same_state(again.state_dict(), saved)
    as_ml_dtypes = copy.deepcopy(saved)
    for key in ("exp_avg", "exp_avg_sq"):
        as_ml_dtypes["state"][0][key] = decoded[key].astype(ml_dtypes.bfloat16)
    again.load_state_dict(as_ml_dtypes)
    assert_same_state(again.state_dict(), saved)
    eight = anp.Adam([params[0].copy()], state_bits=8)
    eight.load_state_dict(saved)
    state = eight.state_dict()["state"][0]
    assert state["exp_avg"].dtype == np.uint8 and state["exp_avg_absmax"].shape == (20,)


# -- options, errors, memory ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "stored"),
    [
        ("bfloat16", np.uint16),
        (ml_dtypes.bfloat16, np.uint16),
        (torch.bfloat16, np.uint16),
        ("float32", np.float32),
        (np.float32, np.float32),
    ],
)
def test_state_dtype_spellings(spelling: Any, stored: type) -> None:
    params = [np.ones((3, 4))]  # float64: float32 states are narrower too
    optimizer = anp.RMSprop(params, state_dtype=spelling)
    optimizer.step([np.ones((3, 4))])
    assert optimizer.state[0]["square_avg"].dtype == stored


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: anp.Adam(p, state_dtype="float16"), ValueError, "Invalid state_dtype: 'float16'; allowed: None"),
        (lambda p: anp.Adam(p, state_dtype=np.float16), ValueError, "Invalid state_dtype: <class 'numpy.float16'>"),
        (lambda p: anp.Adam(p, state_dtype=torch.float16), ValueError, "Invalid state_dtype: torch.float16"),
        (lambda p: anp.Adam(p, state_bits=4), ValueError, r"Invalid state_bits: 4; allowed: None or 32"),
        (lambda p: anp.Adam(p, state_bits=True), ValueError, "Invalid state_bits: True"),
        (lambda p: anp.Adam(p, state_bits=8, state_dtype="bfloat16"), ValueError, "at most one"),
        (lambda p: anp.SGD(p, state_bits=8), TypeError, "SGD does not take state_dtype or state_bits; .* Adam, AdamW"),
        (lambda p: anp.Adam([np.zeros(3, np.complex64)], state_bits=8), TypeError, "does not support complex"),
    ],
)  # fmt: skip
def test_bad_options_are_refused(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make([np.zeros(3)])


def test_sparse_gradients_are_refused() -> None:
    params = [np.zeros((5, 3))]
    optimizer = anp.Adagrad(params, state_dtype="bfloat16")
    sparse = anp.RowSparse(np.array([1]), np.ones((1, 3)))
    with pytest.raises(RuntimeError, match="state_dtype='bfloat16' does not support sparse"):
        optimizer.step([sparse])


@pytest.mark.parametrize(
    ("variant", "options"),
    [("adam", {}), ("adam-bf16", {"state_dtype": "bfloat16"}), ("adam-8bit", {"state_bits": 8})],
)
def test_bytes_per_parameter_are_the_torch_front_ends(variant: str, options: Any) -> None:
    """Measured: the bytes of every array in the state after a step, over the parameter's size."""
    params = [np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)]
    optimizer = anp.Adam(params, **options)
    train(optimizer, params, 1, seed=0)
    nbytes = sum(np.asarray(v).nbytes for v in optimizer.state[0].values())
    assert nbytes / params[0].size == pytest.approx(state_bytes_per_parameter(variant), rel=1e-12)
    assert (
        round(nbytes / params[0].size, 2)
        == {"adam": 8.0, "adam-bf16": 4.0, "adam-8bit": 2.03}[variant]
    )


@pytest.mark.parametrize("options", [{"state_dtype": "bfloat16"}, {"state_bits": 8}])
def test_a_scalar_parameter_keeps_float32_state_as_on_torch(options: dict[str, Any]) -> None:
    """A 0-d parameter's entries stay float32 (a format saves nothing there) on both
    front-ends and both torch paths, NAdam's ``mu_product`` included, across a reload."""
    params = [np.array(0.5, dtype=np.float32), np.linspace(-1, 1, 6, dtype=np.float32)]
    optimizer = anp.NAdam(params, **options)
    train(optimizer, params, 3, seed=0)
    optimizer.load_state_dict(optimizer.state_dict())
    train(optimizer, params, 1, seed=1)
    kinds = {k: v.dtype for k, v in optimizer.state[0].items() if k != "step"}
    assert kinds == dict.fromkeys(("exp_avg", "exp_avg_sq", "mu_product"), np.float32)
    if "state_dtype" in options:
        options = {"state_dtype": torch.bfloat16}
    for foreach in (False, None):
        scalar, vector = torch.nn.Parameter(torch.tensor(0.5)), torch.nn.Parameter(torch.ones(6))
        twin = adaptim.NAdam([scalar, vector], foreach=foreach, **options)
        for index in range(4):
            if index == 2:
                twin.load_state_dict(twin.state_dict())
            scalar.grad, vector.grad = torch.tensor(0.25), torch.ones(6)
            twin.step()
        kinds = {k: v.dtype for k, v in twin.state[scalar].items() if k != "step"}
        assert kinds == dict.fromkeys(("exp_avg", "exp_avg_sq", "mu_product"), torch.float32)
