"""The learning-rate-free optimizers in the lab: variants, eval/train around evaluations, measured state size."""

from __future__ import annotations

import dadaptation
import dog
import prodigyopt
import pytest
import schedulefree
import torch
from toyproblems import quadratic

from adaptim.lab.optimizers import VARIANTS, make_optimizer, state_bytes_per_parameter
from adaptim.lab.problems.base import BuildContext
from adaptim.lab.trial import TrialSpec, run_trial

LR_FREE = (
    "prodigy",
    "schedulefree-adamw",
    "schedulefree-sgd",
    "dadapt-adam",
    "dadapt-sgd",
    "dadapt-adagrad",
    "dog",
    "ldog",
    # hypergradient descent, at the paper's α₀ and β (see adaptim.lab.optimizers)
    "sgd-hd",
    "adam-hd",
    # Mechanic over Adam at Adam's default lr (adaptim.lab.adapters.MechanicAdam)
    "mechanic-adam",
)


def test_exactly_the_learning_rate_free_variants_are_tuning_free() -> None:
    # and adam-defaults, Adam at its published lr: the self-tuning track's baseline
    assert {name for name, v in VARIANTS.items() if v.tuning_free} == {*LR_FREE, "adam-defaults"}


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(schedulefree.AdamWScheduleFree, {"lr": 0.05}), (schedulefree.SGDScheduleFree, {"lr": 0.5})],
)
def test_schedule_free_trial_evaluates_the_averaged_point(
    cls: type[torch.optim.Optimizer], kwargs: dict[str, float]
) -> None:
    """The trial's metrics are those of the reference run evaluated at x (after ``eval()``)."""
    problem = quadratic()
    name = "schedulefree-adamw" if cls is schedulefree.AdamWScheduleFree else "schedulefree-sgd"
    result = run_trial(TrialSpec(problem.name, name, kwargs, 3, 30), problem)
    torch.manual_seed(3)
    setup = problem.build(3, BuildContext())
    reference = cls(setup.parameters, **kwargs)
    reference.train()  # type: ignore[attr-defined]
    for step in range(1, 31):
        reference.zero_grad()
        setup.train_loss(step).backward()  # type: ignore[no-untyped-call]
        reference.step()
    at_y = setup.evaluate()["loss"]
    reference.eval()  # type: ignore[attr-defined]
    at_x = setup.evaluate()["loss"]
    assert result.final["loss"] == pytest.approx(at_x, rel=1e-5)
    assert at_x != pytest.approx(at_y, rel=1e-3)  # the switch matters on this problem


@pytest.mark.parametrize(("name", "cls"), [("dog", dog.DoG), ("ldog", dog.LDoG)])
def test_dog_trial_evaluates_the_polynomial_decay_average(
    name: str, cls: type[torch.optim.Optimizer]
) -> None:
    """The trial's metrics are dog-optimizer's run evaluated at its averager's weights."""
    problem = quadratic()
    result = run_trial(TrialSpec(problem.name, name, {}, 4, 200), problem)
    torch.manual_seed(4)
    setup = problem.build(4, BuildContext())
    reference = cls(setup.parameters)
    averager = dog.PolynomialDecayAverager(torch.nn.ParameterList(setup.parameters))
    for step in range(1, 201):
        reference.zero_grad()
        setup.train_loss(step).backward()  # type: ignore[no-untyped-call]
        reference.step()
        averager.step()
    at_last = setup.evaluate()["loss"]
    with torch.no_grad():
        for p, mean in zip(setup.parameters, averager.averaged_model.parameters(), strict=True):
            p.copy_(mean)
    at_average = setup.evaluate()["loss"]
    assert result.final["loss"] == pytest.approx(at_average, rel=1e-6)
    assert at_average != pytest.approx(at_last, rel=1e-2)  # the average is what was evaluated


def test_averaged_dog_refuses_to_step_in_eval_mode_and_restores_the_trained_point() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = make_optimizer("dog", [p], {})
    for _ in range(3):
        p.grad = p.detach().clone()
        optimizer.step()
    trained = p.detach().clone()
    optimizer.eval()  # type: ignore[attr-defined]
    assert not torch.equal(p, trained)
    with pytest.raises(RuntimeError, match=r"eval mode.*call train"):
        optimizer.step()
    optimizer.train()  # type: ignore[attr-defined]
    assert torch.equal(p, trained)


REFERENCES: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "momentum": torch.optim.SGD,
    "prodigy": prodigyopt.Prodigy,
    "schedulefree-adamw": schedulefree.AdamWScheduleFree,
    "schedulefree-sgd": schedulefree.SGDScheduleFree,
    "dadapt-adam": dadaptation.DAdaptAdam,
    "dadapt-sgd": dadaptation.DAdaptSGD,
    "dadapt-adagrad": dadaptation.DAdaptAdaGrad,
    "adam-hd": torch.optim.Adam,  # Adam's state: α lives in the param group
}


def _reference_bytes(name: str, numel: int = 1000) -> float:
    p = torch.randn(numel).requires_grad_(True)
    variant = VARIANTS[name]
    optimizer = REFERENCES[name]([p], **variant.fixed)
    if hasattr(optimizer, "train"):
        optimizer.train()
    p.grad = torch.randn(numel)
    optimizer.step()
    return sum(v.nbytes for v in optimizer.state[p].values() if isinstance(v, torch.Tensor)) / numel


@pytest.mark.parametrize("name", REFERENCES)
def test_state_bytes_are_those_the_reference_keeps(name: str) -> None:
    assert state_bytes_per_parameter(name) == pytest.approx(_reference_bytes(name), abs=0.01)


def test_state_bytes_of_the_issue() -> None:
    """Prodigy 16, D-Adapt Adam 12, Schedule-Free AdamW 8 bytes per float32 parameter."""
    measured = {n: round(state_bytes_per_parameter(n)) for n in ("prodigy", "dadapt-adam")}
    assert measured == {"prodigy": 16, "dadapt-adam": 12}
    # DoG keeps x0; the lab's DoG also keeps the average of the iterates
    assert round(state_bytes_per_parameter("dog")) == 8
    assert round(state_bytes_per_parameter("schedulefree-adamw")) == 8


def test_variants_build_at_their_published_defaults() -> None:
    for name in LR_FREE:
        optimizer = make_optimizer(name, [torch.zeros(2, requires_grad=True)], {})
        assert optimizer.param_groups[0]["lr"] == VARIANTS[name].cls.algorithm.defaults["lr"]


def test_cli_lists_the_measured_state_size() -> None:
    from typer.testing import CliRunner

    from adaptim.cli import app

    listing = CliRunner().invoke(app, ["optimizers"], env={"COLUMNS": "400"})
    assert listing.exit_code == 0
    blocks: dict[str, list[str]] = {}
    for line in listing.output.splitlines():
        if line and not line.startswith(" "):
            blocks[line.strip()] = current = []
        elif line.strip():
            current.append(line.strip())
    assert "state: 16 bytes per parameter" in blocks["prodigy"]
    assert "state: 8 bytes per parameter" in blocks["adam"]


def test_effective_lr_of_schedule_free_sgd_is_its_lr_not_a_heavy_ball_gain() -> None:
    """Its momentum interpolates y between z and x; the z step is lr itself (no 1/(1-momentum))."""
    problem = quadratic()
    result = run_trial(TrialSpec(problem.name, "schedulefree-sgd", {"lr": 0.5}, 0, 30), problem)
    rates = result.records[-1].effective_lr
    assert rates is not None and rates["p50"] == pytest.approx(0.5)
