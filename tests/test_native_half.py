"""Each operation of the half-precision native loop against its ATen CPU kernel, to the bit.

:mod:`adaptim.torch._native_half` renders every recorded operation as ATen's
float16/bfloat16 kernel computes it (float32 inside, one rounding). Here each
rendered operation is compiled on its own and run on every one of the 65,536
bit patterns of its first operand (the others and the scalar drawn at random,
infinities, NaN and subnormals included), and compared with the torch
operation the multi-tensor replay (the oracle, itself checked against
torch.optim's for-loop in ``test_half_precision.py``) calls for it: in one
tensor of 65,536 elements (ATen's vectorised loop) and in tensors of 7 (its
scalar loop).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_torch_parity import PHASES

from adaptim.torch import _native, _native_half
from adaptim.torch._native_source import _COMPARE
from adaptim.torch._trace import Structure

#: (operation, its arguments: "a", "b", "c" arrays or "s" the scalar, torch's call)
Case = tuple[str, tuple[str, ...], Callable[..., torch.Tensor]]
CASES: list[Case] = [
    ("add", ("a", "b"), lambda a, b: a + b),
    ("add", ("a", "s"), lambda a, s: a + s),
    ("sub", ("a", "b"), lambda a, b: a - b),
    ("sub", ("s", "a"), lambda s, a: torch._foreach_add_([-a], s)[0]),  # the replay's s - x
    ("mul", ("a", "b"), lambda a, b: a * b),
    ("mul", ("a", "s"), lambda a, s: a * s),
    ("div", ("a", "b"), lambda a, b: a / b),
    ("div", ("a", "s"), lambda a, s: a / s),
    ("div", ("s", "a"), lambda s, a: s / a),  # Tensor.__rtruediv__: reciprocal, then times s
    ("neg", ("a",), lambda a: -a),
    ("abs", ("a",), torch.abs),
    ("sqrt", ("a",), torch.sqrt),
    ("pow", ("a", "0"), lambda a, _: torch._foreach_pow([a], 0.0)[0]),
    ("pow", ("a", "2"), lambda a, _: torch._foreach_pow([a], 2.0)[0]),
    ("maximum", ("a", "b"), torch.maximum),
    ("axpy", ("a", "b", "s"), lambda a, b, s: torch.add(a, b, alpha=s)),
    ("addcmul", ("a", "b", "c", "s"), lambda a, b, c, s: torch.addcmul(a, b, c, value=s)),
    ("addcdiv", ("a", "b", "c", "s"), lambda a, b, c, s: torch.addcdiv(a, b, c, value=s)),
    ("lerp", ("a", "b", "s"), torch.lerp),
    ("clip", ("a", "s", "t"), torch.clamp),
    ("where", ("gt", "s", "b"), lambda c, s, b: torch.where(c, s, b)),
    ("where", ("lt", "b", "s"), lambda c, b, s: torch.where(c, b, s)),
    *[(op, ("a", "s"), getattr(torch, op)) for op in _COMPARE],
    *[(op, ("a", "b"), getattr(torch, op)) for op in _COMPARE],
]
#: How the C probe reads each kind of argument, and its reference in the recording.
_OPERANDS: dict[str, tuple[str, tuple[str, Any]]] = {
    "a": ("widen(a[i])", ("input", 0)),
    "b": ("widen(b[i])", ("input", 1)),
    "c": ("widen(c[i])", ("input", 2)),
    "s": ("(float)s", ("slot", 0)),
    "t": ("(float)t", ("slot", 1)),
    "0": ("(float)0.0", ("const", 0.0)),
    "2": ("(float)2.0", ("const", 2.0)),
    "gt": ("(widen(a[i]) > round_h((float)s))", ("node", 0)),
    "lt": ("(widen(a[i]) < round_h((float)s))", ("node", 0)),
}


def _probe_source(dtype: torch.dtype) -> str:
    """One C function per case: ``out[i] = narrow(round_h(op(a[i], ...)))``."""
    # the real kernels' prelude: includes, types, conversions and helpers
    minimal = Structure(
        ops=(("neg", (("input", 1),)),),
        inputs=("param", "grad"),
        per_tensor_inputs=frozenset(),
        outputs=(("param", ("node", 0)),),
        created=(),
        slot_count=0,
        half=True,
    )
    lines = [_native_half.generate_source(minimal, dtype).split("void adaptim_step")[0]]
    for index, (op, names, _) in enumerate(CASES):
        rendered = [_OPERANDS[n][0] for n in names]
        refs = tuple(_OPERANDS[n][1] for n in names)
        value = _native_half.expression(op, rendered, refs)
        if op in _COMPARE:
            value = f"(float)({value})"
        lines += [
            f"void probe{index}(int64_t n, const H* a, const H* b, const H* c, H* out,",
            "                 double s, double t, int scalar_loop) {",
            "  const uint32_t tail = scalar_loop ? ~0u : 0u;",
            f"  for (int64_t i = 0; i < n; ++i) out[i] = narrow(round_h({value}));",
            "}",
        ]
    return "\n".join(lines) + "\n"


_LIBRARIES: dict[torch.dtype, ctypes.CDLL] = {}


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    if dtype not in _LIBRARIES:
        path = _native.build_library(_probe_source(dtype), name="probe_half")
        _LIBRARIES[dtype] = ctypes.CDLL(str(path))
    return _LIBRARIES[dtype]


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """Element-wise: the same bits, or both NaN."""
    bits = ours.view(torch.int16) == theirs.view(torch.int16)
    return bits | (ours.isnan() & theirs.isnan())


def _torch_result(case: Case, arrays: dict[str, torch.Tensor], s: float, t: float) -> Any:
    _, names, call = case
    values: list[Any] = []
    for name in names:
        if name in ("gt", "lt"):
            values.append(arrays["a"] > s if name == "gt" else arrays["a"] < s)
        elif name in ("s", "t"):
            values.append(s if name == "s" else t)
        elif name in ("0", "2"):
            values.append(None)
        else:
            values.append(arrays[name])
    return call(*values)


def _run_probe(
    library: ctypes.CDLL, index: int, arrays: dict[str, torch.Tensor], s: float, t: float, tail: int
) -> torch.Tensor:
    out = torch.empty_like(arrays["a"])
    getattr(library, f"probe{index}")(
        ctypes.c_int64(out.numel()),
        *(ctypes.c_void_p(x.data_ptr()) for x in (arrays["a"], arrays["b"], arrays["c"], out)),
        ctypes.c_double(s),
        ctypes.c_double(t),
        ctypes.c_int(tail),
    )
    return out


#: Scalars: learning rates and decays, their complements, tiny and huge values, exact halves.
SCALARS = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(-1e-6, 1e-6),
    st.floats(0.9, 1.0),
    st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e-8, 0.1]),
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=3, phases=PHASES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), s=SCALARS, t=st.floats(-6e4, 6e4))
def test_every_native_half_operation_is_atens_kernel(
    dtype: torch.dtype, seed: int, s: float, t: float
) -> None:
    """All 65,536 patterns through ATen's vector loop, the first 4,200 through its scalar loop."""
    library = _library(dtype)
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)

    def random_bits() -> torch.Tensor:
        bits = torch.randint(-(2**15), 2**15, (patterns.numel(),), generator=generator)
        values = bits.to(torch.int16).view(dtype)
        # a tenth signed zeros, a tenth the first operand or its negation: the cases
        # where kernels that agree on every other value differ in the sign of a zero
        which = torch.randint(0, 10, values.shape, generator=generator)
        values[which == 0] = 0.0
        values[which == 1] = -0.0
        values[which == 2] = patterns[which == 2]
        values[which == 3] = -patterns[which == 3]
        return values

    arrays = {"a": patterns.clone(), "b": random_bits(), "c": random_bits()}
    short = 4200  # in tensors of 7 elements: below one vector, ATen runs its scalar loop
    failures = []
    for index, case in enumerate(CASES):
        theirs = _torch_result(case, arrays, s, t).to(dtype)
        scalar_loop = torch.cat(
            [
                _torch_result(case, {k: v[i : i + 7] for k, v in arrays.items()}, s, t)
                for i in range(0, short, 7)
            ]
        ).to(dtype)
        for loop, ours, reference in (
            ("vector", _run_probe(library, index, arrays, s, t, 0), theirs),
            ("scalar", _run_probe(library, index, arrays, s, t, 1)[:short], scalar_loop),
        ):
            same = _same(ours, reference)
            if not bool(same.all()):
                first = int((~same).nonzero()[0])
                failures.append(
                    f"{case[0]}{case[1]} ({loop} loop): {int((~same).sum())} differ, e.g. "
                    f"{[float(arrays[k][first]) for k in 'abc']} -> {float(ours[first])} "
                    f"(torch {float(reference[first])})"
                )
    assert not failures, f"s={s}, t={t}: " + "; ".join(failures)


