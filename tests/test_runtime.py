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


def ort_quantize(fp32_path, out_path, calib, fmt, per_channel, method="MinMax"):
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
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=getattr(quantization.CalibrationMethod, method))
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


def _normal(*shape):
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


def _positive(n, offset):
    return lambda rng: rng.random(n).astype(np.float32) + offset


def _const(value):
    return lambda rng: value


# case → (op, attributes, weight makers: each gets the case's own generator)
OP_CASES = {
    "conv-strided-dilated-grouped": ("Conv", dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1], group=3),
                                     [_normal(6, 1, 3, 3), _normal(6)]),
    "conv-same-upper": ("Conv", dict(auto_pad="SAME_UPPER", strides=[2, 2]), [_normal(4, 3, 2, 2)]),
    "maxpool-ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), []),
    "maxpool-pads": ("MaxPool", dict(kernel_shape=[2, 2], pads=[1, 1, 1, 1]), []),
    "avgpool-exclude-pad": ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]), []),
    "avgpool-include-pad": ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 2, 1, 0], count_include_pad=1), []),
    "avgpool-ceil": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), []),
    "global-avgpool": ("GlobalAveragePool", {}, []),
    "batchnorm": ("BatchNormalization", dict(epsilon=1e-3),
                  [_positive(3, 0.5), _normal(3), _normal(3), _positive(3, 0.1)]),
    "softmax": ("Softmax", dict(axis=1), []),
    "relu": ("Relu", {}, []),
    "clip": ("Clip", {}, [_const(np.float32(-0.5)), _const(np.float32(0.7))]),
    "flatten": ("Flatten", dict(axis=2), []),
    "reshape": ("Reshape", {}, [_const(np.array([0, -1, 3], dtype=np.int64))]),
    "add-broadcast": ("Add", {}, [_normal(3, 1, 9)]),
    "matmul": ("MatMul", {}, [_normal(9, 4)]),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_single_op_matches_onnxruntime(case, tmp_path):
    op, attrs, makers = OP_CASES[case]
    rng = np.random.default_rng(0)
    path = _save(single_op_model(op, attrs, weights=[make(rng) for make in makers]), tmp_path)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    ours, ref = edgetrain.load(path).run(x), ort_run(path, x)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-5


