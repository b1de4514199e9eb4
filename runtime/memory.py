"""Predict the peak memory of inference and of a training step from the graph.

The prediction walks the node schedule the runtime uses (a tensor is freed
after its last reader) and adds, at each node, the temporaries its kernel
makes: those formulas mirror the kernels (blocked im2col, requantisation
slabs, the integer GEMM's working copies) and must change when they do.
Tensor shapes come from running the graph once on a single all-zero sample;
a batch of B scales every activation's first dimension. Parameters are not
counted (they exist before and after a step); what a step allocates is.
The figure is comparable with tracemalloc's peak (``Trainer.memory_report``).
"""
from __future__ import annotations

import numpy as np

from .kernels.conv import COLS_BLOCK_BYTES
from .kernels._window import window_geometry
from .quant import FLOAT32_EXACT_K, REQUANT_SLAB
from .trainer import INT_CHUNK, METHODS, plan



def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _requant_bytes(n_out: int) -> int:
    """quant.requantize: the 8-bit result plus one slab's int64 product, its sign mask and
    the ufunc's int64 cast buffer for that mask."""
    return n_out + 17 * min(n_out, REQUANT_SLAB)


def _conv_workspace(node, shapes, dtypes, exact_float) -> int:
    x_shape, w_shape = shapes[node.inputs[0]], shapes[node.inputs[1] if node.op_type == "Conv" else node.inputs[3]]
    m, cg, kh, kw = w_shape
    group = node.attrs.get("group", 1)
    _, _, pads, out_hw = window_geometry((kh, kw), node.attrs, x_shape[2:], node.name)
    integer = node.op_type == "QLinearConv"
    item = 4
    per_image = kh * kw * cg * out_hw[0] * out_hw[1] * item
    block = min(x_shape[0], max(1, COLS_BLOCK_BYTES // per_image))
    padded_all = x_shape[0] * x_shape[1] * (x_shape[2] + pads[0] + pads[2]) * (x_shape[3] + pads[1] + pads[3])
    padded_all = padded_all if any(pads) else 0           # the input padded once, before the blocks
    in_block = block * cg * (x_shape[2] + pads[0] + pads[2]) * (x_shape[3] + pads[1] + pads[3])
    cols = per_image * block
    out_block = (m // group) * block * out_hw[0] * out_hw[1]
    if integer:
        shifted = 2 * int(np.prod(x_shape)) + 2 * padded_all  # x − zx as int16 (and padded), held throughout
        weights = (2 + 2 + 4) * int(np.prod(w_shape))     # int16 copy, reordered, working type
        im2col = 2 * in_block + cols
        # the GEMM's float32 result and its int32 copy, then the int32 block being requantised
        gemm = cols + max(4 * out_block * (2 if exact_float else 1), 4 * out_block + _requant_bytes(out_block))
        return shifted + weights + max(im2col, gemm)
    weights = 4 * int(np.prod(w_shape))
    im2col = 4 * in_block + cols
    gemm = cols + 4 * out_block * 2                       # the product and its bias-added copy
    return 4 * padded_all + weights + max(im2col, gemm)


def _matmul_workspace(node, shapes, exact_float) -> int:
    a = shapes[node.inputs[0]]
    b = shapes[node.inputs[1] if node.op_type in ("Gemm", "MatMul") else node.inputs[3]]
    rows, k = int(np.prod(a[:-1])), a[-1]
    n = b[0] if node.attrs.get("transB", 0) else b[-1]
    if node.op_type in ("Gemm", "MatMul"):
        return 4 * rows * n * 2  # product, then the bias/scale pass
    chunks = (k + FLOAT32_EXACT_K - 1) // FLOAT32_EXACT_K
    operands = 4 * rows * k + 4 * k * n                   # shifted copies, freed before requantising
    product = 4 * rows * n * (2 if exact_float else 1) * (2 if chunks > 1 else 1)
    return max(operands + product, 4 * rows * n + _requant_bytes(rows * n))


def _node_workspace(node, shapes, dtypes, out_bytes, exact_float) -> int:
    """Temporaries of one kernel call beyond its output."""
    op = node.op_type
    if op in ("Conv", "QLinearConv"):
        return _conv_workspace(node, shapes, dtypes, exact_float)
    if op in ("Gemm", "MatMul", "QGemm", "QLinearMatMul"):
        return _matmul_workspace(node, shapes, exact_float)
    x = shapes[node.inputs[0]]
    n_in = int(np.prod(x))
    if op == "QuantizeLinear":
        return 4 * n_in
    if op == "DequantizeLinear":
        return 12 * n_in
    if op in ("MaxPool", "AveragePool"):
        kernel = node.attrs["kernel_shape"]
        _, _, pads, out_hw = window_geometry(kernel, node.attrs, x[2:], node.name)
        padded = x[0] * x[1] * (x[2] + pads[0] + pads[2]) * (x[3] + pads[1] + pads[3])
        return padded * np.dtype(dtypes[node.inputs[0]]).itemsize if any(pads) else 0
    if op in ("Relu", "Clip"):
        return 0
    if op in ("QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax"):
        return 8 * 3 * n_in
    if op in ("Flatten", "Reshape"):
        return -out_bytes  # a view: nothing new
    return out_bytes  # element-wise float ops: about one temporary the size of the output


def forward_profile(model, batch_size: int, exact_float: bool, start: int = 0, stop: int | None = None,
                    keep: frozenset = frozenset()):
    """(peak bytes, bytes still live at the end) of running nodes ``start:stop`` at ``batch_size``."""
    shapes, dtypes = _shapes(model, batch_size)
    nodes = model.nodes[start:stop]
    last = {}
    for i, n in enumerate(nodes):
        for t in n.inputs:
            if t:
                last[t] = i
    retained = set(model.output_names) | set(keep)
    live, peak = 0, 0
    alive = {}
    for i, n in enumerate(nodes):
        out = n.outputs[0]
        out_bytes = _nbytes(shapes[out], dtypes[out])
        peak = max(peak, live + out_bytes + _node_workspace(n, shapes, dtypes, out_bytes, exact_float))
        if n.op_type not in ("Flatten", "Reshape"):
            alive[out] = out_bytes
            live += out_bytes
        else:  # a view keeps its source alive instead
            alive[out] = 0
        for t in n.inputs:
            if t in alive and last.get(t) == i and t not in retained:
                live -= alive.pop(t)
    return peak, live


def _shapes(model, batch_size):
    cache = model.__dict__.setdefault("_shape_cache", {})
    if "one" not in cache:
        name, shape, dtype = model.inputs[0]
        probe = np.zeros((1,) + tuple(1 if d is None else d for d in shape[1:]), dtype=dtype)
        env = model.run_all(probe)
        cache["one"] = ({k: v.shape for k, v in env.items()}, {k: v.dtype for k, v in env.items()})
    one_shapes, dtypes = cache["one"]
    shapes = {k: ((batch_size,) + s[1:] if len(s) else s) for k, s in one_shapes.items()}
    shapes.update({k: v.shape for k, v in model.params.items()})
    dtypes = {**dtypes, **{k: v.dtype for k, v in model.params.items()}}
    return shapes, dtypes


def estimate_memory(model, method: str = "inference", cut: int = 1, batch_size: int = 32,
                    float_gemm: bool = False) -> dict:
    """Predicted peak bytes of inference (``method="inference"``) or of one training
    step with the given method and cut, at ``batch_size``. Returns
    ``{"peak_bytes", "inference_peak_bytes", ...}``."""
    if method not in METHODS + ("inference",):
        raise ValueError(f"method={method!r} must be 'inference' or one of {METHODS}")
    int8 = method == "elasticzo-int8"
    exact = float_gemm if int8 else True
    inference, _ = forward_profile(model, batch_size, exact)
    if method == "inference":
        return {"peak_bytes": inference, "inference_peak_bytes": inference, "method": method,
                "batch_size": batch_size}
    p = plan(model, method, cut)
    zo, bp, tail_start = p.zo_layers, p.bp_layers, p.tail_start
    params = model.params
    peak = inference
    if bp:
        keep = frozenset(i for n in model.nodes[tail_start:] for i in n.inputs if i and i not in params)
        fwd, live = forward_profile(model, batch_size, exact, keep=keep)
        peak = max(peak, fwd, live + _backward_bytes(model, bp, tail_start, batch_size, int8))
    if zo:
        # the BP tail's updated weights wait, computed, while the ZO passes run
        held = sum(params[n].size * (1 if int8 else 4) for l in bp for n in ((l.weight,) if int8 else (l.weight, l.bias))
                   if n)
        peak = max(peak, inference + held)
        sizes = [params[n].size for l in zo for n in ((l.weight,) if int8 else (l.weight, l.bias)) if n]
        if int8:  # one slice's int64 direction, noise words, products and rounding
            extra = 8 * 6 * min(max(sizes), INT_CHUNK)
        else:  # the updates held until applied, and a direction and its scaled copy
            extra = 4 * sum(sizes) + 8 * max(sizes)
        peak = max(peak, extra)
    return {"peak_bytes": int(peak), "inference_peak_bytes": int(inference), "method": method,
            "cut": p.cut, "batch_size": batch_size}


def _backward_bytes(model, bp, tail_start, batch_size, int8):
    """Peak of the BP tail's gradients and temporaries, beyond the activations it kept."""
    shapes, _ = _shapes(model, batch_size)
    size = lambda name: int(np.prod(shapes[name]))  # noqa: E731
    if int8:  # per QGemm: int32 activations and gradient, the int8 result, one slab's int64
        # noise words and rounding, and the int64 error signals around it
        return max(4 * size(model.nodes[l.index].inputs[0]) + 5 * model.params[l.weight].size
                   + 8 * 4 * min(model.params[l.weight].size, INT_CHUNK)
                   + 24 * size(model.nodes[l.index].outputs[0]) for l in bp)
    wanted = {n for l in bp for n in (l.weight, l.bias) if n}
    depends = set(wanted)
    for n in model.nodes[tail_start:]:
        if any(i in depends for i in n.inputs if i):
            depends.update(n.outputs)
    held, peak = 0, 0  # parameter gradients held until the update
    for node in reversed(model.nodes[tail_start:]):
        if not any(i in depends for i in node.inputs if i):
            continue
        out = 4 * size(node.outputs[0])
        x = 4 * size(node.inputs[0])
        needs_dx = node.inputs[0] in depends
        op = node.op_type
        if op == "Conv":
            w = model.params[node.inputs[1]].shape
            cols = 4 * w[1] * w[2] * w[3] * size(node.outputs[0]) // w[0]
            ws = out + cols + 2 * x + (cols + 3 * x if needs_dx else 0)
        elif op in ("Gemm", "MatMul"):
            ws = out + (x if needs_dx else 0)
        elif op in ("MaxPool", "AveragePool"):
            ws = 2 * out + 2 * x
        elif op in ("Flatten", "Reshape"):
            ws = 0
        else:
            ws = out + x
        params = sum(4 * model.params[i].size for i in node.inputs if i in wanted)
        peak = max(peak, held + out + ws + params)
        held += params
    return max(peak, 2 * held + 4 * max(model.params[n].size for n in wanted))  # the updated copies
