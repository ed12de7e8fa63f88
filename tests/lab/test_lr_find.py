"""The learning-rate range test: suggestions, the stop rule, restoration, errors, the command."""

from __future__ import annotations

import copy
import functools
import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import adaptim
from adaptim.cli import app
from adaptim.lab.lr_find import (
    LrFindResult,
    lr_find,
    ramp,
    smooth,
    suggest,
)
from adaptim.lab.lr_find_trials import lr_find_problem
from adaptim.lab.problems import resolve_problem


def _quadratic(scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Least squares ½‖Ax − b‖²/n; returns x, A, b and the largest Hessian eigenvalue L."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(64, 8, generator=g, dtype=torch.float64) * math.sqrt(scale)
    b = torch.randn(64, generator=g, dtype=torch.float64)
    hessian = a.T @ a / 64
    largest = float(torch.linalg.eigvalsh(hessian).max())
    return torch.zeros(8, dtype=torch.float64, requires_grad=True), a, b, largest


@pytest.mark.slow
@settings(max_examples=10)
@given(scale=st.floats(1e-2, 1e2), seed=st.integers(0, 2**16))
def test_suggestions_lie_where_sgd_is_stable_on_a_quadratic(scale: float, seed: int) -> None:
    # Gradient descent on a quadratic converges for lr < 2/L and diverges above: every
    # suggestion must be stable, and the valley and minimum/10 not absurdly small.
    x, a, b, largest = _quadratic(scale, seed)

    def loss() -> torch.Tensor:
        return 0.5 * ((a @ x - b) ** 2).mean()

    result = lr_find([x], loss, adaptim.SGD, start_lr=1e-6, end_lr=1e4, steps=150)
    assert result.stop == "diverged"
    by_name = {s.name: s.lr for s in result.suggestions}
    assert set(by_name) == {"valley", "steepest", "minimum/10"}
    for lr in by_name.values():
        assert lr < 2 / largest
    assert by_name["valley"] > 1e-3 / largest
    assert by_name["minimum/10"] > 1e-2 / largest
    assert torch.equal(x, torch.zeros(8, dtype=torch.float64))  # restored


def _mlp_batches() -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small MLP with BatchNorm (buffers to restore) and four batches of a 3-class task."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = (x[:, :3] * torch.tensor([1.0, -1.0, 0.5])).argmax(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 3)
    )
    return model, [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]


def test_model_buffers_grads_and_optimizer_state_are_restored_bit_exactly() -> None:
    model, batches = _mlp_batches()

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    optimizer = adaptim.Adam(model.parameters(), lr=3e-3)
    for batch in batches[:2]:  # some state and a gradient to restore
        optimizer.zero_grad()
        loss(batch).backward()
        optimizer.step()
    twin_model, _ = _mlp_batches()
    twin_model.load_state_dict(model.state_dict())
    twin = adaptim.Adam(twin_model.parameters(), lr=3e-3)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # torch shares the tensors
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    result = lr_find(model, loss, optimizer, batches, steps=60)
    assert len(result.lrs) > 20
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm's running stats too
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert optimizer.param_groups[0]["lr"] == 3e-3
    # Training on continues exactly as if the range test had never run.
    for m, opt in ((model, optimizer), (twin_model, twin)):
        for batch in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(batch[0]), batch[1]).backward()
            opt.step()
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_restored_even_when_the_loss_raises() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    calls = []

    def loss() -> torch.Tensor:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return (w**2).sum()

    with pytest.raises(RuntimeError, match="boom"):
        lr_find([w], loss, functools.partial(adaptim.SGD, momentum=0.9))
    assert torch.equal(w, torch.ones(3))


@given(
    losses=st.lists(st.floats(0.1, 10.0), min_size=3, max_size=60),
    beta=st.floats(0.0, 0.99),
)
def test_stop_rule_is_four_times_the_smoothed_minimum(losses: list[float], beta: float) -> None:
    # A scripted loss: the test must stop exactly where the bias-corrected EMA first exceeds
    # 4× its running minimum, and record the smoothed values the formula gives.
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    it = iter(losses)

    def loss() -> torch.Tensor:
        return w.sum() * 0 + next(it)

    result = lr_find([w], loss, adaptim.SGD, steps=len(losses), smoothing=beta)
    expected = smooth(losses, beta)
    stop = next((i for i in range(len(expected)) if expected[i] > 4 * min(expected[: i + 1])), None)
    recorded = len(losses) if stop is None else stop + 1
    assert result.losses == tuple(losses[:recorded])
    assert result.smoothed == pytest.approx(expected[:recorded], rel=1e-12)
    assert result.stop == ("completed" if stop is None else "diverged")
    assert result.lrs == pytest.approx(ramp(1e-7, 10.0, len(losses))[:recorded])


