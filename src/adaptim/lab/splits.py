"""Which split decides and which one is reported.

Tuning, the choice of setting, ties and equivalence use a trial's
*validation* metrics; the numbers the report shows are its *test* metrics
(``TrialResult.final``). A problem with a single split gives the same values
to both, and the report says that it has only one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from adaptim.lab.trial import TrialResult


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def decision_value(result: TrialResult, metric: str) -> float | None:
    """The final value on the split that decides (validation; the only split of a one-split
    problem), or ``None`` for a diverged run."""
    if result.diverged:
        return None
    values = getattr(result, "validation", None) or result.final
    return _finite(values.get(metric))


def reported_value(result: TrialResult, metric: str) -> float | None:
    """The final test value (what the report shows), or ``None`` for a diverged run."""
    return None if result.diverged else _finite(result.final.get(metric))


def validation_of(result: TrialResult) -> dict[str, float | None]:
    """The validation metrics (the test ones for a one-split problem)."""
    return dict(getattr(result, "validation", None) or result.final)


def has_validation(results: Iterable[TrialResult]) -> bool:
    """Whether the trials carry a validation split apart from test."""
    return any(getattr(r, "validation", None) for r in results)


def splits_json(results: Iterable[TrialResult]) -> dict[str, Any]:
    """``tuned_on`` and ``reported_on`` for ``results.json``."""
    if has_validation(results):
        return {"tuned_on": "validation", "reported_on": "test"}
    return {"tuned_on": "test", "reported_on": "test"}
