"""Gemm, MatMul and their integer forms QLinearMatMul and QGemm (com.microsoft)."""
from __future__ import annotations

import numpy as np

from .. import quant
from . import IntGrad, Kernel, _size, register, sum_to_shape
from .conv import _per_row
from .declare import FLOAT, INT8, INT16, INT32, SCALE, Float, OneOf, Size


@register("MatMul")
class MatMul(Kernel):
    inputs = (2, 2)
    input_types = (FLOAT, FLOAT)
    weight_input, fully_connected = 1, True

    def run(self, a, b):
        return np.matmul(a, b)

    def grad(self, gy, inputs, y, needs):
        """numpy matmul semantics: 1-D operands get a unit axis, batch axes broadcast."""
        a, b = inputs
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = gy[..., None] if b.ndim == 1 else gy
        g = g[..., None, :] if a.ndim == 1 else g
        da = sum_to_shape(g @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape) if needs[0] else None
        db = sum_to_shape(np.swapaxes(a2, -1, -2) @ g, b2.shape).reshape(b.shape) if needs[1] else None
        return [da, db]

    def workspace(self, shapes, dtypes, out_bytes):
        return 2 * out_bytes  # the product, then the bias/scale pass

    def grad_workspace(self, shapes, need_input):
        return 4 * _size(shapes[self.node.outputs[0]]) + (4 * _size(shapes[self.node.inputs[0]]) if need_input else 0)


@register("Gemm")
class Gemm(Kernel):
    """y = alpha · A' · B' + beta · C, with A', B' optionally transposed."""
    inputs = (2, 3)
    input_types = (FLOAT, FLOAT, FLOAT)
    input_ranks = {0: 2, 1: 2}
    input_sizes = {2: Size(of=1, axis=("transB", 1, 0), max_ndim=2)}  # C broadcasts over the rows
    attributes = {"alpha": Float(), "beta": Float(), "transA": OneOf(0, 1), "transB": OneOf(0, 1)}
    weight_input, bias_input, fully_connected = 1, 2, True

    @classmethod
    def check_constants(cls, node, consts, shapes):
        """A 2-D C has one row, or as many as A' (known only for a fixed batch)."""
        a, c = shapes[0], shapes[2] if len(shapes) > 2 else None
        if a is not None and c is not None and len(c) == 2 and c[0] != 1:
            rows = a[1 if node.attrs.get("transA", 0) else 0]
            if c[0] != rows:
                raise ValueError(f"node {node.name!r} (Gemm): input 2 has shape {list(c)}, expected 1 or "
                                 f"{'?' if rows is None else rows} row(s)")

    def run(self, a, b, c=None):
        a = a.T if self.attr("transA", 0) else a
        b = b.T if self.attr("transB", 0) else b
        y = np.matmul(a, b)
        alpha, beta = self.attr("alpha", 1.0), self.attr("beta", 1.0)
        if alpha != 1.0:
            y = y * np.float32(alpha)
        if c is not None:
            y = y + (c if beta == 1.0 else np.float32(beta) * c)
        return y

    def grad(self, gy, inputs, y, needs):
        """dA' = alpha·gy·B'ᵀ and dB' = alpha·A'ᵀ·gy (transposed back when A, B were);
        dC = beta·gy summed down to C's shape."""
        a, b, c = (list(inputs) + [None])[:3]
        ta, tb = self.attr("transA", 0), self.attr("transB", 0)
        alpha, beta = float(self.attr("alpha", 1.0)), float(self.attr("beta", 1.0))
        g = gy * alpha if alpha != 1.0 else gy  # a Python float keeps gy's dtype
        a_, b_ = (a.T if ta else a), (b.T if tb else b)
        grads = [None] * len(inputs)
        if needs[0]:
            grads[0] = (g @ b_.T).T if ta else g @ b_.T
        if needs[1]:
            grads[1] = (a_.T @ g).T if tb else a_.T @ g
        if c is not None and needs[2]:
            grads[2] = sum_to_shape(gy * beta if beta != 1.0 else gy, c.shape)
        return grads

    workspace, grad_workspace = MatMul.workspace, MatMul.grad_workspace


