"""MaxPool, AveragePool, GlobalAveragePool and the integer average pools."""
from __future__ import annotations

import numpy as np

from .. import quant
from . import Kernel, _size, register
from ._window import window_geometry, window_reduce, window_scatter, window_slices
from .declare import ANY_NUMBER, FLOAT, INT8, POOL, SCALE, OneOf, Size


def _lowest(dtype):
    return np.iinfo(dtype).min if np.issubdtype(dtype, np.integer) else -np.inf


def _check_2d(kernel: Kernel, x):
    if x.ndim != 4:
        raise ValueError(f"node {kernel.node.name!r} ({kernel.node.op_type}): expected a "
                         f"4-D NCHW input, got shape {x.shape}")
    if kernel.attr("channels_last", 0):
        raise ValueError(f"node {kernel.node.name!r}: channels_last=1 is not supported")


class _Pool(Kernel):
    """What the float pools share for the memory model: a padded copy of the input, if any."""

    def workspace(self, shapes, dtypes, out_bytes):
        x = shapes[self.node.inputs[0]]
        _, _, pads, _ = window_geometry(self.attr("kernel_shape"), self.node.attrs, x[2:], self.node.name)
        padded = x[0] * x[1] * (x[2] + pads[0] + pads[2]) * (x[3] + pads[1] + pads[3])
        return padded * np.dtype(dtypes[self.node.inputs[0]]).itemsize if any(pads) else 0

    def grad_workspace(self, shapes, need_input):
        return 8 * (_size(shapes[self.node.outputs[0]]) + _size(shapes[self.node.inputs[0]]))


@register("MaxPool")
class MaxPool(_Pool):
    """Max over each window; padding never wins (it is the dtype's lowest value)."""
    input_types = (ANY_NUMBER,)
    input_ranks = {0: 4}
    attributes = {**POOL, "storage_order": OneOf(0)}
    numeric = "any"

    def run(self, x):
        _check_2d(self, x)
        kernel = self.attr("kernel_shape")
        geometry = self.window(kernel, x.shape[2:])
        if self.native is not None and x.dtype.itemsize == 1 and x.dtype.kind in "iu":
            return self.native.max_pool(x if x.flags.c_contiguous else np.ascontiguousarray(x), kernel, *geometry)
        return window_reduce(x, kernel, *geometry, _lowest(x.dtype), np.maximum)

    def grad(self, gy, inputs, y, needs):
        """All of a window's gradient goes to its first maximum in row-major
        offset order (torch's choice on ties)."""
        x = inputs[0]
        kernel = self.attr("kernel_shape")
        geometry = window_geometry(kernel, self.node.attrs, x.shape[2:], self.node.name)

        def parts():  # one offset at a time, so memory stays that of one slice
            taken = np.zeros(y.shape, dtype=bool)
            for s in window_slices(x, kernel, *geometry, _lowest(x.dtype)):
                first = (s == y) & ~taken
                taken |= first
                yield np.where(first, gy, 0)
        return [window_scatter(parts(), x.shape, kernel, *geometry, gy.dtype)]


def _window_counts(k: Kernel, in_hw):
    """The pool's window ``(kernel, strides, dilations, pads, out_hw)`` and, per
    output position, how many values the mean divides by.

    The count covers the real input, plus the explicit pads when
    ``count_include_pad`` — never the extra bottom/right rows of ``ceil_mode``.
    """
    kernel = k.attr("kernel_shape")
    strides, dil, pads, out_hw = window_geometry(kernel, k.node.attrs, in_hw, k.node.name)
    explicit = window_geometry(kernel, {**k.node.attrs, "ceil_mode": 0}, in_hw, k.node.name)[2]
    ones = np.pad(np.ones(in_hw, dtype=np.int64),
                  ((explicit[0], explicit[2]), (explicit[1], explicit[3])),
                  constant_values=1 if k.attr("count_include_pad", 0) else 0)
    extra = [0, 0, pads[2] - explicit[2], pads[3] - explicit[3]]
    counts = window_reduce(ones, kernel, strides, dil, extra, out_hw, 0, np.add)
    return (kernel, strides, dil, pads, out_hw), counts


def _window_sums_and_counts(k: Kernel, x):
    """Window sums of ``x`` and the counts of :func:`_window_counts`."""
    window, counts = _window_counts(k, x.shape[2:])
    return window_reduce(x, *window, 0, np.add), counts


@register("AveragePool")
class AveragePool(_Pool):
    input_types = (FLOAT,)
    input_ranks = {0: 4}
    attributes = {**POOL, "count_include_pad": OneOf(0, 1)}

    def run(self, x):
        _check_2d(self, x)
        sums, counts = _window_sums_and_counts(self, x)
        return (sums / counts).astype(x.dtype)

    def grad(self, gy, inputs, y, needs):
        """Each window spreads gy/count evenly over the values it averaged."""
        x = inputs[0]
        window, counts = _window_counts(self, x.shape[2:])
        share = (gy / counts).astype(gy.dtype)
        kernel = window[0]
        return [window_scatter([share] * (kernel[0] * kernel[1]), x.shape, *window, gy.dtype)]


