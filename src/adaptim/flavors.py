"""Flavors: each framework's variant of an algorithm, as plain data.

PyTorch, Keras 3, legacy TensorFlow 1 (``tf.compat.v1.train``), optax and the
original papers disagree on small points of AdaGrad, RMSprop, Adam & co.:
where ``eps`` sits, how the accumulator starts, where ``lr`` enters the momentum
buffer, what AMSGrad maximises over, whether NAdam's momentum follows a
schedule, and how weight decay is applied. Every such point is an option of the
update rule in :mod:`adaptim.algorithms`, documented there; a *flavor* is
nothing but a named set of option values and defaults:

>>> import adaptim
>>> preset("rmsprop", "keras")["eps_inside_sqrt"]
True
>>> # opt = adaptim.RMSprop(params, flavor="keras")              # Keras 3's RMSprop, exactly
>>> # opt = adaptim.RMSprop(params, flavor="keras", eps=1e-8)    # an explicit argument wins

:data:`DIFFERENCES` lists, per algorithm and flavor, the values that differ
from torch's defaults; a flavor missing there does not exist in that framework
and is refused with a clear error. :func:`preset` gives the full set of values
and :func:`resolve` merges it with the arguments a user passed explicitly.
Where a framework has no default learning rate (optax everywhere, TF1's
AdagradOptimizer and RMSPropOptimizer), the flavor keeps torch's.
``"paper"`` uses the constants the paper prints; where it prints no ``eps``
(Tieleman & Hinton's RMSprop, Adamax, Reddi et al.'s AMSGrad, RAdam) that is
``eps=0``, so a coordinate whose gradients have all been exactly zero divides
0 by 0: pass ``eps`` to guard against it. Reddi et al.'s step size
α/√t and decaying β₁ₜ are schedules for the caller to add.

The sources each row was read from, and the parity tests against the real
libraries, are listed in ``docs/flavors.md`` (``adaptim optimizers --flavors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from adaptim.algorithms import ALGORITHMS, LR_FREE, RESTRICTED

#: The flavor names, in the order they are documented; ``"torch"`` is the default.
FLAVORS: tuple[str, ...] = ("torch", "keras", "tf1", "optax", "paper")

#: The framework each flavor names, in a sentence's words.
FRAMEWORKS: dict[str, str] = {
    "torch": "PyTorch",
    "keras": "Keras 3",
    "tf1": "TensorFlow 1 (tf.compat.v1.train)",
    "optax": "optax",
    "paper": "the paper",
}

#: What each flavor stands for.
FLAVOR_TITLES: dict[str, str] = {
    "torch": "PyTorch torch.optim (the default)",
    "keras": "Keras 3 (keras.optimizers, any backend)",
    "tf1": "TensorFlow 1 (tf.compat.v1.train)",
    "optax": "optax (the aliases in optax/_src/alias.py)",
    "paper": "the algorithm as printed in its paper",
}

_KERAS_COMMON: dict[str, Any] = {"lr": 1e-3, "eps": 1e-7, "decoupled_weight_decay": True}

#: Per algorithm: frameworks that have it but no flavor of their own here, and why.
NO_PRESET: dict[str, dict[str, str]] = {}

#: Per algorithm, per flavor: the values that differ from torch's defaults.
DIFFERENCES: dict[str, dict[str, dict[str, Any]]] = {
    "adagrad": {
        "torch": {},
        "keras": {**_KERAS_COMMON, "eps_inside_sqrt": True, "initial_accumulator_value": 0.1},
        "tf1": {"eps": 0.0, "initial_accumulator_value": 0.1},
        "optax": {"eps": 1e-7, "eps_inside_sqrt": True, "initial_accumulator_value": 0.1},
        "paper": {},  # Duchi et al. 2011: δ outside the root, G_0 = 0
    },
    "rmsprop": {
        "torch": {},
        "keras": {**_KERAS_COMMON, "alpha": 0.9, "eps_inside_sqrt": True, "lr_in_momentum": True},
        "tf1": {
            "alpha": 0.9,
            "eps": 1e-10,
            "eps_inside_sqrt": True,
            "lr_in_momentum": True,
            "initial_accumulator_value": 1.0,
        },
        "optax": {"alpha": 0.9, "eps": 1e-8, "eps_inside_sqrt": True, "lr_in_momentum": True},
        # Tieleman & Hinton 2012 print no eps; momentum and centering follow Graves 2013.
        "paper": {"alpha": 0.9, "eps": 0.0, "eps_inside_sqrt": True, "lr_in_momentum": True},
    },
    "adadelta": {
        "torch": {},
        "keras": {**_KERAS_COMMON, "rho": 0.95},
        "tf1": {"lr": 1e-3, "rho": 0.95, "eps": 1e-8},
        "optax": {},  # rho 0.9, eps 1e-6, L2 weight decay: torch's arithmetic and defaults
        "paper": {"rho": 0.95},  # Zeiler 2012: no lr (1), eps 1e-6
    },
    "adam": {
        "torch": {},
        "keras": {**_KERAS_COMMON, "epsilon_hat": True},
        "tf1": {"epsilon_hat": True},
        "optax": {},
        "paper": {},  # Kingma & Ba 2015, Algorithm 1
    },
    "adamw": {
        "torch": {},
        "keras": {**_KERAS_COMMON, "epsilon_hat": True, "weight_decay": 4e-3},
        "optax": {"weight_decay": 1e-4},
        "paper": {},  # Loshchilov & Hutter 2019 with torch's λ
    },
    "adamax": {
        "torch": {},
        "keras": {**_KERAS_COMMON, "eps_in_max": False},
        "optax": {},
        "paper": {"eps": 0.0},  # Kingma & Ba 2015, Algorithm 2
    },
    "nadam": {
        "torch": {},
        "keras": {**_KERAS_COMMON, "momentum_decay": 1.0},
        "optax": {"momentum_schedule": False},
        "paper": {},  # Dozat 2016: mu_t = beta1 (1 - 0.96^(t/250) / 2)
    },
    "radam": {
        "torch": {},
        "optax": {"epsilon_hat": False},
        "paper": {"eps": 0.0, "rectify_threshold": 4.0},  # Liu et al. 2020, Algorithm 2
    },
}

#: Adam and AdamW with ``amsgrad=True``: AMSGrad's own differences, applied on top.
AMSGRAD_DIFFERENCES: dict[str, dict[str, Any]] = {
    "torch": {},
    "keras": {},
    "optax": {"amsgrad_max": "corrected"},
    "paper": {"bias_correction": False, "eps": 0.0},  # Reddi et al. 2018, Algorithm 2
}


def check_flavor(flavor: Any) -> str:
    """``flavor`` if it names a flavor; otherwise a ``ValueError`` listing the allowed ones."""
    if not isinstance(flavor, str) or flavor not in FLAVORS:
        allowed = ", ".join(repr(f) for f in FLAVORS)
        raise ValueError(f"Invalid flavor: {flavor!r}; allowed: {allowed}.")
    return flavor


def available(algorithm: str, *, amsgrad: bool = False) -> tuple[str, ...]:
    """The flavors that exist for ``algorithm`` (with AMSGrad switched on, where asked)."""
    flavors = DIFFERENCES.get(algorithm, {"torch": {}})
    return tuple(f for f in FLAVORS if f in flavors and (not amsgrad or f in AMSGRAD_DIFFERENCES))


def preset(algorithm: str, flavor: str, *, amsgrad: bool = False) -> dict[str, Any]:
    """Every hyperparameter of ``algorithm`` as ``flavor`` sets it by default.

    ``amsgrad`` selects the AMSGrad variant of Adam and AdamW, whose optax and
    paper flavors differ further. Raises ``ValueError`` for an unknown flavor
    or one the framework does not have for this algorithm.
    """
    check_flavor(flavor)
    record = {**ALGORITHMS, **LR_FREE, **RESTRICTED}[algorithm]
    values = dict(record.defaults)
    if flavor not in available(algorithm, amsgrad=amsgrad):
        name = record.class_name
        variant = f"{name} with amsgrad=True" if amsgrad else name
        allowed = ", ".join(repr(f) for f in available(algorithm, amsgrad=amsgrad))
        why = NO_PRESET.get(algorithm, {}).get(flavor)
        if why:
            reason = f"no preset: {why}"
        elif flavor == "paper":  # the paper has the algorithm; adaptim has no flavor for it
            reason = f"adaptim has no separate paper flavor of {variant}."
        else:  # whether the framework has it or not (optax has LAMB, Keras 3 SGD): adaptim hasn't
            reason = f"adaptim has no {FRAMEWORKS[flavor]} flavor of {variant}."
        raise ValueError(f"Invalid flavor for {variant}: {flavor!r}; {reason} Allowed: {allowed}.")
    values.update(DIFFERENCES.get(algorithm, {}).get(flavor, {}))
    if amsgrad:
        values.update(AMSGRAD_DIFFERENCES[flavor])
    return values


class _DefaultNumber(float):
    """A default number, shown as torch's in a signature, that a flavor may replace."""


