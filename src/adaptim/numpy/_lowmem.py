"""Memory-light optimizer states for the NumPy front-end: bf16 bit patterns and block-wise 8 bits.

The twin of :mod:`adaptim.torch._lowmem` (which explains both formats), with
the same code, thresholds and rounding bits (:mod:`adaptim.algorithms._state_codes`),
so that a NumPy optimizer stores the very values the torch front-end's
per-tensor reference path (``foreach=False``) stores, and their
``state_dict`` entries mean the same numbers:

* ``state_dtype="bfloat16"``: NumPy has no bfloat16, so an entry is kept as
  its 16-bit pattern in ``np.uint16``, the top half of float32's bits
  (``ml_dtypes.bfloat16`` is the same pattern). Writing adds the
  counter-based random bits (16 of ``h(i xor k)``: the top half, or the
  low half for a partner entry such as ``exp_avg_sq``) to the low half of the
  float32 bits and keeps the top half (stochastic rounding, unbiased);
  reading shifts the pattern back into a float32. No dependency is needed.
* ``state_bits=8``: an entry of a parameter with at least 4096 elements is
  a ``uint8`` array of codes of the parameter's shape, its float32 block
  maxima in ``<entry>_absmax``; the nearest code is the number of thresholds
  below ``x/a`` (the index ``torch.bucketize`` gives, found by table look-up),
  and a positive second moment never takes code 0.0.

The rule runs on decoded float32 copies (the parameter's dtype when wider).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from adaptim.algorithms import _state_codes as codes
from adaptim.algorithms._spec import Algorithm, ArrayOps
from adaptim.algorithms._state_codes import ABSMAX_SUFFIX as ABSMAX_SUFFIX

#: The algorithms whose NumPy optimizers take ``state_dtype`` and ``state_bits``: those
#: whose torch optimizers do (rules of element-wise moments; ``tests/test_numpy_lowmem.py``).
MEMORY_LIGHT = frozenset(
    {"adagrad", "rmsprop", "adadelta", "adam", "adamw", "adamax", "nadam", "radam"}
    | {"lion", "adabelief", "yogi", "adan"}
)

_ALLOWED_DTYPES = (
    "None (the parameter's dtype), 'bfloat16' (or ml_dtypes.bfloat16, torch.bfloat16) "
    "or 'float32' (np.float32)"
)


def _dtype_name(value: Any) -> str:
    """``"bfloat16"``, ``"float32"``, ... for a name, a NumPy or ml_dtypes dtype, or a torch dtype."""
    if isinstance(value, str):
        return value
    if type(value).__module__.startswith("torch"):  # (no torch import: str(torch.bfloat16))
        return str(value).removeprefix("torch.")
    try:
        return str(np.dtype(value).name)
    except TypeError:
        return repr(value)


def check_options(state_dtype: Any, state_bits: Any) -> tuple[str | None, int | None]:
    """The validated ``(state_dtype, state_bits)``: ``"bfloat16"``/``"float32"``/None and 8/None."""
    if state_dtype is not None:
        name = _dtype_name(state_dtype)
        if name not in ("bfloat16", "float32"):
            raise ValueError(f"Invalid state_dtype: {state_dtype!r}; allowed: {_ALLOWED_DTYPES}.")
        state_dtype = name
    return state_dtype, codes.check_state_bits(state_bits, state_dtype)


# -- bfloat16 as 16-bit patterns ---------------------------------------------------------


def rounding_noise(numel: int, stream: int, shift: int = 16) -> np.ndarray:
    """The 16 random bits of elements ``0..numel-1`` in key ``stream``: ``(h(i xor k) >> shift) & 0xFFFF``."""
    mixed: np.ndarray = codes.mix32(np.arange(numel, dtype=np.int64) ^ stream)
    return ((mixed >> shift) & 0xFFFF).astype(np.int32)


def stochastic_round_bf16(x: np.ndarray, stream: int, shift: int = 16) -> np.ndarray:
    """``x`` rounded to bfloat16 stochastically (unbiased), as ``np.uint16`` bit patterns.

    Element ``i`` of the flattened ``x`` (in float32) adds the ``i``-th of
    :func:`rounding_noise` (of ``stream`` and ``shift``, the top or the low
    half of the hash: :func:`adaptim.algorithms._state_codes.noise_shift`)
    below bf16's last mantissa bit and keeps the top
    16 bits: the carry, when the noise reaches past the dropped fraction, is
    the round-up. A NaN is stored as the pattern 0xFFFF, the NaN torch's CPU
    conversion to bfloat16 writes.
    """
    x = np.asarray(x, dtype=np.float32, order="C")  # (ascontiguousarray makes 0-d 1-d)
    bits = x.view(np.int32)
    noise = rounding_noise(x.size, stream, shift).reshape(x.shape)
    rounded: np.ndarray = ((bits + noise) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # (a NaN's low half could carry into infinity)
        rounded[nan] = 0xFFFF
    return rounded


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 patterns (``np.uint16``) as the float32 values they are, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# -- block-wise 8 bits ---------------------------------------------------------------------


def _blocks(x: np.ndarray) -> np.ndarray:
    """``x`` flattened and zero-padded to rows of :data:`BLOCK` values."""
    flat = x.reshape(-1)
    pad = -flat.size % codes.BLOCK
    if pad:
        flat = np.concatenate([flat, np.zeros(pad, dtype=flat.dtype)])
    return flat.reshape(-1, codes.BLOCK)


def _nearest_code(scaled: np.ndarray, signed: bool) -> np.ndarray:
    """The number of thresholds below each value of ``scaled`` in [-1, 1]: its nearest code.

    What ``np.searchsorted(thresholds, scaled)`` gives, by table look-up
    (:func:`adaptim.algorithms._state_codes.bucket_tables`; 40 times faster).
    """
    below_positive, thresholds, below_negative, mirrored = codes.bucket_tables(signed)
    magnitude = np.abs(scaled)
    bucket = np.minimum(magnitude.view(np.int32) >> codes.BUCKET_SHIFT, codes.BUCKETS - 1)
    count = below_positive[bucket]
    count += thresholds[count] < magnitude
    mirrored_count = below_negative[bucket]
    mirrored_count += mirrored[mirrored_count] <= magnitude
    nearest: np.ndarray = np.where(scaled < 0, (thresholds.size - 1) - mirrored_count, count)
    return nearest


def quantize_blockwise(x: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, absmax)``: ``x`` as uint8 indices into the dynamic code and float32 block maxima."""
    blocks = _blocks(np.asarray(x, dtype=np.float32))
    absmax = np.abs(blocks).max(axis=1)
    # (an all-zero block has absmax 0; dividing by 1 keeps it at code 0.0)
    scaled = np.clip(blocks / np.where(absmax > 0, absmax, np.float32(1))[:, None], -1.0, 1.0)
    index = _nearest_code(scaled, signed)
    if not signed:  # a positive second moment never decodes to 0 (Adam's step would be m/ε)
        index = np.where(scaled > 0, np.maximum(index, 1), index)
    return index.astype(np.uint8).reshape(-1)[: x.size].reshape(x.shape), absmax


