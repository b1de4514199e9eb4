"""The runtime against onnxruntime: fp32 zoo models, int8 models that
onnxruntime itself quantised (QOperator and QDQ, per-tensor and per-channel),
node by node, and single ops built with onnx.helper."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain
from conftest import rel_err

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")


def ort_run(path_or_proto, x, all_nodes=False):
    """onnxruntime's outputs; with ``all_nodes``, every node output by name (no graph fusion)."""
    proto = onnx.load(str(path_or_proto)) if not isinstance(path_or_proto, onnx.ModelProto) else path_or_proto
    opts = ort.SessionOptions()
    names = None
    if all_nodes:
        names = [o for n in proto.graph.node for o in n.output if o]
        del proto.graph.output[:]
        proto.graph.output.extend(onnx.ValueInfoProto(name=o) for o in names)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    return dict(zip(names, outs)) if all_nodes else outs[0]


def ort_quantize(fp32_path, out_path, calib, fmt, per_channel):
    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.it, None)
    quantization.quantize_static(
        str(fp32_path), str(out_path), Reader(),
        quant_format={"qoperator": quantization.QuantFormat.QOperator,
                      "qdq": quantization.QuantFormat.QDQ}[fmt],
        per_channel=per_channel, activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8)
    return out_path


def output_lsb(path):
    """Scale of the final DequantizeLinear, to express differences in LSBs."""
    proto = onnx.load(str(path))
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"][-1]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return float(inits[dq.input[1]])


# -- fp32 ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "lenet5", "rescnn"])
def test_fp32_zoo_matches_onnxruntime(name, trained_onnx, mnist):
    path = trained_onnx(name)
    model = edgetrain.load(path)
    rng = np.random.default_rng(1)
    for x in (mnist.x_test[:200], rng.standard_normal((5, 1, 28, 28)).astype(np.float32)):
        assert rel_err(model.run(x), ort_run(path, x)) <= 1e-5


# -- int8 models quantised by onnxruntime -----------------------------------------

@pytest.fixture(scope="module")
def quantized(trained_onnx, mnist, tmp_path_factory):
    """(name, fmt, per_channel) → path of onnxruntime's int8 model."""
    cache = {}
    out_dir = tmp_path_factory.mktemp("int8")

    def make(name, fmt, per_channel):
        key = (name, fmt, per_channel)
        if key not in cache:
            cache[key] = ort_quantize(trained_onnx(name), out_dir / f"{name}-{fmt}-{per_channel}.onnx",
                                      mnist.x_train[:256], fmt, per_channel)
        return cache[key]
    return make


@pytest.mark.parametrize("name", ["lenet5", "rescnn"])
@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_matches_onnxruntime(name, fmt, per_channel, quantized, mnist):
    path = quantized(name, fmt, per_channel)
    model = edgetrain.load(path)
    assert model.integer_only, model.op_counts()
    x = mnist.x_test
    ours, ref = model.run(x), ort_run(path, x)
    lsb = np.rint(np.abs(ours - ref) / output_lsb(path))
    assert lsb.max() <= 1
    assert (lsb == 0).mean() >= 0.999
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize("name", ["lenet5", "rescnn"])
def test_int8_every_node_matches_onnxruntime(name, quantized, mnist):
    path = quantized(name, "qoperator", True)
    model = edgetrain.load(path)
    x = mnist.x_test[:100]
    ours, ref = model.run_all(x), ort_run(path, x, all_nodes=True)
    compared = 0
    for node in model.nodes:
        out = node.outputs[0]
        a, b = ours[out].astype(np.int64), ref[out]
        if np.issubdtype(b.dtype, np.integer):
            diff = np.abs(a - b.astype(np.int64))
            assert diff.max() <= 1, node.name
            assert (diff == 0).mean() >= 0.999, node.name
            compared += 1
    assert compared == len(model.nodes) - 1  # all but the float output


