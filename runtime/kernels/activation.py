"""Relu and Clip; on integer tensors they clamp the stored integers."""
from __future__ import annotations

import numpy as np

from . import IntGrad, Kernel, register
from .declare import ANY_NUMBER, Float, Size


@register("Relu")
class Relu(Kernel):
    input_types = (ANY_NUMBER,)
    numeric = "any"

    def workspace(self, shapes, dtypes, out_bytes):
        return 0

    def run(self, x):
        return np.maximum(x, np.zeros((), dtype=x.dtype))

    def grad(self, gy, inputs, y, needs):
        return [gy * (inputs[0] > 0)]  # 0 at x = 0, as torch


@register("Clip")
class Clip(Kernel):
    """Clip with optional ``min``/``max`` inputs (opset ≥ 11) or attributes (older)."""
    inputs = (1, 3)
    input_types = (ANY_NUMBER, ANY_NUMBER, ANY_NUMBER)
    input_sizes = {1: Size(), 2: Size()}  # the bounds are scalars
    attributes = {"min": Float(), "max": Float()}
    numeric = "any"
    workspace = Relu.workspace

    def run(self, x, lo=None, hi=None):
        lo = self.attr("min") if lo is None else lo
        hi = self.attr("max") if hi is None else hi
        if lo is not None:
            x = np.maximum(x, np.asarray(lo, dtype=x.dtype))
        if hi is not None:
            x = np.minimum(x, np.asarray(hi, dtype=x.dtype))
        return x

    def grad(self, gy, inputs, y, needs):
        """Passes strictly inside ``lo < x < hi`` (0 on a bound, as torch.clamp and Relu); the
        bounds get none."""
        x, lo, hi = (list(inputs) + [None, None])[:3]
        lo = self.attr("min") if lo is None else lo
        hi = self.attr("max") if hi is None else hi
        inside = np.ones(x.shape, dtype=bool)
        if lo is not None:
            inside &= x > lo
        if hi is not None:
            inside &= x < hi
        return [gy * inside] + [None] * (len(inputs) - 1)

    def int_grad(self, err, inputs, y, need_input=True):
        """The error passes where the value was not clipped (integer tensors)."""
        return IntGrad(np.where(inputs[0] == y, err, 0), 1.0, err)
