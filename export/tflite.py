"""An int8 ONNX model (QOperator form, as ``edgetrain quantize`` writes it) as a TFLite
flatbuffer, for devices that run TFLite / LiteRT.

The file is written with ``flatbuffers`` against TFLite's schema (``schema.fbs``:
the field slots below are its field order). Each ONNX node maps to TFLite ops with
the same integer semantics: int8 tensors keep their scale and zero point, weights
stay symmetric int8 with one scale per output channel, biases int32 at
``s_x·s_w``, so TFLite requantises with the same fixed-point multipliers as
edgetrain's runtime. Layout: TFLite is NHWC; the model keeps ONNX's NCHW float
input and output, with a TRANSPOSE after the input QUANTIZE and before a Flatten,
so it takes the same arrays as the ONNX file. Batch 1 is written (resize the input
for more). Anything this writer cannot express is one error listing every such
node.

Mapped: QuantizeLinear → QUANTIZE; QLinearConv (group 1) → CONV_2D; MaxPool on int8
→ MAX_POOL_2D; Flatten / Reshape to 2-D → TRANSPOSE + RESHAPE; QGemm and
QLinearMatMul → FULLY_CONNECTED; DequantizeLinear → DEQUANTIZE.
"""
from __future__ import annotations

import flatbuffers
import numpy as np
import onnx
from onnx import numpy_helper

# BuiltinOperator, BuiltinOptions, TensorType and Padding codes of TFLite's schema
OPS = {"QUANTIZE": 114, "DEQUANTIZE": 6, "CONV_2D": 3, "MAX_POOL_2D": 17, "FULLY_CONNECTED": 9, "RESHAPE": 22,
       "TRANSPOSE": 39}
OPTIONS = {"CONV_2D": 1, "MAX_POOL_2D": 5, "FULLY_CONNECTED": 8, "RESHAPE": 17, "TRANSPOSE": 26,
           "QUANTIZE": 89, "DEQUANTIZE": 38}
FLOAT32, INT32, INT8 = 0, 2, 9
SAME, VALID = 0, 1
MAPPED = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "MaxPool", "Flatten", "Reshape", "QGemm",
          "QLinearMatMul")


class TFLiteExportError(ValueError):
    """The model holds what this writer cannot express in TFLite; the message lists it."""


