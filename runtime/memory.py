"""Predict the peak memory of inference and of a training step from the graph.

The prediction walks the node schedule the runtime uses (a tensor is freed
after its last reader) and adds, at each node, the temporaries its kernel
makes (``Kernel.workspace``, ``Kernel.grad_workspace``: each kernel states its
own, next to the code it mirrors); the training steps' own temporaries are
stated here, next to the step they mirror.
Tensor shapes come from running the graph once on a single all-zero sample;
a batch of B scales every activation's first dimension. Parameters are not
counted (they exist before and after a step); what a step allocates is.
The figure is comparable with tracemalloc's peak (``Trainer.memory_report``).
"""
from __future__ import annotations

import numpy as np

from . import compressed
from .plan import METHODS, plan
from .zo import INT_CHUNK


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def forward_profile(model, batch_size: int, keep: frozenset = frozenset()):
    """(peak bytes, bytes still live at the end) of running the graph at ``batch_size``,
    keeping the tensors in ``keep``, through the steps ``Model.execute`` takes (its fused
    chains, ``kernels.conv.chains``, in one step each unless a kept tensor is inside one)."""
    shapes, dtypes = _shapes(model, batch_size)
    retained = set(model.output_names) | set(keep)
    live, peak = 0, 0
    alive = {}
    for kernel, _, _, out, drop in model.steps_for(set(keep)):
        out_bytes = 0 if kernel.returns_view else _nbytes(shapes[out], dtypes[out])  # a view keeps its source
        peak = max(peak, live + out_bytes + kernel.workspace(shapes, dtypes, out_bytes))
        alive[out] = out_bytes
        live += out_bytes
        for t in drop:  # the step is the last reader of these
            if t in alive and t not in retained:
                live -= alive.pop(t)
    return peak, live


def _shapes(model, batch_size):
    if model.probe is None:
        raise ValueError(f"{model.source}: the input has dimensions known only at run time; "
                         "the memory prediction needs them fixed")
    one_shapes = {k: s for k, (s, _) in model.probe.items()}
    dtypes = {k: d for k, (_, d) in model.probe.items()}
    shapes = {k: ((batch_size,) + s[1:] if len(s) else s) for k, s in one_shapes.items()}
    shapes.update({k: v.shape for k, v in model.params.items()})
    dtypes = {**dtypes, **{k: v.dtype for k, v in model.params.items()}}
    return shapes, dtypes


def estimate_memory(model, method: str = "inference", cut: int = 1, batch_size: int = 32,
                    zo_layers: int | None = None) -> dict:
    """Predicted peak bytes of inference (``method="inference"``) or of one training
    step with the given method and cut, at ``batch_size``, with the model's GEMM route
    (``model.float_gemm``); ``zo_layers``: the head's layers the ZO trains (the
    Trainer's default when None). Returns ``{"peak_bytes", "inference_peak_bytes", ...}``."""
    if method not in METHODS + ("inference",):
        raise ValueError(f"method={method!r} must be 'inference' or one of {METHODS}")
    int8 = method == "elasticzo-int8"
    inference, _ = forward_profile(model, batch_size)
    if method == "inference":
        return {"peak_bytes": inference, "inference_peak_bytes": inference, "method": method,
                "batch_size": batch_size}
    if zo_layers is None:
        from .trainer import DEFAULTS
        zo_layers = DEFAULTS[method].get("zo_layers", 0)
    p = plan(model, method, cut, zo_layers=zo_layers)
    zo, bp, tail_start = p.zo_layers, p.bp_layers, p.tail_start
    params = model.params
    peak = inference
    if bp:
        keep = frozenset(i for n in model.nodes[tail_start:] for i in n.inputs if i and i not in params)
        fwd, live = forward_profile(model, batch_size, keep=keep)
        xq = model.nodes[0].outputs[0]
        if int8 and xq not in keep:  # int8_step holds the quantised input, where its ZO passes start
            shapes, dtypes = _shapes(model, batch_size)
            live += _nbytes(shapes[xq], dtypes[xq])
        peak = max(peak, fwd, live + _backward_bytes(model, bp, tail_start, batch_size, int8))
    if zo:
        # the BP tail's updated weights wait, computed, while the ZO passes run
        held = sum(params[n].size * (1 if int8 else 4) for l in bp for n in ((l.weight,) if int8 else (l.weight, l.bias))
                   if n)
        peak = max(peak, inference + held)
        sizes = [params[n].size for l in zo for n in ((l.weight,) if int8 else (l.weight, l.bias)) if n]
        if int8:  # numpy: one slice's int64 estimate, signs, products, rounding noise and result;
            # the native kernels draw them in place (edgetrain_kernels.zo_sign_update)
            extra = 0 if model.backend.kernels is not None else 8 * 6 * min(max(sizes), INT_CHUNK)
        else:  # the head's new values, computed before any is applied, and a direction and its scaled copy
            extra = 4 * sum(sizes) + 8 * max(sizes)
        peak = max(peak, held + extra)
    if int8:  # a compressed file's low-bit weights, copied before the step for its finer steps
        peak += sum(params[w].size for w, form in model.compressed.items() if isinstance(form, compressed.LowBit))
    return {"peak_bytes": int(peak), "inference_peak_bytes": int(inference), "method": method,
            "cut": p.cut, "batch_size": batch_size}