def _conversion_source(dtype: torch.dtype) -> str:
    """``round_h``, ``narrow_rounded`` and ``quiet`` of the kernels, over arrays of float32 bits."""
    prelude = _probe_source(dtype).split("void probe0")[0]
    return prelude + "\n".join(
        [
            "void round_all(int64_t n, const float* x, float* rounded, H* stored, float* slot) {",
            "  for (int64_t i = 0; i < n; ++i) {",
            "    rounded[i] = round_h(x[i]);",
            "    stored[i] = narrow_rounded(rounded[i]);",
            "    slot[i] = round_h(quiet(x[i]));",
            "  }",
            "}",
            "",
        ]
    )


_CONVERSIONS: dict[torch.dtype, ctypes.CDLL] = {}

#: float32 bit patterns: any, subnormals, near a half type's overflow and around its
#: rounding ties (the low bits of a bfloat16's half-way point), infinities and NaN
BITS = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**23 - 1).map(lambda m: m | st_sign(m)),
    st.integers(0x7F7F0000, 0x7F800000),
    st.tuples(st.integers(0, 2**16 - 1), st.sampled_from([0x7FFF, 0x8000, 0x8001, 0xFFFF])).map(
        lambda hl: (hl[0] << 16) | hl[1]
    ),
    st.sampled_from([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0x00000001]),
)


