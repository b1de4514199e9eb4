"""Flatten and Reshape: pure data movement, the same for float and integer tensors."""
from __future__ import annotations

import numpy as np

from . import IntGrad, Kernel, register


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
    def run(self, x):
        axis = self.attr("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


@register("Reshape")
class Reshape(_View):
    """ONNX Reshape: 0 copies the input dimension (unless ``allowzero``), −1 is inferred."""

    def run(self, x, shape):
        shape = [int(s) for s in shape]
        if not self.attr("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"node {self.node.name!r} (Reshape): cannot reshape {x.shape} "
                             f"to {shape}") from None
