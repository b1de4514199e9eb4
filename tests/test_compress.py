"""Compressed files (DESIGN.md §5): the decode ops and layouts against onnxruntime, every file
the compressors write run by onnxruntime and by ``edgetrain.load`` alike, the decode
subgraphs rebuilding exactly the weights the compressors report, the EvoPress machinery
(mutation, dynamic program, cache) against brute force and damage, and bad input.

Budgets are tiny (a few hundred images, one or two epochs, two generations): these tests
pin behaviour; the quality figures are bench/compress.py's.
"""
import itertools
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain
from edgetrain import decode
from conftest import rel_err

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from edgetrain.export.compress import evopress, model_io, vq  # noqa: E402
from edgetrain.export.compress.torch_graph import TorchGraph  # noqa: E402
from edgetrain.export.quantization import fp32_model  # noqa: E402


def ort_outputs(proto_or_path, feeds: dict, names=None, opset=None):
    """onnxruntime's values of ``names`` (default: the graph outputs), optimisations off."""
    proto = onnx.load(str(proto_or_path)) if not isinstance(proto_or_path, onnx.ModelProto) else proto_or_path
    if names:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        del proto.graph.output[:]
        proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# -- the decode ops against onnxruntime ----------------------------------------------------------

rng = np.random.default_rng(0)
U8 = rng.integers(0, 256, (3, 5, 1)).astype(np.uint8)
F32 = rng.standard_normal((4, 6)).astype(np.float32)
OP_CASES = {
    "cast-float-int8": ("Cast", [np.array([-3.7, -0.5, 0.0, 2.9, 100.2], np.float32)], {"to": TensorProto.INT8}),
    "cast-uint8-float": ("Cast", [U8], {"to": TensorProto.FLOAT}),
    "cast-float-int64": ("Cast", [np.array([[0.0, 3.0, 15.0]], np.float32)], {"to": TensorProto.INT64}),
    "gather-axis0": ("Gather", [F32, np.array([[3, 0, 0, 1]], np.int64)], {"axis": 0}),
    "gather-axis1-negative": ("Gather", [F32, np.array([-1, 2, 0], np.int64)], {"axis": 1}),
    "matmul-batched": ("MatMul", [rng.standard_normal((1, 7, 3)).astype(np.float32), F32[:3]], {}),
    "reshape-zero-minus-one": ("Reshape", [F32, np.array([0, -1, 2], np.int64)], {}),
    "transpose": ("Transpose", [F32.reshape(2, 3, 4)], {"perm": [2, 0, 1]}),
    "slice-clamped": ("Slice", [F32, np.array([0, -4], np.int64), np.array([1, 100], np.int64)], {}),
    "slice-axes": ("Slice", [F32, np.array([1], np.int64), np.array([3], np.int64), np.array([-1], np.int64)], {}),
    "bitshift-left-uint8": ("BitShift", [U8, np.arange(7, -1, -1, dtype=np.uint8)], {"direction": "LEFT"}),
    "bitshift-right-uint32": ("BitShift", [U8.astype(np.uint32) * 1000, np.array(3, np.uint32)],
                              {"direction": "RIGHT"}),
    "bitwiseand": ("BitwiseAnd", [U8, np.array(0b1011, np.uint8)], {}),
    "sub-int32": ("Sub", [U8.astype(np.int32), np.array(4, np.int32)], {}),
    "mul-int64": ("Mul", [U8.astype(np.int64), U8.astype(np.int64)[:, :1]], {}),
    "cumsum": ("CumSum", [U8.astype(np.int64).reshape(3, 5), np.array(1, np.int64)], {}),
    "cumsum-exclusive-reverse": ("CumSum", [U8.astype(np.int64).reshape(3, 5), np.array(0, np.int64)],
                                 {"exclusive": 1, "reverse": 1}),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_decode_op_matches_onnxruntime(case):
    op, inputs, attrs = OP_CASES[case]
    names = [f"i{k}" for k in range(len(inputs))]
    node = helper.make_node(op, names, ["y"], **attrs)
    infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in zip(names, inputs)]
    got = decode.evaluate(edgetrain.kernels.Node("n", op, names, ["y"], attrs), inputs)
    # the output's declared type is ours; onnxruntime refuses the graph if it infers another
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(got.dtype), None)
    model = helper.make_model(helper.make_graph([node], case, infos, [out]),
                              opset_imports=[helper.make_opsetid("", 18)])
    want = ort_outputs(model, dict(zip(names, inputs)))[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_bit_planes_read_back_by_onnxruntime(bits, signed):
    """The planes subgraph in onnxruntime returns the values packed, for n not a multiple of 8."""
    lo, hi = decode.int_range(bits) if signed else (0, (1 << bits) - 1)
    values = np.random.default_rng(bits).integers(lo, hi + 1, 45)
    b = decode.Builder()
    packed = b.const(decode.pack_planes(values, bits), "packed")
    out = b.planes("t", packed, bits, values.size, signed)
    graph = helper.make_graph(b.nodes, "planes", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              list(b.initializers.values()))
    got = ort_outputs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {})[0]
    np.testing.assert_array_equal(got.reshape(-1), values)
    np.testing.assert_array_equal(decode.unpack_planes(decode.pack_planes(values, bits), values.size, signed), values)


