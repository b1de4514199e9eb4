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
from edgetrain.trainer import Trainer, TrainingError
from edgetrain import zo
from edgetrain.zo import GaussianPerturbation, gaussian_direction
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
    trainer = Trainer(edgetrain.load(trained_onnx("lenet5")), method="elasticzo", cut=2, lr=0.05, zo_lr=0.02,
                      eps=0.01, q=3)
    tail = {n for l in trainer.plan.bp_layers for n in (l.weight, l.bias)}
    grads = autodiff.backward(reference, env, dlogits, wrt=tail)
    before = weights(trainer)
    m = trainer.step(x, y)
    after = weights(trainer)
    for name in tail:  # BP tail: θ − lr·∇θ, with ∇ from a clean pass
        np.testing.assert_allclose(after[name], before[name] - 0.05 * grads[name], rtol=0, atol=1e-6)
    # ZO head: θ − zo_lr·u·Σ_j g_j·z_j / ‖g‖, u the rms of the layer's weight
    g = np.array(m["zo_grad"], dtype=np.float64)
    assert g.shape == (3,) and np.all(g != 0)
    seeds = [edgetrain.prng.step_seed(edgetrain.prng.step_seed(0, 0), j, salt=1) for j in range(3)]
    for layer in trainer.plan.zo_layers:
        u = np.sqrt(np.mean(before[layer.weight].astype(np.float64) ** 2))
        for name in (layer.weight, layer.bias):
            k = [n for l in trainer.plan.zo_layers for n in (l.weight, l.bias)].index(name)
            step = sum(gj * gaussian_direction(s, k, before[name].shape) for gj, s in zip(g, seeds))
            np.testing.assert_allclose(after[name], before[name] - 0.02 * u * step / np.linalg.norm(g),
                                       rtol=0, atol=1e-5 * max(1.0, np.abs(before[name]).max()))


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


def _grads(model, x, y, names):
    env = model.run_all(x)
    _, dlogits = autodiff.cross_entropy(env[model.output_names[0]], y)
    return autodiff.backward(model, env, dlogits, wrt=set(names))


def _torch_loss(params, x, y):
    """The small MLP's mean cross-entropy in float64, by torch."""
    t = {n: torch.from_numpy(np.asarray(v, dtype=np.float64)) for n, v in params.items()}
    h = torch.from_numpy(x.astype(np.float64)) @ t["w1"].T + t["b1"]
    return float(torch.nn.functional.cross_entropy(h @ t["w2"].T + t["b2"], torch.from_numpy(y)))


@pytest.mark.parametrize("q", [1, 4])
def test_zo_estimate_is_the_true_gradient_in_expectation(q, tmp_path):
    """One-sided probes along q directions: each difference L(θ + εuz) − L(θ) is torch's
    (float64) at the same points, and averaged over steps Σ_j g_j·u·z_j / q (g_j = d_j/ε) is
    the gradient: the curvature term (ε/2)·zᵀHz of a one-sided difference is even in z,
    so its product with z averages out. The gradient comes from backprop, itself checked
    against torch in test_autodiff.py."""
    model = small_mlp(tmp_path)
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    names = sorted(model.params)
    grads = _grads(model, x, y, names)
    units = {n: 1.0 for n in names}  # u = 1: the estimate is of ∇L itself
    theta = {n: model.params[n].copy() for n in names}

    def loss():
        return autodiff.cross_entropy(model.run(x), y)[0]
    base = loss()
    eps = 1e-3
    estimate = {n: np.zeros(model.params[n].shape) for n in names}
    steps = 4000 // q  # 4000 directions in all, whatever q
    for step in range(steps):
        directions = [GaussianPerturbation(model.params, units, 10 * step + j, eps) for j in range(q)]
        diffs = zo.probe(directions, loss, base)
        for direction, d in zip(directions, diffs):
            zs = {n: direction.direction(n).astype(np.float64) for n in names}
            if step < 25:  # float32 losses of O(1) differ from float64 by ≈ 1e-7 each: 4e-4 after /ε
                ref = _torch_loss({n: theta[n] + eps * zs[n] for n in names}, x, y) - _torch_loss(theta, x, y)
                assert d / eps == pytest.approx(ref / eps, abs=2e-3)
            for n in names:
                estimate[n] += d / eps * zs[n] / (q * steps)
    for n in names:  # the walks back leave float32 rounding only
        np.testing.assert_allclose(model.params[n], theta[n], rtol=0, atol=1e-5)
    est = np.concatenate([estimate[n].ravel() for n in names])
    true = np.concatenate([grads[n].ravel() for n in names])
    # d = 81 parameters, N = 4000 directions: E‖mean − ∇‖² = (d + 1)‖∇‖²/N, a relative error of
    # about √(82/4000) ≈ 0.14 with a spread of about √(2/d) ≈ 16 % of that
    assert np.linalg.norm(est - true) / np.linalg.norm(true) < 0.3
    assert est @ true / np.linalg.norm(est) / np.linalg.norm(true) > 0.95


