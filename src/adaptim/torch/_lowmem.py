"""Memory-light optimizer states: bfloat16 with stochastic rounding, or block-wise 8 bits.

An optimizer built with ``state_dtype=torch.bfloat16`` or ``state_bits=8``
keeps the element-wise state of each parameter (Adam's ``exp_avg`` and
``exp_avg_sq``, RMSprop's ``square_avg``, ...) in a narrow format. Every step
decodes it to float32 (or the parameter's dtype, when wider), runs the
unchanged update rule, and encodes the result again. Scalars (``step``) and
parameters are untouched.

**bfloat16 with stochastic rounding.** bf16 keeps float32's 8 exponent bits
and 7 of its 23 mantissa bits. Rounding to nearest would drop a moment's
small increments systematically: with β₂ = 0.999, ``(1-β₂)·g²`` is below half
a bf16 ulp of ``v`` once ``g²`` is a little smaller than ``v`` (under
``0.25·v``), so ``v`` would never move. Stochastic rounding instead rounds up
with probability equal to the dropped fraction of an ulp, which makes the
stored value unbiased, ``E[round(x)] = x``. It is done on the bit pattern:
add 16 uniformly random bits to the low half of float32's bits, then clear
that half (the carry, when there is one, is the round-up).

The random bits are *counter-based*: those of element ``i`` of entry ``key``
of the parameter at position ``j`` (its index in ``state_dict``) written at
step ``t`` are the top 16 bits of ``h(i xor k)``, where ``h`` is a 32-bit
xorshift-multiply mixer (a bijection with full avalanche) and ``k`` a hash of
``(j, key, t)`` (:mod:`._rounding`); a second moment takes the low 16 bits of
its first moment's hash (``exp_avg_sq`` those of ``exp_avg``), so that one
hash per element serves both. No generator state exists: everything
the draw depends on is in ``state_dict`` already, so a run saved and resumed
is bit-identical to one that was not interrupted, and the native loop
draws exactly the same bits element by element.

**Block-wise 8 bits** (Dettmers, Lewis, Shleifer & Zettlemoyer 2022, "8-bit
Optimizers via Block-wise Quantization", ICLR 2022). A state tensor is
flattened and cut into blocks of 256 values; each block stores its absolute
maximum ``a_b`` in float32 and each value the index ``q`` of the nearest
point of a 256-entry *dynamic* code on [-1, 1] to ``x / a_b``, decoded as
``code[q]·a_b``. The dynamic code (Dettmers 2016, "8-Bit Approximations for
Parallelism in Deep Learning") spends its bits like a float: a run of
leading zeros picks a decade ``10^-k`` (k = 0..6) and the remaining bits a
linear fraction in [0.1, 1] inside it, so small values keep a relative
precision that a linear code would lose. Signed entries (first moments) use
the signed code, non-negative ones (second moments, AdaGrad's sum) the
unsigned code, which spends the sign bit on one more fraction bit. These are
bitsandbytes' ``dynamic`` and ``udynamic`` maps. As in bitsandbytes, a
parameter with fewer than 4096 elements keeps its ordinary state.
The state keeps torch's entry names: ``exp_avg`` is a ``uint8`` tensor of the
parameter's shape and ``exp_avg_absmax`` its float32 block maxima.

On the CPU (float32 parameters) both formats step in the engine's native
loop (:mod:`._lowmem_native`), which decodes and encodes each value in
registers with the same rounding bits and codes as this module; elsewhere,
and with ``foreach=False``, this module's per-tensor reference path decodes
each tensor, runs the rule and encodes the result.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from adaptim.algorithms import _state_codes
from adaptim.algorithms._spec import Algorithm, ArrayOps

# The layout constants, the code and the rounding bits are shared with the NumPy
# front-end (adaptim.numpy._lowmem), so that both store the same bits.
from adaptim.algorithms._state_codes import ABSMAX_SUFFIX as ABSMAX_SUFFIX
from adaptim.algorithms._state_codes import BLOCK as BLOCK
from adaptim.algorithms._state_codes import MIN_8BIT_NUMEL as MIN_8BIT_NUMEL
from adaptim.algorithms._state_codes import NONNEGATIVE_STATE as NONNEGATIVE_STATE
from adaptim.torch import _lowmem_shards as shards
from adaptim.torch._rounding import noise_shift, stochastic_round_bf16, stream_key

_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_ALLOWED_DTYPES = "None (the parameter's dtype), torch.bfloat16 or torch.float32"


def check_options(state_dtype: Any, state_bits: Any) -> tuple[torch.dtype | None, int | None]:
    """The validated ``(state_dtype, state_bits)``; strings such as ``"bfloat16"`` are accepted."""
    if isinstance(state_dtype, str) and state_dtype in _DTYPE_NAMES:
        state_dtype = _DTYPE_NAMES[state_dtype]
    if state_dtype is not None and state_dtype not in _DTYPE_NAMES.values():
        raise ValueError(f"Invalid state_dtype: {state_dtype!r}; allowed: {_ALLOWED_DTYPES}.")
    return state_dtype, _state_codes.check_state_bits(state_bits, state_dtype)


@functools.cache
def dynamic_code(signed: bool) -> torch.Tensor:
    """:func:`adaptim.algorithms._state_codes.dynamic_code` as a float32 tensor (computed once)."""
    return torch.from_numpy(_state_codes.dynamic_code(signed).copy())


@functools.cache
def _thresholds(signed: bool) -> torch.Tensor:
    """The midpoints between neighbouring code points: ``bucketize`` against them is nearest."""
    return torch.from_numpy(_state_codes.thresholds(signed).copy())


_BUCKET_SHIFT = _state_codes.BUCKET_SHIFT
_BUCKETS = _state_codes.BUCKETS


@functools.cache
def _lookup(signed: bool) -> tuple[torch.Tensor, ...]:
    """:func:`adaptim.algorithms._state_codes.bucket_tables` as tensors (computed once).

    ``torch.bucketize`` over 255 thresholds is a binary search per element;
    two small gathers and two comparisons are faster on CPU and give the same
    index (``tests/test_lowmem.py``).
    """
    return tuple(torch.from_numpy(t.copy()) for t in _state_codes.bucket_tables(signed))


def _nearest_code(scaled: torch.Tensor, signed: bool) -> torch.Tensor:
    """The index of the nearest code point of each value of ``scaled`` in [-1, 1] (int32)."""
    below_positive, thresholds, below_negative, mirrored = (
        t.to(scaled.device) for t in _lookup(signed)
    )
    magnitude = scaled.abs().view(-1)
    bucket = (magnitude.view(torch.int32) >> _BUCKET_SHIFT).clamp_(max=_BUCKETS - 1)
    # (index_select: the fastest gather of torch's CPU kernels for a flat index)
    base = below_positive.index_select(0, bucket)
    positive = base + (thresholds.index_select(0, base) < magnitude)
    base = below_negative.index_select(0, bucket)
    negative = (thresholds.numel() - 1) - (base + (mirrored.index_select(0, base) <= magnitude))
    return torch.where(scaled.view(-1) < 0, negative, positive).view(scaled.shape)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """``x`` flattened and zero-padded to rows of :data:`BLOCK` values."""
    flat = x.reshape(-1)
    pad = -flat.numel() % BLOCK
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(-1, BLOCK)


def quantize_blockwise(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, absmax)``: ``x`` as uint8 indices into :func:`dynamic_code` and float32 block maxima."""
    blocks = _blocks(x.float())
    absmax = blocks.abs().amax(dim=1)
    # (an all-zero block has absmax 0; dividing by 1 keeps it at code 0.0)
    scaled = blocks / torch.where(absmax > 0, absmax, 1.0).unsqueeze(1)
    codes = _nearest_code(scaled.clamp_(-1.0, 1.0), signed)
    if not signed:
        # A positive second moment must not decode to 0: beside a first moment
        # that kept a nonzero code, Adam's step would become m/ε. Below the
        # smallest code it is kept at that code instead (index 1, as 0 is 0.0).
        codes = torch.where(scaled > 0, codes.clamp(min=1), codes)
    codes = codes.to(torch.uint8)
    return codes.view(-1)[: x.numel()].view(x.shape), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, signed: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The values :func:`quantize_blockwise` encoded, in ``dtype``."""
    blocks = _blocks(codes)
    code = dynamic_code(signed).to(codes.device)
    values = code.index_select(0, blocks.view(-1).long()).view(blocks.shape) * absmax.unsqueeze(1)
    return values.view(-1)[: codes.numel()].view(codes.shape).to(dtype)


@dataclasses.dataclass
class StateFormat:
    """How one optimizer stores element-wise state: bf16 (``dtype``) or 8 bits (``bits``)."""

    dtype: torch.dtype | None
    bits: int | None
    #: Seeds :func:`stream_key`; fixed at 0, so that runs (and resumed runs) repeat.
    seed: int = 0
    #: ``id(p)`` → (group index, index in the group, position over all groups).
    positions: dict[int, tuple[int, int, int]] = dataclasses.field(default_factory=dict)

    def __getstate__(self) -> dict[str, Any]:
        # A copy or a pickle holds other parameter objects: positions are found afresh.
        return {**self.__dict__, "positions": {}}

    def position(self, p: torch.Tensor, param_groups: list[dict[str, Any]]) -> int:
        """``p``'s index over all param groups (its id in ``state_dict``), from a checked cache."""
        found = self.positions.get(id(p))
        if found is not None:
            group, index, position = found
            if group < len(param_groups):
                params = param_groups[group]["params"]
                if index < len(params) and params[index] is p:
                    return position
        self.positions = {}
        flat = (q for group in param_groups for q in group["params"])
        where = (
            (g, i) for g, group in enumerate(param_groups) for i in range(len(group["params"]))
        )
        for position, (q, (g, i)) in enumerate(zip(flat, where, strict=True)):
            self.positions.setdefault(id(q), (g, i, position))
        found = self.positions.get(id(p))
        return 0 if found is None else found[2]

    def describe(self) -> str:
        return f"state_dtype={self.dtype}" if self.dtype is not None else f"state_bits={self.bits}"

    def quantizes(self, p: torch.Tensor) -> bool:
        return self.bits == 8 and p.numel() >= MIN_8BIT_NUMEL

    def working_dtype(self, p: torch.Tensor) -> torch.dtype:
        """The dtype the rule computes in: float32, or the parameter's when wider."""
        return torch.promote_types(p.dtype, torch.float32)

    def read(self, state: Mapping[str, Any], key: str, p: torch.Tensor) -> torch.Tensor | None:
        """The entry ``key`` decoded to the working dtype (``None`` if absent), whatever its format.

        Of a DTensor parameter: its local shard's values, a plain tensor.
        """
        value: torch.Tensor | None = state.get(key)
        if value is None:
            return None
        if value.dtype == torch.uint8:
            codes = shards.local(value)
            absmax = shards.local_absmax(state[key + ABSMAX_SUFFIX], codes)
            return dequantize_blockwise(
                codes, absmax, key not in NONNEGATIVE_STATE, self.working_dtype(p)
            )
        return shards.local(value).to(self.working_dtype(p))

    def write(
        self,
        state: dict[str, Any],
        key: str,
        value: torch.Tensor,
        p: torch.Tensor,
        *,
        step: int = 0,
        position: int = 0,
    ) -> None:
        """Store ``value`` (the rule's new entry at ``step``) as this format keeps it.

        ``position`` (the parameter's index in ``state_dict``) and ``step``
        pick the stochastic rounding's bits (:func:`stream_key`). Of a DTensor
        parameter, ``value`` is its local shard's, and the entry is stored as
        :mod:`._lowmem_shards` describes.
        """
        state.pop(key + ABSMAX_SUFFIX, None)
        if self.quantizes(p):  # (p.numel() is the global count: every rank decides alike)
            codes, absmax = quantize_blockwise(value, signed=key not in NONNEGATIVE_STATE)
            state[key] = shards.like(p, codes)
            state[key + ABSMAX_SUFFIX] = shards.wrap_absmax(p, absmax)
        elif self.dtype == torch.bfloat16 and value.dtype != torch.bfloat16:
            stream = stream_key(self.seed, position, key, step)
            rounded = stochastic_round_bf16(
                value.float(), stream, noise_shift(key), shards.global_indices(p)
            )
            state[key] = shards.like(p, rounded)
        elif self.dtype is not None:
            state[key] = shards.like(p, value.to(self.dtype))
        else:  # 8-bit optimizer, small tensor: the ordinary state
            state[key] = shards.like(p, value.to(p.dtype))

    def _holds(self, state: Mapping[str, Any], key: str, p: torch.Tensor) -> bool:
        """Whether the entry ``key`` is already in this format."""
        dtype = getattr(state.get(key), "dtype", None)
        if self.quantizes(p):
            return dtype == torch.uint8
        return dtype == (self.dtype or p.dtype)

    def conform(
        self, state: dict[str, Any], keys: list[str], p: torch.Tensor, position: int = 0
    ) -> None:
        """Re-store the entries ``keys`` of ``state`` (of any format) in this one.

        A conversion rounds with the bits of the state's current step.
        """
        step = int(state["step"]) if "step" in state else 0
        for key in keys:
            if self._holds(state, key, p):  # re-encoding is not the identity (8-bit maxima)
                continue
            value = self.read(state, key, p)
            if value is not None and value.shape == shards.local(p).shape:
                self.write(state, key, value, p, step=step, position=position)


