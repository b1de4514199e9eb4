"""GEMM micro-benchmark: lenet5's integer GEMM shapes, our native kernels against
onnxruntime's ``MatMulInteger`` (u8 × s8, weights an initializer so it packs them once)
and numpy's float32 BLAS, one thread, all in one process, interleaved.

Each shape is ``(rows, k, n)``: ``x (rows × k) · wᵀ`` with ``w (n × k)`` int8. The fully
connected layers (rows = batch) run ours as ``Kernels(path).qgemm_packed`` (weights packed
once, as the runtime does at load, and compared with the weight array at each call) returning
the int32 accumulators against ``MatMulInteger``; the convolutions (rows = batch·pixels, k = the
patch, n = output channels) run as the whole layer — ours ``qlinear_conv`` (im2col,
GEMM and requantisation to int8) against onnxruntime's ``ConvInteger`` (im2col and
GEMM to int32), so ours does more. numpy's float32 BLAS runs the bare GEMM of each shape
as a yardstick. Every integer result is checked first (int64 numpy for the GEMMs, the
int32 ConvInteger accumulators requantised by ``quant.requantize`` for the convolutions).
Times are medians over ``--repeat`` runs.

    OPENBLAS_NUM_THREADS=1 python bench/gemm.py [--batch 64] [--repeat 200] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def shapes(batch: int) -> dict:
    return {"conv1": (batch * 784, 25, 6), "conv2": (batch * 100, 150, 16),
            "fc1": (batch, 400, 120), "fc2": (batch, 120, 84), "fc3": (batch, 84, 10)}


CONVS = {"conv1": ((1, 28, 28), (6, 1, 5, 5), [2, 2, 2, 2]), "conv2": ((6, 14, 14), (16, 6, 5, 5), [0, 0, 0, 0])}


def ort_integer(op: str, w: np.ndarray, x_shape, **attrs):
    """An onnxruntime session of ``MatMulInteger`` / ``ConvInteger``: u8 input with zero-point
    128 (a flipped int8), the s8 weight an initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "w", "a_zp"], ["y"], **attrs)], "integer",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "a_zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda a: sess.run(None, {"a": a})[0]


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import edgetrain_kernels as native
    from edgetrain import quant
    rng = np.random.default_rng(0)
    rows_out = []
    for name, (rows, k, n) in shapes(args.batch).items():
        w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
        flip = lambda v: (v.astype(np.int16) + 128).astype(np.uint8)  # noqa: E731  int8 → u8, zero-point 128
        if name in CONVS:
            (c, h, wd), w_shape, pads = CONVS[name]
            x = rng.integers(-128, 128, size=(args.batch, c, h, wd), dtype=np.int8)
            w4 = w.reshape(w_shape)
            mult, shift = quant.quantize_multiplier(2.0 ** -10)
            ort = ort_integer("ConvInteger", w4, [None, c, h, wd], pads=pads)
            acc = ort(flip(x))
            yq = quant.QParams.from_consts(np.float32(1), np.int8(0), "y")
            expect = quant.requantize(acc, np.array([mult]), np.array([shift]), yq)
            out_hw = list(acc.shape[2:])
            peers = {f"native-{p}": (lambda kern=native.Kernels(p): kern.qlinear_conv(
                x, 0, w4, np.zeros(n, np.int32), None, np.full(n, mult), np.full(n, shift), 0, True,
                [1, 1], [1, 1], pads, out_hw, 1)) for p in native.available_paths()}
            peers["ort-Integer-u8s8"] = lambda: ort(flip(x))
            checks = {p: expect for p in peers}
            checks["ort-Integer-u8s8"] = acc
        else:
            x = rng.integers(-128, 128, size=(rows, k), dtype=np.int8)
            zeros = np.zeros(n, np.int32)
            # weights packed once, as the runtime packs them at load (each call still checks them)
            peers = {f"native-{p}": (lambda kern=native.Kernels(p), packed=native.Kernels(p).pack_weights(w):
                                     kern.qgemm_packed(x, 0, packed, w, zeros))
                     for p in native.available_paths()}
            ort = ort_integer("MatMulInteger", np.ascontiguousarray(w.T), [None, k])
            a_u8 = flip(x)
            peers["ort-Integer-u8s8"] = lambda: ort(a_u8)
            checks = dict.fromkeys(peers, x.astype(np.int64) @ w.astype(np.int64).T)
        xf = rng.integers(-128, 128, size=(rows, k)).astype(np.float32)
        wf = np.ascontiguousarray(w.T.astype(np.float32))
        peers["numpy-float32-BLAS"] = lambda: xf @ wf
        for peer, expected in checks.items():
            assert np.array_equal(np.asarray(peers[peer]()).astype(np.int64), expected), (name, peer)
        times = {peer: [] for peer in peers}
        for _ in range(5):  # interleaved rounds, so load on the shared machine hits every peer alike
            for peer, fn in peers.items():
                times[peer].append(median_ms(fn, max(1, args.repeat // 5)))
        row = {"shape": name, "rows": rows, "k": k, "n": n, **{p: float(np.median(t)) for p, t in times.items()}}
        rows_out.append(row)
        print(f"{name}: " + ", ".join(f"{p} {row[p]:.4f} ms" for p in peers), file=sys.stderr)
    print_table(rows_out, native.available_paths())
    if args.json:
        print(json.dumps({"rows": rows_out, "batch": args.batch, "threads": os.environ.get("OPENBLAS_NUM_THREADS")}))


def print_table(rows, paths):
    best = f"native-{paths[-1]}"
    cols = [f"native-{p}" for p in paths] + ["ort-Integer-u8s8", "numpy-float32-BLAS"]
    print("\n| shape | rows × k × n | " + " | ".join(f"{c} ms" for c in cols)
          + f" | {best} / ort u8s8 |", file=sys.stderr)
    print("|---|---|" + "---|" * (len(cols) + 1), file=sys.stderr)
    for r in rows:
        print(f"| {r['shape']} | {r['rows']} × {r['k']} × {r['n']} | "
              + " | ".join(f"{r[c]:.4f}" for c in cols)
              + f" | {r[best] / r['ort-Integer-u8s8']:.2f} |", file=sys.stderr)


if __name__ == "__main__":
    main()
