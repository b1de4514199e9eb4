"""Backprop (edgetrain.autodiff) against torch autograd: the zoo models end to
end, single ops built with onnx.helper, a float64 central-difference check of
the kernels, and the ``start`` cut that ElasticZO's BP tail relies on."""
import copy

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain
from conftest import rel_err
from edgetrain.autodiff import backward, cross_entropy
from edgetrain.kernels import KERNELS, Node

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
# Max |ours − torch| relative to max |torch|, per tensor. The torch reference runs
# in float64 on the same float32 numbers: torch's own float32 conv-bias gradients
# on rescnn are up to 1.1e-5 away from that value (ours: 2e-7), so a float32
# reference would test torch's rounding as much as ours.
TOL = 1e-5
NOT_TRAINED = {"mean", "var", "lo", "hi", "shape"}  # op inputs that get no gradient


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def as_f64(a, requires_grad=False):
    """The same numbers as a float64 torch tensor (integer tensors stay integer)."""
    t = torch.tensor(a)
    return (t.double() if t.is_floating_point() else t).requires_grad_(requires_grad)


# -- zoo models end to end ----------------------------------------------------------

def randomize_batchnorm(module, seed=0):
    """Non-trivial running statistics and affine, so folding BN really changes the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)


def fuse_conv_batchnorm(module):
    """Replace each Conv2d→BatchNorm2d pair of children by torch's own eval-mode fusion."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = getattr(parent, a), getattr(parent, b)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, a, fuse_conv_bn_eval(conv, bn))
                setattr(parent, b, nn.Identity())
    return module


def twin_parameters(params, module):
    """ONNX initializer name → the torch parameter of the same shape with the closest values."""
    candidates = dict(module.named_parameters())
    twins = {}
    for name, value in params.items():
        errs = {t: rel_err(p.detach().numpy(), value) for t, p in candidates.items()
                if tuple(p.shape) == value.shape}
        assert errs, f"initializer {name!r} {value.shape} has no torch parameter of that shape"
        best = min(errs, key=errs.get)
        assert errs[best] < 1e-5, f"{name!r}: closest torch parameter {best!r} is {errs[best]:.3g} off"
        twins[name] = candidates.pop(best)
    return twins


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name → (float64 torch reference module, loaded runtime Model) for the same weights.

    The TorchScript exporter folds eval-mode BatchNorm into the preceding Conv,
    so the ONNX rescnn has no BN parameters. The reference is the module with
    each Conv→BN pair fused by torch's ``fuse_conv_bn_eval``: the same function
    as the exported graph, with a twin for every initializer; its parameters are
    then set to the initializers' exact values, so both sides differentiate at
    the same point. (The BN kernel's own gradient is checked in the op tests.)
    """
    from edgetrain.export import build, export_onnx
    cache = {}

    def make(name):
        if name not in cache:
            module = build(name, seed=0)
            randomize_batchnorm(module)
            module.eval()
            path = tmp_path_factory.mktemp("zoo") / f"{name}.onnx"
            export_onnx(module, path, check=False)
            model = edgetrain.load(path)
            ref = fuse_conv_batchnorm(copy.deepcopy(module))
            x = torch.from_numpy(batch()[0])
            with torch.no_grad():
                assert rel_err(ref(x).numpy(), module(x).numpy()) < 1e-5  # fusion kept the function
            cache[name] = (ref.double(), model)
        return cache[name]
    return make


@pytest.mark.parametrize("name", ["mlp", "lenet5", "rescnn"])
def test_zoo_parameter_gradients_match_torch_autograd(name, zoo):
    ref, model = zoo(name)
    used = {i for n in model.nodes for i in n.inputs} & set(model.params)
    twins = twin_parameters({k: model.params[k] for k in used}, ref)
    with torch.no_grad():
        for k, p in twins.items():
            p.copy_(torch.tensor(model.params[k]))  # float32 values, exactly
    x, y = batch(seed=1)

    env = model.run_all(x)
    loss, dlogits = cross_entropy(env[model.output_names[0]], y)
    grads = backward(model, env, dlogits, wrt=used)

    ref.zero_grad()
    torch_loss = F.cross_entropy(ref(torch.from_numpy(x).double()), torch.from_numpy(y))
    torch_loss.backward()
    assert abs(loss - torch_loss.item()) <= TOL * abs(torch_loss.item())
    assert set(grads) == used
    for k, p in twins.items():
        assert grads[k].shape == model.params[k].shape and grads[k].dtype == np.float32, k
        assert rel_err(grads[k], p.grad.numpy()) <= TOL, k


def test_backward_skips_gradients_nobody_needs(zoo):
    """mlp = Flatten → Gemm → Relu → Gemm: nothing may flow into the graph input."""
    _, model = zoo("mlp")
    calls = {}
    for node, kernel in zip(model.nodes, model.kernels):
        def spy(gy, inputs, y, needs, _grad=kernel.grad, _name=node.name):
            calls[_name] = list(needs)
            return _grad(gy, inputs, y, needs)
        kernel.grad = spy
    try:
        x, y = batch()
        env = model.run_all(x)
        backward(model, env, cross_entropy(env[model.output_names[0]], y)[1], wrt=set(model.params))
    finally:
        for kernel in model.kernels:
            del kernel.grad
    flatten, gemm1, _, gemm2 = (n.name for n in model.nodes)
    assert flatten not in calls
    assert calls[gemm1] == [False, True, True]
    assert calls[gemm2] == [True, True, True]


def test_start_stops_the_walk_and_reads_only_the_tail(zoo):
    """ElasticZO's tail: BP over the last two Gemms sees only their activations
    and gives exactly the full walk's gradients for their parameters."""
    _, model = zoo("lenet5")
    start = next(i for i, n in enumerate(model.nodes) if "9.weight" in n.inputs)
    x, y = batch()
    env = model.run_all(x)
    dlogits = cross_entropy(env[model.output_names[0]], y)[1]
    full = backward(model, env, dlogits, wrt=set(model.params))

    tail_env = {t: env[t] for n in model.nodes[start:] for t in n.inputs + n.outputs
                if t in env and t not in model.params}

    def forbidden(*args, **kwargs):
        raise AssertionError("a node before start was visited or run")
    for kernel in model.kernels:
        kernel.run = forbidden
    for kernel in model.kernels[:start]:
        kernel.grad = forbidden
    try:
        tail = backward(model, tail_env, dlogits, wrt=set(model.params), start=start)
    finally:
        for kernel in model.kernels:
            vars(kernel).pop("run", None)
            vars(kernel).pop("grad", None)
    assert set(tail) == {"9.weight", "9.bias", "11.weight", "11.bias"}
    for k in tail:
        np.testing.assert_array_equal(tail[k], full[k])


def test_cross_entropy_matches_torch_and_survives_huge_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 16)
    for scale in (1.0, 1e4):
        logits = (rng.standard_normal((16, 10)) * scale).astype(np.float32)
        t = as_f64(logits, True)
        ref = F.cross_entropy(t, torch.from_numpy(y))
        ref.backward()
        loss, d = cross_entropy(logits, y)
        assert np.isfinite(loss) and d.dtype == np.float32
        assert abs(loss - ref.item()) <= 1e-5 * abs(ref.item())
        assert rel_err(d, t.grad.numpy()) <= 1e-5
    with pytest.raises(ValueError, match="label 10 is out of range"):
        cross_entropy(np.zeros((2, 10), np.float32), np.array([3, 10]))


