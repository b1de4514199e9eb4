"""edgetrain.export: torch → ONNX against torch, int8 PTQ against the fp32 model.

References: torch's own forward pass, onnxruntime running what we wrote, and
onnxruntime's quantiser's documented output form (QOperator ops, int8/int32).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgetrain.export import ZOO, ExportMismatchError, build, export_onnx, quantize
from edgetrain.export.train_torch import accuracy, train

RTOL = 1e-4


def run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def torch_out(module, x):
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def randomise_batchnorm(module, seed=1):
    """Non-trivial running statistics, so that folding BatchNorm is really tested."""
    g = torch.Generator().manual_seed(seed)
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.data.copy_(torch.randn(n, generator=g))
        bn.bias.data.copy_(torch.randn(n, generator=g))
    return module


@pytest.fixture(scope="module")
def lenet5_onnx(trained_onnx):
    """LeNet-5 after three epochs of Adam on MNIST, exported (shared via conftest)."""
    return trained_onnx("lenet5")


# ---------------------------------------------------------------- zoo


def test_build_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = build("lenet5", seed=3), build("lenet5", seed=3), build("lenet5", seed=4)
    assert torch.equal(state, torch.random.get_rng_state())
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_map_mnist_images_to_10_logits(name):
    assert torch_out(build(name), np.zeros((5, 1, 28, 28), np.float32)).shape == (5, 10)


def test_build_unknown_name_names_it():
    with pytest.raises(ValueError, match="name='lenet6'.*lenet5"):
        build("lenet6")


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("name", sorted(ZOO))
def test_export_matches_torch_with_dynamic_batch(name, tmp_path):
    module = randomise_batchnorm(build(name, seed=0))
    report = export_onnx(module, tmp_path / f"{name}.onnx")
    model = onnx.load(tmp_path / f"{name}.onnx")

    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # no external data file
    assert report["opset"] >= 17 and report["max_rel_err"] <= RTOL
    assert report["n_params"] == sum(p.numel() for p in module.parameters())
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    rng = np.random.default_rng(5)
    for batch in (3, 8, 33):
        x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
        expected = torch_out(module, x)
        got = run_ort(tmp_path / f"{name}.onnx", x)
        assert np.abs(got - expected).max() <= RTOL * np.abs(expected).max()


def test_export_emits_the_ops_the_runtime_expects(tmp_path):
    ops = {name: export_onnx(name, tmp_path / f"{name}.onnx")["ops"] for name in ZOO}
    assert ops["mlp"] == {"Flatten": 1, "Gemm": 2, "Relu": 1}
    assert ops["lenet5"] == {"Conv": 2, "Relu": 4, "MaxPool": 2, "Flatten": 1, "Gemm": 3}
    assert {"Conv", "Add", "GlobalAveragePool", "Gemm"} <= set(ops["rescnn"])


def test_export_restores_training_mode(tmp_path):
    module = build("rescnn").train()
    export_onnx(module, tmp_path / "m.onnx")
    assert module.training


def test_source_string_builds_the_named_callable(tmp_path):
    by_string = export_onnx("edgetrain.export.zoo:rescnn", tmp_path / "s.onnx", seed=7)
    by_name = export_onnx("rescnn", tmp_path / "n.onnx", seed=7)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28), dtype=np.float32)
    assert by_string["max_rel_err"] <= RTOL
    # same seed, same weights, same graph as the zoo name
    np.testing.assert_array_equal(run_ort(by_string["path"], x), run_ort(by_name["path"], x))


@pytest.mark.parametrize("source, error, match", [
    ("lenet6", ValueError, "'lenet6'"),
    ("no_such_package.models:net", ValueError, "cannot import module 'no_such_package.models'"),
    ("edgetrain.export.zoo:resnet50", ValueError, "has no attribute 'resnet50'"),
    ("edgetrain.export.zoo:INPUT_SHAPE", TypeError, "'INPUT_SHAPE' is not callable"),
    ("builtins:dict", TypeError, "dict\\(\\) returned dict, expected a torch.nn.Module"),
    (":lenet5", ValueError, "'package.module:callable'"),
    (42, TypeError, "source=42"),
])
def test_bad_source_names_the_offending_value(source, error, match, tmp_path):
    with pytest.raises(error, match=match):
        export_onnx(source, tmp_path / "m.onnx")


class _BranchOnMagnitude(nn.Module):
    """Doubles its output when an input exceeds 100: tracing keeps only one branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.fc(x)
        return 2 * y if bool(x.max() > 100) else y


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_mismatch_on_real_inputs_raises(tmp_path):
    module = _BranchOnMagnitude()
    export_onnx(module, tmp_path / "ok.onnx", input_shape=(4,))  # random inputs agree
    with pytest.raises(ExportMismatchError, match="max relative error 0.5"):
        export_onnx(module, tmp_path / "bad.onnx", input_shape=(4,),
                    real_inputs=np.full((3, 4), 1000, np.float32))


