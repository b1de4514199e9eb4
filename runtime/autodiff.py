"""Reverse-mode gradients over a loaded model's fp32 graph, and the loss they start from.

``backward`` walks the nodes in reverse and asks each kernel for its input
gradients (``Kernel.grad``). It reads the forward tensors that
``Model.run_all(x, keep=True)`` returns, but only those of the nodes it visits,
so a caller that backprops through the last nodes only (ElasticZO's tail) needs
to cache just their activations.
"""
from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .model import Model


def backward(model: Model, env: dict[str, np.ndarray], grad_output: np.ndarray, *,
             wrt: Collection[str], start: int = 0) -> dict[str, np.ndarray]:
    """Gradients of a loss w.r.t. the tensors named in ``wrt``.

    ``env`` maps tensor names to the forward values (``model.run_all(x, keep=True)``;
    parameters missing from it are read from ``model.params``); ``grad_output``
    is the loss gradient w.r.t. the model's first output. Nodes ``start`` onwards
    are visited in reverse; earlier nodes are neither visited nor read from
    ``env``. A tensor used by several nodes gets the sum of their gradients.
    Only gradients that lead to a ``wrt`` tensor are computed (never the graph
    input's, unless asked for).

    Returns ``{name: gradient}`` for each ``wrt`` tensor that the first output
    depends on through nodes ``start`` onwards; the other names are absent
    (parameters of earlier nodes, unused initializers, shape tensors).
    """
    if isinstance(wrt, str):
        raise TypeError(f"wrt={wrt!r} must be a collection of tensor names, not one string")
    if not 0 <= start < len(model.nodes):
        raise ValueError(f"start={start!r} must be a node index from 0 to {len(model.nodes) - 1}")
    out = model.output_names[0]
    if np.shape(grad_output) != np.shape(env[out]):
        raise ValueError(f"grad_output has shape {np.shape(grad_output)}, expected the shape of "
                         f"output {out!r}, {np.shape(env[out])}")
    wrt = set(wrt)
    known = set(model.params) | {n for n, _, _ in model.inputs}
    known.update(t for node in model.nodes for t in node.inputs + node.outputs)
    if wrt - known:
        raise ValueError(f"wrt names unknown tensor(s) {sorted(wrt - known)}: expected parameters "
                         "or tensors of the graph")
    nodes = list(zip(model.nodes, model.kernels))[start:]

    depends = set(wrt)  # tensors that depend on a wrt tensor through the visited nodes
    for node, _ in nodes:
        if any(i in depends for i in node.inputs if i):
            depends.update(node.outputs)

    grads = {out: np.asarray(grad_output, dtype=env[out].dtype)}
    for node, kernel in reversed(nodes):
        y_name = node.outputs[0]
        gy = grads.get(y_name) if y_name in wrt else grads.pop(y_name, None)
        needs = [bool(i) and i in depends for i in node.inputs]
        if gy is None or not any(needs):
            continue
        inputs = [(env[i] if i in env else model.params[i]) if i else None for i in node.inputs]
        for name, need, g in zip(node.inputs, needs, kernel.grad(gy, inputs, env[y_name], needs)):
            if need and g is not None:
                # not in place: a kernel may hand back a view of gy, shared by other inputs
                grads[name] = grads[name] + g if name in grads else g
    return {name: grads[name] for name in wrt if name in grads}


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of (N, C) ``logits`` against integer labels ``y`` (N,),
    and its gradient w.r.t. the logits, ``(softmax − onehot) / N``; fp32 throughout.

    Computed through log-sum-exp, so large logits neither overflow nor round the
    loss of a confident wrong answer to infinity.
    """
    logits = np.asarray(logits)
    y = np.asarray(y)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be (N, C) with N >= 1, got shape {logits.shape}")
    if y.shape != (logits.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be ({logits.shape[0]},) integer labels, got shape {y.shape} "
                         f"dtype {y.dtype}")
    bad = (y < 0) | (y >= logits.shape[1])
    if bad.any():
        raise ValueError(f"label {int(y[bad][0])} is out of range: expected 0 to "
                         f"{logits.shape[1] - 1}")
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True).astype(np.float32)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    loss = -log_p[rows, y].mean()
    dlogits = np.exp(log_p)
    dlogits[rows, y] -= 1
    dlogits /= len(y)
    return float(loss), dlogits