def test_integer_kernels_say_they_have_no_gradient():
    node = Node("q0", "QuantizeLinear", ["x", "s", "zp"], ["y"])
    kernel = KERNELS["QuantizeLinear"](node, [None, np.float32(0.1), np.int8(0)])
    with pytest.raises(NotImplementedError, match="'q0'.*QuantizeLinear"):
        kernel.grad(np.ones(3, np.float32), [np.ones(3, np.float32), None, None], None, [True])


# -- single ops against torch.autograd ------------------------------------------------

def op_model(op, x_shape, params=(), attrs=None, opset=17):
    """A one-node graph: input 'x' and initializers ``params`` (name → array) → op → 'y'."""
    params = dict(params)
    node = helper.make_node(op, ["x", *params], ["y"], **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in params.items()])
    return edgetrain.Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def pool(op, **attrs):
    return op, (2, 3, 8, 9), {}, attrs


# id → (op, x shape, initializers, attributes, torch function of (x, *initializers), opset)
OPS = {
    "conv-groups-strides-dilations-asymmetric-pads": (
        "Conv", (2, 4, 9, 10), {"w": normal(6, 2, 3, 3, seed=1), "b": normal(6, seed=2)},
        dict(group=2, strides=[2, 1], dilations=[1, 2], pads=[1, 2, 0, 1], kernel_shape=[3, 3]),
        lambda x, w, b: F.conv2d(F.pad(x, (2, 1, 1, 0)), w, b, stride=(2, 1), dilation=(1, 2), groups=2)),
    "conv-depthwise-no-bias": (
        "Conv", (2, 3, 7, 8), {"w": normal(3, 1, 3, 3, seed=1)},
        dict(group=3, strides=[2, 2], pads=[1, 1, 1, 1]),
        lambda x, w: F.conv2d(x, w, None, stride=2, padding=1, groups=3)),
    "conv-stride-above-kernel": (
        "Conv", (1, 2, 9, 9), {"w": normal(3, 2, 2, 2, seed=1), "b": normal(3, seed=2)}, dict(strides=[3, 3]),
        lambda x, w, b: F.conv2d(x, w, b, stride=3)),
    **{f"avgpool-pad-ceil{c}-include{i}": (
        *pool("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
              ceil_mode=c, count_include_pad=i),
        lambda x, c=c, i=i: F.avg_pool2d(x, 3, 2, 1, ceil_mode=bool(c), count_include_pad=bool(i)))
       for c in (0, 1) for i in (0, 1)},
    "avgpool-ceil-partial-windows": (
        *pool("AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        lambda x: F.avg_pool2d(x, 2, 2, ceil_mode=True)),
    "maxpool-pads": (
        *pool("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        lambda x: F.max_pool2d(x, 3, 2, 1)),
    "maxpool-dilation-ceil": (
        *pool("MaxPool", kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2], ceil_mode=1),
        lambda x: F.max_pool2d(x, 2, 2, dilation=2, ceil_mode=True)),
    "globalaveragepool": (
        "GlobalAveragePool", (2, 3, 5, 6), {}, {}, lambda x: x.mean(dim=(2, 3), keepdim=True)),
    "gemm-transA-transB-alpha-beta": (
        "Gemm", (4, 5), {"b": normal(3, 4, seed=1), "c": normal(3, seed=2)},
        dict(transA=1, transB=1, alpha=0.7, beta=1.3),
        lambda x, b, c: torch.addmm(c, x.T, b.T, beta=1.3, alpha=0.7)),
    "gemm-column-bias": (
        "Gemm", (5, 4), {"b": normal(4, 3, seed=1), "c": normal(5, 1, seed=2)}, {},
        lambda x, b, c: torch.addmm(c, x, b)),
    "matmul-batched-x-matrix": (
        "MatMul", (2, 3, 4, 5), {"b": normal(5, 6, seed=1)}, {}, torch.matmul),
    "matmul-broadcast-batch": (
        "MatMul", (3, 4), {"b": normal(2, 4, 5, seed=1)}, {}, torch.matmul),
    "matmul-vector-x-batch": (
        "MatMul", (4,), {"b": normal(2, 4, 5, seed=1)}, {}, torch.matmul),
    "add-broadcast-channel": (
        "Add", (2, 3, 4, 5), {"b": normal(3, 1, 1, seed=1)}, {}, torch.add),
    "add-broadcast-both-ways": (
        "Add", (4, 1), {"b": normal(2, 3, 1, 5, seed=1)}, {}, torch.add),
    "batchnorm": (
        "BatchNormalization", (2, 3, 4, 5),
        {"scale": normal(3, seed=1), "bias": normal(3, seed=2), "mean": normal(3, seed=3),
         "var": np.float32([0.5, 1.0, 2.0])}, dict(epsilon=1e-3),
        lambda x, s, b, m, v: F.batch_norm(x, m, v, s, b, training=False, eps=1e-3)),
    "softmax-axis1": ("Softmax", (2, 3, 4), {}, dict(axis=1), lambda x: F.softmax(x, dim=1)),
    "softmax-opset11-coerced-2d": (
        "Softmax", (2, 3, 4), {}, dict(axis=1),
        lambda x: F.softmax(x.reshape(2, 12), 1).reshape(2, 3, 4), 11),
    "clip-zero-on-the-bounds": (
        "Clip", (4, 6), {"lo": np.float32(-0.5), "hi": np.float32(0.75)}, {},
        lambda x, lo, hi: torch.clamp(x, float(lo), float(hi))),  # constant bounds, as in the graph
    "relu": ("Relu", (4, 6), {}, {}, F.relu),
    "flatten-axis2": ("Flatten", (2, 3, 4, 5), {}, dict(axis=2), lambda x: x.reshape(6, 20)),
    "reshape": ("Reshape", (2, 3, 4), {"shape": np.int64([0, -1])}, {}, lambda x, s: x.reshape(2, 12)),
}


@pytest.mark.parametrize("case", OPS, ids=list(OPS))
def test_op_gradients_match_torch_autograd(case):
    op, x_shape, params, attrs, torch_fn, *opset = OPS[case]
    model = op_model(op, x_shape, params, attrs, *opset)
    x = normal(*x_shape, seed=7)
    if op in ("Clip", "Relu"):  # values on the kinks, where torch's gradient is 0
        x.flat[:3] = [-0.5, 0.75, 0.0]
    env = model.run_all(x)
    gy = normal(*env["y"].shape, seed=8)
    ours = backward(model, env, gy, wrt={"x", *params})

    leaves = {"x": as_f64(x, True)}
    leaves.update({k: as_f64(v, k not in NOT_TRAINED) for k, v in params.items()})
    y = torch_fn(*leaves.values())
    assert rel_err(env["y"], y.detach().numpy()) <= TOL  # same function first
    y.backward(as_f64(gy))
    for k, t in leaves.items():
        if k in NOT_TRAINED:
            assert k not in ours
            continue
        assert ours[k].shape == t.shape and ours[k].dtype == np.float32, k
        assert rel_err(ours[k], t.grad.numpy()) <= TOL, k


def test_maxpool_ties_send_the_gradient_to_the_first_maximum_like_torch():
    model = op_model("MaxPool", (2, 3, 8, 9),
                     attrs=dict(kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1]))
    x = np.random.default_rng(3).integers(0, 3, (2, 3, 8, 9)).astype(np.float32)  # ties everywhere
    env = model.run_all(x)
    gy = normal(*env["y"].shape, seed=4)
    tx = as_f64(x, True)
    F.max_pool2d(tx, 3, (1, 2), 1).backward(as_f64(gy))
    assert rel_err(backward(model, env, gy, wrt={"x"})["x"], tx.grad.numpy()) <= TOL


def test_a_small_graph_with_fanout_and_an_unfolded_batchnorm_matches_torch():
    """Conv → Relu → BN (not foldable: its producer is a Relu) → Add(residual to the
    Relu output) → GlobalAveragePool → Flatten → Gemm: fan-out gradients accumulate."""
    p = {"w": normal(4, 2, 3, 3, seed=1), "b": normal(4, seed=2), "s": normal(4, seed=3),
         "beta": normal(4, seed=4), "m": normal(4, seed=5), "v": np.float32([0.5, 1, 1.5, 2]),
         "fw": normal(3, 4, seed=6), "fb": normal(3, seed=7)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "s", "beta", "m", "v"], ["n"]),
             helper.make_node("Add", ["r", "n"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 2, 6, 6))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in p.items()])
    model = edgetrain.Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert model.op_counts()["BatchNormalization"] == 1
    x = normal(3, 2, 6, 6, seed=9)
    env = model.run_all(x)
    gy = normal(3, 3, seed=10)
    ours = backward(model, env, gy, wrt={"x", *p})

    t = {k: as_f64(v, k not in ("m", "v")) for k, v in {"x": x, **p}.items()}
    r = F.relu(F.conv2d(t["x"], t["w"], t["b"], padding=1))
    a = r + F.batch_norm(r, t["m"], t["v"], t["s"], t["beta"], training=False)
    F.linear(a.mean(dim=(2, 3)), t["fw"], t["fb"]).backward(as_f64(gy))
    assert set(ours) == set(t) - {"m", "v"}
    for k in ours:
        assert rel_err(ours[k], t[k].grad.numpy()) <= TOL, k


