"""Devices (DESIGN.md §7): profiles as data, and the code that takes a model to a device.

A profile is one small JSON file in ``devices/profiles/`` (or a user's own file):
the device's ``arch``, ``cores``, ``ram_mib``, ``simd`` extensions, the ``python``
it runs and ``train_budget_mib``, the memory one training step may take there.
:func:`profile` finds one by name or path and checks it.

Modules: :mod:`.bundle` (the signed bundle: build on the provider, verify on the
device), :mod:`.ed25519` (signature verification in pure Python, for the device),
:mod:`.device` (install, rollback and the ``edgetrain device`` commands, on the
device), :mod:`.targets` and :mod:`.deploy` (provider: SSH or a folder, deploy,
``edgetrain remote``). Only :mod:`.deploy` needs more than numpy and onnx
(``cryptography``, to sign).
"""
from __future__ import annotations

import json
import os
from numbers import Integral, Real

PROFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
ARCHES = ("aarch64", "armv7l", "x86_64")
SIMD = ("neon", "dotprod", "i8mm", "sve", "avx2", "avx512-vnni")
# field → (check, what it must be)
FIELDS = {
    "name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "arch": (lambda v: v in ARCHES, f"one of {ARCHES}"),
    "cores": (lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= 1, "an int ≥ 1"),
    "ram_mib": (lambda v: isinstance(v, Real) and not isinstance(v, bool) and v > 0, "a number > 0"),
    "simd": (lambda v: isinstance(v, list) and all(s in SIMD for s in v), f"a list of {SIMD}"),
    "python": (lambda v: isinstance(v, str) and _version(v) is not None and _version(v) >= (3, 10),
               "a Python version such as \"3.11\", 3.10 or newer"),
    "train_budget_mib": (lambda v: isinstance(v, Real) and not isinstance(v, bool) and v > 0, "a number > 0"),
}


def _version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return None


def known() -> list[str]:
    """The names of the profiles that ship with edgetrain."""
    return sorted(f[:-5] for f in os.listdir(PROFILES) if f.endswith(".json"))


def profile(spec: str, flag: str = "--device") -> dict:
    """The profile named ``spec`` (a shipped one) or in the file ``spec`` (a path: it
    holds a ``/`` or ends in ``.json``), checked field by field. ValueError naming
    ``flag`` otherwise; an unknown name lists the known ones."""
    if os.sep in spec or spec.endswith(".json"):
        path = spec
    elif spec in known():
        path = os.path.join(PROFILES, f"{spec}.json")
    else:
        raise ValueError(f"{flag} {spec!r} is not a known device; known: {', '.join(known())} "
                         "(or give a profile file's path)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{flag} {spec!r}: no such profile file") from None
    except OSError as e:
        raise ValueError(f"{flag} {spec!r} cannot be read ({e.strerror})") from None
    except ValueError as e:
        raise ValueError(f"{flag} {spec!r} is not JSON ({e})") from None
    return check(data, f"{flag} {spec!r}")


def check(data, where: str) -> dict:
    """``data`` if it is a whole profile; a ValueError naming ``where`` and the field otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a profile is a JSON object with {sorted(FIELDS)}")
    missing = sorted(set(FIELDS) - set(data))
    unknown = sorted(set(data) - set(FIELDS))
    if missing or unknown:
        raise ValueError(f"{where}: " + "; ".join(filter(None, (missing and f"missing {missing}",
                                                                 unknown and f"unknown fields {unknown}"))))
    for field, (ok, what) in FIELDS.items():
        if not ok(data[field]):
            raise ValueError(f"{where}: {field}={data[field]!r} must be {what}")
    return data
