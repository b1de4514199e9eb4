"""Inference benchmark: edgetrain vs onnxruntime on the same model files.

For lenet5 and rescnn (trained briefly on MNIST, then quantised), fp32 and
int8: single-sample latency (median over many runs) and batch-64 throughput,
plus peak memory. Each (model, precision, engine) runs in its own process so
that peak RSS (VmHWM) belongs to it alone; tracemalloc sees numpy's
allocations (our runtime) but not onnxruntime's native ones, so it is
reported for ours only, from one batch-64 run after the timed ones (tracing
slows allocation, so no timing runs under it). Both engines run on one thread (OPENBLAS_NUM_THREADS=1
for numpy, intra_op_num_threads=1 for onnxruntime): an edge core's view, and
steadier on a shared machine than two threads fighting over two cores.

    python bench/infer.py [--repeat 200] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

MODELS = ("lenet5", "rescnn")


def prepare(workdir: Path) -> dict:
    """Train each model for 2 epochs, export and quantise; returns (model, precision) → path."""
    import torch
    from edgetrain.export import datasets
    from edgetrain.export import build, export_onnx, quantize
    from edgetrain.export.train_torch import train
    data = datasets.load("mnist")
    paths = {}
    for name in MODELS:
        module = build(name, seed=0)
        train(module, data.x_train, data.y_train, epochs=2, lr=2e-3, progress=False)
        fp32, int8 = workdir / f"{name}.onnx", workdir / f"{name}.int8.onnx"
        export_onnx(module, fp32)
        quantize(fp32, int8, data.x_train[:256])
        paths[(name, "fp32")], paths[(name, "int8")] = fp32, int8
    np.save(workdir / "x.npy", data.x_test[:64])
    del torch
    return paths


def measure_one(path: str, engine: str, x_path: str, repeat: int) -> dict:
    """Runs in a child process: latency, throughput and peak memory of one engine on one file."""
    x64 = np.load(x_path)
    x1 = x64[:1]
    if engine == "edgetrain":
        import edgetrain
        model = edgetrain.load(path)
        run = model.run
    else:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        def run(x):
            return sess.run(None, {name: x})[0]
    for _ in range(10):  # warm-up
        run(x1)
        run(x64)
    lat = []
    for _ in range(repeat):
        t = time.perf_counter()
        run(x1)
        lat.append(time.perf_counter() - t)
    n_batches = max(5, repeat // 10)
    t = time.perf_counter()
    for _ in range(n_batches):
        run(x64)
    throughput = 64 * n_batches / (time.perf_counter() - t)
    out = {"latency_ms": 1e3 * float(np.median(lat)), "throughput_per_s": throughput,
           "peak_rss_mb": peak_rss_mb()}
    if engine == "edgetrain":  # traced after timing: tracemalloc slows every allocation it sees
        tracemalloc.start()
        run(x64)
        out["tracemalloc_peak_kb"] = tracemalloc.get_traced_memory()[1] / 1024
        tracemalloc.stop()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is reset by exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--json", action="store_true")
    p.add_argument("--one", nargs=3, metavar=("PATH", "ENGINE", "X"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*args.one, args.repeat)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetrain-bench-") as tmp:
        print("preparing models (torch training, export, quantisation)…", file=sys.stderr)
        paths = prepare(Path(tmp))
        for (name, prec), path in paths.items():
            for engine in ("edgetrain", "onnxruntime"):
                print(f"measuring {name} {prec} on {engine}…", file=sys.stderr)
                out = subprocess.run([sys.executable, __file__, "--one", str(path), engine,
                                      str(Path(tmp) / "x.npy"), "--repeat", str(args.repeat)],
                                     capture_output=True, text=True, check=True,
                                     env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
                rows.append({"model": name, "precision": prec, "engine": engine,
                             **json.loads(out.stdout.strip().splitlines()[-1])})
    print_table(rows)
    if args.json:
        print(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}))


def print_table(rows):
    by = {(r["model"], r["precision"], r["engine"]): r for r in rows}
    out = sys.stderr
    print("\n| model | precision | edgetrain 1-sample ms | onnxruntime 1-sample ms | "
          "edgetrain batch-64 /s | onnxruntime batch-64 /s | throughput ratio (ours/ort) | "
          "edgetrain peak RSS MB | onnxruntime peak RSS MB | edgetrain tracemalloc peak KB |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    for model in MODELS:
        for prec in ("fp32", "int8"):
            a, b = by[(model, prec, "edgetrain")], by[(model, prec, "onnxruntime")]
            print(f"| {model} | {prec} | {a['latency_ms']:.3f} | {b['latency_ms']:.3f} | "
                  f"{a['throughput_per_s']:.0f} | {b['throughput_per_s']:.0f} | "
                  f"{a['throughput_per_s'] / b['throughput_per_s']:.2f} | {a['peak_rss_mb']:.0f} | "
                  f"{b['peak_rss_mb']:.0f} | {a['tracemalloc_peak_kb']:.0f} |", file=out)


if __name__ == "__main__":
    main()
