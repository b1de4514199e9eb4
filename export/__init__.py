"""Host-side tools: torch → ONNX export, int8 post-training quantisation."""
from .onnx_export import ExportMismatchError, export_onnx
from .quantize import quantize
from .zoo import ZOO, build

__all__ = ["ExportMismatchError", "export_onnx", "quantize", "build", "ZOO"]
