"""Shared fixtures: the MNIST split, the pinned test models (tests/data, see make_models.py) and a
key cache of the session's own."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetrain.export import datasets

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session", autouse=True)
def key_cache(tmp_path_factory):
    """The provider's reference string and verifying keys live in ``$EDGETRAIN_CACHE``: one
    folder for the session (subprocesses inherit it), never the user's cache."""
    folder = tmp_path_factory.mktemp("edgetrain-cache")
    previous = os.environ.get("EDGETRAIN_CACHE")
    os.environ["EDGETRAIN_CACHE"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["EDGETRAIN_CACHE"]
    else:
        os.environ["EDGETRAIN_CACHE"] = previous


@pytest.fixture(scope="session")
def srs(key_cache):
    """The provider's reference string for the session's proofs (circuits of up to 2^13 rows),
    kept in the session's key cache as ``edgetrain setup`` keeps it, where ``edgetrain verify``
    looks for it."""
    from edgetrain import prover
    return prover.srs(key_cache, k_max=SRS_K)


SRS_K = 13


@pytest.fixture(scope="session")
def mnist():
    return datasets.load("mnist")


@pytest.fixture(scope="session")
def pinned(tmp_path_factory):
    """``pinned(stem)`` → a private copy of ``tests/data/{stem}.onnx`` (tests may write beside it)."""
    folder = tmp_path_factory.mktemp("pinned")

    def copy(stem):
        path = folder / f"{stem}.onnx"
        if not path.exists():
            shutil.copyfile(DATA / f"{stem}.onnx", path)
        return path
    return copy


@pytest.fixture(scope="session")
def trained_onnx(pinned):
    """``trained_onnx(name)`` → fp32 ONNX of zoo model ``name`` (mlp, lenet5, rescnn) after 3 epochs
    on MNIST (lenet5: 93 % test accuracy), or ``mlp16`` (784 → 16 → 10, 1 epoch). Pinned files,
    the same on every machine."""
    return pinned


@pytest.fixture(scope="session")
def int8_onnx(pinned):
    """``int8_onnx(name="lenet5", fmt="qoperator", per_channel=True)`` → the pinned int8 model that
    ``edgetrain.export.quantize`` made of ``trained_onnx(name)`` (256 calibration images).
    Pinned: lenet5 in QOperator per channel and per tensor and in QDQ per channel; rescnn in
    QOperator per channel."""
    def path(name="lenet5", fmt="qoperator", per_channel=True):
        stem = f"{name}.int8" + ("" if fmt == "qoperator" else f".{fmt}") + ("" if per_channel else ".per-tensor")
        if not (DATA / f"{stem}.onnx").exists():
            raise LookupError(f"no pinned int8 model {stem}.onnx; add it to tests/data/make_models.py")
        return pinned(stem)
    return path


def strict_json(line: str):
    """json.loads that refuses NaN, Infinity and -Infinity (Python's json accepts them; JSON does not)."""
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def run_json(capsys, *argv):
    """``edgetrain ARGV --json`` in this process: (exit code, the strict-JSON result). An error
    (exit 2) must also be one line on stderr naming the command."""
    from edgetrain.cli import main
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    result = strict_json(captured.out.strip().splitlines()[-1])
    if code == 2:
        assert captured.err.startswith(f"edgetrain {argv[0]}: error: ") and captured.err.count("\n") == 1
        assert captured.err.strip().endswith(result["error"])
    return code, result


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


class IntegerOnly(np.ndarray):
    """An int array whose descendants (views, ufunc results, astype, matmul…) must not be float."""

    def __array_finalize__(self, obj):
        if self.dtype.kind in "fc":
            raise AssertionError(f"a float array ({self.dtype}, shape {self.shape}) was created")


_CONSTRUCTORS = ("zeros", "empty", "ones", "full", "array", "asarray", "arange", "zeros_like", "empty_like",
                 "ones_like", "full_like", "concatenate", "pad", "where")


@pytest.fixture
def forbid_float_arrays(monkeypatch):
    """``forbid(*more)``: numpy's array constructors (and ``more`` numpy functions) raise
    when they return a float array, until ``monkeypatch.undo()`` or the test ends."""
    def forbid(*more):
        for fn in _CONSTRUCTORS + more:
            original = getattr(np, fn)

            def checked(*args, _original=original, _fn=fn, **kwargs):
                out = _original(*args, **kwargs)
                if isinstance(out, np.ndarray) and out.dtype.kind in "fc":
                    raise AssertionError(f"np.{_fn} created a float array ({out.dtype})")
                return out
            monkeypatch.setattr(np, fn, checked)
    return forbid
