"""What every classification problem shares: data splits, seeded models, the setup.

A classification problem is a data loader (seed, context → :class:`Split`)
and a model factory; :func:`classification_problem` turns the pair into a
:class:`Problem` whose training loss is the cross-entropy of a seeded
minibatch and whose metrics are accuracy (the main metric) and mean
cross-entropy ``loss``, on the whole validation set (``validate``) and on the
whole test set (``evaluate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adaptim.lab.problems.base import BuildContext, Metric, Problem, Setup
from adaptim.lab.problems.sampling import EpochBatches, to_device, torch_generator

#: Test examples per forward pass in ``evaluate()``: bounds its peak memory.
EVAL_CHUNK = 1000


@dataclass(frozen=True)
class Split:
    """A labelled data set cut into train, validation and test: float32 inputs, int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @classmethod
    def from_numpy(
        cls,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
    ) -> Split:
        """From ``(inputs, labels)`` pairs of NumPy arrays."""

        def inputs(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

        def labels(y: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

        return cls(
            inputs(train[0]),
            labels(train[1]),
            inputs(val[0]),
            labels(val[1]),
            inputs(test[0]),
            labels(test[1]),
        )

    def to(self, device: str | torch.device) -> Split:
        """The same split on ``device`` (itself when it is there already)."""
        return Split(*to_device(device, *(getattr(self, f.name) for f in fields(self))))


def train_val_test(
    labels: np.ndarray, val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled, stratified, disjoint train, validation and test indices of ``labels``.

    The test set takes ``test_fraction`` of each class, the validation set
    ``val_fraction`` of the whole from what is left.
    """
    rest, test = stratified_split(labels, test_fraction, rng)
    train, val = stratified_split(labels[rest], val_fraction / (1 - test_fraction), rng)
    return rest[train], rest[val], test


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train and test indices with each class split in the same proportion.

    Each class contributes ``round(test_fraction * count)`` examples to the test
    set, so every class with two or more examples appears on both sides.
    """
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(len(members) - 1, max(1, round(test_fraction * len(members))))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def standardize(
    train: np.ndarray, *others: np.ndarray, per_feature: bool
) -> tuple[np.ndarray, ...]:
    """Center and scale every set with the training set's mean and standard deviation.

    ``per_feature`` scales each column on its own (constant columns are only
    centered); otherwise one mean and one deviation are used for all values,
    as is usual for images.
    """
    axis = 0 if per_feature else None
    mean = train.mean(axis=axis)
    std = train.std(axis=axis)
    std = np.where(std > 0, std, 1.0)
    return tuple((x - mean) / std for x in (train, *others))


def small_cnn(
    side: int, kernel: int, padding: int, channels: tuple[int, int] = (16, 32)
) -> nn.Module:
    """Two conv layers, each with ReLU and 2×2 max-pooling, then a linear layer to 10 classes.

    The input is a flattened ``side × side`` grayscale image.
    """
    out = side
    for _ in channels:
        out = (out + 2 * padding - kernel + 1) // 2
    first, second = channels
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, first, kernel, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(first, second, kernel, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(second * out * out, 10),
    )


def init_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Initialize ``module`` as torch's defaults do, drawing from ``generator``.

    Linear and convolution layers get ``kaiming_uniform_(a=√5)`` weights and
    ``U(-1/√fan_in, 1/√fan_in)`` biases; recurrent layers get
    ``U(-1/√hidden, 1/√hidden)`` everywhere. A parameter of any other layer is
    an error rather than a silently unseeded value.
    """
    done: set[int] = set()
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                fan_in = layer.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        elif isinstance(layer, nn.RNNBase):
            bound = 1 / math.sqrt(layer.hidden_size)
            for weight in layer.parameters():
                nn.init.uniform_(weight, -bound, bound, generator=generator)
        else:
            continue
        done.update(id(p) for p in layer.parameters())
    missed = [name for name, p in module.named_parameters() if id(p) not in done]
    if missed:
        raise TypeError(f"init_parameters does not know how to initialize {missed}")


def seeded_model(
    factory: Callable[[], nn.Module],
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build ``factory()``'s model without touching torch's global RNG, seed its weights, move it.

    The layers are created on the ``meta`` device (no values, no random
    draws), given CPU memory, initialized from the CPU ``generator`` and then
    moved to ``device``: the initial weights are the same bits on every device.
    """
    with torch.no_grad():
        with torch.device("meta"):
            model = factory()
        model = model.to_empty(device="cpu")
        init_parameters(model, generator)
    return model.to(device)


def classification_metrics(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on a whole labelled set, in chunks."""
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(labels), EVAL_CHUNK):
            x = inputs[start : start + EVAL_CHUNK]
            y = labels[start : start + EVAL_CHUNK]
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum())
    n = len(labels)
    return {"accuracy": correct / n, "loss": loss / n}


def classification_setup(model: nn.Module, data: Split, batch_size: int, seed: int) -> Setup:
    """Cross-entropy on seeded minibatches; accuracy and loss on the whole validation and test sets."""
    batches = EpochBatches(len(data.y_train), batch_size, seed, data.y_train.device)

    def train_loss(step: int) -> torch.Tensor:
        rows = batches(step)
        return F.cross_entropy(model(data.x_train[rows]), data.y_train[rows])

    return Setup(
        parameters=list(model.parameters()),
        train_loss=train_loss,
        evaluate=lambda: classification_metrics(model, data.x_test, data.y_test),
        validate=lambda: classification_metrics(model, data.x_val, data.y_val),
    )


def classification_problem(
    *,
    name: str,
    description: str,
    load: Callable[[int, BuildContext], Split],
    model: Callable[[], nn.Module],
    steps: int,
    batch_size: int,
    tags: tuple[str, ...] = (),
    target: float | None = None,
) -> Problem:
    """A :class:`Problem` training ``model()`` on ``load(seed, context)``, scored by accuracy.

    The seed drives the data split (through ``load``), the initial weights and
    the minibatch order, each from its own stream. ``load`` may return its
    split on the CPU: the data and the model move to ``context.device`` here.
    """

    def build(seed: int, context: BuildContext) -> Setup:
        data = load(seed, context).to(context.device)
        network = seeded_model(model, torch_generator(seed, "init"), context.device)
        return classification_setup(network, data, batch_size, seed)

    return Problem(
        name=name,
        description=description,
        metric=Metric("accuracy", "max"),
        build=build,
        steps=steps,
        batch_size=batch_size,
        tags=("classification", *tags),
        target=target,
    )
