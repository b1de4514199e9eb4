"""Deployment figures (issue #13): what a bundle weighs, how long a push takes over SSH,
and what one epoch of training costs on the device side.

- Bundle size: the signed bundle of the pinned int8 LeNet-5 (``edgetrain deploy -o``),
  member by member, against the ONNX file alone and against onnxruntime-training, the
  engine a device would otherwise install to train: its wheel for this machine as pip
  downloads it (``pip download --no-deps``), and with ``--ort-installed`` its installed
  size in a fresh venv, dependencies included (``bench/install_size.py``'s measure).
- Push time: ``edgetrain deploy`` to an OpenSSH server on a loopback port (its own
  host key and user key, as the tests start it), ``--repeat`` times; the transfer alone
  (``push_seconds``) and the whole deploy (build, sign, send, verify, install). Then a
  fleet: one ``deploy --targets`` to ``--fleet`` device folders behind that server, at
  each ``--parallel``; every device's installer runs on this machine too, so this
  measures the provider's side and the devices' together, on this machine's cores.
- TFLite: the pinned int8 LeNet-5s (per channel, per tensor) written by
  ``export-tflite`` and run by LiteRT (ai-edge-litert) against our runtime on the 1,000
  test images.
- One epoch: ``edgetrain device train`` on the installed release, in a fresh process,
  over ``--samples`` user images (MNIST shifted 3 px) at the bundle's batch size; wall
  time and the process's peak RSS (``wait4``), per backend the machine has (numpy,
  and the native kernels when installed). ``--arm64-root ROOTFS`` adds the same epoch
  under ``qemu-aarch64-static -L ROOTFS`` with the userland's own python3, whose
  numpy and onnx must be installed there.

    python bench/deploy.py [--sections bundle push epoch tflite] [--repeat 5] [--fleet 8 --parallel 1 4 8]
                           [--samples 500] [--ort-installed] [--arm64-root DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
MODEL = REPO / "tests" / "data" / "lenet5.int8.onnx"
ORT_TRAINING = "onnxruntime-training==1.19.2"


def edgetrain(*argv, env=None) -> dict:
    """``edgetrain ARGV --json`` in a fresh process: its result (RuntimeError on failure)."""
    proc = subprocess.run([sys.executable, "-m", "edgetrain.cli", *map(str, argv), "--json"], capture_output=True,
                          text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"edgetrain {argv[0]} failed: {proc.stderr.strip()}")
    return json.loads(lines[-1])


def host_profile() -> str:
    return {"x86_64": "x86-host", "aarch64": "generic-aarch64"}[platform.machine()]


def bundle_sizes(tmp: Path, key: Path) -> dict:
    path = tmp / "lenet5.bundle"
    built = edgetrain("deploy", MODEL, "--device", host_profile(), "--cut", "3", "--key", key, "-o", path)
    with tarfile.open(path) as tar:
        members = {m.name: m.size for m in tar}
    return {"onnx_bytes": MODEL.stat().st_size, "bundle_bytes": path.stat().st_size, "members": members,
            "release": built["release"]}


def ort_training_sizes(tmp: Path, installed: bool) -> dict:
    got = tmp / "ortt"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-cache-dir", "-d", got,
                    ORT_TRAINING], check=True, stdout=sys.stderr)
    wheel = next(got.glob("*.whl"))
    out = {"package": ORT_TRAINING, "wheel": wheel.name, "wheel_bytes": wheel.stat().st_size}
    if installed:
        from install_size import installed_size
        out["installed_bytes"] = installed_size([ORT_TRAINING], tmp, "ortt-venv")["bytes"]
    return out


def push_times(tmp: Path, key: Path, repeat: int, fleet: int, parallels: list[int]) -> dict:
    from sshd_server import MISSING, Sshd
    if MISSING:
        return {"skipped": MISSING}
    (tmp / "sshd").mkdir()
    server = Sshd(tmp / "sshd", Path(sys.executable), tmp / "cache")
    try:
        rows = []
        for i in range(repeat):
            start = time.perf_counter()
            r = edgetrain("deploy", MODEL, "--device", host_profile(), "--cut", "3", "--key", key, "--target",
                          server.target(tmp / f"device-ssh-{i}"), "--ssh-config", server.ssh_config)
            rows.append({"push_seconds": r["push_seconds"], "install_seconds": r["install_seconds"],
                         "deploy_seconds": time.perf_counter() - start, "bundle_bytes": r["bundle_bytes"]})
        fleets = []
        for parallel in parallels:  # one `deploy --targets` to `fleet` device folders behind the same sshd
            hosts = tmp / f"hosts-{parallel}.txt"
            hosts.write_text("".join(f"{server.target(tmp / f'fleet-{parallel}-{i}')}\n" for i in range(fleet)))
            start = time.perf_counter()
            r = edgetrain("deploy", MODEL, "--device", host_profile(), "--cut", "3", "--key", key, "--targets", hosts,
                          "--parallel", parallel, "--ssh-config", server.ssh_config)
            fleets.append({"devices": fleet, "parallel": parallel, "succeeded": r["succeeded"],
                           "seconds": time.perf_counter() - start})
    finally:
        server.stop()
    med = {k: statistics.median(r[k] for r in rows) for k in ("push_seconds", "install_seconds", "deploy_seconds")}
    return {"repeat": repeat, "bundle_bytes": rows[0]["bundle_bytes"], **{f"median_{k}": v for k, v in med.items()},
            "runs": rows, "fleets": fleets}


# A small launcher: the measured process's ru_maxrss would otherwise include the memory
# of this (large) process, which it is forked from before it execs.
LAUNCH = ("import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); "
          "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
          "sys.exit(r.returncode)")


def _peak(argv, env) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one process."""
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *argv], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr[-500:]}")
    seconds, kib = proc.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) * 1024, proc.stdout


