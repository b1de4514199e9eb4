"""Zeroth-order estimates (DESIGN.md §4), shared by the fp32 and the int8 steps: ``q``
directions per step, each probed one-sided against the loss of the step's clean pass,
and an update normalised per tensor. Directions are regenerated from a seed whenever
they are needed and never stored.

A perturbation is a callable ``perturb(k)`` that moves the parameters by ``k`` steps of
``ε·z`` in place: :func:`probe` calls it with +1 and −1, so the parameters end where they
started (exactly in int8, up to float rounding in fp32). One-sided differences cost one
forward pass a direction, because the clean loss comes with the pass the step makes
anyway (the BP tail's, or the base loss of plain ZO): at MeZO's two passes a step they
give two directions instead of one.

The update moves each tensor by a step relative to its own scale whatever its size and
whatever the size of the loss differences: ``Σ_j d_j·z_j`` over the directions' loss
differences ``d_j``, divided by the estimate's own scale (the rms ``‖d‖₂`` for Gaussian
z, the largest value ``‖d‖₁`` for ±1 z). A raw SPSA step ``η·g·z`` grows with ``|g|``, so one
large difference throws the weights far; the normalised step never exceeds its size.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import prng, quant

# int8 perturbations and updates walk each tensor in slices of this many weights, so their
# 64-bit temporaries stay small.
INT_CHUNK = 1 << 13
_NOISE_STREAM = 1000  # + tensor number: the stochastic rounding of the int8 update
_U64 = 1 << 64  # seeds reach the native kernels mod 2^64, as prng.py reduces them


def probe(directions: Sequence[Callable[[int], None]], loss: Callable[[], object], base) -> list:
    """For each direction: ``θ + εz`` → ``loss()``, back to ``θ``. Returns the differences
    ``loss(θ + εz_j) − base``, in the loss's own units."""
    diffs = []
    for perturb in directions:
        perturb(+1)
        value = loss()
        perturb(-1)
        diffs.append(value - base)
    return diffs


def gaussian_direction(seed: int, stream: int, shape) -> np.ndarray:
    """The fp32 direction z ~ N(0, I) for tensor number ``stream``, regenerated from ``seed``."""
    return np.random.default_rng([seed, stream]).standard_normal(shape, dtype=np.float32)


def rms_units(params: dict, layers, names=None) -> dict[str, float]:
    """Each ZO tensor's scale: the rms of its layer's weight (a bias takes its weight's,
    so a zero-initialised bias moves too). With ``names``, the scales of those tensors,
    in that order: a tensor that is no layer's weight or bias (a compressed layer's
    codebook or projection) takes its own rms."""
    units = {}
    for layer in layers:
        rms = _rms(params[layer.weight])
        units.update({n: rms for n in (layer.weight, layer.bias) if n})
    return units if names is None else {n: units[n] if n in units else _rms(params[n]) for n in names}


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


class GaussianPerturbation:
    """``θ ← θ + k·ε·u·z`` over the named fp32 tensors, ``u`` each tensor's scale
    (:func:`rms_units`), z from :func:`gaussian_direction`: ε is relative to each layer."""

    def __init__(self, params: dict, units: dict[str, float], seed: int, eps: float):
        self.params, self.units, self.seed, self.eps = params, units, seed, eps
        self.names = list(units)

    def __call__(self, k: int) -> None:
        for stream, name in enumerate(self.names):
            step = np.float32(k * self.eps * self.units[name])
            self.params[name] += step * gaussian_direction(self.seed, stream, self.params[name].shape)

    def direction(self, name: str) -> np.ndarray:
        return gaussian_direction(self.seed, self.names.index(name), self.params[name].shape)


def gaussian_update(directions: Sequence[GaussianPerturbation], diffs: Sequence[float],
                    lr: float) -> dict[str, np.ndarray]:
    """The new values (not applied) ``θ − lr·u·Σ_j d_j·z_j / ‖d‖₂`` of every tensor the
    directions perturb: each tensor moves by ``lr`` times its scale ``u`` in rms. Empty when
    every difference is 0 (the loss did not see the perturbation)."""
    norm = float(np.sqrt(sum(float(d) ** 2 for d in diffs)))
    if norm == 0:
        return {}
    first = directions[0]
    updates = {}
    for name in first.names:
        new = first.params[name].copy()
        for direction, d in zip(directions, diffs):
            new -= np.float32(lr * first.units[name] * float(d) / norm) * direction.direction(name)
        updates[name] = new
    return updates


