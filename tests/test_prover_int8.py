"""ZK-APEX unlearning on int8 models: the integer gradients against the dequantised
float model, the integer inverse Fisher against numpy's inverse, the prover's A against
fisher_to_fixed, an integer-only device step, and forgetting on an int8 LeNet-5."""
import numpy as np
import onnx
import pytest

import edgetrain
from edgetrain import prover
from edgetrain.prover import fixed_point as fx
from edgetrain.prover import int8
from conftest import IntegerOnly

pytest.importorskip("onnxruntime")

FORGET = 3


@pytest.fixture(scope="module")
def quantized(int8_onnx):
    """``quantized(fmt, per_channel)`` → the pinned int8 LeNet-5 (onnxruntime's quantiser)."""
    return lambda fmt="qoperator", per_channel=True: int8_onnx("lenet5", fmt, per_channel)


def dequantized_model(fp32_path, q8):
    """The fp32 LeNet-5 with every weight and bias replaced by the int8 model's dequantised ones."""
    fp = edgetrain.load(fp32_path)
    for node in q8.nodes:
        if node.op_type in ("QGemm", "QLinearConv"):
            q = q8.params[node.inputs[3]].astype(np.float64)
            s_w = q8.params[node.inputs[4]].astype(np.float64).reshape(-1)
            s_a = float(q8.params[node.inputs[1]])
            fp.params[node.inputs[3].removesuffix("_quantized")] = (
                q * s_w.reshape((-1,) + (1,) * (q.ndim - 1))).astype(np.float32)
            bias = node.inputs[6 if node.op_type == "QGemm" else 8]
            fp.params[bias.removesuffix("_quantized")] = (q8.params[bias] * s_a * s_w).astype(np.float32)
    return fp


def split(mnist, n=600):
    x, y = mnist.x_train[:n], mnist.y_train[:n]
    return (x[y == FORGET], y[y == FORGET]), (x[y != FORGET], y[y != FORGET])


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_target_layers_are_the_int8_weights_of_the_fully_connected_nodes(quantized, fmt):
    path = quantized(fmt)
    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    if fmt == "qoperator":
        want = [n.input[3] for n in graph.node if n.op_type == "QGemm"]
    else:  # the weight DequantizeLinear feeding each Gemm
        want = [producer[n.input[1]].input[0] for n in graph.node if n.op_type == "Gemm"]
    model = edgetrain.load(path)
    names = prover.target_layers(model)
    assert names == want and len(names) == 3
    assert all(model.params[n].dtype == np.int8 for n in names)
    with pytest.raises(ValueError, match="int8 fully connected weights"):
        prover.target_layers(model, ["0.weight_quantized"])  # a conv weight: no integer gradient for it


def test_int8_gradients_match_the_dequantised_float_model(quantized, trained_onnx, mnist):
    """The integer per-sample gradients (int8 activations × int error signals, times their one
    real scale) against fp32 autodiff on the dequantised weights: they differ by the activation
    rounding of the int8 forward and the Q7 loss error. On the pinned model: 2.1–8.8 % by layer (cosine ≥ 0.996)
    (the integer side is exact, the float side differs by rounding from CPU to CPU)."""
    q8 = edgetrain.load(quantized())
    fp = dequantized_model(trained_onnx("lenet5"), q8)
    x, y = mnist.x_train[:200], mnist.y_train[:200]
    names = prover.target_layers(q8)
    got = next(prover.per_sample_gradients(q8, x, y, names, batch=200))
    want = next(prover.per_sample_gradients(fp, x, y, [n.removesuffix("_quantized") for n in names], batch=200))
    for n in names:
        a, b = got[n], want[n.removesuffix("_quantized")]
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.09, n
        assert (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) > 0.995, n


@pytest.mark.parametrize("damp", [1.0, 1e-2])
def test_integer_inverse_fisher_equals_numpys_inverse_of_the_damped_fisher(quantized, mnist, damp):
    """h / (2^32·λ) against float64 ``inv(λ·I + G Gᵀ/m)`` per block, G the real gradient
    rows and λ = damp·mean(G²) (relative damping): relative error (max over the block / max
    of the block) below 1e-6 (measured ~1e-8)."""
    q8 = edgetrain.load(quantized(), float_gemm=False)
    x, y = mnist.x_train[:150], mnist.y_train[:150]
    targets = int8.layers(q8, prover.target_layers(q8)[1:])  # 9 and 11: 158 + 14 blocks, both padded
    xq = q8.quantize_input(x)
    fishers = int8.inverse_fisher(q8, targets, xq, y, 64, damp)
    signals = int8.error_signals(q8, targets, xq, y)
    for t in targets:
        f = fishers[t.name]
        assert f.h.dtype == np.int64 and np.array_equal(f.h, f.h.transpose(0, 2, 1))
        g = int8.gradient_rows(signals[t.name], t, 0, len(x)) * f.gamma
        lam = damp * np.mean(g * g)
        assert f.lam == pytest.approx(lam, rel=1e-12)
        padded = np.zeros((len(x), f.h.shape[0] * 64))
        padded[:, :g.shape[1]] = g
        worst = 0.0
        for b in range(f.h.shape[0]):
            gb = padded[:, b * 64:(b + 1) * 64]
            want = np.linalg.inv(lam * np.eye(64) + gb.T @ gb / len(x))
            worst = max(worst, np.abs(f.h[b] / (2.0 ** 32 * lam) - want).max() / np.abs(want).max())
        assert worst < 1e-6, (t.name, worst)


