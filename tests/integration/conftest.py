"""Fixtures of the integration tests: runs on 2 gloo processes, shared by their cases."""

from __future__ import annotations

import pytest
from _dist import RankRuns


@pytest.fixture(scope="session")
def rank_runs() -> RankRuns:
    return RankRuns()
