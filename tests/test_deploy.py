"""Deployment against real parts: OpenSSH's server (Debian's openssh-server) on a loopback port
with a throw-away host key and user key, the system ssh client, and a device Python that has
numpy, onnx and the prover binding but no edgetrain (the code comes with the bundle).

Covered: profiles; the pure-Python Ed25519 verifier against `cryptography` and RFC 8032;
bundles refused when tampered, signed by another key, cut or padded; the device wheel installing
with pip; the memory budget refused before any transfer; over SSH: first install (key pinned),
a second release, rollback both ways, a transfer killed half-way, a tampered bundle, a wrong or
unknown host key, a refused user key, an unreachable host, a full disk, a target that is a file;
a fleet in parallel; and the whole protocol from the provider's shell (remote train, export,
unlearn, prove, fetch, then verify_proof).
"""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_json
from sshd_server import MISSING, USER, Sshd, free_port
from test_device_install import bare_python

import edgetrain
from edgetrain import devices
from edgetrain.devices import bundle, ed25519
from edgetrain.devices.device import PINNED


# -- profiles -----------------------------------------------------------------------------

def test_profiles_are_listed_checked_and_taken_from_a_file(capsys, tmp_path):
    code, r = run_json(capsys, "devices")
    names = [p["name"] for p in r["devices"]]
    assert code == 0 and names == sorted(["rpi3", "rpi4", "rpi5", "rpi-zero-2w", "jetson-nano", "generic-aarch64",
                                          "x86-host"])
    rpi5 = devices.profile("rpi5")
    assert rpi5["arch"] == "aarch64" and "dotprod" in rpi5["simd"] and "dotprod" not in devices.profile("rpi4")["simd"]
    mine = {**devices.profile("rpi4"), "name": "my-board", "train_budget_mib": 1.5}
    (tmp_path / "board.json").write_text(json.dumps(mine))
    code, r = run_json(capsys, "devices", "--device", str(tmp_path / "board.json"))
    assert code == 0 and r["devices"] == [mine]
    code, r = run_json(capsys, "devices", "--device", "rpi9")
    assert code == 2 and r["error"].startswith("--device 'rpi9' is not a known device; known: generic-aarch64, ")
    (tmp_path / "bad.json").write_text(json.dumps({**mine, "arch": "mips"}))
    code, r = run_json(capsys, "devices", "--device", str(tmp_path / "bad.json"))
    assert code == 2 and "arch='mips' must be one of" in r["error"]


# -- Ed25519 ------------------------------------------------------------------------------

def test_ed25519_verify_agrees_with_cryptography_and_rfc8032():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    # RFC 8032 §7.1, TEST 1 and TEST 2
    for pub, msg, sig in (
            ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
             "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f"
             "0595bbe24655141438e7a100b"),
            ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
             "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2ea"
             "eb4302aeeb00d291612bb0c00")):
        pub, msg, sig = bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)
        assert ed25519.verify(pub, msg, sig) and not ed25519.verify(pub, msg + b"\0", sig)
    rng = np.random.default_rng(0)
    for i in range(24):
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        msg = rng.bytes(int(rng.integers(0, 300)))
        sig = bytearray(key.sign(msg))
        assert ed25519.verify(pub, msg, bytes(sig))
        sig[int(rng.integers(0, 64))] ^= 1 << int(rng.integers(0, 8))  # one bit anywhere
        ours = ed25519.verify(pub, msg, bytes(sig))
        try:
            key.public_key().verify(bytes(sig), msg)
            theirs = True
        except Exception:
            theirs = False
        assert ours is theirs is False
    # S + L (the same signature, S not reduced) is refused, as RFC 8032 requires
    s = int.from_bytes(sig[32:], "little")
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    good = key.sign(b"m")
    malleated = good[:32] + (int.from_bytes(good[32:], "little") + ed25519.L).to_bytes(32, "little")
    assert ed25519.verify(pub, b"m", good) and not ed25519.verify(pub, b"m", malleated) and s >= 0


