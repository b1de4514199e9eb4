"""The int8 path of ZK-APEX unlearning (DESIGN.md §6): per-sample gradients of the
fully connected layers and their blockwise inverse empirical Fisher, in integers.

The model is an int8 model as onnxruntime's static quantiser writes it (QOperator,
or QDQ folded at load): the target layers are QGemm / QLinearMatMul nodes whose
weights ``q`` are symmetric int8 (zero-point 0) with per-channel or per-tensor
scales ``s_n``, so the real weight is ``W[n, k] = s_n·q[n, k]`` (n the output channel).
The OBS step runs on ``q`` itself: ``w_int = q``, and ``A`` is the inverse Fisher in
``q``'s coordinates, ``A_q = S⁻¹·A_W·S⁻¹`` with ``S = diag(s)`` and ``A_W`` the inverse
of ``damp·I + (1/m)·Σ g gᵀ`` over the real gradients ``g = ∂L/∂W``. (δ_q = S⁻¹·δ_W, so
this is the fp32 step on the dequantised model, and ``damp`` means the same there.)

Step by step, on the device, after the graph's input QuantizeLinear (floats end there):

1. Integer forward (the model's own kernels, numpy integer GEMMs), keeping the FC tail.
2. Error at the logits: :class:`edgetrain.int_loss.IntCrossEntropy`'s ``p − onehot``
   per sample, Q7 (the trainer's int8 tail); real scale ``ε = 2⁻⁷``.
3. Backward through the tail: the runtime's integer walk (:mod:`edgetrain.int_autodiff`,
   the one the trainer's int8 tail uses; each kernel's ``int_grad`` states its part):
   where a node's int8 output saturated (this includes a Relu folded into the range),
   or a Clip clipped, the error is 0. A target layer's per-sample gradient row is
   ``G[i, n, k] = E[i, n]·(a[i, k] − z_a)`` (exact int64, ``|G| ≤ 2²³``), real
   ``∂L/∂W = γ·G`` with ``γ = ε·s_a·alpha``. The error for the layer below is
   ``D = (E ⊙ c) @ q`` with ``c_n = s_n / max s`` in Q16 (exact int64), then shifted
   right by one amount common to all samples so that ``|E| ≤ 2^ERR_BITS`` (rule R1).
4. Inverse Fisher per block of ``B`` weights, in W coordinates, at one fixed-point
   scale: ``H = 2^H_BITS·damp·A_W``, i.e. ``H`` starts at ``2^32·I`` and takes one
   Sherman–Morrison update per sample, ``H ← H − (H g)(H g)ᵀ / (Λ + gᵀ H g)`` with
   ``Λ = 2^32·m·damp / γ²`` (an exact integer, rule R4). ``H g`` is exact; it is shifted
   right by ``t`` bits (per block, so that ``|H g| ≤ 2^U_BITS``, rule R1), ``Λ`` by ``2t``
   and ``gᵀ(H g)`` by ``t``, and each entry of the update is ``u_i·u_j / d`` rounded (R2).
   ``H`` stays exactly symmetric (the update of (i, j) and (j, i) is the same integer).
5. The prover's ``A`` (``fixed_point.fisher_to_fixed``'s convention, in integers):
   ``X[i, j] = H[i, j]·r_i·r_j`` with ``r_n = min s / s_n`` in Q30 (``A_q ∝ X``), then per
   block ``A = X·2^fisher_bits / max|X|``, rounded (R1, R2). Equal to
   ``fisher_to_fixed(S⁻¹·H·S⁻¹)`` to ±1; exactly symmetric.

Rounding rules (the only places the int8 path rounds):

* R1 — right shifts: ``x / 2^k`` to nearest, ties away from zero
  (:func:`edgetrain.quant.rounding_shift_right`).
* R2 — divisions: ``n / d`` (``d > 0``) to nearest, ties toward +∞:
  ``⌊(n + ⌊d/2⌋) / d⌋`` (:func:`edgetrain.quant.div_round_half_up`; a tie needs ``d`` even
  and is rare).
* R3 — the scale ratios ``c_n`` (Q16, held by the QGemm / QLinearMatMul kernel) and
  ``r_n`` (Q30) are rounded half away from zero once, from the model's float32 scales
  (Python floats, before any data), as the kernels' requantisation multipliers are at
  load (:func:`edgetrain.quant.fixed_point_ratios`).
* R4 — ``Λ`` is the one number computed from floats after the data is seen (``damp``
  is a real number): ``round(2^32·damp·Σ|G_i|²/size)`` in Python floats (the sum
  itself is an exact Python integer), then shifted by R1 (values ≥ 2^62 are capped:
  they make every update round to 0 either way).

Everything between the input quantisation and the prover's ``A`` is an int8 / int64
numpy array; no float array is created.

The step itself is ``fixed_point.integer_step``, shared with fp32 (``y`` rounded to
nearest, ``δ = ⌊−A·y / 2^s⌋``). On the int8 weights themselves that floor is visible
(every kept weight of a block with a masked weight moves by −½ LSB on average), and
because per-channel int8 puts a ±127 in every channel, compensations of a few LSB
leave int8 unless ``damp`` is large. So by default the target layers are first widened
(:func:`widen`): int16 weights ``q·2^6`` at scale ``s/2^6`` (zero-point 0) and int32 bias
``b·2^6`` — the same real weights, the same outputs bit for bit — and the step runs on
those integers at ``s = 16``: a grid 64 times finer and room up to 4 times the layer's
largest int8 weight. The circuit takes signed 24-bit weights, so its statement is
unchanged and is exactly this integer step; the provider commits to ``q·2^6`` of the
model it sent. The runtime runs int16-weight QGemm / QLinearMatMul on int8
activations (numpy on every backend, bit-identical) and writes such a layer as int16
QDQ (opset 21), which onnxruntime runs. A compensated weight outside int16 (or int8,
``widen_bits=0``) still raises rather than clip (the proof states ``w' = w + δ``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from .. import int_autodiff, quant
from ..int_loss import ERR_BITS as LOSS_ERR_BITS
from ..model import Model

ERR_BITS = 15   # back-propagated error signals: |E| ≤ 2^15
RATIO_BITS = 30    # r_n = min s / s_n in Q30
H_BITS = 32     # the inverse-Fisher state starts at 2^32·I
U_BITS = 30     # H g is shifted to |u| ≤ 2^30 before the outer product (|u_i·u_j| ≤ 2^60)
_CAP = 1 << 62  # Λ / 2^(2t) at or above this makes every update entry round to 0


@dataclass
class Int8Layer:
    """A target FC layer: where it is and the integer constants of its Fisher."""
    name: str          # the int8 weight initializer
    index: int         # its node in model.nodes
    transposed: bool   # weight stored (K, N): QLinearMatMul, QGemm without transB
    ratio_q30: np.ndarray    # (N,) int64, r_n = min s / s_n in Q30 (R3)
    scales: np.ndarray       # (N,) float64 s_n, host-side bookkeeping (tests, make_mask)

    def flat_channel(self, shape) -> np.ndarray:
        """The output channel of every weight, flattened row-major like the weight."""
        n_out = shape[1] if self.transposed else shape[0]
        ch = np.arange(n_out, dtype=np.int64)
        return np.tile(ch, shape[0]) if self.transposed else np.repeat(ch, shape[1])


# the target layers' integer weights: int8, or int16 once :func:`widen` has widened them
WEIGHT_DTYPES = (np.int8, np.int16)


def _int8_fc(model: Model):
    """(layer, kernel) of every integer fully connected layer with an int8 weight initializer."""
    for layer in model.layers():
        kernel = model.kernels[layer.index]
        if kernel.numeric == "int" and kernel.fully_connected and model.params[layer.weight].dtype in WEIGHT_DTYPES:
            yield layer, kernel


def fc_weights(model: Model) -> list[str]:
    """The int8 (or widened int16, :func:`widen`) weight initializers of the model's
    integer fully connected layers (QGemm / QLinearMatMul)."""
    return [layer.weight for layer, _ in _int8_fc(model)]


def layers(model: Model, names: Sequence[str]) -> list[Int8Layer]:
    """The target layers ``names`` (int8 FC weights, see :func:`fc_weights`) with the
    constants of their Fisher, computed once from the float scales (R3) before any data."""
    model.integer_span()  # ModelFormatError (a ValueError) for a graph that is not QuantizeLinear … DequantizeLinear
    found = {layer.weight: (layer, kernel) for layer, kernel in _int8_fc(model)}
    out = []
    for name in names:
        layer, kernel = found[name]
        if np.any(kernel.bq.zero_point != 0):
            raise ValueError(f"layer {name!r}: weight zero-points must be 0 (symmetric int8 weights, "
                             "onnxruntime's WeightSymmetric); got non-zero ones")
        w = model.params[name]
        n_out = kernel.weight_nk(w).shape[0]
        s = np.broadcast_to(kernel.bq.scale.astype(np.float64).reshape(-1), (n_out,))
        out.append(Int8Layer(name, layer.index, kernel.weight_nk(w) is not w,
                             quant.fixed_point_ratios(float(s.min()) / s, RATIO_BITS), s.copy()))
    return out


WIDEN_BITS = 6  # int8 weights become int16 q·2^6 at scale s/2^6: 1/64-LSB steps, 4× the int8 range


def widen(model: Model, names: Sequence[str], bits: int = WIDEN_BITS) -> Model:
    """A copy of ``model`` whose int8 target layers ``names`` hold int16 weights
    ``q·2^bits`` at scale ``s/2^bits`` (zero-point 0) and int32 bias ``b·2^bits``: the
    same real weights and bias, and the same outputs bit for bit (the requantisation
    multiplier ``s_a·s/2^bits/s_y`` has the same Q31 mantissa, its shift ``bits`` less).
    The unlearning step then compensates on a grid 2^bits times finer, with room for
    weights up to ``2^(15−bits)/127`` times the layer's largest (the circuit takes
    signed 24-bit weights; the runtime runs int16 weights on int8 activations).
    int16 layers are left as they are (already widened)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r} must be in [1, 8] (int8 · 2^bits must fit int16)")
    plain = Model(model.to_proto(), float_gemm=model.float_gemm, source=model.source, backend=model.backend)
    plain.compressed = {k: v for k, v in plain.compressed.items() if k not in names}  # stored as int16 from here
    proto = plain.to_proto()
    inits = {t.name: t for t in proto.graph.initializer}
    for name in names:
        if model.params[name].dtype != np.int8:
            continue
        node = next(n for n in proto.graph.node if n.op_type in ("QGemm", "QLinearMatMul") and n.input[3] == name)
        kernel = next(k for n, k in zip(model.nodes, model.kernels) if n.inputs[3:4] == [name])
        if np.any(kernel.bq.zero_point != 0):
            raise ValueError(f"layer {name!r}: weight zero-points must be 0 (symmetric int8 weights)")
        scale = model.params[node.input[4]]
        new = {name: model.params[name].astype(np.int16) << bits,
               f"{name}.wide_scale": (scale / np.float32(2 ** bits)).astype(np.float32),  # exact: a power of two
               f"{name}.wide_zero_point": np.zeros(np.shape(model.params[node.input[5]]), np.int16)}
        node.input[4], node.input[5] = f"{name}.wide_scale", f"{name}.wide_zero_point"
        if node.op_type == "QGemm" and len(node.input) > 6 and node.input[6]:
            b = model.params[node.input[6]].astype(np.int64) << bits
            if np.abs(b).max(initial=0) >= 1 << 31:
                raise ValueError(f"layer {name!r}: the bias ·2^{bits} leaves int32; widen by fewer bits")
            new[f"{name}.wide_bias"] = b.astype(np.int32)
            node.input[6] = f"{name}.wide_bias"
        for key, value in new.items():
            if key in inits:
                proto.graph.initializer.remove(inits[key])
            proto.graph.initializer.append(numpy_helper.from_array(value, key))
    return Model(proto, float_gemm=model.float_gemm, source=model.source, backend=model.backend)


