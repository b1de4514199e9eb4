"""ZK-APEX unlearning (DESIGN.md §6): the provider's mask and the device's
group-OBS step over blockwise inverse Fisher matrices.

``make_mask`` (provider) scores each target weight by how much removing it
changes the forget loss relative to the retain loss; ``unlearn`` (device)
removes the masked weights and compensates the others within each block, in the
fixed-point form that :mod:`edgetrain.prover.proof` proves.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np

from .. import progress as _progress
from ..model import Model
from . import fixed_point as fx
from . import int8
from .fisher import (_check_data, fisher_update, gradient_moments, initial_inverse, is_int8, n_blocks,
                     per_sample_gradients, target_layers, weight_values)


def make_mask(model: Model, forget: tuple, retain: tuple, fraction: float = 0.04,
              layers: Sequence[str] | None = None, c: float = 0.5, eps: float = 1e-12,
              progress: bool = False) -> dict[str, np.ndarray]:
    """The provider's mask: ``{weight name: bool array, True = remove}`` over the target
    layers (default: the fully connected weights), the global top ``fraction``.

    Score per weight: ``|ḡ⊙w − c·F⊙w²|`` on the forget data divided by the same on
    the retain data (+ eps), with ḡ the mean gradient and F the diagonal empirical
    Fisher. With c = ½ it is the size of the second-order change of the loss when
    the weight is set to zero, so the mask takes the weights the forget data needs
    most relative to what the retain data needs. On an int8 model w is the
    dequantised weight and the gradients are the int8 path's, in real units.
    ``progress``: a bar on stderr over the samples scored (:mod:`edgetrain.progress`).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1)")
    names = target_layers(model, layers)
    w = {n: weight_values(model, n) for n in names}
    saliency = {}
    with _progress.bar(progress, total=len(forget[0]) + len(retain[0]), desc="mask: scoring", unit="sample") as bar:
        for key, (x, y) in (("forget", forget), ("retain", retain)):
            g, f = gradient_moments(model, x, y, names, tick=bar.update)
            saliency[key] = {n: np.abs(g[n] * w[n] - c * f[n] * w[n] ** 2) for n in names}
    scores = {n: saliency["forget"][n] / (saliency["retain"][n] + eps) for n in names}
    flat = np.concatenate([scores[n].reshape(-1) for n in names])
    k = max(1, int(round(fraction * flat.size)))
    threshold_idx = np.argpartition(-flat, k - 1)[:k]
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[threshold_idx] = True
    mask, at = {}, 0
    for n in names:
        size = model.params[n].size
        mask[n] = chosen[at:at + size].reshape(model.params[n].shape)
        at += size
    return mask


