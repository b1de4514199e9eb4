"""Where inference time goes: each node's time in one model run, against onnxruntime's
whole run of the same file in the same process.

For each model file, runs the graph node by node (``Model.execute`` one node at a time,
the way ``run`` calls the kernels) on a batch, ``--repeat`` times, and prints each node's
median time, the sum of the medians and the median of a whole ``Model.run``. ``run`` takes
each float Conv with the Relu / MaxPool / residual Add / GlobalAveragePool after it as one
step (``kernels.conv.chains``), so it can take less than the sum of its nodes. One thread
(``OPENBLAS_NUM_THREADS=1`` for numpy, one intra-op thread for onnxruntime).

    OPENBLAS_NUM_THREADS=1 python bench/nodes.py MODEL.onnx [MODEL.onnx ...] [--backend numpy|native] [--batch 64]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def profile(path: str, backend: str, batch: int, repeat: int) -> dict:
    import edgetrain
    import onnxruntime as ort
    model = edgetrain.load(path, backend=backend)
    name, shape, dtype = model.inputs[0]
    x = np.random.default_rng(0).random((batch, *shape[1:]), dtype=np.float32)
    per_node = np.zeros((repeat, len(model.nodes)))
    whole = []
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    ort_name = sess.get_inputs()[0].name
    ort_times = []
    for r in range(-3, repeat):  # three warm-up rounds
        env = {name: x}
        for i in range(len(model.nodes)):
            t = time.perf_counter()
            model.execute(env, start=i, stop=i + 1, keep=True)
            if r >= 0:
                per_node[r, i] = time.perf_counter() - t
        t = time.perf_counter()
        model.run(x)
        t1 = time.perf_counter()
        sess.run(None, {ort_name: x})
        t2 = time.perf_counter()
        if r >= 0:
            whole.append(t1 - t)
            ort_times.append(t2 - t1)
    med = np.median(per_node, axis=0)
    return {"model": path, "backend": model.backend.name,
            "nodes": [(n.name, n.op_type, float(m)) for n, m in zip(model.nodes, med)],
            "node_sum": float(med.sum()), "run": float(np.median(whole)), "ort": float(np.median(ort_times))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--backend", default=None, help="numpy, native or native:PATH (default: native when installed)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args(argv)
    for path in args.models:
        out = profile(path, args.backend, args.batch, args.repeat)
        print(f"\n{out['model']} ({out['backend']}), batch {args.batch}, median of {args.repeat}:")
        print("| node | op | ms | share |\n|---|---|---|---|")
        for name, op, t in out["nodes"]:
            print(f"| {name} | {op} | {1e3 * t:.4f} | {t / out['node_sum']:.0%} |")
        print(f"sum of nodes {1e3 * out['node_sum']:.3f} ms; Model.run {1e3 * out['run']:.3f} ms; "
              f"onnxruntime {1e3 * out['ort']:.3f} ms (run / ort {out['run'] / out['ort']:.2f})")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