def dequantize_blockwise(
    q: np.ndarray, absmax: np.ndarray, signed: bool, dtype: Any = np.float32
) -> np.ndarray:
    """The values :func:`quantize_blockwise` encoded, in ``dtype``."""
    values = codes.dynamic_code(signed)[_blocks(q)] * np.asarray(absmax, np.float32)[:, None]
    decoded: np.ndarray = values.reshape(-1)[: q.size].reshape(q.shape).astype(dtype, copy=False)
    return decoded


# -- the format of one optimizer -----------------------------------------------------------


def is_encoded(value: Any) -> bool:
    """Whether a state entry is 8-bit codes or bf16 patterns."""
    return getattr(value, "dtype", None) in (np.uint8, np.uint16)


def as_stored(value: Any) -> np.ndarray:
    """A loaded entry as this front-end keeps it: bf16 arrays as their patterns.

    An ``ml_dtypes.bfloat16`` array becomes its ``np.uint16`` patterns; a
    torch bfloat16 tensor (which NumPy cannot convert) its float32 values,
    which the format then stores exactly (torch is not imported).
    """
    if str(getattr(value, "dtype", "")).startswith("torch."):
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.detach().cpu().numpy()  # (np.array of a tensor warns under NumPy 2)
    array = np.array(value, copy=True)
    if array.dtype.name == "bfloat16" and array.dtype.itemsize == 2:
        return array.view(np.uint16)
    return array