def st_sign(m: int) -> int:
    """A sign bit for a drawn mantissa (its parity), so both signs of subnormals are drawn."""
    return (m & 1) << 31


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=25, phases=PHASES, deadline=None)
@given(bits=st.lists(BITS, min_size=1, max_size=300))
def test_native_half_rounding_is_torchs(dtype: torch.dtype, bits: list[int]) -> None:
    """The loop's rounding of a float32 (in place, as every operation's result) and its
    store of a rounded value give torch's conversion to the half type, subnormals and
    infinities included, on drawn bit patterns; a NaN stays a NaN. The bfloat16 rounding
    has no NaN test: a NaN the loop computes keeps its payload's 16 zero low bits (a
    bfloat16's, the CPU's default NaN's, or a slot's after ``quiet``), so only those are
    fed to it directly; ``quiet`` makes any other NaN a slot may hold one of them."""
    if dtype not in _CONVERSIONS:
        path = _native.build_library(_conversion_source(dtype), name="probe_round")
        _CONVERSIONS[dtype] = ctypes.CDLL(str(path))
    x = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    direct = x.clone()
    if dtype == torch.bfloat16:  # NaNs as the loop computes them (see the docstring)
        payload = (x.view(torch.int32) & -65536).view(torch.float32)  # (a NaN's high bits)
        computed = torch.where(payload.isnan(), payload, torch.full_like(x, math.nan))
        direct = torch.where(x.isnan(), computed, x)
    rounded, slot = torch.empty_like(x), torch.empty_like(x)
    stored = torch.empty(x.shape, dtype=dtype)
    _CONVERSIONS[dtype].round_all(
        ctypes.c_int64(x.numel()),
        *(ctypes.c_void_p(t.data_ptr()) for t in (direct, rounded, stored, slot)),
    )
    theirs = direct.to(dtype)
    assert bool(_same(rounded.to(dtype), theirs).all())
    assert bool(_same(stored, theirs).all())
    assert bool(_same(slot.to(dtype), x.to(dtype)).all())
    assert torch.equal(rounded.isnan(), theirs.isnan())
    assert torch.equal(rounded[~rounded.isnan()], theirs[~theirs.isnan()].float())


