"""BatchNormalization (inference form). The loader folds it into a preceding
Conv when it can; this kernel runs the ones it cannot fold."""
from __future__ import annotations

import numpy as np

from . import Kernel, register
from .declare import FLOAT, Float, OneOf, Size


def batchnorm_affine(scale, bias, mean, var, epsilon):
    """Per-channel ``(a, b)`` with ``BN(x) = a·x + b``."""
    a = scale / np.sqrt(var + np.float32(epsilon))
    return a.astype(np.float32), (bias - mean * a).astype(np.float32)


@register("BatchNormalization")
class BatchNormalization(Kernel):
    inputs = (5, 5)
    input_types = (FLOAT,) * 5
    input_sizes = dict.fromkeys((1, 2, 3, 4), Size(of=0, axis=1, one_ok=False))  # one per channel
    attributes = {"epsilon": Float(lo=0), "momentum": Float(), "training_mode": OneOf(0)}

    def run(self, x, scale, bias, mean, var):
        if self.attr("training_mode", 0):
            raise ValueError(f"node {self.node.name!r}: training_mode=1 BatchNormalization "
                             "is not supported")
        a, b = batchnorm_affine(scale, bias, mean, var, self.attr("epsilon", 1e-5))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * a.reshape(shape) + b.reshape(shape)

    def grad(self, gy, inputs, y, needs):
        """y = scale·(x − mean)/√(var + ε) + bias; the running statistics get no gradient."""
        x, scale, bias, mean, var = inputs
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv_std = 1 / np.sqrt(var + var.dtype.type(self.attr("epsilon", 1e-5)))
        over = (0,) + tuple(range(2, x.ndim))  # every axis but the channel
        return [gy * (scale * inv_std).reshape(shape) if needs[0] else None,
                (gy * (x - mean.reshape(shape))).sum(axis=over) * inv_std if needs[1] else None,
                gy.sum(axis=over) if needs[2] else None,
                None, None]
