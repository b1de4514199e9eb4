"""Compressed weights on the device (DESIGN.md §5, "training what was compressed"): what a
decode subgraph tells about the weight it rebuilt, so that training keeps the weight in the
form the file stores it in, and export writes that form again at the same size.

Two forms are known, each recognised from the folded subgraph itself:

* :class:`LowBit` — an int8 weight read from ``b``-bit planes (EvoPress files). Training keeps
  it in ``[−2^(b−1), 2^(b−1) − 1]``; export packs it into planes again.
* :class:`Codebook` — a float weight ``W = layout(C[codes] @ P)`` (LR²VQ files; PQ and
  clustering files have no projection: ``W = layout(C[codes])``). Training changes the
  codebook ``C`` and the projection ``P`` only, and ``W`` follows them: a weight's gradient
  scatters back to the codebook rows its codes point at. Export writes the trained ``C``
  and ``P`` beside the unchanged codes.

Any other decode subgraph is folded and runs, but trains as a plain weight and is exported
as one. The fp32 step calls :func:`constrain` after every change of the weights, the int8
step :func:`finer_steps`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import decode, prng, quant
from .graph_rewrite import Decoder

PROBE_SEED = 20250612  # the random values a LowBit candidate must also round-trip
FINER_STREAM = 4000  # + low-bit weight number: the PRNG stream rounding its finer step
FINER_CHUNK = 1 << 13  # weights per slice of the finer step (the noise is indexed by position)


@dataclass
class LowBit:
    """An int8 weight stored as ``bits``-bit two's-complement planes in source ``planes``."""
    decoder: Decoder
    bits: int
    planes: str

    @property
    def range(self) -> tuple[int, int]:
        return decode.int_range(self.bits)

    def constrain(self, params: dict) -> None:
        np.clip(params[self.decoder.weight], *self.range, out=params[self.decoder.weight])

    def stored(self, params: dict) -> dict[str, np.ndarray]:
        return {**self.decoder.sources, self.planes: decode.pack_planes(params[self.decoder.weight], self.bits)}


@dataclass
class Codebook:
    """``W = layout(C[codes] @ P)``: ``tail`` are the subgraph's nodes from the Gather on (Gather,
    MatMul when there is a projection, Reshape, optionally Transpose), ``index`` the codes the
    Gather reads."""
    decoder: Decoder
    codebook: str
    projection: str | None
    index: np.ndarray
    tail: list

    @property
    def trainable(self) -> list[str]:
        """The tensors training changes: the codebook and the projection (if any)."""
        return [self.codebook] + ([self.projection] if self.projection else [])

    def weight(self, params: dict) -> np.ndarray:
        """The weight from the current codebook and projection, by the file's own ops."""
        env = {**self.decoder.sources, self.tail[0].inputs[1]: self.index, **{t: params[t] for t in self.trainable}}
        for n in self.tail:
            env[n.outputs[0]] = decode.evaluate(n, [env[i] if i else None for i in n.inputs])
        return env[self.decoder.weight]

    def constrain(self, params: dict) -> None:
        params[self.decoder.weight][...] = self.weight(params)

    def source_grads(self, grad_w: np.ndarray, params: dict) -> list[np.ndarray]:
        """The gradients of :attr:`trainable` from ``∂L/∂W``: undo the layout to the ``n × m``
        sub-vector gradient ``G``; then ``∂L/∂P = C[codes]ᵀ·G`` and row ``j`` of ``∂L/∂C``
        sums ``G·Pᵀ`` (``G`` without a projection) over the sub-vectors whose code is ``j``."""
        g = grad_w
        if self.tail[-1].op_type == "Transpose":
            g = g.transpose(np.argsort(self.tail[-1].attrs["perm"]))
        c = params[self.codebook]
        p = params[self.projection] if self.projection else None
        g = g.reshape(-1, c.shape[1] if p is None else p.shape[1])
        codes = self.index.reshape(-1)
        grad_c = np.zeros_like(c)
        np.add.at(grad_c, codes, g if p is None else g @ p.T)
        return [grad_c] if p is None else [grad_c, c[codes].T @ g]

    def stored(self, params: dict) -> dict[str, np.ndarray]:
        return {**self.decoder.sources, **{t: params[t] for t in self.trainable}}


def recognise(decoders: list[Decoder], params: dict) -> dict[str, LowBit | Codebook]:
    """The known forms among ``decoders`` (``params``: the constants at load, folded tensors
    included), keyed by weight name."""
    found = {}
    for d in decoders:
        form = _low_bit(d, params[d.weight]) or _codebook(d, params)
        if form is not None:
            found[d.weight] = form
    return found


