"""Data on the device: ``.npz`` files holding ``x`` (and ``y`` for training).

The built-in sets named in :data:`BUILTIN` need packages of the host extra;
they live host-side, in :mod:`edgetrain.export.datasets`.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

BUILTIN = ("mnist", "digits")


def read_npz(path, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles), read now; a ValueError naming
    ``what`` and the path when the file is missing, truncated, corrupt, pickled or
    a single ``.npy``."""
    try:
        f = np.load(path)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array")
        with f:
            return {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what} {os.fspath(path)!r} is not a readable .npz file: {e}") from None

def load_npz(path: str, *, need_labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x float32, y int64 or None)`` from an ``.npz`` file with ``x`` [and ``y``]."""
    if not os.path.isfile(path):
        raise ValueError(f"data {path!r} is neither a built-in set {BUILTIN} nor an existing .npz file")
    arrays = read_npz(path, "data file")
    if "x" not in arrays:
        raise ValueError(f"data file {path!r} has no array named 'x'")
    if need_labels and "y" not in arrays:
        raise ValueError(f"data file {path!r} has no array named 'y' (labels are needed)")
    return arrays["x"].astype(np.float32), arrays["y"].astype(np.int64) if "y" in arrays else None
