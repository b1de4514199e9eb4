"""Integer reverse mode over an int8 graph: the one walk behind the Trainer's int8 BP
tail and the prover's int8 per-sample gradients.

It starts from an error signal at the integer logits (``Model.int_loss``'s
``p − onehot``) and visits the nodes in reverse, asking each kernel's
``int_grad`` for the exact int64 error of its input. Between kernels the error
is renormalised — shifted right by the fewest bits that fit ``err_bits`` — to
nearest (ties away from zero) or stochastically, and its real scale is carried
along as one Python float, so no float array is made. A weighted layer hands
back its output error and its input minus the zero-point: the real weight
gradient of sample ``i`` is ``gamma·err[i, n]·act[i, k]``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from . import quant
from .kernels import KERNELS, Kernel
from .model import Model


@dataclass
class LayerSignal:
    """One weighted layer's backward quantities over a batch of m samples."""
    index: int          # the node in model.nodes
    err: np.ndarray     # (m, N) int64: the error at the layer's output (0 where it saturated)
    act: np.ndarray     # (m, K) int64: the layer's input minus its zero-point
    gamma: float        # real ∂L/∂W[n, k] of sample i = gamma·err[i, n]·act[i, k]
    native: object = None  # the model's native kernels (edgetrain.backend), or None

    def weight_gradient(self) -> np.ndarray:
        """``Σ_i err[i, n]·act[i, k]``, (N, K), exact: int32 when no sum can reach 2^31
        (half the memory of int64, which it falls back to), made as int32 (the native kernel
        sums a row in int64 and stores it narrowed; numpy's int32 matmul cannot overflow here)."""
        bits = quant.bit_length(self.err) + quant.bit_length(self.act) + max(len(self.err) - 1, 0).bit_length()
        if self.native is not None:
            return self.native.int_matmul(self.err.T, self.act, int32=bits < 31)
        if bits < 31:
            return self.err.T.astype(np.int32) @ self.act.astype(np.int32)
        return self.err.T @ self.act


def differentiable(kernel: Kernel) -> bool:
    """Whether the integer walk can pass through this kernel."""
    return type(kernel).int_grad is not Kernel.int_grad


def backward(model: Model, env: dict[str, np.ndarray], err: np.ndarray, *, start: int, stop: int,
             scale: float, err_bits: int,
             noise: Callable[[int, int, tuple], np.ndarray] | None = None) -> Iterator[LayerSignal]:
    """Walk nodes ``stop − 1`` down to ``start``; yield each weighted layer's signal as it is reached.

    ``env`` holds the forward integers (the inputs and outputs of the visited nodes);
    ``err`` is the error at node ``stop − 1``'s output, in units of the real ``scale``.
    After each node but the last the input's error is shifted to ``err_bits`` bits: to
    nearest, or with ``noise(node index, k, shape)`` giving uniform ``[0, 2^k)`` integers,
    stochastically. Raises ValueError naming a node the walk cannot pass.
    """
    for idx in range(stop - 1, start - 1, -1):
        node, kernel = model.nodes[idx], model.kernels[idx]
        if not differentiable(kernel):
            raise ValueError(f"node {node.name!r} ({node.op_type}) has no integer gradient; the integer backward "
                             f"passes {supported_ops()} only")
        inputs = [(env[i] if i in env else model.params[i]) if i else None for i in node.inputs]
        g = kernel.int_grad(err, inputs, env[node.outputs[0]], need_input=idx > start)
        if g.act is not None:
            yield LayerSignal(idx, g.err_out, g.act, scale * g.act_scale, model.backend.kernels)
        if idx > start:
            rounding = None if noise is None else (lambda k, shape, _i=idx: noise(_i, k, shape))
            err, k = quant.shift_to_bits(g.err_in, err_bits, rounding)
            scale *= g.in_scale * 2.0 ** k


def supported_ops() -> list[str]:
    """The op types the integer walk passes, from the kernel registry."""
    return sorted(op for op, cls in KERNELS.items() if cls.int_grad is not Kernel.int_grad)
