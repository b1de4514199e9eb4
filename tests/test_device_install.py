"""The device install (DESIGN.md §2): with numpy and onnx alone, edgetrain imports, runs and
trains int8, and the host-only commands say which extra they need.

The venv is built offline in a few seconds: ``python -m venv --without-pip``; one folder of
symlinks to numpy, onnx and onnx's own dependencies (their top-level entries in this
interpreter's site-packages, found through importlib.metadata), named by a ``.pth``; and
edgetrain installed from a copy of its source by ``pip install --no-deps --no-index
--no-build-isolation --target`` (the copy keeps the build's litter out of the worktree).
"""
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

import edgetrain

ROOT = Path(__file__).resolve().parent.parent
DEVICE_DEPENDENCIES = ("numpy", "onnx")
HOST_PACKAGES = ("torch", "onnxruntime", "sklearn", "mlxtend")


def _with_requirements(names) -> dict[str, importlib.metadata.Distribution]:
    """The distributions ``names`` and, recursively, what they require (no extras)."""
    found, todo = {}, list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in found:
            continue
        found[key] = dist
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _link_top_level(dist: importlib.metadata.Distribution, folder: Path):
    """Symlinks in ``folder`` to the distribution's top-level packages, modules and
    metadata (a shared namespace such as protobuf's ``google`` is linked whole)."""
    for top in {Path(f).parts[0] for f in dist.files}:
        if top in ("..", "__pycache__") or (folder / top).exists():
            continue
        (folder / top).symlink_to(Path(dist.locate_file(top)).resolve())


def bare_python(root: Path, dists, extra=()) -> Path:
    """A Python without pip in ``root/venv`` that sees only ``dists`` with their requirements
    (symlinked from this environment into ``root/deps``) and the folders ``extra``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = root / "deps"
    deps.mkdir()
    for dist in _with_requirements(dists).values():
        _link_top_level(dist, deps)
    (Path(site) / "device.pth").write_text("".join(f"{folder}\n" for folder in (deps, *extra)))
    return python


@pytest.fixture(scope="module")
def device_python(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    python = bare_python(root, DEVICE_DEPENDENCIES, extra=[root / "edgetrain"])
    source = root / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    for folder in ("runtime", "export", "prover", "devices"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "--disable-pip-version-check",
                    "--target", root / "edgetrain", source], check=True)
    return python


def _device(python, *args, **kwargs):
    return subprocess.run([python, "-I", *args], capture_output=True, text=True, **kwargs)


def test_device_install_imports_runs_and_trains_int8(device_python, tmp_path, mnist, int8_onnx):
    model = int8_onnx("lenet5")
    x, y = mnist.x_test[:64], mnist.y_test[:64]
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    script = (
        "import importlib.util, json, sys\n"
        "import numpy as np\n"
        "import edgetrain\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('edgetrain.prover', 'edgetrain.export')))\n"
        f"importable = [m for m in {HOST_PACKAGES!r} if importlib.util.find_spec(m)]\n"
        f"data = np.load({str(tmp_path / 'batch.npz')!r})\n"
        f"model = edgetrain.load({str(model)!r})\n"
        "logits = model.run(data['x'])\n"
        "metrics = edgetrain.Trainer(model, method='elasticzo-int8', cut=2, batch_size=32, seed=0)"
        ".step(data['x'][:32], data['y'][:32])\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, logits=logits, **model.params)\n"
        "print(json.dumps({'loaded': loaded, 'importable': importable, 'loss': metrics['loss'],\n"
        "                  'backend': model.backend.name, 'native': importlib.util.find_spec('edgetrain_kernels') is not None}))\n")
    out = _device(device_python, "-c", script)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["loaded"] == [] and r["importable"] == []
    assert r["backend"] == "numpy" and not r["native"]  # no native wheel: the numpy reference runs

    # the same computation on the full install (native kernels when installed): bit for bit the
    # same logits, loss and weights
    reference, before = edgetrain.load(model), edgetrain.load(model).params
    logits = reference.run(x)
    metrics = edgetrain.Trainer(reference, method="elasticzo-int8", cut=2, batch_size=32, seed=0).step(x[:32], y[:32])
    device = np.load(tmp_path / "out.npz")
    assert np.array_equal(device["logits"], logits)
    assert r["loss"] == metrics["loss"]
    assert any(not np.array_equal(v, before[n]) for n, v in reference.params.items())  # the step moved weights
    assert all(np.array_equal(device[n], v) for n, v in reference.params.items())

    out = _device(device_python, "-m", "edgetrain.cli", "run", str(model), "--data", str(tmp_path / "batch.npz"),
                  "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["accuracy"] == float((logits.argmax(1) == y).mean())


def test_host_only_commands_name_the_extra_on_a_device(device_python, tmp_path, int8_onnx):
    model = str(int8_onnx("lenet5"))
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 1, 28, 28), np.float32))
    np.savez(tmp_path / "d.npz", x=np.zeros((64, 1, 28, 28), np.float32), y=np.zeros(64, np.int64))
    host, provider = 'pip install "edgetrain[host]"', 'pip install "edgetrain[provider]"'
    commands = [(["export", "lenet5", "-o", str(tmp_path / "m.onnx")], host),
                (["quantize", model, "-o", str(tmp_path / "q.onnx"), "--calib", str(tmp_path / "calib.npz")],
                 provider),
                (["demo", "--out", str(tmp_path / "demo")], host),
                (["compress", model, "-o", str(tmp_path / "c.onnx"), "--method", "lr2vq", "--data",
                  str(tmp_path / "d.npz")], host),
                (["data", "mnist", "-o", str(tmp_path / "d2.npz")], host),
                (["run", model, "--data", "mnist"], host),
                (["keygen", "-o", str(tmp_path / "k")], provider),  # signing needs cryptography
                (["export-tflite", model, "-o", str(tmp_path / "m.tflite")], '"edgetrain[host]"'),
                (["train", model, "--data", str(tmp_path / "d.npz"), "--plot", str(tmp_path / "c.png")],
                 "pip install matplotlib"),
                (["--help"], None)]
    script = (  # one interpreter for all: importing onnx takes a second or two
        "import contextlib, io, json\n"
        "from edgetrain.cli import main\n"
        "results = []\n"
        f"for argv in {[argv for argv, _ in commands]!r}:\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            code = main(argv)\n"
        "        except SystemExit as e:  # --help\n"
        "            code = e.code\n"
        "    results.append((code, out.getvalue(), err.getvalue()))\n"
        "print(json.dumps(results))\n")
    out = _device(device_python, "-c", script)
    assert out.returncode == 0, out.stderr
    *host_only, (help_code, help_text, _) = json.loads(out.stdout)
    for (argv, extra), (code, _, err) in zip(commands, host_only):
        assert code == 2 and err.startswith(f"edgetrain {argv[0]}: error: "), (argv, err)
        assert err.count("\n") == 1 and extra in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "d.npz"]  # nothing written
    marked = {line.split()[0]: line.split()[1] for line in help_text.splitlines()
              if line.split()[1:2] in (["(host)"], ["(provider)"])}
    assert help_code == 0 and marked == {"demo": "(host)", "data": "(host)", "export": "(host)",
                                         "export-tflite": "(host)", "quantize": "(provider)", "keygen": "(provider)",
                                         "deploy": "(provider)", "remote": "(provider)", "compress": "(host)"}
