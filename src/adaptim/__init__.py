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

# -- the optax family (issue 16 point 2) ------------------------------------------------
from adaptim.torch import SM3, AdaBelief, Adan, Lion, NovoGrad, Yogi

__all__ += ["SM3", "AdaBelief", "Adan", "Lion", "NovoGrad", "Yogi"]
