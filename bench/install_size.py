"""Installed size on disk: the device-side edgetrain install against onnxruntime-training and torch.

Each package set goes into a fresh virtual environment; its size is that of
site-packages after the install minus that of an empty environment (pip and
setuptools), so dependencies count and the venv's own tools do not.

    python bench/install_size.py [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "edgetrain (device: numpy + onnx)": [str(REPO)],
    "onnxruntime-training 1.19.2": ["onnxruntime-training==1.19.2"],
    "torch 2.15.0": ["torch==2.15.0"],
}


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def site_packages(env: Path) -> Path:
    return next(env.glob("lib/python3*/site-packages"))


def installed_size(packages: list[str], tmp: Path, name: str) -> int:
    env = tmp / name
    venv.create(env, with_pip=True)
    base = dir_size(site_packages(env))
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", *packages],
                   check=True, stdout=sys.stderr)
    return dir_size(site_packages(env)) - base


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="edgetrain-size-") as tmp:
        for i, (label, packages) in enumerate(CANDIDATES.items()):
            print(f"installing {label}…", file=sys.stderr, flush=True)
            sizes[label] = installed_size(packages, Path(tmp), f"env{i}")
    ours = sizes["edgetrain (device: numpy + onnx)"]
    print("\n| install | size on disk (MB) | edgetrain's share |\n|---|---|---|", file=sys.stderr)
    for label, size in sizes.items():
        print(f"| {label} | {size / 2**20:.0f} | {ours / size:.3f} |", file=sys.stderr)
    if args.json:
        print(json.dumps({"bytes": sizes, "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