def unlearned_model_error(original: Model, unlearned: Model, names: Sequence[str],
                          bits: int = WIDEN_BITS) -> str | None:
    """The provider's check of what the proof does not state: the proof is about the
    integers of the target layers (``w`` = the widened ``q·2^bits`` of ``original``, ``w'``
    those of ``unlearned``); everything else — the widened layers' scales, zero-points and
    bias, every other parameter, the graph — must be ``widen(original)``'s exactly, or the
    proven integers would run under another meaning. Returns what differs, or None."""
    want = widen(original, names, bits)
    if [(n.op_type, n.inputs, n.outputs) for n in want.nodes] != \
            [(n.op_type, n.inputs, n.outputs) for n in unlearned.nodes]:
        return "the graph differs from the original's (widened)"
    for key, value in want.params.items():
        got = unlearned.params.get(key)
        if got is None or got.dtype != value.dtype or got.shape != value.shape:
            return f"parameter {key!r} is missing or of another type or shape"
        if key not in names and not np.array_equal(got, value):
            return f"parameter {key!r} differs from the original's (widened)"
    return None


@dataclass
class Signals:
    """One target layer's per-sample backward quantities, integers with one real scale."""
    err: np.ndarray   # (m, N) int64, error at the layer's output (0 where it saturated)
    act: np.ndarray   # (m, K) int64, the layer's input minus its zero-point
    gamma: float      # real scale: ∂L/∂W[n, k] of sample i = gamma·err[i, n]·act[i, k]


