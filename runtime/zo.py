"""Zeroth-order perturbations (DESIGN.md §4): MeZO's two-point sequence, shared by the
fp32 and the int8 steps, and the directions it walks along, regenerated from a seed
whenever they are needed and never stored.

A perturbation is a callable ``perturb(k)`` that moves the parameters by ``k``
steps of ``ε·z`` in place: :func:`two_point` calls it with +1, −2, +1, so the
parameters end where they started (exactly in int8, up to float rounding in fp32).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from . import prng, quant

T = TypeVar("T")

# int8 perturbations and updates walk each tensor in slices of this many weights, so their
# 64-bit temporaries stay small.
INT_CHUNK = 1 << 13


def two_point(perturb: Callable[[int], None], loss: Callable[[], T]) -> tuple[T, T]:
    """``θ + εz`` → ``loss()``, ``θ − εz`` → ``loss()``, back to ``θ``; returns both results."""
    perturb(+1)
    plus = loss()
    perturb(-2)
    minus = loss()
    perturb(+1)
    return plus, minus


def gaussian_direction(seed: int, stream: int, shape) -> np.ndarray:
    """The fp32 direction z ~ N(0, I) for tensor number ``stream``, regenerated from ``seed``."""
    return np.random.default_rng([seed, stream]).standard_normal(shape, dtype=np.float32)


class GaussianPerturbation:
    """``θ ← θ + k·ε·z`` over the named fp32 tensors, z from :func:`gaussian_direction`."""

    def __init__(self, params: dict, names: list[str], seed: int, eps: float):
        self.params, self.names, self.seed, self.eps = params, names, seed, eps

    def __call__(self, k: int) -> None:
        for stream, name in enumerate(self.names):
            self.params[name] += np.float32(k * self.eps) * gaussian_direction(self.seed, stream,
                                                                               self.params[name].shape)

    def step(self, name: str, coefficient: float) -> np.ndarray:
        """``coefficient·z`` for tensor ``name`` (an update along this direction)."""
        stream = self.names.index(name)
        return np.float32(coefficient) * gaussian_direction(self.seed, stream, self.params[name].shape)


class SignPerturbation:
    """``w ← w + k·ε·z`` over the named int8 tensors, z = ±1 from the counter PRNG (tensor
    number = stream), ε in weight LSBs. Exact: :meth:`clip` first brings every weight into
    ``[−(127 − ε), 127 − ε]``, so ``w ± ε`` never saturates."""

    def __init__(self, params: dict, names: list[str], seed: int, eps_lsb: int):
        self.params, self.names, self.seed, self.eps = params, names, seed, int(eps_lsb)
        self.limit = 127 - self.eps

    def clip(self) -> None:
        """Bring every perturbed weight into ``[−limit, limit]`` (a no-op after the first step,
        whose updates keep it), so ``w ± ε`` never saturates and the walk is undone exactly."""
        for name in self.names:
            np.clip(self.params[name], -self.limit, self.limit, out=self.params[name])

    def __call__(self, k: int) -> None:
        for stream, flat, start, n in self._slices():
            flat[start:start + n] += (k * self.eps * prng.rademacher(self.seed, stream, n, start)).astype(np.int8)

    def update(self, delta: int, shift: int) -> None:
        """``w ← clip(w − SR(ΔL·z / 2^shift))`` in place, ``ΔL`` the int32 loss difference:
        the shift is the learning rate, SR stochastic rounding from the same seed."""
        for stream, flat, start, n in self._slices():
            z = prng.rademacher(self.seed, stream, n, start).astype(np.int64)
            noise = prng.uniform_below_pow2(self.seed, 1000 + stream, n, shift, start)
            u = quant.stochastic_shift_right(delta * z, shift, noise)
            flat[start:start + n] = np.clip(flat[start:start + n] - u, -self.limit, self.limit)

    def _slices(self):
        for stream, name in enumerate(self.names):
            flat = self.params[name].reshape(-1)
            for start in range(0, flat.size, INT_CHUNK):
                yield stream, flat, start, min(INT_CHUNK, flat.size - start)
