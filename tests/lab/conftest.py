"""Fixtures shared by the lab's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def _stand_in(outcome: object, study_key: str) -> str:
    return f"<!doctype html><title>{study_key}</title>"


@pytest.fixture
def fast_report() -> Iterator[None]:
    """Render a stand-in page instead of the report (its figures take seconds per study).

    For tests about what surrounds the report (the store, the output files, errors); the
    report itself is tested in ``test_report*.py``.
    """
    import adaptim.lab.report

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adaptim.lab.report, "build_report", _stand_in)
        yield


@pytest.fixture(scope="module")
def stand_in_report() -> Iterator[None]:
    """:func:`fast_report` for a whole module (for module-scoped fixtures)."""
    import adaptim.lab.report

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adaptim.lab.report, "build_report", _stand_in)
        yield