def test_gemm_attributes_match_onnxruntime(tmp_path):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((5, 7)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    proto = single_op_model("Gemm", dict(transB=1, alpha=0.5, beta=2.0), in_shape=(4, 7), weights=[w, c])
    path = _save(proto, tmp_path)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    assert rel_err(edgetrain.load(path).run(x), ort_run(path, x)) <= 1e-5


# Conv → Relu / MaxPool chains that Model.run takes in one step: (conv attributes, has bias,
# the nodes after it, input shape, whether they chain)
CHAIN_CASES = {
    "relu-pool-tiling": (dict(pads=[2, 2, 2, 2]), True, [("Relu", {}), ("MaxPool", dict(kernel_shape=[2, 2],
                                                                                        strides=[2, 2]))],
                         (3, 2, 12, 12), True),
    "pool-odd-rows-relu": (dict(), False, [("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2])), ("Relu", {})],
                           (2, 2, 11, 10), True),
    "strided-grouped-relu": (dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1], group=2), True,
                             [("Relu", {})], (2, 2, 9, 9), True),
    "pool-not-tiling": (dict(pads=[1, 1, 1, 1]), True, [("Relu", {}), ("MaxPool", dict(
        kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))], (2, 2, 9, 9), True),
    "same-width-dilated-asymmetric": (dict(dilations=[1, 2], pads=[1, 1, 1, 3], group=2), True, [("Relu", {})],
                                      (2, 4, 9, 10), True),
    "same-width-no-bias-pool": (dict(pads=[0, 2, 1, 2]), False, [("MaxPool", dict(kernel_shape=[2, 2],
                                                                                   strides=[2, 2]))],
                                (3, 2, 8, 11), True),
    "output-read-twice": (dict(pads=[1, 1, 1, 1]), True, [("Relu", {}), ("Add", {})], (2, 2, 9, 9), False),
}


@pytest.mark.parametrize("case", sorted(CHAIN_CASES))
def test_conv_chains_give_the_node_by_node_bits(case, tmp_path):
    attrs, bias, after, shape, chained = CHAIN_CASES[case]
    rng = np.random.default_rng(7)
    group = attrs.get("group", 1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, shape[1] // group, 3, 3)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"))
    nodes = [helper.make_node("Conv", ["x"] + [t.name for t in inits], ["t0"], **attrs)]
    for i, (op, op_attrs) in enumerate(after):
        ins = [f"t{i}", "t0"] if op == "Add" else [f"t{i}"]  # Add also reads the convolution's output
        nodes.append(helper.make_node(op, ins, [f"t{i + 1}"], **op_attrs))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
                              [helper.make_tensor_value_info(f"t{len(after)}", TensorProto.FLOAT, None)], inits)
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    model = edgetrain.load(path)
    assert (len(model.steps_for(False)) == 1) == chained
    for n in (1, shape[0]):
        x = rng.standard_normal((n, *shape[1:])).astype(np.float32)
        ours = model.run(x)
        assert ours.tobytes() == model.run_all(x, keep=True)[f"t{len(after)}"].tobytes()
        assert rel_err(ours, ort_run(path, x)) <= 1e-5


# a residual Add after the convolution: (which operand the convolution is, the residual's source,
# the nodes after the Add, conv attributes, input shape)
RESIDUAL_CASES = {
    "conv-first-relu-pool": (0, "conv", [("Relu", {}), ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2]))],
                             dict(pads=[1, 1, 1, 1]), (2, 2, 10, 10)),
    "conv-second-relu": (1, "conv", [("Relu", {})], dict(pads=[1, 1, 1, 1]), (2, 2, 9, 9)),
    "strided-pool": (0, "conv", [("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2]))],
                     dict(pads=[1, 1, 1, 1], strides=[2, 2]), (2, 2, 9, 9)),
    "strided": (1, "conv", [], dict(pads=[1, 1, 1, 1], strides=[2, 2]), (2, 2, 9, 9)),
    "strided-grouped": (1, "conv", [], dict(pads=[1, 1, 1, 1], strides=[2, 2], group=2), (2, 2, 9, 9)),
    "broadcast-residual": (0, "const", [("Relu", {})], dict(pads=[1, 1, 1, 1]), (2, 2, 9, 9)),
    "relu-global-mean": (0, "conv", [("Relu", {}), ("GlobalAveragePool", {})], dict(pads=[1, 1, 1, 1]),
                         (3, 2, 9, 9)),
    "strided-global-mean": (1, "conv", [("GlobalAveragePool", {})], dict(pads=[1, 1, 1, 1], strides=[2, 2]),
                            (3, 2, 9, 9)),
}


@pytest.mark.parametrize("case", sorted(RESIDUAL_CASES))
def test_conv_residual_chains_give_the_node_by_node_bits(case, tmp_path):
    position, source, after, attrs, shape = RESIDUAL_CASES[case]
    rng = np.random.default_rng(8)
    w_shape = (4, shape[1] // attrs.get("group", 1), 3, 3)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), n) for n in ("w", "w2")]
    inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"))
    nodes = []
    if source == "conv":  # the residual: another convolution of x, made before
        nodes.append(helper.make_node("Conv", ["x", "w2", "b"], ["r"], **attrs))
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "r"))
    nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs))
    nodes.append(helper.make_node("Add", ["c", "r"] if position == 0 else ["r", "c"], ["t0"]))
    for i, (op, op_attrs) in enumerate(after):
        nodes.append(helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], **op_attrs))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
                              [helper.make_tensor_value_info(f"t{len(after)}", TensorProto.FLOAT, None)], inits)
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    model = edgetrain.load(path)
    assert len(model.steps_for(False)) == (2 if source == "conv" else 1)  # the main convolution's chain
    for n in (1, shape[0]):
        x = rng.standard_normal((n, *shape[1:])).astype(np.float32)
        ours = model.run(x)
        assert ours.tobytes() == model.run_all(x, keep=True)[f"t{len(after)}"].tobytes()
        assert rel_err(ours, ort_run(path, x)) <= 1e-5