def test_pack_planes_refuses_values_out_of_range():
    with pytest.raises(ValueError, match="do not fit 3 bits"):
        decode.pack_planes(np.array([0, 8]), 3)


# -- the compressors' files -----------------------------------------------------------------

@pytest.fixture(scope="module")
def small(mnist):
    """A few hundred training images: the budget of these tests."""
    return mnist.x_train[:256], mnist.y_train[:256]


@pytest.fixture(scope="module")
def compressed(trained_onnx, small, tmp_path_factory):
    """Files of every method from lenet5 on a tiny budget: name → (path, library result)."""
    folder = tmp_path_factory.mktemp("compressed")
    lenet5 = trained_onnx("lenet5")
    out = {}
    for name, kwargs in {"lr2vq": dict(method="lr2vq", k=16, m=8, epochs=2, skip=["/0/Conv"]),
                         "lr2vq-k256": dict(method="lr2vq", k=256, m=8, d=2, epochs=2),
                         "pq": dict(method="pq", k=16, m=8, epochs=1, skip=["/0/Conv"]),
                         "cluster": dict(method="cluster", k=16, epochs=1)}.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vq.SkippedLayerWarning)
            out[name] = (folder / f"{name}.onnx", vq.compress(lenet5, folder / f"{name}.onnx", small, progress=False,
                                                               **kwargs))
    for name, kwargs in {"evopress-bits": dict(bits=3.5), "evopress-sparsity": dict(sparsity=0.6)}.items():
        out[name] = (folder / f"{name}.onnx", evopress.evopress(lenet5, folder / f"{name}.onnx", small[0][:128],
                                                                generations=2, offspring=4, cache=None,
                                                                progress=False, **kwargs))
    return out


FP32_FILES = ["lr2vq", "lr2vq-k256", "pq", "cluster"]
INT8_FILES = ["evopress-bits", "evopress-sparsity"]


@pytest.mark.parametrize("name", FP32_FILES + INT8_FILES)
def test_onnxruntime_and_edgetrain_agree_on_every_compressed_file(name, compressed, mnist):
    path, _ = compressed[name]
    model = edgetrain.load(path)
    x = mnist.x_test[:200]
    ours, ref = model.run(x), ort_outputs(path, {"input": x})[0]
    if name != "evopress-sparsity":  # a sparse mask is folded and runs, but is no form training keeps
        assert model.compressed, "the decode subgraphs were recognised"
    if name in FP32_FILES:
        assert rel_err(ours, ref) <= 1e-5
    else:
        assert model.integer_only
        lsb = np.rint(np.abs(ours - ref) / output_scale(path))
        assert lsb.max() <= 1 and (lsb == 0).mean() >= 0.999


def output_scale(path):
    proto = onnx.load(str(path))
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"][-1]
    return float(numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == dq.input[1])))


