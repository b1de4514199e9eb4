"""Load-time graph rewrites: evaluate decode subgraphs into the weights they rebuild, fold
BatchNormalization into Conv, fold QDQ patterns into the integer ops the kernels run, drop
dead nodes.

Each rewrite takes the node list (topologically sorted), the initializer dict
(which it may extend) and the graph outputs, and returns a new node list.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from . import decode
from .kernels import KERNELS, Node
from .kernels.batchnorm import batchnorm_affine


@dataclass
class Decoder:
    """A tensor a decode subgraph rebuilt at load: the subgraph's nodes in graph order and the
    initializers they read, as the file stores them."""
    weight: str
    nodes: list[Node]
    sources: dict[str, np.ndarray]

    def run(self, **replaced: np.ndarray) -> np.ndarray:
        """The subgraph again, with some sources replaced (by name): what the file would rebuild
        if it stored those instead."""
        env = {**self.sources, **replaced}
        for n in self.nodes:
            env[n.outputs[0]] = decode.evaluate(n, [env[i] if i else None for i in n.inputs])
        return env[self.weight]


def fold_decoders(nodes, params, outputs):
    """Evaluate decode subgraphs once (:mod:`edgetrain.decode`): a node folds when its op is a
    decode op, every input is a constant, and it either has no kernel (Gather, Cast, BitShift…)
    or reads what another folded node made (the MatMul and Reshape after a Gather). Its output
    becomes a constant in ``params``. The kernels then see ordinary weights, and the checks
    that need kernels never meet a decode op; a decode op on run-time data is left in place,
    for the loader to refuse as unsupported. Returns the remaining nodes and a
    :class:`Decoder` for each folded tensor that a remaining node reads. ValueError (naming
    the node) for a decode node ONNX does not allow."""
    made = {}  # folded tensor → the node that made it
    rest = []
    for n in nodes:
        folds = (n.op_type in decode.OPS and n.domain in ("", "ai.onnx") and len(n.outputs) == 1
                 and n.outputs[0] not in outputs and all(i in params for i in n.inputs if i)
                 and (n.op_type not in KERNELS or any(i in made for i in n.inputs)))
        if not folds:
            rest.append(n)
            continue
        params[n.outputs[0]] = decode.evaluate(n, [params[i] if i else None for i in n.inputs])
        made[n.outputs[0]] = n
    decoders = []
    for weight in dict.fromkeys(i for n in rest for i in n.inputs if i in made):
        needed, todo = set(), [weight]
        while todo:
            t = todo.pop()
            if t in made and t not in needed:
                needed.add(t)
                todo.extend(i for i in made[t].inputs if i)
        sub = [n for n in made.values() if n.outputs[0] in needed]
        sources = {i: params[i] for n in sub for i in n.inputs if i and i not in made}
        decoders.append(Decoder(weight, sub, sources))
    return rest, decoders


def _consumers(nodes):
    users = defaultdict(list)
    for n in nodes:
        for i in n.inputs:
            if i:
                users[i].append(n)
    return users


def fold_batchnorm(nodes, params, outputs):
    """Conv → BatchNormalization becomes one Conv with scaled weights and a new bias."""
    users = _consumers(nodes)
    producer = {o: n for n in nodes for o in n.outputs}
    out = []
    for n in nodes:
        conv = producer.get(n.inputs[0]) if n.op_type == "BatchNormalization" else None
        foldable = (conv is not None and conv.op_type == "Conv" and len(users[conv.outputs[0]]) == 1
                    and conv.outputs[0] not in outputs and not n.attrs.get("training_mode", 0)
                    and all(i in params for i in n.inputs[1:5])
                    and all(i in params for i in conv.inputs[1:] if i))
        if not foldable:
            out.append(n)
            continue
        a, b = batchnorm_affine(*(params[i] for i in n.inputs[1:5]), n.attrs.get("epsilon", 1e-5))
        w = params[conv.inputs[1]]
        bias = params[conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else 0
        w_name, b_name = f"{conv.name}.bn_folded.weight", f"{conv.name}.bn_folded.bias"
        params[w_name] = (w * a.reshape(-1, 1, 1, 1)).astype(np.float32)
        params[b_name] = (bias * a + b).astype(np.float32)
        idx = next(i for i, m in enumerate(out) if m is conv)
        out[idx] = Node(conv.name, "Conv", [conv.inputs[0], w_name, b_name], [n.outputs[0]],
                        dict(conv.attrs), conv.domain)
    return out


# float op → (integer op, domain, positions of quantised data inputs, bias position or None)
_QLINEAR = {
    "Conv": ("QLinearConv", "", (0, 1), 2),
    "MatMul": ("QLinearMatMul", "", (0, 1), None),
    "Gemm": ("QGemm", "com.microsoft", (0, 1), 2),
    "Add": ("QLinearAdd", "com.microsoft", (0, 1), None),
    "GlobalAveragePool": ("QLinearGlobalAveragePool", "com.microsoft", (0,), None),
    "AveragePool": ("QLinearAveragePool", "com.microsoft", (0,), None),
    "Softmax": ("QLinearSoftmax", "com.microsoft", (0,), None),
}
# ops that move 8-bit values unchanged when input and output share scale and zero-point
_DATA_MOVEMENT = ("MaxPool", "Flatten", "Reshape")


def fold_qdq(nodes, params, outputs):
    """Fold ``DequantizeLinear → op → QuantizeLinear`` into the op's integer form.

    This is the pattern onnxruntime's QDQ quantiser writes (and its own
    optimiser fuses into QLinear ops). A Relu between the op and the
    QuantizeLinear becomes a clamp at the output zero-point. Anything that
    does not match stays as it is and runs in float.
    """
    users = _consumers(nodes)
    producer = {o: n for n in nodes for o in n.outputs}

    def dq_of(tensor):
        d = producer.get(tensor)
        ok = (d is not None and d.op_type == "DequantizeLinear"
              and all(i in params for i in d.inputs[1:] if i))
        return d if ok else None

    def only_user(tensor, op_type):
        us = users[tensor]
        return us[0] if len(us) == 1 and us[0].op_type == op_type and tensor not in outputs else None

    out, removed = [], set()
    for n in nodes:
        if id(n) in removed:
            continue
        folded = _fold_one(n, params, dq_of, only_user)
        if folded is None:
            out.append(n)
        else:
            new_nodes, consumed = folded
            out.extend(new_nodes)
            removed.update(id(c) for c in consumed)
    return out


def _fold_one(n, params, dq_of, only_user):
    """The integer nodes replacing ``n`` and the nodes they absorb, or None."""
    if n.op_type in _DATA_MOVEMENT:
        d, q = dq_of(n.inputs[0]), only_user(n.outputs[0], "QuantizeLinear")
        if d is None or q is None or not _same_qparams(d, q, params):
            return None
        return [Node(n.name, n.op_type, [d.inputs[0], *n.inputs[1:]], q.outputs, n.attrs, n.domain)], [q]
    if n.op_type not in _QLINEAR:
        return None
    qop, domain, data_pos, bias_pos = _QLINEAR[n.op_type]
    if n.op_type == "Gemm" and (n.attrs.get("transA", 0) or n.attrs.get("beta", 1.0) != 1.0):
        return None
    dqs = [dq_of(n.inputs[i]) for i in data_pos]
    if any(d is None for d in dqs):
        return None
    weight_axis_ok = {"Conv": 0, "Gemm": 0 if n.attrs.get("transB", 0) else 1, "MatMul": 1}
    if len(dqs) > 1 and n.op_type in weight_axis_ok and params[dqs[1].inputs[1]].size > 1 \
            and dqs[1].attrs.get("axis", 1) != weight_axis_ok[n.op_type]:
        return None  # per-channel scales along an axis that is not the output channel
    relu = only_user(n.outputs[0], "Relu")
    q = only_user((relu or n).outputs[0], "QuantizeLinear")
    if q is None:
        return None
    bias = ""
    if bias_pos is not None and len(n.inputs) > bias_pos and n.inputs[bias_pos]:
        db = dq_of(n.inputs[bias_pos])
        if db is None or params[db.inputs[0]].dtype != np.int32:
            return None
        bias = db.inputs[0]
    triples = [t for d in dqs for t in _triple(d, params)]
    y_scale, y_zp = _triple(q, params)[1:]
    if n.op_type == "Gemm":
        inputs = triples + [bias, y_scale, y_zp]
    else:
        inputs = triples + [y_scale, y_zp] + ([bias] if bias else [])
    attrs = dict(n.attrs)
    if n.op_type == "Softmax":
        attrs["opset"] = 13  # the float op came from an opset ≥ 13 graph (QDQ needs it)
    if relu is None:
        return [Node(n.name, qop, inputs, q.outputs, attrs, domain)], [q]
    # Relu in the quantised domain: clamp at the output zero-point.
    raw = f"{n.outputs[0]}.quantized"
    return [Node(n.name, qop, inputs, [raw], attrs, domain),
            Node(f"{relu.name}.quantized", "Clip", [raw, y_zp], q.outputs)], [relu, q]


def _triple(qnode, params):
    """(tensor, scale, zero-point) names of a Quantize/DequantizeLinear node; a missing
    zero-point becomes an explicit uint8 zero, as ONNX defines it."""
    zp = qnode.inputs[2] if len(qnode.inputs) > 2 and qnode.inputs[2] else None
    if zp is None:
        zp = f"{qnode.name}.zero_point"
        params[zp] = np.zeros((), dtype=np.uint8)
    tensor = qnode.inputs[0] if qnode.op_type == "DequantizeLinear" else qnode.outputs[0]
    return [tensor, qnode.inputs[1], zp]


def _same_qparams(a, b, params):
    pa, pb = _triple(a, params), _triple(b, params)
    return all(np.array_equal(params[x], params[y]) and params[x].dtype == params[y].dtype
               for x, y in zip(pa[1:], pb[1:]))


def prune_dead(nodes, outputs):
    """Drop nodes whose outputs nothing reads (e.g. weight DequantizeLinear after folding)."""
    needed = set(outputs)
    kept = []
    for n in reversed(nodes):
        if any(o in needed for o in n.outputs):
            kept.append(n)
            needed.update(i for i in n.inputs if i)
    return kept[::-1]
