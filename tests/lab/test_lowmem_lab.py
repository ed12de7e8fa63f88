"""The memory-light Adam variants in the lab, and the measured state bytes that show them."""

from __future__ import annotations

import math
import re

import pytest
import torch
from typer.testing import CliRunner

from adaptim.cli import app
from adaptim.lab.optimizers import (
    STATE_BYTES_SHAPE,
    VARIANTS,
    make_optimizer,
    state_bytes_per_parameter,
)
from adaptim.torch import _lowmem


def _expected_bytes(moment_bytes: float, moments: int = 2) -> float:
    """Bytes per parameter of ``moments`` element-wise entries plus Adam's 4-byte ``step``."""
    return moments * moment_bytes + 4 / math.prod(STATE_BYTES_SHAPE)


@pytest.mark.parametrize(
    ("name", "moment_bytes"),
    [
        ("adam", 4.0),
        ("adam-bf16", 2.0),
        # a byte per value and a float32 maximum per block of 256
        ("adam-8bit", 1 + 4 / _lowmem.BLOCK),
    ],
)
def test_state_bytes_are_measured_in_the_states_format(name: str, moment_bytes: float) -> None:
    assert state_bytes_per_parameter(name) == pytest.approx(_expected_bytes(moment_bytes))


def test_small_tensors_keep_fp32_state_under_8_bits() -> None:
    """Under 4096 elements bitsandbytes keeps 32-bit state; so does adam-8bit."""
    assert state_bytes_per_parameter("adam-8bit", (63, 64)) == pytest.approx(
        state_bytes_per_parameter("adam", (63, 64))
    )


def test_variants_build_adam_with_the_option_and_the_same_search_space() -> None:
    adam = VARIANTS["adam"]
    for name, option in (("adam-bf16", "state_dtype"), ("adam-8bit", "state_bits")):
        variant = VARIANTS[name]
        assert variant.cls is adam.cls and variant.space == adam.space
        p = torch.zeros(64, 64, requires_grad=True)
        optimizer = make_optimizer(name, [p], {"lr": 1e-3})
        assert optimizer.state_format is not None
        assert option in variant.fixed


def test_cli_lists_the_state_bytes_of_the_memory_light_variants() -> None:
    listing = CliRunner().invoke(app, ["optimizers"], env={"COLUMNS": "400"})
    assert listing.exit_code == 0, listing.output
    for name, size in (("adam", "8"), ("adam-bf16", "4"), ("adam-8bit", "2.03")):
        # the variant's name alone on a line, then its indented lines up to the state's size
        block = (
            rf"^{re.escape(name)}\n(?:[ ]+.*\n)*?[ ]+state: {re.escape(size)} bytes per parameter$"
        )
        assert re.search(block, listing.output, re.MULTILINE), name
