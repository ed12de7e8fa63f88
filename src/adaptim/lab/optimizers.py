"""The optimizers the lab can compare, by name, with the learning-rate range each is tuned over.

Every adaptim optimizer is available by its lower-case name. Named variants
make common settings one word (``momentum``, ``nesterov``, ``amsgrad``,
``rmsprop-centered``). ``name@flavor`` picks a framework flavor
(:mod:`adaptim.flavors`: ``@keras``, ``@tf1``, ``@optax``, ``@paper``; ``@torch``
is the default, ``@optax`` for the algorithms torch.optim lacks): the flavor's defaults apply to everything the lab does not
tune or fix.

Fairness: every optimizer gets the same number of learning rates, spaced
evenly in log space over the same width (three decades), centred where that
optimizer's good learning rates usually lie. The range is the only
per-optimizer prior of the grid search, and it is stated here for all to see.

Each variant also declares its **search space** for ``--search random|tpe``:
the learning rate plus the hyperparameters that matter for it (β₂ for the
Adam family, RMSprop's α, Adadelta's ρ, ε, SGD's momentum), each with its
range and scale. Decay rates near 1 are searched on ``1 − value`` in log
space (``log1m``), so 0.9, 0.99 and 0.999 are equally likely. ``adaptim
optimizers`` lists every space.

A variant marked ``tuning_free`` (``adam-defaults``: Adam at the lr 1e-3 of
Kingma & Ba's paper) is never tuned: it runs at its published defaults, with
zero tuning runs, on the same re-run seeds as the tuned ones (AlgoPerf's
self-tuning ruleset), and the report charges every optimizer the steps its
tuning cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

import adaptim
from adaptim import flavors
from adaptim.lab.adapters import (
    AveragedDoG,
    AveragedLDoG,
    MechanicAdam,
    MuonWithAdamW,
    SparseAdamOnDense,
)
from adaptim.lab.errors import LabError, unknown_name

FLAVORS = flavors.FLAVORS


Scale = Literal["log", "log1m"]


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: its name, range and scale.

    ``log``: log-uniform over [low, high]; ``log1m``: ``1 − value`` log-uniform,
    for decay rates close to 1. ``beta2`` stands for the second entry of
    ``betas`` (the first keeps its default).
    """

    name: str
    low: float
    high: float
    scale: Scale = "log"

    def from_unit(self, u: float) -> float:
        """The value at position ``u`` ∈ [0, 1] of the range, on its scale (4 significant digits)."""
        if self.scale == "log":
            value = 10 ** (
                math.log10(self.low) + u * (math.log10(self.high) - math.log10(self.low))
            )
        else:
            top, bottom = math.log10(1 - self.low), math.log10(1 - self.high)
            value = 1 - 10 ** (top + u * (bottom - top))
        return float(f"{value:.4g}")

    def describe(self) -> str:
        kind = "log" if self.scale == "log" else "log(1-x)"
        return f"{self.name} {self.low:g}–{self.high:g} ({kind})"

    def fixed_by(self, fixed: Mapping[str, Any]) -> bool:
        """Whether ``fixed`` (``--set``, the problem) already sets this hyperparameter."""
        return self.name in fixed or (self.name == "beta2" and "betas" in fixed)


def _eps(default: float) -> Dimension:
    return Dimension("eps", default / 100, default * 100)


_BETA2 = Dimension("beta2", 0.9, 0.9999, "log1m")
_MOMENTUM = Dimension("momentum", 0.5, 0.99, "log1m")
_ALPHA = Dimension("alpha", 0.9, 0.999, "log1m")