@pytest.mark.parametrize("kwargs, match", [
    ({"opset": 13}, "opset=13"),
    ({"opset": 21}, "opset=21"),
    ({"input_shape": (1, -28, 28)}, "input_shape=\\(1, -28, 28\\)"),
    ({"real_inputs": np.zeros((2, 28, 28), np.float32)}, "real_inputs has shape \\(2, 28, 28\\)"),
])
def test_export_bad_arguments_are_named(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        export_onnx("mlp", tmp_path / "m.onnx", **kwargs)


# ---------------------------------------------------------------- training


def test_train_is_deterministic_and_reports_each_epoch(mnist, capsys):
    x, y = mnist.x_train[:256], mnist.y_train[:256]
    runs = []
    for seed in (0, 0, 1):
        module = build("mlp", seed=0)
        history = train(module, x, y, epochs=2, batch_size=32, seed=seed)
        runs.append((history, torch.cat([p.flatten() for p in module.parameters()])))
    assert torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])
    assert [h["epoch"] for h in runs[0][0]] == [1, 2]
    assert runs[0][0][1]["loss"] < runs[0][0][0]["loss"]
    assert capsys.readouterr().err.count("epoch 2/2") == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs=0"), ({"batch_size": 0}, "batch_size=0"), ({"lr": 0.0}, "lr=0.0"),
])
def test_train_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(build("mlp"), np.zeros((4, 1, 28, 28)), np.zeros(4), **kwargs)


def test_trained_mlp_learns_mnist_and_accuracy_matches_onnxruntime(mnist, tmp_path):
    module = build("mlp", seed=0)
    train(module, mnist.x_train, mnist.y_train, epochs=2, seed=0, progress=False)
    acc = accuracy(module, mnist.x_test, mnist.y_test)
    export_onnx(module, tmp_path / "mlp.onnx")
    assert acc >= 0.85
    assert acc == (run_ort(tmp_path / "mlp.onnx", mnist.x_test).argmax(1) == mnist.y_test).mean()


def test_trained_lenet5_onnx_learned_mnist(mnist, lenet5_onnx):
    # the quantisation tests below need a model far above chance (10 %), not a good one
    assert (run_ort(lenet5_onnx, mnist.x_test).argmax(1) == mnist.y_test).mean() >= 0.90


# ---------------------------------------------------------------- quantisation


def test_qoperator_graph_has_int8_weights_and_int32_bias(mnist, lenet5_onnx, tmp_path):
    report = quantize(lenet5_onnx, tmp_path / "q.onnx", mnist.x_train[:256])
    assert report["ops"] == {"QuantizeLinear": 1, "QLinearConv": 2, "MaxPool": 2, "Flatten": 1,
                             "QGemm": 3, "DequantizeLinear": 1}
    assert (report["method"], report["format"], report["n_samples"]) == ("minmax", "qoperator", 256)
    model = onnx.load(tmp_path / "q.onnx")
    init = initializers(model)
    nodes = [n for n in model.graph.node if n.op_type in ("QLinearConv", "QGemm")]
    for node in nodes:
        # QLinearConv: x, xs, xz, w, ws, wz, ys, yz, b — QGemm: a, as, az, b, bs, bz, c, ys, yz
        w, w_scale, w_zp = (init[node.input[i]] for i in (3, 4, 5))
        bias = init[node.input[8] if node.op_type == "QLinearConv" else node.input[6]]
        assert w.dtype == np.int8 and bias.dtype == np.int32
        assert not w_zp.any() and w_scale.shape == (w.shape[0],)  # symmetric, per channel
        assert np.abs(w).max() == 127  # the largest weight of some channel hits the range end
    # asymmetric activations: Relu outputs are folded into a zero-point of −128
    act_zps = [init[n.input[7 if n.op_type == "QLinearConv" else 8]] for n in nodes]
    assert all(z.dtype == np.int8 for z in act_zps) and any(z == -128 for z in act_zps)


def test_int8_argmax_agrees_with_fp32_on_mnist_test_set(mnist, lenet5_onnx, tmp_path):
    quantize(lenet5_onnx, tmp_path / "q.onnx", mnist.x_train[:256])
    agreement = (run_ort(tmp_path / "q.onnx", mnist.x_test).argmax(1)
                 == run_ort(lenet5_onnx, mnist.x_test).argmax(1)).mean()
    assert agreement >= 0.97


def test_percentile_clips_ranges_and_both_calibrations_run(mnist, lenet5_onnx, tmp_path):
    path = lenet5_onnx
    calib, x_test = mnist.x_train[:256], mnist.x_test[:200]
    quantize(path, tmp_path / "mm.onnx", calib, method="minmax")
    report = quantize(path, tmp_path / "pc.onnx", calib, method="percentile", percentile=99.9)
    assert report["method"] == "percentile" and report["percentile"] == 99.9

    def act_scales(p):
        return {k: float(v) for k, v in initializers(onnx.load(p)).items()
                if k.endswith("_scale") and v.ndim == 0}

    minmax, pct = act_scales(tmp_path / "mm.onnx"), act_scales(tmp_path / "pc.onnx")
    assert minmax.keys() == pct.keys()
    assert all(pct[k] <= minmax[k] * (1 + 1e-6) for k in minmax)
    assert any(pct[k] < minmax[k] * 0.99 for k in minmax)
    fp32 = run_ort(path, x_test).argmax(1)
    for name in ("mm.onnx", "pc.onnx"):
        assert (run_ort(tmp_path / name, x_test).argmax(1) == fp32).mean() >= 0.95


