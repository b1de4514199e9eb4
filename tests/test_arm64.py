"""The device side on an emulated arm64 device: a Debian 12 arm64 userland (Debian's python3, the
aarch64 wheels of numpy and onnx; `.ci/arm64-userland` builds it, the README's test command
runs that) under qemu-user. A bundle for `generic-aarch64` installs there with the device's own
`edgetrain device install` (from the bundle's wheel, verified first), `device train` runs one
epoch of ElasticZO-INT8, and the trained int8 weights are bit-identical to the same epoch on
this machine (with the numpy kernels, and with the native aarch64 kernels on their fastest
path); each aarch64 kernel path (scalar, NEON, dot product) equals int64 references there
(`arm64_kernel_paths.py`); a bundle for another arch is refused there."""
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import edgetrain
import edgetrain.devices
from conftest import run_json

ROOT = Path(os.environ.get("EDGETRAIN_ARM64_ROOT", Path.home() / ".cache" / "edgetrain" / "arm64-bookworm"))
KERNELS = Path(os.environ.get("EDGETRAIN_ARM64_KERNELS", Path.home() / ".cache" / "edgetrain" / "arm64-kernels"))
QEMU = shutil.which("qemu-aarch64-static")
pytestmark = pytest.mark.skipif(
    QEMU is None or not (ROOT / ".complete").exists(),
    reason=f"needs qemu-user-static and the arm64 userland at {ROOT} (`.ci/arm64-userland {ROOT}`; the README's "
           "test command installs and builds both)")


def arm64(*argv, env=None) -> subprocess.CompletedProcess:
    """``python3 ARGV`` in the arm64 userland, under qemu."""
    return subprocess.run([QEMU, "-L", str(ROOT), str(ROOT / "usr" / "bin" / "python3"), *map(str, argv)],
                          capture_output=True, text=True, timeout=900,
                          env={**{k: v for k, v in os.environ.items() if k != "EDGETRAIN_BACKEND"}, **(env or {})})


def _boot_wheel(bundle: Path, folder: Path) -> Path:
    """The device wheel a bundle carries, as a file (deploy sends it beside the bundle)."""
    with tarfile.open(bundle) as tar:
        (member,) = [m for m in tar if m.name.startswith("wheels/edgetrain-")]
        path = folder / Path(member.name).name
        path.write_bytes(tar.extractfile(member).read())
    return path


def weights(checkpoint: Path) -> dict:
    """The trained parameters a checkpoint holds, by name."""
    with np.load(checkpoint) as z:
        return {n[len("param/"):]: z[n] for n in z.files if n.startswith("param/")}


def _trains_bit_identical_to_this_machine(capsys, tmp_path, int8_onnx, mnist, device_args, backend, device_env=None):
    from edgetrain.cli import main
    assert main(["keygen", "-o", str(tmp_path / "k"), "--json"]) == 0
    capsys.readouterr()
    code, built = run_json(capsys, "deploy", str(int8_onnx()), *device_args, "--cut", "3",
                           "--key", str(tmp_path / "k"), "-o", str(tmp_path / "b.bundle"))
    assert code == 0, built
    device = tmp_path / "device"
    np.savez(tmp_path / "user.npz", x=np.roll(mnist.x_train[:96], 3, axis=-1), y=mnist.y_train[:96])

    # the device: no edgetrain but the bundle's wheel (importable as a zip) to run its installer
    done = arm64("-m", "edgetrain.cli", "device", "--root", device, "install", tmp_path / "b.bundle", "--json",
                 env={"PYTHONPATH": str(_boot_wheel(tmp_path / "b.bundle", tmp_path))})
    assert done.returncode == 0 and '"ok": true' in done.stdout, done.stderr  # the arch is checked there
    lib = device / "current" / "lib"
    trained = arm64("-c", "import sys; from edgetrain import backend; from edgetrain.cli import main; "
                    "print(backend.select().name); sys.exit(main(sys.argv[1:]))", "device", "--root", device, "train",
                    "--data", tmp_path / "user.npz", "--json", env={"PYTHONPATH": str(lib), **(device_env or {})})
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.splitlines()[0] == backend  # the backend the release runs there

    # this machine: the same epoch from the same file and configuration
    code, here = run_json(capsys, "train", str(int8_onnx()), "--data", str(tmp_path / "user.npz"), "--method",
                          "elasticzo-int8", "--cut", "3", "--batch-size", "32", "--seed", "0", "--checkpoint",
                          str(tmp_path / "here.npz"))
    assert code == 0 and here["steps"] == 3
    (there,) = (device / "results").glob("*/checkpoint.npz")
    ours, theirs = weights(tmp_path / "here.npz"), weights(there)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and np.array_equal(ours[name], theirs[name]), name
    before = edgetrain.load(int8_onnx()).params
    assert set(ours) <= set(before) and any(not np.array_equal(ours[n], before[n]) for n in ours)  # it trained


