"""Seeded randomness for problems: independent streams from one trial seed, and minibatches.

Every random choice a problem makes (its data, its initial point, the order of
its minibatches, per-step noise) comes from its own stream, derived from the
trial seed and a name with :class:`numpy.random.SeedSequence`. Streams never
touch the global RNGs of torch, NumPy or :mod:`random`, and changing how one
stream is used leaves the others unchanged.

**Devices.** Every draw happens on the CPU, whatever torch's default device is
(a trial on ``--device cuda`` runs under ``torch.device("cuda")``): the built-in
problems pass ``device="cpu"`` to every factory they call with a generator and
then move the result with :func:`to_device`. So a GPU trial sees the very data,
initial weights and minibatch order of the CPU trial with the same seed (a CUDA
generator would draw other numbers, and a CPU generator cannot fill a CUDA
tensor at all).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 64-bit seed for the stream named ``keys`` of trial ``seed``.

    >>> derive_seed(0, "data") == derive_seed(0, "data") != derive_seed(0, "init")
    True
    """
    if seed < 0:
        raise ValueError(f"seeds are non-negative integers, got {seed}")
    spawn_key = tuple(zlib.crc32(k.encode()) if isinstance(k, str) else k for k in keys)
    sequence = np.random.SeedSequence(seed, spawn_key=spawn_key)
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def numpy_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A NumPy generator for the stream ``keys`` of trial ``seed``."""
    return np.random.default_rng(derive_seed(seed, *keys))


def torch_generator(seed: int, *keys: str | int) -> torch.Generator:
    """A CPU torch generator for the stream ``keys`` of trial ``seed``.

    Draw from it with ``device="cpu"``: under another default device torch
    would try to fill a tensor of that device with it.
    """
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, *keys))


def to_device(device: str | torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` on ``device``; on the device they already are, the same objects (no copy)."""
    return tuple(t.to(device) for t in tensors)


@contextmanager
def preserving_global_rngs() -> Iterator[None]:
    """Restore the global RNGs of Python, NumPy and torch on exit.

    For third-party code that reseeds or draws from them: importing
    scikit-learn draws from :mod:`random`, and ``mnist1d.data.make_dataset``
    reseeds :mod:`random` and NumPy with its own seed.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)


class EpochBatches:
    """The minibatch indices of each step: shuffled epochs, the remainder dropped.

    Each epoch is a fresh permutation of ``range(n)`` drawn from the stream
    ``(seed, "batches", epoch)``, cut into ``n // batch_size`` batches, as a
    shuffling ``DataLoader`` with ``drop_last=True`` does (and as DeepOBS does).
    The batch of step ``t`` depends only on ``t``: evaluating a step's loss
    twice (a closure, a retry) sees the same examples. With ``batch_size >= n``
    every step uses the whole set, in order. The permutations are drawn on the
    CPU and the indices live on ``device``, the data's (one copy per epoch).
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, device: str | torch.device = "cpu"
    ) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n = n
        self.batch_size = min(batch_size, n)
        self.seed = seed
        self.batches_per_epoch = n // self.batch_size
        self.device = torch.device(device)
        self._epoch = -1
        self._order = torch.arange(n, device=self.device)

    def __call__(self, step: int) -> torch.Tensor:
        """Indices (int64) of the examples in the minibatch of ``step`` (1-based)."""
        if step < 1:
            raise ValueError(f"steps count from 1, got {step}")
        if self.batch_size == self.n:
            return self._order
        epoch, position = divmod(step - 1, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch_generator(self.seed, "batches", epoch)
            order = torch.randperm(self.n, generator=generator, device="cpu")
            self._order = order.to(self.device)
            self._epoch = epoch
        start = position * self.batch_size
        return self._order[start : start + self.batch_size]
