"""The NumPy front-end: the same algorithms for models written in plain NumPy.

>>> import numpy as np, adaptim.numpy as anp
>>> w = np.zeros(3)
>>> opt = anp.Adam([w], lr=0.1)
>>> opt.step([np.array([1.0, -2.0, 0.5])])   # updates w in place
>>> w.round(3).tolist()
[-0.1, 0.1, -0.1]

Hyperparameter names and defaults are torch's, param groups work as in torch
(a list of dicts with a ``"params"`` key), and ``state_dict()`` uses torch's
layout with parameters numbered in order. Each class drives the very update
rule of :mod:`adaptim.algorithms` that the PyTorch front-end drives.
"""

from __future__ import annotations

from adaptim import flavors
from adaptim.algorithms import ALGORITHMS, Algorithm
from adaptim.numpy import _lowmem
from adaptim.numpy._base import Optimizer
from adaptim.numpy._ops import _SCALAR_DTYPE as _SCALAR_DTYPE
from adaptim.numpy._ops import NONFINITE_POLICIES as NONFINITE_POLICIES
from adaptim.numpy._ops import NUMPY_OPS
from adaptim.numpy._ops import _real_view as _real_view
from adaptim.numpy._sparse import RowSparse


def _front_end(algorithm: Algorithm, class_name: str) -> type[Optimizer]:
    doc = (
        f"{algorithm.title}.\n\n"
        f"NumPy twin of :class:`adaptim.{class_name}`: the same hyperparameters "
        f"({', '.join(algorithm.hparams)}, maximize, nonfinite"
        + (", flavor" if flavors.has_flavors(algorithm.name) else "")
        + ") with the same defaults.\n\n"
        + (_lowmem.CLASS_DOC if algorithm.name in _lowmem.MEMORY_LIGHT else "")
        + (algorithm.update.__doc__ or "")
    )
    return type(
        class_name, (Optimizer,), {"algorithm": algorithm, "__doc__": doc, "__module__": __name__}
    )


OPTIMIZERS: dict[str, type[Optimizer]] = {
    name: _front_end(algorithm, algorithm.class_name) for name, algorithm in ALGORITHMS.items()
}
#: The optimizers that take ``state_dtype`` and ``state_bits`` (as in the torch front-end).
MEMORY_LIGHT_OPTIMIZERS: dict[str, type[Optimizer]] = {
    name: cls for name, cls in OPTIMIZERS.items() if name in _lowmem.MEMORY_LIGHT
}

SGD = OPTIMIZERS["sgd"]
Adagrad = OPTIMIZERS["adagrad"]
RMSprop = OPTIMIZERS["rmsprop"]
Adadelta = OPTIMIZERS["adadelta"]
Adam = OPTIMIZERS["adam"]
AdamW = OPTIMIZERS["adamw"]
Adamax = OPTIMIZERS["adamax"]
NAdam = OPTIMIZERS["nadam"]
RAdam = OPTIMIZERS["radam"]
LARS = OPTIMIZERS["lars"]
LAMB = OPTIMIZERS["lamb"]
# -- issue 16 (twins)
Rprop = OPTIMIZERS["rprop"]
ASGD = OPTIMIZERS["asgd"]
Adafactor = OPTIMIZERS["adafactor"]

__all__ = [
    "LAMB",
    "LARS",
    # learning-rate-free optimizers (issue 14)
    "LR_FREE_OPTIMIZERS",
    "MEMORY_LIGHT_OPTIMIZERS",
    "NUMPY_OPS",
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
    "DoG",
    "LDoG",
    "NAdam",
    "Optimizer",
    "Prodigy",
    "RAdam",
    "RMSprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
]

# -- learning-rate-free optimizers (issue 14): rules with group-wide scalars ---------
from adaptim.algorithms import LR_FREE  # noqa: E402
from adaptim.numpy._group import front_end as _group_front_end  # noqa: E402

#: The learning-rate-free optimizers (kept apart from OPTIMIZERS, as in adaptim.algorithms).
LR_FREE_OPTIMIZERS: dict[str, type[Optimizer]] = {
    name: _group_front_end(a) for name, a in LR_FREE.items()
}
ScheduleFreeAdamW = LR_FREE_OPTIMIZERS["schedulefree-adamw"]
ScheduleFreeSGD = LR_FREE_OPTIMIZERS["schedulefree-sgd"]
Prodigy = LR_FREE_OPTIMIZERS["prodigy"]
DAdaptAdam = LR_FREE_OPTIMIZERS["dadapt-adam"]
DAdaptSGD = LR_FREE_OPTIMIZERS["dadapt-sgd"]
DAdaptAdaGrad = LR_FREE_OPTIMIZERS["dadapt-adagrad"]
DoG = LR_FREE_OPTIMIZERS["dog"]
LDoG = LR_FREE_OPTIMIZERS["ldog"]
# hypergradient descent (issue 14)
SGDHD = LR_FREE_OPTIMIZERS["sgd-hd"]
AdamHD = LR_FREE_OPTIMIZERS["adam-hd"]
__all__ += ["SGDHD", "AdamHD"]

# -- issue 16 (twins)
__all__ += ["ASGD", "Adafactor", "Rprop"]

# -- the optax family (issue 16 point 2) ------------------------------------------------
Lion = OPTIMIZERS["lion"]
AdaBelief = OPTIMIZERS["adabelief"]
Yogi = OPTIMIZERS["yogi"]
Adan = OPTIMIZERS["adan"]
NovoGrad = OPTIMIZERS["novograd"]
SM3 = OPTIMIZERS["sm3"]

__all__ += ["SM3", "AdaBelief", "Adan", "Lion", "NovoGrad", "Yogi"]

# -- torch.optim's Muon and SparseAdam (issue 16 point 1); SparseAdam's sparse
# gradients are RowSparse pairs or SciPy sparse matrices (adaptim.numpy._sparse).
from adaptim.algorithms import MUON, SPARSE_ADAM  # noqa: E402

#: Rules that take only some inputs (Muon: matrices; SparseAdam: sparse gradients),
#: kept apart from OPTIMIZERS.
RESTRICTED_OPTIMIZERS: dict[str, type[Optimizer]] = {
    a.name: _front_end(a, a.class_name) for a in (MUON, SPARSE_ADAM)
}
Muon = RESTRICTED_OPTIMIZERS["muon"]
SparseAdam = RESTRICTED_OPTIMIZERS["sparseadam"]
__all__ += ["RESTRICTED_OPTIMIZERS", "Muon", "RowSparse", "SparseAdam"]

# -- Mechanic (issue 14): a wrapper that learns the scale of any of these optimizers
from adaptim.numpy.mechanic import Mechanic  # noqa: E402

__all__ += ["Mechanic"]

# DoG's averaging of the iterates (issue 14)
from adaptim.numpy.averaging import PolynomialAverager  # noqa: E402

__all__ += ["PolynomialAverager"]
