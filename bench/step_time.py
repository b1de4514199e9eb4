"""ElasticZO step time at this tree's defaults against another commit's (issue #11: "step
time ≤ 1.5× today's at the chosen defaults").

The other commit's ``runtime/`` is extracted with ``git archive`` and imported as
``edgetrain`` ahead of the installed one. Each measurement is a fresh process on one
thread that times ``--steps`` steps of each setting (after one warm-up step) on lenet5
at batch 32 and reports the median; the two trees alternate ``--rounds`` times, so the
machine's load weighs on both alike, and the ratio is of the medians over rounds.

    python bench/step_time.py [--against 623ceb6] [--steps 40] [--rounds 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import io
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 32
# (method, cut, int8); int8 runs take numpy's integer matmul, as bench/train.py's do
SETTINGS = [("elasticzo", 1, False), ("elasticzo", 2, False), ("elasticzo-int8", 1, True),
            ("elasticzo-int8", 2, True)]
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def worker(workdir: Path, steps: int) -> dict:
    """Median step time (s) of every setting, in whichever edgetrain this process imports."""
    import edgetrain
    from edgetrain.trainer import Trainer
    d = np.load(workdir / "data.npz")
    x, y = d["x"], d["y"]
    out = {}
    for method, cut, int8 in SETTINGS:
        path = workdir / ("lenet5.int8.onnx" if int8 else "lenet5.onnx")
        trainer = Trainer(edgetrain.load(str(path), float_gemm=not int8), method=method, cut=cut)
        times = []
        for k in range(steps + 1):
            idx = np.arange(k * BATCH, (k + 1) * BATCH) % len(x)
            start = time.perf_counter()
            trainer.step(x[idx], y[idx])
            if k:  # the first step warms up
                times.append(time.perf_counter() - start)
        out[f"{method}-cut{cut}"] = float(np.median(times))
    return out


def prepare(workdir: Path, against: str) -> Path:
    """lenet5 (default init) as fp32 and int8 ONNX, a batch source, and ``against``'s runtime
    as an importable ``edgetrain``; returns the folder to put on PYTHONPATH."""
    from edgetrain.export import build, datasets, export_onnx, quantize
    d = datasets.load("mnist")
    np.savez(workdir / "data.npz", x=d.x_train[:1024], y=d.y_train[:1024])
    export_onnx(build("lenet5", seed=0), workdir / "lenet5.onnx")
    quantize(workdir / "lenet5.onnx", workdir / "lenet5.int8.onnx", d.x_train[:256])
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", against, "runtime"], capture_output=True,
                             check=True).stdout
    old = workdir / "old"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(old)
    (old / "runtime").rename(old / "edgetrain")
    return old


def run_worker(workdir: Path, steps: int, pythonpath: str | None) -> dict:
    env = {**os.environ, **CHILD_ENV}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(workdir), "--steps", str(steps)],
                         stdout=subprocess.PIPE, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="623ceb6", help="the commit whose step is 'today's' (default: before #11)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.steps)))
        return
    with tempfile.TemporaryDirectory(prefix="edgetrain-step-time-") as tmp:
        workdir = Path(tmp)
        old = prepare(workdir, args.against)
        runs = {"new": [], "old": []}
        for r in range(args.rounds):
            for who in (("new", "old") if r % 2 == 0 else ("old", "new")):
                runs[who].append(run_worker(workdir, args.steps, str(old) if who == "old" else None))
    result = {"against": args.against, "steps": args.steps, "rounds": args.rounds, "settings": {}}
    print(f"\nmedian step ms, this tree's defaults vs {args.against}'s (lenet5, batch 32, one thread):\n",
          file=sys.stderr)
    print("| setting | now | before | ratio |\n|---|---|---|---|", file=sys.stderr)
    for key in runs["new"][0]:
        now = float(np.median([r[key] for r in runs["new"]]))
        before = float(np.median([r[key] for r in runs["old"]]))
        result["settings"][key] = {"now_ms": 1e3 * now, "before_ms": 1e3 * before, "ratio": now / before}
        print(f"| {key} | {1e3 * now:.1f} | {1e3 * before:.1f} | {now / before:.2f} |", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
