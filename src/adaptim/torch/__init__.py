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

# -- the optax family (issue 16 point 2) ------------------------------------------------
from adaptim.torch.optax_family import (
    OPTAX_FAMILY,
    SM3,
    AdaBelief,
    Adan,
    Lion,
    NovoGrad,
    Yogi,
)

OPTIMIZERS.update(OPTAX_FAMILY)
__all__ += ["SM3", "AdaBelief", "Adan", "Lion", "NovoGrad", "Yogi"]
