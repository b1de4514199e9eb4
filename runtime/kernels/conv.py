"""Conv (fp32) and QLinearConv (int8 in, int32 accumulate, fixed-point requant)."""
from __future__ import annotations

import numpy as np

from .. import quant
from . import Kernel, Then, _size, register
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


def _float_layout(x_shape, w_shape, group, strides, pads, out_hw, bias: bool, itemsize: int = 4):
    """How :func:`_conv_float` lays out its work: ``(mode, length, k, block)`` — where the
    columns come from ("same": the flattened plane, padded above and below only, when the
    output is as wide as the input; "flat": the flattened padded plane; "gather": the strided
    grid), the columns per image, the rows of the patch part of the columns and the images
    per block."""
    (n, _, h, wd), (_, cg, kh, kw) = x_shape, w_shape
    mode = "gather" if tuple(strides) != (1, 1) else "same" if out_hw[1] == wd else "flat"
    wp = wd + pads[1] + pads[3]
    length = (out_hw[0] - 1) * wp + out_hw[1] if mode == "flat" else out_hw[0] * out_hw[1]
    k = kh * kw * cg
    block = min(n, max(1, COLS_BLOCK_BYTES // ((k + bias) * length * itemsize)))
    return mode, length, k, block


def _conv_float(kernel, x, w, b, relu: bool = False, pool: tuple | None = None, residual=None,
                mean: bool = False):
    """Float 2-D convolution, im2col per image, written straight into the NCHW output.

    Blocks of images whose columns fit in ``COLS_BLOCK_BYTES``; each image's columns are
    (KH·KW·Cg [+1], L) and one batched product ``W · cols`` gives its (Mg, L) rows, so no
    output transpose is needed. The bias rides in the product (a row of ones under the
    columns, the bias as the weight's last column). With unit strides the columns are taken
    on the padded image's flattened plane: position ``q = oh·Wp + ow`` for offset (i, j) reads
    ``q + i·dh·Wp + j·dw``, so each column row is one contiguous run of L = (OH−1)·Wp + OW
    values (fast to copy), at the price of the (KW−1)·dw positions per row that wrap into the
    next row; the product's rows are then cropped into the output. When the output is as wide
    as the input ("same" padding across), the plane is padded above and below only and read at
    pitch W: no position is wasted and the product lands in the output as it is, and the reads
    that wrap into the neighbouring row (where the padding would be) are zeroed in the columns.
    Other strides gather the (OH, OW) grid and, unless something follows, write the product
    straight into the output.

    ``residual`` (added, an array of the output's shape), ``relu`` and ``pool`` (a max-pool
    window ``(ph, pw)`` that tiles the output with stride ``(ph, pw)``), in this order, are
    applied to each block's rows as they are stored (:class:`ConvChain`): the same values as
    the Add, Relu and MaxPool kernels give on the whole output (max and relu are exact and
    commute; a float sum does not depend on its operands' order), without making that output;
    ``mean``: then each image's channels are averaged over the plane, block by block, as
    GlobalAveragePool does (the same per-channel reduction), giving (N, M, 1, 1).
    """
    strides, dilations, pads, (oh, ow) = _geometry(kernel, x, w)
    m, cg, kh, kw = w.shape
    group = kernel.attr("group", 1)
    mg, n, h, wd = m // group, x.shape[0], x.shape[2], x.shape[3]
    hp, wp = h + pads[0] + pads[2], wd + pads[1] + pads[3]
    extra = int(b is not None)
    mode, length, k, block = _float_layout(x.shape, w.shape, group, strides, pads, (oh, ow), bool(extra),
                                           x.itemsize)
    flat, same = mode == "flat", mode == "same"
    w2d = []
    for g in range(group):
        wg = w[g * mg:(g + 1) * mg].transpose(0, 2, 3, 1).reshape(mg, k)
        w2d.append(np.concatenate([wg, b[g * mg:(g + 1) * mg, None]], axis=1) if extra else wg)
    padded = any(pads) or not x.flags.c_contiguous
    (sh, sw), (dh, dw), it = strides, dilations, x.itemsize
    head = 0
    if same and padded:  # a block's images with rows of zeros above and below, after pads[1] zeros
        head, wp = pads[1], wd  # (reads before the first image's start or after the last image's end)
        flat_buf = np.zeros(head + block * x.shape[1] * hp * wd + (kw - 1) * dw, dtype=x.dtype)
        src = _strided(flat_buf, (block, x.shape[1], hp, wd), (x.shape[1] * hp * wd * it, hp * wd * it, wd * it, it),
                       head * it)
        inner = src[:, :, pads[0]:pads[0] + h]
    elif padded:  # one block's padded images; the border stays zero, the interior is rewritten
        src = np.zeros((block, x.shape[1], hp, wp), dtype=x.dtype)
        inner = src[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd]
    else:
        src = x
    cols_buf = np.empty((block, k + extra, length), dtype=x.dtype)
    if extra:
        cols_buf[:, k] = 1
    sn, sc, sy, sx = src.strides
    if flat or same:
        shape, steps = (kh, kw, cg, length), (sy * dh, sx * dw, sc, sx)
    else:
        shape, steps = (kh, kw, cg, oh, ow), (sy * dh, sx * dw, sc, sy * sh, sx * sw)
    direct = not flat and pool is None and group == 1 and not mean  # the product lands in the output as it is
    wrapped = []  # "same": per kernel column j, the output columns whose read falls in the side padding
    for j in range(kw if same else 0):
        shift = j * dw - pads[1]  # output column ow reads input column ow + shift
        if shift < 0:
            wrapped.append((j, slice(0, min(ow, -shift))))
        elif shift > 0:
            wrapped.append((j, slice(max(0, wd - shift), ow)))
    summed = residual is not None and pool is not None  # the residual goes into the rows, then pooled
    out_hw = (oh, ow) if pool is None else (oh // pool[0], ow // pool[1])
    y = np.empty((n, m) + ((1, 1) if mean else out_hw), dtype=x.dtype)
    if mean:  # a block's output, averaged as it is done
        whole = np.empty((block, mg) + out_hw, dtype=x.dtype)
    if not direct:  # the rows' (pooled) output positions: views of the rows, one per pool offset
        rows_buf = np.empty((block, mg, length), dtype=x.dtype)
        pitch, (ph, pw) = wp if flat else ow, pool or (1, 1)
        stored = [_strided(rows_buf, (block, mg) + out_hw, (mg * length * it, length * it, ph * pitch * it, pw * it),
                           (i * pitch + j) * it) for i in range(ph) for j in range(pw)]
        if summed:  # every output position of the rows, before pooling
            positions = _strided(rows_buf, (block, mg, oh, ow), (mg * length * it, length * it, pitch * it, it))
    # every block's patches and columns as views made once (a view costs more than a block's copy)
    if same and padded:  # offsets in flat_buf: image n's plane starts at head + n·C·Hp·W
        base, start = flat_buf, head - pads[1]
    else:
        base, start = src, 0
    patches = [_strided(base, (src.shape[0],) + shape, (sn,) + steps, start * it + g * cg * sc) for g in range(group)]
    cols_grid = cols_buf[:, :k].reshape(block, kh, kw, cg, oh, ow) if wrapped else None
    cols_in = cols_buf[:, :k].reshape((block,) + shape)
    zero = np.zeros((), dtype=x.dtype)
    for n0 in range(0, n, block):
        nb = min(block, n - n0)
        if padded:
            inner[:nb] = x[n0:n0 + nb]
        at = slice(0, nb) if padded else slice(n0, n0 + nb)
        for g in range(group):
            np.copyto(cols_in[:nb], patches[g][at])
            for j, cols_at in wrapped:
                cols_grid[:nb, :, j, :, :, cols_at] = 0
            yb = whole[:nb] if mean else y[n0:n0 + nb, g * mg:(g + 1) * mg]
            rb = None if residual is None else residual[n0:n0 + nb, g * mg:(g + 1) * mg]
            if direct:
                np.matmul(w2d[g], cols_buf[:nb], out=yb.reshape(nb, mg, length))
                if rb is not None:
                    yb += rb
            else:
                np.matmul(w2d[g], cols_buf[:nb], out=rows_buf[:nb])
                if summed:
                    positions[:nb] += rb
                if len(stored) == 1 and rb is None and relu:  # the crop, relu'd on the way
                    np.maximum(stored[0][:nb], zero, out=yb)
                elif len(stored) == 1 and rb is None:
                    yb[...] = stored[0][:nb]
                elif len(stored) == 1:
                    np.add(stored[0][:nb], rb, out=yb)
                else:
                    np.maximum(stored[0][:nb], stored[1][:nb], out=yb)
                    for v in stored[2:]:
                        np.maximum(yb, v[:nb], out=yb)
            if relu and (direct or len(stored) > 1 or rb is not None):
                np.maximum(yb, zero, out=yb)
            if mean:
                y[n0:n0 + nb, g * mg:(g + 1) * mg] = yb.mean(axis=(2, 3), keepdims=True, dtype=np.float32)
    return y


def _strided(base: np.ndarray, shape, strides, offset: int = 0) -> np.ndarray:
    """A view of the C-contiguous ``base`` (numpy checks it stays inside); a tenth of the cost
    of ``as_strided``, which a small convolution felt."""
    return np.ndarray(shape, base.dtype, base, offset, strides)


class ConvChain:
    """A float Conv and what alone reads its output — a residual Add, then a Relu and/or an
    exactly tiling MaxPool — run as one step of ``Model.execute`` (:func:`chains`; not when a
    caller keeps a tensor inside the chain, as backprop does its tail's inputs): each block's
    rows get the residual added, are relu'd and pooled as they are stored, so neither the
    convolution's output nor the sum is made."""
    returns_view = False

    def __init__(self, conv: "Conv", after: list):
        self.conv, self.after, self.node = conv, after, conv.node
        self.add = next((k for k in after if k.node.op_type == "Add"), None)
        self.relu = any(k.node.op_type == "Relu" for k in after)
        self.pool = next((k for k in after if k.node.op_type == "MaxPool"), None)
        self.mean = any(k.node.op_type == "GlobalAveragePool" for k in after)

    def _window(self, x_shape, w_shape):
        """The pool window if it tiles the convolution's output exactly (else None: pooled apart)."""
        oh, ow = self.conv.window(w_shape[2:], x_shape[2:])[3]
        kernel = tuple(self.pool.attr("kernel_shape"))
        p_strides, p_dil, p_pads, p_out = self.pool.window(kernel, (oh, ow))
        if tuple(p_strides) == kernel and tuple(p_dil) == (1, 1) and not any(p_pads) \
                and tuple(p_out) == (oh // kernel[0], ow // kernel[1]):
            return kernel
        return None

    def _fused(self, x, w, residual) -> tuple[bool, tuple | None]:
        """Whether the store can do it all, and the pool window it applies."""
        window = None if self.pool is None else self._window(x.shape, w.shape)
        if (self.pool is not None and window is None) or x.ndim != 4 or w.ndim != 4 \
                or (self.mean and x.dtype != np.float32):
            return False, None
        if residual is not None:
            out = (x.shape[0], w.shape[0]) + tuple(self.conv.window(w.shape[2:], x.shape[2:])[3])
            if residual.shape != out or residual.dtype != x.dtype:  # broadcasting: the Add kernel does it
                return False, None
        return True, window

    def run(self, x, w, b=None, residual=None):
        fused, window = self._fused(x, w, residual)
        if fused:
            return _conv_float(self.conv, x, w, b, relu=self.relu, pool=window, residual=residual, mean=self.mean)
        y = self.conv.run(x, w, b)
        for k in self.after:  # one by one, in graph order, the Add's operands in theirs
            y = (k.run(*(y if i == self.conv.node.outputs[0] else residual for i in k.node.inputs))
                 if k is self.add else k.run(y))
        return y

    def workspace(self, shapes, dtypes, out_bytes):
        node = self.conv.node
        x_shape, w_shape = shapes[node.inputs[0]], shapes[node.inputs[1]]
        window = None if self.pool is None else self._window(x_shape, w_shape)
        ws = _conv_workspace(self.conv, shapes, integer=False, pooled=window is not None or self.mean)
        if self.mean:  # a block's output before it is averaged
            group, (strides, _, pads, out_hw) = self.conv.attr("group", 1), self.conv.window(w_shape[2:], x_shape[2:])
            block = _float_layout(x_shape, w_shape, group, strides, pads, out_hw,
                                  len(node.inputs) > 2 and bool(node.inputs[2]))[3]
            ws += 4 * block * (w_shape[0] // group) * _size(out_hw)
        if self.pool is not None and window is None:  # the convolution's output, then pooled apart
            conv_bytes = 4 * _size((x_shape[0], w_shape[0]) + tuple(self.conv.window(w_shape[2:], x_shape[2:])[3]))
            ws = max(ws, conv_bytes + conv_bytes)  # the pool's copy of its first slice is output-sized
        return ws


def chains(kernels, outputs) -> list:
    """``Model.execute``'s steps: ``kernels`` with each float Conv grouped into a
    :class:`ConvChain` with the nodes after it that alone read the previous one's output (not
    a graph output, one of ``outputs``): an Add of another tensor first, then a Relu and a
    MaxPool in either order, or a Relu and a GlobalAveragePool; and any other node with the
    next one, when that one alone reads its output and :meth:`Kernel.then` runs the pair in
    one call (:class:`Then`: a native integer convolution and its MaxPool). Returns
    ``(kernel or chain, the kernels it stands for, its input names)``."""
    from .activation import Relu
    from .add import Add
    from .pool import GlobalAveragePool, MaxPool
    readers = {}
    for kn in kernels:
        for i in kn.node.inputs:
            readers[i] = readers.get(i, 0) + 1
    out, i = [], 0
    while i < len(kernels):
        kn = kernels[i]
        taken, inputs = [kn], list(kn.node.inputs)
        if type(kn) is Conv:
            inputs += [""] * (3 - len(inputs))  # the bias's place, then the residual's
            for cls in (Add, Relu, MaxPool, Relu, GlobalAveragePool):
                nxt = kernels[i + len(taken)] if i + len(taken) < len(kernels) else None
                prev = taken[-1].node.outputs[0]
                if nxt is None or type(nxt) is not cls or prev not in nxt.node.inputs or readers.get(prev) != 1 \
                        or prev in outputs or any(type(t) is cls for t in taken[1:]) \
                        or (cls is GlobalAveragePool and any(type(t) is MaxPool for t in taken)):
                    continue
                if cls is Add:
                    other = [t for t in nxt.node.inputs if t != prev]
                    if len(other) != 1 or len(nxt.node.inputs) != 2:
                        continue
                    inputs.append(other[0])
                elif nxt.node.inputs[0] != prev or (cls is MaxPool and nxt.attr("storage_order", 0)):
                    continue
                taken.append(nxt)
            if len(taken) > 1:
                out.append((ConvChain(kn, taken[1:]), taken, inputs))
                i += len(taken)
                continue
        nxt = kernels[i + 1] if i + 1 < len(kernels) else None
        prev = kn.node.outputs[0]
        if nxt is not None and nxt.node.inputs == [prev] and readers.get(prev) == 1 and prev not in outputs:
            run = kn.then(nxt)
            if run is not None:
                out.append((Then(kn, nxt, run), [kn, nxt], kn.node.inputs))
                i += 2
                continue
        out.append((kn, taken, kn.node.inputs))
        i += 1
    return out


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


def _conv_workspace(kernel: Kernel, shapes, integer: bool, pooled: bool = False) -> int:
    """What :func:`_conv` and its ``product`` (integer) or :func:`_conv_float` allocate beyond
    the output (memory model); ``pooled``: a :class:`ConvChain` pools as it stores."""
    node = kernel.node
    x_shape, w_shape = shapes[node.inputs[0]], shapes[node.inputs[kernel.weight_input]]
    m, cg, kh, kw = w_shape
    strides, dilations, pads, out_hw = window_geometry((kh, kw), node.attrs, x_shape[2:], node.name)
    if not integer:
        group, bias = kernel.attr("group", 1), int(len(node.inputs) > 2 and bool(node.inputs[2]))
        mode, length, k, block = _float_layout(x_shape, w_shape, group, strides, pads, out_hw, bool(bias))
        wide = x_shape[3] if mode == "same" else x_shape[3] + pads[1] + pads[3]
        padded = block * x_shape[1] * (x_shape[2] + pads[0] + pads[2]) * wide if any(pads) else 0
        rows = 0 if (mode != "flat" and not pooled and group == 1) else block * (m // group) * length
        # the reordered weights (with the bias column), a block's padded images, columns and rows
        return 4 * (m * (k + bias) + padded + block * (k + bias) * length + rows)
    if kernel.native is not None:
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
    shifted = 2 * _size(x_shape) + 2 * padded_all  # x − zx as int16 (and padded), held throughout
    weights = (2 + 2 + 4) * _size(w_shape)     # int16 copy, reordered, working type
    im2col = cols  # one strided copy of the (already padded) input, no other temporary
    # the GEMM's float32 result and its int32 copy, then the int32 block being requantised
    gemm = cols + max(4 * out_block * (2 if kernel.float_gemm else 1),
                      4 * out_block + quant.requantize_workspace(out_block))
    return shifted + weights + max(im2col, gemm)


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
        return _conv_float(self, x, w, b)

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
