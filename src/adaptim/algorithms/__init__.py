"""The update rules, each written once; both front-ends drive these.

``ALGORITHMS`` maps the lower-case name of each algorithm to its
:class:`~adaptim.algorithms._spec.Algorithm` record.
"""

from adaptim.algorithms._spec import Algorithm, ArrayOps, lerp
from adaptim.algorithms.adadelta import ADADELTA, adadelta_update
from adaptim.algorithms.adagrad import ADAGRAD, adagrad_update
from adaptim.algorithms.adam import ADAM, ADAMW, adam_update
from adaptim.algorithms.adamax import ADAMAX, adamax_update
from adaptim.algorithms.lamb import LAMB, lamb_update
from adaptim.algorithms.lars import LARS, lars_update
from adaptim.algorithms.nadam import NADAM, nadam_update
from adaptim.algorithms.radam import RADAM, radam_update
from adaptim.algorithms.rmsprop import RMSPROP, rmsprop_update
from adaptim.algorithms.sgd import SGD, sgd_update

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (SGD, ADAGRAD, RMSPROP, ADADELTA, ADAM, ADAMW, ADAMAX, NADAM, RADAM, LARS, LAMB)
}

__all__ = [
    "ADADELTA",
    "ADAGRAD",
    "ADAM",
    "ADAMAX",
    "ADAMW",
    "ALGORITHMS",
    "LAMB",
    "LARS",
    "NADAM",
    "RADAM",
    "RMSPROP",
    "SGD",
    "Algorithm",
    "ArrayOps",
    "adadelta_update",
    "adagrad_update",
    "adam_update",
    "adamax_update",
    "lamb_update",
    "lars_update",
    "lerp",
    "nadam_update",
    "radam_update",
    "rmsprop_update",
    "sgd_update",
]

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
