"""edgetrain: an edge / on-device training runtime.

The device side (this package's core) needs numpy and onnx only:
``edgetrain.load(path)`` gives a :class:`Model` that runs fp32 or integer-only
int8 ONNX graphs. Host tools live in ``edgetrain.export`` (torch, onnxruntime).
"""
from .kernels import supported_ops
from .model import Model, ModelFormatError, load

__all__ = ["load", "Model", "ModelFormatError", "supported_ops"]
__version__ = "0.1.0"
