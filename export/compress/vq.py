"""Vector quantisation of weights (DESIGN.md §5): LR²VQ, and the baselines PQ and clustering,
as one mechanism with three settings.

A layer's weight, viewed as (outputs, inputs) and cut into ``n`` sub-vectors of ``m``
consecutive weights (``S``, ``n × m``), is stored as ``log2 k``-bit codes, a ``k × d``
codebook ``C`` and, for LR²VQ, a ``d × m`` projection ``P``: ``S ≈ C[codes] @ P``.

* ``lr2vq`` (Zhu et al. 2022): ``S ≈ R @ P`` with a rank-``d`` representation ``R`` (SVD),
  trained end-to-end on the task loss ("low-rank pre-training", a third of the epochs);
  then k-means on ``R`` (distances measured after the projection, in weight space) and
  fine-tuning of ``C``, ``P`` and the rest of the model. ``d`` trades the low-rank error
  (falls with ``d``) against the clustering error (grows with ``d`` at a fixed ``k``);
  without ``d`` it is estimated where the two meet (:func:`estimate_d`).
* ``pq`` ("And the bit goes down", PQF): k-means on the raw sub-vectors (``d = m``, no
  projection stored), the same fine-tuning for all epochs.
* ``cluster`` (TensorFlow Model Optimization's weight clustering): per-layer scalar k-means
  (``m = d = 1``), the same fine-tuning.

Fine-tuning (torch, Adam, cross-entropy) keeps a latent ``Z`` per layer (``R``, or the raw
sub-vectors): the forward pass uses ``C[codes]``, its gradient reaches both ``C`` and ``Z``
(straight through), and between epochs every code moves to the codeword nearest its latent.
Biases and uncompressed layers train too. The file stores codes (bit planes below 8 bits),
``C`` and ``P`` in float32, and rebuilds each weight with Gather → MatMul → Reshape
(:mod:`edgetrain.decode`).
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from onnx import numpy_helper
from torch.nn import functional as F

from ... import progress as _progress
from ...decode import Builder
from ..quantization import fp32_model
from . import model_io
from .torch_graph import TorchGraph

METHODS = ("lr2vq", "pq", "cluster")
KMEANS_ITERS = 30
LR = 1e-3         # Adam's step for the model's own parameters and the low-rank factors
LR_CODEBOOK = 1e-3  # for codebooks and projections
LR_LATENT = 1e-4    # for the latents: a tenth, so a code moves under a steady pull rather than per-step noise
BATCH = 64


class SkippedLayerWarning(UserWarning):
    """A layer the compressor leaves as it is (the message names it and says why)."""


def check_settings(method: str, k: int, m: int | None, d: int | None, epochs: int) -> tuple[int, int | None]:
    """``(m, d)`` after checking the arguments against ``method`` (ValueError naming them)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {METHODS}")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 256 or k & (k - 1):
        raise ValueError(f"k={k!r} must be a power of two from 2 to 256 (codes of log2 k bits, at least one bit)")
    if method == "cluster":
        if m not in (None, 1) or d not in (None, 1):
            raise ValueError(f"m={m!r}, d={d!r}: cluster is per-weight (scalar) k-means, m = d = 1")
        return 1, 1
    m = 8 if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m={m!r} must be a positive int (weights per sub-vector)")
    if method == "pq" and d not in (None, m):
        raise ValueError(f"d={d!r}: pq clusters the raw sub-vectors, d = m = {m}")
    if method == "lr2vq" and d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= m):
        raise ValueError(f"d={d!r} must be an int from 1 to m = {m} (the clustering dimensionality)")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < (2 if method == "lr2vq" else 1):
        raise ValueError(f"epochs={epochs!r} must be an int ≥ {2 if method == 'lr2vq' else 1}"
                         + (" (lr2vq: low-rank pre-training, then fine-tuning)" if method == "lr2vq" else ""))
    return m, (m if method == "pq" else d)