def error_signals(model: Model, targets: Sequence[Int8Layer], xq: np.ndarray, y: np.ndarray,
                  batch: int = 256) -> dict[str, Signals]:
    """Integer forward of ``xq`` (the quantised input) and the integer backward
    (:func:`edgetrain.int_autodiff.backward`, errors to ``ERR_BITS`` bits by R1) from the
    per-sample loss down to the first target layer, over ``targets = layers(model, names)``;
    returns the target layers' signals. The backward runs on all samples at once, so that
    each layer's error shares one shift (one real scale)."""
    first, last = min(t.index for t in targets), model.integer_span()[1]
    need = {t for n in model.nodes[first:last] for t in (*n.inputs, n.outputs[0]) if t and t not in model.params}
    parts = {t: [] for t in need}
    for lo in range(0, len(xq), batch):
        env = model.execute({model.nodes[0].outputs[0]: xq[lo:lo + batch]}, start=1, stop=last, keep=need)
        for t in need:
            parts[t].append(env[t])
    env = {t: np.concatenate(v) for t, v in parts.items()}
    err = model.int_loss()(env[model.nodes[last].inputs[0]], y)[1]  # p − onehot, Q7, int64
    wanted = {t.index: t.name for t in targets}
    try:
        return {wanted[s.index]: Signals(s.err, s.act, s.gamma)
                for s in int_autodiff.backward(model, env, err, start=first, stop=last, scale=2.0 ** -LOSS_ERR_BITS,
                                               err_bits=ERR_BITS) if s.index in wanted}
    except ValueError as e:
        raise ValueError(f"{e}: it lies between the target layers and the output — choose later layers") from None


