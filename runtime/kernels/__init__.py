"""Kernel registry: one class per ONNX op type, looked up by ``op_type``.

A kernel is built once per graph node at load time (``__init__`` receives the
node and the values of its constant inputs, and precomputes what depends only
on them — requantisation multipliers, say) and is then called with the node's
runtime inputs. Weights are read at call time, so training can change them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KERNELS: dict[str, type["Kernel"]] = {}


@dataclass
class Node:
    """A graph node as the runtime sees it: ONNX fields, attributes decoded."""
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


class Kernel:
    """Base class: keeps the node; subclasses implement ``run``.

    The class attributes declare what the op is and what it takes, so that the
    trainer, the prover, the memory model and the loader ask the kernel instead of
    keeping op tables; the loader holds every node to them (``declare.check_node``).
    """

    #: (fewest, most) inputs; trailing optional inputs may be absent
    inputs: tuple[int, int] = (1, 1)
    #: allowed element types per input position (a ``declare`` group; None: any)
    input_types: tuple = ()
    #: input position → the number of dimensions the kernel handles
    input_ranks: dict[int, int] = {}
    #: input position → ``declare.Size`` of a parameter input (scalars, per-channel vectors)
    input_sizes: dict = {}
    #: every attribute the kernel reads, name → ``declare.Attr``; others are refused
    attributes: dict = {}

    @classmethod
    def check_constants(cls, node: Node, consts: list, shapes: list) -> None:
        """Load-time check of constant inputs' values beyond their declaration (ValueError)."""

    #: input positions whose values must be initializers (quantisation params, say)
    const_inputs: tuple[int, ...] = ()
    #: input positions of the trainable weight and bias (None: the op has none)
    weight_input: int | None = None
    bias_input: int | None = None
    #: what the op computes on: "float" tensors, 8-bit "int" tensors (int32 accumulators),
    #: "any" dtype (data movement and clamps), or the "boundary" between the two
    #: (QuantizeLinear, DequantizeLinear)
    numeric: str = "float"
    #: a fully connected layer (Gemm, MatMul and their int8 forms)
    fully_connected: bool = False
    #: ``run`` returns a view of its input: no new buffer
    returns_view: bool = False

    def __init__(self, node: Node, consts: list[np.ndarray | None], *,
                 float_gemm: bool = True, opset: int = 17, native=None):
        self.node = node
        self.float_gemm = float_gemm  # int GEMMs through exact float BLAS (see quant.int_matmul)
        self.native = native  # the native kernels (edgetrain.backend), or None: the numpy reference
        self.opset = opset  # of the node's domain; a few ops changed meaning across opsets

    def run(self, *inputs: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def then(self, nxt: "Kernel"):
        """A run of this node that also runs ``nxt`` — the next node, whose one input is this
        node's output and which alone reads it — in one call (:class:`Then`, a step of
        :func:`conv.chains`), or None when the pair has no such run. It takes this node's
        inputs and returns ``nxt``'s output."""
        return None

    def grad(self, gy: np.ndarray, inputs: list[np.ndarray | None], y: np.ndarray,
             needs: list[bool]) -> list[np.ndarray | None]:
        """Reverse mode: the loss gradient for each input, given ``gy`` for the output.

        ``gy`` is the gradient of the loss w.r.t. this node's single output ``y``
        (same shape), ``inputs`` the values ``run`` was called with (None for an
        absent optional input) and ``needs[i]`` says whether input i's gradient
        is wanted. Returns one entry per input, shaped like that input: an array,
        or None where it is not needed, the input is absent, or it is not
        differentiable (shapes, clip bounds, running statistics). Never writes
        into ``inputs`` or ``gy``, but may return views of ``gy`` (callers must not
        accumulate in place); works in the inputs' float dtype.
        """
        raise NotImplementedError(f"node {self.node.name!r}: op {self.node.op_type} has no "
                                  "gradient (backprop runs on fp32 ops only)")

    def workspace(self, shapes: dict, dtypes: dict, out_bytes: int) -> int:
        """Bytes of the temporaries one ``run`` makes beyond its output, at the tensor shapes
        and dtypes given (by name): :mod:`edgetrain.memory`'s prediction. It mirrors ``run``
        and must change with it. Here: element-wise float ops, about one temporary the size
        of the output."""
        return out_bytes

    def grad_workspace(self, shapes: dict, need_input: bool) -> int:
        """Bytes of the temporaries one fp32 ``grad`` makes beyond the output's gradient and
        the parameter gradients it returns; here about one input- and one output-sized array."""
        return 4 * (_size(shapes[self.node.outputs[0]]) + _size(shapes[self.node.inputs[0]]))

    def int_grad(self, err: np.ndarray, inputs: list[np.ndarray | None], y: np.ndarray,
                 need_input: bool = True) -> "IntGrad":
        """Integer reverse mode (int8 graphs): ``err`` is the output's error signal (int64,
        in units of some real scale ε), ``inputs`` and ``y`` the integers ``run`` saw and
        gave. Returns the error for the data input (input 0) exactly, in int64, and its
        real scale relative to ε; weighted ops also return the output error the weight
        sees and their input minus its zero-point, from which the weight gradient
        ``err_outᵀ·act`` follows. Never rounds: the caller decides how to renormalise.
        """
        raise NotImplementedError(f"node {self.node.name!r}: op {self.node.op_type} has no integer "
                                  "gradient")

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    def window(self, kernel, in_hw) -> tuple:
        """``_window.window_geometry`` of this node's attributes for an input of spatial size
        ``in_hw``, as tuples, worked out once per size (a run then reads it from a dict)."""
        key = (tuple(kernel), tuple(in_hw))
        cache = self.__dict__.setdefault("_windows", {})
        if key not in cache:
            from ._window import window_geometry
            cache[key] = tuple(tuple(v) for v in window_geometry(kernel, self.node.attrs, in_hw, self.node.name))
        return cache[key]


class Then:
    """Two nodes run as one step by the first one's :meth:`Kernel.then`: the first one's
    output is made and pooled (say) inside the call, never a numpy array in the graph."""
    returns_view = False

    def __init__(self, first: Kernel, second: Kernel, run):
        self.first, self.second, self.node, self.run = first, second, first.node, run

    def workspace(self, shapes: dict, dtypes: dict, out_bytes: int) -> int:
        """What the two steps would take apart: the first one's output with its workspace,
        then with the second's output and workspace (the call holds the same buffers)."""
        name = self.first.node.outputs[0]
        mid = _size(shapes[name]) * np.dtype(dtypes[name]).itemsize
        return max(mid + self.first.workspace(shapes, dtypes, mid) - out_bytes,
                   mid + self.second.workspace(shapes, dtypes, out_bytes))


@dataclass
class IntGrad:
    """What :meth:`Kernel.int_grad` returns; arrays are exact int64."""
    err_in: np.ndarray | None        # error for input 0 (None when not asked for)
    in_scale: float                  # err_in's real scale per unit of the output error's
    err_out: np.ndarray              # the output error as the weight sees it (0 where y saturated)
    act: np.ndarray | None = None    # weighted ops: input 0 minus its zero-point
    act_scale: float = 0.0           # weighted ops: real ∂L/∂W[n, k] = ε·act_scale·err_out[n]·act[k]


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def sum_to_shape(g: np.ndarray, shape) -> np.ndarray:
    """Undo numpy broadcasting: sum ``g`` down to ``shape`` (the adjoint of broadcast_to)."""
    shape = tuple(shape)
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    ones = tuple(i for i, (d, s) in enumerate(zip(shape, g.shape)) if d == 1 and s != 1)
    return (g.sum(axis=ones, keepdims=True) if ones else g).reshape(shape)


def register(*op_types: str):
    """Class decorator: map the given op types to this kernel."""
    def wrap(cls):
        for op in op_types:
            KERNELS[op] = cls
        return cls
    return wrap


def supported_ops() -> list[str]:
    """The op types the runtime can execute, derived from the registry."""
    return sorted(KERNELS)


from . import (activation, add, batchnorm, conv, matmul, pool,  # noqa: E402,F401  (registration)
               quantize, shape, softmax)
