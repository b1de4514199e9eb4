"""Fixed-point encoding of the unlearning step, to the conventions of the
``edgetrain_zk`` crate (rust/README.md), and the integer step itself.

* Weights: ``w_int = rint(w · 2^s)`` (round half to even), signed 24 bit, so
  ``|w| < 2^(23−s)`` (128 at s = 16).
* Inverse-Fisher blocks: the OBS step ``δ = −A[:,S]·A[S,S]⁻¹·w[S]`` does not
  change when a block's ``A`` is multiplied by a positive number, so each block
  is scaled on its own to use ``fisher_bits`` bits:
  ``A_int = rint(A_sym · 2^fisher_bits / max|A_sym|)`` with
  ``A_sym = (A + Aᵀ)/2`` (the crate commits the lower triangle, so blocks must
  be exactly symmetric). The committed width is signed 16 bit, so
  ``fisher_bits ≤ 14``; 14 bits leave ``y`` 2^(2s−14)·max|A|·|A⁻¹w| in 32 bits
  for any damping above ~1e-4.
* ``y``: the exact solution of ``A_int[S,S]·y = 2^s·w_int[S]`` rounded to the
  nearest integer (0 on kept weights); the residual is at most
  ``½·Σ_j |A_int[i,S_j]|`` ≤ 2^(fisher_bits+5) for B ≤ 64, inside the
  tolerance ``[−τ, τ)``, τ = 2^23.
* ``δ = ⌊−Σ_j A_int[i,j]·y_j / 2^s⌋`` (floor toward −∞), remainder in [0, 2^s).
* ``w'_int = keep·(w_int + δ)``: masked weights are exactly 0; ``w'_int`` must
  stay signed 24 bit.
This is the crate's honest witness (``edgetrain_zk.unlearn_witness``), redone in
numpy so that a device can unlearn without the prover installed.
"""
from __future__ import annotations

import numpy as np

VALUE_BITS = 24  # committed weights are signed 24 bit
FISHER_VALUE_BITS = 16  # committed inverse-Fisher entries are signed 16 bit
Y_BITS = 32  # the crate's default width for y
TOL = 1 << 23  # the crate's default solve tolerance τ: −τ ≤ e < τ


def to_fixed(w: np.ndarray, scale_bits: int) -> np.ndarray:
    """``rint(w · 2^s)`` as int64, checked to fit signed 24 bit."""
    q = np.rint(np.asarray(w, dtype=np.float64) * 2.0 ** scale_bits)
    limit = 2 ** (VALUE_BITS - 1)
    if q.size and (q.min() < -limit or q.max() >= limit):
        worst = float(np.abs(w).max())
        raise ValueError(f"a weight of magnitude {worst:.4g} does not fit {VALUE_BITS} bits at scale_bits="
                         f"{scale_bits}: expected |w| < {limit / 2.0 ** scale_bits:g}; use a smaller scale_bits")
    return q.astype(np.int64)


def fisher_to_fixed(a: np.ndarray, fisher_bits: int = 14) -> np.ndarray:
    """Per block: ``rint(A_sym · 2^fisher_bits / max|A_sym|)`` as int64 (n_blocks, B, B),
    ``A_sym = (A + Aᵀ)/2``; exactly symmetric."""
    if not 1 <= fisher_bits <= FISHER_VALUE_BITS - 2:
        raise ValueError(f"fisher_bits={fisher_bits!r} must be in [1, {FISHER_VALUE_BITS - 2}]")
    a = np.asarray(a, dtype=np.float64)
    a = (a + a.transpose(0, 2, 1)) / 2
    peak = np.abs(a).max(axis=(1, 2), keepdims=True)
    return np.rint(a * (2.0 ** fisher_bits / peak)).astype(np.int64)


def integer_step(w_int: np.ndarray, a_int: np.ndarray, keep: np.ndarray, scale_bits: int) -> dict:
    """The integer OBS step per block; ``w_int``, ``keep``: (n_blocks, B); ``a_int``:
    (n_blocks, B, B). Returns ``y``, ``delta``, ``remainder``, ``residual``, ``w_new``
    (int64 arrays shaped like ``w_int``) and checks every width the circuit checks."""
    nb, b = w_int.shape
    y = np.zeros_like(w_int)
    residual = np.zeros_like(w_int)
    for i in np.flatnonzero((~keep).any(axis=1)):
        s = ~keep[i]
        a_ss = a_int[i][np.ix_(s, s)].astype(np.float64)
        y[i, s] = np.rint(np.linalg.solve(a_ss, w_int[i, s] * 2.0 ** scale_bits)).astype(np.int64)
        residual[i, s] = a_int[i][np.ix_(s, s)] @ y[i, s] - (w_int[i, s] << scale_bits)
    _check_bits("y", y, Y_BITS)
    p = np.einsum("bij,bj->bi", a_int, y)  # exact in int64: |A|·|y|·B < 2^(15+31+6)
    delta = (-p) >> scale_bits  # arithmetic shift = floor division by 2^s
    remainder = -p - (delta << scale_bits)
    w_new = np.where(keep, w_int + delta, 0)
    _check_bits("w_new", w_new, VALUE_BITS)
    if residual.size and (residual.min() < -TOL or residual.max() >= TOL):
        raise ValueError(f"solve residual {int(np.abs(residual).max())} is outside the tolerance [−{TOL}, {TOL}): "
                         "the Fisher blocks are too badly conditioned at this precision; raise damp")
    return {"y": y, "delta": delta, "remainder": remainder, "residual": residual, "w_new": w_new}


def _check_bits(name, v, bits):
    limit = 2 ** (bits - 1)
    if v.size and (v.min() < -limit or v.max() >= limit):
        raise ValueError(f"{name} = {int(np.abs(v).max())} does not fit signed {bits} bit: the Fisher blocks "
                         "are too badly conditioned for this scale; raise damp or lower fisher_bits")