def gradient_rows(sig: Signals, layer: Int8Layer, lo: int, hi: int) -> np.ndarray:
    """Per-sample gradient rows of samples ``lo:hi``, (n, size) int64 flattened like the
    weight: ``err[i, n]·act[i, k]``, exact (|·| < 2^(ERR_BITS + 8))."""
    e, a = sig.err[lo:hi], sig.act[lo:hi]
    g = a[:, :, None] * e[:, None, :] if layer.transposed else e[:, :, None] * a[:, None, :]
    return g.reshape(len(g), -1)


def per_sample_gradients(model: Model, x: np.ndarray, y: np.ndarray, names: Sequence[str],
                         batch: int = 128) -> Iterator[dict[str, np.ndarray]]:
    """Host-side view of the integer gradients: per slice of ``batch`` samples,
    ``{name: (n, size) float64}`` real ``∂L/∂W`` (``W = s·q`` the dequantised weights)."""
    targets = layers(model, names)
    sig = error_signals(model, targets, model.quantize_input(x), y)
    for lo in range(0, len(x), batch):
        hi = min(len(x), lo + batch)
        yield {t.name: gradient_rows(sig[t.name], t, lo, hi) * sig[t.name].gamma for t in targets}


def dequantized(model: Model, name: str) -> np.ndarray:
    """The real weights ``s_n·q`` of an int8 target layer, float64 (host side)."""
    t = layers(model, [name])[0]
    q = model.params[name].astype(np.float64)
    return q * (t.scales[None, :] if t.transposed else t.scales[:, None])