def obs_step(w: np.ndarray, a: np.ndarray, keep: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Group OBS in floats, per block (rows of ``w`` (n_blocks, B), ``a`` (n_blocks, B, B),
    ``keep`` (n_blocks, B) bool): ``y = (A[S,S] + εI)⁻¹ w[S]``, ``w' = w − A[:,S]·y``,
    ``w'[S] = 0``. With ε = 0, δ = w' − w minimises ``δᵀA⁻¹δ`` subject to ``δ[S] = −w[S]``."""
    w_new = np.array(w, dtype=np.float64)
    for i in np.flatnonzero((~keep).any(axis=1)):
        s = ~keep[i]
        y = np.linalg.solve(a[i][np.ix_(s, s)] + eps * np.eye(s.sum()), w_new[i, s])
        w_new[i] -= a[i][:, s] @ y
        w_new[i, s] = 0.0
    return w_new


@dataclass
class LayerWitness:
    """One target layer in integers: everything the proof of its step needs.

    File format (:meth:`save`, :meth:`load`): one ``.npz`` for a list of layers,
    ``format`` = ``"edgetrain-witness"``, ``version`` = 1, ``layers`` (the names),
    and per layer ``i``: ``shape{i}``, ``block{i}``, ``scale_bits{i}``, ``w{i}``,
    ``a{i}``, ``keep{i}``, ``w_new{i}`` (the fields below, dtypes as stated)."""
    name: str
    shape: tuple
    block: int
    scale_bits: int
    w: np.ndarray  # (n_blocks, B) int64, the weights before, zero-padded
    a: np.ndarray  # (n_blocks, B, B) int64, inverse Fisher blocks
    keep: np.ndarray  # (n_blocks, B) bool, False = masked
    w_new: np.ndarray  # (n_blocks, B) int64, the weights after

    FORMAT, VERSION = "edgetrain-witness", 1

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @staticmethod
    def save(path, witnesses: Sequence["LayerWitness"]) -> None:
        """Write ``witnesses`` to ``path`` (exactly that path: no ``.npz`` is appended)."""
        arrays = {"format": np.array(LayerWitness.FORMAT), "version": np.array(LayerWitness.VERSION),
                  "layers": np.array([w.name for w in witnesses], dtype=str)}
        for i, wit in enumerate(witnesses):
            arrays.update({f"shape{i}": np.array(wit.shape, np.int64), f"block{i}": np.array(wit.block),
                           f"scale_bits{i}": np.array(wit.scale_bits), f"w{i}": wit.w, f"a{i}": wit.a,
                           f"keep{i}": wit.keep, f"w_new{i}": wit.w_new})
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @staticmethod
    def load(path, what: str = "witness file") -> list["LayerWitness"]:
        """The witnesses :meth:`save` wrote; a ValueError naming ``what`` and the file, and
        what is missing or wrong, when it is not such a file. The step is checked too:
        each layer's ``w_new`` must be what :func:`fixed_point.integer_step` makes of its
        ``w``, ``a`` and ``keep``, so a file changed after :func:`unlearn` wrote it fails
        here, not after the minutes a proof takes."""
        from ..datasets import read_npz
        where = f"{what} {str(path)!r}"
        f = read_npz(path, what)

        def get(key, kind, ndim, layer=None):
            if key not in f:
                of = "" if layer is None else f" (layer {layer})"
                raise ValueError(f"{where} lacks the array {key!r}{of}; expected a file LayerWitness.save "
                                 "(`edgetrain unlearn`) writes")
            if f[key].dtype.kind not in {"int": "iu", "bool": "b", "str": "U"}[kind] or f[key].ndim != ndim:
                raise ValueError(f"{where}: {key!r} is a {f[key].ndim}-d {f[key].dtype} array, expected "
                                 f"{ndim}-d {kind}")
            return f[key]

        if str(get("format", "str", 0)) != LayerWitness.FORMAT:
            raise ValueError(f"{where}: format {str(f['format'])!r}, expected {LayerWitness.FORMAT!r}")
        if int(get("version", "int", 0)) != LayerWitness.VERSION:
            raise ValueError(f"{where}: format version {int(f['version'])}, this build reads {LayerWitness.VERSION}")
        names = get("layers", "str", 1)
        if not len(names):
            raise ValueError(f"{where} holds no layers")
        out = []
        for i, name in enumerate(names):
            shape = tuple(int(d) for d in get(f"shape{i}", "int", 1, i))
            block, scale_bits = int(get(f"block{i}", "int", 0, i)), int(get(f"scale_bits{i}", "int", 0, i))
            if block < 1:
                raise ValueError(f"{where}: block{i} = {block}, expected ≥ 1")
            wit = LayerWitness(str(name), shape, block, scale_bits, get(f"w{i}", "int", 2, i).astype(np.int64),
                               get(f"a{i}", "int", 3, i).astype(np.int64), get(f"keep{i}", "bool", 2, i),
                               get(f"w_new{i}", "int", 2, i).astype(np.int64))
            n_blocks = -(-wit.size // block)
            for field, expected in (("w", (n_blocks, block)), ("a", (n_blocks, block, block)),
                                    ("keep", (n_blocks, block)), ("w_new", (n_blocks, block))):
                if getattr(wit, field).shape != expected:
                    raise ValueError(f"{where}: {field}{i} has shape {getattr(wit, field).shape}; layer {wit.name!r} "
                                     f"of shape {shape} in blocks of {block} needs {expected}")
            wrong = wit._step_error()
            if wrong:
                raise ValueError(f"{where}: layer {wit.name!r}: {wrong}; it is not the file `edgetrain unlearn` "
                                 "wrote, or it was changed since")
            out.append(wit)
        return out

    def _step_error(self) -> str | None:
        """What keeps ``w_new`` from being the integer step of ``w``, ``a`` and ``keep``
        within the widths the circuit checks, or None."""
        for name, v, bits in (("w", self.w, fx.VALUE_BITS), ("a", self.a, fx.FISHER_VALUE_BITS)):
            if v.size and (v.min() < -2 ** (bits - 1) or v.max() >= 2 ** (bits - 1)):
                return f"{name} holds values outside signed {bits} bit"
        if not np.array_equal(self.a, self.a.transpose(0, 2, 1)):
            return "its inverse-Fisher blocks a are not symmetric"
        try:
            expected = fx.integer_step(self.w, self.a, self.keep, self.scale_bits)["w_new"]
        except ValueError as e:
            return f"its step does not fit the circuit ({e})"
        bad = np.flatnonzero((expected != self.w_new).any(axis=1))
        if bad.size:
            return f"w_new is not the step of w, a and keep in {bad.size} block(s) (first: block {int(bad[0])})"
        return None


# int8 weights are O(2^7) instead of O(2^16·|w|): y gets its precision from the scale instead
INT8_SCALE_BITS = 24
# widened int16 weights (int8.widen) are O(2^7+WIDEN_BITS): the fp32 path's scale
WIDE_SCALE_BITS = 16


def unlearn(model: Model, mask: dict[str, np.ndarray], data: tuple, block: int = 64, damp: float = 1.0,
            scale_bits: int | None = None, fisher_bits: int = 14, widen_bits: int = int8.WIDEN_BITS,
            progress: bool = False) -> tuple[Model, list[LayerWitness]]:
    """The device's step: per masked layer, the inverse Fisher blocks of its own
    ``data = (x, y)`` (per-sample gradients, Sherman–Morrison), the group-OBS step
    block by block in fixed point (:mod:`edgetrain.prover.fixed_point`), masked
    weights exactly 0. ``model`` is not changed; returns a new model and one
    :class:`LayerWitness` per layer.

    ``damp`` is relative, as in OBC / SparseGPT: each layer's Fisher is damped by
    ``λ = damp·mean(diag F)``, ``F = (1/m)·Σ g gᵀ`` over ``data``. Larger values
    compensate less: at 1 (the default) the compensation keeps retain accuracy
    without undoing the forgetting on lenet5 / MNIST (bench/unlearn.py); at
    1e-3 it restored a third of a forgotten class.

    fp32 layers: ``w_int = rint(w·2^scale_bits)`` (default scale_bits 16); the new
    model holds ``w'_int / 2^scale_bits`` (blocks without masked weights are only
    rounded to that grid).

    int8 layers (QGemm / QLinearMatMul of an onnxruntime int8 model): integers from
    the input quantisation to the step — gradients, inverse Fisher and ``A`` as
    :mod:`edgetrain.prover.int8` describes (its docstring holds the rounding rules).
    The target layers are first widened (``int8.widen``, ``widen_bits`` = 6): ``w_int``
    is the int16 weights ``q·2^6`` at scale ``s/2^6`` (the same model, bit for bit),
    ``scale_bits`` defaults to ``WIDE_SCALE_BITS`` (16), and the new model holds those
    layers as int16 (written as int16 QDQ, which onnxruntime runs). With
    ``widen_bits=0`` the step runs on the int8 weights themselves (``scale_bits``
    default ``INT8_SCALE_BITS``, the new layers int8). ``damp`` damps the Fisher of the
    dequantised weights, as for fp32. A compensated weight outside its integer type
    raises ValueError naming the layer and index (it is not clipped: the proof states
    ``w' = w + δ`` exactly).

    ``progress``: a bar on stderr over the samples of the Fisher passes (:mod:`edgetrain.progress`).
    """
    if not isinstance(block, int) or not 1 <= block <= 64:
        raise ValueError(f"block={block!r} must be an int in [1, 64]")
    if not (isinstance(damp, Real) and math.isfinite(damp) and damp > 0):
        raise ValueError(f"damp={damp!r} must be a finite real > 0 (it keeps the Fisher invertible)")
    if not isinstance(mask, dict) or not mask:
        raise ValueError("mask must be a non-empty {weight name: bool array} dict (see make_mask)")
    names = target_layers(model, list(mask))
    for n in names:
        if np.shape(mask[n]) != model.params[n].shape:
            raise ValueError(f"mask[{n!r}] has shape {np.shape(mask[n])}, expected {model.params[n].shape}")
    x, y = data
    _check_data(model, x, y)
    quantized = is_int8(model, names)
    passes = len(names) if quantized else 2  # int8: one pass per layer; fp32: two over all layers
    with _progress.bar(progress, total=passes * len(x), desc="unlearn: Fisher", unit="sample") as bar:
        if quantized:
            if not 1 <= fisher_bits <= fx.FISHER_VALUE_BITS - 2:  # as fisher_to_fixed checks
                raise ValueError(f"fisher_bits={fisher_bits!r} must be in [1, {fx.FISHER_VALUE_BITS - 2}]")
            if widen_bits:
                new = int8.widen(Model(model.to_proto(), float_gemm=False, source=model.source), names, widen_bits)
            else:
                new = Model(model.to_proto(), float_gemm=False, source=model.source)  # integer GEMMs: no float array
            targets = int8.layers(new, names)  # constants from the float scales, before any data (R3)
            a_int = int8.inverse_fisher_fixed(new, targets, new.quantize_input(x), y, block, damp, fisher_bits,
                                              tick=bar.update)
            w_ints = {n: new.params[n].astype(np.int64) for n in names}
            scale_bits = (INT8_SCALE_BITS if new.params[names[0]].dtype == np.int8 else WIDE_SCALE_BITS) \
                if scale_bits is None else scale_bits
        else:
            scale_bits = 16 if scale_bits is None else scale_bits
            # Two streamed passes (no samples × weights array): the damping needs the
            # Fisher's mean diagonal before the first rank-1 update.
            sum_sq = dict.fromkeys(names, 0.0)
            for slab in per_sample_gradients(model, x, y, names):
                for n in names:
                    sum_sq[n] += float(np.einsum("ij,ij->", slab[n], slab[n]))
                bar.update(len(slab[names[0]]))
            lam = {n: damp * sum_sq[n] / (len(x) * model.params[n].size) for n in names}
            for n in names:
                if not lam[n] > 0:
                    raise ValueError(f"layer {n!r}: every per-sample gradient is zero on these samples; no Fisher "
                                     "to build")
            fisher = {n: initial_inverse(model.params[n].size, block, lam[n]) for n in names}
            for slab in per_sample_gradients(model, x, y, names):
                for n in names:
                    fisher_update(fisher[n], slab[n], len(x))
                bar.update(len(slab[names[0]]))
            a_int = {n: fx.fisher_to_fixed(fisher.pop(n), fisher_bits) for n in names}
            w_ints = {n: fx.to_fixed(model.params[n], scale_bits) for n in names}
            new = Model(model.to_proto(), source=model.source)
    witnesses = []
    for n in names:
        shape, size = model.params[n].shape, model.params[n].size
        nb = n_blocks(size, block)
        w_int = np.zeros(nb * block, dtype=np.int64)
        w_int[:size] = w_ints[n].reshape(-1)
        keep = np.ones(nb * block, dtype=bool)
        keep[:size] = ~np.asarray(mask[n], dtype=bool).reshape(-1)
        w_int, keep = w_int.reshape(nb, block), keep.reshape(nb, block)
        step = fx.integer_step(w_int, a_int[n], keep, scale_bits)
        flat = step["w_new"].reshape(-1)[:size]
        if quantized:
            _check_int(n, flat, shape, new.params[n].dtype)
            new.params[n][...] = flat.reshape(shape)
        else:
            new.params[n][...] = (flat / 2.0 ** scale_bits).reshape(shape)
        witnesses.append(LayerWitness(n, shape, block, scale_bits, w_int, a_int.pop(n), keep, step["w_new"]))
    if quantized:
        new.float_gemm = model.float_gemm
    return new, witnesses


def _check_int(name, w_new, shape, dtype):
    info = np.iinfo(dtype)
    bad = np.flatnonzero((w_new < info.min) | (w_new > info.max))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"layer {name!r}: the compensated weight at index {np.unravel_index(i, shape)} (flat {i}) "
                         f"is {int(w_new[i])}, outside {info.dtype} [{info.min}, {info.max}] ({bad.size} such "
                         "weights); the proof fixes w' = w + δ, so it is not clipped — raise damp or mask fewer "
                         "weights of this layer")