class SignPerturbation:
    """``w ← w + k·ε·z`` over the named int8 tensors, z = ±1 from the counter PRNG (tensor
    number = stream), ε in weight LSBs: relative to each output channel's scale. Exact:
    :meth:`clip` first brings every weight into ``[−(127 − ε), 127 − ε]``, so ``w ± ε`` never
    saturates. ``native``: the model's native kernels (``edgetrain.backend``), which draw
    the signs in place; None runs the numpy reference, slice by slice."""

    def __init__(self, params: dict, names: list[str], seed: int, eps_lsb: int, native=None):
        self.params, self.names, self.seed, self.eps = params, names, seed, int(eps_lsb)
        self.limit = 127 - self.eps
        self.native = native

    def clip(self) -> None:
        """Bring every perturbed weight into ``[−limit, limit]`` (a no-op after the first step,
        whose updates keep it), so ``w ± ε`` never saturates and the walk is undone exactly."""
        for name in self.names:
            np.clip(self.params[name], -self.limit, self.limit, out=self.params[name])

    def __call__(self, k: int) -> None:
        if self.native is not None:
            for stream, name in enumerate(self.names):
                self.native.zo_perturb(self.params[name], self.seed % _U64, stream, k * self.eps)
            return
        for stream, flat, start, n in self.slices():
            flat[start:start + n] += (k * self.eps * self.signs(stream, n, start)).astype(np.int8)

    def signs(self, stream: int, n: int, start: int) -> np.ndarray:
        return prng.rademacher(self.seed, stream, n, start)

    def slices(self):
        """``(tensor number, flat view, start, length)`` over every tensor, INT_CHUNK at a time."""
        for stream, name in enumerate(self.names):
            flat = self.params[name].reshape(-1)
            for start in range(0, flat.size, INT_CHUNK):
                yield stream, flat, start, min(INT_CHUNK, flat.size - start)


def sign_update(directions: Sequence[SignPerturbation], diffs: Sequence[int], bits: int, seed: int) -> None:
    """``w ← clip(w − SR(Σ_j ΔL_j·z_j / 2^s))`` in place, ``ΔL_j`` the integer loss differences
    and ``s = bit_length(Σ_j |ΔL_j|) − bits`` (at least 0), so no weight moves by
    more than ``2^bits`` LSBs (the expected move is below it): the integer form of :func:`gaussian_update`, as the BP tail's
    update is normalised to ``lr_bits``. SR: stochastic rounding from ``seed``.

    int64 holds it exactly while ``Σ_j |ΔL_j| < 2^62``: ``|Σ_j ΔL_j·z_j|`` is at most that
    and the rounding noise below ``2^s ≤ 2^62``; ValueError beyond. The first direction's
    ``native`` kernels run it when set, numpy otherwise, with the same bits."""
    diffs = [int(d) for d in diffs]
    total = sum(abs(d) for d in diffs)
    if total == 0:
        return
    if total >= 1 << 62 or bits < 0:
        raise ValueError(f"sign_update: Σ|ΔL| = {total} must be below 2^62 and bits = {bits} at least 0")
    shift = max(0, total.bit_length() - bits)
    first = directions[0]
    if first.native is not None:
        seeds = [direction.seed % _U64 for direction in directions]
        for stream, name in enumerate(first.names):
            first.native.zo_sign_update(first.params[name], stream, seeds, diffs, shift, seed % _U64,
                                        _NOISE_STREAM + stream, first.limit)
        return
    for stream, flat, start, n in first.slices():
        estimate = np.zeros(n, dtype=np.int64)
        for direction, d in zip(directions, diffs):
            estimate += d * direction.signs(stream, n, start).astype(np.int64)
        noise = prng.uniform_below_pow2(seed, _NOISE_STREAM + stream, n, shift, start)
        u = quant.stochastic_shift_right(estimate, shift, noise)
        flat[start:start + n] = np.clip(flat[start:start + n] - u, -first.limit, first.limit)
