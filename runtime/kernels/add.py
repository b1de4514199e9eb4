"""Add and QLinearAdd (com.microsoft), the latter in TFLite's integer form."""
from __future__ import annotations

import numpy as np

from .. import quant
from . import Kernel, _size, register, sum_to_shape
from .declare import ANY_NUMBER, INT8, SCALE, Size


@register("Add")
class Add(Kernel):
    inputs = (2, 2)
    input_types = (ANY_NUMBER, ANY_NUMBER)

    def run(self, a, b):
        return a + b

    def grad(self, gy, inputs, y, needs):
        return [sum_to_shape(gy, v.shape) if need else None for v, need in zip(inputs, needs)]


@register("QLinearAdd")
class QLinearAdd(Kernel):
    """c = (s_a(a − za) + s_b(b − zb)) / s_c + zc, in integers with one rounding:
    ``s_a/s_c`` and ``s_b/s_c`` become Q31 mantissas over a shared exponent."""
    inputs = (8, 8)
    input_types = (INT8, SCALE, INT8, INT8, SCALE, INT8, SCALE, INT8)
    input_sizes = dict.fromkeys((1, 2, 4, 5, 6, 7), Size())
    numeric = "int"
    const_inputs = (1, 2, 4, 5, 6, 7)

    def __init__(self, node, consts, **opts):
        super().__init__(node, consts, **opts)
        self.aq = quant.QParams.from_consts(consts[1], consts[2], f"{node.name} A")
        self.bq = quant.QParams.from_consts(consts[4], consts[5], f"{node.name} B")
        self.cq = quant.QParams.from_consts(consts[6], consts[7], f"{node.name} C")
        c = float(self.cq.scale)
        (self.ma, self.mb), self.shift = quant.quantize_multipliers_shared(
            [float(self.aq.scale) / c, float(self.bq.scale) / c])

    def workspace(self, shapes, dtypes, out_bytes):
        if self._native_runs(shapes[self.node.inputs[0]], shapes[self.node.inputs[3]]):
            return 0  # one pass, no temporaries
        return 24 * _size(shapes[self.node.inputs[0]])  # the int64 terms and their sum

    def _native_runs(self, a_shape, b_shape) -> bool:
        """Whether the native loop runs: same shapes (no broadcasting), an 8-bit output."""
        return (self.native is not None and tuple(a_shape) == tuple(b_shape) and self.cq.dtype != np.int32
                and 0 <= 31 - self.shift <= 62)

    def run(self, a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp):
        if self._native_runs(a.shape, b.shape):
            return self.native.qlinear_add(np.ascontiguousarray(a), self.aq.zp, self.ma, np.ascontiguousarray(b),
                                           self.bq.zp, self.mb, 31 - self.shift, self.cq.zp,
                                           self.cq.dtype == np.int8)
        total = (self.ma * (a.astype(np.int64) - self.aq.zp)
                 + self.mb * (b.astype(np.int64) - self.bq.zp))
        return quant.saturate(quant.rounding_shift_right(total, 31 - self.shift) + self.cq.zp, self.cq)
