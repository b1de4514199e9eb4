"""Flatten and Reshape: pure data movement, the same for float and integer tensors."""
from __future__ import annotations

import math

import numpy as np

from . import IntGrad, Kernel, register
from .declare import ANY_NUMBER, INT64, Axis, OneOf


class _View(Kernel):
    """A reshape of input 0: gradients are reshaped back, and no new buffer is made."""
    numeric, returns_view = "any", True

    def grad(self, gy, inputs, y, needs):
        return [gy.reshape(inputs[0].shape)] + [None] * (len(inputs) - 1)

    def int_grad(self, err, inputs, y, need_input=True):
        return IntGrad(err.reshape(inputs[0].shape), 1.0, err)

    def grad_workspace(self, shapes, need_input):
        return 0


@register("Flatten")
class Flatten(_View):
    input_types = (ANY_NUMBER,)
    attributes = {"axis": Axis(0, end_allowed=True)}

    def run(self, x):
        axis = self.attr("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:axis]), -1)


@register("Reshape")
class Reshape(_View):
    """ONNX Reshape: 0 copies the input dimension (unless ``allowzero``), −1 is inferred."""
    inputs = (2, 2)
    const_inputs = (1,)  # the target shape is known at load
    input_types = (ANY_NUMBER, INT64)
    input_ranks = {1: 1}
    attributes = {"allowzero": OneOf(0, 1)}

    @classmethod
    def check_constants(cls, node, consts, shapes):
        """The target must fit the input for every batch size: at most one −1, 0 only where
        it copies an input dimension, and the known sizes must divide (or equal) the input's."""
        target, x = consts[1], shapes[0]
        if target is None or x is None:
            return
        t, where = [int(v) for v in target], f"node {node.name!r} (Reshape): input 1 (shape) {[int(v) for v in target]}"
        if t.count(-1) > 1 or min(t, default=0) < -1:
            raise ValueError(f"{where}: expected at most one -1 and no other negative entry")
        copy = not node.attrs.get("allowzero", 0)
        if copy and any(v == 0 and i >= len(x) for i, v in enumerate(t)):
            raise ValueError(f"{where}: a 0 past the input's {len(x)} dimensions")
        dims = [x[i] if copy and v == 0 else v for i, v in enumerate(t)]
        free = [d for d in x if d is None]
        fixed_in = int(np.prod([d for d in x if d is not None]))
        fixed_out = int(np.prod([d for d in dims if d not in (None, -1)]))
        copied = sum(d is None for d in dims)
        fits = (fixed_out > 0 and fixed_in % fixed_out == 0) if -1 in dims else fixed_in == fixed_out
        if len(free) != copied and -1 not in dims or not fits and len(free) == copied:
            raise ValueError(f"{where}: does not fit input shape {['?' if d is None else d for d in x]}")

    def run(self, x, shape):
        shape = [int(s) for s in shape]
        if not self.attr("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"node {self.node.name!r} (Reshape): cannot reshape {x.shape} "
                             f"to {shape}") from None
