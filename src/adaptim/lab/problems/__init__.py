"""The lab's benchmark problems and the lookup of a problem by name.

Built-ins, by family (each module's docstring gives the references):

* :mod:`~adaptim.lab.problems.deepobs`: ``quadratic-deep``, ``rosenbrock``,
  ``beale``, ``branin`` (DeepOBS, Schneider et al. 2019);
* :mod:`~adaptim.lab.problems.regression`: ``linreg``, ``logreg-sparse``,
  ``matrix-factorization``;
* :mod:`~adaptim.lab.problems.digits`: ``digits-mlp``, ``digits-cnn``;
* :mod:`~adaptim.lab.problems.mnist`: ``mnist-cnn``;
* :mod:`~adaptim.lab.problems.mnist1d`: ``mnist1d-logreg``, ``mnist1d-mlp``,
  ``mnist1d-cnn``, ``mnist1d-gru`` (Greydanus 2020);
* :mod:`~adaptim.lab.problems.counterexamples`: ``reddi`` (Reddi et al. 2018),
  ``wilson`` (Wilson et al. 2017).

Importing this package is cheap: data sets and heavy libraries (scikit-learn,
mlxtend, mnist1d) are loaded only when a problem is built.
"""

from __future__ import annotations

import importlib
import os
import sys

from adaptim.lab.errors import LabError, unknown_name
from adaptim.lab.problems.base import BuildContext, Metric, Problem, Setup
from adaptim.lab.problems.counterexamples import REDDI, WILSON
from adaptim.lab.problems.deepobs import BEALE, BRANIN, QUADRATIC_DEEP, ROSENBROCK
from adaptim.lab.problems.digits import DIGITS_CNN, DIGITS_MLP
from adaptim.lab.problems.mnist import MNIST_CNN
from adaptim.lab.problems.mnist1d import MNIST1D_CNN, MNIST1D_GRU, MNIST1D_LOGREG, MNIST1D_MLP
from adaptim.lab.problems.regression import LINREG, LOGREG_SPARSE, MATRIX_FACTORIZATION

#: The built-in problems by name, in the order they are listed.
PROBLEMS: dict[str, Problem] = {
    problem.name: problem
    for problem in (
        QUADRATIC_DEEP,
        ROSENBROCK,
        BEALE,
        BRANIN,
        LINREG,
        LOGREG_SPARSE,
        DIGITS_MLP,
        DIGITS_CNN,
        MNIST_CNN,
        MNIST1D_LOGREG,
        MNIST1D_MLP,
        MNIST1D_CNN,
        MNIST1D_GRU,
        REDDI,
        WILSON,
        MATRIX_FACTORIZATION,
    )
}


def resolve_problem(spec: str) -> Problem:
    """The problem ``spec`` names: a built-in name, or ``package.module:function`` for a user's own.

    The user's function is called without arguments and must return a
    :class:`Problem`. Every way this can fail (unknown name, module not
    importable, missing attribute, the function raising, ``SystemExit``
    included, or returning something else) raises :class:`LabError` with one
    line saying why. Naming a module runs its code: ``adaptim report`` does
    so only when asked (``--trust-problem-module``).
    """
    pieces = [piece.strip() for piece in spec.split(",")]
    if len(pieces) > 1 and all(pieces):  # (--optimizers takes a list; --problem is repeated)
        options = " ".join(f"--problem {piece}" for piece in pieces)
        raise LabError(
            f"--problem {spec!r} lists several: give one problem per --problem ({options})"
        )
    if ":" not in spec:
        if spec in PROBLEMS:
            return PROBLEMS[spec]
        raise unknown_name("problem", spec, PROBLEMS)
    return _load_user_problem(spec)


def _load_user_problem(spec: str) -> Problem:
    def failure(reason: str) -> LabError:
        return LabError(f"problem {spec!r} could not be loaded: {reason}")

    module_name, _, function_name = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module next to the user, as `python -m` would find it
    if not module_name or not function_name.isidentifier():
        raise failure("expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a module may call sys.exit() on import
        raise failure(_one_line(exc)) from exc
    function = getattr(module, function_name, None)
    if function is None:
        raise failure(f"module {module_name!r} has no attribute {function_name!r}")
    if not callable(function):
        raise failure(f"{function_name!r} is a {type(function).__name__!r} object, not a function")
    try:
        problem = function()
    except (Exception, SystemExit) as exc:  # `sys:exit` names a function that raises SystemExit
        raise failure(f"{_one_line(exc)} (raised by {function_name}())") from exc
    if not isinstance(problem, Problem):
        raise failure(
            f"{function_name}() returned a {type(problem).__name__!r} object, not a Problem"
        )
    return problem


def _one_line(exc: BaseException) -> str:
    """``Type: message``, cut to the message's first line."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


__all__ = [
    "PROBLEMS",
    "BuildContext",
    "Metric",
    "Problem",
    "Setup",
    "resolve_problem",
]
