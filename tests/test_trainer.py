"""Trainer: steps against torch, the ZO estimator against the true directional
derivative, integer-only int8 steps, rollback, validation, checkpoints and export."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import edgetrain
from edgetrain import autodiff
from edgetrain.trainer import Trainer, TrainingError, gaussian_direction, spsa_gradient
from conftest import IntegerOnly

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def lenet5_int8(int8_onnx):
    return int8_onnx()


def batch(mnist, n=32, start=0):
    return mnist.x_train[start:start + n], mnist.y_train[start:start + n]


def weights(trainer):
    return {n: trainer.model.params[n].copy() for l in trainer.layers for n in (l.weight, l.bias) if n}


# -- fp32 methods against torch ----------------------------------------------------

def test_bp_step_equals_torch_sgd_step(mnist, tmp_path):
    """One `bp` step = one torch SGD step on the same module and batch."""
    from edgetrain.export import build, export_onnx
    module = build("lenet5", seed=3)
    export_onnx(module, tmp_path / "m.onnx")
    trainer = Trainer(edgetrain.load(tmp_path / "m.onnx"), method="bp", lr=0.1)
    x, y = batch(mnist)
    trainer.step(x, y)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(x)), torch.from_numpy(y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    ours = sorted((v for v in weights(trainer).values()), key=lambda a: (a.shape, float(a.sum())))
    theirs = sorted((p.detach().numpy() for p in module.parameters()), key=lambda a: (a.shape, float(a.sum())))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


def test_elasticzo_tail_gets_exact_gradient_and_head_moves_along_z(mnist, trained_onnx):
    x, y = batch(mnist)
    reference = edgetrain.load(trained_onnx("lenet5"))
    env = reference.run_all(x)
    _, dlogits = autodiff.cross_entropy(env[reference.output_names[0]], y)
    trainer = Trainer(edgetrain.load(trained_onnx("lenet5")), method="elasticzo", cut=2, lr=0.05, zo_lr=1e-3)
    tail = {n for l in trainer.bp_layers for n in (l.weight, l.bias)}
    grads = autodiff.backward(reference, env, dlogits, wrt=tail)
    before = weights(trainer)
    m = trainer.step(x, y)
    after = weights(trainer)
    for name in tail:  # BP tail: θ − lr·∇θ, with ∇ from a clean pass
        np.testing.assert_allclose(after[name], before[name] - 0.05 * grads[name], rtol=0, atol=1e-6)
    seed = edgetrain.prng.step_seed(edgetrain.prng.step_seed(0, 0), 0, salt=1)
    for k, name in enumerate(trainer._zo_params()):  # ZO head: θ − zo_lr·g·z
        z = gaussian_direction(seed, k, before[name].shape)
        np.testing.assert_allclose(after[name], before[name] - 1e-3 * m["zo_grad"] * z, rtol=0, atol=1e-5)


def small_mlp(tmp_path):
    """8 → 6 → 3, two Gemms: smooth (no Relu kink for ±ε to straddle) and small
    enough that a mean over seeds converges."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (6, 8)), ("b1", (6,)), ("w2", (3, 6)), ("b2", (3,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    path = tmp_path / "small.onnx"
    import onnx
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return edgetrain.load(path)


def test_zo_estimate_matches_true_directional_derivative(tmp_path):
    """Per seed, (L⁺ − L⁻)/2ε equals the directional derivative ∇L·z (∇L from
    backprop, itself checked against torch); the mean of g·z over many seeds is ∇L."""
    model = small_mlp(tmp_path)
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    names = sorted(model.params)
    env = model.run_all(x)
    _, dlogits = autodiff.cross_entropy(env[model.output_names[0]], y)
    grads = autodiff.backward(model, env, dlogits, wrt=set(names))

    def loss():
        return (autodiff.cross_entropy(model.run(x), y)[0],)
    estimate = {n: np.zeros(model.params[n].shape) for n in names}
    seeds = range(4000)
    for seed in seeds:
        g = spsa_gradient(model.params, names, seed, 1e-3, loss)[0]
        zs = [gaussian_direction(seed, k, model.params[n].shape) for k, n in enumerate(names)]
        exact = sum(float((grads[n] * z).sum()) for n, z in zip(names, zs))
        assert g == pytest.approx(exact, rel=1e-2, abs=1e-3)
        for n, z in zip(names, zs):
            estimate[n] += g * z / len(seeds)
    est = np.concatenate([estimate[n].ravel() for n in names])
    true = np.concatenate([grads[n].ravel() for n in names])
    # d = 81 parameters, 4000 seeds: the relative error of the mean is about √(d/n) ≈ 0.14
    assert np.linalg.norm(est - true) / np.linalg.norm(true) < 0.3
    assert est @ true / np.linalg.norm(est) / np.linalg.norm(true) > 0.95


