"""The torch demo runs, trains, and follows torch.optim.Adam bit for bit."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


def test_demo_trains_and_matches_torch(capsys: pytest.CaptureFixture[str]) -> None:
    demo = runpy.run_path(str(DEMO))
    results = demo["main"]()
    output = capsys.readouterr().out
    assert results["adam"] < 0.1  # the spirals are learned
    assert "adaptim.Adam vs torch.optim.Adam (for-loop): 0.0e+00" in output
    assert set(results) == {"adam", "sgd (momentum 0.9)", "adagrad", "rmsprop", "lamb"}