def _low_bit(d: Decoder, weight: np.ndarray) -> LowBit | None:
    """A LowBit form when the subgraph ends in a Cast to int8 and reads one uint8 source
    shaped as the planes of the weight, and packing inverts it: on the weight itself and on
    random values of the same range (so export's packing writes what the file would read)."""
    last = d.nodes[-1]
    if last.op_type != "Cast" or last.attrs.get("to") != TensorProto.INT8:
        return None
    groups = -(-weight.size // 8)
    planes = [k for k, v in d.sources.items() if v.dtype == np.uint8 and v.shape[1:] == (groups, 1)]
    if len(planes) != 1 or not 2 <= d.sources[planes[0]].shape[0] <= 8:
        return None
    bits = d.sources[planes[0]].shape[0]
    lo, hi = decode.int_range(bits)
    if weight.min(initial=0) < lo or weight.max(initial=0) > hi:
        return None
    probe = np.random.default_rng(PROBE_SEED).integers(lo, hi + 1, weight.shape).astype(np.int8)
    for values in (weight, probe):
        try:
            if not np.array_equal(d.run(**{planes[0]: decode.pack_planes(values, bits)}), values):
                return None
        except ValueError:
            return None
    return LowBit(d, bits, planes[0])


def _codebook(d: Decoder, params: dict) -> Codebook | None:
    """A Codebook form when the subgraph ends in Gather(C, codes) [→ MatMul(·, P)] → Reshape
    [→ Transpose], each reading the one before, with C (and P) 2-D float32 sources."""
    ops = [n.op_type for n in d.nodes]
    end = len(ops) - (ops[-1:] == ["Transpose"])
    start = end - (3 if ops[end - 3:end] == ["Gather", "MatMul", "Reshape"] else 2)
    tail = d.nodes[start:]
    if start < 0 or [n.op_type for n in tail[:2]] not in (["Gather", "MatMul"], ["Gather", "Reshape"]) or \
            any(b.inputs[0] != a.outputs[0] for a, b in zip(tail, tail[1:])) or tail[0].attrs.get("axis", 0) != 0:
        return None
    sources = [tail[0].inputs[0]] + ([tail[1].inputs[1]] if tail[1].op_type == "MatMul" else [])
    if len(set(sources)) != len(sources) or \
            any(t not in d.sources or d.sources[t].dtype != np.float32 or d.sources[t].ndim != 2 for t in sources):
        return None
    form = Codebook(d, sources[0], sources[1] if len(sources) > 1 else None, params[tail[0].inputs[1]], tail)
    return form if np.array_equal(form.weight(d.sources), params[d.weight]) else None


# -- what training and export ask -------------------------------------------------------------

def trainable_tensors(model, weight: str) -> list[str]:
    """What training changes for a layer whose weight is ``weight``: its codebook and
    projection if it is stored as one, else the weight itself."""
    form = model.compressed.get(weight)
    return form.trainable if isinstance(form, Codebook) else [weight]


def low_bit_values(model) -> dict[str, np.ndarray]:
    """A copy of every low-bit weight, taken before an int8 step changes them (for
    :func:`finer_steps`)."""
    return {w: model.params[w].copy() for w, f in model.compressed.items() if isinstance(f, LowBit)}


def finer_steps(model, before: dict[str, np.ndarray], seed: int) -> None:
    """After an int8 step: each ``b``-bit weight's change since ``before`` shifted right by
    ``8 − b`` bits (stochastic rounding from ``seed``), then clipped into its range. The int8
    steps size their updates in 8-bit units; a ``b``-bit weight's unit is ``2^(8−b)`` times
    coarser, so the same step, in real terms, is that many times fewer of its units (a 3-bit
    file took steps 32 times too large, and personalisation lost accuracy). Stochastic
    rounding keeps the fraction in expectation."""
    for i, (w, old) in enumerate(before.items()):
        form, new, old = model.compressed[w], model.params[w].reshape(-1), old.reshape(-1)
        shift = 8 - form.bits
        for start in range(0, new.size, FINER_CHUNK):  # slices keep the int64 temporaries small
            end = min(start + FINER_CHUNK, new.size)
            change = new[start:end].astype(np.int64) - old[start:end]
            noise = prng.uniform_below_pow2(seed, FINER_STREAM + i, end - start, shift, start)
            step = quant.stochastic_shift_right(change, shift, noise)
            new[start:end] = np.clip(old[start:end] + step, *form.range)


def step_scale(model, tensor: str) -> np.ndarray | float:
    """The factor an fp32 step applies to its update of ``tensor``: for a codebook, per row,
    one over the number of sub-vectors whose code points at it; for a projection, one over
    all of the layer's sub-vectors; 1 otherwise. A tensor shared by many weights gets the sum
    of their gradients; scaled so, it moves by their mean, as each of them would alone, and
    one step size serves shared and plain tensors."""
    for form in model.compressed.values():
        if isinstance(form, Codebook) and tensor in form.trainable:
            codes = form.index.reshape(-1)
            if tensor == form.projection:
                return np.float32(1.0 / codes.size)
            counts = np.bincount(codes, minlength=model.params[tensor].shape[0])
            return (1.0 / np.maximum(counts, 1)).astype(np.float32)[:, None]
    return np.float32(1.0)


def constrain(model) -> None:
    """After the trained tensors changed: codebook weights follow their codebooks and
    projections, low-bit weights are clipped into their range. Nothing for a plain model."""
    for form in model.compressed.values():
        form.constrain(model.params)


def gradient_inputs(model, names) -> set[str]:
    """``names`` with each codebook and projection replaced by the weight it rebuilds: the
    tensors backprop differentiates."""
    by_source = {s: w for w, f in model.compressed.items() if isinstance(f, Codebook) for s in f.trainable}
    return {by_source.get(n, n) for n in names}


def to_sources(model, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``grads`` with each codebook weight's gradient scattered to its codebook and projection
    (gradients of a codebook several weights share add up)."""
    out = {}
    for name, g in grads.items():
        form = model.compressed.get(name)
        if not isinstance(form, Codebook):
            out[name] = g
            continue
        for source, gs in zip(form.trainable, form.source_grads(g, model.params)):
            out[source] = out[source] + gs if source in out else gs
    return out


def stored_graph(model) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], set[str]]:
    """The decode subgraphs of the known forms as the file should store them now (nodes, their
    initializers from the current weights) and the weights they rebuild, which then need no
    initializer of their own. Decode nodes are written unnamed, as the compressors write them."""
    nodes, inits = [], {}
    for form in model.compressed.values():
        nodes += [helper.make_node(n.op_type, n.inputs, n.outputs, domain=n.domain, **n.attrs)
                  for n in form.decoder.nodes]
        for name, value in form.stored(model.params).items():
            inits[name] = numpy_helper.from_array(np.asarray(value), name)
    return nodes, list(inits.values()), set(model.compressed)