@dataclass(frozen=True)
class Variant:
    """A named optimizer setting: the class, fixed hyperparameters and the search space."""

    name: str
    description: str
    cls: type[adaptim.Optimizer] | type[MechanicAdam]
    lr_range: tuple[float, float]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: The other hyperparameters ``--search random|tpe`` explores (the lr always comes first).
    extra_space: tuple[Dimension, ...] = ()
    #: Runs at its published defaults with zero tuning runs (AlgoPerf's self-tuning track).
    tuning_free: bool = False

    @property
    def space(self) -> tuple[Dimension, ...]:
        """The declared search space: the lr range, then ``extra_space``."""
        return (Dimension("lr", *self.lr_range), *self.extra_space)

    def lr_grid(self, points: int) -> list[float]:
        """``points`` learning rates, evenly spaced in log space over ``lr_range``."""
        low, high = (math.log10(x) for x in self.lr_range)
        if points == 1:
            return [10 ** ((low + high) / 2)]
        return [
            float(f"{10 ** (low + (high - low) * i / (points - 1)):.3g}") for i in range(points)
        ]


def _variants() -> dict[str, Variant]:
    adam_range = (1e-4, 1e-1)
    adam_space = (_BETA2, _eps(1e-8))
    rmsprop_space = (_ALPHA, _eps(1e-8))
    table = [
        Variant("sgd", "plain stochastic gradient descent", adaptim.SGD, (3e-3, 3.0)),
        Variant(
            "momentum",
            "SGD with heavy-ball momentum 0.9",
            adaptim.SGD,
            (1e-4, 1e-1),
            {"momentum": 0.9},
            (_MOMENTUM,),
        ),
        Variant(
            "nesterov",
            "SGD with Nesterov momentum 0.9",
            adaptim.SGD,
            (1e-4, 1e-1),
            {"momentum": 0.9, "nesterov": True},
            (_MOMENTUM,),
        ),
        Variant(
            "adagrad",
            "AdaGrad: steps shrink with the sum of squared gradients",
            adaptim.Adagrad,
            (3e-3, 3.0),
            extra_space=(_eps(1e-10),),
        ),
        Variant(
            "rmsprop",
            "RMSprop: steps scaled by a moving RMS of gradients",
            adaptim.RMSprop,
            (1e-5, 1e-2),
            extra_space=rmsprop_space,
        ),
        Variant(
            "rmsprop-centered",
            "RMSprop normalised by the gradient's moving variance",
            adaptim.RMSprop,
            (1e-5, 1e-2),
            {"centered": True},
            rmsprop_space,
        ),
        Variant(
            "rmsprop-momentum",
            "RMSprop with momentum 0.9",
            adaptim.RMSprop,
            (1e-5, 1e-2),
            {"momentum": 0.9},
            rmsprop_space,
        ),
        Variant(
            "adadelta",
            "Adadelta: RMSprop with unit-corrected steps",
            adaptim.Adadelta,
            (1e-2, 10.0),
            extra_space=(Dimension("rho", 0.8, 0.999, "log1m"), _eps(1e-6)),
        ),
        Variant(
            "adam",
            "Adam: bias-corrected first and second moments",
            adaptim.Adam,
            adam_range,
            extra_space=adam_space,
        ),
        Variant(
            "amsgrad",
            "AMSGrad: Adam with a non-decreasing second moment",
            adaptim.Adam,
            adam_range,
            {"amsgrad": True},
            adam_space,
        ),
        Variant(
            "adamw",
            "AdamW: Adam with decoupled weight decay 0.01",
            adaptim.AdamW,
            adam_range,
            extra_space=adam_space,
        ),
        Variant(
            "adamax",
            "Adamax: Adam with the infinity norm",
            adaptim.Adamax,
            (1e-4, 1e-1),
            extra_space=adam_space,
        ),
        Variant(
            "nadam",
            "NAdam: Adam with Nesterov momentum",
            adaptim.NAdam,
            adam_range,
            extra_space=adam_space,
        ),
        Variant(
            "radam",
            "RAdam: Adam with variance rectification",
            adaptim.RAdam,
            adam_range,
            extra_space=adam_space,
        ),
        Variant(
            "lars",
            "LARS: momentum SGD with per-layer trust ratios",
            adaptim.LARS,
            (1e-1, 1e2),
            extra_space=(_MOMENTUM,),
        ),
        Variant(
            "lamb",
            "LAMB: Adam with per-layer trust ratios",
            adaptim.LAMB,
            (1e-4, 1e-1),
            extra_space=(_BETA2, _eps(1e-6)),
        ),
        # Adam with memory-light states (adaptim.torch._lowmem): beside ``adam``,
        # with the same range and space, the report shows what the saving costs.
        Variant(
            "adam-bf16",
            "Adam with bf16 moments, stochastically rounded: half of fp32 Adam's state",
            adaptim.Adam,
            adam_range,
            {"state_dtype": "bfloat16"},
            adam_space,
        ),
        Variant(
            "adam-8bit",
            "Adam with block-wise 8-bit moments (Dettmers et al. 2022): a quarter of the state",
            adaptim.Adam,
            adam_range,
            {"state_bits": 8},
            adam_space,
        ),
        Variant(
            "adam-defaults",
            "Adam at its published default lr 1e-3, never tuned (the self-tuning baseline)",
            adaptim.Adam,
            (1e-3, 1e-3),
            {"lr": 1e-3},
            tuning_free=True,
        ),
    ]
    table += _lr_free_variants()
    table += _hypergradient_variants()
    # -- issue 16 (twins): torch.optim's other algorithms ---------------------------------
    table += [
        Variant(
            "rprop",
            "Rprop: per-weight step sizes adapted from gradient signs (full-batch method)",
            adaptim.Rprop,
            RPROP_RANGE,
        ),
        Variant(
            "asgd",
            "ASGD: SGD with a decaying step and Polyak averaging of the iterates",
            adaptim.ASGD,
            ASGD_RANGE,
        ),
        Variant(
            "adafactor",
            "Adafactor: relative steps from factored (row and column) second moments",
            adaptim.Adafactor,
            ADAFACTOR_RANGE,
        ),
        # (SparseAdam and Muon take only some inputs; see adaptim.lab.adapters)
        Variant(
            "sparseadam",
            "SparseAdam: Adam on the rows whose gradient is not all zero",
            SparseAdamOnDense,
            adam_range,
            extra_space=adam_space,
        ),
        Variant(
            "muon",
            "Muon: orthogonalised momentum on matrices (AdamW on the rest, as Keras 3)",
            MuonWithAdamW,
            MUON_RANGE,
            {"adjust_lr_fn": "match_rms_adamw"},
            (_MOMENTUM,),
        ),
    ]
    return {v.name: v for v in table}


