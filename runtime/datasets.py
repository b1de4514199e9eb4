"""Data on the device: ``.npz`` files holding ``x`` (and ``y`` for training).

:func:`read_npz` is the one place an ``.npz`` file is opened (data, masks,
witnesses, checkpoints): whatever is wrong with the file becomes one
ValueError in our words, naming the argument and the path. :func:`load_npz`
adds what a data set must hold. The built-in sets named in :data:`BUILTIN`
need packages of the host extra; they live host-side, in
:mod:`edgetrain.export.datasets`.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

BUILTIN = ("mnist", "digits")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or the end record of an empty zip
_NPY_MAGIC = b"\x93NUMPY"


def read_npz(path, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read now (no pickles). ``what`` names
    the file in errors (``"--data"``, ``"checkpoint"``): a ValueError saying that it
    does not exist, is a directory, is empty, is a single ``.npy``, is not a zip, or
    is truncated or damaged."""
    where = f"{what} {os.fspath(path)!r}"
    if not os.path.exists(path):
        raise ValueError(f"{where} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{where} is a directory, expected an .npz file")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise ValueError(f"{where} cannot be read ({e.strerror})") from None
    if not head:
        raise ValueError(f"{where} is empty (0 bytes), expected an .npz file")
    if head == _NPY_MAGIC:
        raise ValueError(f"{where} is a single .npy array, expected an .npz file of named arrays (numpy.savez)")
    if head[:4] not in _ZIP_MAGIC:
        raise ValueError(f"{where} is not an .npz file (it does not start like a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as f:
            names = list(f.files)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ValueError(f"{where} is truncated or damaged (its zip directory is unreadable)") from None
    arrays = {}
    with np.load(path, allow_pickle=False) as f:
        for name in names:
            try:
                arrays[name] = f[name]
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError):
                raise ValueError(f"{where}: the array {name!r} is unreadable (truncated, damaged or "
                                 "pickled)") from None
    return arrays


def load_npz(path, what: str = "--data", *, labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x float32, y int64 or None)`` from an ``.npz`` file with ``x`` [and ``y``].

    Checked: ``x`` holds numbers, at least one sample, no NaN or inf; ``y`` (needed
    with ``labels``, optional otherwise) holds one integer label ≥ 0 per sample.
    Labels above the model's classes are the caller's to check (it knows the model).
    """
    arrays = read_npz(path, what)
    where = f"{what} {os.fspath(path)!r}"
    expected = "x (samples) and y (integer labels)" if labels else "x (samples) [and y (integer labels)]"
    if "x" not in arrays:
        raise ValueError(f"{where} has no array 'x' (it holds {sorted(arrays) or 'no arrays'}); expected {expected}")
    x = arrays["x"]
    if x.dtype.kind not in "fiub" or x.ndim < 1:
        raise ValueError(f"{where}: x is a {x.ndim}-d {x.dtype} array; expected samples of numbers (N, ...)")
    if len(x) == 0:
        raise ValueError(f"{where}: x holds 0 samples; expected at least one")
    x = x.astype(np.float32)
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{where}: x holds {bad} NaN or infinite value(s) (in float32); expected finite numbers")
    if "y" not in arrays:
        if labels:
            raise ValueError(f"{where} has no array 'y' (it holds {sorted(arrays)}); expected {expected}")
        return x, None
    y = arrays["y"]
    if y.dtype.kind not in "iu":
        raise ValueError(f"{where}: y holds {y.dtype} values; expected integer class labels")
    if y.shape != (len(x),):
        raise ValueError(f"{where}: y has shape {y.shape}; expected ({len(x)},), one label per sample of x")
    if y.min() < 0:
        raise ValueError(f"{where}: y holds negative labels ({sorted(set(y[y < 0].tolist()))[:5]}); expected "
                         "class indices ≥ 0")
    return x, y.astype(np.int64)
