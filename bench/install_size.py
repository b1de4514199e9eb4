"""Installed size on disk: edgetrain's installs (device, provider, host) against
onnxruntime-training and torch.

Each package set goes into a fresh virtual environment; its size is that of
site-packages after the install minus that of an empty environment (pip and
setuptools), so dependencies count and the venv's own tools do not. The time
is pip's with its cache off (so it downloads everything) on this machine's link.

    python bench/install_size.py [--only LABEL ...] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE = "edgetrain (device: numpy + onnx)"
CANDIDATES = {
    DEVICE: [str(REPO)],
    "edgetrain[provider] (+ onnxruntime, sympy, tqdm)": [f"{REPO}[provider]"],
    "edgetrain[host] (+ torch, matplotlib, data sets)": [f"{REPO}[host]"],
    "onnxruntime-training 1.19.2": ["onnxruntime-training==1.19.2"],
    "torch 2.15.0": ["torch==2.15.0"],
}


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def site_packages(env: Path) -> Path:
    return next(env.glob("lib/python3*/site-packages"))


def installed_size(packages: list[str], tmp: Path, name: str) -> dict:
    env = tmp / name
    venv.create(env, with_pip=True)
    base = dir_size(site_packages(env))
    start = time.perf_counter()
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir", *packages],
                   check=True, stdout=sys.stderr)
    return {"bytes": dir_size(site_packages(env)) - base, "seconds": time.perf_counter() - start}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="LABEL", help="install only the candidates whose label starts so "
                                                             "(the device install always runs: it is the reference)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    chosen = {label: packages for label, packages in CANDIDATES.items()
              if label == DEVICE or not args.only or label.startswith(tuple(args.only))}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="edgetrain-size-") as tmp:
        for i, (label, packages) in enumerate(chosen.items()):
            print(f"installing {label}…", file=sys.stderr, flush=True)
            sizes[label] = installed_size(packages, Path(tmp), f"env{i}")
    ours = sizes[DEVICE]["bytes"]
    print("\n| install | size on disk (MB) | pip install, no cache | edgetrain (device)'s share |\n|---|---|---|---|",
          file=sys.stderr)
    for label, size in sizes.items():
        print(f"| {label} | {size['bytes'] / 2**20:.0f} | {size['seconds']:.0f} s | {ours / size['bytes']:.3f} |",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"installs": sizes, "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