def select_layers(layers: list, k: int, m: int, skip=()) -> list:
    """The layers to compress: those not in ``skip`` with at least ``k`` sub-vectors (others are
    skipped with a SkippedLayerWarning naming them). ValueError when ``m`` does not divide one."""
    unknown = sorted(set(skip) - {l.node for l in layers} - {l.weight for l in layers})
    if unknown:
        raise ValueError(f"skip={unknown} names no Conv/Gemm/MatMul layer; layers: {[l.node for l in layers]}")
    chosen, small = [], []
    for l in layers:
        if l.node in skip or l.weight in skip:
            continue
        if l.size // m < k:
            small.append(f"{l.node} ({l.size} weights, {l.size // m} sub-vectors of {m})")
            continue
        if l.size % m:
            fits = [v for v in range(2, 17) if l.size % v == 0]
            raise ValueError(f"m={m} does not divide layer {l.node!r}'s {l.size} weights; choose m from {fits} "
                             f"or leave the layer uncompressed (skip {l.node!r})")
        chosen.append(l)
    if small:
        warnings.warn(f"kept uncompressed, fewer sub-vectors than k={k} codewords: {', '.join(small)}",
                      SkippedLayerWarning, stacklevel=3)
    if not chosen:
        raise ValueError(f"no layer can be compressed with k={k}, m={m}: each holds fewer than k sub-vectors")
    return chosen


# -- k-means ------------------------------------------------------------------------------------

def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = KMEANS_ITERS) -> np.ndarray:
    """Codes (int64, one per row of ``points``) of ``k``-means: k-means++ seeding, then Lloyd
    iterations until no code moves; an empty cluster takes the point farthest from its centre."""
    x = points.astype(np.float64)
    centres = x[[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres = np.vstack([centres, x[rng.choice(len(x), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(x))]])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    codes = None
    for _ in range(iters):
        new = nearest(x, centres)
        if codes is not None and np.array_equal(new, codes):
            break
        codes = new
        centres = cluster_means(x, codes, k, centres)
        empty = np.setdiff1d(np.arange(k), codes)
        if empty.size:
            far = np.argsort(((x - centres[codes]) ** 2).sum(1))[::-1][:empty.size]
            centres[empty], codes[far] = x[far], empty
    return codes


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each row of ``x`` (squared Euclidean distance)."""
    d = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None, :]
    return d.argmin(1)


def cluster_means(x: np.ndarray, codes: np.ndarray, k: int, previous: np.ndarray | None = None) -> np.ndarray:
    """Mean of the rows of ``x`` per code (a code with no row keeps ``previous``, or zeros)."""
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, codes, x)
    counts = np.bincount(codes, minlength=k)[:, None]
    fallback = np.zeros_like(sums) if previous is None else previous
    return np.where(counts > 0, sums / np.maximum(counts, 1), fallback)


# -- the clustering dimensionality ---------------------------------------------------------------

def subvectors(layer, w: np.ndarray, m: int) -> np.ndarray:
    return layer.matrix(w).reshape(-1, m)


def estimate_d(subs: list[np.ndarray], k: int, m: int, seed: int) -> dict:
    """The clustering dimensionality where the rank-``d`` error of the sub-vectors and the
    error of clustering their rank-``d`` representation with ``k`` codewords meet. Both are
    relative to ``Σ‖S‖²`` over the layers; low-rank pre-training can absorb the first, the
    second is what quantisation leaves, so ``d`` is the smallest that brings the low-rank
    error down to the clustering error (``argmin_d max(low-rank, clustering)``)."""
    total = sum(float((s.astype(np.float64) ** 2).sum()) for s in subs)
    rows = []
    for d in range(1, m + 1):
        low, clus = 0.0, 0.0
        for i, s in enumerate(subs):
            r, p = _low_rank(s, d)
            low += float(((s - r @ p) ** 2).sum())
            codes = kmeans(r, k, np.random.default_rng([seed, i, d]))
            clus += float(((r - cluster_means(r, codes, k)[codes]) ** 2).sum())
        rows.append({"d": d, "low_rank_error": low / total, "clustering_error": clus / total})
    best = min(rows, key=lambda r: max(r["low_rank_error"], r["clustering_error"]))
    reason = (f"d={best['d']}: rank-{best['d']} error {best['low_rank_error']:.3g} and clustering error "
              f"{best['clustering_error']:.3g} (relative to the weights' energy) meet there; a smaller d leaves "
              f"more low-rank error, a larger one more clustering error with k={k}")
    return {"d": best["d"], "reason": reason, "curve": rows}


def _low_rank(s: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``S ≈ R @ P``, rank ``d`` by SVD, with orthonormal rows in ``P`` (``d × m``)."""
    u, sv, vt = np.linalg.svd(s.astype(np.float64), full_matrices=False)
    return u[:, :d] * sv[:d], vt[:d]


# -- fine-tuning ----------------------------------------------------------------------------------

class _Quantised:
    """One layer's trainable compressed form (torch): latent ``z`` (n × d), codebook ``c``
    (k × d), projection ``p`` (d × m, or None), and the codes."""

    def __init__(self, layer, z, c, p, codes):
        self.layer = layer
        self.z = torch.nn.Parameter(torch.tensor(z, dtype=torch.float32))
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=torch.float32))
        self.p = None if p is None else torch.nn.Parameter(torch.tensor(p, dtype=torch.float32))
        self.codes = torch.tensor(codes, dtype=torch.int64)

    def parameters(self):
        return [t for t in (self.z, self.c, self.p) if t is not None]

    def weight(self) -> torch.Tensor:
        q = self.c[self.codes] + self.z - self.z.detach()  # forward C[codes]; gradient to C and (straight through) z
        return _layout(self.layer, q if self.p is None else q @ self.p)

    def reassign(self) -> int:
        """Every code to the codeword nearest its latent, measured after the projection;
        returns how many codes moved."""
        with torch.no_grad():
            z, c = (self.z, self.c) if self.p is None else (self.z @ self.p, self.c @ self.p)
            new = torch.from_numpy(nearest(z.double().numpy(), c.double().numpy()))
        moved = int((new != self.codes).sum())
        self.codes = new
        return moved