def update_decoded(
    fmt: StateFormat,
    algorithm: Algorithm,
    p: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, Any],
    entries: list[str],
    decoded: Mapping[str, torch.Tensor],
    step: float | torch.Tensor,
    hp: Mapping[str, Any],
    xp: ArrayOps,
    position: int = 0,
) -> None:
    """One step of ``algorithm`` on ``p``: the rule on the ``decoded`` entries, the result encoded.

    Parameter and gradient are computed in the working dtype (float32 at
    least) and the new parameter is cast back to its own; ``step`` is left to
    the caller. ``position`` is ``p``'s index in ``state_dict`` (for the
    rounding bits, with ``step``).
    """
    work = fmt.working_dtype(p)
    inputs = {k: decoded.get(k, state.get(k)) for k in entries}
    # A DTensor (FSDP2's shard) steps its local shard: the rule is element-wise.
    target = shards.local(p)
    new_p, new_state = algorithm.update(
        target.to(work), shards.local(grad).to(work), inputs, step=step, xp=xp, **hp
    )
    target.copy_(new_p)
    for key, value in new_state.items():
        # (a 0-d parameter's entries stay float32, as in the native loop: a format
        # saves nothing there; scalars such as NAdam's mu_product stay as they are)
        if value.ndim > 0 and value.shape == target.shape and key not in algorithm.scalar_state:
            fmt.write(state, key, value, p, step=int(step), position=position)
        elif inputs[key] is None:  # a per-tensor value the rule creates
            state[key] = value.detach().clone()
        else:
            state[key].copy_(value)