# -- int8 ----------------------------------------------------------------------------

def test_int8_step_creates_no_float_array(mnist, lenet5_int8, monkeypatch, forbid_float_arrays):
    trainer = Trainer(edgetrain.load(lenet5_int8), method="elasticzo-int8", cut=2)
    x, y = batch(mnist)
    xq = trainer.model.kernels[0].run(x, None, None)  # the input quantisation happens first
    params = trainer.model.params
    for l in trainer.layers:
        for n in (l.weight, l.bias):
            if n:
                params[n] = params[n].view(IntegerOnly)
    forbid_float_arrays()
    before = {n: np.asarray(v).copy() for n, v in params.items() if v.dtype == np.int8}
    m = trainer._step_int8_core(xq.view(IntegerOnly), y, seed=123)
    monkeypatch.undo()
    assert isinstance(m["loss_q16"], int) and m["loss_q16"] > 0
    changed = [n for n, v in before.items() if not np.array_equal(v, params[n])]
    assert changed  # the step did train something


def test_int8_float_gemm_trains_bit_identically(mnist, lenet5_int8):
    runs = []
    for float_gemm in (False, True):
        trainer = Trainer(edgetrain.load(lenet5_int8), method="elasticzo-int8", cut=2, float_gemm=float_gemm)
        trainer.fit(mnist.x_train[:128], mnist.y_train[:128], epochs=1, progress=False)
        runs.append(weights(trainer))
    assert all(np.array_equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_int8_perturbation_is_undone_exactly(mnist, lenet5_int8):
    trainer = Trainer(edgetrain.load(lenet5_int8), method="elasticzo-int8", cut=0, zo_lr=2.0 ** -60)
    before = weights(trainer)
    trainer.step(*batch(mnist))  # update rounds to 0 at this tiny rate: only the ±ε walk happened
    for n, v in weights(trainer).items():
        assert np.array_equal(v, before[n]), n


# -- robustness ------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (lambda x, y: (x, y + 10), "labels must be in"),
    (lambda x, y: (x, -y - 1), "labels must be in"),
    (lambda x, y: (x[:, 0], y), "x has shape"),
    (lambda x, y: (x, y[:5]), "y has shape"),
    (lambda x, y: (x, y.astype(np.float32)), "integer class labels"),
    (lambda x, y: (x.astype(np.int64), y), "x must hold floats"),
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), y), "NaN"),
])
@pytest.mark.parametrize("method", ["bp", "elasticzo"])
def test_bad_batches_raise_and_touch_nothing(bad, match, method, mnist, trained_onnx):
    trainer = Trainer(edgetrain.load(trained_onnx("lenet5")), method=method)
    before = weights(trainer)
    with pytest.raises(TrainingError, match=match):
        trainer.step(*bad(*batch(mnist)))
    assert all(np.array_equal(v, before[n]) for n, v in weights(trainer).items())
    assert trainer.step_count == 0


def test_non_finite_loss_is_rolled_back(mnist, trained_onnx):
    trainer = Trainer(edgetrain.load(trained_onnx("lenet5")), method="elasticzo", cut=1)
    last = trainer.bp_layers[-1].weight
    trainer.model.params[last][0, 0] = np.float32(3e38)  # logits overflow to inf
    before = weights(trainer)
    m = trainer.step(*batch(mnist))
    assert m["rolled_back"] and "not finite" in m["reason"]
    for n, v in weights(trainer).items():
        np.testing.assert_allclose(v, before[n], rtol=1e-6, atol=1e-6)  # ±ε walk rounds, nothing more
    assert trainer.step_count == 0


