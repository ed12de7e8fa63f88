"""adaptim: adaptive optimizers done right, and a lab that compares them fairly.

The PyTorch optimizers are importable from the top level
(``adaptim.Adam``, ``adaptim.RMSprop``, ...); the NumPy front-end lives in
:mod:`adaptim.numpy`, and the update rules both drive in
:mod:`adaptim.algorithms`.

The names below load on first use (PEP 562): importing torch takes over a
second, and ``adaptim --help`` or a mistyped argument should not pay for it.
``import adaptim; adaptim.Adam`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads it
    from adaptim import algorithms, numpy
    from adaptim.torch import (
        LAMB,
        LARS,
        OPTIMIZERS,
        SGD,
        Adadelta,
        Adagrad,
        Adam,
        Adamax,
        AdamW,
        NAdam,
        Optimizer,
        RAdam,
        RMSprop,
    )

__version__ = "0.1.0"

__all__ = [
    "LAMB",
    "LARS",
    "OPTIMIZERS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "__version__",
    "algorithms",
    "numpy",
]

_SUBMODULES = frozenset({"algorithms", "numpy"})
_TORCH_NAMES = frozenset(__all__) - _SUBMODULES - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"adaptim.{name}")
    if name in _TORCH_NAMES:
        value = getattr(importlib.import_module("adaptim.torch"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'adaptim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
