"""adaptim: adaptive optimizers done right, and a lab that compares them fairly.

The PyTorch optimizers are importable from the top level
(``adaptim.Adam``, ``adaptim.RMSprop``, ...); the NumPy front-end lives in
:mod:`adaptim.numpy`, and the update rules both drive in
:mod:`adaptim.algorithms`. ``adaptim.lr_find`` runs the learning-rate range
test (:mod:`adaptim.lab.lr_find`).
"""

from typing import TYPE_CHECKING

from adaptim import algorithms, numpy
from adaptim.torch import (
    LAMB,
    LARS,
    LR_FREE_OPTIMIZERS,
    OPTIMIZERS,
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    DAdaptAdaGrad,
    DAdaptAdam,
    DAdaptSGD,
    NAdam,
    Optimizer,
    Prodigy,
    RAdam,
    RMSprop,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)

if TYPE_CHECKING:
    from adaptim.lab.lr_find import lr_find

__version__ = "0.1.0"

__all__ = [
    "LAMB",
    "LARS",
    # learning-rate-free optimizers (issue 14)
    "LR_FREE_OPTIMIZERS",
    "OPTIMIZERS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptSGD",
    "NAdam",
    "Optimizer",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "__version__",
    "algorithms",
    "lr_find",
    "numpy",
]


def __getattr__(name: str) -> object:
    # The range test lives in the lab; loaded on first use, so `import adaptim` stays light.
    if name == "lr_find":
        from adaptim.lab.lr_find import lr_find

        return lr_find
    raise AttributeError(f"module 'adaptim' has no attribute {name!r}")
