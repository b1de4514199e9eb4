"""What the command line reads, writes and prints.

Inputs are checked before any work, each kind of file in one function (data sets
here and in :mod:`edgetrain.datasets`, models in :func:`edgetrain.load`, masks,
witnesses, checkpoints and proofs in their own readers), and every error is one
ValueError naming the argument and the value. Outputs go through :class:`Outputs`:
checked before any work, written beside their target under a temporary name and
renamed into place only when the command succeeds. Results print as aligned
text (:func:`render`) or as strict JSON (:func:`to_json`: no NaN, no Infinity).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil

import numpy as np

from . import datasets


# -- outputs ------------------------------------------------------------------------

def check_writable(path, flag: str) -> str:
    """``path`` as a string after checking that a file can be written there: not a
    directory, in a folder that exists and that we may write to."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{flag} is empty; expected a file path")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; expected a file path")
    _check_folder(path, flag)
    return path


def _check_folder(path: str, flag: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path!r}: the folder {folder!r} is not writable")


class Outputs:
    """The files (and folders) a command writes. :meth:`file` checks a path before
    any work and returns the temporary name to write instead, beside it;
    :meth:`commit` renames them all into place once the command has succeeded, and
    :meth:`discard` removes them, so a failed or interrupted command leaves nothing."""

    def __init__(self):
        self._temps: dict[str, str] = {}  # final path → temporary path

    def _temp_for(self, path: str, flag: str) -> str:
        key = os.path.abspath(path)
        if key in {os.path.abspath(p) for p in self._temps}:
            raise ValueError(f"{flag} {path!r} is already another output of this command")
        folder, name = os.path.split(key)
        stem, ext = os.path.splitext(name)
        temp = os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}")
        self._temps[path] = temp
        return temp

    def file(self, path, flag: str) -> str:
        """The temporary name to write the output ``path`` (argument ``flag``) to."""
        return self._temp_for(check_writable(path, flag), flag)

    def folder(self, path, flag: str) -> str:
        """A temporary folder for the output folder ``path``; on commit each file in
        it moves into ``path`` (created then; files of other names there stay)."""
        path = os.fspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{flag} {path!r} is a file; expected a folder")
        _check_folder(path, flag)
        temp = self._temp_for(path, flag)
        os.mkdir(temp)
        return temp

    def commit(self) -> None:
        for path, temp in self._temps.items():
            if os.path.isdir(temp):
                os.makedirs(path, exist_ok=True)
                for name in os.listdir(temp):
                    os.replace(os.path.join(temp, name), os.path.join(path, name))
                os.rmdir(temp)
            elif os.path.exists(temp):
                os.replace(temp, path)
        self._temps.clear()

    def discard(self) -> None:
        for temp in self._temps.values():
            if os.path.isdir(temp):
                shutil.rmtree(temp, ignore_errors=True)
            elif os.path.exists(temp):
                os.unlink(temp)
        self._temps.clear()


# -- inputs -------------------------------------------------------------------------

HOST_EXTRA = 'pip install "edgetrain[host]"'
PROVIDER_EXTRA = 'pip install "edgetrain[provider]"'


def host(module: str, what: str, extra: str = HOST_EXTRA):
    """``edgetrain.{module}`` from the host package; on an install without its
    packages (torch, onnxruntime, ...) an ImportError in one line naming ``extra``."""
    try:
        return importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] == __package__:
            raise  # our own module is missing: a broken install, not a device
        raise ImportError(f"{what} needs {e.name}, which is not installed: {extra}") from None


def input_file(path, flag: str) -> str:
    """``path`` after checking that it names an existing file (not a folder)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{flag} {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; expected a file")
    return path


def read_bytes(path, flag: str) -> bytes:
    """The bytes of an input file; a ValueError naming ``flag`` when there are none."""
    path = input_file(path, flag)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{flag} {path!r} cannot be read ({e.strerror})") from None


def data(spec: str, flag: str, model=None, *, labels: bool = False, split: str = "train"):
    """``(x, y)`` from a built-in set's ``split`` (host side) or an ``.npz`` file,
    checked (:func:`edgetrain.datasets.load_npz`) and, given the ``model``, checked
    against it: the shape of a sample, and labels below its number of classes."""
    if spec in datasets.BUILTIN:
        s = host("export.datasets", f"the built-in data set {spec!r}").load(spec)
        x, y = (s.x_train, s.y_train) if split == "train" else (s.x_test, s.y_test)
    else:
        x, y = datasets.load_npz(spec, flag, labels=labels)
    if model is not None:
        _fits(model, x, y, f"{flag} {spec!r}")
    return x, y


def _fits(model, x, y, where):
    name, shape, _ = model.inputs[0]
    wanted = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
    if x.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape[1:], x.shape[1:])):
        raise ValueError(f"{where}: x has shape {x.shape}; the model's input {name!r} takes {wanted}")
    if y is not None:
        classes = model.run(x[:1]).shape[-1]
        if y.max() >= classes:
            raise ValueError(f"{where}: y holds labels up to {int(y.max())}; the model has {classes} classes "
                             f"(labels 0 to {classes - 1})")


# -- printing -----------------------------------------------------------------------

def plain(value):
    """``value`` with numpy scalars and arrays, bytes, tuples and paths turned into
    JSON's types, and every non-finite float into None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def to_json(result: dict) -> str:
    """One line of strict JSON (``allow_nan=False``: a NaN can only be a bug here)."""
    return json.dumps(plain(result), allow_nan=False)


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return str(v)


def _is_table(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def render(result: dict) -> str:
    """A result as text: ``key  value`` lines aligned, nested dicts as dotted keys,
    lists of records (a training history) as a table after them."""
    lines, tables = [], []

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            elif _is_table(v):
                tables.append((f"{prefix}{k}", v))
            else:
                lines.append((f"{prefix}{k}", _cell(v)))

    walk(plain({k: v for k, v in result.items() if k != "ok"}))
    width = max((len(k) for k, _ in lines), default=0)
    out = [f"{k:<{width}}  {v}" for k, v in lines]
    for title, rows in tables:
        columns = list(dict.fromkeys(c for r in rows for c in r))
        cells = [[_cell(r.get(c)) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        out += ["", f"{title}:", "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
        out += ["  ".join(f"{v:>{w}}" for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)
