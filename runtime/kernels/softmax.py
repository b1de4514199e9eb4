"""Softmax and QLinearSoftmax (com.microsoft, integer-only here)."""
from __future__ import annotations

import numpy as np

from .. import quant
from . import Kernel, _size, register
from .declare import FLOAT, INT8, SCALE, Axis, Int, Size

# exp table entries carry this many fractional bits.
_EXP_BITS = 20


def _softmax_axes(k: Kernel, x):
    """Reshape ``x`` so the softmax runs over its last axis; returns (view, restore)."""
    axis = k.attr("axis", -1 if k.opset >= 13 else 1)
    axis = axis + x.ndim if axis < 0 else axis
    if k.opset >= 13:  # one axis
        moved = np.moveaxis(x, axis, -1)
        return moved, lambda y: np.moveaxis(y, -1, axis)
    # before opset 13: the input is coerced to 2-D at `axis`
    return x.reshape(int(np.prod(x.shape[:axis])), -1), lambda y: y.reshape(x.shape)


@register("Softmax")
class Softmax(Kernel):
    input_types = (FLOAT,)
    attributes = {"axis": Axis(0)}

    def run(self, x):
        v, restore = _softmax_axes(self, x)
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        return restore(e / e.sum(axis=-1, keepdims=True))

    def grad(self, gy, inputs, y, needs):
        """dx = y ⊙ (gy − Σ gy ⊙ y) along the softmax axis."""
        g, restore = _softmax_axes(self, gy)
        p, _ = _softmax_axes(self, y)
        return [restore(p * (g - (g * p).sum(axis=-1, keepdims=True)))]


@register("QLinearSoftmax")
class QLinearSoftmax(Kernel):
    """Integer softmax: ``e_d = round(2^20 · exp(−s_x·d))`` for ``d = max − x`` from a
    table built at load, then ``y = round(e / (Σe · s_y)) + zy`` by integer division."""
    inputs = (5, 5)
    const_inputs = (1, 2, 3, 4)
    input_types = (INT8, SCALE, INT8, SCALE, INT8)
    input_sizes = dict.fromkeys((1, 2, 3, 4), Size())
    attributes = {"axis": Axis(0), "opset": Int(lo=1)}  # the float graph's opset: axis rules
    numeric = "int"

    def __init__(self, node, consts, **opts):
        super().__init__(node, consts, **opts)
        self.opset = node.attrs.get("opset", self.opset)
        self.xq = quant.QParams.from_consts(consts[1], consts[2], f"{node.name} x")
        self.yq = quant.QParams.from_consts(consts[3], consts[4], f"{node.name} y")
        d = np.arange(self.xq.qmax - self.xq.qmin + 1, dtype=np.float64)
        self.exp_table = np.round(np.exp(-float(self.xq.scale) * d) * (1 << _EXP_BITS)).astype(np.int64)
        self.inv_y = quant.quantize_multiplier(1.0 / float(self.yq.scale))  # 1/s_y = m·2^(shift−31)

    def workspace(self, shapes, dtypes, out_bytes):
        return 24 * _size(shapes[self.node.inputs[0]])  # int64 values, table lookups, quotients

    def run(self, x, x_scale, x_zp, y_scale, y_zp):
        v, restore = _softmax_axes(self, x.astype(np.int64))
        e = self.exp_table[v.max(axis=-1, keepdims=True) - v]
        total = e.sum(axis=-1, keepdims=True)
        m, shift = self.inv_y
        num, den = e * m, total
        if shift >= 31:
            num = num << (shift - 31)
        else:
            den = den << (31 - shift)
        y = quant.div_round_half_up(num, den)
        return restore(quant.saturate(y + self.yq.zp, self.yq))
