"""ElasticZO-INT8 step time and memory by backend, against the fp32 ElasticZO step.

lenet5 (the pinned test models: ``tests/data/lenet5.onnx`` and its int8 QOperator form),
cut 2, batch 32, MNIST batches, one thread, all in one process: rounds of ``--steps``
steps per configuration, interleaved so that load on a shared machine hits each alike;
the median step time over all rounds. Configurations: fp32 ``elasticzo``; ``elasticzo-int8``
on the native kernels (the fastest path), on numpy's integer matmul (no float array, the
reference) and on numpy's exact float32 BLAS route. Each int8 configuration's weights
are checked to end bit-identical. Memory: ``Trainer.memory_report`` (tracemalloc peak of
one step, which sees the native kernels' buffers too: they allocate through CPython).

    OPENBLAS_NUM_THREADS=1 python bench/int8_step.py [--steps 40] [--rounds 5] [--json]

(A column for ``bench/train.py``'s method table once issue #11's ZO rewrite lands.)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # name → (model file, method, load options)
    "fp32-elasticzo": ("lenet5.onnx", "elasticzo", {}),
    "int8-native": ("lenet5.int8.onnx", "elasticzo-int8", {"backend": "native"}),
    "int8-numpy-integer": ("lenet5.int8.onnx", "elasticzo-int8", {"backend": "numpy", "float_gemm": False}),
    "int8-numpy-float-gemm": ("lenet5.int8.onnx", "elasticzo-int8", {"backend": "numpy", "float_gemm": True}),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import edgetrain
    from edgetrain.export import datasets
    d = datasets.load("mnist")
    trainers = {name: edgetrain.Trainer(edgetrain.load(ROOT / "tests" / "data" / f, **opts), method=method,
                                        cut=2, batch_size=32, seed=0)
                for name, (f, method, opts) in CONFIGS.items()}
    backends = {name: t.model.backend.name for name, t in trainers.items()}
    times = {name: [] for name in trainers}
    batch = 0
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            for s in range(args.steps):
                i = (batch + s) * 32 % (len(d.x_train) - 32)
                t = time.perf_counter()
                trainer.step(d.x_train[i:i + 32], d.y_train[i:i + 32])
                times[name].append(time.perf_counter() - t)
        batch += args.steps
    int8 = [n for n in trainers if n.startswith("int8")]
    ref = trainers[int8[0]].model.params
    identical = all(np.array_equal(trainers[n].model.params[k], v) for n in int8 for k, v in ref.items())
    memory = {name: t.memory_report(d.x_train[:32], d.y_train[:32]) for name, t in trainers.items()}
    fp32 = float(np.median(times["fp32-elasticzo"]))
    rows = []
    for name in trainers:
        med = float(np.median(times[name]))
        rows.append({"config": name, "backend": backends[name], "median_step_ms": 1e3 * med,
                     "vs_fp32": med / fp32, "step_peak_traced_kb": memory[name]["step_traced_bytes"] / 1024,
                     "memory": memory[name]})
    print("\n| configuration | backend | median step ms | step time / fp32 ElasticZO | step peak traced KB |",
          file=sys.stderr)
    print("|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['config']} | {r['backend']} | {r['median_step_ms']:.2f} | {r['vs_fp32']:.2f} | "
              f"{r['step_peak_traced_kb']:.0f} |",
              file=sys.stderr)
    print(f"\nint8 weights bit-identical across backends after {args.rounds * args.steps} steps: {identical}",
          file=sys.stderr)
    if args.json:
        print(json.dumps({"rows": rows, "identical": identical}, default=float))


if __name__ == "__main__":
    main()