# Rprop's lr is only its initial step length per weight; mini-batch noise flips
# gradient signs and shrinks the steps geometrically, so large starts pay off.
# A grid study (linreg, digits-mlp; 1 seed, 7+ rates) found good rates from
# 1e-4 to 0.1 on linreg and 1 to 10 on digits-mlp. ASGD's lr is SGD's (eta
# starts at lr and decays slowly): good rates 0.03 to 0.9 on both.
RPROP_RANGE = (1e-2, 10.0)
ASGD_RANGE = (3e-3, 3.0)
# Adafactor's lr caps its relative step min(lr, 1/sqrt(t)), a fraction of each
# tensor's RMS (torch's default 1e-2); from lr = 1 on it is the paper's 1/sqrt(t).
# The same grid study found good rates 0.1 to 1 (linreg) and 0.01 to 1 (digits-mlp).
ADAFACTOR_RANGE = (3e-3, 3.0)
# Muon in the lab scales its step to AdamW's RMS (adjust_lr_fn="match_rms_adamw",
# Keras 3's rms_rate 0.2), so that one lr suits its matrices and the AdamW that
# steps the other parameters (adaptim.lab.adapters): AdamW's range.
MUON_RANGE = (1e-4, 1e-1)


# -- learning-rate-free optimizers (issue 14) ------------------------------------------
def _lr_free_variants() -> list[Variant]:
    """The tuning-free methods. Their ``lr`` multiplies the estimated step (1 is the
    published default; Schedule-Free's is a true learning rate), so the range, for
    whoever tunes them anyway, spans two decades around the default."""
    d_range = (0.1, 10.0)
    return [
        Variant(
            "prodigy",
            "Prodigy: Adam with its step size estimated from the distance travelled",
            adaptim.Prodigy,
            d_range,
            tuning_free=True,
        ),
        Variant(
            "schedulefree-adamw",
            "Schedule-Free AdamW: no schedule, an online average of the iterates",
            adaptim.ScheduleFreeAdamW,
            (2.5e-4, 2.5e-2),
            extra_space=(_BETA2,),
            tuning_free=True,
        ),
        Variant(
            "schedulefree-sgd",
            "Schedule-Free SGD: momentum SGD as an online average, no schedule",
            adaptim.ScheduleFreeSGD,
            (0.1, 10.0),
            tuning_free=True,
        ),
        Variant(
            "dadapt-adam",
            "D-Adapt Adam: Adam with its step size estimated as it goes",
            adaptim.DAdaptAdam,
            d_range,
            tuning_free=True,
        ),
        Variant(
            "dadapt-sgd",
            "D-Adapt SGD: SGD with its step size estimated as it goes",
            adaptim.DAdaptSGD,
            d_range,
            tuning_free=True,
        ),
        Variant(
            "dadapt-adagrad",
            "D-Adapt AdaGrad: AdaGrad with its step size estimated as it goes",
            adaptim.DAdaptAdaGrad,
            d_range,
            tuning_free=True,
        ),
        # DoG's lr is the paper's c (1; above it the steps can blow up). Evaluated at
        # the polynomial-decay average of the iterates, as its authors do
        # (adaptim.lab.adapters.AveragedDoG).
        Variant(
            "dog",
            "DoG: SGD, step = distance travelled / √(sum of squared gradients); averaged",
            AveragedDoG,
            d_range,
            tuning_free=True,
        ),
        Variant(
            "ldog",
            "LDoG: layer-wise DoG, one such step size per tensor; averaged",
            AveragedLDoG,
            d_range,
            tuning_free=True,
        ),
        # Mechanic learns the scale of Adam's steps from Adam's default lr 1e-3
        # (tests/test_mechanic.py: it makes up for a base lr 100x too small). A
        # 2-seed study found it not distinguishable from tuned Adam, with a worse mean
        # on quadratic-deep (validation loss 96.8 vs 87.5; digits-mlp 0.972 vs 0.975).
        Variant(
            "mechanic-adam",
            "Mechanic: Adam whose step scale is learned online (Cutkosky et al. 2023)",
            MechanicAdam,
            (1e-4, 1e-2),
            tuning_free=True,
        ),
    ]