def test_a_non_finite_loss_stops_the_test_without_a_step() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0]))
    values = iter([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, float("nan"), 0.3])

    def loss() -> torch.Tensor:
        return (w * 0).sum() + next(values)

    result = lr_find([w], loss, adaptim.SGD, steps=10, smoothing=0.5)
    assert result.stop == "non-finite"
    assert len(result.lrs) == 8 and result.steps == 9
    assert all(math.isfinite(v) for v in result.smoothed)
    # Suggestions read points 1 and 2: the first tenth of 10 planned steps and the last 5 go.
    assert result.suggestion("minimum/10").lr == pytest.approx(result.lrs[2] / 10)
    empty = lr_find([w], lambda: w.sum() * math.inf, adaptim.SGD, steps=10)
    assert empty.stop == "non-finite" and not empty.suggestions
    with pytest.raises(ValueError, match="lower start_lr"):
        empty.suggestion()


@given(curve=st.lists(st.floats(0.5, 5.0), min_size=2, max_size=40))
def test_suggestion_rules_against_brute_force(curve: list[float]) -> None:
    lrs = ramp(1e-5, 1.0, len(curve))
    found = {s.name: s for s in suggest(lrs, curve, planned=len(curve))}
    points = list(zip(lrs, curve, strict=True))[len(curve) // 10 : len(curve) - 5]
    if len(points) < 2:
        points = list(zip(lrs, curve, strict=True))
    xs, ys = zip(*points, strict=True)
    lowest = min(range(len(ys)), key=lambda i: ys[i])
    assert found["minimum/10"].lr == pytest.approx(xs[lowest] / 10)
    slopes = [(ys[i + 1] - ys[i]) / math.log(xs[i + 1] / xs[i]) for i in range(len(xs) - 1)]
    steepest = min(slopes)
    ties = [xs[i] for i, s in enumerate(slopes) if s <= steepest + 1e-9 * abs(steepest)]
    assert found["steepest"].lr in ties
    # valley: inside a longest strictly falling subsequence (checked by enumeration of its
    # length), a third plus a sixth of its index span in.
    best = [1] * len(ys)
    for i in range(len(ys)):
        for j in range(i):
            if ys[i] < ys[j]:
                best[i] = max(best[i], best[j] + 1)
    assert found["valley"].lr in xs
    assert found["valley"].lr <= xs[max(range(len(ys)), key=lambda i: (best[i], -i))]


def test_bad_arguments_name_the_parameter() -> None:
    w = torch.nn.Parameter(torch.ones(2))

    def loss() -> torch.Tensor:
        return w.sum()

    cases = [
        ({"start_lr": 0.0}, "start_lr: 0.0"),
        ({"end_lr": 1e-8}, "end_lr: 1e-08; it must exceed start_lr"),
        ({"steps": 1}, "steps: 1"),
        ({"smoothing": 1.0}, "smoothing: 1.0"),
        ({"stop_factor": 1.0}, "stop_factor: 1.0"),
        ({"start_lr": math.nan}, "start_lr: nan"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=f"Invalid {message}"):
            lr_find([w], loss, adaptim.SGD, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Invalid optimizer"):
        lr_find([w], loss, "adam")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Invalid model"):
        lr_find(w, loss, adaptim.SGD)
    with pytest.raises(ValueError, match="no parameters"):
        lr_find([], loss, adaptim.SGD)
    with pytest.raises(TypeError, match="scalar tensor, got a tensor of shape"):
        lr_find([w], lambda: w * 2, adaptim.SGD)
    with pytest.raises(TypeError, match="returned a dict"):
        lr_find([w], loss, lambda params: {})  # type: ignore[arg-type, return-value]
    assert torch.equal(w, torch.ones(2))


def test_data_is_cycled_and_an_empty_iterator_stops() -> None:
    w = torch.nn.Parameter(torch.ones(1))
    seen: list[int] = []

    def loss(batch: int) -> torch.Tensor:
        seen.append(batch)
        return (w**2).sum() + 1

    lr_find([w], loss, adaptim.SGD, [1, 2, 3], steps=7, end_lr=1e-3)
    assert seen == [1, 2, 3, 1, 2, 3, 1]
    result = lr_find([w], loss, adaptim.SGD, iter([4, 5]), steps=7, end_lr=1e-3)
    assert result.stop == "data exhausted" and len(result.lrs) == 2


def test_json_round_trip_and_top_level_export() -> None:
    w = torch.nn.Parameter(torch.ones(4))
    result = adaptim.lr_find([w], lambda: (w**2).sum(), adaptim.SGD, steps=40)
    assert LrFindResult.from_json(json.loads(json.dumps(result.to_json()))) == result


@pytest.mark.slow
def test_lab_problem_adam_suggestions_bracket_its_tuned_rates() -> None:
    # digits-mlp: Adam's grid picks rates of 1e-3 to 1e-2 (README's default study).
    result = lr_find_problem(resolve_problem("digits-mlp"), "adam", steps=60)
    assert result.stop == "diverged"
    for s in result.suggestions:
        assert 1e-4 <= s.lr <= 0.1, s


@pytest.mark.slow
def test_command_prints_suggestions_and_writes_the_figure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    args = ["lr-find", "--problem", "linreg", "--optimizer", "momentum", "--steps", "50"]
    done = runner.invoke(app, [*args, "--out", str(tmp_path), "--set", "momentum=0.8"])
    assert done.exit_code == 0, done.output
    assert "valley" in done.output and "minimum/10" in done.output
    stem = tmp_path / "lr-find-linreg-momentum"
    assert stem.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert saved["problem"] == "linreg" and len(saved["suggestions"]) == 3
    bad = runner.invoke(app, ["lr-find", "--problem", "linreg", "--optimizer", "adma"])
    assert bad.exit_code == 2 and "did you mean 'adam'" in bad.output
    bad = runner.invoke(app, ["lr-find", "-p", "linreg", "--end-lr", "1e-9"])
    assert bad.exit_code == 2 and "Invalid --end-lr: 1e-09" in bad.output


def test_command_output_reads_at_80_columns_without_trailing_blanks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Piped at COLUMNS=80: the table and the sentence under it fit, and no line ends in a
    blank (the wrapped stop sentence ended in 'try a ')."""
    args = ["lr-find", "-p", "linreg", "--steps", "40", "--out", str(tmp_path)]
    done = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert done.exit_code == 0, done.output
    assert "without blowing up" in done.output  # the long sentence that wraps
    lines = done.output.splitlines()
    assert [line for line in lines if line != line.rstrip()] == []
    assert [line for line in lines if len(line) > 80 and str(tmp_path) not in line] == []


def test_command_help_names_what_each_option_takes() -> None:
    """Like compare's help: NAME, PARAM=VALUE, LR, N, DIR, not Python's types
    (``--set <list[str]>`` was shown)."""
    helped = CliRunner().invoke(app, ["lr-find", "--help"], env={"COLUMNS": "80"})
    assert helped.exit_code == 0
    for python_type in ("<str>", "<list[str]>", "<float>", "<int>", "<path>"):
        assert python_type not in helped.output
    for metavar in ("NAME", "PARAM=VALUE", "LR", "N", "DIR"):
        assert f" {metavar} " in helped.output


@pytest.mark.slow
def test_adaptim_lr_find_loads_torch_only() -> None:
    # The core package needs torch and numpy only: the range test must not pull in the
    # lab's dependencies (matplotlib, scipy, SQLAlchemy, ...) or the rest of the lab.
    code = (
        "import sys, adaptim\n"
        "assert 'adaptim.lab.lr_find' not in sys.modules\n"
        "adaptim.lr_find\n"
        "print(sorted(m for m in ('matplotlib', 'scipy', 'sklearn', 'sqlalchemy', 'optuna',"
        " 'rich', 'typer', 'adaptim.lab.study', 'adaptim.lab.problems') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_command_set_errors_quote_what_was_typed() -> None:
    """``--set`` takes PARAM=VALUE, and compare's OPTIMIZER.PARAM=VALUE naming the optimizer
    being tested; an error quotes the setting as typed (it showed 'adam.adam.lr=0.1')."""
    runner = CliRunner()
    args = ["lr-find", "--problem", "linreg", "--optimizer", "adam", "--set"]
    done = runner.invoke(app, [*args, "adam.lr=0.1"])
    assert done.exit_code == 2, done.output
    assert "--set lr=... makes no sense here" in done.output
    done = runner.invoke(app, [*args, "sgd.momentum=0.5"])
    assert done.exit_code == 2, done.output
    assert "'sgd.momentum=0.5'" in done.output and "adam.sgd" not in done.output
    assert "PARAM=VALUE" in done.output
    done = runner.invoke(app, [*args, "eps"])
    assert done.exit_code == 2, done.output
    assert "'eps'" in done.output and "adam.eps" not in done.output
    assert "PARAM=VALUE" in done.output
    done = runner.invoke(app, [*args, "adam.epss=1e-3"])
    assert done.exit_code == 2 and "did you mean 'eps'" in done.output, done.output
