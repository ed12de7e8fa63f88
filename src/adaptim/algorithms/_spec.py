"""The shared vocabulary of every update rule.

An update rule is a pure function over arrays. It receives the parameter, its
gradient, the optimizer state of that parameter and the hyperparameters, and it
returns the new parameter and the new state. It only uses the arithmetic
operators and the few functions of :class:`ArrayOps`, so the same code runs on
``torch.Tensor`` and on ``numpy.ndarray``: the front-ends pass the matching
``xp``. Writing back into the caller's buffers is the front-end's job.

Four of those functions are torch's compound kernels (``axpy``, ``addcmul``,
``addcdiv``, ``lerp``). torch's kernels fuse them (one rounding instead of two
in float32), and for float16 and bfloat16 tensors they compute in float32 and
round once, where the same formula written with operators rounds to the half
type after every operation. A rule calls them exactly where torch.optim's
for-loop implementation does, so that the torch front-end follows it bit for
bit in float16, bfloat16, float32 and float64. NumPy has no fused multiply-add,
so there they are the plain formulas (computed in float32 for float16 arrays).
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
    #: Element-wise, NaN-propagating; either side may be a number (not both).
    maximum: Callable[[Array | float, Array | float], Array]
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
    #: ``a + (value·b)/c`` (torch: ``addcdiv``), rounded in this order: in float32 and
    #: float64 it equals the formula to the bit; in float16 and bfloat16 torch keeps
    #: float32 inside and rounds once, which is what keeps ``lr·m/√v`` from
    #: underflowing to 0/0 there.
    addcdiv: Callable[[Array, Array, Array, float], Array] = field(default_factory=lambda: addcdiv)
    # -- issue 16 (twins): what rules that are not element-wise need (Adafactor's
    # factored moments). ``None`` in a backend without them. The engine's recorder
    # has ``rsqrt``, ``mean_square``, ``mean``, ``eps_of`` and ``rms`` (replayed
    # per tensor, see adaptim.torch._trace); a rule that calls the others sets
    # ``Algorithm.recordable=False``.
    #: ``1/√x`` as the backend's own kernel computes it (torch's differs from ``1/sqrt``).
    rsqrt: Callable[[Array], Array] | None = None
    #: Mean of ``x²`` along ``axis``, keeping it as a size-1 axis.
    mean_square: Callable[[Array, int], Array] | None = None
    #: Mean along ``axis``, keeping it as a size-1 axis.
    mean: Callable[[Array, int], Array] | None = None
    #: Machine epsilon of ``x``'s floating dtype.
    eps_of: Callable[[Array], float] | None = None
    #: ``‖x‖₂ / (√n · scale)`` for an ``x`` of ``n`` elements, read on the host as a
    #: Python float (torch's Adafactor computes its relative step and clipping so, in
    #: float64); a 0-d array under ``traced``. The engine's recorder replays it per tensor.
    rms: Callable[[Array, float], Any] | None = None
    #: ``per_tensor(fn, kind, *arrays)``: only the engine's recorder has it. It records
    #: ``fn(xp, *arrays)`` (one tensor's arrays) as one operation that the replay calls
    #: tensor by tensor; ``kind`` is its result's: ``"element"`` (the parameter's shape)
    #: or ``"reduced"`` (another shape, kept as state). Other backends call ``fn``.
    per_tensor: Callable[..., Any] | None = None
    #: Not element-wise, for rules whose state is not (SM3's row and column maxima):
    #: the maximum over the given axes, and the concatenation of 1-D arrays.
    amax: Callable[[Array, tuple[int, ...]], Array] | None = None
    #: The element-wise minimum, broadcasting (SM3's smallest per-axis accumulator); either
    #: side may be a number.
    minimum: Callable[[Array | float, Array | float], Array] | None = None
    concat: Callable[[list[Array]], Array] | None = None
    #: Per-axis statistics kept concatenated (one value per index of each axis, SM3's
    #: row and column accumulators): only the engine's recorder has these, so that a
    #: fused loop can read a row value at ``i`` and a column value at ``j`` and keep the
    #: per-axis maxima as it goes. Others use the definitions of
    #: :mod:`adaptim.algorithms._axes` (``axis_piece(vector, like, axis)``, ``axis_maxima(x)``).
    axis_piece: Callable[[Array, Array, int], Array] | None = None
    axis_maxima: Callable[[Array], Array] | None = None
    #: Matrix rules (Muon's Newton–Schulz iteration; ``@`` and ``.T`` are operators):
    #: ``beta·c + alpha·(a @ b)`` as one operation (torch: ``addmm``), and the
    #: array in bfloat16, the precision torch's Muon orthogonalises in (NumPy,
    #: without bfloat16, keeps float32).
    addmm: Callable[[Array, Array, Array, float, float], Array] | None = None
    to_bfloat16: Callable[[Array], Array] | None = None
    #: ``addmm`` for a result the caller knows to be symmetric (Muon's Gram matrix
    #: :math:`XX^\top` and :math:`bA + cA^2`), ``c`` ``None`` for the plain product: a
    #: backend may compute one triangle and mirror it. Both may take a leading batch axis.
    symmetric_addmm: Callable[[Array | None, Array, Array, float, float], Array] | None = None
    #: ``True`` under ``torch.compile``: ``step`` is a 0-d float64 tensor, and a rule
    #: must keep its step-dependent scalars as arrays (``where`` instead of ``if``,
    #: no ``float()``), since a host read or a data-dependent branch breaks the graph.
    traced: bool = False
    #: A 0-d scalar-state entry (NAdam's ``mu_product``) read on the host as a Python
    #: float: ``float`` everywhere but in the engine's recorder, which keeps it symbolic
    #: so that later steps can reuse the recording (:mod:`adaptim.torch._symbolic`).
    scalar: Callable[[Array], Any] = float
    #: ``True`` where the arrays are the real view of a complex parameter whose torch
    #: twin folds the coupled weight decay in complex arithmetic
    #: (``Algorithm.complex_arithmetic == "weight_decay"``): :func:`decay_weights` follows.
    complex_weight_decay: bool = False


#: Scalars shared by the tensors of a param group (or of the whole optimizer).
GroupScalars = dict[str, Any]


@dataclass(frozen=True)
class Partial:
    """One tensor's share of a group-wide sum, which the front-end evaluates in float64.

    ``scale * a`` for a 0-d ``a``; ``scale * <a, b>`` (both flattened, the
    front-end's own dot product) when ``b`` is given. The value is lifted to
    float64 *before* it is scaled, as the references' ``scale * x.item()``
    does: in float32 that keeps the estimate ``d`` on their trajectory.
    """

    a: Array
    scale: float = 1.0
    b: Array | None = None


#: What a gather pass returns per sum: one share, or shares added in float64 in this order.
PartialSum = Partial | tuple[Partial, ...]


@dataclass(frozen=True)
class Reduction:
    """One gather pass over the tensors and what the summed partials make of the scalars."""

    gather: Callable[..., tuple[dict[str, Array], dict[str, PartialSum]]]
    combine: Callable[[GroupScalars, dict[str, float], list[HParams]], GroupScalars | None]


@dataclass(frozen=True)
class GroupPass:
    r"""How a rule with group-wide scalars steps: three passes instead of one.

    Learning-rate-free methods estimate one step size from *all* tensors
    (Prodigy's and D-Adaptation's ``d`` is a ratio of sums over every
    coordinate), and Schedule-Free keeps one averaging weight per group. A
    step of such a rule is

    1. ``prepare(scalars, hps)``: group bookkeeping before any tensor is
       touched (the step count, Schedule-Free's weight :math:`c_{k+1}`,
       D-Adaptation's :math:`d\,\gamma`); it may raise, nothing has changed yet;
    2. for each :class:`Reduction` in ``reductions``: its ``gather(p, g,
       state, *, scalars, xp, **hp)`` per tensor returns the new state
       entries and *partial sums* (:class:`Partial`); the front-end adds each
       partial over every tensor of the scope, in float64, with one host
       synchronisation, and ``combine(scalars, sums, hps)`` turns the sums
       into the new scalars (``None``: the step ends there, as the references
       do when the denominator is 0). Most rules need one reduction;
       D-Adapt SGD needs the first gradient's norm before its main one;
    3. ``Algorithm.update(p, g, state, *, scalars, xp, **hp)``, element-wise,
       reading the scalars.

    ``scalars(hp)`` names the scalars kept between steps, with their initial
    values; they live in the param groups, as the reference packages keep
    them, so ``state_dict`` moves between them. Other keys ``prepare`` or
    ``combine`` return are passed to the tensors of this step only.
    ``scope`` is ``"group"`` (each param group its own scalars) or
    ``"optimizer"`` (one set for all groups, read with the first group's
    settings and copied into every group, as prodigyopt and dadaptation do).
    ``init(p, hp, *, zeros_like, copy)`` builds a tensor's state on its first
    step (entries may be slices of the tensor: Prodigy's ``slice_p``).
    ``switch_mode(p, state, *, train, xp, **hp)``, where set, moves a
    parameter between the point trained on and the point evaluated
    (Schedule-Free's :math:`y` and :math:`x`); the front-ends then offer
    ``train()`` and ``eval()`` and refuse to step in eval mode.
    """

    scope: Literal["group", "optimizer"]
    scalars: Callable[[HParams], GroupScalars]
    prepare: Callable[[GroupScalars, list[HParams]], GroupScalars]
    init: Callable[..., dict[str, Any]]
    reductions: tuple[Reduction, ...] = ()
    switch_mode: Callable[..., Array] | None = None


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
    #: scales out of the trust ratio; SM3 keeps one accumulator per axis), so
    #: multi-tensor execution keeps tensors of each rank apart.
    depends_on_ndim: bool = False
    #: The class name of the PyTorch and NumPy front-ends (``"Adam"``, ``"RMSprop"``),
    #: also used in messages.
    class_name: str = ""
    #: The group-wide part of rules that read scalars shared by many tensors
    #: (Prodigy's and D-Adaptation's estimate ``d``, Schedule-Free's averaging
    #: weights); ``None`` for element-wise rules. See :class:`GroupPass`.
    group_pass: GroupPass | None = None

    # -- issue 16 (twins): rules beyond the element-wise shape.
    #: ``False`` for a rule the engine's recorder cannot take (it reads values on
    #: the host other than through ``xp.rms``, multiplies matrices other than
    #: statistics kept along an axis, reshapes or concatenates): the engine sends its
    #: groups to the per-tensor reference path without trying, and without a warning.
    recordable: bool = True
    #: The shape of state entry ``key`` for a parameter of ``shape`` where it is not
    #: the parameter's (Adafactor's row and column moments), ``None`` where that
    #: entry does not belong to such a parameter. Such entries are listed in
    #: ``state`` with fill ``None``: the rule creates them on its first step
    #: (unlike :attr:`state_shape`'s, which the front-ends create zero-filled).
    entry_shape: Callable[[str, tuple[int, ...]], tuple[int, ...] | None] | None = None
    #: ``False`` refuses complex parameters (the rule would see their real view,
    #: with a trailing axis of 2, as another shape).
    complex_params: bool = True
    #: How much of the rule torch's twin computes on a complex parameter in complex
    #: arithmetic, which rounds ``a + α·b`` twice (``a + (α·b)``) where the real
    #: kernel rounds once: ``"none"`` (all on the real view, ``view_as_real``),
    #: ``"weight_decay"`` (the coupled weight decay ``g + λθ``, folded into the
    #: gradient before the view: Adam, Adagrad, RMSprop, Adadelta, Adamax) or
    #: ``"all"`` (the rule on the complex tensors as they are: SGD).
    complex_arithmetic: Literal["none", "weight_decay", "all"] = "none"
    #: ``True`` where torch's twin creates the entries of fill ``None`` inside its update
    #: loop from a list it read before the loop (SGD's momentum buffer): a parameter
    #: listed twice in a group (deprecated, torch warns) then gets one per listing on
    #: its first step, the last kept. ``False``: one shared entry, as torch's others.
    lazy_state: bool = False
    #: The flavor a front-end uses when none is named (:mod:`adaptim.flavors`):
    #: ``"torch"``, or ``"optax"`` for the algorithms torch.optim does not have.
    default_flavor: str = "torch"
    #: For a parameter's shape, the shapes of the state entries that are not the
    #: parameter's (SM3's concatenated row and column accumulators); ``None``
    #: when every entry is element-wise. The execution engine steps parameters
    #: with such state on the per-tensor reference path.
    state_shape: Callable[[tuple[int, ...]], Mapping[str, tuple[int, ...]]] | None = None
    #: ``False`` refuses dense gradients (torch's SparseAdam: "consider Adam instead").
    dense_gradients: bool = True
    #: The only rank of parameter the rule takes (Muon: 2, matrices); ``None`` for any.
    param_ndim: int | None = None
    #: Whether a group with these hyperparameters takes parameters of every rank
    #: despite :attr:`param_ndim` (Muon with ``adamw_for`` set, as Keras 3 steps the
    #: others with AdamW); ``None``: never.
    any_rank: Callable[[HParams], bool] | None = None


def addcdiv(a: Array, b: Array, c: Array, value: float) -> Array:
    """``a + (value·b)/c`` as operators, in the order of ATen's ``addcdiv`` kernel.

    The same bits as the kernel in float32 and float64 (what the engine's recorder
    and the compiled step use there); in a half type each operator rounds.
    """
    if type(value) in (int, float) and value == 1:  # (1·b is b: no pass for it)
        return a + b / c
    return a + value * b / c


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
    if xp.complex_weight_decay:  # complex arithmetic's two roundings, on the real view
        return p, g + p * weight_decay
    return p, xp.axpy(g, p, weight_decay)
