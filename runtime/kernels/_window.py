"""Sliding-window geometry shared by Conv and the pools (2-D, NCHW)."""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


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
            raise ValueError(f"{where}: window {kernel} larger than padded input {list(in_hw)}")
        out = (math.ceil if ceil_mode else math.floor)(room / strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= in_hw[i] + pads[i]:
            out -= 1  # the last window must start inside the input or the left pad
        pads[i + 2] += max(0, (out - 1) * strides[i] + span[i] - (in_hw[i] + pads[i] + pads[i + 2]))
        out_hw.append(out)
    return strides, dilations, pads, out_hw


def windows(x: np.ndarray, kernel, strides, dilations, pads, pad_value) -> np.ndarray:
    """View of ``x`` (N, C, H, W) as windows (N, C, OH, OW, KH, KW) after padding."""
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                   constant_values=pad_value)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = sliding_window_view(x, span, axis=(2, 3))
    return view[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]


def im2col(x: np.ndarray, kernel, strides, dilations, pads, pad_value=0) -> np.ndarray:
    """Patches of ``x`` as rows: (N·OH·OW, C·KH·KW), in the weight's (C, KH, KW) order."""
    n, c = x.shape[:2]
    win = windows(x, kernel, strides, dilations, pads, pad_value)
    oh, ow = win.shape[2:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kernel[0] * kernel[1])