class _Graph:
    """The TFLite subgraph being built: tensors, buffers and operators, as plain lists."""

    def __init__(self):
        self.tensors, self.buffers, self.ops = [], [b""], []

    def tensor(self, name, shape, dtype, scale=None, zero_point=None, axis=0, data=None) -> int:
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buffer = len(self.buffers) - 1
        quant = None if scale is None else (np.atleast_1d(np.asarray(scale, np.float32)),
                                            np.atleast_1d(np.asarray(zero_point, np.int64)), axis)
        self.tensors.append((name, [int(d) for d in shape], dtype, buffer, quant))
        return len(self.tensors) - 1

    def like(self, name, shape, of: int) -> int:
        """A new activation tensor with the quantisation of tensor ``of``."""
        _, _, dtype, _, quant = self.tensors[of]
        return self.tensor(name, shape, dtype, *(quant[:2] if quant else (None, None)))

    def op(self, kind, inputs, outputs, **options):
        self.ops.append((kind, list(inputs), list(outputs), options))


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _padding(pads, kernel, strides, size) -> int | None:
    """SAME or VALID when ONNX's explicit ``pads`` equal one of them, else None."""
    if not any(pads):
        return VALID
    for axis, (k, s, n) in enumerate(zip(kernel, strides, size)):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        if (pads[axis], pads[axis + len(kernel)]) != (total // 2, total - total // 2):
            return None
    return SAME


def convert(model: onnx.ModelProto) -> _Graph:
    """The TFLite graph of ``model``; TFLiteExportError listing every node it cannot map."""
    graph = model.graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    bad = [f"{n.op_type} ({n.name or n.output[0]!r})" for n in graph.node if n.op_type not in MAPPED]
    if bad:
        quantised = any(n.op_type.startswith(("QLinear", "QGemm")) for n in graph.node)
        qdq = any(n.op_type == "DequantizeLinear" and n.input[0] in init for n in graph.node)
        hint = ("" if quantised else "; it is in QDQ form: quantise it in the QOperator form (`edgetrain quantize` "
                "without --format qdq)" if qdq else "; quantise it first (`edgetrain quantize`, QOperator form)")
        raise TFLiteExportError(f"TFLite export maps {', '.join(MAPPED)}; the model also holds {', '.join(bad)}"
                                + hint)
    g = _Graph()
    where: dict[str, tuple[int, list[int], bool]] = {}  # ONNX value → (tensor, shape as stored, stored NHWC)
    inputs, problems = [], []
    for value in graph.input:
        if value.name in init:
            continue
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]  # batch 1
        where[value.name] = (g.tensor(value.name, dims, FLOAT32), dims, False)
        inputs.append(where[value.name][0])
    for node in graph.node:
        a, ins, out = _attrs(node), list(node.input), node.output[0]
        try:
            src, shape, nhwc = where[ins[0]]
        except KeyError:
            problems.append(f"{node.op_type} ({out!r}) reads {ins[0]!r}, which is no activation here")
            continue
        label = f"{node.op_type} ({node.name or out!r})"
        if node.op_type == "QuantizeLinear":
            t = g.tensor(out, shape, INT8, init[ins[1]], init[ins[2]])
            g.op("QUANTIZE", [src], [t])
            if len(shape) == 4:  # NCHW → NHWC for the convolutions
                nhwc_shape = [shape[0], shape[2], shape[3], shape[1]]
                moved = g.like(f"{out}/nhwc", nhwc_shape, t)
                g.op("TRANSPOSE", [t, _perm(g, out, [0, 2, 3, 1])], [moved])
                t, shape, nhwc = moved, nhwc_shape, True
            where[out] = (t, shape, nhwc)
        elif node.op_type == "DequantizeLinear":
            if nhwc:
                src, shape = _to_nchw(g, src, shape, ins[0])
            t = g.tensor(out, shape, FLOAT32)
            g.op("DEQUANTIZE", [src], [t])
            where[out] = (t, shape, False)
        elif node.op_type == "QLinearConv":
            w, ws, wz = init[ins[3]], np.atleast_1d(init[ins[4]]), init[ins[5]]
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])) or np.any(wz != 0):
                problems.append(f"{label}: only group 1, dilation 1 and symmetric weights map to CONV_2D")
                continue
            k, strides = list(w.shape[2:]), a.get("strides", [1, 1])
            pad = _padding(a.get("pads", [0] * 4), k, strides, shape[1:3])
            if pad is None:
                problems.append(f"{label}: pads {a['pads']} are neither SAME nor VALID")
                continue
            size = [(n + sum(a.get("pads", [0] * 4)[i::2]) - kk) // s + 1 for i, (n, kk, s) in
                    enumerate(zip(shape[1:3], k, strides))]
            xs = float(init[ins[1]])
            filt = g.tensor(ins[3], [w.shape[0], *k, w.shape[1]], INT8, ws, np.zeros_like(ws, np.int64), 0,
                            w.transpose(0, 2, 3, 1))
            bias = g.tensor(ins[8], [w.shape[0]], INT32, (xs * ws.astype(np.float64)).astype(np.float32),
                            np.zeros(ws.size, np.int64), 0, init[ins[8]].astype(np.int32)) if len(ins) > 8 else -1
            t = g.tensor(out, [shape[0], *size, w.shape[0]], INT8, init[ins[6]], init[ins[7]])
            g.op("CONV_2D", [src, filt, bias], [t], padding=pad, stride_w=strides[1], stride_h=strides[0])
            where[out] = (t, [shape[0], *size, w.shape[0]], True)
        elif node.op_type == "MaxPool":
            k, strides = a["kernel_shape"], a.get("strides", [1, 1])
            pad = _padding(a.get("pads", [0] * 4), k, strides, shape[1:3])
            if not nhwc or a.get("ceil_mode", 0) or pad is None or any(d != 1 for d in a.get("dilations", [1, 1])):
                problems.append(f"{label}: only an int8 NHWC max pool with SAME/VALID pads and no ceil mode maps")
                continue
            size = [(n + sum(a.get("pads", [0] * 4)[i::2]) - kk) // s + 1 for i, (n, kk, s) in
                    enumerate(zip(shape[1:3], k, strides))]
            t = g.like(out, [shape[0], *size, shape[3]], src)
            g.op("MAX_POOL_2D", [src], [t], padding=pad, stride_w=strides[1], stride_h=strides[0],
                 filter_width=k[1], filter_height=k[0])
            where[out] = (t, [shape[0], *size, shape[3]], True)
        elif node.op_type in ("Flatten", "Reshape"):
            if nhwc:
                src, shape = _to_nchw(g, src, shape, ins[0])
            flat = [shape[0], int(np.prod(shape[1:]))]
            if node.op_type == "Reshape" and list(init.get(ins[1], [])) not in ([shape[0], flat[1]], [-1, flat[1]],
                                                                              [0, -1], [-1]):
                problems.append(f"{label}: only a reshape to (batch, features) maps")
                continue
            t = g.like(out, flat, src)
            g.op("RESHAPE", [src, g.tensor(f"{out}/shape", [2], INT32, data=np.array([-1, flat[1]], np.int32))],
                 [t], new_shape=[-1, flat[1]])
            where[out] = (t, flat, False)
        elif node.op_type in ("QGemm", "QLinearMatMul"):
            if node.op_type == "QGemm":
                w, ws, wz = init[ins[3]], np.atleast_1d(init[ins[4]]), init[ins[5]]
                if not a.get("transB", 0):
                    w = w.T
                b = init[ins[6]] if len(ins) > 6 and ins[6] else None
                ys, yz = (init[ins[7]], init[ins[8]]) if len(ins) > 8 else (None, None)
                ok = a.get("alpha", 1.0) == 1.0 and not a.get("transA", 0) and ys is not None
            else:
                w, ws, wz = init[ins[3]].T, np.atleast_1d(init[ins[4]]), init[ins[5]]
                b, ys, yz, ok = None, init[ins[6]], init[ins[7]], True
            if not ok or np.any(wz != 0) or len(shape) != 2:
                problems.append(f"{label}: only (batch, features) × symmetric int8 weights, alpha 1, an int8 "
                                "output map to FULLY_CONNECTED")
                continue
            xs = float(init[ins[1]])
            filt = g.tensor(ins[3], w.shape, INT8, ws, np.zeros(ws.size, np.int64), 0, w)
            bias = -1 if b is None else g.tensor(ins[6], [w.shape[0]], INT32,
                                                 (xs * ws.astype(np.float64)).astype(np.float32),
                                                 np.zeros(ws.size, np.int64), 0, b.astype(np.int32))
            t = g.tensor(out, [shape[0], w.shape[0]], INT8, ys, yz)
            g.op("FULLY_CONNECTED", [src, filt, bias], [t])
            where[out] = (t, [shape[0], w.shape[0]], False)
    if problems:
        raise TFLiteExportError("TFLite export cannot express: " + "; ".join(problems))
    g.inputs = inputs
    g.outputs = [where[o.name][0] for o in graph.output]
    return g


