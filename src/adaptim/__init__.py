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

if TYPE_CHECKING:
    from adaptim.lab.lr_find import lr_find

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
    "lr_find",
    "numpy",
]


def __getattr__(name: str) -> object:
    # The range test lives in the lab; loaded on first use, so `import adaptim` stays light.
    if name == "lr_find":
        from adaptim.lab.lr_find import lr_find

        return lr_find
    raise AttributeError(f"module 'adaptim' has no attribute {name!r}")
