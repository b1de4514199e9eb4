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