def conv_bn_model(rng):
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
    rng = np.random.default_rng(6)
    path = _save(conv_bn_model(rng), tmp_path)
    model = edgetrain.load(path)
    assert model.op_counts() == {"Conv": 1}
    x = rng.standard_normal((3, 3, 9, 9)).astype(np.float32)
    assert rel_err(model.run(x), ort_run(path, x)) <= 1e-5


def exact_mean(node, x, params):
    """ONNX's reference AveragePool in float64 for an integer mean node:
    (M·mean(x − zx), M·mean|x − zx|, values per window), M = s_x/s_y."""
    from onnx.reference import ReferenceEvaluator
    x_scale, x_zp, y_scale = (params[i] for i in node.inputs[1:4])
    k = x.astype(np.float64) - float(x_zp)
    if node.op_type == "QLinearGlobalAveragePool":
        op, attrs, window = "GlobalAveragePool", {}, int(np.prod(x.shape[2:]))
    else:
        op, window = "AveragePool", int(np.prod(node.attrs["kernel_shape"]))
        attrs = {a: v for a, v in node.attrs.items() if a != "channels_last"}
    graph = helper.make_graph([helper.make_node(op, ["k"], ["m"], **attrs)], "mean",
                              [helper.make_tensor_value_info("k", TensorProto.DOUBLE, None)],
                              [helper.make_tensor_value_info("m", TensorProto.DOUBLE, None)])
    mean = ReferenceEvaluator(helper.make_model(graph))
    ratio = float(x_scale) / float(y_scale)
    return ratio * mean.run(None, {"k": k})[0], ratio * mean.run(None, {"k": np.abs(k)})[0], window


def assert_mean_within_float_noise(node, ours, ref, x, params):
    """An integer mean node (QLinear[Global]AveragePool) against onnxruntime's output.

    onnxruntime averages in float32 (QLinearAveragePool: dequantise, add up,
    divide by the count and by y_scale, add the zero-point, ``rint``; the
    unfused QDQ graph: the same through DequantizeLinear, AveragePool,
    QuantizeLinear). That is at most K + 3 roundings for a K-value window, each
    off by ≤ 2^-24 of a value ≤ M·mean|x − zx| + |zy| (+128 where onnxruntime
    moves int8 to uint8), so it rounds as the exact mean t = M·mean(x − zx)
    does unless t is within that bound of a .5. We round t itself (Q31 M):
    identical outside the band, ≤ 1 LSB inside. With M = 1 (the QDQ
    quantiser's choice) the band holds only exact ties, where float32 noise
    decides onnxruntime's side.
    """
    t, t_abs, window = exact_mean(node, x, params)
    y_zp = int(params[node.inputs[4]])
    band = (window + 4) * 2.0 ** -24 * (t_abs + abs(y_zp) + 129)
    assert band.max() < 1e-3, node.name  # a sliver: the check binds all but near-ties
    clear = np.abs(t - np.floor(t) - 0.5) > band
    diff = np.abs(ours.astype(np.int64) - ref.astype(np.int64))
    assert diff.max() <= 1, node.name
    assert np.array_equal(ours[clear], ref[clear]), (node.name, int(np.count_nonzero(diff[clear])))


def check_nodes_in_isolation(model, ref, x):
    """Each node run on onnxruntime's own inputs: integer means within float noise (above),
    other integer outputs ≤ 1 LSB off on at most 0.1 % (onnxruntime requantises in float32:
    REFERENCES.md), the float output within 1 LSB of the output scale."""
    for node, kernel in zip(model.nodes, model.kernels):
        args = [(x if i == "input" else ref.get(i, model.params.get(i))) if i else None for i in node.inputs]
        ours, theirs = kernel.run(*args), ref[node.outputs[0]]
        if node.op_type in ("QLinearAveragePool", "QLinearGlobalAveragePool"):
            assert_mean_within_float_noise(node, ours, theirs, args[0], model.params)
            continue
        diff = np.abs(ours.astype(np.float64) - theirs)
        lsb = float(model.params[node.inputs[1]]) if node.op_type == "DequantizeLinear" else 1.0
        assert diff.max() <= lsb * 1.0001, node.name
        assert (diff == 0).mean() >= 0.999, node.name


