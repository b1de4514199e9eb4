"""QuantizeLinear and DequantizeLinear: where float data enters and leaves an
integer graph (per-tensor or per-axis)."""
from __future__ import annotations

import numpy as np

from .. import quant
from . import Kernel, _size, register
from .declare import FLOAT, INT8, INT16, INT32, SCALE, Axis, OneOf, Size


class _Boundary(Kernel):
    inputs = (2, 3)
    const_inputs = (1, 2)
    input_sizes = {1: Size(of=0, axis="axis"), 2: Size(of=0, axis="axis")}  # per tensor or per axis
    attributes = {"axis": Axis(0), "block_size": OneOf(0)}  # blocked scales are not supported
    numeric = "boundary"

    def __init__(self, node, consts, **opts):
        super().__init__(node, consts, **opts)
        zp = consts[2] if len(consts) > 2 else None
        self.qp = quant.QParams.from_consts(consts[1], zp, f"{node.name}")
        self.axis = self.attr("axis", 1)


@register("QuantizeLinear")
class QuantizeLinear(_Boundary):
    input_types = (FLOAT, SCALE, INT8)
    attributes = {**_Boundary.attributes, "saturate": OneOf(0, 1), "output_dtype": OneOf(0)}

    def workspace(self, shapes, dtypes, out_bytes):
        if self._native_runs(dtypes[self.node.inputs[0]]):
            return 0  # one pass, no temporaries
        return 4 * _size(shapes[self.node.inputs[0]])  # the float32 quotient

    def _native_runs(self, x_dtype) -> bool:
        """Whether the native loop runs: per-tensor, float32 in, 8 bits out."""
        return (self.native is not None and self.qp.scale.size == 1 and self.qp.dtype != np.int32
                and x_dtype == np.float32)

    def run(self, x, scale, zp=None):
        if self._native_runs(x.dtype):
            y = self.native.quantize(np.ascontiguousarray(x), float(self.qp.scale), self.qp.zp,
                                     self.qp.dtype == np.int8)
            if y is not None:  # None: a NaN, whose cast numpy decides
                return y
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        return quant.quantize_float(x, self.qp, axis)


@register("DequantizeLinear")
class DequantizeLinear(_Boundary):
    input_types = (INT8 + INT16 + INT32, SCALE, INT8 + INT16 + INT32)
    attributes = {**_Boundary.attributes, "output_dtype": OneOf(0)}

    def workspace(self, shapes, dtypes, out_bytes):
        return 12 * _size(shapes[self.node.inputs[0]])  # int64 values minus the zero-point, float32

    def run(self, x, scale, zp=None):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        return quant.dequantize(x, self.qp, axis)
