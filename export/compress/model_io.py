"""What the compressors read and write: the layers of an ONNX model they may compress, the
compressed file (decode subgraphs from :mod:`edgetrain.decode` in place of weights) and its
bytes, every one counted."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...decode import Builder

WEIGHTED = {"Conv": 1, "Gemm": 1, "MatMul": 1, "QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3}


@dataclass(frozen=True)
class Layer:
    """A parametrised node whose weight is an initializer. ``rows_first``: the weight is stored
    (outputs, inputs…); otherwise (inputs, outputs) — MatMul's B, Gemm's B without transB."""
    node: str
    op: str
    weight: str
    bias: str | None
    shape: tuple[int, ...]
    rows_first: bool

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as (outputs, inputs): a Conv's as (M, C·KH·KW), in its own flat order."""
        return w.reshape(w.shape[0], -1) if self.rows_first else w.T

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        return m.reshape(self.shape) if self.rows_first else m.T


def layers(proto: onnx.ModelProto) -> list[Layer]:
    """Conv / Gemm / MatMul nodes (and their int8 forms) with an initializer weight, in graph order."""
    inits = {t.name: t for t in proto.graph.initializer}
    out = []
    for i, n in enumerate(proto.graph.node):
        pos = WEIGHTED.get(n.op_type)
        if pos is None or len(n.input) <= pos or n.input[pos] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        bias_pos = {"Conv": 2, "Gemm": 2, "QLinearConv": 8, "QGemm": 6}.get(n.op_type)
        bias = n.input[bias_pos] if bias_pos is not None and len(n.input) > bias_pos and n.input[bias_pos] else None
        rows_first = n.op_type in ("Conv", "QLinearConv") or bool(attrs.get("transB", 0))
        out.append(Layer(n.name or f"{n.op_type}_{i}", n.op_type, n.input[pos], bias,
                         tuple(inits[n.input[pos]].dims), rows_first))
    return out


def write(proto: onnx.ModelProto, builder: Builder, out_path) -> None:
    """``proto`` with every initializer the builder rebuilds replaced by its decode subgraph
    (placed first), written atomically to ``out_path``; onnx's checker must accept it."""
    rebuilt = {n.output[0] for n in builder.nodes}
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    kept = [t for t in model.graph.initializer if t.name not in rebuilt]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + list(builder.initializers.values()))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(builder.nodes + nodes)
    onnx.checker.check_model(model, full_check=True)
    atomic_write(out_path, model.SerializeToString())


def atomic_write(path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file beside it, fsynced and renamed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def stored_bytes(path) -> int:
    """Bytes of every initializer the file stores (weights, biases, codes, codebooks,
    projections, scales, zero-points and the decode subgraphs' constants)."""
    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(path).graph.initializer)


def sizes(original, compressed) -> dict:
    """Stored bytes and file bytes of both files, and the ratios ``original / compressed``."""
    w0, w1 = stored_bytes(original), stored_bytes(compressed)
    f0, f1 = os.path.getsize(original), os.path.getsize(compressed)
    return {"stored_bytes": w1, "original_stored_bytes": w0, "weight_ratio": w0 / w1,
            "file_bytes": f1, "original_file_bytes": f0, "file_ratio": f0 / f1}
