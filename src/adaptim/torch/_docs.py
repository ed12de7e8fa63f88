"""The part of every torch optimizer's docstring that its class does not write.

:func:`_documented` appends the options all optimizers share (``maximize``,
``nonfinite``, flavors) and the update rule's own docstring (equations,
paper, framework differences) to a class's docstring.
"""

from __future__ import annotations

from typing import TypeVar

from adaptim.torch._base import Optimizer

_Opt = TypeVar("_Opt", bound=type[Optimizer])

_COMMON = """
    Besides the hyperparameters of the update below, every adaptim optimizer
    takes ``maximize`` (ascend instead of descend) and ``nonfinite``
    (``"ignore"`` | ``"skip"`` | ``"raise"``: what a NaN or Inf gradient does).
    ``lr`` may be a float or a 1-element tensor, and every hyperparameter may
    differ per param group.

    Flavors
    -------
    ``flavor`` (``"torch"``, the default, ``"keras"``, ``"tf1"``, ``"optax"``
    or ``"paper"``, where that framework has the algorithm) sets every
    hyperparameter you do not pass to that framework's default, including the
    options below that say where frameworks differ; an argument you pass
    always wins. The defaults shown in the signature are torch's. See :mod:`adaptim.flavors` and ``adaptim optimizers --flavors``.

    The update rule
    ---------------
"""


def _documented(cls: _Opt) -> _Opt:
    rule_doc = cls.algorithm.update.__doc__ or ""
    cls.__doc__ = (cls.__doc__ or "") + _COMMON + rule_doc
    return cls
