"""Load an ONNX file into a runnable graph of kernels.

Loading validates everything it can once (ops, wiring, every node against its
kernel's declaration with the types and shapes ONNX shape inference finds,
initializers, quantisation parameters), rewrites the graph into the form the kernels run (constants
inlined, decode subgraphs of compressed files evaluated into their weights,
BatchNormalization folded into Conv, QDQ patterns folded into integer ops), and binds
one kernel per node. Running then only checks the input.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import backend as _backend
from . import compressed
from .errors import ModelFormatError
from .graph_rewrite import fold_batchnorm, fold_decoders, fold_qdq, prune_dead
from .int_loss import IntCrossEntropy
from .kernels import KERNELS, Node, supported_ops
from .kernels.conv import chains
from .kernels.declare import check_node

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT8: np.int8,
                onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT16: np.int16, onnx.TensorProto.INT64: np.int64,
                onnx.TensorProto.INT32: np.int32, onnx.TensorProto.DOUBLE: np.float64}
_DOMAINS = ("", "ai.onnx", "com.microsoft")


@dataclass(frozen=True)
class Layer:
    """A parametrised node: its index in ``Model.nodes`` and its weight / bias names."""
    index: int
    name: str
    weight: str
    bias: str | None


class Model:
    """A loaded ONNX graph. ``run(x)`` returns the first graph output."""

    def __init__(self, proto: onnx.ModelProto, *, float_gemm: bool = True, source: str = "<model>",
                 backend: str | _backend.Backend | None = None):
        self.source = source
        #: who runs the integer kernels: the numpy reference or the native wheel (``backend.select``)
        self.backend = _backend.select(backend)
        graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        # writable copies: training updates parameters in place
        self.params: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
        nodes = []
        for i, n in enumerate(graph.node):
            name = n.name or f"{n.op_type}_{i}"
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                self.params[n.output[0]] = _constant_value(n, name)
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            nodes.append(Node(name, n.op_type, list(n.input), list(n.output), attrs, n.domain))
        try:  # before any check that needs kernels: decode ops have none
            nodes, decoders = fold_decoders(nodes, self.params, [o.name for o in graph.output])
        except ValueError as e:
            raise ModelFormatError(f"{source}: {e}") from None
        #: weight name → its compressed form (edgetrain.compressed), for training and export
        self.compressed = compressed.recognise(decoders, self.params)
        _check_ops(nodes, source)
        self._input_infos = [v for v in graph.input if v.name not in self.params]
        self._output_infos = list(graph.output)
        self._opsets = list(proto.opset_import)
        self.inputs = [(v.name, _shape(v), _dtype(v)) for v in self._input_infos]
        self.output_names = [v.name for v in graph.output]
        if not self.inputs or not self.output_names:
            raise ModelFormatError(f"{source}: the graph needs at least one input and one output")
        _check_wiring(nodes, {n for n, _, _ in self.inputs} | set(self.params), self.output_names, source)
        _check_declarations(proto, nodes, self.params, source)

        nodes = fold_batchnorm(nodes, self.params, self.output_names)
        nodes = fold_qdq(nodes, self.params, self.output_names)
        nodes = prune_dead(nodes, self.output_names)
        used = {i for n in nodes for i in n.inputs}
        self.params = {k: v for k, v in self.params.items() if k in used}  # e.g. pre-fold BN tensors
        for form in self.compressed.values():  # what codebook weights train through
            if isinstance(form, compressed.Codebook):
                self.params.update({t: form.decoder.sources[t].copy() for t in form.trainable})
        self.nodes = nodes
        self.kernels = []
        for node in nodes:
            # absent optional inputs (dropped or trailing) are None up to the kernel's most
            kernel_inputs = node.inputs + [""] * (KERNELS[node.op_type].inputs[1] - len(node.inputs))
            consts = [self.params.get(name) if name else None for name in kernel_inputs]
            try:
                self.kernels.append(KERNELS[node.op_type](node, consts, float_gemm=float_gemm,
                                                          opset=self.opset, native=self.backend.kernels))
            except ValueError as e:
                raise ModelFormatError(f"{source}: {e}") from None
        last_use = _last_uses(nodes, self.output_names)
        # what ``execute`` does per node, worked out once: the kernel, the input names, the
        # output name, and the tensors it is the last reader of (dropped after it)
        outputs = set(self.output_names)
        self._steps = [(kernel, node, node.inputs, node.outputs[0],
                        tuple(i for i in dict.fromkeys(node.inputs) if i and i not in outputs
                              and last_use.get(i) is node))
                       for kernel, node in zip(self.kernels, nodes)]
        # the steps of a whole-graph walk that keeps no inner tensor: the same, with each fused
        # chain (conv.chains: a float Conv with the Relu / MaxPool / residual Add / pool after
        # it, or a pair a kernel's ``then`` runs in one call) as one step whose intermediate
        # tensors are never made; a step's drops are those of its nodes
        self._run_steps, self._chained = [], set()  # the latter: the tensors chains never make
        for kernel, taken, inputs in chains(self.kernels, outputs):
            drop = tuple(i for i in dict.fromkeys(inputs) if i and i not in outputs
                         and any(last_use.get(i) is k.node for k in taken))
            self._run_steps.append((kernel, taken[0].node, inputs, taken[-1].node.outputs[0], drop))
            self._chained.update(k.node.outputs[0] for k in taken[:-1])
        # ``run``'s shorter walk of those steps: it reads inputs from one dict holding the
        # parameters as well (copied per run, so the current arrays are read), through an
        # itemgetter, and drops only what it made
        self._run_fast = [(kernel.run, node, inputs[0] if len(inputs) == 1 else None,
                           itemgetter(*inputs) if len(inputs) > 1 else None, output,
                           tuple(d for d in drop if d not in self.params))
                          for kernel, node, inputs, output, drop in self._run_steps]
        self.probe = self._probe()

    def _probe(self) -> dict[str, tuple[tuple, np.dtype]] | None:
        """Run all-zero samples through the graph at load — two when the batch is dynamic, so
        a node that mixes samples across the batch shows — and what shape inference cannot
        check (ops it does not know, such as com.microsoft's, and what follows them) fails
        here, naming the node. Returns each tensor's (shape, dtype) at that batch, or None
        when the input has other dimensions only known at run time."""
        name, shape, dtype = self.inputs[0]
        if len(self.inputs) != 1 or any(d is None for d in shape[1:]):
            return None
        x = np.zeros((2 if shape[0] is None else shape[0], *shape[1:]) if shape else (), dtype=dtype)
        try:
            with np.errstate(all="ignore"):
                env = self.run_all(x)
        except ValueError as e:  # execute names the node
            raise ModelFormatError(f"{e} (on an all-zero input of shape {x.shape}, at load)") from None
        return {k: (v.shape, v.dtype) for k, v in env.items()}

    @property
    def float_gemm(self) -> bool:
        """The route of integer GEMMs: exact float32 BLAS (True) or numpy's integer matmul,
        which creates no float array (False). Both give the same bits."""
        return all(k.float_gemm for k in self.kernels)

    @float_gemm.setter
    def float_gemm(self, on: bool) -> None:
        for k in self.kernels:
            k.float_gemm = bool(on)

    def to_proto(self) -> onnx.ModelProto:
        """The graph as it runs (after load-time rewrites) with the current parameters; weights
        of a known compressed form are stored in that form again (:mod:`edgetrain.compressed`)."""
        decode_nodes, decode_inits, rebuilt = compressed.stored_graph(self)
        used = {i for n in self.nodes for i in n.inputs if i} - rebuilt
        inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in self.params.items() if name in used]
        inits += decode_inits
        nodes, wide = list(decode_nodes), False
        for n, k in zip(self.nodes, self.kernels):
            if k.numeric == "int" and k.fully_connected and self.params.get(n.inputs[k.weight_input],
                                                                            np.empty(0, np.int8)).dtype == np.int16:
                extra, more = _wide_as_qdq(n, k)
                nodes += more
                inits += extra
                wide = True
            else:
                nodes.append(helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name, domain=n.domain, **n.attrs))
        graph = helper.make_graph(nodes, "edgetrain", self._input_infos, self._output_infos, inits)
        opsets = {o.domain: o.version for o in self._opsets}
        if any(n.domain == "com.microsoft" for n in self.nodes):
            opsets.setdefault("com.microsoft", 1)
        if wide:  # DequantizeLinear of int16 needs opset 21
            opsets[""] = max(opsets.get("", opsets.pop("ai.onnx", 17)), 21)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])

    # -- introspection -----------------------------------------------------
    def op_counts(self) -> Counter:
        """How many nodes of each op type run after load-time rewrites."""
        return Counter(n.op_type for n in self.nodes)

    @property
    def integer_only(self) -> bool:
        """True when floats exist only at the graph's edges (input quantise, output dequantise)."""
        return (any(n.op_type == "QuantizeLinear" for n in self.nodes)
                and not any(k.numeric == "float" for k in self.kernels))

    def layers(self) -> list[Layer]:
        """The parametrised nodes (their kernel declares a weight input) whose weight is an
        initializer, in graph order."""
        out = []
        for i, (node, kernel) in enumerate(zip(self.nodes, self.kernels)):
            w, b = kernel.weight_input, kernel.bias_input
            if w is not None and node.inputs[w] in self.params:
                bias = node.inputs[b] if b is not None and len(node.inputs) > b and node.inputs[b] else None
                out.append(Layer(i, node.name, node.inputs[w], bias))
        return out

    # -- the integer graph: what int8 training and unlearning ask ---------------
    def integer_span(self) -> tuple[int, int]:
        """``(first, last)``: nodes ``first:last`` compute on integers, between the graph's
        input QuantizeLinear (node ``first − 1``) and output DequantizeLinear (node ``last``).
        ModelFormatError for a graph that is not integer-only in that form."""
        if not (self.integer_only and self.nodes[0].op_type == "QuantizeLinear"
                and self.nodes[-1].op_type == "DequantizeLinear"):
            raise ModelFormatError(f"{self.source}: not an integer-only int8 graph (QuantizeLinear … "
                                   "DequantizeLinear); quantise it first")
        return 1, len(self.nodes) - 1

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """The graph's own input QuantizeLinear applied to ``x``: where float data becomes int8."""
        self.integer_span()
        name, shape, dtype = self.inputs[0]
        return self.kernels[0].run(self._check_input(x, name, shape, dtype), None, None)

    def int_loss(self) -> IntCrossEntropy:
        """The integer cross-entropy of the int8 logits (the output DequantizeLinear's input),
        at that DequantizeLinear's scale and zero-point."""
        qp = self.kernels[self.integer_span()[1]].qp
        return IntCrossEntropy(float(qp.scale), qp.zp)

    # -- execution ---------------------------------------------------------
    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the graph on ``x`` and return its first output (``run_all(x, keep=False)``'s,
        by a shorter walk of the same fused steps: per step, one call and the drops)."""
        name, shape, dtype = self.inputs[0]
        env = self.params.copy()
        env[""] = None  # an absent optional input
        env[name] = self._check_input(x, name, shape, dtype)
        node = None
        try:
            for run, node, one, many, output, drop in self._run_fast:
                env[output] = run(env[one]) if many is None else run(*many(env))
                for i in drop:
                    del env[i]
        except ValueError as e:
            raise ValueError(f"{self.source}: node {node.name!r} ({node.op_type}): {e}") from None
        return env[self.output_names[0]]

    def steps_for(self, keep: bool | set[str]) -> list:
        """The steps a whole-graph ``execute`` walks: the nodes one by one when every tensor is
        kept or a kept one is inside a fused chain (:func:`kernels.conv.chains`),
        else the chains in one step each (the same values; the chains' inner tensors are
        never made). Each step: ``(kernel, node, input names, output name, names it drops)``."""
        if keep is True or (keep and not self._chained.isdisjoint(keep)):
            return self._steps
        return self._run_steps

    def run_all(self, x: np.ndarray, keep: bool | set[str] = True) -> dict[str, np.ndarray]:
        """Run and return tensors by name: every tensor if ``keep`` is True, the graph
        outputs if False, the outputs plus the named tensors if it is a set."""
        name, shape, dtype = self.inputs[0]
        env = {name: self._check_input(x, name, shape, dtype)}
        return self.execute(env, keep=keep)

    def execute(self, env: dict, start: int = 0, stop: int | None = None,
                keep: bool | set[str] = True) -> dict[str, np.ndarray]:
        """Run nodes ``start:stop`` on the tensors in ``env`` (parameters are read from
        ``self.params``). Unless ``keep`` is True, a tensor is dropped after its last
        reader, so memory stays that of inference; the graph outputs, the tensors in
        ``keep`` (a set) and those produced by node ``stop − 1`` are always kept."""
        stop = len(self.nodes) if stop is None else stop
        retain = set(keep) if isinstance(keep, set) else set()  # the graph outputs are never in a drop list
        if stop > start:
            retain.update(self.nodes[stop - 1].outputs)
        steps = self.steps_for(keep) if (start, stop) == (0, len(self.nodes)) else self._steps[start:stop]
        return self._walk(env, steps, retain, keep)

    def _walk(self, env, steps, retain, keep):
        params = self.params
        for kernel, node, inputs, output, drop in steps:
            try:
                env[output] = kernel.run(*[env[i] if i in env else params[i] if i else None for i in inputs])
            except ValueError as e:
                raise ValueError(f"{self.source}: node {node.name!r} ({node.op_type}): {e}") from None
            if keep is not True:
                for i in drop:
                    if i not in retain:
                        env.pop(i, None)
        return env

    def _check_input(self, x, name, shape, dtype):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input {name!r}: expected a numpy array, got {type(x).__name__}")
        if x.dtype != dtype:
            if not (np.issubdtype(x.dtype, np.floating) and np.issubdtype(dtype, np.floating)):
                raise TypeError(f"input {name!r}: expected dtype {np.dtype(dtype).name}, got {x.dtype}")
            x = x.astype(dtype)
        if len(shape) != x.ndim or any(d is not None and d != s for d, s in zip(shape, x.shape)):
            want = tuple("?" if d is None else d for d in shape)
            raise ValueError(f"input {name!r}: expected shape {want}, got {x.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise ValueError(f"input {name!r}: {bad} NaN or infinite value(s)")
        return x


def _wide_as_qdq(n, k) -> tuple[list, list]:
    """An integer FC node with int16 weights (an unlearned layer, prover/int8.py) as the QDQ
    pattern onnxruntime runs (int16 DequantizeLinear, opset 21) and :func:`fold_qdq` folds
    back into the same node: DequantizeLinear of A, B and the int32 bias (scale s_a·s_b),
    Gemm / MatMul, QuantizeLinear. Returns (new initializers, nodes)."""
    a, a_s, a_zp, b, b_s, b_zp = [n.inputs[k.a_pos + i] for i in range(3)] + [n.inputs[k.b_pos + i] for i in range(3)]
    y_s, y_zp = n.inputs[k.y_pos], n.inputs[k.y_pos + 1]
    trans_b = n.attrs.get("transB", 0)
    per_channel = k.bq.scale.size > 1
    b_axis = {"axis": 0 if trans_b else 1} if per_channel else {}
    t = f"{n.name}.qdq"
    nodes = [helper.make_node("DequantizeLinear", [a, a_s, a_zp], [f"{t}.a"], name=f"{t}.dq_a"),
             helper.make_node("DequantizeLinear", [b, b_s, b_zp], [f"{t}.b"], name=f"{t}.dq_b", **b_axis)]
    inits = []
    if n.op_type == "QGemm":
        inputs = [f"{t}.a", f"{t}.b"]
        bias = n.inputs[k.bias_input] if len(n.inputs) > k.bias_input else ""
        if bias:
            bias_scale = (k.aq.scale.astype(np.float32) * k.bq.scale.astype(np.float32)).astype(np.float32)
            inits += [numpy_helper.from_array(bias_scale.reshape(-1) if per_channel else bias_scale.reshape(()),
                                              f"{t}.bias_scale"),
                      numpy_helper.from_array(np.zeros(np.shape(bias_scale.reshape(-1)) if per_channel else (),
                                                       np.int32), f"{t}.bias_zero_point")]
            nodes.append(helper.make_node("DequantizeLinear", [bias, f"{t}.bias_scale", f"{t}.bias_zero_point"],
                                          [f"{t}.bias"], name=f"{t}.dq_bias", **({"axis": 0} if per_channel else {})))
            inputs.append(f"{t}.bias")
        attrs = {key: v for key, v in n.attrs.items() if key in ("alpha", "transB")}
        nodes.append(helper.make_node("Gemm", inputs, [f"{t}.y"], name=n.name, **attrs))
    else:
        nodes.append(helper.make_node("MatMul", [f"{t}.a", f"{t}.b"], [f"{t}.y"], name=n.name))
    nodes.append(helper.make_node("QuantizeLinear", [f"{t}.y", y_s, y_zp], list(n.outputs), name=f"{t}.q_y"))
    return inits, nodes


def load(path: str | os.PathLike, *, float_gemm: bool = True, backend: str | None = None) -> Model:
    """Load an ONNX model (fp32, or int8 in QOperator or QDQ form) from ``path``.

    ``backend`` chooses who runs the integer kernels (``edgetrain.backend.select``: the
    native wheel when installed, else numpy; ``"numpy"`` forces the reference). Both give
    the same bits. On numpy, ``float_gemm=False`` makes integer GEMMs use numpy's
    pure-integer matmul instead of the (bit-identical, faster) exact float32-BLAS path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        proto = onnx.load(path)
    except Exception as e:  # protobuf raises several types for bad bytes
        raise ModelFormatError(f"{path}: not a readable ONNX model (truncated or another "
                               f"format?): {type(e).__name__}: {e}") from None
    if not proto.graph.node:
        raise ModelFormatError(f"{path}: not an ONNX model with a graph (no nodes found)")
    return Model(proto, float_gemm=float_gemm, source=path, backend=backend)


def _constant_value(node, name):
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.array(helper.get_attribute_value(a),
                            dtype=np.float32 if "float" in a.name else np.int64)
    raise ModelFormatError(f"Constant node {name!r} has no supported value attribute")


def _check_ops(nodes, source):
    bad = [f"{n.op_type} (node {n.name!r})" for n in nodes
           if n.op_type not in KERNELS or n.domain not in _DOMAINS]
    if bad:
        raise ModelFormatError(f"{source}: unsupported op(s): {', '.join(bad)}. "
                               f"Supported: {', '.join(supported_ops())}")


def _check_declarations(proto, nodes, params, source):
    """Every node against its kernel's declaration, with the element types and shapes
    that ONNX's strict shape inference finds (it also checks each standard op's
    shape rules; com.microsoft ops and what follows them stay unknown to it)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # InferenceError, or the checker's errors on a broken graph
        raise ModelFormatError(f"{source}: shape inference failed: {e}") from None
    dtypes = {name: v.dtype for name, v in params.items()}
    shapes = {name: v.shape for name, v in params.items()}
    g = inferred.graph
    for info in [*g.input, *g.value_info, *g.output]:
        t = info.type.tensor_type
        if info.name in params or not info.type.HasField("tensor_type"):
            continue
        if t.elem_type:
            # a type the runtime has no array for keeps its ONNX name (no kernel accepts it)
            dtypes[info.name] = _ONNX_DTYPES.get(t.elem_type) or onnx.TensorProto.DataType.Name(t.elem_type)
        if t.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    for n in nodes:
        try:
            check_node(KERNELS[n.op_type], n, dtypes, shapes, params)
        except ValueError as e:
            raise ModelFormatError(f"{source}: {e}") from None


def _check_wiring(nodes, available, outputs, source):
    available = set(available)
    for n in nodes:
        for i in n.inputs:
            if i and i not in available:
                raise ModelFormatError(
                    f"{source}: node {n.name!r} ({n.op_type}) input {i!r} is missing: not a graph "
                    "input, an initializer, or the output of an earlier node")
        if n.outputs[1:] and any(n.outputs[1:]):
            used = [o for o in n.outputs[1:] if o]
            raise ModelFormatError(f"{source}: node {n.name!r} ({n.op_type}) has extra outputs "
                                   f"{used}; only single-output nodes are supported")
        available.update(n.outputs)
    missing = [o for o in outputs if o not in available]
    if missing:
        raise ModelFormatError(f"{source}: graph output(s) {missing} are produced by no node")


def _shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def _dtype(value_info):
    elem = value_info.type.tensor_type.elem_type
    if elem not in _ONNX_DTYPES:
        raise ModelFormatError(f"input {value_info.name!r}: unsupported element type "
                               f"{onnx.TensorProto.DataType.Name(elem)}")
    return _ONNX_DTYPES[elem]


def _last_uses(nodes, outputs):
    """The node after which each tensor is no longer needed (graph outputs are kept)."""
    last = {}
    for n in nodes:
        for i in n.inputs:
            if i:
                last[i] = n
    for o in outputs:
        last.pop(o, None)
    return last
