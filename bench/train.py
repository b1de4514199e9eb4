"""Training benchmark: BP, ZO, ElasticZO and ElasticZO-INT8 on lenet5 / MNIST.

One run on one machine, for each method (torch BP, our ``bp``, ``zo``,
``elasticzo`` with a 1- and a 2-layer BP tail, ``elasticzo-int8`` with a
2-layer tail, and onnxruntime-training's BP when ``--ort-training-python``
names a Python that has it):

* from scratch: default init (``build("lenet5", seed)``), batch 32,
  ``--epochs`` epochs over the 4,000 training samples, test accuracy;
* personalisation: a model pretrained with torch (Adam) on the clean training
  split meets "user" digits shifted right by 3 pixels; one pass over the first
  500 training samples shifted, accuracy on the 1,000 test samples shifted
  (before and after) and unshifted (after), and the fraction of the shift's
  accuracy loss recovered, ``(after − before) / (clean − before)``;
* median step time over all from-scratch steps, and the peak memory of one
  step at batch 32 against inference, each method in a fresh process.

Every method sees the same batches: epoch ``e`` of seed ``s`` visits the
permutation ``default_rng([s, e])`` in batches of 32, dropping the short last
batch, as ``Trainer.fit`` does. Accuracies are mean ± std over the seeds.

Memory. tracemalloc sees numpy's buffers (our runtime) but not torch's or
onnxruntime's native allocators, so every method also gets its RSS growth
during the step: VmRSS just before, VmHWM after resetting it through
/proc/self/clear_refs. The memory children run with glibc's mmap threshold
pinned at 4 KiB (MALLOC_MMAP_THRESHOLD_), so buffers are mapped on allocation
and unmapped on free; otherwise a warmed-up process reuses resident heap and
hides the step's peak (RSS growth still misses allocations under 4 KiB).
onnxruntime's arena is off for the same reason. All children compute on one
thread (OPENBLAS_NUM_THREADS=1, torch and onnxruntime at 1 thread): an edge
core's view, steadier on a shared machine.

    python bench/train.py [--epochs 20] [--seeds 3] [--ort-training-python PY] [--json]

onnxruntime-training conflicts with onnxruntime, so it lives in its own venv:
``python3 -m venv /tmp/ortt && /tmp/ortt/bin/pip install onnxruntime-training==1.19.2
onnx==1.17.0 numpy`` (onnx ≤ 1.17: newer ones write IR versions that
onnxruntime 1.19 refuses), then ``--ort-training-python /tmp/ortt/bin/python``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

BATCH = 32
SHIFT_PX = 3  # the "user" distribution: digits rolled right by this many pixels
N_USER = 500
N_CALIB = 256
TORCH_LR = 0.05  # plain SGD at our bp's default step
# key → how to train it; edgetrain methods use the Trainer's default step sizes
METHODS = {
    "torch-bp": {"engine": "torch"},
    "ort-training-bp": {"engine": "ort"},
    "bp": {"engine": "edgetrain", "method": "bp", "cut": 1},
    "zo": {"engine": "edgetrain", "method": "zo", "cut": 0},
    "elasticzo-cut1": {"engine": "edgetrain", "method": "elasticzo", "cut": 1},
    "elasticzo-cut2": {"engine": "edgetrain", "method": "elasticzo", "cut": 2},
    # integer GEMMs in numpy's integer matmul: no float array in a step
    "elasticzo-int8-cut2": {"engine": "edgetrain", "method": "elasticzo-int8", "cut": 2, "int8": True,
                            "float_gemm": False},
    # the same arithmetic with the integer GEMMs through exact float32 BLAS (bit-identical weights)
    "elasticzo-int8-cut2-float-gemm": {"engine": "edgetrain", "method": "elasticzo-int8", "cut": 2, "int8": True,
                                       "float_gemm": True},
}
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MEMORY_ENV = {**CHILD_ENV, "MALLOC_MMAP_THRESHOLD_": str(4096)}


# -- preparation (host side: torch, export, quantisation) ------------------------------------
def prepare(workdir: Path, seeds: list, pretrain_epochs: int) -> dict:
    """Data arrays, per seed the initial and the pretrained lenet5 as torch weights,
    fp32 ONNX and int8 ONNX (calibrated on 256 clean training samples)."""
    import torch
    from edgetrain.export import datasets
    from edgetrain.export import build, export_onnx, quantize
    from edgetrain.export.train_torch import accuracy, train
    d = datasets.load("mnist")
    shift = lambda x: datasets.shifted(x, SHIFT_PX)  # the same "user" distribution as the demo
    np.savez(workdir / "data.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test,
             x_user=shift(d.x_train[:N_USER]), y_user=d.y_train[:N_USER],
             x_test_shifted=shift(d.x_test), y_test_shifted=d.y_test)
    pretrained = {}
    for s in seeds:
        for kind in ("scratch", "pretrained"):
            module = build("lenet5", seed=s)
            if kind == "pretrained":
                train(module, d.x_train, d.y_train, epochs=pretrain_epochs, lr=2e-3, seed=s, progress=False)
                pretrained[s] = {"clean_test_acc": accuracy(module, d.x_test, d.y_test),
                                 "shifted_test_acc": accuracy(module, shift(d.x_test), d.y_test)}
            torch.save(module.state_dict(), workdir / f"{kind}_{s}.pt")
            export_onnx(module, workdir / f"{kind}_{s}.onnx")
            quantize(workdir / f"{kind}_{s}.onnx", workdir / f"{kind}_{s}.int8.onnx", d.x_train[:N_CALIB])
    return pretrained


# -- learners: one small interface over the three engines -------------------------------------
class EdgetrainLearner:
    def __init__(self, path, spec, seed):
        import edgetrain
        from edgetrain.trainer import Trainer
        self.trainer = Trainer(edgetrain.load(str(path), float_gemm=spec.get("float_gemm", True)),
                               method=spec["method"], cut=spec["cut"], batch_size=BATCH, seed=seed)
        self.rolled_back = 0

    def step(self, x, y) -> float:
        m = self.trainer.step(x, y)
        self.rolled_back += bool(m.get("rolled_back"))
        return m["step_time_s"]

    def accuracy(self, x, y) -> float:
        return self.trainer.evaluate(x, y)["accuracy"]

    def hyper(self) -> dict:
        return {"cut": self.trainer.cut, **self.trainer.hyper}


class TorchLearner:
    def __init__(self, state_path, seed):
        import torch
        from edgetrain.export import build
        torch.set_num_threads(1)
        self.torch = torch
        self.module = build("lenet5", seed=seed)
        self.module.load_state_dict(torch.load(state_path))
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=TORCH_LR)
        self.rolled_back = 0

    def step(self, x, y) -> float:
        torch = self.torch
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(self.module(torch.from_numpy(x)), torch.from_numpy(y))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start

    def infer(self, x):
        with self.torch.no_grad():
            return self.module(self.torch.from_numpy(x))

    def accuracy(self, x, y) -> float:
        return float((self.infer(x).numpy().argmax(1) == y).mean())

    def hyper(self) -> dict:
        return {"lr": TORCH_LR, "optimizer": "SGD (no momentum)"}


class OrtTrainingLearner:
    """onnxruntime-training's on-device API: artifacts (CrossEntropyLoss, SGD) from the fp32 ONNX."""

    def __init__(self, path, seed, artifact_dir):
        import importlib.util
        import types
        if importlib.util.find_spec("torch") is None:
            # onnxruntime.training/__init__ imports its torch-only optimiser wrappers; we never use them
            sys.modules["onnxruntime.training.optim"] = types.ModuleType("onnxruntime.training.optim")
        import onnx
        import onnxruntime as ort
        from onnxruntime.training import artifacts
        from onnxruntime.training.api import CheckpointState, Module, Optimizer
        ort.set_default_logger_severity(3)
        model = onnx.load(str(path))
        params = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
        artifact_dir = Path(artifact_dir)
        with contextlib.redirect_stdout(sys.stderr):
            artifacts.generate_artifacts(model, requires_grad=params, frozen_params=[],
                                         loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
                                         artifact_directory=str(artifact_dir),
                                         additional_output_names=[model.graph.output[0].name])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        self.state = CheckpointState.load_checkpoint(str(artifact_dir / "checkpoint"))
        self.module = Module(str(artifact_dir / "training_model.onnx"), self.state,
                             str(artifact_dir / "eval_model.onnx"), session_options=opts)
        self.optimizer = Optimizer(str(artifact_dir / "optimizer_model.onnx"), self.module)
        self.optimizer.set_learning_rate(TORCH_LR)
        self.module.train()
        self.rolled_back = 0

    def step(self, x, y) -> float:
        start = time.perf_counter()
        self.module(x, y)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return time.perf_counter() - start

    def infer(self, x, y):
        self.module.eval()
        try:
            return self.module(x, y)[1]
        finally:
            self.module.train()

    def accuracy(self, x, y) -> float:
        return float((self.infer(x, y).argmax(1) == y).mean())

    def hyper(self) -> dict:
        return {"lr": TORCH_LR, "optimizer": "SGD (SGDOptimizerV2, no momentum)"}