@pytest.mark.parametrize("name", FP32_FILES)
def test_codebook_decode_rebuilds_the_reported_weights(name, compressed, trained_onnx):
    """W = layout(C[codes] @ P) in float64 from what the compressor reports; onnxruntime's and
    our decode agree with it to the rounding of a float32 dot product of d terms
    (d·2⁻²³·Σ|C||P|); without a projection there is no product, and they equal it."""
    path, result = compressed[name]
    layers = {l.weight: l for l in model_io.layers(onnx.load(str(trained_onnx("lenet5"))))}
    names = sorted(result["codebooks"])
    rebuilt = dict(zip(names, ort_outputs(path, {"input": np.zeros((1, 1, 28, 28), np.float32)}, names)))
    ours = edgetrain.load(path)
    for weight, form in result["codebooks"].items():
        layer = layers[weight]
        rows = layer.shape[0] if layer.rows_first else layer.shape[1]
        as_weight = lambda sub: layer.from_matrix(sub.reshape(rows, -1))  # noqa: E731
        c, p, codes = (form[k] for k in ("codebook", "projection", "codes"))
        sub, bound = c.astype(np.float64)[codes], np.zeros(1)
        if p is not None:
            bound = c.shape[1] * 2.0 ** -23 * as_weight(np.abs(sub) @ np.abs(p.astype(np.float64)))
            sub = sub @ p.astype(np.float64)
        want = as_weight(sub)
        for got in (rebuilt[weight], ours.params[weight]):
            assert got.shape == want.shape and np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("name", INT8_FILES)
def test_integer_decode_rebuilds_exactly_the_reported_weights(name, compressed):
    path, result = compressed[name]
    names = sorted(result["weights"])
    rebuilt = ort_outputs(path, {"input": np.zeros((1, 1, 28, 28), np.float32)}, names)
    ours = edgetrain.load(path)
    for weight, got in zip(names, rebuilt):
        assert got.dtype == np.int8
        np.testing.assert_array_equal(got, result["weights"][weight])
        np.testing.assert_array_equal(ours.params[weight], result["weights"][weight])


def test_evopress_levels_and_bytes_in_the_config(compressed):
    path, result = compressed["evopress-bits"]
    n = sum(l["weights"] for l in result["layers"])
    assert result["used"] == sum(l["weights"] * l["bits"] for l in result["layers"]) <= result["budget"] == int(3.5 * n)
    forms = edgetrain.load(path).compressed
    for layer, weight in zip(result["layers"], sorted(result["weights"], key=list(result["weights"]).index)):
        low = forms.get(weight)
        assert (low.bits if low else 8) == layer["bits"]
        values = result["weights"][weight]
        assert decode.int_range(layer["bits"])[0] <= values.min() and values.max() <= decode.int_range(layer["bits"])[1]
    assert result["stored_bytes"] < model_io.stored_bytes(path.parent / "evopress-bits.onnx") + 1
    sparse = compressed["evopress-sparsity"][1]
    kept = sum(np.count_nonzero(w) for w in sparse["weights"].values())
    assert kept <= sparse["budget"] == int(0.4 * n)


def test_torch_graph_matches_onnxruntime(trained_onnx, mnist):
    for name in ("lenet5", "rescnn"):
        path = trained_onnx(name)
        graph = TorchGraph(onnx.load(str(path)))
        with torch.no_grad():
            got = graph(torch.from_numpy(mnist.x_test[:64])).numpy()
        assert rel_err(got, ort_outputs(path, {"input": mnist.x_test[:64]})[0]) <= 1e-5


def test_d_estimate_says_why_and_low_rank_error_falls_with_d(compressed):
    estimate = compressed["lr2vq"][1]["d_estimate"]
    low = [r["low_rank_error"] for r in estimate["curve"]]
    assert all(a >= b for a, b in zip(low, low[1:])) and low[-1] < 1e-12  # rank m is exact
    assert estimate["d"] == compressed["lr2vq"][1]["d"] and f"d={estimate['d']}" in estimate["reason"]
    best = min(estimate["curve"], key=lambda r: max(r["low_rank_error"], r["clustering_error"]))
    assert best["d"] == estimate["d"]


