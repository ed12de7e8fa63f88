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
    # learning-rate-free optimizers (issue 14)
    "LR_FREE_OPTIMIZERS",
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "SGD",
    "TORCH_OPS",
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
]

# -- learning-rate-free optimizers (issue 14) ----------------------------------------
from adaptim.torch.lr_free import (
    LR_FREE_OPTIMIZERS,
    DAdaptAdaGrad,
    DAdaptAdam,
    DAdaptSGD,
    Prodigy,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)
