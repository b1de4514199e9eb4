"""The device's side of a deployment: a folder ROOT laid out as

    ROOT/provider.pub          the provider's public key, pinned at the first install
    ROOT/releases/ID/          one verified bundle: manifest.json, manifest.sig, model.onnx,
                               train.json, wheels/, and lib/ (the wheels unpacked: the code)
    ROOT/current -> releases/ID   the active release: one symlink, swapped atomically
    ROOT/previous -> releases/ID  the release before it, for --rollback
    ROOT/results/ID/           what the device commands wrote for that release
    ROOT/incoming/             bundles as they arrive
    ROOT/bin/edgetrain         a launcher: the active release's edgetrain on this Python

:func:`install` verifies a bundle (:func:`edgetrain.devices.bundle.open_verified`)
before it writes anything, writes the release under a temporary name, fsyncs it,
renames it into place and swaps ``current`` with one rename; any failure before
the swap leaves the active release as it was. :func:`rollback` swaps back.
"""
from __future__ import annotations

import io
import json
import os
import platform
import shutil
import sys
import zipfile

from .bundle import BundleError, fingerprint, open_verified, sha256

PINNED = "provider.pub"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """``data`` to ``path``: a temp file beside it, fsync, rename, fsync the folder."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(path))


def _link_atomic(root: str, name: str, target: str) -> None:
    """``ROOT/name`` becomes a symlink to ``target`` in one rename."""
    tmp = os.path.join(root, f".{name}.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, os.path.join(root, name))
    _fsync_dir(root)


def check_root(root: str) -> str:
    """``root`` as an absolute path: an existing folder, or one whose parent exists."""
    root = os.path.abspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"the device folder {root!r} is a file, not a folder")
    if not os.path.isdir(root) and not os.path.isdir(os.path.dirname(root)):
        raise ValueError(f"the device folder {root!r} cannot be made: {os.path.dirname(root)!r} does not exist")
    return root


def active(root: str, what: str = "current") -> str | None:
    """The release id ``current`` (or ``previous``) points to, or None."""
    link = os.path.join(root, what)
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def release_dir(root: str) -> tuple[str, str]:
    """``(id, folder)`` of the active release; ValueError when none is installed."""
    rid = active(root)
    if rid is None:
        raise ValueError(f"no release is installed in {root!r}: run `edgetrain deploy` first")
    return rid, os.path.join(root, "releases", rid)


def _unpack_wheel(data: bytes, name: str, lib: str) -> None:
    """A wheel's files into ``lib`` (pure and platform libraries alike, as pip's
    ``--target`` does); a member with an unsafe name, or data for other schemes, is
    refused."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for member in z.infolist():
            if member.is_dir():
                continue
            parts = member.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    raise BundleError(f"wheel {name!r} installs outside the library folder ({member.filename!r})")
                parts = parts[2:]
            if member.filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise BundleError(f"wheel {name!r} has an unsafe member name {member.filename!r}")
            target = os.path.join(lib, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, 0o755 if (member.external_attr >> 16) & 0o111 else 0o644)


def launcher(root: str) -> bytes:
    """``ROOT/bin/edgetrain``: the active release's edgetrain on this interpreter."""
    return (f"#!/bin/sh\n# Written by edgetrain's installer: the active release's edgetrain ({root}/current) on "
            f"{sys.executable}.\nexport EDGETRAIN_DEVICE_ROOT='{root}'\n"
            f"PYTHONPATH='{root}/current/lib'${{PYTHONPATH:+:$PYTHONPATH}} exec '{sys.executable}' -m edgetrain.cli "
            '"$@"\n').encode()


