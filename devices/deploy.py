"""The provider's side: build a signed bundle, refuse what will not fit, push it,
have the device install it; roll back; run device commands remotely and fetch
their results.

A deployment, in order: every input is checked (model, profile, trainer
configuration, key, extra wheels, targets); the memory one training step needs
(:func:`edgetrain.estimate_memory`) is held against the profile's budget, and a
model that does not fit is refused, naming what would; the bundle is built and
signed once; then, per target, it is sent to ``incoming/`` and the device's own
installer verifies and swaps it in (:mod:`edgetrain.devices.device`).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

from .. import __version__
from . import bundle
from .targets import Target, TargetError

# The device wheel: the packages a device runs, and the data files they read.
DEVICE_PACKAGES = ("edgetrain", "edgetrain.kernels", "edgetrain.devices", "edgetrain.prover")
DATA_FILES = {"edgetrain.devices": ("profiles",)}
MIB = 2**20


def device_wheel() -> tuple[str, bytes]:
    """The device-side edgetrain as a pure-Python wheel, made from the very files this
    process runs (so the device runs the provider's version, editable install or not):
    no host tools (``edgetrain.export``), numpy and onnx as its only requirements."""
    packages = {}
    for name in DEVICE_PACKAGES:
        folder = importlib.util.find_spec(name).submodule_search_locations[0]
        items = [(f, _read(os.path.join(folder, f))) for f in sorted(os.listdir(folder)) if f.endswith(".py")]
        for sub in DATA_FILES.get(name, ()):
            items += [(f"{sub}/{f}", _read(os.path.join(folder, sub, f)))
                      for f in sorted(os.listdir(os.path.join(folder, sub)))]
        packages[name] = items
    requires = [r for r in importlib.metadata.requires("edgetrain") or [] if "extra ==" not in r]
    return bundle.device_wheel(packages, __version__, requires)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- memory -------------------------------------------------------------------------

def fit_memory(model, profile: dict, method: str, cut: int, batch_size: int, where: str) -> dict:
    """The step's estimated peak against the profile's budget; ValueError naming
    ``--device where`` and saying which smaller batch or cut fits, when it is over."""
    from .. import estimate_memory
    budget = int(profile["train_budget_mib"] * MIB)
    peak = lambda c, b: estimate_memory(model, method, cut=c, batch_size=b)["peak_bytes"]  # noqa: E731
    need = peak(cut, batch_size)
    if need <= budget:
        return {"estimated_step_peak_bytes": need, "budget_bytes": budget}
    batches = [b for b in (2**i for i in range(12)) if b < batch_size and peak(cut, b) <= budget]
    cuts = [c for c in range(cut - 1, 0, -1) if peak(c, batch_size) <= budget] if method != "zo" else []
    fits = [f"--batch-size {batches[-1]} (cut {cut})" for _ in batches[-1:]]
    fits += [f"--cut {cuts[0]} (batch {batch_size})" for _ in cuts[:1]]
    raise ValueError(f"--device {where!r}: one {method} step at cut {cut}, batch {batch_size} needs about "
                     f"{need / MIB:.1f} MiB, over the profile's training budget of {budget / MIB:g} MiB; "
                     + (f"fits: {' or '.join(fits)}" if fits else "no smaller batch or cut fits either"))


# -- extra wheels ---------------------------------------------------------------------

_WHEEL = re.compile(r"(?P<dist>[^-]+)-(?P<ver>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl")


def check_wheel(path: str, profile: dict) -> tuple[str, bytes]:
    """``(name, bytes)`` of a wheel to carry, after checking that it runs on the
    profile's device: its platform tag names the profile's arch (or any), its
    CPython tag the profile's Python."""
    from ..cli_io import read_bytes
    name = os.path.basename(path)
    found = _WHEEL.fullmatch(name)
    if not found:
        raise ValueError(f"--wheel {path!r} is not named as a wheel (NAME-VERSION-PY-ABI-PLATFORM.whl)")
    data = read_bytes(path, "--wheel")
    plat, py = found["plat"], found["py"]
    if plat != "any" and not any(p.endswith(profile["arch"]) for p in plat.split(".")):
        raise ValueError(f"--wheel {path!r} is built for {plat}; device {profile['name']!r} is {profile['arch']}")
    want = "cp" + profile["python"].replace(".", "")[:3]
    if py.startswith("cp") and want not in py.split(".") and found["abi"] != "abi3":
        raise ValueError(f"--wheel {path!r} is built for {py}; device {profile['name']!r} runs Python "
                         f"{profile['python']}")
    return f"wheels/{name}", data


# -- deploy ---------------------------------------------------------------------------

def make_bundle(model_path: str, profile: dict, train: dict, sign, public_key: bytes,
                wheels: list[tuple[str, bytes]]) -> tuple[bytes, dict, tuple[str, bytes]]:
    """``(bundle bytes, manifest, device wheel)``."""
    wheel = device_wheel()
    files = {bundle.MODEL: _read(model_path), f"wheels/{wheel[0]}": wheel[1], **dict(wheels)}
    data, manifest = bundle.build(files, profile=profile, train=train, runtime_version=__version__,
                                  public_key=public_key, sign=sign)
    return data, manifest, wheel


def push_and_install(target: Target, data: bytes, manifest: dict, wheel: tuple[str, bytes], *,
                     show: bool = False, limit_kib_s: float | None = None) -> dict:
    """Send the bundle (and the device wheel, which installs the first release) and
    have the device verify and install it; the device's report and the push time."""
    rid = manifest["release"]
    seconds = target.send(data, f"{rid}.bundle", arch=manifest["profile"]["arch"], show=show,
                          limit_kib_s=limit_kib_s)
    boot = f"{rid}.{wheel[0]}"
    target.send(wheel[1], boot)
    start = time.perf_counter()
    installed = target.device(["install", f"{target.root}/incoming/{rid}.bundle"], "installing",
                              bootstrap=f"{target.root}/incoming/{boot}")
    return {"target": target.spec, **{k: v for k, v in installed.items() if k != "ok"},
            "bundle_bytes": len(data), "push_seconds": seconds, "install_seconds": time.perf_counter() - start}


def deploy_many(targets: list[Target], work, parallel: int) -> list[dict]:
    """``work(target)`` on every target, ``parallel`` at a time; one row per target,
    in the order given: its result, or its one-line error."""
    def one(target):
        try:
            return {"target": target.spec, "ok": True, **work(target)}
        except (TargetError, ValueError, OSError) as e:
            return {"target": target.spec, "ok": False, "error": " ".join(str(e).split())}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, targets))


# -- remote ---------------------------------------------------------------------------

PUBLIC_RESULTS = ("proof.bin", "proof.bin.inputs", "proof.bin.vk", "commitments.json", "history.json")
MODEL_RESULTS = ("trained.onnx", "unlearned.onnx")


def fetch(target: Target, names: tuple[str, ...], folder_of) -> dict:
    """Bring the listed results of the active release back; each checked against the
    sha256 the device's status reports. ``folder_of(name)``: where to write it."""
    status = target.device(["status"], "status")
    fetched = {}
    for name in names:
        want = status["results"].get(name)
        if want is None:
            continue
        blob = target.read(f"results/{status['release']}/{name}")
        if bundle.sha256(blob) != want["sha256"]:
            raise TargetError(f"--target {target.spec!r}: results/{name} changed while it was fetched")
        with open(folder_of(name), "wb") as f:
            f.write(blob)
        fetched[name] = want
    return {"release": status["release"], "fetched": fetched}

