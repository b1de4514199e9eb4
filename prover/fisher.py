"""Per-sample gradients of a loaded model and the blockwise inverse empirical Fisher.

The target weights of a layer are flattened row-major and cut into blocks of
``block`` consecutive weights; the last block is padded with zeros. A block's
inverse Fisher ``A = (λI + (1/m)·Σ g gᵀ)⁻¹`` is built from ``A = I/λ`` by one
Sherman–Morrison rank-1 update per sample, so no matrix is ever inverted.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .. import autodiff
from ..model import Model
from . import int8

def target_layers(model: Model, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the weight tensors to unlearn: ``layers`` (parameter names) checked
    against the model, or by default the weights of every fully connected layer —
    Gemm / MatMul in fp32 models, QGemm / QLinearMatMul (int8 weights, per-channel or
    per-tensor scales) in int8 models."""
    fc = [l.weight for l in model.layers()
          if model.kernels[l.index].fully_connected and model.kernels[l.index].numeric == "float"]
    fc_int8 = int8.fc_weights(model)
    if layers is None:
        if not fc + fc_int8:
            raise ValueError("the model has no fully connected layer (Gemm / MatMul, or QGemm / QLinearMatMul, "
                             "with a weight initializer); pass layers=[parameter names]")
        return fc + fc_int8
    if isinstance(layers, str):
        raise TypeError(f"layers={layers!r} must be a list of parameter names, not one string")
    allowed = [k for k, v in model.params.items() if np.issubdtype(v.dtype, np.floating) and v.ndim >= 2]
    allowed += fc_int8
    bad = [name for name in layers if name not in allowed]
    if bad or not layers:
        raise ValueError(f"layers={list(layers)!r}: expected a non-empty list of fp32 weight tensors or int8 "
                         f"fully connected weights of the model, one of {allowed}")
    return list(layers)


def is_int8(model: Model, names: Sequence[str]) -> bool:
    """Whether the target layers ``names`` are integer — int8, or int16 after an earlier
    int8 unlearning widened them — (all of them) or fp32 (all of them)."""
    kinds = {model.params[n].dtype in int8.WEIGHT_DTYPES for n in names}
    if len(kinds) > 1:
        raise ValueError(f"layers {list(names)!r} mix int8 and fp32 weights; unlearn one kind at a time")
    return kinds == {True}


def weight_values(model: Model, name: str) -> np.ndarray:
    """The real weights of a target layer: the parameter (fp32) or ``s·q`` (int8, dequantised)."""
    return int8.dequantized(model, name) if model.params[name].dtype in int8.WEIGHT_DTYPES else model.params[name]


def n_blocks(size: int, block: int) -> int:
    return -(-size // block)


def per_sample_gradients(model: Model, x: np.ndarray, y: np.ndarray, names: Sequence[str],
                         batch: int = 128) -> Iterator[dict[str, np.ndarray]]:
    """Yields, per slice of up to ``batch`` samples, ``{name: (n, size) float64}``: the
    gradient of each sample's own cross-entropy w.r.t. each flattened weight tensor.

    One batched forward pass per slice, then one batch-1 backward pass per sample
    from the first node that reads a target tensor (samples of a batch do not
    interact in an inference graph, so slicing the forward tensors is exact).
    On int8 layers: the integer gradients of :mod:`edgetrain.prover.int8` times
    their real scale, ``∂L/∂W`` of the dequantised weights ``W = s·q``.
    """
    _check_data(model, x, y)
    if is_int8(model, names):
        yield from int8.per_sample_gradients(model, x, y, names, batch)
        return
    uses = [i for i, n in enumerate(model.nodes) if any(t in names for t in n.inputs)]
    start = min(uses)
    keep = {t for n in model.nodes[start:] for t in n.inputs + n.outputs if t}
    out = model.output_names[0]
    for lo in range(0, len(x), batch):
        xb, yb = x[lo:lo + batch].astype(np.float32), y[lo:lo + batch]
        env = model.run_all(xb, keep=keep)
        n = len(xb)
        grads = {name: np.empty((n, model.params[name].size)) for name in names}
        for i in range(n):
            env_i = {k: v[i:i + 1] for k, v in env.items()
                     if k in keep and isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n}
            _, dlogits = autodiff.cross_entropy(env_i[out], yb[i:i + 1])
            g = autodiff.backward(model, env_i, dlogits, wrt=names, start=start)
            for name in names:
                grads[name][i] = g[name].reshape(-1)
        yield grads


def gradient_moments(model: Model, x: np.ndarray, y: np.ndarray, names: Sequence[str],
                     tick=None) -> tuple[dict, dict]:
    """Mean gradient ḡ and diagonal empirical Fisher (mean of g²) per weight tensor,
    each shaped like the tensor, over the samples ``(x, y)``. ``tick(n)``, if given, is
    called after each slice of n samples (a progress bar's ``update``)."""
    mean = {name: np.zeros(model.params[name].size) for name in names}
    sq = {name: np.zeros(model.params[name].size) for name in names}
    for grads in per_sample_gradients(model, x, y, names):
        for name, g in grads.items():
            mean[name] += g.sum(0)
            sq[name] += (g * g).sum(0)
        if tick:
            tick(len(g))
    shape = lambda d: {k: (v / len(x)).reshape(model.params[k].shape) for k, v in d.items()}
    return shape(mean), shape(sq)


def inverse_fisher_blocks(grads: np.ndarray, block: int, damp: float, m: int | None = None) -> np.ndarray:
    """``(n_blocks, block, block)`` float64: per block ``(damp·I + (1/m)·Σ g gᵀ)⁻¹`` over the
    per-sample gradients ``grads`` ((samples, size); ``m`` defaults to the sample count),
    by Sherman–Morrison rank-1 updates from ``I/damp`` (see :func:`fisher_update`)."""
    grads = np.asarray(grads, dtype=np.float64)
    a = initial_inverse(grads.shape[1], block, damp)
    fisher_update(a, grads, len(grads) if m is None else m)
    return a


def initial_inverse(size: int, block: int, damp: float) -> np.ndarray:
    """``I/damp`` per block: the inverse Fisher before any sample."""
    if not damp > 0:
        raise ValueError(f"damp={damp!r} must be positive (it keeps the Fisher invertible)")
    return np.broadcast_to(np.eye(block) / damp, (n_blocks(size, block), block, block)).copy()


def fisher_update(a: np.ndarray, grads: np.ndarray, m: int) -> None:
    """Adds ``(1/m)·g gᵀ`` to the Fisher of every block, for each row g of ``grads``
    (samples, size), in place on its inverse ``a``: ``A ← A − (A g)(A g)ᵀ / (m + gᵀ A g)``
    (A stays symmetric positive definite)."""
    nb, block, _ = a.shape
    if grads.ndim != 2 or not (nb - 1) * block < grads.shape[1] <= nb * block:
        raise ValueError(f"gradients have shape {grads.shape}, expected (samples, ≤ {nb * block})")
    padded = np.zeros((len(grads), nb * block))
    padded[:, :grads.shape[1]] = grads
    for g in padded.reshape(len(grads), nb, block):
        u = np.einsum("bij,bj->bi", a, g)
        denom = m + np.einsum("bi,bi->b", g, u)
        a -= u[:, :, None] * (u[:, None, :] / denom[:, None, None])


def _check_data(model, x, y):
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError("data must be a pair of numpy arrays (x, y)")
    if len(x) == 0 or y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"data: x has {len(x)} samples and y shape {y.shape} dtype {y.dtype}; expected "
                         "≥ 1 sample and one integer label per sample")
