"""The bundle: one tar file that takes a model to a device, and its checks.

Members: ``manifest.json``, ``manifest.sig`` (the Ed25519 signature of the
manifest's exact bytes) and the files the manifest lists, each with its sha256
and size: ``model.onnx``, ``train.json`` (the trainer's configuration) and
``wheels/*.whl`` (the device-side edgetrain, numpy + onnx only, and any native
wheel built for the device). The manifest also names the runtime version, the
profile and the release id.

:func:`build` (provider) writes one, byte for byte the same for the same inputs
and time; :func:`open_verified` (device) reads one and returns its files only if
the signature verifies with the pinned key and every file is listed, present
and whole. Nothing here needs more than the standard library: the signing key
is a callable the provider passes in (:mod:`edgetrain.devices.keys`).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
import time
import zipfile

from . import ed25519

FORMAT = 1
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
MODEL, TRAIN = "model.onnx", "train.json"
# a member name: relative, no "..", a few safe characters
_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._+-]*/)*[A-Za-z0-9_][A-Za-z0-9._+-]*")
MAX_MEMBERS = 64


class BundleError(ValueError):
    """A bundle that must not be installed: the message says why."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(public_key: bytes) -> str:
    """A short name for a public key, as ``ssh-keygen -l`` prints one: SHA256:base64."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public_key).digest()).decode().rstrip("=")


# -- provider -------------------------------------------------------------------------

def build(files: dict[str, bytes], *, profile: dict, train: dict, runtime_version: str, public_key: bytes,
          sign, created: float | None = None) -> tuple[bytes, dict]:
    """``(tar bytes, manifest)`` of a bundle holding ``files`` (name → bytes; the
    model as :data:`MODEL`, wheels under ``wheels/``) and :data:`TRAIN` made of
    ``train``. ``sign(message) -> 64 bytes`` signs the manifest."""
    files = {**files, TRAIN: json.dumps(train, indent=1, sort_keys=True).encode()}
    for name in files:
        if not _NAME.fullmatch(name) or name in (MANIFEST, SIGNATURE):
            raise ValueError(f"bundle member {name!r}: not a plain relative name")
    created = time.time() if created is None else created
    listed = {n: {"sha256": sha256(b), "bytes": len(b)} for n, b in sorted(files.items())}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
    content = sha256(json.dumps([listed, profile, runtime_version], sort_keys=True).encode())
    manifest = {"format": FORMAT, "release": f"{stamp}-{content[:10]}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
                "runtime_version": runtime_version, "profile": profile, "model": MODEL, "train": TRAIN,
                "signer": public_key.hex(), "files": listed}
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    signature = sign(text)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [(MANIFEST, text), (SIGNATURE, signature), *sorted(files.items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(created)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), manifest


def device_wheel(packages: dict[str, list[str]], version: str, requires: list[str]) -> tuple[str, bytes]:
    """``(file name, bytes)`` of a pure-Python wheel of ``packages`` (import name →
    [(path inside the package, bytes)...]) that requires ``requires``: a zip with
    fixed timestamps, so the same sources give the same bytes."""
    name = f"edgetrain-{version}-py3-none-any.whl"
    info = f"edgetrain-{version}.dist-info"
    members = [(f"{pkg.replace('.', '/')}/{rel}", data) for pkg, items in sorted(packages.items())
               for rel, data in items]
    metadata = "\n".join(["Metadata-Version: 2.1", "Name: edgetrain", f"Version: {version}",
                          "Summary: edgetrain, device side (numpy + onnx)", "Requires-Python: >=3.10",
                          *(f"Requires-Dist: {r}" for r in requires)]) + "\n"
    members += [(f"{info}/METADATA", metadata.encode()),
                (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: edgetrain.devices\nRoot-Is-Purelib: true\n"
                                  b"Tag: py3-none-any\n"),
                (f"{info}/entry_points.txt", b"[console_scripts]\nedgetrain = edgetrain.cli:entry\n")]
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip('=')},"
                     f"{len(data)}\n" for path, data in members) + f"{info}/RECORD,,\n"
    members.append((f"{info}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in members:
            entry = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            z.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return name, buf.getvalue()


# -- device ---------------------------------------------------------------------------

def open_verified(data: bytes, pinned_key: bytes | None) -> tuple[dict, dict[str, bytes], bytes]:
    """``(manifest, files, signer key)`` of the bundle ``data`` after every check:
    a readable tar of regular files; a manifest signed by ``pinned_key`` (or, with no
    key pinned yet, by the key the manifest names: trust on first use); every member
    listed in it and every listed file present, with its size and sha256.
    BundleError saying which check failed otherwise."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if len(members) >= MAX_MEMBERS:
                    raise BundleError(f"the bundle holds more than {MAX_MEMBERS} members")
                if not info.isfile() or not _NAME.fullmatch(info.name) or info.name in members:
                    raise BundleError(f"the bundle's member {info.name!r} is not a plain file with a safe, "
                                      "unique name")
                members[info.name] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BundleError(f"the bundle is truncated or not a bundle ({e})") from None
    if MANIFEST not in members or SIGNATURE not in members:
        raise BundleError(f"the bundle lacks {MANIFEST} or {SIGNATURE}")
    text, signature = members.pop(MANIFEST), members.pop(SIGNATURE)
    signer = _signer(text)
    key = signer if pinned_key is None else pinned_key
    if key is None or not ed25519.verify(key, text, signature):
        if pinned_key is not None and signer not in (None, pinned_key) and ed25519.verify(signer, text, signature):
            raise BundleError(f"the bundle is signed by another key ({fingerprint(signer)}) than the provider's "
                              f"this device trusts ({fingerprint(pinned_key)})")
        raise BundleError("the bundle's signature does not verify: it was changed after signing")
    manifest = json.loads(text)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r}; this runtime reads format {FORMAT}")
    listed = manifest["files"]
    unlisted, absent = sorted(set(members) - set(listed)), sorted(set(listed) - set(members))
    if unlisted or absent:
        raise BundleError(f"the bundle's files differ from its manifest: " + "; ".join(
            filter(None, (unlisted and f"not listed {unlisted}", absent and f"missing {absent}"))))
    for name, want in listed.items():
        if len(members[name]) != want["bytes"] or sha256(members[name]) != want["sha256"]:
            raise BundleError(f"the bundle's {name!r} differs from its manifest's sha256: changed in transit or "
                              "after signing")
    return manifest, members, key


def _signer(text: bytes) -> bytes | None:
    """The key a manifest says signed it (its own word, until a signature checks it)."""
    try:
        signer = bytes.fromhex(json.loads(text)["signer"])
    except (ValueError, KeyError, TypeError):
        return None
    return signer if len(signer) == 32 else None
