"""Flatten and Reshape: pure data movement, the same for float and integer tensors."""
from __future__ import annotations

import numpy as np

from . import Kernel, register
from .declare import ANY_NUMBER, INT64, Int, OneOf


@register("Flatten")
class Flatten(Kernel):
    input_types = (ANY_NUMBER,)
    attributes = {"axis": Int()}
    numeric = "any"

    def run(self, x):
        axis = self.attr("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)

    def grad(self, gy, inputs, y, needs):
        return [gy.reshape(inputs[0].shape)]


@register("Reshape")
class Reshape(Kernel):
    """ONNX Reshape: 0 copies the input dimension (unless ``allowzero``), −1 is inferred."""
    inputs = (2, 2)
    const_inputs = (1,)  # the target shape is known at load
    input_types = (ANY_NUMBER, INT64)
    input_ranks = {1: 1}
    attributes = {"allowzero": OneOf(0, 1)}
    numeric = "any"

    def run(self, x, shape):
        shape = [int(s) for s in shape]
        if not self.attr("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"node {self.node.name!r} (Reshape): cannot reshape {x.shape} "
                             f"to {shape}") from None

    def grad(self, gy, inputs, y, needs):
        return [gy.reshape(inputs[0].shape), None]
