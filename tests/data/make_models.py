"""Regenerate the pinned test models in this folder (run by hand, on the host install).

Why pinned: training in torch and calibrating in onnxruntime are float
computations whose summation order depends on the CPU (AVX-512 or AVX2 kernels,
the OpenBLAS core type). A model trained during the test run would differ from
one machine to the next, and every quality figure downstream with it. These
files fix the weights once; everything the tests compute from them on our
integer path is then exact on any CPU, and the float paths differ by rounding
only.

    python tests/data/make_models.py      # rewrites *.onnx here, prints their sha256

The recipe is the one the test fixtures used before they were pinned: zoo
model with seed 0, 3 epochs of Adam (lr 2e-3) on the MNIST set's 4,000 training
images, exported at opset 17; int8 files by ``edgetrain.export.quantize`` with
the first 256 training images as calibration set.
"""
import hashlib
from pathlib import Path

import torch

from edgetrain.export import datasets
from edgetrain.export import build, export_onnx, quantize
from edgetrain.export.train_torch import train

HERE = Path(__file__).resolve().parent
FP32 = ("mlp", "lenet5", "rescnn")
# file stem → (fp32 model, quantize keyword arguments)
INT8 = {
    "lenet5.int8": ("lenet5", {}),                                    # QOperator, per channel
    "lenet5.int8.per-tensor": ("lenet5", {"per_channel": False}),
    "lenet5.int8.qdq": ("lenet5", {"fmt": "qdq"}),
    "rescnn.int8": ("rescnn", {}),
}


def small_mlp() -> torch.nn.Module:
    """784 → 16 → 10: a last layer of 160 weights keeps real proofs fast."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 10))


def main():
    torch.set_num_threads(2)
    data = datasets.load("mnist")
    modules = {name: build(name, seed=0) for name in FP32}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        modules["mlp16"] = small_mlp()
    for name, module in modules.items():
        epochs, lr = (1, 3e-3) if name == "mlp16" else (3, 2e-3)
        train(module, data.x_train, data.y_train, epochs=epochs, lr=lr, seed=0, progress=False)
        export_onnx(module, HERE / f"{name}.onnx", real_inputs=data.x_test[:64])
    for stem, (source, kwargs) in INT8.items():
        quantize(HERE / f"{source}.onnx", HERE / f"{stem}.onnx", data.x_train[:256], **kwargs)
    for path in sorted(HERE.glob("*.onnx")):
        print(hashlib.sha256(path.read_bytes()).hexdigest(), path.name)


if __name__ == "__main__":
    main()
