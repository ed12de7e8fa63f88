"""adaptim: adaptive optimizers done right, and a lab that compares them fairly.

The PyTorch optimizers are importable from the top level
(``adaptim.Adam``, ``adaptim.RMSprop``, ...); the NumPy front-end lives in
:mod:`adaptim.numpy`, and the update rules both drive in
:mod:`adaptim.algorithms`. ``adaptim.lr_find`` runs the learning-rate range
test (:mod:`adaptim.lab.lr_find`).

The names below load on first use (PEP 562): importing torch takes over a
second, and ``adaptim --help`` or a mistyped argument should not pay for it.
``import adaptim; adaptim.Adam`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads it
    from adaptim import algorithms, numpy
    from adaptim.lab.lr_find import lr_find
    from adaptim.torch import (
        ASGD,
        LAMB,
        LARS,
        LR_FREE_OPTIMIZERS,
        OPTIMIZERS,
        RESTRICTED_OPTIMIZERS,
        SGD,
        SGDHD,
        SM3,
        AdaBelief,
        Adadelta,
        Adafactor,
        Adagrad,
        Adam,
        Adamax,
        AdamHD,
        AdamW,
        Adan,
        DAdaptAdaGrad,
        DAdaptAdam,
        DAdaptSGD,
        DoG,
        LDoG,
        Lion,
        Mechanic,
        Muon,
        NAdam,
        NovoGrad,
        Optimizer,
        PolynomialAverager,
        Prodigy,
        RAdam,
        RMSprop,
        Rprop,
        ScheduleFreeAdamW,
        ScheduleFreeSGD,
        SparseAdam,
        Yogi,
    )

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "LAMB",
    "LARS",
    "LR_FREE_OPTIMIZERS",
    "OPTIMIZERS",
    "RESTRICTED_OPTIMIZERS",
    "SGD",
    "SGDHD",
    "SM3",
    "AdaBelief",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamHD",
    "AdamW",
    "Adamax",
    "Adan",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptSGD",
    "DoG",
    "LDoG",
    "Lion",
    "Mechanic",
    "Muon",
    "NAdam",
    "NovoGrad",
    "Optimizer",
    "PolynomialAverager",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "Rprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "SparseAdam",
    "Yogi",
    "__version__",
    "algorithms",
    "lr_find",
    "numpy",
]

_SUBMODULES = frozenset({"algorithms", "numpy"})
#: Loaded from the lab on first use (the range test needs a model and data, not the CLI).
_LAB_NAMES = {"lr_find": "adaptim.lab.lr_find"}
_TORCH_NAMES = frozenset(__all__) - _SUBMODULES - set(_LAB_NAMES) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"adaptim.{name}")
    if name in _TORCH_NAMES or name in _LAB_NAMES:
        module = _LAB_NAMES.get(name, "adaptim.torch")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'adaptim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
