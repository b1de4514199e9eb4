"""The native kernels (rust/kernels, `edgetrain_kernels`) against references nobody here wrote
the native code for: int64 numpy products, and the numpy reference kernels bit for bit,
on every instruction-set path this CPU offers (the scalar one included), forced in turn.

Skipped where the wheel is not installed (a device install); the README's test command
installs it, so CI runs these.
"""
import json

import numpy as np
import pytest

import edgetrain
from edgetrain import backend, quant
from edgetrain.kernels import KERNELS, Node
from edgetrain.kernels._window import window_geometry

from test_runtime import _save, avgpool_net, ort_quantize

native = pytest.importorskip("edgetrain_kernels")
PATHS = native.available_paths()


@pytest.fixture(params=PATHS)
def kernels(request):
    return native.Kernels(request.param)


def test_paths_are_offered_and_forced_by_name(monkeypatch):
    assert PATHS[0] == "scalar" and native.Kernels().path == PATHS[-1]
    for path in PATHS:
        assert backend.select(f"native:{path}").kernels.path == path
        monkeypatch.setenv(backend.PATH_ENV, path)
        assert backend.select("native").kernels.path == path
    with pytest.raises(ValueError, match="not one of"):
        native.Kernels("neon-sdot")
    with pytest.raises(ValueError, match="backend='numpy-ish'"):
        backend.select("numpy-ish")
    monkeypatch.setenv(backend.BACKEND_ENV, "numpy")
    assert backend.select().name == "numpy" and backend.select().kernels is None