def test_a_layer_too_small_for_k_is_skipped_with_a_warning_naming_it(trained_onnx, small, tmp_path):
    with pytest.warns(vq.SkippedLayerWarning, match=r"/0/Conv \(150 weights, 18 sub-vectors of 8\)"):
        result = vq.compress(trained_onnx("lenet5"), tmp_path / "o.onnx", small, method="pq", k=32, m=8,
                             epochs=1, progress=False)
    assert "/0/Conv" in result["skipped"] and "0.weight" not in edgetrain.load(tmp_path / "o.onnx").compressed


# -- EvoPress's machinery ----------------------------------------------------------------------

def test_mutation_never_exceeds_the_budget_and_conserves_equal_sizes():
    """Property test over many random states: a level switch never takes the total cost over
    the budget; a child differs from its parent; and when all layers have one size the
    switch is EvoPress's one-for-one trade, leaving the total exactly unchanged."""
    rng = np.random.default_rng(0)
    for trial in range(400):
        sizes = rng.integers(10, 5000, rng.integers(2, 7)) if trial % 2 else np.full(rng.integers(2, 7), 100)
        costs = np.outer(sizes, np.arange(2, 9))
        levels = list(rng.integers(0, 7, len(sizes)))
        budget = evopress.total_cost(costs, levels) + (0 if trial % 2 == 0 else int(rng.integers(0, 3000)))
        for _ in range(5):
            child = evopress.mutate(levels, costs, budget, rng)
            assert evopress.total_cost(costs, child) <= budget
            assert all(0 <= v <= 6 for v in child)
            if trial % 2 == 0:
                assert evopress.total_cost(costs, child) == budget
            levels = child


def test_dynamic_program_matches_brute_force_on_a_four_layer_toy():
    rng = np.random.default_rng(3)
    for _ in range(20):
        costs = np.outer(rng.integers(1, 40, 4), np.arange(2, 9))
        errors = np.sort(rng.random((4, 7)), axis=1)[:, ::-1] * rng.random((4, 1))  # falls with the level
        budget = int(rng.integers(costs[:, 0].sum(), costs[:, -1].sum() + 1))
        best = min((c for c in itertools.product(range(7), repeat=4) if evopress.total_cost(costs, c) <= budget),
                   key=lambda c: sum(errors[l, j] for l, j in enumerate(c)))
        got = evopress.dynamic_program(costs, errors, budget)
        assert evopress.total_cost(costs, got) <= budget
        assert np.isclose(sum(errors[l, j] for l, j in enumerate(got)), sum(errors[l, j] for l, j in enumerate(best)))


class AdditiveFitness:
    """A stand-in for the KL: the sum of per-layer errors, the same on any images."""

    def __init__(self, errors):
        self.errors, self.x = errors, np.zeros((64, 1))

    def __call__(self, levels, idx=None):
        return float(sum(self.errors[l, j] for l, j in enumerate(levels)))


def test_evolution_is_seeded_elitist_and_within_budget():
    """Same seed, same levels; the parent's fitness never rises from one generation to the next
    (the parent competes in the last stage); every parent within the budget; and on an
    additive problem it reaches the dynamic program's optimum."""
    rng = np.random.default_rng(7)
    costs = np.outer([150, 2400, 48000, 10080, 840], np.arange(2, 9))
    errors = np.sort(rng.random((5, 7)), axis=1)[:, ::-1] * np.array([[1], [3], [0.5], [2], [4]])
    budget = int(2.5 * costs[:, 0].sum() / 2)
    runs = [evopress.evolve(costs, budget, AdditiveFitness(errors), seed=3, generations=60, offspring=8,
                            progress=False) for _ in range(2)]
    (levels, trace), (again, _) = runs
    assert levels == again and evopress.total_cost(costs, levels) <= budget
    assert all(b <= a for a, b in zip(trace, trace[1:]))
    best = evopress.dynamic_program(costs, errors, budget)
    assert np.isclose(trace[-1], AdditiveFitness(errors)(best))