def make_learner(key: str, workdir: Path, kind: str, seed: int):
    """The learner ``key`` on the ``kind`` ("scratch" or "pretrained") model of ``seed``."""
    spec = METHODS[key]
    stem = workdir / f"{kind}_{seed}"
    if spec["engine"] == "torch":
        return TorchLearner(f"{stem}.pt", seed)
    if spec["engine"] == "ort":
        return OrtTrainingLearner(f"{stem}.onnx", seed, tempfile.mkdtemp(prefix=f"ort_{kind}_{seed}_", dir=workdir))
    return EdgetrainLearner(f"{stem}.int8.onnx" if spec.get("int8") else f"{stem}.onnx", spec, seed)


def run_epochs(learner, x, y, epochs: int, seed: int, evaluate=None):
    """Trainer.fit's batch order; returns the step times and ``evaluate()`` after each epoch."""
    per_epoch = len(x) // BATCH
    times, curve = [], []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for b in range(per_epoch):
            idx = order[b * BATCH:(b + 1) * BATCH]
            times.append(learner.step(x[idx], y[idx]))
        if evaluate is not None:
            curve.append(evaluate())
    return times, curve


# -- child processes ------------------------------------------------------------------------------
def train_worker(key: str, workdir: Path) -> dict:
    """From scratch and personalisation, every seed, for one method."""
    cfg = json.loads((workdir / "config.json").read_text())
    d = dict(np.load(workdir / "data.npz"))
    out = {"scratch": [], "personalisation": [], "hyper": None}
    for s in cfg["seeds"]:
        t0 = time.perf_counter()
        learner = make_learner(key, workdir, "scratch", s)
        out["hyper"] = learner.hyper()
        times, curve = run_epochs(learner, d["x_train"], d["y_train"], cfg["epochs"], s,
                                  evaluate=lambda: learner.accuracy(d["x_test"], d["y_test"]))
        out["scratch"].append({"seed": s, "test_acc": curve[-1], "test_acc_per_epoch": curve,
                               "steps": len(times), "step_times_s": times, "rolled_back": learner.rolled_back,
                               "seconds": time.perf_counter() - t0})
        print(f"  {key} seed {s}: from scratch {curve[-1]:.4f} after {len(times)} steps "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

        learner = make_learner(key, workdir, "pretrained", s)
        clean = learner.accuracy(d["x_test"], d["y_test"])
        before = learner.accuracy(d["x_test_shifted"], d["y_test_shifted"])
        times, _ = run_epochs(learner, d["x_user"], d["y_user"], 1, s)
        after = learner.accuracy(d["x_test_shifted"], d["y_test_shifted"])
        clean_after = learner.accuracy(d["x_test"], d["y_test"])
        out["personalisation"].append({
            "seed": s, "clean_before": clean, "shifted_before": before, "shifted_after": after,
            "clean_after": clean_after, "recovered": (after - before) / (clean - before),
            "steps": len(times), "rolled_back": learner.rolled_back})
        print(f"  {key} seed {s}: personalisation {before:.4f} → {after:.4f} (clean {clean:.4f} → "
              f"{clean_after:.4f})", file=sys.stderr, flush=True)
    return out


def memory_worker(key: str, workdir: Path) -> dict:
    """Peak memory of one step at batch 32 and of inference, in this fresh process.
    One warm-up step and inference first, so one-time setup is not counted."""
    d = np.load(workdir / "data.npz")
    x, y = d["x_train"][:BATCH], d["y_train"][:BATCH]
    x2, y2 = d["x_train"][BATCH:2 * BATCH], d["y_train"][BATCH:2 * BATCH]
    learner = make_learner(key, workdir, "scratch", 0)
    if isinstance(learner, EdgetrainLearner):
        learner.step(x2, y2)
        learner.trainer.model.run(x2)
        base = rss_bytes("VmRSS")
        r = learner.trainer.memory_report(x, y)
        return {"step_traced_bytes": r["step_traced_bytes"], "inference_traced_bytes": r["inference_traced_bytes"],
                "step_peak_rss_bytes": base + r["step_rss_growth_bytes"],
                "inference_peak_rss_bytes": base + r["inference_rss_growth_bytes"],
                "step_rss_growth_bytes": r["step_rss_growth_bytes"],
                "inference_rss_growth_bytes": r["inference_rss_growth_bytes"]}
    learner.step(x2, y2)
    infer = (lambda: learner.infer(x)) if isinstance(learner, TorchLearner) else (lambda: learner.infer(x, y))
    infer()
    base = rss_bytes("VmRSS")
    i_traced, i_peak = peak_of(infer)
    s_traced, s_peak = peak_of(lambda: learner.step(x, y))
    return {"step_traced_bytes": s_traced, "inference_traced_bytes": i_traced,
            "step_peak_rss_bytes": s_peak, "inference_peak_rss_bytes": i_peak,
            "step_rss_growth_bytes": s_peak - base, "inference_rss_growth_bytes": i_peak - base}


def peak_of(fn):
    """(tracemalloc peak, VmHWM) of one call, the RSS peak reset first, as
    edgetrain.memory.measure_peak does; kept here because the onnxruntime-training
    child runs in its own venv, without edgetrain."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    tracemalloc.start()
    try:
        fn()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return traced, rss_bytes("VmHWM")


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_child(python: str, kind: str, key: str, workdir: Path, env: dict) -> dict:
    out = subprocess.run([python, os.path.abspath(__file__), "--worker", kind, key, str(workdir)],
                         stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker for {key} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- summary --------------------------------------------------------------------------------------
def summarise(key: str, train: dict, memory: dict) -> dict:
    scratch = [r["test_acc"] for r in train["scratch"]]
    pers = train["personalisation"]
    times = [t for r in train["scratch"] for t in r["step_times_s"]]
    row = {"method": key, "hyper": train["hyper"],
           "scratch_acc_mean": float(np.mean(scratch)), "scratch_acc_std": float(np.std(scratch)),
           "median_step_ms": 1e3 * float(np.median(times)),
           "scratch_rolled_back": sum(r["rolled_back"] for r in train["scratch"])}
    for name in ("clean_before", "shifted_before", "shifted_after", "clean_after", "recovered"):
        v = [p[name] for p in pers]
        row[f"pers_{name}_mean"], row[f"pers_{name}_std"] = float(np.mean(v)), float(np.std(v))
    row.update(memory)
    row["step_over_inference_traced"] = memory["step_traced_bytes"] / memory["inference_traced_bytes"]
    return row


def targets(rows: dict) -> list:
    """Issue 3's targets, each with the numbers that decide it."""
    out = []
    def add(name, met, detail):
        out.append({"target": name, "met": bool(met), "detail": detail})
    zo = rows["zo"]
    for cut in (1, 2):
        ez = rows[f"elasticzo-cut{cut}"]
        for kind, field in (("from scratch", "scratch_acc_mean"), ("personalisation", "pers_shifted_after_mean")):
            gap = 100 * (ez[field] - zo[field])
            add(f"ElasticZO cut {cut} ≥ 5 points above ZO at equal steps ({kind})", gap >= 5,
                f"{100 * ez[field]:.1f} % vs {100 * zo[field]:.1f} % → {gap:+.1f} points")
    i8, ez2 = rows["elasticzo-int8-cut2"], rows["elasticzo-cut2"]
    for kind, field in (("from scratch", "scratch_acc_mean"), ("personalisation", "pers_shifted_after_mean")):
        gap = 100 * (i8[field] - ez2[field])
        add(f"INT8 within 1.5 points of fp32 ElasticZO cut 2 ({kind})", gap >= -1.5,
            f"{100 * i8[field]:.1f} % vs {100 * ez2[field]:.1f} % → {gap:+.1f} points")
    ratio = ez2["step_traced_bytes"] / i8["step_traced_bytes"]
    add("INT8 step peak memory ≤ 1/1.4 of fp32 ElasticZO cut 2 (tracemalloc)", ratio >= 1.4,
        f"{i8['step_traced_bytes'] / 1024:.0f} KB vs {ez2['step_traced_bytes'] / 1024:.0f} KB → {ratio:.2f}× less")
    ratio = ez2["median_step_ms"] / i8["median_step_ms"]
    add("INT8 step time ≤ fp32 ElasticZO cut 2", ratio >= 1,
        f"{i8['median_step_ms']:.1f} ms vs {ez2['median_step_ms']:.1f} ms → {ratio:.2f}× (fp32/int8)")
    ez1, tb = rows["elasticzo-cut1"], rows["torch-bp"]
    ratio = ez1["step_over_inference_traced"]
    add("ElasticZO cut 1 step peak ≤ 1.1× inference peak (tracemalloc)", ratio <= 1.1,
        f"{ez1['step_traced_bytes'] / 1024:.0f} KB vs {ez1['inference_traced_bytes'] / 1024:.0f} KB → {ratio:.2f}×")
    ratio = tb["step_rss_growth_bytes"] / max(ez1["step_rss_growth_bytes"], 1)
    add("ElasticZO cut 1 step peak ≥ 3× below torch BP (RSS growth during the step, both)", ratio >= 3,
        f"{ez1['step_rss_growth_bytes'] / 2**20:.2f} MB vs {tb['step_rss_growth_bytes'] / 2**20:.2f} MB → "
        f"{ratio:.2f}× below")
    ratio = tb["step_rss_growth_bytes"] / max(ez1["step_traced_bytes"], 1)
    add("ElasticZO cut 1 step peak ≥ 3× below torch BP (ours tracemalloc vs torch RSS growth)", ratio >= 3,
        f"{ez1['step_traced_bytes'] / 2**20:.2f} MB vs {tb['step_rss_growth_bytes'] / 2**20:.2f} MB → "
        f"{ratio:.2f}× below")
    for key, r in rows.items():
        rec = r["pers_recovered_mean"]
        add(f"personalisation recovers ≥ half of the shift's loss ({key})", rec >= 0.5,
            f"{rec:.2f} ± {r['pers_recovered_std']:.2f} of the loss "
            f"({100 * r['pers_shifted_before_mean']:.1f} % → {100 * r['pers_shifted_after_mean']:.1f} %, "
            f"clean {100 * r['pers_clean_before_mean']:.1f} %)")
    return out


def print_report(result: dict, out=sys.stderr):
    cfg, rows = result["config"], result["rows"]
    pm = lambda m, s: f"{100 * m:.1f} ± {100 * s:.1f}"
    print(f"\nlenet5, MNIST {cfg['n_train']}/{cfg['n_test']}, batch {BATCH}, seeds {cfg['seeds']}; from scratch: "
          f"{cfg['epochs']} epochs ({cfg['steps_per_epoch']} steps each) from default init; personalisation: "
          f"pretrained {cfg['pretrain_epochs']} epochs (torch Adam 2e-3), user digits rolled {SHIFT_PX} px right, "
          f"1 pass over {N_USER} ({N_USER // BATCH} steps). Step time: median over all from-scratch steps, "
          "1 thread. Memory: one step at batch 32, fresh process.\n", file=out)
    print("| method | from scratch acc % | personalisation after acc % | recovered fraction | median step ms "
          "| step peak traced KB | inference peak traced KB | step/inference (traced) | step peak RSS MB "
          "| step RSS growth MB | inference RSS growth MB |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|---|", file=out)
    for key in METHODS:
        if key not in rows:
            if key == "ort-training-bp" and not cfg["ort_training_python"]:
                print("| ort-training-bp | skipped: no --ort-training-python given |||||||||", file=out)
            continue
        r = rows[key]
        native = r["method"] in ("torch-bp", "ort-training-bp")
        traced = lambda b: f"{b / 1024:.0f}" + (" (native allocs unseen)" if native else "")
        print(f"| {key} | {pm(r['scratch_acc_mean'], r['scratch_acc_std'])} "
              f"| {pm(r['pers_shifted_after_mean'], r['pers_shifted_after_std'])} "
              f"| {r['pers_recovered_mean']:.2f} ± {r['pers_recovered_std']:.2f} | {r['median_step_ms']:.1f} "
              f"| {traced(r['step_traced_bytes'])} | {traced(r['inference_traced_bytes'])} "
              f"| {'n/a' if native else format(r['step_over_inference_traced'], '.2f')} "
              f"| {r['step_peak_rss_bytes'] / 2**20:.1f} | {r['step_rss_growth_bytes'] / 2**20:.2f} "
              f"| {r['inference_rss_growth_bytes'] / 2**20:.2f} |", file=out)
    print("\nPersonalisation detail (accuracy %, mean ± std over seeds):\n", file=out)
    print("| method | clean test, before | shifted test, before | shifted test, after | clean test, after |",
          file=out)
    print("|---|---|---|---|---|", file=out)
    for key in METHODS:
        if key in rows:
            r = rows[key]
            print(f"| {key} | " + " | ".join(pm(r[f"pers_{n}_mean"], r[f"pers_{n}_std"]) for n in
                                          ("clean_before", "shifted_before", "shifted_after", "clean_after"))
                  + " |", file=out)
    print("\nHyperparameters (edgetrain: the Trainer's defaults):\n", file=out)
    for key in METHODS:
        if key in rows:
            print(f"- {key}: {rows[key]['hyper']}", file=out)
    print("\nTargets of issue 3:\n", file=out)
    for t in result["targets"]:
        print(f"- {'MET' if t['met'] else 'MISSED'}: {t['target']}: {t['detail']}", file=out)
    print(f"\nwall time {result['wall_s'] / 60:.1f} min", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="from-scratch epochs (125 steps each)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=5)
    p.add_argument("--ort-training-python", metavar="PY",
                   help="a Python with onnxruntime-training (and onnx ≤ 1.17) installed; without it, skipped")
    p.add_argument("--only", nargs="+", choices=list(METHODS), help="run only these methods")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", nargs=3, metavar=("KIND", "METHOD", "WORKDIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, key, workdir = args.worker
        fn = {"train": train_worker, "memory": memory_worker}[kind]
        print(json.dumps(fn(key, Path(workdir))))
        return
    if args.epochs < 1 or args.seeds < 1 or args.pretrain_epochs < 1:
        p.error("--epochs, --seeds and --pretrain-epochs must be ≥ 1")
    if args.ort_training_python and not os.access(args.ort_training_python, os.X_OK):
        p.error(f"--ort-training-python {args.ort_training_python!r} is not an executable")
    keys = [k for k in (args.only or METHODS)
            if k != "ort-training-bp" or args.ort_training_python]
    start = time.perf_counter()
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="edgetrain-bench-train-") as tmp:
        workdir = Path(tmp)
        print("preparing models (torch pretraining, export, quantisation)…", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):
            pretrained = prepare(workdir, seeds, args.pretrain_epochs)
        data = np.load(workdir / "data.npz")
        cfg = {"epochs": args.epochs, "seeds": seeds, "pretrain_epochs": args.pretrain_epochs,
               "batch_size": BATCH, "n_train": len(data["x_train"]), "n_test": len(data["x_test"]),
               "steps_per_epoch": len(data["x_train"]) // BATCH, "shift_px": SHIFT_PX, "n_user": N_USER,
               "n_calib": N_CALIB, "torch_pretrained": pretrained, "ort_training_python": args.ort_training_python,
               "cpu_count": os.cpu_count(), "commit": _git_commit()}
        (workdir / "config.json").write_text(json.dumps(cfg))
        rows, raw = {}, {}
        for key in keys:
            python = args.ort_training_python if METHODS[key]["engine"] == "ort" else sys.executable
            print(f"{key}: training…", file=sys.stderr, flush=True)
            train = run_child(python, "train", key, workdir, CHILD_ENV)
            print(f"{key}: memory…", file=sys.stderr, flush=True)
            memory = run_child(python, "memory", key, workdir, MEMORY_ENV)
            raw[key] = {"train": train, "memory": memory}
            rows[key] = summarise(key, train, memory)
    result = {"config": cfg, "rows": rows, "raw": raw, "wall_s": time.perf_counter() - start}
    needed = {"zo", "elasticzo-cut1", "elasticzo-cut2", "elasticzo-int8-cut2", "torch-bp"}
    result["targets"] = targets(rows) if needed <= set(rows) else []
    print_report(result)
    if args.json:
        print(json.dumps(result))


def _git_commit():
    """The commit the bench ran at (with '+dirty' for uncommitted changes), or None."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "runtime", "bench"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


if __name__ == "__main__":
    main()
