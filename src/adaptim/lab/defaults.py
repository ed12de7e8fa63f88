"""What ``adaptim compare`` runs when it is given no ``--problem`` or ``--optimizers``.

One definition for the command (:mod:`adaptim.cli`, which shows them in its help) and the
lab (:data:`adaptim.lab.optimizers.DEFAULT_OPTIMIZERS`). This module imports nothing, so
``adaptim --help`` reads it without loading the lab.
"""

DEFAULT_PROBLEMS = ("quadratic-deep", "logreg-sparse", "digits-mlp")
DEFAULT_OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")