# -- hypergradient descent (issue 14) -----------------------------------------------------
def _hypergradient_variants() -> list[Variant]:
    """SGD-HD and Adam-HD at the paper's settings, never tuned (the self-tuning track).

    They still start from an lr, α₀, but the paper's claim is that they need
    no tuning of it: Baydin et al. ran every experiment from α₀ = 10⁻³ with one
    hypergradient rate per method (β = 10⁻³ for SGD-HD, 10⁻⁷ for Adam-HD),
    which are these classes' defaults. Tuning α₀ would test another claim, and
    charging them a grid would hide what they save; ``--set sgd-hd.lr=...``
    still picks another start. The ranges are SGD's and Adam's, for whoever
    tunes them anyway.
    """
    return [
        Variant(
            "sgd-hd",
            "SGD-HD: SGD whose learning rate follows its hypergradient (paper defaults)",
            adaptim.SGDHD,
            (3e-3, 3.0),
            tuning_free=True,
        ),
        Variant(
            "adam-hd",
            "Adam-HD: Adam whose learning rate follows its hypergradient (paper defaults)",
            adaptim.AdamHD,
            (1e-4, 1e-1),
            tuning_free=True,
        ),
    ]


#: The parameter ``state_bytes_per_parameter`` measures on: a float32 matrix, large
#: enough that 8-bit states are quantised (bitsandbytes' 4096 elements) and
#: Adafactor factors its second moment, as for a layer's weights.
STATE_BYTES_SHAPE = (128, 128)