def test_uniform_takes_the_highest_common_level_that_fits():
    costs = np.outer([10, 20], np.arange(2, 9))
    assert evopress.uniform(costs, 30 * 4 + 29) == [2, 2]  # 4 bits; 5 would need 150


@pytest.fixture(scope="module")
def mlp16_inputs(trained_onnx, small):
    proto = fp32_model(trained_onnx("mlp16"))
    return proto, model_io.layers(proto), TorchGraph(proto), np.ascontiguousarray(small[0][:64])


def test_a_damaged_or_stale_cache_is_detected_and_rebuilt(mlp16_inputs, tmp_path):
    proto, layers, graph, calib = mlp16_inputs
    first, status = evopress.database(proto, layers, graph, calib, "bits", tmp_path, False)
    assert not status["hit"] and status["rebuilt_because"] == "not built yet"
    again, status = evopress.database(proto, layers, graph, calib, "bits", tmp_path, False)
    assert status["hit"] and all(np.array_equal(a, b) for a, b in zip(first.weights[0], again.weights[0]))
    path = tmp_path / "evopress" / next(p.name for p in (tmp_path / "evopress").iterdir())
    good = path.read_bytes()
    for damage, why in ((lambda b: b[:len(b) // 2], "damaged (BadZipFile)"), (lambda b: b[:-9] + b"\0" * 9, "damaged")):
        path.write_bytes(damage(good))
        rebuilt, status = evopress.database(proto, layers, graph, calib, "bits", tmp_path, False)
        assert not status["hit"] and status["rebuilt_because"].startswith(why)
        assert np.array_equal(rebuilt.errors, first.errors) and path.read_bytes() != damage(good)
    arrays, _ = evopress.load_cache(path, evopress.cache_key(proto.SerializeToString(), calib, "bits"))
    evopress.save_cache(path, "another key", arrays)  # a file of this name built for other inputs
    _, status = evopress.database(proto, layers, graph, calib, "bits", tmp_path, False)
    assert status["rebuilt_because"].startswith("stale")


def test_flipped_byte_in_an_array_fails_the_digest(mlp16_inputs, tmp_path):
    proto, layers, graph, calib = mlp16_inputs
    key = evopress.cache_key(proto.SerializeToString(), calib, "bits")
    arrays = {"q0.0": np.arange(12, dtype=np.int8).reshape(3, 4)}
    evopress.save_cache(tmp_path / "c.npz", key, arrays)
    assert evopress.load_cache(tmp_path / "c.npz", key)[0] is not None
    data = np.load(tmp_path / "c.npz")
    changed = {k: data[k] for k in data.files if k not in ("sha256", "key")}
    changed["q0.0"] = changed["q0.0"].copy()
    changed["q0.0"][1, 2] += 1
    np.savez(tmp_path / "c.npz", sha256=data["sha256"], key=data["key"], **changed)  # contents edited, digest kept
    assert evopress.load_cache(tmp_path / "c.npz", key) == (None, "damaged (its contents do not match their SHA-256)")


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(method="lr2vq", k=1), "k=1 must be a power of two"),
    (dict(method="pq", k=48), "k=48 must be a power of two"),
    (dict(method="lr2vq", k=16, m=8, d=9), "d=9 must be an int from 1 to m = 8"),
    (dict(method="cluster", k=16, m=4), "cluster is per-weight"),
    (dict(method="lr2vq", k=16, m=8), r"m=8 does not divide layer '/0/Conv''s 150 weights"),
    (dict(method="lr2vq", k=16, m=8, skip=["nope"]), r"skip=\['nope'\] names no"),
    (dict(method="lr2vq", k=256, m=8, epochs=1), "epochs=1 must be an int ≥ 2"),
])
def test_vq_refuses_what_it_cannot_do_before_any_work(kwargs, message, trained_onnx, small, tmp_path, monkeypatch):
    monkeypatch.setattr(vq, "_train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=message):
        vq.compress(trained_onnx("lenet5"), tmp_path / "o.onnx", small, progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=1.5), "bits=1.5 cannot be met"), (dict(bits=9), "bits=9 cannot be met"),
    (dict(sparsity=0.99), "sparsity=0.99 cannot be met"), (dict(), "give one budget"),
    (dict(bits=3, sparsity=0.5), "give one budget"), (dict(bits=3, search="greedy"), "search='greedy'"),
])
def test_evopress_refuses_a_budget_it_cannot_meet_before_any_work(kwargs, message, trained_onnx, small, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(evopress, "build_database", lambda *a, **k: pytest.fail("the database was being built"))
    with pytest.raises(ValueError, match=message):
        evopress.evopress(trained_onnx("lenet5"), tmp_path / "o.onnx", small[0], progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_compress_refuses_a_quantised_model(int8_onnx, small, tmp_path):
    with pytest.raises(ValueError, match="already quantised"):
        vq.compress(int8_onnx(), tmp_path / "o.onnx", small, method="cluster", k=16, epochs=1, progress=False)


# -- training what was compressed (DESIGN.md §5) -------------------------------------------------

def initializer_bytes(path) -> dict:
    return {t.name: numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer}


def same_size_but_header(trained, original) -> bool:
    """The stored data is the same size, tensor for tensor, and the files differ by no more than
    the original's header (all but its initializers and nodes: value infos, metadata, producer,
    opset list), which an export need not reproduce."""
    proto = onnx.load(str(original))
    header = len(proto.SerializeToString()) - sum(len(t.SerializeToString()) for t in proto.graph.initializer) \
        - sum(len(n.SerializeToString()) for n in proto.graph.node)
    return initializer_bytes(trained) == initializer_bytes(original) and \
        abs(trained.stat().st_size - original.stat().st_size) <= header


def test_low_bit_weights_stay_in_range_through_100_int8_steps(compressed, mnist, tmp_path, monkeypatch):
    path, _ = compressed["evopress-bits"]
    model = edgetrain.load(path)
    forms = {w: f for w, f in model.compressed.items()}
    assert any(f.bits < 8 for f in forms.values())
    before = {w: model.params[w].copy() for w in forms}
    # zo_layers=0: the ZO head trains every layer before the cut (the default trains only the first)
    trainer = edgetrain.Trainer(model, method="elasticzo-int8", cut=3, batch_size=8, seed=1, zo_layers=0)
    for step in range(100):
        trainer.step(mnist.x_train[8 * step:8 * step + 8], mnist.y_train[8 * step:8 * step + 8])
        for w, f in forms.items():
            lo, hi = decode.int_range(f.bits)
            assert model.params[w].dtype == np.int8 and lo <= model.params[w].min() and model.params[w].max() <= hi
    assert all(not np.array_equal(model.params[w], before[w]) for w in forms)  # every layer trained
    trainer.export(tmp_path / "trained.onnx")
    assert same_size_but_header(tmp_path / "trained.onnx", path)
    again = edgetrain.load(tmp_path / "trained.onnx")
    assert {w: f.bits for w, f in again.compressed.items()} == {w: f.bits for w, f in forms.items()}
    assert all(np.array_equal(again.params[w], model.params[w]) for w in forms)
    # the range holds because of the projection: without it, the same steps leave the range
    monkeypatch.setattr(edgetrain.compressed, "finer_steps", lambda model, before, seed: None)
    loose = edgetrain.load(path)
    free = edgetrain.Trainer(loose, method="elasticzo-int8", cut=3, batch_size=8, seed=1)
    outside = lambda: any(not decode.int_range(f.bits)[0] <= loose.params[w].min() <= loose.params[w].max()  # noqa
                          <= decode.int_range(f.bits)[1] for w, f in forms.items())
    for step in range(100):
        free.step(mnist.x_train[8 * step:8 * step + 8], mnist.y_train[8 * step:8 * step + 8])
        if outside():
            break
    assert outside()


def test_an_int8_step_moves_a_b_bit_weight_2_to_the_8_minus_b_times_fewer_units(compressed, mnist):
    """The same step (same weights, batch and seed) on the EvoPress file and on the file's
    weights taken as plain int8: each b-bit weight's change is the 8-bit change divided by
    2^(8−b), rounded down or up (stochastic rounding: unbiased, so the mean error over n
    weights is within 4 standard deviations, ≤ 0.5/√n each, of 0); 8-bit layers change alike."""
    path, _ = compressed["evopress-bits"]
    low, plain = edgetrain.load(path), edgetrain.load(path)
    plain.compressed = {}  # the same int8 weights, no bit-width to keep
    before = {w: low.params[w].astype(np.int64) for w in low.compressed}
    x, y = mnist.x_train[:32], mnist.y_train[:32]
    for model in (low, plain):
        edgetrain.Trainer(model, method="elasticzo-int8", cut=3, batch_size=32, seed=3).step(x, y)
    finer = 0
    for w, form in low.compressed.items():
        wide = (plain.params[w] - before[w]) / 2.0 ** (8 - form.bits)  # the 8-bit change in b-bit units
        got = low.params[w] - before[w]
        lo, hi = decode.int_range(form.bits)
        inside = (low.params[w] > lo) & (low.params[w] < hi)  # not clipped into the range
        if form.bits == 8:
            assert np.array_equal(got, plain.params[w] - before[w])
            continue
        assert np.all(np.abs(got - wide)[inside] < 1)
        assert abs(np.mean((got - wide)[inside])) <= 4 * 0.5 / np.sqrt(inside.sum())
        finer += int(np.any(wide != 0))
    assert finer  # some low-bit layer took a step


@pytest.mark.parametrize("method", ["bp", "elasticzo"])
def test_codebook_training_changes_only_codebooks_and_projections(method, compressed, mnist, tmp_path):
    path, _ = compressed["lr2vq"]
    model = edgetrain.load(path)
    sources = {t for f in model.compressed.values() for t in f.trainable}
    before = {n: v.copy() for n, v in model.params.items()}
    every_head_layer = {"zo_layers": 0} if method == "elasticzo" else {}  # the ZO head's default trains only its first
    trainer = edgetrain.Trainer(model, method=method, cut=2, trainable="codebooks", batch_size=16, seed=0,
                                **every_head_layer)
    for step in range(5):
        trainer.step(mnist.x_train[16 * step:16 * step + 16], mnist.y_train[16 * step:16 * step + 16])
    changed = {n for n in model.params if not np.array_equal(model.params[n], before[n])}
    weights = set(model.compressed)
    assert sources <= changed <= sources | weights  # the codebook weights follow their sources; nothing else moves
    trainer.export(tmp_path / "trained.onnx")
    assert same_size_but_header(tmp_path / "trained.onnx", path)
    again = edgetrain.load(tmp_path / "trained.onnx")
    assert all(np.array_equal(again.params[n], model.params[n]) for n in weights | sources)
    trainer.save(tmp_path / "ck.npz")
    resumed = edgetrain.Trainer.load(tmp_path / "ck.npz")
    assert resumed.config["trainable"] == "codebooks"
    assert all(np.array_equal(resumed.model.params[n], model.params[n]) for n in weights | sources)


def test_a_bp_step_on_codebooks_equals_torch_sgd_on_them(compressed, mnist, trained_onnx):
    """One ``bp`` step with trainable="codebooks" moves C and P as torch's SGD does on the
    graph whose weights are layout(C[codes] @ P) (autograd through Gather and MatMul), each
    codeword's step divided by the number of sub-vectors using it and the projection's by
    all of them (``compressed.step_scale``: a shared tensor moves by its users' mean)."""
    path, result = compressed["lr2vq"]
    model = edgetrain.load(path)
    x, y = mnist.x_train[:32], mnist.y_train[:32]
    graph = TorchGraph(onnx.load(str(trained_onnx("lenet5"))))
    for name, p in graph.tensors.items():  # the compressed file's other parameters
        if name in model.params and name not in model.compressed:
            p.data = torch.from_numpy(model.params[name].copy())
    layers = {l.weight: l for l in model_io.layers(onnx.load(str(trained_onnx("lenet5"))))}
    leaves = {}
    for w, form in model.compressed.items():
        leaves[w] = [torch.tensor(model.params[t], requires_grad=True) for t in form.trainable]
    edgetrain.Trainer(model, method="bp", trainable="codebooks", lr=0.1).step(x, y)

    def weight(w):
        c, p = leaves[w]
        codes = torch.from_numpy(model.compressed[w].index.reshape(-1))
        sub = c[codes] @ p
        layer = layers[w]
        return sub.reshape(layer.shape) if layer.rows_first else sub.reshape(layer.shape[1], -1).T
    loss = torch.nn.functional.cross_entropy(graph(torch.from_numpy(x), {w: weight(w) for w in leaves}),
                                             torch.from_numpy(y))
    loss.backward()
    for w, form in model.compressed.items():
        counts = np.bincount(form.index.reshape(-1), minlength=len(model.params[form.codebook]))
        users = {form.codebook: np.maximum(counts, 1)[:, None], form.projection: form.index.size}
        for t, leaf in zip(form.trainable, leaves[w]):
            want = leaf.detach().numpy() - 0.1 * leaf.grad.numpy() / users[t]
            assert np.abs(model.params[t] - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), t


def test_codebook_gradient_scatter_matches_autograd_through_a_transpose(tmp_path):
    """A MatMul weight stored transposed (W = (C[codes] @ P)ᵀ), and one without projection:
    ``source_grads`` against torch autograd in float64."""
    rng = np.random.default_rng(5)
    b = decode.Builder()
    codes = rng.integers(0, 8, 12)
    c, p = rng.standard_normal((8, 2)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    b.codebook_weight("a", "wa", codes, 3, c, p, (4, 12), perm=[1, 0])  # (12 outputs × 4 inputs)ᵀ
    b.codebook_weight("b", "wb", codes, 8, c, None, (12, 2))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    nodes = b.nodes + [helper.make_node("MatMul", ["x", "wa"], ["h"]), helper.make_node("MatMul", ["h", "wb"], ["y"])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "t", [x], [y], list(b.initializers.values())),
                                opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "t.onnx")
    model = edgetrain.load(tmp_path / "t.onnx")
    for w, shape in (("wa", (4, 12)), ("wb", (12, 2))):
        form = model.compressed[w]
        g = rng.standard_normal(shape)
        leaves = [torch.tensor(model.params[t].astype(np.float64), requires_grad=True) for t in form.trainable]
        idx = torch.from_numpy(form.index.reshape(-1))
        sub = leaves[0][idx] @ leaves[1] if len(leaves) == 2 else leaves[0][idx]
        built = sub.reshape(12, 4).T if w == "wa" else sub.reshape(shape)
        (built * torch.from_numpy(g)).sum().backward()
        ours = form.source_grads(g, {t: model.params[t].astype(np.float64) for t in form.trainable})
        for got, leaf in zip(ours, leaves):
            np.testing.assert_allclose(got, leaf.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_trainable_codebooks_needs_a_codebook_model(trained_onnx):
    with pytest.raises(edgetrain.TrainingError, match="stores no weight as a codebook"):
        edgetrain.Trainer(edgetrain.load(trained_onnx("lenet5")), trainable="codebooks")


@pytest.mark.parametrize("name", INT8_FILES)
def test_a_compressed_int8_step_stays_within_the_memory_estimate(compressed, mnist, name):
    """The step on a low-bit file (its snapshot and finer steps included) against
    ``estimate_memory``, within the 15 % the plain models' estimates hold (tests/test_memory.py)."""
    model = edgetrain.load(compressed[name][0])
    trainer = edgetrain.Trainer(model, method="elasticzo-int8", cut=3, batch_size=32, seed=0)
    report = trainer.memory_report(mnist.x_train[:32], mnist.y_train[:32])
    estimate = edgetrain.estimate_memory(model, "elasticzo-int8", 3, 32)
    assert estimate["peak_bytes"] == pytest.approx(report["step_traced_bytes"], rel=0.15)
