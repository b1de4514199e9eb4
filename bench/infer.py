"""Inference benchmark: edgetrain (numpy and native backends) vs onnxruntime on the same model files.

For lenet5 and rescnn (trained briefly on MNIST, then quantised), fp32 and
int8: single-sample latency (median over many runs) and batch-64 throughput,
plus peak memory. edgetrain runs on the numpy reference and, for int8, on the
native kernels (their fastest path on this CPU, printed with the table);
onnxruntime runs the same fp32 and QOperator int8 files, and int8 rows are also
set against onnxruntime's fp32 throughput. Each (model, precision, engine) runs in its own process so
that peak RSS (VmHWM) belongs to it alone; tracemalloc sees numpy's
allocations (our runtime) but not onnxruntime's native ones, so it is
reported for ours only, from one batch-64 run after the timed ones (tracing
slows allocation, so no timing runs under it). Both engines run on one thread (OPENBLAS_NUM_THREADS=1
for numpy, intra_op_num_threads=1 for onnxruntime): an edge core's view, and
steadier on a shared machine than two threads fighting over two cores.

    python bench/infer.py [--repeat 200] [--best] [--json]

``EDGETRAIN_NATIVE_PATH`` (see ``edgetrain.backend``) forces the native rows onto one path.
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


def measure_one(path: str, engine: str, x_path: str, repeat: int, best: bool = False) -> dict:
    """Runs in a child process: latency, throughput and peak memory of one engine on one file."""
    x64 = np.load(x_path)
    x1 = x64[:1]
    if engine.startswith("edgetrain"):
        import edgetrain
        model = edgetrain.load(path, backend=engine.split("-")[1])
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
    if best:  # the fastest of 60 rounds of 5 batches: what other work on the machine leaves
        rounds = []
        for _ in range(60):
            t = time.perf_counter()
            for _ in range(5):
                run(x64)
            rounds.append((time.perf_counter() - t) / 5)
        throughput = 64 / min(rounds)
    else:
        n_batches = max(5, repeat // 10)
        t = time.perf_counter()
        for _ in range(n_batches):
            run(x64)
        throughput = 64 * n_batches / (time.perf_counter() - t)
    out = {"latency_ms": 1e3 * float(np.median(lat)), "throughput_per_s": throughput,
           "peak_rss_mb": peak_rss_mb()}
    if engine.startswith("edgetrain"):  # traced after timing: tracemalloc slows every allocation it sees
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
    p.add_argument("--best", action="store_true",
                   help="batch-64 throughput from the fastest of 60 rounds of 5 runs (steadier on a busy machine)")
    p.add_argument("--one", nargs=3, metavar=("PATH", "ENGINE", "X"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*args.one, args.repeat, args.best)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetrain-bench-") as tmp:
        print("preparing models (torch training, export, quantisation)…", file=sys.stderr)
        paths = prepare(Path(tmp))
        for (name, prec), path in paths.items():
            engines = ("edgetrain-numpy", "edgetrain-native", "onnxruntime") if prec == "int8" and native_path() \
                else ("edgetrain-numpy", "onnxruntime")  # fp32 runs no native kernel
            for engine in engines:
                print(f"measuring {name} {prec} on {engine}…", file=sys.stderr)
                out = subprocess.run([sys.executable, __file__, "--one", str(path), engine,
                                      str(Path(tmp) / "x.npy"), "--repeat", str(args.repeat)]
                                     + (["--best"] if args.best else []),
                                     capture_output=True, text=True, check=True,
                                     env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
                rows.append({"model": name, "precision": prec, "engine": engine,
                             **json.loads(out.stdout.strip().splitlines()[-1])})
    print_table(rows)
    if args.json:
        print(json.dumps({"rows": rows, "cpu_count": os.cpu_count(), "native_path": native_path()}))


def native_path() -> str | None:
    """The native kernels' path on this CPU (VNNI / AVX2 / NEON / dotprod / scalar), None without the wheel."""
    from edgetrain import backend
    return backend.native_paths()[-1] if backend.native_paths() else None


def print_table(rows):
    by = {(r["model"], r["precision"], r["engine"]): r for r in rows}
    out = sys.stderr
    print(f"\nnative kernel path: {native_path() or 'none (wheel not installed)'}", file=out)
    print("\n| model | precision | engine (backend) | 1-sample ms | batch-64 /s | throughput / ort same file | "
          "throughput / ort fp32 | latency / ort same file | peak RSS MB | tracemalloc peak KB |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    for model in MODELS:
        for prec in ("fp32", "int8"):
            ort, ort_fp32 = by[(model, prec, "onnxruntime")], by[(model, "fp32", "onnxruntime")]
            for engine in ("edgetrain-numpy", "edgetrain-native", "onnxruntime"):
                if (model, prec, engine) not in by:
                    continue
                a = by[(model, prec, engine)]
                traced = f"{a['tracemalloc_peak_kb']:.0f}" if "tracemalloc_peak_kb" in a else "–"
                print(f"| {model} | {prec} | {engine} | {a['latency_ms']:.3f} | {a['throughput_per_s']:.0f} | "
                      f"{a['throughput_per_s'] / ort['throughput_per_s']:.2f} | "
                      f"{a['throughput_per_s'] / ort_fp32['throughput_per_s']:.2f} | "
                      f"{a['latency_ms'] / ort['latency_ms']:.2f} | {a['peak_rss_mb']:.0f} | {traced} |", file=out)


if __name__ == "__main__":
    main()
