"""The PyTorch front-end: ``torch.optim.Optimizer`` subclasses, drop-in for torch.optim."""

from adaptim.torch._base import NONFINITE_POLICIES, TORCH_OPS, Optimizer
from adaptim.torch.averaging import PolynomialAverager
from adaptim.torch.dog import DOG_OPTIMIZERS, DoG, LDoG
from adaptim.torch.hypergrad import HYPERGRAD_OPTIMIZERS, SGDHD, AdamHD
from adaptim.torch.lr_free import (
    LR_FREE_OPTIMIZERS,
    DAdaptAdaGrad,
    DAdaptAdam,
    DAdaptSGD,
    Prodigy,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)
from adaptim.torch.mechanic import Mechanic
from adaptim.torch.optax_family import (
    OPTAX_FAMILY,
    SM3,
    AdaBelief,
    Adan,
    Lion,
    NovoGrad,
    Yogi,
)
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
from adaptim.torch.twins import (
    ASGD,
    RESTRICTED_OPTIMIZERS,
    TWIN_OPTIMIZERS,
    Adafactor,
    Muon,
    Rprop,
    SparseAdam,
)

# hypergradient descent (issue 14): one α per group, stepping like the LR-free rules
LR_FREE_OPTIMIZERS.update(HYPERGRAD_OPTIMIZERS)

# torch.optim's other algorithms (Rprop, ASGD, Adafactor) and the optax family join the registry; the
# learning-rate-free ones stay apart (LR_FREE_OPTIMIZERS: their steps share
# group-wide scalars, so the per-tensor machinery built on OPTIMIZERS does not apply).
OPTIMIZERS.update(TWIN_OPTIMIZERS)
OPTIMIZERS.update(OPTAX_FAMILY)
LR_FREE_OPTIMIZERS.update(DOG_OPTIMIZERS)

__all__ = [
    "ASGD",
    "LAMB",
    "LARS",
    "LR_FREE_OPTIMIZERS",
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "RESTRICTED_OPTIMIZERS",
    "SGD",
    "SM3",
    "TORCH_OPS",
    "AdaBelief",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Adan",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptSGD",
    "DoG",
    "LDoG",
    "Lion",
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
]
__all__ += ["SGDHD", "AdamHD", "Mechanic"]
