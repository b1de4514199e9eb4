"""The integer reverse walk (edgetrain.int_autodiff) against torch autograd in float64.

The reference is the exact chain rule on the dequantised int8 model, with the integer
forward's own activations and saturation masks (those are what the integer backward
differentiates): built as a torch float64 graph whose value at each layer is the integer
activation and whose gradient flows through the dequantised weights. The integer walk
may differ from it only by its two roundings, each bounded:

* the channel ratios c_n = s_n / max s in Q16 (R3): |c_n·max s − s_n| ≤ max s·2^−17;
* the renormalising shift after each layer (R1): at most half of the new error's LSB.

The test propagates these as elementwise absolute bounds through the absolute values of
the same linear maps and asserts the integer errors lie inside them, sample by sample.
"""
import numpy as np
import pytest

import edgetrain
from edgetrain import int_autodiff
from edgetrain.int_loss import ERR_BITS

torch = pytest.importorskip("torch")


def reference_errors(model, env, err_real, start, stop):
    """torch float64: the error at each weighted layer's output (after its saturation mask),
    by autograd through the dequantised weights, values pinned to the integer activations."""
    h, outputs = None, {}
    for idx in range(start, stop):
        node, kernel = model.nodes[idx], model.kernels[idx]
        x_int = torch.from_numpy(env[node.inputs[0]].astype(np.float64))
        y_int = env[node.outputs[0]]
        if kernel.fully_connected:
            w_nk = kernel.weight_nk(model.params[node.inputs[kernel.weight_input]]).astype(np.float64)
            s = np.broadcast_to(kernel.bq.scale.astype(np.float64).reshape(-1), (w_nk.shape[0],))
            w_real = torch.from_numpy(float(node.attrs.get("alpha", 1.0)) * s[:, None] * w_nk)
            act = (x_int - kernel.aq.zp) * float(kernel.aq.scale)
            value = act @ w_real.T
            if h is None:
                u = value.requires_grad_()
            else:  # the value stays the integer activation's; the gradient flows on through h
                u = value + (h - h.detach()) @ w_real.T
                u.retain_grad()
            outputs[idx] = u
            saturated = torch.from_numpy((y_int == kernel.yq.qmin) | (y_int == kernel.yq.qmax))
            h = torch.where(saturated, torch.zeros_like(u), u)
        elif node.op_type in ("Flatten", "Reshape"):
            h = h.reshape(y_int.shape)
        elif node.op_type == "Clip":
            h = torch.where(torch.from_numpy(env[node.inputs[0]] == y_int), h, torch.zeros_like(h))
        else:
            raise AssertionError(f"unexpected {node.op_type} in the FC tail")
    (h * torch.from_numpy(err_real)).sum().backward()
    return {idx: u.grad.numpy() for idx, u in outputs.items()}


@pytest.mark.parametrize("per_channel", [True, False])
def test_integer_backward_equals_autograd_within_its_rounding_bound(int8_onnx, mnist, per_channel):
    model = edgetrain.load(int8_onnx("lenet5", per_channel=per_channel), float_gemm=False)
    x, y = mnist.x_train[:64], mnist.y_train[:64]
    first, last = model.integer_span()
    env = model.execute({model.nodes[0].outputs[0]: model.quantize_input(x)}, start=first, stop=last)
    err0 = model.int_loss()(env[model.nodes[last].inputs[0]], y)[1]
    fc = [i for i, k in enumerate(model.kernels) if k.fully_connected]
    start = fc[0]
    signals = {s.index: s for s in int_autodiff.backward(model, env, err0, start=start, stop=last,
                                                          scale=2.0 ** -ERR_BITS, err_bits=15)}
    assert sorted(signals) == fc
    ref = reference_errors(model, env, err0 * 2.0 ** -ERR_BITS, start, last)

    # elementwise bound on |integer error − reference|, in real units, walked down like the errors
    bound = np.zeros(err0.shape)
    for idx in range(last - 1, start - 1, -1):
        node, kernel = model.nodes[idx], model.kernels[idx]
        x_int, y_int = env[node.inputs[0]], env[node.outputs[0]]
        if node.op_type in ("Flatten", "Reshape"):
            bound = bound.reshape(x_int.shape)
            continue
        if node.op_type == "Clip":
            bound = np.where(x_int == y_int, bound, 0)
            continue
        sig = signals[idx]
        real = sig.gamma / kernel.act_scale  # the real value of one unit of this layer's output error
        saturated = (y_int == kernel.yq.qmin) | (y_int == kernel.yq.qmax)
        bound = np.where(saturated, 0, bound)
        got = sig.err * real
        assert np.all(np.abs(got - ref[idx]) <= bound + 1e-12 * np.abs(ref[idx]).max()), node.name
        assert np.abs(got).max() > 0 and bound.max() <= 2e-3 * np.abs(ref[idx]).max(), node.name  # not vacuous
        if idx == start:
            break
        alpha = float(node.attrs.get("alpha", 1.0))
        q = np.abs(kernel.weight_nk(model.params[node.inputs[kernel.weight_input]]).astype(np.float64))
        s = np.broadcast_to(kernel.bq.scale.astype(np.float64).reshape(-1), (q.shape[0],))
        below = max(i for i in signals if i < idx)  # the next weighted layer: its error is this one's input error
        next_lsb = signals[below].gamma / model.kernels[below].act_scale
        bound = (bound @ (alpha * s[:, None] * q)                       # what was off already
                 + alpha * s.max() * 2.0 ** -17 * (np.abs(got) @ q)      # R3: c_n in Q16
                 + next_lsb / 2)                                         # R1: the shift to 15 bits