def _layout(layer, sub: torch.Tensor) -> torch.Tensor:
    out = layer.shape[0] if layer.rows_first else layer.shape[-1]
    mat = sub.reshape(out, -1)
    return mat.reshape(layer.shape) if layer.rows_first else mat.T


def _train(graph: TorchGraph, weights, groups, x, y, epochs: int, seed: int, label: str, progress: bool,
           between=None) -> list[dict]:
    """Adam on cross-entropy over ``groups`` (torch parameter groups, each with its ``lr``);
    ``weights()`` gives the replaced initializers of a pass; ``between()`` runs between two
    epochs (never after the last: the model that was trained is the one returned). One
    record per epoch."""
    opt = torch.optim.Adam(groups)
    order = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start, loss_sum, correct = time.perf_counter(), 0.0, 0
        batches = torch.randperm(len(x), generator=order).split(BATCH)
        with _progress.bar(progress, total=len(batches), desc=f"{label} {epoch}/{epochs}", unit="batch") as bar:
            for idx in batches:
                logits = graph(x[idx], weights())
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y[idx]).sum())
                bar.update(1)
        record = {"phase": label, "epoch": epoch, "loss": loss_sum / len(x), "accuracy": correct / len(x),
                  "seconds": time.perf_counter() - start}
        if between is not None and epoch < epochs:
            record["codes_moved"] = between()
        history.append(record)
        _progress.note(progress, f"{label} {epoch}/{epochs}  loss {record['loss']:.4f}  acc {record['accuracy']:.4f}"
                                 + (f"  codes moved {record['codes_moved']}" if "codes_moved" in record else ""))
    return history


