"""``benchmarks/step_speed.py`` refuses bad arguments up front, naming them.

Found by trying the placement-fair protocol as a user would: ``--repeats 0``
ran every row and then raised ``StatisticsError: no median for empty data``
from deep inside; ``--threads -1`` reached ``torch.set_num_threads``; and
``--device cuda`` on a machine without CUDA timed nothing and still wrote an
empty table. Each now stops in argument parsing (exit status 2) with a
message that names the option, the value and what is allowed, before any
measurement or file is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"
sys.path.insert(0, str(SCRIPT.parent))

import step_speed  # noqa: E402


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        step_speed.parse_args(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


@settings(max_examples=8, deadline=None)
@given(option=st.sampled_from(["--repeats", "--threads"]), value=st.integers(-5, 0))
def test_counts_below_one_are_refused(option: str, value: int) -> None:
    with pytest.raises(SystemExit):
        step_speed.parse_args([option, str(value)])


def test_the_messages_name_option_value_and_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    message = parse_error(["--repeats", "0"], capsys)
    assert "--repeats" in message and "'0'" in message and "at least 1" in message
    message = parse_error(["--threads", "-2"], capsys)
    assert "--threads" in message and "'-2'" in message and "at least 1" in message
    assert step_speed.parse_args(["--repeats", "3", "--threads", "2"]).repeats == 3


def test_cuda_without_cuda_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = parse_error(["--device", "cuda"], capsys)
    assert "--device" in message and "'cuda'" in message and "CUDA is not available" in message
    assert "cpu" in message and "all" in message  # what is allowed instead
    assert step_speed.parse_args(["--device", "all"]).device == "all"  # all: the CPU only