# -- float64 central differences on the kernels themselves ---------------------------

NUMERIC = ["conv-groups-strides-dilations-asymmetric-pads", "avgpool-pad-ceil1-include1", "maxpool-pads",
           "gemm-transA-transB-alpha-beta", "softmax-axis1", "matmul-vector-x-batch"]


@pytest.mark.parametrize("case", NUMERIC)
def test_kernel_gradients_match_central_differences_in_float64(case):
    op, x_shape, params, attrs, _, *opset = OPS[case]
    model = op_model(op, x_shape, params, attrs, *opset)
    kernel = model.kernels[0]
    inputs = [np.random.default_rng(5).standard_normal(x_shape)]
    inputs += [v.astype(np.float64) for v in params.values()]
    y = kernel.run(*inputs)
    assert y.dtype == np.float64
    gy = np.random.default_rng(6).standard_normal(y.shape)
    analytic = kernel.grad(gy, inputs, y, [True] * len(inputs))

    h = 1e-6
    for a, g in zip(inputs, analytic):
        numeric = np.empty_like(a)
        for i in range(a.size):
            orig = a.flat[i]
            a.flat[i] = orig + h
            up = float((kernel.run(*inputs) * gy).sum())
            a.flat[i] = orig - h
            down = float((kernel.run(*inputs) * gy).sum())
            a.flat[i] = orig
            numeric.flat[i] = (up - down) / (2 * h)
        assert g.dtype == np.float64
        assert rel_err(g, numeric) <= 1e-7
