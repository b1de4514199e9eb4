"""Sliding-window geometry and primitives shared by Conv and the pools (2-D, NCHW).

Windows are walked one kernel offset at a time: for offset (i, j) the input
values every output position sees form one strided slice of the padded input.
A pool is a running max/sum over those KH·KW slices and im2col stacks them;
both touch memory in large contiguous blocks, which numpy does fast.
"""
from __future__ import annotations

import math

import numpy as np


def window_geometry(kernel, attrs, in_hw, where: str):
    """Resolve ONNX window attributes to ``(strides, dilations, pads, out_hw)``.

    ``pads`` is ``(top, left, bottom, right)``; for ``ceil_mode`` the extra
    bottom/right padding needed by the last window is included in it.
    """
    if len(kernel) != 2:
        raise ValueError(f"{where}: only 2-D windows are supported, kernel_shape={list(kernel)}")
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    ceil_mode = attrs.get("ceil_mode", 0)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            out = math.ceil(in_hw[i] / strides[i])
            total = max(0, (out - 1) * strides[i] + span[i] - in_hw[i])
            small, large = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    else:
        raise ValueError(f"{where}: unknown auto_pad {auto_pad!r}")
    out_hw = []
    for i in range(2):
        room = in_hw[i] + pads[i] + pads[i + 2] - span[i]
        if room < 0:
            raise ValueError(f"{where}: window {list(kernel)} larger than padded input {list(in_hw)}")
        out = (math.ceil if ceil_mode else math.floor)(room / strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= in_hw[i] + pads[i]:
            out -= 1  # the last window must start inside the input or the left pad
        pads[i + 2] += max(0, (out - 1) * strides[i] + span[i] - (in_hw[i] + pads[i] + pads[i + 2]))
        out_hw.append(out)
    return strides, dilations, pads, out_hw


def _offset_slices(kernel, strides, dilations, out_hw):
    """For each kernel offset (row-major), the (rows, cols) slices of the padded
    input that the output positions see at that offset."""
    (oh, ow), (sh, sw), (dh, dw) = out_hw, strides, dilations
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield (slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
                   slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))


def window_slices(x: np.ndarray, kernel, strides, dilations, pads, out_hw, pad_value):
    """Yield, for each kernel offset (row-major), the (…, OH, OW) slice of padded ``x``
    that the output positions see at that offset. Works on any leading axes."""
    if any(pads):
        widths = [(0, 0)] * (x.ndim - 2) + [(pads[0], pads[2]), (pads[1], pads[3])]
        x = np.pad(x, widths, constant_values=pad_value)
    for rows, cols in _offset_slices(kernel, strides, dilations, out_hw):
        yield x[..., rows, cols]


def window_scatter(parts, x_shape, kernel, strides, dilations, pads, out_hw, dtype) -> np.ndarray:
    """Adjoint of :func:`window_slices`: add each offset's (…, OH, OW) part back where
    that slice came from, into zeros of ``x_shape``; what lands on padding is dropped."""
    h, w = x_shape[-2:]
    out = np.zeros(tuple(x_shape[:-2]) + (pads[0] + h + pads[2], pads[1] + w + pads[3]), dtype=dtype)
    for part, (rows, cols) in zip(parts, _offset_slices(kernel, strides, dilations, out_hw)):
        out[..., rows, cols] += part  # one offset's slice never repeats a position
    return out[..., pads[0]:pads[0] + h, pads[1]:pads[1] + w]


def window_reduce(x, kernel, strides, dilations, pads, out_hw, pad_value, ufunc, dtype=None):
    """Running ``ufunc`` (np.maximum, np.add) over the windows: (N, C, OH, OW)."""
    out = None
    for s in window_slices(x, kernel, strides, dilations, pads, out_hw, pad_value):
        if out is None:
            out = s.astype(dtype or s.dtype, copy=True)
        else:
            ufunc(out, s, out=out)
    return out


def im2col_t(x: np.ndarray, kernel, strides, dilations, pads, out_hw, dtype) -> np.ndarray:
    """Patches as columns: (KH·KW·C, N·OH·OW), rows ordered (kh, kw, c).

    Pair it with the weight reordered to (M, KH, KW, C); zero padding.
    """
    n, c = x.shape[:2]
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    # every patch at once: a (KH, KW, C, N, OH, OW) view of x, copied in one call (a copy per
    # kernel offset costs a Python round trip each, most of a small block's time)
    (sn, sc, sy, sx), (sh, sw), (dh, dw) = x.strides, strides, dilations
    view = np.lib.stride_tricks.as_strided(x, (kernel[0], kernel[1], c, n) + tuple(out_hw),
                                           (sy * dh, sx * dw, sc, sn, sy * sh, sx * sw), writeable=False)
    cols = np.empty(view.shape, dtype=dtype)
    np.copyto(cols, view, casting="unsafe")
    return cols.reshape(kernel[0] * kernel[1] * c, -1)


def col2im_t(cols: np.ndarray, x_shape, kernel, strides, dilations, pads, out_hw) -> np.ndarray:
    """Adjoint of :func:`im2col_t`: (KH·KW·C, N·OH·OW) columns, rows ordered
    (kh, kw, c), summed back into an (N, C, H, W) array (overlaps add up)."""
    n, c = x_shape[:2]
    parts = cols.reshape((kernel[0] * kernel[1], c, n) + tuple(out_hw))
    xc = window_scatter(parts, (c, n) + tuple(x_shape[2:]), kernel, strides, dilations, pads,
                        out_hw, cols.dtype)
    return np.ascontiguousarray(xc.transpose(1, 0, 2, 3))