def _two_layer(tmp_path, width: int, scale: float):
    """8 → width → 3, two Gemms (smooth: no kink for ±ε to straddle) whose first layer's size
    and scale vary (``width`` rows of weights ×``scale``)."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    rng = np.random.default_rng(width)
    arrays = {"w1": scale * rng.standard_normal((width, 8)), "b1": scale * rng.standard_normal(width),
              "w2": rng.standard_normal((3, width)) / np.sqrt(width), "b2": np.zeros(3)}
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in arrays.items()]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    path = tmp_path / f"toy{width}_{scale}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return edgetrain.load(path)


@pytest.mark.parametrize("width, scale", [(4, 1.0), (4, 0.01), (2048, 1.0), (2048, 30.0)])
def test_zo_step_is_relative_to_each_layer_whatever_its_size(width, scale, tmp_path):
    """A ZO step moves the head layer by zo_lr times its weight rms, in rms over its weights,
    whatever the layer's size and scale: the rms of Σ_j g_j·z_j/‖g‖ over n independent
    Gaussian entries is 1 with a relative spread of 1/√(2n) (≤ 4σ allowed below); a raw SPSA
    step η·g·z would scale with |g|, which grows with the layer's width and shrinks with
    its scale."""
    model = _two_layer(tmp_path, width, scale)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 3, 32)
    trainer = Trainer(model, method="elasticzo", cut=1, zo_lr=0.01, q=2, lr=1e-30)
    w1 = model.params["w1"].astype(np.float64)
    trainer.step(x, y)
    moved = model.params["w1"].astype(np.float64) - w1
    ratio = np.sqrt(np.mean(moved ** 2)) / np.sqrt(np.mean(w1 ** 2)) / 0.01
    assert abs(ratio - 1) <= 4 / np.sqrt(2 * w1.size)


@pytest.mark.parametrize("delta", [3, 40_000, 3_000_000_000])
@pytest.mark.parametrize("bits", [0, 2])
def test_int8_zo_update_is_normalised_to_its_bit_width(delta, bits):
    """``sign_update`` moves each weight by SR(ΔL·z/2^s) with s = bit_length(|ΔL|) − bits: the
    expected move |ΔL|/2^s lies in [2^(bits−1), 2^bits) whatever ΔL's magnitude, no weight
    moves by 2^bits + 1 or more, and the moves' mean is that expectation within 4σ (SR
    picks one of two neighbours, σ ≤ 1/2 per weight)."""
    n = 20_000
    params = {"w": np.zeros(n, dtype=np.int8)}
    direction = zo.SignPerturbation(params, ["w"], seed=5, eps_lsb=1)
    zo.sign_update([direction], [delta], bits, seed=9)
    z = edgetrain.prng.rademacher(5, 0, n).astype(np.int64)
    moved = -params["w"].astype(np.int64) * z  # along −z: the step descends
    shift = max(0, delta.bit_length() - bits)
    expected = delta / 2 ** shift
    assert 2 ** (bits - 1) <= expected < 2 ** bits
    assert moved.min() >= np.floor(expected) and moved.max() <= np.ceil(expected)
    assert abs(moved.mean() - expected) <= 4 * 0.5 / np.sqrt(n)


# -- int8 ----------------------------------------------------------------------------

def test_int8_step_creates_no_float_array(mnist, lenet5_int8, monkeypatch, forbid_float_arrays):
    trainer = Trainer(edgetrain.load(lenet5_int8, float_gemm=False), method="elasticzo-int8", cut=2)
    x, y = batch(mnist)
    xq = trainer.model.quantize_input(x)  # the input quantisation happens first
    params = trainer.model.params
    for l in trainer.layers:
        for n in (l.weight, l.bias):
            if n:
                params[n] = params[n].view(IntegerOnly)
    forbid_float_arrays()
    before = {n: np.asarray(v).copy() for n, v in params.items() if v.dtype == np.int8}
    m = trainer._step.core(xq.view(IntegerOnly), y, seed=123)
    monkeypatch.undo()
    assert isinstance(m["loss_q16"], int) and m["loss_q16"] > 0
    changed = [n for n, v in before.items() if not np.array_equal(v, params[n])]
    assert changed  # the step did train something


def test_int8_float_gemm_trains_bit_identically(mnist, lenet5_int8):
    runs = []
    for float_gemm in (False, True):
        trainer = Trainer(edgetrain.load(lenet5_int8, float_gemm=float_gemm), method="elasticzo-int8", cut=2)
        trainer.fit(mnist.x_train[:128], mnist.y_train[:128], epochs=1, progress=False)
        runs.append(weights(trainer))
    assert all(np.array_equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_int8_perturbation_is_undone_exactly(mnist, lenet5_int8):
    """With the update left out, what remains of a step is the ±ε walk of each direction,
    undone exactly, after the step's projection of the head into [−(127 − ε), 127 − ε] (so
    w ± ε never saturates)."""
    trainer = Trainer(edgetrain.load(lenet5_int8), method="elasticzo-int8", cut=0, eps_lsb=2, q=3)
    before = weights(trainer)
    assert any(np.abs(v).max() > 125 for n, v in before.items() if v.dtype == np.int8)  # the clip is exercised
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zo, "sign_update", lambda *a, **k: None)
        m = trainer.step(*batch(mnist))
    assert len(m["zo_delta_loss_q16"]) == 3 and any(m["zo_delta_loss_q16"])
    for n, v in weights(trainer).items():
        assert np.array_equal(v, np.clip(before[n], -125, 125) if v.dtype == np.int8 else before[n]), n


@pytest.mark.parametrize("method", ["elasticzo", "elasticzo-int8"])
def test_constructing_a_trainer_changes_nothing_in_the_model(method, mnist, trained_onnx, lenet5_int8):
    model = edgetrain.load(lenet5_int8 if method.endswith("int8") else trained_onnx("lenet5"))
    params = {n: v.copy() for n, v in model.params.items()}
    before = model.run(mnist.x_test[:100])
    Trainer(model, method=method, cut=2)
    assert all(np.array_equal(v, params[n]) for n, v in model.params.items())
    assert np.array_equal(model.run(mnist.x_test[:100]), before)


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
    last = trainer.plan.bp_layers[-1].weight
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
        # the first checkpoint (step 0, trained weights) when the kill came before the saver's first save
        assert t.step_count == 0 or (np.all(w == w.flat[0]) and w.flat[0] == t.step_count)
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


@pytest.mark.parametrize("method, kwargs, match", [
    ("elasticzo", {"lr": -1.0}, r"lr=-1\.0 must be a finite real > 0"),
    ("elasticzo", {"lr": float("nan")}, r"lr=nan must be"),
    ("elasticzo", {"zo_lr": float("inf")}, r"zo_lr=inf must be"),
    ("zo", {"eps": 0.0}, r"eps=0\.0 must be"),
    ("elasticzo", {"q": 0}, r"q=0 must be an int in \[1, 64\]"),
    ("elasticzo", {"q": 2.0}, r"q=2\.0 must be an int"),
    ("bp", {"zo_lr": 1e-3}, r"zo_lr=0\.001: method='bp' takes \['lr'\]"),
    ("elasticzo", {"lr_bits": 3}, r"lr_bits=3: method='elasticzo' takes"),
    ("elasticzo-int8", {"lr": 0.05},
     r"lr=0\.05: method='elasticzo-int8' takes \['eps_lsb', 'lr_bits', 'q', 'zo_bits', 'zo_layers'\]"),
    ("elasticzo-int8", {"q": 0}, r"q=0 must be an int in \[1, 64\]"),
    ("elasticzo-int8", {"q": 2.0}, r"q=2\.0 must be an int in \[1, 64\]"),
    ("elasticzo-int8", {"zo_bits": 1.5}, r"zo_bits=1\.5 must be an int in \[-7, 7\]"),
    ("elasticzo-int8", {"zo_bits": 8}, r"zo_bits=8 must be an int in \[-7, 7\]"),
    ("elasticzo", {"zo_lr": 2.0}, r"zo_lr=2\.0 must be a real in \(0, 1\]"),
    ("elasticzo-int8", {"eps_lsb": 127}, r"eps_lsb=127 must be an int in \[1, 63\]"),
    ("elasticzo-int8", {"lr_bits": 0}, r"lr_bits=0 must be an int in \[1, 7\]"),
    ("elasticzo", {"batch_size": 0}, r"batch_size=0 must be a positive int"),
])
def test_step_parameters_are_checked_with_their_units(method, kwargs, match, trained_onnx, lenet5_int8):
    """A number that would be rounded, ignored or diverge at once is refused, naming it."""
    model = edgetrain.load(lenet5_int8 if method.endswith("int8") else trained_onnx("lenet5"))
    with pytest.raises(TrainingError, match=match):
        Trainer(model, method=method, **kwargs)


@pytest.mark.parametrize("method", ["elasticzo", "elasticzo-int8"])
def test_memory_report_measures_a_step_and_leaves_the_trainer_as_it_was(method, mnist, trained_onnx, lenet5_int8):
    trainer = Trainer(edgetrain.load(lenet5_int8 if method.endswith("int8") else trained_onnx("lenet5")),
                      method=method, cut=2)
    before = {n: v.copy() for n, v in trainer.model.params.items()}
    report = trainer.memory_report(*batch(mnist))
    assert report["step_traced_bytes"] > report["inference_traced_bytes"] > 0
    assert trainer.step_count == 0
    assert all(np.array_equal(v, before[n]) for n, v in trainer.model.params.items())


def _damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[:len(data) // 2]
    if how == "empty":
        return b""
    if how == "not a zip":
        return b"PK but not really a zip file" * 10
    if how == "flipped byte":  # inside a parameter array: the zip's CRC notices
        i = data.index(b"param/") + 200
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    # a whole, readable file whose weight changed but whose digest did not: the digest notices
    import io
    with np.load(io.BytesIO(data)) as f:
        arrays = {k: f[k].copy() for k in f.files}
    name = next(k for k in arrays if k.startswith("param/"))
    arrays[name].flat[0] += 1
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.mark.parametrize("how", ["truncated", "empty", "not a zip", "flipped byte", "altered weight"])
def test_a_damaged_checkpoint_raises_training_error(how, trained_onnx, tmp_path):
    ck = tmp_path / "ck.npz"
    Trainer(edgetrain.load(trained_onnx("mlp16")), method="elasticzo", cut=1).save(ck)
    assert Trainer.load(ck).step_count == 0
    ck.write_bytes(_damaged(ck.read_bytes(), how))
    with pytest.raises(TrainingError, match="ck.npz" + (".*SHA-256" if how == "altered weight" else "")):
        Trainer.load(ck)


def test_a_checkpoint_of_another_format_version_is_refused(trained_onnx, tmp_path, monkeypatch):
    from edgetrain import checkpoint
    ck = tmp_path / "ck.npz"
    monkeypatch.setattr(checkpoint, "FORMAT", 99)
    Trainer(edgetrain.load(trained_onnx("mlp16")), method="elasticzo", cut=1).save(ck)
    monkeypatch.undo()
    with pytest.raises(TrainingError, match="format 99; this edgetrain reads format 4"):
        Trainer.load(ck)


def test_trainable_freezes_the_rest(mnist, trained_onnx):
    model = edgetrain.load(trained_onnx("lenet5"))
    last = [n.name for n in model.nodes if n.op_type == "Gemm"][-1]
    trainer = Trainer(model, method="bp", trainable=[last])
    frozen = {n: v.copy() for n, v in model.params.items()}
    trainer.step(*batch(mnist))
    changed = {n for n, v in model.params.items() if not np.array_equal(v, frozen[n])}
    assert changed == {trainer.layers[0].weight, trainer.layers[0].bias}



def test_int8_trainable_freezes_a_layer_the_tail_walks_through(mnist, lenet5_int8):
    """The int8 tail's integer walk passes every layer below the last; a layer ``trainable``
    leaves out keeps its weights (the walk used to update every layer it passed)."""
    model = edgetrain.load(lenet5_int8)
    fcs = [l.weight for l in model.layers()][-3:]
    trainer = Trainer(model, method="elasticzo-int8", cut=2, trainable=fcs[:2], batch_size=32)
    frozen = {n: v.copy() for n, v in model.params.items()}
    trainer.step(*batch(mnist))
    changed = {n for n, v in model.params.items() if not np.array_equal(v, frozen[n])}
    assert changed == set(fcs[:2])

# -- sparse ZO (zo_layers) and the int8 estimator ---------------------------------------

def test_zo_layers_trains_only_the_heads_first_layers(mnist, trained_onnx):
    """``zo_layers=1``: the ZO perturbs and steps the head's first layer only, the rest of the
    head stays as it was and the BP tail trains; 0 trains every head layer."""
    x, y = batch(mnist)
    for zo_layers, moving in ((1, 1), (2, 2), (0, 3)):
        model = edgetrain.load(trained_onnx("lenet5"))
        trainer = Trainer(model, method="elasticzo", cut=2, zo_layers=zo_layers)
        layers = model.layers()
        assert [l.name for l in trainer.plan.zo_layers] == [l.name for l in layers[:moving]]
        before = {n: v.copy() for n, v in model.params.items()}
        trainer.step(x, y)
        changed = {n for n, v in model.params.items() if not np.array_equal(v, before[n])}
        expect = {n for l in layers[:moving] + layers[-2:] for n in (l.weight, l.bias)}
        assert changed == expect


def test_sparse_zo_estimate_is_the_gradient_of_the_perturbed_tensors(tmp_path):
    """Perturbing a subset S of the tensors (w1, b1 of the small MLP: sparse ZO), the mean of
    Σ_j g_j·z_j/q over steps is ∇_S L (backprop, checked against torch in test_autodiff.py),
    and the other tensors neither move nor enter the estimate: the differences are those of
    L restricted to S, each checked against torch's float64 loss at the same points."""
    model = small_mlp(tmp_path)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    subset = ["b1", "w1"]
    grads = _grads(model, x, y, subset)
    theta = {n: model.params[n].copy() for n in model.params}

    def loss():
        return autodiff.cross_entropy(model.run(x), y)[0]
    base, eps, q = loss(), 1e-3, 2
    estimate = {n: np.zeros(model.params[n].shape) for n in subset}
    steps = 3000 // q
    for step in range(steps):
        directions = [GaussianPerturbation(model.params, {n: 1.0 for n in subset}, 7 * step + j, eps)
                      for j in range(q)]
        diffs = zo.probe(directions, loss, base)
        for direction, d in zip(directions, diffs):
            zs = {n: direction.direction(n).astype(np.float64) for n in subset}
            if step < 10:
                moved = {**theta, **{n: theta[n] + eps * zs[n] for n in subset}}
                ref = _torch_loss(moved, x, y) - _torch_loss(theta, x, y)
                assert d / eps == pytest.approx(ref / eps, abs=2e-3)
            for n in subset:
                estimate[n] += d / eps * zs[n] / (q * steps)
    for n in ("w2", "b2"):
        assert np.array_equal(model.params[n], theta[n])
    est = np.concatenate([estimate[n].ravel() for n in subset])
    true = np.concatenate([grads[n].ravel() for n in subset])
    # d = 54 parameters, N = 3000 directions: relative error ≈ √(55/3000) ≈ 0.14
    assert np.linalg.norm(est - true) / np.linalg.norm(true) < 0.3
    assert est @ true / np.linalg.norm(est) / np.linalg.norm(true) > 0.95


