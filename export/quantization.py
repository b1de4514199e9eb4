"""Static int8 post-training quantisation with onnxruntime's quantiser.

Weights: symmetric int8 (zero-point 0), per output channel by default.
Activations: asymmetric int8, per tensor, ranges from a calibration set.
Bias: int32 at scale ``s_x·s_w``. Output in QOperator form by default.
"""
import collections
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                      QuantFormat, QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
FORMATS = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
CALIB_BATCH = 64


class _ArrayReader(CalibrationDataReader):
    """Feeds ``x`` to the input ``name`` in batches of ``CALIB_BATCH``."""

    def __init__(self, name: str, x: np.ndarray):
        self._batches = iter(np.array_split(x, -(-len(x) // CALIB_BATCH)))
        self._name = name

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def quantize(model_path, out_path, calib, *, method="minmax", per_channel=True,
             fmt="qoperator", percentile=99.999) -> dict:
    """Quantise the fp32 ONNX model at ``model_path`` to int8 at ``out_path``.

    ``calib`` is a float array whose shape matches the model's single input
    (any batch size ≥ 1). ``method`` is "minmax" or "percentile" (activation
    range clipped at ``percentile``, in (0, 100]); ``fmt`` is "qoperator"
    (QuantizeLinear, QLinear*/QGemm ops, DequantizeLinear) or "qdq".

    Returns {"path", "format", "method", "percentile" (None for minmax),
    "per_channel", "n_samples", "ops" (op type → count)}.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {sorted(METHODS)}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} must be one of {sorted(FORMATS)}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be in (0, 100]")
    model_path, out_path = Path(model_path), Path(out_path)
    name, expected = _input_signature(fp32_model(model_path))
    calib = _check_calib(calib, expected, name)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    with tempfile.TemporaryDirectory(prefix="edgetrain-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # the quantiser prints calibration chatter; keep stdout for results
        with contextlib.redirect_stdout(sys.stderr), _without_qoperator_warning():
            quant_pre_process(str(model_path), str(prepared))
            quantize_static(
                str(prepared), str(out_path), _ArrayReader(name, calib),
                quant_format=FORMATS[fmt], per_channel=per_channel, reduce_range=False,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=METHODS[method], extra_options=extra)

    # validation: onnxruntime must accept and run what it wrote
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    session.run(None, {name: calib[:1]})
    model = onnx.load(out_path)
    return {
        "path": str(out_path),
        "format": fmt,
        "method": method,
        "percentile": float(percentile) if method == "percentile" else None,
        "per_channel": per_channel,
        "n_samples": len(calib),
        "ops": dict(collections.Counter(n.op_type for n in model.graph.node)),
    }


@contextlib.contextmanager
def _without_qoperator_warning():
    """onnxruntime's quantiser warns on the root logger that int8 QOperator models run slowly
    on its own x64 kernels; QOperator is our deliberate default (the README says why), so
    that one warning is noise here."""
    def keep(record):
        return "Please use QuantFormat.QDQ" not in record.getMessage()
    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def fp32_model(path, tool: str = "quantize") -> onnx.ModelProto:
    """The ONNX model at ``path``, checked to be one ``tool`` (this quantiser, or compress)
    takes: a readable ONNX graph that holds no quantised op or int8 tensor yet."""
    path = Path(path)
    where = f"model {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} {'is a directory' if path.is_dir() else 'does not exist'}; expected an ONNX file")
    try:
        model = onnx.load(path)
    except Exception:  # protobuf raises several types for bytes that are not a model
        raise ValueError(f"{where} is not an ONNX model (its bytes do not parse as one)") from None
    if not model.graph.node:
        raise ValueError(f"{where} is not an ONNX model with a graph (no nodes)")
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    quantised = sorted({n.op_type for n in model.graph.node
                        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "QGemm", "DynamicQuantizeLinear")
                        or n.op_type.startswith(("QLinear", "MatMulInteger", "ConvInteger"))})
    if quantised or any(t.data_type in int8 for t in model.graph.initializer):
        found = ", ".join(quantised) or "int8 initializers"
        raise ValueError(f"{where} is already quantised ({found}); {tool} takes an fp32 model")
    return model


def _input_signature(model):
    """The single graph input's name and shape (None for symbolic dims)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"the model has {len(inputs)} inputs "
                         f"{[i.name for i in inputs]}; quantize needs exactly one")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def _check_calib(calib, expected, name) -> np.ndarray:
    """``calib`` as float32, checked against the input shape ``expected``."""
    calib = np.asarray(calib)
    shown = "(" + ", ".join("N" if d is None else str(d) for d in expected) + ")"
    if calib.size == 0:
        raise ValueError(f"calib is empty (shape {calib.shape}); expected {shown} "
                         f"samples for input {name!r}")
    if calib.ndim != len(expected) or any(
            d is not None and d != c for d, c in zip(expected[1:], calib.shape[1:])):
        raise ValueError(f"calib has shape {calib.shape}; input {name!r} of the model "
                         f"expects {shown}")
    if not np.issubdtype(calib.dtype, np.floating) or not np.isfinite(calib).all():
        raise ValueError(f"calib must hold finite floats, got dtype {calib.dtype}")
    return np.ascontiguousarray(calib, dtype=np.float32)