#: The paragraph the docstring of each memory-light NumPy optimizer gets.
CLASS_DOC = """\
``state_dtype="bfloat16"`` keeps the element-wise state as bf16 bit patterns
(``np.uint16``) written with stochastic rounding; ``state_bits=8`` as
block-wise 8-bit codes (``np.uint8``, a float32 maximum per block of 256, for
parameters of 4096 elements or more). Both store what the torch front-end's
``foreach=False`` path stores (:mod:`adaptim.numpy._lowmem`).

"""


@dataclasses.dataclass(frozen=True)
class StateFormat:
    """How one NumPy optimizer stores element-wise state: bf16 (``dtype``) or 8 bits (``bits``)."""

    dtype: str | None
    bits: int | None
    #: Seeds the rounding bits; fixed at 0, as in the torch front-end.
    seed: int = 0

    def describe(self) -> str:
        return f"state_dtype={self.dtype!r}" if self.dtype else f"state_bits={self.bits}"

    def quantizes(self, p: np.ndarray) -> bool:
        return self.bits == 8 and p.size >= codes.MIN_8BIT_NUMEL

    def stored_dtype(self, p: np.ndarray) -> np.dtype[Any]:
        if self.quantizes(p):
            return np.dtype(np.uint8)
        if self.dtype == "bfloat16":
            return np.dtype(np.uint16)
        return np.dtype(self.dtype or p.dtype)

    def write(
        self,
        state: dict[str, Any],
        key: str,
        value: np.ndarray,
        p: np.ndarray,
        *,
        step: int = 0,
        position: int = 0,
    ) -> None:
        """Store ``value`` (the rule's new entry at ``step``) as this format keeps it.

        ``position`` (the parameter's index in ``state_dict``) and ``step``
        pick the rounding bits, as in the torch front-end.
        """
        state.pop(key + ABSMAX_SUFFIX, None)
        if self.quantizes(p):
            signed = key not in codes.NONNEGATIVE_STATE
            state[key], state[key + ABSMAX_SUFFIX] = quantize_blockwise(value, signed)
        elif self.dtype == "bfloat16":
            stream = codes.stream_key(self.seed, position, key, step)
            state[key] = stochastic_round_bf16(value, stream, codes.noise_shift(key))
        else:  # float32 states, or an 8-bit optimizer's small tensor (the ordinary state)
            state[key] = np.array(value, dtype=self.stored_dtype(p))

    def conform(
        self, state: dict[str, Any], keys: list[str], p: np.ndarray, position: int = 0
    ) -> None:
        """Re-store the entries ``keys`` of ``state`` (of any format) in this one.

        A conversion rounds with the bits of the state's current step (and
        ``position`` 0, as the torch front-end does).
        """
        step = int(state["step"]) if "step" in state else 0
        for key in keys:
            value = state.get(key)
            if value is None or value.dtype == self.stored_dtype(p):
                continue  # (re-encoding is not the identity: 8-bit maxima move)
            decoded = read(state, key, p)
            if decoded.shape == p.shape:
                self.write(state, key, decoded, p, step=step, position=position)


def working_dtype(p: np.ndarray) -> np.dtype[Any]:
    """The dtype the rule computes in: float32, or the parameter's when wider."""
    return np.promote_types(p.dtype, np.float32)


