"""An fp32 ONNX graph run by torch, so that the compressors can fine-tune and search on the
model they were given, whatever built it (no torch module needed).

``TorchGraph(proto)`` holds every float initializer as a parameter and evaluates the nodes
with ``torch.nn.functional``; ``forward(x, weights)`` takes replacements for any initializer
(a compressed layer's weight, rebuilt from its codebook, is one), and ``capture`` returns the
inputs of chosen nodes (the calibration activations GPTQ needs). Ops: those of the zoo's
exports (Conv, Gemm, MatMul, Relu, Clip, MaxPool, AveragePool, GlobalAveragePool, Flatten,
Reshape, Add, BatchNormalization, Softmax). tests/test_compress.py holds it to onnxruntime.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn import functional as F


def _pads(attrs, kernel):
    pads = attrs.get("pads", [0] * 2 * len(kernel))
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or pads[:2] != pads[2:]:
        raise ValueError("only symmetric explicit pads are supported here")
    return list(pads[:2])


def _conv(attrs, x, w, b=None):
    return F.conv2d(x, w, b, stride=attrs.get("strides", [1, 1]), padding=_pads(attrs, w.shape[2:]),
                    dilation=attrs.get("dilations", [1, 1]), groups=attrs.get("group", 1))


def _gemm(attrs, a, b, c=None):
    a = a.T if attrs.get("transA", 0) else a
    b = b.T if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    return y if c is None else y + attrs.get("beta", 1.0) * c


def _pool(kind):
    def run(attrs, x):
        kernel = attrs["kernel_shape"]
        opts = dict(stride=attrs.get("strides", kernel), padding=_pads(attrs, kernel),
                    ceil_mode=bool(attrs.get("ceil_mode", 0)))
        if kind == "max":
            return F.max_pool2d(x, kernel, dilation=attrs.get("dilations", [1, 1]), **opts)
        return F.avg_pool2d(x, kernel, count_include_pad=bool(attrs.get("count_include_pad", 0)), **opts)
    return run


def _reshape(attrs, x, shape):
    shape = [int(s) for s in shape]
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _batchnorm(attrs, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


OPS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": lambda attrs, a, b: a @ b,
    "Relu": lambda attrs, x: F.relu(x),
    "Clip": lambda attrs, x, lo=None, hi=None: torch.clamp(x, None if lo is None else float(lo),
                                                          None if hi is None else float(hi)),
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda attrs, x: x.mean(dim=(2, 3), keepdim=True),
    "Flatten": lambda attrs, x: x.flatten(attrs.get("axis", 1)) if attrs.get("axis", 1) else x.reshape(1, -1),
    "Reshape": _reshape, "Add": lambda attrs, a, b: a + b, "BatchNormalization": _batchnorm,
    "Softmax": lambda attrs, x: F.softmax(x, dim=attrs.get("axis", -1)),
}


class TorchGraph(nn.Module):
    """The fp32 ONNX model ``proto`` as a torch module; float initializers are parameters
    (``self.tensors[name]``), the rest (shapes) plain constants."""

    def __init__(self, proto: onnx.ModelProto):
        super().__init__()
        graph = proto.graph
        arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant":
                arrays[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        unknown = sorted({n.op_type for n in graph.node if n.op_type not in OPS and n.op_type != "Constant"})
        if unknown:
            raise ValueError(f"the compressors run fp32 graphs of {sorted(OPS)}; this one holds {unknown}")
        self.names = [k for k, v in arrays.items() if v.dtype == np.float32]
        self.params = nn.ParameterList([nn.Parameter(torch.from_numpy(arrays[k].copy())) for k in self.names])
        self.tensors = dict(zip(self.names, self.params))
        self.consts = {k: v for k, v in arrays.items() if v.dtype != np.float32}
        self.nodes = [(n.name or f"{n.op_type}_{i}", n.op_type, list(n.input), n.output[0],
                       {a.name: helper.get_attribute_value(a) for a in n.attribute})
                      for i, n in enumerate(graph.node) if n.op_type != "Constant"]
        self.input = next(i.name for i in graph.input if i.name not in arrays)
        self.output = graph.output[0].name

    def forward(self, x: torch.Tensor, weights: dict | None = None, capture=()) -> torch.Tensor:
        """The first output on ``x``; ``weights`` replace initializers by name. With ``capture``
        (node names) returns ``(output, {node name: its first input})`` instead."""
        env = {**self.tensors, **(weights or {}), self.input: x}
        seen = {}
        for name, op, inputs, output, attrs in self.nodes:
            args = [None if not i else env[i] if i in env else self.consts[i] for i in inputs]
            if name in capture:
                seen[name] = args[0]
            env[output] = OPS[op](attrs, *args)
        return (env[self.output], seen) if capture else env[self.output]