# -- bundles ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two provider keys made by `edgetrain keygen`: the provider's and another one."""
    from edgetrain.cli import main
    folder = tmp_path_factory.mktemp("keys")
    for name in ("provider", "other"):
        assert main(["keygen", "-o", str(folder / f"{name}.key")]) == 0
    assert oct((folder / "provider.key").stat().st_mode & 0o777) == "0o600"
    return folder


def _signed(keys, name="provider"):
    from edgetrain.devices import keys as k
    return k.load(str(keys / f"{name}.key"))


def _bundle(keys, int8_onnx, name="provider"):
    from edgetrain.devices import deploy
    sign, public = _signed(keys, name)
    data, manifest, _ = deploy.make_bundle(str(int8_onnx()), devices.profile("x86-host"),
                                           {"method": "elasticzo-int8", "cut": 3, "batch_size": 32, "seed": 0},
                                           sign, public, [])
    return data, manifest, public


def _members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]


def _retar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, blob in members:
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def tampered(data: bytes, member: str) -> bytes:
    """The bundle with one byte of ``member`` flipped (the tar still whole)."""
    out = []
    for info, blob in _members(data):
        if info.name == member:
            blob = bytearray(blob)
            blob[len(blob) // 2] ^= 0x01
            blob = bytes(blob)
        out.append((info, blob))
    return _retar(out)


def test_bundles_are_refused_when_changed_cut_padded_or_signed_by_another_key(keys, int8_onnx):
    data, manifest, public = _bundle(keys, int8_onnx)
    got, files, signer = bundle.open_verified(data, public)
    assert got == manifest and signer == public
    assert set(files) == {"model.onnx", "train.json", f"wheels/edgetrain-{edgetrain.__version__}-py3-none-any.whl"}
    assert files["model.onnx"] == Path(int8_onnx()).read_bytes()
    _, _, other = _bundle(keys, int8_onnx, "other")
    cases = {
        "model changed": (tampered(data, "model.onnx"), "'model.onnx' differs from its manifest's sha256"),
        "manifest changed": (tampered(data, "manifest.json"), None),
        "signature changed": (tampered(data, "manifest.sig"), "signature does not verify"),
        "cut half-way": (data[:len(data) // 2], "the bundle is truncated"),
        "another key": (data, "signed by another key"),
        "a member added": (_retar(_members(data) + [(tarfile.TarInfo("extra.py"), b"print(1)")]),
                           "not listed ['extra.py']"),
        "a member removed": (_retar([m for m in _members(data) if m[0].name != "train.json"]),
                             "missing ['train.json']"),
    }
    for case, (blob, message) in cases.items():
        with pytest.raises(bundle.BundleError) as e:
            bundle.open_verified(blob, other if case == "another key" else public)
        assert message is None or message in str(e.value), (case, str(e.value))


def test_the_device_wheel_installs_with_pip(tmp_path):
    from edgetrain.devices.deploy import device_wheel
    name, blob = device_wheel()
    assert device_wheel() == (name, blob)  # reproducible
    (tmp_path / name).write_bytes(blob)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", tmp_path / "lib", tmp_path / name], check=True)
    lib = tmp_path / "lib"
    assert (lib / "edgetrain" / "devices" / "profiles" / "rpi4.json").is_file()
    assert (lib / "edgetrain" / "prover" / "proof.py").is_file() and not (lib / "edgetrain" / "export").exists()
    requires = [l for l in (lib / f"edgetrain-{edgetrain.__version__}.dist-info" / "METADATA").read_text().splitlines()
                if l.startswith("Requires-Dist")]
    assert requires == ["Requires-Dist: numpy>=1.24", "Requires-Dist: onnx>=1.16"]


def test_a_model_over_the_budget_is_refused_before_any_transfer(capsys, tmp_path, keys, int8_onnx):
    need = edgetrain.estimate_memory(edgetrain.load(int8_onnx()), "elasticzo-int8", 3, 256)["peak_bytes"]
    mib = max(1, (need - 1) // 2**20)  # a whole-MiB budget below what the step needs (the estimate follows the backend)
    assert need > mib * 2**20
    small = {**devices.profile("rpi-zero-2w"), "name": "tiny", "train_budget_mib": mib}
    (tmp_path / "tiny.json").write_text(json.dumps(small))
    code, r = run_json(capsys, "deploy", str(int8_onnx()), "--device", str(tmp_path / "tiny.json"), "--cut", "3",
                       "--batch-size", "256", "--key", str(keys / "provider.key"), "--target", f"dir:{tmp_path}/d")
    assert code == 2
    assert r["error"].startswith(f"--device {str(tmp_path / 'tiny.json')!r}: one elasticzo-int8 step at cut 3, batch "
                                 f"256 needs about {need / 2**20:.1f} MiB, over the profile's training budget of {mib} MiB;")
    fits = int(r["error"].split("--batch-size ")[1].split()[0])
    assert edgetrain.estimate_memory(edgetrain.load(int8_onnx()), "elasticzo-int8", 3, fits)["peak_bytes"] <= mib * 2**20
    assert edgetrain.estimate_memory(edgetrain.load(int8_onnx()), "elasticzo-int8", 3, 2 * fits)["peak_bytes"] > mib * 2**20
    assert not (tmp_path / "d").exists()


# -- a real OpenSSH server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def device_python(tmp_path_factory):
    """A device's Python: numpy, onnx and the prover binding (edgetrain_zk), no edgetrain."""
    return bare_python(tmp_path_factory.mktemp("device-python"), ("numpy", "onnx", "edgetrain-zk"))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, device_python, key_cache):
    if MISSING:
        pytest.skip(MISSING)
    server = Sshd(tmp_path_factory.mktemp("sshd"), device_python, key_cache)
    yield server
    server.stop()


def deploy(capsys, sshd, keys, model, root, *extra, key="provider", ssh_config=None, target=None):
    return run_json(capsys, "deploy", str(model), "--device", "x86-host", "--key", str(keys / f"{key}.key"),
                    "--target", target or sshd.target(root), "--ssh-config", ssh_config or sshd.ssh_config, *extra)


def current(root: Path):
    link = root / "current"
    return os.readlink(link) if link.is_symlink() else None


def test_deploy_over_ssh_then_a_second_release_and_rollback(capsys, tmp_path, sshd, keys, int8_onnx):
    root = tmp_path / "device"
    code, first = deploy(capsys, sshd, keys, int8_onnx(), root, "--cut", "3")
    assert code == 0, first
    rid = first["release"]
    assert first["pinned_now"] is True and first["previous"] is None and current(root) == f"releases/{rid}"
    _, public = _signed(keys)
    assert (root / PINNED).read_text().split()[0] == public.hex()
    release = root / "releases" / rid
    manifest = json.loads((release / "manifest.json").read_text())
    for name, want in manifest["files"].items():  # what arrived is what was signed
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == want["sha256"]
    assert manifest["profile"] == devices.profile("x86-host") and manifest["runtime_version"] == edgetrain.__version__
    assert json.loads((release / "train.json").read_text()) == {"method": "elasticzo-int8", "cut": 3,
                                                                 "batch_size": 32, "seed": 0}
    assert os.listdir(root / "incoming") == []

    time.sleep(1.1)  # release ids carry the second they were built in
    code, second = deploy(capsys, sshd, keys, int8_onnx(), root, "--cut", "2")
    assert code == 0 and second["previous"] == rid and second["pinned_now"] is False
    assert current(root) == f"releases/{second['release']}"
    code, back = run_json(capsys, "deploy", "--rollback", "--target", sshd.target(root), "--ssh-config",
                          sshd.ssh_config)
    assert code == 0 and back["release"] == rid and back["previous"] == second["release"]
    assert current(root) == f"releases/{rid}" and (root / "releases" / second["release"]).is_dir()
    code, again = run_json(capsys, "deploy", "--rollback", "--target", sshd.target(root), "--ssh-config",
                           sshd.ssh_config)
    assert code == 0 and current(root) == f"releases/{second['release']}"


@pytest.fixture
def installed(capsys, tmp_path, sshd, keys, int8_onnx):
    """A device folder with one release installed over SSH: (root, release id)."""
    root = tmp_path / "device"
    code, r = deploy(capsys, sshd, keys, int8_onnx(), root)
    assert code == 0, r
    return root, r["release"]


def _unchanged(root, rid):
    assert current(root) == f"releases/{rid}"
    assert sorted(os.listdir(root / "releases")) == [rid]


def test_the_active_release_survives_bad_keys_and_bad_bundles(capsys, tmp_path, sshd, keys, int8_onnx, installed):
    root, rid = installed
    refusals = {
        "another provider key": ({"key": "other"}, "signed by another key"),
        "a changed host key": ({"ssh_config": sshd.config(known="other", name="changed")},
                               "ssh failed: Host key verification failed."),
        "an unknown host": ({"ssh_config": sshd.config(known=None, name="unknown")},
                            "ssh failed: Host key verification failed."),
        "a refused user key": ({"ssh_config": sshd.config(key="stranger_key", name="stranger")},
                               f"ssh failed: {USER}@127.0.0.1: Permission denied (publickey)."),
        "an unreachable host": ({"target": f"ssh://{USER}@127.0.0.1:{free_port()}{root}?python={sshd.python}"},
                                "Connection refused"),
    }
    for case, (options, message) in refusals.items():
        code, r = deploy(capsys, sshd, keys, int8_onnx(), root, **options)
        assert code == 2 and message in r["error"] and r["error"].startswith("--target 'ssh://"), (case, r)
        _unchanged(root, rid)

    # a bundle tampered after signing, sent over the same SSH and handed to the device's installer
    from edgetrain.devices import targets
    code, r = run_json(capsys, "deploy", str(int8_onnx()), "--device", "x86-host", "--key",
                       str(keys / "provider.key"), "-o", str(tmp_path / "b.tar"))
    assert code == 0 and (tmp_path / "b.tar").is_file()
    target = targets.parse(sshd.target(root), ssh_config=sshd.ssh_config)
    for member, message in (("model.onnx", "'model.onnx' differs from its manifest"),
                            ("manifest.json", "signature does not verify")):
        target.send(tampered((tmp_path / "b.tar").read_bytes(), member), "t.bundle")
        with pytest.raises(targets.TargetError, match=message):
            target.device(["install", f"{root}/incoming/t.bundle"], "installing")
        _unchanged(root, rid)
    # and an accept-new host key works on first contact (ssh's own TOFU), once asked for
    code, r = deploy(capsys, sshd, keys, int8_onnx(), root, "--accept-new-host-key",
                     ssh_config=sshd.config(known=None, name="first-contact"))
    assert code == 0 and current(root) == f"releases/{r['release']}"


def test_a_transfer_killed_half_way_leaves_the_active_release(tmp_path, sshd, keys, int8_onnx, installed):
    root, rid = installed
    argv = [sys.executable, "-m", "edgetrain.cli", "deploy", str(int8_onnx()), "--device", "x86-host", "--key",
            str(keys / "provider.key"), "--target", sshd.target(root), "--ssh-config", sshd.ssh_config,
            "--limit-rate", "64", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    partial = None
    for _ in range(400):  # the bundle (~210 KB) takes ~3 s at 64 KiB/s: catch it a third of the way
        found = list((root / "incoming").glob("*.bundle.partial"))
        if found and found[0].stat().st_size > 64 * 1024:
            partial = found[0]
            break
        time.sleep(0.025)
    os.killpg(proc.pid, signal.SIGKILL)  # the provider's side dies: deploy and its ssh client
    proc.wait()
    assert partial is not None and proc.returncode == -signal.SIGKILL
    time.sleep(0.5)
    _unchanged(root, rid)
    assert not list((root / "incoming").glob("*.bundle"))  # never renamed into a bundle
    code = subprocess.run(argv[:-3] + ["--json"], capture_output=True).returncode  # the next deploy works
    assert code == 0 and current(root) != f"releases/{rid}" and os.listdir(root / "incoming") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_and_a_file_as_target_are_errors_naming_them(capsys, tmp_path, sshd, keys, int8_onnx):
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", disk], check=True)
    try:
        code, r = deploy(capsys, sshd, keys, int8_onnx(), disk / "device")
        assert code == 2 and "No space left on device" in r["error"], r
        assert not (disk / "device" / "current").exists() and not (disk / "device" / "releases").exists()
    finally:
        subprocess.run(["umount", disk], check=True)
    (tmp_path / "afile").write_text("")
    code, r = deploy(capsys, sshd, keys, int8_onnx(), tmp_path / "afile")
    assert code == 2 and r["error"].endswith(f"{tmp_path / 'afile'} is a file, not a folder")


def test_a_fleet_in_parallel_reports_per_device(capsys, tmp_path, sshd, keys, int8_onnx):
    hosts = tmp_path / "hosts.txt"
    dead = f"ssh://{USER}@127.0.0.1:{free_port()}/x"
    hosts.write_text(f"# three devices\n{sshd.target(tmp_path / 'a')}\n\ndir:{tmp_path / 'b'}\n{dead}\n")
    code, r = run_json(capsys, "deploy", str(int8_onnx()), "--device", "x86-host", "--key",
                       str(keys / "provider.key"), "--targets", str(hosts), "--parallel", "3", "--ssh-config",
                       sshd.ssh_config)
    assert code == 1 and r["ok"] is False and r["succeeded"] == 2
    assert [row["ok"] for row in r["devices"]] == [True, True, False]
    assert r["devices"][2]["error"].startswith(f"--target {dead!r}: ssh failed:")
    assert r["failed"].startswith("deploy failed on 1 of 3 devices:")
    assert current(tmp_path / "a") == current(tmp_path / "b") == f"releases/{r['release']}"


# -- the whole protocol from the provider's shell ----------------------------------------

def test_deploy_personalise_forget_prove_fetch_and_verify_over_ssh(srs, capsys, tmp_path, sshd, keys, trained_onnx,
                                                                  mnist):
    from edgetrain.cli import main
    model = trained_onnx("mlp16")
    root = tmp_path / "device"
    code, r = deploy(capsys, sshd, keys, model, root, "--method", "elasticzo", "--cut", "1", "--batch-size", "16")
    assert code == 0, r
    target = ["--ssh-config", sshd.ssh_config]
    on_device = root / "user.npz"  # the user's data is on the device and stays there
    shifted = np.roll(mnist.x_train[:128], 3, axis=-1)
    np.savez(on_device, x=shifted, y=mnist.y_train[:128])

    code, trained = run_json(capsys, "remote", sshd.target(root), *target, "train", "--data", str(on_device))
    assert code == 0 and trained["steps"] == 8 and trained["method"] == "elasticzo", trained
    code, exported = run_json(capsys, "remote", sshd.target(root), *target, "export")
    assert code == 0 and exported["steps"] == 8

    # provider: the mask from its own copy of the base model, on forget and retain samples
    keep = mnist.y_train[:300] != 3
    np.savez(tmp_path / "forget.npz", x=mnist.x_train[:300][~keep], y=mnist.y_train[:300][~keep])
    np.savez(tmp_path / "retain.npz", x=mnist.x_train[:300][keep], y=mnist.y_train[:300][keep])
    assert main(["mask", str(model), "--forget", str(tmp_path / "forget.npz"), "--retain",
                 str(tmp_path / "retain.npz"), "-o", str(tmp_path / "mask.npz"), "--json"]) == 0
    capsys.readouterr()
    code, unlearned = run_json(capsys, "remote", sshd.target(root), *target, "unlearn", "--mask",
                               str(tmp_path / "mask.npz"))
    assert code == 0 and unlearned["from"].endswith("trained.onnx") and unlearned["data"] == str(on_device)
    (tmp_path / "srs.bin").write_bytes(srs)  # the provider's reference string, sent with the request
    code, proved = run_json(capsys, "remote", sshd.target(root), *target, "prove", "--params",
                            str(tmp_path / "srs.bin"), "--max-minutes", "5")
    assert code == 0 and proved["chunks"] >= 1, proved

    code, fetched = run_json(capsys, "remote", sshd.target(root), *target, "fetch", "-o", str(tmp_path / "back"))
    assert code == 0 and sorted(fetched["fetched"]) == ["commitments.json", "history.json", "proof.bin",
                                                        "proof.bin.inputs", "proof.bin.vk"]
    assert not (tmp_path / "back" / "unlearned.onnx.witness.npz").exists()  # private: never fetched
    back = tmp_path / "back"
    digests = json.loads((back / "commitments.json").read_text())
    mask = dict(np.load(tmp_path / "mask.npz"))
    verified = edgetrain.verify_proof((back / "proof.bin").read_bytes(), (back / "proof.bin.inputs").read_bytes(),
                                      (back / "proof.bin.vk").read_bytes(), mask=mask,
                                      h_w={n: bytes.fromhex(d["w"]) for n, d in digests.items()},
                                      h_a={n: bytes.fromhex(d["a"]) for n, d in digests.items()}, params=srs)
    assert verified is True
    other = {n: np.roll(m, 1) for n, m in mask.items()}
    assert edgetrain.verify_proof((back / "proof.bin").read_bytes(), (back / "proof.bin.inputs").read_bytes(),
                                  (back / "proof.bin.vk").read_bytes(), mask=other, params=srs) is False
    # the device's files are what the fetch brought
    rid = fetched["release"]
    for name in fetched["fetched"]:
        assert (back / name).read_bytes() == (root / "results" / rid / name).read_bytes()


# -- bad input ------------------------------------------------------------------------------

def test_bad_input_is_one_line_naming_it_and_the_active_release_stays(capsys, tmp_path, keys, int8_onnx):
    root = tmp_path / "device"
    args = ["--key", str(keys / "provider.key"), "--target", f"dir:{root}"]
    code, first = run_json(capsys, "deploy", str(int8_onnx()), "--device", "x86-host", *args)
    assert code == 0, first
    rid = first["release"]
    (tmp_path / "not.onnx").write_bytes(b"not a model")
    (tmp_path / "afile").write_text("")
    cases = {
        "a missing model": ([str(tmp_path / "none.onnx"), "--device", "x86-host", *args],
                            f"MODEL {str(tmp_path / 'none.onnx')!r} does not exist"),
        "a model that is not ONNX": ([str(tmp_path / "not.onnx"), "--device", "x86-host", *args], "not.onnx"),
        "an unknown device": ([str(int8_onnx()), "--device", "rpi9", *args],
                              "--device 'rpi9' is not a known device; known: generic-aarch64, jetson-nano, rpi-zero-2w"),
        "a device of another arch": ([str(int8_onnx()), "--device", "rpi4", *args],
                                     "this device is x86_64, the bundle is for aarch64"),
        "a missing key": ([str(int8_onnx()), "--device", "x86-host", *args[2:], "--key", str(tmp_path / "k")],
                          f"--key {str(tmp_path / 'k')!r} does not exist; make one with `edgetrain keygen"),
        "a target that is a file": ([str(int8_onnx()), "--device", "x86-host", *args[:2], "--target",
                                     f"dir:{tmp_path / 'afile'}"], f"{tmp_path / 'afile'} is a file, not a folder"),
        "a target that is no target": ([str(int8_onnx()), "--device", "x86-host", *args[:2], "--target",
                                        "ftp://host/x"], "expected ssh://[user@]host[:port]/path or dir:/path"),
    }
    for case, (argv, message) in cases.items():
        code, r = run_json(capsys, "deploy", *argv)
        assert code == 2 and message in r["error"] and "\n" not in r["error"], (case, r)
        _unchanged(root, rid)
    assert (tmp_path / "afile").read_text() == ""
