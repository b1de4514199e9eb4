"""Conv (fp32) and QLinearConv (int8 in, int32 accumulate, fixed-point requant)."""
from __future__ import annotations

import numpy as np

from .. import quant
from . import Kernel, _size, register
from ._window import col2im_t, im2col_t, window_geometry
from .declare import FLOAT, INT8, INT32, SCALE, WINDOW, Int, Size


# im2col columns are built for a block of images at a time, holding at most about this many
# bytes, so a convolution's workspace does not grow with the batch.
COLS_BLOCK_BYTES = 1 << 18


def _conv(kernel, x, w, product, cols_dtype, out_dtype):
    """Grouped 2-D convolution via im2col over blocks of images.

    ``product(g, w2d, cols)`` turns group ``g``'s (Mg, KH·KW·Cg) weight and a
    block's (KH·KW·Cg, n·OH·OW) patch columns into that block's output rows
    (bias and requantisation included). Returns (N, M, OH, OW), written block
    by block, so no full-size temporary is made.
    """
    strides, dilations, pads, out_hw = _geometry(kernel, x, w)
    m, cg, kh, kw = w.shape
    group = kernel.attr("group", 1)
    if any(pads):  # pad once, not once per block
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        pads = [0, 0, 0, 0]
    mg, n = m // group, x.shape[0]
    w2d = [w[g * mg:(g + 1) * mg].transpose(0, 2, 3, 1).reshape(mg, -1).astype(cols_dtype) for g in range(group)]
    per_image = kh * kw * cg * out_hw[0] * out_hw[1] * np.dtype(cols_dtype).itemsize
    block = max(1, COLS_BLOCK_BYTES // per_image)
    y = np.empty((n, m, *out_hw), dtype=out_dtype)
    for n0 in range(0, n, block):
        xb = x[n0:n0 + block]
        for g in range(group):
            cols = im2col_t(xb[:, g * cg:(g + 1) * cg], (kh, kw), strides, dilations, pads, out_hw, cols_dtype)
            rows = product(g, w2d[g], cols).reshape(mg, len(xb), *out_hw)
            y[n0:n0 + block, g * mg:(g + 1) * mg] = rows.transpose(1, 0, 2, 3)
            del cols, rows  # before the next block's are built
    return y


def _geometry(kernel, x, w):
    """The window of ``kernel``'s convolution of ``x`` by ``w``: ``(strides, dilations, pads, out_hw)``."""
    where = kernel.node.name
    if x.ndim != 4:
        raise ValueError(f"{where}: expected a 4-D NCHW input, got shape {x.shape}")
    if x.shape[1] != w.shape[1] * kernel.attr("group", 1):
        raise ValueError(f"{where}: input has {x.shape[1]} channels, weight expects "
                         f"{w.shape[1] * kernel.attr('group', 1)}")
    return kernel.window(w.shape[2:], x.shape[2:])


# rust/kernels/src/qlinear.rs's PADDED_BLOCK_BYTES and TILE_BYTES: its padded input per block
# of images, and its packed columns per tile of output columns
NATIVE_PADDED_BLOCK_BYTES = 1 << 16
NATIVE_TILE_BYTES = 1 << 15


# rust/kernels/src/qlinear.rs's DIRECT_COLS: output columns per step of its direct convolution
NATIVE_DIRECT_COLS = 512


def _native_conv_workspace(x_shape, w_shape, group, strides, dilations, pads, out_hw, direct: bool) -> int:
    """What ``qlinear::conv`` allocates beyond the output: a block's padded input, one tile's
    packed columns and int32 product, the tile's output segments, a zero row, the packed
    weights; or, for its ``direct`` convolution, a block's channel-interleaved
    input, a step's int32 product, the padded planes and the reordered weights."""
    n, c, h, w = x_shape
    m, cg, kh, kw = w_shape
    (oh, ow), mg, quad_bytes = out_hw, m // group, 4 * -(-cg * kh * kw // 4)
    ph, pw = h + pads[0] + pads[2], w + pads[1] + pads[3]
    pitch = pw if strides[1] == 1 else ow
    block = min(max(1, NATIVE_PADDED_BLOCK_BYTES // (cg * ph * pw)), n)
    if direct:
        quads = -(-cg // 4) * kh * kw
        cols = -(-oh * pw // 16) * 16
        plane = cols + (kh - 1) * dilations[0] * pw + (kw - 1) * dilations[1]
        step = min(NATIVE_DIRECT_COLS, cols)
        return (block * quads // (kh * kw) * plane * 4 + 4 * mg * step + 5 * ph * pw + mg * quads * 4 + 8 * quads
                + 24 * (step // pw + 2))
    tile = min(max(64, NATIVE_TILE_BYTES // quad_bytes // 64 * 64), -(-block * oh * pitch // 16) * 16)
    segments = tile // pitch + 2  # output rows a tile touches
    return ((block * cg + 1) * ph * pw + quad_bytes * tile + 4 * mg * tile + 24 * segments
            + max(tile, pitch * strides[1]) + mg * quad_bytes)


def _conv_workspace(kernel: Kernel, shapes, integer: bool) -> int:
    """What :func:`_conv` and its ``product`` allocate beyond the output (memory model)."""
    node = kernel.node
    x_shape, w_shape = shapes[node.inputs[0]], shapes[node.inputs[kernel.weight_input]]
    m, cg, kh, kw = w_shape
    strides, dilations, pads, out_hw = window_geometry((kh, kw), node.attrs, x_shape[2:], node.name)
    if integer and kernel.native is not None:
        if kernel.native_strided(cg, strides, dilations):  # phase planes for a block of images, then direct
            (n, c, h, w), (sh, sw) = x_shape, strides
            c2, h2, w2 = c * sh * sw, -(-(h + pads[0] + pads[2]) // sh), -(-(w + pads[1] + pads[3]) // sw)
            block = min(max(1, NATIVE_PADDED_BLOCK_BYTES // (c2 * h2 * w2)), n)
            return block * c2 * h2 * w2 + _native_conv_workspace(
                (block, c2, h2, w2), (m, c2, -(-kh // sh), -(-kw // sw)), 1, (1, 1), (1, 1), (0, 0, 0, 0), out_hw, True)
        return _native_conv_workspace(x_shape, w_shape, kernel.attr("group", 1), strides, dilations, pads, out_hw,
                                      kernel.native_direct(cg, strides))
    per_image = kh * kw * cg * out_hw[0] * out_hw[1] * 4
    block = min(x_shape[0], max(1, COLS_BLOCK_BYTES // per_image))
    padded_hw = (x_shape[2] + pads[0] + pads[2]) * (x_shape[3] + pads[1] + pads[3])
    padded_all = x_shape[0] * x_shape[1] * padded_hw if any(pads) else 0  # the input padded once
    cols = per_image * block
    out_block = (m // kernel.attr("group", 1)) * block * out_hw[0] * out_hw[1]
    if integer:
        shifted = 2 * _size(x_shape) + 2 * padded_all  # x − zx as int16 (and padded), held throughout
        weights = (2 + 2 + 4) * _size(w_shape)     # int16 copy, reordered, working type
        im2col = cols  # one strided copy of the (already padded) input, no other temporary
        # the GEMM's float32 result and its int32 copy, then the int32 block being requantised
        gemm = cols + max(4 * out_block * (2 if kernel.float_gemm else 1),
                          4 * out_block + quant.requantize_workspace(out_block))
        return shifted + weights + max(im2col, gemm)
    im2col = cols
    gemm = cols + 4 * out_block * 2                 # the product and its bias-added copy
    return 4 * padded_all + 4 * _size(w_shape) + max(im2col, gemm)


@register("Conv")
class Conv(Kernel):
    inputs = (2, 3)
    input_types = (FLOAT, FLOAT, FLOAT)
    input_ranks = {0: 4, 1: 4, 2: 1}
    input_sizes = {2: Size(of=1, one_ok=False)}  # a bias per output channel
    attributes = {**WINDOW, "group": Int(lo=1)}
    weight_input, bias_input = 1, 2

    @classmethod
    def check_constants(cls, node, consts, shapes):
        """Groups split both the input channels (C = group·Cg) and the output channels."""
        x, w, group = shapes[0], shapes[cls.weight_input], node.attrs.get("group", 1)
        if x is not None and w is not None and len(x) == len(w) == 4 and None not in (x[1], w[0], w[1]) \
                and (x[1] != w[1] * group or w[0] % group):
            raise ValueError(f"node {node.name!r} ({node.op_type}): attribute 'group' is {group}, which does "
                             f"not split input channels {x[1]} and weight {list(w)}")

    def run(self, x, w, b=None):
        mg = w.shape[0] // self.attr("group", 1)

        def product(g, w2d, cols):
            out = w2d @ cols
            return out if b is None else out + b[g * mg:(g + 1) * mg, None]
        return _conv(self, x, w, product, x.dtype, x.dtype)

    def workspace(self, shapes, dtypes, out_bytes):
        return _conv_workspace(self, shapes, integer=False)

    def grad_workspace(self, shapes, need_input):
        """The im2col columns (for dW, and for dx), the output and input-sized temporaries."""
        w = shapes[self.node.inputs[1]]
        out, x = 4 * _size(shapes[self.node.outputs[0]]), 4 * _size(shapes[self.node.inputs[0]])
        cols = w[1] * w[2] * w[3] * out // w[0]
        return out + cols + 2 * x + (cols + 3 * x if need_input else 0)

    def grad(self, gy, inputs, y, needs):
        """Per group, with the im2col product Y = W·cols: dW = gY·colsᵀ, dx = col2im(Wᵀ·gY);
        db = gy summed over (N, OH, OW)."""
        x, w, b = (list(inputs) + [None])[:3]
        m, cg, kh, kw = w.shape
        group = self.attr("group", 1)
        mg = m // group
        window = ((kh, kw),) + tuple(window_geometry((kh, kw), self.node.attrs, x.shape[2:], self.node.name))
        g_all = gy.transpose(1, 0, 2, 3).reshape(m, -1)  # (M, N·OH·OW), as the forward product
        dx = np.empty_like(x) if needs[0] else None
        dw = np.empty_like(w) if needs[1] else None
        for g in range(group):
            gy_g, x_g = g_all[g * mg:(g + 1) * mg], x[:, g * cg:(g + 1) * cg]
            if needs[1]:
                cols = im2col_t(x_g, *window, x.dtype)
                dw[g * mg:(g + 1) * mg] = (gy_g @ cols.T).reshape(mg, kh, kw, cg).transpose(0, 3, 1, 2)
            if needs[0]:
                w2d = w[g * mg:(g + 1) * mg].transpose(0, 2, 3, 1).reshape(mg, -1)
                dx[:, g * cg:(g + 1) * cg] = col2im_t(w2d.T @ gy_g, x_g.shape, *window)
        grads = [dx, dw]
        if len(inputs) > 2:
            grads.append(gy.sum(axis=(0, 2, 3)) if b is not None and needs[2] else None)
        return grads


@register("QLinearConv")
class QLinearConv(Kernel):
    """y = requant(Σ (x − zx)(w − zw) + b) with ``M_c = s_x·s_w[c]/s_y`` in Q31 form."""
    inputs = (8, 9)
    const_inputs = (1, 2, 4, 5, 6, 7)
    input_types = (INT8, SCALE, INT8, INT8, SCALE, INT8, SCALE, INT8, INT32)
    input_ranks = {0: 4, 3: 4, 8: 1}
    input_sizes = {**dict.fromkeys((1, 2, 6, 7), Size()), 4: Size(of=3), 5: Size(of=3), 8: Size(of=3, one_ok=False)}
    attributes = Conv.attributes
    check_constants = classmethod(Conv.check_constants.__func__)  # the same group rule
    weight_input, bias_input, numeric = 3, 8, "int"

    def __init__(self, node, consts, **opts):
        super().__init__(node, consts, **opts)
        self.xq = quant.QParams.from_consts(consts[1], consts[2], f"{node.name} x")
        self.wq = quant.QParams.from_consts(consts[4], consts[5], f"{node.name} w")
        self.yq = quant.QParams.from_consts(consts[6], consts[7], f"{node.name} y")
        real = self.xq.scale.astype(np.float64) * self.wq.scale.astype(np.float64) / float(self.yq.scale)
        mult, shift = quant.quantize_multipliers(np.atleast_1d(real))
        channels = (mult.size if consts[3] is None else consts[3].shape[0], 1)  # one row per output channel
        self.mult, self.shift = np.broadcast_to(mult.reshape(-1, 1), channels), np.broadcast_to(shift.reshape(-1, 1), channels)
        # what the native call takes per output channel, made once (they depend on constants only)
        m = channels[0]
        self._native_rows = (_per_row(self.wq.zero_point, m, np.int32), _per_row(self.mult, m, np.int64),
                             _per_row(self.shift, m, np.int64))
        self._x_zp, self._y_zp, self._y_signed = self.xq.zp, self.yq.zp, self.yq.dtype == np.int8
        self._group = self.attr("group", 1)
        self._native_calls = {}  # (x shape, w shape) → what _run_native passes besides the tensors
        # the native kernels keep the constant weight packed, made here once (the layer repacks
        # when training changes the weight's bytes), with every other constant of the call
        w = consts[3]
        self._layer, self._layer_windows, self._pool = None, set(), None
        if self.native is not None and w is not None and w.ndim == 4 and w.shape[0] == m:
            self._layer = self.native.conv_layer(np.ascontiguousarray(w), *self._native_rows, self._x_zp, self._y_zp,
                                                 self._y_signed, self._group, list(self.attr("strides", (1, 1))))
            self._layer_w = (w.shape, w.dtype)

    def run(self, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b=None):
        if self.native is not None:
            return self._run_native(x, w, b)
        xs = x.astype(np.int16)
        xs -= np.int16(self.xq.zp)
        ws = w.astype(np.int16) - self.wq.zero_point.reshape(-1, 1, 1, 1).astype(np.int16)  # reordered once in _conv
        mg = w.shape[0] // self.attr("group", 1)
        cols_dtype = np.float32 if self.float_gemm else np.int32

        def product(g, w2d, cols):  # int32 accumulator of one block, requantised at once
            rows = slice(g * mg, (g + 1) * mg)
            acc = quant.int_matmul(w2d, cols, self.float_gemm)
            if b is not None:
                acc += b[rows, None]
            return quant.requantize(acc, self.mult[rows], self.shift[rows], self.yq)
        return _conv(self, xs, ws, product, cols_dtype, self.yq.dtype)

    def then(self, nxt):
        """With the native kernels, a MaxPool after this convolution runs in the same call
        (``ConvLayer.run(..., pooled=True)``): the convolution's output is never a numpy array."""
        from .pool import MaxPool
        if self._layer is None or type(nxt) is not MaxPool or nxt.native is None or nxt.attr("channels_last", 0):
            return None
        self._pool = nxt
        self._layer_windows.clear()  # added again with the pool's window

        def run(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b=None):
            return self._run_native(x, w, b, pooled=True)
        return run

    def _run_native(self, x, w, b, pooled=False):
        """The same arithmetic in the native kernels: im2col, GEMM, bias and requantisation in
        one call; ``pooled``: and the MaxPool of ``then`` on the result."""
        layer = self._layer
        if layer is not None and (w.shape, w.dtype) == self._layer_w:  # the weight packed at load
            if x.shape not in self._layer_windows:
                geometry = _geometry(self, x, w)
                pool = self._pool
                kernel = None if pool is None else pool.attr("kernel_shape")
                layer.add_window(x.shape[2:], *geometry, None if pool is None else (kernel, *pool.window(kernel, geometry[3])))
                self._layer_windows.add(x.shape)
            if b is not None and not (b.dtype == np.int32 and b.flags.c_contiguous):
                b = _per_row(b, w.shape[0], np.int32)
            return layer.run(x if x.flags.c_contiguous else np.ascontiguousarray(x),
                             w if w.flags.c_contiguous else np.ascontiguousarray(w), b, pooled)
        y = self._run_native_call(x, w, b)
        return self._pool.run(y) if pooled else y

    def _run_native_call(self, x, w, b):
        """``qlinear_conv`` with every argument passed (a weight of another shape than at load)."""
        key = (x.shape, w.shape)
        call = self._native_calls.get(key)
        if call is None:  # the shape-dependent arguments, checked and made once per pair of shapes
            m = w.shape[0]
            rows = self._native_rows
            if m != len(rows[0]):  # a weight of another shape than at load (per-tensor parameters)
                rows = tuple(_per_row(v, m, t) for v, t in zip(rows, (np.int32, np.int64, np.int64)))
            call = self._native_calls[key] = (m, rows, _geometry(self, x, w))
        m, (w_zp, mult, shift), geometry = call
        return self.native.qlinear_conv(
            x, self._x_zp, w if w.flags.c_contiguous else np.ascontiguousarray(w), w_zp,
            None if b is None else _per_row(b, m, np.int32), mult, shift, self._y_zp, self._y_signed, *geometry,
            self._group)

    def native_direct(self, cg: int, strides) -> bool:
        """Whether the native kernels run this convolution directly (no im2col): on the VNNI
        path, unit strides, at least 4 channels per group, weights without a zero-point."""
        zero = 0 if self.wq.dtype == np.int8 else 128
        return (self.native.path == "avx512-vnni" and tuple(strides) == (1, 1) and cg >= 4
                and bool(np.all(self.wq.zero_point == zero)))

    def native_strided(self, cg: int, strides, dilations) -> bool:
        """Whether the native kernels run this strided convolution as a unit-stride direct one
        on phase planes (``qlinear::conv_strided``): on the VNNI path, one group, strides above
        1, no dilation, 1–3 channels (at least 4 once the strides fold into them), weights
        without a zero-point."""
        zero = 0 if self.wq.dtype == np.int8 else 128
        return (self.native.path == "avx512-vnni" and self._group == 1 and tuple(strides) != (1, 1)
                and tuple(dilations) == (1, 1) and cg < 4 and cg * strides[0] * strides[1] >= 4
                and bool(np.all(self.wq.zero_point == zero)))

    def workspace(self, shapes, dtypes, out_bytes):
        return _conv_workspace(self, shapes, integer=True)


def _per_row(v, rows: int, dtype) -> np.ndarray:
    """A per-tensor or per-channel parameter as one contiguous value per output row."""
    if type(v) is np.ndarray and v.dtype == dtype and v.shape == (rows,) and v.flags.c_contiguous:
        return v  # already so (a bias, say): no broadcast and copy on every call
    return np.ascontiguousarray(np.broadcast_to(np.reshape(v, -1), (rows,)), dtype=dtype)