def test_pure_integer_gemm_gives_identical_bits(quantized, mnist):
    path = quantized("rescnn", "qdq", True)
    x = mnist.x_test[:50]
    fast = edgetrain.load(path).run_all(x)
    slow = edgetrain.load(path, float_gemm=False).run_all(x)
    assert fast.keys() == slow.keys()
    for k in fast:
        assert fast[k].dtype == slow[k].dtype and np.array_equal(fast[k], slow[k]), k


# -- single ops -------------------------------------------------------------------

def single_op_model(op, attrs=None, in_shape=(2, 3, 9, 9), weights=(), extra_inputs=(), domain=""):
    """A one-node graph: input 'x' (+ initializers) → op → 'y'."""
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    node = helper.make_node(op, ["x", *extra_inputs, *[t.name for t in inits]], ["y"], domain=domain,
                            **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save(proto, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(proto, path)
    return path


rng = np.random.default_rng(0)
OP_CASES = {
    "conv-strided-dilated-grouped": ("Conv", dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1], group=3),
                                     [rng.standard_normal((6, 1, 3, 3)).astype(np.float32),
                                      rng.standard_normal(6).astype(np.float32)]),
    "conv-same-upper": ("Conv", dict(auto_pad="SAME_UPPER", strides=[2, 2]),
                        [rng.standard_normal((4, 3, 2, 2)).astype(np.float32)]),
    "maxpool-ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), []),
    "maxpool-pads": ("MaxPool", dict(kernel_shape=[2, 2], pads=[1, 1, 1, 1]), []),
    "avgpool-exclude-pad": ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]), []),
    "avgpool-include-pad": ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 2, 1, 0], count_include_pad=1), []),
    "avgpool-ceil": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), []),
    "global-avgpool": ("GlobalAveragePool", {}, []),
    "batchnorm": ("BatchNormalization", dict(epsilon=1e-3),
                  [rng.random(3).astype(np.float32) + 0.5, rng.standard_normal(3).astype(np.float32),
                   rng.standard_normal(3).astype(np.float32), rng.random(3).astype(np.float32) + 0.1]),
    "softmax": ("Softmax", dict(axis=1), []),
    "relu": ("Relu", {}, []),
    "clip": ("Clip", {}, [np.float32(-0.5), np.float32(0.7)]),
    "flatten": ("Flatten", dict(axis=2), []),
    "reshape": ("Reshape", {}, [np.array([0, -1, 3], dtype=np.int64)]),
    "add-broadcast": ("Add", {}, [rng.standard_normal((3, 1, 9)).astype(np.float32)]),
    "matmul": ("MatMul", {}, [rng.standard_normal((9, 4)).astype(np.float32)]),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_single_op_matches_onnxruntime(case, tmp_path):
    op, attrs, weights = OP_CASES[case]
    path = _save(single_op_model(op, attrs, weights=weights), tmp_path)
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 9)).astype(np.float32)
    ours, ref = edgetrain.load(path).run(x), ort_run(path, x)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-5