def state_bytes_per_parameter(name: str, shape: tuple[int, ...] = STATE_BYTES_SHAPE) -> float:
    """The optimizer state per parameter in bytes, *measured*: one step on a float32 tensor.

    The sum of ``nbytes`` of every tensor in the state after a step on a
    parameter of ``shape``, divided by its size (scalars such as ``step`` add
    a few hundred-thousandths). So it reflects the state's real format:
    fp32 Adam 8, ``adam-bf16`` 4, ``adam-8bit`` 2.03 (a byte per moment and a
    float32 maximum per block of 256), Adafactor's factored rows and columns
    0.0625 on 128×128. The lab's DoG counts the average of its iterates it
    keeps (:class:`~adaptim.lab.adapters.AveragedDoG`). Random values, so no entry degenerates (Prodigy keeps a
    0-d ``x0`` for an all-zero tensor).
    """
    generator = torch.Generator().manual_seed(0)
    numel = math.prod(shape)
    p = torch.randn(shape, generator=generator).requires_grad_(True)
    optimizer = make_optimizer(name, [p], {})
    train = getattr(optimizer, "train", None)
    if callable(train):  # Schedule-Free steps in train mode only
        train()
    p.grad = torch.randn(shape, generator=generator)
    optimizer.step()
    # a wrapper's (Mechanic's) own state and its base optimizer's
    states = [opt.state.get(p, {}) for opt in (optimizer, getattr(optimizer, "base", None)) if opt]
    nbytes = sum(v.nbytes for s in states for v in s.values() if isinstance(v, torch.Tensor))
    averager = getattr(optimizer, "averager", None)  # DoG's average of the iterates
    if averager is not None:
        nbytes += sum(v.nbytes for v in averager.averaged_model.state_dict().values())
    return nbytes / numel


VARIANTS: dict[str, Variant] = _variants()

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")


def parse_optimizer(spec: str) -> tuple[Variant, str]:
    """``"rmsprop"`` or ``"rmsprop@torch"`` to its variant and flavor."""
    name, _, flavor = spec.strip().partition("@")
    if name not in VARIANTS:
        raise unknown_name("optimizer", name, VARIANTS)
    variant = VARIANTS[name]
    flavor = flavor or variant.cls.algorithm.default_flavor
    if flavor not in FLAVORS:
        raise LabError(f"unknown flavor {flavor!r} in {spec!r} (valid: {', '.join(FLAVORS)})")
    allowed = flavors.available(
        variant.cls.algorithm.name, amsgrad=bool(variant.fixed.get("amsgrad"))
    )
    if flavor not in allowed:
        raise LabError(
            f"flavor {flavor!r} does not exist for {name!r} (valid: {', '.join(allowed)})"
        )
    return variant, flavor


def make_optimizer(
    spec: str, params: Iterable[torch.Tensor], hparams: Mapping[str, Any]
) -> adaptim.Optimizer | MechanicAdam:
    """Build the optimizer named ``spec`` with its fixed settings and ``hparams`` on top."""
    variant, flavor = parse_optimizer(spec)
    kwargs = {**variant.fixed, **hparams}
    if "beta2" in kwargs:  # a searched β₂: the first β keeps its fixed or default value
        beta2 = kwargs.pop("beta2")
        default = variant.cls.algorithm.defaults["betas"]
        kwargs["betas"] = (next(iter(kwargs.get("betas", default))), beta2)
    if flavor != "torch":
        kwargs["flavor"] = flavor
    try:
        return variant.cls(params, **kwargs)
    except (TypeError, ValueError) as error:
        raise LabError(f"cannot build optimizer {spec!r} with {kwargs}: {error}") from None


