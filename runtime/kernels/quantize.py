"""QuantizeLinear and DequantizeLinear: where float data enters and leaves an
integer graph (per-tensor or per-axis)."""
from __future__ import annotations

from .. import quant
from . import Kernel, _size, register


class _Boundary(Kernel):
    const_inputs = (1, 2)
    numeric = "boundary"

    def __init__(self, node, consts, **opts):
        super().__init__(node, consts, **opts)
        zp = consts[2] if len(consts) > 2 else None
        self.qp = quant.QParams.from_consts(consts[1], zp, f"{node.name}")
        self.axis = self.attr("axis", 1)


@register("QuantizeLinear")
class QuantizeLinear(_Boundary):
    def workspace(self, shapes, dtypes, out_bytes):
        return 4 * _size(shapes[self.node.inputs[0]])  # the float32 quotient

    def run(self, x, scale, zp=None):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        return quant.quantize_float(x, self.qp, axis)


@register("DequantizeLinear")
class DequantizeLinear(_Boundary):
    def workspace(self, shapes, dtypes, out_bytes):
        return 12 * _size(shapes[self.node.inputs[0]])  # int64 values minus the zero-point, float32

    def run(self, x, scale, zp=None):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        return quant.dequantize(x, self.qp, axis)