def test_qlinear_softmax_and_average_pool_match_onnxruntime(tmp_path):
    """A graph onnxruntime quantises into QLinearAveragePool (3×3 windows, pads not
    counted: means over 4, 6 and 9 values) and QLinearSoftmax.

    Nodes are checked on onnxruntime's own inputs: softmax amplifies a 1-LSB
    input difference, so chained outputs are no fair test.
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
    for fmt in ("qoperator", "qdq"):
        path = ort_quantize(fp32, tmp_path / f"{fmt}.onnx", x[:100], fmt, False)
        model = edgetrain.load(path)
        assert {"QLinearAveragePool", "QLinearSoftmax"} <= set(model.op_counts()), model.op_counts()
        check_nodes_in_isolation(model, ort_run(path, x, all_nodes=True), x)


def avgpool_net(rng):
    """Three 3×3 convolutions with ReLU, a 2×2 average pool, a linear layer (12×12 → 10)."""
    shapes = {"w1": (4, 1, 3, 3), "w2": (8, 4, 3, 3), "w3": (8, 8, 3, 3), "wf": (72, 10)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * np.sqrt(2 / np.prod(s[1:] if len(s) == 4 else s[:1])))
                                     .astype(np.float32), n) for n, s in shapes.items()]
    inits += [numpy_helper.from_array((0.1 * rng.standard_normal(s[-1] if n == "wf" else s[0])).astype(np.float32),
                                      n.replace("w", "b")) for n, s in shapes.items()]
    nodes = []
    for i, src in enumerate(["input", "r1", "r2"], start=1):
        nodes += [helper.make_node("Conv", [src, f"w{i}", f"b{i}"], [f"c{i}"]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
    nodes += [helper.make_node("AveragePool", ["r3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "wf", "bf"], ["y"])]
    graph = helper.make_graph(nodes, "avgpool_net",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("fmt,per_channel,method", [("qoperator", False, "MinMax"), ("qoperator", True, "MinMax"),
                                                    ("qdq", False, "MinMax"), ("qdq", True, "MinMax"),
                                                    ("qdq", False, "Percentile")])
def test_average_pool_net_matches_onnxruntime(fmt, per_channel, method, tmp_path):
    """Issue #8: a conv net with an average pool, quantised by onnxruntime; every node on
    onnxruntime's own inputs (the pool within float32 noise of its mean, see above)."""
    rng = np.random.default_rng(8)
    fp32 = _save(avgpool_net(rng), tmp_path, "fp32.onnx")
    x = rng.standard_normal((300, 1, 12, 12)).astype(np.float32)
    path = ort_quantize(fp32, tmp_path / "int8.onnx", x[:64], fmt, per_channel, method)
    model = edgetrain.load(path)
    assert model.integer_only and model.op_counts()["QLinearAveragePool"] == 1, model.op_counts()
    check_nodes_in_isolation(model, ort_run(path, x, all_nodes=True), x)