@register("GlobalAveragePool")
class GlobalAveragePool(Kernel):
    input_types = (FLOAT,)

    def run(self, x):
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float32).astype(x.dtype)

    def grad(self, gy, inputs, y, needs):
        x = inputs[0]
        return [np.broadcast_to(gy / int(np.prod(x.shape[2:])), x.shape).copy()]


# the most values one integer mean may average (Σ·mult and count·2^bits stay in int64)
_MAX_COUNT = 1 << 22


class _IntegerMean(Kernel):
    """Integer mean: ``Σ(x − zx) · M / count + zy`` with ``M = s_x/s_y`` as a Q31 multiplier,
    divided once, exactly, and rounded half to even as onnxruntime's ``rint`` does.

    Ties are common: onnxruntime's QDQ quantiser gives an AveragePool the input's
    scale (M = 1), so a 2×2 mean lands on .5 for a quarter of the windows. Where
    onnxruntime's float32 arithmetic is exact it breaks them to even; elsewhere
    float noise decides (tests/test_runtime.py bounds the difference).
    """
    inputs = (5, 5)
    const_inputs = (1, 2, 3, 4)
    input_types = (INT8, SCALE, INT8, SCALE, INT8)
    input_ranks = {0: 4}
    input_sizes = dict.fromkeys((1, 2, 3, 4), Size())
    numeric = "int"

    def __init__(self, node, consts, **opts):
        super().__init__(node, consts, **opts)
        self.xq = quant.QParams.from_consts(consts[1], consts[2], f"{node.name} x")
        self.yq = quant.QParams.from_consts(consts[3], consts[4], f"{node.name} y")
        self.mult, shift = quant.quantize_multiplier(float(self.xq.scale) / float(self.yq.scale))
        # past 2^40 every |Σ·mult| / (count·2^bits) < 255·2^31 / 2^40 < 1/2 rounds to 0 anyway
        self.bits = min(31 - shift, 40)

    def workspace(self, shapes, dtypes, out_bytes):
        if self.native is not None:
            return 0  # one pass: sums in registers
        return 24 * _size(shapes[self.node.inputs[0]])  # int64 sums and their requantisation

    def mean(self, x: np.ndarray, window, counts, even_output: bool) -> np.ndarray:
        """The mean over each ``window`` (``(kernel, strides, dilations, pads, out_hw)``) of ``x``
        with ``counts`` values per output position. ``even_output``: ties go to an even output
        (zy added before rounding, as onnxruntime's QLinearAveragePool does) rather than to an
        even mean (its global pool)."""
        counts = np.asarray(counts, dtype=np.int64)
        if counts.max() >= _MAX_COUNT:
            raise ValueError(f"node {self.node.name!r} ({self.node.op_type}): a window of "
                             f"{int(counts.max())} values; at most {_MAX_COUNT - 1} are supported")
        zp = self.yq.zp if even_output else 0
        if self.native is not None:
            return self.native.mean_pool(np.ascontiguousarray(x), self.xq.zp, *window,
                                         np.broadcast_to(counts, window[-1]).copy(), self.mult, self.bits, zp,
                                         self.yq.zp, self.yq.dtype == np.int8)
        shifted = x.astype(np.int64) - self.xq.zp
        if list(window[-1]) == [1, 1] and list(window[0]) == list(x.shape[2:]) and not any(window[3]):
            sums = shifted.sum(axis=(2, 3), keepdims=True)  # the whole plane: one sum, not a walk
        else:
            sums = window_reduce(shifted, *window, 0, np.add)
        q = quant.divide_round_half_even(sums * self.mult, counts << self.bits, zp)
        return quant.saturate(q + (self.yq.zp - zp), self.yq)


@register("QLinearGlobalAveragePool")
class QLinearGlobalAveragePool(_IntegerMean):
    attributes = {"channels_last": OneOf(0)}

    def run(self, x, x_scale, x_zp, y_scale, y_zp):
        _check_2d(self, x)
        whole = (list(x.shape[2:]), [1, 1], [1, 1], [0, 0, 0, 0], [1, 1])  # one window: the plane
        return self.mean(x, whole, x.shape[2] * x.shape[3], even_output=False)


@register("QLinearAveragePool")
class QLinearAveragePool(_IntegerMean):
    attributes = {**AveragePool.attributes, "channels_last": OneOf(0)}

    def run(self, x, x_scale, x_zp, y_scale, y_zp):
        _check_2d(self, x)
        window, counts = _window_counts(self, x.shape[2:])
        # onnxruntime runs a window over the whole unpadded input as its global pool
        whole = list(x.shape[2:]) == list(window[0]) and not any(window[3])
        return self.mean(x, window, counts, even_output=not whole)