class _DefaultText(str):
    """A default string option, shown as torch's, that a flavor may replace."""

    __slots__ = ()


class _DefaultPair(tuple[float, float]):
    """A default ``betas`` pair, shown as torch's, that a flavor may replace."""


class _DefaultFlag:
    """A default switch, shown as torch's ``True``/``False``, that a flavor may replace."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __bool__(self) -> bool:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    def __eq__(self, other: object) -> bool:
        return bool(self.value == other)

    def __hash__(self) -> int:
        return hash(self.value)


_T = TypeVar("_T")


def default(value: _T) -> _T:
    """Mark a signature default as unset: it reads as torch's value, and :func:`resolve` replaces it.

    A user's explicit value, even one equal to torch's default, is never
    replaced; ``None`` is not a marker and is validated like any other value.
    """
    marked: Any
    if isinstance(value, bool):
        marked = _DefaultFlag(value)
    elif isinstance(value, (int, float)):
        marked = _DefaultNumber(value)
    elif isinstance(value, str):
        marked = _DefaultText(value)
    elif isinstance(value, tuple):
        marked = _DefaultPair(value)
    else:
        raise TypeError(f"no default marker for {type(value).__name__}")
    return cast(_T, marked)


def is_unset(value: Any) -> bool:
    """Whether ``value`` was left at its marked default rather than passed by the user."""
    return isinstance(value, (_DefaultNumber, _DefaultText, _DefaultPair, _DefaultFlag))


def resolve(
    algorithm: str, flavor: str, arguments: Mapping[str, Any], *, amsgrad: bool = False
) -> dict[str, Any]:
    """``arguments`` with every unset hyperparameter taken from the ``flavor`` preset.

    A hyperparameter is unset when it is missing or a marked :func:`default`; anything the user passed wins over the preset. Keys that
    are not hyperparameters of ``algorithm`` pass through unchanged.
    """
    values = preset(algorithm, flavor, amsgrad=amsgrad)
    resolved = dict(arguments)
    for key, value in values.items():
        if key not in resolved or is_unset(resolved[key]):
            resolved[key] = value
    return resolved


def has_flavors(algorithm: str) -> bool:
    """Whether ``algorithm`` has flavors other than torch's."""
    return algorithm in DIFFERENCES