def test_qdq_average_pool_folds_as_onnxruntime_fuses_it(tmp_path):
    """onnxruntime (extended optimisations and above) fuses DQ → AveragePool → Q into a
    com.microsoft QLinearAveragePool on uint8 (int8 zero-points moved by 128); our fold
    gives the same op with the same scales, zero-points and window."""
    rng = np.random.default_rng(9)
    fp32 = _save(avgpool_net(rng), tmp_path, "fp32.onnx")
    path = ort_quantize(fp32, tmp_path / "qdq.onnx", rng.standard_normal((64, 1, 12, 12)).astype(np.float32),
                        "qdq", False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fused = onnx.load(opts.optimized_model_filepath)
    theirs = next(n for n in fused.graph.node if n.op_type == "QLinearAveragePool")
    their_params = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    model = edgetrain.load(path)
    ours = next(n for n in model.nodes if n.op_type == "QLinearAveragePool")
    assert theirs.domain == ours.domain == "com.microsoft"
    for i in (1, 3):  # scales: the same, and the same for input and output (M = 1)
        assert their_params[theirs.input[i]] == model.params[ours.inputs[i]] == model.params[ours.inputs[1]]
    for i in (2, 4):  # zero-points: uint8 there, int8 here
        assert int(their_params[theirs.input[i]]) - 128 == int(model.params[ours.inputs[i]])
    their_attrs = {a.name: helper.get_attribute_value(a) for a in theirs.attribute}
    defaults = {"kernel_shape": None, "strides": [1, 1], "pads": [0, 0, 0, 0], "ceil_mode": 0, "count_include_pad": 0}
    for a, default in defaults.items():
        assert their_attrs.get(a, default) == ours.attrs.get(a, default), a


def qlinear_pool_model(op, attrs, x_shape, x_scale, y_scale, x_zp=-3, y_zp=5):
    """A one-node com.microsoft integer pool on an int8 input 'x'."""
    inits = [numpy_helper.from_array(np.array(v, dt), n) for v, dt, n in
             [(x_scale, np.float32, "xs"), (x_zp, np.int8, "xz"), (y_scale, np.float32, "ys"), (y_zp, np.int8, "yz")]]
    node = helper.make_node(op, ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[2, 2], strides=[2, 2]),
                                   dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
                                   dict(kernel_shape=[2, 3], strides=[1, 2], pads=[1, 0, 0, 1])])
@pytest.mark.parametrize("y_scale", [0.05, 0.037])  # the input's (QDQ) or its own (QOperator)
def test_qlinear_average_pool_matches_onnxruntime_kernel(attrs, y_scale, tmp_path):
    """onnxruntime's QLinearAveragePool kernel itself, on int8 values over the whole range."""
    x = np.random.default_rng(10).integers(-128, 128, (4, 3, 9, 9), dtype=np.int8)
    path = _save(qlinear_pool_model("QLinearAveragePool", attrs, x.shape, 0.05, y_scale), tmp_path)
    model = edgetrain.load(path)
    assert_mean_within_float_noise(model.nodes[0], model.run(x), ort_run(path, x), x, model.params)


@pytest.mark.parametrize("op,attrs,shape", [
    ("QLinearAveragePool", dict(kernel_shape=[2, 2], strides=[2, 2]), (4, 3, 8, 8)),
    ("QLinearAveragePool", dict(kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
     (4, 3, 8, 8)),
    ("QLinearAveragePool", dict(kernel_shape=[2, 4]), (16, 8, 2, 4)),  # the whole input: its global path
    ("QLinearGlobalAveragePool", {}, (16, 8, 2, 4))])
@pytest.mark.parametrize("x_scale", [0.0625, 0.125])  # M = 1 (QDQ) and M = 2
@pytest.mark.parametrize("y_zp", [5, -128])
def test_integer_mean_rounds_ties_as_onnxruntime(op, attrs, shape, x_scale, y_zp, tmp_path):
    """With power-of-two scales and counts every float32 step of onnxruntime's mean is
    exact, so its ``rint`` sees the true ties: bit-identical, ties included."""
    x = np.random.default_rng(11).integers(-128, 128, shape, dtype=np.int8)
    path = _save(qlinear_pool_model(op, attrs, x.shape, x_scale, 0.0625, y_zp=y_zp), tmp_path)
    model = edgetrain.load(path)
    ours, ref = model.run(x), ort_run(path, x)
    assert np.array_equal(ours, ref), int(np.count_nonzero(ours != ref))
    assert np.any(exact_mean(model.nodes[0], x, model.params)[0] % 1 == 0.5)  # the inputs do hold ties


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
