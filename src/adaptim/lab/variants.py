"""Every optimizer setting the lab compares, with the learning-rate range each is tuned over.

Fairness: every optimizer gets the same number of learning rates, spaced
evenly in log space over the same width (three decades), centred where that
optimizer's good learning rates usually lie. The range is the only
per-optimizer prior of the grid search, and it is stated here for all to see,
with the studies that placed it.

Each entry also declares its search space for ``--search random|tpe``
(:mod:`adaptim.lab.search_space`): the lr plus the hyperparameters that
matter for it (β₂ for the Adam family, RMSprop's α, Adadelta's ρ, ε, SGD's
momentum). The table runs in the order ``adaptim optimizers`` lists it.
"""

from __future__ import annotations

import adaptim
from adaptim.lab.adapters import (
    AveragedDoG,
    AveragedLDoG,
    MechanicAdam,
    MuonWithAdamW,
    SparseAdamOnDense,
)
from adaptim.lab.search_space import ALPHA, BETA2, MOMENTUM, Dimension, Variant, eps_around


def all_variants() -> dict[str, Variant]:
    """Every variant by name, in the order ``adaptim optimizers`` lists them."""
    adam_range = (1e-4, 1e-1)
    adam_space = (BETA2, eps_around(1e-8))
    rmsprop_space = (ALPHA, eps_around(1e-8))
    table = [
        Variant("sgd", "plain stochastic gradient descent", adaptim.SGD, (3e-3, 3.0)),
        Variant(
            "momentum",
            "SGD with heavy-ball momentum 0.9",
            adaptim.SGD,
            (1e-4, 1e-1),
            {"momentum": 0.9},
            (MOMENTUM,),
        ),
        Variant(
            "nesterov",
            "SGD with Nesterov momentum 0.9",
            adaptim.SGD,
            (1e-4, 1e-1),
            {"momentum": 0.9, "nesterov": True},
            (MOMENTUM,),
        ),
        Variant(
            "adagrad",
            "AdaGrad: steps shrink with the sum of squared gradients",
            adaptim.Adagrad,
            (3e-3, 3.0),
            extra_space=(eps_around(1e-10),),
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
            extra_space=(Dimension("rho", 0.8, 0.999, "log1m"), eps_around(1e-6)),
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
            extra_space=(MOMENTUM,),
        ),
        Variant(
            "lamb",
            "LAMB: Adam with per-layer trust ratios",
            adaptim.LAMB,
            (1e-4, 1e-1),
            extra_space=(BETA2, eps_around(1e-6)),
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
            (MOMENTUM,),
        ),
    ]
    table += _optax_family()
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
            extra_space=(BETA2,),
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
            extra_space=(BETA2,),
        ),
        Variant(
            "yogi",
            "Yogi: Adam with an additive, sign-controlled second moment",
            adaptim.Yogi,
            # the same study: good from 3e-3 to 1, best at 1e-2 to 1e-1
            (1e-3, 1.0),
            extra_space=(BETA2, eps_around(1e-3)),
        ),
        Variant(
            "adan",
            "Adan: adaptive Nesterov momentum from gradient differences",
            adaptim.Adan,
            # a study (linreg, digits-mlp; 300 steps): good from 3e-3 to 1e-1
            (1e-3, 1.0),
            extra_space=(eps_around(1e-8),),
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
            extra_space=(MOMENTUM,),
        ),
    ]