def test_a_bundle_installs_and_trains_under_arm64_bit_identical_to_this_machine(capsys, tmp_path, int8_onnx, mnist):
    _trains_bit_identical_to_this_machine(capsys, tmp_path, int8_onnx, mnist, ["--device", "generic-aarch64"], "numpy")


def _kernel_wheel() -> Path:
    """The aarch64 kernel wheel `.ci/arm64-kernels` built (the test skips without one)."""
    wheels = sorted(KERNELS.glob("edgetrain_kernels-*-cp311-cp311-linux_aarch64.whl"))
    if not wheels:
        pytest.skip(f"no aarch64 kernel wheel in {KERNELS} (`.ci/arm64-kernels {KERNELS} {ROOT}`; the README's test "
                    "command builds it)")
    return wheels[-1]


@pytest.mark.parametrize("forced", [None, "neon"])
def test_the_native_kernels_built_for_aarch64_train_there_bit_identical_too(capsys, tmp_path, int8_onnx, mnist, forced):
    wheel = _kernel_wheel()
    profile = {**edgetrain.devices.profile("generic-aarch64"), "name": "debian12-arm64", "python": "3.11"}
    (tmp_path / "debian12-arm64.json").write_text(json.dumps(profile))
    # qemu-user's default CPU (`max`) has the dot product, so the fastest path there is sdot's;
    # the plain NEON one (a Raspberry Pi 4's) is forced by name
    _trains_bit_identical_to_this_machine(capsys, tmp_path, int8_onnx, mnist, [
        "--device", str(tmp_path / "debian12-arm64.json"), "--wheel", str(wheel)], f"native ({forced or 'dotprod'})",
        device_env={"EDGETRAIN_NATIVE_PATH": forced} if forced else None)


def test_each_aarch64_kernel_path_equals_int64_references_there(tmp_path):
    with zipfile.ZipFile(_kernel_wheel()) as wheel:  # an extension module does not import from a zip
        wheel.extractall(tmp_path / "lib")
    done = arm64(Path(__file__).with_name("arm64_kernel_paths.py"), env={"PYTHONPATH": str(tmp_path / "lib")})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # scalar everywhere, NEON on every aarch64 CPU, the dot product on qemu's `max` CPU
    assert result["paths"] == ["scalar", "neon", "dotprod"]
    counts = [result["compared"].get(p, 0) for p in result["paths"]]
    assert counts[0] > 500 and counts == [counts[0]] * 3, result

    # a Raspberry Pi 4's core (Cortex-A72): no dot product, so the path is not offered and
    # forcing it is refused (never an illegal instruction)
    a72 = {"PYTHONPATH": str(tmp_path / "lib"), "QEMU_CPU": "cortex-a72"}
    done = arm64("-c", "import edgetrain_kernels as k; print(k.available_paths(), k.Kernels().path)", env=a72)
    assert done.returncode == 0 and done.stdout.split() == ["['scalar',", "'neon']", "neon"], done.stderr
    done = arm64("-c", "import edgetrain_kernels as k; k.Kernels('dotprod')", env=a72)
    assert done.returncode == 1 and "kernel path \"dotprod\" is not supported by this CPU" in done.stderr, done.stderr


def test_a_bundle_for_another_arch_is_refused_there(capsys, tmp_path, int8_onnx):
    from edgetrain.cli import main
    assert main(["keygen", "-o", str(tmp_path / "k"), "--json"]) == 0
    capsys.readouterr()
    code, _ = run_json(capsys, "deploy", str(int8_onnx()), "--device", "x86-host", "--key", str(tmp_path / "k"),
                       "-o", str(tmp_path / "x86.bundle"))
    assert code == 0
    done = arm64("-m", "edgetrain.cli", "device", "--root", tmp_path / "device", "install", tmp_path / "x86.bundle",
                 "--json", env={"PYTHONPATH": str(_boot_wheel(tmp_path / "x86.bundle", tmp_path))})
    assert done.returncode == 2 and "the bundle is for 'x86-host' (x86_64); this device is aarch64" in done.stdout
    assert not (tmp_path / "device" / "current").exists() and not (tmp_path / "device" / "releases").exists()
