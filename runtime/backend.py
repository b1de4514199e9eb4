"""Which code runs the integer kernels: the numpy reference or the native wheel.

The native kernels (``edgetrain_kernels``, built from ``rust/kernels``) are an optional
install; with them a model's integer GEMMs, convolutions, requantisation and integer
pools run in Rust, bit for bit as the numpy code computes them. This module is the one
place that chooses:

* ``EDGETRAIN_BACKEND=numpy`` (or ``load(..., backend="numpy")``) forces the reference;
  ``native`` insists on the wheel; unset, the wheel runs when it is installed.
* ``EDGETRAIN_NATIVE_PATH`` (or ``backend="native:avx2"``) forces one instruction-set
  path of the native kernels (``scalar``, ``avx2``, ``avx512-vnni``; on aarch64
  ``scalar``, ``neon``, ``dotprod``); unset, the fastest this CPU offers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

try:
    import edgetrain_kernels as _native
except ImportError:  # a device install without the wheel: numpy runs everything
    _native = None

BACKEND_ENV = "EDGETRAIN_BACKEND"
PATH_ENV = "EDGETRAIN_NATIVE_PATH"


@dataclass(frozen=True)
class Backend:
    """``kernels`` is the native ``Kernels`` object, or None for the numpy reference."""
    kernels: object | None = None

    @property
    def name(self) -> str:
        return "numpy" if self.kernels is None else f"native ({self.kernels.path})"

    def __str__(self) -> str:
        return self.name


def native_paths() -> list[str]:
    """The native kernel paths this CPU runs, slowest first ([] without the wheel)."""
    return [] if _native is None else list(_native.available_paths())


def select(choice: str | Backend | None = None) -> Backend:
    """The backend for ``choice``: None (the environment, else native when installed),
    ``"numpy"``, ``"native"`` or ``"native:PATH"``. ValueError names a bad choice."""
    if isinstance(choice, Backend):
        return choice
    choice = choice or os.environ.get(BACKEND_ENV) or ("numpy" if _native is None else "native")
    kind, _, path = choice.partition(":")
    if kind == "numpy" and not path:
        return Backend()
    if kind != "native":
        raise ValueError(f"backend={choice!r} must be 'numpy', 'native' or 'native:PATH' "
                         f"(PATH one of {native_paths() or 'the native paths'})")
    if _native is None:
        raise ValueError(f"backend={choice!r}: the native kernels are not installed "
                         "(pip install ./rust/kernels); use backend='numpy'")
    return Backend(_native.Kernels(path or os.environ.get(PATH_ENV) or None))
