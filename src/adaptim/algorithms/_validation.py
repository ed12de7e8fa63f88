"""Checks for hyperparameters, with errors that name the parameter, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from adaptim.algorithms._spec import Algorithm, HParams


def as_float(name: str, value: Any) -> float:
    """The value of a hyperparameter as a float; 1-element tensors and arrays are accepted."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(
            f"Invalid {name}: {value!r}; expected a real number, got {type(value).__name__}."
        )
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    if numel is not None and not isinstance(value, (int, float)):
        count = numel() if callable(numel) else numel
        if count != 1:
            raise ValueError(
                f"Invalid {name}: a tensor with {count} elements; expected a number "
                "or a 1-element tensor."
            )
        value = value.item()
    try:
        number = float(value)
    except OverflowError:
        digits = len(str(abs(int(value)))) if isinstance(value, int) else None
        shown = f"an integer of {digits} digits" if digits else repr(value)
        raise ValueError(
            f"Invalid {name}: {shown}; too large for a float, expected a finite number."
        ) from None
    except (TypeError, ValueError):
        raise TypeError(
            f"Invalid {name}: {value!r}; expected a real number, got {type(value).__name__}."
        ) from None
    return number


def check_range(
    hp: HParams,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    label: str | None = None,
    value: Any = None,
    finite: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``low <= hp[name] <= high`` (ends open where asked).

    NaN is always refused, and so are infinities unless ``finite=False``: an
    infinite learning rate, decay or coefficient makes every parameter
    non-finite after one step.
    """
    raw = hp[name] if value is None else value
    shown = label or name
    number = as_float(shown, raw)
    if finite and not math.isfinite(number):
        raise ValueError(
            f"Invalid {shown}: {number!r}; expected a finite number, "
            f"{_allowed(shown, low, high, low_open, high_open)}."
        )
    too_low = math.isnan(number) or (
        low is not None and (number <= low if low_open else number < low)
    )
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        raise ValueError(
            f"Invalid {shown}: {number!r}; {_allowed(shown, low, high, low_open, high_open)}."
        )


def _allowed(
    name: str, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
    left = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
    right = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
    return f"allowed: {left}{name}{right}"


def check_lr(hp: HParams) -> None:
    check_range(hp, "lr", 0.0)


def check_eps(hp: HParams) -> None:
    check_range(hp, "eps", 0.0)


def check_weight_decay(hp: HParams) -> None:
    check_range(hp, "weight_decay", 0.0)


def check_betas(hp: HParams) -> None:
    betas = hp["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2).")
    for index, beta in enumerate(betas):
        check_range(hp, "betas", 0.0, 1.0, high_open=True, label=f"beta{index + 1}", value=beta)


def check_bool(hp: HParams, name: str) -> None:
    if not isinstance(hp[name], bool):
        raise TypeError(f"Invalid {name}: {hp[name]!r}; expected True or False.")


def check_choice(hp: HParams, name: str, allowed: tuple[str, ...]) -> None:
    if hp[name] not in allowed:
        raise ValueError(
            f"Invalid {name}: {hp[name]!r}; allowed: {', '.join(repr(a) for a in allowed)}."
        )


def _kind(value: Any) -> str | None:
    """``"real"`` or ``"complex"`` for a floating array or tensor (NumPy or torch), else ``None``."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return None
    if getattr(dtype, "is_complex", False) or getattr(dtype, "kind", "") == "c":
        return "complex"
    if getattr(dtype, "is_floating_point", False) or getattr(dtype, "kind", "") == "f":
        return "real"
    return None


def _scalar_problem(key: str, value: Any, *, nonnegative: bool) -> str | None:
    shape = getattr(value, "shape", None)
    numeric = _kind(value) == "real" or "int" in str(getattr(value, "dtype", "int"))
    if isinstance(value, (bool, str, bytes)) or not numeric or (shape and tuple(shape) != ()):
        return f"{key!r} is {_describe(value)}; expected a number or a 0-d tensor"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return f"{key!r} is {_describe(value)}; expected a number or a 0-d tensor"
    if not math.isfinite(number) or (nonnegative and number < 0):
        allowed = "a finite number >= 0" if nonnegative else "a finite number"
        return f"{key!r} is {number!r}; expected {allowed}"
    return None


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)} and dtype {getattr(value, 'dtype', '?')}"
    return f"{value!r} ({type(value).__name__})"


