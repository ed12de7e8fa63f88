"""Which split decides and which one is reported.

Tuning, the choice of setting, ties and equivalence use a trial's
*validation* metrics; the numbers the report shows are its *test* metrics
(``TrialResult.final``). A problem with a single split gives the same values
to both (``TrialResult.validation`` then equals ``final`` and the trial's
``info["tuned_on"]`` is :data:`~adaptim.lab.trial.TUNED_ON_TEST`), and the
report and ``results.json`` say that it has only one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from adaptim.lab.files import finite_or_none
from adaptim.lab.trial import TUNED_ON_TEST, TrialResult


def decision_value(result: TrialResult, metric: str) -> float | None:
    """The final value on the split that decides (validation; the only split of a one-split
    problem), or ``None`` for a diverged run."""
    if result.diverged:
        return None
    values = getattr(result, "validation", None) or result.final
    return finite_or_none(values.get(metric))


def reported_value(result: TrialResult, metric: str) -> float | None:
    """The final test value (what the report shows), or ``None`` for a diverged run."""
    return None if result.diverged else finite_or_none(result.final.get(metric))


def validation_of(result: TrialResult) -> dict[str, float | None]:
    """The validation metrics (the test ones for a one-split problem)."""
    return dict(getattr(result, "validation", None) or result.final)


def _has_validation(result: TrialResult) -> bool:
    tuned_on = result.info.get("tuned_on")
    if tuned_on is not None:  # what the trial recorded when it ran
        return bool(tuned_on == "validation")
    # A result built by hand: a validation split is one whose values differ from test's.
    validation = getattr(result, "validation", None)
    return bool(validation) and validation != result.final


def has_validation(results: Iterable[TrialResult]) -> bool:
    """Whether the trials carry a validation split apart from test."""
    return any(_has_validation(r) for r in results)


def splits_json(results: Iterable[TrialResult]) -> dict[str, Any]:
    """``tuned_on`` and ``reported_on`` for ``results.json``."""
    if has_validation(results):
        return {"tuned_on": "validation", "reported_on": "test"}
    return {"tuned_on": TUNED_ON_TEST, "reported_on": "test"}