@pytest.mark.parametrize("native", [False, True])
def test_int8_zo_step_descends_the_integer_gradient_in_expectation(native):
    """The int8 estimator on an integer loss with a known gradient: L(w) = Σ_i c_i·(w_i − t_i)²
    over int8 w, so ∇L = 2c⊙(w − t). Each step probes q = 2 sign directions of ε LSBs
    (``probe``: exact integer differences ΔL_j = 2ε·∇L·z_j + ε²Σc, the second term even in z)
    and ``sign_update`` moves w by −SR(Σ_j ΔL_j·z_j / 2^s). From the same w every time,
    the mean move over many seeds points along −∇L: cosine > 0.95, and its size per weight
    is at most 2^bits. Numpy and the native kernels give the same moves (bits)."""
    kernels = edgetrain.backend.select("native").kernels if native else None
    if native and kernels is None:
        pytest.skip("no native kernels")
    rng = np.random.default_rng(3)
    n, eps, bits, q = 48, 2, 3, 2
    w0 = rng.integers(-60, 60, n).astype(np.int8)
    t = rng.integers(-60, 60, n)
    c = rng.integers(1, 4, n)
    grad = 2 * c * (w0.astype(np.int64) - t)

    def loss():
        return int(np.sum(c * (params["w"].astype(np.int64) - t) ** 2))
    total = np.zeros(n, dtype=np.int64)
    trials = 4000
    for s in range(trials):
        params = {"w": w0.copy()}
        directions = [zo.SignPerturbation(params, ["w"], 1000 * s + j, eps, native=kernels) for j in range(q)]
        directions[0].clip()
        base = loss()
        diffs = zo.probe(directions, loss, base)
        assert all(isinstance(d, int) for d in diffs)
        assert np.array_equal(params["w"], w0)  # the walk returns exactly
        zo.sign_update(directions, diffs, bits, seed=s)
        moved = params["w"].astype(np.int64) - w0
        assert np.abs(moved).max() <= 2 ** bits
        total += moved
    mean = total / trials
    assert -mean @ grad / np.linalg.norm(mean) / np.linalg.norm(grad) > 0.95
