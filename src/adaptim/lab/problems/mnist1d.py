"""MNIST-1D (Greydanus 2020): 1-D signals of length 40 in 10 classes, generated offline.

Greydanus, "Scaling Down Deep Learning" (2020), https://github.com/greydanus/mnist1d.
The data set is the default of :func:`mnist1d.data.make_dataset` (5,000
signals, 4,000 for training and 1,000 for testing); it is fixed by the
generator's own seed (42), so it is generated once per process. The 1,000
test signals are the paper's test set and stay fixed (held out from tuning,
reported only); each trial seed draws its own stratified validation set of
10% of each class (about 400 signals) from the 4,000 training signals and
trains on the other 3,600 or so. The trial seed also drives the initial weights and the minibatch order.

The four models are the reference models of the MNIST-1D notebooks
(``notebooks/models.py``): logistic regression; an MLP with two hidden
layers of 100 units, the second residual; a CNN with three 1-D conv layers of
25 channels (kernel 5, 3, 3; stride 2; padding 1) and a linear classifier; and
a bidirectional GRU with 6 hidden units whose outputs at all 40 time steps
feed a linear classifier. The reference training (``notebooks/train.py``) is
Adam, lr 1e-2, batch 100, for 6,000 steps; the default budgets here are
scaled down to fit 2 CPU cores (see each problem's ``steps``), the models and
the batch size are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from adaptim.lab.problems.base import BuildContext, Problem
from adaptim.lab.problems.classification import Split, classification_problem, stratified_split
from adaptim.lab.problems.sampling import numpy_rng, preserving_global_rngs

LENGTH = 40
CLASSES = 10
BATCH_SIZE = 100
VALIDATION = 400


@functools.cache
def _mnist1d() -> dict[str, np.ndarray]:
    # make_dataset reseeds NumPy's and Python's global RNGs with its own seed.
    with preserving_global_rngs():
        from mnist1d.data import make_dataset

        data = make_dataset()
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(seed: int, context: BuildContext) -> Split:
    """About 3,600 training and 400 validation signals drawn by ``seed``; the fixed 1,000 test signals."""
    data = _mnist1d()
    x, y = data["x"], data["y"]
    train, val = stratified_split(y, VALIDATION / len(y), numpy_rng(seed, "split"))
    return Split.from_numpy(
        (x[train], y[train]), (x[val], y[val]), (data["x_test"], data["y_test"])
    )


class ResidualMLP(nn.Module):
    """x → h = relu(W₁x) → h + relu(W₂h) → W₃(·), the MNIST-1D reference MLP."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.linear1 = nn.Linear(LENGTH, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)  # type: ignore[no-any-return]


class BiGRUClassifier(nn.Module):
    """A bidirectional GRU over the signal; all its outputs, flattened, feed a linear layer."""

    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=1, hidden_size=hidden, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(2 * hidden * LENGTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.gru(x.unsqueeze(-1))
        return self.linear(outputs.flatten(1))  # type: ignore[no-any-return]


def mnist1d_logreg() -> nn.Module:
    return nn.Linear(LENGTH, CLASSES)


def mnist1d_cnn(channels: int = 25) -> nn.Module:
    """Conv1d 1→25 (k5 s2 p1), 25→25 (k3 s2 p1) twice, ReLUs; lengths 40 → 19 → 10 → 5."""
    return nn.Sequential(
        nn.Unflatten(1, (1, LENGTH)),
        nn.Conv1d(1, channels, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * 5, CLASSES),
    )


def _problem(
    name: str, model_doc: str, model: Callable[[], nn.Module], steps: int, target: float
) -> Problem:
    return classification_problem(
        name=name,
        description=f"MNIST-1D (Greydanus 2020), {model_doc}; {steps} steps (paper: 6,000)",
        load=load_mnist1d,
        model=model,
        steps=steps,
        batch_size=BATCH_SIZE,
        tags=("sequence",),
        target=target,
    )


# Time-to-target targets: validation accuracies a little under the paper's test accuracies
# (logistic regression 32%, MLP 68%, CNN 94%, GRU 91%), reachable within the scaled-down budgets.
MNIST1D_LOGREG = _problem("mnist1d-logreg", "logistic regression", mnist1d_logreg, 3000, 0.30)
MNIST1D_MLP = _problem("mnist1d-mlp", "residual MLP, 100 hidden units", ResidualMLP, 3000, 0.60)
MNIST1D_CNN = _problem(
    "mnist1d-cnn", "CNN, three conv layers of 25 channels", mnist1d_cnn, 2000, 0.85
)
MNIST1D_GRU = _problem(
    "mnist1d-gru", "bidirectional GRU, 6 hidden units", BiGRUClassifier, 1000, 0.75
)
