"""adaptim: adaptive optimizers done right, and a lab that compares them fairly.

The PyTorch optimizers are importable from the top level
(``adaptim.Adam``, ``adaptim.RMSprop``, ...); the NumPy front-end lives in
:mod:`adaptim.numpy`, and the update rules both drive in
:mod:`adaptim.algorithms`.
"""

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
    "numpy",
]

# -- learning-rate-free optimizers (issue 14) ----------------------------------------
from adaptim.torch import (
    LR_FREE_OPTIMIZERS,
    DAdaptAdaGrad,
    DAdaptAdam,
    DAdaptSGD,
    Prodigy,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)