# int_grad weighs each output channel's error by its weight scale relative to the largest, in Q16
CHANNEL_BITS = 16


class _IntegerMatMul(Kernel):
    """Shared integer path: acc = Σ (a − za)(b − zb) [+ bias], then requantise.

    The output channel is the last axis of B (after any transpose), so
    per-channel weight scales broadcast along the result's last axis.

    B may also be int16 with zero-point 0 — the widened weights of a layer that
    unlearning compensated (:mod:`edgetrain.prover.int8`) — on int8 activations. That
    product runs on numpy in every backend (the native kernels are 8-bit): B = 256·hi + lo
    with hi = B >> 8 (int8) and lo = B & 255, two exact 8-bit GEMMs, summed in int64,
    then clamped to int32 before requantising. The clamp changes no output: the load
    check ``M ≥ 2^−22`` for every channel's multiplier makes any |acc| ≥ 2^31 saturate.
    """
    a_pos = b_pos = y_pos = 0  # input positions of (x, scale, zp) triples
    weight_input, numeric, fully_connected = 3, "int", True

    def __init__(self, node, consts, **opts):
        super().__init__(node, consts, **opts)
        self.aq = quant.QParams.from_consts(consts[self.a_pos + 1], consts[self.a_pos + 2], f"{node.name} A")
        self.bq = quant.QParams.from_consts(consts[self.b_pos + 1], consts[self.b_pos + 2], f"{node.name} B")
        if consts[self.y_pos] is None:
            raise ValueError(f"node {node.name!r} ({node.op_type}): float output (no y_scale) "
                             "is not supported; the runtime keeps integer ops integer")
        self.yq = quant.QParams.from_consts(consts[self.y_pos], consts[self.y_pos + 1], f"{node.name} Y")
        alpha = float(self.attr("alpha", 1.0))
        real = (self.aq.scale.astype(np.float64) * self.bq.scale.astype(np.float64)
                / float(self.yq.scale) * alpha)
        self.mult, self.shift = quant.quantize_multipliers(np.atleast_1d(real))
        if self.bq.dtype == np.int16:
            if np.any(self.bq.zero_point != 0):
                raise ValueError(f"node {node.name!r} ({node.op_type}): int16 weights need zero-point 0")
            if np.min(real) < 2.0 ** -22:
                raise ValueError(f"node {node.name!r} ({node.op_type}): int16 weights with a requantisation "
                                 f"multiplier {float(np.min(real)):.3g} < 2^-22: the int32 accumulator could "
                                 "wrap before the output saturates")
        # for int_grad: the real weight is s_n·q[n, k]; c_n = s_n / max s in Q16 (R3 of prover/int8.py)
        s_max = float(np.max(self.bq.scale))
        self.channel_q16 = quant.fixed_point_ratios(self.bq.scale.astype(np.float64) / s_max, CHANNEL_BITS)
        self.in_scale = alpha * s_max * 2.0 ** -CHANNEL_BITS
        self.act_scale = alpha * float(self.aq.scale)
        # the native kernels keep a packed copy of a constant 2-D weight, made here once; each
        # call compares it with the weight's current bytes and repacks when training changed them
        w = consts[self.weight_input]
        self.packed = self._layer = None
        if self.native is not None and w is not None and w.ndim == 2 and w.dtype in (np.int8, np.uint8):
            w_nk = np.ascontiguousarray(self.weight_nk(w))
            self.packed, self._packed_shape, self._packed_dtype = self.native.pack_weights(w_nk), w_nk.shape, w_nk.dtype
            # the same packed weights with every other constant of the call, for ``product``'s
            # shortest path (a 2-D input, the weight of the shape packed)
            n = w_nk.shape[0]
            self._layer = self.native.fc_layer(w_nk, _per_row(self.bq.zero_point, n, np.int32),
                                               _per_row(self.mult, n, np.int64), _per_row(self.shift, n, np.int64),
                                               self.aq.zp, self.yq.zp, self.yq.dtype == np.int8)
            self._layer_kn = (w_nk.shape[::-1], w_nk.dtype)

    def weight_nk(self, w: np.ndarray) -> np.ndarray:
        """The weight as (N outputs, K inputs): B transposed unless it is stored so (transB)."""
        return w if self.attr("transB", 0) else w.T

    def int_grad(self, err, inputs, y, need_input=True):
        """Exact: the output error is 0 where y saturated (a Relu folded into the range
        included); the input's error is ``(err·c) @ q``, real scale ``ε·alpha·max s·2^−16``."""
        err = np.where((y == self.yq.qmin) | (y == self.yq.qmax), 0, err)
        act = inputs[0].astype(np.int64)
        act -= self.aq.zp
        err_in = None
        if need_input:
            weighted, w = err * self.channel_q16, self.weight_nk(inputs[self.weight_input]).astype(np.int64)
            err_in = weighted @ w if self.native is None else self.native.int_matmul(weighted, w)
        return IntGrad(err_in, self.in_scale, err, act, self.act_scale)

    def workspace(self, shapes, dtypes, out_bytes):
        """The shifted operands in the GEMM's working type and its product (twice when it adds
        chunks or copies to int32), or the int32 accumulator and requantisation."""
        a, b = shapes[self.node.inputs[0]], shapes[self.node.inputs[self.weight_input]]
        rows, k = _size(a[:-1]), a[-1]
        n = b[0] if self.attr("transB", 0) else b[-1]
        if dtypes.get(self.node.inputs[self.weight_input]) == np.int16:  # numpy: hi and lo, int64 sum, clamp
            return 4 * rows * k + 8 * k * n + 4 * rows * n * (2 if self.float_gemm else 1) + 2 * 8 * rows * n
        if self.native is not None:  # the int32 product (lanes of 16) and the s8 / u8 operands it packs
            pad16, quad_bytes = (lambda v: -(-v // 16) * 16), 4 * -(-k // 4)
            if self.packed is not None:
                return 4 * rows * pad16(n) + rows * quad_bytes
            return 4 * n * pad16(rows) + quad_bytes * (pad16(rows) + n)
        chunks = (k + quant.FLOAT32_EXACT_K - 1) // quant.FLOAT32_EXACT_K
        operands = 4 * rows * k + 4 * k * n                   # shifted copies, freed before requantising
        product = 4 * rows * n * (2 if self.float_gemm else 1) * (2 if chunks > 1 else 1)
        return max(operands + product, 4 * rows * n + quant.requantize_workspace(rows * n))

    def accumulate(self, a, b, bias=None):
        if b.dtype == np.int16:
            return self._accumulate_wide(a, b, bias)
        # shifted operands in the GEMM's working type (float32 holds them exactly)
        work = np.float32 if self.float_gemm else np.int32
        a = a.astype(work)
        a -= work(self.aq.zp)
        b = b.astype(work)
        b -= self.bq.zero_point.astype(work)  # per-column zero-points broadcast
        acc = quant.int_matmul(a, b, self.float_gemm)
        if bias is not None:
            acc += bias.astype(np.int32)
        return acc

    def _accumulate_wide(self, a, b, bias=None):
        """int16 ``b`` (zero-point 0): ``256·(a−za)@hi + (a−za)@lo [+ bias]`` with
        ``b = 256·hi + lo``, exact in int64, clamped to int32 (see the class docstring)."""
        work = np.float32 if self.float_gemm else np.int32
        a = a.astype(work)
        a -= work(self.aq.zp)
        hi, lo = (b >> 8).astype(work), (b & 255).astype(work)
        acc = quant.int_matmul(a, hi, self.float_gemm).astype(np.int64)
        acc <<= 8
        acc += quant.int_matmul(a, lo, self.float_gemm)
        if bias is not None:
            acc += bias.astype(np.int64)
        return np.clip(acc, -(1 << 31), (1 << 31) - 1).astype(np.int32)

    def product(self, a, b, bias=None):
        """``requantize(Σ (a − za)(b − zb) + bias)`` for ``b`` (K, N): in the native kernels
        when they run, both operands are matrices and ``b`` is 8-bit (else the numpy
        reference, same bits)."""
        layer = self._layer
        if layer is not None and a.ndim == 2 and (b.shape, b.dtype) == self._layer_kn:
            if bias is not None and not (bias.dtype == np.int32 and bias.shape == b.shape[1:] and bias.flags.c_contiguous):
                bias = _per_row(bias, b.shape[1], np.int32)
            return layer.run(a if a.flags.c_contiguous else np.ascontiguousarray(a),
                             b.T if b.flags.f_contiguous else np.ascontiguousarray(b.T), bias)
        if self.native is None or a.ndim < 2 or b.ndim != 2 or b.dtype == np.int16:
            return quant.requantize(self.accumulate(a, b, bias), self.mult, self.shift, self.yq)
        n = b.shape[1]
        x = a if a.ndim == 2 and a.flags.c_contiguous else np.ascontiguousarray(a.reshape(-1, a.shape[-1]))
        w_nk = b.T if b.flags.f_contiguous else np.ascontiguousarray(b.T)
        rows = self.__dict__.get("_native_rows")
        if rows is None or len(rows[0]) != n:  # per output, made once (they depend on constants only)
            rows = self._native_rows = (_per_row(self.bq.zero_point, n, np.int32), _per_row(self.mult, n, np.int64),
                                        _per_row(self.shift, n, np.int64), self.aq.zp, self.yq.zp,
                                        self.yq.dtype == np.int8)
        w_zp, mult, shift, a_zp, y_zp, y_signed = rows
        args = (w_zp, None if bias is None else _per_row(bias, n, np.int32), mult, shift, y_zp, y_signed)
        if self.packed is not None and w_nk.shape == self._packed_shape and w_nk.dtype == self._packed_dtype:
            y = self.native.qgemm_packed(x, a_zp, self.packed, w_nk, *args)
        else:
            y = self.native.qgemm(x, a_zp, w_nk, *args)
        return y if a.ndim == 2 else y.reshape(*a.shape[:-1], n)


@register("QLinearMatMul")
class QLinearMatMul(_IntegerMatMul):
    # a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp
    inputs = (8, 8)
    const_inputs = (1, 2, 4, 5, 6, 7)
    input_types = (INT8, SCALE, INT8, INT8 + INT16, SCALE, INT8 + INT16, SCALE, INT8)
    input_sizes = {**dict.fromkeys((1, 2, 6, 7), Size()), 4: Size(of=3, axis=-1), 5: Size(of=3, axis=-1)}
    a_pos, b_pos, y_pos = 0, 3, 6

    def run(self, a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
        return self.product(a, b)


@register("QGemm")
class QGemm(_IntegerMatMul):
    # A, a_scale, a_zp, B, b_scale, b_zp, C (int32 bias), y_scale, y_zp
    inputs = (8, 9)  # y_scale is required: the runtime keeps integer ops integer
    const_inputs = (1, 2, 4, 5, 7, 8)
    input_types = (INT8, SCALE, INT8, INT8 + INT16, SCALE, INT8 + INT16, INT32, SCALE, INT8)
    input_ranks = {0: 2, 3: 2}
    input_sizes = {**dict.fromkeys((1, 2, 7, 8), Size()), **dict.fromkeys((4, 5), Size(of=3, axis=("transB", 1, 0))),
                   6: Size(of=3, axis=("transB", 1, 0), one_ok=False)}
    attributes = {"alpha": Float(), "beta": OneOf(1.0), "transA": OneOf(0), "transB": OneOf(0, 1)}
    a_pos, b_pos, y_pos = 0, 3, 7
    bias_input = 6

    def __init__(self, node, consts, **opts):
        if node.attrs.get("transA", 0):
            raise ValueError(f"node {node.name!r} (QGemm): transA=1 is not supported")
        super().__init__(node, consts, **opts)

    def run(self, a, a_scale, a_zp, b, b_scale, b_zp, c=None, y_scale=None, y_zp=None):
        return self.product(a, b.T if self.attr("transB", 0) else b, c)
