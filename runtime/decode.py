"""Decode subgraphs (DESIGN.md §5, "files that shrink for real"): the standard ONNX ops with
which a compressed file rebuilds its weights from compact initializers, evaluated here in
numpy, once, at load (:func:`edgetrain.graph_rewrite.fold_decoders`); and the two layouts
our compressors write, each with the subgraph that reads it back.

* **Bit planes.** ``n`` integers of ``b`` bits are stored as a ``(b, ⌈n/8⌉, 1)`` uint8
  array: plane ``p`` holds bit ``p`` of every value, eight values a byte, value ``i`` in
  bit ``i mod 8`` of byte ``i // 8``. Read back: two BitShifts isolate each bit, a Cast
  and a MatMul with the plane weights ``[1, 2, 4, …]`` add the planes up — with
  ``−2^(b−1)`` for the top plane the values come out in two's complement (signed).
* **Codebooks.** ``W = layout(C[codes] @ P)``: Gather of the ``k × d`` codebook ``C`` at
  the codes, MatMul with the ``d × m`` projection ``P``, Reshape (and Transpose) to the
  weight's shape. Codes of fewer than 8 bits are stored as bit planes.

The builders return ONNX nodes and initializers; short tensor names (a ``tag`` per weight)
keep a small model's file small. Constants several weights share are named by content.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# -- the ops, in numpy --------------------------------------------------------------------

OPS: dict[str, Callable] = {}

_CAST_TO = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
            TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
            TensorProto.UINT16: np.uint16, TensorProto.INT32: np.int32, TensorProto.UINT32: np.uint32,
            TensorProto.INT64: np.int64, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_}


def _op(name: str):
    def wrap(fn):
        OPS[name] = fn
        return fn
    return wrap


def evaluate(node, inputs: list[np.ndarray | None]) -> np.ndarray:
    """Node ``node`` (an :class:`edgetrain.kernels.Node`) on constant ``inputs`` as ONNX defines
    it; ValueError naming the node for what the op does not allow."""
    try:
        return OPS[node.op_type](node.attrs, *inputs)
    except (ValueError, IndexError, TypeError, KeyError) as e:
        raise ValueError(f"node {node.name!r} ({node.op_type}) of a decode subgraph: {e}") from None


@_op("Cast")
def _cast(attrs, x):
    to = attrs.get("to")
    if to not in _CAST_TO:
        raise ValueError(f"attribute 'to' is {to!r}; decode subgraphs cast to "
                         f"{sorted(TensorProto.DataType.Name(t) for t in _CAST_TO)}")
    return x.astype(_CAST_TO[to])


@_op("Gather")
def _gather(attrs, data, indices):
    axis = attrs.get("axis", 0)
    if not -data.ndim <= axis < data.ndim:
        raise ValueError(f"axis {axis} is not an axis of data with {data.ndim} dimension(s)")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices have element type {indices.dtype}, expected an integer type")
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ValueError(f"an index lies outside [-{size}, {size - 1}]")
    return np.take(data, np.where(indices < 0, indices + size, indices).astype(np.int64), axis=axis)


@_op("MatMul")
def _matmul(attrs, a, b):
    if a.dtype != b.dtype:
        raise ValueError(f"operands of types {a.dtype} and {b.dtype}")
    return np.matmul(a, b)


@_op("Reshape")
def _reshape(attrs, x, shape):
    shape = [int(s) for s in shape]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@_op("Transpose")
def _transpose(attrs, x):
    perm = attrs.get("perm", list(range(x.ndim))[::-1])
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"perm {perm} is not a permutation of {x.ndim} axes")
    return x.transpose(perm)


@_op("Slice")
def _slice(attrs, data, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else [int(a) + data.ndim if a < 0 else int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    if any(s != 1 for s in steps):
        raise ValueError(f"steps {steps}: decode subgraphs slice with step 1 only")
    index = [slice(None)] * data.ndim
    for axis, start, end in zip(axes, starts, ends):
        dim = data.shape[axis]  # ONNX clamps starts and ends into [0, dim] after wrapping negatives
        start, end = (int(np.clip(v + dim if v < 0 else v, 0, dim)) for v in (start, end))
        index[axis] = slice(start, end)
    return data[tuple(index)]


@_op("BitShift")
def _bit_shift(attrs, x, y):
    if x.dtype.kind != "u" or x.dtype != y.dtype:
        raise ValueError(f"operands of types {x.dtype} and {y.dtype}; BitShift takes one unsigned type")
    direction = attrs.get("direction")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("LEFT", "RIGHT"):
        raise ValueError(f"attribute 'direction' is {direction!r}, expected 'LEFT' or 'RIGHT'")
    return (np.left_shift if direction == "LEFT" else np.right_shift)(x, y).astype(x.dtype)


def _same_type(name, fn):
    def run(attrs, a, b):
        if a.dtype != b.dtype:
            raise ValueError(f"operands of types {a.dtype} and {b.dtype}; {name} takes one type")
        return fn(a, b).astype(a.dtype)
    return run


OPS["BitwiseAnd"] = _same_type("BitwiseAnd", np.bitwise_and)
OPS["Sub"] = _same_type("Sub", np.subtract)
OPS["Mul"] = _same_type("Mul", np.multiply)


@_op("CumSum")
def _cumsum(attrs, x, axis):
    axis = int(np.asarray(axis).reshape(-1)[0])
    if attrs.get("reverse", 0):
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if attrs.get("exclusive", 0):
        out = out - x
    return np.flip(out, axis) if attrs.get("reverse", 0) else out


# -- bit planes -----------------------------------------------------------------------------

def int_range(bits: int) -> tuple[int, int]:
    """The values a ``bits``-bit two's-complement integer holds."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def pack_planes(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (integers in ``[0, 2^bits)``, or in :func:`int_range` for signed ones) as bit
    planes: a ``(bits, ⌈n/8⌉, 1)`` uint8 array, zero-padded at the end."""
    v = np.asarray(values).reshape(-1).astype(np.int64)
    lo = int_range(bits)[0] if v.size and v.min() < 0 else 0
    if v.size and (v.min() < lo or v.max() >= lo + (1 << bits)):
        raise ValueError(f"values in [{v.min()}, {v.max()}] do not fit {bits} bits")
    v = np.concatenate([v & ((1 << bits) - 1), np.zeros(-v.size % 8, np.int64)])
    planes = [np.packbits(((v >> p) & 1).astype(np.uint8), bitorder="little") for p in range(bits)]
    return np.stack(planes).reshape(bits, -1, 1)


def unpack_planes(planes: np.ndarray, n: int, signed: bool) -> np.ndarray:
    """The inverse of :func:`pack_planes` (int64): the numpy reference of :func:`planes_nodes`."""
    bits = planes.shape[0]
    v = sum(np.unpackbits(planes[p].reshape(-1), bitorder="little")[:n].astype(np.int64) << p for p in range(bits))
    return v - ((v >> (bits - 1)) << bits) if signed else v


class Builder:
    """Collects the nodes and initializers of decode subgraphs; ``tag`` prefixes one weight's
    tensor names, and constants are shared by content across weights."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        value = np.asarray(value)
        if name is None:
            name = f"c.{value.dtype.str[1:]}.{'_'.join(map(str, value.shape))}.{'_'.join(map(str, value.reshape(-1)))}"
        self.initializers[name] = numpy_helper.from_array(value, name)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def planes(self, tag: str, packed_name: str, bits: int, n: int, signed: bool) -> str:
        """Nodes reading ``n`` values back from the bit planes ``packed_name``: a (1, n) float32
        tensor of the integers (two's complement if ``signed``)."""
        groups = -(-n // 8)
        shifted = self.node("BitShift", [packed_name, self.const(np.arange(7, -1, -1, dtype=np.uint8))],
                            f"{tag}.s", direction="LEFT")  # (bits, groups, 8): bit j at the top
        bit = self.node("BitShift", [shifted, self.const(np.uint8(7))], f"{tag}.b", direction="RIGHT")
        flat = self.node("Reshape", [self.node("Cast", [bit], f"{tag}.f", to=TensorProto.FLOAT),
                                     self.const(np.array([bits, groups * 8], np.int64))], f"{tag}.r")
        weights = [float(1 << p) for p in range(bits)]
        if signed:
            weights[-1] = -weights[-1]
        out = self.node("MatMul", [self.const(np.array([weights], np.float32)), flat], f"{tag}.v")
        if n != groups * 8:
            out = self.node("Slice", [out, self.const(np.array([0, 0], np.int64)),
                                      self.const(np.array([1, n], np.int64))], f"{tag}.n")
        return out

    def int_weight(self, tag: str, weight: str, values: np.ndarray, bits: int) -> None:
        """``weight`` (int8, the shape of ``values``) rebuilt from ``bits``-bit planes."""
        packed = self.const(pack_planes(values, bits), f"{tag}.p")
        v = self.planes(tag, packed, bits, values.size, signed=True)
        shaped = self.node("Reshape", [v, self.const(np.array(values.shape, np.int64))], f"{tag}.w")
        self.node("Cast", [shaped], weight, to=TensorProto.INT8)

    def codebook_weight(self, tag: str, weight: str, codes: np.ndarray, code_bits: int, codebook: np.ndarray,
                        projection: np.ndarray | None, shape: tuple, perm: list[int] | None = None) -> None:
        """``weight`` (float32) = ``C[codes] @ P`` (``n × m``; without a projection, ``C[codes]``)
        reshaped to ``shape`` and, with ``perm``, transposed. ``code_bits`` < 8 stores the codes
        as bit planes."""
        if code_bits < 8:
            codes_f = self.planes(tag, self.const(pack_planes(codes, code_bits), f"{tag}.p"), code_bits,
                                  codes.size, signed=False)
            index = self.node("Cast", [codes_f], f"{tag}.i", to=TensorProto.INT64)
        else:
            stored = self.const(codes.astype(np.uint8), f"{tag}.k")
            index = self.node("Cast", [stored], f"{tag}.i", to=TensorProto.INT64)
        sub = self.node("Gather", [self.const(codebook.astype(np.float32), f"{tag}.C"), index], f"{tag}.g", axis=0)
        if projection is not None:
            sub = self.node("MatMul", [sub, self.const(projection.astype(np.float32), f"{tag}.P")], f"{tag}.m")
        if perm is None:
            self.node("Reshape", [sub, self.const(np.array(shape, np.int64))], weight)
        else:
            stored = [shape[i] for i in np.argsort(perm)]  # the shape before the transpose
            t = self.node("Reshape", [sub, self.const(np.array(stored, np.int64))], f"{tag}.t")
            self.node("Transpose", [t], weight, perm=list(perm))

    def sparse_weight(self, tag: str, weight: str, values: np.ndarray) -> None:
        """int8 ``weight`` stored as a bit mask of its non-zeros and their values: the mask's
        running count (CumSum) indexes the values, led by a zero for masked-out places."""
        flat = values.reshape(-1)
        mask = flat != 0
        packed = self.const(pack_planes(mask.astype(np.int64), 1), f"{tag}.p")
        bits = self.node("Cast", [self.planes(tag, packed, 1, flat.size, signed=False)], f"{tag}.i",
                         to=TensorProto.INT64)
        count = self.node("CumSum", [bits, self.const(np.array(1, np.int64))], f"{tag}.c")
        index = self.node("Mul", [count, bits], f"{tag}.x")
        nonzero = self.const(np.concatenate([[0], flat[mask]]).astype(np.int8), f"{tag}.nz")
        gathered = self.node("Gather", [nonzero, index], f"{tag}.g", axis=0)
        self.node("Reshape", [gathered, self.const(np.array(values.shape, np.int64))], weight)
