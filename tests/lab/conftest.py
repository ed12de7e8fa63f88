"""Fixtures shared by the lab's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def fast_report() -> Iterator[None]:
    """Render a stand-in page instead of the report (its figures take seconds per study).

    For tests about what surrounds the report (the store, the output files, errors); the
    report itself is tested in ``test_report*.py``. Module-wide, so hypothesis tests can use it.
    """
    import adaptim.lab.report

    def stand_in(outcome: object, study_key: str) -> str:
        return f"<!doctype html><title>{study_key}</title>"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adaptim.lab.report, "build_report", stand_in)
        yield