def _perm(g: _Graph, name: str, perm: list[int]) -> int:
    return g.tensor(f"{name}/perm", [len(perm)], INT32, data=np.array(perm, np.int32))


def _to_nchw(g: _Graph, src: int, shape: list[int], name: str) -> tuple[int, list[int]]:
    nchw = [shape[0], shape[3], shape[1], shape[2]]
    t = g.like(f"{name}/nchw", nchw, src)
    g.op("TRANSPOSE", [src, _perm(g, name, [0, 3, 1, 2])], [t])
    return t, nchw


# -- the flatbuffer ------------------------------------------------------------------------

def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _table(b: flatbuffers.Builder, fields: list[tuple[int, str, object]]) -> int:
    """A table from ``(slot, kind, value)``: kinds ``off`` (an offset made before),
    ``u8``, ``i8``, ``i32``, ``u32``, ``bool``; every value is written, defaults too."""
    b.StartObject(1 + max((s for s, _, _ in fields), default=-1))
    put = {"off": b.PrependUOffsetTRelativeSlot, "u8": b.PrependUint8Slot, "i8": b.PrependInt8Slot,
           "i32": b.PrependInt32Slot, "u32": b.PrependUint32Slot, "bool": b.PrependBoolSlot}
    for slot, kind, value in fields:
        put[kind](slot, value, None)  # default None: always written
    return b.EndObject()