@dataclass
class IntegerFisher:
    """One layer's blockwise inverse Fisher in integers: ``A_W = h / (2^H_BITS·lam)``, the
    inverse of ``lam·I + (1/m)·Σ g gᵀ`` over the real gradients ``g = gamma·G``."""
    h: np.ndarray  # (n_blocks, B, B) int64
    gamma: float
    lam: float  # the damping λ = damp·mean(diag F), real units (for reference; h never uses it)


def inverse_fisher(model: Model, targets: Sequence[Int8Layer], xq: np.ndarray, y: np.ndarray, block: int,
                   damp: float, slab: int = 16, tick=None) -> dict[str, IntegerFisher]:
    """Steps 1–4: the integer inverse Fisher blocks of each target layer (``targets =
    layers(model, names)``) over the samples ``(xq, y)`` (``xq`` already quantised), one
    Sherman–Morrison update per sample. ``damp`` is relative to the layer's mean
    empirical-Fisher diagonal: ``λ = damp·(1/(m·size))·Σ_i |g_i|²``, with
    ``|G_i|² = |err_i|²·|act_i|²`` summed exactly in Python integers. ``tick(n)``, if
    given, is called after each slab of n samples of each layer (a progress bar's ``update``)."""
    sig = error_signals(model, targets, xq, y)
    m = len(xq)
    out = {}
    for t in targets:
        size = model.params[t.name].size
        nb = -(-size // block)
        h = np.zeros((nb, block, block), dtype=np.int64)
        h[:, np.arange(block), np.arange(block)] = 1 << H_BITS
        s = sig[t.name]
        sum_sq = sum(int(e) * int(a) for e, a in zip((s.err * s.err).sum(1), (s.act * s.act).sum(1)))
        if sum_sq == 0:
            raise ValueError(f"layer {t.name!r}: every per-sample gradient is zero on these samples (all outputs "
                             "saturated?); no Fisher to build")
        lam = _lambda_table(damp, sum_sq, size, t.name)
        for lo in range(0, m, slab):
            fisher_update(h, gradient_rows(s, t, lo, min(m, lo + slab)), lam)
            if tick:
                tick(min(m, lo + slab) - lo)
        out[t.name] = IntegerFisher(h, s.gamma, damp * s.gamma ** 2 * sum_sq / (m * size))
    return out


def _lambda_table(damp: float, sum_sq: int, size: int, name: str) -> np.ndarray:
    """``round(Λ / 2^(2t))`` for t = 0…40, capped at 2^62 (R4, R1), int64, with
    ``Λ = 2^H_BITS·m·λ/γ² = 2^H_BITS·damp·Σ|G_i|²/size`` (γ and m cancel)."""
    if not damp > 0:
        raise ValueError(f"damp={damp!r} must be positive (it keeps the Fisher invertible)")
    lam = int(round(2.0 ** H_BITS * damp * sum_sq / size))
    if lam < 1:
        raise ValueError(f"layer {name!r}: damp={damp!r} is below the integer Fisher's resolution (Λ < 1); "
                         "raise damp")
    shifted = [(lam + (1 << (2 * t - 1))) >> (2 * t) if t else lam for t in range(41)]  # R1, lam > 0
    return np.array([min(v, _CAP) for v in shifted], dtype=np.int64)


def fisher_update(h: np.ndarray, grads: np.ndarray, lam_table: np.ndarray) -> None:
    """One integer Sherman–Morrison update of every block per row of ``grads`` ((n, size)
    int64, |g| < 2^23), in place on ``h`` ((n_blocks, B, B) int64, |h| ≤ 2^32, B ≤ 64):
    ``h ← h − round(u uᵀ / d)`` with ``u = (h g) >> t``, ``d = Λ >> 2t + (gᵀu) >> t`` (R1, R2)."""
    nb, b, _ = h.shape
    padded = np.zeros((len(grads), nb * b), dtype=np.int64)
    padded[:, :grads.shape[1]] = grads
    for g in padded.reshape(len(grads), nb, b):
        live = np.flatnonzero(g.any(axis=1))  # blocks with a zero gradient do not change
        if live.size == 0:
            continue
        whole = live.size == nb
        hl, gl = (h, g) if whole else (h[live], g[live])
        u = np.einsum("bij,bj->bi", hl, gl)  # exact: 2^32·2^23·64 < 2^63
        t = np.maximum(quant.leading_bit(np.maximum(np.abs(u).max(axis=1), 1)) + 1 - U_BITS, 0)
        u = quant.rounding_shift_right(u, t[:, None])  # R1: |u| ≤ 2^30
        gu = quant.rounding_shift_right(np.einsum("bi,bi->b", gl, u), t)  # ≤ 2^(23+30+6)
        d = np.maximum(lam_table[t] + gu, 1)[:, None, None]  # ≥ 1 (gᵀHg ≥ 0 up to rounding)
        update = u[:, :, None] * u[:, None, :]  # |u_i·u_j| ≤ 2^60
        hl -= quant.div_round_half_up(update, d, out=update)  # R2; symmetric: u_i·u_j = u_j·u_i
        if not whole:
            h[live] = hl


def to_prover_fisher(h: np.ndarray, layer: Int8Layer, shape, fisher_bits: int) -> np.ndarray:
    """Step 5: the prover's ``A`` ((n_blocks, B, B) int64, exactly symmetric) for the
    step on ``q``: ``X = h·r_i·r_j`` (``A_q = S⁻¹A_W S⁻¹ ∝ X``), then per block
    ``X·2^fisher_bits / max|X|`` (R1, R2); ``fisher_to_fixed``'s convention, to ±1."""
    if not 1 <= fisher_bits <= 30:
        raise ValueError(f"fisher_bits={fisher_bits!r} must be in [1, 30]")
    nb, b, _ = h.shape
    r = np.full(nb * b, 1 << RATIO_BITS, dtype=np.int64)  # padding: ratio 1
    ch = layer.flat_channel(shape)
    r[:ch.size] = layer.ratio_q30[ch]
    r = r.reshape(nb, b)
    rr = quant.rounding_shift_right(r[:, :, None] * r[:, None, :], RATIO_BITS)  # Q30, ≤ 2^30
    x = quant.rounding_shift_right(h * rr, RATIO_BITS)  # |h|·rr ≤ 2^62; symmetric as h and rr are
    peak = np.maximum(np.abs(x).max(axis=(1, 2)), 1)
    return quant.div_round_half_up(x << fisher_bits, peak[:, None, None])  # |x| ≤ 2^32: x·2^fb < 2^63


def inverse_fisher_fixed(model: Model, targets: Sequence[Int8Layer], xq: np.ndarray, y: np.ndarray, block: int,
                         damp: float, fisher_bits: int, tick=None) -> dict[str, np.ndarray]:
    """Steps 1–5: ``{name: A}`` in the prover's convention for the step on the int8 weights
    (``targets = layers(model, names)``, ``xq`` the quantised input; ``tick`` as in
    :func:`inverse_fisher`)."""
    fishers = inverse_fisher(model, targets, xq, y, block, damp, tick=tick)
    by_name = {t.name: t for t in targets}
    return {n: to_prover_fisher(f.h, by_name[n], model.params[n].shape, fisher_bits) for n, f in fishers.items()}
