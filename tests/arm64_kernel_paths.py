"""Run by tests/test_arm64.py inside the arm64 userland (Debian's python3 and numpy under
qemu, the aarch64 kernel wheel on PYTHONPATH): every kernel path the emulated CPU offers
(scalar, neon, dotprod), forced in turn, against int64 numpy references written here — the
GEMM's accumulators, its requantised store (quant.py's Q31 rounding, restated in int64) and
a convolution. Needs numpy and edgetrain_kernels only. Prints one JSON line: the paths and
the number of arrays compared on each; exits 1 naming the first difference."""
import json
import sys

import numpy as np

import edgetrain_kernels as native

PATHS = native.available_paths()


def extremes(rng, shape, dtype):
    """Random values of `dtype` with its extremes at the front: two minima side by side (for
    int8, −128·−128 twice overflows a 16-bit pair sum), the maximum and its negation."""
    info = np.iinfo(dtype)
    v = rng.integers(info.min, info.max + 1, size=shape, dtype=np.int64).reshape(-1)
    v[: min(4, v.size)] = [info.min, info.min, info.max, -info.max if info.min < 0 else 0][: min(4, v.size)]
    return v.reshape(shape).astype(dtype)


def requantize(acc, mult, shift, y_zp, y_dtype):
    """quant.py's requantisation in int64: round(acc·m·2^−(31−shift)) half away from zero."""
    bits = (31 - shift).astype(np.int64)
    prod = acc.astype(np.int64) * mult.astype(np.int64)
    rounded = (prod + ((np.int64(1) << bits) >> 1) - (prod < 0)) >> bits
    info = np.iinfo(y_dtype)
    return np.clip(rounded + y_zp, info.min, info.max).astype(y_dtype)


def conv_reference(x, x_zp, w, w_zp, bias, pads):
    """Σ (x − x_zp)(w − w_zp) + bias for a unit-stride convolution, in int64."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64) - x_zp, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    wz = w.astype(np.int64) - w_zp[:, None, None, None]
    out = np.zeros((n, m, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,mc->nmhw", xp[:, :, i:i + oh, j:j + ow], wz[:, :, i, j])
    return out + bias[None, :, None, None], (oh, ow)


compared = {}


def same(path, got, expect, what):
    compared[path] = compared.get(path, 0) + 1
    if got.dtype != expect.dtype or not np.array_equal(got, expect):
        print(f"{what} on path {path}: differs from the int64 reference", file=sys.stderr)
        sys.exit(1)


# rows, k, n: K not a multiple of 4, 16 or 32 (the sdot tiles' 4 quads), N = 1, one row,
# rows beyond one 8-row tile
SHAPES = [(1, 1, 1), (7, 3, 1), (1, 400, 120), (9, 37, 17), (5, 1027, 33), (16, 64, 16), (3, 5, 70), (32, 120, 84)]
for path in PATHS:
    kernels = native.Kernels(path)
    assert kernels.path == path
    for rows, k, n in SHAPES:
        rng = np.random.default_rng([rows, k, n])
        for x_dtype, w_dtype in ((np.int8, np.int8), (np.uint8, np.int8), (np.int8, np.uint8)):
            x, w = extremes(rng, (rows, k), x_dtype), extremes(rng, (n, k), w_dtype)
            xi, wi = np.iinfo(x_dtype), np.iinfo(w_dtype)
            for x_zp in (xi.min, xi.max, 0):  # −128 and 127 for int8
                w_zp = rng.integers(wi.min, wi.max + 1, size=n).astype(np.int32)
                w_zp[0] = 0 if w_dtype == np.int8 else 128
                bias = rng.integers(-2**20, 2**20, size=n).astype(np.int32)
                acc = (x.astype(np.int64) - x_zp) @ (w.astype(np.int64) - w_zp[:, None]).T + bias
                what = f"{rows}×{k}×{n} x {np.dtype(x_dtype)} zp {x_zp}, w {np.dtype(w_dtype)}"
                same(path, kernels.qgemm(x, x_zp, w, w_zp, bias), acc.astype(np.int32), f"qgemm {what}")
                packed = kernels.pack_weights(w)
                same(path, kernels.qgemm_packed(x, x_zp, packed, w, w_zp, bias), acc.astype(np.int32), f"qgemm_packed {what}")
                mult = rng.integers(2**30, 2**31, size=n)
                shift = rng.integers(-12, 1, size=n)
                for y_dtype, y_zp in ((np.int8, -128), (np.int8, 127), (np.uint8, 0)):
                    expect = requantize(acc.astype(np.int32), mult, shift, y_zp, y_dtype)
                    got = kernels.qgemm(x, x_zp, w, w_zp, bias, mult, shift, y_zp, y_dtype == np.int8)
                    same(path, got, expect, f"qgemm requantised to {np.dtype(y_dtype)} zp {y_zp}, {what}")
                    got = kernels.qgemm_packed(x, x_zp, packed, w, w_zp, bias, mult, shift, y_zp, y_dtype == np.int8)
                    same(path, got, expect, f"qgemm_packed requantised to {np.dtype(y_dtype)} zp {y_zp}, {what}")

    # convolutions (im2col + GEMM + the requantising store), lenet5-like and odd channel counts
    for x_shape, w_shape, pads in (((2, 1, 12, 12), (6, 1, 5, 5), (2, 2, 2, 2)), ((1, 6, 9, 7), (16, 6, 3, 3), (0, 1, 1, 0)),
                                   ((1, 3, 5, 5), (1, 3, 1, 1), (0, 0, 0, 0))):
        rng = np.random.default_rng(list(x_shape) + list(w_shape))
        m = w_shape[0]
        x, w = extremes(rng, x_shape, np.int8), extremes(rng, w_shape, np.int8)
        for x_zp, y_zp in ((-128, 127), (127, -128)):
            w_zp = np.zeros(m, np.int32)
            bias = rng.integers(-5000, 5000, size=m).astype(np.int32)
            acc, out_hw = conv_reference(x, x_zp, w, w_zp, bias, pads)
            mult, shift = rng.integers(2**30, 2**31, size=m), rng.integers(-10, 1, size=m)
            expect = requantize(acc.astype(np.int32), mult[None, :, None, None], shift[None, :, None, None], y_zp, np.int8)
            got = kernels.qlinear_conv(x, x_zp, w, w_zp, bias, mult, shift, y_zp, True, [1, 1], [1, 1], list(pads),
                                       list(out_hw), 1)
            same(path, got, expect, f"qlinear_conv x {x_shape} w {w_shape} pads {pads} zp {x_zp}")

print(json.dumps({"paths": PATHS, "compared": compared}))
