"""Whether the step counters and scalar state a partition mirrors on the host still hold.

A partition (:mod:`._partition`) keeps each parameter's ``step`` and its
scalar state (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) as one host
value, from which the next step's scalars (bias corrections, the RAdam switch)
are computed without reading a tensor. User code may change those tensors in
place between steps (``state["step"].fill_(0)`` to restart bias correction,
``state["step"] -= 1`` to undo a step); torch.optim reads them every step, so
the partition must notice. Replaced tensors are caught by identity
(:meth:`Partition.state_current`); :class:`CounterCheck` catches values
edited in place, in one C call over the counters' addresses (a ``.item()``
per counter costs about a microsecond: a millisecond a step on 1,000
parameters).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import numpy as np
import torch

from adaptim.torch._native import STEP_KINDS, NativeUnavailable, build_library

_CHECK_SOURCE = """#include <stdint.h>
/* Whether every counter holds the first one's value, which goes to *value. */
int adaptim_counters_hold(int64_t n, const int64_t* counters, int kind, double* value) {
  if (kind == 1) {
    const double first = *value = (double)*(const float*)counters[0];
    for (int64_t t = 1; t < n; ++t) if ((double)*(const float*)counters[t] != first) return 0;
  } else {
    const double first = *value = *(const double*)counters[0];
    for (int64_t t = 1; t < n; ++t) if (*(const double*)counters[t] != first) return 0;
  }
  return 1;
}
"""


@functools.cache
def _checker() -> Callable[..., int] | None:
    try:
        library = build_library(_CHECK_SOURCE, "counters")
    except NativeUnavailable:
        return None
    function = ctypes.CDLL(str(library)).adaptim_counters_hold
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    return function


class CounterCheck:
    """The one value some 0-d tensors hold, if they all hold one.

    One C call where they are CPU float32/float64 0-d tensors of one dtype (as
    torch.optim and adaptim make them) and a C compiler is found; otherwise
    each is read (``float(t)``).
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self._tensors = tensors
        self._call: Callable[[], int] | None = None
        dtype = tensors[0].dtype if tensors else None
        function = _checker() if dtype in (torch.float32, torch.float64) else None
        if function is not None and all(
            t.dtype == dtype and t.ndim == 0 and t.device.type == "cpu" for t in tensors
        ):
            # (kept alive with the tensors: the array holds their addresses)
            self._pointers = np.array([t.data_ptr() for t in tensors], dtype=np.int64)
            self._value = np.zeros(1)
            kind = STEP_KINDS[dtype]
            self._call = functools.partial(
                function, len(tensors), self._pointers.ctypes.data, kind, self._value.ctypes.data
            )

    def value(self) -> float | None:
        """The value every tensor holds, or ``None`` where they differ (a NaN differs)."""
        if self._call is not None:
            return float(self._value[0]) if self._call() else None
        first = float(self._tensors[0])
        return first if all(float(t) == first for t in self._tensors[1:]) else None
