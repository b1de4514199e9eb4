"""One layer compressed against its calibration inputs, OBQ/GPTQ style (Frantar et al.):
columns of the (outputs × inputs) weight are fixed one at a time — rounded to a grid
(:func:`quantize`) or zeroed (:func:`prune`) — and each column's error is spread over the
columns not yet fixed through the inverse Hessian ``H = X Xᵀ`` of the layer's inputs,
which minimises the growth of ``‖(W − Ŵ) X‖²`` (the optimal brain surgeon's update).

Quantisation is symmetric per output channel, ``b``-bit two's complement
(``[−2^(b−1), 2^(b−1) − 1]``, zero-point 0, as the int8 kernels take it); each channel's
scale is the one of a grid of clipping ratios that rounds it best. Pruning zeroes, in every
row, the weights of least saliency ``w² / [H⁻¹]ᵢᵢ`` (OBS).
"""
from __future__ import annotations

import numpy as np

from ...decode import int_range

DAMP = 0.01  # of the mean diagonal, added to H (GPTQ's default)
CLIP_GRID = np.linspace(1.0, 0.3, 15)


def hessian(x: np.ndarray) -> np.ndarray:
    """``X Xᵀ / N`` of the layer inputs ``x`` (N samples × inputs), float64."""
    x = x.astype(np.float64)
    return x.T @ x / len(x)


def _inverse_factor(h: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The upper Cholesky factor ``U`` of ``(H + damp·I)⁻¹`` (``H⁻¹ = Uᵀ U``) and ``w`` with the
    columns of inputs that never fire zeroed (their H row is 0)."""
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w = np.where(dead[None, :], 0.0, w)
    h += DAMP * np.mean(np.diag(h)) * np.eye(len(h))
    inv = np.linalg.inv(h)
    return np.linalg.cholesky((inv + inv.T) / 2).T, w


def channel_scales(w: np.ndarray, bits: int) -> np.ndarray:
    """Per row, the scale ``α·max|w| / (2^(b−1) − 1)``, ``α`` from :data:`CLIP_GRID`, that rounds
    the row to the ``bits``-bit grid with the least squared error."""
    lo, hi = int_range(bits)
    top = np.maximum(np.abs(w).max(1), 1e-12) / max(hi, 1)
    best, best_err = top, np.full(len(w), np.inf)
    for a in CLIP_GRID:
        s = a * top
        err = ((w - s[:, None] * np.clip(np.rint(w / s[:, None]), lo, hi)) ** 2).sum(1)
        better = err < best_err
        best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return best


def _sweep(w: np.ndarray, h: np.ndarray, fix) -> np.ndarray:
    """Fix columns left to right with ``fix(i, column) → fixed column``, spreading each error
    over the later columns (the OBS update). Returns the fixed weight."""
    u, w = _inverse_factor(h, w.astype(np.float64))
    out = np.empty_like(w)
    for i in range(w.shape[1]):
        out[:, i] = fix(i, w[:, i])
        err = (w[:, i] - out[:, i]) / u[i, i]
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    return out


def quantize(w: np.ndarray, h: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scales)``: int8 ``q`` in the ``bits``-bit range and float32 per-row scales, with
    ``scales[:, None]·q`` the GPTQ quantisation of ``w`` (outputs × inputs)."""
    lo, hi = int_range(bits)
    s = channel_scales(w.astype(np.float64), bits)
    q = _sweep(w, h, lambda i, col: np.clip(np.rint(col / s), lo, hi) * s)
    return np.rint(q / s[:, None]).astype(np.int8), s.astype(np.float32)


def prune(w: np.ndarray, h: np.ndarray, sparsity: float) -> np.ndarray:
    """``w`` with ``⌊sparsity·inputs⌋`` weights of each row zeroed (least OBS saliency) and the
    rest updated to compensate; float32."""
    u, _ = _inverse_factor(h, w.astype(np.float64))
    k = int(np.floor(sparsity * w.shape[1]))
    saliency = w.astype(np.float64) ** 2 / np.diag(u.T @ u)[None, :]
    cut = np.argsort(saliency, axis=1, kind="stable")[:, :k]
    keep = np.ones(w.shape, bool)
    np.put_along_axis(keep, cut, False, axis=1)
    return _sweep(w, h, lambda i, col: np.where(keep[:, i], col, 0.0)).astype(np.float32)


def relative_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """``tr((W − Ŵ) H (W − Ŵ)ᵀ) / tr(W H Wᵀ)``: the layer's output error on its calibration inputs."""
    e = (w - w_hat).astype(np.float64)
    w = w.astype(np.float64)
    return float(((e @ h) * e).sum() / max(((w @ h) * w).sum(), 1e-300))