@pytest.mark.parametrize("method", ["elasticzo", "elasticzo-int8"])
def test_resumed_fit_is_bit_identical(method, mnist, trained_onnx, lenet5_int8, tmp_path):
    path = lenet5_int8 if method.endswith("int8") else trained_onnx("lenet5")
    x, y = mnist.x_train[:256], mnist.y_train[:256]
    straight = Trainer(edgetrain.load(path), method=method, cut=2, seed=7)
    straight.fit(x, y, epochs=3, progress=False)
    first = Trainer(edgetrain.load(path), method=method, cut=2, seed=7)
    first.fit(x, y, epochs=1, checkpoint=tmp_path / "ck.npz", progress=False)
    resumed = Trainer.load(tmp_path / "ck.npz")
    assert resumed.step_count == first.step_count
    resumed.fit(x, y, epochs=3, progress=False)
    for n, v in weights(straight).items():
        assert np.array_equal(v, weights(resumed)[n]), n


SAVER = """
import sys, numpy as np, edgetrain
from edgetrain.trainer import Trainer
t = Trainer(edgetrain.load(sys.argv[1]), method="elasticzo", cut=1)
print("ready", flush=True)
i = 0
while True:
    i += 1
    t.model.params[t.layers[-1].weight][...] = i  # each checkpoint differs
    t.step_count = i
    t.save(sys.argv[2])
"""


def test_killed_save_never_corrupts_the_checkpoint(trained_onnx, tmp_path):
    ck = tmp_path / "ck.npz"
    Trainer(edgetrain.load(trained_onnx("mlp")), method="elasticzo", cut=1).save(ck)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(trained_onnx("mlp")), str(ck)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t = Trainer.load(ck)  # always a whole checkpoint: the previous or a newer one
        w = t.model.params[t.layers[-1].weight]
        assert np.all(w == w.flat[0]) and (t.step_count == 0 or w.flat[0] == t.step_count)
        seen.add(t.step_count)
    assert len(seen) > 1  # the kills did land between saves


@pytest.mark.parametrize("method", ["elasticzo", "elasticzo-int8"])
def test_export_runs_in_onnxruntime_with_our_outputs(method, mnist, trained_onnx, lenet5_int8, tmp_path):
    path = lenet5_int8 if method.endswith("int8") else trained_onnx("lenet5")
    trainer = Trainer(edgetrain.load(path), method=method, cut=2)
    trainer.fit(mnist.x_train[:128], mnist.y_train[:128], epochs=1, progress=False)
    trainer.export(tmp_path / "trained.onnx")
    ours = edgetrain.load(tmp_path / "trained.onnx").run(mnist.x_test[:200])
    assert np.array_equal(ours, trainer.model.run(mnist.x_test[:200]))
    sess = ort.InferenceSession(str(tmp_path / "trained.onnx"), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: mnist.x_test[:200]})[0]
    if method.endswith("int8"):
        assert (ours == ref).mean() >= 0.999
        assert {"QLinearConv", "QGemm"} <= {n.op_type for n in trainer.model.nodes}
    else:
        assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_bad_configuration_names_the_argument(trained_onnx, lenet5_int8):
    model = edgetrain.load(trained_onnx("lenet5"))
    with pytest.raises(TrainingError, match="method='sgd'"):
        Trainer(model, method="sgd")
    with pytest.raises(TrainingError, match="cut=9"):
        Trainer(model, method="elasticzo", cut=9)
    with pytest.raises(TrainingError, match="trainable=\\['nope'\\]"):
        Trainer(model, trainable=["nope"])
    with pytest.raises(TrainingError, match="integer-only int8 model"):
        Trainer(model, method="elasticzo-int8")
    with pytest.raises(TrainingError, match="elasticzo-int8"):
        Trainer(edgetrain.load(lenet5_int8), method="elasticzo")
    with pytest.raises(TrainingError, match="integer BP supports"):
        Trainer(edgetrain.load(lenet5_int8), method="elasticzo-int8", cut=5)


def test_trainable_freezes_the_rest(mnist, trained_onnx):
    model = edgetrain.load(trained_onnx("lenet5"))
    last = [n.name for n in model.nodes if n.op_type == "Gemm"][-1]
    trainer = Trainer(model, method="bp", trainable=[last])
    frozen = {n: v.copy() for n, v in model.params.items()}
    trainer.step(*batch(mnist))
    changed = {n for n, v in model.params.items() if not np.array_equal(v, frozen[n])}
    assert changed == {trainer.layers[0].weight, trainer.layers[0].bias}
