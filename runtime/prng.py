"""Counter-based integer random numbers: any value can be regenerated from
``(seed, stream, index)`` alone, so perturbation directions are never stored.

This is SplitMix64 — state ``base + (index + 1)·γ`` through its finaliser —
with the base itself mixed from ``(seed, stream)``; wrapping uint64
arithmetic, integers only, vectorised over the index.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STREAM = np.uint64(0xD1B54A32D192ED03)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def random_bits(seed: int, stream: int, n: int, start: int = 0) -> np.ndarray:
    """Pseudo-random uint64 words ``start … start + n − 1`` of ``(seed, stream)``."""
    with np.errstate(over="ignore"):
        base = _mix(np.uint64(seed % (1 << 64)) ^ _mix(np.uint64(stream % (1 << 64)) + _STREAM))
        return _mix(base + (np.arange(start + 1, start + n + 1, dtype=np.uint64) * _GOLDEN))


def rademacher(seed: int, stream: int, n: int, start: int = 0) -> np.ndarray:
    """±1 as int8: elements ``start … start + n − 1`` of the flat sequence for ``(seed, stream)``."""
    bit = (random_bits(seed, stream, n, start) >> np.uint64(63)).astype(np.int8)
    return 1 - 2 * bit


def uniform_below_pow2(seed: int, stream: int, n: int, bits: int, start: int = 0) -> np.ndarray:
    """Integers uniform in ``[0, 2^bits)`` as int64 (``0 ≤ bits ≤ 62``), flat, from ``start``."""
    if bits == 0:
        return np.zeros(n, dtype=np.int64)
    return (random_bits(seed, stream, n, start) >> np.uint64(64 - bits)).astype(np.int64)


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A per-step seed derived from the run's seed and the step counter."""
    return int(random_bits(seed, 0x5EED + salt, 1, start=step)[0])
