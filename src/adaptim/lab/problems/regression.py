"""Small synthetic models with known ground truth: linear and sparse logistic regression,
low-rank matrix completion.

All data are drawn from the trial seed, with disjoint train, validation and
test sets. Two are convex, where each optimizer's behaviour is easy to
reason about; ``logreg-sparse`` is the setting AdaGrad was designed for
(Duchi, Hazan & Singer 2011: rare but informative features). What it shows
is that per-coordinate steps beat one global step: AdaGrad, RMSprop and
Adam all scale up the steps of rare coordinates, and all beat plain SGD
there; it does not single out AdaGrad (RMSprop's and Adam's moving averages
give a rare coordinate an even larger normalised step), and the lab does
not claim it does. Matrix factorization is the classic nonconvex one,
with sparse gradients (each step touches few rows of the factors).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adaptim.lab.problems.base import BuildContext, Metric, Problem, Setup
from adaptim.lab.problems.sampling import EpochBatches, numpy_rng, to_device, torch_generator


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# ---------------------------------------------------------------- linear regression

LINREG_TRAIN, LINREG_VAL, LINREG_TEST, LINREG_NOISE = 1000, 500, 1000, 0.5


def _build_linreg(seed: int, context: BuildContext) -> Setup:
    rng = numpy_rng(seed, "data")
    x = rng.standard_normal(LINREG_TRAIN + LINREG_VAL + LINREG_TEST)
    y = 2 * x + 1 + LINREG_NOISE * rng.standard_normal(len(x))
    cut = LINREG_TRAIN + LINREG_VAL
    x_train, y_train, x_val, y_val, x_test, y_test = to_device(
        context.device,
        *(_tensor(x[:LINREG_TRAIN]), _tensor(y[:LINREG_TRAIN])),
        *(_tensor(x[LINREG_TRAIN:cut]), _tensor(y[LINREG_TRAIN:cut])),
        *(_tensor(x[cut:]), _tensor(y[cut:])),
    )
    # Like nn.Linear(1, 1): slope and intercept from U(-1, 1).
    start = torch.rand(2, generator=torch_generator(seed, "init"), device="cpu") * 2 - 1
    slope, intercept = (torch.nn.Parameter(v.clone()) for v in start.to(context.device).unbind())
    batches = EpochBatches(LINREG_TRAIN, 32, seed, context.device)

    def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((slope * x + intercept - y) ** 2).mean()

    def train_loss(step: int) -> torch.Tensor:
        rows = batches(step)
        return mse(x_train[rows], y_train[rows])

    def metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": mse(x, y).item(), "slope": slope.item(), "intercept": intercept.item()}

    return Setup(
        [slope, intercept],
        train_loss,
        lambda: metrics(x_test, y_test),
        validate=lambda: metrics(x_val, y_val),
    )


LINREG = Problem(
    name="linreg",
    description="1-d linear regression y = 2x + 1 + N(0, 0.5²) (MSE floor 0.25)",
    metric=Metric("mse", "min"),
    target=0.26,
    build=_build_linreg,
    steps=300,
    batch_size=32,
    tags=("synthetic", "convex"),
)

# ---------------------------------------------------------------- sparse logistic regression

SPARSE_DIM, SPARSE_TRAIN, SPARSE_VAL, SPARSE_TEST = 2000, 20_000, 2000, 2000
#: The true weights: zero on the most common features, and on the others non-zero
#: with this probability, drawn from N(0, scale²).
SPARSE_COMMON, SPARSE_SUPPORT, SPARSE_WEIGHT_SCALE = 20, 0.2, 3.0


def zipf_activation_probabilities(dim: int = SPARSE_DIM) -> np.ndarray:
    """P(feature j is 1) = min(1, 5/j) for j = 1..dim: a few common features, a long rare tail."""
    return np.minimum(1.0, 5.0 / np.arange(1, dim + 1))


def _sparse_features(rng: np.random.Generator, n: int, chunk: int = 2000) -> np.ndarray:
    probabilities = zipf_activation_probabilities().astype(np.float32)
    blocks = [rng.random((min(chunk, n - start), SPARSE_DIM), dtype=np.float32) < probabilities
              for start in range(0, n, chunk)]  # fmt: skip
    return np.concatenate(blocks)


SparseData = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@functools.lru_cache(maxsize=4)
def _logreg_sparse_data(seed: int) -> SparseData:
    """20,000 training, 2,000 validation and 2,000 test samples; y ~ Bernoulli(σ(xᵀw* − median)).

    The true weights w* sit on the rare features only (20% of the features
    beyond the 20 most common, N(0, 3²) each), so learning them needs the
    large per-coordinate steps that adaptive methods (AdaGrad first) give
    rare coordinates. The model starts at zero, the usual start for a convex
    problem.
    """
    rng = numpy_rng(seed, "data")
    features = _sparse_features(rng, SPARSE_TRAIN + SPARSE_VAL + SPARSE_TEST)
    rare = np.arange(SPARSE_DIM) >= SPARSE_COMMON
    support = rare & (rng.random(SPARSE_DIM) < SPARSE_SUPPORT)
    true_weights = np.where(support, SPARSE_WEIGHT_SCALE * rng.standard_normal(SPARSE_DIM), 0.0)
    logits = features @ true_weights
    logits -= np.median(logits)  # balance the classes
    labels = torch.from_numpy(rng.random(len(logits)) < 1 / (1 + np.exp(-logits)))  # logistic noise
    cut = SPARSE_TRAIN + SPARSE_VAL
    return (
        (torch.from_numpy(features[:SPARSE_TRAIN]), labels[:SPARSE_TRAIN].float()),
        (_tensor(features[SPARSE_TRAIN:cut]), labels[SPARSE_TRAIN:cut].float()),
        (_tensor(features[cut:]), labels[cut:].float()),
    )


def _build_logreg_sparse(seed: int, context: BuildContext) -> Setup:
    # Generating 22,000 x 2,000 features takes seconds; every trial of a seed shares them (read only).
    # The cache holds them on the CPU; each build moves them to its device.
    x_train, y_train, x_val, y_val, x_test, y_test = to_device(
        context.device, *(t for pair in _logreg_sparse_data(seed) for t in pair)
    )
    weights = torch.nn.Parameter(torch.zeros(SPARSE_DIM, device=context.device))
    bias = torch.nn.Parameter(torch.zeros((), device=context.device))
    batches = EpochBatches(SPARSE_TRAIN, 32, seed, context.device)

    def train_loss(step: int) -> torch.Tensor:
        rows = batches(step)
        scores = x_train[rows].float() @ weights + bias
        return F.binary_cross_entropy_with_logits(scores, y_train[rows])

    def metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            scores = x @ weights + bias
            return {
                "accuracy": ((scores > 0) == (y > 0.5)).float().mean().item(),
                "loss": F.binary_cross_entropy_with_logits(scores, y).item(),
            }

    return Setup(
        [weights, bias],
        train_loss,
        lambda: metrics(x_test, y_test),
        validate=lambda: metrics(x_val, y_val),
    )


LOGREG_SPARSE = Problem(
    name="logreg-sparse",
    description=(
        "logistic regression, 2,000 binary Zipf-like features (P(x_j=1) = min(1, 5/j)): "
        "per-coordinate steps (AdaGrad, RMSprop, Adam) beat one global step"
    ),
    metric=Metric("accuracy", "max"),
    # Tuned adaptive methods end near 0.87, momentum 0.85, SGD 0.82 (test, default study).
    target=0.84,
    build=_build_logreg_sparse,
    steps=2000,
    batch_size=32,
    tags=("synthetic", "convex", "sparse"),
)

# ---------------------------------------------------------------- matrix factorization

USERS, ITEMS, RANK = 200, 150, 5
TRAIN_FRACTION, TEST_FRACTION = 0.10, 0.05
RATING_NOISE, L2, INIT_SCALE = 0.1, 1e-3, 0.1


@dataclass(frozen=True)
class Ratings:
    """Observed entries of the ratings matrix: row (user), column (item) and value."""

    users: torch.Tensor
    items: torch.Tensor
    values: torch.Tensor

    def to(self, device: str | torch.device) -> Ratings:
        """The same entries on ``device``."""
        users, items, values = to_device(device, self.users, self.items, self.values)
        return Ratings(users, items, values)


def rating_entries(seed: int) -> tuple[Ratings, Ratings, Ratings]:
    """Disjoint train (10%), validation (5%) and test (5%) entries of a noisy rank-5 matrix."""
    rng = numpy_rng(seed, "data")
    scale = RANK**-0.25  # entries of U* V*ᵀ have unit variance
    true_users = scale * rng.standard_normal((USERS, RANK))
    true_items = scale * rng.standard_normal((ITEMS, RANK))
    noisy = (true_users @ true_items.T).ravel() + RATING_NOISE * rng.standard_normal(USERS * ITEMS)
    cells = rng.permutation(USERS * ITEMS)
    n_train, n_test = round(TRAIN_FRACTION * cells.size), round(TEST_FRACTION * cells.size)

    def entries(picked: np.ndarray) -> Ratings:
        users, items = np.divmod(picked, ITEMS)
        return Ratings(torch.from_numpy(users), torch.from_numpy(items), _tensor(noisy[picked]))

    return (
        entries(cells[:n_train]),
        entries(cells[n_train : n_train + n_test]),
        entries(cells[n_train + n_test : n_train + 2 * n_test]),
    )


def _build_matrix_factorization(seed: int, context: BuildContext) -> Setup:
    train, val, test = (entries.to(context.device) for entries in rating_entries(seed))
    generator = torch_generator(seed, "init")
    users, items = (
        (INIT_SCALE * torch.randn(rows, RANK, generator=generator, device="cpu")).to(context.device)
        for rows in (USERS, ITEMS)
    )
    user_factors, item_factors = torch.nn.Parameter(users), torch.nn.Parameter(items)
    batches = EpochBatches(len(train.values), 128, seed, context.device)

    def train_loss(step: int) -> torch.Tensor:
        rows = batches(step)
        u, v = user_factors[train.users[rows]], item_factors[train.items[rows]]
        error = ((u * v).sum(dim=1) - train.values[rows]).pow(2).mean()
        return error + L2 * (u.pow(2).sum(dim=1) + v.pow(2).sum(dim=1)).mean()

    def rmse(held_out: Ratings) -> dict[str, float]:
        with torch.no_grad():
            u, v = user_factors[held_out.users], item_factors[held_out.items]
            predicted = (u * v).sum(dim=1)
            return {"rmse": (predicted - held_out.values).pow(2).mean().sqrt().item()}

    return Setup(
        [user_factors, item_factors],
        train_loss,
        lambda: rmse(test),
        validate=lambda: rmse(val),
    )


MATRIX_FACTORIZATION = Problem(
    name="matrix-factorization",
    description="rank-5 200×150 ratings, 10% observed; factor model U Vᵀ with small L2",
    metric=Metric("rmse", "min"),
    target=0.3,  # Adam lr 0.05 reaches it at step 2,640 of 3,000 (seed 1) and ends at 0.23
    build=_build_matrix_factorization,
    steps=3000,
    batch_size=128,
    tags=("synthetic", "nonconvex"),
)