def compress(model_path, out_path, data, *, method: str = "lr2vq", k: int = 256, m: int | None = None,
             d: int | None = None, epochs: int = 3, seed: int = 0, skip=(), progress: bool = True,
             lr: float = LR, lr_codebook: float = LR_CODEBOOK, lr_latent: float = LR_LATENT) -> dict:
    """Compress the fp32 ONNX model at ``model_path`` with ``method`` (:data:`METHODS`) and
    write the result to ``out_path``. ``data`` is ``(x, y)``: the training images and labels
    of the task loss. Every argument is checked before any work. Returns the settings, the
    d estimate (lr2vq without ``d``), per-layer sizes, the training history and the bytes."""
    m, d = check_settings(method, k, m, d, epochs)
    proto = fp32_model(model_path, "compress")
    x, y = data
    chosen = select_layers(model_io.layers(proto), k, m, skip)
    graph = TorchGraph(proto)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    subs = [subvectors(l, graph.tensors[l.weight].detach().numpy(), m) for l in chosen]
    estimate = None
    if d is None:
        estimate = estimate_d(subs, k, m, seed)
        d = estimate["d"]
        _progress.note(progress, f"estimated clustering dimensionality {estimate['reason']}")
    bits = int(math.log2(k))
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        others = [p for n, p in graph.tensors.items() if n not in {l.weight for l in chosen}]
        if method == "lr2vq":  # low-rank pre-training: W = layout(R @ P)
            factors = [[torch.nn.Parameter(torch.tensor(a, dtype=torch.float32)) for a in _low_rank(s, d)]
                       for s in subs]
            pre = max(1, epochs // 3)
            groups = [{"params": others + [t for f in factors for t in f], "lr": lr}]
            history += _train(graph, lambda: {l.weight: _layout(l, r @ p) for l, (r, p) in zip(chosen, factors)},
                              groups, xt, yt, pre, seed, "low-rank", progress)
            latents = [tuple(t.detach().numpy().astype(np.float64) for t in f) for f in factors]
            epochs -= pre
        else:
            latents = [(s.astype(np.float64), None) for s in subs]
        layers = []
        for i, (l, (z, p)) in enumerate(zip(chosen, latents)):
            codes = kmeans(z if p is None else z @ p, k, np.random.default_rng([seed, 1000 + i]))
            layers.append(_Quantised(l, z, cluster_means(z, codes, k), p, codes))
        groups = [{"params": others, "lr": lr}, {"params": [q.z for q in layers], "lr": lr_latent},
                  {"params": [t for q in layers for t in q.parameters() if t is not q.z], "lr": lr_codebook}]
        history += _train(graph, lambda: {q.layer.weight: q.weight() for q in layers}, groups, xt, yt, epochs,
                          seed + 1, "fine-tune", progress, between=lambda: sum(q.reassign() for q in layers))
    builder = Builder()
    report = []
    for i, q in enumerate(layers):
        l, c = q.layer, q.c.detach().numpy()
        p = None if q.p is None else q.p.detach().numpy()
        builder.codebook_weight(f"v{i}", l.weight, q.codes.numpy(), bits, c, p, l.shape,
                                perm=None if l.rows_first else [1, 0])
        n = l.size // m
        report.append({"layer": l.node, "weights": l.size, "subvectors": n,
                       "code_bytes": n if bits == 8 else bits * -(-n // 8), "codebook_bytes": c.nbytes,
                       "projection_bytes": 0 if p is None else p.nbytes})
    trained = _trained_proto(proto, graph)
    model_io.write(trained, builder, out_path)
    return {"method": method, "k": k, "m": m, "d": d, "d_estimate": estimate, "seed": seed, "layers": report,
            "skipped": [l.node for l in model_io.layers(proto) if l not in chosen], "history": history,
            "codebooks": {q.layer.weight: {"codes": q.codes.numpy(), "codebook": q.c.detach().numpy(),
                                           "projection": None if q.p is None else q.p.detach().numpy()}
                          for q in layers},
            **model_io.sizes(model_path, out_path)}


def _trained_proto(proto, graph: TorchGraph):
    """``proto`` with its float initializers replaced by the trained values."""
    out = type(proto)()
    out.CopyFrom(proto)
    for t in out.graph.initializer:
        if t.name in graph.tensors:
            t.CopyFrom(numpy_helper.from_array(graph.tensors[t.name].detach().numpy(), t.name))
    return out