def _bytes(b: flatbuffers.Builder, data: bytes) -> int:
    """A [ubyte] vector aligned to 16 bytes, as TFLite's converter writes buffers."""
    b.StartVector(1, len(data), 16)
    b.head -= len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _options(b, kind, o) -> int:
    if kind == "CONV_2D":
        return _table(b, [(0, "i8", o["padding"]), (1, "i32", o["stride_w"]), (2, "i32", o["stride_h"]),
                          (3, "i8", 0), (4, "i32", 1), (5, "i32", 1)])
    if kind == "MAX_POOL_2D":
        return _table(b, [(0, "i8", o["padding"]), (1, "i32", o["stride_w"]), (2, "i32", o["stride_h"]),
                          (3, "i32", o["filter_width"]), (4, "i32", o["filter_height"]), (5, "i8", 0)])
    if kind == "FULLY_CONNECTED":
        return _table(b, [(0, "i8", 0), (1, "i8", 0), (2, "bool", False)])
    if kind == "RESHAPE":
        return _table(b, [(0, "off", b.CreateNumpyVector(np.array(o["new_shape"], np.int32)))])
    return _table(b, [])


def serialise(g: _Graph, description: str) -> bytes:
    b = flatbuffers.Builder(1 << 16)
    kinds = list(dict.fromkeys(kind for kind, *_ in g.ops))
    codes = [_table(b, [(0, "i8", min(OPS[k], 127)), (2, "i32", 1), (3, "i32", OPS[k])]) for k in kinds]
    tensors = []
    for name, shape, dtype, buffer, quant in g.tensors:
        fields = [(0, "off", b.CreateNumpyVector(np.array(shape, np.int32))), (1, "i8", dtype), (2, "u32", buffer),
                  (3, "off", b.CreateString(name))]
        if quant is not None:
            scale, zp, axis = quant
            q = _table(b, [(2, "off", b.CreateNumpyVector(scale)), (3, "off", b.CreateNumpyVector(zp)),
                           (6, "i32", axis)])
            fields.append((4, "off", q))
        if shape and buffer == 0 and g.tensors.index((name, shape, dtype, buffer, quant)) in g.inputs:
            sig = [-1, *shape[1:]]
            fields.append((7, "off", b.CreateNumpyVector(np.array(sig, np.int32))))
        tensors.append(_table(b, fields))
    ops = []
    for kind, ins, outs, options in g.ops:
        opts = _options(b, kind, options)
        ops.append(_table(b, [(0, "u32", kinds.index(kind)), (1, "off", b.CreateNumpyVector(np.array(ins, np.int32))),
                              (2, "off", b.CreateNumpyVector(np.array(outs, np.int32))),
                              (3, "u8", OPTIONS[kind]), (4, "off", opts)]))
    subgraph = _table(b, [(0, "off", _vector(b, tensors)),
                          (1, "off", b.CreateNumpyVector(np.array(g.inputs, np.int32))),
                          (2, "off", b.CreateNumpyVector(np.array(g.outputs, np.int32))),
                          (3, "off", _vector(b, ops)), (4, "off", b.CreateString("main"))])
    buffers = [_table(b, [(0, "off", _bytes(b, data))] if data else []) for data in g.buffers]
    model = _table(b, [(0, "u32", 3), (1, "off", _vector(b, codes)), (2, "off", _vector(b, [subgraph])),
                       (3, "off", b.CreateString(description)), (4, "off", _vector(b, buffers))])
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def write(onnx_path: str, out_path: str) -> dict:
    """Write ``onnx_path`` (int8, QOperator) as a TFLite file at ``out_path``."""
    from .. import load  # load checks the file as every command does
    load(onnx_path)
    g = convert(onnx.load(onnx_path))
    data = serialise(g, f"edgetrain export-tflite of {onnx_path}")
    with open(out_path, "wb") as f:
        f.write(data)
    counts = {}
    for kind, *_ in g.ops:
        counts[kind] = counts.get(kind, 0) + 1
    return {"model": onnx_path, "bytes": len(data), "ops": counts, "tensors": len(g.tensors)}
