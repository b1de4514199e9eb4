"""Training benchmark: BP, ZO, ElasticZO and ElasticZO-INT8 on lenet5, each ElasticZO
setting beside its frozen-head ablation and full BP.

Methods (``METHODS``): torch BP, our ``bp``, ``zo``, ``elasticzo`` and ``elasticzo-int8``
with a 1- and a 2-layer BP tail, each ElasticZO setting's ablation ``…-tail`` (the same
Trainer with ``trainable=`` only the tail's layers: the head frozen), and
onnxruntime-training's BP when ``--ort-training-python`` names a Python that has it.
int8 runs route integer GEMMs through numpy's integer matmul (no float array in a
step); ``elasticzo-int8-cut2-float-gemm`` is the same arithmetic through exact float32
BLAS (bit-identical weights, tested), timed and measured but not trained again.

* from scratch: default init (``build("lenet5", seed)``), batch 32, ``--epochs`` epochs
  over the 4,000 MNIST training samples, test accuracy;
* personalisation: a model pretrained with torch (Adam, ``--pretrain-epochs``) on clean
  MNIST meets a "user" distribution (``SHIFTS``, ``--shifts``): MNIST digits moved 3 px
  right, inverted, with thicker strokes, rotated 30° or faded on grey
  (``edgetrain.export.datasets.user_shift``), or scikit-learn's digits. ``--pers-epochs`` passes over 500 user samples (15 steps
  each), accuracy on the matching test set (1,000 MNIST or 360 digits) after the first
  pass and the last;
* equal steps and equal wall-clock: every learner sees the same batches (epoch ``e`` of
  seed ``s`` visits the permutation ``default_rng([s, e])`` in batches of 32, dropping
  the short last batch, as ``Trainer.fit`` does); the frozen-head ablation and full BP
  are also read after as many steps as fit in the ElasticZO run's time, from the ratio
  of median step times measured in one process, the three learners' steps interleaved;
* median step time over all from-scratch steps, and the peak memory of one step at
  batch 32 against inference, each method in a fresh process.

Accuracies are mean ± std over the seeds.

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

    python bench/train.py [--epochs 20] [--pers-epochs 5] [--seeds 3] [--shifts S …] [--ort-training-python PY]
                          [--json]

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
N_USER = 500
N_CALIB = 256
SHIFTS = ("translate", "invert", "dilate", "rotate", "contrast", "digits")  # digits: scikit-learn's
HEAD_SHIFTS = ("invert", "dilate", "rotate", "contrast")  # issue #11's shifts a frozen head should absorb badly
TORCH_LR = 0.05  # plain SGD at our bp's default step
TIMING_ROUNDS = 45  # interleaved steps per learner for the step-time ratios
# key → how to train it; edgetrain methods use the Trainer's default step sizes
METHODS = {
    "torch-bp": {"engine": "torch"},
    "ort-training-bp": {"engine": "ort"},
    "bp": {"engine": "edgetrain", "method": "bp", "cut": 1},
    "zo": {"engine": "edgetrain", "method": "zo", "cut": 0},
    "elasticzo-cut1": {"engine": "edgetrain", "method": "elasticzo", "cut": 1},
    "elasticzo-cut1-tail": {"engine": "edgetrain", "method": "elasticzo", "cut": 1, "tail_only": True},
    "elasticzo-cut2": {"engine": "edgetrain", "method": "elasticzo", "cut": 2},
    "elasticzo-cut2-tail": {"engine": "edgetrain", "method": "elasticzo", "cut": 2, "tail_only": True},
    # integer GEMMs in numpy's integer matmul: no float array in a step
    "elasticzo-int8-cut1": {"engine": "edgetrain", "method": "elasticzo-int8", "cut": 1, "int8": True,
                            "float_gemm": False},
    "elasticzo-int8-cut1-tail": {"engine": "edgetrain", "method": "elasticzo-int8", "cut": 1, "int8": True,
                                 "float_gemm": False, "tail_only": True},
    "elasticzo-int8-cut2": {"engine": "edgetrain", "method": "elasticzo-int8", "cut": 2, "int8": True,
                            "float_gemm": False},
    "elasticzo-int8-cut2-tail": {"engine": "edgetrain", "method": "elasticzo-int8", "cut": 2, "int8": True,
                                 "float_gemm": False, "tail_only": True},
    # the same arithmetic with the integer GEMMs through exact float32 BLAS (bit-identical weights)
    "elasticzo-int8-cut2-float-gemm": {"engine": "edgetrain", "method": "elasticzo-int8", "cut": 2, "int8": True,
                                       "float_gemm": True},
}
# each ElasticZO setting → its frozen-head ablation; full BP is our fp32 ``bp`` for all of them
SETTINGS = {k: f"{k}-tail" for k in METHODS if f"{k}-tail" in METHODS}
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MEMORY_ENV = {**CHILD_ENV, "MALLOC_MMAP_THRESHOLD_": str(4096)}


# -- preparation (host side: torch, export, quantisation) ------------------------------------
def prepare(workdir: Path, seeds: list, pretrain_epochs: int, shifts=SHIFTS) -> dict:
    """Data arrays (MNIST, and per shift the user samples and the test set), per seed the
    initial and the pretrained lenet5 as torch weights, fp32 ONNX and int8 ONNX (calibrated
    on 256 clean training samples)."""
    import torch
    from edgetrain.export import datasets
    from edgetrain.export import build, export_onnx, quantize
    from edgetrain.export.train_torch import accuracy, train
    d = datasets.load("mnist")
    arrays = {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test, "y_test": d.y_test}
    for kind in shifts:
        if kind == "digits":
            g = datasets.load("digits")
            arrays.update({f"x_user_{kind}": g.x_train[:N_USER], f"y_user_{kind}": g.y_train[:N_USER],
                           f"x_test_{kind}": g.x_test, f"y_test_{kind}": g.y_test})
        else:
            arrays.update({f"x_user_{kind}": datasets.user_shift(d.x_train[:N_USER], kind),
                           f"y_user_{kind}": d.y_train[:N_USER],
                           f"x_test_{kind}": datasets.user_shift(d.x_test, kind), f"y_test_{kind}": d.y_test})
    np.savez(workdir / "data.npz", **arrays)
    pretrained = {}
    for s in seeds:
        for kind in ("scratch", "pretrained"):
            module = build("lenet5", seed=s)
            if kind == "pretrained":
                train(module, d.x_train, d.y_train, epochs=pretrain_epochs, lr=2e-3, seed=s, progress=False)
                pretrained[s] = {"clean_test_acc": accuracy(module, d.x_test, d.y_test),
                                 **{f"{k}_test_acc": accuracy(module, arrays[f"x_test_{k}"], arrays[f"y_test_{k}"])
                                    for k in shifts}}
            torch.save(module.state_dict(), workdir / f"{kind}_{s}.pt")
            export_onnx(module, workdir / f"{kind}_{s}.onnx")
            quantize(workdir / f"{kind}_{s}.onnx", workdir / f"{kind}_{s}.int8.onnx", d.x_train[:N_CALIB])
    return pretrained


# -- learners: one small interface over the three engines -------------------------------------
class EdgetrainLearner:
    def __init__(self, path, spec, seed):
        import edgetrain
        from edgetrain.trainer import Trainer
        model = edgetrain.load(str(path), float_gemm=spec.get("float_gemm", True))
        # the frozen-head ablation: the same Trainer training only the tail's layers
        trainable = [l.name for l in model.layers()[-spec["cut"]:]] if spec.get("tail_only") else None
        self.trainer = Trainer(model, method=spec["method"], cut=spec["cut"], batch_size=BATCH, seed=seed,
                               trainable=trainable)
        self.rolled_back = 0

    def step(self, x, y) -> float:
        m = self.trainer.step(x, y)
        self.rolled_back += bool(m.get("rolled_back"))
        return m["step_time_s"]

    def accuracy(self, x, y) -> float:
        return self.trainer.evaluate(x, y)["accuracy"]

    def hyper(self) -> dict:
        return {"cut": self.trainer.cut, **self.trainer.hyper,
                "trained": [l.name for l in self.trainer.layers]}


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


def run_steps(learner, x, y, steps: int, seed: int, evaluate, at=()):
    """``steps`` steps in Trainer.fit's batch order (epochs go on past the first); returns the
    step times and ``{k: evaluate()}`` after each step count ``k`` in ``at`` (0: before any)."""
    per_epoch = len(x) // BATCH
    times, scores = [], {}
    if 0 in at:
        scores[0] = evaluate()
    for k in range(steps):
        epoch, b = divmod(k, per_epoch)
        if b == 0:
            order = np.random.default_rng([seed, epoch]).permutation(len(x))
        idx = order[b * BATCH:(b + 1) * BATCH]
        times.append(learner.step(x[idx], y[idx]))
        if k + 1 in at:
            scores[k + 1] = evaluate()
    return times, scores


# -- child processes ------------------------------------------------------------------------------
def train_worker(key: str, workdir: Path) -> dict:
    """From scratch and personalisation on every shift, every seed, for one method; accuracy
    after each epoch and at the step counts the config's budgets name (equal wall-clock)."""
    cfg = json.loads((workdir / "config.json").read_text())
    d = dict(np.load(workdir / "data.npz"))
    budget = cfg["budgets"].get(key, {"scratch": [], "pers": []})
    out = {"scratch": [], "personalisation": [], "hyper": None}
    for s in cfg["seeds"]:
        t0 = time.perf_counter()
        learner = make_learner(key, workdir, "scratch", s)
        out["hyper"] = learner.hyper()
        per_epoch = len(d["x_train"]) // BATCH
        at = {per_epoch * (e + 1) for e in range(cfg["epochs"])} | set(budget["scratch"])
        times, scores = run_steps(learner, d["x_train"], d["y_train"], max(at), s,
                                  lambda: learner.accuracy(d["x_test"], d["y_test"]), at)
        steps = per_epoch * cfg["epochs"]
        out["scratch"].append({"seed": s, "test_acc": scores[steps], "at_steps": scores, "steps": steps,
                               "step_times_s": times[:steps], "rolled_back": learner.rolled_back,
                               "seconds": time.perf_counter() - t0})
        print(f"  {key} seed {s}: from scratch {scores[steps]:.4f} after {steps} steps "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        for kind in cfg["shifts"]:
            learner = make_learner(key, workdir, "pretrained", s)
            x, y = d[f"x_user_{kind}"], d[f"y_user_{kind}"]
            xt, yt = d[f"x_test_{kind}"], d[f"y_test_{kind}"]
            per_epoch = len(x) // BATCH
            at = {0, per_epoch, per_epoch * cfg["pers_epochs"]} | set(budget["pers"])
            times, scores = run_steps(learner, x, y, max(at), s, lambda: learner.accuracy(xt, yt), at)
            record = {"seed": s, "shift": kind, "at_steps": scores, "steps_per_epoch": per_epoch,
                      "rolled_back": learner.rolled_back}
            if kind == "translate":  # issue #3's recovered fraction needs the clean accuracy before
                record["clean_before"] = make_learner(key, workdir, "pretrained", s).accuracy(d["x_test"],
                                                                                             d["y_test"])
            out["personalisation"].append(record)
            print(f"  {key} seed {s}: {kind} {scores[0]:.4f} → {scores[per_epoch]:.4f} (1 pass) → "
                  f"{scores[per_epoch * cfg['pers_epochs']]:.4f}", file=sys.stderr, flush=True)
    return out


def timing_worker(setting: str, workdir: Path) -> dict:
    """Median step times of an ElasticZO setting, its frozen-head ablation and full BP,
    measured in this one process with their steps interleaved (the order rotating each
    round), so the machine's load weighs on all three alike."""
    d = np.load(workdir / "data.npz")
    keys = [setting, SETTINGS[setting], "bp"]
    learners = [make_learner(k, workdir, "pretrained", 0) for k in keys]
    x, y = d["x_train"], d["y_train"]
    times = {k: [] for k in keys}
    for r in range(TIMING_ROUNDS + 1):
        idx = np.arange(r * BATCH, (r + 1) * BATCH) % len(x)
        for i in range(3):
            j = (i + r) % 3
            t = learners[j].step(x[idx], y[idx])
            if r:  # round 0 warms up
                times[keys[j]].append(t)
    return {k: float(np.median(v)) for k, v in times.items()}


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
def _ms(values) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def summarise(key: str, train: dict, memory: dict, cfg: dict) -> dict:
    """One method's row of the main table: from scratch, the translation shift after one pass
    (issue #3's protocol), step time, memory."""
    times = [t for r in train["scratch"] for t in r["step_times_s"]]
    translate = [p for p in train["personalisation"] if p["shift"] == "translate"]
    one = str(translate[0]["steps_per_epoch"])
    row = {"method": key, "hyper": train["hyper"],
           "scratch_acc": _ms([r["test_acc"] for r in train["scratch"]]),
           "median_step_ms": 1e3 * float(np.median(times)),
           "scratch_rolled_back": sum(r["rolled_back"] for r in train["scratch"]),
           "pers_translate_before": _ms([p["at_steps"]["0"] for p in translate]),
           "pers_translate_after": _ms([p["at_steps"][one] for p in translate]),
           "pers_translate_recovered": _ms([(p["at_steps"][one] - p["at_steps"]["0"]) /
                                            (p["clean_before"] - p["at_steps"]["0"]) for p in translate])}
    row.update(memory)
    row["step_over_inference_traced"] = memory["step_traced_bytes"] / memory["inference_traced_bytes"]
    return row


def ablation(setting: str, raw: dict, cfg: dict) -> dict:
    """An ElasticZO setting beside its frozen-head ablation and full BP: from scratch and on
    every shift, at equal steps and at equal wall-clock (mean ± std over seeds)."""
    tail, bp = SETTINGS[setting], "bp"
    ratio = cfg["timing"][setting]
    out = {"step_ms": {k: 1e3 * ratio[k] for k in ratio}, "scratch": {}, "pers": {}}
    steps = raw[setting]["train"]["scratch"][0]["steps"]

    def at(key, regime, n, shift=None):
        runs = raw[key]["train"][regime]
        return _ms([r["at_steps"][str(n)] for r in runs if shift is None or r["shift"] == shift])
    sc = out["scratch"]
    sc["elasticzo"], sc["tail"], sc["bp"] = (at(k, "scratch", steps) for k in (setting, tail, bp))
    for who in ("tail", "bp"):
        n = equal_time_steps(steps, cfg, setting, SETTINGS[setting] if who == "tail" else "bp")
        sc[f"{who}_time"], sc[f"{who}_time_steps"] = at(SETTINGS[setting] if who == "tail" else bp, "scratch", n), n
    for shift in cfg["shifts"]:
        per_epoch = next(r["steps_per_epoch"] for r in raw[setting]["train"]["personalisation"] if r["shift"] == shift)
        last = per_epoch * cfg["pers_epochs"]
        p = {"before": at(setting, "personalisation", 0, shift)}
        for label, n in (("1", per_epoch), ("end", last)):
            p[f"elasticzo_{label}"], p[f"tail_{label}"], p[f"bp_{label}"] = (
                at(k, "personalisation", n, shift) for k in (setting, tail, bp))
        for who, key in (("tail", tail), ("bp", bp)):
            n = equal_time_steps(last, cfg, setting, key)
            p[f"{who}_time"], p[f"{who}_time_steps"] = at(key, "personalisation", n, shift), n
        for label in ("1", "end"):  # the head's gain over the ablation, and the share of the BP gap it closes
            gain = p[f"elasticzo_{label}"]["mean"] - p[f"tail_{label}"]["mean"]
            gap = p[f"bp_{label}"]["mean"] - p[f"tail_{label}"]["mean"]
            p[f"gain_{label}"], p[f"closed_{label}"] = gain, (gain / gap if gap > 0 else None)
        out["pers"][shift] = p
    return out


def equal_time_steps(steps: int, cfg: dict, setting: str, other: str) -> int:
    """How many steps of ``other`` take the time of ``steps`` ElasticZO steps of ``setting``."""
    t = cfg["timing"][setting]
    return max(1, round(steps * t[setting] / t[other]))


def targets_issue3(rows: dict) -> list:
    """Issue #3's targets, each with the numbers that decide it (personalisation: the
    translation shift after one pass, as issue #3 measured it)."""
    out = []

    def add(name, met, detail):
        out.append({"target": name, "met": bool(met), "detail": detail})
    zo = rows["zo"]
    for cut in (1, 2):
        ez = rows[f"elasticzo-cut{cut}"]
        for kind, field in (("from scratch", "scratch_acc"), ("personalisation", "pers_translate_after")):
            gap = 100 * (ez[field]["mean"] - zo[field]["mean"])
            add(f"ElasticZO cut {cut} ≥ 5 points above ZO at equal steps ({kind})", gap >= 5,
                f"{100 * ez[field]['mean']:.1f} % vs {100 * zo[field]['mean']:.1f} % → {gap:+.1f} points")
    i8, ez2 = rows["elasticzo-int8-cut2"], rows["elasticzo-cut2"]
    for kind, field in (("from scratch", "scratch_acc"), ("personalisation", "pers_translate_after")):
        gap = 100 * (i8[field]["mean"] - ez2[field]["mean"])
        add(f"INT8 within 1.5 points of fp32 ElasticZO cut 2 ({kind})", gap >= -1.5,
            f"{100 * i8[field]['mean']:.1f} % vs {100 * ez2[field]['mean']:.1f} % → {gap:+.1f} points")
    ratio = ez2["step_traced_bytes"] / i8["step_traced_bytes"]
    add("INT8 step peak memory ≤ 1/1.4 of fp32 ElasticZO cut 2 (tracemalloc)", ratio >= 1.4,
        f"{i8['step_traced_bytes'] / 1024:.0f} KB vs {ez2['step_traced_bytes'] / 1024:.0f} KB → {ratio:.2f}× less")
    ratio = ez2["median_step_ms"] / i8["median_step_ms"]
    add("INT8 step time ≤ fp32 ElasticZO cut 2", ratio >= 1,
        f"{i8['median_step_ms']:.1f} ms vs {ez2['median_step_ms']:.1f} ms → {ratio:.2f}× (fp32/int8)")
    ez1, tb = rows["elasticzo-cut1"], rows["torch-bp"]
    ratio = tb["step_rss_growth_bytes"] / max(ez1["step_rss_growth_bytes"], 1)
    add("ElasticZO cut 1 step peak ≥ 3× below torch BP (RSS growth during the step, both)", ratio >= 3,
        f"{ez1['step_rss_growth_bytes'] / 2**20:.2f} MB vs {tb['step_rss_growth_bytes'] / 2**20:.2f} MB → "
        f"{ratio:.2f}× below")
    for key, r in rows.items():
        rec = r["pers_translate_recovered"]
        add(f"personalisation recovers ≥ half of the shift's loss ({key})", rec["mean"] >= 0.5,
            f"{rec['mean']:.2f} ± {rec['std']:.2f} of the loss ({100 * r['pers_translate_before']['mean']:.1f} % → "
            f"{100 * r['pers_translate_after']['mean']:.1f} %)")
    return out


def targets_issue11(rows: dict, abl: dict, cfg: dict) -> list:
    """Issue #11's targets, each with the numbers that decide it."""
    out = []

    def add(name, met, detail):
        out.append({"target": name, "met": bool(met), "detail": detail})
    for label, what in (("end", f"{cfg['pers_epochs']} passes"), ("1", "1 pass")):
        met_shifts = []
        for shift in (k for k in HEAD_SHIFTS if k in cfg["shifts"]):
            parts, ok = [], True
            for setting in SETTINGS:
                p = abl[setting]["pers"][shift]
                gain, closed = 100 * p[f"gain_{label}"], p[f"closed_{label}"]
                good = gain >= 3 and closed is not None and closed >= 0.4
                ok &= good
                parts.append(f"{setting} {gain:+.1f} pts, " + ("no gap" if closed is None else f"{100 * closed:.0f} %"))
            met_shifts += [shift] if ok else []
            add(f"{shift}, {what}: head ≥ 3 points over the frozen head and ≥ 40 % of the tail→BP gap closed, "
                "every setting", ok, "; ".join(parts))
        add(f"personalisation ({what}): the above on at least two of {HEAD_SHIFTS} (run: {cfg['shifts']})",
            len(met_shifts) >= 2,
            f"met on {met_shifts or 'none'}")
    for setting in ("elasticzo-cut2", "elasticzo-int8-cut2"):
        sc = abl[setting]["scratch"]
        gain = 100 * (sc["elasticzo"]["mean"] - sc["tail"]["mean"])
        add(f"from scratch, {setting}: ≥ frozen head + 10 points ({cfg['epochs']} epochs)", gain >= 10,
            f"{100 * sc['elasticzo']['mean']:.1f} % vs {100 * sc['tail']['mean']:.1f} % → {gain:+.1f} points")
    for setting in SETTINGS:
        r = rows[setting]["step_over_inference_traced"]
        add(f"{setting}: step peak ≤ 1.1× inference (tracemalloc)", r <= 1.1, f"{r:.2f}×")
    return out


def print_report(result: dict, out=sys.stderr):
    cfg, rows, abl = result["config"], result["rows"], result["ablation"]
    pm = lambda v: f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"  # noqa: E731
    print(f"\nlenet5, MNIST {cfg['n_train']}/{cfg['n_test']}, batch {BATCH}, seeds {cfg['seeds']}; from scratch: "
          f"{cfg['epochs']} epochs ({cfg['steps_per_epoch']} steps each) from default init; personalisation: "
          f"pretrained {cfg['pretrain_epochs']} epochs (torch Adam 2e-3), {cfg['pers_epochs']} passes over "
          f"{N_USER} user samples ({N_USER // BATCH} steps each). Step time: median over all from-scratch steps, "
          "1 thread. Memory: one step at batch 32, fresh process.\n", file=out)
    print("| method | from scratch acc % | translate, 1 pass: after acc % | recovered fraction | median step ms "
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
        traced = lambda b: f"{b / 1024:.0f}" + (" (native allocs unseen)" if native else "")  # noqa: E731
        rec = r["pers_translate_recovered"]
        print(f"| {key} | {pm(r['scratch_acc'])} | {pm(r['pers_translate_after'])} "
              f"| {rec['mean']:.2f} ± {rec['std']:.2f} | {r['median_step_ms']:.1f} "
              f"| {traced(r['step_traced_bytes'])} | {traced(r['inference_traced_bytes'])} "
              f"| {'n/a' if native else format(r['step_over_inference_traced'], '.2f')} "
              f"| {r['step_peak_rss_bytes'] / 2**20:.1f} | {r['step_rss_growth_bytes'] / 2**20:.2f} "
              f"| {r['inference_rss_growth_bytes'] / 2**20:.2f} |", file=out)
    print("\nEach ElasticZO setting beside its frozen-head ablation (the tail alone) and full BP (fp32 `bp`), "
          "test accuracy %. Equal time: as many steps as fit in the ElasticZO run's time (steps in brackets), "
          "from median step times measured interleaved in one process (ms: ElasticZO / tail / BP).\n", file=out)
    print(f"From scratch ({cfg['epochs']} epochs):\n", file=out)
    print("| setting | step ms | ElasticZO | tail only | tail only, equal time | full BP | full BP, equal time "
          "| head's gain (pts) |", file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    for setting, a in abl.items():
        sc, t = a["scratch"], a["step_ms"]
        print(f"| {setting} | {t[setting]:.1f} / {t[SETTINGS[setting]]:.1f} / {t['bp']:.1f} | {pm(sc['elasticzo'])} "
              f"| {pm(sc['tail'])} | {pm(sc['tail_time'])} ({sc['tail_time_steps']}) | {pm(sc['bp'])} "
              f"| {pm(sc['bp_time'])} ({sc['bp_time_steps']}) "
              f"| {100 * (sc['elasticzo']['mean'] - sc['tail']['mean']):+.1f} |", file=out)
    e = cfg["pers_epochs"]
    print(f"\nPersonalisation (1 and {e} passes over {N_USER} user samples; equal time: {e} ElasticZO passes' "
          "time; gain: ElasticZO − tail only; closed: gain / (full BP − tail only)):\n", file=out)
    print(f"| setting | shift | before | ElasticZO 1 / {e} | tail only 1 / {e} | tail only, equal time "
          f"| full BP 1 / {e} | full BP, equal time | gain 1 / {e} (pts) | closed 1 / {e} |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    closed = lambda c: "–" if c is None else f"{100 * c:.0f} %"  # noqa: E731
    for setting, a in abl.items():
        for shift, p in a["pers"].items():
            print(f"| {setting} | {shift} | {pm(p['before'])} | {pm(p['elasticzo_1'])} / {pm(p['elasticzo_end'])} "
                  f"| {pm(p['tail_1'])} / {pm(p['tail_end'])} | {pm(p['tail_time'])} ({p['tail_time_steps']}) "
                  f"| {pm(p['bp_1'])} / {pm(p['bp_end'])} | {pm(p['bp_time'])} ({p['bp_time_steps']}) "
                  f"| {100 * p['gain_1']:+.1f} / {100 * p['gain_end']:+.1f} "
                  f"| {closed(p['closed_1'])} / {closed(p['closed_end'])} |", file=out)
    print("\nHyperparameters (edgetrain: the Trainer's defaults):\n", file=out)
    for key in METHODS:
        if key in rows:
            print(f"- {key}: {rows[key]['hyper']}", file=out)
    for title, items in (("issue #3", result["targets_issue3"]), ("issue #11", result["targets_issue11"])):
        print(f"\nTargets of {title}:\n", file=out)
        for t in items:
            print(f"- {'MET' if t['met'] else 'MISSED'}: {t['target']}: {t['detail']}", file=out)
    print(f"\nwall time {result['wall_s'] / 60:.1f} min", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="from-scratch epochs (125 steps each)")
    p.add_argument("--pers-epochs", type=int, default=5, help="personalisation passes over the user samples")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=5)
    p.add_argument("--ort-training-python", metavar="PY",
                   help="a Python with onnxruntime-training (and onnx ≤ 1.17) installed; without it, skipped")
    p.add_argument("--only", nargs="+", choices=list(METHODS), help="run only these methods (an ElasticZO "
                   "setting's ablation needs it, its -tail and bp)")
    p.add_argument("--shifts", nargs="+", choices=SHIFTS, default=list(SHIFTS),
                   help="personalisation shifts to run (translate always runs: issue #3's rows need it)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", nargs=3, metavar=("KIND", "METHOD", "WORKDIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, key, workdir = args.worker
        fn = {"train": train_worker, "memory": memory_worker, "timing": timing_worker}[kind]
        print(json.dumps(fn(key, Path(workdir))))
        return
    if min(args.epochs, args.pers_epochs, args.seeds, args.pretrain_epochs) < 1:
        p.error("--epochs, --pers-epochs, --seeds and --pretrain-epochs must be ≥ 1")
    if args.ort_training_python and not os.access(args.ort_training_python, os.X_OK):
        p.error(f"--ort-training-python {args.ort_training_python!r} is not an executable")
    keys = [k for k in (args.only or METHODS) if k != "ort-training-bp" or args.ort_training_python]
    shifts = [k for k in SHIFTS if k in set(args.shifts) | {"translate"}]
    settings = [k for k in SETTINGS if {k, SETTINGS[k], "bp"} <= set(keys)]
    start = time.perf_counter()
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="edgetrain-bench-train-") as tmp:
        workdir = Path(tmp)
        print("preparing models (torch pretraining, export, quantisation)…", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):
            pretrained = prepare(workdir, seeds, args.pretrain_epochs, shifts)
        data = np.load(workdir / "data.npz")
        cfg = {"epochs": args.epochs, "pers_epochs": args.pers_epochs, "seeds": seeds,
               "pretrain_epochs": args.pretrain_epochs, "batch_size": BATCH, "n_train": len(data["x_train"]),
               "n_test": len(data["x_test"]), "steps_per_epoch": len(data["x_train"]) // BATCH, "shifts": shifts,
               "n_user": N_USER, "n_calib": N_CALIB, "torch_pretrained": pretrained,
               "ort_training_python": args.ort_training_python, "cpu_count": os.cpu_count(), "commit": _git_commit(),
               "timing": {}, "budgets": {}}
        (workdir / "config.json").write_text(json.dumps(cfg))
        for setting in settings:  # step-time ratios first: they set the equal-time budgets
            print(f"{setting}: timing against {SETTINGS[setting]} and bp…", file=sys.stderr, flush=True)
            cfg["timing"][setting] = run_child(sys.executable, "timing", setting, workdir, CHILD_ENV)
        for setting in settings:
            for other in (SETTINGS[setting], "bp"):
                b = cfg["budgets"].setdefault(other, {"scratch": [], "pers": []})
                b["scratch"].append(equal_time_steps(cfg["epochs"] * cfg["steps_per_epoch"], cfg, setting, other))
                b["pers"].append(equal_time_steps(args.pers_epochs * (N_USER // BATCH), cfg, setting, other))
        (workdir / "config.json").write_text(json.dumps(cfg))
        rows, raw = {}, {}
        for key in keys:
            python = args.ort_training_python if METHODS[key]["engine"] == "ort" else sys.executable
            print(f"{key}: training…", file=sys.stderr, flush=True)
            train = run_child(python, "train", key, workdir, CHILD_ENV)
            print(f"{key}: memory…", file=sys.stderr, flush=True)
            memory = run_child(python, "memory", key, workdir, MEMORY_ENV)
            raw[key] = {"train": train, "memory": memory}
            rows[key] = summarise(key, train, memory, cfg)
    abl = {setting: ablation(setting, raw, cfg) for setting in settings}
    result = {"config": cfg, "rows": rows, "ablation": abl, "raw": raw, "wall_s": time.perf_counter() - start}
    needed = {"zo", "elasticzo-cut1", "elasticzo-cut2", "elasticzo-int8-cut2", "torch-bp"}
    result["targets_issue3"] = targets_issue3(rows) if needed <= set(rows) else []
    result["targets_issue11"] = targets_issue11(rows, abl, cfg) if set(settings) == set(SETTINGS) else []
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