@pytest.mark.parametrize("per_channel", [True, False])
def test_provers_a_is_fisher_to_fixed_of_the_fisher_in_int8_coordinates(quantized, mnist, per_channel):
    """``A_q = S⁻¹·A_W·S⁻¹`` normalised per block, in integers, equals fisher_to_fixed of the
    float rescaling to ±1 and is exactly symmetric."""
    q8 = edgetrain.load(quantized(per_channel=per_channel), float_gemm=False)
    targets = int8.layers(q8, prover.target_layers(q8)[1:])
    x, y = mnist.x_train[:100], mnist.y_train[:100]
    fishers = int8.inverse_fisher(q8, targets, q8.quantize_input(x), y, 64, 1e-3)
    for t in targets:
        h, shape = fishers[t.name].h, q8.params[t.name].shape
        s = np.full(h.shape[0] * 64, t.scales.min())  # padding is treated as the finest channel
        s[:q8.params[t.name].size] = t.scales[t.flat_channel(shape)]
        s = s.reshape(h.shape[:2])
        want = fx.fisher_to_fixed(h / (s[:, :, None] * s[:, None, :]), 14)
        got = int8.to_prover_fisher(h, t, shape, 14)
        assert np.abs(got - want).max() <= 1 and np.array_equal(got, got.transpose(0, 2, 1))
        assert np.abs(got).max() == 1 << 14


def test_int8_gradients_and_fisher_create_no_float_array(quantized, mnist, monkeypatch, forbid_float_arrays):
    """From the quantised input to the prover's A: integers only (the test_trainer approach).
    The step itself is the shared fixed_point.integer_step, whose y-solve is not in scope."""
    q8 = edgetrain.load(quantized(), float_gemm=False)
    targets = int8.layers(q8, prover.target_layers(q8))  # constants from the float scales, before data
    x, y = mnist.x_train[:40], mnist.y_train[:40]
    xq = q8.quantize_input(x)  # floats end here, as in inference
    for t in targets:
        q8.params[t.name] = q8.params[t.name].view(IntegerOnly)
    forbid_float_arrays("einsum", "matmul", "floor_divide")
    a = int8.inverse_fisher_fixed(q8, targets, xq.view(IntegerOnly), y, 64, 1e-3, 14)
    monkeypatch.undo()
    assert set(a) == {t.name for t in targets}
    assert all(v.dtype == np.int64 and np.abs(v).max() == 1 << 14 for v in a.values())


def accuracy(model, mnist, n=3000):
    pred = model.run(mnist.x_test[:n]).argmax(1)
    y = mnist.y_test[:n]
    return float((pred[y == FORGET] == FORGET).mean()), float((pred[y != FORGET] == y[y != FORGET]).mean())


def test_int8_unlearning_forgets_the_class_and_keeps_the_rest(quantized, mnist):
    """Per-tensor int8 LeNet-5 (pinned), 10 % of the FC weights masked for class 3, Fisher of 300
    retain samples, damp 100 (smaller damping pushes compensated weights out of int8). The
    pipeline is integer from the input quantisation on, so these figures are the same on every
    CPU; measured: forget 0.953 → 0.802, retain 0.927 → 0.879 (masking alone: 0.709 / 0.838).
    int8 unlearning is weak (issue #14); the test pins what it does today."""
    model = edgetrain.load(quantized(per_channel=False))
    forget, retain = split(mnist)
    mask = prover.make_mask(model, forget=forget, retain=retain, fraction=0.1)
    total = sum(m.size for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.1 * total)
    new, witnesses = prover.unlearn(model, mask, data=(retain[0][:300], retain[1][:300]), damp=100.0)
    masked_only = edgetrain.Model(model.to_proto())
    for n, m in mask.items():
        assert new.params[n].dtype == np.int8
        assert np.all(new.params[n][m] == 0) and np.any(model.params[n][m] != 0)
        masked_only.params[n][m] = 0
    for w in witnesses:  # the witness is about the raw int8 weights and the returned model
        assert np.array_equal(w.w.reshape(-1)[:w.size], model.params[w.name].reshape(-1))
        assert np.array_equal(w.w_new.reshape(-1)[:w.size], new.params[w.name].reshape(-1))
        assert w.scale_bits == prover.unlearn.__globals__["INT8_SCALE_BITS"]
        unmasked_blocks = w.keep.all(axis=1)
        assert np.array_equal(w.w_new[unmasked_blocks], w.w[unmasked_blocks])
    (f0, r0), (f1, r1), (fm, rm) = accuracy(model, mnist), accuracy(new, mnist), accuracy(masked_only, mnist)
    assert f1 < f0 - 0.1  # the class is partly forgotten (measured −0.15)
    assert f0 - f1 > 2 * (r0 - r1)  # and loses far more than the rest (measured −0.05)
    assert r1 > rm + 0.02  # the compensation keeps retain accuracy (measured +0.04)


def test_a_compensated_weight_outside_int8_is_an_error_naming_layer_and_index(quantized, mnist):
    """Per-channel scales put a ±127 in every channel; at small damping the compensation
    pushes some past int8, and the proof's w' = w + δ forbids clipping."""
    model = edgetrain.load(quantized())
    forget, retain = split(mnist)
    last = prover.target_layers(model)[-1:]
    mask = prover.make_mask(model, forget=forget, retain=retain, fraction=0.05, layers=last)
    with pytest.raises(ValueError, match=r"layer '11\.weight_quantized': the compensated weight at index \(.*\) "
                                         r"\(flat \d+\) is -?\d+, outside int8"):
        prover.unlearn(model, mask, data=(retain[0][:200], retain[1][:200]), damp=1e-2)