def _vector_conversion_source() -> str:
    """float16's vector-loop conversions (``widen_v``, ``round_v``, ``narrow_v``) over
    arrays, a vector a step where the compiler has one; ``lanes``: its lanes, or 0."""
    prelude = _probe_source(torch.float16).split("void probe0")[0]
    return prelude + "\n".join(
        [
            "int lanes(void) {",
            "#ifdef HALF_VECTOR",
            "  return HALF_VECTOR;",
            "#else",
            "  return 0;",
            "#endif",
            "}",
            "void convert_all(int64_t n, const float* x, const H* h, float* rounded, H* stored,",
            "                 float* widened) {",
            "  int64_t i = 0;",
            "#ifdef HALF_VECTOR",
            "  for (; i + HALF_VECTOR <= n; i += HALF_VECTOR) {",
            "    V v;",
            "    __builtin_memcpy(&v, &x[i], sizeof v);",
            "    const V r = round_v(v), w = widen_v(&h[i]);",
            "    __builtin_memcpy(&rounded[i], &r, sizeof r);",
            "    narrow_v(&stored[i], v);",
            "    __builtin_memcpy(&widened[i], &w, sizeof w);",
            "  }",
            "#endif",
            "  for (; i < n; ++i) {",
            "    rounded[i] = round_h(x[i]);",
            "    stored[i] = narrow(x[i]);",
            "    widened[i] = widen(h[i]);",
            "  }",
            "}",
            "",
        ]
    )


#: float16 bit patterns: any, subnormals of both signs, the largest finite values, infinities
#: and NaNs (quiet and signalling, with payloads)
HALF_BITS = st.one_of(
    st.integers(0, 2**16 - 1),
    st.integers(0, 0x3FF).map(lambda m: m | (m & 1) << 15),
    st.integers(0x7BF0, 0x7C00).map(lambda m: m | (m & 1) << 15),
    st.integers(0x7C01, 0x7FFF).map(lambda m: m | (m & 1) << 15),
)
#: float32 bit patterns around float16's range: its subnormals and their halfway points
#: (2^-25 .. 2^-14), its overflow (65504 .. 65520 .. 2^17), and the rest of ``BITS``
FLOAT16_EDGES = st.one_of(
    BITS,
    st.integers(0x33000000, 0x38800000).map(lambda u: u | (u & 1) << 31),
    st.integers(0x477FE000, 0x48000000).map(lambda u: u | (u & 1) << 31),
    st.integers(0x7F800001, 0x7FFFFFFF).map(lambda u: u | (u & 1) << 31),
)


@settings(max_examples=25, phases=PHASES, deadline=None)
@given(
    data=st.data(),
    bits=st.lists(FLOAT16_EDGES, min_size=40, max_size=300),
)
def test_float16_vector_conversions_are_torchs(data: st.DataObject, bits: list[int]) -> None:
    """The float16 loop's conversions, 16 lanes a step with AVX-512F or 8 with F16C
    (``vcvtps2ph`` with round to nearest even, ``vcvtph2ps``) and the scalar ones after
    them, against torch's conversions on drawn bit patterns: float32 to float16 (each
    operation's rounding in place and a store) and float16 to float32 (a load), to the bit;
    a NaN stays a NaN, its sign and payload as torch's own conversions leave them, which
    differ between its loops (measured: float16 0xfc01 widens to 0x7fffffff one element
    at a time, to 0xffc02000, quieted, in ATen's vector loop, as ``vcvtph2ps`` here)."""
    library = ctypes.CDLL(str(_native.build_library(_vector_conversion_source(), name="probe_f16")))
    flags = set(_native._cpu_fingerprint().split())
    assert library.lanes() == (16 if "avx512f" in flags else 8 if {"f16c", "fma"} <= flags else 0)
    x = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    half_bits = data.draw(st.lists(HALF_BITS, min_size=x.numel(), max_size=x.numel()))
    h = torch.tensor(half_bits, dtype=torch.int32).to(torch.int16).view(torch.float16)
    rounded, widened = torch.empty_like(x), torch.empty_like(x)
    stored = torch.empty(x.shape, dtype=torch.float16)
    library.convert_all(
        ctypes.c_int64(x.numel()),
        *(ctypes.c_void_p(t.data_ptr()) for t in (x, h, rounded, stored, widened)),
    )
    theirs = x.to(torch.float16)
    for ours, reference in (
        (rounded.to(torch.float16), theirs),
        (stored, theirs),
        (widened, h.float()),
    ):
        same = ours.view(torch.int16) == reference.view(torch.int16)
        if reference.dtype == torch.float32:
            same = ours.view(torch.int32) == reference.view(torch.int32)
        assert bool((same | (ours.isnan() & reference.isnan())).all())
    assert torch.equal(rounded.isnan(), x.isnan()) and torch.equal(widened.isnan(), h.isnan())
