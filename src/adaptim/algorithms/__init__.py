"""The update rules, each written once; both front-ends drive these.

``ALGORITHMS`` maps the lower-case name of each algorithm to its
:class:`~adaptim.algorithms._spec.Algorithm` record.
"""

from adaptim.algorithms._spec import Algorithm, ArrayOps, addcdiv, lerp
from adaptim.algorithms.adadelta import ADADELTA, adadelta_update
from adaptim.algorithms.adafactor import ADAFACTOR, adafactor_update
from adaptim.algorithms.adagrad import ADAGRAD, adagrad_update
from adaptim.algorithms.adam import ADAM, ADAMW, adam_update
from adaptim.algorithms.adamax import ADAMAX, adamax_update
from adaptim.algorithms.asgd import ASGD, asgd_update
from adaptim.algorithms.lamb import LAMB, lamb_update
from adaptim.algorithms.lars import LARS, lars_update
from adaptim.algorithms.nadam import NADAM, nadam_update
from adaptim.algorithms.radam import RADAM, radam_update
from adaptim.algorithms.rmsprop import RMSPROP, rmsprop_update
from adaptim.algorithms.rprop import RPROP, rprop_update
from adaptim.algorithms.sgd import SGD, sgd_update

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (SGD, ADAGRAD, RMSPROP, ADADELTA, ADAM, ADAMW, ADAMAX, NADAM, RADAM, LARS, LAMB)
}

# -- learning-rate-free rules (issue 14): group-wide scalars, see GroupPass --------
# Kept apart from ALGORITHMS: their step is not element-wise (param groups share
# scalars, Schedule-Free starts in eval mode), so the generic per-tensor
# machinery and tests built on ALGORITHMS do not apply to them.
from adaptim.algorithms._spec import GroupPass  # noqa: E402
from adaptim.algorithms.dadapt_adagrad import DADAPT_ADAGRAD  # noqa: E402
from adaptim.algorithms.dadaptation import DADAPT_ADAM, DADAPT_SGD  # noqa: E402
from adaptim.algorithms.dog import DOG, LDOG  # noqa: E402
from adaptim.algorithms.prodigy import PRODIGY  # noqa: E402
from adaptim.algorithms.schedulefree import SCHEDULEFREE_ADAMW, SCHEDULEFREE_SGD  # noqa: E402

LR_FREE: dict[str, Algorithm] = {
    a.name: a
    for a in (
        SCHEDULEFREE_ADAMW,
        SCHEDULEFREE_SGD,
        PRODIGY,
        DADAPT_ADAM,
        DADAPT_SGD,
        DADAPT_ADAGRAD,
        DOG,
        LDOG,
    )
}

# -- hypergradient descent (issue 14): α itself descends on the loss, one per group --------
from adaptim.algorithms.hypergrad import ADAM_HD, SGD_HD  # noqa: E402

LR_FREE.update({a.name: a for a in (SGD_HD, ADAM_HD)})

# -- torch.optim's other algorithms (issue 16: Rprop, ASGD, ...) --------------------------
ALGORITHMS.update({a.name: a for a in (RPROP, ASGD, ADAFACTOR)})

__all__ = [
    "ADADELTA",
    "ADAGRAD",
    "ADAM",
    "ADAMAX",
    "ADAMW",
    "ALGORITHMS",
    "DADAPT_ADAGRAD",
    "DADAPT_ADAM",
    "DADAPT_SGD",
    "DOG",
    "LAMB",
    "LARS",
    "LDOG",
    # learning-rate-free rules (issue 14)
    "LR_FREE",
    "NADAM",
    "PRODIGY",
    "RADAM",
    "RMSPROP",
    "SCHEDULEFREE_ADAMW",
    "SCHEDULEFREE_SGD",
    "SGD",
    "Algorithm",
    "ArrayOps",
    "GroupPass",
    "adadelta_update",
    "adagrad_update",
    "adam_update",
    "adamax_update",
    "addcdiv",
    "lamb_update",
    "lars_update",
    "lerp",
    "nadam_update",
    "radam_update",
    "rmsprop_update",
    "sgd_update",
]

# -- issue 16 (twins)
__all__ += ["ADAFACTOR", "ASGD", "RPROP", "adafactor_update", "asgd_update", "rprop_update"]

# -- the optax family (issue 16 point 2): algorithms torch.optim does not have --------
from adaptim.algorithms.adabelief import ADABELIEF, adabelief_update  # noqa: E402
from adaptim.algorithms.adan import ADAN, adan_update  # noqa: E402
from adaptim.algorithms.lion import LION, lion_update  # noqa: E402
from adaptim.algorithms.novograd import NOVOGRAD, novograd_update  # noqa: E402
from adaptim.algorithms.sm3 import SM3, sm3_update  # noqa: E402
from adaptim.algorithms.yogi import YOGI, yogi_update  # noqa: E402

ALGORITHMS.update({a.name: a for a in (LION, ADABELIEF, YOGI, ADAN, NOVOGRAD, SM3)})
__all__ += ["ADABELIEF", "ADAN", "LION", "NOVOGRAD", "SM3", "YOGI"]
__all__ += ["adabelief_update", "adan_update", "lion_update", "novograd_update", "yogi_update"]
__all__ += ["sm3_update"]
__all__ += ["ADAM_HD", "SGD_HD"]

# -- torch.optim's SparseAdam and Muon (issue 16 point 1): rules that take only some inputs --
# Kept apart from ALGORITHMS, as LR_FREE is: SparseAdam refuses dense gradients and
# Muon every parameter that is not a matrix, so the generic machinery and tests
# built on ALGORITHMS (vectors, dense gradients) do not apply to them.
from adaptim.algorithms.muon import MUON, muon_update  # noqa: E402
from adaptim.algorithms.sparse_adam import SPARSE_ADAM, sparse_adam_update  # noqa: E402

RESTRICTED: dict[str, Algorithm] = {a.name: a for a in (SPARSE_ADAM, MUON)}
__all__ += ["MUON", "RESTRICTED", "SPARSE_ADAM", "muon_update", "sparse_adam_update"]
