"""The PyTorch front-end: ``torch.optim.Optimizer`` subclasses, drop-in for torch.optim."""

from adaptim.torch._base import NONFINITE_POLICIES, TORCH_OPS, Optimizer
from adaptim.torch.optimizers import (
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
    RAdam,
    RMSprop,
)
from adaptim.torch.twins import ASGD, TWIN_OPTIMIZERS, Adafactor, Rprop

# -- issue 16 (twins): torch.optim's other algorithms join the registry -------------------
OPTIMIZERS.update(TWIN_OPTIMIZERS)

__all__ = [
    "LAMB",
    "LARS",
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "SGD",
    "TORCH_OPS",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
]

# -- issue 16 (twins)
__all__ += ["ASGD", "Adafactor", "Rprop"]
