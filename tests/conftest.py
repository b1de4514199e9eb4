"""Shared fixtures: the MNIST split and a briefly trained, exported LeNet-5."""
import numpy as np
import pytest

from edgetrain import datasets


@pytest.fixture(scope="session")
def mnist():
    return datasets.load("mnist")


@pytest.fixture(scope="session")
def trained_onnx(mnist, tmp_path_factory):
    """Path factory: ``trained_onnx(name)`` → fp32 ONNX of that zoo model after 3 epochs (about 92 % test accuracy for lenet5) on MNIST."""
    torch = pytest.importorskip("torch")
    from edgetrain.export import build, export_onnx
    from edgetrain.export.train_torch import train
    cache = {}

    def make(name):
        if name not in cache:
            torch.set_num_threads(2)
            module = build(name, seed=0)
            train(module, mnist.x_train, mnist.y_train, epochs=3, lr=2e-3, seed=0, progress=False)
            path = tmp_path_factory.mktemp("models") / f"{name}.onnx"
            export_onnx(module, path, real_inputs=mnist.x_test[:64])
            cache[name] = path
        return cache[name]
    return make


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