def trained_digest(root: Path) -> str:
    """sha256 over the arrays of the device's checkpoint, in name order."""
    import hashlib
    (ck,) = (root / "results").glob("*/checkpoint.npz")
    with np.load(ck) as z:
        return hashlib.sha256(b"".join(z[n].tobytes() for n in sorted(z.files))).hexdigest()


def epochs(tmp: Path, key: Path, samples: int, arm64_root: str | None) -> list[dict]:
    from edgetrain.export import datasets
    data = datasets.load("mnist")
    user = tmp / "user.npz"
    np.savez(user, x=np.roll(data.x_train[:samples], 3, axis=-1), y=data.y_train[:samples])
    import importlib.util
    backends = ["numpy"] + (["native"] if importlib.util.find_spec("edgetrain_kernels") else [])
    rows = []
    runs = [("host", backend) for backend in backends] + ([("qemu-aarch64", "numpy")] if arm64_root else [])
    for where, backend in runs:
        root = tmp / f"device-{where}-{backend}"
        env = {**os.environ, "EDGETRAIN_BACKEND": backend, "OPENBLAS_NUM_THREADS": "1"}
        if where == "host":
            edgetrain("deploy", MODEL, "--device", host_profile(), "--cut", "3", "--key", key, "--target", f"dir:{root}")
            python = [sys.executable]
        else:  # the device's own installer in the arm64 userland, from the bundle's wheel
            python = ["qemu-aarch64-static", "-L", arm64_root, f"{arm64_root}/usr/bin/python3"]
            bundle = tmp / "arm64.bundle"
            edgetrain("deploy", MODEL, "--device", "generic-aarch64", "--cut", "3", "--key", key, "-o", bundle)
            with tarfile.open(bundle) as tar:
                (member,) = [m for m in tar if m.name.startswith("wheels/edgetrain-")]
                (tmp / "boot.whl").write_bytes(tar.extractfile(member).read())
            subprocess.run([*python, "-m", "edgetrain.cli", "device", "--root", root, "install", bundle, "--json"],
                           check=True, capture_output=True, env={**env, "PYTHONPATH": str(tmp / "boot.whl")})
            env["PYTHONPATH"] = f"{root}/current/lib"
        argv = [*python, "-m", "edgetrain.cli", "device", "--root", root, "train", "--data", user, "--json"]
        seconds, rss, out = _peak([str(a) for a in argv], env)
        r = json.loads(out.strip().splitlines()[-1])
        rows.append({"where": where, "backend": backend, "samples": samples, "steps": r["steps"],
                     "method": r["method"], "cut": r["cut"], "epoch_seconds": seconds, "peak_rss_bytes": rss,
                     "loss": r["history"][-1]["loss"], "weights_sha256": trained_digest(root)})
    return rows


