"""The shared vocabulary of every update rule.

An update rule is a pure function over arrays. It receives the parameter, its
gradient, the optimizer state of that parameter and the hyperparameters, and it
returns the new parameter and the new state. It only uses the arithmetic
operators and the few functions of :class:`ArrayOps`, so the same code runs on
``torch.Tensor`` and on ``numpy.ndarray``: the front-ends pass the matching
``xp``. Writing back into the caller's buffers is the front-end's job.

Three of those functions are multiply-adds (``axpy``, ``addcmul``, ``lerp``).
torch's kernels fuse them (one rounding instead of two); calling torch's own
ops where torch.optim does makes the torch front-end follow torch.optim's
for-loop implementation bit for bit, in float32 as in float64. NumPy has no
fused multiply-add, so there they are the plain formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: A ``torch.Tensor`` or a ``numpy.ndarray``; rules use operators and ``xp`` only.
Array = Any

#: Hyperparameters as the rule receives them: floats, bools and tuples of floats.
HParams = Mapping[str, Any]

#: The new parameter and the new state entries.
UpdateResult = tuple[Array, dict[str, Array]]


@dataclass(frozen=True)
class ArrayOps:
    """The element-wise functions a rule may call besides ``+ - * / **``."""

    name: str
    sqrt: Callable[[Array], Array]
    maximum: Callable[[Array, Array], Array]
    abs: Callable[[Array], Array]
    where: Callable[[Array, Array | float, Array | float], Array]
    clip: Callable[[Array, float, float], Array]
    #: Euclidean norm over all elements, returned as a 0-d array (no host sync on GPU).
    norm: Callable[[Array], Array]
    #: ``a + alpha·b`` (torch: ``add`` with ``alpha``).
    axpy: Callable[[Array, Array, float], Array]
    #: ``a + value·b·c`` (torch: ``addcmul``).
    addcmul: Callable[[Array, Array, Array, float], Array]
    #: ``a + w·(b - a)`` for a scalar weight (torch: ``lerp``).
    lerp: Callable[[Array, Array, float], Array]
    #: Not element-wise, for rules whose state is not (SM3's row and column maxima):
    #: the maximum over the given axes, and the concatenation of 1-D arrays.
    amax: Callable[[Array, tuple[int, ...]], Array] | None = None
    concat: Callable[[list[Array]], Array] | None = None


@dataclass(frozen=True)
class Algorithm:
    """Everything a front-end needs to drive one update rule.

    ``state`` maps a set of hyperparameters to the per-parameter state tensors
    the rule needs, each with its initial fill value; ``None`` means the entry
    starts absent and the rule creates it on the first step (SGD's momentum
    buffer is a copy of the first gradient, as in torch). ``scalar_state`` are
    0-d entries such as NAdam's ``mu_product``. ``step`` says whether the state
    carries torch's ``step`` counter. ``sparse`` decides how a sparse gradient
    is handled for given hyperparameters: ``"rows"`` runs the rule on the
    touched rows only, ``"dense"`` densifies the gradient first (exactly the
    same arithmetic for the algorithms that allow it), and ``None`` refuses.
    """

    name: str
    title: str
    update: Callable[..., UpdateResult]
    hparams: tuple[str, ...]
    defaults: Mapping[str, Any]
    validate: Callable[[HParams], None]
    state: Callable[[HParams], Mapping[str, float | None]]
    scalar_state: Mapping[str, float] = field(default_factory=dict)
    step: bool = True
    state_at_construction: bool = False
    #: Per-coordinate multiplier of the search direction, from the current state
    #: (see :func:`effective_lr`); ``None`` where the state does not define one yet.
    effective_lr: Callable[..., Array] | None = None
    sparse: Callable[[HParams], Literal["rows", "dense"]] | None = None
    #: Which algorithm can take sparse gradients instead, for the error message.
    sparse_alternative: str = "adaptim.Adagrad or adaptim.SGD"
    #: The rule branches on ``p.ndim`` (LARS and LAMB leave biases and norm
    #: scales out of the trust ratio), so multi-tensor execution keeps vectors
    #: and matrices apart.
    depends_on_ndim: bool = False
    #: The class name of the PyTorch and NumPy front-ends (``"Adam"``, ``"RMSprop"``),
    #: also used in messages.
    class_name: str = ""
    #: The flavor a front-end uses when none is named (:mod:`adaptim.flavors`):
    #: ``"torch"``, or ``"optax"`` for the algorithms torch.optim does not have.
    default_flavor: str = "torch"
    #: For a parameter's shape, the shapes of the state entries that are not the
    #: parameter's (SM3's concatenated row and column accumulators); ``None``
    #: when every entry is element-wise. The execution engine steps parameters
    #: with such state on the per-tensor reference path.
    state_shape: Callable[[tuple[int, ...]], Mapping[str, tuple[int, ...]]] | None = None


def lerp(start: Array, end: Array, weight: float) -> Array:
    """``start + weight * (end - start)`` in the two-sided form of ``torch.lerp``.

    torch switches to the form anchored at ``end`` for weights of one half or
    more, which is more accurate there; the NumPy front-end does the same.
    """
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def constant_lr(
    p: Array, state: dict[str, Array], *, step: float, xp: ArrayOps, lr: float, **_: Any
) -> Array:
    """Every coordinate moves with the global learning rate (SGD and its momentum forms)."""
    return p * 0 + lr


def coupled_weight_decay(xp: ArrayOps, p: Array, g: Array, weight_decay: float) -> Array:
    """L2 regularisation folded into the gradient: ``g + λ·p``."""
    return xp.axpy(g, p, weight_decay) if weight_decay != 0 else g


def decay_weights(
    xp: ArrayOps, p: Array, g: Array, lr: float, weight_decay: float, decoupled: bool
) -> tuple[Array, Array]:
    """Weight decay as L2 in the gradient, or decoupled from it (Loshchilov & Hutter 2019).

    The decoupled form shrinks the parameter by ``lr·λ`` before the step, as
    torch's AdamW and every Keras 3 optimizer do (``weight_decay=`` in Keras'
    base optimizer); the coupled form adds ``λ·θ`` to the gradient, as torch's
    ``weight_decay`` does everywhere else.
    """
    if weight_decay == 0:
        return p, g
    if decoupled:
        return p * (1 - lr * weight_decay), g
    return p, xp.axpy(g, p, weight_decay)
