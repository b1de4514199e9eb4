"""Relu and Clip; on integer tensors they clamp the stored integers."""
from __future__ import annotations

import numpy as np

from . import Kernel, register


@register("Relu")
class Relu(Kernel):
    def run(self, x):
        return np.maximum(x, np.zeros((), dtype=x.dtype))


@register("Clip")
class Clip(Kernel):
    """Clip with optional ``min``/``max`` inputs (opset ≥ 11) or attributes (older)."""

    def run(self, x, lo=None, hi=None):
        lo = self.attr("min") if lo is None else lo
        hi = self.attr("max") if hi is None else hi
        if lo is not None:
            x = np.maximum(x, np.asarray(lo, dtype=x.dtype))
        if hi is not None:
            x = np.minimum(x, np.asarray(hi, dtype=x.dtype))
        return x