def applicable(optimizer: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``hparams`` that ``optimizer``'s algorithm accepts (a problem's fixed ones)."""
    variant, _ = parse_optimizer(optimizer)
    accepted = variant.cls.algorithm.defaults
    return {k: v for k, v in hparams.items() if k in accepted}


def parse_value(text: str) -> Any:
    """A ``--set`` value: a bool, an int, a float, or a comma-separated tuple of numbers."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise LabError(
            f"cannot read value {text!r}: expected a number, true/false, or numbers separated by commas"
        ) from None
    if not math.isfinite(number):
        raise LabError(f"cannot use value {text!r}: expected a finite number")
    return number


def parse_settings(items: Iterable[str], optimizers: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["adam.lr=0.01", "sgd.momentum=0.5"]`` to ``{"adam": {"lr": 0.01}, ...}``.

    Keys are the optimizer specs as given to ``--optimizers``; every setting
    must name one of them and a hyperparameter that optimizer accepts.
    """
    chosen = list(optimizers)
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        target, equals, raw = item.partition("=")
        optimizer, dot, name = target.strip().rpartition(".")
        if not equals or not dot or not optimizer or not name or not raw.strip():
            raise LabError(
                f"malformed --set {item!r}: expected OPTIMIZER.PARAM=VALUE, for example adam.lr=0.01"
            )
        if optimizer not in chosen:
            raise LabError(
                f"--set {item!r} names optimizer {optimizer!r}, which is not being compared "
                f"(compared: {', '.join(chosen)})"
            )
        variant, _ = parse_optimizer(optimizer)
        allowed = variant.cls.algorithm.defaults
        if name not in allowed:
            raise unknown_name(
                f"hyperparameter of {optimizer}", name, allowed, f"hyperparameters of {optimizer}"
            )
        settings.setdefault(optimizer, {})[name] = parse_value(raw)
    for optimizer, fixed in settings.items():
        # Build once on a dummy parameter: a bad value fails here, before anything runs.
        make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], fixed)
    return settings


# -- the optax family (issue 16 point 2): algorithms torch.optim lacks, optax flavor by default --
def _optax_family() -> list[Variant]:
    return [
        Variant(
            "lion",
            "Lion: steps of the sign of an interpolated momentum",
            adaptim.Lion,
            # Half a decade below Adam's: every coordinate moves by the full lr. A
            # study (linreg, digits-mlp; 300 steps) found its best at 3e-2 and 3e-3.
            (3e-5, 3e-2),
            extra_space=(Dimension("beta2", 0.9, 0.999, "log1m"),),
        ),
        Variant(
            "adabelief",
            "AdaBelief: Adam scaled by the gradient's variance around its average",
            adaptim.AdaBelief,
            # a study (linreg, digits-mlp; 300 steps): good from 1e-3 to 1 (Adam's: 1e-3 to 1)
            (3e-4, 3e-1),
            extra_space=(_BETA2,),
        ),
        Variant(
            "yogi",
            "Yogi: Adam with an additive, sign-controlled second moment",
            adaptim.Yogi,
            # the same study: good from 3e-3 to 1, best at 1e-2 to 1e-1
            (1e-3, 1.0),
            extra_space=(_BETA2, _eps(1e-3)),
        ),
        Variant(
            "adan",
            "Adan: adaptive Nesterov momentum from gradient differences",
            adaptim.Adan,
            # a study (linreg, digits-mlp; 300 steps): good from 3e-3 to 1e-1
            (1e-3, 1.0),
            extra_space=(_eps(1e-8),),
        ),
        Variant(
            "novograd",
            "NovoGrad: momentum on gradients normalised per layer",
            adaptim.NovoGrad,
            # a study (linreg, digits-mlp; 300 steps): good from 1e-3 to 1e-1
            (3e-4, 3e-1),
            extra_space=(Dimension("beta2", 0.25, 0.999, "log1m"),),
        ),
        Variant(
            "sm3",
            "SM3: AdaGrad with per-row and per-column accumulators",
            adaptim.SM3,
            # a study (linreg, digits-mlp; 300 steps): good from 3e-2 to 10, as AdaGrad's
            (1e-2, 10.0),
            extra_space=(_MOMENTUM,),
        ),
    ]


VARIANTS.update({v.name: v for v in _optax_family()})