def conform_loaded(
    fmt: StateFormat | None,
    p: torch.Tensor,
    state: dict[str, Any],
    saved: Mapping[str, Any],
    elementwise_keys: Callable[[Mapping[str, Any]], list[str]],
) -> None:
    """After ``load_state_dict``: the element-wise entries of ``state`` in ``fmt``.

    torch's loading casts every floating entry to the parameter's dtype and
    8-bit codes to floats too, so codes and block maxima are taken as
    ``saved``; then each entry is converted to this optimizer's format (an
    optimizer without a format decodes what came encoded).
    """
    for key, value in saved.items():
        if isinstance(value, torch.Tensor) and (
            value.dtype == torch.uint8 or key.endswith(ABSMAX_SUFFIX)
        ):
            state[key] = value.detach().to(p.device, copy=True)
    keys = elementwise_keys(state)
    if fmt is not None:
        fmt.conform(state, keys, p)
        return
    plain = StateFormat(None, None)
    for key in keys:
        if state[key].dtype == torch.uint8:
            decoded = plain.read(state, key, p)
            assert decoded is not None
            state[key] = shards.like(p, decoded.to(p.dtype))
            del state[key + ABSMAX_SUFFIX]


_SHARDING_HINT = (
    " (a sharded run's 8-bit state, whose blocks are per shard, loads into the same sharding)"
)


def plain_layout(state: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``state`` with each 8-bit entry shown as a float placeholder of its shape, for checks.

    Also returns what is wrong with the 8-bit entries (their block maxima
    missing or of the wrong length), or ``None``.
    """
    plain = {k: v for k, v in state.items() if not k.endswith(ABSMAX_SUFFIX)}
    for key, value in list(plain.items()):
        if getattr(value, "dtype", None) != torch.uint8:
            continue
        absmax = state.get(key + ABSMAX_SUFFIX)
        expected = shards.absmax_shape(value)
        sharded = len(expected) > 1 or getattr(absmax, "ndim", 1) > 1
        hint = _SHARDING_HINT if sharded else ""
        if not isinstance(absmax, torch.Tensor) or absmax.shape != expected:
            found = "missing" if absmax is None else f"of shape {tuple(absmax.shape)}"
            return plain, (
                f"8-bit entry {key!r} needs {key + ABSMAX_SUFFIX!r} of shape {expected}, "
                f"found {found}{hint}"
            )
        plain[key] = torch.empty(value.shape, device="meta")
    return plain, None