def test_info_names_the_backend(capsys, monkeypatch, int8_onnx):
    from edgetrain.cli import main
    monkeypatch.delenv(backend.PATH_ENV, raising=False)  # a forced path would be named instead
    for env, expect in (("numpy", "numpy"), ("native", f"native ({PATHS[-1]})")):
        monkeypatch.setenv(backend.BACKEND_ENV, env)
        assert main(["info", str(int8_onnx()), "--json"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["backend"] == expect


def _bytes(rng, shape, dtype):
    info = np.iinfo(dtype)
    v = rng.integers(info.min, info.max + 1, size=shape, dtype=np.int64)
    flat = v.reshape(-1)
    flat[: min(3, flat.size)] = [info.min, info.max, info.min + 1][: min(3, flat.size)]  # the extremes
    return v.astype(dtype)


# rows, k, n: K not a multiple of 4, 16 or 64; N = 1; a single row
GEMM_SHAPES = [(1, 1, 1), (1, 400, 120), (7, 3, 1), (32, 120, 84), (64, 84, 10), (5, 1027, 33), (17, 64, 16), (3, 5, 70)]


@pytest.mark.parametrize("rows,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("x_dtype,w_dtype", [(np.int8, np.int8), (np.uint8, np.int8), (np.int8, np.uint8)])
def test_gemm_accumulators_equal_int64_products(kernels, rows, k, n, x_dtype, w_dtype):
    rng = np.random.default_rng([rows, k, n])
    x, w = _bytes(rng, (rows, k), x_dtype), _bytes(rng, (n, k), w_dtype)
    xi, wi = np.iinfo(x_dtype), np.iinfo(w_dtype)
    for x_zp in (xi.min, xi.max, 0):
        w_zp = rng.integers(wi.min, wi.max + 1, size=n).astype(np.int32)
        w_zp[0] = 0 if w_dtype == np.int8 else 128
        bias = rng.integers(-2**20, 2**20, size=n).astype(np.int32)
        exact = (x.astype(np.int64) - x_zp) @ (w.astype(np.int64) - w_zp[:, None]).T + bias
        got = kernels.qgemm(x, x_zp, w, w_zp, bias)
        assert got.dtype == np.int32 and np.array_equal(got, exact)
        packed = kernels.qgemm_packed(x, x_zp, kernels.pack_weights(w), w, w_zp, bias)
        assert packed.dtype == np.int32 and np.array_equal(packed, exact)


@pytest.mark.parametrize("rows,k,n", GEMM_SHAPES)
def test_packed_weights_follow_in_place_changes(kernels, rows, k, n):
    """Training writes weights in place: each call compares the packed copy with the array."""
    rng = np.random.default_rng([rows, k, n, 1])
    x, w = _bytes(rng, (rows, k), np.int8), _bytes(rng, (n, k), np.int8)
    zp = np.zeros(n, np.int32)
    packed = kernels.pack_weights(w)
    for change in range(4):
        exact = x.astype(np.int64) @ w.astype(np.int64).T
        assert np.array_equal(kernels.qgemm_packed(x, 0, packed, w, zp), exact)
        w.reshape(-1)[rng.integers(w.size)] += np.int8(1 + change)  # one weight, wrapping at the edges
    other = w.copy()
    other[-1, -1] ^= np.int8(-128)  # another array, one bit apart
    assert np.array_equal(kernels.qgemm_packed(x, 0, packed, other, zp), x.astype(np.int64) @ other.astype(np.int64).T)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.qgemm_packed(x, 0, packed, w[:, :0] if k > 1 else np.zeros((n, 2), np.int8), zp)


@pytest.mark.parametrize("rows,k,n", GEMM_SHAPES)
def test_gemm_requantises_as_quant_py(kernels, rows, k, n):
    rng = np.random.default_rng([k, n])
    x, w = _bytes(rng, (rows, k), np.int8), _bytes(rng, (n, k), np.int8)
    w_zp, bias = np.zeros(n, np.int32), rng.integers(-2**16, 2**16, size=n).astype(np.int32)
    acc = (x.astype(np.int64) + 5) @ w.astype(np.int64).T + bias
    for reals in (rng.uniform(1e-5, 0.5, size=n), np.array([3e-3]), np.full(n, 2.0 ** -9)):  # per channel, per tensor, ties
        mult, shift = quant.quantize_multipliers(reals)
        for y_dtype, y_zp in ((np.int8, -128), (np.int8, 7), (np.uint8, 255)):
            yq = quant.QParams.from_consts(np.float32(1), np.array(y_zp, dtype=y_dtype), "y")
            expect = quant.requantize(acc.astype(np.int32), mult, shift, yq)
            requant = (np.ascontiguousarray(np.broadcast_to(mult, n)), np.ascontiguousarray(np.broadcast_to(shift, n)),
                       y_zp, y_dtype == np.int8)
            got = kernels.qgemm(x, -5, w, w_zp, bias, *requant)
            assert got.dtype == y_dtype and np.array_equal(got, expect)
            got = kernels.qgemm_packed(x, -5, kernels.pack_weights(w), w, w_zp, bias, *requant)
            assert got.dtype == y_dtype and np.array_equal(got, expect)


def _node(op, n_inputs, **attrs):
    return Node(op, op, [f"i{j}" for j in range(n_inputs)], ["y"], attrs)


def _both(op, consts, runtime_inputs, kernels, **attrs):
    """One node built twice: the numpy reference and the native kernels; both outputs."""
    node = _node(op, len(consts), **attrs)
    ref = KERNELS[op](node, consts)
    nat = KERNELS[op](node, consts, native=kernels)
    args = [r if c is None else c for c, r in zip(consts, runtime_inputs)]
    return ref.run(*args), nat.run(*args)


CONVS = [  # x shape, w shape, attributes
    ((3, 1, 28, 28), (6, 1, 5, 5), {"pads": [2, 2, 2, 2]}),
    ((2, 6, 14, 14), (16, 6, 5, 5), {}),
    ((2, 1, 28, 28), (16, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 4, 9, 7), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [0, 1, 2, 0]}),
    ((2, 3, 8, 8), (5, 3, 1, 1), {"strides": [1, 3]}),
    ((1, 2, 5, 5), (1, 2, 3, 3), {"auto_pad": b"SAME_UPPER"}),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CONVS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_conv_equals_the_numpy_kernel(kernels, x_shape, w_shape, attrs, per_channel):
    rng = np.random.default_rng(list(x_shape) + list(w_shape))
    m = w_shape[0]
    for x_zp, y_zp in ((-128, 127), (127, -128), (3, 0)):
        w_scale = rng.uniform(0.001, 0.05, size=m if per_channel else 1).astype(np.float32)
        consts = [None, np.float32(0.02), np.int8(x_zp), _bytes(rng, w_shape, np.int8), w_scale,
                  np.zeros(w_scale.shape, np.int8), np.float32(0.05), np.int8(y_zp),
                  rng.integers(-5000, 5000, size=m).astype(np.int32)]
        x = _bytes(rng, x_shape, np.int8)
        ref, nat = _both("QLinearConv", consts, [x] + [None] * 8, kernels, **attrs)
        assert nat.dtype == ref.dtype and np.array_equal(nat, ref)


POOLS = [
    ((2, 6, 28, 28), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((1, 3, 7, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((2, 2, 6, 5), {"kernel_shape": [2, 3], "dilations": [2, 1], "pads": [0, 1, 1, 0]}),
    ((1, 1, 4, 4), {"kernel_shape": [2, 2], "pads": [3, 3, 3, 3]}),  # windows wholly on padding
]


@pytest.mark.parametrize("shape,attrs", POOLS)
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_max_pool_equals_the_numpy_kernel(kernels, shape, attrs, dtype):
    x = _bytes(np.random.default_rng(len(shape)), shape, dtype)
    ref, nat = _both("MaxPool", [None], [x], kernels, **attrs)
    assert nat.dtype == ref.dtype and np.array_equal(nat, ref)


@pytest.mark.parametrize("shape,attrs", POOLS[:3] + [((2, 3, 4, 4), {"kernel_shape": [4, 4]})])
@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("x_scale,y_scale,y_zp", [(0.1, 0.1, 0), (0.1, 0.1, -127), (0.37, 0.05, 5), (0.02, 0.9, -3)])
def test_integer_average_pools_equal_the_numpy_kernels(kernels, shape, attrs, count_include_pad, x_scale, y_scale, y_zp):
    """Ties included: with equal scales a 2×2 mean is .5 in a quarter of the windows."""
    rng = np.random.default_rng(len(attrs))
    x = _bytes(rng, shape, np.int8)
    consts = [None, np.float32(x_scale), np.int8(-2), np.float32(y_scale), np.int8(y_zp)]
    ref, nat = _both("QLinearAveragePool", consts, [x] + [None] * 4, kernels,
                     count_include_pad=count_include_pad, **attrs)
    assert np.array_equal(nat, ref)
    ref, nat = _both("QLinearGlobalAveragePool", consts, [x] + [None] * 4, kernels)
    assert np.array_equal(nat, ref)


@pytest.mark.parametrize("a_dtype,b_dtype", [(np.int8, np.int8), (np.uint8, np.int8), (np.int8, np.uint8)])
@pytest.mark.parametrize("scales", [(0.02, 0.05, 0.04), (0.1, 0.1, 0.1), (0.3, 0.001, 0.9), (1e-4, 2e-4, 3.0)])
def test_qlinear_add_equals_the_numpy_kernel(kernels, a_dtype, b_dtype, scales):
    rng = np.random.default_rng(len(scales))
    a, b = _bytes(rng, (3, 5, 7, 9), a_dtype), _bytes(rng, (3, 5, 7, 9), b_dtype)
    ai, bi = np.iinfo(a_dtype), np.iinfo(b_dtype)
    for a_zp, b_zp, y_zp, y_dtype in ((ai.min, bi.max, 0, np.int8), (ai.max, bi.min, 127, np.int8),
                                      (0, 0, 255, np.uint8), (3, -2 if b_dtype == np.int8 else 9, 0, np.uint8)):
        consts = [None, np.float32(scales[0]), a_dtype(a_zp), None, np.float32(scales[1]), b_dtype(b_zp),
                  np.float32(scales[2]), y_dtype(y_zp)]
        ref, nat = _both("QLinearAdd", consts, [a, None, None, b] + [None] * 4, kernels)
        assert nat.dtype == ref.dtype and np.array_equal(nat, ref)


def test_quantize_linear_equals_the_numpy_kernel(kernels):
    """Ties to even included (x an odd multiple of scale/2), and values far out of range."""
    rng = np.random.default_rng(3)
    scale = np.float32(0.25)
    x = np.concatenate([rng.standard_normal(997).astype(np.float32) * 40,
                        (np.arange(-301, 301, 2, dtype=np.float32) * scale / 2),
                        np.array([1e30, -1e30, np.inf, -np.inf, 0.0, -0.0], np.float32)]).reshape(1, -1)
    for zp in (np.int8(-128), np.int8(127), np.int8(3), np.uint8(0), np.uint8(255), np.uint8(128)):
        ref, nat = _both("QuantizeLinear", [None, scale, zp], [x, None, None], kernels)
        assert nat.dtype == ref.dtype and np.array_equal(nat, ref)
    x[0, 5] = np.nan  # left to numpy, whose cast of a NaN is the platform's
    ref, nat = _both("QuantizeLinear", [None, scale, np.int8(0)], [x, None, None], kernels)
    assert np.array_equal(nat, ref)


def test_int_matmul_equals_numpy_int64_including_wraparound(kernels):
    rng = np.random.default_rng(5)
    for m, k, n in ((32, 10, 84), (1, 1, 1), (84, 32, 120), (3, 70, 2)):
        a = rng.integers(-2**40, 2**40, size=(k, m))  # used transposed, as err.T
        b = rng.integers(-2**40, 2**40, size=(k, n))
        assert np.array_equal(kernels.int_matmul(a.T, b), a.T @ b)  # numpy's int64 wraps; so must we


def test_int_matmul_to_int32_equals_numpy_and_refuses_sums_beyond_it(kernels):
    rng = np.random.default_rng(6)
    err, act = rng.integers(-127, 128, size=(32, 120)), rng.integers(-255, 256, size=(32, 400))  # a tail layer
    grad = kernels.int_matmul(err.T, act, int32=True)
    assert grad.dtype == np.int32 and np.array_equal(grad, err.T @ act)
    wide = act * 2**20  # some sums now pass 2^31
    assert np.abs(err.T @ wide).max() >= 2**31
    with pytest.raises(ValueError, match="does not fit int32"):
        kernels.int_matmul(err.T, wide, int32=True)


# -- whole models --------------------------------------------------------------------------------

PINNED_INT8 = [("lenet5", "qoperator", True), ("lenet5", "qoperator", False), ("lenet5", "qdq", True),
               ("rescnn", "qoperator", True)]


def _same_tensors(path, x, kernels):
    ref = edgetrain.load(path, backend="numpy").run_all(x)
    model = edgetrain.load(path, backend=backend.Backend(kernels))
    assert model.backend.name == f"native ({kernels.path})"
    got = model.run_all(x)
    assert ref.keys() == got.keys()
    for name in ref:
        assert got[name].dtype == ref[name].dtype and np.array_equal(got[name], ref[name]), name
    out = ref[model.output_names[0]]  # run's own walk, where a MaxPool may run inside its convolution's call
    for m in (model, edgetrain.load(path, backend=backend.Backend(kernels))):  # before and after run_all saw x
        y = m.run(x)
        assert y.dtype == out.dtype and np.array_equal(y, out)


@pytest.mark.parametrize("name,fmt,per_channel", PINNED_INT8)
def test_pinned_int8_models_give_identical_tensors(kernels, name, fmt, per_channel, int8_onnx, mnist):
    _same_tensors(int8_onnx(name, fmt, per_channel), mnist.x_test[:37], kernels)


@pytest.mark.parametrize("name", ["mlp", "mlp16", "lenet5", "rescnn"])
def test_pinned_fp32_models_give_identical_tensors(name, trained_onnx, mnist):
    _same_tensors(trained_onnx(name), mnist.x_test[:9], native.Kernels())


@pytest.mark.parametrize("fmt,per_channel", [("qoperator", True), ("qdq", False)])
def test_average_pool_net_gives_identical_tensors(kernels, fmt, per_channel, tmp_path):
    rng = np.random.default_rng(8)
    fp32 = _save(avgpool_net(rng), tmp_path, "fp32.onnx")
    x = rng.standard_normal((40, 1, 12, 12)).astype(np.float32)
    _same_tensors(ort_quantize(fp32, tmp_path / "int8.onnx", x[:32], fmt, per_channel), x, kernels)


def test_packed_weights_follow_writes_to_model_params(int8_onnx, mnist):
    """The layers' packed weights (made at load: convolutions and fully connected layers)
    follow in-place writes, as the trainer makes them, and a replaced array; both backends
    give the same logits after."""
    x = mnist.x_test[:17]
    models = [edgetrain.load(int8_onnx("lenet5"), backend=b) for b in ("numpy", "native")]
    assert all(k.packed is not None for k in models[1].kernels if k.node.op_type == "QGemm")
    assert all(k._layer is not None for k in models[1].kernels if k.node.op_type == "QLinearConv")
    # and lenet5's convolutions run with their MaxPools in one native call (a Then step)
    assert sum(type(step[0]).__name__ == "Then" for step in models[1]._run_steps) == 2
    names = [l.weight for l in models[0].layers()]
    for step in range(3):
        for model in models:
            for name in names:
                w = model.params[name]
                if step == 2:
                    model.params[name] = np.ascontiguousarray(w[::-1])  # a new array
                else:
                    w[...] = np.clip(w.astype(np.int16) + (1 if step else -3), -127, 127)  # in place
        ref, got = (m.run(x) for m in models)
        assert np.array_equal(ref, got), step


def test_int8_fit_is_bit_identical_on_both_backends(int8_onnx, mnist, monkeypatch):
    """A whole ElasticZO-INT8 fit (ZO head, integer BP tail): the same weights and metrics.
    The ZO head's walk and update run in the native kernels on the native backends."""
    from edgetrain import zo
    x, y = mnist.x_train[:192], mnist.y_train[:192]
    results, zo_runs = [], []
    update = zo.sign_update
    monkeypatch.setattr(zo, "sign_update", lambda dirs, *a: zo_runs.append(dirs[0].native) or update(dirs, *a))
    for choice in ["numpy"] + [f"native:{p}" for p in PATHS]:
        model = edgetrain.load(int8_onnx("lenet5"), backend=choice, float_gemm=False)
        trainer = edgetrain.Trainer(model, method="elasticzo-int8", cut=2, batch_size=32, seed=3)
        history = trainer.fit(x, y, epochs=2, progress=False)
        results.append((choice, history, model.params))
        assert len(zo_runs) == 12 and all(k is model.backend.kernels for k in zo_runs), choice
        zo_runs.clear()
    (_, ref_history, ref_params), *others = results
    for choice, history, params in others:
        assert [h["loss"] for h in history] == [h["loss"] for h in ref_history], choice
        assert all(np.array_equal(params[n], v) for n, v in ref_params.items()), choice


# -- the ZO head's passes (zo.py) -------------------------------------------------------

def test_prng_draws_equal_prng_py(kernels):
    """Rademacher signs and uniform draws below 2^k: seeds and streams over all 64 bits, offsets
    and lengths across zo.INT_CHUNK's slice boundaries, k from 0 to 62."""
    from edgetrain import prng, zo
    rng = np.random.default_rng(10)
    seeds = [0, 1, 2**64 - 1, *(int(s) for s in rng.integers(0, 2**63, size=3, dtype=np.uint64) * 2 + 1)]
    streams = [0, 3, zo._NOISE_STREAM + 2, 2**63 + 5]
    spans = [(0, 0), (0, 1), (5, 1), (0, zo.INT_CHUNK), (zo.INT_CHUNK - 7, 19), (zo.INT_CHUNK, 3 * zo.INT_CHUNK + 5),
             (2**40 - 2, 37)]
    for seed in seeds:
        for stream in streams:
            for start, n in spans:
                got = kernels.rademacher(seed, stream, n, start)
                assert got.dtype == np.int8 and np.array_equal(got, prng.rademacher(seed, stream, n, start))
                for k in (0, 1, 2, 13, 32, 61, 62):
                    got = kernels.uniform_below_pow2(seed, stream, n, k, start)
                    assert got.dtype == np.int64
                    assert np.array_equal(got, prng.uniform_below_pow2(seed, stream, n, k, start)), (seed, stream, k)
    draws = kernels.uniform_below_pow2(7, 1, 4096, 62)
    assert draws.min() >= 0 and draws.max() >= 2**61  # the top bits are drawn, not a constant
    with pytest.raises(ValueError, match="above 62"):
        kernels.uniform_below_pow2(0, 0, 4, 63)


def _zo_tensors(rng):
    """int8 tensors: one slice, several slices with a ragged end, a single weight."""
    shapes = {"a": (6, 5, 5), "b": (120, 400), "c": (3, 3 * 1024 * 3 + 1), "d": (1,)}
    return {n: rng.integers(-128, 128, size=s).astype(np.int8) for n, s in shapes.items()}


@pytest.mark.parametrize("q", [1, 2, 3, 4])
def test_zo_walk_and_update_equal_the_numpy_reference(kernels, q):
    """``SignPerturbation`` (+1 then −1) and ``sign_update`` with the native kernels against numpy,
    bit for bit, over random tensors and loss differences: zero, small, mixed signs, and as large
    as int64 holds them exactly (Σ|ΔL| just below 2^62)."""
    from edgetrain import zo
    rng = np.random.default_rng(q)
    diff_sets = [[0] * q, [int(v) for v in rng.integers(-50_000, 50_000, size=q)], [(1 << 62) // q - 1] * q,
                 [(-1) ** j * ((1 << 62) // q - 1 - j) for j in range(q)], [0] * (q - 1) + [-1], [3_000_000_000] * q]
    for eps in (1, 3):
        for diffs in diff_sets:
            for bits in (0, 2, 7):
                base = _zo_tensors(rng)
                runs = []
                for native in (None, kernels):
                    params = {n: v.copy() for n, v in base.items()}
                    seeds = [int(s) for s in np.random.default_rng([q, eps, bits]).integers(0, 2**63, size=q)]
                    dirs = [zo.SignPerturbation(params, list(params), s, eps, native=native) for s in seeds]
                    dirs[0].clip()
                    clipped = {n: v.copy() for n, v in params.items()}
                    walked = []
                    for d in dirs:
                        d(+1)
                        walked.append({n: v.copy() for n, v in params.items()})
                        d(-1)
                        assert all(np.array_equal(params[n], clipped[n]) for n in params)  # back exactly
                    zo.sign_update(dirs, diffs, bits, seed=seeds[0] ^ 77)
                    runs.append((walked, params))
                (ref_walk, ref), (got_walk, got) = runs
                for r, g in zip(ref_walk, got_walk):
                    assert all(np.array_equal(r[n], g[n]) for n in r)
                assert all(np.array_equal(ref[n], got[n]) for n in ref), (eps, diffs, bits)
                if any(diffs):
                    assert any(not np.array_equal(got[n], np.clip(base[n], -127 + eps, 127 - eps)) for n in got)


def test_zo_update_refuses_differences_int64_cannot_hold(kernels):
    from edgetrain import zo
    for native in (None, kernels):
        params = {"w": np.zeros(100, dtype=np.int8)}
        d = zo.SignPerturbation(params, ["w"], 1, 1, native=native)
        with pytest.raises(ValueError, match="2\\^62"):
            zo.sign_update([d, d], [1 << 61, -(1 << 61)], 2, seed=0)
        assert not params["w"].any()
    with pytest.raises(ValueError, match="below 2\\^62"):  # the kernel's own check, w untouched
        kernels.zo_sign_update(params["w"], 0, [1], [1 << 62], 0, 0, 0, 126)
    assert not params["w"].any()


def test_native_zo_passes_allocate_no_temporaries(kernels):
    """The walk and the update draw their signs and noise in place: a step over 200 000 weights
    allocates (traced: the kernels allocate through CPython) less than one int8 copy of them."""
    import tracemalloc
    from edgetrain import zo
    params = {"w": np.random.default_rng(0).integers(-100, 100, size=200_000).astype(np.int8)}
    dirs = [zo.SignPerturbation(params, ["w"], s, 2, native=kernels) for s in (1, 2, 3)]
    tracemalloc.start()
    try:
        for d in dirs:
            d(+1)
            d(-1)
        zo.sign_update(dirs, [5, -900, 70_000], 3, seed=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000, peak