def state_problem(
    algorithm: Algorithm,
    hp: HParams,
    state: Mapping[str, Any],
    shape: tuple[int, ...],
    is_complex: bool,
    *,
    exact_keys: bool = True,
) -> str | None:
    """Why ``state`` cannot be the state of one parameter of ``shape`` under ``algorithm``.

    ``None`` when it can. The layouts of the matching torch.optim class are
    valid: no entry at all, ``step`` as a number or a 0-d tensor, entries the
    rule creates on its first step (SGD's momentum buffer) absent or ``None``.
    Floating entries of another precision are fine (loading casts them);
    integer, boolean or complex-for-real entries are not. ``exact_keys``
    refuses entries the rule does not keep (a state from another optimizer).
    """
    elementwise = algorithm.state(hp)
    scalars = (["step"] if algorithm.step else []) + list(algorithm.scalar_state)
    if exact_keys:
        known = [*scalars, *elementwise]
        for key in state:
            if key not in known:
                keeps = ", ".join(map(repr, known)) or "no state"
                return f"unexpected entry {key!r} (this optimizer keeps {keeps})"
    if not state:
        return None
    for key in scalars:
        if key not in state:
            return f"missing entry {key!r}"
        problem = _scalar_problem(key, state[key], nonnegative=key == "step")
        if problem:
            return problem
    want = "complex" if is_complex else "real"
    shapes = algorithm.state_shape(tuple(shape)) if algorithm.state_shape else {}
    for key, fill in elementwise.items():
        value = state.get(key)
        if value is None:
            if fill is not None:
                return f"missing entry {key!r}"
            continue
        kind = _kind(value)
        if fill is None and kind is not None and tuple(value.shape) == ():
            continue  # a per-tensor value the rule creates (LAMB's trust ratio)
        expected, whose = tuple(shape), "the parameter's"
        if key in shapes:
            expected, whose = tuple(shapes[key]), f"for a parameter of shape {tuple(shape)}"
        if algorithm.entry_shape is not None:
            own = algorithm.entry_shape(key, tuple(shape))
            if own is None:
                return f"unexpected entry {key!r} for a parameter of shape {tuple(shape)}"
            expected, whose = own, f"for a parameter of shape {tuple(shape)}"
        if kind != want:
            return (
                f"{key!r} is {_describe(value)}; expected a {want} floating array of shape "
                f"{expected}"
            )
        if tuple(value.shape) != expected:
            return f"{key!r} has shape {tuple(value.shape)}; expected {expected}, {whose}"
    return None


def check_loaded_group(
    where: str,
    owner: str,
    saved: Mapping[str, Any],
    size: int,
    foreign: frozenset[str] | set[str],
    validate: Callable[[], None],
) -> None:
    """Refuse a param group of a loaded state_dict: its size, another optimizer's keys, bad values.

    ``foreign`` holds the hyperparameter names of other algorithms that
    ``owner`` does not take; ``validate`` runs construction's checks, whose
    message is kept, prefixed with ``where``.
    """
    if len(saved["params"]) != size:
        raise ValueError(
            f"{where}: it has {len(saved['params'])} parameters; this optimizer's group has {size}."
        )
    others = sorted(k for k in saved if k in foreign)
    if others:
        names = ", ".join(map(repr, others))
        what = f"hyperparameters {names} are" if len(others) > 1 else f"hyperparameter {names} is"
        raise ValueError(
            f"{where}: {what} not {owner}'s; this state_dict comes from another optimizer."
        )
    try:
        validate()
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None