def differing_options(algorithm: str) -> dict[str, dict[str, Any]]:
    """Per hyperparameter that some flavor changes: its value in every available flavor."""
    flavors = available(algorithm)
    presets = {f: preset(algorithm, f) for f in flavors}
    record = {**ALGORITHMS, **LR_FREE, **RESTRICTED}[algorithm]
    keys = [k for k in record.defaults if len({repr(p[k]) for p in presets.values()}) > 1]
    return {k: {f: presets[f][k] for f in flavors} for k in keys}


# -- the optax family (issue 16 point 2): torch.optim has none of these, so their
# default flavor is optax's (``Algorithm.default_flavor``) and there is no "torch".
DIFFERENCES.update(
    {
        "lion": {
            "keras": {"lr": 1e-3, "weight_decay": 0.0},
            "optax": {},
            "paper": {},  # Chen et al. 2023, Algorithm 2: optax's arithmetic and betas
        },
        # Zhuang et al. 2020, Algorithm 2: the same eps inside s_t and in the denominator
        "adabelief": {"optax": {}, "paper": {"eps": 1e-8, "eps_root": 1e-8}},
        # Zaheer et al. 2018, Algorithm 2: m_0 = v_0 = 0, no bias correction
        "yogi": {
            "optax": {},
            "paper": {"initial_accumulator_value": 0.0, "bias_correction": False},
        },
        # Xie et al. 2022, Algorithm 1: (1 - beta2) in its convention, m_0 = g_0, proximal decay
        "adan": {
            "optax": {},
            "paper": {
                "eps_root": 0.0,
                "diff_scale": "beta2",
                "bias_correction": False,
                "proximal_weight_decay": True,
            },
        },
        # Ginsburg et al. 2019, Algorithm 1: eps under the root, none on the first step
        "novograd": {
            "optax": {},
            "paper": {"eps": 0.0, "eps_root": 1e-8, "eps_in_first_step": False},
        },
        # Anil et al. 2019, SM3-II: no momentum, no eps
        "sm3": {"optax": {}, "paper": {"momentum": 0.0, "eps": 0.0}},
    }
)

# -- torch.optim's Adafactor (issue 16 point 1): Keras 3 and the paper add eps1 to g²
# where torch floors V̂; Keras also decays θ before measuring its RMS.
_ADAFACTOR_PAPER: dict[str, Any] = {"eps": (1e-30, 1e-3), "eps1_in_square": True}
NO_PRESET["adafactor"] = {
    "optax": (
        "`optax.adafactor(learning_rate=lambda t: min(γ, 1/√(t + 1)), "
        "min_dim_size_to_factor=1)` is flavor `paper` on vectors and matrices; by default "
        "optax leaves axes under 128 unfactored, has no relative step, factors a "
        "higher-rank tensor over its two largest axes and adds λ·θ after scaling by γ."
    )
}
DIFFERENCES["adafactor"] = {
    "torch": {},
    "keras": {**_ADAFACTOR_PAPER, "lr": 1e-3, "rms_after_decay": True},
    # Shazeer & Stern 2018, Algorithms 4/5 with Section 7's rho_t = min(1e-2, 1/sqrt(t))
    "paper": _ADAFACTOR_PAPER,
}

# -- torch.optim's Muon (issue 16 point 1): Keras 3 keeps Jordan's summed momentum,
# orthogonalises in the parameter's dtype with ε added to the norm, scales the step
# as Liu et al. 2025 do and steps the parameters that are not matrices with AdamW.
DIFFERENCES["muon"] = {
    "torch": {},
    "keras": {
        "weight_decay": 0.004,
        "adjust_lr_fn": "match_rms_adamw",
        "momentum_average": False,
        "ns_precision": "param",
        "eps_added": True,
        "adamw_for": "non_matrix",
    },
}