def install(root: str, bundle_path: str) -> dict:
    """Verify the bundle at ``bundle_path`` and make it the active release of ``root``."""
    root = check_root(root)
    try:
        with open(bundle_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"bundle {bundle_path!r} cannot be read ({e.strerror})") from None
    pinned_path = os.path.join(root, PINNED)
    pinned = None
    if os.path.exists(pinned_path):
        with open(pinned_path, "rb") as f:
            pinned = bytes.fromhex(f.read().decode().split()[0])
    manifest, files, signer = open_verified(data, pinned)
    profile, rid = manifest["profile"], manifest["release"]
    machine = platform.machine()
    if profile["arch"] != machine:
        raise BundleError(f"the bundle is for {profile['name']!r} ({profile['arch']}); this device is {machine}")
    releases = os.path.join(root, "releases")
    final = os.path.join(releases, rid)
    if os.path.exists(final):
        raise BundleError(f"release {rid} is already installed here")
    os.makedirs(releases, exist_ok=True)
    partial = os.path.join(releases, f".{rid}.partial-{os.getpid()}")
    try:
        os.makedirs(os.path.join(partial, "lib"))
        for name, blob in files.items():
            path = os.path.join(partial, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(blob)
            if name.endswith(".whl"):
                _unpack_wheel(blob, name, os.path.join(partial, "lib"))
        with open(os.path.join(partial, "manifest.json"), "wb") as f:
            f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
        for folder, _, names in os.walk(partial):
            for n in names:
                with open(os.path.join(folder, n), "rb+") as f:
                    os.fsync(f.fileno())
            _fsync_dir(folder)
        os.rename(partial, final)
        _fsync_dir(releases)
    finally:
        if os.path.exists(partial):
            shutil.rmtree(partial, ignore_errors=True)
    if pinned is None:
        write_atomic(pinned_path, f"{signer.hex()}\n".encode())
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    write_atomic(os.path.join(root, "bin", "edgetrain"), launcher(root), 0o755)
    before = active(root)
    if before is not None:
        _link_atomic(root, "previous", os.path.join("releases", before))
    _link_atomic(root, "current", os.path.join("releases", rid))
    os.makedirs(os.path.join(root, "results", rid), exist_ok=True)
    _clean_incoming(root)
    return {"release": rid, "previous": before, "profile": profile["name"], "signer": fingerprint(signer),
            "pinned_now": pinned is None, "files": len(files)}


def _clean_incoming(root: str) -> None:
    """Bundles that arrived are installed or refused; either way they can go."""
    incoming = os.path.join(root, "incoming")
    if os.path.isdir(incoming):
        for name in os.listdir(incoming):
            os.unlink(os.path.join(incoming, name))


def rollback(root: str) -> dict:
    """Swap ``current`` back to ``previous`` (and ``previous`` to what was current)."""
    root = check_root(root)
    now, before = active(root), active(root, "previous")
    if before is None or not os.path.isdir(os.path.join(root, "releases", before)):
        raise ValueError(f"{root!r} has no previous release to roll back to")
    _link_atomic(root, "current", os.path.join("releases", before))
    _link_atomic(root, "previous", os.path.join("releases", now))
    return {"release": before, "previous": now}


def results_dir(root: str) -> str:
    rid, _ = release_dir(root)
    path = os.path.join(root, "results", rid)
    os.makedirs(path, exist_ok=True)
    return path


def status(root: str) -> dict:
    """What is installed and what the device commands wrote, with digests."""
    root = check_root(root)
    rid, folder = release_dir(root)
    with open(os.path.join(folder, "manifest.json"), "rb") as f:
        manifest = json.loads(f.read())
    with open(os.path.join(root, PINNED)) as f:
        pinned = bytes.fromhex(f.read().split()[0])
    results = os.path.join(root, "results", rid)
    files = {}
    for name in sorted(os.listdir(results)) if os.path.isdir(results) else ():
        path = os.path.join(results, name)
        if os.path.isfile(path) and not name.startswith("."):
            with open(path, "rb") as f:
                blob = f.read()
            files[name] = {"sha256": sha256(blob), "bytes": len(blob)}
    from .. import __version__, backend
    return {"root": root, "release": rid, "previous": active(root, "previous"),
            "releases": sorted(n for n in os.listdir(os.path.join(root, "releases")) if not n.startswith(".")),
            "profile": manifest["profile"]["name"], "arch": platform.machine(),
            "python": platform.python_version(), "runtime_version": __version__,
            "backend": backend.select().name, "signer": fingerprint(pinned),
            "model": {"file": manifest["model"], **manifest["files"][manifest["model"]]},
            "train": _train_config(folder), "results": files}


def _train_config(folder: str) -> dict:
    with open(os.path.join(folder, "train.json"), "rb") as f:
        return json.loads(f.read())