def _backward_bytes(model, bp, tail_start, batch_size, int8):
    """Peak of the BP tail's gradients and temporaries, beyond the activations it kept."""
    shapes, _ = _shapes(model, batch_size)
    size = lambda name: int(np.prod(shapes[name]))  # noqa: E731
    if int8:  # int8_step / int_autodiff, per tail layer from the last: its int64 input minus the
        # zero-point, the output error twice (as it arrives, and zeroed where the output
        # saturated) and the input error; while int_grad runs, the weighted error and
        # an int64 copy of the weight; then the int32 gradient (int64 when a sum can reach 2^31,
        # which this does not foresee), the new int8 weight and one slab's noise and rounding;
        # the new weights of the layers before are held
        held, peak = 0, 0
        for l in reversed(bp):
            w = model.params[l.weight].size
            n_in, n_out = size(model.nodes[l.index].inputs[0]), size(model.nodes[l.index].outputs[0])
            need_input = l.index > tail_start
            live = 8 * (n_in + 2 * n_out + (n_in if need_input else 0))
            slab = 16 if model.backend.kernels is not None else 32  # int64 step and noise (+ numpy's draw)
            grad = max(8 * (n_out + w) if need_input else 2 * n_out, 5 * w + slab * min(w, INT_CHUNK))
            peak = max(peak, held + live + grad)
            held += w
        return peak
    wanted = {n for l in bp for n in (l.weight, l.bias) if n}
    depends = set(wanted)
    for n in model.nodes[tail_start:]:
        if any(i in depends for i in n.inputs if i):
            depends.update(n.outputs)
    held, peak = 0, 0  # parameter gradients held until the update
    for node, kernel in reversed(list(zip(model.nodes, model.kernels))[tail_start:]):
        if not any(i in depends for i in node.inputs if i):
            continue
        ws = kernel.grad_workspace(shapes, need_input=node.inputs[0] in depends)
        params = sum(4 * model.params[i].size for i in node.inputs if i in wanted)
        peak = max(peak, held + 4 * size(node.outputs[0]) + ws + params)
        held += params
    return max(peak, 2 * held + 4 * max(model.params[n].size for n in wanted))  # the updated copies


def measure_peak(fn):
    """(tracemalloc peak, RSS growth or None) of one call ``fn()``; tracing is started and
    stopped here, and the RSS peak is reset first (Linux /proc/self/clear_refs).

    The tracemalloc peak counts numpy's buffers and Python objects allocated during the
    call, over what was live before it. The RSS growth is how far the process's resident
    set rose above its level before the call, or None where that cannot be measured; a
    warmed-up process may reuse resident heap and show less.
    """
    import tracemalloc
    rss_reset = _reset_peak_rss()
    before = _status_bytes("VmRSS:")
    tracemalloc.start()
    try:
        fn()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    peak = _status_bytes("VmHWM:") if rss_reset else None
    return traced, (None if peak is None or before is None else max(0, peak - before))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
