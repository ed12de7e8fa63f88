"""How the lab prints a number: significant digits, and no more than a CI supports."""

from __future__ import annotations

import math


def number(value: float) -> str:
    return f"{value:.4g}"


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, without an exponent between 1e-4 and 1e6
    and without trailing zeros.

    ``significant(0.0031622776601683794) == "0.00316"``, ``significant(300, 2) == "300"``,
    ``significant(0.003) == "0.003"``.
    """
    if not math.isfinite(value) or value == 0 or not 1e-4 <= abs(value) < 1e6:
        return f"{value:.{digits}g}"
    fixed = f"{value:.{_decimals(value, digits)}f}"
    return fixed.rstrip("0").rstrip(".") if "." in fixed else fixed


def _decimals(value: float, digits: int) -> int:
    """The decimals that show ``digits`` significant digits of ``value`` (1e-4 <= |value| < 1e6)."""
    return max(0, digits - 1 - math.floor(math.log10(abs(value))))


def lr_text(lr: float) -> str:
    """A learning rate as printed everywhere: three significant digits."""
    return significant(lr, 3)


def with_ci(mean: float | None, ci95: float | None) -> tuple[str, str]:
    """``("0.246", "± 0.028")``: the mean to the precision its CI supports (two digits of it).

    Without a CI (one seed) the mean keeps four significant digits. Tables keep the ``±`` with
    its number by not wrapping that column.
    """
    if mean is None:
        return "–", "–"
    if ci95 is None or not math.isfinite(ci95) or not math.isfinite(mean):
        return number(mean), "–"
    decimals = ci_decimals(ci95, mean) if abs(mean) < 1e6 else None
    if decimals is None:
        return number(mean), f"± {ci95:.2g}"
    return f"{mean:.{decimals}f}", f"± {ci95:.{decimals}f}"


def ci_decimals(half_width: float, *values: float) -> int | None:
    """Decimals that show two significant digits of a CI's half-width, but never more than
    five significant digits of ``values`` (a CI of ±0.006 around 1109 does not make
    "1109.09926" readable); None when the half-width is 0 or outside 1e-4..1e6 (the numbers
    then keep their own significant digits)."""
    if not math.isfinite(half_width) or not 1e-4 <= half_width < 1e6:
        return None
    decimals = _decimals(half_width, 2)
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if 1e-4 <= largest < 1e6:
        decimals = min(decimals, _decimals(largest, MAX_DIGITS))
    return decimals


#: The most significant digits a number with a CI is printed with.
MAX_DIGITS = 5