def test_gemm_attributes_match_onnxruntime(tmp_path):
    w = rng.standard_normal((5, 7)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    proto = single_op_model("Gemm", dict(transB=1, alpha=0.5, beta=2.0), in_shape=(4, 7), weights=[w, c])
    path = _save(proto, tmp_path)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    assert rel_err(edgetrain.load(path).run(x), ort_run(path, x)) <= 1e-5


def conv_bn_model():
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    bn = [rng.random(4).astype(np.float32) + 0.5, rng.standard_normal(4).astype(np.float32),
          rng.standard_normal(4).astype(np.float32), rng.random(4).astype(np.float32) + 0.1]
    names = ["w", "b", "s", "bb", "m", "v"]
    inits = [numpy_helper.from_array(a, n) for a, n in zip([w, b, *bn], names)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], epsilon=1e-4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batchnorm_after_conv_is_folded_and_exact(tmp_path):
    path = _save(conv_bn_model(), tmp_path)
    model = edgetrain.load(path)
    assert model.op_counts() == {"Conv": 1}
    x = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    assert rel_err(model.run(x), ort_run(path, x)) <= 1e-5


def _check_nodes_in_isolation(model, ref, x, min_identical):
    """Each node run on onnxruntime's own inputs: ≤ 1 LSB from onnxruntime's output."""
    for node, kernel in zip(model.nodes, model.kernels):
        args = [(x if i == "input" else ref.get(i, model.params.get(i))) if i else None for i in node.inputs]
        diff = np.abs(kernel.run(*args).astype(np.float64) - ref[node.outputs[0]])
        lsb = float(model.params[node.inputs[1]]) if node.op_type == "DequantizeLinear" else 1.0
        assert diff.max() <= lsb * 1.0001, node.name
        assert (diff == 0).mean() >= min_identical, node.name


def test_qlinear_softmax_and_average_pool_match_onnxruntime(tmp_path):
    """A graph onnxruntime quantises into QLinearAveragePool and QLinearSoftmax.

    Nodes are checked on onnxruntime's own inputs: softmax amplifies a 1-LSB
    input difference, so chained outputs are no fair test. Unoptimised QDQ
    graphs run float ops in onnxruntime, whose QuantizeLinear rounds exact
    ties (a window sum over 4 or 6 values) to even where our integer mean, like
    onnxruntime's own QLinearAveragePool, rounds them away from zero: so for
    QDQ only the 1-LSB bound is asserted.
    """
    w = numpy_helper.from_array(np.random.default_rng(4).standard_normal((2, 2, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    fp32 = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path, "fp32.onnx")
    x = (3 * np.random.default_rng(3).standard_normal((500, 2, 4, 4))).astype(np.float32)
    for fmt, min_identical in (("qoperator", 0.999), ("qdq", 0.0)):
        path = ort_quantize(fp32, tmp_path / f"{fmt}.onnx", x[:100], fmt, False)
        model = edgetrain.load(path)
        assert {"QLinearAveragePool", "QLinearSoftmax"} <= set(model.op_counts()), model.op_counts()
        _check_nodes_in_isolation(model, ort_run(path, x, all_nodes=True), x, min_identical)


# -- bad input ---------------------------------------------------------------------

def test_unsupported_ops_are_all_listed(tmp_path):
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="s1"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Tanh", ["b"], ["y"], name="t1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = _save(helper.make_model(graph), tmp_path)
    with pytest.raises(edgetrain.ModelFormatError, match=r"Sin \(node 's1'\).*Tanh \(node 't1'\)"):
        edgetrain.load(path)


def test_missing_initializer_names_node(tmp_path):
    proto = single_op_model("MatMul", extra_inputs=["nowhere"], in_shape=(2, 3))
    with pytest.raises(edgetrain.ModelFormatError, match="input 'nowhere' is missing"):
        edgetrain.load(_save(proto, tmp_path))


@pytest.mark.parametrize("scale", [0.0, -0.02])
def test_bad_scale_is_rejected_at_load(scale, tmp_path):
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q0")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [2])], inits)
    with pytest.raises(edgetrain.ModelFormatError, match="q0.*scales must be finite and > 0"):
        edgetrain.load(_save(helper.make_model(graph), tmp_path))


def test_truncated_and_foreign_files_are_rejected(trained_onnx, tmp_path):
    data = open(trained_onnx("mlp"), "rb").read()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 20)
    for name in ("cut.onnx", "text.onnx"):
        with pytest.raises(edgetrain.ModelFormatError, match=name):
            edgetrain.load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        edgetrain.load(tmp_path / "nope.onnx")


def test_bad_inputs_get_clear_errors(trained_onnx):
    model = edgetrain.load(trained_onnx("lenet5"))
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"input 'input': expected shape \('\?', 1, 28, 28\), got \(2, 28, 28\)"):
        model.run(x[:, 0])
    with pytest.raises(TypeError, match="expected dtype float32, got int64"):
        model.run(x.astype(np.int64))
    with pytest.raises(TypeError, match="numpy array"):
        model.run(x.tolist())
    bad = x.copy()
    bad[1, 0, 3, 3] = np.nan
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        model.run(bad)
    assert model.run(x.astype(np.float64)).shape == (2, 10)  # other float widths are converted
