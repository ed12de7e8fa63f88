"""Fixtures of the integration tests: runs on 2 gloo processes, shared by their cases.

The Hugging Face hub is switched offline before anything imports it (accelerate
does): the tests build their models from configs and never download.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
from _dist import RankRuns


@pytest.fixture(scope="session")
def rank_runs() -> RankRuns:
    return RankRuns()