def tflite_agreement(tmp: Path) -> list[dict]:
    """The pinned int8 LeNet-5s as TFLite files, run by LiteRT against our runtime on the
    1,000 test images: file size, identical outputs, largest difference in LSB, argmax."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter
    import edgetrain
    from edgetrain.export import datasets, tflite
    x = datasets.load("mnist").x_test
    rows = []
    for stem in ("lenet5.int8", "lenet5.int8.per-tensor"):
        model = REPO / "tests" / "data" / f"{stem}.onnx"
        written = tflite.write(str(model), str(tmp / f"{stem}.tflite"))
        it = Interpreter(model_path=str(tmp / f"{stem}.tflite"))
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        theirs = it.get_tensor(it.get_output_details()[0]["index"])
        ours = edgetrain.load(model).run(x)
        graph = onnx.load(model).graph
        dq = next(n for n in graph.node if n.op_type == "DequantizeLinear")
        lsb = float(onnx.numpy_helper.to_array(next(i for i in graph.initializer if i.name == dq.input[1])))
        rows.append({"model": stem, "onnx_bytes": model.stat().st_size, "tflite_bytes": written["bytes"],
                     "identical": float((theirs == ours).mean()),
                     "max_lsb": int(np.abs(np.rint((theirs - ours) / lsb)).max()),
                     "argmax_agreement": float((theirs.argmax(1) == ours.argmax(1)).mean()), "values": int(ours.size)})
    return rows


SECTIONS = ("bundle", "push", "epoch", "tflite")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="pushes over SSH (default 5)")
    p.add_argument("--fleet", type=int, default=8, help="device folders behind one sshd for --targets (default 8)")
    p.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8], help="--parallel values (default 1 4 8)")
    p.add_argument("--samples", type=int, default=500, help="user images in the epoch (default 500)")
    p.add_argument("--ort-installed", action="store_true", help="also install onnxruntime-training in a venv")
    p.add_argument("--arm64-root", help="an arm64 Debian userland with python3, numpy and onnx (qemu-user-static)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgetrain-bench-deploy-") as t:
        tmp = Path(t)
        key = tmp / "provider.key"
        edgetrain("keygen", "-o", key)
        run = {"bundle": lambda: {**bundle_sizes(tmp, key),
                                  "onnxruntime_training": ort_training_sizes(tmp, args.ort_installed)},
               "push": lambda: push_times(tmp, key, args.repeat, args.fleet, args.parallel),
               "epoch": lambda: epochs(tmp, key, args.samples, args.arm64_root),
               "tflite": lambda: tflite_agreement(tmp)}
        result = {name: run[name]() for name in args.sections}
    if args.json:
        print(json.dumps(result))
        return
    if "bundle" in result:
        b = result["bundle"]
        o = b["onnxruntime_training"]
        print("| file | bytes | bundle / it |\n|---|---|---|")
        print(f"| bundle (signed tar) | {b['bundle_bytes']:,} | 1.00 |")
        for name, size in b["members"].items():
            print(f"| · {name} | {size:,} | |")
        print(f"| the ONNX file alone | {b['onnx_bytes']:,} | {b['bundle_bytes'] / b['onnx_bytes']:.2f} |")
        print(f"| {o['wheel']} (pip download) | {o['wheel_bytes']:,} | {b['bundle_bytes'] / o['wheel_bytes']:.4f} |")
        if "installed_bytes" in o:
            print(f"| {o['package']} installed (with dependencies) | {o['installed_bytes']:,} | "
                  f"{b['bundle_bytes'] / o['installed_bytes']:.5f} |")
        print()
    push = result.get("push")
    if push and "skipped" in push:
        print(f"push over SSH: skipped ({push['skipped']})\n")
    elif push:
        print(f"push over loopback SSH, median of {push['repeat']}: transfer {push['median_push_seconds']:.3f} s, "
              f"verify + install {push['median_install_seconds']:.3f} s, whole deploy {push['median_deploy_seconds']:.2f} s")
        print("\n| devices | --parallel | succeeded | seconds | devices / min |\n|---|---|---|---|---|")
        for f in push["fleets"]:
            print(f"| {f['devices']} | {f['parallel']} | {f['succeeded']} | {f['seconds']:.1f} | "
                  f"{60 * f['devices'] / f['seconds']:.0f} |")
        print()
    if "epoch" in result:
        print("| where | backend | method (cut) | samples | steps | epoch s (process) | peak RSS MB | weights sha256 |\n"
              "|---|---|---|---|---|---|---|---|")
        for r in result["epoch"]:
            print(f"| {r['where']} | {r['backend']} | {r['method']} ({r['cut']}) | {r['samples']} | {r['steps']} | "
                  f"{r['epoch_seconds']:.2f} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['weights_sha256'][:12]} |")
        print()
    if "tflite" in result:
        print("| model | ONNX bytes | TFLite bytes | outputs identical (LiteRT vs ours) | max LSB | argmax agree |\n"
              "|---|---|---|---|---|---|")
        for r in result["tflite"]:
            print(f"| {r['model']} | {r['onnx_bytes']:,} | {r['tflite_bytes']:,} | {r['identical']:.2%} of "
                  f"{r['values']:,} | {r['max_lsb']} | {r['argmax_agreement']:.2%} |")


if __name__ == "__main__":
    main()
