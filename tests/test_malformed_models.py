"""Seeded mutation fuzzing: a malformed model fails at load with ModelFormatError, or it runs.

Mutants of the pinned models and of small single-op graphs: a node's op type
changed, an input added or dropped, an attribute set to an odd value (zero, negative,
huge, the wrong kind, an unknown name), an initializer's dims or dtype changed.
Each must either be refused by ``edgetrain.load`` with a ModelFormatError or run on
a valid input without raising.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain
from conftest import DATA

PINNED = ["mlp", "lenet5", "rescnn", "lenet5.int8", "lenet5.int8.qdq", "rescnn.int8"]
MUTANTS_PER_MODEL = 60
ODD_VALUES = [0, -1, 3, 1 << 40, 0.0, -2.5, float("nan"), [], [0, 0], [1, 1, 1], [-1, 2, 2, 2], b"bogus"]


def single_op_graphs():
    """Small one- and two-node graphs covering ops the pinned models do not hold."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    init = lambda name, a: numpy_helper.from_array(np.asarray(a), name)  # noqa: E731
    graphs = {
        "avgpool": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], []),
        "softmax": ([helper.make_node("Softmax", ["x"], ["y"], axis=1)], []),
        "clip": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                 [init("lo", np.float32(-0.5)), init("hi", np.float32(0.5))]),
        "reshape": ([helper.make_node("Reshape", ["x", "s"], ["y"])], [init("s", np.array([0, -1], np.int64))]),
        "batchnorm": ([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
                      [init(n, rng.random(3).astype(np.float32) + 0.5) for n in "gbmv"]),
        "matmul": ([helper.make_node("MatMul", ["x", "w"], ["y"])], [init("w", rng.standard_normal((6, 4)).astype(np.float32))]),
        "qdq-avgpool": ([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
                         helper.make_node("AveragePool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                         helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q2"]),
                         helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"])],
                        [init("s", np.float32(0.02)), init("z", np.int8(-3))]),
    }
    for name, (nodes, inits) in graphs.items():
        graph = helper.make_graph(nodes, name, [x], [y], inits)
        yield name, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mutate(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    """Apply one random mutation in place; return what it did."""
    g = model.graph
    node = g.node[rng.integers(len(g.node))]
    kind = rng.choice(["op_type", "add_input", "drop_input", "attribute", "unknown_attribute", "dims", "dtype"])
    if kind == "op_type":
        old, node.op_type = node.op_type, str(rng.choice(edgetrain.supported_ops()))
        return f"{node.name or old}: op {old} → {node.op_type}"
    if kind == "add_input":
        tensors = [t for n in g.node for t in n.input if t] + [g.input[0].name]
        node.input.append(str(rng.choice(tensors)))
        return f"{node.name}: extra input {node.input[-1]}"
    if kind == "drop_input" and len(node.input) > 0:
        i = int(rng.integers(len(node.input)))
        dropped = node.input.pop(i)
        return f"{node.name}: dropped input {i} ({dropped})"
    if kind in ("attribute", "unknown_attribute") or not g.initializer:
        value = ODD_VALUES[rng.integers(len(ODD_VALUES))]
        if kind == "attribute" and node.attribute:
            a = node.attribute[rng.integers(len(node.attribute))]
            name = a.name
            node.attribute.remove(a)
        else:
            name = str(rng.choice(["kernel_shape", "strides", "pads", "axis", "group", "alpha", "transB",
                                   "ceil_mode", "allowzero", "bogus"]))
            for a in [a for a in node.attribute if a.name == name]:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value) if value != [] else
                              helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS))
        return f"{node.name}: attribute {name} = {value!r}"
    t = g.initializer[rng.integers(len(g.initializer))]
    a = numpy_helper.to_array(t)
    if kind == "dims":
        new = a.reshape(-1)[: max(0, a.size - int(rng.integers(0, 3)))]
        new = new.reshape([(-1,), (1, -1), (-1, 1)][rng.integers(3)]) if new.size else new
    else:
        new = a.astype([np.float32, np.int8, np.uint8, np.int32, np.int64, np.float64][rng.integers(6)])
    t.CopyFrom(numpy_helper.from_array(new, t.name))
    return f"initializer {t.name}: {a.dtype}{list(a.shape)} → {new.dtype}{list(new.shape)}"


def mutants(seed):
    rng = np.random.default_rng(seed)
    bases = [(stem, onnx.load(str(DATA / f"{stem}.onnx"))) for stem in PINNED] + list(single_op_graphs())
    for stem, base in bases:
        for _ in range(MUTANTS_PER_MODEL):
            m = onnx.ModelProto()
            m.CopyFrom(base)
            yield stem, mutate(m, rng), m


@pytest.mark.parametrize("seed", [8, 1, 2])
def test_every_mutant_fails_at_load_or_runs(seed, tmp_path):
    refused = ran = 0
    problems = []
    for i, (stem, what, model) in enumerate(mutants(seed)):
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(model.SerializeToString())
        try:
            loaded = edgetrain.load(path)
        except edgetrain.ModelFormatError:
            refused += 1
            continue
        except Exception as e:
            problems.append(f"{stem} [{what}]: load raised {type(e).__name__}: {e}")
            continue
        name, shape, dtype = loaded.inputs[0]
        x = np.random.default_rng(i).standard_normal([2 if d is None else d for d in shape]).astype(dtype)
        try:
            loaded.run(x)
            ran += 1
        except Exception as e:
            problems.append(f"{stem} [{what}]: run raised {type(e).__name__}: {e}")
    assert not problems, f"{len(problems)} of {refused + ran + len(problems)} mutants:\n" + "\n".join(problems)
    assert refused > 0 and ran > 0  # both outcomes are exercised