def test_qdq_format_is_valid_and_agrees(mnist, lenet5_onnx, tmp_path):
    path = lenet5_onnx
    report = quantize(path, tmp_path / "qdq.onnx", mnist.x_train[:256], fmt="qdq")
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= set(report["ops"])
    assert not any(op.startswith("QLinear") for op in report["ops"])
    onnx.checker.check_model(onnx.load(tmp_path / "qdq.onnx"), full_check=True)
    x_test = mnist.x_test[:200]
    assert (run_ort(tmp_path / "qdq.onnx", x_test).argmax(1)
            == run_ort(path, x_test).argmax(1)).mean() >= 0.95


def test_rescnn_quantizes_add_and_global_pool(mnist, tmp_path):
    export_onnx("rescnn", tmp_path / "r.onnx")
    report = quantize(tmp_path / "r.onnx", tmp_path / "rq.onnx", mnist.x_train[:128],
                      per_channel=False)
    assert {"QuantizeLinear", "QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool",
            "QGemm", "DequantizeLinear"} <= set(report["ops"])
    assert not {"Conv", "Add", "GlobalAveragePool", "Gemm"} & set(report["ops"])
    model = onnx.load(tmp_path / "rq.onnx")
    init = initializers(model)
    weight_scales = [init[n.input[4]] for n in model.graph.node
                     if n.op_type in ("QLinearConv", "QGemm")]
    assert len(weight_scales) == 4 and all(s.ndim == 0 for s in weight_scales)  # per tensor
    assert run_ort(tmp_path / "rq.onnx", mnist.x_test[:8]).shape == (8, 10)


def test_quantize_accepts_any_input_shape(tmp_path):
    module = nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    export_onnx(module, tmp_path / "m.onnx", input_shape=(3, 4, 4))
    calib = np.random.default_rng(0).standard_normal((20, 3, 4, 4), dtype=np.float32)
    assert quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", calib)["n_samples"] == 20
    with pytest.raises(ValueError, match=r"expects \(N, 3, 4, 4\)"):
        quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", calib[:, :2])


@pytest.mark.parametrize("calib, kwargs, match", [
    (np.zeros((0, 1, 28, 28), np.float32), {}, "calib is empty"),
    (np.zeros((8, 28, 28), np.float32), {}, r"calib has shape \(8, 28, 28\).*\(N, 1, 28, 28\)"),
    (np.zeros((8, 1, 28, 28), np.int64), {}, "dtype int64"),
    (np.full((8, 1, 28, 28), np.nan, np.float32), {}, "finite"),
    (np.zeros((8, 1, 28, 28), np.float32), {"method": "entropy"}, "method='entropy'"),
    (np.zeros((8, 1, 28, 28), np.float32), {"fmt": "tflite"}, "fmt='tflite'"),
    (np.zeros((8, 1, 28, 28), np.float32), {"method": "percentile", "percentile": 0},
     "percentile=0"),
    (np.zeros((8, 1, 28, 28), np.float32), {"method": "percentile", "percentile": -5.0},
     "percentile=-5.0"),
])
def test_quantize_bad_arguments_are_named(calib, kwargs, match, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "mlp.onnx"
    export_onnx("mlp", path, check=False)
    with pytest.raises(ValueError, match=match):
        quantize(path, path.with_suffix(".int8.onnx"), calib, **kwargs)


def test_user_shifts_do_what_they_say():
    """``user_shift``: invert is 1 − x; dilate is the maximum over each 3×3 neighbourhood
    (a numpy reference); rotate turns a blob 8 px right of the centre by 30° anticlockwise
    about (13.5, 13.5), to (13.5 − 8·sin 30°, 13.5 + 8·cos 30°), within 0.1 px."""
    from edgetrain.export import datasets
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 1, 28, 28)).astype(np.float32) * (rng.uniform(size=(3, 1, 28, 28)) < 0.1)
    np.testing.assert_array_equal(datasets.user_shift(x, "invert"), 1 - x)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    window_max = np.max([padded[..., i:i + 28, j:j + 28] for i in range(3) for j in range(3)], axis=0)
    np.testing.assert_array_equal(datasets.user_shift(x, "dilate"), window_max)
    blob = np.zeros((1, 1, 28, 28), np.float32)
    blob[..., 13:15, 21:23] = 1  # centred on (13.5, 21.5)
    r = datasets.user_shift(blob, "rotate")[0, 0]
    rows, cols = np.indices(r.shape)
    centroid = np.array([(r * rows).sum(), (r * cols).sum()]) / r.sum()
    a = np.deg2rad(30)
    np.testing.assert_allclose(centroid, [13.5 - 8 * np.sin(a), 13.5 + 8 * np.cos(a)], atol=0.1)
    np.testing.assert_array_equal(datasets.user_shift(x, "translate"), np.roll(x, 3, axis=-1))
    with pytest.raises(ValueError, match="kind='blur'"):
        datasets.user_shift(x, "blur")
