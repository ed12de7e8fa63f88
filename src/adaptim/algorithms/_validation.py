"""Checks for hyperparameters, with errors that name the parameter, the value and what is allowed."""

from __future__ import annotations

import math
from typing import Any

from adaptim.algorithms._spec import HParams


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
) -> None:
    """Raise ``ValueError`` unless ``low <= hp[name] <= high`` (ends open where asked)."""
    raw = hp[name] if value is None else value
    shown = label or name
    number = as_float(shown, raw)
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
