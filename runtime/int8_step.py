"""One ElasticZO-INT8 step (DESIGN.md §4), in integers from the input quantisation on.

* The BP tail: a clean integer forward keeps the tail's activations; the integer
  cross-entropy gives ``p − onehot`` in Q7; the integer walk (:mod:`edgetrain.int_autodiff`)
  carries it back with int8-range errors (shifted to 7 bits with stochastic rounding), and
  each tail weight takes the NITI-style update: its int64 gradient shifted to ``lr_bits``
  bits with stochastic rounding, subtracted, clipped to int8.
* The ZO head: ``q`` directions of ±``eps_lsb`` LSBs, each probed one-sided against the clean
  pass's integer loss (:mod:`edgetrain.zo`, the sequence the fp32 step runs); the update
  ``SR(Σ_j ΔL_j·z_j / 2^s)`` with the integer loss differences ``ΔL_j``, normalised so that
  no weight moves by more than ``2^zo_bits`` LSBs (the expected move is below it).

Rounding noise and directions come from the counter PRNG and the step's seed, so a step
is a pure function of (weights, batch, seed).
"""
from __future__ import annotations

import math

import numpy as np

from . import compressed, int_autodiff, prng, quant, zo
from .int_loss import ERR_BITS
from .model import Model
from .plan import Plan

TAIL_ERR_BITS = 7  # the tail's error signals are int8-range
_ERR_STREAM, _UPDATE_STREAM = 3000, 2000  # PRNG streams of the tail's rounding noise (+ node index)


class Int8Step:
    def __init__(self, model: Model, plan: Plan, lr_bits: int, zo_bits: int, eps_lsb: int, q: int):
        self.model, self.plan = model, plan
        self.lr_bits, self.zo_bits, self.eps_lsb, self.q = lr_bits, zo_bits, eps_lsb, q
        self.loss = model.int_loss()
        self.zo_names = [l.weight for l in plan.zo_layers]
        wide = [l.weight for l in plan.zo_layers + plan.bp_layers if model.params[l.weight].dtype.itemsize > 1]
        if wide:  # the int8 updates clip to ±127 in the weight's own units, which would wreck a widened layer
            raise NotImplementedError(
                f"training layers with {model.params[wide[0]].dtype} weights ({', '.join(wide)}: widened by "
                "unlearning, prover/int8.py) is not supported yet (issue #14); train before unlearning, or "
                "leave them out with trainable=")
        # what the BP tail reads: the clean pass keeps these activations only
        self.tail_reads = {i for n in model.nodes[plan.tail_start:plan.last] for i in n.inputs if i}

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int) -> dict:
        return self.core(self.model.quantize_input(x), y, seed)

    def core(self, xq: np.ndarray, y: np.ndarray, seed: int) -> dict:
        """Everything after the input quantisation: integers only."""
        low_bit = compressed.low_bit_values(self.model)
        env = self._forward(xq, keep=self.tail_reads)
        loss, err, correct = self.loss(env[self.model.nodes[self.plan.last].inputs[0]], y)
        n = len(y)
        metrics = {"loss": loss * math.log(2) / (n << 16), "accuracy": correct / n, "loss_q16": loss,
                   "correct": correct}
        updates = self._tail_updates(env, err, seed) if self.plan.bp_layers else {}
        del env, err  # the ZO passes below need none of it
        if self.zo_names:
            directions = [zo.SignPerturbation(self.model.params, self.zo_names, prng.step_seed(seed, j, salt=1),
                                              self.eps_lsb, native=self.model.backend.kernels) for j in range(self.q)]
            directions[0].clip()  # every direction walks the same weights
            diffs = zo.probe(directions, lambda: self._loss(xq, y), loss)
            zo.sign_update(directions, diffs, self.zo_bits, seed)
            metrics["zo_delta_loss_q16"] = diffs
        for name, value in updates.items():
            self.model.params[name][...] = value
        compressed.finer_steps(self.model, low_bit, seed)  # low-bit weights: steps in their own units, in range
        return metrics

    def _forward(self, xq, keep):
        env = {self.model.nodes[0].outputs[0]: xq}
        return self.model.execute(env, start=self.plan.first, stop=self.plan.last, keep=keep)

    def _loss(self, xq, y):
        env = self._forward(xq, keep=False)
        return self.loss(env[self.model.nodes[self.plan.last].inputs[0]], y)[0]

    def _tail_updates(self, env, err, seed):
        """The new int8 weights of the tail's trained layers (not applied yet); a layer the
        walk passes but ``trainable`` left out keeps its weights."""
        trained = {l.weight for l in self.plan.bp_layers}

        def noise(index, k, shape):
            return prng.uniform_below_pow2(seed, _ERR_STREAM + index, int(np.prod(shape)), k).reshape(shape)
        updates = {}
        signals = int_autodiff.backward(self.model, env, err, start=self.plan.tail_start, stop=self.plan.last,
                                        scale=2.0 ** -ERR_BITS, err_bits=TAIL_ERR_BITS, noise=noise)
        for sig in signals:
            kernel, node = self.model.kernels[sig.index], self.model.nodes[sig.index]
            name = node.inputs[kernel.weight_input]
            if name not in trained:
                continue
            new = _tail_update(kernel.weight_nk(self.model.params[name]), sig.weight_gradient(), self.lr_bits,
                               seed, _UPDATE_STREAM + sig.index, self.model.backend.kernels)
            updates[name] = kernel.weight_nk(new)  # the same transpose takes (N, K) back to storage
        return updates


def _tail_update(w_nk: np.ndarray, grad: np.ndarray, bits: int, seed: int, stream: int,
                 native=None) -> np.ndarray:
    """``clip(w − SR(G / 2^shift))`` with the shift that leaves ``bits`` bits of the
    gradient ``G`` (N, K) — the NITI update, normalised per tensor — a slab of rows at a
    time (the rounding noise is indexed by position, so slabs do not change it), in place
    in one int64 slab beside the noise (drawn by the native kernels when given: the same
    integers, without numpy's temporaries)."""
    new = np.empty(w_nk.shape, dtype=np.int8)
    shift = max(0, quant.bit_length(grad) - bits)
    draw = prng.uniform_below_pow2 if native is None else native.uniform_below_pow2
    k = w_nk.shape[1]
    rows = max(1, zo.INT_CHUNK // k)
    for r in range(0, w_nk.shape[0], rows):
        step = grad[r:r + rows].astype(np.int64)  # SR(G / 2^shift) = (G + noise) >> shift
        if shift:
            step += draw(seed, stream, step.size, shift, r * k).reshape(step.shape)
            step >>= shift
        new[r:r + rows] = np.clip(np.subtract(w_nk[r:r + rows], step, out=step), -127, 127, out=step)
    return new
