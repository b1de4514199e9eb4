"""Host-side tools: torch → ONNX export, int8 post-training quantisation, the built-in
data sets, plots and the demo.

Each name loads its module on first use (PEP 562), so a tool needs only its own
packages: ``quantize`` runs with onnxruntime alone (the provider install),
``export_onnx`` and ``build`` need torch.
"""
import importlib

_MODULES = {"export_onnx": "onnx_export", "ExportMismatchError": "onnx_export", "quantize": "quantization",
            "build": "zoo", "ZOO": "zoo"}

__all__ = ["ExportMismatchError", "export_onnx", "quantize", "build", "ZOO"]


def __getattr__(name):
    if name in _MODULES:
        return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MODULES])