def read(state: Mapping[str, Any], key: str, p: np.ndarray) -> np.ndarray:
    """The entry ``key`` decoded to the working dtype, whatever its format."""
    value = state[key]
    work = working_dtype(p)
    if value.dtype == np.uint8:
        signed = key not in codes.NONNEGATIVE_STATE
        return dequantize_blockwise(value, state[key + ABSMAX_SUFFIX], signed, work)
    if value.dtype == np.uint16:
        return bf16_to_float32(value).astype(work, copy=False)
    return np.asarray(value).astype(work, copy=False)


def update_decoded(
    fmt: StateFormat,
    algorithm: Algorithm,
    p: np.ndarray,
    grad: np.ndarray,
    state: dict[str, Any],
    entries: list[str],
    step: float,
    hp: Mapping[str, Any],
    xp: ArrayOps,
    position: int,
) -> None:
    """One step of ``algorithm`` on ``p``: the rule on decoded entries, the result encoded.

    As :func:`adaptim.torch._lowmem.update_decoded`: parameter, gradient and
    state in the working dtype, the new parameter cast back to its own, the
    rounding bits of (``position``, entry, ``step``); ``step`` is left to the
    caller.
    """
    work = working_dtype(p)
    # Element-wise entries decoded; scalars (NAdam's mu_product) as they are.
    inputs = {k: _input(state, k, p) for k in entries}
    new_p, new_state = algorithm.update(
        p.astype(work, copy=False), grad.astype(work, copy=False), inputs, step=step, xp=xp, **hp
    )
    p[...] = new_p
    for key, value in new_state.items():
        # (a 0-d parameter's entries stay float32, as on torch's paths: a format
        # saves nothing there; scalars such as NAdam's mu_product stay as they are)
        if np.ndim(value) > 0 and np.shape(value) == p.shape and key not in algorithm.scalar_state:
            fmt.write(state, key, value, p, step=int(step), position=position)
        elif inputs[key] is None:  # a per-tensor value the rule creates
            state[key] = np.array(value)
        else:  # a scalar the rule keeps, in its own dtype
            state[key] = np.asarray(value, dtype=state[key].dtype)


def _input(state: Mapping[str, Any], key: str, p: np.ndarray) -> np.ndarray | None:
    value = state.get(key)
    if value is None:
        return None
    return read(state, key, p) if np.ndim(value) or is_encoded(value) else np.asarray(value)


def decoded_or_plain(
    fmt: StateFormat | None, state: dict[str, Any], keys: list[str], p: np.ndarray
) -> None:
    """After loading: the entries ``keys`` in ``fmt``, or decoded to ``p``'s dtype without one."""
    if fmt is not None:
        fmt.conform(state, keys, p)
        return
    for key in keys:
        if is_encoded(state.get(key)):
            state[key] = read(state, key, p).astype(p.dtype)
            state.pop(key + ABSMAX_SUFFIX, None)


def plain_layout(state: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``state`` with each encoded entry shown as a float placeholder of its shape, for checks.

    Also returns what is wrong with the 8-bit entries (their block maxima
    missing or of the wrong length), or ``None``.
    """
    plain = {k: v for k, v in state.items() if not k.endswith(ABSMAX_SUFFIX)}
    for key, value in list(plain.items()):
        if not is_encoded(value):
            continue
        if value.dtype == np.uint8:
            absmax = state.get(key + ABSMAX_SUFFIX)
            blocks = -(value.size // -codes.BLOCK)
            if getattr(absmax, "shape", None) != (blocks,):
                found = "missing" if absmax is None else f"of shape {np.shape(absmax)}"
                return plain, (
                    f"8-bit entry {key!r} needs {key + ABSMAX_SUFFIX!r} of shape ({blocks},), "
                    f"found {found}"
                )
        plain[key] = np.broadcast_to(np.float32(0), value.shape)  # (no memory)
    return plain, None
